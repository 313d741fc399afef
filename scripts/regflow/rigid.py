"""Global alignment: Fourier–Mellin and coarse-search candidates, verified by NCC, refined.

All functions work on preprocessed, signal-bright images of the *same pixel size* (working
resolution) and express transforms as 3×3 homogeneous matrices ``fixed_to_moving`` that map a
fixed-image ``(x, y)`` to the moving-image ``(x, y)`` it corresponds to.

The chain, in :func:`register_rigid`:

1. candidates for rotation and scale from the log-polar transform of the magnitude spectra
   (Fourier–Mellin; rotation is known only modulo 180°, so both are tried), plus a coarse
   rotation grid (and mirrored ones when allowed) so that a missed spectrum peak never decides;
2. for each, translation from the top peaks of phase correlation on zero-padded images;
3. every (rotation, scale, translation) is scored by normalised cross-correlation (NCC) on the
   tissue masks, the best kept;
4. the best is refined by maximising NCC (Powell), coarse to fine, as a similarity or affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft, optimize
from scipy import ndimage as ndi
from skimage import feature, transform

from .metrics import local_normalise, ncc
from .transform import inside_image

_SWAP_XY = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


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


def warp_to_fixed(
    moving: np.ndarray,
    fixed_to_moving: np.ndarray,
    fixed_shape: tuple[int, int],
    order: int = 1,
    cval: float = 0.0,
    mode: str = "constant",
) -> np.ndarray:
    """Sample ``moving`` on the fixed grid through ``fixed_to_moving`` (xy matrix)."""
    matrix_rc = _SWAP_XY @ fixed_to_moving @ _SWAP_XY
    return ndi.affine_transform(
        moving,
        matrix_rc,
        output_shape=tuple(fixed_shape),
        order=order,
        mode=mode,
        cval=cval,
        prefilter=False,
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
    warped_mask = warp_to_fixed(moving_mask.astype(np.float32), fixed_to_moving, fixed_mask.shape)
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
    return ncc(fixed, warp_to_fixed(moving, fixed_to_moving, fixed.shape), region)


def _spectrum_log_polar(image: np.ndarray, size: int, radius: int, n_angles: int) -> np.ndarray:
    """High-pass-filtered log-polar magnitude spectrum of an image padded to ``size``."""
    # Hann window (numpy's: skimage.filters.window would import scipy.signal, ~0.5 s)
    windowed = image * np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    padded = np.zeros((size, size), np.float32)
    padded[: image.shape[0], : image.shape[1]] = windowed
    magnitude = np.abs(fft.fftshift(fft.fft2(padded)))
    # Reddy & Chatterji high-pass: suppress the low frequencies that dominate the spectrum.
    freq = fft.fftshift(fft.fftfreq(size))
    cosine = np.outer(np.cos(np.pi * freq), np.cos(np.pi * freq))
    magnitude *= (1.0 - cosine) * (2.0 - cosine)
    return transform.warp_polar(
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


def _phase_peaks(reference: np.ndarray, moving: np.ndarray, n_peaks: int = 5) -> np.ndarray:
    """Shifts ``s`` with ``reference(p) ≈ moving(p − s)``: the strongest phase-correlation peaks.

    Inputs of equal shape; shifts are wrapped to the signed range and refined to sub-pixel
    precision by a parabola through each peak's neighbours.

    Returns
    -------
    ndarray, shape (k, 2)
        ``(row, col)`` shifts, strongest first.
    """
    spectrum = fft.fft2(reference) * np.conj(fft.fft2(moving))
    spectrum /= np.abs(spectrum) + 1e-12
    surface = np.real(fft.ifft2(spectrum))
    surface = ndi.gaussian_filter(surface, 1.0, mode="wrap")
    peaks = feature.peak_local_max(
        np.fft.fftshift(surface), min_distance=3, num_peaks=n_peaks, exclude_border=False
    )
    if len(peaks) == 0:
        peaks = np.array([np.unravel_index(np.argmax(np.fft.fftshift(surface)), surface.shape)])
    shape = np.array(surface.shape)
    peaks = peaks - shape // 2  # undo fftshift: signed shifts
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


def _translation_candidates(
    fixed: np.ndarray,
    moving: np.ndarray,
    base: np.ndarray,
    n_peaks: int,
) -> list[np.ndarray]:
    """Matrices ``base ∘ T(d)`` for the top phase-correlation translations ``d``.

    ``moving`` is first rendered on a canvas twice the fixed size through ``base`` so that
    shifts of up to half the image are unambiguous.
    """
    height, width = fixed.shape
    pad = np.array([height // 2, width // 2])
    canvas_shape = (height + 2 * pad[0], width + 2 * pad[1])
    to_canvas = np.eye(3)
    to_canvas[:2, 2] = [-pad[1], -pad[0]]  # canvas (x, y) → fixed (x, y)
    rendered = warp_to_fixed(moving, base @ to_canvas, canvas_shape)
    canvas = np.zeros(canvas_shape, np.float32)
    canvas[pad[0] : pad[0] + height, pad[1] : pad[1] + width] = fixed
    matrices = []
    for shift in _phase_peaks(canvas, rendered, n_peaks):
        offset = np.eye(3)
        offset[:2, 2] = [-shift[1], -shift[0]]  # fixed(p) ≈ rendered(p − s)
        matrices.append(base @ offset)
    return matrices


def _level_shape(shape: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """Shape of an image resized by ``factor`` (never enlarged)."""
    if factor >= 1.0:
        return tuple(shape)
    return tuple(max(8, int(round(n * factor))) for n in shape)


def _resize_to(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if image.shape == tuple(shape):
        return image.astype(np.float32)
    return transform.resize(
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
        pair = [ndi.gaussian_filter(im, smoothing) for im in (self.fixed, self.moving)]
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
        warped = warp_to_fixed(self.moving, matrix, self.fixed.shape)
        return 0.5 * (ncc(self.fixed, warped, region) + ncc(self.fixed_mask, warped_mask))

    def from_working(self, matrix: np.ndarray) -> np.ndarray:
        """A working-resolution matrix expressed on this level's images."""
        scaling = _scaling(self.factor)
        return scaling @ matrix @ np.linalg.inv(scaling)

    def to_working(self, matrix: np.ndarray) -> np.ndarray:
        """This level's matrix expressed at working resolution."""
        scaling = _scaling(self.factor)
        return np.linalg.inv(scaling) @ matrix @ scaling


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
    n_translation_peaks: int = 3,
    n_verified: int = 4,
    local_contrast: float = 0.016,
    mirror_ratio: float = 1.5,
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
        Largest scale change trusted from the spectra.
    n_translation_peaks : int
        Phase-correlation peaks scored per rotation candidate.
    n_verified : int
        Best-scoring candidates refined at ``2 × search_size`` before one is chosen.
    local_contrast : float
        Window of the local contrast normalisation applied before the refinements, as a
        fraction of the longest image side (so the same tissue scale at every level); 0
        refines on plain intensities. Plain NCC across stains can prefer a wrong scale
        (BIRL lesions: 11 % too large at 768 px); local NCC does not.
    """
    fixed = fixed.astype(np.float32)
    moving = moving.astype(np.float32)
    fine = _Level(fixed, moving, fixed_mask, moving_mask, refine_size)
    middle = _Level(fixed, moving, fixed_mask, moving_mask, 2 * search_size, finer=fine)
    coarse = _Level(fixed, moving, fixed_mask, moving_mask, search_size, finer=middle)
    fixed_centre, moving_centre = _centre(coarse.fixed.shape), _centre(coarse.moving.shape)

    angle_fm, scale_fm = fourier_mellin(middle.fixed, middle.moving, max_scale_change)
    rotations = [
        ("fourier-mellin", angle_fm, scale_fm),
        ("fourier-mellin", angle_fm + 180, scale_fm),
    ]
    if coarse_angle_step > 0:
        rotations += [("grid", float(a), 1.0) for a in np.arange(0.0, 360.0, coarse_angle_step)]
    mirrors = (False, True) if allow_mirror else (False,)

    candidates = []
    for mirror in mirrors:
        for source, angle, scale in rotations:
            base = similarity_matrix(angle, scale, (0.0, 0.0), fixed_centre, moving_centre, mirror)
            for matrix in _translation_candidates(
                coarse.fixed, coarse.moving, base, n_translation_peaks
            ):
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

    # Verify the best few of each orientation by a quick similarity refinement one level
    # finer. A mirrored solution (a section mounted face down) is kept only when it wins
    # clearly: a symmetric tissue outline must never flip a correctly mounted slide.
    best = {}
    middle_fixed, middle_moving = middle.contrast(local_contrast)
    for mirror in mirrors:
        family = [c for c in candidates if c["mirror"] == mirror][:n_verified]
        for candidate in family:
            start = middle.from_working(candidate["matrix"])
            region = _union_region(middle.fixed_mask, middle.moving_mask, start)
            matrix = refine(
                middle_fixed,
                middle_moving,
                region,
                start,
                "similarity",
                max_evaluations=120,
                max_samples=5_000,
            )
            score = middle.score(matrix)
            candidate["ncc"] = score
            if score > best.get(mirror, (-np.inf, None))[0]:
                structure = _masked_ncc(middle_fixed, middle_moving, middle.fixed_mask,
                                        middle.moving_mask, matrix)  # fmt: skip
                best[mirror] = (score, middle.to_working(matrix), structure)
    best_score, best_matrix, structure = best[False]
    if True in best:
        mirrored_structure = best[True][2]
        # decided on structure (locally normalised NCC), not on the tissue outline, which a
        # mirrored blob can match nearly as well: correct orientations score 2–3.5× the
        # wrong ones on the BIRL pairs
        if mirrored_structure > max(mirror_ratio * structure, structure + 0.05):
            best_score, best_matrix, _ = best[True]
    verified = [c for c in candidates if "ncc" in c]

    start = fine.from_working(best_matrix)
    region = _union_region(fine.fixed_mask, fine.moving_mask, start)
    fine_fixed, fine_moving = fine.contrast(local_contrast)
    matrix = refine(fine_fixed, fine_moving, region, start, model, max_evaluations=400)
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
            if k != "matrix"
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
