"""Similarity measures of two images (NCC, NMI) and landmark errors; the image operations
the stages share are in :mod:`regflow.imageops`."""

from __future__ import annotations

import numpy as np


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation (Pearson) of two images over a mask.

    Returns 0 when either image is constant on the mask (no information), so that a
    blank region never looks like a good match.
    """
    if mask is not None:
        a, b = a[mask], b[mask]
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator <= 1e-12:
        return 0.0
    return float((a * b).sum() / denominator)


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value between the minimum and the maximum (the maximum in the
    last bin; a constant in the middle one, as numpy's histogram puts it)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.full(values.shape, bins // 2, np.intp)
    index = ((values - low) * (bins / (high - low))).astype(np.intp)
    return np.minimum(index, bins - 1, out=index)


def _joint_histogram(a: np.ndarray, b: np.ndarray, bins: int) -> np.ndarray:
    """``numpy.histogram2d(a, b, bins)`` counts by arithmetic binning and one ``bincount``
    (numpy's binary search per value costs 4× as much)."""
    flat = _bin_index(a, bins) * bins + _bin_index(b, bins)
    return np.bincount(flat, minlength=bins * bins).reshape(bins, bins).astype(np.float64)


def nmi(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 32) -> float:
    """Normalised mutual information ``(H(A) + H(B)) / H(A, B)``, in [1, 2].

    1 means independent images, 2 identical up to a one-to-one intensity mapping; unlike
    NCC it does not assume a linear relation between the modalities.
    """
    if mask is not None:
        a, b = a[mask], b[mask]
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return 1.0
    joint = _joint_histogram(a, b, bins)
    joint /= joint.sum()

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    h_joint = entropy(joint)
    if h_joint <= 0:
        return 1.0
    return (entropy(joint.sum(axis=0)) + entropy(joint.sum(axis=1))) / h_joint


def target_registration_error(points_xy: np.ndarray, reference_xy: np.ndarray) -> np.ndarray:
    """Euclidean distance per landmark (NaN where a point could not be mapped).

    Parameters
    ----------
    points_xy, reference_xy : ndarray, shape (n, 2)
        Corresponding points; the first ``min(n)`` rows are paired (ANHIR rule).
    """
    n = min(len(points_xy), len(reference_xy))
    diff = np.asarray(points_xy[:n], np.float64) - np.asarray(reference_xy[:n], np.float64)
    return np.linalg.norm(diff, axis=1)


def tre_summary(tre: np.ndarray, diagonal: float) -> dict[str, float | None]:
    """Median, mean and max TRE (px) and rTRE (TRE / image diagonal) over finite values."""
    finite = tre[np.isfinite(tre)]
    keys = ("tre_median", "tre_mean", "tre_max", "rtre_median", "rtre_mean", "rtre_max")
    if finite.size == 0:
        return dict.fromkeys(keys)
    values = [float(np.median(finite)), float(finite.mean()), float(finite.max())]
    return dict(zip(keys, values + [v / diagonal for v in values], strict=True)) | {
        "n_landmarks": int(tre.size),
        "n_unmapped": int(tre.size - finite.size),
    }
