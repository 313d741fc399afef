"""QuPath GeoJSON annotations carried through a registration.

Input: a GeoJSON ``FeatureCollection``, a bare list of ``Feature`` objects (what QuPath
exports) or a single ``Feature``, in one image's level-0 pixel coordinates (x = column,
y = row; QuPath's pixel corners and regflow's pixel centres differ by half a pixel, far below
what a registration resolves, so coordinates are taken as they are) or, with ``unit="um"``,
in micrometres.

Output: the same features in the same order, every key other than ``geometry`` — ``id``,
``properties`` with QuPath's ``objectType``, ``classification``, ``name``, measurements —
untouched; each geometry mapped with the same :func:`regflow.points.map_points` as the
landmarks (so a point and the same landmark agree), in pixels of the target image. Lines and
polygon rings are densified first (``densify_px``) so that a mapped outline follows a
non-rigid deformation between its vertices. A vertex that cannot be mapped (outside the
overlap) is dropped from its geometry, never silently: the feature gets the property
``regflow_unmapped_vertices`` with their number (and ``geometry: null`` when nothing of it
maps). Rings stay closed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .points import map_points
from .transform import Transform

GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
UNMAPPED = "regflow_unmapped_vertices"


class AnnotationError(ValueError):
    """An annotation file cannot be used; the message names the file and what to do."""


def read_features(path: str | os.PathLike) -> tuple[object, list[dict]]:
    """``(container, features)``: the parsed file and its list of features (the container is
    kept so that the output has the input's layout)."""
    try:
        # utf-8-sig: a byte-order mark (some Windows tools write one) is ignored, as RFC 7946
        # allows
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        raise AnnotationError(f"{path}: file not found") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: not a GeoJSON (JSON) file: {exc}") from exc
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        raise AnnotationError(
            f"{path}: expected a GeoJSON FeatureCollection, a list of Features or a Feature "
            "(QuPath: File › Export objects as GeoJSON)"
        )
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: 'features' is not a list")
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationError(f"{path}: item {index} is not a GeoJSON Feature")
        geometry = feature.get("geometry")
        if geometry is not None and geometry.get("type") not in GEOMETRY_TYPES:
            raise AnnotationError(
                f"{path}: feature {index} has geometry type {geometry.get('type')!r}; "
                f"supported: {', '.join(GEOMETRY_TYPES)}"
            )
    return data, features


def densify(coords: np.ndarray, max_length: float) -> tuple[np.ndarray, np.ndarray]:
    """Insert evenly spaced vertices so that no segment is longer than ``max_length``.

    Returns the vertices and a mask of those that were in ``coords`` (the user's).
    """
    coords = np.asarray(coords, np.float64)
    if len(coords) < 2 or not max_length or max_length <= 0:
        return coords, np.ones(len(coords), bool)
    out, original = [coords[:1]], [np.ones(1, bool)]
    for start, stop in zip(coords[:-1], coords[1:], strict=True):
        pieces = max(1, int(np.ceil(np.hypot(*(stop - start)) / max_length)))
        t = np.arange(1, pieces + 1, dtype=np.float64)[:, None] / pieces
        out.append(start + t * (stop - start))
        original.append(np.arange(1, pieces + 1) == pieces)
    return np.concatenate(out), np.concatenate(original)


class _Mapper:
    """Maps one feature's coordinates, counting the user's vertices that could not be mapped."""

    def __init__(self, transform: Transform, direction: str, scale_in: float, densify_px):
        self.transform, self.direction = transform, direction
        self.scale_in, self.densify_px = scale_in, densify_px
        self.unmapped = 0

    def map(self, coords, kind: str = "points") -> np.ndarray:
        """``kind``: ``points`` (as they are), ``line`` (densified) or ``ring`` (densified
        around the loop, returned open)."""
        coords = np.atleast_2d(np.asarray(coords, np.float64))[:, :2] * self.scale_in
        if kind == "ring":
            if len(coords) > 1 and np.array_equal(coords[0], coords[-1]):
                coords = coords[:-1]
            dense, original = densify(np.concatenate([coords, coords[:1]]), self.densify_px)
            dense, original = dense[:-1], original[:-1]
        elif kind == "line":
            dense, original = densify(coords, self.densify_px)
        else:
            dense, original = coords, np.ones(len(coords), bool)
        mapped = map_points(dense, self.transform, self.direction)
        bad = ~np.isfinite(mapped).all(axis=1)
        self.unmapped += int((bad & original).sum())
        return mapped[~bad]

    def line(self, coords) -> list | None:
        mapped = self.map(coords, "line")
        return mapped.tolist() if len(mapped) >= 2 else None

    def polygon(self, rings) -> list | None:
        """Exterior then holes, each closed; None when the exterior does not map."""
        mapped = [self.map(ring, "ring") for ring in rings]
        if len(mapped[0]) < 3:
            return None
        return [np.concatenate([r, r[:1]]).tolist() for r in mapped if len(r) >= 3]


def _map_geometry(geometry: dict | None, mapper: _Mapper) -> dict | None:
    if geometry is None:
        return None
    kind, coords = geometry["type"], geometry.get("coordinates")
    out = {k: v for k, v in geometry.items() if k not in ("coordinates", "geometries")}
    if kind == "GeometryCollection":
        parts = [_map_geometry(g, mapper) for g in geometry.get("geometries", [])]
        out["geometries"] = [p for p in parts if p is not None]
        return out if out["geometries"] else None
    if kind == "Point":
        points = mapper.map([coords])
        mapped = points[0].tolist() if len(points) else None
    elif kind == "MultiPoint":
        mapped = mapper.map(coords).tolist() if coords else None
    elif kind == "LineString":
        mapped = mapper.line(coords)
    elif kind == "Polygon":
        mapped = mapper.polygon(coords)
    else:  # MultiLineString, MultiPolygon: the parts that map
        part = mapper.line if kind == "MultiLineString" else mapper.polygon
        mapped = [p for p in map(part, coords) if p is not None]
    if not mapped:
        return None
    out["coordinates"] = mapped
    return out


def map_features(
    features: list[dict],
    transform: Transform,
    direction: str,
    densify_px: float = 16.0,
    source_pixel_size_um: float | None = None,
    unit: str = "pixel",
) -> list[dict]:
    """The features with their geometries mapped (see the module docstring).

    Parameters
    ----------
    direction : {'moving_to_fixed', 'fixed_to_moving'}
    densify_px : float
        Longest edge, in source pixels, before mapping (0: no densification).
    unit : {'pixel', 'um'}
        Unit of the input coordinates; ``um`` needs ``source_pixel_size_um``. The output is
        always in level-0 pixels of the target image (what QuPath imports).
    """
    if unit not in ("pixel", "um"):
        raise ValueError(f"unknown annotation unit {unit!r}; use pixel or um")
    scale_in = 1.0
    if unit == "um":
        if not source_pixel_size_um:
            raise AnnotationError(
                "annotations in µm need the image's pixel size; give it in the sheet "
                "(*_pixel_size_um) or set annotations.unit: pixel"
            )
        scale_in = 1.0 / source_pixel_size_um
    out = []
    for feature in features:
        mapper = _Mapper(transform, direction, scale_in, densify_px)
        mapped = {key: value for key, value in feature.items()}
        mapped["geometry"] = _map_geometry(feature.get("geometry"), mapper)
        if mapper.unmapped:
            properties = dict(feature.get("properties") or {})
            properties[UNMAPPED] = mapper.unmapped
            mapped["properties"] = properties
        out.append(mapped)
    return out


def write_features(path: str | os.PathLike, container, features: list[dict]) -> None:
    """Write atomically, in the input's layout (collection, list or single feature)."""
    if isinstance(container, list):
        data = features
    elif container.get("type") == "Feature":
        data = features[0]
    else:
        data = {key: value for key, value in container.items()}
        data["features"] = features
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def outlines(features: list[dict]) -> list[np.ndarray]:
    """Every line and ring of the features as ``(n, 2)`` arrays, each point as ``(1, 2)``
    (for figures)."""
    result = []

    def walk(geometry):
        if geometry is None:
            return
        kind, coords = geometry["type"], geometry.get("coordinates")
        if kind == "GeometryCollection":
            for part in geometry.get("geometries", []):
                walk(part)
        elif kind in ("Point", "MultiPoint"):
            result.extend(p[None] for p in np.atleast_2d(np.asarray(coords, np.float64))[:, :2])
        elif kind == "LineString":
            result.append(np.asarray(coords, np.float64)[:, :2])
        elif kind in ("MultiLineString", "Polygon"):
            result.extend(np.asarray(c, np.float64)[:, :2] for c in coords)
        elif kind == "MultiPolygon":
            result.extend(np.asarray(r, np.float64)[:, :2] for p in coords for r in p)

    for feature in features:
        walk(feature.get("geometry"))
    return result


def mask_features(mask: np.ndarray, grid_to_pixels: np.ndarray, name: str) -> list[dict]:
    """QuPath annotations (one ``Feature`` per connected area, holes kept) outlining the
    ``True`` cells of a grid ``mask``; ``grid_to_pixels`` (3×3) maps a node's (column, row) to
    level-0 pixels (x, y), each node standing for the cell half a node around it."""
    from shapely import MultiPolygon, Polygon, box
    from shapely.geometry import mapping
    from shapely.ops import unary_union

    rows, cols = np.nonzero(np.asarray(mask, bool))
    if rows.size == 0:
        return []
    m = np.asarray(grid_to_pixels, np.float64)
    if abs(m[0, 1]) > 1e-12 or abs(m[1, 0]) > 1e-12:
        raise ValueError("mask_features takes an axis-aligned grid (no rotation)")
    sx, sy, tx, ty = m[0, 0], m[1, 1], m[0, 2], m[1, 2]
    cells = [box(sx * (c - 0.5) + tx, sy * (r - 0.5) + ty, sx * (c + 0.5) + tx,
                 sy * (r + 0.5) + ty) for r, c in zip(rows, cols, strict=True)]  # fmt: skip
    merged = unary_union(cells)
    polygons = merged.geoms if isinstance(merged, MultiPolygon) else [merged]
    features = []
    for polygon in polygons:
        if not isinstance(polygon, Polygon) or polygon.is_empty:
            continue
        features.append({
            "type": "Feature",
            "geometry": mapping(polygon.simplify(0.0)),
            "properties": {"objectType": "annotation", "name": name,
                           "classification": {"name": name}},
        })  # fmt: skip
    return features
