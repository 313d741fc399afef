"""Planning time of a large cohort: ``snakemake -n`` on an images sheet of many cases.

Usage::

    .venv/bin/python benchmarks/plan.py --workdir /tmp/plan [--cases 750] [--images 4]
        [--size 64] [--serial] [--snakefile Snakefile] [--floor]

Writes ``--cases`` × ``--images`` small RGB OME-TIFFs (``--size`` px a side; the sheet check
decodes each file's smallest level, so larger single-level files cost more) and an images
sheet (``--serial``: with ``order`` and ``thickness_um`` and ``cases: {chain: true}``, so every
case is a stack with its link registrations). Then times ``snakemake -n`` twice: cold (no
header cache in ``.snakemake/regflow``) and warm (the files unchanged). ``--snakefile`` plans
with another checkout (e.g. an older commit in a git worktree) on the same sheet.
``--floor`` also plans a bare Snakefile with the same jobs (the six rules per registration
of a plain sheet, one per case, the summary; each a ``script`` with a log, a benchmark and
constant resources, no input functions beyond the images' paths): what Snakemake itself costs
for this many jobs, whatever the workflow does.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from regflow.io import write_ome_tiff  # noqa: E402


def make_sheet(workdir: Path, cases: int, images: int, size: int, serial: bool) -> Path:
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for c in range(cases):
        for i in range(images):
            path = data / f"c{c}_i{i}.ome.tif"
            if not path.exists():
                pixels = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
                write_ome_tiff(path, pixels, ["R", "G", "B"], 0.5, rgb=True)
            row = {
                "case": f"c{c}",
                "image": f"i{i}",
                "path": str(path),
                "reference": "true" if i == (images // 2 if serial else 0) else "false",
            }
            if serial:
                row |= {"order": str(i + 1), "thickness_um": "5"}
            rows.append(row)
    sheet = workdir / "images.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    config = f"samples: {sheet}\noutdir: {workdir / 'out'}\n"
    if serial:
        config += "cases:\n  chain: true\n"
    (workdir / "config.yaml").write_text(config)
    return sheet


FLOOR_STAGES = ["preprocess", "rigid", "flow", "refine", "warp", "qc"]

# A bare Snakefile (see the module doc); SHEET and OUT are filled in, RULES by one STAGE each.
FLOOR = """import csv
rows = list(csv.DictReader(open("SHEET"), delimiter="\\t"))
REF = {r["case"]: r["path"] for r in rows if r["reference"] == "true"}
PATH = {r["case"] + "/" + r["image"]: r["path"] for r in rows}
SAMPLES = [r["case"] + "/" + r["image"] for r in rows if r["reference"] != "true"]
O = "OUT"
wildcard_constraints:
    sample=r"[^/]+/[^/]+",
    case=r"[^/]+",
rule all:
    input:
        expand(O + "/{s}/qc.out", s=SAMPLES),
        expand(O + "/{c}/case.out", c=REF),
        O + "/summary.tsv",
def pair(wildcards):
    return [REF[wildcards.sample.split("/")[0]], PATH[wildcards.sample]]
RULES
rule case_qc:
    input: lambda w: [O + f"/{s}/qc.out" for s in SAMPLES if s.startswith(w.case + "/")]
    output: O + "/{case}/case.out"
    log: O + "/logs/case_qc/{case}.log"
    resources: mem_mb=800, runtime=30
    script: "scripts/step.py"
rule summary:
    input: expand(O + "/{s}/qc.out", s=SAMPLES)
    output: O + "/summary.tsv"
    script: "scripts/step.py"
"""
STAGE = """rule STAGE:
    input: PREVIOUS
    output: O + "/{sample}/STAGE.out"
    log: O + "/logs/STAGE/{sample}.log"
    benchmark: O + "/benchmarks/STAGE/{sample}.tsv"
    resources: mem_mb=800, runtime=30
    script: "scripts/step.py"
"""


def write_floor(workdir: Path) -> Path:
    """A bare Snakefile planning the jobs a plain images sheet gives (see the module doc)."""
    out = workdir / "floor"
    (out / "scripts").mkdir(parents=True, exist_ok=True)
    (out / "scripts" / "step.py").write_text("print(snakemake.output)\n")
    previous, rules = ["pair"] + [f"rules.{s}.output" for s in FLOOR_STAGES[:-1]], []
    for stage, before in zip(FLOOR_STAGES, previous, strict=True):
        rules.append(STAGE.replace("STAGE", stage).replace("PREVIOUS", before))
    text = FLOOR.replace("SHEET", str(workdir / "images.tsv")).replace("OUT", str(out / "out"))
    (out / "Snakefile").write_text(text.replace("RULES", "".join(rules)))
    return out / "Snakefile"


def plan(workdir: Path, snakefile: Path) -> tuple[float, int]:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    total = [line for line in result.stdout.splitlines() if line.startswith("total")]
    return seconds, int(total[-1].split()[-1]) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=750)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--serial", action="store_true")
    parser.add_argument("--snakefile", type=Path, default=ROOT / "Snakefile")
    parser.add_argument("--floor", action="store_true", help="also plan a bare Snakefile")
    args = parser.parse_args()
    make_sheet(args.workdir, args.cases, args.images, args.size, args.serial)
    shutil.rmtree(args.workdir / ".snakemake" / "regflow", ignore_errors=True)
    for label in ("cold", "warm"):
        seconds, jobs = plan(args.workdir, args.snakefile.resolve())
        print(
            f"{label}: {seconds:.1f} s for {jobs} jobs "
            f"({args.cases} cases × {args.images} images, {args.size}² px)",
            flush=True,
        )
    if args.floor and not args.serial:
        seconds, jobs = plan(args.workdir, write_floor(args.workdir))
        print(f"bare Snakefile, same jobs: {seconds:.1f} s for {jobs} jobs", flush=True)


if __name__ == "__main__":
    main()
