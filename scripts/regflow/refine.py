"""Full-resolution refinement, tile by tile: the fine component of a transform.

The global stage and the flow work on one working image of about 1000 px: on a whole slide a
working pixel is 16–25 µm, larger than a cell. This stage continues from the flow's transform
at a finer resolution (``pixel_size_um``, 2 µm by default: nuclei are 5–10 µm across; capped
by the image's own pixel size), over the tissue only, one tile at a time:

1. the fixed tile is read from the pyramid level nearest that resolution, the moving image
   resampled onto it through the current transform (only the region it needs is read);
2. both are reduced to their registration channel and locally normalised (as the flow's
   images), and ILK estimates the residual motion, regularised by confidence-weighted
   smoothing with a forward–backward check (:func:`regflow.flow._regularised`);
3. the tile's residual is *accepted* only where it makes the tile more alike (locally
   normalised NCC up by ``min_gain``) and the tile corresponds at cell level after it (NCC at
   least ``min_ncc``): consecutive sections, whose cells differ, and torn or lost tissue keep
   the coarser field instead of receiving invented motion;
4. every tile — accepted, rejected (a zero residual) or without tissue (zero, not computed) —
   contributes to one field on a regular grid of nodes (every ``grid_step`` refinement
   pixels) with weights that fall linearly to zero over the tiles' overlap, so the blended
   field is continuous: no seam or step at tile borders.

Memory: one tile per thread plus the node grid (a 16384² slide at 2 µm with 4-px nodes: 2048²
nodes, 48 MiB); never a full-resolution plane.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .flow import _regularised, warp_by_displacement
from .formats import ImageInfo, RegionReader, choose_level
from .imageops import local_normalise
from .metrics import ncc
from .transform import Transform, inside_image


@dataclass
class RefineSettings:
    """The ``refine`` config section (see ``config/schemas/config.schema.yaml``)."""

    enabled: bool = True
    pixel_size_um: float = 2.0
    levels: int = 3
    tile: int = 512
    overlap: int = 32
    grid_step: int = 4
    ilk_radius: int = 7
    num_warp: int = 2
    smoothing_sigma: float = 3.0
    normalise_sigma: float = 8.0
    consistency: float = 1.0
    min_ncc: float = 0.5
    min_gain: float = 0.0
    min_tissue: float = 0.05
    probe_tiles: int = 4
    min_residual_px: float = 0.15

    @classmethod
    def from_config(cls, section: dict) -> RefineSettings:
        known = {k: v for k, v in section.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class RefineResult:
    """The refined transform and what the refinement did.

    Attributes
    ----------
    transform : Transform
        The input transform with its fine component (unchanged when nothing was accepted).
    report : dict
        Resolution, tile counts, acceptance, residual size, seconds (for refine.json).
    accepted_map : ndarray, shape (tiles_y, tiles_x), int8
        Per tile: 1 accepted, 0 rejected, -1 no tissue (not computed).
    """

    transform: Transform
    report: dict
    accepted_map: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8))


def refinement_level(
    fixed_info: ImageInfo,
    moving_info: ImageInfo,
    working_downsample: float,
    settings: RefineSettings,
) -> tuple[int, float, int] | None:
    """The fixed pyramid level the refinement reads, its downsample (full-resolution pixels
    per level pixel) and the whole factor ``k`` by which its tiles are reduced (block means)
    when the nearest level is much finer than the target (a file without pyramid levels: the
    work stays at the target resolution); or None when the refinement would not be finer
    than the working image (nothing to add: a small image, or a working resolution already
    that fine). A refinement pixel is ``downsample × k`` full-resolution pixels.

    With a physical pixel size the target is ``pixel_size_um`` (never finer than the image's
    own); without one, ``levels`` halvings below the working resolution.
    """
    if fixed_info.pixel_size_um:
        wanted = max(settings.pixel_size_um / fixed_info.pixel_size_um, 1.0)
    else:
        wanted = max(working_downsample / 2.0**settings.levels, 1.0)
    level = choose_level(fixed_info, wanted)
    height, width = fixed_info.level_shapes[level]
    downsample = max(fixed_info.shape[0] / height, fixed_info.shape[1] / width)
    factor = max(1, int(np.floor(wanted / downsample + 1e-6)))
    if downsample * factor > working_downsample / 1.5:  # not meaningfully finer
        return None
    return level, downsample, factor


def _ramp(n: int, overlap: int, low_edge: bool, high_edge: bool) -> np.ndarray:
    """Blending weights along one side of a tile window: rising linearly from 0 over
    ``overlap`` px at a side shared with a neighbour, 1 at an image border."""
    index = np.arange(n, dtype=np.float64)
    ramp = np.ones(n)
    if overlap > 0:
        if not low_edge:
            ramp = np.minimum(ramp, (index + 0.5) / overlap)
        if not high_edge:
            ramp = np.minimum(ramp, (n - index - 0.5) / overlap)
    return np.clip(ramp, 0.0, 1.0)


@dataclass
class _Job:
    """Everything a tile needs, shared by the workers (inherited on fork, never pickled)."""

    transform: Transform
    fixed_info: ImageInfo
    moving_info: ImageInfo
    level: int
    moving_level: int
    factor: int
    down: float
    moving_down: float
    channels: dict
    settings: RefineSettings
    shape: tuple[int, int]
    mask: np.ndarray
    full_to_working: np.ndarray
    transform_scale: float = 1.0
    readers: tuple | None = None

    def open(self) -> None:
        if self.readers is None:
            self.readers = (RegionReader(self.fixed_info.path, self.level),
                            RegionReader(self.moving_info.path, self.moving_level))  # fmt: skip

    def tissue_fraction(self, r0: int, r1: int, c0: int, c1: int) -> float:
        """The tile's share of tissue, from the working mask (refinement px → working px)."""
        scale_y = self.full_to_working[1, 1] * self.down
        scale_x = self.full_to_working[0, 0] * self.down
        rows = slice(int(r0 * scale_y), max(int(r0 * scale_y) + 1, int(np.ceil(r1 * scale_y))))
        cols = slice(int(c0 * scale_x), max(int(c0 * scale_x) + 1, int(np.ceil(c1 * scale_x))))
        part = self.mask[rows, cols]
        return float(part.mean()) if part.size else 0.0


_JOB: _Job | None = None  # the job of this (worker) process


def _start_worker() -> None:
    # the parent's readers (file handles, caches) are not shared: each worker opens its own
    # (and no OpenCV thread setting here: changing it in a forked child waits forever)
    _JOB.readers = None
    _JOB.open()


def _tile(origin: tuple[int, int]) -> dict:
    """One tile: its window's node block, the blending weights there, and the residual at
    the nodes in fixed full-resolution px ``(dx, dy)`` — None when rejected or without
    tissue — with the outcome (NCC gain, residual size) when it was estimated."""
    job = _JOB
    height, width = job.shape
    settings = job.settings
    tile, overlap, step = settings.tile, settings.overlap, settings.grid_step
    r0, c0 = origin
    r1, c1 = min(r0 + tile, height), min(c0 + tile, width)
    wr0, wr1 = max(0, r0 - overlap), min(height, r1 + overlap)
    wc0, wc1 = max(0, c0 - overlap), min(width, c1 + overlap)
    nr0, nr1 = -(-wr0 // step), -(-wr1 // step)
    nc0, nc1 = -(-wc0 // step), -(-wc1 // step)
    rows = np.arange(nr0, nr1) * step - wr0
    cols = np.arange(nc0, nc1) * step - wc0
    weight = np.outer(
        _ramp(wr1 - wr0, overlap, wr0 == 0, wr1 == height)[rows],
        _ramp(wc1 - wc0, overlap, wc0 == 0, wc1 == width)[cols],
    )
    out = {"origin": origin, "nodes": (nr0, nr1, nc0, nc1), "weight": weight, "values": None,
           "state": -1, "outcome": None}  # fmt: skip
    if job.tissue_fraction(r0, r1, c0, c1) < settings.min_tissue:
        return out
    job.open()
    residual, outcome = _tile_residual(job, (wr0, wr1, wc0, wc1))
    out["outcome"], out["state"] = outcome, 0
    if residual is not None:
        # (d_row, d_col) in refinement px → (dx, dy) in fixed full-resolution px
        values = residual[:, rows[:, None], cols[None, :]] * job.down
        out["values"], out["state"] = values[::-1].astype(np.float32), 1
    return out


def refine_transform(
    transform: Transform,
    fixed_info: ImageInfo,
    moving_info: ImageInfo,
    channels: dict,
    tissue: tuple[np.ndarray, np.ndarray],
    working_downsample: float,
    settings: RefineSettings,
    threads: int = 1,
) -> RefineResult:
    """Add the fine component to ``transform`` (see the module docstring).

    Parameters
    ----------
    channels : dict
        ``{"fixed": (modality, channel), "moving": (modality, channel)}``: the registration
        channel of each image (as resolved by the preprocessing).
    tissue : (mask, fixed_full_to_working)
        The fixed image's tissue mask at working resolution and its full → working matrix.
    working_downsample : float
        Fixed full-resolution pixels per working pixel.
    threads : int
        Tiles run in this many worker processes (forked: the tiles' many small array
        operations hold Python's lock too often for threads to scale); 1 runs them here.
    """
    global _JOB
    start = time.perf_counter()
    report = {"enabled": settings.enabled}
    if not settings.enabled:
        report["reason"] = "refinement disabled (refine.enabled: false)"
        return RefineResult(transform.without_fine(), report)
    chosen = refinement_level(fixed_info, moving_info, working_downsample, settings)
    if chosen is None:
        report["reason"] = (
            f"the working image (1 px = {working_downsample:.2f} full-resolution px) is already "
            "as fine as the refinement's resolution: nothing to add"
        )
        return RefineResult(transform.without_fine(), report)
    level, level_down, factor = chosen
    down = level_down * factor  # full-resolution px per refinement px
    level_height, level_width = fixed_info.level_shapes[level]
    height, width = -(-level_height // factor), -(-level_width // factor)
    # moving full-resolution pixels per refinement pixel: the global part's scale
    scale = float(np.sqrt(abs(np.linalg.det(transform.affine[:2, :2]))))
    moving_level = choose_level(moving_info, down * scale * 1.05)  # a level within 5 %
    m_height, m_width = moving_info.level_shapes[moving_level]
    moving_down = max(moving_info.shape[0] / m_height, moving_info.shape[1] / m_width)
    mask, full_to_working = tissue
    _JOB = _Job(transform, fixed_info, moving_info, level, moving_level, factor, down, moving_down,
                channels, settings, (height, width), mask, full_to_working, scale)  # fmt: skip

    step, tile = settings.grid_step, settings.tile
    grid_shape = (-(-height // step), -(-width // step))
    accumulated = np.zeros((2, *grid_shape), np.float64)
    weights = np.zeros(grid_shape, np.float64)
    starts = [(r, c) for r in range(0, height, tile) for c in range(0, width, tile)]
    accepted_map = np.full((-(-height // tile), -(-width // tile)), -1, np.int8)
    gains, residuals = [], []

    def collect(result: dict) -> None:
        nr0, nr1, nc0, nc1 = result["nodes"]
        weights[nr0:nr1, nc0:nc1] += result["weight"]
        if result["values"] is not None:
            accumulated[:, nr0:nr1, nc0:nc1] += result["weight"] * result["values"]
        r0, c0 = result["origin"]
        accepted_map[r0 // tile, c0 // tile] = result["state"]
        if result["outcome"] is not None:
            gains.append(result["outcome"]["gain"])
            if result["values"] is not None:
                residuals.append(result["outcome"]["residual_px"])

    # A probe first: a few tissue tiles spread over the slide. When none of them is accepted
    # (the images do not correspond at cell level) or their residual is negligible (the flow
    # already aligned the cells), the rest is not computed: nothing to add, at little cost.
    def has_tissue(origin):
        r0, c0 = origin
        fraction = _JOB.tissue_fraction(r0, min(r0 + tile, height), c0, min(c0 + tile, width))
        return fraction >= settings.min_tissue

    tissue_tiles = [origin for origin in starts if has_tissue(origin)]
    # probes only where the moving image has pixels (it may cover a part of the fixed one)
    centres = (np.array(tissue_tiles, np.float64).reshape(-1, 2)[:, ::-1] + tile / 2) * down
    onto = transform.fixed_to_moving(centres)
    covered = [o for o, inside in zip(tissue_tiles, inside_image(onto[:, 0], onto[:, 1],
               moving_info.shape), strict=True) if inside]  # fmt: skip
    n_probe = min(settings.probe_tiles, len(covered))
    probes = [covered[int((k + 0.5) * len(covered) / n_probe)] for k in range(n_probe)]
    probes = list(dict.fromkeys(probes))
    job = _JOB
    stopped = None
    cv_threads = None
    try:
        pool = None

        def run(origins):
            if pool is None:
                return map(_tile, origins)
            return pool.map(_tile, origins, chunksize=2)

        # the probe: the central half of each probe tile, here (a few small windows do not
        # pay for starting workers); only for the decision, never blended into the field
        job.open()
        quarter, outcomes = tile // 4, []
        for r0, c0 in probes:
            window = (r0 + quarter, min(height, r0 + 3 * quarter),
                      c0 + quarter, min(width, c0 + 3 * quarter))  # fmt: skip
            if window[1] - window[0] >= 32 and window[3] - window[2] >= 32:
                outcomes.append(_tile_residual(job, window))
        if probes:
            accepted = [o["residual_px"] for r, o in outcomes if r is not None]
            gains += [o["gain"] for _, o in outcomes if o is not None]
            if not accepted:
                stopped = f"none of the {len(probes)} probe tiles corresponds at cell level"
            elif float(np.median(accepted)) < settings.min_residual_px:
                stopped = (f"the {len(probes)} probe tiles' median residual "
                           f"{float(np.median(accepted)):.3f} px is below "
                           f"refine.min_residual_px={settings.min_residual_px}")  # fmt: skip
        if stopped is None:
            if threads > 1 and len(starts) > threads:
                import multiprocessing

                import cv2

                # OpenCV's thread pool does not survive a fork: a child inheriting a started
                # pool can wait forever on threads it does not have (seen once in a full test
                # run). The parent only collects meanwhile: its pool is stopped before the
                # workers are forked and restored after.
                cv_threads = cv2.getNumThreads()
                cv2.setNumThreads(1)
                context = multiprocessing.get_context("fork")
                pool = ProcessPoolExecutor(threads, mp_context=context, initializer=_start_worker)
            for result in run(starts):
                collect(result)
        if pool is not None:
            pool.shutdown()
    finally:
        _JOB = None
        if cv_threads is not None:  # cv2 was imported above, with the pool
            cv2.setNumThreads(cv_threads)
    fine = (accumulated / np.maximum(weights, 1e-12)).astype(np.float32)
    # node k at refinement px k·step, i.e. full-resolution px (k·step + 0.5)·down − 0.5
    to_node = 1.0 / (down * step)
    offset = (0.5 - 0.5 * down) * to_node
    fixed_full_to_fine = np.array([[to_node, 0.0, offset], [0.0, to_node, offset], [0, 0, 1.0]])
    if stopped:  # the tissue tiles were not refined: rejected as a whole
        for r0, c0 in tissue_tiles:
            accepted_map[r0 // tile, c0 // tile] = 0
    n_tissue = int((accepted_map >= 0).sum())
    n_accepted = int((accepted_map == 1).sum())
    refined = transform.without_fine()
    if n_accepted:
        refined = Transform(transform.affine, transform.displacement,
                            transform.fixed_full_to_working, transform.fixed_shape,
                            transform.moving_shape, fine, fixed_full_to_fine)  # fmt: skip
    magnitude = np.hypot(*fine)
    report |= {
        "level": level,
        "level_reduced": factor,
        "downsample": down,
        "pixel_size_um": fixed_info.pixel_size_um * down if fixed_info.pixel_size_um else None,
        "moving_level": moving_level,
        "tile": tile,
        "overlap": settings.overlap,
        "grid_step_px": step * down,
        "grid_shape": list(grid_shape),
        "tiles": len(starts),
        "tiles_with_tissue": n_tissue,
        "tiles_accepted": n_accepted,
        "accepted_fraction": n_accepted / n_tissue if n_tissue else 0.0,
        "median_gain": float(np.median(gains)) if gains else None,
        "residual_median_px": float(np.median(residuals)) if residuals else 0.0,
        "fine_max_px": float(magnitude.max()) if magnitude.size else 0.0,
        "probe_tiles": len(probes),
        "stopped_after_probe": stopped,
        "reason": (
            f"nothing to add: {stopped}; the flow's transform is kept"
            if stopped
            else f"{n_accepted} of {n_tissue} tissue tiles refined at level {level} "
            f"({down:g}× the full resolution)"
        ),
        "seconds": time.perf_counter() - start,
    }
    return RefineResult(refined, report, accepted_map)


def _signal(reader, rows: slice, cols: slice, info: ImageInfo, channel_spec) -> np.ndarray:
    """The registration channel of a tile, float32. Fluorescence as it is, its channel alone
    decoded (the local normalisation that follows removes offset and gain; a percentile pass
    per tile would cost a tenth of the tile's time), brightfield as optical density of its
    stain."""
    modality, channel = channel_spec
    if modality == "fluorescence" and not isinstance(channel, str):
        return reader.read(rows, cols, [int(channel)])[0].astype(np.float32)
    from .preprocess import registration_channel  # scikit-image: only for brightfield

    pixels = reader.read(rows, cols)
    return registration_channel(pixels, modality, channel, info.rgb).astype(np.float32)


def _tile_residual(job: _Job, window: tuple[int, int, int, int]):
    """The regularised residual ``(d_row, d_col)`` (refinement px) of one tile window, or
    None when rejected; and the outcome (NCC gain, residual size) when it was estimated."""
    import cv2

    readers, transform, down, moving_down = job.readers, job.transform, job.down, job.moving_down
    settings, channels = job.settings, job.channels
    wr0, wr1, wc0, wc1 = window
    k = job.factor
    level_shape = readers[0].shape[1:]
    rows_k = slice(wr0 * k, min(level_shape[0], wr1 * k))
    cols_k = slice(wc0 * k, min(level_shape[1], wc1 * k))
    fixed = _signal(readers[0], rows_k, cols_k, job.fixed_info, channels["fixed"])
    if k > 1:  # a level much finer than the target: block means down to it
        pad = ((0, (wr1 - wr0) * k - fixed.shape[0]), (0, (wc1 - wc0) * k - fixed.shape[1]))
        fixed = np.pad(fixed, pad, mode="edge")
        fixed = cv2.resize(fixed, (wc1 - wc0, wr1 - wr0), interpolation=cv2.INTER_AREA)
    # full-resolution positions of the window's pixel centres (pixel-area convention)
    rows = (np.arange(wr0, wr1) + 0.5) * down - 0.5
    cols = (np.arange(wc0, wc1) + 0.5) * down - 0.5
    coords = transform.moving_coordinates(rows, cols)
    coords = (coords + 0.5) / moving_down - 0.5  # moving level px
    level_shape = readers[1].shape[1:]
    r_lo = max(0, int(np.floor(coords[0].min())) - 2)
    r_hi = min(level_shape[0], int(np.ceil(coords[0].max())) + 3)
    c_lo = max(0, int(np.floor(coords[1].min())) - 2)
    c_hi = min(level_shape[1], int(np.ceil(coords[1].max())) + 3)
    if r_hi - r_lo < 8 or c_hi - c_lo < 8:
        return None, None
    region = _signal(readers[1], slice(r_lo, r_hi), slice(c_lo, c_hi), job.moving_info,
                     channels["moving"])  # fmt: skip
    # moving level px per refinement px: a much finer level is smoothed first (no aliasing)
    ratio = down * job.transform_scale / moving_down
    if ratio > 1.5:
        region = cv2.GaussianBlur(region, (0, 0), 0.4 * ratio)
    map_y = (coords[0] - r_lo).astype(np.float32)
    map_x = (coords[1] - c_lo).astype(np.float32)
    moving = cv2.remap(region, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=np.nan)  # fmt: skip
    footprint = np.isfinite(moving)
    if footprint.mean() < 0.5:
        return None, None
    # outside the moving image's footprint the fixed image stands in (no motion read there)
    moving = np.where(footprint, moving, fixed)
    pair = [local_normalise(im, settings.normalise_sigma) for im in (fixed, moving)]
    solver = {"ilk_radius": settings.ilk_radius, "num_warp": settings.num_warp}
    residual = _regularised(pair[0], pair[1], "ilk", settings.smoothing_sigma,
                            settings.ilk_radius, settings.consistency, solver)  # fmt: skip
    # judged on the tile's own core where both images have pixels
    core = footprint.copy()
    before = ncc(pair[0], pair[1], core)
    after = ncc(pair[0], warp_by_displacement(pair[1], residual), core)
    size = float(np.median(np.hypot(*residual[:, ::4, ::4])))
    outcome = {"gain": after - before, "residual_px": size}
    if not (
        np.isfinite(after) and after >= settings.min_ncc and after - before >= settings.min_gain
    ):
        return None, outcome
    return residual, outcome
