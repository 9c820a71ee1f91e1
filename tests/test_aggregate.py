"""IQM, stratified-bootstrap intervals and performance profiles (the definitions of Agarwal et al. 2021)."""
import numpy as np
import pytest

from pipeline.aggregate import iqm, performance_profile, plot_performance_profiles, stratified_bootstrap_ci


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(8)) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert iqm([[1.0, 100.0], [2.0, 3.0]]) == pytest.approx(2.5)  # pooled over tasks; the outliers dropped
    with pytest.raises(ValueError, match="finite"):
        iqm([1.0, np.nan])


def test_bootstrap_interval_contains_the_estimate_and_resamples_within_tasks():
    rng = np.random.default_rng(0)
    scores = np.stack([rng.normal(0.8, 0.02, 10), rng.normal(0.3, 0.02, 10)], axis=1)  # 10 runs, 2 tasks
    ci = stratified_bootstrap_ci(scores, np.mean, reps=500)
    assert ci.low <= ci.value <= ci.high and ci.value == pytest.approx(scores.mean())
    # stratified: every replicate keeps one score per run and task, so the two tasks never mix and the mean
    # stays near 0.55; an unstratified bootstrap of the pooled 20 scores would spread far wider (~0.11)
    assert ci.high - ci.low < 0.03
    assert stratified_bootstrap_ci(scores, np.mean, reps=500) == ci  # deterministic given the seed
    constant = stratified_bootstrap_ci(np.full((3, 2), 0.9), reps=50)
    assert (constant.low, constant.value, constant.high) == pytest.approx((0.9, 0.9, 0.9))


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(100):
        sample = rng.normal(0.0, 1.0, 30)
        ci = stratified_bootstrap_ci(sample, np.mean, reps=300, seed=trial)
        hits += ci.low <= 0.0 <= ci.high
    assert 85 <= hits <= 99


def test_performance_profile_and_its_plot(tmp_path):
    scores = np.array([[0.1, 0.5], [0.7, 0.9]])
    assert performance_profile(scores, [0.0, 0.5, 0.95]).tolist() == [1.0, 0.5, 0.0]
    png = plot_performance_profiles({"a": scores, "b": scores + 0.05}, tmp_path / "profile.png", reps=20)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
