"""The reader layer: every image regflow reads goes through :func:`open_slide`.

The format is decided by the file's content (magic bytes, then tifffile's vendor flags or
OpenSlide's detection), never by its extension:

- TIFF family, read with tifffile (+ imagecodecs for JPEG, JPEG 2000, LZW, zstd, WebP tiles):
  OME-TIFF, Aperio SVS, Hamamatsu NDPI, Leica SCN, Philips TIFF, Ventana BIF, Akoya /
  PerkinElmer QPTIFF, generic tiled or stripped TIFF;
- Zeiss CZI, read with pylibCZIrw (pyramids through its zoom, scenes, scaling);
- anything else OpenSlide reads (3DHISTECH MRXS, …), with openslide-python + openslide-bin;
- PNG and JPEG, read with Pillow.

The *main* image is always the one read: never a label, macro, overview or thumbnail
series. In memory an image is ``(C, Y, X)`` in its file's dtype; RGB(A) files keep
``rgb=True`` in their :class:`ImageInfo` so that writers can store them again as interleaved
RGB, which is what slide viewers expect of brightfield images.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

SUPPORTED = (
    "TIFF family (OME-TIFF, Aperio SVS, Hamamatsu NDPI, Leica SCN, Philips TIFF, Ventana BIF, "
    "Akoya QPTIFF, generic tiled/stripped TIFF), Zeiss CZI, DICOM WSI (.dcm, VL Whole Slide "
    "Microscopy), OpenSlide formats (3DHISTECH MRXS, …), OME-Zarr, PNG, JPEG"
)

# Length units → micrometres (OME, CZI and TIFF resolution units).
_UNIT_TO_UM = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
}
# Series that are never the slide itself.
_ASSOCIATED = ("label", "macro", "thumbnail", "overview", "map", "preview")


class ImageReadError(ValueError):
    """An image file cannot be used; the message names the file, the problem and what to do.

    Parameters
    ----------
    path : str
    problem : str
        What is wrong, phrased to follow "file <path> …", e.g. ``"is truncated or corrupt:
        tile 3 ends beyond the file"``.
    hint : str
        What to do about it.
    """

    def __init__(self, path: str, problem: str, hint: str = ""):
        self.path, self.problem, self.hint = str(path), problem, hint
        super().__init__(self.describe())

    def describe(self, where: str | None = None) -> str:
        """The message, naming where the sheet points at the file, e.g. ``where="sample
        'S1', column moving"`` gives ``file <path> (sample 'S1', column moving) is …``."""
        context = f" ({where})" if where else ""
        return f"file {self.path}{context} {self.problem}" + (f"; {self.hint}" if self.hint else "")


class MissingReaderError(ImageReadError):
    """A known format whose reader package is not installed."""


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says about its main (full-resolution) image.

    Attributes
    ----------
    path : str
    shape : tuple of int
        ``(Y, X)`` of the full-resolution image.
    n_channels : int
    dtype : str
        numpy dtype name of the pixels.
    channel_names : list of str
        One per channel (OME/QPTIFF/CZI names when present, else ``C0, C1, …`` or ``R, G, B``).
    pixel_size_um : float or None
        Physical size of one pixel in micrometres (X; Y is assumed equal), if known.
    rgb : bool
        Colour samples are interleaved RGB(A), e.g. a brightfield scan.
    level_shapes : list of tuple of int
        ``(Y, X)`` of each pyramid level, level 0 first.
    format : str
        What the content was recognised as (``aperio-svs``, ``ome-tiff``, ``czi``, …).
    reader : str
        The package that reads it.
    notes : tuple of str
        What a user should know about how the header was read (e.g. a pixel size that was
        ignored as a document resolution); the sheet check and preprocess log them.
    """

    path: str
    shape: tuple[int, int]
    n_channels: int
    dtype: str
    channel_names: list[str]
    pixel_size_um: float | None = None
    rgb: bool = False
    level_shapes: list[tuple[int, int]] = field(default_factory=list)
    format: str = ""
    reader: str = ""
    notes: tuple[str, ...] = ()


def _default_channel_names(n_channels: int, rgb: bool) -> list[str]:
    if rgb and n_channels in (3, 4):
        return ["R", "G", "B", "A"][:n_channels]
    return [f"C{i}" for i in range(n_channels)]


def detect_format(path: str) -> str:
    """``tiff``, ``czi``, ``png``, ``jpeg`` or ``openslide``, from the file's content.

    Raises
    ------
    ImageReadError
        The file is missing, empty, or not an image of a supported format.
    """
    if os.path.isdir(path):
        if _ome_zarr_attributes(path) is not None:
            return "ome-zarr"
        raise ImageReadError(path, f"is a folder but not an OME-Zarr image; supported: "
                             f"{SUPPORTED}", "name the image file itself")  # fmt: skip
    if not os.path.isfile(path):
        raise ImageReadError(path, "not found", "check the path (relative paths start at the "
                             "working directory)")  # fmt: skip
    with open(path, "rb") as handle:
        head = handle.read(132)
    dicom = head[128:132] == b"DICM"  # the DICOM Part 10 preamble
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    if head.startswith(b"ZISRAWFILE"):
        return "czi"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    try:
        import openslide
    except ImportError:
        if dicom or path.lower().endswith((".mrxs", ".vms", ".vmu")):
            raise MissingReaderError(
                path,
                f"is {'a DICOM file' if dicom else 'an OpenSlide format (MRXS/VMS)'} but "
                "OpenSlide is not installed",
                "pip install openslide-python openslide-bin",
            ) from None
    else:
        if openslide.OpenSlide.detect_format(path):
            return "openslide"
        if dicom:  # OpenSlide ≥ 4 reads DICOM WSI; it said no to this one
            raise ImageReadError(
                path,
                "is a DICOM file but not a whole-slide image that OpenSlide reads (it needs a "
                "VL Whole Slide Microscopy series: ImageType VOLUME, tiled frames; CT, MR or "
                "single-frame photographs are not slides)",
                "name one .dcm file of the slide's series, its levels in the same folder",
            )
    problem = "is empty" if not head else "is not a supported image"
    raise ImageReadError(path, f"{problem}; supported: {SUPPORTED}",
                         "check that the sheet names the image file itself")  # fmt: skip


def _corrupt(path: str, exc: BaseException, what: str = "") -> ImageReadError:
    text = f"{type(exc).__name__}: {exc}"
    if "imagecodecs" in str(exc):
        return MissingReaderError(path, f"needs a codec that is not installed ({text})",
                                  "pip install imagecodecs")  # fmt: skip
    return ImageReadError(path, f"is truncated or corrupt: {what}{text}",
                          "copy or export the file again")  # fmt: skip


class Slide:
    """An open image file: its :class:`ImageInfo`, whole levels and regions of any level."""

    info: ImageInfo
    thread_safe = False  # may read_region be called from several threads at once

    def level_shape(self, level: int) -> tuple[int, int]:
        return self.info.level_shapes[level]

    def read_level(self, level: int = 0) -> np.ndarray:
        """Pixels of one pyramid level, ``(C, Y, X)``."""
        height, width = self.level_shape(level)
        return self.read_region(level, slice(0, height), slice(0, width))

    def read_region(self, level: int, rows: slice, cols: slice) -> np.ndarray:
        """Pixels ``[:, rows, cols]`` of one level (slices with explicit, in-range bounds)."""
        raise NotImplementedError

    def verify(self) -> None:
        """Decode the smallest level (or, for a single large level, its first and last rows),
        so that corrupt pixel data is reported before any job runs."""
        level = len(self.info.level_shapes) - 1
        height, width = self.level_shape(level)
        try:
            if height * width <= 4096 * 4096:
                self.read_level(level)
            else:
                band = min(height, 256)
                self.read_region(level, slice(0, band), slice(0, width))
                self.read_region(level, slice(height - band, height), slice(0, width))
        except ImageReadError:
            raise
        except Exception as exc:
            raise _corrupt(self.info.path, exc, f"level {level} does not decode: ") from exc

    def close(self) -> None:
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- TIFF family (tifffile) ------------------------------------------------------------


def _ome_pixels_metadata(ome_xml: str) -> tuple[list[str], float | None]:
    """Channel names and physical pixel size (µm) of the first OME image."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return [], None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return [], None
    names = [ch.attrib.get("Name", "") for ch in pixels if ch.tag.endswith("Channel")]
    size = pixels.attrib.get("PhysicalSizeX")
    pixel_size = None
    if size is not None:
        unit = pixels.attrib.get("PhysicalSizeXUnit", "µm")
        try:
            pixel_size = float(size) * _UNIT_TO_UM.get(unit, 1.0)
        except ValueError:
            pixel_size = None
    return names, pixel_size


# A document resolution, not a microscope's sampling: image editors, screenshot tools and
# many exports write a whole number of dots per inch (72, 96, 300, …) by default. Every
# whole-number dpi up to this one (21 µm per pixel and coarser) is taken for such a default;
# a scanner's sampling (0.1–10 µm per pixel, 2540–250 000 dpi) is never one.
DOCUMENT_MAX_DPI = 1200


def _tiff_resolution_um(page, path: str = "") -> tuple[float | None, str | None]:
    """Pixel size from the TIFF resolution tags, when they carry a physical unit, and a note
    when the tags hold a document resolution (72 dpi, …), which is ignored (None)."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None, None
    unit = tags["ResolutionUnit"].value
    num, den = tags["XResolution"].value
    if not num or not den:
        return None, None
    per_unit = num / den  # pixels per unit
    if per_unit == 1.0:  # the writers' default: "not set"
        return None, None
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit))
    if not um_per_unit:
        return None, None
    dpi = per_unit * 25400.0 / um_per_unit
    if dpi <= DOCUMENT_MAX_DPI and abs(dpi - round(dpi)) < 0.01:
        return None, (
            f"{path}: its TIFF resolution tags say {round(dpi)} dpi ({um_per_unit / per_unit:.4g} "
            "µm per pixel), a document or screen default that no scanner writes; the pixel "
            "size is treated as unknown: give it in the sheet (*_pixel_size_um) if known"
        )
    return um_per_unit / per_unit, None


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _aperio_mpp(description: str) -> float | None:
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    return _positive(match.group(1)) if match else None


def _philips_mpp(xml: str | None) -> float | None:
    """Philips: ``DICOM_PIXEL_SPACING`` of the first (level-0) entry, in mm."""
    match = re.search(r'Name="DICOM_PIXEL_SPACING"[^>]*>\s*"?([0-9.eE+-]+)', xml or "")
    value = _positive(match.group(1)) if match else None
    return value * 1e3 if value else None


def _ventana_mpp(xmp: str | bytes | None) -> float | None:
    if isinstance(xmp, bytes):
        xmp = xmp.decode(errors="replace")
    match = re.search(r'ScanRes\s*=\s*"([0-9.eE+-]+)"', xmp or "")
    return _positive(match.group(1)) if match else None


def _qptiff_names(pages) -> list[str]:
    """Channel names from each QPTIFF page's PerkinElmer XML (Biomarker, else Name)."""
    names = []
    for page in pages:
        try:
            root = ET.fromstring(page.description)
        except ET.ParseError:
            return []
        name = root.findtext("Biomarker") or root.findtext("Name") or ""
        names.append(name.strip())
    return names


def _tiff_format(tif) -> str:
    for flag, name in (
        ("is_ome", "ome-tiff"),
        ("is_svs", "aperio-svs"),
        ("is_ndpi", "hamamatsu-ndpi"),
        ("is_scn", "leica-scn"),
        ("is_philips", "philips-tiff"),
        ("is_bif", "ventana-bif"),
        ("is_qpi", "qptiff"),
    ):
        if getattr(tif, flag, False):
            return name
    return "tiff"


def _level_shape(series) -> tuple[int, int]:
    shape = dict(zip(series.axes, series.shape, strict=True))
    return int(shape["Y"]), int(shape["X"])


def _main_series(tif):
    """The slide itself: the largest series that is not a label, macro or thumbnail."""
    candidates = [
        s for s in tif.series if not any(word in (s.name or "").lower() for word in _ASSOCIATED)
    ] or list(tif.series)
    return max(candidates, key=lambda s: np.prod(_level_shape(s)))


def _extra_levels(tif, main) -> list:
    """Reduced-resolution copies stored as separate series (generic pyramidal TIFFs)."""
    height, width = _level_shape(main)
    levels = []
    for series in tif.series:
        if series is main or any(w in (series.name or "").lower() for w in _ASSOCIATED):
            continue
        if series.axes != main.axes or len(series.levels) != 1:
            continue
        h, w = _level_shape(series)
        factor = width / w
        same_channels = [n for a, n in zip(series.axes, series.shape, strict=True) if a not in "YX"]
        main_channels = [n for a, n in zip(main.axes, main.shape, strict=True) if a not in "YX"]
        if (
            factor > 1.5
            and abs(height / factor - h) <= 1.5
            and same_channels == main_channels
            and series.pages[0].is_tiled
        ):
            levels.append(series)
    return sorted(levels, key=lambda s: -np.prod(_level_shape(s)))


class TiffSlide(Slide):
    """TIFF-family files through tifffile, decoding only the tiles or strips a region needs.

    Decoded segments are held in a small LRU cache (``cache_bytes``), so neighbouring regions
    do not decode the same tile twice. Regions may be read from several threads at once.
    """

    thread_safe = True

    def __init__(self, path: str, cache_bytes: int = 256 * 2**20):
        import tifffile

        self._cache: OrderedDict[tuple[int, int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes, self._cached = cache_bytes, 0
        self._lock = threading.Lock()
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise _corrupt(path, exc, "the TIFF structure cannot be parsed: ") from exc
        try:
            self._open(path)
        except Exception:
            self._tif.close()
            raise

    def _open(self, path: str) -> None:
        tif = self._tif
        try:
            main = _main_series(tif)
            levels = list(main.levels)
        except Exception as exc:
            raise _corrupt(path, exc, "the TIFF structure cannot be parsed: ") from exc
        if len(levels) == 1:
            levels += _extra_levels(tif, main)
        self._levels = levels
        axes = main.axes
        shape = dict(zip(axes, main.shape, strict=True))
        for ax in axes:
            if ax not in "YXSC" and shape[ax] != 1 and ("C" in axes or "S" in axes):
                raise ImageReadError(
                    path,
                    f"has series axes {axes!r} {main.shape}: more than channels, rows and columns",
                    "export a single time point / focal plane",
                )
        extra = [a for a in axes if a not in "YXSC" and shape[a] != 1]
        rgb = "S" in axes
        n_channels = shape.get("S", shape.get("C", shape[extra[0]] if extra else 1))
        self._check_extent(path)
        kind = _tiff_format(tif)
        page0 = main.pages[0]
        names: list[str] = []
        pixel_size = None
        if kind == "ome-tiff" and tif.ome_metadata:
            names, pixel_size = _ome_pixels_metadata(tif.ome_metadata)
        elif kind == "qptiff":
            names = _qptiff_names(main.pages)
        elif kind == "aperio-svs":
            pixel_size = _aperio_mpp(tif.pages[0].description)
        elif kind == "philips-tiff":
            pixel_size = _philips_mpp(tif.philips_metadata)
        elif kind == "ventana-bif":
            pixel_size = _ventana_mpp(page0.tags.valueof(700))
        notes = ()
        if pixel_size is None:
            pixel_size, note = _tiff_resolution_um(page0, path)
            notes = (note,) if note else ()
        if len(names) != n_channels or not all(names) or len(set(names)) != len(names):
            names = _default_channel_names(n_channels, rgb)
        self.info = ImageInfo(
            path=path,
            shape=_level_shape(main),
            n_channels=int(n_channels),
            dtype=str(main.dtype),
            channel_names=names,
            pixel_size_um=pixel_size,
            rgb=rgb and n_channels in (3, 4),
            level_shapes=[_level_shape(level) for level in levels],
            format=kind,
            reader="tifffile",
            notes=notes,
        )
        # Channels of each level as (page, sample), and each level's pages.
        self._pages = []
        for level in levels:
            pages = list(level.pages)
            if any(p is None for p in pages):
                raise ImageReadError(path, "is truncated or corrupt: pages of the image are "
                                     "missing", "copy or export the file again")  # fmt: skip
            self._pages.append(pages)
        samples = int(shape.get("S", 1))
        if samples > 1 and len(self._pages[0]) > 1:
            raise ImageReadError(path, "has pages with several colour samples each",
                                 "export one RGB image or one page per channel")  # fmt: skip
        self._channels = (
            [(0, s) for s in range(samples)]
            if samples > 1
            else [(p, 0) for p in range(len(self._pages[0]))]
        )

    def _check_extent(self, path: str) -> None:
        """Every tile/strip of every level lies inside the file (a cut copy does not)."""
        size = os.path.getsize(path)
        for index, level in enumerate(self._levels):
            for page in level.pages:
                if page is None:
                    continue
                offsets = np.asarray(page.dataoffsets, np.int64)
                counts = np.asarray(page.databytecounts, np.int64)
                ends = offsets + counts
                if ends.size and int(ends.max()) > size:
                    beyond = int((ends > size).sum())
                    raise ImageReadError(
                        path,
                        f"is truncated or corrupt: {beyond} of {ends.size} tiles/strips of "
                        f"level {index} end beyond the file's {size} bytes (the file was cut)",
                        "copy or export the file again",
                    )

    def close(self) -> None:
        self._tif.close()

    def read_level(self, level: int = 0) -> np.ndarray:
        try:
            series = self._levels[level]
            data = series.asarray()
        except Exception as exc:
            raise _corrupt(self.info.path, exc, f"level {level} does not decode: ") from exc
        return _to_cyx(self.info.path, data, series.axes)

    def _segment(self, level: int, page_index: int, index: int) -> np.ndarray | None:
        """One decoded tile/strip. Thread-safe: the file read and the cache are locked, the
        decoding (imagecodecs releases the GIL) runs in parallel."""
        key = (level, page_index, index)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            page = self._pages[level][page_index]
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            data = None
            if offset and count:
                fh = self._tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
        keyframe = page.keyframe
        try:
            segment, _, _ = keyframe.decode(data, index, jpegtables=keyframe.jpegtables)
        except Exception as exc:
            raise _corrupt(self.info.path, exc, f"level {level} tile {index}: ") from exc
        if segment is not None:
            segment = np.asarray(segment)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = segment
                self._cached += 0 if segment is None else segment.nbytes
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= 0 if old is None else old.nbytes
        return segment

    def read_region(self, level: int, rows: slice, cols: slice,
                    channels: list[int] | None = None) -> np.ndarray:  # fmt: skip
        """As :meth:`Slide.read_region`; ``channels`` (separate-plane files): decode only
        those pages (a nuclear channel of an 8-channel round: an eighth of the work)."""
        height, width = self.level_shape(level)
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
        dtype = np.dtype(self.info.dtype)
        keyframe = self._pages[level][0].keyframe
        if keyframe.is_tiled:
            seg_h, seg_w = keyframe.tilelength, keyframe.tilewidth
        else:
            seg_h, seg_w = keyframe.rowsperstrip, width
        per_row = -(-width // seg_w)
        interleaved = self._channels[0][1] != self._channels[-1][1]  # samples of one page
        if interleaved:
            # copy whole pixels (all samples at once) and hand out a (C, h, w) view
            buffer = np.zeros((r1 - r0, c1 - c0, len(self._channels)), dtype)
            out = np.moveaxis(buffer, -1, 0)
            channels = [(None, (0, None))]
        else:
            wanted = range(len(self._channels)) if channels is None else channels
            out = np.zeros((len(wanted), r1 - r0, c1 - c0), dtype)
            channels = [(i, self._channels[c]) for i, c in enumerate(wanted)]
        for channel, (page_index, sample) in channels:
            for sy in range(r0 // seg_h, (r1 - 1) // seg_h + 1):
                for sx in range(c0 // seg_w, (c1 - 1) // seg_w + 1):
                    segment = self._segment(level, page_index, sy * per_row + sx)
                    if segment is None:
                        continue
                    # normalised shape: (separate samples, depth, length, width, contig samples)
                    block = segment.reshape(segment.shape[-3:]) if segment.ndim > 3 else segment
                    if sample is not None and block.ndim == 3:
                        block = block[..., sample]
                    y0, x0 = sy * seg_h, sx * seg_w
                    ys, ye = max(r0, y0), min(r1, y0 + block.shape[0], height)
                    xs, xe = max(c0, x0), min(c1, x0 + block.shape[1], width)
                    if ye <= ys or xe <= xs:
                        continue
                    part = block[ys - y0 : ye - y0, xs - x0 : xe - x0]
                    if channel is None:
                        buffer[ys - r0 : ye - r0, xs - c0 : xe - c0] = part[..., : buffer.shape[2]]
                    else:
                        out[channel, ys - r0 : ye - r0, xs - c0 : xe - c0] = part
        return out


def _to_cyx(path: str, data: np.ndarray, axes: str) -> np.ndarray:
    """Rearrange a tifffile series array to ``(C, Y, X)``, dropping singleton T/Z/Q axes."""
    for ax in list(axes):
        if ax not in "YXSC" and data.shape[axes.index(ax)] == 1:
            data = np.take(data, 0, axis=axes.index(ax))
            axes = axes.replace(ax, "")
    # Treat an unnamed non-spatial axis of a 3-D series as channels.
    axes = "".join("C" if a in "QIZT" else a for a in axes)
    if "S" in axes and "C" in axes:
        raise ImageReadError(path, "has both channels and colour samples", "export one of them")
    axes = axes.replace("S", "C")
    if "C" not in axes:
        data = data[np.newaxis]
        axes = "C" + axes
    if sorted(axes) != sorted("CYX"):
        raise ImageReadError(path, f"has axes {axes!r} that are not channels, rows, columns")
    return np.moveaxis(data, [axes.index("C"), axes.index("Y"), axes.index("X")], [0, 1, 2])


# ---- Zeiss CZI (pylibCZIrw) ---------------------------------------------------------------

_CZI_PIXEL_TYPES = {
    "Gray8": ("uint8", 1),
    "Gray16": ("uint16", 1),
    "Gray32Float": ("float32", 1),
    "Bgr24": ("uint8", 3),
    "Bgr48": ("uint16", 3),
    "Bgr96Float": ("float32", 3),
}


class CziSlide(Slide):
    """Zeiss CZI through pylibCZIrw.

    The main image is the largest scene (the whole image when the file has no scenes). CZI
    pyramids are not a fixed list of pages: levels here are 2× steps down to ~256 px, each
    read with pylibCZIrw's ``zoom``, which composes it from the file's pyramid subblocks.
    """

    def __init__(self, path: str):
        try:
            from pylibCZIrw import czi as pyczi
        except ImportError:
            raise MissingReaderError(path, "is a Zeiss CZI file but pylibCZIrw is not installed",
                                     "pip install pylibCZIrw") from None  # fmt: skip
        try:
            self._doc = pyczi.CziReader(path)
            box = self._doc.total_bounding_box
            scenes = self._doc.scenes_bounding_rectangle
            pixel_types = self._doc.pixel_types
            metadata = self._doc.metadata["ImageDocument"]["Metadata"]
        except Exception as exc:
            raise _corrupt(path, exc, "the CZI structure cannot be parsed: ") from exc
        for axis in ("Z", "T"):
            start, stop = box.get(axis, (0, 1))
            if stop - start > 1:
                raise ImageReadError(path, f"has {stop - start} planes along {axis}",
                                     "export a single time point / focal plane")  # fmt: skip
        if scenes:
            self._scene, rect = max(scenes.items(), key=lambda item: item[1].w * item[1].h)
        else:
            self._scene, rect = None, self._doc.total_bounding_rectangle
        self._origin = (rect.x, rect.y)
        c0, c1 = box.get("C", (0, 1))
        self._planes = list(range(c0, c1))
        dtype, samples = _CZI_PIXEL_TYPES.get(pixel_types[c0], (None, 0))
        if dtype is None:
            raise ImageReadError(path, f"has the unsupported CZI pixel type {pixel_types[c0]}")
        rgb = samples == 3
        n_channels = 3 if rgb else len(self._planes)
        names = []
        try:
            image_info = metadata["Information"]["Image"]
            channels = image_info["Dimensions"]["Channels"]["Channel"]
            channels = channels if isinstance(channels, list) else [channels]
            names = [str(ch.get("@Name", "")) for ch in channels]
        except (KeyError, TypeError):
            pass
        if rgb or len(names) != n_channels or not all(names):
            names = _default_channel_names(n_channels, rgb)
        pixel_size = None
        try:
            distances = metadata["Scaling"]["Items"]["Distance"]
            distances = distances if isinstance(distances, list) else [distances]
            x = next(d for d in distances if d.get("@Id") == "X")
            pixel_size = _positive(x.get("Value"))
            pixel_size = pixel_size * 1e6 if pixel_size else None  # metres → µm
        except (KeyError, TypeError, StopIteration):
            pass
        levels = [(rect.h, rect.w)]
        while max(levels[-1]) > 256:
            levels.append(tuple(max(1, -(-n // 2)) for n in levels[-1]))
        self._rgb, self._dtype = rgb, np.dtype(dtype)
        self.info = ImageInfo(
            path=path,
            shape=(rect.h, rect.w),
            n_channels=n_channels,
            dtype=dtype,
            channel_names=names,
            pixel_size_um=pixel_size,
            rgb=rgb,
            level_shapes=levels,
            format="czi",
            reader="pylibCZIrw",
        )

    def close(self) -> None:
        self._doc.close()

    def read_region(self, level: int, rows: slice, cols: slice) -> np.ndarray:
        factor = 2**level
        full_h, full_w = self.info.shape
        x0 = self._origin[0] + cols.start * factor
        y0 = self._origin[1] + rows.start * factor
        w = min(cols.stop * factor, full_w) - cols.start * factor
        h = min(rows.stop * factor, full_h) - rows.start * factor
        out_shape = (rows.stop - rows.start, cols.stop - cols.start)
        background = (255.0, 255.0, 255.0) if self._rgb else (0.0, 0.0, 0.0)
        planes = [self._planes[0]] if self._rgb else self._planes
        out = []
        for plane in planes:
            try:
                data = self._doc.read(
                    roi=(x0, y0, w, h),
                    plane={"C": plane},
                    scene=self._scene,
                    zoom=1.0 / factor,
                    background_pixel=background,
                )
            except Exception as exc:
                raise _corrupt(self.info.path, exc) from exc
            data = np.moveaxis(np.asarray(data), -1, 0)
            if self._rgb:
                data = data[::-1]  # CZI stores BGR
            out.append(_fit(data, out_shape))
        return np.concatenate(out).astype(self._dtype, copy=False)


def _fit(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or edge-pad a ``(C, h, w)`` array to ``shape`` (zoomed reads round by ±1 px)."""
    data = data[:, : shape[0], : shape[1]]
    pad = ((0, 0), (0, shape[0] - data.shape[1]), (0, shape[1] - data.shape[2]))
    return np.pad(data, pad, mode="edge") if any(p[1] for p in pad) else data


# ---- OpenSlide (MRXS and the other formats it reads) ----------------------------------------


class OpenSlideSlide(Slide):
    """Formats OpenSlide reads (3DHISTECH MRXS, …): RGB uint8, its pyramid levels.

    Transparent (unscanned) areas are composited onto white, i.e. empty glass.
    """

    def __init__(self, path: str):
        try:
            import openslide
        except ImportError:
            hint = "pip install openslide-python openslide-bin"
            raise MissingReaderError(path, "needs OpenSlide (not installed)", hint) from None
        try:
            self._slide = openslide.OpenSlide(path)
        except Exception as exc:
            raise _corrupt(path, exc, "OpenSlide cannot open it: ") from exc
        props = self._slide.properties
        mpp = _positive(props.get(openslide.PROPERTY_NAME_MPP_X))
        width, height = self._slide.dimensions
        self.info = ImageInfo(
            path=path,
            shape=(height, width),
            n_channels=3,
            dtype="uint8",
            channel_names=["R", "G", "B"],
            pixel_size_um=mpp,
            rgb=True,
            level_shapes=[(h, w) for w, h in self._slide.level_dimensions],
            format=f"openslide:{props.get(openslide.PROPERTY_NAME_VENDOR, 'unknown')}",
            reader="openslide",
        )

    def close(self) -> None:
        self._slide.close()

    def read_region(self, level: int, rows: slice, cols: slice) -> np.ndarray:
        factor = self._slide.level_downsamples[level]
        location = (int(round(cols.start * factor)), int(round(rows.start * factor)))
        size = (cols.stop - cols.start, rows.stop - rows.start)
        try:
            rgba = np.asarray(self._slide.read_region(location, level, size), np.float32)
        except Exception as exc:
            raise _corrupt(self.info.path, exc) from exc
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.moveaxis(np.rint(rgb).astype(np.uint8), -1, 0)


# ---- OME-Zarr (zarr) ------------------------------------------------------------------------


def _ome_zarr_attributes(path: str) -> dict | None:
    """The OME attributes (``multiscales``, ``omero``) of an OME-Zarr folder (NGFF 0.4:
    ``.zattrs``; 0.5: ``zarr.json`` → ``attributes.ome``), or None."""
    import json

    for name, keys in ((".zattrs", ()), ("zarr.json", ("attributes", "ome"))):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            try:
                with open(file, encoding="utf-8") as handle:
                    data = json.load(handle)
            except (OSError, ValueError):
                return None
            for key in keys:
                data = data.get(key, {}) if isinstance(data, dict) else {}
            if isinstance(data, dict) and data.get("multiscales"):
                return data
    return None


class ZarrSlide(Slide):
    """OME-Zarr (NGFF 0.4 or 0.5) through zarr: its multiscale levels, ``omero`` channel
    labels and the level-0 ``scale`` as the pixel size. Axes other than c, y, x must be
    singletons."""

    thread_safe = True

    def __init__(self, path: str):
        try:
            import zarr
        except ImportError:
            raise MissingReaderError(path, "is an OME-Zarr image but zarr is not installed",
                                     "pip install zarr") from None  # fmt: skip
        attributes = _ome_zarr_attributes(path)
        multiscale = attributes["multiscales"][0]
        axes = [a["name"] if isinstance(a, dict) else a for a in multiscale.get("axes", "cyx")]
        try:
            group = zarr.open_group(path, mode="r")
            self._arrays = [group[d["path"]] for d in multiscale["datasets"]]
        except Exception as exc:
            raise _corrupt(path, exc, "the Zarr structure cannot be read: ") from exc
        shape = dict(zip(axes, self._arrays[0].shape, strict=True))
        for axis, size in shape.items():
            if axis not in "cyx" and size != 1:
                raise ImageReadError(path, f"has {size} planes along {axis}",
                                     "export a single time point / focal plane")  # fmt: skip
        self._axes = axes
        n_channels = shape.get("c", 1)
        labels = [c.get("label", "") for c in (attributes.get("omero") or {}).get("channels", [])]
        rgb = bool((attributes.get("omero") or {}).get("rgb")) and n_channels == 3
        if len(labels) != n_channels or not all(labels):
            labels = _default_channel_names(n_channels, rgb)
        pixel_size = None
        transforms = multiscale["datasets"][0].get("coordinateTransformations", [])
        scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), None)
        x_axis = next((a for a in multiscale.get("axes", []) if isinstance(a, dict)
                       and a.get("name") == "x"), {})  # fmt: skip
        if scale and x_axis.get("unit"):
            factor = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}.get(x_axis["unit"])
            pixel_size = scale[axes.index("x")] * factor if factor else None
        self.info = ImageInfo(
            path=path,
            shape=(shape["y"], shape["x"]),
            n_channels=n_channels,
            dtype=str(self._arrays[0].dtype),
            channel_names=labels,
            pixel_size_um=pixel_size,
            rgb=rgb,
            level_shapes=[self._level_yx(a) for a in self._arrays],
            format="ome-zarr",
            reader="zarr",
        )

    def _level_yx(self, array) -> tuple[int, int]:
        shape = dict(zip(self._axes, array.shape, strict=True))
        return int(shape["y"]), int(shape["x"])

    def read_region(self, level: int, rows: slice, cols: slice) -> np.ndarray:
        index = tuple(
            rows if a == "y" else cols if a == "x" else slice(None) if a == "c" else 0
            for a in self._axes
        )
        try:
            data = np.asarray(self._arrays[level][index])
        except Exception as exc:
            raise _corrupt(self.info.path, exc) from exc
        return data if "c" in self._axes else data[np.newaxis]


# ---- PNG / JPEG (Pillow) ------------------------------------------------------------------


class PlainSlide(Slide):
    """PNG and JPEG: one level, decoded whole on first use (they cannot be read in parts)."""

    _BANDS = {"L": 1, "I;16": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3, "CMYK": 4}

    def __init__(self, path: str, kind: str):
        from PIL import Image  # pillow ships with scikit-image (via imageio)

        try:
            with Image.open(path) as img:
                width, height = img.size
                mode = img.mode
        except Exception as exc:
            raise _corrupt(path, exc, "the header cannot be read: ") from exc
        n_channels = self._BANDS.get(mode, 3)
        rgb = n_channels in (3, 4)
        self._array: np.ndarray | None = None
        self.info = ImageInfo(
            path=path,
            shape=(height, width),
            n_channels=n_channels,
            dtype={"I;16": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8"),
            channel_names=_default_channel_names(n_channels, rgb),
            pixel_size_um=None,
            rgb=rgb,
            level_shapes=[(height, width)],
            format=kind,
            reader="pillow",
        )

    def read_region(self, level: int, rows: slice, cols: slice) -> np.ndarray:
        if self._array is None:
            from skimage.io import imread

            try:
                data = imread(self.info.path)
            except Exception as exc:
                raise _corrupt(self.info.path, exc) from exc
            self._array = data[np.newaxis] if data.ndim == 2 else np.moveaxis(data, -1, 0)
        return self._array[:, rows, cols]


def open_slide(path: str | os.PathLike, cache_bytes: int = 256 * 2**20) -> Slide:
    """Open an image file with the reader its content calls for (``cache_bytes``: decoded
    tiles kept by the TIFF reader).

    Raises
    ------
    ImageReadError
        Missing, not an image, truncated or corrupt, or an unsupported layout; the message
        names the file and what to do. :class:`MissingReaderError` when the format is known
        but its reader package is not installed.
    """
    path = str(path)
    kind = detect_format(path)
    if kind == "tiff":
        return TiffSlide(path, cache_bytes)
    if kind == "czi":
        return CziSlide(path)
    if kind == "openslide":
        return OpenSlideSlide(path)
    if kind == "ome-zarr":
        return ZarrSlide(path)
    return PlainSlide(path, kind)


def read_info(path: str | os.PathLike) -> ImageInfo:
    """Only the header of an image file (see :func:`open_slide` for the errors)."""
    with open_slide(path) as slide:
        return slide.info


# Two images of one tissue cover fields of view of comparable physical size: a region scanned
# at high power against a whole slide differs by a few times, not by more than this factor.
# Pixel sizes implying more (a 72-dpi export read as 353 µm per pixel against a 0.5 µm scan,
# a pixel size given in nm for µm) are not trusted; the pair is registered as one of unknown
# pixel sizes (scale searched, × / ÷ 3), which a real magnification mismatch still fits.
MAX_EXTENT_RATIO = 10.0


def implausible_pixel_sizes(fixed_info: ImageInfo, moving_info: ImageInfo) -> str | None:
    """Why the two pixel sizes cannot both be right (None when they are plausible or when
    either is unknown): the physical extents they imply differ by more than
    ``MAX_EXTENT_RATIO``."""
    fixed_px, moving_px = fixed_info.pixel_size_um, moving_info.pixel_size_um
    if not (fixed_px and moving_px):
        return None
    extents = [max(info.shape) * px for info, px in ((fixed_info, fixed_px),
                                                     (moving_info, moving_px))]  # fmt: skip
    ratio = max(extents) / min(extents)
    if ratio <= MAX_EXTENT_RATIO:
        return None
    return (
        f"the pixel sizes {fixed_px:.4g} µm ({fixed_info.path}) and {moving_px:.4g} µm "
        f"({moving_info.path}) imply fields of view {extents[0] / 1000:.3g} mm and "
        f"{extents[1] / 1000:.3g} mm across ({ratio:.0f}× apart): one is wrong; the pair is "
        "registered as if the pixel sizes were unknown (scale searched); give the right "
        "one in the sheet (*_pixel_size_um)"
    )


def pixel_size_override(value) -> float | None:
    """A sheet's ``*_pixel_size_um`` cell as a positive float (None when empty or invalid)."""
    if value is None or str(value).strip() in ("", "nan"):
        return None
    return _positive(value)


def output_pixel_size(sheet_value, reference_path: str, fallback: float | None) -> float | None:
    """Pixel size of an image on the reference's grid: the sheet's value for the reference,
    else the reference file's, else ``fallback``."""
    return pixel_size_override(sheet_value) or read_info(reference_path).pixel_size_um or fallback


def with_pixel_size(info: ImageInfo, pixel_size_um: float | None) -> ImageInfo:
    """``info`` with its pixel size overridden (a sample-sheet value); unchanged for None."""
    if pixel_size_um is None:
        return info
    return dataclasses.replace(info, pixel_size_um=float(pixel_size_um))


def verify_image(path: str | os.PathLike) -> ImageInfo:
    """The header, after checking that the file is complete and its smallest level decodes."""
    with open_slide(path) as slide:
        slide.verify()
        return slide.info


def read_image(path: str | os.PathLike, level: int = 0) -> np.ndarray:
    """The pixels of one pyramid level as ``(C, Y, X)`` in the file's dtype."""
    with open_slide(path) as slide:
        return slide.read_level(level)


def choose_level(info: ImageInfo, downsample: float) -> int:
    """Index of the coarsest pyramid level that is still at least as fine as ``downsample``.

    Parameters
    ----------
    info : ImageInfo
    downsample : float
        Wanted ratio of full-resolution size to working size (≥ 1).
    """
    best = 0
    for index, (height, width) in enumerate(info.level_shapes):
        level_downsample = max(info.shape[0] / height, info.shape[1] / width)
        if level_downsample <= downsample * (1 + 1e-6):
            best = index
    return best


class RegionReader:
    """Rectangular regions of one pyramid level of any supported file.

    Attributes
    ----------
    shape : tuple of int
        ``(C, Y, X)`` of the level.
    dtype : numpy.dtype
    info : ImageInfo
    """

    def __init__(self, path: str | os.PathLike, level: int = 0, cache_bytes: int = 256 * 2**20):
        self._slide = open_slide(path, cache_bytes)
        self.info = self._slide.info
        self.level = level
        self.shape = (self.info.n_channels, *self._slide.level_shape(level))
        self.dtype = np.dtype(self.info.dtype)
        self.thread_safe = self._slide.thread_safe

    def read(self, rows: slice, cols: slice, channels: list[int] | None = None) -> np.ndarray:
        """Pixels ``[:, rows, cols]`` (slices with explicit, in-range start and stop), or only
        ``channels`` (decoded alone where the file stores channels as separate planes)."""
        if channels is None:
            return self._slide.read_region(self.level, rows, cols)
        if isinstance(self._slide, TiffSlide):
            region = self._slide.read_region(self.level, rows, cols, channels)
            if region.shape[0] == len(channels):
                return region
            return region[channels]  # interleaved samples: read whole, then selected
        return self._slide.read_region(self.level, rows, cols)[channels]

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
