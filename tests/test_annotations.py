"""QuPath GeoJSON through a registration: every geometry, properties untouched, units."""

import json

import numpy as np
import pytest
import shapely
import shapely.geometry
from regflow.annotations import (
    UNMAPPED,
    AnnotationError,
    densify,
    map_features,
    read_features,
    write_features,
)
from regflow.points import map_points
from regflow.transform import Transform

SHAPE = (400, 500)


def _transform(amplitude=5.0):
    """Rotation + shift + a smooth non-rigid field, fixed (400×500) → moving (same size)."""
    angle = np.deg2rad(8)
    affine = np.array([[np.cos(angle), -np.sin(angle), 30.0],
                       [np.sin(angle), np.cos(angle), -12.0], [0, 0, 1]])  # fmt: skip
    grid = (50, 60)
    yy, xx = np.mgrid[: grid[0], : grid[1]]
    field = amplitude * np.stack([np.sin(yy / 8.0), np.cos(xx / 9.0)]).astype(np.float32)
    sy, sx = grid[0] / SHAPE[0], grid[1] / SHAPE[1]
    to_grid = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return Transform(affine, field, to_grid, SHAPE, SHAPE)


def _feature(geometry, **properties):
    props = {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
             "name": "région 1"} | properties  # fmt: skip
    return {"type": "Feature", "id": "a3b1-uuid", "geometry": geometry, "properties": props}


SQUARE = [[150, 150], [250, 150], [250, 250], [150, 250], [150, 150]]
HOLE = [[180, 180], [180, 220], [220, 220], [220, 180], [180, 180]]
GEOMETRIES = {
    "Point": {"type": "Point", "coordinates": [200.0, 180.0]},
    "MultiPoint": {"type": "MultiPoint", "coordinates": [[160, 170], [240, 230]]},
    "LineString": {"type": "LineString", "coordinates": [[140, 160], [260, 240]]},
    "MultiLineString": {"type": "MultiLineString",
                        "coordinates": [[[140, 160], [260, 240]], [[150, 250], [250, 150]]]},
    "Polygon": {"type": "Polygon", "coordinates": [SQUARE, HOLE]},
    "MultiPolygon": {"type": "MultiPolygon",
                     "coordinates": [[SQUARE], [[[300, 100], [360, 100], [330, 160], [300, 100]]]]},
}  # fmt: skip


def _rings(geometry):
    if geometry["type"] == "MultiLineString":
        return geometry["coordinates"]
    if geometry["type"] == "Polygon":
        return geometry["coordinates"]
    return [r for p in geometry["coordinates"] for r in p]


@pytest.mark.parametrize("kind", list(GEOMETRIES))
def test_every_geometry_round_trips(kind):
    transform = _transform()
    features = [_feature(GEOMETRIES[kind])]
    there = map_features(features, transform, "fixed_to_moving", densify_px=10)
    back = map_features(there, transform, "moving_to_fixed", densify_px=0)
    assert back[0]["geometry"]["type"] == kind
    original = shapely.geometry.shape(GEOMETRIES[kind])
    returned = shapely.geometry.shape(back[0]["geometry"])
    # every returned vertex lies on the original geometry (densified vertices included)
    target = original.boundary if kind in ("Polygon", "MultiPolygon") else original
    distances = [target.distance(shapely.Point(p)) for p in shapely.get_coordinates(returned)]
    assert max(distances) < 0.5, kind
    if kind in ("Polygon", "MultiPolygon"):
        mapped = shapely.geometry.shape(there[0]["geometry"])
        assert mapped.is_valid and returned.is_valid  # closed rings, no self-intersection
        assert abs(returned.area - original.area) / original.area < 0.01
        for ring in _rings(there[0]["geometry"]):
            assert ring[0] == ring[-1]
    assert UNMAPPED not in back[0]["properties"]


def test_a_point_and_the_same_landmark_agree():
    transform = _transform()
    point = np.array([[212.3, 187.9]])
    feature = _feature({"type": "Point", "coordinates": point[0].tolist()})
    mapped = map_features([feature], transform, "moving_to_fixed")[0]["geometry"]["coordinates"]
    np.testing.assert_allclose(mapped, map_points(point, transform, "moving_to_fixed")[0])


def test_a_densified_outline_follows_the_field():
    transform = _transform(amplitude=12.0)
    edge = {"type": "LineString", "coordinates": [[100, 200], [300, 200]]}
    mapped = map_features([_feature(edge)], transform, "fixed_to_moving", densify_px=5)
    coords = np.asarray(mapped[0]["geometry"]["coordinates"])
    assert len(coords) == 41  # 200 px in 5 px steps
    # each inserted midpoint lands where the field puts the point it came from
    source, _ = densify(np.asarray(edge["coordinates"], float), 5)
    np.testing.assert_allclose(coords, transform.fixed_to_moving(source), atol=1e-9)
    straight = np.linspace(coords[0], coords[-1], len(coords))
    assert np.abs(coords - straight).max() > 3  # the field bends the edge: not a chord


def test_properties_ids_and_order_are_kept_byte_for_byte(tmp_path):
    features = [_feature(GEOMETRIES[k], measurements={"Area µm^2": 1234.5, "n": i})
                for i, k in enumerate(GEOMETRIES)]  # fmt: skip
    collection = {"type": "FeatureCollection", "features": features}
    (tmp_path / "in.geojson").write_text(json.dumps(collection, ensure_ascii=False))
    container, read = read_features(tmp_path / "in.geojson")
    write_features(tmp_path / "out.geojson", container,
                   map_features(read, _transform(), "fixed_to_moving"))  # fmt: skip
    out = json.loads((tmp_path / "out.geojson").read_text())
    assert out["type"] == "FeatureCollection" and len(out["features"]) == len(features)
    for before, after in zip(features, out["features"], strict=True):
        assert json.dumps(after["properties"], ensure_ascii=False) == json.dumps(
            before["properties"], ensure_ascii=False
        )
        assert after["id"] == before["id"] and list(after) == list(before)
    # a bare list (QuPath's export) stays a list
    (tmp_path / "list.geojson").write_text(json.dumps(features))
    container, read = read_features(tmp_path / "list.geojson")
    write_features(tmp_path / "list_out.geojson", container, read)
    assert isinstance(json.loads((tmp_path / "list_out.geojson").read_text()), list)


def test_micrometre_input_gives_the_pixel_result():
    transform = _transform()
    in_px = [_feature(GEOMETRIES["Polygon"])]
    in_um = [_feature({"type": "Polygon",
                       "coordinates": [(np.asarray(r) * 0.25).tolist() for r in
                                       GEOMETRIES["Polygon"]["coordinates"]]})]  # fmt: skip
    a = map_features(in_px, transform, "fixed_to_moving", 8)
    b = map_features(in_um, transform, "fixed_to_moving", 8, source_pixel_size_um=0.25,
                     unit="um")  # fmt: skip
    np.testing.assert_allclose(
        shapely.get_coordinates(shapely.geometry.shape(a[0]["geometry"])),
        shapely.get_coordinates(shapely.geometry.shape(b[0]["geometry"])),
        atol=1e-9,
    )
    with pytest.raises(AnnotationError, match="need the image's pixel size"):
        map_features(in_um, transform, "fixed_to_moving", unit="um")


def test_an_outline_partly_outside_is_kept_and_marked():
    transform = _transform()
    # a square reaching past the moving image's left edge once mapped
    ring = [[-80, 100], [100, 100], [100, 300], [-80, 300], [-80, 100]]
    mapped = map_features([_feature({"type": "Polygon", "coordinates": [ring]})], transform,
                          "fixed_to_moving", densify_px=10)[0]  # fmt: skip
    assert mapped["geometry"]["type"] == "Polygon"
    assert mapped["properties"][UNMAPPED] == 2  # the two user vertices outside
    kept = np.asarray(mapped["geometry"]["coordinates"][0])
    assert len(kept) > 10 and (kept[0] == kept[-1]).all()
    # fully outside: no geometry, still there, counted
    away = {"type": "Point", "coordinates": [-500, -500]}
    gone = map_features([_feature(away)], transform, "fixed_to_moving")[0]
    assert gone["geometry"] is None and gone["properties"][UNMAPPED] == 1


def test_bad_files_are_named(tmp_path):
    (tmp_path / "x.geojson").write_text("{not json")
    with pytest.raises(AnnotationError, match="not a GeoJSON"):
        read_features(tmp_path / "x.geojson")
    (tmp_path / "y.geojson").write_text(json.dumps({"type": "Topology"}))
    with pytest.raises(AnnotationError, match="expected a GeoJSON FeatureCollection"):
        read_features(tmp_path / "y.geojson")
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
               "properties": {}}  # fmt: skip
    (tmp_path / "bom.geojson").write_bytes(b"\xef\xbb\xbf" + json.dumps([feature]).encode())
    assert read_features(tmp_path / "bom.geojson")[1] == [feature]
