"""Tissue integrity across rounds: which cells of the reference are still there in a round.

After registration, a round's nuclear channel is compared with the reference's nuclear
channel *per cell* (a label image of the reference's cells or nuclei) or, without one, per
window of a few cells on a regular grid: a surviving cell correlates (Pearson ≈ 0.9+), a lost
one does not, and its intensity drops.

Everything is computed region by region (tiles of the reference grid), with per-cell sums
accumulated by label (``np.unique`` + ``np.bincount`` per tile), so a whole slide never
needs a full-resolution plane in memory; the final per-cell statistics follow from the sums.

Groundwork for issue 28: the library functions, tested; the workflow rule, sheet columns,
outputs and QC views are not wired yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pearson correlation and relative intensity below which a cell counts as lost (documented
# defaults of the future ``integrity`` config section).
MIN_CORR = 0.5
MIN_RATIO = 0.5


class CellSums:
    """Per-label sums of two channels over any number of regions.

    For every label: pixel count, Σx, Σy, Σx², Σy², Σxy (x = reference, y = round) and the
    sums of the pixel rows and columns (centroid).
    """

    FIELDS = ("n", "x", "y", "xx", "yy", "xy", "row", "col")

    def __init__(self):
        self._sums: dict[int, np.ndarray] = {}
        self.labels = np.zeros(0, np.int64)
        self.values = np.zeros((len(self.FIELDS), 0))

    def add(self, labels: np.ndarray, reference: np.ndarray, moving: np.ndarray,
            origin: tuple[int, int] = (0, 0)) -> None:  # fmt: skip
        """Accumulate one region: ``labels`` (integers, 0 = background), the two channels
        on the same pixels, and the region's ``(row, col)`` origin in the reference grid."""
        inside = labels > 0
        if not inside.any():
            return
        rows, cols = np.nonzero(inside)
        found, index = np.unique(labels[inside], return_inverse=True)
        x = reference[inside].astype(np.float64)
        y = moving[inside].astype(np.float64)
        weights = (np.ones_like(x), x, y, x * x, y * y, x * y, rows + float(origin[0]),
                   cols + float(origin[1]))  # fmt: skip
        block = np.stack([np.bincount(index, w, minlength=len(found)) for w in weights])
        self._merge(found.astype(np.int64), block)

    def _merge(self, found: np.ndarray, block: np.ndarray) -> None:
        union = np.union1d(self.labels, found)
        values = np.zeros((len(self.FIELDS), len(union)))
        values[:, np.searchsorted(union, self.labels)] += self.values
        values[:, np.searchsorted(union, found)] += block
        self.labels, self.values = union, values


@dataclass
class CellIntegrity:
    """Per cell of the reference: centroid, correlation, relative intensity and the decision.

    ``intensity_ratio`` is the round's mean over the reference's mean in the cell, divided by
    the median of that ratio over all cells (a round that is dimmer overall loses nothing).
    """

    cell: np.ndarray
    x: np.ndarray
    y: np.ndarray
    corr: np.ndarray
    intensity_ratio: np.ndarray
    lost: np.ndarray

    @property
    def lost_fraction(self) -> float:
        return float(self.lost.mean()) if self.lost.size else 0.0


def pearson(n, sx, sy, sxx, syy, sxy) -> np.ndarray:
    """Pearson correlation from sums (NaN where either channel is constant)."""
    covariance = n * sxy - sx * sy
    spread = (n * sxx - sx * sx) * (n * syy - sy * sy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(spread > 0, covariance / np.sqrt(np.maximum(spread, 1e-300)), np.nan)


def cell_integrity(
    sums: CellSums, min_corr: float = MIN_CORR, min_ratio: float = MIN_RATIO
) -> CellIntegrity:
    """The per-cell table from accumulated sums. A cell is lost when its correlation is below
    ``min_corr`` *and* its relative intensity below ``min_ratio`` (a shifted or deformed cell
    keeps its intensity; a detached one loses both), or when its intensity is gone whatever
    the correlation of what is left (below ``min_ratio / 2``)."""
    n, sx, sy, sxx, syy, sxy, srow, scol = sums.values
    corr = pearson(n, sx, sy, sxx, syy, sxy)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = np.where(sx > 0, sy / sx, np.nan)
    typical = float(np.nanmedian(raw)) if np.isfinite(raw).any() else 1.0
    ratio = raw / typical if typical > 0 else raw
    weak = ~(np.nan_to_num(corr, nan=-1.0) >= min_corr)
    dim = ~(np.nan_to_num(ratio, nan=0.0) >= min_ratio)
    gone = ~(np.nan_to_num(ratio, nan=0.0) >= min_ratio / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        x, y = scol / n, srow / n
    return CellIntegrity(sums.labels, x, y, corr, ratio, (weak & dim) | gone)


def window_statistics(
    reference: np.ndarray, moving: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-overlapping ``window``-px square of a region: the Pearson correlation of the
    two channels and each channel's standard deviation (its nuclear contrast)."""
    height, width = reference.shape
    h, w = height // window, width // window
    x, y = (a[: h * window, : w * window].astype(np.float64).reshape(h, window, w, window)
            for a in (reference, moving))  # fmt: skip
    n = float(window * window)
    sx, sy = x.sum((1, 3)), y.sum((1, 3))
    sxx, syy = (x * x).sum((1, 3)), (y * y).sum((1, 3))
    corr = pearson(n, sx, sy, sxx, syy, (x * y).sum((1, 3)))
    spread = [np.sqrt(np.maximum(q / n - (s / n) ** 2, 0.0)) for s, q in ((sx, sxx), (sy, syy))]
    return corr, spread[0], spread[1]


def window_correlation(reference: np.ndarray, moving: np.ndarray, window: int) -> np.ndarray:
    """Pearson correlation of the two channels in non-overlapping ``window``-px squares."""
    return window_statistics(reference, moving, window)[0]


def integrity_from_files(
    reference_path: str,
    warped_path: str,
    reference_channel: int,
    warped_channel: int,
    cells_path: str | None,
    tissue: tuple[np.ndarray, np.ndarray],
    window: int,
    tile: int = 1024,
    min_corr: float = MIN_CORR,
    min_ratio: float = MIN_RATIO,
    covered=None,
) -> tuple[dict, CellIntegrity | None, np.ndarray]:
    """Integrity of a registered round against the reference, region by region.

    Parameters
    ----------
    reference_path, warped_path : str
        The reference image and the round warped onto its grid (the workflow's output).
    reference_channel, warped_channel : int
        Their nuclear (registration) channels.
    cells_path : str or None
        The reference's label image (its size), or None: the grid map alone.
    tissue : (mask, full_to_working)
        The reference's tissue mask at working resolution: windows off the tissue are NaN.
    window : int
        Side (px) of the map's windows (a few cells).
    covered : callable, optional
        ``covered(points_xy) → bool`` (reference pixels): where the round has pixels at all.
        Cells and windows outside it are not judged (never lost; NaN on the map): a round
        imaged over a smaller area did not lose what it never showed.

    Returns
    -------
    report : dict
        ``tissue_lost_fraction`` (of the cells, else of the tissue windows), counts.
    cells : CellIntegrity or None
    grid : ndarray, float32
        The windowed correlation map (NaN off the tissue).
    """
    from .formats import RegionReader

    tile = max(window, tile // window * window)
    mask, full_to_working = tissue
    sums = CellSums() if cells_path else None
    with RegionReader(reference_path) as reference, RegionReader(warped_path) as warped:
        height, width = reference.shape[1:]
        grid = np.full((height // window, width // window), np.nan, np.float32)
        contrast = np.full((2, *grid.shape), np.nan, np.float32)
        labels_reader = RegionReader(cells_path) if cells_path else None
        try:
            for r0 in range(0, height, tile):
                for c0 in range(0, width, tile):
                    rows, cols = slice(r0, min(height, r0 + tile)), slice(c0, min(width, c0 + tile))
                    x = reference.read(rows, cols, [reference_channel])[0].astype(np.float32)
                    y = warped.read(rows, cols, [warped_channel])[0].astype(np.float32)
                    if sums is not None:
                        sums.add(labels_reader.read(rows, cols)[0], x, y, (r0, c0))
                    block, spread_x, spread_y = window_statistics(x, y, window)
                    gr, gc = r0 // window, c0 // window
                    h = min(block.shape[0], grid.shape[0] - gr)
                    w = min(block.shape[1], grid.shape[1] - gc)
                    grid[gr : gr + h, gc : gc + w] = block[:h, :w]
                    contrast[0, gr : gr + h, gc : gc + w] = spread_x[:h, :w]
                    contrast[1, gr : gr + h, gc : gc + w] = spread_y[:h, :w]
        finally:
            if labels_reader is not None:
                labels_reader.close()
    # windows whose centre is off the tissue carry no information
    centres_r = (np.arange(grid.shape[0]) + 0.5) * window
    centres_c = (np.arange(grid.shape[1]) + 0.5) * window
    wr = np.clip((centres_r * full_to_working[1, 1] + full_to_working[1, 2]).astype(int), 0,
                 mask.shape[0] - 1)  # fmt: skip
    wc = np.clip((centres_c * full_to_working[0, 0] + full_to_working[0, 2]).astype(int), 0,
                 mask.shape[1] - 1)  # fmt: skip
    grid[~mask[wr[:, None], wc[None, :]]] = np.nan
    if covered is not None:
        cc, rr = np.meshgrid(centres_c, centres_r)
        inside = covered(np.stack([cc.ravel(), rr.ravel()], 1)).reshape(grid.shape)
        grid[~inside] = np.nan
    # a window is judged where the reference shows nuclei (its contrast at least a quarter of
    # the tissue's median): lumina and gaps between cells hold nothing to lose
    tissue_contrast = contrast[0][np.isfinite(grid)]
    typical = float(np.median(tissue_contrast)) if tissue_contrast.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        grid[~(contrast[0] >= 0.25 * typical)] = np.nan
        raw = contrast[1] / contrast[0]
    judged = np.isfinite(grid)
    median_ratio = float(np.median(raw[judged])) if judged.any() else 1.0
    ratio = raw / median_ratio if median_ratio > 0 else raw
    lost_windows = judged & (((grid < min_corr) & (ratio < min_ratio)) | (ratio < min_ratio / 2))
    table = cell_integrity(sums, min_corr, min_ratio) if sums is not None else None
    if table is not None and covered is not None and len(table.cell):
        judged = covered(np.stack([table.x, table.y], 1))
        table.lost &= judged
        table.corr = np.where(judged, table.corr, np.nan)
    report = {
        "window_px": window,
        "tissue_windows": int(judged.sum()),
        "lost_windows": int(lost_windows.sum()),
        "cells": int(len(table.cell)) if table is not None else None,
        "lost_cells": int(table.lost.sum()) if table is not None else None,
    }
    if table is not None and len(table.cell):
        report["tissue_lost_fraction"] = table.lost_fraction
        report["measured_on"] = "cells"
    else:
        share = report["lost_windows"] / report["tissue_windows"] if judged.any() else 0.0
        report["tissue_lost_fraction"] = float(share)
        report["measured_on"] = "grid"
    return report, table, grid


def integrity_figure(
    path: str,
    sample: str,
    report: dict,
    grid: np.ndarray,
    cells: CellIntegrity | None,
    reference_view: np.ndarray,
    view_scale: float,
) -> None:
    """``integrity.png``: the correlation map, and the reference's nuclear channel with the
    lost cells marked (red; kept ones green), with the lost share in the title.

    ``reference_view`` is the reference at a reduced level, ``view_scale`` its pixels per
    full-resolution pixel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .qc import _save_figure

    fig, axes = plt.subplots(1, 2, figsize=(13, 6.4), dpi=90, layout="constrained")
    lost = report.get("tissue_lost_fraction") or 0.0
    fig.suptitle(f"{sample} — tissue lost: {100 * lost:.1f} % of the reference's "
                 f"{'cells' if report.get('measured_on') == 'cells' else 'tissue windows'}",
                 fontsize=14)  # fmt: skip
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#444444")
    image = axes[0].imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1,
                           interpolation="nearest")  # fmt: skip
    fig.colorbar(image, ax=axes[0], shrink=0.7, label="correlation with the reference")
    axes[0].set_title(f"correlation per {report.get('window_px')} px window (grey: not judged)")
    low, high = np.percentile(reference_view, [1, 99.5])
    axes[1].imshow(np.clip((reference_view - low) / max(high - low, 1e-6), 0, 1), cmap="gray")
    if cells is not None and len(cells.cell):
        x, y = cells.x * view_scale, cells.y * view_scale
        kept = ~cells.lost & np.isfinite(cells.corr)
        step = max(1, int(kept.sum() // 4000))  # kept cells thinned for a readable figure
        axes[1].scatter(x[kept][::step], y[kept][::step], s=2, color="#40c040", linewidths=0)
        axes[1].scatter(x[cells.lost], y[cells.lost], s=6, color="#ff3030", linewidths=0)
        axes[1].set_title(f"reference: {int(cells.lost.sum())} of {len(cells.cell)} cells lost "
                          "(red), kept (green)")  # fmt: skip
    else:
        axes[1].set_title("reference (no label image: the map alone)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _save_figure(fig, path)
