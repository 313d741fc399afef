import numpy as np
import pytest
import tifffile
from regflow.io import ImageReadError, choose_level, read_image, read_info, write_ome_tiff


def test_ome_round_trip_keeps_channels_pixel_size_and_dtype(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60000, size=(3, 300, 200), dtype=np.uint16)
    path = tmp_path / "multi.ome.tif"
    write_ome_tiff(path, image, ["DAPI", "CD3", "PanCK"], pixel_size_um=0.65, pyramid_min_size=64)
    info = read_info(path)
    assert info.channel_names == ["DAPI", "CD3", "PanCK"]
    assert info.pixel_size_um == pytest.approx(0.65)
    assert info.shape == (300, 200)
    assert info.n_channels == 3
    assert info.dtype == "uint16"
    np.testing.assert_array_equal(read_image(path), image)
    # Pyramid: 300 → 150 → 75 → 38 (longest side ≤ 64), as SubIFDs, tiled.
    assert info.level_shapes == [(300, 200), (150, 100), (75, 50), (38, 25)]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert tif.pages[0].is_tiled
        assert len(tif.series[0].levels) == 4
        assert 'PhysicalSizeX="0.65"' in tif.ome_metadata


def test_rgb_written_interleaved_and_read_back(tmp_path, ihc_small):
    path = tmp_path / "rgb.ome.tif"
    write_ome_tiff(path, ihc_small, ["R", "G", "B"], pixel_size_um=0.5, rgb=True)
    info = read_info(path)
    assert info.rgb and info.n_channels == 3
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "YXS"
    np.testing.assert_array_equal(read_image(path), ihc_small)


def test_pyramid_level_selection(tmp_path):
    image = np.zeros((1, 1024, 512), np.uint8)
    path = tmp_path / "pyr.ome.tif"
    write_ome_tiff(path, image, ["C0"], pyramid_min_size=128)
    info = read_info(path)
    assert choose_level(info, 1.0) == 0
    assert choose_level(info, 3.0) == 1  # 2× is the coarsest level still finer than 3×
    assert choose_level(info, 4.0) == 2
    assert choose_level(info, 100.0) == 3
    assert read_image(path, 2).shape == (1, 256, 128)


def test_png_and_jpeg(tmp_path, ihc_small):
    from skimage.io import imsave

    imsave(tmp_path / "a.png", np.moveaxis(ihc_small, 0, -1))
    info = read_info(tmp_path / "a.png")
    assert info.rgb and info.shape == (256, 256)
    assert read_image(tmp_path / "a.png").shape == (3, 256, 256)


def test_unreadable_files_raise_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="missing.tif not found"):
        read_info(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00 a TIFF header and nothing else")
    with pytest.raises(ImageReadError, match="is truncated or corrupt"):
        read_info(bad)
    other = tmp_path / "x.tif"
    other.write_bytes(b"BM not a tiff at all")
    with pytest.raises(ImageReadError, match="is not a supported image; supported: TIFF"):
        read_info(other)


@pytest.mark.parametrize(("channels", "rgb", "dtype"), [(3, True, np.uint8), (5, False, np.uint16)])
def test_region_reader_matches_full_read(tmp_path, channels, rgb, dtype):
    from regflow.io import RegionReader

    image = np.random.default_rng(1).integers(0, 250, (channels, 300, 260)).astype(dtype)
    path = tmp_path / "r.ome.tif"
    write_ome_tiff(
        path, image, [f"c{i}" for i in range(channels)], rgb=rgb, tile=64, pyramid_min_size=100
    )
    with RegionReader(path, cache_bytes=64 * 64 * 8) as reader:  # tiny cache: evictions
        assert reader.shape == image.shape
        for rows, cols in [
            (slice(0, 300), slice(0, 260)),
            (slice(63, 65), slice(127, 200)),
            (slice(250, 300), slice(5, 6)),
        ]:
            np.testing.assert_array_equal(reader.read(rows, cols), image[:, rows, cols])
    with RegionReader(path, level=1) as reader:
        np.testing.assert_array_equal(
            reader.read(slice(0, 150), slice(0, 130)), read_image(path, 1)
        )


@pytest.mark.parametrize(
    ("channels", "rgb", "dtype"), [(3, True, np.uint8), (2, False, np.float32), (1, False, bool)]
)
@pytest.mark.parametrize("threads", [1, 2])  # 2: tiles encoded ahead on a pool of its own
def test_streamed_writer_equals_in_memory_writer(tmp_path, channels, rgb, dtype, threads):
    from regflow.io import write_ome_tiff_tiled

    values = np.random.default_rng(2).random((channels, 333, 270))
    image = values > 0.5 if dtype is bool else (values * 200).astype(dtype)  # a mask: half set
    names = [f"c{i}" for i in range(channels)]
    write_ome_tiff(tmp_path / "a.ome.tif", image, names, 0.4, rgb=rgb, tile=64, pyramid_min_size=64)
    tile = 64
    blocks = (
        (r // tile, c // tile, image[:, r : r + tile, c : c + tile])
        for r in range(0, 333, tile)
        for c in range(0, 270, tile)
    )
    write_ome_tiff_tiled(
        tmp_path / "b.ome.tif",
        image.shape,
        image.dtype,
        blocks,
        names,
        0.4,
        rgb=rgb,
        tile=tile,
        pyramid_min_size=64,
        threads=threads,
    )
    a, b = read_info(tmp_path / "a.ome.tif"), read_info(tmp_path / "b.ome.tif")
    with tifffile.TiffFile(tmp_path / "b.ome.tif") as tif:
        pages = [tif.pages[0], *tif.pages[0].pages]  # level 0 and its SubIFDs
        assert {page.compression for page in pages} == {tifffile.COMPRESSION.ADOBE_DEFLATE}
    assert a.level_shapes == b.level_shapes and len(b.level_shapes) == 4
    assert b.channel_names == (["R", "G", "B"] if rgb else names)
    assert b.pixel_size_um == pytest.approx(0.4)
    for level in range(len(a.level_shapes)):
        np.testing.assert_array_equal(
            read_image(tmp_path / "a.ome.tif", level), read_image(tmp_path / "b.ome.tif", level)
        )
    assert list(tmp_path.glob(".*")) == [], "no temporary files left behind"


@pytest.mark.parametrize(
    ("channels", "rgb", "dtype", "labels"),
    [(3, True, np.uint8, False), (4, False, np.uint16, False), (1, False, np.int32, True)],
)
def test_pyramid_levels_are_whole_level_reductions(tmp_path, channels, rgb, dtype, labels):
    """Each reduced level, built tile by tile as the blocks stream past (odd sizes, edge
    tiles, blocks in any order for OME-Zarr), equals the 2× reduction of the whole level
    above it."""
    from regflow.io import _downsample2, write_ome_tiff_tiled, write_ome_zarr_tiled

    top = {np.uint8: 255, np.uint16: 65535, np.int32: 50}[dtype]
    image = (np.random.default_rng(3).random((channels, 301, 235)) * top).astype(dtype)
    tile = 32
    grid = [(r, c) for r in range(0, 301, tile) for c in range(0, 235, tile)]
    expected = [image]
    while max(expected[-1].shape[1:]) > 40:
        expected.append(_downsample2(expected[-1], labels))
    assert len(expected) == 4  # 301 → 151 → 76 → 38 rows
    options = {"rgb": rgb, "tile": tile, "pyramid_min_size": 40, "labels": labels}
    write_ome_tiff_tiled(tmp_path / "p.ome.tif", image.shape, dtype,
                         ((r // tile, c // tile, image[:, r : r + tile, c : c + tile])
                          for r, c in grid), ["c"] * channels, **options)  # fmt: skip
    shuffled = [grid[i] for i in np.random.default_rng(0).permutation(len(grid))]
    write_ome_zarr_tiled(tmp_path / "p.ome.zarr", image.shape, dtype,
                         ((r // tile, c // tile, image[:, r : r + tile, c : c + tile])
                          for r, c in shuffled), ["c"] * channels, **options)  # fmt: skip
    for level, want in enumerate(expected):
        np.testing.assert_array_equal(read_image(tmp_path / "p.ome.tif", level), want)
        np.testing.assert_array_equal(read_image(tmp_path / "p.ome.zarr", level), want)
    assert list(tmp_path.glob(".*")) == [], "no temporary files left behind"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("interleaved", [True, False])
def test_2x_reduction_is_the_rounded_block_mean(dtype, interleaved):
    """Unsigned integers round half up (integer box filter), signed ones half to even,
    floats are not rounded; an odd last row/column is repeated."""
    from regflow.io import _downsample2

    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    rng = np.random.default_rng(4)
    low, high = (info.min, info.max) if info else (-1.0, 1.0)
    image = rng.uniform(low, high, (3, 41, 36)).astype(dtype)
    image[:, :2, :2] = [[0, 1], [0, 1]] if info is None or info.min == 0 else [[-1, 0], [0, -1]]
    if interleaved:  # a (C, Y, X) view of interleaved memory, as RGB tiles are
        image = np.moveaxis(np.ascontiguousarray(np.moveaxis(image, 0, -1)), -1, 0)
    padded = np.concatenate([image, image[:, -1:]], axis=1).astype(np.float64)
    sums = padded.reshape(3, 21, 2, 18, 2).sum(axis=(2, 4))
    if np.dtype(dtype).kind == "u":
        expected = np.floor((sums + 2) / 4)
    elif np.dtype(dtype).kind == "i":
        expected = np.rint(sums / 4)
    else:
        expected = sums / 4
    result = _downsample2(image)
    assert result.dtype == dtype and result.shape == (3, 21, 18)
    np.testing.assert_allclose(result.astype(np.float64), expected, rtol=1e-6, atol=0)
    assert result[0, 0, 0] == (1 if np.dtype(dtype).kind == "u" else 0 if info else 0.5)
