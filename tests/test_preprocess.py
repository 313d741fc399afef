import numpy as np
import pytest
from regflow.io import ImageInfo
from regflow.preprocess import (
    BlankImageError,
    ChannelError,
    pair_scales,
    preprocess,
    registration_channel,
    resolve_channel,
    scale_matrix,
)


def test_resolve_channel_names_indices_and_keywords():
    names = ["DAPI", "CD3", "PanCK"]
    assert resolve_channel("", "fluorescence", names, False) == 0
    assert resolve_channel("CD3", "fluorescence", names, False) == 1
    assert resolve_channel("panck", "fluorescence", names, False) == 2
    assert resolve_channel("2", "fluorescence", names, False) == 2
    assert resolve_channel(None, "brightfield", ["R", "G", "B"], True) == "luminance"
    # Against fluorescence, the nuclear stain is the default: it matches DAPI.
    assert (
        resolve_channel("", "brightfield", ["R", "G", "B"], True, "fluorescence") == "hematoxylin"
    )
    assert resolve_channel("", "brightfield", ["R", "G", "B"], True, "brightfield") == "luminance"
    assert resolve_channel("Hematoxylin", "brightfield", ["R", "G", "B"], True) == "hematoxylin"


def test_resolve_channel_errors_list_the_available_names():
    with pytest.raises(ChannelError, match=r"available channel names: \['DAPI', 'CD3'\]"):
        resolve_channel("CD8", "fluorescence", ["DAPI", "CD3"], False)
    with pytest.raises(ChannelError, match="out of range"):
        resolve_channel("5", "fluorescence", ["DAPI", "CD3"], False)
    with pytest.raises(ChannelError, match="needs an RGB brightfield"):
        resolve_channel("hematoxylin", "fluorescence", ["DAPI"], False)


def test_brightfield_and_fluorescence_are_both_signal_bright(ihc_small):
    """Nuclei are dark in brightfield and bright in DAPI: both become bright."""
    from regflow.example import fluorescence_from_brightfield

    hema = registration_channel(ihc_small, "brightfield", "hematoxylin", True)
    dapi = registration_channel(fluorescence_from_brightfield(ihc_small), "fluorescence", 0, False)
    luminance = registration_channel(ihc_small, "brightfield", "luminance", True)
    for signal in (hema, dapi, luminance):
        assert signal.dtype == np.float32 and signal.min() >= 0 and signal.max() <= 1
    assert np.corrcoef(hema.ravel(), dapi.ravel())[0, 1] > 0.8


def test_nan_pixels_never_propagate():
    image = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32) * 1000
    image[0, :5, :5] = np.nan
    image[0, 10, 10] = np.inf
    result = preprocess(image, "fluorescence", 0, False, 1.0)
    assert np.isfinite(result.image).all()


def test_blank_image_is_an_error():
    with pytest.raises(BlankImageError, match="blank"):
        preprocess(np.full((1, 32, 32), 7, np.uint16), "fluorescence", 0, False, 1.0)


def test_a_blank_serial_section_is_kept_as_blank_without_tissue_when_allowed():
    # a stack leaves a blank section out instead of failing the case
    result = preprocess(np.full((3, 64, 48), 245, np.uint8), "brightfield", "luminance", True,
                        0.5, allow_blank=True)  # fmt: skip
    assert result.blank and result.image.shape == (32, 24) and not result.image.any()
    assert not result.tissue_mask.any() and result.full_shape == (64, 48)


def test_pair_scales_use_physical_pixel_sizes():
    fixed = ImageInfo("f", (4000, 3000), 3, "uint8", ["R", "G", "B"], 0.25, True, [(4000, 3000)])
    moving = ImageInfo("m", (1600, 1200), 2, "uint16", ["DAPI", "CD3"], 0.65, False, [(1600, 1200)])
    fixed_scale, moving_scale = pair_scales(fixed, moving, max_size=1000)
    assert fixed_scale == pytest.approx(0.25)
    # Same working pixel size: 0.25/0.25 == 0.65/moving_scale
    assert 0.25 / fixed_scale == pytest.approx(0.65 / moving_scale)
    # Unknown pixel size: same scale for both.
    unknown = ImageInfo("m", (1600, 1200), 2, "uint16", ["a", "b"], None, False, [(1600, 1200)])
    assert pair_scales(fixed, unknown, max_size=1000) == (0.25, 0.25)


def test_scale_matrix_maps_pixel_centres():
    matrix = scale_matrix((100, 200), (50, 100))
    # full pixels 0 and 1 average into working pixel 0, centred at full 0.5
    np.testing.assert_allclose(matrix @ [0.5, 0.5, 1], [0, 0, 1])


def test_mask_morphology_equals_scikit_image():
    """The tissue mask's disk footprint and small-object removal are scikit-image's (whose
    morphology module the preprocess job no longer imports)."""
    from regflow.preprocess import _disk, _without_small_objects
    from skimage import morphology

    for radius in range(0, 12):
        np.testing.assert_array_equal(_disk(radius), morphology.disk(radius).astype(bool))
    rng = np.random.default_rng(0)
    for _ in range(10):
        mask = rng.random((120, 150)) > rng.uniform(0.3, 0.8)
        for max_size in (0, 1, 3, 10, 50):
            np.testing.assert_array_equal(
                _without_small_objects(mask, max_size),
                morphology.remove_small_objects(mask, max_size=max_size),
            )
