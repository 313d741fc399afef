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
    status, reason = decide_status(True, 0.01, 0.05, "")
    assert status == "failed" and "qc.min_ncc" in reason


def test_failed_samples_in_the_cohort_table():
    log = "x INFO started\nx ERROR FAILED sample=s2 stage=preprocess reason=the file is truncated\n"
    assert failure_reason(log) == "preprocess: the file is truncated"
    table = cohort_table(
        {"s1": {"sample": "s1", "status": "ok", "similarity": {"final": {"ncc": 0.9}}}, "s2": None},
        {"s2": failure_reason(log)},
    )
    assert list(table["status"]) == ["ok", "failed"]
    assert table.loc[1, "reason"] == "preprocess: the file is truncated"
