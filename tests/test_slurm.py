"""The example cohort on a real SLURM cluster (make test-slurm starts one: tests/slurm/)."""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import SAMPLE_OUTPUTS, make_cohort, snakemake_command

ROOT = Path(__file__).resolve().parents[1]


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.returncode == 0 and any(
        s in result.stdout for s in ("idle", "mixed", "allocated")
    )


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (run make test-slurm)"),
]


def test_example_cohort_on_slurm(tmp_path):
    make_cohort(tmp_path / "data", 160, tmp_path / "samples.tsv")
    (tmp_path / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    command = snakemake_command(
        tmp_path,
        "--profile", str(ROOT / "profiles/slurm"), "--jobs", "2",
        "--default-resources", "slurm_partition=debug", "slurm_account=local",
        "--slurm-init-seconds-before-status-checks", "1",
    )  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    sheet = pd.read_csv(tmp_path / "samples.tsv", sep="\t")
    for sample in sheet["sample"]:
        for name in SAMPLE_OUTPUTS:
            assert (tmp_path / "out" / sample / name).is_file(), f"{sample}/{name}"
    summary = pd.read_csv(tmp_path / "out" / "summary.tsv", sep="\t")
    assert set(summary["sample"]) == set(sheet["sample"])

    # The jobs ran on the cluster: sacct lists them, all COMPLETED.
    log = result.stderr + result.stdout
    job_ids = sorted(set(re.findall(r"SLURM jobid (\d+)", log)))
    assert job_ids, log[-3000:]
    accounting = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    states = dict(line.split("|") for line in accounting.split())
    assert len(states) == len(job_ids)
    assert set(states.values()) == {"COMPLETED"}, states
