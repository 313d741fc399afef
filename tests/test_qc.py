"""QC metrics on known cases."""

import numpy as np
import pytest
from regflow.qc import (
    WorkingImage,
    cohort_table,
    decide_status,
    failure_reason,
    landmark_errors,
    similarity_by_stage,
    stage_transforms,
)
from regflow.transform import Transform


def _working(image):
    return WorkingImage(image, np.ones(image.shape, bool), np.eye(3))


def test_identical_images_score_one_at_every_stage():
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    transforms = stage_transforms(Transform.from_affine(np.eye(3), (40, 50), (40, 50)))
    metrics, _ = similarity_by_stage(_working(image), _working(image), transforms)
    for stage in ("initial", "rigid", "final"):
        assert metrics[stage]["ncc"] == pytest.approx(1.0, abs=1e-6)


def test_known_shift_gives_known_tre_per_stage():
    shift = np.eye(3)
    shift[:2, 2] = [3.0, 4.0]  # fixed → moving: +3 px x, +4 px y
    transform = Transform.from_affine(shift, (100, 100), (100, 100))
    fixed_points = np.array([[10.0, 10.0], [50.0, 60.0]])
    moving_points = fixed_points + [3.0, 4.0]
    summaries, mapped = landmark_errors(
        fixed_points,
        moving_points,
        transform.moving_to_fixed(moving_points),
        stage_transforms(transform),
        diagonal=100.0,
    )
    assert summaries["initial"]["tre_median"] == pytest.approx(5.0)
    assert summaries["rigid"]["tre_median"] == pytest.approx(0.0, abs=1e-6)
    assert summaries["final"]["rtre_median"] == pytest.approx(0.0, abs=1e-6)


def test_status_rules():
    assert decide_status(True, 0.8, 0.05, "")[0] == "ok"
    assert decide_status(False, 0.8, 0.05, "refinement rejected")[0] == "rigid_only"
    # the flow rejected, but the full-resolution refinement kept tiles: non-rigid after all
    assert decide_status(False, 0.8, 0.05, "refinement rejected", refined=True)[0] == "ok"
    status, reason = decide_status(True, 0.01, 0.05, "")
    assert status == "failed" and "qc.min_ncc" in reason


def test_failed_samples_in_the_cohort_table():
    log = "x INFO started\nx ERROR FAILED sample=s2 stage=preprocess reason=the file is truncated\n"
    assert failure_reason(log) == "preprocess: the file is truncated"
    table = cohort_table(
        {"s1": {"sample": "s1", "status": "ok", "similarity": {"final": {"ncc": 0.9}}}, "s2": None},
        {"s2": failure_reason(log)},
    )
    assert [row["status"] for row in table] == ["ok", "failed"]
    assert table[1]["reason"] == "preprocess: the file is truncated"


def test_summary_tsv_columns_missing_values_and_number_format(tmp_path):
    """summary.tsv: a pair sheet's columns (no case/image), missing values empty, floats to
    six significant digits, readable by pandas with the right types."""
    import pandas as pd
    from regflow.qc import SUMMARY_COLUMNS, summary_table, write_summary

    metrics = [
        {"sample": "a", "status": "ok", "similarity": {"final": {"ncc": 0.123456789}},
         "landmarks": {"final": {"rtre_median": 0.0012345678, "tre_median": 3.5}},
         "rigid": {"rotation_deg": -90.0, "scale": 1.0}, "seconds": {"rigid": 1.25}},
        {"sample": "b", "status": "failed", "reason": "preprocess: truncated"},
    ]  # fmt: skip
    table = summary_table(metrics)
    write_summary(table, tmp_path / "summary.tsv", tmp_path / "summary.png")
    lines = (tmp_path / "summary.tsv").read_text().splitlines()
    assert lines[0].split("\t") == [c for c in SUMMARY_COLUMNS if c not in ("case", "image")]
    read = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert list(read["sample"]) == ["a", "b"] and list(read["status"]) == ["ok", "failed"]
    assert read.loc[0, "ncc_final"] == 0.123457 and read.loc[0, "rtre_final"] == 0.00123457
    assert read.loc[0, "rotation_deg"] == -90 and pd.isna(read.loc[1, "ncc_final"])
    assert read.loc[1, "flags"] == "failed" and pd.isna(read.loc[0, "flags"])
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    assert list(tmp_path.glob(".*")) == []
    images = summary_table([{"sample": "case1/he", "status": "ok"}])
    assert list(images[0])[:3] == ["sample", "case", "image"] and images[0]["case"] == "case1"
