"""End-to-end: what real sections bring — landmark files of different lengths, landmarks on
the image border and on the border of the moving image's footprint, one truly outside both
images, a row without coordinates, a 72-dpi TIFF against an OME-TIFF, pixel sizes that
cannot both be right. Every stage completes, no landmark that has a position is lost, and no
sample is ``failed`` for any of it."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import run_snakemake
from regflow.example import KnownWarp, fixed_landmarks, map_landmarks, render_moving
from regflow.io import write_ome_tiff
from regflow.transform import apply_matrix
from skimage import color, data, transform

pytestmark = pytest.mark.workflow

SIZE = 320
PIXEL_SIZE = 0.5
WARP = KnownWarp(angle_deg=10.0, scale=1.0, shift=(0.06 * SIZE, -0.05 * SIZE), elastic_px=2.0)
DPI_WARP = KnownWarp(angle_deg=-20.0, scale=1.0, shift=(0.03 * SIZE, 0.04 * SIZE))
OUTSIDE = (-300.0, -300.0)  # a fixed point far outside both images


def _save(path: Path, points: np.ndarray) -> None:
    # ANHIR layout (leading index column); NaN rows become empty cells
    pd.DataFrame({"X": points[:, 0], "Y": points[:, 1]}).to_csv(path, index=True)


def _border_points(shape) -> np.ndarray:
    """Fixed points within 15 px of the fixed border, and fixed points whose moving
    position lies 1–3 px inside the moving image's edge (the footprint's border)."""
    height, width = shape
    near_border = [(5.0, 60.0), (3.0, 200.0), (width - 6.0, 150.0), (160.0, 4.0),
                   (250.0, height - 5.0), (12.0, height - 12.0)]  # fmt: skip
    edge_moving = np.array([(2.0, 160.0), (width - 3.0, 100.0), (160.0, 2.0), (90.0, height - 2.0)])
    affine = WARP.affine(shape, shape)
    field = WARP.elastic_field(shape)
    inverse = apply_matrix(np.linalg.inv(affine), edge_moving)
    rows, cols = edge_moving[:, 1].astype(int), edge_moving[:, 0].astype(int)
    footprint = inverse + np.stack([field[0][rows, cols], field[1][rows, cols]], axis=1)
    inside = (footprint >= 0).all(axis=1) & (footprint[:, 0] < width) & (footprint[:, 1] < height)
    return np.concatenate([np.array(near_border), footprint[inside]])


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sections")
    folder = workdir / "data"
    folder.mkdir()
    rgb = transform.resize(data.immunohistochemistry(), (SIZE, SIZE), anti_aliasing=True)
    rgb = np.moveaxis(np.round(rgb * 255), -1, 0).astype(np.uint8)
    shape = rgb.shape[1:]
    white = np.full(3, 255.0)
    write_ome_tiff(folder / "fixed.ome.tif", rgb, ["R", "G", "B"], PIXEL_SIZE, rgb=True)
    hematoxylin = np.clip(color.rgb2hed(np.moveaxis(rgb, 0, -1))[..., 0], 0, None)
    interior = fixed_landmarks(hematoxylin, n_points=16, margin=24)

    moving = render_moving(rgb, WARP, shape, white)
    write_ome_tiff(folder / "moving.ome.tif", np.round(moving).astype(np.uint8), ["R", "G", "B"],
                   PIXEL_SIZE, rgb=True)  # fmt: skip
    border = _border_points(shape)
    fixed_border = np.concatenate([interior, border, [OUTSIDE], [(150.0, 150.0)]])
    moving_border = map_landmarks(fixed_border, WARP, shape, shape)
    moving_border[-1] = np.nan  # a row without coordinates
    _save(folder / "fixed_border.csv", fixed_border)
    _save(folder / "moving_border.csv", moving_border)
    moving_interior = map_landmarks(interior, WARP, shape, shape)
    _save(folder / "fixed_all.csv", interior)
    _save(folder / "moving_all.csv", moving_interior)
    _save(folder / "fixed_short.csv", interior[:11])
    _save(folder / "moving_short.csv", moving_interior[:11])

    # A plain TIFF as an image editor writes it: 72 dpi, resolution unit inch.
    dpi = render_moving(rgb, DPI_WARP, shape, white)
    tifffile.imwrite(folder / "export72.tif", np.moveaxis(np.round(dpi).astype(np.uint8), 0, -1),
                     photometric="rgb", resolution=(72, 72), resolutionunit="INCH")  # fmt: skip
    _save(folder / "export72.csv", map_landmarks(interior, DPI_WARP, shape, shape))

    def row(sample, moving, fixed_lm, moving_lm, **extra):
        return {"sample": sample, "fixed": str(folder / "fixed.ome.tif"),
                "moving": str(folder / moving), "fixed_landmarks": str(folder / fixed_lm),
                "moving_landmarks": str(folder / moving_lm)} | extra  # fmt: skip

    sheet = pd.DataFrame(
        [
            row("border", "moving.ome.tif", "fixed_border.csv", "moving_border.csv"),
            row("moving_short", "moving.ome.tif", "fixed_all.csv", "moving_short.csv"),
            row("fixed_short", "moving.ome.tif", "fixed_short.csv", "moving_all.csv"),
            row("dpi72", "export72.tif", "fixed_all.csv", "export72.csv"),
            # given in the sheet, 800× the fixed image's: not trusted, registered as unknown
            row(
                "implausible",
                "export72.tif",
                "fixed_all.csv",
                "export72.csv",
                moving_pixel_size_um=400.0,
            ),  # fmt: skip
        ]
    )
    sheet.to_csv(workdir / "samples.tsv", sep="\t", index=False)
    (workdir / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    result = run_snakemake(workdir, "--cores", "2")
    truth = {"border": fixed_border, "interior": interior}
    return workdir, result, truth


def _metrics(workdir, sample):
    return json.loads((workdir / "out" / sample / "metrics.json").read_text())


def test_every_stage_completes_and_nothing_fails(sections):
    workdir, _, _ = sections
    summary = pd.read_csv(workdir / "out" / "summary.tsv", sep="\t")
    assert len(summary) == 5
    assert (summary["status"] != "failed").all(), summary[["sample", "status", "reason"]]
    for sample in summary["sample"]:
        assert (workdir / "out" / sample / "qc.png").stat().st_size > 0


def test_border_landmarks_are_all_mapped_and_accurate(sections):
    workdir, _, truth = sections
    fixed = truth["border"]
    warped = pd.read_csv(workdir / "out" / "border" / "landmarks_warped.csv")
    assert len(warped) == len(fixed)  # no row dropped, unmapped ones included
    mapped = warped[["X", "Y"]].to_numpy()
    lost = ~np.isfinite(mapped).all(axis=1)
    # only the point outside both images and the row without coordinates
    assert np.flatnonzero(lost).tolist() == [len(fixed) - 2, len(fixed) - 1]
    error = np.linalg.norm(mapped[:-2] - fixed[:-2], axis=1)
    n_interior = len(truth["interior"])
    assert np.median(error[:n_interior]) < 1.0, error
    # border and footprint-border points: the field continued at its edge, the affine beyond
    assert error[n_interior:].max() < 3.0, error[n_interior:]


def test_unmapped_points_are_counted_with_their_reason(sections):
    workdir, _, truth = sections
    final = _metrics(workdir, "border")["landmarks"]["final"]
    assert final["n_landmarks"] == len(truth["border"])
    assert final["n_missing"] == 1
    assert final["n_unmapped"] == 1
    assert final["unmapped_reasons"]["outside_both_images"] == 1
    assert final["unmapped_reasons"]["not_reached"] == 0
    summary = pd.read_csv(workdir / "out" / "summary.tsv", sep="\t").set_index("sample")
    assert summary.loc["border", "landmarks_unmapped"] == 1
    assert summary.loc["moving_short", "landmarks_unmapped"] == 0
    assert "unmapped_points" not in str(summary.loc["border", "flags"])
    log = (workdir / "out" / "logs" / "points" / "border.log").read_text()
    assert "1 point(s) not mapped: they lie outside both images" in log


@pytest.mark.parametrize("sample", ["moving_short", "fixed_short"])
def test_landmark_files_of_different_lengths_pair_their_first_rows(sections, sample):
    workdir, result, _ = sections
    final = _metrics(workdir, sample)["landmarks"]["final"]
    assert final["n_landmarks"] == 11
    assert final["n_unmapped"] == 0
    assert final["tre_median"] < 1.0
    assert f"sample '{sample}': fixed_landmarks has" in result.stderr


def test_72_dpi_tiff_is_registered_at_the_right_scale_with_a_warning(sections):
    workdir, result, _ = sections
    metrics = _metrics(workdir, "dpi72")
    assert metrics["images"]["moving"]["pixel_size_um"] is None
    assert abs(metrics["rigid"]["scale"] - 1.0) < 0.02
    assert abs(metrics["rigid"]["rotation_deg"] - DPI_WARP.angle_deg) < 0.5
    assert metrics["landmarks"]["final"]["tre_median"] < 1.0
    path = str(workdir / "data" / "export72.tif")
    log = (workdir / "out" / "logs" / "preprocess" / "dpi72.log").read_text()
    for text in (log, result.stderr):
        assert path in text and "72 dpi" in text


def test_implausible_pixel_sizes_fall_back_to_the_unknown_size_search(sections):
    workdir, result, _ = sections
    metrics = _metrics(workdir, "implausible")
    assert abs(metrics["rigid"]["scale"] - 1.0) < 0.02
    assert metrics["landmarks"]["final"]["tre_median"] < 1.0
    log = (workdir / "out" / "logs" / "preprocess" / "implausible.log").read_text()
    assert "one is wrong" in log and "sample 'implausible'" in result.stderr
