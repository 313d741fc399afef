"""Global alignment: Fourier–Mellin and coarse-search candidates, verified by NCC, refined.

All functions work on preprocessed, signal-bright images of the *same pixel size* (working
resolution) and express transforms as 3×3 homogeneous matrices ``fixed_to_moving`` that map a
fixed-image ``(x, y)`` to the moving-image ``(x, y)`` it corresponds to.

The chain, in :func:`register_rigid`:

1. candidates for rotation and scale from the log-polar transform of the magnitude spectra
   (Fourier–Mellin; rotation is known only modulo 180°, so both are tried), plus a coarse
   rotation × scale grid (and mirrored ones) so that a missed spectrum peak never decides;
2. for each, translation from the top peaks of phase correlation on zero-padded images;
3. every (rotation, scale, translation) is scored coarsely (NCC of intensities and of the
   tissue masks); the best few distinct poses of each orientation are verified by a
   similarity refinement one level finer and ranked on structure (locally normalised NCC);
4. when that leaves the pose ambiguous, SIFT features matched by RANSAC add candidates,
   verified the same way;
5. the best is refined by maximising local NCC (Powell) as a similarity or affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .imageops import gaussian, local_normalise
from .metrics import ncc
from .transform import inside_image

# scipy and scikit-image (~0.8 s to import) are imported by the functions that use them: the
# flow job imports this module only for warp_fast and overlap_mask.


@dataclass
class RigidResult:
    """Outcome of :func:`register_rigid` (working-resolution coordinates).

    Attributes
    ----------
    fixed_to_moving : ndarray, shape (3, 3)
    ncc : float
        NCC on the tissue masks after alignment (at the refinement resolution).
    ncc_initial : float
        NCC for the identity (images overlaid as they are), likewise.
    rotation_deg, scale : float
        Of the linear part (scale is the geometric mean of the axes for an affine).
    candidates : list of dict
        Every verified candidate: source, angle, scale, NCC (for QC and debugging).
    """

    fixed_to_moving: np.ndarray
    ncc: float
    ncc_initial: float
    rotation_deg: float
    scale: float
    mirrored: bool = False
    candidates: list[dict] = field(default_factory=list)


def warp_fast(
    moving: np.ndarray,
    fixed_to_moving: np.ndarray,
    fixed_shape: tuple[int, int],
    mode: str = "constant",
) -> np.ndarray:
    """Sample ``moving`` on the fixed grid through ``fixed_to_moving`` (xy matrix): bilinear,
    0 outside (or ``mode="nearest"``: edges repeated), float32, by OpenCV (positions resolved
    to 1/32 px, far below what a score or an optical flow can tell apart)."""
    import cv2

    border = {"constant": cv2.BORDER_CONSTANT, "nearest": cv2.BORDER_REPLICATE}[mode]
    return cv2.warpAffine(
        np.ascontiguousarray(moving, np.float32),
        np.ascontiguousarray(fixed_to_moving[:2], np.float64),
        (int(fixed_shape[1]), int(fixed_shape[0])),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=0.0,
    )


def overlap_mask(
    moving_shape: tuple[int, int], fixed_to_moving: np.ndarray, fixed_shape: tuple[int, int]
) -> np.ndarray:
    """Fixed pixels whose moving position lies inside the moving image (pixel edges included)."""
    rows, cols = np.mgrid[: fixed_shape[0], : fixed_shape[1]]
    x = fixed_to_moving[0, 0] * cols + fixed_to_moving[0, 1] * rows + fixed_to_moving[0, 2]
    y = fixed_to_moving[1, 0] * cols + fixed_to_moving[1, 1] * rows + fixed_to_moving[1, 2]
    return inside_image(x, y, moving_shape)


def similarity_matrix(
    angle_deg: float,
    scale: float,
    translation: tuple[float, float],
    fixed_centre: np.ndarray,
    moving_centre: np.ndarray,
    mirror: bool = False,
) -> np.ndarray:
    """``fixed_to_moving`` = centre_m + t + s·R(θ)·(p − centre_f), optionally mirrored in x."""
    theta = np.deg2rad(angle_deg)
    linear = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    if mirror:
        linear = linear @ np.diag([-1.0, 1.0])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = moving_centre + np.asarray(translation) - linear @ fixed_centre
    return matrix


def _centre(shape: tuple[int, int]) -> np.ndarray:
    return np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])


def _comparison_region(
    fixed_mask: np.ndarray,
    moving_mask: np.ndarray,
    fixed_to_moving: np.ndarray,
    min_overlap: float = 0.25,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Where two images are compared: tissue of either, inside the moving image's footprint.

    Comparing outside the footprint would score the footprint's placement (moving pixels are
    0 there) rather than the match, which misleads whenever one image shows only part of the
    other. Returns ``None`` as the region when the footprint covers less than ``min_overlap``
    of the smaller image: too little to judge, and a tiny overlap can correlate by chance.

    Returns
    -------
    region : ndarray of bool or None
    warped_mask : ndarray, float
        The moving mask resampled on the fixed grid.
    """
    warped_mask = warp_fast(moving_mask.astype(np.float32), fixed_to_moving, fixed_mask.shape)
    footprint = overlap_mask(moving_mask.shape, fixed_to_moving, fixed_mask.shape)
    moving_area = moving_mask.size / max(abs(np.linalg.det(fixed_to_moving[:2, :2])), 1e-9)
    if footprint.sum() < min_overlap * min(fixed_mask.size, moving_area):
        return None, warped_mask
    return (fixed_mask | (warped_mask > 0.5)) & footprint, warped_mask


def _masked_ncc(
    fixed: np.ndarray,
    moving: np.ndarray,
    fixed_mask: np.ndarray,
    moving_mask: np.ndarray,
    fixed_to_moving: np.ndarray,
) -> float:
    """NCC on the union of both tissue masks within the overlap, in the fixed frame."""
    region, _ = _comparison_region(fixed_mask, moving_mask, fixed_to_moving)
    if region is None:
        return -1.0
    return ncc(fixed, warp_fast(moving, fixed_to_moving, fixed.shape), region)


def _spectrum_log_polar(image: np.ndarray, size: int, radius: int, n_angles: int) -> np.ndarray:
    """High-pass-filtered log-polar magnitude spectrum of an image padded to ``size``."""
    from scipy import fft

    # Hann window (numpy's: skimage.filters.window would import scipy.signal, ~0.5 s)
    windowed = image * np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    padded = np.zeros((size, size), np.float32)
    padded[: image.shape[0], : image.shape[1]] = windowed
    magnitude = np.abs(fft.fftshift(fft.fft2(padded)))
    # Reddy & Chatterji high-pass: suppress the low frequencies that dominate the spectrum.
    freq = fft.fftshift(fft.fftfreq(size))
    cosine = np.outer(np.cos(np.pi * freq), np.cos(np.pi * freq))
    magnitude *= (1.0 - cosine) * (2.0 - cosine)
    from skimage.transform import warp_polar

    return warp_polar(
        magnitude, radius=radius, output_shape=(n_angles, radius), scaling="log", order=1
    )


def fourier_mellin(
    fixed: np.ndarray, moving: np.ndarray, max_scale_change: float = 0.25
) -> tuple[float, float]:
    """Rotation (degrees, modulo 180) and scale of ``fixed_to_moving`` from the spectra.

    Parameters
    ----------
    fixed, moving : ndarray, shape (h, w)
        Same pixel size; shapes may differ.
    max_scale_change : float
        Estimates beyond ``1 ± max_scale_change`` are treated as unreliable (scale 1).

    Returns
    -------
    angle_deg : float in [0, 180)
    scale : float
    """
    from scipy import fft

    size = fft.next_fast_len(max(*fixed.shape, *moving.shape))
    radius = size // 2
    n_angles = 720
    polar_fixed = _spectrum_log_polar(fixed, size, radius, n_angles)
    polar_moving = _spectrum_log_polar(moving, size, radius, n_angles)
    # The spectrum is point-symmetric: use half the circle, avoid the noisy high radii.
    half = n_angles // 2
    keep = slice(radius // 8, radius * 3 // 4)
    shift = _phase_peaks(polar_fixed[:half, keep], polar_moving[:half, keep], n_peaks=1)[0]
    # A rotation by θ of the image rotates its spectrum by θ; a scale s shrinks it by s.
    angle = (-shift[0] * 360.0 / n_angles) % 180.0
    klog = radius / np.log(radius)
    scale = float(np.exp(shift[1] / klog))
    if not (1 - max_scale_change) <= scale <= 1 / (1 - max_scale_change):
        scale = 1.0
    return float(angle), scale


def _phase_peaks(
    reference: np.ndarray,
    moving: np.ndarray,
    n_peaks: int = 5,
    reference_spectrum: np.ndarray | None = None,
) -> np.ndarray:
    """Shifts ``s`` with ``reference(p) ≈ moving(p − s)``: the strongest phase-correlation peaks.

    Inputs of equal shape (``reference_spectrum``: its ``rfft2``, when already known); the
    correlation surface is smoothed by a Gaussian of 1 px (circularly, in the spectrum);
    shifts are wrapped to the signed range and refined to sub-pixel precision by a parabola
    through each peak's neighbours.

    Returns
    -------
    ndarray, shape (k, 2)
        ``(row, col)`` shifts, strongest first.
    """
    from scipy import fft

    if reference_spectrum is None:
        reference_spectrum = fft.rfft2(reference)
    spectrum = reference_spectrum * np.conj(fft.rfft2(moving))
    spectrum /= np.abs(spectrum) + 1e-12
    frequency_y = fft.fftfreq(reference.shape[0])[:, None]
    frequency_x = fft.rfftfreq(reference.shape[1])[None, :]
    spectrum *= np.exp(-2.0 * np.pi**2 * (frequency_y**2 + frequency_x**2))  # σ = 1 px
    surface = fft.irfft2(spectrum, s=reference.shape)
    # the strongest maxima at least 3 px apart (circularly): take the top, blank around it
    shape = np.array(surface.shape)
    remaining = surface.copy()
    peaks = []
    for _ in range(n_peaks):
        peak = np.array(np.unravel_index(np.argmax(remaining), shape))
        if peaks and not np.isfinite(remaining[tuple(peak)]):
            break
        peaks.append(peak)
        rows = np.arange(peak[0] - 3, peak[0] + 4) % shape[0]
        cols = np.arange(peak[1] - 3, peak[1] + 4) % shape[1]
        remaining[np.ix_(rows, cols)] = -np.inf
    peaks = [np.where(p > shape // 2, p - shape, p) for p in peaks]  # signed shifts
    refined = []
    for peak in peaks:
        sub = peak.astype(float)
        for axis in range(2):
            index = list(peak)
            values = []
            for offset in (-1, 0, 1):
                index[axis] = peak[axis] + offset
                values.append(surface[tuple(np.mod(index, shape))])
            denominator = values[0] - 2 * values[1] + values[2]
            if denominator < 0:
                sub[axis] += 0.5 * (values[0] - values[2]) / denominator
        refined.append(sub)
    return np.array(refined)


class _Canvas:
    """The fixed image centred on a canvas twice its size (and the canvas's spectrum, reused
    for every candidate), so that shifts of up to half the image are unambiguous."""

    def __init__(self, fixed: np.ndarray):
        from scipy import fft

        height, width = fixed.shape
        self.pad = (height // 2, width // 2)
        self.image = np.zeros((height + 2 * self.pad[0], width + 2 * self.pad[1]), np.float32)
        self.image[self.pad[0] : self.pad[0] + height, self.pad[1] : self.pad[1] + width] = fixed
        self.spectrum = fft.rfft2(self.image)


def _translation_candidates(
    canvas: _Canvas,
    moving: np.ndarray,
    base: np.ndarray,
    n_peaks: int,
) -> list[np.ndarray]:
    """Matrices ``base ∘ T(d)`` for the top phase-correlation translations ``d``; ``moving``
    is rendered through ``base`` on the fixed image's canvas."""
    to_canvas = np.eye(3)
    to_canvas[:2, 2] = [-canvas.pad[1], -canvas.pad[0]]  # canvas (x, y) → fixed (x, y)
    rendered = warp_fast(moving, base @ to_canvas, canvas.image.shape)
    matrices = []
    for shift in _phase_peaks(canvas.image, rendered, n_peaks, canvas.spectrum):
        offset = np.eye(3)
        offset[:2, 2] = [-shift[1], -shift[0]]  # fixed(p) ≈ rendered(p − s)
        matrices.append(base @ offset)
    return matrices


def _similarity_ransac(
    source: np.ndarray,
    target: np.ndarray,
    threshold: float,
    scale_range: tuple[float, float],
    trials: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Similarity ``target ≈ s·R·source + t`` from putative matches by RANSAC.

    Points are ``(n, 2)`` ``(x, y)``. Hypotheses come from random pairs of matches (two
    points fix a similarity exactly), only those with a scale in ``scale_range`` count; the
    one with most matches within ``threshold`` px is refitted on them by least squares.

    Returns
    -------
    matrix : ndarray (3, 3) or None
        ``source → target``; None with fewer than 3 matches or no plausible hypothesis.
    inliers : ndarray of bool, shape (n,)
    """
    n = len(source)
    inliers = np.zeros(n, bool)
    if n < 3:
        return None, inliers
    # complex numbers: a similarity is w = c·z + t with c = s·e^{iθ}
    z = source[:, 0] + 1j * source[:, 1]
    w = target[:, 0] + 1j * target[:, 1]
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, n, trials), rng.integers(0, n, trials)
    distinct = first != second
    first, second = first[distinct], second[distinct]
    with np.errstate(divide="ignore", invalid="ignore"):
        c = (w[second] - w[first]) / (z[second] - z[first])
        t = w[first] - c * z[first]
    plausible = np.isfinite(c) & (np.abs(c) >= scale_range[0]) & (np.abs(c) <= scale_range[1])
    if not plausible.any():
        return None, inliers
    c, t = c[plausible], t[plausible]
    counts = (np.abs(c[:, None] * z[None, :] + t[:, None] - w[None, :]) < threshold).sum(axis=1)
    best = int(np.argmax(counts))
    scale_rotation, shift = c[best], t[best]
    inliers = np.abs(scale_rotation * z + shift - w) < threshold
    # least squares on the inliers (centred: c = Σ w'·conj(z') / Σ |z'|²), kept when it is
    # plausible and keeps at least as many inliers
    zc, wc = z[inliers] - z[inliers].mean(), w[inliers] - w[inliers].mean()
    if np.sum(np.abs(zc) ** 2) > 0:
        fitted = np.sum(wc * np.conj(zc)) / np.sum(np.abs(zc) ** 2)
        fitted_shift = w[inliers].mean() - fitted * z[inliers].mean()
        refit = np.abs(fitted * z + fitted_shift - w) < threshold
        if scale_range[0] <= abs(fitted) <= scale_range[1] and refit.sum() >= inliers.sum():
            scale_rotation, shift, inliers = fitted, fitted_shift, refit
    matrix = np.array(
        [
            [scale_rotation.real, -scale_rotation.imag, shift.real],
            [scale_rotation.imag, scale_rotation.real, shift.imag],
            [0.0, 0.0, 1.0],
        ]
    )
    return matrix, inliers


def _keypoints(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints ``(n, 2)`` ``(x, y)`` and descriptors of an image (none if it has no
    structure)."""
    from skimage.feature import SIFT

    detector = SIFT(upsampling=1, n_octaves=4)
    try:
        detector.detect_and_extract(image)
    except (RuntimeError, ValueError):  # flat image: nothing to detect
        return np.zeros((0, 2)), np.zeros((0, 128), np.uint8)
    return detector.keypoints[:, ::-1].astype(np.float64), detector.descriptors


def feature_candidates(
    fixed: np.ndarray,
    moving: np.ndarray,
    mirrors: tuple[bool, ...] = (False, True),
    max_scale_change: float = 0.25,
    threshold: float | None = None,
    min_inliers: int = 4,
) -> list[dict]:
    """Global candidates from matched SIFT features (one per orientation at most).

    SIFT is invariant to rotation and scale, so the matches do not depend on the candidate
    grid; cross-stain images share few reliable features, so a hypothesis needs only
    ``min_inliers`` consistent matches: it is a candidate, verified on the images like the
    others, never accepted on the features alone. A mirrored orientation matches the moving
    image's mirror image (SIFT descriptors are not mirror-invariant).

    Returns
    -------
    list of dict
        ``matrix`` (fixed → moving, these images' pixels), ``mirror``, ``inliers``, ``matches``.
    """
    threshold = threshold if threshold is not None else 0.006 * max(*fixed.shape, *moving.shape)
    scale_range = (1.0 - max_scale_change, 1.0 / (1.0 - max_scale_change))
    fixed_xy, fixed_descriptors = _keypoints(fixed)
    out = []
    if len(fixed_xy) < min_inliers:
        return out
    from skimage.feature import match_descriptors

    width = moving.shape[1]
    for mirror in mirrors:
        moving_xy, moving_descriptors = _keypoints(moving[:, ::-1] if mirror else moving)
        if len(moving_xy) < min_inliers:
            continue
        matches = match_descriptors(
            fixed_descriptors, moving_descriptors, cross_check=True, max_ratio=0.9
        )
        matrix, inliers = _similarity_ransac(
            fixed_xy[matches[:, 0]], moving_xy[matches[:, 1]], threshold, scale_range
        )
        if matrix is None or inliers.sum() < min_inliers:
            continue
        if mirror:  # the matches live in the flipped image: x → width − 1 − x
            matrix = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0, 0, 1]]) @ matrix
        out.append(
            {
                "matrix": matrix,
                "mirror": mirror,
                "inliers": int(inliers.sum()),
                "matches": len(matches),
            }
        )
    return out


def _level_shape(shape: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """Shape of an image resized by ``factor`` (never enlarged)."""
    if factor >= 1.0:
        return tuple(shape)
    return tuple(max(8, int(round(n * factor))) for n in shape)


def _resize_to(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if image.shape == tuple(shape):
        return image.astype(np.float32)
    # scikit-image's resize, not the equal (to 1e-7) resize_linear: the final affine
    # refinement is sensitive at that level (BIRL lesions picks the other of two near-tied
    # optima, 0.0050 → 0.0057), a weakness of the refinement to fix before switching
    from skimage.transform import resize

    return resize(
        image.astype(np.float32), shape, order=1, anti_aliasing=True, preserve_range=True
    ).astype(np.float32)


def _scaling(factor: float) -> np.ndarray:
    """Pixel-centre resize matrix: ``x' = (x + 0.5)·factor − 0.5`` on both axes."""
    offset = 0.5 * factor - 0.5
    return np.array([[factor, 0.0, offset], [0.0, factor, offset], [0.0, 0.0, 1.0]])


def _decompose(matrix: np.ndarray) -> tuple[float, float, bool]:
    """Rotation (degrees), scale (geometric mean) and mirroring of a matrix's linear part."""
    linear = matrix[:2, :2]
    determinant = float(np.linalg.det(linear))
    mirrored = determinant < 0
    if mirrored:
        linear = linear @ np.diag([-1.0, 1.0])
    angle = float(np.degrees(np.arctan2(linear[1, 0] - linear[0, 1], linear[0, 0] + linear[1, 1])))
    return angle, float(np.sqrt(abs(determinant))), mirrored


def _parametrise(matrix: np.ndarray, model: str, centre: np.ndarray):
    """Parameter vector ↔ matrix maps for local refinement around ``matrix``.

    Parameters are increments applied about the fixed image centre: rotation (degrees),
    log-scale, translation (px) and, for an affine, log-aspect and shear.
    """

    def to_matrix(params: np.ndarray) -> np.ndarray:
        angle, log_scale, tx, ty = params[:4]
        theta = np.deg2rad(angle)
        linear = np.exp(log_scale) * np.array(
            [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
        )
        if model == "affine":
            aspect, shear = params[4:6]
            linear = linear @ np.array([[np.exp(aspect), shear], [0.0, np.exp(-aspect)]])
        if model == "rigid":
            linear /= np.exp(log_scale)
        increment = np.eye(3)
        increment[:2, :2] = linear
        increment[:2, 2] = centre - linear @ centre + np.array([tx, ty])
        return matrix @ increment

    n_params = {"rigid": 4, "similarity": 4, "affine": 6}[model]
    return to_matrix, np.zeros(n_params)


def refine(
    fixed: np.ndarray,
    moving: np.ndarray,
    region: np.ndarray,
    fixed_to_moving: np.ndarray,
    model: str = "similarity",
    max_evaluations: int = 400,
    max_samples: int = 10_000,
) -> np.ndarray:
    """Local maximisation of NCC on a fixed region from ``fixed_to_moving`` (Powell's method).

    ``fixed`` and ``moving`` are compared as given (the caller smooths and locally normalises
    them, see ``_Level.contrast``). The region is held fixed during the search so that the
    objective is smooth. Returns the refined ``fixed_to_moving``.
    """
    from scipy import ndimage as ndi
    from scipy import optimize

    to_matrix, start = _parametrise(fixed_to_moving, model, _centre(fixed.shape))
    # Parameter units of about one pixel of motion at the image edge.
    radius = max(fixed.shape) / 2.0
    units = np.array([np.degrees(1.0 / radius), 1.0 / radius, 1.0, 1.0, 1.0 / radius, 1.0 / radius])
    units = units[: start.size]
    if model == "rigid":
        units[1] = 0.0
    # Evaluate on at most `max_samples` region pixels (a regular, reproducible subset): the
    # cost of one evaluation then does not grow with the image size.
    rows, cols = np.nonzero(region)
    stride = max(1, rows.size // max_samples)
    rows, cols = rows[::stride], cols[::stride]
    points = np.stack([cols, rows, np.ones_like(rows)]).astype(np.float64)
    fixed_values = fixed[rows, cols]

    def cost(scaled: np.ndarray) -> float:
        moving_xy = to_matrix(scaled * units) @ points
        values = ndi.map_coordinates(
            moving, moving_xy[1::-1], order=1, mode="constant", cval=0.0, prefilter=False
        )
        return -ncc(fixed_values, values)

    result = optimize.minimize(
        cost,
        start,
        method="Powell",
        options={"xtol": 0.05, "ftol": 1e-6, "maxfev": max_evaluations},
    )
    return to_matrix(result.x * units)


def _union_region(
    fixed_mask: np.ndarray, moving_mask: np.ndarray, fixed_to_moving: np.ndarray
) -> np.ndarray:
    region, warped = _comparison_region(fixed_mask, moving_mask, fixed_to_moving)
    return fixed_mask | (warped > 0.5) if region is None else region


class _Level:
    """The image pair resized so that its longest side is about ``size`` px.

    Shapes always follow from the working images; the pixels may be resampled from a
    ``finer`` level (anti-aliased for the remaining ratio), which is cheaper.
    """

    def __init__(self, fixed, moving, fixed_mask, moving_mask, size: int, finer=None):
        self.factor = min(1.0, size / max(*fixed.shape, *moving.shape))
        fixed_shape = _level_shape(fixed.shape, self.factor)
        moving_shape = _level_shape(moving.shape, self.factor)
        if finer is not None and finer.factor >= self.factor:
            fixed, moving = finer.fixed, finer.moving
            fixed_mask, moving_mask = finer.fixed_mask, finer.moving_mask
        self.fixed = _resize_to(fixed, fixed_shape)
        self.moving = _resize_to(moving, moving_shape)
        self.fixed_mask = _resize_to(fixed_mask, fixed_shape) > 0.5
        self.moving_mask = _resize_to(moving_mask, moving_shape) > 0.5

    def contrast(self, fraction: float, smoothing: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """What the NCC refinements compare: the pair smoothed (``smoothing`` px) and locally
        normalised with a window of ``fraction`` × the longest side (not for 0)."""
        pair = [gaussian(im, smoothing) for im in (self.fixed, self.moving)]
        if fraction > 0:
            sigma = fraction * max(self.fixed.shape)
            pair = [local_normalise(im, sigma) for im in pair]
        return pair[0], pair[1]

    def score(self, matrix: np.ndarray) -> float:
        """Mean of intensity NCC (on the masks) and tissue-mask overlap NCC.

        The tissue outline is the same whatever the stain or modality, so it keeps candidate
        ranking sound where intensities correlate poorly (e.g. H&E against a DAB-dominated IHC).
        """
        region, warped_mask = _comparison_region(self.fixed_mask, self.moving_mask, matrix)
        if region is None:
            return -1.0
        warped = warp_fast(self.moving, matrix, self.fixed.shape)
        footprint = overlap_mask(self.moving.shape, matrix, self.fixed.shape)
        return 0.5 * (
            ncc(self.fixed, warped, region) + ncc(self.fixed_mask, warped_mask, footprint)
        )

    def from_working(self, matrix: np.ndarray) -> np.ndarray:
        """A working-resolution matrix expressed on this level's images."""
        scaling = _scaling(self.factor)
        return scaling @ matrix @ np.linalg.inv(scaling)

    def to_working(self, matrix: np.ndarray) -> np.ndarray:
        """This level's matrix expressed at working resolution."""
        scaling = _scaling(self.factor)
        return np.linalg.inv(scaling) @ matrix @ scaling


def _pose_corners(level, matrix: np.ndarray) -> np.ndarray:
    """Where a working-resolution matrix puts the fixed image's corners, in ``level`` px."""
    height, width = level.fixed.shape
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], float).T
    return (level.from_working(matrix) @ corners)[:2]


def _same_pose(level, first: np.ndarray, second: np.ndarray, tolerance: float = 0.05) -> bool:
    """Whether two matrices agree within ``tolerance`` × the image size at every corner."""
    limit = tolerance * max(level.fixed.shape)
    return bool(np.abs(_pose_corners(level, first) - _pose_corners(level, second)).max() < limit)


def _distinct_poses(candidates: list[dict], mirror: bool, n: int, level) -> list[dict]:
    """The ``n`` best-scoring candidates of one orientation that differ from each other
    (:func:`_same_pose`): nearby duplicates would converge to the same optimum."""
    chosen: list[dict] = []
    for candidate in sorted((c for c in candidates if c["mirror"] == mirror),
                            key=lambda c: -c["ncc_coarse"]):  # fmt: skip
        if len(chosen) == n:
            break
        if not any(_same_pose(level, candidate["matrix"], c["matrix"]) for c in chosen):
            chosen.append(candidate)
    return chosen


def _ambiguous(candidates: list[dict], level, clear_ratio: float) -> bool:
    """Whether the verified candidates fail to single out one pose: the best scores (on
    structure) less than ``clear_ratio`` × the best of the poses that differ from it, or
    not above 0."""
    verified = sorted((c for c in candidates if "verified" in c), key=lambda c: -c["structure"])
    if not verified or verified[0]["structure"] <= 0:
        return True
    best = verified[0]
    others = [c["structure"] for c in verified[1:]
              if not _same_pose(level, best["verified"], c["verified"])]  # fmt: skip
    return bool(others) and best["structure"] < clear_ratio * max(max(others), 0.0)


# Scale change trusted without both pixel sizes: × / ÷ 3 (as the QC's scale flag allows).
UNKNOWN_PIXEL_SIZE_SCALE_CHANGE = 2.0 / 3.0
# the same bound as a factor either way (3)
UNKNOWN_PIXEL_SIZE_FACTOR = 1.0 / (1.0 - UNKNOWN_PIXEL_SIZE_SCALE_CHANGE)


def trusted_scale_change(max_scale_change: float, pixel_sizes_known: bool) -> float:
    """The largest scale change the global search considers.

    With both images' pixel sizes known the working images share one pixel size, so only
    shrinkage and metadata errors change the scale: ``max_scale_change``. Without them two
    scans may legitimately differ by their magnifications (a 20× against a 40× export with
    no metadata is a scale of 2): × / ÷ 3, :data:`UNKNOWN_PIXEL_SIZE_SCALE_CHANGE`.
    """
    if pixel_sizes_known:
        return max_scale_change
    return max(max_scale_change, UNKNOWN_PIXEL_SIZE_SCALE_CHANGE)


def _look(level, contrast: tuple, matrix: np.ndarray, evaluations: int, samples: int):
    """A pose (working-resolution ``matrix``) refined as a similarity on ``level``'s
    ``contrast`` images, and its structure there (local NCC on the tissue): one verification.

    Returns
    -------
    matrix : ndarray
        The refined pose, in ``level``'s pixels.
    structure : float
    """
    level_fixed, level_moving = contrast
    start = level.from_working(matrix)
    region = _union_region(level.fixed_mask, level.moving_mask, start)
    refined = refine(level_fixed, level_moving, region, start, "similarity",
                     max_evaluations=evaluations, max_samples=samples)  # fmt: skip
    structure = _masked_ncc(level_fixed, level_moving, level.fixed_mask, level.moving_mask,
                            refined)  # fmt: skip
    return refined, structure


def _fine_structure(candidate: dict, fine, fine_fixed, fine_moving) -> float:
    """The candidate's structure (local NCC) one level finer than its verification, after a
    quick similarity refinement there: a second, finer look at the same pose."""
    if "structure_fine" not in candidate:
        _, candidate["structure_fine"] = _look(fine, (fine_fixed, fine_moving),
                                               candidate["verified"], 150, 10_000)  # fmt: skip
    return candidate["structure_fine"]


def _choose_orientation(
    upright: dict, mirrored: dict, fine, fine_fixed, fine_moving, mirror_ratio: float
) -> dict:
    """The best upright or the best mirrored pose (a section mounted face down).

    Two pieces of evidence, at two levels: the structure (local NCC) of each orientation's
    best verified pose, and the same after a similarity refinement one level finer, where
    a wrong orientation's chance agreement of coarse shapes falls away while the right
    one's cells and glands line up. The mirrored pose is kept only when both levels favour
    it and together by ``mirror_ratio`` (the geometric mean of the two ratios), so neither
    a symmetric outline nor one noisy level flips a correctly mounted slide; the finer look
    is taken whenever the coarser one is not decisive on its own (within × / ÷ 3).
    """
    floor = 0.01  # structure near zero or negative: no agreement at all

    def ratio(key):
        return max(mirrored[key], floor) / max(upright[key], floor)

    middle = ratio("structure")
    if middle >= 3.0 * mirror_ratio:
        return mirrored
    if middle <= 1.0 / 3.0:
        return upright
    for candidate in (upright, mirrored):
        _fine_structure(candidate, fine, fine_fixed, fine_moving)
    finer = ratio("structure_fine")
    clear = mirrored["structure_fine"] > upright["structure_fine"] + 0.02
    if middle > 1.0 and finer > 1.0 and clear and np.sqrt(middle * finer) >= mirror_ratio:
        return mirrored
    return upright


def register_rigid(
    fixed: np.ndarray,
    moving: np.ndarray,
    fixed_mask: np.ndarray,
    moving_mask: np.ndarray,
    model: str = "affine",
    search_size: int = 128,
    refine_size: int = 512,
    coarse_angle_step: float = 15.0,
    allow_mirror: bool = True,
    max_scale_change: float = 0.25,
    pixel_sizes_known: bool = True,
    n_translation_peaks: int = 3,
    n_verified: int = 4,
    local_contrast: float = 0.016,
    mirror_ratio: float = 1.5,
    features: str = "auto",
    clear_ratio: float = 2.0,
) -> RigidResult:
    """Find ``fixed_to_moving`` between two preprocessed images.

    Parameters
    ----------
    fixed, moving : ndarray, shape (h, w), float
        Signal-bright, same pixel size.
    fixed_mask, moving_mask : ndarray of bool
        Tissue masks.
    model : {'rigid', 'similarity', 'affine'}
        Degrees of freedom of the final refinement.
    search_size : int
        Longest side (px) at which all candidates are generated and scored.
    refine_size : int
        Longest side (px) at which the best candidates are verified and refined (capped at
        the working resolution; the optical flow continues from there).
    coarse_angle_step : float
        Step (degrees) of the rotation grid tried besides the Fourier–Mellin estimates;
        0 disables the grid.
    allow_mirror : bool
        Also try mirrored moving images (a section mounted face down); each orientation's
        best candidates are verified, and the mirrored one is kept only when it wins clearly
        on structure: its locally normalised NCC at least ``mirror_ratio`` times (and 0.05
        above) the unmirrored one's.
    mirror_ratio : float
        How clearly a mirrored solution must win.
    max_scale_change : float
        Largest scale change trusted from the spectra and the feature matches when
        ``pixel_sizes_known``; otherwise at least × / ÷ 3 (:func:`trusted_scale_change`).
    pixel_sizes_known : bool
        Both images' pixel sizes are known (from the files or the sample sheet), so the
        working images share one pixel size.
    n_translation_peaks : int
        Phase-correlation peaks scored per rotation candidate.
    n_verified : int
        Distinct best-scoring poses per orientation refined at ``2 × search_size``.
    local_contrast : float
        Window of the local contrast normalisation applied before the refinements, as a
        fraction of the longest image side (so the same tissue scale at every level); 0
        refines on plain intensities. Plain NCC across stains can prefer a wrong scale
        (BIRL lesions: 11 % too large at 768 px); local NCC does not.
    features : {'auto', 'always', 'never'}
        Matched SIFT features as extra candidates: ``auto`` when the verified poses are
        ambiguous (the best below ``clear_ratio`` × every different pose), or always/never.
    clear_ratio : float
        See ``features``.
    """
    max_scale_change = trusted_scale_change(max_scale_change, pixel_sizes_known)
    fixed = fixed.astype(np.float32)
    moving = moving.astype(np.float32)
    fine = _Level(fixed, moving, fixed_mask, moving_mask, refine_size)
    middle = _Level(fixed, moving, fixed_mask, moving_mask, 2 * search_size, finer=fine)
    coarse = _Level(fixed, moving, fixed_mask, moving_mask, search_size, finer=middle)
    fixed_centre, moving_centre = _centre(coarse.fixed.shape), _centre(coarse.moving.shape)

    mirrors = (False, True) if allow_mirror else (False,)
    rotations = {}
    for mirror in mirrors:
        # Each orientation gets its own spectra: the mirrored candidates' angle comes from
        # the mirror image's spectrum (a mirror in x turns a rotation by φ of the flipped
        # image into −φ of the mirrored parametrisation), not from the unmirrored estimate,
        # which for a slide mounted face down is no estimate at all.
        flipped = middle.moving[:, ::-1] if mirror else middle.moving
        angle_fm, scale_fm = fourier_mellin(middle.fixed, flipped, max_scale_change)
        angle_fm = -angle_fm if mirror else angle_fm
        # the spectra's angle also at scale 1 when they find another scale: across stains
        # the scale estimate is the weaker of the two, and a wide range admits spurious ones
        rotations[mirror] = [
            ("fourier-mellin", angle % 360, scale)
            for scale in sorted({scale_fm, 1.0})
            for angle in (angle_fm, angle_fm + 180)
        ]
        if coarse_angle_step > 0:
            # a few scales too: unknown or wrong pixel sizes and shrinkage change the scale
            # by ±10 % and more (BIRL rat kidney: 0.94), beyond what a local refinement
            # recovers
            step = min(0.1, max_scale_change / 2)
            rotations[mirror] += [
                ("grid", float(a), grid_scale)
                for grid_scale in sorted({1.0, 1.0 - step, 1.0 / (1.0 - step)})
                for a in np.arange(0.0, 360.0, coarse_angle_step)
            ]

    candidates = []
    canvas = _Canvas(coarse.fixed)
    for mirror in mirrors:
        for source, angle, scale in rotations[mirror]:
            base = similarity_matrix(angle, scale, (0.0, 0.0), fixed_centre, moving_centre, mirror)
            for matrix in _translation_candidates(canvas, coarse.moving, base, n_translation_peaks):
                candidates.append(
                    {
                        "source": source,
                        "angle": angle % 360,
                        "scale": scale,
                        "mirror": mirror,
                        "ncc_coarse": coarse.score(matrix),
                        "matrix": coarse.to_working(matrix),
                    }
                )
    candidates.sort(key=lambda c: -c["ncc_coarse"])

    # Verify the best few distinct poses of each orientation by a quick similarity
    # refinement one level finer, and rank them on structure (locally normalised NCC, what
    # the final refinement maximises): the tissue outline, which the coarse score leans on,
    # differs between distant sections and where tissue is torn.
    middle_contrast = middle.contrast(local_contrast)

    def verify(candidate: dict) -> None:
        matrix, candidate["structure"] = _look(middle, middle_contrast, candidate["matrix"],
                                               120, 5_000)  # fmt: skip
        candidate["ncc"] = middle.score(matrix)
        candidate["verified"] = middle.to_working(matrix)

    for mirror in mirrors:
        for candidate in _distinct_poses(candidates, mirror, n_verified, coarse):
            verify(candidate)
    # Matched features when the images do not single out one pose (the best distinct pose
    # scores less than ``clear_ratio`` × the runner-up): candidates that depend neither on
    # the rotation/scale grid nor on the spectra, verified like the others.
    if features == "always" or (features == "auto" and _ambiguous(candidates, middle, clear_ratio)):
        for found in feature_candidates(fine.fixed, fine.moving, mirrors, max_scale_change):
            matrix = fine.to_working(found.pop("matrix"))
            angle, scale, _ = _decompose(matrix)
            found.update(source="features", angle=angle % 360, scale=scale, matrix=matrix,
                         ncc_coarse=coarse.score(coarse.from_working(matrix)))  # fmt: skip
            candidates.append(found)
            verify(found)

    best = {}
    for candidate in (c for c in candidates if "verified" in c):
        if (
            candidate["structure"]
            > best.get(candidate["mirror"], {"structure": -np.inf})["structure"]
        ):
            best[candidate["mirror"]] = candidate
    fine_fixed, fine_moving = fine.contrast(local_contrast)
    chosen = best[False]
    if True in best:
        chosen = _choose_orientation(
            best[False], best[True], fine, fine_fixed, fine_moving, mirror_ratio
        )
    verified = [c for c in candidates if "ncc" in c]

    # The final refinement starts from the chosen pose and from the other verified starts of
    # its orientation that score as well on structure (within 5 %, at most 3 starts): such
    # near-ties are the same pose reached from different candidates, yet the affine
    # objective has several optima close to it, and Powell's line searches reach different
    # ones from starts a fraction of a pixel apart (BIRL lesions: starts 0.4 px apart end
    # 12 px apart, rTRE 0.0061 or 0.0050). The best optimum of the objective is kept.
    near_ties = sorted(
        (c for c in verified if c is not chosen and c["mirror"] == chosen["mirror"]
         and c["structure"] >= 0.95 * chosen["structure"]),
        key=lambda c: -c["structure"],
    )  # fmt: skip
    starts = [chosen, *near_ties[:2]]
    best_objective = -np.inf
    for candidate in starts:
        start = fine.from_working(candidate["verified"])
        region = _union_region(fine.fixed_mask, fine.moving_mask, start)
        refined = refine(fine_fixed, fine_moving, region, start, model, max_evaluations=400)
        objective = _masked_ncc(fine_fixed, fine_moving, fine.fixed_mask, fine.moving_mask,
                                refined)  # fmt: skip
        candidate["refined"] = round(float(objective), 4)
        if objective > best_objective:
            best_objective, matrix = objective, refined
    matrix = fine.to_working(matrix)
    score, initial = (
        _masked_ncc(
            fine.fixed, fine.moving, fine.fixed_mask, fine.moving_mask, fine.from_working(m)
        )
        for m in (matrix, np.eye(3))
    )
    angle, scale, mirrored = _decompose(matrix)
    report = [
        {
            k: (round(float(v), 4) if k != "source" and k != "mirror" else v)
            for k, v in c.items()
            if k not in ("matrix", "verified")
        }
        for c in verified
    ]
    return RigidResult(
        fixed_to_moving=matrix,
        ncc=float(score),
        ncc_initial=float(initial),
        rotation_deg=angle,
        scale=scale,
        mirrored=mirrored,
        candidates=report,
    )


def to_full_resolution(
    working_matrix: np.ndarray,
    fixed_full_to_working: np.ndarray,
    moving_full_to_working: np.ndarray,
) -> np.ndarray:
    """Express a working-resolution ``fixed_to_moving`` in full-resolution pixels."""
    return np.linalg.inv(moving_full_to_working) @ working_matrix @ fixed_full_to_working
