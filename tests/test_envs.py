"""The conda environment of the rules and pyproject.toml must pin the same packages alike."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    return match.group(1).lower(), match.group(2).replace(" ", "")


def test_conda_env_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = dict(_split(r) for r in project["dependencies"])
    for env in (ROOT / "envs").glob("*.yaml"):
        entries = yaml.safe_load(env.read_text())["dependencies"]
        # conda packages, and the PyPI-only ones in the environment's pip section
        pip_section = [p for d in entries if isinstance(d, dict) for p in d.get("pip", [])]
        conda = dict(_split(d) for d in entries + pip_section if isinstance(d, str))
        conda.pop("python")
        conda.pop("pip", None)
        assert conda, env
        for name, spec in conda.items():
            assert name in pip, f"{env.name}: {name} is not in pyproject.toml"
            assert spec == pip[name], (
                f"{env.name}: {name}{spec} but pyproject has {name}{pip[name]}"
            )
        # Every runtime dependency the rules import is in the environment.
        assert set(pip) - {"snakemake"} <= set(conda), f"{env.name} lacks {set(pip) - set(conda)}"
    assert project["requires-python"] == ">=3.11"
