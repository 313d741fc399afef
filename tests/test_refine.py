"""The full-resolution refinement: a fine deformation below the working grid recovered at
sub-pixel accuracy, a continuous field across tiles, consecutive sections left alone, and one
mapping for every consumer (points, annotations, warp)."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import run_snakemake
from regflow.example import CellWarp, nuclei_scene, render_cell_moving
from regflow.io import read_info, write_ome_tiff
from regflow.pipeline import register_files
from regflow.refine import RefineSettings, refine_transform
from regflow.transform import Transform, compose

SIZE = 1536
PIXEL = 1.0  # µm
# local bumps 12–25 µm across moving 3–6 µm: far below a 192-px working image's 8 µm pixel
WARP = CellWarp((SIZE, SIZE), angle_deg=3.0, shift=(10.0, -6.0), smooth_px=4.0, n_bumps=80,
                bump_sigma_px=(12.0, 25.0), bump_px=(3.0, 6.0), seed=5)  # fmt: skip


def _write(path, image):
    write_ome_tiff(path, (image * 60000).astype(np.uint16)[None], ["DAPI"], PIXEL,
                   pyramid_min_size=256)  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cells")
    fixed, centres = nuclei_scene((SIZE, SIZE), PIXEL, seed=1)
    _write(folder / "fixed.ome.tif", fixed)
    _write(folder / "moving.ome.tif", render_cell_moving(fixed, WARP))
    # a consecutive section: the same tissue layout and pose, other nuclei
    other, _ = nuclei_scene((SIZE, SIZE), PIXEL, seed=2)
    _write(folder / "consecutive.ome.tif", render_cell_moving(other, WARP))
    rng = np.random.default_rng(0)
    inside = ((centres > 60) & (centres < SIZE - 60)).all(axis=1)
    truth = centres[inside][rng.choice(inside.sum(), 400, replace=False)]
    return folder, truth, WARP.fixed_to_moving(truth)


def _registered(folder, moving="moving.ome.tif"):
    return register_files(str(folder / "fixed.ome.tif"), str(folder / moving),
                          "fluorescence", "fluorescence", preprocess={"max_size": 192})  # fmt: skip


def _refined(registration, folder, moving="moving.ome.tif", **options):
    settings = RefineSettings(**options)
    return refine_transform(
        registration.transform,
        read_info(folder / "fixed.ome.tif"),
        read_info(folder / moving),
        {"fixed": ("fluorescence", 0), "moving": ("fluorescence", 0)},
        (registration.fixed.tissue_mask, registration.fixed.full_to_working),
        1.0 / registration.fixed.full_to_working[0, 0],
        settings,
        threads=2,
    )


def _errors(transform, truth_fixed, truth_moving):
    return np.linalg.norm(transform.moving_to_fixed(truth_moving) - truth_fixed, axis=1)


def test_a_fine_deformation_is_recovered_below_a_pixel(pair):
    folder, truth_fixed, truth_moving = pair
    registration = _registered(folder)
    coarse = _errors(registration.transform, truth_fixed, truth_moving)
    assert np.percentile(coarse, 90) > 0.8  # the 8 µm working grid cannot follow the bumps
    result = _refined(registration, folder, tile=256, overlap=32)
    fine = _errors(result.transform, truth_fixed, truth_moving)
    assert result.report["tiles_accepted"] == result.report["tiles_with_tissue"] > 4
    assert np.isfinite(fine).all()
    assert np.median(fine) < 0.15 and np.percentile(fine, 90) < 0.5, np.percentile(fine, [50, 90])
    assert np.percentile(fine, 90) < np.percentile(coarse, 90) / 3
    # saved and loaded, the fine component maps the same
    path = folder / "t.npz"
    result.transform.save(path)
    loaded = Transform.load(path)
    expected = result.transform.fixed_to_moving(truth_fixed)
    np.testing.assert_allclose(loaded.fixed_to_moving(truth_fixed), expected, atol=1e-4)


def test_the_field_is_continuous_across_tile_borders(pair):
    folder, _, _ = pair
    result = _refined(_registered(folder), folder, tile=256, overlap=32)
    fine = result.transform.fine
    step = result.report["grid_step_px"] / result.report["downsample"]  # nodes per tile px
    per_tile = int(256 / step)
    # node-to-node changes across every tile border are no larger than inside the tiles
    jumps_x = np.abs(np.diff(fine, axis=2))
    jumps_y = np.abs(np.diff(fine, axis=1))
    border_x = jumps_x[:, :, per_tile - 1 :: per_tile]
    border_y = jumps_y[:, per_tile - 1 :: per_tile, :]
    inside = max(np.percentile(jumps_x, 99.5), np.percentile(jumps_y, 99.5))
    assert max(border_x.max(), border_y.max()) <= 1.5 * inside + 0.05


def test_consecutive_sections_keep_the_coarse_field(pair):
    folder, _, _ = pair
    registration = _registered(folder, "consecutive.ome.tif")
    result = _refined(registration, folder, "consecutive.ome.tif", tile=256, overlap=32)
    # other nuclei: no tile corresponds at cell level, no motion is invented
    assert result.report["tiles_accepted"] <= 0.1 * result.report["tiles_with_tissue"]
    assert result.report["fine_max_px"] < 3.0


def test_refinement_that_finds_nothing_changes_nothing(pair):
    folder, _, _ = pair
    registration = _registered(folder)
    off = _refined(registration, folder, enabled=False)
    assert not off.transform.has_fine and "disabled" in off.report["reason"]


def test_compose_keeps_the_fine_component(pair):
    folder, truth_fixed, truth_moving = pair
    refined = _refined(_registered(folder), folder, tile=256, overlap=32).transform
    shift = np.array([[1.0, 0, 5.0], [0, 1.0, -3.0], [0, 0, 1]])
    composed = compose(refined, Transform.from_affine(shift, refined.moving_shape,
                                                      refined.moving_shape))  # fmt: skip
    assert composed.has_fine
    expected = refined.fixed_to_moving(truth_fixed) + [5.0, -3.0]
    np.testing.assert_allclose(composed.fixed_to_moving(truth_fixed), expected, atol=0.02)


@pytest.mark.workflow
def test_every_consumer_maps_through_the_fine_component(pair, tmp_path):
    """Landmarks, a point annotation and a marked pixel of an associated image land on the
    same fixed position; the summary reports the error in µm."""
    folder, truth_fixed, truth_moving = pair
    points = truth_moving[:40]
    pd.DataFrame({"X": points[:, 0], "Y": points[:, 1]}).to_csv(tmp_path / "m.csv")
    pd.DataFrame({"X": truth_fixed[:40, 0], "Y": truth_fixed[:40, 1]}).to_csv(tmp_path / "f.csv")
    marked = np.rint(points[0]).astype(int)
    label = np.zeros((SIZE, SIZE), np.uint16)
    label[marked[1], marked[0]] = 7
    write_ome_tiff(tmp_path / "mark.ome.tif", label[None], ["mark"], PIXEL)
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": marked.tolist()},
               "properties": {"objectType": "annotation"}}  # fmt: skip
    (tmp_path / "m.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": [feature]}))  # fmt: skip
    sheet = pd.DataFrame([{
        "sample": "cells", "fixed": str(folder / "fixed.ome.tif"),
        "moving": str(folder / "moving.ome.tif"), "fixed_modality": "fluorescence",
        "moving_modality": "fluorescence", "fixed_landmarks": str(tmp_path / "f.csv"),
        "moving_landmarks": str(tmp_path / "m.csv"),
        "moving_annotations": str(tmp_path / "m.geojson"),
        "moving_associated": str(tmp_path / "mark.ome.tif"),
    }])  # fmt: skip
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    (tmp_path / "config.yaml").write_text(
        "samples: samples.tsv\noutdir: out\npreprocess:\n  max_size: 192\n"
        "refine:\n  tile: 256\n  overlap: 32\n"
    )
    run_snakemake(tmp_path, "--cores", "2")
    out = tmp_path / "out" / "cells"
    transform = Transform.load(out / "transform.npz")
    assert transform.has_fine
    landmarks = pd.read_csv(out / "landmarks_warped.csv")[["X", "Y"]].to_numpy()
    errors = np.linalg.norm(landmarks - truth_fixed[:40], axis=1)
    assert np.median(errors) < 0.3
    mark_fixed = transform.moving_to_fixed(marked[None].astype(float))[0]
    annotation = json.loads((out / "annotations_warped.geojson").read_text())
    np.testing.assert_allclose(annotation["features"][0]["geometry"]["coordinates"],
                               mark_fixed, atol=1e-6)  # fmt: skip
    with tifffile.TiffFile(out / "associated" / "mark.ome.tif") as tif:
        warped = tif.series[0].asarray()
    rows, cols = np.nonzero(warped == 7)
    assert len(rows) >= 1
    assert np.hypot(cols.mean() - mark_fixed[0], rows.mean() - mark_fixed[1]) < 1.0
    summary = pd.read_csv(tmp_path / "out" / "summary.tsv", sep="\t")
    metrics = json.loads((out / "metrics.json").read_text())
    tre_px = metrics["landmarks"]["final"]["tre_median"]
    assert summary.loc[0, "tre_final_um"] == pytest.approx(tre_px * PIXEL)
    refine = json.loads((out / "refine.json").read_text())
    assert refine["tiles_accepted"] > 0 and refine["pixel_size_um"] == pytest.approx(2.0)


def test_a_file_without_pyramid_levels_is_refined_at_the_target_resolution(pair, tmp_path):
    """No level near 2 µm: the tiles are read at full resolution and reduced by block means,
    so the work (and the result) stays at the target resolution."""
    folder, truth_fixed, truth_moving = pair
    for name in ("fixed.ome.tif", "moving.ome.tif"):
        image = tifffile.imread(folder / name)
        write_ome_tiff(tmp_path / name, image.reshape(1, *image.shape[-2:]), ["DAPI"], PIXEL,
                       pyramid_min_size=10**6)  # fmt: skip
    assert len(read_info(tmp_path / "fixed.ome.tif").level_shapes) == 1
    registration = _registered(tmp_path)
    result = _refined(registration, tmp_path, tile=256, overlap=32)
    assert result.report["level"] == 0 and result.report["level_reduced"] == 2
    assert result.report["pixel_size_um"] == pytest.approx(2.0)
    fine = _errors(result.transform, truth_fixed, truth_moving)
    assert np.median(fine) < 0.15 and np.percentile(fine, 90) < 0.5, np.percentile(fine, [50, 90])
