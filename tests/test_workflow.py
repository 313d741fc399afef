"""End-to-end: the workflow on a tiny generated cohort, in a temporary directory."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import SAMPLE_OUTPUTS, jobs_run_alone, make_cohort, planned_jobs, run_snakemake
from regflow.io import read_info

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Generate a tiny 3-pair cohort and run the whole workflow once."""
    workdir = tmp_path_factory.mktemp("cohort")
    make_cohort(workdir / "data", 160, workdir / "samples.tsv")
    (workdir / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    run_snakemake(workdir, "--cores", "2")
    return workdir


def test_outputs_follow_the_contract(cohort):
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t")
    out = cohort / "out"
    for row in sheet.itertuples():
        folder = out / row.sample
        for name in SAMPLE_OUTPUTS:
            assert (folder / name).is_file(), f"{row.sample}: {name} missing"
        with tifffile.TiffFile(folder / "warped.ome.tif") as tif:
            assert tif.is_ome and tif.pages[0].is_tiled
            tif.series[0].asarray()  # all pixels decode
        warped, fixed, moving = (
            read_info(p) for p in (folder / "warped.ome.tif", row.fixed, row.moving)
        )
        assert warped.shape == fixed.shape
        assert warped.n_channels == moving.n_channels
        assert warped.dtype == moving.dtype
        landmarks_in = pd.read_csv(row.moving_landmarks)
        landmarks_out = pd.read_csv(folder / "landmarks_warped.csv")
        assert len(landmarks_out) == len(landmarks_in)
        assert list(landmarks_out.columns[:2]) == ["X", "Y"]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["status"] in ("ok", "rigid_only")
        assert metrics["provenance"]["versions"]["regflow"]


def test_registration_is_accurate_on_the_cohort(cohort):
    summary = pd.read_csv(cohort / "out" / "summary.tsv", sep="\t")
    expected = {
        "sample",
        "status",
        "ncc_initial",
        "ncc_rigid",
        "ncc_final",
        "rtre_initial",
        "rtre_rigid",
        "rtre_final",
    }
    assert expected <= set(summary.columns)
    assert len(summary) == 3
    assert (summary["ncc_final"] > summary["ncc_initial"]).all()
    assert (summary["rtre_final"] < summary["rtre_initial"]).all()
    # 160 px images: median landmark error under ~1 px (rTRE 1/226).
    assert (summary["rtre_final"] < 0.005).all(), summary[["sample", "rtre_final"]]


def test_warped_fluorescence_keeps_channel_names_and_pixel_size(cohort):
    with tifffile.TiffFile(cohort / "out" / "ihc_to_fluorescence" / "warped.ome.tif") as tif:
        assert 'Name="DAPI"' in tif.ome_metadata and 'Name="DAB-marker"' in tif.ome_metadata
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata  # the fixed image's geometry
        assert tif.series[0].dtype == np.uint16


def test_finished_run_is_a_no_op(cohort):
    assert planned_jobs(cohort) == {}


def test_flow_parameter_change_reruns_flow_and_downstream_only(cohort):
    (cohort / "changed.yaml").write_text("flow:\n  smoothing_sigma: 3\n")
    jobs = planned_jobs(
        cohort, "--configfile", str(cohort / "config.yaml"), str(cohort / "changed.yaml")
    )
    downstream = {"refine", "warp", "points", "annotations", "associated", "qc", "summary"}
    assert set(jobs) == {"flow"} | downstream
    assert jobs["flow"] == 3 and jobs["annotations"] == 6 and jobs["associated"] == 1


def test_refine_parameter_change_reruns_refine_and_downstream_only(cohort):
    (cohort / "refine.yaml").write_text("refine:\n  min_ncc: 0.6\n")
    jobs = planned_jobs(
        cohort, "--configfile", str(cohort / "config.yaml"), str(cohort / "refine.yaml")
    )
    downstream = {"warp", "points", "annotations", "associated", "qc", "summary"}
    assert set(jobs) == {"refine"} | downstream
    assert jobs["refine"] == 3


def test_lint_is_clean(cohort):
    result = run_snakemake(cohort, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_editing_one_row_reruns_that_sample_only(cohort):
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t")
    sheet.loc[sheet["sample"] == "ihc_rigid", "moving_channel"] = "luminance"
    sheet.to_csv(cohort / "edited.tsv", sep="\t", index=False)
    jobs = planned_jobs(cohort, "--config", "samples=edited.tsv")
    assert jobs == {
        "preprocess": 1,
        "rigid": 1,
        "flow": 1,
        "refine": 1,
        "warp": 1,
        "points": 1,
        "annotations": 2,  # both directions
        "qc": 1,
        "summary": 1,
    }


def test_editing_a_library_module_reruns_the_stages_that_import_it(cohort, tmp_path):
    """Snakemake does not see modules that scripts import; each rule carries their hash."""
    import shutil

    copy = tmp_path / "workflow"
    copy.mkdir()
    for item in ("Snakefile", "rules", "scripts", "config", "report", "envs", "profiles"):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, copy / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, copy / item)

    def dry_run() -> dict[str, int]:
        return planned_jobs(cohort, snakefile=copy / "Snakefile")

    assert dry_run() == {}, "an identical copy of the workflow must be a no-op"
    module = copy / "scripts" / "regflow" / "rigid.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    jobs = dry_run()
    assert "preprocess" not in jobs
    assert jobs["rigid"] == 3 and jobs["flow"] == 3
    assert set(jobs) == {"rigid", "flow", "refine", "warp", "points", "annotations",
                         "associated", "qc", "summary"}  # fmt: skip


def test_two_runs_give_identical_metrics_and_pixels(cohort):
    run_snakemake(cohort, "--cores", "2", "--config", "outdir=out_again")
    for sample in ("ihc_rigid", "ihc_to_fluorescence", "fluorescence_to_ihc"):
        first = json.loads((cohort / "out" / sample / "metrics.json").read_text())
        second = json.loads((cohort / "out_again" / sample / "metrics.json").read_text())
        for key in ("similarity", "rigid", "landmarks", "status"):
            assert first[key] == second[key], (sample, key)
        np.testing.assert_array_equal(
            tifffile.imread(cohort / "out" / sample / "warped.ome.tif"),
            tifffile.imread(cohort / "out_again" / sample / "warped.ome.tif"),
        )


def test_html_report_has_summary_and_every_sample(cohort):
    run_snakemake(cohort, "--report", str(cohort / "report.html"))
    html = (cohort / "report.html").read_text()
    assert "summary.png" in html and "summary.tsv" in html
    for sample in ("ihc_rigid", "ihc_to_fluorescence", "fluorescence_to_ihc"):
        # per-sample captions are rendered with the sample's name (Jinja context)
        assert f"QC of sample <strong>{sample}</strong>" in html


def test_qc_figure_is_a_wide_png(cohort):
    from PIL import Image

    with Image.open(cohort / "out" / "ihc_rigid" / "qc.png") as image:
        assert image.format == "PNG" and image.size[0] >= 1000
    with Image.open(cohort / "out" / "summary.png") as image:
        assert image.size[0] >= 1000


def test_annotations_follow_the_landmarks_and_keep_their_properties(cohort):
    import shapely.geometry

    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t")
    for row in sheet.itertuples():
        folder = cohort / "out" / row.sample
        source = json.loads(Path(row.moving_annotations).read_text())
        for name in ("annotations_warped.geojson", "annotations_in_moving.geojson"):
            mapped = json.loads((folder / name).read_text())
            assert mapped["type"] == "FeatureCollection"
            for before, after in zip(source["features"], mapped["features"], strict=True):
                assert after["id"] == before["id"] and after["properties"] == before["properties"]
                geometry = shapely.geometry.shape(after["geometry"])  # QuPath's import format
                assert geometry.is_valid and not geometry.is_empty
        # the example's MultiPoint is the first six landmarks: one mapping for both
        warped = json.loads((folder / "annotations_warped.geojson").read_text())
        points = np.asarray(warped["features"][1]["geometry"]["coordinates"])
        landmarks = pd.read_csv(folder / "landmarks_warped.csv")[["X", "Y"]].to_numpy()[:6]
        np.testing.assert_allclose(points, landmarks, atol=1e-3)


def test_associated_label_image_keeps_its_labels(cohort):
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t").set_index("sample")
    source = sheet.loc["ihc_to_fluorescence", "moving_associated"]
    output = (
        cohort / "out" / "ihc_to_fluorescence" / "associated" / "fluorescence_moving_nuclei.ome.tif"
    )
    labels, warped = tifffile.imread(source), tifffile.imread(output)
    assert warped.dtype == labels.dtype and warped.shape == (160, 160)
    # nearest neighbour: no value that is not a label; every label inside the overlap kept
    assert set(np.unique(warped)) <= set(np.unique(labels))
    assert len(np.unique(warped)) > 0.8 * len(np.unique(labels))
    info = read_info(output)
    assert info.pixel_size_um == pytest.approx(0.5)  # the fixed image's grid


def test_every_job_plans_on_its_own_as_on_a_cluster(cohort):
    # A cluster job runs one job with only its rule allowed: a stage's file under the sample's
    # folder (<sample>/flow/transform.npz) must not read as another rule's output.
    assert jobs_run_alone(cohort) == {}
