"""regflow deployed as a Snakemake module into a directory of its own, as a user takes up a
published workflow: their own Snakefile, config and sheet (absolute paths), nothing of
regflow's in the working directory."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, make_cohort

pytestmark = pytest.mark.workflow

MODULE = """\
configfile: "config/config.yaml"


module regflow:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from regflow as regflow_*
"""


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # run where the user's Snakefile is, as a user would: no --snakefile, no --directory
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir,
                          capture_output=True, text=True)  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    data = tmp_path_factory.mktemp("module-data")
    make_cohort(data, 160, data / "samples.tsv")
    sheet = pd.read_csv(data / "samples.tsv", sep="\t")
    assert all(Path(p).is_absolute() for p in sheet["fixed"])  # a sheet of absolute paths
    return data


def _user_dir(root: Path, data: Path) -> Path:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "config.yaml").write_text(
        f"samples: {data / 'samples.tsv'}\noutdir: results\nflow:\n  method: ilk\n"
    )
    return root


def test_regflow_runs_to_the_end_as_a_module(tmp_path, cohort):
    user = _user_dir(tmp_path / "analysis", cohort)
    (user / "Snakefile").write_text(MODULE.format(snakefile=ROOT / "Snakefile"))
    result = _snakemake(user, "--cores", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = pd.read_csv(user / "results" / "summary.tsv", sep="\t")
    assert len(summary) == 3 and set(summary["status"]) <= {"ok", "rigid_only"}
    for sample in summary["sample"]:
        folder = user / "results" / sample
        for name in ("warped.ome.tif", "transform.npz", "qc.png", "landmarks_warped.csv"):
            assert (folder / name).is_file(), (sample, name)
        metrics = json.loads((folder / "metrics.json").read_text())
        # the user's config reached the module (and the schema's defaults the rest)
        assert metrics["provenance"]["parameters"]["min_ncc"] is not None
    flow = json.loads((user / "results" / summary["sample"][0] / "flow.json").read_text())
    assert flow["method"] == "ilk"
    # nothing of regflow's was copied into, or looked for in, the user's directory
    assert not (user / "scripts").exists() and not (user / "rules").exists()
    assert _snakemake(user, "--cores", "2", "-n").stdout.count("Nothing to be done") == 1


def test_snakedeploy_from_a_local_path(tmp_path, cohort):
    """``snakedeploy deploy-workflow <local path>`` copies the config and profiles and writes
    the module; for a local repository it names the Snakefile by its path inside the
    repository (``"Snakefile"``) as if it were a remote one, so that one line is pointed at
    the clone (what a user of a local clone does)."""
    dest = tmp_path / "deployed"
    snakedeploy = str(Path(sys.executable).parent / "snakedeploy")
    command = [snakedeploy, "deploy-workflow", str(ROOT), str(dest), "--branch", "main"]
    subprocess.run(command, check=True, capture_output=True)
    assert (dest / "config" / "config.yaml").is_file()
    assert (dest / "config" / "schemas").is_dir()
    snakefile = dest / "workflow" / "Snakefile"
    text = snakefile.read_text()
    assert re.search(r"module \w+:", text)
    text = re.sub(
        r'snakefile:\s*\n\s*"Snakefile"', f'snakefile:\n        "{ROOT / "Snakefile"}"', text
    )
    snakefile.write_text(text)
    _user_dir(dest, cohort)
    result = _snakemake(dest, "--cores", "2", "-n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\w*preprocess\s+3$", result.stdout, re.MULTILINE), result.stdout
