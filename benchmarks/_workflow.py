"""The workflow run both benchmarks time: ``snakemake --cores 2`` over a fresh output folder."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def workflow_command(workdir: Path, cores: int = 2) -> list[str]:
    """The command line for the workflow on ``workdir/config.yaml``, every job forced."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        str(cores),
        "--forceall",
        "--quiet",
    ]
