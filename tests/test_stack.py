"""Serial sections: the stack solve (known stacks recovered, a bad section out-voted, the drift
along the stack removed) and the volume (axes, scales, plane order, pixels)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from helpers import jobs_run_alone, run_snakemake
from regflow.annotations import mask_features, read_features
from regflow.block import make_serial_block
from regflow.io import write_ome_tiff
from regflow.rigid import similarity_matrix
from regflow.stack import Link, solve_stack, torn_areas
from regflow.transform import Transform, _grid_matrix, _nodes, apply_matrix

SHAPE = (160, 200)


def _pose(rng) -> np.ndarray:
    centre = np.array([(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2])
    return similarity_matrix(rng.uniform(-180, 180), 1.0, tuple(rng.uniform(-15, 15, 2)),
                             centre, centre)  # fmt: skip


def _field(rng, amplitude: float) -> np.ndarray:
    """A smooth random displacement (2, 9, 11) on a coarse grid over the reference."""
    from scipy import ndimage as ndi

    field = np.stack([ndi.gaussian_filter(rng.normal(size=(9, 11)), 1.5) for _ in range(2)])
    return field * amplitude / np.abs(field).max()


def _link(fixed_pose, moving_pose, w_grid: np.ndarray) -> Transform:
    """``q ↦ P_m(P_f⁻¹ q + w(P_f⁻¹ q))``: on the fixed section's own grid, the displacement
    ``L_f w`` (``L_f`` the fixed pose's linear part) of a reference-frame field ``w``."""
    grid_shape = (40, 50)
    to_grid = _grid_matrix(SHAPE, grid_shape)
    nodes = _nodes(to_grid, grid_shape)  # in the fixed section's pixels
    reference = apply_matrix(np.linalg.inv(fixed_pose), nodes)
    coarse = Transform(np.eye(3), w_grid.astype(np.float32), _grid_matrix(SHAPE, w_grid.shape[1:]),
                       SHAPE, SHAPE)  # fmt: skip
    w = coarse.displacement_at(reference)
    u = w @ fixed_pose[:2, :2].T
    return Transform(
        moving_pose @ np.linalg.inv(fixed_pose),
        u.T.reshape(2, *grid_shape).astype(np.float32),
        to_grid,
        SHAPE,
        SHAPE,
    )


def _stack(n: int, reference: int, distortion: float, drift: np.ndarray | None, seed: int,
           bad: int | None = None):  # fmt: skip
    """Sections with known poses and distortions ``D_s`` (reference frame), links at distances
    1 and 2 between them carrying ``D_m − D_f`` plus ``drift`` per section step."""
    rng = np.random.default_rng(seed)
    names = [f"s{i}" for i in range(n)]
    poses = {s: (np.eye(3) if i == reference else _pose(rng)) for i, s in enumerate(names)}
    fields = {s: (np.zeros((2, 9, 11)) if i == reference else _field(rng, distortion))
              for i, s in enumerate(names)}  # fmt: skip
    links = []
    for i in range(n):
        for step in (1, 2):
            j = i + step
            if j >= n:
                continue
            f, m = (names[i], names[j]) if abs(i - reference) <= abs(j - reference) else (
                names[j], names[i])  # fmt: skip
            w = fields[m] - fields[f]
            if drift is not None:
                w = w + drift * (1 if m == names[j] else -1) * step
            transform, weight = _link(poses[f], poses[m], w), 1.0
            if bad is not None and names[bad] in (f, m):  # a swapped section: nonsense links
                # (whose registrations have little evidence: evidence_weight(5.5, 9) = 0.03)
                transform, weight = Transform.from_affine(_pose(rng), SHAPE, SHAPE), 0.03
            links.append(Link(f, m, transform, weight))
    return names, poses, fields, links


def _truth(pose, field, points):
    coarse = Transform(pose, field.astype(np.float32), _grid_matrix(SHAPE, field.shape[1:]),
                       SHAPE, SHAPE)  # fmt: skip
    return coarse.fixed_to_moving(points)


def _errors(result, names, poses, fields, points):
    return {s: float(np.median(np.hypot(*(result.transforms[s].fixed_to_moving(points)
                                          - _truth(poses[s], fields[s], points)).T)))
            for s in names}  # fmt: skip


POINTS = np.stack(np.meshgrid(np.linspace(30, 170, 8), np.linspace(25, 135, 6)), -1).reshape(-1, 2)


def test_a_known_stack_is_recovered_and_a_swapped_section_does_not_move_its_neighbours():
    names, poses, fields, links = _stack(9, 4, 3.0, None, seed=1, bad=2)
    shapes = dict.fromkeys(names, SHAPE)
    chain = solve_stack(names, "s4", links, SHAPE, shapes, grid=64, sweeps=0, drift="none")
    stack = solve_stack(names, "s4", links, SHAPE, shapes, grid=64, pixel_size_um=1.0)
    chain_errors = _errors(chain, names, poses, fields, POINTS)
    errors = _errors(stack, names, poses, fields, POINTS)
    # the chain runs through the swapped section: everything beyond it is lost
    assert chain_errors["s1"] > 20 and chain_errors["s0"] > 20
    # the stack reaches s1 and s0 over the links that skip s2; the others stay exact
    for section in ("s0", "s1", "s3", "s5", "s6", "s7", "s8"):
        assert errors[section] < 0.5, (section, errors)
    assert (
        stack.section_weights["s2"]
        < 0.2
        < min(stack.section_weights[s] for s in names if s != "s2")
    )


def test_a_swapped_section_whose_one_link_matches_by_chance_disagrees_with_its_neighbours():
    # one of the swapped section's registrations scores full evidence (a chance match): its
    # weight is no longer low, but its links still disagree with one another
    names, poses, fields, links = _stack(9, 4, 3.0, None, seed=1, bad=2)
    chance = next(i for i, k in enumerate(links) if "s2" in (k.fixed, k.moving))
    links[chance] = Link(links[chance].fixed, links[chance].moving, links[chance].transform, 1.0)
    shapes = dict.fromkeys(names, SHAPE)
    stack = solve_stack(names, "s4", links, SHAPE, shapes, grid=64, pixel_size_um=1.0)
    genuine = [s for s in names if s not in ("s2", "s4")]
    assert stack.section_agreement["s2"] < 0.15 < min(stack.section_agreement[s] for s in genuine)
    chain = solve_stack(names, "s4", links, SHAPE, shapes, grid=64, sweeps=0, drift="none")
    assert all(np.isnan(chain.section_agreement[s]) for s in genuine)  # no robust solve


TORN_NAMES, TORN_GRID = [f"s{i}" for i in range(7)], (32, 40)  # sections, solve grid


def _torn_stack(torn_section: str, missed: set[str] | None = None):
    """s0..s6 in one frame (reference s3), links at distances 1 and 2; ``torn_section`` is
    torn along x = 100 px: what lies beyond moved 10 px, so its registrations carry a
    (smoothed) step there, seen from either side, except the one between the ``missed``
    pair (it smoothed the tear away). Returns the links and the solve grid's nodes."""
    from scipy import ndimage as ndi

    names, field_grid = TORN_NAMES, (40, 50)
    to_field = _grid_matrix(SHAPE, field_grid)
    x = _nodes(to_field, field_grid)[:, 0].reshape(field_grid)
    step = np.zeros((2, *field_grid), np.float32)
    step[0] = ndi.gaussian_filter1d((x > 100).astype(np.float32) * 10.0, 1.5, axis=1)
    links = []
    for i in range(6):
        for d in (1, 2):
            if i + d > 6:
                continue
            f, m = (names[i], names[i + d]) if i + d > 3 else (names[i + d], names[i])
            torn = 0 if {f, m} == missed else (m == torn_section) - (f == torn_section)
            links.append(Link(f, m, Transform(np.eye(3), torn * step, to_field, SHAPE, SHAPE)))
    return links, _nodes(_grid_matrix(SHAPE, TORN_GRID), TORN_GRID)


def test_a_torn_reference_is_marked_not_registered_in_every_section():
    # every section reaches the reference's frame through registrations onto it, which all
    # smooth its tear the same way: its area is every section's, and only with a torn
    # reference (a torn s5 stays s5's own)
    names, solve_grid = TORN_NAMES, TORN_GRID
    links, nodes = _torn_stack("s3")
    positions = dict.fromkeys(names, nodes)
    own = torn_areas(names, links, positions, solve_grid, max_jump=0.2)
    assert own["s3"].any() and not any(own[s].any() for s in names if s != "s3")
    areas = torn_areas(names, links, positions, solve_grid, max_jump=0.2, reference="s3")
    assert all(np.array_equal(areas[s], own["s3"]) for s in names)
    links, _ = _torn_stack("s5")
    areas = torn_areas(names, links, positions, solve_grid, max_jump=0.2, reference="s3")
    assert areas["s5"].any() and not any(areas[s].any() for s in names if s != "s5")


def test_a_torn_section_is_marked_not_registered_along_its_tear_and_its_neighbours_are_not():
    names, solve_grid = TORN_NAMES, TORN_GRID
    links, nodes = _torn_stack("s5")
    positions = dict.fromkeys(names, nodes)
    areas = torn_areas(names, links, positions, solve_grid, max_jump=0.2)
    assert not any(areas[s].any() for s in names if s != "s5"), {
        s: a.sum() for s, a in areas.items()
    }
    columns = nodes[:, 0].reshape(solve_grid)[areas["s5"]]
    assert areas["s5"].all(axis=1).sum() == 0 and areas["s5"].any(axis=1).all()  # a band
    assert columns.min() > 85 and columns.max() < 115, (columns.min(), columns.max())
    grown = torn_areas(names, links, positions, solve_grid, max_jump=0.2, grow=2)["s5"]
    assert grown.sum() > areas["s5"].sum() and (grown | areas["s5"]).sum() == grown.sum()
    # the area as QuPath annotations in the reference's pixels: one band around x = 100
    features = mask_features(areas["s5"], np.linalg.inv(_grid_matrix(SHAPE, solve_grid)), "x")
    assert len(features) == 1 and features[0]["properties"]["classification"]["name"] == "x"
    ring = np.array(features[0]["geometry"]["coordinates"][0])
    assert 80 < ring[:, 0].min() < 100 < ring[:, 0].max() < 120
    assert ring[:, 1].min() < 5 and ring[:, 1].max() > SHAPE[0] - 6


def test_a_tear_that_one_sides_next_registration_does_not_follow_is_still_marked():
    # s2 torn; on the side above, its registration with s3 misses the tear while the one
    # with s4 follows it: the tear still shows on both sides
    names, solve_grid = TORN_NAMES, TORN_GRID
    links, nodes = _torn_stack("s2", missed={"s2", "s3"})
    positions = dict.fromkeys(names, nodes)
    areas = torn_areas(names, links, positions, solve_grid, max_jump=0.2)
    assert not any(areas[s].any() for s in names if s != "s2"), {
        s: a.sum() for s, a in areas.items()
    }
    columns = nodes[:, 0].reshape(solve_grid)[areas["s2"]]
    assert areas["s2"].any(axis=1).all() and 85 < columns.min() < columns.max() < 115
    # with the distance-1 registrations alone (link_distance 1) that side shows nothing
    near = [k for k in links if abs(int(k.fixed[1:]) - int(k.moving[1:])) == 1]
    alone = torn_areas(names, near, positions, solve_grid, max_jump=0.2)
    assert not alone["s2"].any()


def _far_stack(far_error: float, near_error: float = 0.5, seed: int = 3):
    """13 sections, the reference in the middle: links at distances 1 and 2 with errors of
    ``near_error`` px, and links onto the reference from the sections farther than 2 with
    errors of ``far_error`` px (smooth random fields)."""
    rng = np.random.default_rng(seed)
    n, reference = 13, 6
    names = [f"s{i}" for i in range(n)]
    poses = {s: (np.eye(3) if i == reference else _pose(rng)) for i, s in enumerate(names)}
    fields = {s: (np.zeros((2, 9, 11)) if i == reference else _field(rng, 4.0))
              for i, s in enumerate(names)}  # fmt: skip
    pairs = set()
    for i in range(n):
        for j in (i + 1, i + 2):
            if j < n:
                pairs.add((i, j) if abs(i - reference) <= abs(j - reference) else (j, i))
        if abs(i - reference) > 2:
            pairs.add((reference, i))
    links = []
    for i, j in sorted(pairs):
        error = far_error if abs(i - j) > 2 else near_error
        w = fields[names[j]] - fields[names[i]] + _field(rng, error)
        links.append(Link(names[i], names[j], _link(poses[names[i]], poses[names[j]], w)))
    return names, poses, fields, links


def test_links_onto_the_reference_that_fail_their_triangles_are_left_out(monkeypatch):
    import regflow.stack as stack_module

    def solve(links, names):
        return solve_stack(names, "s6", links, SHAPE, dict.fromkeys(names, SHAPE), grid=64,
                           pixel_size_um=1.0, drift="none")  # fmt: skip

    # far links as good as the neighbours' (their errors as over 2 sections): kept
    names, poses, fields, links = _far_stack(far_error=1.0)
    good = solve(links, names)
    assert good.far_links["kept"] and good.far_links["ratio"] < 2.0, good.far_links
    # neighbours that close almost exactly: far links 10× worse, but within the robust scale
    names, poses, fields, links = _far_stack(far_error=1.0, near_error=0.05)
    close = solve(links, names)
    assert close.far_links["kept"] and close.far_links["ratio"] > 3.0, close.far_links
    # far sections that no longer look like the reference: registrations off by ~15 px
    names, poses, fields, links = _far_stack(far_error=15.0)
    result = solve(links, names)
    assert not result.far_links["kept"] and result.far_links["ratio"] > 3.0, result.far_links
    assert result.far_links["triangles"] == [10, 8]  # 5 and 4 per side
    far = [k for k in links if k.fixed == "s6" and abs(int(k.moving[1:]) - 6) > 2]
    assert all(result.link_weights[k.fixed, k.moving] == 0.0 for k in far)
    # the same as the neighbours alone, and better than with the failed links counted
    alone = solve([k for k in links if k not in far], names)
    errors, errors_alone = (_errors(r, names, poses, fields, POINTS) for r in (result, alone))
    assert max(abs(errors[s] - errors_alone[s]) for s in names) < 1e-6
    monkeypatch.setattr(stack_module, "FAR_CLOSURE_RATIO", 1e9)
    counted = _errors(solve(links, names), names, poses, fields, POINTS)
    ends = ("s0", "s1", "s11", "s12")
    assert np.mean([errors[s] for s in ends]) < 0.7 * np.mean([counted[s] for s in ends])


def test_the_drift_along_the_stack_is_removed_and_each_section_keeps_its_distortion():
    # every link follows a structure that moves 1.5 px per section in a quarter of the tissue
    drift = np.zeros((2, 9, 11))
    drift[0, :, :3] = 1.5
    names, poses, fields, links = _stack(15, 7, 2.0, drift, seed=3)
    shapes = dict.fromkeys(names, SHAPE)
    chain = solve_stack(names, "s7", links, SHAPE, shapes, grid=64, sweeps=0, drift="none")
    stack = solve_stack(names, "s7", links, SHAPE, shapes, grid=64, pixel_size_um=1.0)
    left = POINTS[:, 0] < 40  # under the drift
    chain_far = _errors(chain, names, poses, fields, POINTS[left])
    stack_far = _errors(stack, names, poses, fields, POINTS[left])
    assert chain_far["s0"] > 8 and chain_far["s14"] > 8  # 7 steps of 1.5 px
    assert stack_far["s0"] < 0.3 * chain_far["s0"] and stack_far["s14"] < 0.3 * chain_far["s14"]
    # where nothing drifts, the sections' own distortions (2 px) are kept
    right = POINTS[:, 0] > 140
    kept = _errors(stack, names, poses, fields, POINTS[right])
    assert max(kept.values()) < 0.8, kept
    assert stack.drift_um["s0"] > 0


def test_the_plain_chain_composes_exact_links_exactly():
    names, poses, fields, links = _stack(6, 0, 3.0, None, seed=5)
    shapes = dict.fromkeys(names, SHAPE)
    chain = solve_stack(names, "s0", links, SHAPE, shapes, grid=96, sweeps=0, drift="none")
    errors = _errors(chain, names, poses, fields, POINTS)
    assert max(errors.values()) < 0.1, errors


# ---- the volume ------------------------------------------------------------------------


def _planes(tmp_path, rgb: bool):
    rng = np.random.default_rng(0)
    paths, data = [], []
    for z in range(3):
        if rgb:
            plane = rng.integers(0, 255, (3, 300, 420), dtype=np.uint8)
        else:
            plane = rng.integers(0, 4000, (2, 300, 420), dtype=np.uint16)
        path = tmp_path / f"plane{z}.ome.tif"
        write_ome_tiff(path, plane, ["R", "G", "B"] if rgb else ["DAPI", "CD3"], 0.5, rgb=rgb)
        paths.append(str(path))
        data.append(plane)
    return paths, data


@pytest.mark.parametrize("rgb", [True, False])
def test_the_volume_zarr_has_ngff_axes_scales_and_the_planes_in_order(tmp_path, rgb):
    from regflow.volume import write_volume_zarr

    paths, data = _planes(tmp_path, rgb)
    written = write_volume_zarr(tmp_path / "volume.ome.zarr", paths[::-1], 0.5, 4.0,
                                tile=128, pyramid_min_size=128)  # fmt: skip
    group = zarr.open_group(str(tmp_path / "volume.ome.zarr"), mode="r")
    multiscales = group.attrs["multiscales"][0]
    assert [a["name"] for a in multiscales["axes"]] == ["c", "z", "y", "x"]
    assert multiscales["axes"][1]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscales["datasets"]]
    assert scales[0] == [1.0, 4.0, 0.5, 0.5] and scales[1] == [1.0, 4.0, 1.0, 1.0]
    assert written["levels"] == len(scales) == 3  # 420 → 210 → 105 (≤ 128)
    level0 = group["0"]
    assert level0.shape == (data[0].shape[0], 3, 300, 420)
    for z, plane in enumerate(data[::-1]):  # plane z is the z-th path
        np.testing.assert_array_equal(level0[:, z], plane)
    assert group["1"].shape == (data[0].shape[0], 3, 150, 210)
    assert group.attrs["omero"]["rgb"] is rgb


@pytest.mark.parametrize("rgb", [True, False])
def test_the_volume_tiff_is_a_pyramidal_z_stack_with_physical_size_z(tmp_path, rgb):
    from regflow.volume import write_volume_tiff, write_volume_zarr

    paths, data = _planes(tmp_path, rgb)
    write_volume_zarr(tmp_path / "volume.ome.zarr", paths, 0.5, 4.0, tile=128,
                      pyramid_min_size=128)  # fmt: skip
    write_volume_tiff(tmp_path / "volume.ome.tif", tmp_path / "volume.ome.zarr", tile=128)
    with tifffile.TiffFile(tmp_path / "volume.ome.tif") as tif:
        series = tif.series[0]
        assert series.axes == ("ZYXS" if rgb else "ZCYX")
        stack = series.asarray()
        assert len(series.levels) == 3
        level1 = series.levels[1].asarray()
        assert 'PhysicalSizeZ="4.0"' in tif.ome_metadata
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
    for z, plane in enumerate(data):
        got = np.moveaxis(stack[z], -1, 0) if rgb else stack[z]
        np.testing.assert_array_equal(got, plane)
    # the reduced levels are the zarr's (c, z, y, x), in the TIFF's order
    reduced = zarr.open_group(str(tmp_path / "volume.ome.zarr"), mode="r")["1"][:]
    assert level1.shape[0] == 3
    expected = np.moveaxis(reduced, 0, -1) if rgb else np.moveaxis(reduced, 0, 1)
    np.testing.assert_array_equal(level1, expected)


# ---- the workflow on a generated block ---------------------------------------------------


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """7 serial sections (reference in the middle), the second one swapped for another
    block's section, one torn; stack mode, OME-Zarr outputs."""
    workdir = tmp_path_factory.mktemp("block")
    sheet, truth = make_serial_block(workdir / "data", n_sections=7, size=256, torn=(5,),
                                     ihc=(4,), unrelated=1, n_points=24, seed=4)  # fmt: skip
    sheet.to_csv(workdir / "images.tsv", sep="\t", index=False)
    (workdir / "config.yaml").write_text(
        "samples: images.tsv\noutdir: out\ncases:\n  chain: true\nwarp:\n  format: ome-zarr\n"
        "  pyramid_min_size: 128\n  tile: 128\n"
    )
    run_snakemake(workdir, "--cores", "2")
    return workdir, sheet, truth


@pytest.mark.workflow
def test_the_block_volume_has_one_plane_per_section_equal_to_its_output(block):
    workdir, sheet, _ = block
    out = workdir / "out" / "block"
    group = zarr.open_group(str(out / "volume.ome.zarr"), mode="r")
    multiscales = group.attrs["multiscales"][0]
    assert [a["name"] for a in multiscales["axes"]] == ["c", "z", "y", "x"]
    assert multiscales["datasets"][0]["coordinateTransformations"][0]["scale"] == [
        1.0,
        5.0,
        2.0,
        2.0,
    ]
    volume = group["0"]
    assert volume.shape == (3, 7, 256, 256)
    order = list(sheet.sort_values("order", key=lambda c: c.astype(int))["image"])
    for z, image in enumerate(order):
        if image == "s04":  # the reference: its own pixels
            plane = tifffile.imread(sheet.loc[sheet["image"] == image, "path"].iloc[0])
            np.testing.assert_array_equal(volume[:, z], np.moveaxis(plane, -1, 0))
            continue
        warped = zarr.open_group(str(out / image / "warped.ome.zarr"), mode="r")["0"]
        np.testing.assert_array_equal(volume[:, z], warped[:])


@pytest.mark.workflow
def test_each_section_has_its_not_registered_area_as_qupath_annotations(block):
    workdir, sheet, _ = block
    out = workdir / "out" / "block"
    report = json.loads((out / "stack.json").read_text())
    fractions = {}
    for image in sheet["image"]:
        _, features = read_features(out / "stack" / f"{image}.not_registered.geojson")
        fractions[image] = report["sections"][image]["not_registered_fraction"]
        assert (fractions[image] > 0) == bool(features), (image, fractions[image])


@pytest.mark.workflow
def test_the_drift_report_compares_chain_and_stack_with_direct_registration(block):
    workdir, sheet, _ = block
    sections = json.loads((workdir / "out" / "block" / "stack.json").read_text())["sections"]
    # the reference's neighbours: their chain is their direct registration
    assert sections["s03"]["chain_vs_direct_um"] == 0 == sections["s05"]["chain_vs_direct_um"]
    for image in ("s01", "s07"):  # two sections away and more: composed, so they differ
        assert sections[image]["chain_vs_direct_um"] > 0
        assert np.isfinite(sections[image]["stack_vs_direct_um"])


@pytest.mark.workflow
def test_every_block_job_plans_on_its_own_as_on_a_cluster(block):
    assert jobs_run_alone(block[0]) == {}


@pytest.mark.workflow
def test_the_stack_job_asks_for_the_memory_it_uses(block):
    # the solve holds every registration's field at once: the request grows with them
    # (a cluster kills a job over it), and this block's job stayed under it
    workdir = block[0]

    def asked(*args):
        output = run_snakemake(workdir, "--dry-run", "--forcerun", "stack", "--until", "stack",
                               *args).stdout  # fmt: skip
        pattern = r"rule stack:\n(?:    .*\n)*?    resources: .*mem_mb=(\d+)"
        (mem_mb,) = re.findall(pattern, output)
        return int(mem_mb)

    used = pd.read_csv(workdir / "out" / "benchmarks" / "stack" / "block.tsv", sep="\t")
    assert float(used["max_rss"].iloc[0]) < asked() < 2000, (used["max_rss"], asked())
    # the neighbours' registrations alone (link_distance 1): fewer fields held, less asked
    nearer = workdir / "link_distance_1.yaml"
    nearer.write_text("cases:\n  chain: true\n  link_distance: 1\n")
    assert asked("--configfile", str(workdir / "config.yaml"), str(nearer)) < asked()


@pytest.mark.workflow
def test_a_swapped_section_is_flagged_and_its_genuine_neighbours_are_not(block):
    workdir, sheet, _ = block
    out = workdir / "out" / "block"
    flags = {}
    for image in sheet.loc[sheet["reference"] != "true", "image"]:
        metrics = json.loads((out / image / "metrics.json").read_text())
        flags[image] = [f["flag"] for f in metrics["review"]["flags"]]
    assert "unrelated_images" in flags["s02"]
    assert all("unrelated_images" not in f for image, f in flags.items() if image != "s02"), flags
    report = json.loads((workdir / "out" / "block" / "stack.json").read_text())
    assert report["unrelated"] == ["s02"]
    # s01 is reached over the link that skips s02: its landmarks land near the reference's
    reference = pd.read_csv(sheet.loc[sheet["image"] == "s04", "landmarks"].iloc[0])
    mapped = pd.read_csv(out / "s01" / "landmarks_warped.csv")
    errors = np.hypot(*(mapped[["X", "Y"]].to_numpy() - reference[["X", "Y"]].to_numpy()).T)
    assert np.nanmedian(errors) * 2.0 < 12.0, np.nanmedian(errors) * 2.0
    summary = pd.read_csv(workdir / "out" / "summary.tsv", sep="\t")
    assert len(summary) == 6  # one row per section (the reference is the frame)
    assert (out / "case_qc.png").stat().st_size > 50_000


@pytest.mark.workflow
def test_a_blank_section_is_left_out_and_flagged_and_the_case_still_makes_its_volume(tmp_path):
    # a blank slide among serial sections fails its own registrations only: the stack solve
    # leaves it out (its links carry no evidence), the other sections and the volume are made
    sheet, truth = make_serial_block(tmp_path / "data", n_sections=7, size=256, seed=2,
                                     n_points=24)  # fmt: skip
    blank = sheet.loc[sheet["image"] == "s05", "path"].iloc[0]
    write_ome_tiff(blank, np.full((3, 256, 256), 245, np.uint8), ["R", "G", "B"], 2.0, rgb=True)
    sheet.to_csv(tmp_path / "images.tsv", sep="\t", index=False)
    (tmp_path / "config.yaml").write_text(
        "samples: images.tsv\noutdir: out\ncases:\n  chain: true\nwarp:\n  format: ome-zarr\n"
    )
    run_snakemake(tmp_path, "--cores", "2")
    summary = pd.read_csv(tmp_path / "out" / "summary.tsv", sep="\t").set_index("image")
    assert summary.loc["s05", "status"] == "failed"
    assert "unrelated_images" in summary.loc["s05", "flags"]
    # the section beyond it: its own registration (onto the blank one) kept no flow, but its
    # transform is the solve's, non-rigid through its other registrations (its QC status
    # reads this: not "rigid_only" as its own registration would say)
    sections = json.loads((tmp_path / "out" / "block" / "stack.json").read_text())["sections"]
    assert sections["s06"]["nonrigid"] and not sections["s05"]["nonrigid"]
    log = (tmp_path / "out" / "logs" / "preprocess" / "block" / "s05.log").read_text()
    assert "is blank (constant): this section is left out of the stack" in log
    # the sections on the reference's other side keep the small block's accuracy (a derailed
    # one errs by tens of µm, the blank one by hundreds)
    reference = sheet.loc[sheet["reference"] == "true"].iloc[0]
    points = pd.read_csv(reference["landmarks"])[["X", "Y"]].to_numpy()
    median = {}
    for image in ("s01", "s02", "s03", "s05"):
        mapped = pd.read_csv(tmp_path / "out" / "block" / image / "landmarks_warped.csv")
        errors = np.hypot(*(mapped[["X", "Y"]].to_numpy(float) - points).T) * 2.0
        median[image] = np.nanmedian(errors)
    assert max(median[s] for s in ("s01", "s02", "s03")) < 10.0 < 50.0 < median["s05"], median
    volume = zarr.open_group(str(tmp_path / "out" / "block" / "volume.ome.zarr"), mode="r")["0"]
    assert volume.shape[1] == 7
