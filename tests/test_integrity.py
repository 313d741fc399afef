"""Tissue integrity (groundwork for issue 28): per-cell correlation from sums accumulated
region by region equals a direct computation; a patch of lost nuclei is found, with a label
image and on the grid without one."""

import numpy as np
import pytest
from regflow.example import nuclei_labels, nuclei_scene
from regflow.integrity import CellSums, cell_integrity, window_correlation

SIZE = 768


@pytest.fixture(scope="module")
def rounds():
    """Round 1, and round 2 = the same section where 80 % of the nuclei of a disc are gone
    (their pixels replaced by background), with independent noise; round 1's labels."""
    rng = np.random.default_rng(3)
    image, centres = nuclei_scene((SIZE, SIZE), 1.0, seed=4)
    labels = nuclei_labels(image).astype(np.int64)
    disc = np.hypot(*(np.mgrid[:SIZE, :SIZE] - np.array([400, 300])[:, None, None])) < 120
    inside = [lab for lab in np.unique(labels[disc]) if lab]
    gone = set(rng.choice(inside, int(0.8 * len(inside)), replace=False).tolist())
    lost_pixels = np.isin(labels, list(gone))
    # the nucleus and a rim around it vanish (background)
    from scipy import ndimage as ndi

    lost_pixels = ndi.binary_dilation(lost_pixels, iterations=3) & disc
    round2 = np.where(lost_pixels, 0.02, image) * 0.7  # a dimmer round overall
    round1 = image + rng.normal(0, 0.02, image.shape)
    round2 = round2 + rng.normal(0, 0.02, image.shape)
    return round1, round2, labels, gone, disc


def test_sums_accumulated_by_region_equal_a_direct_computation(rounds):
    round1, round2, labels, _, _ = rounds
    sums = CellSums()
    for r0 in range(0, SIZE, 200):  # regions that cut cells in two
        for c0 in range(0, SIZE, 300):
            block = (slice(r0, r0 + 200), slice(c0, c0 + 300))
            sums.add(labels[block], round1[block], round2[block], (r0, c0))
    table = cell_integrity(sums)
    for label in table.cell[:: max(1, len(table.cell) // 25)]:
        rows, cols = np.nonzero(labels == label)
        x, y = round1[rows, cols], round2[rows, cols]
        index = np.searchsorted(table.cell, label)
        if len(x) > 2:
            np.testing.assert_allclose(table.corr[index], np.corrcoef(x, y)[0, 1], atol=1e-9)
        assert table.x[index] == pytest.approx(cols.mean()) and table.y[index] == pytest.approx(
            rows.mean()
        )
    assert set(table.cell.tolist()) == set(np.unique(labels[labels > 0]).tolist())


def test_lost_cells_are_found_and_kept_ones_are_not(rounds):
    round1, round2, labels, gone, disc = rounds
    sums = CellSums()
    sums.add(labels, round1, round2)
    table = cell_integrity(sums)
    truth = np.isin(table.cell, list(gone))
    recall = table.lost[truth].mean()
    # kept cells outside the damaged disc
    centre_outside = ~disc[table.y.astype(int), table.x.astype(int)]
    false_rate = table.lost[~truth & centre_outside].mean()
    assert recall >= 0.8 and false_rate <= 0.02, (recall, false_rate)
    assert table.lost_fraction == pytest.approx(truth.mean(), rel=0.35)


def test_the_grid_map_is_lower_where_tissue_was_lost(rounds):
    round1, round2, _, _, disc = rounds
    corr = window_correlation(round1, round2, 32)
    centres = disc[16::32, 16::32]
    assert np.nanmedian(corr[~centres]) - np.nanmedian(corr[centres]) > 0.3
