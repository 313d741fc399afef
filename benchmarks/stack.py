"""3D reconstruction of serial sections: direct, the plain neighbour chain and the stack solve,
against a generated block's own coordinates.

Usage::

    .venv/bin/python benchmarks/stack.py --workdir /tmp/stack [--sections 24] [--size 768]
        [--modes direct,chain,stack] [--unrelated K] [--stroma-period P] [--max-shift F]

Generates one block (``regflow.block.make_serial_block``): ``--sections`` sections of 5 µm at
2 µm/px, each under a random pose (any rotation, shifts up to 12 % of the side:
``--max-shift``) and its own elastic distortion of 10–25 µm; two sections torn (30–50 µm),
four IHC among H&E; vessels and glands running up to 8 µm per section obliquely; the
reference in the middle. A section's
landmarks are the same block points as the reference's, so the truth is exact.

For each mode it runs the whole workflow on the same images sheet and prints, per section,
the median landmark error in µm (mapped landmarks against the reference's); then the median
over sections, the worst section, the drift ratio (the 2 farthest sections on each side over
the 2 nearest on each side), landmarks lost, sections flagged ``unrelated_images`` and the
wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _workflow import workflow_command  # noqa: E402  (benchmarks/ is sys.path[0])
from regflow.block import make_serial_block  # noqa: E402

MODES = {
    "direct": "cases:\n  chain: false\n",
    "chain": "cases:\n  chain: true\n  solve: chain\n",
    "stack": "cases:\n  chain: true\n  solve: stack\n",
}


def section_errors(out: Path, sheet: pd.DataFrame, case: str) -> dict[str, np.ndarray]:
    """Per section, the error (µm) of every reference landmark mapped from that section."""
    reference = sheet[sheet["reference"] == "true"].iloc[0]
    truth = pd.read_csv(reference["landmarks"])[["X", "Y"]].to_numpy()
    pixel = float(reference["pixel_size_um"])
    errors = {}
    for _, row in sheet[sheet["reference"] != "true"].iterrows():
        mapped = pd.read_csv(out / case / row["image"] / "landmarks_warped.csv")
        mapped = mapped[["X", "Y"]].to_numpy(dtype=float)
        errors[row["image"]] = np.hypot(*(mapped - truth).T) * pixel
    return errors


def volume_matches(out: Path, sheet: pd.DataFrame, case: str, order: list[str]) -> bool:
    """Whether volume.ome.zarr has one plane per section in order, each equal to that
    section's 2-D output (the reference: its own pixels)."""
    import tifffile
    import zarr

    volume = zarr.open_group(str(out / case / "volume.ome.zarr"), mode="r")["0"]
    if volume.shape[1] != len(order):
        return False
    for z, image in enumerate(order):
        row = sheet[sheet["image"] == image].iloc[0]
        path = row["path"] if row["reference"] == "true" else out / case / image / "warped.ome.tif"
        plane = tifffile.imread(path)
        plane = np.moveaxis(plane, -1, 0) if plane.ndim == 3 and plane.shape[-1] == 3 else plane
        if not np.array_equal(volume[:, z], plane.reshape(volume[:, z].shape)):
            return False
    return True


def torn_report(out: Path, sheet: pd.DataFrame, case: str, errors: dict) -> list[str]:
    """Per section marked not registered (stack mode): its share of the tissue, whether it is
    flagged ``field_jumps``, and the landmark errors (µm) inside its area and outside."""
    from regflow.annotations import read_features
    from shapely.geometry import Point, shape
    from shapely.ops import unary_union

    report = out / case / "stack.json"
    if not report.exists():
        return []
    sections = json.loads(report.read_text())["sections"]
    reference = sheet[sheet["reference"] == "true"].iloc[0]
    points = pd.read_csv(reference["landmarks"])[["X", "Y"]].to_numpy(dtype=float)
    lines = []
    for image, error in errors.items():
        fraction = sections[image].get("not_registered_fraction", 0.0)
        metrics = json.loads((out / case / image / "metrics.json").read_text())
        flagged = "field_jumps" in [f["flag"] for f in metrics["review"]["flags"]]
        if fraction <= 0 and not flagged:
            continue
        _, features = read_features(out / case / "stack" / f"{image}.not_registered.geojson")
        area = unary_union([shape(f["geometry"]) for f in features])
        inside = np.array([area.contains(Point(*p)) if np.isfinite(p).all() else False
                           for p in points])  # fmt: skip
        outside = error[~inside]
        lines.append(
            f"{image}: not registered {100 * fraction:.1f} % of the tissue, field_jumps "
            f"{'flagged' if flagged else 'not flagged'}; {inside.sum()} landmarks inside "
            f"(median {np.nanmedian(error[inside]) if inside.any() else np.nan:.1f} µm), "
            f"outside median {np.nanmedian(outside):.1f} µm, max {np.nanmax(outside):.1f} µm, "
            f"{int((outside > 5).sum())} above 5 µm"
        )
    return lines


def summarise(errors: dict[str, np.ndarray], order: list[str], reference: str) -> dict:
    medians = {s: float(np.nanmedian(e)) for s, e in errors.items()}
    r = order.index(reference)
    below, above = order[:r][::-1], order[r + 1 :]  # nearest first
    near = [medians[s] for side in (below, above) for s in side[:2]]
    far = [medians[s] for side in (below, above) for s in side[-2:]]
    return {
        "median": float(np.median(list(medians.values()))),
        "worst": float(max(medians.values())),
        "worst_section": max(medians, key=medians.get),
        "drift": float(np.mean(far) / np.mean(near)),
        "lost": int(sum(np.isnan(e).sum() for e in errors.values())),
        "p90": float(np.nanpercentile(np.concatenate(list(errors.values())), 90)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sections", type=int, default=24)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="direct,chain,stack")
    parser.add_argument("--unrelated", type=int, default=None,
                        help="replace this section (0-based) by another block's")  # fmt: skip
    parser.add_argument("--stroma-period", type=float, default=None,
                        help="sections over which the stroma texture changes (a quarter "
                             "period); default 4 × sections, nearly constant")  # fmt: skip
    parser.add_argument("--max-shift", type=float, default=0.12,
                        help="largest pose shift, a fraction of the side")  # fmt: skip
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    data = args.workdir / "data"
    sheet_path = args.workdir / "images.tsv"
    if not sheet_path.exists():
        sheet, _ = make_serial_block(data, n_sections=args.sections, size=args.size,
                                     seed=args.seed, unrelated=args.unrelated,
                                     stroma_period=args.stroma_period,
                                     max_shift=args.max_shift)  # fmt: skip
        sheet.to_csv(sheet_path, sep="\t", index=False)
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str)
    order = list(sheet.sort_values("order", key=lambda c: c.astype(int))["image"])
    reference = sheet.loc[sheet["reference"] == "true", "image"].iloc[0]
    case = sheet["case"].iloc[0]
    results = {}
    for mode in args.modes.split(","):
        folder = args.workdir / mode
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(f"samples: {sheet_path}\noutdir: out\n{MODES[mode]}")
        start = time.perf_counter()
        run = subprocess.run(workflow_command(folder, args.cores), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode:
            print(run.stderr[-3000:])
            raise SystemExit(f"{mode}: the workflow failed")
        errors = section_errors(folder / "out", sheet, case)
        flagged = []
        for image in errors:
            metrics = json.loads((folder / "out" / case / image / "metrics.json").read_text())
            names = [f["flag"] for f in metrics["review"]["flags"]]
            if "unrelated_images" in names:
                flagged.append(image)
        summary = summarise(errors, order, reference)
        summary["volume"] = volume_matches(folder / "out", sheet, case, order)
        summary["torn"] = torn_report(folder / "out", sheet, case, errors)
        results[mode] = (errors, summary, seconds, flagged)
    print(f"{args.sections} sections of {args.size}² px at 2 µm/px, reference {reference}; "
          "per-section median landmark error (µm) against the block")  # fmt: skip
    print(f"{'section':<8}" + "".join(f"{mode:>10}" for mode in results))
    for image in order:
        if image == reference:
            continue
        print(f"{image:<8}" + "".join(f"{np.nanmedian(r[0][image]):10.2f}"
                                      for r in results.values()))  # fmt: skip
    print()
    for mode, (_, summary, seconds, flagged) in results.items():
        print(f"{mode:<7} median {summary['median']:.2f} µm, worst {summary['worst']:.2f} µm "
              f"({summary['worst_section']}), drift {summary['drift']:.2f}×, p90 "
              f"{summary['p90']:.1f} µm, lost {summary['lost']}, unrelated_images "
              f"{flagged or 'none'}, volume planes = outputs {summary['volume']}, wall "
              f"{seconds:.0f} s (--cores {args.cores})")  # fmt: skip
        for line in summary["torn"]:
            print(f"        {line}")


if __name__ == "__main__":
    main()
