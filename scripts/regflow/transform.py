"""The registration result: a mapping from fixed-image pixels to moving-image pixels.

File format (``transform.npz``, numpy's zipped arrays), all coordinates ``(x, y)`` with
x = column, y = row, in full-resolution pixels with pixel centres at integers:

``affine``
    (3, 3) float64. Homogeneous matrix of the global (rigid/similarity/affine) part.
``displacement``
    (2, h, w) float32. Non-rigid part ``(dx, dy)`` in full-resolution *fixed* pixels,
    sampled on the fixed image's working grid; zeros when refinement was rejected.
``fixed_full_to_working``
    (3, 3) float64. Maps fixed full-resolution ``(x, y)`` to the displacement grid.
``fixed_shape``, ``moving_shape``
    (2,) int64. ``(Y, X)`` of the full-resolution images.

A fixed pixel ``p`` maps to the moving pixel ``affine @ (p + u(p))``, where ``u`` is the
displacement bilinearly interpolated at ``fixed_full_to_working @ p``. Warping the moving
image onto the fixed grid samples it there (a pull-back); mapping points from the moving
image into the fixed one inverts this by fixed-point iteration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np


def inside_image(x: np.ndarray, y: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Whether positions ``(x, y)`` (x = column) lie on an image of ``shape`` ``(…, Y, X)``.

    Pixel centres are at integers, so the image spans ``-0.5 … n - 0.5`` on each axis (edges
    included).
    """
    height, width = shape[-2], shape[-1]
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def _linear_weights(positions: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Linear-interpolation weights of ``positions`` on ``n`` samples, edges replicated
    (scipy's ``mode="nearest"``), as a dense matrix over the samples they touch.

    Returns ``(weights, first)``: ``weights[i, j]`` is the weight of sample ``first + j``.
    """
    clipped = np.clip(positions, 0.0, n - 1.0)
    low = np.floor(clipped).astype(np.int64)
    frac = clipped - low
    high = np.minimum(low + 1, n - 1)
    first = int(low.min())
    weights = np.zeros((len(positions), int(high.max()) - first + 1))
    index = np.arange(len(positions))
    weights[index, low - first] = 1.0 - frac
    weights[index, high - first] += frac  # a second step: at the last sample high == low
    return weights, first


def bilinear(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``values`` (2-D) bilinearly interpolated at ``(rows, cols)``, edge values continued
    outside (scipy's ``map_coordinates(order=1, mode="nearest")``, without importing scipy:
    the point and warp jobs need nothing else from it)."""
    height, width = values.shape
    rows = np.clip(np.asarray(rows, np.float64), 0.0, height - 1.0)
    cols = np.clip(np.asarray(cols, np.float64), 0.0, width - 1.0)
    r0 = np.minimum(np.floor(rows).astype(np.intp), max(height - 2, 0))
    c0 = np.minimum(np.floor(cols).astype(np.intp), max(width - 2, 0))
    r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
    fr, fc = rows - r0, cols - c0
    top = values[r0, c0] * (1.0 - fc) + values[r0, c1] * fc
    bottom = values[r1, c0] * (1.0 - fc) + values[r1, c1] * fc
    return top * (1.0 - fr) + bottom * fr


def _positions(index: slice | np.ndarray) -> np.ndarray:
    """Fixed-image rows or columns as float64 positions: a slice of the grid, or given."""
    if isinstance(index, slice):
        return np.arange(index.start, index.stop, dtype=np.float64)
    return np.asarray(index, np.float64)


def apply_matrix(matrix: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """Apply a homogeneous 3×3 matrix to ``(n, 2)`` points."""
    points_xy = np.asarray(points_xy, dtype=np.float64)
    return points_xy @ matrix[:2, :2].T + matrix[:2, 2]


@dataclass
class Transform:
    """Fixed-to-moving mapping; see the module docstring for the conventions."""

    affine: np.ndarray
    displacement: np.ndarray
    fixed_full_to_working: np.ndarray
    fixed_shape: tuple[int, int]
    moving_shape: tuple[int, int]

    @classmethod
    def from_affine(
        cls,
        affine: np.ndarray,
        fixed_shape: tuple[int, int],
        moving_shape: tuple[int, int],
    ) -> Transform:
        """A purely global transform (no displacement field)."""
        return cls(
            affine=np.asarray(affine, np.float64),
            displacement=np.zeros((2, 2, 2), np.float32),
            fixed_full_to_working=np.diag(
                [1.0 / max(fixed_shape[1] - 1, 1), 1.0 / max(fixed_shape[0] - 1, 1), 1.0]
            ),
            fixed_shape=tuple(fixed_shape),
            moving_shape=tuple(moving_shape),
        )

    @cached_property
    def has_displacement(self) -> bool:
        # asked per output tile: computed once (a transform's field is never changed in place)
        return bool(np.any(self.displacement))

    def displacement_at(self, points_xy: np.ndarray) -> np.ndarray:
        """Displacement ``(n, 2)`` in full-resolution pixels at fixed points ``(n, 2)``."""
        points_xy = np.asarray(points_xy, np.float64)
        if not self.has_displacement:
            return np.zeros_like(points_xy)
        grid = apply_matrix(self.fixed_full_to_working, points_xy)
        field = self.displacement.astype(np.float64, copy=False)
        return np.stack([bilinear(field[axis], grid[:, 1], grid[:, 0]) for axis in range(2)], 1)

    def fixed_to_moving(self, points_xy: np.ndarray) -> np.ndarray:
        """Map fixed-image points ``(n, 2)`` to moving-image points ``(n, 2)``."""
        points_xy = np.asarray(points_xy, np.float64)
        return apply_matrix(self.affine, points_xy + self.displacement_at(points_xy))

    def moving_to_fixed(
        self, points_xy: np.ndarray, iterations: int = 100, tolerance: float = 0.1
    ) -> np.ndarray:
        """Map moving-image points ``(n, 2)`` into the fixed image (inverse mapping).

        Solves ``p + u(p) = affine⁻¹ m`` for ``p`` by fixed-point iteration (damped after the
        first steps, keeping each point's best iterate), which converges wherever the mapping
        is invertible — the refinement's fields are smooth. Where it does not (a fold of the
        field, where two fixed points reach one moving point), the nearest solution is
        searched for on grids around the best iterate. Beyond the displacement grid the field
        continues with its edge values and the affine part applies as everywhere, so every
        position has an image: a landmark near the border, or one that lands just outside the
        fixed image, is still a valid coordinate. Points are NaN only where the residual stays
        above ``tolerance`` (pixels, in the moving image: no fixed position reaches them) or
        where they lie outside *both* images (outside the moving image and landing outside
        the fixed one) — see :func:`unmapped_reasons`.
        """
        points_xy = np.asarray(points_xy, np.float64)
        target = apply_matrix(np.linalg.inv(self.affine), points_xy)
        fixed = target.copy()
        best, best_residual = fixed.copy(), np.full(len(fixed), np.inf)
        for step in range(iterations):
            residual = target - (fixed + self.displacement_at(fixed))
            size = np.linalg.norm(residual, axis=1)
            better = size < best_residual
            best[better], best_residual[better] = fixed[better], size[better]
            if best_residual.max(initial=0.0) < 1e-4:
                break
            fixed = fixed + (1.0 if step < 10 else 0.5) * residual
        error = np.linalg.norm(self.fixed_to_moving(best) - points_xy, axis=1)
        stuck = np.nonzero((error > tolerance) & np.isfinite(best).all(axis=1))[0]
        if stuck.size and self.has_displacement:
            best[stuck] = self._search_inverse(best[stuck], points_xy[stuck])
            reached = self.fixed_to_moving(best[stuck])
            error[stuck] = np.linalg.norm(reached - points_xy[stuck], axis=1)
        outside = ~inside_image(best[:, 0], best[:, 1], self.fixed_shape) & ~inside_image(
            points_xy[:, 0], points_xy[:, 1], self.moving_shape
        )
        best[(error > tolerance) | outside | ~np.isfinite(best).all(axis=1)] = np.nan
        return best

    def _search_inverse(self, start: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
        """For each moving point, the fixed position with the smallest residual near
        ``start``: a 33 × 33 grid over the reach of the field, then grids 8× finer around
        the best node, down to 0.01 px (~1000 evaluations per point and level; points are
        searched together, in chunks, so thousands of annotation vertices stay fast)."""
        reach = float(np.abs(self.displacement).max()) + 2.0
        nodes = 33
        unit = np.linspace(-1.0, 1.0, nodes)
        offsets = np.stack([g.ravel() for g in np.meshgrid(unit, unit)], axis=1)  # (m, 2)
        out = start.copy()
        for first in range(0, len(start), 256):
            centre = start[first : first + 256].copy()
            target = points_xy[first : first + 256]
            radius = reach
            while 2.0 * radius / (nodes - 1) > 0.01:
                grid = centre[:, None, :] + radius * offsets[None, :, :]  # (k, m, 2)
                reached = self.fixed_to_moving(grid.reshape(-1, 2)).reshape(grid.shape)
                residual = np.linalg.norm(reached - target[:, None, :], axis=2)
                centre = grid[np.arange(len(centre)), np.argmin(residual, axis=1)]
                radius /= 8.0  # ± two of this grid's spacings
            out[first : first + 256] = centre
        return out

    def separable_parts(self, rows: slice | np.ndarray, cols: slice | np.ndarray):
        """The moving coordinates of a block of the fixed grid as separable pieces (``rows``
        and ``cols`` slices of the grid, or any increasing fixed-image row / column positions).

        For axis 0 (row) and 1 (col): ``coords[axis] = r[:, None] + c[None, :] + wy @ F @ wx.T``
        — the affine part as an outer sum and the displacement, bilinearly upsampled for this
        block only, as two small weight matrices around ``F``, the window of the field that the
        block touches combined with the affine's linear part (``F`` is None without
        displacement). None when the displacement grid is not axis-aligned with the fixed image.

        Returns
        -------
        parts : list of (r, c, F) for axes (row, col)
        weights : (wy, wx) or None
        """
        to_grid = self.fixed_full_to_working
        if self.has_displacement and (to_grid[0, 1] or to_grid[1, 0]):
            return None
        y, x = _positions(rows), _positions(cols)
        weights = window = None
        if self.has_displacement:
            grid_h, grid_w = self.displacement.shape[1:]
            wy, r0 = _linear_weights(to_grid[1, 1] * y + to_grid[1, 2], grid_h)
            wx, c0 = _linear_weights(to_grid[0, 0] * x + to_grid[0, 2], grid_w)
            window = self.displacement[:, r0 : r0 + wy.shape[1], c0 : c0 + wx.shape[1]]
            window = window.astype(np.float64)
            weights = (wy, wx)
        parts = []
        for cx, cy, c0 in (self.affine[1], self.affine[0]):  # (row, col) = (my, mx)
            # A (p + u) = A p + A u: the field's share of this axis, on the coarse window
            field = None if window is None else cx * window[0] + cy * window[1]
            parts.append((cy * y + c0, cx * x, field))
        return parts, weights

    def moving_coordinates(self, rows: slice | np.ndarray, cols: slice | np.ndarray) -> np.ndarray:
        """Moving-image ``(row, col)`` sampling coordinates for a block of the fixed grid
        (``rows``, ``cols``: slices, or increasing fixed-image positions, e.g. another grid's).

        The displacement is bilinearly upsampled for this block only, separably (the grid is
        axis-aligned with the fixed image), which equals sampling it point by point.

        Returns
        -------
        ndarray, shape (2, n_rows, n_cols)
        """
        separable = self.separable_parts(rows, cols)
        if separable is None:  # a general grid: point by point
            y, x = _positions(rows), _positions(cols)
            yy, xx = np.meshgrid(y, x, indexing="ij")
            points = np.stack([xx.ravel(), yy.ravel()], axis=1)
            mapped = self.fixed_to_moving(points)
            return np.stack([mapped[:, 1].reshape(xx.shape), mapped[:, 0].reshape(xx.shape)])
        parts, weights = separable
        out = np.empty((2, len(parts[0][0]), len(parts[0][1])))
        for axis, (row_term, col_term, field) in enumerate(parts):
            np.add.outer(row_term, col_term, out=out[axis])
            if field is not None:
                out[axis] += weights[0] @ field @ weights[1].T
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write ``transform.npz`` atomically (see the module docstring for the format)."""
        path = Path(path)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        # uncompressed: a float32 field gains 8 % from zlib, at 13× the time (0.3 s at 1024²)
        np.savez(
            tmp,
            affine=self.affine,
            displacement=self.displacement.astype(np.float32),
            fixed_full_to_working=self.fixed_full_to_working,
            fixed_shape=np.asarray(self.fixed_shape, np.int64),
            moving_shape=np.asarray(self.moving_shape, np.int64),
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Transform:
        with np.load(path) as data:
            return cls(
                affine=data["affine"],
                displacement=data["displacement"],
                fixed_full_to_working=data["fixed_full_to_working"],
                fixed_shape=tuple(int(v) for v in data["fixed_shape"]),
                moving_shape=tuple(int(v) for v in data["moving_shape"]),
            )


def compose(first: Transform, second: Transform) -> Transform:
    """The transform ``p ↦ second(first(p))``: ``first`` maps the reference to image *a*,
    ``second`` maps *a* to image *b*; the result maps the reference to *b* directly.

    The global parts multiply (exact when neither has a displacement). The rest is one
    displacement field on the reference's grid (``first``'s working grid, or one as fine as
    ``second``'s when ``first`` is purely global), sampled exactly at its nodes:
    ``u(p) = A⁻¹ second(first(p)) − p``; so a chain of registrations is applied once, from
    the original pixels of *b*.
    """
    affine = second.affine @ first.affine
    if not first.has_displacement and not second.has_displacement:
        return Transform.from_affine(affine, first.fixed_shape, second.moving_shape)
    if first.has_displacement:
        to_grid = np.asarray(first.fixed_full_to_working, np.float64)
        grid_shape = first.displacement.shape[1:]
    else:
        factor = float(second.fixed_full_to_working[0, 0])
        grid_shape = tuple(max(2, int(round(n * factor))) for n in first.fixed_shape)
        sy, sx = grid_shape[0] / first.fixed_shape[0], grid_shape[1] / first.fixed_shape[1]
        to_grid = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    rows, cols = np.mgrid[: grid_shape[0], : grid_shape[1]].astype(np.float64)
    nodes = apply_matrix(np.linalg.inv(to_grid), np.stack([cols.ravel(), rows.ravel()], 1))
    target = second.fixed_to_moving(first.fixed_to_moving(nodes))
    displacement = apply_matrix(np.linalg.inv(affine), target) - nodes
    return Transform(
        affine=affine,
        displacement=displacement.T.reshape(2, *grid_shape).astype(np.float32),
        fixed_full_to_working=to_grid,
        fixed_shape=tuple(first.fixed_shape),
        moving_shape=tuple(second.moving_shape),
    )
