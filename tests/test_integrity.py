"""Tissue integrity (groundwork for issue 28): per-cell correlation from sums accumulated
region by region equals a direct computation; a patch of lost nuclei is found, with a label
image and on the grid without one."""

import numpy as np
import pytest
from regflow.example import detached_nuclei, nuclei_labels, nuclei_scene
from regflow.integrity import CellSums, cell_integrity, window_correlation

SIZE = 768


@pytest.fixture(scope="module")
def rounds():
    """Round 1, and round 2 = the same section where 80 % of the nuclei of a disc are gone
    (their pixels replaced by background), with independent noise; round 1's labels."""
    rng = np.random.default_rng(3)
    image, centres = nuclei_scene((SIZE, SIZE), 1.0, seed=4)
    labels = nuclei_labels(image).astype(np.int64)
    # the nucleus and a rim around it vanish (background)
    lost_pixels, gone, disc = detached_nuclei(labels, (400, 300), 120, 0.8, rng, rim=3)
    gone = set(gone.tolist())
    round2 = np.where(lost_pixels, 0.02, image) * 0.7  # a dimmer round overall
    round1 = image + rng.normal(0, 0.02, image.shape)
    round2 = round2 + rng.normal(0, 0.02, image.shape)
    return round1, round2, labels, gone, disc


def test_sums_accumulated_by_region_equal_a_direct_computation(rounds):
    round1, round2, labels, _, _ = rounds
    sums = CellSums()
    for r0 in range(0, SIZE, 200):  # regions that cut cells in two
        for c0 in range(0, SIZE, 300):
            block = (slice(r0, r0 + 200), slice(c0, c0 + 300))
            sums.add(labels[block], round1[block], round2[block], (r0, c0))
    table = cell_integrity(sums)
    for label in table.cell[:: max(1, len(table.cell) // 25)]:
        rows, cols = np.nonzero(labels == label)
        x, y = round1[rows, cols], round2[rows, cols]
        index = np.searchsorted(table.cell, label)
        if len(x) > 2:
            np.testing.assert_allclose(table.corr[index], np.corrcoef(x, y)[0, 1], atol=1e-9)
        assert table.x[index] == pytest.approx(cols.mean()) and table.y[index] == pytest.approx(
            rows.mean()
        )
    assert set(table.cell.tolist()) == set(np.unique(labels[labels > 0]).tolist())


def test_lost_cells_are_found_and_kept_ones_are_not(rounds):
    round1, round2, labels, gone, disc = rounds
    sums = CellSums()
    sums.add(labels, round1, round2)
    table = cell_integrity(sums)
    truth = np.isin(table.cell, list(gone))
    recall = table.lost[truth].mean()
    # kept cells outside the damaged disc
    centre_outside = ~disc[table.y.astype(int), table.x.astype(int)]
    false_rate = table.lost[~truth & centre_outside].mean()
    assert recall >= 0.8 and false_rate <= 0.02, (recall, false_rate)
    assert table.lost_fraction == pytest.approx(truth.mean(), rel=0.35)


def test_the_grid_map_is_lower_where_tissue_was_lost(rounds):
    round1, round2, _, _, disc = rounds
    corr = window_correlation(round1, round2, 32)
    centres = disc[16::32, 16::32]
    assert np.nanmedian(corr[~centres]) - np.nanmedian(corr[centres]) > 0.3


# ---- the workflow: a round pair with a lost disc, with and without a label image ----------


@pytest.fixture(scope="module")
def integrity_run(tmp_path_factory, rounds):
    from helpers import run_snakemake
    from regflow.example import CellWarp, render_cell_moving
    from regflow.io import write_ome_tiff

    round1, round2_in_round1, labels, gone, disc = rounds
    workdir = tmp_path_factory.mktemp("integrity")
    warp = CellWarp((SIZE, SIZE), angle_deg=4.0, shift=(12.0, -7.0), smooth_px=0.0, n_bumps=0)
    moving_lost = render_cell_moving(np.clip(round2_in_round1 / 0.7, 0, 1).astype(np.float32),
                                     warp)  # fmt: skip
    moving_kept = render_cell_moving(np.clip(round1, 0, 1).astype(np.float32), warp)

    def save(name, image):
        write_ome_tiff(workdir / name, (np.clip(image, 0, 1) * 50000 + 300).astype(np.uint16)[None],
                       ["DAPI"], 1.0)  # fmt: skip

    save("round1.ome.tif", round1)
    save("round2_lost.ome.tif", moving_lost)
    save("round2_kept.ome.tif", moving_kept)
    write_ome_tiff(workdir / "round1_cells.ome.tif", labels.astype(np.uint32)[None], ["cells"],
                   1.0)  # fmt: skip
    common = {"fixed": str(workdir / "round1.ome.tif"), "fixed_modality": "fluorescence",
              "moving_modality": "fluorescence"}  # fmt: skip
    import pandas as pd

    pd.DataFrame([
        common | {"sample": "lost", "moving": str(workdir / "round2_lost.ome.tif"),
                  "fixed_cells": str(workdir / "round1_cells.ome.tif")},
        common | {"sample": "lost_grid", "moving": str(workdir / "round2_lost.ome.tif")},
        common | {"sample": "kept", "moving": str(workdir / "round2_kept.ome.tif"),
                  "fixed_cells": str(workdir / "round1_cells.ome.tif")},
        common | {"sample": "kept_grid", "moving": str(workdir / "round2_kept.ome.tif")},
    ]).to_csv(workdir / "samples.tsv", sep="\t", index=False)  # fmt: skip
    (workdir / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    run_snakemake(workdir, "--cores", "2")
    return workdir, labels, gone, disc


@pytest.mark.workflow
def test_the_workflow_finds_the_lost_cells_and_flags_the_round(integrity_run):
    import pandas as pd
    import tifffile

    workdir, labels, gone, disc = integrity_run
    table = pd.read_csv(workdir / "out" / "lost" / "integrity.tsv", sep="\t")
    assert list(table.columns) == ["cell", "x", "y", "corr", "intensity_ratio", "lost"]
    assert len(table) == len(np.unique(labels[labels > 0]))  # every labelled cell
    truth = table["cell"].isin(gone)
    outside = ~disc[table["y"].astype(int), table["x"].astype(int)]
    recall = table.loc[truth, "lost"].mean()
    false_rate = table.loc[~truth & outside, "lost"].mean()
    assert recall >= 0.8 and false_rate <= 0.02, (recall, false_rate)
    summary = pd.read_csv(workdir / "out" / "summary.tsv", sep="\t").set_index("sample")
    assert summary.loc["lost", "tissue_lost_fraction"] == pytest.approx(truth.mean(), rel=0.35)
    assert "tissue_loss" in str(summary.loc["lost", "flags"])
    assert "tissue_loss" not in str(summary.loc["kept", "flags"])
    assert summary.loc["kept", "tissue_lost_fraction"] < 0.02
    # without a label image: the grid, the map lower inside the disc
    with tifffile.TiffFile(workdir / "out" / "lost_grid" / "integrity.ome.tif") as tif:
        grid = tif.series[0].asarray()[0] if tif.series[0].ndim == 3 else tif.series[0].asarray()
        assert 'PhysicalSizeX="32' in tif.ome_metadata
    window = 32
    centres = disc[window // 2 :: window, window // 2 :: window][: grid.shape[0], : grid.shape[1]]
    assert np.nanmedian(grid[~centres]) - np.nanmedian(grid[centres]) > 0.3
    assert "tissue_loss" in str(summary.loc["lost_grid", "flags"])
    # an intact round judged on the grid alone: windows without nuclei are not judged
    assert summary.loc["kept_grid", "tissue_lost_fraction"] < 0.02
    assert "tissue_loss" not in str(summary.loc["kept_grid", "flags"])
    assert len(pd.read_csv(workdir / "out" / "lost_grid" / "integrity.tsv", sep="\t")) == 0
    for sample in ("lost", "lost_grid", "kept", "kept_grid"):  # the map and the lost cells
        assert (workdir / "out" / sample / "integrity.png").stat().st_size > 10_000
