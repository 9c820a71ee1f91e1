"""Uncertainty maps and calibration metrics of the reward network (reward/uncertainty.py)."""
from __future__ import annotations

import numpy as np
import pytest

from reward.uncertainty import (
    ReliabilityCurve,
    UncertaintyAccumulator,
    adaptive_calibration_error,
    error_map,
    expected_calibration_error,
    foreground_mask,
    maximum_calibration_error,
    mutual_information,
    plot_reliability_diagram,
    reliability_curve,
    reward_dice_correlation,
    uncertainty_map,
)


def calibrated(n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uncertainty u ~ U(0, 1) and errors drawn with probability exactly u (perfect calibration)."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    return u, rng.random(n) < u


def test_uncertainty_map_is_one_minus_reward() -> None:
    reward = np.array([[0.0, 0.25], [0.9, 1.0]], dtype=np.float32)
    u = uncertainty_map(reward)
    assert u.dtype == np.float32 and u.shape == reward.shape
    np.testing.assert_allclose(u, [[1.0, 0.75], [0.1, 0.0]], atol=1e-7)


def test_foreground_mask_covers_every_error() -> None:
    pred = np.array([[0, 1, 0], [2, 0, 0]])
    gt = np.array([[0, 1, 2], [0, 0, 1]])
    fg = foreground_mask(pred, gt)
    np.testing.assert_array_equal(fg, [[False, True, True], [True, False, True]])
    assert not (error_map(pred, gt) & ~fg).any()


def test_ece_of_calibrated_predictor_is_near_zero_and_miscalibrated_is_large() -> None:
    u, e = calibrated()
    assert expected_calibration_error(u, e) < 0.01
    assert adaptive_calibration_error(u, e) < 0.01
    # always claims 10 % error probability while the real error rate is ~50 %
    assert expected_calibration_error(np.full_like(u, 0.1), e) == pytest.approx(abs(0.1 - e.mean()), abs=1e-9)
    # overconfident: squashes the uncertainty towards 0/1
    sharp = np.clip((u - 0.5) * 3 + 0.5, 0, 1)
    assert expected_calibration_error(sharp, e) > 0.1


def test_ece_matches_hand_computation_and_mce_bounds_it() -> None:
    # bin [0, 0.5): predictions 0.1, 0.2 with 1 error of 2; bin [0.5, 1]: 0.9, 1.0 with 2 errors of 2
    u = np.array([0.1, 0.2, 0.9, 1.0])
    e = np.array([True, False, True, True])
    gap_lo, gap_hi = abs(0.15 - 0.5), abs(0.95 - 1.0)
    assert expected_calibration_error(u, e, n_bins=2) == pytest.approx((2 * gap_lo + 2 * gap_hi) / 4)
    assert maximum_calibration_error(u, e, n_bins=2) == pytest.approx(gap_lo)
    rng = np.random.default_rng(1)
    for _ in range(5):
        u, e = rng.random(5000) ** 2, rng.random(5000) < rng.random()
        assert maximum_calibration_error(u, e) >= expected_calibration_error(u, e)


def test_ace_uses_equal_mass_bins() -> None:
    u, e = calibrated(100_000, seed=3)
    # most mass piled near 0 (confident pixels) with a calibrated error rate everywhere
    u2 = u ** 4
    e2 = np.random.default_rng(4).random(u2.size) < u2
    for uu, ee in ((u, e), (u2, e2)):
        assert 0.0 <= adaptive_calibration_error(uu, ee) < 0.01
    # a constant prediction puts everything in one equal-mass group per bin: ACE = |p - error rate|
    assert adaptive_calibration_error(np.full(1000, 0.3), e[:1000]) == pytest.approx(abs(0.3 - e[:1000].mean()))
    assert adaptive_calibration_error(np.full(1000, 0.3), e[:1000], n_bins=10) > 0.1


def test_metrics_respect_the_mask_and_refuse_bad_input() -> None:
    u = np.array([0.0, 0.0, 1.0, 1.0])
    e = np.array([False, False, True, False])
    mask = np.array([True, True, True, False])  # hide the one badly-calibrated pixel
    assert expected_calibration_error(u, e, mask) == pytest.approx(0.0)
    assert expected_calibration_error(u, e) > 0
    assert np.isnan(expected_calibration_error(u, e, np.zeros(4, bool)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(u + 0.5, e)
    with pytest.raises(ValueError, match="shape mismatch"):
        expected_calibration_error(u, e[:3])


def test_reliability_curve_bins() -> None:
    u = np.array([0.05, 0.15, 0.15, 0.95])
    e = np.array([0, 0, 1, 1], dtype=bool)
    curve = reliability_curve(u, e, n_bins=10)
    assert isinstance(curve, ReliabilityCurve)
    np.testing.assert_array_equal(curve.counts, [1, 2, 0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(curve.mean_uncertainty[[0, 1, 9]], [0.05, 0.15, 0.95])
    np.testing.assert_allclose(curve.error_rate[[0, 1, 9]], [0.0, 0.5, 1.0])
    assert np.isnan(curve.error_rate[2])
    np.testing.assert_allclose(curve.bin_edges, np.linspace(0, 1, 11))


def test_mutual_information_zero_when_independent_positive_when_informative() -> None:
    rng = np.random.default_rng(5)
    u = rng.random(200_000)
    independent = rng.random(u.size) < 0.3
    informative = rng.random(u.size) < u
    assert mutual_information(independent, u) < 1e-3
    mi = mutual_information(informative, u)
    assert mi > 0.1
    assert mutual_information(informative, u, unit="bits") == pytest.approx(mi / np.log(2))
    # a perfect separation reaches the error entropy H(E)
    perfect = u > 0.5
    p = perfect.mean()
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert mutual_information(perfect, u, n_bins=2) == pytest.approx(entropy, rel=1e-6)
    with pytest.raises(ValueError, match="unit"):
        mutual_information(perfect, u, unit="dits")


def test_reward_dice_correlation_sign_and_degenerate_input() -> None:
    rng = np.random.default_rng(6)
    dice = rng.random(50)
    assert reward_dice_correlation(dice + 0.05 * rng.random(50), dice) > 0.9
    assert reward_dice_correlation(1 - dice, dice) == pytest.approx(-1.0)
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(reward_dice_correlation(np.full(50, 0.7), dice))
    with pytest.warns(RuntimeWarning, match="at least 2"):
        assert np.isnan(reward_dice_correlation([0.5], [0.5]))
    with pytest.raises(ValueError, match="50 values"):
        reward_dice_correlation(dice, dice[:10])


def synthetic_batches(n_batches: int = 4, seed: int = 7):
    """Reward maps, predictions and ground truths (B=3, 32x32, 3 classes) whose reward tracks the errors."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for _ in range(n_batches):
        gts, preds, rewards = [], [], []
        for _ in range(3):
            r = rng.uniform(5, 10)
            disc = (yy - 16) ** 2 + (xx - 16) ** 2
            gt = np.where(disc < r ** 2, 1, np.where(disc < (r + 3) ** 2, 2, 0))
            pred = gt.copy()
            corrupt = rng.random(gt.shape) < rng.uniform(0.02, 0.3)
            pred[corrupt] = rng.integers(0, 3, corrupt.sum())
            reward = np.clip(np.where(pred == gt, 0.9, 0.2) + rng.normal(0, 0.1, gt.shape), 0, 1)
            gts.append(gt), preds.append(pred), rewards.append(reward.astype(np.float32))
        yield np.stack(rewards), np.stack(preds), np.stack(gts)


def test_accumulator_equals_one_shot_computation() -> None:
    batches = list(synthetic_batches())
    acc = UncertaintyAccumulator(n_classes=3)
    for rewards, preds, gts in batches:
        acc.update(rewards, preds, gts)
    rewards, preds, gts = (np.concatenate(x) for x in zip(*batches))
    u, e, fg = uncertainty_map(rewards), error_map(preds, gts), foreground_mask(preds, gts)
    out = acc.compute()
    assert out["n_images"] == 12 and out["n_pixels"] == fg.sum()
    assert out["ece"] == pytest.approx(expected_calibration_error(u, e, fg), abs=1e-12)
    assert out["mce"] == pytest.approx(maximum_calibration_error(u, e, fg), abs=1e-12)
    assert out["mi"] == pytest.approx(mutual_information(e, u, fg), abs=1e-12)
    # ACE comes from a fine histogram: equal up to its resolution
    assert out["ace"] == pytest.approx(adaptive_calibration_error(u, e, fg), abs=2e-3)
    from rl4seg_env.metrics import dice_per_class

    dices = dice_per_class(preds, gts, 3).mean(axis=1)
    assert out["correlation"] == pytest.approx(reward_dice_correlation(rewards.mean(axis=(1, 2)), dices))
    assert out["correlation"] > 0.5  # more corruption -> lower reward and lower Dice
    curve = acc.reliability_curve()
    np.testing.assert_array_equal(curve.counts, reliability_curve(u, e, fg).counts)
    acc.reset()
    assert acc.n_pixels == 0 and acc.n_images == 0
    with pytest.warns(RuntimeWarning):  # no image: the correlation is undefined
        assert np.isnan(acc.compute()["ece"])


def test_accumulator_memory_is_flat() -> None:
    acc = UncertaintyAccumulator(n_classes=3)
    sizes = []
    for rewards, preds, gts in synthetic_batches(6):
        acc.update(rewards, preds, gts)
        sizes.append(acc._sum_u.nbytes + acc._sum_e.nbytes + acc._count.nbytes)
    assert len(set(sizes)) == 1


def test_reliability_diagram_png(tmp_path) -> None:
    acc = UncertaintyAccumulator(n_classes=3)
    for batch in synthetic_batches(2):
        acc.update(*batch)
    path = plot_reliability_diagram(acc, tmp_path / "plots" / "reliability.png", title="toy")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    u, e = calibrated(10_000)
    path2 = plot_reliability_diagram(reliability_curve(u, e), tmp_path / "calibrated.png")
    assert path2.stat().st_size > 10_000
