"""Writing images: tiled, compressed, pyramidal OME-TIFF, streamed tile by tile.

Reading is :mod:`regflow.formats` (one reader layer for every format); its names are
re-exported here for the callers that read and write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from .formats import (  # noqa: F401 (re-exported)
    ImageInfo,
    ImageReadError,
    RegionReader,
    choose_level,
    open_slide,
    read_image,
    read_info,
    verify_image,
)


def _downsample2(image: np.ndarray, labels: bool = False) -> np.ndarray:
    """Halve a ``(C, Y, X)`` image by 2×2 block averaging, keeping its dtype; ``labels``
    (label images, masks) take one pixel of each block instead: averaging would invent
    labels that exist nowhere."""
    if labels:
        return image[:, ::2, ::2]
    channels, height, width = image.shape
    padded = image
    if height % 2 or width % 2:
        padded = np.pad(image, ((0, 0), (0, height % 2), (0, width % 2)), mode="edge")
    if image.dtype.kind in "iu" and image.dtype.itemsize <= 2:
        return _area_half(padded)  # OpenCV's area mean, exact
    blocks = padded.reshape(channels, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    mean = blocks.mean(axis=(2, 4), dtype=np.float64)
    if np.issubdtype(image.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(image.dtype)


def _area_half(image: np.ndarray) -> np.ndarray:
    """2×2 means of an even-sized ``(C, Y, X)`` image of ≤ 16-bit integers by OpenCV's area
    resampling (the GIL released): unsigned 8/16-bit in their own type, rounded half up as
    integer box filters do (``(a + b + c + d + 2) // 4``), signed ones through float32, rounded
    half to even; interleaved images in one call, planar ones plane by plane (no transposing
    copy)."""
    import cv2

    channels, height, width = image.shape
    size = (width // 2, height // 2)
    native = image.dtype in (np.uint8, np.uint16)

    def half(data: np.ndarray) -> np.ndarray:
        if native:
            return cv2.resize(data, size, interpolation=cv2.INTER_AREA)
        mean = cv2.resize(data.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        return np.rint(mean, out=mean).astype(image.dtype)

    interleaved = np.moveaxis(image, 0, -1)
    if interleaved.flags.c_contiguous and channels <= 4:
        return np.moveaxis(half(interleaved).reshape(size[1], size[0], channels), -1, 0)
    out = np.empty((channels, size[1], size[0]), image.dtype)
    for channel, plane in enumerate(image):
        out[channel] = half(plane if plane.flags.c_contiguous else np.ascontiguousarray(plane))
    return out


def write_ome_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    channel_names: Sequence[str],
    pixel_size_um: float | None = None,
    rgb: bool = False,
    tile: int = 512,
    pyramid_min_size: int = 1024,
    compression: str = "zlib",
) -> None:
    """Write a tiled, compressed, pyramidal OME-TIFF atomically.

    The file is written under a temporary name in the same folder and renamed when complete,
    so a reader (or a rerun) never sees a partial file under ``path``.

    Parameters
    ----------
    path : path-like
    image : ndarray, shape (C, Y, X)
    channel_names : sequence of str, length C
    pixel_size_um : float, optional
        Physical pixel size, written as PhysicalSizeX/Y in µm.
    rgb : bool
        Store 3 uint8 channels as interleaved RGB (what viewers expect of brightfield).
    tile : int
        Tile edge in pixels (multiple of 16).
    pyramid_min_size : int
        Sub-resolution levels (2× each, as SubIFDs) are added until the longest side is
        at most this.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, Y, X) image, got shape {image.shape}")
    if len(channel_names) != image.shape[0]:
        raise ValueError(f"{len(channel_names)} channel names for {image.shape[0]} channels")
    blocks = (
        (row // tile, col // tile, image[:, row : row + tile, col : col + tile])
        for row in range(0, image.shape[1], tile)
        for col in range(0, image.shape[2], tile)
    )
    write_ome_tiff_tiled(
        path,
        image.shape,
        image.dtype,
        blocks,
        channel_names,
        pixel_size_um,
        rgb,
        tile,
        pyramid_min_size,
        compression,
    )


class TileStore:
    """A temporary on-disk grid of ``(C, tile, tile)`` blocks, read and written in any order.

    Stored plane by plane (every channel's tile separately), so that one channel's tile is
    read without the others (TIFF writes multi-channel images plane after plane), or
    ``interleaved``: all channels of a tile in one record, as RGB tiles are written (no
    transposing copy either way). Plain file reads and writes (no memory map): the pages do
    not count against the process's resident memory however large the image.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype, tile: int,
                 interleaved: bool = False):  # fmt: skip
        self.path, self.shape, self.dtype, self.tile = path, shape, np.dtype(dtype), tile
        self.interleaved = interleaved
        self.grid = (-(-shape[1] // tile), -(-shape[2] // tile))
        self.record_shape = (tile, tile, shape[0]) if interleaved else (tile, tile)
        self.record_bytes = int(np.prod(self.record_shape)) * self.dtype.itemsize
        planes = 1 if interleaved else shape[0]
        self._file = open(path, "w+b")  # noqa: SIM115 (closed in close())
        self._file.truncate(planes * self.grid[0] * self.grid[1] * self.record_bytes)

    def _offset(self, plane: int, row: int, col: int) -> int:
        return ((plane * self.grid[0] + row) * self.grid[1] + col) * self.record_bytes

    def _write(self, plane: int, row: int, col: int, record: np.ndarray) -> None:
        self._file.seek(self._offset(plane, row, col))
        self._file.write(memoryview(np.ascontiguousarray(record, self.dtype)).cast("B"))

    def _padded(self, data: np.ndarray) -> np.ndarray:
        """``data`` (``(h, w)`` or ``(h, w, C)``) zero-padded to a full record."""
        if data.shape[:2] == (self.tile, self.tile):
            return data
        record = np.zeros(self.record_shape[:2] + data.shape[2:], self.dtype)
        record[: data.shape[0], : data.shape[1]] = data
        return record

    def put(self, row: int, col: int, block: np.ndarray) -> None:
        """Store ``block`` ``(C, h, w)`` (edge blocks smaller: zero-padded) at ``(row, col)``."""
        if self.interleaved:
            self._write(0, row, col, self._padded(np.moveaxis(block, 0, -1)))
            return
        for plane in range(self.shape[0]):
            self._write(plane, row, col, self._padded(block[plane]))

    def put_plane(self, plane: int, row: int, col: int, data: np.ndarray) -> None:
        """Store one channel ``(h, w)`` of the block at ``(row, col)`` (planar stores)."""
        self._write(plane, row, col, self._padded(data))

    def record(self, plane: int, row: int, col: int) -> np.ndarray:
        """The stored ``(tile, tile)`` plane, or ``(tile, tile, C)`` record if interleaved."""
        self._file.seek(self._offset(plane, row, col))
        data = self._file.read(self.record_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.record_shape)

    def get_plane(self, plane: int, row: int, col: int) -> np.ndarray:
        if self.interleaved:
            return self.record(0, row, col)[..., plane]
        return self.record(plane, row, col)

    def get(self, row: int, col: int) -> np.ndarray:
        if self.interleaved:
            return np.moveaxis(self.record(0, row, col), -1, 0)
        return np.stack([self.record(p, row, col) for p in range(self.shape[0])])

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def pyramid_shapes(shape: tuple[int, ...], min_size: int) -> list[tuple[int, ...]]:
    """``(C, Y, X)`` of every pyramid level: 2× reductions until the longest side ≤ min_size."""
    shapes = [tuple(shape)]
    while max(shapes[-1][1:]) > min_size:
        c, h, w = shapes[-1]
        shapes.append((c, max(1, -(-h // 2)), max(1, -(-w // 2))))
    return shapes


class PyramidLevel:
    """Reduced level ``k ≥ 1`` of a pyramid being written, as the ``(C, tile, tile)`` tiles of
    :class:`TileStore` (``shape``, ``grid``, ``get``, ``get_plane``).

    Held as quarter tiles: the 2× reduction (:func:`_downsample2`) of each tile of level
    ``k − 1`` is one quarter of a tile here, written once, in any order; a tile is assembled
    from its four quarters when read. Reading a tile also reduces it into the next level, so
    every level is built from the one before as that is written, and nothing is read twice.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype, tile: int,
                 interleaved: bool, labels: bool):  # fmt: skip
        if tile % 2:
            raise ValueError(f"pyramid tiles must have an even size, not {tile}")
        self.shape, self.tile, self.labels = shape, tile, labels
        self.grid = (-(-shape[1] // tile), -(-shape[2] // tile))
        self.quarters = TileStore(path, shape, dtype, tile // 2, interleaved)
        self.next: PyramidLevel | None = None
        self._reduced: set[tuple] = set()

    def put_reduced(self, row: int, col: int, block: np.ndarray) -> None:
        """Quarter ``(row, col)``: the reduction of the previous level's tile ``(row, col)``
        (``(C, h, w)``, its part inside the image)."""
        self.quarters.put(row, col, _downsample2(block, self.labels))

    def _assemble(self, plane: int, row: int, col: int) -> np.ndarray:
        quarter = self.tile // 2
        store = self.quarters
        out = np.zeros((self.tile, self.tile) + store.record_shape[2:], store.dtype)
        for dy in range(2):
            for dx in range(2):
                r, c = 2 * row + dy, 2 * col + dx
                if r < store.grid[0] and c < store.grid[1]:
                    out[dy * quarter : (dy + 1) * quarter, dx * quarter : (dx + 1) * quarter] = (
                        store.record(plane, r, c)
                    )
        return out

    def _valid(self, row: int, col: int) -> tuple[int, int]:
        return (min(self.tile, self.shape[1] - row * self.tile),
                min(self.tile, self.shape[2] - col * self.tile))  # fmt: skip

    def get(self, row: int, col: int) -> np.ndarray:
        if not self.quarters.interleaved:
            return np.stack([self.get_plane(p, row, col) for p in range(self.shape[0])])
        block = np.moveaxis(self._assemble(0, row, col), -1, 0)
        if self.next is not None and (None, row, col) not in self._reduced:
            h, w = self._valid(row, col)
            self.next.put_reduced(row, col, block[:, :h, :w])
            self._reduced.add((None, row, col))
        return block

    def get_plane(self, plane: int, row: int, col: int) -> np.ndarray:
        if self.quarters.interleaved:
            return self.get(row, col)[plane]
        data = self._assemble(plane, row, col)
        if self.next is not None and (plane, row, col) not in self._reduced:
            h, w = self._valid(row, col)
            half = _downsample2(data[None, :h, :w], self.labels)[0]
            self.next.quarters.put_plane(plane, row, col, half)
            self._reduced.add((plane, row, col))
        return data

    def complete(self) -> None:
        """Reduce the tiles no reader asked for into the next level (normally none)."""
        if self.next is None:
            return
        planes = [None] if self.quarters.interleaved else range(self.shape[0])
        for row in range(self.grid[0]):
            for col in range(self.grid[1]):
                for plane in planes:
                    if (plane, row, col) in self._reduced:
                        continue  # already reduced when it was read: not read again
                    if plane is None:
                        self.get(row, col)
                    else:
                        self.get_plane(plane, row, col)

    def close(self) -> None:
        self.quarters.close()


class PyramidSink:
    """Builds pyramid levels 1… from level-0 blocks as they arrive, without reading level 0
    back: each block is reduced into its quarter of level 1 on the spot; each level ``k`` is
    reduced into level ``k + 1`` as it is read for writing (:class:`PyramidLevel`).

    Temporary stores live beside ``stem``; :meth:`close` removes them.
    """

    def __init__(self, stem: str, shape: tuple[int, int, int], dtype, tile: int, min_size: int,
                 labels: bool = False, interleaved: bool = False):  # fmt: skip
        self.shapes = pyramid_shapes(shape, min_size)
        self.stores: list[PyramidLevel] = []
        for depth, level_shape in enumerate(self.shapes[1:], start=1):
            level = PyramidLevel(Path(f"{stem}.level{depth}"), level_shape, dtype, tile,
                                 interleaved, labels)  # fmt: skip
            if self.stores:
                self.stores[-1].next = level
            self.stores.append(level)

    def feed(self, blocks):
        """Pass level-0 ``(row, col, block)`` through, reducing each into level 1."""
        for row, col, block in blocks:
            if self.stores:
                self.stores[0].put_reduced(row, col, block)
            yield row, col, block

    def levels(self):
        """Levels 1…, each complete when given (its predecessor has been read through)."""
        for depth, level in enumerate(self.stores):
            if depth:
                self.stores[depth - 1].complete()
            yield level

    def close(self) -> None:
        for store in self.stores:
            store.close()


def _row_major(blocks, grid: tuple[int, int], tile: int, channels: int, dtype):
    """Full ``(C, tile, tile)`` blocks in row-major order (edge blocks zero-padded)."""
    expected = ((r, c) for r in range(grid[0]) for c in range(grid[1]))
    for (row, col, block), position in zip(blocks, expected, strict=True):
        if (row, col) != position:
            raise ValueError(f"blocks must come in row-major order: got {(row, col)} for "
                             f"{position}")  # fmt: skip
        if block.shape[1:] != (tile, tile):
            padded = np.zeros((channels, tile, tile), dtype)
            padded[:, : block.shape[1], : block.shape[2]] = block
            block = padded
        yield block


def _encoded_ahead(tiles, encode, threads: int):
    """``encode(tile)`` of every tile, in order, computed on ``threads`` threads up to
    ``2 × threads`` tiles ahead of the consumer.

    A continuous pipeline: tifffile's own parallel encoder takes its tiles in batches and
    waits for each batch to be written before it collects the next, so its threads idle while
    the next tiles are computed. The codec releases the GIL.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for tile in tiles:
            pending.append(pool.submit(encode, np.ascontiguousarray(tile)))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_ome_tiff_tiled(
    path: str | os.PathLike,
    shape: tuple[int, int, int],
    dtype,
    blocks,
    channel_names: Sequence[str],
    pixel_size_um: float | None = None,
    rgb: bool = False,
    tile: int = 512,
    pyramid_min_size: int = 1024,
    compression: str | None = "zlib",
    threads: int = 1,
    labels: bool = False,
    jpeg_quality: int = 90,
) -> None:
    """Stream a ``(C, Y, X)`` image given block by block into a pyramidal OME-TIFF, atomically.

    Memory stays at a few tiles whatever the image size. Interleaved (RGB) and single-channel
    images are written as the blocks arrive; multi-channel ones, which TIFF stores plane
    after plane, go through a temporary on-disk tile store first. The reduced levels are built
    from the blocks as they pass (:class:`PyramidSink`), never by reading level 0 back.

    Parameters
    ----------
    blocks : iterable of (row, col, ndarray)
        Every ``tile × tile`` block of the grid in row-major order (edge blocks smaller),
        each ``(C, h, w)``.
    threads : int
        Tiles compressed in parallel.
    labels : bool
        A label image or mask: reduced levels take one pixel per 2×2 block (never a mean).
    compression : {'zlib', 'jpeg', None}
        ``jpeg`` (lossy, ``jpeg_quality``) applies to 8-bit RGB images only — the
        compression brightfield scanners use themselves, so outputs stay near the size of
        their inputs; fluorescence, other quantitative and label images are written with
        zlib (lossless) whatever is asked.
    Other parameters as in :func:`write_ome_tiff`.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    rgb = rgb and shape[0] == 3 and dtype == np.uint8
    options = {}
    if compression == "jpeg":
        if rgb and not labels:
            options = {"compressionargs": {"level": int(jpeg_quality)}}
        else:
            compression = "zlib"
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)
    stem = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pyramid = PyramidSink(str(stem), shape, dtype, tile, pyramid_min_size, labels, interleaved=rgb)
    level0 = None
    try:
        metadata: dict = {"axes": "YXS" if rgb else "CYX"}
        if not rgb:
            metadata["Channel"] = {"Name": list(channel_names)}
        if pixel_size_um:
            metadata.update(
                PhysicalSizeX=float(pixel_size_um),
                PhysicalSizeXUnit="µm",
                PhysicalSizeY=float(pixel_size_um),
                PhysicalSizeYUnit="µm",
            )
        grid = (-(-shape[1] // tile), -(-shape[2] // tile))

        def planes_of(full_blocks):
            # tifffile wants planes (channels) outermost unless samples are interleaved.
            for block in full_blocks:
                yield np.moveaxis(block, 0, -1) if rgb else block[0]

        def tiles_of(store: TileStore):
            for plane in [None] if rgb else range(store.shape[0]):
                for row in range(store.grid[0]):
                    for col in range(store.grid[1]):
                        if plane is None:
                            yield np.moveaxis(store.get(row, col), 0, -1)
                        else:
                            yield store.get_plane(plane, row, col)

        def write(tif, data, level_shape, depth):
            per_cm = 1e4 / (pixel_size_um * 2**depth) if pixel_size_um else None
            # (a boolean image is written as 1-bit bilevel: tifffile packs it before encoding)
            if compression == "zlib" and threads > 1 and dtype.kind != "b":
                deflate = tifffile.TIFF.COMPRESSORS[tifffile.COMPRESSION.ADOBE_DEFLATE]
                data = _encoded_ahead(data, deflate, threads)
            tif.write(
                data,
                shape=(*level_shape[1:], level_shape[0]) if rgb else level_shape,
                dtype=dtype,
                tile=(tile, tile),
                compression=compression,
                **options,
                photometric="rgb" if rgb else "minisblack",
                subifds=len(pyramid.shapes) - 1 if depth == 0 else None,
                subfiletype=1 if depth else 0,
                metadata=metadata if depth == 0 else None,
                resolution=(per_cm, per_cm) if per_cm else None,
                resolutionunit="CENTIMETER" if per_cm else "NONE",
                maxworkers=threads,
                # tifffile buffers this much between reading and encoding (default 512 MiB)
                buffersize=8 * tile * tile * dtype.itemsize * (3 if rgb else 1),
            )

        with tifffile.TiffWriter(stem, bigtiff=True, ome=True) as tif:
            passing = pyramid.feed(blocks)
            if rgb or shape[0] == 1:  # streamed as the blocks arrive
                write(tif, planes_of(_row_major(passing, grid, tile, shape[0], dtype)), shape, 0)
            else:
                level0 = TileStore(Path(f"{stem}.level0"), shape, dtype, tile)
                for row, col, block in passing:
                    level0.put(row, col, block)
                write(tif, tiles_of(level0), shape, 0)
                level0.close()
                level0 = None
            for depth, store in enumerate(pyramid.levels(), start=1):
                write(tif, tiles_of(store), store.shape, depth)
        os.replace(stem, path)
    finally:
        pyramid.close()
        if level0 is not None:
            level0.close()
        stem.unlink(missing_ok=True)


def stacked_blocks(readers: Sequence, dtype, tile: int = 512):
    """Blocks of several same-grid images' channels stacked, for a merged stream.

    Parameters
    ----------
    readers : sequence of RegionReader-like
        ``.shape == (C_i, Y, X)`` with one ``(Y, X)`` and ``.read(rows, cols)``.
    dtype : numpy dtype of the stack (every source is cast to it).

    Yields
    ------
    (row, col, ndarray)
        Every ``tile × tile`` block of the grid, ``(ΣC_i, h, w)``: only one block of every
        source is in memory at a time.
    """
    height, width = readers[0].shape[1:]
    for reader in readers[1:]:
        if tuple(reader.shape[1:]) != (height, width):
            raise ValueError(f"grid {reader.shape[1:]} differs from {(height, width)}")
    for row in range(0, height, tile):
        for col in range(0, width, tile):
            rows, cols = slice(row, min(row + tile, height)), slice(col, min(col + tile, width))
            block = np.concatenate([r.read(rows, cols).astype(dtype, copy=False) for r in readers])
            yield row // tile, col // tile, block


def write_ome_zarr_tiled(
    path: str | os.PathLike,
    shape: tuple[int, int, int],
    dtype,
    blocks,
    channel_names: Sequence[str],
    pixel_size_um: float | None = None,
    rgb: bool = False,
    tile: int = 512,
    pyramid_min_size: int = 1024,
    compression: str | None = "zlib",
    threads: int = 1,
    labels: bool = False,
    jpeg_quality: int = 90,
) -> None:
    """Stream a ``(C, Y, X)`` image into an OME-Zarr (NGFF 0.4: Zarr v2, ``/``-separated
    chunks), atomically: a temporary folder renamed when complete.

    Levels ``0, 1, …`` (2× each, as :func:`write_ome_tiff_tiled`) with ``multiscales`` axes
    ``c, y, x`` (µm units when the pixel size is known) and ``coordinateTransformations``
    scale = the pixel size × 2^level, and ``omero`` channel labels (RGB images get red, green
    and blue). Chunks are ``(1, tile, tile)``; blocks may come in any order.
    """
    import shutil

    import numcodecs
    import zarr

    if compression not in (None, "zlib"):
        # OME-Zarr readers (napari-ome-zarr, vizarr) decode the standard codecs only;
        # ``jpeg_quality`` is accepted for the signature shared with the OME-TIFF writer
        raise ValueError(f"compression {compression!r} is for OME-TIFF; OME-Zarr takes zlib "
                         "or none")  # fmt: skip
    path = Path(path)
    dtype = np.dtype(dtype)
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    stem = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pyramid = PyramidSink(f"{stem}.store", shape, dtype, tile, pyramid_min_size, labels)
    codec = None if compression is None else numcodecs.Zlib(level=6)
    try:
        group = zarr.open_group(str(stem), mode="w", zarr_format=2)
        arrays = [
            group.create_array(
                str(depth),
                shape=level_shape,
                chunks=(1, tile, tile),
                dtype=dtype,
                fill_value=0,
                compressor=codec,
                chunk_key_encoding={"name": "v2", "separator": "/"},
            )
            for depth, level_shape in enumerate(pyramid.shapes)
        ]
        for row, col, block in pyramid.feed(blocks):
            y, x = row * tile, col * tile
            arrays[0][:, y : y + block.shape[1], x : x + block.shape[2]] = block
        for depth, store in enumerate(pyramid.levels(), start=1):
            _, height, width = store.shape
            for row in range(store.grid[0]):
                for col in range(store.grid[1]):
                    y, x = row * tile, col * tile
                    h, w = min(tile, height - y), min(tile, width - x)
                    arrays[depth][:, y : y + h, x : x + w] = store.get(row, col)[:, :h, :w]
        unit = {"unit": "micrometer"} if pixel_size_um else {}
        size = float(pixel_size_um or 1.0)
        colours = ["FF0000", "00FF00", "0000FF"] if rgb and shape[0] == 3 else None
        limit = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
        group.attrs.update(
            {
                "multiscales": [
                    {
                        "version": "0.4",
                        "name": path.name,
                        "axes": [
                            {"name": "c", "type": "channel"},
                            {"name": "y", "type": "space", **unit},
                            {"name": "x", "type": "space", **unit},
                        ],
                        "datasets": [
                            {
                                "path": str(depth),
                                "coordinateTransformations": [
                                    {"type": "scale", "scale": [1.0, *[size * 2**depth] * 2]}
                                ],
                            }
                            for depth in range(len(pyramid.shapes))
                        ],
                        "type": "mean",
                    }
                ],
                "omero": {
                    "version": "0.4",
                    "rgb": bool(colours),
                    "channels": [
                        {
                            "label": str(name),
                            "color": colours[i] if colours else "FFFFFF",
                            "active": True,
                            "window": {"start": 0.0, "end": limit, "min": 0.0, "max": limit},
                        }
                        for i, name in enumerate(channel_names)
                    ],
                },
            }
        )
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(stem, path)
    finally:
        pyramid.close()
        if stem.exists():
            shutil.rmtree(stem, ignore_errors=True)


def writer_options(settings: dict) -> dict:
    """The :func:`write_image_tiled` keywords the ``warp`` config section sets (tile,
    pyramid, compression, format), for every image the workflow writes."""
    compression = settings.get("compression", "zlib")
    return {
        "tile": settings["tile"],
        "pyramid_min_size": settings["pyramid_min_size"],
        "compression": None if compression == "none" else compression,
        "jpeg_quality": settings.get("jpeg_quality", 90),
        "fmt": settings.get("format", "ome-tiff"),
    }


def write_image_tiled(path: str | os.PathLike, *args, fmt: str = "ome-tiff", **kwargs) -> None:
    """:func:`write_ome_tiff_tiled` or :func:`write_ome_zarr_tiled` (``fmt``)."""
    if fmt == "ome-zarr":
        return write_ome_zarr_tiled(path, *args, **kwargs)
    if fmt == "ome-tiff":
        return write_ome_tiff_tiled(path, *args, **kwargs)
    raise ValueError(f"unknown image format {fmt!r}; use ome-tiff or ome-zarr")
