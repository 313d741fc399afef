"""Small files laid out as scanners write them, for tests, examples and benchmarks.

Each writer follows its vendor's structure closely enough that the readers recognise the
format by content (tifffile's vendor flags, CZI magic): Aperio SVS (tiled JPEG or JPEG 2000
baseline with an ``MPP`` description, thumbnail, reduced levels, label and macro pages),
Akoya/PerkinElmer QPTIFF (one page per channel with its XML description, thumbnail, reduced
levels), generic tiled or stripped TIFF (any tifffile compression, resolution tags), Zeiss
CZI (pylibCZIrw, with channel names and scaling) and DICOM WSI (pydicom, a test-only
dependency: one VL Whole Slide Microscopy instance per level, as OpenSlide ≥ 4 reads them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

_APERIO = "Aperio Image Library v12.0.15"


def _halvings(image: np.ndarray, min_size: int) -> list[np.ndarray]:
    """``(C, Y, X)`` ``image`` then 2× block means until the longest side is ≤ ``min_size``."""
    levels = [image]
    while max(levels[-1].shape[1:]) > min_size:
        previous = levels[-1]
        c, h, w = previous.shape[0], previous.shape[1] // 2, previous.shape[2] // 2
        blocks = previous[:, : 2 * h, : 2 * w].reshape(c, h, 2, w, 2)
        levels.append(np.rint(blocks.mean(axis=(2, 4))).astype(image.dtype))
    return levels


def _rgb_halvings(rgb: np.ndarray, min_size: int) -> list[np.ndarray]:
    return [np.moveaxis(lv, 0, -1) for lv in _halvings(np.moveaxis(rgb, -1, 0), min_size)]


def write_svs(
    path: str | os.PathLike,
    rgb: np.ndarray,
    mpp: float | None,
    tile: int = 256,
    compression: str = "jpeg",
    min_level_size: int = 512,
    label: bool = True,
) -> None:
    """An Aperio-style SVS: ``rgb`` is ``(Y, X, 3)`` uint8.

    Pages: baseline (tiled, ``compression``), thumbnail (stripped), reduced levels (tiled, 4×
    each as Aperio does), label (LZW) and macro (JPEG), the last two marked as associated
    images by their descriptions and ``NewSubfileType``.
    """
    import tifffile

    height, width = rgb.shape[:2]
    mpp_text = f"|MPP = {mpp:.4f}" if mpp else ""
    base = (
        f"{_APERIO}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        f"{compression.upper()}/RGB Q=90|AppMag = 20{mpp_text}|Filename = regflow"
    )
    kw = {"photometric": "rgb", "metadata": None}
    levels = _rgb_halvings(rgb, min_level_size)[::2]  # Aperio steps 4× between levels
    with tifffile.TiffWriter(path, bigtiff=rgb.nbytes > 2**31) as tif:
        tif.write(rgb, tile=(tile, tile), compression=compression, description=base, **kw)
        thumb = _rgb_halvings(rgb, 256)[-1]
        tif.write(thumb, compression="jpeg", description=f"{_APERIO}\r\nthumbnail", **kw)
        for level in levels[1:]:
            tif.write(level, tile=(tile, tile), compression=compression,
                      description=f"{_APERIO}\r\nlevel", **kw)  # fmt: skip
        if label:
            tif.write(np.full((200, 300, 3), 230, np.uint8), compression="lzw",
                      description=f"{_APERIO}\r\nlabel 300x200", subfiletype=1, **kw)  # fmt: skip
            macro = np.concatenate([np.full((thumb.shape[0], 64, 3), 200, np.uint8), thumb], 1)
            tif.write(macro, compression="jpeg", description=f"{_APERIO}\r\nmacro",
                      subfiletype=9, **kw)  # fmt: skip


def _qpi_xml(image_type: str, name: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n<PerkinElmer-QPI-ImageDescription>\r\n'
        f"<DescriptionVersion>2</DescriptionVersion>\r\n<ImageType>{image_type}</ImageType>\r\n"
        f"<Name>{name}</Name>\r\n<Biomarker>{name}</Biomarker>\r\n"
        "</PerkinElmer-QPI-ImageDescription>"
    )


def write_qptiff(
    path: str | os.PathLike,
    channels: np.ndarray,
    names: Sequence[str],
    pixel_size_um: float | None,
    tile: int = 256,
    min_level_size: int = 512,
) -> None:
    """An Akoya/PerkinElmer-style QPTIFF: ``channels`` is ``(C, Y, X)``; one page per channel
    with its XML (``Biomarker``), a thumbnail, then 2× reduced levels; resolution in cm."""
    import tifffile

    resolution = (1e4 / pixel_size_um, 1e4 / pixel_size_um) if pixel_size_um else None
    kw = {
        "metadata": None,
        "software": "PerkinElmer-QPI",
        "photometric": "minisblack",
        "resolution": resolution,
        "resolutionunit": "CENTIMETER" if resolution else None,
    }
    levels = _halvings(channels, min_level_size)
    with tifffile.TiffWriter(path, bigtiff=channels.nbytes > 2**31) as tif:
        for plane, name in zip(channels, names, strict=True):
            tif.write(plane, tile=(tile, tile), compression="lzw",
                      description=_qpi_xml("FullResolution", name), **kw)  # fmt: skip
        thumb = _halvings(channels[:1], 256)[-1][0]
        tif.write(thumb.astype(np.uint8) if thumb.dtype != np.uint8 else thumb,
                  description=_qpi_xml("Thumbnail", "thumbnail"), **kw)  # fmt: skip
        for level in levels[1:]:
            for plane, name in zip(level, names, strict=True):
                tif.write(plane, tile=(tile, tile), compression="lzw",
                          description=_qpi_xml("ReducedResolution", name), **kw)  # fmt: skip


def write_generic_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    compression: str | None = "lzw",
    tile: int | None = 256,
    pixel_size_um: float | None = None,
    rgb: bool | None = None,
) -> None:
    """A plain (non-OME, non-vendor) TIFF: ``image`` is ``(C, Y, X)``; tiled or, with
    ``tile=None``, stripped; pixel size in the resolution tags (cm)."""
    import tifffile

    rgb = image.shape[0] == 3 and image.dtype == np.uint8 if rgb is None else rgb
    data = np.moveaxis(image, 0, -1) if rgb else (image[0] if image.shape[0] == 1 else image)
    resolution = (1e4 / pixel_size_um, 1e4 / pixel_size_um) if pixel_size_um else None
    tifffile.imwrite(
        path,
        data,
        photometric="rgb" if rgb else "minisblack",
        planarconfig="contig" if rgb else None,
        tile=(tile, tile) if tile else None,
        rowsperstrip=None if tile else 64,
        compression=compression,
        metadata=None,
        resolution=resolution,
        resolutionunit="CENTIMETER" if resolution else None,
    )


def write_czi(
    path: str | os.PathLike,
    image: np.ndarray,
    names: Sequence[str] | None,
    pixel_size_um: float | None,
    rgb: bool = False,
    origin: tuple[int, int] = (0, 0),
) -> None:
    """A Zeiss CZI through pylibCZIrw: ``image`` is ``(C, Y, X)``; with ``rgb`` three uint8
    channels stored as one Bgr24 plane; scaling in metres as CZI stores it."""
    from pylibCZIrw import czi as pyczi

    scale = pixel_size_um * 1e-6 if pixel_size_um else 0.0
    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        if rgb:
            bgr = np.ascontiguousarray(np.moveaxis(image[:3], 0, -1)[..., ::-1])
            czi.write(bgr, plane={"C": 0}, location=origin, scene=0)
        else:
            for index, plane in enumerate(image):
                czi.write(plane, plane={"C": index}, location=origin, scene=0)
        channel_names = {i: n for i, n in enumerate(names)} if names and not rgb else None
        czi.write_metadata("regflow", channel_names=channel_names, scale_x=scale, scale_y=scale)


# VL Whole Slide Microscopy Image Storage: one file (instance) per pyramid level.
_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def write_dicom_wsi(
    folder: str | os.PathLike, rgb: np.ndarray, mpp: float, tile: int = 256, min_size: int = 256
) -> list[str]:
    """A DICOM WSI series as scanners export it (pydicom; tests only): one VL Whole Slide
    Microscopy instance per pyramid level (``ORIGINAL\\PRIMARY\\VOLUME``), TILED_FULL frames of
    ``tile`` px, uncompressed RGB, the pixel spacing in the shared functional groups (mm).
    ``rgb`` is ``(Y, X, 3)`` uint8. Returns the files, level 0 first; OpenSlide opens the
    series from any of them (it reads the folder)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for index, level in enumerate(_rgb_halvings(rgb, min_size)):
        height, width = level.shape[:2]
        rows, cols = -(-height // tile), -(-width // tile)
        padded = np.zeros((rows * tile, cols * tile, 3), np.uint8)
        padded[:height, :width] = level
        frames = padded.reshape(rows, tile, cols, tile, 3).swapaxes(1, 2)  # row-major tiles
        spacing = mpp * 2**index / 1000.0
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _WSI_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = _WSI_SOP_CLASS, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality = "SM"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        ds.Rows = ds.Columns = tile
        ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = height, width
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfFrames = rows * cols
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.NumberOfOpticalPaths = 1
        path_item = Dataset()
        path_item.OpticalPathIdentifier = "1"
        ds.OpticalPathSequence = DicomSequence([path_item])
        measures = Dataset()
        measures.PixelSpacing = [spacing, spacing]
        measures.SliceThickness = 0.004
        shared = Dataset()
        shared.PixelMeasuresSequence = DicomSequence([measures])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = width * spacing, height * spacing
        ds.PixelData = np.ascontiguousarray(frames).tobytes()
        path = os.path.join(folder, f"level{index}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
