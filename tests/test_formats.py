"""The reader layer on vendor-style files the tests write themselves."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import run_snakemake
from regflow import formats
from regflow.formats import (
    ImageReadError,
    MissingReaderError,
    OpenSlideSlide,
    RegionReader,
    detect_format,
    read_image,
    read_info,
    verify_image,
)
from regflow.io import write_ome_tiff
from regflow.vendorfiles import write_czi, write_generic_tiff, write_qptiff, write_svs


@pytest.fixture(scope="module")
def scene(ihc_rgb):
    """A 512 × 384 crop of the real IHC slide, (3, Y, X) uint8."""
    return np.ascontiguousarray(ihc_rgb[:, :512, :384])


@pytest.fixture(scope="module")
def channels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 60000, (3, 700, 600), dtype=np.uint16)


def _region_matches_level(path, level, rows, cols):
    with RegionReader(path, level=level, cache_bytes=50_000) as reader:
        region = reader.read(rows, cols)
    np.testing.assert_array_equal(region, read_image(path, level)[:, rows, cols])
    return region


@pytest.mark.parametrize("compression", ["jpeg", "jpeg2000"])
def test_aperio_svs_main_image_levels_and_mpp(tmp_path, scene, compression):
    path = tmp_path / "slide.svs"
    write_svs(path, np.moveaxis(scene, 0, -1), mpp=0.4990, compression=compression,
              min_level_size=128)  # fmt: skip
    info = verify_image(path)
    assert info.format == "aperio-svs" and info.reader == "tifffile"
    # the baseline, never the label (300×200) or macro page; Aperio's 4× levels
    assert info.shape == (512, 384) and info.rgb and info.channel_names == ["R", "G", "B"]
    assert info.level_shapes == [(512, 384), (128, 96)]
    assert info.pixel_size_um == pytest.approx(0.499)
    pixels = read_image(path)
    assert np.abs(pixels.astype(int) - scene).mean() < 3.0  # lossy tiles, same picture
    _region_matches_level(path, 0, slice(100, 400), slice(250, 384))
    _region_matches_level(path, 1, slice(10, 128), slice(0, 96))


def test_qptiff_channel_names_from_page_xml(tmp_path, channels):
    path = tmp_path / "scan.qptiff"
    write_qptiff(path, channels, ["DAPI", "CD8", "PanCK"], 0.4975, min_level_size=200)
    info = verify_image(path)
    assert info.format == "qptiff"
    assert info.channel_names == ["DAPI", "CD8", "PanCK"]
    assert info.pixel_size_um == pytest.approx(0.4975)
    assert info.level_shapes == [(700, 600), (350, 300), (175, 150)]
    np.testing.assert_array_equal(read_image(path), channels)  # LZW is lossless
    _region_matches_level(path, 1, slice(30, 333), slice(1, 299))


@pytest.mark.parametrize(
    ("compression", "tile"), [("lzw", 256), ("zstd", 128), ("deflate", None), ("webp", 256)]
)
def test_generic_tiff_compressions_and_resolution_tags(tmp_path, scene, compression, tile):
    path = tmp_path / "generic.tif"
    write_generic_tiff(path, scene, compression, tile, pixel_size_um=0.25)
    info = verify_image(path)
    assert info.format == "tiff" and info.pixel_size_um == pytest.approx(0.25)
    if compression == "webp":
        return  # lossy by default; it decodes, which is what matters here
    np.testing.assert_array_equal(read_image(path), scene)
    _region_matches_level(path, 0, slice(70, 500), slice(33, 380))


def test_czi_fluorescence_and_rgb(tmp_path, channels, scene):
    path = tmp_path / "scan.czi"
    write_czi(path, channels, ["DAPI", "CD8", "PanCK"], 0.65)
    info = verify_image(path)
    assert (info.format, info.reader) == ("czi", "pylibCZIrw")
    assert info.channel_names == ["DAPI", "CD8", "PanCK"]
    assert info.pixel_size_um == pytest.approx(0.65)
    np.testing.assert_array_equal(read_image(path), channels)
    assert read_image(path, 1).shape == (3, 350, 300)
    _region_matches_level(path, 0, slice(10, 400), slice(100, 600))
    # RGB: stored BGR by CZI, read back as RGB; the scene's stage offset does not matter
    path = tmp_path / "brightfield.czi"
    write_czi(path, scene, None, 0.22, rgb=True, origin=(300, 120))
    info = read_info(path)
    assert info.rgb and info.shape == (512, 384)
    np.testing.assert_array_equal(read_image(path), scene)


def test_openslide_adapter_reads_what_tifffile_reads(tmp_path, scene):
    """MRXS and NDPI cannot be written here: the OpenSlide adapter is checked on files
    OpenSlide also reads (its generic-TIFF and Aperio drivers) against tifffile's pixels."""
    path = tmp_path / "generic.tif"
    write_generic_tiff(path, scene, "lzw", 256, pixel_size_um=0.25)
    with OpenSlideSlide(str(path)) as slide:
        assert slide.info.format == "openslide:generic-tiff" and slide.info.rgb
        assert slide.info.shape == (512, 384)
        np.testing.assert_array_equal(slide.read_level(0), scene)
        np.testing.assert_array_equal(
            slide.read_region(0, slice(99, 300), slice(7, 380)), scene[:, 99:300, 7:380]
        )
    svs = tmp_path / "slide.svs"
    write_svs(svs, np.moveaxis(scene, 0, -1), mpp=0.5, compression="jpeg", min_level_size=128)
    with OpenSlideSlide(str(svs)) as slide:
        assert slide.info.pixel_size_um == pytest.approx(0.5)
        assert slide.info.level_shapes == read_info(svs).level_shapes
        difference = slide.read_level(1).astype(int) - read_image(svs, 1)
        assert np.abs(difference).mean() < 1.0  # two JPEG decoders


def test_dicom_wsi_levels_pixels_and_pixel_spacing(tmp_path, scene):
    """A DICOM WSI series (one VL Whole Slide Microscopy instance per level, as scanners
    export them) is read through OpenSlide from any of its files."""
    from regflow.vendorfiles import write_dicom_wsi

    files = write_dicom_wsi(tmp_path / "slide", np.moveaxis(scene, 0, -1), 0.25, 128, 100)
    assert detect_format(files[0]) == "openslide"
    info = read_info(files[0])
    assert info.format == "openslide:dicom" and info.reader == "openslide" and info.rgb
    assert info.shape == (512, 384) and info.pixel_size_um == pytest.approx(0.25)
    assert info.level_shapes == [(512, 384), (256, 192), (128, 96), (64, 48)]
    np.testing.assert_array_equal(read_image(files[0]), scene)  # uncompressed frames
    with RegionReader(files[0]) as reader:
        region = reader.read(slice(99, 300), slice(7, 380))
    np.testing.assert_array_equal(region, scene[:, 99:300, 7:380])
    assert read_info(files[2]).shape == (512, 384)  # any file of the series opens the slide


def test_a_dicom_file_that_is_no_slide_is_named(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "CT", 8, 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="DICOM file but not a whole-slide image") as error:
        detect_format(str(path))
    assert str(path) in str(error.value)


def test_the_largest_series_is_the_slide_not_a_label_first(tmp_path, scene):
    """A file whose first series is a small overview (VALIS #76: the label registered)."""
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.moveaxis(scene[:, ::8, ::8], 0, -1), photometric="rgb", metadata=None)
        tif.write(np.moveaxis(scene, 0, -1), photometric="rgb", tile=(128, 128), metadata=None)
    assert read_info(path).shape == (512, 384)
    np.testing.assert_array_equal(read_image(path), scene)


def test_bad_files_are_named_with_what_to_do(tmp_path, scene):
    svs = tmp_path / "slide.svs"
    write_svs(svs, np.moveaxis(scene, 0, -1), mpp=0.5)
    cut = tmp_path / "cut.svs"
    cut.write_bytes(svs.read_bytes()[: svs.stat().st_size // 2])
    with pytest.raises(ImageReadError) as error:
        read_info(cut)
    message = error.value.describe("sample 's1', column moving")
    assert message.startswith(f"file {cut} (sample 's1', column moving) is truncated or corrupt")
    assert "end beyond the file" in message and "export the file again" in message
    text = tmp_path / "notes.svs"
    text.write_text("this is a text file with a slide's name\n")
    with pytest.raises(ImageReadError, match="is not a supported image; supported: TIFF family"):
        read_info(text)
    empty = tmp_path / "empty.czi"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="is empty"):
        read_info(empty)
    # garbage where a tile should be: the header parses, decoding the pixels fails
    write_generic_tiff(tmp_path / "g.tif", scene, "zstd", 256)
    with tifffile.TiffFile(tmp_path / "g.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[1], tif.pages[0].databytecounts[1]
    damaged = bytearray((tmp_path / "g.tif").read_bytes())
    damaged[offset : offset + count] = b"\x07" * count
    (tmp_path / "g.tif").write_bytes(damaged)
    read_info(tmp_path / "g.tif")  # the header alone is fine
    with pytest.raises(ImageReadError, match="is truncated or corrupt: level 0 does not decode"):
        verify_image(tmp_path / "g.tif")


def test_a_missing_codec_names_the_package():
    error = formats._corrupt(
        "x.svs", ValueError("<COMPRESSION.JPEG2000: 34712> requires the 'imagecodecs' package")
    )
    assert isinstance(error, MissingReaderError)
    assert "needs a codec that is not installed" in str(error)
    assert str(error).endswith("pip install imagecodecs")


def test_sheet_pixel_size_overrides_the_file(tmp_path, scene):
    from regflow.formats import pixel_size_override, with_pixel_size

    path = tmp_path / "generic.tif"
    write_generic_tiff(path, scene, "lzw", 256)  # no resolution tags
    info = read_info(path)
    assert info.pixel_size_um is None
    assert with_pixel_size(info, pixel_size_override("0.5")).pixel_size_um == 0.5
    assert with_pixel_size(info, pixel_size_override("")).pixel_size_um is None
    assert pixel_size_override("-1") is None and pixel_size_override("x") is None


# ---- the workflow on vendor files: known transforms recovered, metadata carried -----------


@pytest.fixture(scope="module")
def format_run(tmp_path_factory):
    from regflow.example import make_format_cohort

    workdir = tmp_path_factory.mktemp("formats")
    sheet = make_format_cohort(workdir / "data", size=320)
    sheet.to_csv(workdir / "samples.tsv", sep="\t", index=False)
    (workdir / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    run_snakemake(workdir, "--cores", "2")
    return workdir, sheet


def _landmark_errors(workdir, row):
    fixed = pd.read_csv(row.fixed_landmarks)[["X", "Y"]].to_numpy()
    mapped = pd.read_csv(workdir / "out" / row.sample / "landmarks_warped.csv")[["X", "Y"]]
    return np.hypot(*(mapped.to_numpy() - fixed).T)


@pytest.mark.workflow
def test_vendor_pairs_register_at_level_0_with_their_metadata(format_run):
    workdir, sheet = format_run
    expected_names = {
        "svs_20x": None,  # RGB: interleaved, no channel list
        "qptiff": ["DAPI", "DAB-marker"],
        "czi": ["DAPI", "DAB-marker"],
        "lzw_tiff": None,
        "dicom": None,
    }
    expected_moving_px = {"svs_20x": 0.5, "qptiff": 0.5, "czi": 0.65, "lzw_tiff": 0.5, "dicom": 0.5}
    for row in sheet.itertuples():
        errors = _landmark_errors(workdir, row)
        # a 20×/40× pair (and the others) map landmarks to < 1 px at level 0 of the 40× slide
        assert np.isfinite(errors).all(), row.sample
        assert np.median(errors) < 0.5 and errors.max() < 1.0, (row.sample, errors)
        warped = workdir / "out" / row.sample / "warped.ome.tif"
        with tifffile.TiffFile(warped) as tif:
            assert tif.is_ome
            pixels = tif.ome_metadata
        info = read_info(warped)
        assert info.shape == (640, 640)  # the fixed (40×) grid
        assert info.pixel_size_um == pytest.approx(0.25)  # the fixed image's pixel size
        if expected_names[row.sample]:
            assert info.channel_names == expected_names[row.sample]
            assert 'Name="DAPI"' in pixels
        metrics = json.loads((workdir / "out" / row.sample / "metrics.json").read_text())
        assert metrics["images"]["fixed"]["format"] == "aperio-svs"
        assert metrics["images"]["fixed"]["pixel_size_um"] == pytest.approx(0.25)
        assert metrics["images"]["moving"]["pixel_size_um"] == pytest.approx(
            expected_moving_px[row.sample]
        )
    formats_seen = {
        json.loads((workdir / "out" / s / "metrics.json").read_text())["images"]["moving"]["format"]
        for s in sheet["sample"]
    }
    assert formats_seen == {"aperio-svs", "qptiff", "czi", "tiff", "openslide:dicom"}


@pytest.mark.parametrize("channels", [[1], [2, 0]])
def test_a_region_of_some_channels_equals_those_of_the_whole_region(tmp_path, channels):
    """Separate-plane files decode only the channels asked for (an 8-channel round's nuclear
    channel alone); interleaved RGB is read whole and the samples picked."""
    rng = np.random.default_rng(5)
    planes = rng.integers(0, 60000, (3, 300, 260), dtype=np.uint16)
    write_ome_tiff(tmp_path / "planes.ome.tif", planes, ["a", "b", "c"], 0.5, tile=128)
    rgb = rng.integers(0, 255, (3, 300, 260), dtype=np.uint8)
    write_ome_tiff(tmp_path / "rgb.ome.tif", rgb, ["R", "G", "B"], 0.5, rgb=True, tile=128)
    for name in ("planes.ome.tif", "rgb.ome.tif"):
        with RegionReader(tmp_path / name) as reader:
            rows, cols = slice(37, 251), slice(5, 199)
            np.testing.assert_array_equal(reader.read(rows, cols, channels),
                                          reader.read(rows, cols)[channels])  # fmt: skip
