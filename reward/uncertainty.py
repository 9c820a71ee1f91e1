"""Uncertainty maps from the reward network and their calibration metrics.

The reward network predicts, per pixel, the probability that a segmentation is correct, so
``1 - reward_map`` is a per-pixel uncertainty: the predicted probability that the pixel is wrong.
This module measures how well that prediction matches the actual error map ``pred != gt``.

Conventions (all functions):

- ``uncertainty``: float array in [0, 1], any shape (usually (B, H, W) or (H, W));
- ``errors``: boolean (or 0/1) array of the same shape, True where the prediction is wrong;
- ``mask``: optional boolean array of the same shape selecting the pixels to score. The paper scores
  *foreground* pixels only (pixels where the prediction or the ground truth is not background, see
  :func:`foreground_mask`); far-away background pixels are trivially correct and would otherwise
  dominate every metric.
- Bins are equal-width over [0, 1] (``n_bins`` of them, default 15); a value of exactly 1 falls in the
  last bin. ACE uses equal-mass bins instead.

Metrics are plain functions on arrays; :class:`UncertaintyAccumulator` aggregates them over batches
with fixed-size histograms, so its memory does not grow with the number of pixels seen.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl4seg_env.io import atomic_write_bytes
from rl4seg_env.metrics import dice_per_class

#: default number of equal-width bins of the calibration metrics and the reliability diagram
DEFAULT_N_BINS = 15
#: the accumulator's fine histogram has ``DEFAULT_N_BINS * _REFINE`` bins (ACE resolution)
_REFINE = 1000


# --------------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------------
def uncertainty_map(reward_map: np.ndarray) -> np.ndarray:
    """Per-pixel uncertainty ``1 - reward_map`` (float32, same shape; values in [0, 1])."""
    reward_map = np.asarray(reward_map, dtype=np.float32)
    return (1.0 - reward_map).astype(np.float32)


def error_map(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """Boolean map, True where the label maps ``preds`` and ``gts`` (same shape) disagree."""
    preds, gts = np.asarray(preds), np.asarray(gts)
    _check_same_shape(preds=preds, gts=gts)
    return preds != gts


def foreground_mask(preds: np.ndarray, gts: np.ndarray, background: int = 0) -> np.ndarray:
    """Boolean map, True where the prediction or the ground truth is not ``background``.

    Every error pixel is inside this mask (two background labels agree), so restricting the metrics
    to it removes only trivially-correct pixels.
    """
    preds, gts = np.asarray(preds), np.asarray(gts)
    _check_same_shape(preds=preds, gts=gts)
    return (preds != background) | (gts != background)


# --------------------------------------------------------------------------------------------------
# reliability curve and calibration errors
# --------------------------------------------------------------------------------------------------
@dataclass
class ReliabilityCurve:
    """Per-bin calibration statistics of the predicted error probability (``1 - reward``).

    :param bin_edges: (n_bins + 1,) equal-width edges over [0, 1].
    :param mean_uncertainty: (n_bins,) mean predicted error probability in each bin ("confidence";
        ``nan`` for an empty bin).
    :param error_rate: (n_bins,) observed fraction of wrong pixels in each bin ("accuracy" of the
        error prediction; ``nan`` for an empty bin). Perfect calibration: ``error_rate == mean_uncertainty``.
    :param counts: (n_bins,) number of pixels in each bin (int64).
    """

    bin_edges: np.ndarray
    mean_uncertainty: np.ndarray
    error_rate: np.ndarray
    counts: np.ndarray

    @property
    def n_pixels(self) -> int:
        return int(self.counts.sum())

    @property
    def gaps(self) -> np.ndarray:
        """(n_bins,) ``|mean_uncertainty - error_rate|`` (``nan`` for empty bins)."""
        return np.abs(self.mean_uncertainty - self.error_rate)

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean of the gaps (``nan`` with no pixel)."""
        n = self.counts.sum()
        if n == 0:
            return float("nan")
        filled = self.counts > 0
        return float(np.sum(self.counts[filled] * self.gaps[filled]) / n)

    @property
    def mce(self) -> float:
        """Maximum calibration error: the largest gap over non-empty bins (``nan`` with no pixel)."""
        filled = self.counts > 0
        return float(self.gaps[filled].max()) if filled.any() else float("nan")

    @classmethod
    def from_sums(cls, sum_uncertainty: np.ndarray, sum_errors: np.ndarray, counts: np.ndarray) -> "ReliabilityCurve":
        """Build from per-bin sums of uncertainty and of errors, and per-bin counts (equal-width bins)."""
        counts = np.asarray(counts, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_u = np.where(counts > 0, sum_uncertainty / np.maximum(counts, 1), np.nan)
            rate = np.where(counts > 0, sum_errors / np.maximum(counts, 1), np.nan)
        return cls(np.linspace(0.0, 1.0, len(counts) + 1), mean_u, rate, counts)


def reliability_curve(uncertainty: np.ndarray, errors: np.ndarray, mask: np.ndarray | None = None,
                      n_bins: int = DEFAULT_N_BINS) -> ReliabilityCurve:
    """Reliability curve of ``uncertainty`` (predicted error probability) against ``errors``.

    :param uncertainty: float array in [0, 1] (e.g. :func:`uncertainty_map` of a reward map).
    :param errors: boolean array, same shape, True where the segmentation is wrong (:func:`error_map`).
    :param mask: optional boolean array, same shape: pixels to score (e.g. :func:`foreground_mask`).
    :param n_bins: number of equal-width bins over [0, 1] (default 15).
    """
    u, e = _select(uncertainty, errors, mask)
    idx = _bin_index(u, n_bins)
    return ReliabilityCurve.from_sums(np.bincount(idx, weights=u, minlength=n_bins),
                                      np.bincount(idx, weights=e, minlength=n_bins),
                                      np.bincount(idx, minlength=n_bins))


def expected_calibration_error(uncertainty: np.ndarray, errors: np.ndarray, mask: np.ndarray | None = None,
                               n_bins: int = DEFAULT_N_BINS) -> float:
    """ECE: ``sum_b (n_b / N) |mean uncertainty_b - error rate_b|`` over ``n_bins`` equal-width bins.

    0 for a perfectly calibrated uncertainty; ``nan`` when no pixel is selected. Arguments as in
    :func:`reliability_curve`.
    """
    return reliability_curve(uncertainty, errors, mask, n_bins).ece


def maximum_calibration_error(uncertainty: np.ndarray, errors: np.ndarray, mask: np.ndarray | None = None,
                              n_bins: int = DEFAULT_N_BINS) -> float:
    """MCE: the largest ``|mean uncertainty_b - error rate_b|`` over non-empty equal-width bins (>= ECE)."""
    return reliability_curve(uncertainty, errors, mask, n_bins).mce


def adaptive_calibration_error(uncertainty: np.ndarray, errors: np.ndarray, mask: np.ndarray | None = None,
                               n_bins: int = DEFAULT_N_BINS) -> float:
    """ACE: like ECE but with ``n_bins`` equal-mass bins (each holds ~N / n_bins pixels, sorted by
    uncertainty), so that sparsely populated uncertainty ranges do not hide in a few large bins.

    Computed exactly (by sorting). ``nan`` when no pixel is selected.
    """
    u, e = _select(uncertainty, errors, mask)
    n = len(u)
    if n == 0:
        return float("nan")
    order = np.argsort(u, kind="stable")
    u, e = u[order], e[order]
    starts = np.unique(np.linspace(0, n, min(n_bins, n) + 1).astype(np.int64)[:-1])
    counts = np.diff(np.append(starts, n))
    gaps = np.abs(np.add.reduceat(u, starts) - np.add.reduceat(e, starts)) / counts
    return float(np.sum(counts * gaps) / n)


def mutual_information(error_map: np.ndarray, uncertainty_map: np.ndarray, mask: np.ndarray | None = None,
                       n_bins: int = DEFAULT_N_BINS, unit: str = "nats") -> float:
    """Mutual information I(E; U) between the binary error E and the binned uncertainty U.

    Plug-in estimate from the joint histogram of (error, equal-width uncertainty bin):
    ``sum_{e,b} p(e, b) log(p(e, b) / (p(e) p(b)))``. 0 when the uncertainty says nothing about the
    errors; at most H(E) (the error entropy) when it separates them perfectly.

    :param error_map: boolean array, True where the segmentation is wrong.
    :param uncertainty_map: float array in [0, 1], same shape.
    :param mask: optional boolean array of pixels to score (e.g. :func:`foreground_mask`).
    :param n_bins: number of equal-width uncertainty bins (default 15).
    :param unit: ``"nats"`` (natural log, default) or ``"bits"`` (log base 2).
    :return: I(E; U) in ``unit`` (``nan`` when no pixel is selected).
    """
    u, e = _select(uncertainty_map, error_map, mask)
    idx = _bin_index(u, n_bins)
    return _mutual_information(np.bincount(idx, weights=e, minlength=n_bins),
                               np.bincount(idx, minlength=n_bins), unit)


def reward_dice_correlation(mean_rewards: np.ndarray, dices: np.ndarray) -> float:
    """Pearson correlation between each image's mean reward and its Dice.

    :param mean_rewards: (N,) per-image mean of the reward map.
    :param dices: (N,) per-image Dice (same order).
    :return: Pearson r in [-1, 1]; ``nan`` (with a ``RuntimeWarning``) when fewer than 2 images are
        given or either input is constant (the correlation is undefined).
    """
    from scipy import stats

    x = np.asarray(mean_rewards, dtype=np.float64).ravel()
    y = np.asarray(dices, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"reward_dice_correlation: mean_rewards has {x.size} values but dices has {y.size}")
    if x.size < 2:
        warnings.warn(f"reward_dice_correlation: needs at least 2 images, got {x.size}; returning nan",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "mean_rewards" if np.ptp(x) == 0 else "dices"
        warnings.warn(f"reward_dice_correlation: {which} is constant over the {x.size} images; the correlation "
                      "is undefined, returning nan", RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


# --------------------------------------------------------------------------------------------------
# accumulator
# --------------------------------------------------------------------------------------------------
class UncertaintyAccumulator:
    """Accumulates reward-network uncertainty metrics over batches (MONAI-style metric class).

    Keeps fixed-size histograms of the scored pixels (memory does not grow with the data) plus one
    mean reward and one Dice per image.

    :param n_classes: number of classes of the label maps, background included (for the per-image
        mean foreground Dice used by the correlation).
    :param n_bins: equal-width bins for ECE, MCE, MI and the reliability curve (default 15).
    :param foreground_only: score only pixels where the prediction or the ground truth is foreground
        (default True, as in the paper).
    :param background: the background label (default 0).

    ECE, MCE, MI and the reliability curve equal the one-shot functions on the concatenated data.
    ACE is computed from a fine histogram of ``n_bins * 1000`` equal-width bins, so its equal-mass bin
    boundaries are resolved to ``1 / (1000 n_bins)`` in uncertainty (close to, not exactly, the
    one-shot :func:`adaptive_calibration_error`).
    """

    def __init__(self, n_classes: int, n_bins: int = DEFAULT_N_BINS, foreground_only: bool = True,
                 background: int = 0) -> None:
        if n_classes < 2:
            raise ValueError(f"UncertaintyAccumulator: n_classes must be >= 2 (background + 1), got {n_classes}")
        if n_bins < 1:
            raise ValueError(f"UncertaintyAccumulator: n_bins must be >= 1, got {n_bins}")
        self.n_classes, self.n_bins = int(n_classes), int(n_bins)
        self.foreground_only, self.background = foreground_only, background
        self._n_fine = self.n_bins * _REFINE
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._sum_u = np.zeros(self._n_fine)
        self._sum_e = np.zeros(self._n_fine)
        self._count = np.zeros(self._n_fine, dtype=np.int64)
        self._mean_rewards: list[np.ndarray] = []
        self._dices: list[np.ndarray] = []

    def update(self, reward_maps: np.ndarray, preds: np.ndarray, gts: np.ndarray,
               dices: np.ndarray | None = None) -> None:
        """Add a batch.

        :param reward_maps: (B, H, W) float in [0, 1], the reward network's P(pixel correct).
        :param preds: (B, H, W) int label maps that were scored.
        :param gts: (B, H, W) int ground-truth label maps.
        :param dices: optional (B,) per-image Dice to correlate with the mean reward; by default the mean
            Dice over foreground classes ``1..n_classes-1`` of ``preds`` against ``gts``.
        """
        reward_maps, preds, gts = np.asarray(reward_maps), np.asarray(preds), np.asarray(gts)
        if reward_maps.ndim == 2:
            reward_maps, preds, gts = reward_maps[None], preds[None], gts[None]
        _check_same_shape(reward_maps=reward_maps, preds=preds, gts=gts)
        if reward_maps.ndim != 3:
            raise ValueError(f"UncertaintyAccumulator.update expects (B, H, W) maps, got shape {reward_maps.shape}")
        mask = foreground_mask(preds, gts, self.background) if self.foreground_only else None
        u, e = _select(uncertainty_map(reward_maps), preds != gts, mask)
        idx = _bin_index(u, self._n_fine)
        self._sum_u += np.bincount(idx, weights=u, minlength=self._n_fine)
        self._sum_e += np.bincount(idx, weights=e, minlength=self._n_fine)
        self._count += np.bincount(idx, minlength=self._n_fine)
        if dices is None:
            dices = dice_per_class(preds, gts, self.n_classes).mean(axis=1)
        dices = np.asarray(dices, dtype=np.float64).ravel()
        if dices.shape != (len(reward_maps),):
            raise ValueError(f"UncertaintyAccumulator.update: dices must have one value per image "
                             f"({len(reward_maps)}), got shape {dices.shape}")
        self._mean_rewards.append(reward_maps.reshape(len(reward_maps), -1).mean(axis=1, dtype=np.float64))
        self._dices.append(dices)

    @property
    def n_images(self) -> int:
        return int(sum(len(m) for m in self._mean_rewards))

    @property
    def n_pixels(self) -> int:
        """Number of scored pixels so far."""
        return int(self._count.sum())

    def reliability_curve(self) -> ReliabilityCurve:
        """The reliability curve over ``n_bins`` equal-width bins of everything seen so far."""
        return ReliabilityCurve.from_sums(self._coarse(self._sum_u), self._coarse(self._sum_e),
                                          self._coarse(self._count))

    def _coarse(self, fine: np.ndarray) -> np.ndarray:
        return fine.reshape(self.n_bins, _REFINE).sum(axis=1)

    def adaptive_calibration_error(self) -> float:
        """ACE from the fine histogram (see the class docstring)."""
        n = self._count.sum()
        if n == 0:
            return float("nan")
        # each fine bin joins the equal-mass bin that contains its middle pixel
        middle = np.cumsum(self._count) - self._count / 2.0
        group = np.minimum((middle / n * self.n_bins).astype(np.int64), self.n_bins - 1)
        su = np.bincount(group, weights=self._sum_u, minlength=self.n_bins)
        se = np.bincount(group, weights=self._sum_e, minlength=self.n_bins)
        return float(np.abs(su - se).sum() / n)

    def compute(self) -> dict[str, float]:
        """Metrics of everything seen so far.

        :return: ``{"ece", "ace", "mce", "mi" (nats), "correlation" (Pearson r of per-image mean reward
            vs Dice), "n_pixels", "n_images"}``.
        """
        curve = self.reliability_curve()
        mi = _mutual_information(self._coarse(self._sum_e), curve.counts, "nats")
        rewards = np.concatenate(self._mean_rewards) if self._mean_rewards else np.zeros(0)
        dices = np.concatenate(self._dices) if self._dices else np.zeros(0)
        return {"ece": curve.ece, "ace": self.adaptive_calibration_error(), "mce": curve.mce, "mi": mi,
                "correlation": reward_dice_correlation(rewards, dices), "n_pixels": self.n_pixels,
                "n_images": self.n_images}


# --------------------------------------------------------------------------------------------------
# reliability diagram
# --------------------------------------------------------------------------------------------------
def plot_reliability_diagram(curve: ReliabilityCurve | UncertaintyAccumulator, path: str | os.PathLike,
                             title: str = "Reward-network reliability") -> Path:
    """Write a reliability-diagram PNG (atomic write) and return its path.

    Top: observed error rate per bin (bars) against the mean predicted error probability ``1 - reward``,
    with the diagonal of perfect calibration and the gap shaded; ECE and MCE in the legend.
    Bottom: number of pixels per bin (log scale).

    :param curve: a :class:`ReliabilityCurve` or an :class:`UncertaintyAccumulator` (its curve is used).
    :param path: output PNG path (parent folders are created).
    :param title: figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(curve, UncertaintyAccumulator):
        curve = curve.reliability_curve()
    edges = curve.bin_edges
    width = np.diff(edges)
    filled = curve.counts > 0

    fig = Figure(figsize=(5.0, 6.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1][filled], curve.error_rate[filled], width=width[filled], align="edge",
           color="tab:blue", edgecolor="black", linewidth=0.6, label="observed error rate")
    # gap between the bin's mean prediction and what happened
    lo = np.minimum(curve.error_rate, curve.mean_uncertainty)[filled]
    hi = np.maximum(curve.error_rate, curve.mean_uncertainty)[filled]
    ax.bar(edges[:-1][filled], hi - lo, bottom=lo, width=width[filled], align="edge", fill=False,
           edgecolor="tab:red", hatch="///", linewidth=0.8, label="gap to mean prediction")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed error rate")
    ax.set_title(title)
    ece, mce = curve.ece, curve.mce
    ax.legend(loc="upper left", fontsize=8,
              title=f"ECE {ece:.3f}   MCE {mce:.3f}   ({curve.n_pixels:,} px)", title_fontsize=8)
    ax.grid(alpha=0.3)

    ax_n.bar(edges[:-1], np.maximum(curve.counts, 0), width=width, align="edge", color="gray", edgecolor="black",
             linewidth=0.6)
    if filled.any():
        ax_n.set_yscale("log")
    ax_n.set_xlabel("predicted error probability (1 - reward)")
    ax_n.set_ylabel("pixels")
    ax_n.grid(alpha=0.3)

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _check_same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


def _select(uncertainty: np.ndarray, errors: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 uncertainty and 0/1 errors of the masked pixels; validates shapes and range."""
    uncertainty, errors = np.asarray(uncertainty), np.asarray(errors)
    if mask is None:
        _check_same_shape(uncertainty=uncertainty, errors=errors)
        u, e = uncertainty.ravel(), errors.ravel()
    else:
        mask = np.asarray(mask, dtype=bool)
        _check_same_shape(uncertainty=uncertainty, errors=errors, mask=mask)
        u, e = uncertainty[mask], errors[mask]
    u = u.astype(np.float64)
    if u.size and (not np.isfinite(u).all() or u.min() < 0.0 or u.max() > 1.0):
        raise ValueError(f"uncertainty must lie in [0, 1] (finite), found values in [{np.nanmin(u):.4g}, "
                         f"{np.nanmax(u):.4g}]")
    if e.dtype != bool:
        if e.size and not np.isin(e, (0, 1)).all():
            raise ValueError(f"errors must be boolean or 0/1, found values {np.unique(e)[:5]}")
    return u, e.astype(np.float64)


def _bin_index(u: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, 1]; 1.0 goes to the last bin."""
    return np.minimum((u * n_bins).astype(np.int64), n_bins - 1)


def _mutual_information(errors_per_bin: np.ndarray, counts_per_bin: np.ndarray, unit: str) -> float:
    if unit not in ("nats", "bits"):
        raise ValueError(f"unit must be 'nats' or 'bits', got {unit!r}")
    counts = np.asarray(counts_per_bin, dtype=np.float64)
    n = counts.sum()
    if n == 0:
        return float("nan")
    joint = np.stack([counts - errors_per_bin, errors_per_bin]) / n  # (2, n_bins): p(e, b)
    p_e = joint.sum(axis=1, keepdims=True)
    p_b = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    mi = float(np.sum(joint[nz] * np.log(joint[nz] / (p_e @ p_b)[nz])))
    mi = max(mi, 0.0)  # rounding can leave -1e-17
    return mi / math.log(2.0) if unit == "bits" else mi
