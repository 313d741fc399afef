"""A case's serial sections as one volume: OME-Zarr (NGFF 0.4, axes ``c, z, y, x``) or an
OME-TIFF z-stack, streamed plane by plane and tile by tile (never the volume, nor a whole
plane, in memory).

Plane ``z`` is the ``z``-th section along the block (the images sheet's ``order``) in the
reference frame: the reference itself and every other section's warped output, all on the
reference's grid. Pyramid levels as the 2-D outputs (2× reductions in y and x; z is not
reduced). The z scale is the section thickness.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .formats import RegionReader
from .io import PyramidSink


def _blocks(reader: RegionReader, channels: int, dtype, tile: int):
    """Row-major ``(row, col, block)`` of one plane, padded to ``channels`` with zeros."""
    _, height, width = reader.shape
    for row in range(0, height, tile):
        for col in range(0, width, tile):
            rows, cols = slice(row, min(row + tile, height)), slice(col, min(col + tile, width))
            data = reader.read(rows, cols).astype(dtype, copy=False)
            if data.shape[0] < channels:
                pad = np.zeros((channels - data.shape[0], *data.shape[1:]), dtype)
                data = np.concatenate([data, pad])
            yield row // tile, col // tile, data


def plane_layout(paths: Sequence[str]) -> tuple[tuple[int, int, int], np.dtype, list[str], bool]:
    """``(C, Y, X)``, dtype, channel names and RGB-ness of the volume's planes (every plane
    on one grid; the most channels of any plane, fewer padded with zeros)."""
    shapes, dtypes, names, rgb = [], [], [], True
    for path in paths:
        with RegionReader(path) as reader:
            shapes.append(reader.shape)
            dtypes.append(reader.dtype)
            if len(reader.info.channel_names) > len(names):
                names = list(reader.info.channel_names)
            rgb &= bool(reader.info.rgb)
    grids = {tuple(s[1:]) for s in shapes}
    if len(grids) > 1:
        raise ValueError(f"the planes are on different grids {sorted(grids)}: every plane must "
                         "be on the reference's grid")  # fmt: skip
    channels = max(s[0] for s in shapes)
    names += [f"channel {i}" for i in range(len(names), channels)]
    return (channels, *shapes[0][1:]), np.result_type(*dtypes), names[:channels], rgb


def write_volume_zarr(
    path: str | os.PathLike,
    paths: Sequence[str],
    pixel_size_um: float | None,
    thickness_um: float | None,
    tile: int = 512,
    pyramid_min_size: int = 1024,
    compression: str | None = "zlib",
) -> dict:
    """Write ``paths`` (one image per plane, in order) as an OME-Zarr volume, atomically.

    Returns what was written (shape, dtype, channel names, levels)."""
    import numcodecs
    import zarr

    path = Path(path)
    shape, dtype, names, rgb = plane_layout(paths)
    channels, height, width = shape
    depth = len(paths)
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    stem = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    codec = None if compression in (None, "none") else numcodecs.Zlib(level=6)
    levels = None
    try:
        group = zarr.open_group(str(stem), mode="w", zarr_format=2)
        arrays = []
        for z, plane in enumerate(paths):
            pyramid = PyramidSink(f"{stem}.store", shape, dtype, tile, pyramid_min_size)
            try:
                if not arrays:
                    levels = pyramid.shapes
                    arrays = [
                        group.create_array(
                            str(level), shape=(s[0], depth, *s[1:]), chunks=(1, 1, tile, tile),
                            dtype=dtype, fill_value=0, compressor=codec,
                            chunk_key_encoding={"name": "v2", "separator": "/"},
                        )
                        for level, s in enumerate(levels)
                    ]  # fmt: skip
                with RegionReader(plane) as reader:
                    blocks = _blocks(reader, channels, dtype, tile)
                    for row, col, block in pyramid.feed(blocks):
                        y, x = row * tile, col * tile
                        arrays[0][:, z, y : y + block.shape[1], x : x + block.shape[2]] = block
                for level, store in enumerate(pyramid.levels(), start=1):
                    _, h_level, w_level = store.shape
                    for row in range(store.grid[0]):
                        for col in range(store.grid[1]):
                            y, x = row * tile, col * tile
                            h, w = min(tile, h_level - y), min(tile, w_level - x)
                            arrays[level][:, z, y : y + h, x : x + w] = store.get(row, col)[
                                :, :h, :w
                            ]
            finally:
                pyramid.close()
        unit = {"unit": "micrometer"} if pixel_size_um else {}
        z_unit = {"unit": "micrometer"} if thickness_um else {}
        size, step = float(pixel_size_um or 1.0), float(thickness_um or 1.0)
        colours = ["FF0000", "00FF00", "0000FF"] if rgb and channels == 3 else None
        limit = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
        group.attrs.update({
            "multiscales": [{
                "version": "0.4",
                "name": path.name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "z", "type": "space", **z_unit},
                    {"name": "y", "type": "space", **unit},
                    {"name": "x", "type": "space", **unit},
                ],
                "datasets": [
                    {"path": str(level), "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, step, *[size * 2**level] * 2]}]}
                    for level in range(len(levels))
                ],
                "type": "mean",
            }],
            "omero": {
                "version": "0.4",
                "rgb": bool(colours),
                "channels": [
                    {"label": str(name), "color": colours[i] if colours else "FFFFFF",
                     "active": True,
                     "window": {"start": 0.0, "end": limit, "min": 0.0, "max": limit}}
                    for i, name in enumerate(names)
                ],
            },
        })  # fmt: skip
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(stem, path)
    finally:
        if stem.exists():
            shutil.rmtree(stem, ignore_errors=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp.store*"):
            stale.unlink(missing_ok=True)
    return {"shape": [channels, depth, height, width], "dtype": str(dtype), "channels": names,
            "levels": len(levels)}  # fmt: skip


def write_volume_tiff(
    path: str | os.PathLike,
    volume: str | os.PathLike,
    tile: int = 512,
    compression: str | None = "zlib",
) -> dict:
    """Write an OME-Zarr ``volume`` (:func:`write_volume_zarr`'s) as a pyramidal OME-TIFF
    z-stack with the same levels (``ZCYX``, or ``ZYXS`` when it is 8-bit RGB; the pixel size
    and ``PhysicalSizeZ`` from its scales, where they carry a unit), atomically. Tile by tile
    from the zarr's levels: the planes are not read or reduced again."""
    import tifffile
    import zarr

    path = Path(path)
    group = zarr.open_group(str(volume), mode="r")
    multiscales = group.attrs["multiscales"][0]
    arrays = [group[d["path"]] for d in multiscales["datasets"]]
    channels, depth = arrays[0].shape[:2]
    dtype = np.dtype(arrays[0].dtype)
    names = [c["label"] for c in group.attrs["omero"]["channels"]]
    rgb = bool(group.attrs["omero"]["rgb"]) and channels == 3 and dtype == np.uint8
    scale = multiscales["datasets"][0]["coordinateTransformations"][0]["scale"]
    axes = multiscales["axes"]
    pixel_size_um = float(scale[2]) if "unit" in axes[2] else None
    thickness_um = float(scale[1]) if "unit" in axes[1] else None
    compression = None if compression in (None, "none") else "zlib"
    metadata: dict = {"axes": "ZYXS" if rgb else "ZCYX"}
    if not rgb:
        metadata["Channel"] = {"Name": list(names)}
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="µm",
                        PhysicalSizeY=pixel_size_um, PhysicalSizeYUnit="µm")  # fmt: skip
    if thickness_um:
        metadata.update(PhysicalSizeZ=thickness_um, PhysicalSizeZUnit="µm")

    def tiles(array):
        """The level's tiles in TIFF order (z, then channel unless RGB, then rows and columns),
        each padded to the full tile."""
        _, _, height, width = array.shape
        columns = -(-width // tile)
        for z in range(depth):
            for plane in [None] if rgb else range(channels):
                for y in range(0, height, tile):
                    # a row of tiles per read (one call for its chunks), padded to whole tiles
                    band = np.asarray(array[slice(None) if rgb else plane, z, y : y + tile])
                    padded = np.zeros((*band.shape[:-2], tile, columns * tile), dtype)
                    padded[..., : band.shape[-2], : band.shape[-1]] = band
                    if rgb:
                        padded = np.ascontiguousarray(np.moveaxis(padded, 0, -1))
                    for col in range(columns):
                        yield padded[:, col * tile : (col + 1) * tile]

    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)
    stem = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tifffile.TiffWriter(stem, bigtiff=True, ome=True) as tif:
            for level, array in enumerate(arrays):
                per_cm = 1e4 / (pixel_size_um * 2**level) if pixel_size_um else None
                _, _, h, w = array.shape
                tif.write(
                    tiles(array),
                    shape=(depth, h, w, channels) if rgb else (depth, channels, h, w),
                    dtype=dtype, tile=(tile, tile), compression=compression,
                    photometric="rgb" if rgb else "minisblack",
                    subifds=len(arrays) - 1 if level == 0 else None,
                    subfiletype=1 if level else 0,
                    metadata=metadata if level == 0 else None,
                    resolution=(per_cm, per_cm) if per_cm else None,
                    resolutionunit="CENTIMETER" if per_cm else "NONE",
                )  # fmt: skip
        os.replace(stem, path)
    finally:
        stem.unlink(missing_ok=True)
    return {"shape": [depth, channels, *arrays[0].shape[2:]], "dtype": str(dtype),
            "channels": names, "levels": len(arrays)}  # fmt: skip
