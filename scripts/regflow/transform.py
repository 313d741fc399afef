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
``fine``, ``fixed_full_to_fine`` (optional: present when the full-resolution refinement
found something to add)
    (2, H, W) float32 and (3, 3) float64. The fine component ``r``: a residual displacement
    ``(dx, dy)`` in full-resolution fixed pixels on its own, finer grid (e.g. every 8 µm),
    estimated tile by tile after the coarse field; zeros where the refinement was rejected.

A fixed pixel ``p`` maps to the moving pixel ``affine @ (p + u(p) + r(p))``, where ``u`` is the
displacement bilinearly interpolated at ``fixed_full_to_working @ p`` and ``r`` the fine
component bilinearly interpolated at ``fixed_full_to_fine @ p`` (both with their edge values
continued beyond their grids). Warping the moving
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


def outside_both(
    source_xy: np.ndarray, image_xy: np.ndarray, source_shape: tuple, target_shape: tuple
) -> np.ndarray:
    """Points outside their own image (``source_xy`` on ``source_shape``) whose image
    (``image_xy``) is outside the other one as well: the only points that are not mapped."""
    return ~inside_image(source_xy[:, 0], source_xy[:, 1], source_shape) & ~inside_image(
        image_xy[:, 0], image_xy[:, 1], target_shape
    )


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
    fine: np.ndarray | None = None
    fixed_full_to_fine: np.ndarray | None = None

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
    def has_coarse(self) -> bool:
        # asked per output tile: computed once (a transform's field is never changed in place)
        return bool(np.any(self.displacement))

    @cached_property
    def has_fine(self) -> bool:
        return self.fine is not None and bool(np.any(self.fine))

    @cached_property
    def has_displacement(self) -> bool:
        """Whether any non-rigid component (coarse field or fine component) is non-zero."""
        return self.has_coarse or self.has_fine

    def _fields(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The non-zero displacement components as ``(field, fixed_full_to_grid)``."""
        fields = []
        if self.has_coarse:
            fields.append((self.displacement, np.asarray(self.fixed_full_to_working, np.float64)))
        if self.has_fine:
            fields.append((self.fine, np.asarray(self.fixed_full_to_fine, np.float64)))
        return fields

    def displacement_at(self, points_xy: np.ndarray) -> np.ndarray:
        """Displacement ``(n, 2)`` in full-resolution pixels at fixed points ``(n, 2)``: the
        coarse field plus the fine component."""
        points_xy = np.asarray(points_xy, np.float64)
        total = np.zeros_like(points_xy)
        for field, to_grid in self._fields():
            grid = apply_matrix(to_grid, points_xy)
            field = field.astype(np.float64, copy=False)
            total += np.stack(
                [bilinear(field[axis], grid[:, 1], grid[:, 0]) for axis in range(2)], 1
            )
        return total

    def without_fine(self) -> Transform:
        """The same transform without its fine component (the coarse registration)."""
        return Transform(self.affine, self.displacement, self.fixed_full_to_working,
                         self.fixed_shape, self.moving_shape)  # fmt: skip

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
        outside = outside_both(points_xy, best, self.moving_shape, self.fixed_shape)
        best[(error > tolerance) | outside | ~np.isfinite(best).all(axis=1)] = np.nan
        return best

    def _search_inverse(self, start: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
        """For each moving point, the fixed position with the smallest residual near
        ``start``: a 33 × 33 grid over the reach of the field, then grids 8× finer around
        the best node, down to 0.01 px (~1000 evaluations per point and level; points are
        searched together, in chunks, so thousands of annotation vertices stay fast)."""
        reach = sum(float(np.abs(field).max()) for field, _ in self._fields()) + 2.0
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

        For axis 0 (row) and 1 (col):
        ``coords[axis] = r[:, None] + c[None, :] + Σ_k wy_k @ F_k @ wx_k.T`` — the affine part
        as an outer sum and each displacement component (the coarse field, the fine one),
        bilinearly upsampled for this block only, as two small weight matrices around ``F_k``,
        the window of that field the block touches combined with the affine's linear part.
        None when a field's grid is not axis-aligned with the fixed image.

        Returns
        -------
        list of (r, c, fields) for axes (row, col), ``fields`` a list of ``(F, wy, wx)``
        """
        y, x = _positions(rows), _positions(cols)
        windows = []
        for field, to_grid in self._fields():
            if to_grid[0, 1] or to_grid[1, 0]:
                return None
            grid_h, grid_w = field.shape[1:]
            wy, r0 = _linear_weights(to_grid[1, 1] * y + to_grid[1, 2], grid_h)
            wx, c0 = _linear_weights(to_grid[0, 0] * x + to_grid[0, 2], grid_w)
            window = field[:, r0 : r0 + wy.shape[1], c0 : c0 + wx.shape[1]].astype(np.float64)
            windows.append((window, wy, wx))
        parts = []
        for cx, cy, c0 in (self.affine[1], self.affine[0]):  # (row, col) = (my, mx)
            # A (p + u) = A p + A u: each field's share of this axis, on its coarse window
            fields = [(cx * w[0] + cy * w[1], wy, wx) for w, wy, wx in windows]
            parts.append((cy * y + c0, cx * x, fields))
        return parts

    def moving_coordinates(self, rows: slice | np.ndarray, cols: slice | np.ndarray) -> np.ndarray:
        """Moving-image ``(row, col)`` sampling coordinates for a block of the fixed grid
        (``rows``, ``cols``: slices, or increasing fixed-image positions, e.g. another grid's).

        The displacement is bilinearly upsampled for this block only, separably (the grid is
        axis-aligned with the fixed image), which equals sampling it point by point.

        Returns
        -------
        ndarray, shape (2, n_rows, n_cols)
        """
        parts = self.separable_parts(rows, cols)
        if parts is None:  # a general grid: point by point
            y, x = _positions(rows), _positions(cols)
            yy, xx = np.meshgrid(y, x, indexing="ij")
            points = np.stack([xx.ravel(), yy.ravel()], axis=1)
            mapped = self.fixed_to_moving(points)
            return np.stack([mapped[:, 1].reshape(xx.shape), mapped[:, 0].reshape(xx.shape)])
        out = np.empty((2, len(parts[0][0]), len(parts[0][1])))
        for axis, (row_term, col_term, fields) in enumerate(parts):
            np.add.outer(row_term, col_term, out=out[axis])
            for field, wy, wx in fields:
                out[axis] += wy @ field @ wx.T
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
            **(
                {
                    "fine": self.fine.astype(np.float32),
                    "fixed_full_to_fine": self.fixed_full_to_fine,
                }
                if self.fine is not None
                else {}
            ),
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
                fine=data.get("fine"),
                fixed_full_to_fine=data.get("fixed_full_to_fine"),
            )


def _grid_matrix(shape: tuple[int, int], grid_shape: tuple[int, int]) -> np.ndarray:
    """Fixed full-resolution ``(x, y)`` → a grid of ``grid_shape`` nodes over an image of
    ``shape`` (pixel-area convention, as image pyramids)."""
    sy, sx = grid_shape[0] / shape[0], grid_shape[1] / shape[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def _nodes(to_grid: np.ndarray, grid_shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.mgrid[: grid_shape[0], : grid_shape[1]].astype(np.float64)
    return apply_matrix(np.linalg.inv(to_grid), np.stack([cols.ravel(), rows.ravel()], 1))


def compose(first: Transform, second: Transform) -> Transform:
    """The transform ``p ↦ second(first(p))``: ``first`` maps the reference to image *a*,
    ``second`` maps *a* to image *b*; the result maps the reference to *b* directly.

    The global parts multiply (exact when neither has a displacement). The rest is a
    displacement field on the reference's grid (``first``'s working grid, or one as fine as
    ``second``'s when ``first`` is purely global), sampled exactly at its nodes:
    ``u(p) = A⁻¹ second(first(p)) − p``; so a chain of registrations is applied once, from
    the original pixels of *b*. When either has a fine component, the result has one too, on
    a grid as fine as the finer of theirs: what the coarse field leaves at its nodes.
    """
    affine = second.affine @ first.affine
    if not first.has_displacement and not second.has_displacement:
        return Transform.from_affine(affine, first.fixed_shape, second.moving_shape)
    if not second.has_displacement:
        # B A (p + u + r): the fields stay as they are, exactly (an associated image's scale)
        return Transform(affine, first.displacement, first.fixed_full_to_working,
                         tuple(first.fixed_shape), tuple(second.moving_shape), first.fine,
                         first.fixed_full_to_fine)  # fmt: skip
    inverse = np.linalg.inv(affine)
    if first.has_coarse or not second.has_coarse:
        to_grid = np.asarray(first.fixed_full_to_working, np.float64)
        grid_shape = first.displacement.shape[1:]
    else:
        factor = float(second.fixed_full_to_working[0, 0])
        grid_shape = tuple(max(2, int(round(n * factor))) for n in first.fixed_shape)
        to_grid = _grid_matrix(first.fixed_shape, grid_shape)

    def total(nodes):
        return apply_matrix(inverse, second.fixed_to_moving(first.fixed_to_moving(nodes))) - nodes

    nodes = _nodes(to_grid, grid_shape)
    displacement = total(nodes).T.reshape(2, *grid_shape).astype(np.float32)
    result = Transform(affine, displacement, to_grid, tuple(first.fixed_shape),
                       tuple(second.moving_shape))  # fmt: skip
    if not (first.has_fine or second.has_fine):
        return result
    if first.has_fine:
        to_fine, fine_shape = np.asarray(first.fixed_full_to_fine), first.fine.shape[1:]
    else:
        factor = float(second.fixed_full_to_fine[0, 0])
        fine_shape = tuple(max(2, int(round(n * factor))) for n in first.fixed_shape)
        to_fine = _grid_matrix(first.fixed_shape, fine_shape)
    nodes = _nodes(to_fine, fine_shape)
    fine = total(nodes) - result.displacement_at(nodes)
    return Transform(affine, displacement, to_grid, tuple(first.fixed_shape),
                     tuple(second.moving_shape), fine.T.reshape(2, *fine_shape).astype(np.float32),
                     to_fine)  # fmt: skip
