"""Reading and writing images: TIFF/OME-TIFF (pyramidal or not), PNG and JPEG.

In memory an image is always channels-first, ``(C, Y, X)``, in its file's dtype. RGB(A)
files keep ``rgb=True`` in their :class:`ImageInfo` so that writers can store them again as
interleaved RGB, which is what slide viewers expect of brightfield images.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = TIFF_SUFFIXES + OTHER_SUFFIXES

# OME length units → micrometres.
_UNIT_TO_UM = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
}


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and what to do."""


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says about its base (full-resolution) image.

    Attributes
    ----------
    path : str
    shape : tuple of int
        ``(Y, X)`` of the full-resolution image.
    n_channels : int
    dtype : str
        numpy dtype name of the pixels.
    channel_names : list of str
        One per channel (OME names when present, else ``C0, C1, …`` or ``R, G, B``).
    pixel_size_um : float or None
        Physical size of one pixel in micrometres (X; Y is assumed equal), if known.
    rgb : bool
        Colour samples are interleaved RGB(A), e.g. a brightfield scan.
    level_shapes : list of tuple of int
        ``(Y, X)`` of each pyramid level, level 0 first.
    """

    path: str
    shape: tuple[int, int]
    n_channels: int
    dtype: str
    channel_names: list[str]
    pixel_size_um: float | None = None
    rgb: bool = False
    level_shapes: list[tuple[int, int]] = field(default_factory=list)


def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


def _ome_pixels_metadata(ome_xml: str) -> tuple[list[str], float | None]:
    """Channel names and physical pixel size (µm) of the first OME image."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return [], None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return [], None
    names = [ch.attrib.get("Name", "") for ch in pixels if ch.tag.endswith("Channel")]
    size = pixels.attrib.get("PhysicalSizeX")
    pixel_size = None
    if size is not None:
        unit = pixels.attrib.get("PhysicalSizeXUnit", "µm")
        try:
            pixel_size = float(size) * _UNIT_TO_UM.get(unit, 1.0)
        except ValueError:
            pixel_size = None
    return names, pixel_size


def _tiff_resolution_um(page: tifffile.TiffPage) -> float | None:
    """Pixel size from the TIFF resolution tags, when they carry a physical unit."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    unit = tags["ResolutionUnit"].value
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    per_unit = num / den  # pixels per unit
    if per_unit == 1.0:  # the writers' default: "not set"
        return None
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit))
    return um_per_unit / per_unit if um_per_unit else None


def _channel_axis_layout(axes: str) -> tuple[str, bool]:
    """Check series axes and tell whether samples are interleaved colour ('S')."""
    extra = [a for a in axes if a not in "YXSC"]
    return "".join(extra), "S" in axes


def _to_cyx(data: np.ndarray, axes: str) -> np.ndarray:
    """Rearrange a tifffile series array to ``(C, Y, X)``, dropping singleton T/Z/Q axes."""
    for ax in list(axes):
        if ax not in "YXSC" and data.shape[axes.index(ax)] == 1:
            data = np.take(data, 0, axis=axes.index(ax))
            axes = axes.replace(ax, "")
    # Treat an unnamed non-spatial axis of a 3-D series as channels.
    axes = "".join("C" if a in "QIZT" else a for a in axes)
    if "S" in axes and "C" in axes:
        raise ImageReadError("images with both channels and colour samples are not supported")
    axes = axes.replace("S", "C")
    if "C" not in axes:
        data = data[np.newaxis]
        axes = "C" + axes
    if sorted(axes) != sorted("CYX"):
        raise ImageReadError(f"cannot interpret image axes {axes!r} as channels, rows, columns")
    return np.moveaxis(data, [axes.index("C"), axes.index("Y"), axes.index("X")], [0, 1, 2])


def _tiff_info(path: str) -> ImageInfo:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        shape = dict(zip(axes, series.shape, strict=True))
        extra, rgb = _channel_axis_layout(axes)
        n_channels = shape.get("S", shape.get("C", 1))
        for ax in extra:
            if shape[ax] != 1:
                if "C" in axes or "S" in axes:
                    raise ImageReadError(
                        f"{path}: series axes {axes!r} have more than channels, rows and "
                        "columns; export a single time point / focal plane"
                    )
                n_channels = shape[ax]
        names: list[str] = []
        pixel_size = None
        if tif.is_ome and tif.ome_metadata:
            names, pixel_size = _ome_pixels_metadata(tif.ome_metadata)
        if pixel_size is None:
            pixel_size = _tiff_resolution_um(series.pages[0] if series.pages else tif.pages[0])
        level_shapes = []
        for level in series.levels:
            lshape = dict(zip(level.axes, level.shape, strict=True))
            level_shapes.append((int(lshape["Y"]), int(lshape["X"])))
        dtype = str(series.dtype)
    if len(names) != n_channels or not all(names):
        names = _default_channel_names(n_channels, rgb)
    return ImageInfo(
        path=str(path),
        shape=(int(shape["Y"]), int(shape["X"])),
        n_channels=int(n_channels),
        dtype=dtype,
        channel_names=names,
        pixel_size_um=pixel_size,
        rgb=rgb and n_channels in (3, 4),
        level_shapes=level_shapes,
    )


def _default_channel_names(n_channels: int, rgb: bool) -> list[str]:
    if rgb and n_channels in (3, 4):
        return ["R", "G", "B", "A"][:n_channels]
    return [f"C{i}" for i in range(n_channels)]


def _plain_image_info(path: str) -> ImageInfo:
    from PIL import Image  # pillow ships with scikit-image (via imageio)

    with Image.open(path) as img:
        width, height = img.size
        mode = img.mode
    bands = {"L": 1, "I;16": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3, "CMYK": 4}
    n_channels = bands.get(mode, 3)
    dtype = {"I;16": "uint16", "I": "int32", "F": "float32"}.get(mode, "uint8")
    rgb = n_channels in (3, 4)
    return ImageInfo(
        path=str(path),
        shape=(height, width),
        n_channels=n_channels,
        dtype=dtype,
        channel_names=_default_channel_names(n_channels, rgb),
        pixel_size_um=None,
        rgb=rgb,
        level_shapes=[(height, width)],
    )


def read_info(path: str | os.PathLike) -> ImageInfo:
    """Read only the header of an image file.

    Raises
    ------
    ImageReadError
        If the file is missing, of an unsupported type, or its header cannot be parsed.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: file not found")
    suffix = _suffix(path)
    try:
        if suffix in TIFF_SUFFIXES:
            return _tiff_info(path)
        if suffix in OTHER_SUFFIXES:
            return _plain_image_info(path)
    except ImageReadError:
        raise
    except Exception as exc:  # any parser failure means "not a readable image"
        raise ImageReadError(
            f"{path}: cannot read the image header ({type(exc).__name__}: {exc}); "
            "check that the file is a complete TIFF/OME-TIFF, PNG or JPEG"
        ) from exc
    raise ImageReadError(
        f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def choose_level(info: ImageInfo, downsample: float) -> int:
    """Index of the coarsest pyramid level that is still at least as fine as ``downsample``.

    Parameters
    ----------
    info : ImageInfo
    downsample : float
        Wanted ratio of full-resolution size to working size (≥ 1).
    """
    best = 0
    for index, (height, width) in enumerate(info.level_shapes):
        level_downsample = max(info.shape[0] / height, info.shape[1] / width)
        if level_downsample <= downsample * (1 + 1e-6):
            best = index
    return best


def read_image(path: str | os.PathLike, level: int = 0) -> np.ndarray:
    """Read the pixels of one pyramid level as ``(C, Y, X)`` in the file's dtype."""
    path = str(path)
    suffix = _suffix(path)
    try:
        if suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                lvl = series.levels[level]
                return _to_cyx(lvl.asarray(), lvl.axes)
        from skimage.io import imread

        data = imread(path)
    except ImageReadError as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise ImageReadError(
            f"{path}: cannot read the pixels ({type(exc).__name__}: {exc}); the file may be "
            "truncated or corrupt — export it again"
        ) from exc
    if data.ndim == 2:
        return data[np.newaxis]
    return np.moveaxis(data, -1, 0)


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


class RegionReader:
    """Rectangular regions of one pyramid level, decoding only the tiles/strips they touch.

    Keeps whole-slide images out of memory: decoded segments are held in a small LRU cache
    (``cache_bytes``), so neighbouring regions do not decode the same tile twice. PNG/JPEG
    files, which cannot be read in parts, are held in memory whole.

    Attributes
    ----------
    shape : tuple of int
        ``(C, Y, X)`` of the level.
    dtype : numpy.dtype
    """

    def __init__(self, path: str | os.PathLike, level: int = 0, cache_bytes: int = 256 * 2**20):
        self.path = str(path)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._tif = None
        self._array = None
        if _suffix(path) not in TIFF_SUFFIXES:
            self._array = read_image(path, 0)
            self.shape, self.dtype = self._array.shape, self._array.dtype
            return
        self._tif = tifffile.TiffFile(self.path)
        series = self._tif.series[0].levels[level]
        axes = series.axes
        pages = list(series.pages)
        shape = dict(zip(axes, series.shape, strict=True))
        height, width = int(shape["Y"]), int(shape["X"])
        samples = int(shape.get("S", 1))
        if samples > 1 and len(pages) > 1:
            raise ImageReadError(
                f"{path}: pages with several colour samples each are not supported"
            )
        # (page, sample) of every channel
        if samples > 1:
            self._channels = [(0, s) for s in range(samples)]
        else:
            self._channels = [(p, 0) for p in range(len(pages))]
        self._pages = pages
        self.shape = (len(self._channels), height, width)
        self.dtype = np.dtype(series.dtype)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _segment(self, page_index: int, index: int) -> tuple[np.ndarray | None, tuple]:
        key = (page_index, index)
        page = self._pages[page_index]
        keyframe = page.keyframe
        if key in self._cache:
            self._cache.move_to_end(key)
            segment = self._cache[key]
        else:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            data = None
            if offset and count:
                fh = self._tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
            segment, _, _ = keyframe.decode(data, index, jpegtables=keyframe.jpegtables)
            if segment is not None:
                segment = np.asarray(segment)
            self._cache[key] = segment
            self._cached += 0 if segment is None else segment.nbytes
            while self._cached > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached -= 0 if old is None else old.nbytes
        return segment

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Pixels ``[:, rows, cols]`` (slices with explicit, in-range start and stop)."""
        if self._array is not None:
            return self._array[:, rows, cols]
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
        out = np.zeros((self.shape[0], r1 - r0, c1 - c0), self.dtype)
        keyframe = self._pages[0].keyframe
        if keyframe.is_tiled:
            seg_h, seg_w = keyframe.tilelength, keyframe.tilewidth
        else:
            seg_h, seg_w = keyframe.rowsperstrip, self.shape[2]
        per_row = -(-self.shape[2] // seg_w)
        for channel, (page_index, sample) in enumerate(self._channels):
            for sy in range(r0 // seg_h, (r1 - 1) // seg_h + 1):
                for sx in range(c0 // seg_w, (c1 - 1) // seg_w + 1):
                    segment = self._segment(page_index, sy * per_row + sx)
                    if segment is None:
                        continue
                    # normalised shape: (separate samples, depth, length, width, contig samples)
                    block = segment.reshape(segment.shape[-3:]) if segment.ndim > 3 else segment
                    block = block[..., sample] if block.ndim == 3 else block
                    y0, x0 = sy * seg_h, sx * seg_w
                    ys, ye = max(r0, y0), min(r1, y0 + block.shape[0], self.shape[1])
                    xs, xe = max(c0, x0), min(c1, x0 + block.shape[1], self.shape[2])
                    if ye > ys and xe > xs:
                        out[channel, ys - r0 : ye - r0, xs - c0 : xe - c0] = block[
                            ys - y0 : ye - y0, xs - x0 : xe - x0
                        ]
        return out


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
