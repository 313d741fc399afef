"""Shared helpers of the end-to-end tests: run the workflow, read a dry run, make a cohort."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What every sample with landmarks gets in {outdir}/{sample}/.
SAMPLE_OUTPUTS = (
    "warped.ome.tif",
    "transform.npz",
    "metrics.json",
    "qc.png",
    "landmarks_warped.csv",
)


def snakemake_command(workdir: Path, *args: str, snakefile: Path | None = None) -> list[str]:
    """``snakemake`` on ``workdir`` with its config.yaml (the repository's Snakefile by default)."""
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(snakefile or ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        *args,
    ]  # fmt: skip


def run_snakemake(workdir: Path, *args: str, check: bool = True, snakefile: Path | None = None):
    result = subprocess.run(
        snakemake_command(workdir, *args, snakefile=snakefile),
        capture_output=True, text=True, cwd=workdir,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def planned_jobs(workdir: Path, *args: str, snakefile: Path | None = None) -> dict[str, int]:
    """Rule → job count of a dry run (empty when there is nothing to do)."""
    output = run_snakemake(workdir, "--dry-run", *args, snakefile=snakefile).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
        if m.group(1) not in ("total", "all")
    }


def jobs_run_alone(workdir: Path, *args: str) -> dict[str, str]:
    """Plan one job of every rule on its own, as a cluster executor runs it (``--target-jobs``
    with only its rule allowed, forced): job → Snakemake's error, for those that fail."""
    output = run_snakemake(workdir, "--dry-run", "--forceall", *args).stdout
    first = {}  # rule -> its first job's wildcards, as --target-jobs takes them
    job = r"^(?:local)?rule (\w+):\n(?:    (?!wildcards).*\n)*    wildcards: (.*)$"
    for rule, wildcards in re.findall(job, output, re.MULTILINE):
        first.setdefault(rule, wildcards.replace(" ", ""))
    assert first, output[-2000:]
    failures = {}
    for rule, wildcards in first.items():
        job = f"{rule}:{wildcards}"
        result = run_snakemake(workdir, "--dry-run", "--force", "--target-jobs", job,
                               "--allowed-rules", rule, *args, check=False)  # fmt: skip
        if result.returncode != 0:
            failures[job] = (result.stdout + result.stderr)[-1500:]
    return failures


def make_cohort(folder: Path, size: int, sheet: Path | None = None) -> None:
    """The example generator's three pairs at ``size`` px (and their sample sheet)."""
    script = ROOT / "scripts" / "make_example_cohort.py"
    command = [sys.executable, str(script), "--outdir", str(folder), "--size", str(size)]
    if sheet is not None:
        command += ["--sheet", str(sheet)]
    subprocess.run(command, check=True, capture_output=True)
