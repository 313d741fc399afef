"""pyproject.toml (ranges), requirements.lock (exact versions that `make run` installs) and
the rules' conda environment (the lock's versions) must agree."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYTHON_311 = {"python_version": "3.11", "python_full_version": "3.11.9", "sys_platform": "linux"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(environment: dict) -> dict[str, str]:
    """``{name: version}`` of requirements.lock for one environment (markers evaluated)."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"requirements.lock: {line} is not an exact pin"
        name = _canonical(requirement.name)
        assert name not in pins, f"requirements.lock pins {name} twice for {environment}"
        pins[name] = spec.version
    return pins


def _conda() -> tuple[dict[str, str], str]:
    """``{name: pinned version}`` of envs/regflow.yaml (conda and pip sections), and Python's."""
    entries = yaml.safe_load((ROOT / "envs" / "regflow.yaml").read_text())["dependencies"]
    pip_section = [p for d in entries if isinstance(d, dict) for p in d.get("pip", [])]
    pins, python = {}, None
    for entry in entries + pip_section:
        if not isinstance(entry, str) or entry == "pip":
            continue
        if entry.startswith("python="):
            python = entry.split("=", 1)[1]
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.+\-]*)", entry)
        assert match, f"envs/regflow.yaml: {entry!r} is not an exact pin (name==version)"
        pins[_canonical(match.group(1))] = match.group(2)
    return pins, python


def test_lock_pins_every_dependency_within_its_range():
    project = _project()
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    for python in ("3.11.9", "3.12.7", "3.13.1"):
        environment = PYTHON_311 | {"python_version": python[:4], "python_full_version": python}
        pins = _lock(environment)
        for requirement in wanted:
            name = _canonical(requirement.name)
            assert name in pins, f"requirements.lock has no {name} (Python {python}); make lock"
            assert Version(pins[name]) in requirement.specifier, (
                f"requirements.lock pins {name}=={pins[name]}, outside pyproject's "
                f"{requirement}; run make lock"
            )


def test_conda_env_pins_the_locked_versions():
    project = _project()
    pins, python = _conda()
    assert python == "3.11"
    assert Marker(f"python_version >= '{project['requires-python'][2:]}'").evaluate(PYTHON_311)
    locked = _lock(PYTHON_311)
    for name, version in pins.items():
        assert locked.get(name) == version, (
            f"envs/regflow.yaml pins {name}=={version}, the lock {locked.get(name)}"
        )
    runtime = {_canonical(Requirement(r).name) for r in project["dependencies"]}
    # Every runtime dependency the rules import is in the environment (Snakemake runs them).
    assert runtime - {"snakemake"} <= set(pins), f"envs/regflow.yaml lacks {runtime - set(pins)}"


def test_the_installed_environment_is_the_locked_one():
    """What `make run` installed is what the lock says (a stale .venv shows here)."""
    from importlib import metadata

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    full = sys.version.split()[0]
    locked = _lock(PYTHON_311 | {"python_full_version": full, "python_version": version})
    for name in ("numpy", "scipy", "scikit-image", "opencv-python-headless", "snakemake"):
        assert metadata.version(name) == locked[name], name


def test_packaging_metadata_and_version():
    project = _project()
    assert project["license"] == "BSD-3-Clause"  # an SPDX expression, not a table
    assert project["dynamic"] == ["version"]
    from regflow import __version__

    result = subprocess.run([sys.executable, "-m", "regflow", "--version"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == f"regflow {__version__}"
    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()
