import numpy as np
import pytest
from regflow.example import KnownWarp, fixed_landmarks, map_landmarks, render_moving
from regflow.flow import refine_flow, to_full_resolution
from regflow.preprocess import preprocess
from regflow.rigid import register_rigid, warp_fast
from regflow.transform import Transform


@pytest.mark.parametrize("method", ["ilk", "tvl1", "tvl1+ilk"])
@pytest.mark.parametrize("max_size", [0, 160])
def test_flow_recovers_elastic_deformation_beyond_rigid(ihc_small, max_size, method):
    warp = KnownWarp(angle_deg=-30.0, scale=1.0, shift=(4.0, 3.0), elastic_px=5.0, seed=4)
    shape = ihc_small.shape[1:]
    moving_rgb = render_moving(ihc_small, warp, shape, np.full(3, 255.0)).round().astype(np.uint8)
    fixed = preprocess(ihc_small, "brightfield", "hematoxylin", True, 1.0)
    moving = preprocess(moving_rgb, "brightfield", "hematoxylin", True, 1.0)
    rigid = register_rigid(fixed.image, moving.image, fixed.tissue_mask, moving.tissue_mask)
    moving_rigid = warp_fast(moving.image, rigid.fixed_to_moving, shape)
    mask = warp_fast(moving.tissue_mask.astype(np.float32), rigid.fixed_to_moving, shape) > 0.5
    result = refine_flow(
        fixed.image, moving_rigid, fixed.tissue_mask, mask, method=method, max_size=max_size
    )
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


def _flat_scene(n: int = 256) -> np.ndarray:
    """Uniform shapes on a black background: no texture inside, only straight or curved edges."""
    from skimage import draw

    image = np.zeros((n, n), np.float32)
    image[draw.polygon([40, 40, 150, 150], [40, 140, 140, 40])] = 0.5
    image[draw.ellipse(170, 150, 55, 70)] = 0.9
    image[draw.polygon([30, 200, 120], [170, 230, 220])] = 0.7
    return image


@pytest.mark.parametrize("method", ["ilk", "tvl1", "tvl1+ilk"])
@pytest.mark.parametrize("seed", [0, 3])
def test_flow_has_no_wild_vectors_where_the_image_says_nothing(method, seed):
    """Flat regions and straight edges leave local motion undetermined (aperture problem);
    there the field must borrow from confident neighbours or stay at the global transform,
    not follow the arbitrary, huge vectors a local solver returns (ILK did: up to 39 px)."""
    image = _flat_scene()
    warp = KnownWarp(angle_deg=0.0, scale=1.0, shift=(0.0, 0.0), elastic_px=6.0, seed=seed)
    moving = render_moving(image[np.newaxis], warp, image.shape, np.zeros(1))[0]
    moving = moving.astype(np.float32)
    result = refine_flow(image, moving, image > 0, moving > 0, method=method)
    assert result.accepted
    assert np.hypot(*result.displacement).max() < 2 * 6.0
    points = np.array([[90, 95], [100, 60], [150, 170], [200, 160], [190, 80], [60, 120]], float)
    truth = map_landmarks(points, warp, image.shape, image.shape)
    field = Transform(
        np.eye(3), to_full_resolution(result.displacement, np.eye(3)), np.eye(3), *2 * [image.shape]
    )
    error = np.linalg.norm(field.fixed_to_moving(points) - truth, axis=1)
    unregistered = np.linalg.norm(points - truth, axis=1)
    assert error.max() < unregistered.max() + 1.0


@pytest.mark.parametrize("seed", [1, 2])
def test_torn_region_gets_no_wild_vectors(ihc_rgb, seed):
    """A block of the moving section torn out (blank): without the forward–backward check
    the flow drags the tear's edge over the fixed texture (vectors of 50–120 px against a
    true deformation of ≤ 3 px); with it those vectors are rejected and replaced by their
    consistent neighbours (the field around bridges the hole), and the rest of the field is as
    accurate as before."""
    from scipy import ndimage as ndi

    warp = KnownWarp(angle_deg=0.0, scale=1.0, shift=(0.0, 0.0), elastic_px=4.0, seed=seed)
    shape = ihc_rgb.shape[1:]
    rendered = render_moving(ihc_rgb, warp, shape, np.full(3, 255.0))
    rendered[:, 150:330, 180:340] = 255  # torn out
    fixed = preprocess(ihc_rgb, "brightfield", "hematoxylin", True, 1.0)
    moving = preprocess(rendered.round().astype(np.uint8), "brightfield", "hematoxylin",
                        True, 1.0)  # fmt: skip
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    points = np.stack([cols.ravel(), rows.ravel()], 1)[::97].astype(float)
    truth = map_landmarks(points, warp, shape, shape)
    in_tear = (points[:, 1] >= 150) & (points[:, 1] < 330) & (points[:, 0] >= 180)
    in_tear &= points[:, 0] < 340
    near = (np.abs(points[:, 1] - 240) < 120) & (np.abs(points[:, 0] - 260) < 110) & ~in_tear

    def errors(consistency):
        result = refine_flow(fixed.image, moving.image, fixed.tissue_mask, moving.tissue_mask,
                             consistency=consistency)  # fmt: skip
        assert result.accepted
        field = [ndi.map_coordinates(d, points[:, ::-1].T, order=1) for d in result.displacement]
        error = np.linalg.norm(points + np.stack(field[::-1], 1) - truth, axis=1)
        return error, np.hypot(*field)

    unchecked, unchecked_size = errors(0.0)
    checked, checked_size = errors(2.0)
    assert unchecked[near].max() > 20 and unchecked_size[in_tear].max() > 20  # the defect …
    # … is gone: in the tear the field takes its surroundings' motion (≤ 4 px here)
    assert checked[near].max() < 5 and checked_size[in_tear].max() < 4.5
    assert np.median(checked[near]) < 0.5
    assert np.median(checked[~near & ~in_tear]) <= np.median(unchecked[~near & ~in_tear]) + 0.02


def test_lucas_kanade_recovers_a_smooth_deformation_like_scikit_image(ihc_rgb):
    """The closed-form ILK recovers a known smooth field (up to 4 px) where the image has
    structure, as scikit-image's ``optical_flow_ilk`` (same method) does."""
    from regflow.flow import flow_confidence, lucas_kanade
    from scipy import ndimage as ndi
    from skimage import registration

    fixed = preprocess(ihc_rgb, "brightfield", "hematoxylin", True, 1.0).image
    rng = np.random.default_rng(5)
    truth = np.stack([ndi.gaussian_filter(rng.normal(size=fixed.shape), 40) for _ in range(2)])
    truth *= 4.0 / np.abs(truth).max()
    rows, cols = np.mgrid[: fixed.shape[0], : fixed.shape[1]].astype(float)
    # moving(p + truth(p)) = fixed(p): sample the inverse (the field is smooth and small)
    moving = ndi.map_coordinates(fixed, [rows - truth[0], cols - truth[1]], order=1,
                                 mode="nearest").astype(np.float32)  # fmt: skip
    ours = lucas_kanade(fixed, moving, radius=7, num_warp=3)
    theirs = registration.optical_flow_ilk(fixed, moving, radius=7, num_warp=3,
                                           prefilter=False, dtype=np.float32)  # fmt: skip
    structured = flow_confidence(fixed, 7) > np.percentile(flow_confidence(fixed, 7), 50)
    structured[:20] = structured[-20:] = structured[:, :20] = structured[:, -20:] = False
    error_ours = np.hypot(*(ours - truth))[structured]
    error_theirs = np.hypot(*(theirs - truth))[structured]
    assert np.median(error_ours) < 0.25
    assert np.median(error_ours) < np.median(error_theirs) + 0.05


def test_auto_takes_ilk_where_intensities_correspond_and_tvl1_ilk_where_not(ihc_small):
    """``auto`` resolves by the NCC after the global stage: the same stain (NCC ≈ 0.9) gets
    ILK, whose least-squares data term is exact there, and recovers the known deformation; a
    pair whose intensities hardly correspond (a DAB-dominated rendering against hematoxylin)
    gets TV-L1 + ILK. The solver used is reported in the result and its reason."""
    warp = KnownWarp(angle_deg=0.0, scale=1.0, shift=(0.0, 0.0), elastic_px=3.0, seed=2)
    shape = ihc_small.shape[1:]
    rendered = render_moving(ihc_small, warp, shape, np.full(3, 255.0)).round().astype(np.uint8)
    fixed = preprocess(ihc_small, "brightfield", "hematoxylin", True, 1.0)
    same = preprocess(rendered, "brightfield", "hematoxylin", True, 1.0)
    dab = preprocess(rendered, "brightfield", "dab", True, 1.0).image
    results = {}
    for moving, expected in ((same.image, "ilk"), ((same.image + 4 * dab) / 5, "tvl1+ilk")):
        result = refine_flow(fixed.image, moving, fixed.tissue_mask, same.tissue_mask,
                             method="auto")  # fmt: skip
        assert result.method == expected
        assert f"({expected}: NCC after the global stage" in result.reason
        assert (result.ncc_rigid >= 0.5) == (expected == "ilk")
        results[expected] = result
    points = fixed_landmarks(fixed.image, margin=32)
    truth = map_landmarks(points, warp, shape, shape)
    result = results["ilk"]
    field = Transform(np.eye(3), to_full_resolution(result.displacement, np.eye(3)),
                      np.eye(3), shape, shape)  # fmt: skip
    error = np.linalg.norm(field.fixed_to_moving(points) - truth, axis=1)
    assert result.accepted and np.median(error) < 0.25
    forced = refine_flow(fixed.image, same.image, fixed.tissue_mask, same.tissue_mask,
                         method="tvl1")  # fmt: skip
    assert forced.method == "tvl1" and "NCC after the global stage" not in forced.reason


def test_tv_l1_is_scikit_image_tvl1(ihc_rgb):
    """The own TV-L1 (3× faster) computes scikit-image's ``optical_flow_tvl1`` (same
    parameters, no prefilter): the same field to a hundredth of a pixel, and the known
    smooth deformation recovered."""
    from regflow.flow import tv_l1
    from regflow.imageops import local_normalise
    from skimage.registration import optical_flow_tvl1

    warp = KnownWarp(angle_deg=0.0, scale=1.0, shift=(0.0, 0.0), elastic_px=4.0, seed=1)
    shape = ihc_rgb.shape[1:]
    rendered = render_moving(ihc_rgb, warp, shape, np.full(3, 255.0)).round().astype(np.uint8)
    fixed, moving = (
        local_normalise(preprocess(im, "brightfield", "hematoxylin", True, 1.0).image, 8)
        for im in (ihc_rgb, rendered)
    )
    ours = tv_l1(fixed, moving, attachment=5.0, tightness=0.3, num_warp=3, num_iter=5)
    theirs = optical_flow_tvl1(fixed, moving, attachment=5.0, tightness=0.3, num_warp=3,
                               num_iter=5, prefilter=False, dtype=np.float32)  # fmt: skip
    difference = np.hypot(*(ours - theirs))
    assert np.median(difference) < 0.01 and np.percentile(difference, 99) < 0.05
    points = fixed_landmarks(fixed, margin=32)
    truth = map_landmarks(points, warp, shape, shape) - points
    rows, cols = points[:, 1].astype(int), points[:, 0].astype(int)
    found = np.stack([ours[1][rows, cols], ours[0][rows, cols]], 1)
    assert np.median(np.linalg.norm(found - truth, axis=1)) < 0.3


def test_presmoothing_helps_the_flow_between_far_serial_sections():
    """Two sections ten apart (50 µm) of a generated block at 2 µm/px: the same stroma and
    outline under a known smooth deformation, but other cells, fibres and tubes moved along z.
    Smoothing both images at cell scale first (presmooth_sigma, as for a stack's links onto the
    reference from far away) brings the flow closer to the deformation."""
    from regflow.block import Block
    from regflow.channels import resolve_channel
    from regflow.preprocess import normalise_percentile, registration_channel
    from scipy import ndimage as ndi

    block = Block(768, 24, 2.0, 8.0, seed=4)
    rows, cols = np.mgrid[:768, :768].astype(np.float64)
    shift = np.stack([3.0 * np.sin(cols / 45.0), 2.5 * np.cos(rows / 55.0)])  # (d_row, d_col)
    channel = resolve_channel(None, "brightfield", ["R", "G", "B"], True)

    def signal(image):
        return normalise_percentile(
            registration_channel(image, "brightfield", channel, True), 0.0, 99.9
        ).astype(np.float32)

    fixed = signal(block.section(6, "he"))
    # moving(p + shift) = section 16 at p
    moving = signal(np.stack([ndi.map_coordinates(c, [rows - shift[0], cols - shift[1]], order=1,
                                                  mode="nearest")
                              for c in block.section(16, "he")]))  # fmt: skip
    mask = block.tissue(6)
    inner = ndi.binary_erosion(mask & block.tissue(16), iterations=16)

    def error(presmooth):
        result = refine_flow(fixed, moving, mask, mask, method="ilk", smoothing_sigma=32.0,
                             min_improvement=-1.0, presmooth_sigma=presmooth)  # fmt: skip
        return float(np.median(np.hypot(*(result.displacement - shift)[:, inner])))

    plain, smoothed = error(0.0), error(1.5)
    assert smoothed < 0.85 * plain, (plain, smoothed)
