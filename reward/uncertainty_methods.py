"""Dedicated per-pixel uncertainty methods for a segmentation actor, to compare with the reward network.

The reward network's uncertainty is ``1 - reward_map`` (:mod:`reward.uncertainty`). The usual
alternatives, computed here from the actor alone:

- :func:`softmax_uncertainty`: one deterministic forward pass; normalised entropy of the softmax
  (or ``1 - max probability``);
- :func:`mc_dropout_uncertainty`: Monte-Carlo dropout. Our U-Net is trained *without* dropout, so this
  is the **post-hoc** variant: at test time, ``F.dropout2d`` is applied to the output of every encoder and
  decoder block through forward hooks (the network stays in eval mode, so normalisation layers use their
  running statistics), and the uncertainty of the averaged softmax over the samples is returned;
- :func:`tta_uncertainty`: test-time augmentation (contrast, small integer shifts, small rotations); each
  augmented prediction is mapped back to the input frame by the inverse geometric transform, then the
  softmax probabilities are averaged.

Every method returns (N, H, W) float32 maps in [0, 1] (high = likely wrong), computed on the device of the
actor (or the ``device`` given by the caller), vectorised over the batch. :func:`compare_uncertainty`
scores any set of such maps against the same predictions with the calibration metrics of
:mod:`reward.uncertainty` (ECE, ACE, MCE, mutual information, per-image confidence-Dice correlation).

The error map every method is scored against is the *deterministic* prediction of the actor
(``argmax`` of one eval-mode pass), the one the user gets: MC dropout and TTA only estimate its uncertainty.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.networks import eval_mode, image_batches, predict
from reward.correctors import similarity_theta
from reward.network import LearnedReward, fit_temperature_on_labelled
from reward.uncertainty import DEFAULT_N_BINS, UncertaintyAccumulator
from rl4seg_env.metrics import dice_per_class

#: uncertainty read from (averaged) softmax probabilities
UNCERTAINTY_KINDS = ("entropy", "max_prob", "disagreement")


# --------------------------------------------------------------------------------------------------
# probabilities -> uncertainty
# --------------------------------------------------------------------------------------------------
def probabilities_to_uncertainty(probs: torch.Tensor, kind: str = "entropy",
                                 votes: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel uncertainty in [0, 1] from class probabilities (B, C, H, W).

    :param probs: softmax probabilities (or their average over samples), (B, C, H, W), summing to 1 over C.
    :param kind: ``"entropy"`` (default): ``-sum_c p_c log p_c / log C`` (0 = one-hot, 1 = uniform);
        ``"max_prob"``: ``1 - max_c p_c`` (in [0, 1 - 1/C]; the softmax's own probability of being wrong);
        ``"disagreement"``: ``1 - max_c votes_c / sum_c votes_c``, the fraction of samples that do not
        vote for the most voted class (needs ``votes``; 0 when all samples agree).
    :param votes: (B, C, H, W) number of samples whose argmax is each class (``"disagreement"`` only).
    :return: (B, H, W) float32 tensor in [0, 1].
    """
    if probs.ndim != 4:
        raise ValueError(f"probabilities must be (B, C, H, W), got shape {tuple(probs.shape)}")
    if kind == "entropy":
        n_classes = probs.shape[1]
        if n_classes < 2:
            raise ValueError(f"entropy needs at least 2 classes, got {n_classes}")
        ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)
        out = ent / math.log(n_classes)
    elif kind == "max_prob":
        out = 1.0 - probs.amax(1)
    elif kind == "disagreement":
        if votes is None:
            raise ValueError("kind='disagreement' needs the per-sample votes (only for sampling methods: "
                             "mc_dropout_uncertainty, tta_uncertainty)")
        total = votes.sum(1).clamp_min(1)
        out = 1.0 - votes.amax(1) / total
    else:
        raise ValueError(f"unknown uncertainty kind {kind!r}; expected one of {', '.join(UNCERTAINTY_KINDS)}")
    return out.clamp(0.0, 1.0).float()


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def softmax_uncertainty(actor: nn.Module, images: np.ndarray | torch.Tensor, kind: str = "entropy",
                        batch_size: int = 32, device: str | torch.device | None = None) -> np.ndarray:
    """Uncertainty of one deterministic (eval-mode) forward pass of ``actor``.

    :param actor: network mapping (B, 1, H, W) images to (B, C, H, W) logits.
    :param images: (N, H, W) float32 images in [0, 1].
    :param kind: ``"entropy"`` (default, normalised by ``log C``) or ``"max_prob"`` (``1 - max p``); see
        :func:`probabilities_to_uncertainty`.
    :param batch_size: images per forward pass (default 32).
    :param device: where to run (default: the device of the actor's parameters).
    :return: (N, H, W) float32 in [0, 1]. The actor's train/eval mode is restored afterwards.
    """
    if kind not in ("entropy", "max_prob"):
        raise ValueError(f"softmax_uncertainty: kind must be 'entropy' or 'max_prob', got {kind!r}")
    device = _device(actor, device)
    out = []
    with eval_mode(actor):
        for x in image_batches(images, batch_size, device):
            out.append(probabilities_to_uncertainty(torch.softmax(actor(x), 1), kind).cpu())
    return _to_numpy(out, images)


@torch.no_grad()
def mc_dropout_uncertainty(actor: nn.Module, images: np.ndarray | torch.Tensor, n_samples: int = 10, p: float = 0.1,
                           kind: str = "entropy", modules: Sequence[nn.Module] | None = None, seed: int = 0,
                           batch_size: int = 32, device: str | torch.device | None = None) -> np.ndarray:
    """Post-hoc Monte-Carlo dropout uncertainty.

    ``F.dropout2d(output, p)`` (whole feature maps dropped, survivors scaled by ``1 / (1 - p)``) is applied to
    the output of each module of ``modules`` through forward hooks, ``n_samples`` stochastic passes are
    averaged, and the uncertainty of the mean softmax is returned. The actor stays in eval mode (batch-norm
    running statistics are used), its weights are never touched and the hooks are removed afterwards, also
    on error. This is the *post-hoc* variant (dropout the network was not trained with), the only one
    available for a network trained without dropout.

    :param actor: network mapping (B, 1, H, W) images to (B, C, H, W) logits.
    :param images: (N, H, W) float32 images in [0, 1].
    :param n_samples: stochastic forward passes (default 10).
    :param p: channel dropout probability in [0, 1) (default 0.1).
    :param kind: ``"entropy"`` (default, of the mean softmax), ``"max_prob"`` or ``"disagreement"``
        (fraction of samples not voting for the majority class); see :func:`probabilities_to_uncertainty`.
    :param modules: modules whose outputs are dropped out; default: every block of ``actor.encoders`` and
        ``actor.decoders`` (the :class:`agents.networks.UNet` layout).
    :param seed: seed of the dropout masks (the same seed gives the same maps; the global RNG state is
        restored afterwards).
    :param batch_size: images per forward pass (default 32).
    :param device: where to run (default: the device of the actor's parameters).
    :return: (N, H, W) float32 in [0, 1].
    """
    if n_samples < 1:
        raise ValueError(f"mc_dropout_uncertainty: n_samples must be >= 1, got {n_samples}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"mc_dropout_uncertainty: p must be in [0, 1), got {p}")
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"unknown uncertainty kind {kind!r}; expected one of {', '.join(UNCERTAINTY_KINDS)}")
    if modules is None:
        if not (hasattr(actor, "encoders") and hasattr(actor, "decoders")):
            raise ValueError(f"mc_dropout_uncertainty: {type(actor).__name__} has no encoders/decoders blocks; "
                             "pass the modules to drop out explicitly (modules=[...])")
        modules = [*actor.encoders, *actor.decoders]
    if not modules:
        raise ValueError("mc_dropout_uncertainty: no module to apply dropout to")
    device = _device(actor, device)

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(output, p, training=True)

    handles = [m.register_forward_hook(hook) for m in modules]
    out = []
    try:
        with eval_mode(actor), _seeded(seed, device):
            for x in image_batches(images, batch_size, device):
                mean, votes = None, None
                for _ in range(n_samples):
                    probs = torch.softmax(actor(x), 1)
                    mean = probs if mean is None else mean + probs
                    if kind == "disagreement":
                        one_hot = F.one_hot(probs.argmax(1), probs.shape[1]).permute(0, 3, 1, 2)
                        votes = one_hot if votes is None else votes + one_hot
                out.append(probabilities_to_uncertainty(mean / n_samples, kind, votes).cpu())
    finally:
        for h in handles:
            h.remove()
    return _to_numpy(out, images)


@torch.no_grad()
def tta_uncertainty(actor: nn.Module, images: np.ndarray | torch.Tensor, n_augmentations: int = 8,
                    contrast_range: tuple[float, float] = (0.8, 1.25), max_shift: int = 3,
                    max_rotation: float = 10.0, kind: str = "entropy", seed: int = 0, batch_size: int = 32,
                    device: str | torch.device | None = None) -> np.ndarray:
    """Test-time-augmentation uncertainty.

    The first augmentation is the identity; each of the others draws (seeded) a contrast factor ``c`` in
    ``contrast_range`` (``x -> clip(m + c (x - m), 0, 1)`` with ``m`` the image mean), an integer shift
    ``(dy, dx)`` in ``[-max_shift, max_shift]`` pixels (zero filled) and a rotation in
    ``[-max_rotation, max_rotation]`` degrees about the image centre (bilinear, zero filled). The softmax of
    each augmented image is mapped back by the inverse shift and rotation; pixels the inverse transform
    brings in from outside the image do not count. The per-pixel average of the valid probabilities gives
    the uncertainty (the identity pass is valid everywhere, so every pixel has at least one sample).

    :param actor: network mapping (B, 1, H, W) images to (B, C, H, W) logits.
    :param images: (N, H, W) float32 images in [0, 1].
    :param n_augmentations: augmented passes, identity included (default 8).
    :param contrast_range: (low, high) contrast factors (default (0.8, 1.25); (1, 1) disables).
    :param max_shift: largest shift in pixels along each axis (default 3; 0 disables).
    :param max_rotation: largest rotation in degrees (default 10; 0 disables).
    :param kind: ``"entropy"`` (default, of the mean softmax), ``"max_prob"`` or ``"disagreement"``; see
        :func:`probabilities_to_uncertainty`.
    :param seed: seed of the augmentation parameters (same seed, same maps).
    :param batch_size: images per forward pass (default 32).
    :param device: where to run (default: the device of the actor's parameters).
    :return: (N, H, W) float32 in [0, 1].
    """
    if n_augmentations < 1:
        raise ValueError(f"tta_uncertainty: n_augmentations must be >= 1, got {n_augmentations}")
    lo, hi = contrast_range
    if not 0 < lo <= hi:
        raise ValueError(f"tta_uncertainty: contrast_range must be 0 < low <= high, got {contrast_range}")
    if max_shift < 0 or max_rotation < 0:
        raise ValueError(f"tta_uncertainty: max_shift and max_rotation must be >= 0, got {max_shift}, {max_rotation}")
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"unknown uncertainty kind {kind!r}; expected one of {', '.join(UNCERTAINTY_KINDS)}")
    device = _device(actor, device)
    rng = np.random.default_rng(seed)
    augmentations = [(1.0, 0, 0, 0.0)]
    for _ in range(n_augmentations - 1):
        augmentations.append((float(rng.uniform(lo, hi)), *(int(s) for s in rng.integers(-max_shift, max_shift + 1, 2)),
                              float(rng.uniform(-max_rotation, max_rotation))))
    out = []
    with eval_mode(actor):
        for x in image_batches(images, batch_size, device):
            total, weight, votes = None, None, None
            for c, dy, dx, angle in augmentations:
                m = x.mean(dim=(1, 2, 3), keepdim=True)
                xa = (m + c * (x - m)).clamp(0.0, 1.0) if c != 1.0 else x
                xa = _shift(_rotate(xa, angle), dy, dx)
                probs = torch.softmax(actor(xa), 1)
                # back to the input frame; the extra channel tracks which pixels came from inside the image
                back = torch.cat([probs, torch.ones_like(probs[:, :1])], 1)
                back = _rotate(_shift(back, -dy, -dx), -angle)
                probs_back, valid = back[:, :-1], back[:, -1:]
                total = probs_back if total is None else total + probs_back
                weight = valid if weight is None else weight + valid
                if kind == "disagreement":
                    one_hot = F.one_hot(probs_back.argmax(1), probs.shape[1]).permute(0, 3, 1, 2)
                    one_hot = one_hot * (valid > 0.5)
                    votes = one_hot if votes is None else votes + one_hot
            mean = total / weight.clamp_min(1e-6)
            mean = mean / mean.sum(1, keepdim=True).clamp_min(1e-12)
            out.append(probabilities_to_uncertainty(mean, kind, votes).cpu())
    return _to_numpy(out, images)


# --------------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------------
def accumulate_uncertainty(methods: Mapping[str, np.ndarray], preds: np.ndarray, gts: np.ndarray, n_classes: int,
                           n_bins: int = DEFAULT_N_BINS, batch_size: int = 64) -> dict[str, UncertaintyAccumulator]:
    """One :class:`reward.uncertainty.UncertaintyAccumulator` per method, fed with the same predictions.

    :param methods: method name -> (N, H, W) uncertainty maps in [0, 1] (predicted probability that the
        pixel of ``preds`` is wrong; for the reward network ``1 - reward_map``).
    :param preds: (N, H, W) integer label maps whose errors are predicted.
    :param gts: (N, H, W) integer ground-truth label maps.
    :param n_classes: classes of the label maps, background included.
    :param n_bins: equal-width bins of ECE, MCE, MI and the reliability curve (default 15).
    :param batch_size: images per accumulator update (bounds the temporary memory).
    :return: name -> accumulator (foreground pixels only, as in the paper). Each accumulator treats
        ``1 - uncertainty`` as the confidence; its per-image correlation is Pearson's r between the
        per-image mean confidence ``1 - mean(uncertainty)`` and the mean foreground Dice of ``preds``.
    """
    preds, gts = np.asarray(preds), np.asarray(gts)
    if preds.shape != gts.shape or preds.ndim != 3:
        raise ValueError(f"preds and gts must be (N, H, W) of the same shape, got {preds.shape} and {gts.shape}")
    if not methods:
        raise ValueError("compare_uncertainty: no method given")
    dices = dice_per_class(preds, gts, n_classes).mean(axis=1)
    out = {}
    for name, maps in methods.items():
        maps = np.asarray(maps)
        if maps.shape != preds.shape:
            raise ValueError(f"uncertainty maps of method {name!r} have shape {maps.shape}, expected {preds.shape}")
        acc = UncertaintyAccumulator(n_classes, n_bins)
        for start in range(0, len(preds), batch_size):
            sl = slice(start, start + batch_size)
            acc.update(1.0 - maps[sl].astype(np.float64), preds[sl], gts[sl], dices=dices[sl])
        out[name] = acc
    return out


def compare_uncertainty(methods: Mapping[str, np.ndarray], preds: np.ndarray, gts: np.ndarray, n_classes: int,
                        n_bins: int = DEFAULT_N_BINS) -> list[dict]:
    """Calibration and informativeness of several uncertainty maps of the same predictions.

    Arguments as in :func:`accumulate_uncertainty`.

    :return: one row per method, in the order given: ``{"method", "ece", "ace", "mce", "mi" (nats),
        "correlation" (Pearson r, per-image mean confidence vs Dice), "mean_uncertainty" (over the scored
        foreground pixels), "n_pixels", "n_images"}``. ECE/ACE/MCE: lower is better (0 = calibrated);
        MI and correlation: higher is better.
    """
    return uncertainty_rows(accumulate_uncertainty(methods, preds, gts, n_classes, n_bins))


def uncertainty_rows(accumulators: Mapping[str, UncertaintyAccumulator]) -> list[dict]:
    """Table rows (see :func:`compare_uncertainty`) of already filled accumulators."""
    rows = []
    for name, acc in accumulators.items():
        curve = acc.reliability_curve()
        n = curve.counts.sum()
        mean_u = float(np.nansum(curve.mean_uncertainty * curve.counts) / n) if n else float("nan")
        rows.append({"method": name, **acc.compute(), "mean_uncertainty": mean_u})
    return rows


def uncertainty_methods_benchmark(actor: nn.Module, images: np.ndarray, gts: np.ndarray,
                                  reward_model: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                                  n_classes: int | None = None, mc_samples: int = 10, mc_p: float = 0.1,
                                  tta_augmentations: int = 8, seed: int = 0, batch_size: int = 32,
                                  device: str | torch.device | None = None, n_bins: int = DEFAULT_N_BINS,
                                  calibration_images: np.ndarray | None = None,
                                  calibration_labels: np.ndarray | None = None,
                                  ) -> tuple[list[dict], dict[str, UncertaintyAccumulator]]:
    """Compare the reward network with softmax entropy, MC dropout and TTA on the actor's predictions.

    :param actor: the (adapted) actor, (B, 1, H, W) -> (B, C, H, W) logits.
    :param images: (N, H, W) float32 images in [0, 1].
    :param gts: (N, H, W) integer ground-truth label maps.
    :param reward_model: optional learned reward ``(images, preds) -> (N, H, W)`` reward maps in [0, 1]
        (e.g. :class:`reward.network.LearnedReward`); adds the ``"reward network"`` row.
    :param n_classes: classes (default: the actor's ``out_channels``).
    :param mc_samples: MC-dropout passes (default 10); ``mc_p``: its dropout probability (default 0.1).
    :param tta_augmentations: TTA passes, identity included (default 8).
    :param seed: seed of the dropout masks and augmentations.
    :param batch_size: images per forward pass.
    :param device: where the actor runs (default: its parameters' device).
    :param n_bins: calibration bins (default 15).
    :param calibration_images: optional labelled images (N', H, W) of a domain with labels (e.g. the source
        validation split) with their ``calibration_labels``: adds a row for the reward network with its
        temperature refitted on them (:func:`reward.network.fit_temperature_on_labelled`); needs a
        :class:`reward.network.LearnedReward`.
    :return: ``(rows, accumulators)``: one row per method as in :func:`compare_uncertainty` plus
        ``"seconds"`` (wall time to compute that method's maps), and the accumulators (for reliability
        diagrams), keyed by method name.
    """
    n_classes = int(n_classes if n_classes is not None else actor.out_channels)
    device = _device(actor, device)
    preds = predict(actor, images, batch_size, device)
    makers: dict[str, Callable[[], np.ndarray]] = {}
    if reward_model is not None:
        makers["reward network"] = lambda: 1.0 - np.asarray(reward_model(images, preds), dtype=np.float32)
    makers["softmax entropy"] = lambda: softmax_uncertainty(actor, images, "entropy", batch_size, device)
    makers["MC dropout"] = lambda: mc_dropout_uncertainty(actor, images, mc_samples, mc_p, seed=seed,
                                                          batch_size=batch_size, device=device)
    makers["TTA"] = lambda: tta_uncertainty(actor, images, tta_augmentations, seed=seed, batch_size=batch_size,
                                            device=device)
    if calibration_images is not None:
        if reward_model is None or not hasattr(reward_model, "net"):
            raise ValueError("calibration_images need a reward_model that is a reward.network.LearnedReward")
        if calibration_labels is None:
            raise ValueError("calibration_images given without calibration_labels")
        makers.update(_source_calibrated(reward_model, actor, images, preds, calibration_images,
                                         calibration_labels, batch_size, device))
    maps, seconds = {}, {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        maps[name] = make()
        seconds[name] = time.perf_counter() - t0
    accumulators = accumulate_uncertainty(maps, preds, gts, n_classes, n_bins)
    rows = [{**row, "seconds": seconds[row["method"]]} for row in uncertainty_rows(accumulators)]
    return rows, accumulators


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _source_calibrated(reward_model, actor: nn.Module, images: np.ndarray, preds: np.ndarray,
                       calibration_images: np.ndarray, calibration_labels: np.ndarray, batch_size: int,
                       device: torch.device) -> dict[str, Callable[[], np.ndarray]]:
    """One maker: the reward network with its temperature refitted on labelled images (name holds T)."""
    net = copy.deepcopy(reward_model.net)
    t = fit_temperature_on_labelled(net, actor, calibration_images, calibration_labels, batch_size, device)
    net.set_temperature(t)
    recalibrated = LearnedReward(net, device=device)
    return {f"reward network, T={t:.2f} from labelled source images":
            lambda: 1.0 - np.asarray(recalibrated(images, preds), dtype=np.float32)}


def _device(actor: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(actor.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG of ``device`` inside the block and restore the previous state after it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if device.type != "cpu" else "cuda"):
        torch.manual_seed(seed)
        yield


def _to_numpy(chunks: list[torch.Tensor], images: np.ndarray | torch.Tensor) -> np.ndarray:
    if not chunks:
        return np.zeros(tuple(images.shape), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate (B, C, H, W) by ``dy`` rows and ``dx`` columns (integers), zero filled."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (B, C, H, W) by ``degrees`` (counter-clockwise on screen) about the centre; bilinear, zero filled.

    Works in pixel units, so non-square images rotate without shear.
    """
    if degrees == 0.0:
        return x
    # affine_grid samples the input at theta (output coordinates): the sampling grid turns the other way
    angle = torch.tensor([-math.radians(degrees)], dtype=torch.float64)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    theta = similarity_theta(angle, one, zero, zero, tuple(x.shape[-2:])).to(x.device, x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
