"""Dice and surface distances against medpy, calibration error against torchmetrics (both in the test extra)."""
import numpy as np
import pytest

from rl4seg_env.metrics import dice, hausdorff, hd95, masd, segmentation_scores

medpy_binary = pytest.importorskip("medpy.metric.binary", reason="medpy is in the test extra: pip install -e '.[test]'")


def _blob(rng, shape=(40, 56)):
    """A random smooth-ish blob: a disc with a bumpy border, sometimes two pieces."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cy, cx = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = rng.uniform(4, 9) * (1 + 0.25 * np.sin(rng.integers(2, 6) * angle + rng.uniform(0, 6)))
    mask = np.hypot(yy - cy, xx - cx) <= radius
    if rng.random() < 0.3:
        mask |= np.hypot(yy - rng.uniform(0, shape[0]), xx - rng.uniform(0, shape[1])) <= 2
    return mask


PAIRS = [(seed, spacing) for seed in range(20) for spacing in ((1.0, 1.0), (0.308, 0.154), (2.5, 0.7))]


@pytest.mark.parametrize("seed,spacing", PAIRS)
def test_dice_and_surface_distances_match_medpy(seed, spacing):
    rng = np.random.default_rng(seed)
    pred, ref = _blob(rng), _blob(rng)
    if seed % 4 == 0:  # a nearly right prediction as well as unrelated ones
        ref = np.roll(pred, (1, -2), axis=(0, 1))
    assert dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref))
    assert hausdorff(pred, ref, spacing) == pytest.approx(medpy_binary.hd(pred, ref, voxelspacing=spacing))
    assert hd95(pred, ref, spacing) == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=spacing))
    assert masd(pred, ref, spacing) == pytest.approx(medpy_binary.assd(pred, ref, voxelspacing=spacing))


def test_edge_cases_single_pixels_and_empty_masks():
    one = np.zeros((9, 9), bool)
    one[4, 4] = True
    other = np.zeros((9, 9), bool)
    other[1, 7] = True
    for f, g in ((hausdorff, medpy_binary.hd), (hd95, medpy_binary.hd95), (masd, medpy_binary.assd)):
        assert f(one, other, (0.5, 2.0)) == pytest.approx(g(one, other, voxelspacing=(0.5, 2.0)))
        assert f(one, one) == 0.0
    empty = np.zeros((9, 9), bool)
    # medpy refuses an empty mask; here one empty mask is undefined (nan), two are identical (0)
    with pytest.raises(RuntimeError):
        medpy_binary.hd(empty, one)
    assert all(np.isnan(f(empty, one)) for f in (hausdorff, hd95, masd))
    assert all(f(empty, empty) == 0.0 for f in (hausdorff, hd95, masd))
    assert dice(empty, empty) == 1.0 and dice(empty, one) == 0.0


def test_per_structure_scores_use_the_same_definitions():
    rng = np.random.default_rng(3)
    pred = np.zeros((40, 56), np.uint8)
    ref = np.zeros((40, 56), np.uint8)
    pred[_blob(rng)], ref[_blob(rng)] = 1, 1
    pred[_blob(rng) & (pred == 0)], ref[_blob(rng) & (ref == 0)] = 2, 2
    scores = segmentation_scores(pred, ref, (0.3, 0.2), largest_component=False)
    epi_p, epi_r = pred > 0, ref > 0
    assert scores["hd95_epi"] == pytest.approx(medpy_binary.hd95(epi_p, epi_r, voxelspacing=(0.3, 0.2)))
    assert scores["masd_myo"] == pytest.approx(medpy_binary.assd(pred == 2, ref == 2, voxelspacing=(0.3, 0.2)))
    assert scores["hd_lv"] == pytest.approx(medpy_binary.hd(pred == 1, ref == 1, voxelspacing=(0.3, 0.2)))


def test_expected_calibration_error_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    classification = pytest.importorskip("torchmetrics.classification", reason="torchmetrics is in the test extra")
    from reward.uncertainty import expected_calibration_error

    rng = np.random.default_rng(0)
    for n_bins in (5, 15):
        uncertainty = rng.random(5000)
        errors = rng.random(5000) < uncertainty ** 1.5  # miscalibrated on purpose
        ours = expected_calibration_error(uncertainty, errors, n_bins=n_bins)
        metric = classification.BinaryCalibrationError(n_bins=n_bins, norm="l1")
        theirs = float(metric(torch.as_tensor(uncertainty, dtype=torch.float64), torch.as_tensor(errors.astype(int))))
        assert ours == pytest.approx(theirs, abs=1e-6)
        assert ours > 0.02
