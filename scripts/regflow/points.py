"""Point sets (landmarks, cell centroids): CSV in and out, mapped between the two images.

CSV format: columns ``X`` and ``Y`` (X = column, Y = row, in full-resolution pixels), with or
without a leading unnamed index column (the ANHIR/BIRL format). Other columns are kept
untouched when points are mapped, so a table of cell centroids keeps its measurements.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .transform import Transform, inside_image

if TYPE_CHECKING:  # pandas costs ~0.3 s to import: only the point tables need it
    import pandas as pd


class PointsError(ValueError):
    """A point file cannot be used; the message names the file and what to do."""


def _require_xy(path, columns: list) -> None:
    """The error for a point file without ``X`` and ``Y`` columns (named, with what it has)."""
    missing = [c for c in ("X", "Y") if c not in columns]
    if missing:
        raise PointsError(
            f"{path}: missing column(s) {', '.join(missing)}; a point file needs columns X "
            f"(column, px) and Y (row, px); found {columns}"
        )


def read_points_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a point CSV, checking for numeric ``X`` and ``Y`` columns."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise PointsError(f"{path}: file not found") from exc
    except Exception as exc:
        raise PointsError(f"{path}: cannot be read as CSV ({exc})") from exc
    unnamed = [c for c in table.columns if str(c).startswith("Unnamed:") or str(c) == ""]
    table = table.drop(columns=unnamed)
    _require_xy(path, list(table.columns))
    for column in ("X", "Y"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any() and not table[column].isna().equals(values.isna()):
            raise PointsError(f"{path}: column {column} has non-numeric values")
        table[column] = values
    return table


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Points ``(n, 2)`` as ``(x, y)`` float64 (empty cells NaN); the checks of
    :func:`read_points_table`, without pandas (QC reads points on its hot path)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as exc:
        raise PointsError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PointsError(f"{path}: cannot be read as CSV ({exc})") from exc
    rows = [row for row in rows if any(cell.strip() for cell in row)]  # blank lines skipped
    header = [name.strip() for name in rows[0]] if rows else []
    _require_xy(path, [c for c in header if c and not c.startswith("Unnamed:")])
    columns = [header.index("X"), header.index("Y")]
    points = np.full((len(rows) - 1, 2), np.nan)
    for row_index, row in enumerate(rows[1:]):
        for axis, column in enumerate(columns):
            cell = row[column].strip() if column < len(row) else ""
            if cell:
                try:
                    points[row_index, axis] = float(cell)
                except ValueError:
                    name = "XY"[axis]
                    raise PointsError(f"{path}: column {name} has non-numeric values") from None
    return points


def write_points(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write a point table atomically; NaN coordinates become empty cells."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False, na_rep="")
    os.replace(tmp, path)


def map_points(points: np.ndarray, transform: Transform, direction: str) -> np.ndarray:
    """Map ``(n, 2)`` points ``(x, y)`` between the images; NaN where they cannot be mapped
    (outside the target image, or NaN on input).

    Parameters
    ----------
    direction : {'moving_to_fixed', 'fixed_to_moving'}
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    valid = np.isfinite(points).all(axis=1)
    mapped = np.full_like(points, np.nan)
    if direction == "moving_to_fixed":
        mapped[valid] = transform.moving_to_fixed(points[valid])
    elif direction == "fixed_to_moving":
        result = transform.fixed_to_moving(points[valid])
        result[~inside_image(result[:, 0], result[:, 1], transform.moving_shape)] = np.nan
        mapped[valid] = result
    else:
        raise ValueError(f"unknown direction {direction!r}")
    return mapped


def map_points_table(
    table: pd.DataFrame, transform: Transform, direction: str = "moving_to_fixed"
) -> pd.DataFrame:
    """Map the ``X, Y`` columns of a point table; rows and other columns are kept.

    Parameters
    ----------
    direction : {'moving_to_fixed', 'fixed_to_moving'}
        Points that cannot be mapped (outside the target image) get NaN coordinates; they are
        never dropped, so row i of the output still corresponds to row i of the input.
    """
    mapped = map_points(table[["X", "Y"]].to_numpy(np.float64), transform, direction)
    out = table.copy()
    out["X"], out["Y"] = mapped[:, 0], mapped[:, 1]
    return out
