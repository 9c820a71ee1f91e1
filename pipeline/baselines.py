"""Unsupervised domain-adaptation baselines that RL4Seg is compared with (issue 5, ``benchmark_da.py``).

Each baseline starts from the same source-pretrained actor as RL4Seg (a
:func:`~agents.networks.save_unet` checkpoint such as ``run_dir/checkpoints/actor_source.pt``) and sees
only *unlabelled* target images: an (N, H, W) float32 array in [0, 1], or a
:class:`~rl4seg_env.data.base.SegDataset` built with ``with_labels=False`` (its labels are never read).
None of them modifies the model it is given: each returns an adapted copy, in eval mode.

- :func:`adabn` (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"):
  re-estimate the BatchNorm running statistics on the target images; no weight changes.
- :func:`tent` (Wang et al. 2021, "Tent: fully test-time adaptation by entropy minimization"):
  minimise the mean per-pixel entropy of the softmax prediction on target images, updating only the
  normalisation layers' affine parameters, BatchNorm normalising with the batch statistics.
- :func:`self_training`: iterative pseudo-label self-training. Predict the target images, keep the
  predictions that pass the same anatomical-validity filter as RL4Seg's pseudo-labels
  (:func:`reward.anatomy.validity_batch`, optionally with RL4Seg's correction-Dice test through a
  :class:`reward.correctors.Corrector`), fine-tune on them with cross-entropy, repeat.

Typical use::

    from agents.networks import load_unet
    from pipeline.baselines import adabn, tent, TentConfig

    actor, _ = load_unet("runs/default/checkpoints/actor_source.pt")
    target = make_dataset("synthetic", preset="default_target", split="train", n_images=1000, with_labels=False)
    adapted = tent(actor, target, TentConfig(epochs=1, lr=1e-3))
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from tqdm.auto import tqdm

from agents.networks import eval_mode, image_batches, predict, reestimate_norm_statistics
from agents.pretrain import augment_batch
from reward.anatomy import validity_batch
from rl4seg_env.data.base import SegDataset, load_images

#: unlabelled target images: an (N, H, W) float32 array in [0, 1] or an (unlabelled) dataset
TargetImages = np.ndarray | SegDataset


def target_image_array(target_images: TargetImages) -> np.ndarray:
    """(N, H, W) float32 array of the target images; a dataset's images are loaded, its labels never read."""
    if isinstance(target_images, SegDataset):
        images, _ = load_images(target_images)
    else:
        images = np.asarray(target_images, dtype=np.float32)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"target images must be a non-empty (N, H, W) array, found shape {images.shape}")
    return images


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` (those with running statistics)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """Normalisation layers with affine parameters (BatchNorm, affine InstanceNorm, GroupNorm, LayerNorm)."""
    kinds = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)
    return [m for m in model.modules() if isinstance(m, kinds) and getattr(m, "weight", None) is not None]


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel Shannon entropy (nats) of the softmax of (B, C, H, W) logits -> (B, H, W)."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@torch.no_grad()
def mean_prediction_entropy(actor: nn.Module, target_images: TargetImages, batch_size: int = 32,
                            device: torch.device | str = "cpu") -> float:
    """Mean per-pixel prediction entropy (nats) of ``actor`` in eval mode over the target images."""
    images = target_image_array(target_images)
    with eval_mode(actor):
        total = sum(float(prediction_entropy(actor(x)).sum()) for x in image_batches(images, batch_size, device))
    return total / images.size


def _progress(iterable, desc: str, enabled: bool, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, unit="batch", leave=False, disable=not enabled)


# ------------------------------------------------------------------------------------------------ AdaBN
@dataclass
class AdaBNConfig:
    """Settings of :func:`adabn`.

    :param batch_size: target images per forward pass (default 32). The estimate is the average over
        all batches (cumulative moving average), so it barely depends on this.
    :param progress: show a tqdm bar (default False).
    """

    batch_size: int = 32
    progress: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"AdaBNConfig.batch_size must be >= 1, got {self.batch_size!r}")


@torch.no_grad()
def reestimate_bn_statistics(model: nn.Module, images: np.ndarray, batch_size: int = 32,
                             device: torch.device | str = "cpu", progress: bool = False) -> nn.Module:
    """Replace the BatchNorm running statistics of ``model`` (in place) by their estimate on ``images``
    (N, H, W) float32 (see :func:`agents.networks.reestimate_norm_statistics`); returns ``model`` in eval mode.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)[:, None], device=device)
    reestimate_norm_statistics(model, x, batch_size, progress)
    return model.eval()


def adabn(actor: nn.Module, target_images: TargetImages, config: AdaBNConfig | None = None,
          device: torch.device | str = "cpu") -> nn.Module:
    """AdaBN: a copy of ``actor`` whose BatchNorm running statistics are re-estimated on the target.

    :param actor: source-pretrained segmentation network ((B, 1, H, W) -> (B, C, H, W) logits) on
        ``device``; left unchanged.
    :param target_images: unlabelled target images, (N, H, W) float32 in [0, 1] or an unlabelled dataset.
    :param config: :class:`AdaBNConfig` (default ``AdaBNConfig()``).
    :param device: device of ``actor`` (default ``"cpu"``).
    :return: the adapted copy, in eval mode. A network without BatchNorm is returned unchanged (with a warning).
    """
    config = AdaBNConfig() if config is None else config
    images = target_image_array(target_images)
    model = copy.deepcopy(actor)
    if not batch_norm_layers(model):
        warnings.warn(f"{type(actor).__name__} has no BatchNorm layer: AdaBN has no statistics to re-estimate "
                      "and returns an unchanged copy", stacklevel=2)
        return model.eval()
    return reestimate_bn_statistics(model, images, config.batch_size, device, config.progress)


# ------------------------------------------------------------------------------------------------- TENT
@dataclass
class TentConfig:
    """Settings of :func:`tent`.

    :param epochs: passes over the target images, one optimiser step per batch (default 1, as the
        online TENT sees each test batch once).
    :param lr: learning rate (default 1e-3, the TENT paper's Adam setting).
    :param optimizer: ``"adam"`` (default) or ``"sgd"`` (momentum 0.9).
    :param batch_size: target images per step (default 16); batch statistics need more than one.
    :param reestimate_stats: after adaptation, re-estimate the BatchNorm running statistics on the target
        with the adapted weights (default True), so that the returned eval-mode model uses target statistics
        and its predictions do not depend on how test images are batched. False keeps the running averages
        accumulated during the optimisation.
    :param seed: seed of the batch order (default 0).
    :param progress: show a tqdm bar (default False).
    """

    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    batch_size: int = 16
    reestimate_stats: bool = True
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"TentConfig.epochs and batch_size must be >= 1, got {self.epochs!r}, "
                             f"{self.batch_size!r}")
        if self.lr <= 0:
            raise ValueError(f"TentConfig.lr must be > 0, got {self.lr!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"TentConfig.optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")


def tent(actor: nn.Module, target_images: TargetImages, config: TentConfig | None = None,
         device: torch.device | str = "cpu") -> nn.Module:
    """TENT: entropy minimisation of the normalisation affine parameters on the target images.

    Loss: mean over pixels of the entropy of the softmax prediction (:func:`prediction_entropy`).
    Only the weight and bias of the normalisation layers (:func:`norm_layers`) are optimised; every other
    parameter is frozen. BatchNorm layers run in train mode, i.e. normalise with the statistics of the
    current target batch, as in the TENT paper; dropout stays off.

    :param actor: source-pretrained segmentation network on ``device``; left unchanged.
    :param target_images: unlabelled target images, (N, H, W) float32 in [0, 1] or an unlabelled dataset.
    :param config: :class:`TentConfig` (default ``TentConfig()``).
    :param device: device of ``actor`` (default ``"cpu"``).
    :return: the adapted copy, in eval mode.
    :raises ValueError: when ``actor`` has no normalisation layer with affine parameters.
    """
    config = TentConfig() if config is None else config
    images = target_image_array(target_images)
    model = copy.deepcopy(actor)
    layers = norm_layers(model)
    if not layers:
        raise ValueError(f"{type(actor).__name__} has no normalisation layer with affine parameters: TENT has "
                         "nothing to adapt")
    model.requires_grad_(False)
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    model.eval()
    for m in batch_norm_layers(model):
        m.train()  # normalise with the target batch statistics
    generator = torch.Generator().manual_seed(config.seed)
    n_batches = -(-len(images) // config.batch_size)
    for epoch in range(config.epochs):
        bar = _progress(image_batches(images, config.batch_size, device, generator), f"TENT {epoch + 1}/{config.epochs}",
                        config.progress, n_batches)
        for x in bar:
            if len(x) < 2 and batch_norm_layers(model):
                continue  # batch statistics of a single image are too noisy to adapt on
            loss = prediction_entropy(model(x)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(entropy=f"{float(loss.detach()):.4f}")
    model.requires_grad_(True)
    if config.reestimate_stats and batch_norm_layers(model):
        reestimate_bn_statistics(model, images, config.batch_size, device)
    return model.eval()


# ---------------------------------------------------------------------------------------- self-training
@dataclass
class SelfTrainingConfig:
    """Settings of :func:`self_training`.

    :param iterations: rounds of predict -> filter -> fine-tune (default 3, RL4Seg's default iterations).
    :param epochs: fine-tuning passes over the accepted pseudo-labels per round (default 5).
    :param lr: Adam learning rate of the fine-tuning (default 5e-4, the RL actor's learning rate).
    :param batch_size: images per step, also per prediction pass (default 16).
    :param criteria: anatomical criteria set of :mod:`reward.anatomy` used by the default validity filter
        (``"echo"``, default, or ``"generic"``); ignored when a ``validity_fn`` is passed.
    :param valid_dice_threshold: with a corrector, a valid prediction is accepted only when its Dice with
        its corrected version exceeds this (default 0.95, RL4Seg's threshold).
    :param augment: augment the fine-tuning batches as in supervised pretraining (default True).
    :param seed: seed of batch order and augmentation (default 0).
    :param progress: show tqdm bars (default False).
    """

    iterations: int = 3
    epochs: int = 5
    lr: float = 5e-4
    batch_size: int = 16
    criteria: str = "echo"
    valid_dice_threshold: float = 0.95
    augment: bool = True
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        for key in ("iterations", "epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"SelfTrainingConfig.{key} must be >= 1, got {getattr(self, key)!r}")
        if self.lr <= 0:
            raise ValueError(f"SelfTrainingConfig.lr must be > 0, got {self.lr!r}")


@dataclass
class SelfTrainingResult:
    """What :func:`self_training` did, round by round.

    :param accepted: pseudo-labels accepted at each round (out of ``n_images``).
    :param losses: mean fine-tuning cross-entropy of each round (NaN for a round with no pseudo-label).
    :param n_images: target images predicted each round.
    """

    accepted: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    n_images: int = 0


def select_pseudo_labels(preds: np.ndarray, validity_fn: Callable[[np.ndarray], np.ndarray],
                         corrector=None, valid_dice_threshold: float = 0.95) -> np.ndarray:
    """RL4Seg's pseudo-label test on (B, H, W) predictions -> (B,) bool.

    Accepted: non-empty, ``validity_fn`` says valid and, when a :class:`~reward.correctors.Corrector` is
    given, Dice(prediction, corrected prediction) > ``valid_dice_threshold`` (as
    :class:`reward.builder.RewardDatasetBuilder`).
    """
    accepted = np.asarray(validity_fn(preds), dtype=bool) & preds.reshape(len(preds), -1).any(1)
    if corrector is not None and accepted.any():
        corrected = np.asarray(corrector.correct(preds))
        accepted &= np.asarray(corrector.comparison_dice(preds, corrected)) > valid_dice_threshold
    return accepted


def self_training(actor: nn.Module, target_images: TargetImages, config: SelfTrainingConfig | None = None,
                  device: torch.device | str = "cpu",
                  validity_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                  corrector=None, result: SelfTrainingResult | None = None) -> nn.Module:
    """Iterative pseudo-label self-training with RL4Seg's anatomical-validity filter.

    Each round: predict every target image with the current model (eval mode, argmax); keep the
    predictions accepted by :func:`select_pseudo_labels`; fine-tune the whole network on them with
    cross-entropy for ``config.epochs`` epochs (Adam, BatchNorm in train mode). A round with no accepted
    prediction trains nothing. Pseudo-labels are re-predicted each round by the improved model.

    :param actor: source-pretrained segmentation network on ``device``; left unchanged.
    :param target_images: unlabelled target images, (N, H, W) float32 in [0, 1] or an unlabelled dataset.
    :param config: :class:`SelfTrainingConfig` (default ``SelfTrainingConfig()``).
    :param device: device of ``actor`` (default ``"cpu"``).
    :param validity_fn: (B, H, W) int label maps -> (B,) bool; default
        ``reward.anatomy.validity_batch`` with ``config.criteria``.
    :param corrector: optional :class:`reward.correctors.Corrector` (morphological, optionally shape
        auto-encoder) for RL4Seg's correction-Dice test; None (default) = validity only.
    :param result: optional :class:`SelfTrainingResult` filled with per-round counts and losses.
    :return: the fine-tuned copy, in eval mode.
    """
    config = SelfTrainingConfig() if config is None else config
    if validity_fn is None:
        validity_fn = partial(validity_batch, criteria=config.criteria)
    images = target_image_array(target_images)
    result = SelfTrainingResult() if result is None else result
    result.n_images = len(images)
    model = copy.deepcopy(actor)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    for round_ in range(1, config.iterations + 1):
        preds = predict(model, images, config.batch_size, device)
        accepted = select_pseudo_labels(preds, validity_fn, corrector, config.valid_dice_threshold)
        result.accepted.append(int(accepted.sum()))
        if not accepted.any():
            result.losses.append(float("nan"))
            continue
        x_all = torch.from_numpy(images[accepted])[:, None]
        y_all = torch.from_numpy(preds[accepted].astype(np.int64))
        model.train()
        total, seen = 0.0, 0
        n_batches = -(-len(x_all) // config.batch_size)
        for epoch in range(config.epochs):
            order = torch.randperm(len(x_all), generator=generator)
            bar = _progress(range(n_batches), f"self-training {round_}/{config.iterations} epoch {epoch + 1}",
                            config.progress)
            for b in bar:
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                if len(idx) < 2:
                    continue  # BatchNorm cannot train on one image
                x, y = x_all[idx], y_all[idx]
                if config.augment:
                    x, y = augment_batch(x, y, generator)
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
        result.losses.append(total / seen if seen else float("nan"))
    return model.eval()


__all__ = ["AdaBNConfig", "SelfTrainingConfig", "SelfTrainingResult", "TargetImages", "TentConfig", "adabn",
           "batch_norm_layers", "mean_prediction_entropy", "norm_layers", "prediction_entropy",
           "reestimate_bn_statistics", "select_pseudo_labels", "self_training", "target_image_array", "tent"]
