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


def _downsample2(image: np.ndarray) -> np.ndarray:
    """Halve a ``(C, Y, X)`` image by 2×2 block averaging, keeping its dtype."""
    channels, height, width = image.shape
    padded = np.pad(image, ((0, 0), (0, height % 2), (0, width % 2)), mode="edge")
    blocks = padded.reshape(channels, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    mean = blocks.mean(axis=(2, 4), dtype=np.float64)
    if np.issubdtype(image.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(image.dtype)


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
    """A temporary on-disk grid of ``(C, tile, tile)`` blocks, written once, read in any order.

    Plain file reads and writes (no memory map), so the pages do not count against the
    process's resident memory however large the image.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype, tile: int):
        self.path, self.shape, self.dtype, self.tile = path, shape, np.dtype(dtype), tile
        self.grid = (-(-shape[1] // tile), -(-shape[2] // tile))
        self.block_bytes = shape[0] * tile * tile * self.dtype.itemsize
        self._file = open(path, "w+b")  # noqa: SIM115 (closed in close())
        self._file.truncate(self.grid[0] * self.grid[1] * self.block_bytes)

    def _offset(self, row: int, col: int) -> int:
        return (row * self.grid[1] + col) * self.block_bytes

    def put(self, row: int, col: int, block: np.ndarray) -> None:
        padded = np.zeros((self.shape[0], self.tile, self.tile), self.dtype)
        padded[:, : block.shape[1], : block.shape[2]] = block
        self._file.seek(self._offset(row, col))
        self._file.write(padded.tobytes())

    def get(self, row: int, col: int) -> np.ndarray:
        self._file.seek(self._offset(row, col))
        data = self._file.read(self.block_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.shape[0], self.tile, self.tile)

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _halve_store(source: TileStore, path: Path) -> TileStore:
    """The next pyramid level (2×2 block mean) of a tile store, one output tile at a time."""
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
                        ] = _downsample2(part)
            target.put(row, col, block)
    return target


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
) -> None:
    """Stream a ``(C, Y, X)`` image given block by block into a pyramidal OME-TIFF, atomically.

    Memory stays at a few tiles whatever the image size: blocks go to a temporary on-disk tile
    store, from which each pyramid level is derived and written tile by tile.

    Parameters
    ----------
    blocks : iterable of (row, col, ndarray)
        Every ``tile × tile`` block of the grid (edge blocks smaller), any order, each
        ``(C, h, w)``.
    Other parameters as in :func:`write_ome_tiff`.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    rgb = rgb and shape[0] == 3 and dtype == np.uint8
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)
    stem = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    level0 = TileStore(Path(f"{stem}.level0"), shape, dtype, tile)
    stores = [level0]
    try:
        for row, col, block in blocks:
            level0.put(row, col, block)
        while max(stores[-1].shape[1:]) > pyramid_min_size:
            stores.append(_halve_store(stores[-1], Path(f"{stem}.level{len(stores)}")))
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

        def tiles_of(store: TileStore):
            # tifffile wants planes (channels) outermost unless samples are interleaved.
            planes = [None] if rgb else range(store.shape[0])
            for plane in planes:
                for row in range(store.grid[0]):
                    for col in range(store.grid[1]):
                        block = store.get(row, col)
                        yield np.moveaxis(block, 0, -1) if plane is None else block[plane]

        with tifffile.TiffWriter(stem, bigtiff=True, ome=True) as tif:
            for depth, store in enumerate(stores):
                level_shape = (*store.shape[1:], store.shape[0]) if rgb else store.shape
                per_cm = 1e4 / (pixel_size_um * 2**depth) if pixel_size_um else None
                tif.write(
                    tiles_of(store),
                    shape=level_shape,
                    dtype=dtype,
                    tile=(tile, tile),
                    compression=compression,
                    photometric="rgb" if rgb else "minisblack",
                    subifds=len(stores) - 1 if depth == 0 else None,
                    subfiletype=1 if depth else 0,
                    metadata=metadata if depth == 0 else None,
                    resolution=(per_cm, per_cm) if per_cm else None,
                    resolutionunit="CENTIMETER" if per_cm else "NONE",
                )
        os.replace(stem, path)
    finally:
        for store in stores:
            store.close()
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
