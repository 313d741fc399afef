"""The tiled OpenCV warp against a plain scipy reference, and the OME-Zarr output."""

import json

import numpy as np
import pytest
import zarr
from regflow.formats import read_image, read_info
from regflow.io import RegionReader, pyramid_shapes, write_ome_tiff, write_ome_zarr_tiled
from regflow.transform import Transform, inside_image
from regflow.warp import warp_blocks, warp_file, warp_image
from scipy import ndimage as ndi


def _transform(shape, amplitude=6.0, seed=1):
    """A rotation, shift and smooth displacement field on a coarse grid."""
    rng = np.random.default_rng(seed)
    angle = 0.3
    affine = np.array([[np.cos(angle), -np.sin(angle), 40.0],
                       [np.sin(angle), np.cos(angle), -30.0], [0, 0, 1]])  # fmt: skip
    grid = (64, 64)
    field = np.stack([ndi.gaussian_filter(rng.normal(size=grid), 8) for _ in range(2)])
    field *= amplitude / np.abs(field).max()
    sy, sx = grid[0] / shape[0], grid[1] / shape[1]
    to_grid = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return Transform(affine, field.astype(np.float32), to_grid, shape, shape)


def _reference(image, transform, fill, order):
    """What the warp computed before: scipy per channel, point by point, over the image."""
    yy, xx = np.mgrid[: transform.fixed_shape[0], : transform.fixed_shape[1]]
    points = np.stack([xx.ravel(), yy.ravel()], 1).astype(float)
    moving = transform.fixed_to_moving(points)
    coords = np.stack([moving[:, 1], moving[:, 0]])
    inside = inside_image(moving[:, 0], moving[:, 1], image.shape)
    out = []
    for channel, value in zip(image, fill, strict=True):
        values = ndi.map_coordinates(channel.astype(np.float32), coords, order=order,
                                     mode="nearest")  # fmt: skip
        values = np.where(inside, values, value)
        if image.dtype.kind in "ui":
            info = np.iinfo(image.dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        out.append(values.astype(image.dtype).reshape(transform.fixed_shape))
    return np.stack(out)


def test_linear_warp_equals_the_reference_within_a_grey_level(ihc_rgb):
    image = ihc_rgb[:, :400, :480]
    transform = _transform(image.shape[1:])
    fill = np.array([255.0, 255.0, 255.0])
    fast = warp_image(image, transform, fill, tile=128, order=1, threads=2)
    difference = np.abs(fast.astype(int) - _reference(image, transform, fill, 1))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_16bit_and_float_linear_warps_equal_the_reference(ihc_rgb):
    """Positions are placed on a 1/1024-px grid (so that tiling never changes a pixel):
    at most 1/2048 px of the local slope, i.e. a grey level for 8-bit images and a few
    levels of 65535 at the steepest 16-bit edges."""
    image = (ihc_rgb[:, :300, :300].astype(np.uint16) * 257) ^ 0x0F0F  # steep 16-bit edges
    transform = _transform(image.shape[1:])
    fast = warp_image(image, transform, np.zeros(3), tile=100).astype(float)
    reference = _reference(image, transform, np.zeros(3), 1).astype(float)
    slope = max(np.abs(np.diff(image.astype(float), axis=a)).max() for a in (1, 2))
    assert np.abs(fast - reference).max() <= 1 + slope / 2048
    floats = image.astype(np.float32) / 65535
    fast = warp_image(floats, transform, np.zeros(3), tile=100)
    reference = _reference(floats, transform, np.zeros(3), 1)
    np.testing.assert_allclose(fast, reference, atol=1e-6 + slope / 65535 / 2048)


def test_nearest_warp_is_exact_and_keeps_labels():
    labels = (np.arange(300 * 360).reshape(1, 300, 360) % 977).astype(np.int32)  # no cv2 dtype
    transform = _transform(labels.shape[1:])
    fast = warp_image(labels, transform, np.zeros(1), tile=96, order=0, threads=2)
    np.testing.assert_array_equal(fast, _reference(labels, transform, np.zeros(1), 0))
    assert set(np.unique(fast)) <= set(np.unique(labels))


def test_tiling_and_threads_never_change_the_result(ihc_rgb):
    image = ihc_rgb[:, :333, :301]
    transform = _transform(image.shape[1:])
    one = warp_image(image, transform, tile=4096)
    many = warp_image(image, transform, tile=48, threads=2)
    np.testing.assert_array_equal(one, many)


@pytest.fixture()
def moving_file(tmp_path, ihc_rgb):
    channels = np.stack([ihc_rgb[0], ihc_rgb[1], ihc_rgb[2], 255 - ihc_rgb[0]]).astype(np.uint16)
    path = tmp_path / "moving.ome.tif"
    write_ome_tiff(path, channels * 100, ["DAPI", "CD3", "CD8", "PanCK"], 0.5, tile=128)
    return path, channels * 100


def test_streamed_warp_file_matches_in_memory_and_is_pyramidal(tmp_path, moving_file):
    path, channels = moving_file
    transform = _transform(channels.shape[1:])
    settings = {"order": 1, "tile": 128, "fill": "zero", "pyramid_min_size": 128,
                "compression": "zlib", "format": "ome-tiff"}  # fmt: skip
    warp_file(str(path), transform, str(tmp_path / "w.ome.tif"), "fluorescence", 0.5,
              settings, threads=2)  # fmt: skip
    expected = warp_image(channels, transform, np.zeros(4), tile=128)
    np.testing.assert_array_equal(read_image(tmp_path / "w.ome.tif"), expected)
    info = read_info(tmp_path / "w.ome.tif")
    assert info.level_shapes == [s[1:] for s in pyramid_shapes((4, 512, 512), 128)]
    assert info.channel_names == ["DAPI", "CD3", "CD8", "PanCK"]


def test_ome_zarr_output_levels_scale_units_labels_and_level_0(tmp_path, moving_file):
    path, channels = moving_file
    transform = _transform(channels.shape[1:])
    base = {"order": 1, "tile": 128, "fill": "zero", "pyramid_min_size": 100,
            "compression": "zlib"}  # fmt: skip
    for fmt, name in (("ome-tiff", "w.ome.tif"), ("ome-zarr", "w.ome.zarr")):
        warp_file(str(path), transform, str(tmp_path / name), "fluorescence", 0.65,
                  base | {"format": fmt})  # fmt: skip
    group = zarr.open_group(str(tmp_path / "w.ome.zarr"), mode="r")
    multiscale = group.attrs["multiscales"][0]
    assert multiscale["version"] == "0.4"
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert multiscale["axes"][2] == {"name": "x", "type": "space", "unit": "micrometer"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[1.0, 0.65 * 2**k, 0.65 * 2**k] for k in range(len(scales))]
    assert [c["label"] for c in group.attrs["omero"]["channels"]] == ["DAPI", "CD3", "CD8",
                                                                      "PanCK"]  # fmt: skip
    shapes = [group[d["path"]].shape for d in multiscale["datasets"]]
    assert shapes == pyramid_shapes((4, 512, 512), 100) and len(shapes) == 4
    tiff = read_image(tmp_path / "w.ome.tif")
    np.testing.assert_array_equal(np.asarray(group["0"]), tiff)  # level 0 equals the TIFF's
    for level in range(1, len(shapes)):  # and so do the reduced levels
        np.testing.assert_array_equal(np.asarray(group[str(level)]),
                                      read_image(tmp_path / "w.ome.tif", level))  # fmt: skip
    # the reader layer opens it like any image
    info = read_info(tmp_path / "w.ome.zarr")
    assert info.format == "ome-zarr" and info.pixel_size_um == pytest.approx(0.65)
    with RegionReader(tmp_path / "w.ome.zarr") as reader:
        np.testing.assert_array_equal(reader.read(slice(10, 90), slice(30, 200)),
                                      tiff[:, 10:90, 30:200])  # fmt: skip
    assert json.loads((tmp_path / "w.ome.zarr" / ".zgroup").read_text())["zarr_format"] == 2


def test_ome_zarr_rgb_and_streaming_any_order(tmp_path, ihc_rgb):
    blocks = [(r // 128, c // 128, ihc_rgb[:, r : r + 128, c : c + 128])
              for r in range(0, 512, 128) for c in range(0, 512, 128)][::-1]  # fmt: skip
    write_ome_zarr_tiled(tmp_path / "rgb.ome.zarr", ihc_rgb.shape, np.uint8, iter(blocks),
                         ["R", "G", "B"], None, rgb=True, tile=128,
                         pyramid_min_size=256)  # fmt: skip
    group = zarr.open_group(str(tmp_path / "rgb.ome.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(group["0"]), ihc_rgb)
    omero = group.attrs["omero"]
    assert omero["rgb"] and [c["color"] for c in omero["channels"]] == ["FF0000", "00FF00",
                                                                        "0000FF"]  # fmt: skip
    assert "unit" not in group.attrs["multiscales"][0]["axes"][1]  # no pixel size: no unit


def test_streamed_blocks_must_be_row_major_for_tiff(tmp_path, ihc_rgb):
    from regflow.io import write_ome_tiff_tiled

    blocks = [(1, 0, ihc_rgb[:, 256:, :256]), (0, 0, ihc_rgb[:, :256, :256])]
    with pytest.raises(ValueError, match="row-major"):
        write_ome_tiff_tiled(tmp_path / "x.ome.tif", (3, 512, 256), np.uint8, iter(blocks),
                             ["R", "G", "B"], rgb=True, tile=256)  # fmt: skip
    assert not (tmp_path / "x.ome.tif").exists()


def test_warp_blocks_reads_a_file_from_threads(tmp_path, moving_file):
    path, channels = moving_file
    transform = _transform(channels.shape[1:])
    with RegionReader(path, cache_bytes=200_000) as source:
        assert source.thread_safe
        blocks = list(warp_blocks(source, transform, np.zeros(4), tile=64, threads=2))
    whole = warp_image(channels, transform, np.zeros(4), tile=64)
    for row, col, block in blocks:
        np.testing.assert_array_equal(
            block,
            whole[:, row * 64 : row * 64 + block.shape[1], col * 64 : col * 64 + block.shape[2]],
        )


def test_associated_image_at_another_resolution_follows_its_pixel_size():
    from regflow.warp import associated_scale, associated_transform

    # a label image exported at half the moving image's resolution (1 µm vs 0.5 µm)
    assert associated_scale((256, 300), 1.0, (512, 600), 0.5) == 2.0
    assert associated_scale((512, 600), None, (512, 600), None) == 1.0
    with pytest.raises(ValueError, match="relation is unknown"):
        associated_scale((256, 300), None, (512, 600), 0.5)
    with pytest.raises(ValueError, match="does not cover the moving image"):
        associated_scale((100, 300), 1.0, (512, 600), 0.5)
    transform = _transform((512, 600))
    labels = np.kron(np.arange(16 * 20).reshape(16, 20), np.ones((32, 30), int))  # 512×600
    half = labels[::2, ::2][None].astype(np.uint16)  # the same labels at 256×300
    full = warp_image(labels[None].astype(np.uint16), transform, np.zeros(1), order=0)
    scaled = associated_transform(transform, (256, 300), 2.0)
    from_half = warp_image(half, scaled, np.zeros(1), order=0)
    # the same label almost everywhere: only pixels on a label border may pick its neighbour
    assert (from_half == full).mean() > 0.97


@pytest.mark.parametrize("amplitude", [0.0, 6.0])
def test_separable_fast_path_equals_the_general_path(ihc_rgb, amplitude):
    """The bilinear fast path (maps straight from the separable parts, window from their
    bounds, outside mask only for blocks leaving the image) gives exactly the pixels of the
    general path (the block's coordinates, their window and mask), edges and fill included."""
    image = ihc_rgb[:, :300, :360]
    transform = _transform(image.shape[1:], amplitude=amplitude)
    fill = np.array([255.0, 0.0, 128.0])
    fast = warp_image(image, transform, fill, tile=64)

    class General(Transform):
        def separable_parts(self, rows, cols):
            return None  # forces the general path of warp_tile

        def moving_coordinates(self, rows, cols):
            return Transform.moving_coordinates(transform, rows, cols)

    general = General(transform.affine, transform.displacement,
                           transform.fixed_full_to_working, transform.fixed_shape,
                           transform.moving_shape)  # fmt: skip
    slow = warp_image(image, general, fill, tile=64)
    outside = (slow == fill.astype(np.uint8)[:, None, None]).all(axis=0)
    assert 0.05 < outside.mean() < 0.6  # the blocks do leave the image
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize(("fmt", "name"), [("ome-tiff", "l.ome.tif"), ("ome-zarr", "l.ome.zarr")])
def test_label_image_pyramid_levels_hold_only_its_labels(tmp_path, fmt, name):
    """A label image is resampled by nearest neighbour, and its reduced levels take one
    pixel per 2×2 block: a mean would invent labels between neighbouring cells."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.repeat(rng.integers(1, 60000, (48, 48)), 8, 0), 8, 1)
    labels = labels.astype(np.uint16)[None]  # 384² of 8-px cells, 2304 distinct labels
    write_ome_tiff(tmp_path / "labels.ome.tif", labels, ["labels"], 0.5, tile=128)
    transform = _transform(labels.shape[1:], amplitude=3.0)
    settings = {"order": 1, "tile": 128, "fill": "zero", "pyramid_min_size": 64,
                "compression": "zlib", "format": fmt}  # fmt: skip
    written = warp_file(str(tmp_path / "labels.ome.tif"), transform, str(tmp_path / name),
                        "fluorescence", 0.5, settings)  # fmt: skip
    assert written["order"] == 0
    allowed = set(np.unique(labels)) | {0}
    info = read_info(str(tmp_path / name))
    assert len(info.level_shapes) >= 3
    for level in range(len(info.level_shapes)):
        values = set(np.unique(read_image(str(tmp_path / name), level)))
        assert values <= allowed, f"level {level} has {len(values - allowed)} invented labels"


def test_jpeg_output_for_brightfield_rgb_only(tmp_path, ihc_rgb, moving_file):
    """``warp.compression: jpeg`` writes 8-bit RGB (brightfield) as JPEG tiles on every level,
    close to the lossless result and several times smaller; a 16-bit fluorescence image and
    an 8-bit label image stay lossless (zlib), exactly as with zlib."""
    import tifffile

    image = ihc_rgb[:, :512, :512]
    write_ome_tiff(tmp_path / "rgb.ome.tif", image, ["R", "G", "B"], 0.5, rgb=True, tile=128)
    transform = _transform(image.shape[1:])
    base = {"order": 1, "tile": 128, "fill": "auto", "pyramid_min_size": 128,
            "format": "ome-tiff", "jpeg_quality": 90}  # fmt: skip
    outputs = {}
    for compression in ("zlib", "jpeg"):
        outputs[compression] = tmp_path / f"{compression}.ome.tif"
        warp_file(str(tmp_path / "rgb.ome.tif"), transform, str(outputs[compression]),
                  "brightfield", 0.5, base | {"compression": compression})  # fmt: skip
    with tifffile.TiffFile(outputs["jpeg"]) as tif:
        levels = tif.series[0].levels
        assert len(levels) == 3 and all(level.keyframe.compression == 7 for level in levels)
    lossless, lossy = (read_image(outputs[c]).astype(float) for c in ("zlib", "jpeg"))
    assert np.abs(lossy - lossless).mean() < 3.0
    assert outputs["jpeg"].stat().st_size * 3 < outputs["zlib"].stat().st_size

    path, channels = moving_file  # 16-bit fluorescence: zlib whatever is asked
    warp_file(str(path), transform, str(tmp_path / "f.ome.tif"), "fluorescence", 0.5,
              base | {"compression": "jpeg", "fill": "zero"})  # fmt: skip
    with tifffile.TiffFile(tmp_path / "f.ome.tif") as tif:
        assert tif.series[0].keyframe.compression == 8  # ADOBE_DEFLATE
    expected = warp_image(channels, transform, np.zeros(4), tile=128)
    np.testing.assert_array_equal(read_image(tmp_path / "f.ome.tif"), expected)

    labels = (np.arange(512 * 512).reshape(1, 512, 512) // 5000 % 251).astype(np.uint8)
    write_ome_tiff(tmp_path / "labels.ome.tif", labels, ["labels"], 0.5, tile=128)
    settings = base | {"compression": "jpeg", "fill": "zero"}
    warp_file(str(tmp_path / "labels.ome.tif"), transform, str(tmp_path / "l.ome.tif"),
              "fluorescence", 0.5, settings, order=0)  # fmt: skip
    expected = warp_image(labels, transform, np.zeros(1), tile=128, order=0)
    np.testing.assert_array_equal(read_image(tmp_path / "l.ome.tif"), expected)


def test_jpeg_is_refused_for_ome_zarr(tmp_path, ihc_rgb):
    with pytest.raises(ValueError, match="OME-Zarr takes zlib or none"):
        write_ome_zarr_tiled(tmp_path / "x.ome.zarr", (3, 128, 128), np.uint8,
                             iter([(0, 0, ihc_rgb[:, :128, :128])]), ["R", "G", "B"],
                             compression="jpeg", tile=64, pyramid_min_size=64)  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing left behind
