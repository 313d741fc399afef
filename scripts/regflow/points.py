"""Point sets (landmarks, cell centroids): CSV in and out, mapped between the two images.

CSV format: columns ``X`` and ``Y`` (X = column, Y = row, in full-resolution pixels), with or
without a leading unnamed index column (the ANHIR/BIRL format). Other columns are kept
untouched when points are mapped, so a table of cell centroids keeps its measurements.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .transform import Transform, apply_matrix, outside_both


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


@dataclass(frozen=True)
class PointTable:
    """A point CSV as read: the header and rows as text — every column other than ``X`` and
    ``Y`` is written back exactly as it was (ids, classes, measurements) — and the
    coordinates as numbers.

    Attributes
    ----------
    header : list of str
        Column names (an unnamed leading index column, as in the ANHIR files, is dropped).
    rows : list of list of str
        One list of cells per point, as many as the header.
    xy : ndarray, shape (n, 2)
        ``(X, Y)`` float64; NaN where a cell is empty.
    """

    header: list[str]
    rows: list[list[str]]
    xy: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[str]:
        """The cells of one column, as text."""
        index = self.header.index(name)
        return [row[index] for row in self.rows]

    def with_xy(self, xy: np.ndarray) -> PointTable:
        """The same rows and columns with new coordinates."""
        return PointTable(self.header, self.rows, np.asarray(xy, np.float64).reshape(-1, 2))


def read_points_table(path: str | os.PathLike) -> PointTable:
    """Read a point CSV, checking for numeric ``X`` and ``Y`` columns (no pandas: the point
    jobs and QC read points on their hot path)."""
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as exc:
        raise PointsError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PointsError(f"{path}: cannot be read as CSV ({exc})") from exc
    # A line without a delimiter and without text is blank and skipped; a row of empty cells
    # (",") is a point whose coordinates are missing — an unmapped landmark as written by
    # write_points — and keeps its place, so row i still pairs with row i of the other file.
    rows = [row for row in rows if len(row) > 1 or any(cell.strip() for cell in row)]
    header = [name.strip() for name in rows[0]] if rows else []
    kept = [i for i, name in enumerate(header) if name and not name.startswith("Unnamed:")]
    header = [header[i] for i in kept]
    _require_xy(path, header)
    body = [[row[i] if i < len(row) else "" for i in kept] for row in rows[1:]]
    columns = [header.index("X"), header.index("Y")]
    xy = np.full((len(body), 2), np.nan)
    for row_index, row in enumerate(body):
        for axis, column in enumerate(columns):
            cell = row[column].strip()
            if cell:
                try:
                    xy[row_index, axis] = float(cell)
                except ValueError:
                    name = "XY"[axis]
                    raise PointsError(f"{path}: column {name} has non-numeric values") from None
    return PointTable(header, body, xy)


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Points ``(n, 2)`` as ``(x, y)`` float64 (empty cells NaN), with the checks of
    :func:`read_points_table`."""
    return read_points_table(path).xy


def write_points(path: str | os.PathLike, table: PointTable) -> None:
    """Write a point table atomically; NaN coordinates become empty cells, the other
    columns are written as they were read."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    columns = [table.header.index("X"), table.header.index("Y")]
    try:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(table.header)
            for row, xy in zip(table.rows, table.xy, strict=True):
                cells = list(row)
                for column, value in zip(columns, xy, strict=True):
                    cells[column] = repr(float(value)) if np.isfinite(value) else ""
                writer.writerow(cells)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _source_target_shapes(transform: Transform, direction: str) -> tuple[tuple, tuple]:
    if direction == "moving_to_fixed":
        return transform.moving_shape, transform.fixed_shape
    if direction == "fixed_to_moving":
        return transform.fixed_shape, transform.moving_shape
    raise ValueError(f"unknown direction {direction!r}")


def map_points(points: np.ndarray, transform: Transform, direction: str) -> np.ndarray:
    """Map ``(n, 2)`` points ``(x, y)`` between the images.

    Every point whose position is defined is mapped — one on or near an image border, or one
    that lands just outside the target image, is still a valid coordinate (the field continues
    at its edge, the affine part beyond it). NaN only where a point is NaN on input, lies
    outside *both* images (outside its own image and landing outside the other), or (moving →
    fixed) no fixed position reaches it; :func:`unmapped_reasons` tells which.

    Parameters
    ----------
    direction : {'moving_to_fixed', 'fixed_to_moving'}
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    source_shape, target_shape = _source_target_shapes(transform, direction)
    valid = np.isfinite(points).all(axis=1)
    mapped = np.full_like(points, np.nan)
    if direction == "moving_to_fixed":
        mapped[valid] = transform.moving_to_fixed(points[valid])
    else:
        result = transform.fixed_to_moving(points[valid])
        source = points[valid]
        result[outside_both(source, result, source_shape, target_shape)] = np.nan
        mapped[valid] = result
    return mapped


def unmapped_reasons(
    points: np.ndarray, mapped: np.ndarray, transform: Transform, direction: str
) -> dict[str, int]:
    """Why points did not map, counted: ``missing`` (NaN or empty on input),
    ``outside_both_images`` (outside the source image, and its image under the transform
    outside the target), ``not_reached`` (moving → fixed: inside an image, but no fixed
    position maps onto it within tolerance — a fold or tear of the field)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    mapped = np.asarray(mapped, np.float64).reshape(-1, 2)
    source_shape, target_shape = _source_target_shapes(transform, direction)
    missing = ~np.isfinite(points).all(axis=1)
    lost = ~np.isfinite(mapped).all(axis=1) & ~missing
    outside = np.zeros(len(points), bool)
    if lost.any():
        source = points[lost]
        if direction == "fixed_to_moving":
            image = transform.fixed_to_moving(source)
        else:  # where the global part alone puts it: the field is bounded, the images are not
            image = apply_matrix(np.linalg.inv(transform.affine), source)
        outside[lost] = outside_both(source, image, source_shape, target_shape)
    return {
        "missing": int(missing.sum()),
        "outside_both_images": int(outside.sum()),
        "not_reached": int((lost & ~outside).sum()),
    }


def map_points_table(
    table: PointTable, transform: Transform, direction: str = "moving_to_fixed"
) -> PointTable:
    """Map the ``X, Y`` columns of a point table; rows and other columns are kept.

    Parameters
    ----------
    direction : {'moving_to_fixed', 'fixed_to_moving'}
        Points that cannot be mapped (outside the target image) get NaN coordinates; they are
        never dropped, so row i of the output still corresponds to row i of the input.
    """
    return table.with_xy(map_points(table.xy, transform, direction))
