"""Logging, provenance and atomic JSON output for the rule scripts."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

from . import __version__

DEPENDENCIES = ("numpy", "scipy", "scikit-image", "tifffile", "matplotlib", "pandas")


def provenance(parameters: dict | None = None) -> dict:
    """Versions of regflow, Python and the key dependencies, and the parameters used."""
    versions = {"regflow": __version__, "python": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "parameters": parameters or {}}


def _default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value):
    """Replace NaN/Inf by None (JSON null) recursively; JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, default=_default) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


@contextmanager
def stage_log(log_path: str | os.PathLike, stage: str, sample: str) -> Iterator[logging.Logger]:
    """Log a stage to its file (and stderr); a failure ends in one line naming sample and reason.

    Yields
    ------
    logging.Logger
    """
    logger = logging.getLogger(f"regflow.{stage}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in (logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    start = time.perf_counter()
    logger.info("%s of sample %s started", stage, sample)
    try:
        yield logger
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        logger.error("sample %s failed at %s: %s", sample, stage, reason, exc_info=True)
        # One line that the cohort summary reads back (regflow.qc.failure_reason).
        logger.error("FAILED sample=%s stage=%s reason=%s", sample, stage, reason)
        raise
    else:
        logger.info("%s of sample %s done in %.2f s", stage, sample, time.perf_counter() - start)
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """``numpy.savez`` atomically. Uncompressed: working-resolution float images gain ~30 %
    from zlib at 30× the time of writing them (0.16 s per 1024² image)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
