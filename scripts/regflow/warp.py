"""Resample every channel of the moving image onto the fixed grid, tile by tile.

Each output tile needs only its own sampling coordinates and the window of the moving image
they fall in, read from the file on demand, so memory does not grow with the image size and
tiles can be computed in parallel threads. Tiling never changes the result: every output pixel
is computed from the same coordinates and the same neighbouring input pixels whatever the
tile layout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from .transform import Transform, inside_image


def background_value(image: np.ndarray, modality: str) -> np.ndarray:
    """Per-channel fill for pixels that map outside the moving image.

    Brightfield: the slide's white (99th percentile, i.e. empty glass); fluorescence: the dark
    background (1st percentile). Filling with the image's own background keeps the warped
    image free of artificial edges that would mislead a viewer or a downstream threshold.
    """
    step = max(1, int(np.sqrt(image[0].size / 250_000)))
    sample = image[:, ::step, ::step].astype(np.float64)
    percentile = 99.0 if modality == "brightfield" else 1.0
    values = np.nanpercentile(sample.reshape(sample.shape[0], -1), percentile, axis=1)
    return np.nan_to_num(values, nan=0.0)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range; replace non-finite values by 0."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


class ArrayRegions:
    """Region access to an in-memory ``(C, Y, X)`` array (the interface of ``io.RegionReader``)."""

    thread_safe = True

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        return self.array[:, rows, cols]


def _source_window(coords: np.ndarray, shape: tuple[int, int], margin: int):
    """Rows/cols of the moving image that the sampling coordinates can touch (or None)."""
    finite = np.isfinite(coords).all(axis=0)
    if not finite.any():
        return None
    rows, cols = coords[0][finite], coords[1][finite]
    r0 = max(0, int(np.floor(rows.min())) - margin)
    r1 = min(shape[0], int(np.ceil(rows.max())) + margin + 1)
    c0 = max(0, int(np.floor(cols.min())) - margin)
    c1 = min(shape[1], int(np.ceil(cols.max())) + margin + 1)
    if r1 <= r0 or c1 <= c0:
        return None
    return slice(r0, r1), slice(c0, c1)


def warp_tile(
    source,
    transform: Transform,
    rows: slice,
    cols: slice,
    fill: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Warp one block ``[rows, cols]`` of the fixed grid, reading only the moving pixels it needs.

    Parameters
    ----------
    source : io.RegionReader or ArrayRegions
        The full-resolution moving image, ``shape == (C, Y, X)``.
    fill : ndarray, shape (C,)
        Value per channel outside the moving image.

    Returns
    -------
    ndarray, shape (C, len(rows), len(cols)), ``source.dtype``
    """
    fill_values = _cast(np.asarray(fill, np.float64), source.dtype)
    block_shape = (rows.stop - rows.start, cols.stop - cols.start)
    if order == 1:
        maps = _linear_maps(transform, rows, cols, source.shape[1:])
        if maps == "outside":
            return _filled(fill_values, block_shape, source.dtype)
        if maps is not None:
            window, map_x, map_y, outside = maps
            return _fill_outside(_remap(source.read(*window), map_x, map_y), outside,
                                 fill_values)  # fmt: skip
    coords = transform.moving_coordinates(rows, cols)
    if order == 1:  # the positions as sampled (resample's own rounding is then a no-op)
        coords = np.rint(coords * _QUANTUM) / _QUANTUM
    # Cubic splines are prefiltered over the window: its edge effect decays as 0.27^distance,
    # so 16 px of margin make the result match the whole-image prefilter to ~1e-9.
    window = _source_window(coords, source.shape[1:], margin=16 if order > 1 else 2)
    if window is None:
        return _filled(fill_values, block_shape, source.dtype)
    region = source.read(*window)
    # Coordinates outside the whole image take the fill value; inside, the window holds every
    # neighbour the interpolation needs, so the result equals sampling the whole image.
    outside = ~inside_image(coords[1], coords[0], source.shape)
    values = resample(region, coords, order, origin=(window[0].start, window[1].start))
    return _fill_outside(values, outside, fill_values)


def _filled(fill_values: np.ndarray, shape: tuple[int, int], dtype) -> np.ndarray:
    """A block of ``shape`` holding each channel's fill value (a block outside the image)."""
    out = np.empty((len(fill_values), *shape), dtype=dtype)
    out[:] = fill_values[:, None, None]
    return out


def _fill_outside(values: np.ndarray, outside: np.ndarray | None, fill_values) -> np.ndarray:
    """``values`` with the pixels ``outside`` the moving image set to the fill values."""
    if outside is not None and outside.any():
        values[:, outside] = fill_values[:, None]
    return values


# Sampling positions are placed on a grid of 1/_QUANTUM px of the image's frame: relative to
# a window they are then exact in float32 (windows < 16384 px), so OpenCV sees the same
# numbers for a pixel whatever the tiling; the rounding (≤ 1/2048 px) is far below
# interpolation (OpenCV itself resolves 1/32 px).
_QUANTUM = 1024.0


def _linear_maps(transform: Transform, rows: slice, cols: slice, shape: tuple[int, int]):
    """OpenCV maps for one block (bilinear): ``(window, map_x, map_y, outside)``, the string
    ``"outside"`` when the block maps entirely outside the moving image, or None when the
    separable form does not apply (then the caller samples point by point).

    The window comes from bounds of the separable parts (corners of the affine part plus the
    range of the field's window), so no pass over the block's coordinates is needed for it;
    the outside mask only for blocks whose bounds leave the image.
    """
    parts = transform.separable_parts(rows, cols)
    if parts is None:
        return None
    bounds = []
    for row_term, col_term, fields in parts:
        low = row_term.min() + col_term.min() + sum(f.min() for f, _, _ in fields)
        high = row_term.max() + col_term.max() + sum(f.max() for f, _, _ in fields)
        if not (np.isfinite(low) and np.isfinite(high)):
            return None
        bounds.append((low, high))
    (r_low, r_high), (c_low, c_high) = bounds
    r0, r1 = max(0, int(np.floor(r_low)) - 2), min(shape[0], int(np.ceil(r_high)) + 3)
    c0, c1 = max(0, int(np.floor(c_low)) - 2), min(shape[1], int(np.ceil(c_high)) + 3)
    if r1 <= r0 or c1 <= c0:
        return "outside"
    if max(r1 - r0, c1 - c0) * _QUANTUM >= 2**24:  # float32 would no longer be exact
        return None
    maps = []
    for (row_term, col_term, fields), origin in zip(parts, (r0, c0), strict=True):
        # In quanta relative to the window (the origin, an integer, comes off the row term:
        # exact in float64). The whole sum — fields, row term and column term — is one
        # product: [wy·F | … | r | 1] @ [wx | … | 1 | c]ᵀ, a single pass over the block.
        ones_r, ones_c = np.ones((row_term.size, 1)), np.ones((col_term.size, 1))
        row_q = (row_term * _QUANTUM - origin * _QUANTUM)[:, None]
        col_q = (col_term * _QUANTUM)[:, None]
        left, right = [row_q, ones_r], [ones_c, col_q]
        for field, wy, wx in reversed(fields):
            left.insert(0, wy @ (field * _QUANTUM))
            right.insert(0, wx)
        position = np.hstack(left) @ np.hstack(right).T
        np.rint(position, out=position)
        quantised = np.empty(position.shape, np.float32)
        # integers below 2**24 times a power of two: exact in float32
        np.multiply(position, 1.0 / _QUANTUM, out=quantised, casting="same_kind")
        maps.append(quantised)
    map_y, map_x = maps
    outside = None
    inside = r_low >= -0.5 and r_high <= shape[0] - 0.5 and c_low >= -0.5
    if not (inside and c_high <= shape[1] - 0.5):
        outside = ~inside_image(map_x.astype(np.float64) + c0, map_y.astype(np.float64) + r0,
                                shape)  # fmt: skip
    return (slice(r0, r1), slice(c0, c1)), map_x, map_y, outside


# dtypes cv2.remap interpolates natively (others go through float32)
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def resample(
    region: np.ndarray, coords: np.ndarray, order: int = 1, origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """All channels of ``region`` ``(C, h, w)`` sampled at ``coords`` ``(2, H, W)`` (row, col
    in the frame where the region starts at ``origin``), edges replicated; same dtype out
    (rounded and clipped for integers).

    Order 0 (labels, masks) takes the nearest pixel, exactly, for any dtype. Order 1 uses
    OpenCV's ``remap`` (bilinear, up to four channels at once, the GIL released): within a
    grey level of scipy's ``map_coordinates``, and the same result whatever the tiling.
    Higher orders use scipy's splines.
    """
    dtype = region.dtype
    if order == 0:
        # scipy's rule for order 0: floor(c + 0.5), clamped to the region
        r = np.clip(np.floor(coords[0] + 0.5).astype(np.intp) - origin[0], 0, region.shape[1] - 1)
        c = np.clip(np.floor(coords[1] + 0.5).astype(np.intp) - origin[1], 0, region.shape[2] - 1)
        return region[:, r, c]
    if order == 1:
        maps = [
            (np.rint(coords[axis] * _QUANTUM) / _QUANTUM - origin[axis]).astype(np.float32)
            for axis in (1, 0)
        ]
        return _remap(region, maps[0], maps[1])
    from scipy import ndimage as ndi  # splines only (the point and warp jobs skip scipy)

    local = coords - np.array(origin, np.float64)[:, None, None]
    out = np.empty((region.shape[0], *coords.shape[1:]), dtype)
    for channel in range(region.shape[0]):
        values = ndi.map_coordinates(region[channel].astype(np.float32, copy=False), local,
                                     order=order, mode="nearest", prefilter=True)  # fmt: skip
        out[channel] = _cast(values, dtype)
    return out


def _remap(region: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """OpenCV's bilinear ``remap`` of all channels of ``region`` ``(C, h, w)`` at float32
    maps relative to it (edges replicated); same dtype out (rounded and clipped for
    integers). Up to four channels at once, the GIL released."""
    import cv2

    dtype = region.dtype
    data = region if dtype.type in _CV2_DTYPES else region.astype(np.float32)
    # OpenCV wants interleaved channels: a (C, h, w) view of an interleaved buffer (as
    # RGB tiles are read) costs no copy, and up to four channels come back as one
    interleaved = np.ascontiguousarray(np.moveaxis(data, 0, -1))
    shape = map_x.shape
    if region.shape[0] <= 4:
        warped = cv2.remap(interleaved, map_x, map_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        result = np.moveaxis(warped.reshape(*shape, -1), -1, 0)
    else:
        result = np.empty((region.shape[0], *shape), data.dtype)
        for start in range(0, region.shape[0], 4):  # remap takes at most 4 channels
            part = np.ascontiguousarray(interleaved[..., start : start + 4])
            warped = cv2.remap(part, map_x, map_y, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
            result[start : start + 4] = np.moveaxis(warped.reshape(*shape, -1), -1, 0)
    # integers computed in their own type come back rounded; floats lose NaN/Inf
    return result if result.dtype == dtype and dtype.kind != "f" else _cast(result, dtype)


def tiles(shape: tuple[int, int], tile: int) -> Iterator[tuple[slice, slice]]:
    """Row-major blocks of at most ``tile × tile`` covering ``shape``."""
    for row in range(0, shape[0], tile):
        for col in range(0, shape[1], tile):
            yield slice(row, min(row + tile, shape[0])), slice(col, min(col + tile, shape[1]))


def warp_blocks(
    source,
    transform: Transform,
    fill: np.ndarray | None = None,
    tile: int = 1024,
    order: int = 1,
    threads: int = 1,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Warped ``(tile_row, tile_col, block)`` of the whole fixed grid, row-major.

    Memory is a few tiles plus the source's cache, whatever the image size; with
    ``threads > 1`` the tiles are computed in a thread of their own while the caller (the
    writer) works, so the source is only ever read from one thread.
    """
    if fill is None:
        fill = np.zeros(source.shape[0])
    blocks = list(tiles(transform.fixed_shape, tile))

    def work(block: tuple[slice, slice]) -> tuple[int, int, np.ndarray]:
        rows, cols = block
        data = warp_tile(source, transform, rows, cols, fill, order)
        return rows.start // tile, cols.start // tile, data

    if threads <= 1:
        yield from map(work, blocks)
        return
    # One producer thread computes tiles ahead (numpy and OpenCV, mostly single-core work)
    # while the consumer — the writer, compressing in its own threads without the GIL —
    # takes them: computing and encoding overlap on the two cores. (Several producer
    # threads gain nothing: the per-tile numpy work contends for the GIL.)
    results: queue.Queue = queue.Queue(maxsize=4 * threads)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                if stop.is_set():
                    return
                results.put(work(block))
        except BaseException as error:  # handed to the consumer
            results.put(error)
        results.put(None)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        while (item := results.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                results.get_nowait()
            except queue.Empty:
                producer.join(0.01)


def reuse_freed_memory() -> None:
    """Keep freed large arrays in the process heap instead of returning them to the system
    (glibc ``mallopt``): a warp allocates and frees megabyte arrays per tile, and mapping
    fresh pages for each cost as much as the arithmetic. No effect elsewhere than glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 256 * 2**20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 512 * 2**20)  # M_TRIM_THRESHOLD


def warp_image(
    moving: np.ndarray,
    transform: Transform,
    fill: np.ndarray | None = None,
    tile: int = 1024,
    order: int = 1,
    threads: int = 1,
) -> np.ndarray:
    """Warp all channels of an in-memory ``(C, Y, X)`` image onto the fixed grid.

    Returns
    -------
    ndarray, shape (C, *transform.fixed_shape), ``moving.dtype``
    """
    out = np.empty((moving.shape[0], *transform.fixed_shape), dtype=moving.dtype)
    for row, col, block in warp_blocks(ArrayRegions(moving), transform, fill, tile, order, threads):
        out[
            :, row * tile : row * tile + block.shape[1], col * tile : col * tile + block.shape[2]
        ] = block
    return out


def is_label_image(info) -> bool:
    """A single-channel integer or boolean image: labels or a mask, resampled by nearest
    neighbour so that values are never blended into ones that do not exist."""
    kind = np.dtype(info.dtype).kind
    return info.n_channels == 1 and kind in "iub" and not info.rgb


def warp_file(
    source_path: str,
    transform: Transform,
    output_path: str,
    modality: str,
    pixel_size_um: float | None,
    settings: dict,
    threads: int = 1,
    order: int | None = None,
) -> dict:
    """Warp every channel of an image file onto the fixed grid into a pyramidal OME-TIFF,
    streaming (regions in, tiles out). Returns what was written (for the log).

    Parameters
    ----------
    settings : dict
        The ``warp`` config section (``tile``, ``order``, ``fill``, ``pyramid_min_size``,
        ``compression``, ``format``: ``ome-tiff`` or ``ome-zarr``).
    order : int, optional
        Interpolation order; default 0 for label/mask images, else ``settings["order"]``.
    """
    from .io import RegionReader, read_image, write_image_tiled, writer_options

    with RegionReader(source_path, level=0) as source:
        info = source.info
        labels = is_label_image(info)
        order = (0 if labels else settings["order"]) if order is None else order
        n_channels = 3 if info.rgb and info.n_channels == 4 else info.n_channels  # drop alpha
        if settings["fill"] == "auto" and not labels:
            # The background estimate needs only a coarse view: the smallest pyramid level.
            coarse = read_image(source_path, len(info.level_shapes) - 1)
            fill = background_value(coarse, modality)
        else:
            fill = np.zeros(source.shape[0])
        blocks = warp_blocks(source, transform, fill=fill, tile=settings["tile"], order=order,
                             threads=threads)  # fmt: skip
        write_image_tiled(
            output_path,
            (n_channels, *transform.fixed_shape),
            source.dtype,
            ((row, col, block[:n_channels]) for row, col, block in blocks),
            channel_names=info.channel_names[:n_channels],
            pixel_size_um=pixel_size_um,
            rgb=info.rgb,
            threads=threads,
            labels=order == 0,
            **writer_options(settings),
        )
    return {
        "channels": info.channel_names[:n_channels],
        "dtype": str(source.dtype),
        "shape": transform.fixed_shape,
        "order": order,
        "pixel_size_um": pixel_size_um,
        "dropped_alpha": n_channels < info.n_channels,
    }


def associated_scale(
    shape: tuple[int, int],
    pixel_size_um: float | None,
    moving_shape: tuple[int, int],
    moving_pixel_size_um: float | None,
) -> float:
    """Moving pixels per pixel of an associated image (a label image, a mask, another scan)
    in the moving image's frame: 1 for the same size; else its pixel size must say how it
    relates (both pixel sizes known and the two images covering the same area).

    Raises
    ------
    ValueError
        With what to do, when the sizes differ and the pixel sizes do not explain it.
    """
    if tuple(shape) == tuple(moving_shape):
        return 1.0
    if not (pixel_size_um and moving_pixel_size_um):
        raise ValueError(
            f"is {shape[0]}×{shape[1]} px but the moving image is "
            f"{moving_shape[0]}×{moving_shape[1]} px, and without both pixel sizes their "
            "relation is unknown; export it at the moving image's size or give both pixel sizes"
        )
    factor = moving_pixel_size_um / pixel_size_um  # associated pixels per moving pixel
    expected = tuple(n * factor for n in moving_shape)
    if any(abs(a - e) > max(2.0, 0.01 * e) for a, e in zip(shape, expected, strict=True)):
        raise ValueError(
            f"is {shape[0]}×{shape[1]} px at {pixel_size_um} µm, which does not cover the "
            f"moving image ({moving_shape[0]}×{moving_shape[1]} px at {moving_pixel_size_um} "
            f"µm ≈ {expected[0]:.0f}×{expected[1]:.0f} px at this pixel size)"
        )
    return 1.0 / factor


def associated_transform(transform: Transform, shape: tuple[int, int], scale: float) -> Transform:
    """The fixed → associated-image transform of an image ``scale`` moving pixels per pixel
    (pixel-area convention, as the pyramid levels)."""
    from .transform import compose

    if scale == 1.0 and tuple(shape) == tuple(transform.moving_shape):
        return transform
    inverse = 1.0 / scale
    to_associated = np.array(
        [[inverse, 0.0, 0.5 * inverse - 0.5], [0.0, inverse, 0.5 * inverse - 0.5], [0, 0, 1.0]]
    )
    return compose(transform, Transform.from_affine(to_associated, transform.moving_shape, shape))
