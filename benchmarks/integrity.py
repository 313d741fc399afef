"""Tissue integrity: which cells of round 1 survived round 2, found through the workflow.

Usage::

    .venv/bin/python benchmarks/integrity.py --workdir /tmp/integrity [--size 4096]

Generates a round pair at 1 µm (DAPI, uint16, pyramidal OME-TIFF): nuclei ~7 µm over tissue
with lumina; round 2 is the same section under a 3° rotation and a shift, where 80 % of the
nuclei of one disc (a quarter of the slide's side across) are gone; round 1's nucleus label
image is the sheet's ``fixed_cells``. A second pair without loss and without labels. Runs the
workflow (``--cores 2``, GNU time) and reports: the share of the labelled cells in
``integrity.tsv``, recall of the lost ones, kept cells outside the disc called lost,
``tissue_lost_fraction`` against the truth, the flags, and the map inside against outside the
disc; wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from regflow.example import (  # noqa: E402
    CellWarp,
    detached_nuclei,
    nuclei_labels,
    nuclei_scene,
    render_cell_moving,
)
from regflow.io import read_image, write_ome_tiff  # noqa: E402
from scale import run_workflow  # noqa: E402  (benchmarks/ is sys.path[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    size, folder = args.size, args.workdir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    round1, _ = nuclei_scene((size, size), 1.0, seed=5)
    labels = nuclei_labels(round1).astype(np.uint32)
    lost, gone, disc = detached_nuclei(labels, (0.55 * size, 0.4 * size), size / 8, 0.8, rng,
                                       rim=3)  # fmt: skip
    damaged = np.where(lost, 0.02, round1).astype(np.float32)
    warp = CellWarp((size, size), angle_deg=3.0, shift=(21.0, -13.0), smooth_px=3.0, n_bumps=0)

    def save(name, image, seed):
        noisy = image + np.random.default_rng(seed).normal(0, 0.02, image.shape)
        write_ome_tiff(folder / name, (np.clip(noisy, 0, 1) * 50000 + 300).astype(np.uint16)[None],
                       ["DAPI"], 1.0)  # fmt: skip

    save("round1.ome.tif", round1, 1)
    save("round2_lost.ome.tif", render_cell_moving(damaged, warp), 2)
    save("round2_kept.ome.tif", render_cell_moving(round1, warp), 3)
    write_ome_tiff(folder / "round1_cells.ome.tif", labels[None], ["nuclei"], 1.0)
    common = {"fixed": str(folder / "round1.ome.tif"), "fixed_modality": "fluorescence",
              "moving_modality": "fluorescence"}  # fmt: skip
    pd.DataFrame([
        common | {"sample": "lost", "moving": str(folder / "round2_lost.ome.tif"),
                  "fixed_cells": str(folder / "round1_cells.ome.tif")},
        common | {"sample": "kept", "moving": str(folder / "round2_kept.ome.tif")},
    ]).to_csv(args.workdir / "samples.tsv", sep="\t", index=False)  # fmt: skip
    (args.workdir / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    seconds, peak = run_workflow(args.workdir)
    table = pd.read_csv(args.workdir / "out" / "lost" / "integrity.tsv", sep="\t")
    n_labels = len(np.unique(labels[labels > 0]))
    truth = table["cell"].isin(gone)
    outside = ~disc[
        table["y"].astype(int).clip(0, size - 1), table["x"].astype(int).clip(0, size - 1)
    ]
    summary = pd.read_csv(args.workdir / "out" / "summary.tsv", sep="\t").set_index("sample")
    grid = read_image(args.workdir / "out" / "lost" / "integrity.ome.tif")[0]
    window = size // grid.shape[0]
    centres = disc[window // 2 :: window, window // 2 :: window][: grid.shape[0], : grid.shape[1]]
    true_fraction = len(gone) / n_labels
    print(
        f"cells in integrity.tsv: {len(table)} of {n_labels} ({100 * len(table) / n_labels:.1f} %)"
    )
    print(f"recall of the lost cells: {table.loc[truth, 'lost'].mean():.3f} ({len(gone)} lost)")
    false_rate = 100 * table.loc[~truth & outside, "lost"].mean()
    print(f"kept cells outside the disc called lost: {false_rate:.2f} %")
    fractions = summary["tissue_lost_fraction"]
    print(
        f"tissue_lost_fraction: {fractions['lost']:.4f} (truth {true_fraction:.4f}); "
        f"kept round: {fractions['kept']:.4f}"
    )
    print(f"flags: lost = {summary.loc['lost', 'flags']}, kept = {summary.loc['kept', 'flags']}")
    print(
        f"map median inside the disc {np.nanmedian(grid[centres]):.3f}, outside "
        f"{np.nanmedian(grid[~centres]):.3f} (window {window} px)"
    )
    print(f"whole workflow (2 pairs, --cores 2): {seconds:.1f} s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
