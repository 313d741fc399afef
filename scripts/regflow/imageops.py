"""Image operations every stage uses: Gaussian smoothing, linear resizing (anti-aliased),
local contrast normalisation. Fast (OpenCV's separable filters, numpy's matrix products)
and equal to scipy's / scikit-image's results to float32 rounding, which the tests check."""

from __future__ import annotations

import numpy as np


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 2-D image, edges mirrored (scipy's ``reflect``), float32.

    OpenCV's separable filter: within 1e-6 of ``scipy.ndimage.gaussian_filter`` and 1.5–7×
    faster (the large windows of the local normalisations dominate several stages).
    """
    import cv2

    image = np.ascontiguousarray(image, np.float32)
    if image.ndim != 2 or sigma <= 0:
        from scipy import ndimage as ndi  # n-D images only: the 2-D stages skip scipy

        return ndi.gaussian_filter(image, sigma)
    return cv2.GaussianBlur(image, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)


def _mirrored_taps(size_out: int, size_in: int) -> tuple[np.ndarray, ...]:
    """For every pixel-centre output position ``(i + 0.5)·in/out − 0.5``: its two input taps
    and the weight of the second (edges mirrored), and whether it falls outside the input."""
    positions = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    last = size_in - 1
    mirrored = np.abs(positions)
    mirrored = np.where(mirrored > last, 2 * last - mirrored, mirrored)
    low = np.clip(np.floor(mirrored).astype(np.intp), 0, last)
    high = np.minimum(low + 1, last)
    return low, high, (mirrored - low).astype(np.float32), (positions < 0) | (positions > last)


def _linear_along(image: np.ndarray, axis: int, low, high, weight) -> np.ndarray:
    """Linear interpolation of ``image`` along ``axis`` between taps ``low`` and ``high``."""
    shape = [1, 1]
    shape[axis] = -1
    weight = weight.reshape(shape)
    return np.take(image, low, axis) * (1 - weight) + np.take(image, high, axis) * weight


def resize_linear(
    image: np.ndarray, shape: tuple[int, int], anti_aliasing: bool = False
) -> np.ndarray:
    """A 2-D image resized by bilinear interpolation on pixel centres, float32: the numbers of
    ``skimage.transform.resize(image, shape, order=1, mode="reflect", preserve_range=True,
    anti_aliasing=anti_aliasing)`` (to float32 rounding) by OpenCV, 5–10× faster and without
    importing scipy.

    Anti-aliasing is skimage's: a Gaussian of σ = (factor − 1) / 2 per axis, edges mirrored.
    OpenCV replicates the edge where upsampling reaches past the outer pixel centres; those
    few rows and columns are recomputed mirrored, as skimage does.
    """
    import cv2

    image = np.ascontiguousarray(image, np.float32)
    height, width = int(shape[0]), int(shape[1])
    if image.shape == (height, width):
        return image.copy()
    if anti_aliasing:
        sigma_y, sigma_x = np.maximum(0.0, (np.divide(image.shape, (height, width)) - 1) / 2)
        if sigma_y > 0 or sigma_x > 0:
            # scipy's kernel radius (truncate 4); a 1-tap kernel leaves an axis unfiltered
            ksize = tuple(2 * int(4 * s + 0.5) + 1 if s > 0 else 1 for s in (sigma_x, sigma_y))
            image = cv2.GaussianBlur(image, ksize, sigmaX=float(sigma_x or sigma_y),
                                     sigmaY=float(sigma_y or sigma_x),
                                     borderType=cv2.BORDER_REFLECT_101)  # fmt: skip
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    rows = _mirrored_taps(height, image.shape[0])
    cols = _mirrored_taps(width, image.shape[1])
    if rows[3].any() and image.shape[0] > 1:
        edge = rows[3]
        out[edge] = _linear_along(_linear_along(image, 0, *(t[edge] for t in rows[:3])), 1,
                                  *cols[:3])  # fmt: skip
    if cols[3].any() and image.shape[1] > 1:
        edge = cols[3]
        out[:, edge] = _linear_along(_linear_along(image, 1, *(t[edge] for t in cols[:3])), 0,
                                     *rows[:3])  # fmt: skip
    return out


def local_normalise(image: np.ndarray, sigma: float) -> np.ndarray:
    """Subtract the local mean and divide by the local standard deviation (Gaussian window).

    Two stains, or a stain and a fluorophore, relate only locally and roughly linearly: a
    dense H&E lesion may be a light region of the IHC section. NCC of locally normalised
    images (≈ local NCC) compares structure, not regional density, which would otherwise pull
    a registration toward a wrong scale. The floor (5 % of the largest local deviation) keeps
    flat background from being amplified into noise.
    """
    image = image.astype(np.float32)
    mean = gaussian(image, sigma)
    centred = image - mean
    std = np.sqrt(np.clip(gaussian(centred * centred, sigma), 0.0, None))
    return centred / (std + 0.05 * float(std.max()) + 1e-6)
