"""Review flags: each raised by a constructed case that shows the problem, and not by one
that does not; the cohort figure at 3 and 300 registrations; unrelated pairs flagged."""

import numpy as np
import pandas as pd
import pytest
from regflow.qc import (
    WorkingImage,
    review_registration,
    similarity_by_stage,
    stage_transforms,
    summary_figure,
    summary_row,
)
from regflow.review import affine_shape, alignment_evidence, field_regularity, review
from regflow.transform import Transform


def _flags(measures):
    return {f["flag"] for f in review(measures)[0]}


@pytest.fixture(scope="module")
def tissue(ihc_small):
    """A signal-bright registration channel of the real IHC slide at 256 px."""
    from regflow.preprocess import registration_channel

    return registration_channel(ihc_small, "brightfield", "hematoxylin", True)


def test_alignment_evidence_separates_a_match_from_unrelated_tissue(tissue):
    region = np.ones(tissue.shape, bool)
    matched = alignment_evidence(tissue, tissue + 0.05 * np.random.default_rng(0).random(
        tissue.shape), region, sigma=4)  # fmt: skip
    other = np.rot90(tissue).copy()  # the same kind of tissue, another place
    unrelated = alignment_evidence(tissue, other, region, sigma=4)
    assert matched["evidence"] > 20 and unrelated["evidence"] < 9
    assert "unrelated_images" in _flags({"evidence": unrelated})
    assert "unrelated_images" not in _flags({"evidence": matched})


def test_similarity_not_improved_unless_already_aligned():
    assert "similarity_not_improved" in _flags({"ncc_initial": 0.3, "ncc_final": 0.305})
    assert not _flags({"ncc_initial": 0.3, "ncc_final": 0.8})
    assert not _flags({"ncc_initial": 0.95, "ncc_final": 0.95})  # aligned from the start


def test_landmark_flags():
    assert "landmark_error" in _flags({"rtre_initial": 0.1, "rtre_final": 0.05})
    assert "landmarks_worse" in _flags({"rtre_initial": 0.004, "rtre_final": 0.008})
    assert not _flags({"rtre_initial": 0.1, "rtre_final": 0.002})
    assert "unmapped_points" in _flags({"unmapped_inside": 2})
    assert not _flags({"unmapped_inside": 0})


def test_folding_and_jumping_fields():
    yy, xx = np.mgrid[:64, :64].astype(float)
    smooth = np.stack([2 * np.sin(yy / 10), 2 * np.cos(xx / 12)])
    assert field_regularity(smooth, (16.0, 16.0))["folding_fraction"] == 0
    assert not _flags({"field": field_regularity(smooth, (16.0, 16.0))})
    folded = smooth.copy()
    folded[0, 20:30, 20:30] -= 40 * (xx[20:30, 20:30] - 20)  # x runs backwards: a fold
    measured = field_regularity(folded, (1.0, 1.0))
    assert measured["folding_fraction"] > 0.001
    assert {"field_folds", "field_jumps"} <= _flags({"field": measured})
    # a field that is wrong only where one image shows no tissue is not flagged there
    tissue = np.ones((64, 64), bool)
    tissue[18:32, 18:32] = False
    assert not _flags({"field": field_regularity(folded, (1.0, 1.0), tissue)})
    # the full-resolution refinement's fine component is judged alike, on its own grid
    assert {"field_folds", "field_jumps"} <= _flags({"field_fine": measured})
    assert not _flags({"field": None, "field_fine": None})


def test_overlap_scale_and_shear():
    assert "small_overlap" in _flags({"overlap": 0.2})
    assert not _flags({"overlap": 0.9})
    stretched = np.diag([1.6, 1.0, 1.0])
    assert "implausible_shear" in _flags({"shape": affine_shape(stretched)})
    shrunk = np.diag([0.6, 0.6, 1.0])
    assert "implausible_scale" in _flags({"shape": affine_shape(shrunk), "pixel_sizes_known": True})
    # a 0.65 µm scan against a 0.5 µm one: 0.77 in pixels, 1.0 in tissue
    rescanned = np.diag([0.769, 0.769, 1.0])
    assert not _flags({"shape": affine_shape(rescanned, 0.65 / 0.5), "pixel_sizes_known": True})
    # without pixel sizes a 20× scan may meet a 40× one
    assert not _flags({"shape": affine_shape(np.diag([0.5, 0.5, 1.0]))})


def test_facts_are_information_not_flags():
    mirrored = np.diag([-1.0, 1.0, 1.0])
    flags, info = review({"shape": affine_shape(mirrored), "flow_accepted": False,
                          "rotation_deg": 172.0})  # fmt: skip
    assert flags == []
    assert any("mirrored" in line for line in info) and any("172" in line for line in info)
    assert any("global transform only" in line for line in info)


def test_review_of_a_good_registration_has_no_flag(tissue):
    working = WorkingImage(tissue, tissue > 0.2, np.eye(3))
    identity = Transform.from_affine(np.eye(3), tissue.shape, tissue.shape)
    similarity, _ = similarity_by_stage(working, working, stage_transforms(identity))
    result = review_registration(working, working, identity, similarity)
    assert result["flags"] == [] and result["measures"]["evidence"]["evidence"] > 9


def _table(n, flagged=()):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        name = f"slide_{i:03d}"
        bad = name in flagged
        rows.append(summary_row({
            "sample": name, "status": "ok",
            "similarity": {s: {"ncc": 0.3 if bad else 0.9, "nmi": 1.2} for s in
                           ("initial", "rigid", "final")},
            "landmarks": {"final": {"rtre_median": float(rng.uniform(0.001, 0.004))}},
            "review": {"flags": [{"flag": "unrelated_images", "reason": "evidence 3.0 < 9"}]
                       if bad else [], "info": [],
                       "measures": {"evidence": {"evidence": 3.0 if bad else 40.0}}},
        }))  # fmt: skip
    return rows


@pytest.mark.parametrize("n", [3, 300])
def test_cohort_figure_is_legible_at_any_size(tmp_path, n):
    from PIL import Image

    flagged = {"slide_001", f"slide_{n - 1:03d}"}
    figure = summary_figure(str(tmp_path / "summary.png"), _table(n, flagged))
    with Image.open(tmp_path / "summary.png") as image:
        assert image.size[0] >= 1400 and image.size[1] <= 1200  # one page, whatever n
    texts = "\n".join(t.get_text() for ax in figure.axes for t in ax.texts)
    texts += figure.get_suptitle()
    for name in flagged:
        assert name in texts  # flagged registrations are named ...
    assert "slide_002" not in texts or n <= 12  # ... the others only in a small cohort
    assert f"2 of {n} flagged" in texts


def test_summary_row_carries_flags_reasons_and_information():
    row = _table(3, {"slide_001"})[1]
    assert row["flags"] == "unrelated_images"
    assert row["flag_reasons"] == "unrelated_images: evidence 3.0 < 9"
    assert row["evidence"] == 3.0


@pytest.mark.workflow
def test_unrelated_and_mixed_up_pairs_are_flagged_and_good_ones_not(tmp_path):
    from helpers import make_cohort, run_snakemake
    from regflow.io import write_ome_tiff
    from skimage import data, transform

    make_cohort(tmp_path / "data", 192, tmp_path / "example.tsv")
    ihc = data.immunohistochemistry()
    retina = transform.resize(data.retina()[200:1200, 200:1200], (256, 256), anti_aliasing=True)
    images = {
        "ihc_a": ihc[:256, :256], "ihc_b": ihc[256:, 256:],  # two places: another sample
        "retina": np.round(retina * 255).astype(np.uint8),  # not a tissue section at all
    }  # fmt: skip
    for name, rgb in images.items():
        write_ome_tiff(tmp_path / f"{name}.ome.tif", np.moveaxis(rgb, -1, 0), ["R", "G", "B"],
                       0.5, rgb=True)  # fmt: skip
    sheet = pd.read_csv(tmp_path / "example.tsv", sep="\t")
    sheet = sheet.drop(columns=[c for c in sheet.columns if "annotations" in c or "assoc" in c])
    extra = pd.DataFrame([
        {"sample": "unrelated", "fixed": str(tmp_path / "ihc_a.ome.tif"),
         "moving": str(tmp_path / "retina.ome.tif")},
        {"sample": "other_sample", "fixed": str(tmp_path / "ihc_a.ome.tif"),
         "moving": str(tmp_path / "ihc_b.ome.tif")},
    ])  # fmt: skip
    pd.concat([sheet, extra]).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    (tmp_path / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    run_snakemake(tmp_path, "--cores", "2", check=False)
    summary = pd.read_csv(tmp_path / "out" / "summary.tsv", sep="\t").set_index("sample")
    for good in ("ihc_rigid", "ihc_to_fluorescence", "fluorescence_to_ihc"):
        assert pd.isna(summary.loc[good, "flags"]), summary.loc[good, "flag_reasons"]
    for bad in ("unrelated", "other_sample"):
        status, flags = summary.loc[bad, "status"], str(summary.loc[bad, "flags"])
        assert status == "failed" or "unrelated_images" in flags, (bad, status, flags)
        assert "different tissue or another sample" in str(summary.loc[bad, "flag_reasons"])
