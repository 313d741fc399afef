"""Cell-level accuracy on a whole slide: the full-resolution refinement on and off.

Usage::

    .venv/bin/python benchmarks/refine.py --workdir /tmp/refine [--size 16384] [--bumps 3000]

Generates a cyclic-immunofluorescence round pair (``--size``² px at 1 µm, DAPI and a marker
channel, uint16, pyramidal OME-TIFF): nuclei (~7 µm) over tissue with lumina; round 2 is the
same section under a rigid pose (2°, a shift), a smooth deformation (6 µm) and ``--bumps``
local deformations 40–90 µm across, each moving the tissue by 3–9 µm — motions finer than the
working image's grid (16 µm per pixel at 16384²). The truth is 3000 nuclei, given to the
workflow as landmarks. Runs the workflow (``--cores 2``) under GNU ``/usr/bin/time -v`` with
the refinement on (the default) and off, and reports the nuclei's TRE in µm (median, p90,
share within 2 µm, lost), ``tre_final_um`` as the summary reports it, wall time against the
read + write floor (tifffile's read of the moving image and a zlib pyramid write), peak RSS
and the refine job's report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from regflow.example import nuclei_scene  # noqa: E402
from regflow.io import write_ome_tiff  # noqa: E402
from regflow.rigid import similarity_matrix  # noqa: E402
from regflow.transform import apply_matrix, bilinear  # noqa: E402
from scale import floor_seconds, run_workflow  # noqa: E402  (benchmarks/ is sys.path[0])

PIXEL_UM = 1.0
STEP = 8  # px between the nodes of the generated deformation


class SlideWarp:
    """Moving pixel ``q`` shows fixed pixel ``A⁻¹ q + offset(q)``; ``offset`` (smooth field
    plus Gaussian bumps) is stored on a grid every ``STEP`` px and bilinearly interpolated,
    which defines it exactly for rendering and for the truth alike."""

    def __init__(self, size: int, n_bumps: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        centre = np.array([(size - 1) / 2] * 2)
        self.affine = similarity_matrix(2.0, 1.0, (23.0, -17.0), centre, centre)
        self.inverse = np.linalg.inv(self.affine)
        nodes = size // STEP + 2
        axis = np.arange(nodes) * STEP
        u = axis / size
        field = np.zeros((2, nodes, nodes))
        for i in range(3):  # smooth: 6 µm over the slide
            for j in range(3):
                basis = np.outer(np.sin(np.pi * (j + 0.5) * u), np.sin(np.pi * (i + 0.5) * u))
                field += rng.normal(size=(2, 1, 1)) * basis * 6.0 / 3.0
        for _ in range(n_bumps):  # 40–90 µm across (σ 20–45 µm), 3–9 µm
            cx, cy = rng.uniform(0, size, 2)
            sigma = rng.uniform(20.0, 45.0) / PIXEL_UM
            angle = rng.uniform(0, 2 * np.pi)
            size_px = rng.uniform(3.0, 9.0) / PIXEL_UM
            reach = int(3 * sigma / STEP) + 1
            r0, c0 = max(0, int(cy / STEP) - reach), max(0, int(cx / STEP) - reach)
            r1, c1 = min(nodes, int(cy / STEP) + reach + 1), min(nodes, int(cx / STEP) + reach + 1)
            yy, xx = np.meshgrid(axis[r0:r1], axis[c0:c1], indexing="ij")
            profile = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
            field[0, r0:r1, c0:c1] += size_px * np.cos(angle) * profile
            field[1, r0:r1, c0:c1] += size_px * np.sin(angle) * profile
        self.field = field

    def offset(self, points_xy: np.ndarray) -> np.ndarray:
        rows, cols = points_xy[:, 1] / STEP, points_xy[:, 0] / STEP
        return np.stack([bilinear(self.field[k], rows, cols) for k in range(2)], 1)

    def moving_to_fixed(self, points_xy: np.ndarray) -> np.ndarray:
        return apply_matrix(self.inverse, points_xy) + self.offset(points_xy)

    def fixed_to_moving(self, points_xy: np.ndarray) -> np.ndarray:
        moving = apply_matrix(self.affine, points_xy)
        for _ in range(60):
            moving = apply_matrix(self.affine, points_xy - self.offset(moving))
        return moving


def make_pair(folder: Path, size: int, n_bumps: int) -> dict:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dapi, centres = nuclei_scene((size, size), PIXEL_UM, seed=1)
    # a marker channel: a cytoplasm-like halo around a random subset of the nuclei
    rng = np.random.default_rng(2)
    marker = cv2.GaussianBlur(dapi * (rng.random(dapi.shape, dtype=np.float32) < 0.3), (0, 0), 4)
    marker /= max(float(marker.max()), 1e-6)
    fixed = np.stack([dapi, marker])
    warp = SlideWarp(size, n_bumps)
    moving = np.empty_like(fixed)
    for r0 in range(0, size, 512):
        rows, cols = np.mgrid[r0 : min(r0 + 512, size), :size].astype(np.float64)
        source = warp.moving_to_fixed(np.stack([cols.ravel(), rows.ravel()], 1))
        map_x = source[:, 0].reshape(rows.shape).astype(np.float32)
        map_y = source[:, 1].reshape(rows.shape).astype(np.float32)
        for k in range(2):
            moving[k, r0 : r0 + rows.shape[0]] = cv2.remap(fixed[k], map_x, map_y,
                                                           cv2.INTER_LINEAR)  # fmt: skip
    names = ["DAPI", "CD45"]
    for name, image, seed in (("round1", fixed, 3), ("round2", moving, 4)):
        noise = np.random.default_rng(seed).normal(0, 0.01, image.shape[1:]).astype(np.float32)
        scaled = np.clip((image + noise) * 50000 + 500, 0, 65535).astype(np.uint16)
        write_ome_tiff(folder / f"{name}.ome.tif", scaled, names, PIXEL_UM)
    # the truth: 3000 nuclei of round 1 inside the tissue, away from the border
    inside = ((centres > 200) & (centres < size - 200)).all(axis=1)
    truth = centres[inside][rng.choice(inside.sum(), 3000, replace=False)]
    pd.DataFrame({"X": truth[:, 0], "Y": truth[:, 1]}).to_csv(folder / "round1.csv")
    moved = warp.fixed_to_moving(truth)
    pd.DataFrame({"X": moved[:, 0], "Y": moved[:, 1]}).to_csv(folder / "round2.csv")
    print(f"generated {size}² pair with {n_bumps} bumps in {time.perf_counter() - start:.0f} s")
    return {"sample": "rounds", "fixed": str(folder / "round1.ome.tif"),
            "moving": str(folder / "round2.ome.tif"), "fixed_modality": "fluorescence",
            "moving_modality": "fluorescence", "fixed_channel": "DAPI", "moving_channel": "DAPI",
            "fixed_landmarks": str(folder / "round1.csv"),
            "moving_landmarks": str(folder / "round2.csv")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--bumps", type=int, default=0,
                        help="local deformations (default: one per 0.1 mm² of slide)")  # fmt: skip
    parser.add_argument("--skip-off", action="store_true", help="only the default (refine on)")
    args = parser.parse_args()
    bumps = args.bumps or int(args.size**2 * PIXEL_UM**2 / 1e5)
    row = make_pair(args.workdir / "data", args.size, bumps)
    pd.DataFrame([row]).to_csv(args.workdir / "samples.tsv", sep="\t", index=False)
    floor = floor_seconds(row["moving"], args.workdir)
    truth = pd.read_csv(row["fixed_landmarks"])[["X", "Y"]].to_numpy()
    rows = []
    for label, enabled in (("refine on", True), ("refine off", False)):
        if args.skip_off and not enabled:
            continue
        outdir = f"out_{'on' if enabled else 'off'}"
        (args.workdir / "config.yaml").write_text(
            f"samples: samples.tsv\noutdir: {outdir}\nrefine:\n  enabled: {str(enabled).lower()}\n"
        )
        seconds, peak_gib = run_workflow(args.workdir)
        out = args.workdir / outdir / "rounds"
        mapped = pd.read_csv(out / "landmarks_warped.csv")[["X", "Y"]].to_numpy()
        error = np.linalg.norm(mapped - truth, axis=1) * PIXEL_UM
        summary = pd.read_csv(args.workdir / outdir / "summary.tsv", sep="\t")
        refine = json.loads((out / "refine.json").read_text())
        jobs = {}
        for rule in ("preprocess", "rigid", "flow", "refine", "warp", "qc"):
            bench = args.workdir / outdir / "benchmarks" / rule / "rounds.tsv"
            jobs[rule] = float(pd.read_csv(bench, sep="\t")["s"].iloc[0])
        rows.append({
            "run": label,
            "median_um": float(np.nanmedian(error)),
            "p90_um": float(np.nanpercentile(error, 90)),
            "within_2um": float(np.mean(error < 2.0)),
            "lost": int(np.isnan(error).sum()),
            "tre_final_um": float(summary["tre_final_um"].iloc[0]),
            "wall_s": seconds,
            "floor_s": floor,
            "wall/floor": seconds / floor,
            "peak_rss_gib": peak_gib,
            "accepted": f"{refine.get('tiles_accepted', 0)}/{refine.get('tiles_with_tissue', 0)}",
            **{f"{k}_s": round(v, 1) for k, v in jobs.items()},
        })  # fmt: skip
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
