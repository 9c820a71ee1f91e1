"""Few-run aggregates the RL field reports (Agarwal et al., NeurIPS 2021, "Deep RL at the edge of the
statistical precipice"): the interquartile mean (IQM), stratified-bootstrap confidence intervals and
performance profiles.

Scores are a ``(runs, tasks)`` array per method (e.g. seeds x shifts): the IQM is the mean of the middle
50% of all its entries; a bootstrap replicate resamples the runs *within each task* (stratified), so each
task keeps its weight. The ``rliable`` library implements the same; it did not import beside this
project's pandas (``deprecate_kwarg()`` error in its ``arch`` dependency), so this is a small tested copy
of the definitions, checked against direct computations in ``tests/test_aggregate.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

#: a statistic of a (runs, tasks) score array
Statistic = Callable[[np.ndarray], float]


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of every score (25% trimmed from each end)."""
    values = np.asarray(scores, dtype=float).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"iqm needs finite scores, got {values.size} value(s) with non-finite ones")
    return float(stats.trim_mean(values, 0.25))


def _as_runs_by_tasks(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    array = np.asarray(scores, dtype=float)
    if array.ndim == 1:
        array = array[:, None]  # one task
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"scores must be a (runs, tasks) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("scores must be finite")
    return array


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def format(self, spec: str = ".3f") -> str:
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _resample(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One stratified-bootstrap replicate of a (runs, tasks) array: runs drawn with replacement per task."""
    runs, tasks = array.shape
    return array[rng.integers(0, runs, size=(runs, tasks)), np.arange(tasks)[None, :]]


def stratified_bootstrap_ci(scores: np.ndarray | Sequence[float], statistic: Statistic = iqm, reps: int = 2000,
                            confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile confidence interval of ``statistic`` under the stratified bootstrap.

    :param scores: (runs, tasks) array, or (runs,) for one task.
    :param statistic: function of a (runs, tasks) array (default :func:`iqm`).
    :param reps: bootstrap replicates (default 2,000).
    :param confidence: interval coverage (default 0.95).
    :param seed: random seed of the resampling (the interval is deterministic given it).
    """
    array = _as_runs_by_tasks(scores)
    if not 0 < confidence < 1 or reps < 1:
        raise ValueError(f"confidence must be in (0, 1) and reps >= 1, got {confidence} and {reps}")
    rng = np.random.default_rng(seed)
    replicates = np.array([statistic(_resample(array, rng)) for _ in range(reps)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return Interval(statistic(array), float(low), float(high))


def performance_profile(scores: np.ndarray | Sequence[float], thresholds: np.ndarray) -> np.ndarray:
    """Fraction of all (run, task) scores strictly above each threshold (the run-score distribution)."""
    values = _as_runs_by_tasks(scores).ravel()
    return np.array([(values > t).mean() for t in np.asarray(thresholds, dtype=float)])


def plot_performance_profiles(scores: Mapping[str, np.ndarray], path: str | Path, xlabel: str = "score",
                              title: str = "", reps: int = 500, seed: int = 0) -> Path:
    """PNG of each method's performance profile with a 95% stratified-bootstrap band."""
    from matplotlib.figure import Figure

    from rl4seg_env.io import atomic_write_bytes

    arrays = {name: _as_runs_by_tasks(s) for name, s in scores.items()}
    everything = np.concatenate([a.ravel() for a in arrays.values()])
    span = max(float(everything.max() - everything.min()), 1e-6)
    thresholds = np.linspace(everything.min() - 0.05 * span, everything.max() + 0.05 * span, 200)
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    rng = np.random.default_rng(seed)
    for i, (name, array) in enumerate(arrays.items()):
        curves = np.stack([performance_profile(_resample(array, rng), thresholds) for _ in range(reps)])
        ax.plot(thresholds, performance_profile(array, thresholds), color=f"C{i}", label=name)
        ax.fill_between(thresholds, *np.quantile(curves, [0.025, 0.975], axis=0), color=f"C{i}", alpha=0.15)
    ax.set(xlabel=xlabel, ylabel="fraction of runs with score > x", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


__all__ = ["Interval", "iqm", "performance_profile", "plot_performance_profiles", "stratified_bootstrap_ci"]
