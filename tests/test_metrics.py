import numpy as np
import pytest
from regflow.metrics import ncc, nmi, target_registration_error, tre_summary


def test_identical_images_have_ncc_one_and_max_nmi():
    image = np.random.default_rng(0).random((64, 64))
    assert ncc(image, image) == pytest.approx(1.0)
    assert ncc(image, 3 * image + 2) == pytest.approx(1.0)
    assert ncc(image, -image) == pytest.approx(-1.0)
    assert nmi(image, image) == pytest.approx(2.0)


def test_constant_image_gives_zero_not_nan():
    image = np.random.default_rng(0).random((16, 16))
    assert ncc(image, np.ones_like(image)) == 0.0


def test_known_shift_gives_known_tre():
    reference = np.array([[10.0, 10.0], [50.0, 20.0], [30.0, 40.0]])
    shifted = reference + [3.0, 4.0]
    tre = target_registration_error(shifted, reference)
    np.testing.assert_allclose(tre, 5.0)
    summary = tre_summary(tre, diagonal=100.0)
    assert summary["tre_median"] == pytest.approx(5.0)
    assert summary["rtre_median"] == pytest.approx(0.05)


def test_tre_pairs_first_min_rows_and_ignores_unmapped():
    reference = np.zeros((4, 2))
    moved = np.array([[1.0, 0.0], [np.nan, np.nan], [2.0, 0.0]])
    tre = target_registration_error(moved, reference)
    assert tre.shape == (3,)
    summary = tre_summary(tre, diagonal=10.0)
    assert summary["tre_max"] == pytest.approx(2.0)
    assert summary["n_unmapped"] == 1


@pytest.mark.parametrize("shape", [(151, 129), (602, 514), (100, 257), (37, 1000), (5, 3)])
@pytest.mark.parametrize("anti_aliasing", [False, True])
def test_resize_linear_equals_scikit_image(shape, anti_aliasing):
    """Down- and upsampling, per-axis factors either side of 1, anti-aliased or not: the
    numbers of skimage's resize (mirrored edges included) to float32 rounding."""
    from regflow.imageops import resize_linear
    from skimage.transform import resize

    image = np.random.default_rng(0).random((301, 257)).astype(np.float32)
    expected = resize(image, shape, order=1, anti_aliasing=anti_aliasing, preserve_range=True)
    result = resize_linear(image, shape, anti_aliasing)
    assert result.dtype == np.float32 and result.shape == shape
    np.testing.assert_allclose(result, expected, rtol=0, atol=5e-7)


def test_joint_histogram_equals_numpy():
    """NMI's joint histogram: numpy's histogram2d counts (equal-width bins, the maximum in the
    last bin, a constant image in the middle bin)."""
    from regflow.metrics import _joint_histogram

    rng = np.random.default_rng(0)
    a = rng.random(200_000)
    levels = rng.integers(0, 256, 200_000).astype(float)  # few distinct values, both ends
    for x, y in ((a, 0.5 * a + 0.5 * rng.random(a.size)), (levels, levels), (np.full(500, 3.0),
                                                                             a[:500])):  # fmt: skip
        expected, _, _ = np.histogram2d(x, y, bins=32)
        np.testing.assert_array_equal(_joint_histogram(x, y, 32), expected)
