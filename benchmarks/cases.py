"""Serial sections whose deformation accumulates: direct vs chain registration to one reference.

Usage::

    .venv/bin/python benchmarks/cases.py --workdir /tmp/cases [--sections 7] [--size 512]

Generates one case of ``--sections`` brightfield sections (``make_serial_case``): each is
the previous one under a small rotation, shift, shrink and smooth elastic step, so far
sections differ much more from the reference (section 1) than from their neighbours. The
landmarks are carried through every step (exact ground truth). Runs the workflow twice on
the same sheet, ``cases.chain: false`` (every section onto the reference) and ``true`` with
``solve: chain`` (each onto its neighbour, transforms composed), and prints per section the
median and max rTRE against the reference's landmarks, and each run's wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from _workflow import workflow_command  # noqa: E402  (benchmarks/ is sys.path[0])
from regflow.example import make_serial_case  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sections", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--step-elastic", type=float, default=0.02,
                        help="elastic amplitude per step, fraction of the side")  # fmt: skip
    parser.add_argument("--step-angle", type=float, default=6.0)
    args = parser.parse_args()
    data = args.workdir / "data"
    sheet = make_serial_case(data, "serial", args.sections, args.size, args.step_elastic,
                             args.step_angle)  # fmt: skip
    sheet.to_csv(args.workdir / "images.tsv", sep="\t", index=False)
    reference = pd.read_csv(sheet.loc[0, "landmarks"])[["X", "Y"]].to_numpy()
    diagonal = float(np.hypot(args.size, args.size))
    results = {}
    for mode in ("direct", "chain"):
        folder = args.workdir / mode
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(
            f"samples: {args.workdir / 'images.tsv'}\noutdir: out\n"
            # the plain chain: these sections' deformation accumulates step by step (a genuine
            # trend, which the stack solve's drift removal is not for; see stack.py)
            f"cases:\n  chain: {'true' if mode == 'chain' else 'false'}\n  solve: chain\n"
        )
        start = time.perf_counter()
        subprocess.run(workflow_command(folder), check=True, capture_output=True)
        seconds = time.perf_counter() - start
        rows = {}
        for image in sheet["image"][1:]:
            mapped = pd.read_csv(folder / "out" / "serial" / image / "landmarks_warped.csv")
            errors = np.hypot(*(mapped[["X", "Y"]].to_numpy() - reference).T) / diagonal
            rows[image] = (np.nanmedian(errors), np.nanmax(errors), int(np.isnan(errors).sum()))
        results[mode] = (rows, seconds)
    # how far each section is from the reference, unregistered
    print(f"{args.sections} sections, {args.size} px; rTRE against section 1's landmarks")
    print(f"{'section':<8} {'unregistered':>12} {'direct med':>11} {'direct max':>11} "
          f"{'chain med':>10} {'chain max':>10}")  # fmt: skip
    for index, image in enumerate(sheet["image"][1:], start=1):
        moving = pd.read_csv(sheet.loc[index, "landmarks"])[["X", "Y"]].to_numpy()
        initial = np.median(np.hypot(*(moving - reference).T)) / diagonal
        d, c = results["direct"][0][image], results["chain"][0][image]
        print(f"{image:<8} {initial:12.4f} {d[0]:11.5f} {d[1]:11.5f} {c[0]:10.5f} {c[1]:10.5f}"
              + (f"  (unmapped: direct {d[2]}, chain {c[2]})" if d[2] or c[2] else ""))  # fmt: skip
    for mode, (_, seconds) in results.items():
        print(f"{mode}: whole workflow {seconds:.1f} s (--cores 2)")


if __name__ == "__main__":
    main()
