import numpy as np
import pandas as pd
import pytest
from regflow.points import (
    PointsError,
    map_points_table,
    read_points,
    read_points_table,
    write_points,
)
from regflow.rigid import similarity_matrix
from regflow.transform import Transform
from regflow.warp import warp_image
from scipy import ndimage as ndi


def _transform(with_field=True):
    fixed_shape, moving_shape = (300, 400), (320, 380)
    affine = similarity_matrix(
        17.0, 1.05, (6.0, -4.0), np.array([199.5, 149.5]), np.array([189.5, 159.5])
    )
    working = (75, 100)  # working grid at 1/4 resolution
    full_to_working = np.array([[0.25, 0, -0.375], [0, 0.25, -0.375], [0, 0, 1.0]])
    rng = np.random.default_rng(1)
    field = np.stack([ndi.gaussian_filter(rng.normal(size=working), 8) for _ in range(2)])
    field *= 6.0 / np.abs(field).max() if with_field else 0.0
    return Transform(affine, field.astype(np.float32), full_to_working, fixed_shape, moving_shape)


def test_points_round_trip_both_ways():
    transform = _transform()
    rng = np.random.default_rng(2)
    fixed_points = rng.uniform([40, 40], [360, 260], size=(50, 2))
    moving_points = transform.fixed_to_moving(fixed_points)
    back = transform.moving_to_fixed(moving_points)
    assert np.abs(back - fixed_points).max() < 0.1
    again = transform.fixed_to_moving(back)
    assert np.abs(again - moving_points).max() < 0.1


def test_save_load_round_trip(tmp_path):
    transform = _transform()
    transform.save(tmp_path / "t.npz")
    loaded = Transform.load(tmp_path / "t.npz")
    points = np.array([[10.0, 20.0], [200.0, 150.0]])
    np.testing.assert_allclose(loaded.fixed_to_moving(points), transform.fixed_to_moving(points))
    assert loaded.fixed_shape == (300, 400)


def test_point_table_keeps_rows_and_columns(tmp_path):
    transform = _transform()
    csv = tmp_path / "cells.csv"
    pd.DataFrame({"X": [100.0, 5000.0, 150.0], "Y": [120.0, 80.0, 90.0], "area": [3, 4, 5]}).to_csv(
        csv, index=True
    )
    table = read_points_table(csv)
    assert table.header == ["X", "Y", "area"]  # the unnamed index column is dropped
    mapped = map_points_table(table, transform, "moving_to_fixed")
    assert len(mapped) == 3
    assert mapped.column("area") == ["3", "4", "5"]
    assert np.isnan(mapped.xy[1, 0])  # far outside: unmapped, but the row is kept
    np.testing.assert_allclose(mapped.xy[[0, 2]], transform.moving_to_fixed(table.xy[[0, 2]]))
    write_points(tmp_path / "out.csv", mapped)
    written = pd.read_csv(tmp_path / "out.csv")
    assert len(written) == 3 and written["X"].isna().sum() == 1
    assert list(written["area"]) == [3, 4, 5]
    np.testing.assert_allclose(written[["X", "Y"]].to_numpy()[[0, 2]], mapped.xy[[0, 2]])


def test_point_table_writes_other_columns_as_they_were(tmp_path):
    """Text, empty cells and number formats of the other columns survive a mapping as they
    were read (no type guessing), and empty coordinates stay empty."""
    csv = tmp_path / "cells.csv"
    csv.write_text('id,X,Y,class,area\n007,10.5,20,tumour,1.50\nb,,,,\n\nc,30,40,"a, b",2e3\n')
    table = read_points_table(csv)
    assert len(table) == 3 and np.isnan(table.xy[1]).all()
    write_points(tmp_path / "out.csv", map_points_table(table, _transform(), "moving_to_fixed"))
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "id,X,Y,class,area"
    assert lines[1].startswith("007,") and lines[1].endswith(",tumour,1.50")
    assert lines[2] == "b,,,,"
    assert lines[3].endswith(',"a, b",2e3')
    # a spreadsheet export: byte-order mark and Windows line ends
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfX,Y\r\n1.5,2\r\n")
    np.testing.assert_allclose(read_points_table(tmp_path / "excel.csv").xy, [[1.5, 2.0]])


def test_landmark_file_without_xy_is_an_error(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(PointsError, match="missing column"):
        read_points(csv)


def test_tiled_warp_equals_untiled():
    transform = _transform()
    rng = np.random.default_rng(3)
    moving = rng.integers(0, 4000, size=(3, 320, 380), dtype=np.uint16)
    whole = warp_image(moving, transform, tile=4096)
    tiled = warp_image(moving, transform, tile=64, threads=2)
    np.testing.assert_array_equal(whole, tiled)
    assert whole.dtype == np.uint16 and whole.shape == (3, 300, 400)


def test_identity_warp_returns_the_image_and_fills_outside():
    image = np.random.default_rng(4).random((2, 50, 60)).astype(np.float32)
    identity = Transform.from_affine(np.eye(3), (50, 60), (50, 60))
    np.testing.assert_allclose(warp_image(image, identity), image, atol=1e-6)
    shift = np.eye(3)
    shift[0, 2] = 100.0  # every fixed pixel maps outside the moving image
    outside = Transform.from_affine(shift, (50, 60), (50, 60))
    warped = warp_image(image, outside, fill=np.array([7.0, 9.0]))
    assert (warped[0] == 7.0).all() and (warped[1] == 9.0).all()


def test_warp_streamed_from_file_equals_in_memory(tmp_path):
    from regflow.io import RegionReader, write_ome_tiff
    from regflow.warp import warp_blocks

    transform = _transform()
    moving = np.random.default_rng(5).integers(0, 255, size=(3, 320, 380), dtype=np.uint8)
    write_ome_tiff(tmp_path / "m.ome.tif", moving, ["R", "G", "B"], rgb=True, tile=64)
    expected = warp_image(moving, transform, tile=4096, order=3)
    out = np.zeros_like(expected)
    with RegionReader(tmp_path / "m.ome.tif", cache_bytes=100_000) as source:
        for row, col, block in warp_blocks(source, transform, tile=96, order=3, threads=2):
            out[:, row * 96 : row * 96 + block.shape[1], col * 96 : col * 96 + block.shape[2]] = (
                block
            )
    np.testing.assert_array_equal(out, expected)


def test_points_cli_both_directions(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "map_points.py"
    transform = _transform()
    transform.save(tmp_path / "t.npz")
    pd.DataFrame({"X": [100.0, 220.5], "Y": [80.0, 150.25], "id": ["a", "b"]}).to_csv(
        tmp_path / "fixed.csv", index=False
    )
    for direction, source, target in (
        ("fixed_to_moving", "fixed.csv", "moving.csv"),
        ("moving_to_fixed", "moving.csv", "back.csv"),
    ):
        subprocess.run(
            [
                sys.executable,
                str(script),
                "--transform",
                str(tmp_path / "t.npz"),
                "--points",
                str(tmp_path / source),
                "--out",
                str(tmp_path / target),
                "--direction",
                direction,
            ],
            check=True,
        )
    back = pd.read_csv(tmp_path / "back.csv")
    assert list(back["id"]) == ["a", "b"]
    np.testing.assert_allclose(back[["X", "Y"]], [[100.0, 80.0], [220.5, 150.25]], atol=0.1)


def test_inverse_mapping_across_a_steep_stretch_finds_the_preimage():
    """Where the field stretches steeply (a tear's edge: 30 px over a few pixels) the
    fixed-point iteration diverges; the points still map back, to where they came from."""
    n = 128
    rows, cols = np.mgrid[:n, :n].astype(np.float64)
    dx = 30.0 / (1.0 + np.exp(-(cols - 64.0) / 1.5))  # slope up to 5 px/px
    displacement = np.stack([dx, np.zeros_like(dx)]).astype(np.float32)
    transform = Transform(np.eye(3), displacement, np.eye(3), (n, n), (n, n))
    fixed_points = np.stack([np.linspace(61, 67, 13), np.full(13, 40.0)], axis=1)
    moving_points = transform.fixed_to_moving(fixed_points)
    back = transform.moving_to_fixed(moving_points)
    np.testing.assert_allclose(back, fixed_points, atol=0.05)  # monotonic: one preimage
    # a point no fixed position reaches (outside the fixed image) stays unmapped
    assert np.isnan(transform.moving_to_fixed(np.array([[400.0, 30.0]]))).all()
