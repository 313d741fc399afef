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
        # OpenCV's area mean in float32 (exact: a quarter of a sum of four 16-bit values),
        # rounded half to even as np.rint(mean) would
        return _area_half(padded)
    blocks = padded.reshape(channels, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    mean = blocks.mean(axis=(2, 4), dtype=np.float64)
    if np.issubdtype(image.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(image.dtype)


def _area_half(image: np.ndarray) -> np.ndarray:
    """2×2 means of an even-sized ``(C, Y, X)`` image of ≤ 16-bit integers, rounded half to
    even, by OpenCV (the GIL released): interleaved images in one call, planar ones plane by
    plane (no transposing copy)."""
    import cv2

    channels, height, width = image.shape
    size = (width // 2, height // 2)
    interleaved = np.moveaxis(image, 0, -1)
    if interleaved.flags.c_contiguous and channels <= 4:
        mean = cv2.resize(interleaved.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        mean = mean.reshape(size[1], size[0], channels)
        return np.moveaxis(np.rint(mean, out=mean).astype(image.dtype), -1, 0)
    out = np.empty((channels, size[1], size[0]), image.dtype)
    for channel, plane in enumerate(image):
        mean = cv2.resize(plane.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        out[channel] = np.rint(mean, out=mean)
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
    read without the others (TIFF writes multi-channel images plane after plane). Plain file
    reads and writes (no memory map): the pages do not count against the process's resident
    memory however large the image.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype, tile: int):
        self.path, self.shape, self.dtype, self.tile = path, shape, np.dtype(dtype), tile
        self.grid = (-(-shape[1] // tile), -(-shape[2] // tile))
        self.plane_bytes = tile * tile * self.dtype.itemsize
        self._file = open(path, "w+b")  # noqa: SIM115 (closed in close())
        self._file.truncate(shape[0] * self.grid[0] * self.grid[1] * self.plane_bytes)

    def _offset(self, plane: int, row: int, col: int) -> int:
        return ((plane * self.grid[0] + row) * self.grid[1] + col) * self.plane_bytes

    def put(self, row: int, col: int, block: np.ndarray) -> None:
        padded = np.zeros((self.shape[0], self.tile, self.tile), self.dtype)
        padded[:, : block.shape[1], : block.shape[2]] = block
        for plane in range(self.shape[0]):
            self._file.seek(self._offset(plane, row, col))
            self._file.write(padded[plane].tobytes())

    def put_part(self, row: int, col: int, y0: int, x0: int, data: np.ndarray) -> None:
        """Write ``data`` ``(C, h, w)`` at ``(y0, x0)`` inside block ``(row, col)``."""
        block = self.get(row, col)
        block[:, y0 : y0 + data.shape[1], x0 : x0 + data.shape[2]] = data
        self.put(row, col, block)

    def get_plane(self, plane: int, row: int, col: int) -> np.ndarray:
        self._file.seek(self._offset(plane, row, col))
        data = self._file.read(self.plane_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.tile, self.tile)

    def get(self, row: int, col: int) -> np.ndarray:
        return np.stack([self.get_plane(p, row, col) for p in range(self.shape[0])])

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _halve_store(source: TileStore, path: Path, labels: bool = False) -> TileStore:
    """The next pyramid level (:func:`_downsample2`) of a tile store, one output tile at a
    time."""
    channels, height, width = source.shape
    shape = (channels, max(1, -(-height // 2)), max(1, -(-width // 2)))
    target = TileStore(path, shape, source.dtype, source.tile)
    half = source.tile // 2
    for row in range(target.grid[0]):
        for col in range(target.grid[1]):
            block = np.zeros((channels, source.tile, source.tile), source.dtype)
            for dy in range(2):
                for dx in range(2):
                    r, c = 2 * row + dy, 2 * col + dx
                    if r < source.grid[0] and c < source.grid[1]:
                        y0, y1 = r * source.tile, min((r + 1) * source.tile, height)
                        x0, x1 = c * source.tile, min((c + 1) * source.tile, width)
                        part = source.get(r, c)[:, : y1 - y0, : x1 - x0]
                        block[
                            :,
                            dy * half : dy * half + -(-part.shape[1] // 2),
                            dx * half : dx * half + -(-part.shape[2] // 2),
                        ] = _downsample2(part, labels)
            target.put(row, col, block)
    return target


def pyramid_shapes(shape: tuple[int, ...], min_size: int) -> list[tuple[int, ...]]:
    """``(C, Y, X)`` of every pyramid level: 2× reductions until the longest side ≤ min_size."""
    shapes = [tuple(shape)]
    while max(shapes[-1][1:]) > min_size:
        c, h, w = shapes[-1]
        shapes.append((c, max(1, -(-h // 2)), max(1, -(-w // 2))))
    return shapes


def _put_half(
    store: TileStore, row: int, col: int, block: np.ndarray, labels: bool = False
) -> None:
    """Put the 2× reduction of level-``k`` tile ``(row, col)`` into its quarter of the
    level-``k+1`` store (the same result as halving the whole level, tile by tile)."""
    half = _downsample2(block, labels)
    y0, x0 = (row % 2) * store.tile // 2, (col % 2) * store.tile // 2
    store.put_part(row // 2, col // 2, y0, x0, half)


class PyramidSink:
    """Builds pyramid levels 1… from level-0 blocks as they arrive, without reading level 0
    back: each block is halved into its quarter of a level-1 tile store on the spot; levels
    2… are then derived from level 1 (a quarter of the data) tile by tile.

    Temporary stores live beside ``stem``; :meth:`close` removes them.
    """

    def __init__(self, stem: str, shape: tuple[int, int, int], dtype, tile: int, min_size: int,
                 labels: bool = False):  # fmt: skip
        self.stem, self.tile, self.labels = stem, tile, labels
        self.shapes = pyramid_shapes(shape, min_size)
        self.dtype = np.dtype(dtype)
        self.stores: list[TileStore] = []
        if len(self.shapes) > 1:
            self.stores.append(TileStore(Path(f"{stem}.level1"), self.shapes[1], dtype, tile))

    def feed(self, blocks):
        """Pass level-0 ``(row, col, block)`` through, halving each into level 1."""
        for row, col, block in blocks:
            if self.stores:
                _put_half(self.stores[0], row, col, block, self.labels)
            yield row, col, block

    def levels(self):
        """The level-1… stores, each derived from the previous when first asked for."""
        for depth in range(1, len(self.shapes)):
            if depth > len(self.stores):
                path = Path(f"{self.stem}.level{depth}")
                self.stores.append(_halve_store(self.stores[-1], path, self.labels))
            yield self.stores[depth - 1]

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
    pyramid = PyramidSink(str(stem), shape, dtype, tile, pyramid_min_size, labels)
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
