import numpy as np
import pytest
from regflow.example import KnownWarp, fixed_landmarks, map_landmarks, render_moving
from regflow.flow import refine_flow, to_full_resolution
from regflow.preprocess import preprocess
from regflow.rigid import register_rigid, warp_to_fixed
from regflow.transform import Transform


@pytest.mark.parametrize("max_size", [0, 160])
def test_flow_recovers_elastic_deformation_beyond_rigid(ihc_small, max_size):
    warp = KnownWarp(angle_deg=-30.0, scale=1.0, shift=(4.0, 3.0), elastic_px=5.0, seed=4)
    shape = ihc_small.shape[1:]
    moving_rgb = render_moving(ihc_small, warp, shape, np.full(3, 255.0)).round().astype(np.uint8)
    fixed = preprocess(ihc_small, "brightfield", "hematoxylin", True, 1.0)
    moving = preprocess(moving_rgb, "brightfield", "hematoxylin", True, 1.0)
    rigid = register_rigid(fixed.image, moving.image, fixed.tissue_mask, moving.tissue_mask)
    moving_rigid = warp_to_fixed(moving.image, rigid.fixed_to_moving, shape)
    mask = warp_to_fixed(moving.tissue_mask.astype(np.float32), rigid.fixed_to_moving, shape) > 0.5
    result = refine_flow(fixed.image, moving_rigid, fixed.tissue_mask, mask, max_size=max_size)
    assert result.accepted
    assert result.ncc_final > result.ncc_rigid

    points = fixed_landmarks(fixed.image, margin=32)
    truth = map_landmarks(points, warp, shape, shape)
    global_only = Transform.from_affine(rigid.fixed_to_moving, shape, shape)
    full = Transform(
        rigid.fixed_to_moving,
        to_full_resolution(result.displacement, fixed.full_to_working),
        fixed.full_to_working,
        shape,
        shape,
    )
    error_rigid = np.linalg.norm(global_only.fixed_to_moving(points) - truth, axis=1)
    error_final = np.linalg.norm(full.fixed_to_moving(points) - truth, axis=1)
    assert np.median(error_rigid) > 1.0  # the deformation is not rigid …
    assert np.median(error_final) < 0.5  # … and the flow removes it
    assert np.median(error_final) < 0.3 * np.median(error_rigid)


def test_flow_rejected_when_nothing_to_gain(ihc_small):
    fixed = preprocess(ihc_small, "brightfield", "hematoxylin", True, 1.0)
    result = refine_flow(fixed.image, fixed.image.copy(), fixed.tissue_mask, fixed.tissue_mask)
    assert not result.accepted
    assert not result.displacement.any()
    assert "rejected" in result.reason


def test_flow_disabled():
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    mask = np.ones_like(image, bool)
    result = refine_flow(image, image, mask, mask, method="none")
    assert not result.accepted and "disabled" in result.reason
