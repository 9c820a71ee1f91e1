"""The RL4Seg reward network: P(pixel correct | image, segmentation), with temperature scaling.

- :class:`RewardNet` - a U-Net on the image stacked with the segmentation (one-hot or a label channel),
  one logit per pixel, and a scalar ``temperature`` buffer: ``reward_map = sigmoid(logit / temperature)``.
- :func:`fit_temperature` - temperature scaling (LBFGS on log T) of validation logits; its training lives
  in :mod:`reward.training`.
- :class:`LearnedReward` - the adapter implementing :class:`rl4seg_env.rewards.RewardModel` (numpy in,
  numpy out) that the environment's learned-reward wrapper calls.
- :func:`save_reward_net` / :func:`load_reward_net` - atomic checkpoints that include the temperature.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.networks import UNet, eval_mode, predict, unet_kwargs
from rl4seg_env.io import atomic_torch_save, read_checkpoint

SEG_ENCODINGS = ("onehot", "label")


class RewardNet(nn.Module):
    """U-Net reward network: (image, segmentation) -> per-pixel logit of "this pixel is correct".

    :param n_classes: number of classes of the segmentations, background included.
    :param seg_encoding: how the segmentation enters the network: ``"onehot"`` (default; ``n_classes``
        channels) or ``"label"`` (one channel, ``label / (n_classes - 1)`` in [0, 1]).
    :param channels: U-Net widths per level (default ``(16, 32, 64, 128)``); H and W must be divisible by
        ``2 ** (len(channels) - 1)``.
    :param norm: U-Net normalisation: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``None``.
    :param dropout: dropout probability in the U-Net blocks (default 0).
    :param temperature: initial temperature (default 1.0, i.e. uncalibrated); set by
        :func:`fit_temperature` through :func:`train_reward_network`. Stored as a buffer, so it is saved in
        the ``state_dict`` and moves with ``.to(device)``.
    """

    def __init__(self, n_classes: int, seg_encoding: str = "onehot", channels: Sequence[int] = (16, 32, 64, 128),
                 norm: str | None = "batch", dropout: float = 0.0, temperature: float = 1.0) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"RewardNet: n_classes must be >= 2 (background + 1 structure), got {n_classes}")
        if seg_encoding not in SEG_ENCODINGS:
            raise ValueError(f"RewardNet: seg_encoding must be one of {SEG_ENCODINGS}, got {seg_encoding!r}")
        if not temperature > 0:
            raise ValueError(f"RewardNet: temperature must be > 0, got {temperature}")
        self.n_classes, self.seg_encoding = int(n_classes), seg_encoding
        seg_channels = self.n_classes if seg_encoding == "onehot" else 1
        self.unet = UNet(in_channels=1 + seg_channels, out_channels=1, channels=channels, norm=norm,
                         dropout=dropout, output_activation=None)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    @property
    def divisor(self) -> int:
        """H and W must be multiples of this."""
        return self.unet.divisor

    def set_temperature(self, temperature: float) -> None:
        """Set the calibration temperature (> 0) used by :meth:`reward_map`."""
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        self.temperature.fill_(float(temperature))

    def encode(self, images: torch.Tensor, segs: torch.Tensor) -> torch.Tensor:
        """Network input (B, 1 + seg channels, H, W) from images (B, 1, H, W) or (B, H, W) and segs (B, H, W)."""
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"RewardNet expects images of shape (B, 1, H, W) or (B, H, W), got {tuple(images.shape)}")
        if segs.ndim == 4 and segs.shape[1] == 1:
            segs = segs[:, 0]
        if segs.shape != images.shape[:1] + images.shape[2:]:
            raise ValueError(f"RewardNet: segs must be (B, H, W) = {tuple(images.shape[:1] + images.shape[2:])} "
                             f"to match the images, got {tuple(segs.shape)}")
        if segs.is_floating_point():
            raise ValueError(f"RewardNet: segs must be an integer label map, got dtype {segs.dtype}")
        segs = segs.long()
        if segs.numel() and (int(segs.min()) < 0 or int(segs.max()) >= self.n_classes):
            raise ValueError(f"RewardNet: segmentation labels must lie in [0, {self.n_classes - 1}], found "
                             f"[{int(segs.min())}, {int(segs.max())}]")
        images = images.float()
        if self.seg_encoding == "onehot":
            seg = F.one_hot(segs, self.n_classes).permute(0, 3, 1, 2).to(images.dtype)
        else:
            seg = (segs.to(images.dtype) / (self.n_classes - 1)).unsqueeze(1)
        return torch.cat([images, seg], dim=1)

    def forward(self, images: torch.Tensor, segs: torch.Tensor) -> torch.Tensor:
        """Raw logits (before temperature).

        :param images: (B, 1, H, W) (or (B, H, W)) float32 in [0, 1].
        :param segs: (B, H, W) integer label maps in ``[0, n_classes)``.
        :return: (B, 1, H, W) float32 logits of P(pixel correct).
        """
        return self.unet(self.encode(images, segs))

    def reward_map(self, images: torch.Tensor, segs: torch.Tensor) -> torch.Tensor:
        """Calibrated reward ``sigmoid(logits / temperature)``: (B, H, W) float32 in [0, 1]."""
        return torch.sigmoid(self(images, segs)[:, 0] / self.temperature)

    def constructor_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this network (the temperature included)."""
        unet = unet_kwargs(self.unet)
        return {"n_classes": self.n_classes, "seg_encoding": self.seg_encoding, "channels": list(unet["channels"]),
                "norm": unet["norm"], "dropout": unet["dropout"], "temperature": float(self.temperature)}


# --------------------------------------------------------------------------------------------------
# adapter for the environment
# --------------------------------------------------------------------------------------------------
class LearnedReward:
    """A :class:`RewardNet` behind the env's :class:`rl4seg_env.rewards.RewardModel` interface.

    :param net: the (trained, temperature-scaled) reward network. It is moved to ``device`` and put in
        eval mode.
    :param device: torch device the network runs on (default ``"cpu"``; the caller decides, nothing
        assumes CUDA).
    :param batch_size: images per forward pass (default 64), to bound memory on large batches.

    Calling it with images (B, H, W) float32 in [0, 1] and actions (B, H, W) int label maps returns the
    (B, H, W) float32 reward maps in [0, 1], computed under ``torch.no_grad()``. The object pickles and
    deep-copies (it holds only the module and two plain values), so it can be passed to
    ``VecEnv.env_method`` of any SB3 vectorised env.
    """

    def __init__(self, net: RewardNet, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"LearnedReward: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch_size = int(batch_size)

    @property
    def temperature(self) -> float:
        return float(self.net.temperature)

    def __call__(self, images: np.ndarray, actions: np.ndarray) -> np.ndarray:
        images, actions = np.asarray(images), np.asarray(actions)
        if images.ndim != 3 or actions.shape != images.shape:
            raise ValueError(f"LearnedReward expects images and actions of the same shape (B, H, W), got "
                             f"images {images.shape} and actions {actions.shape}")
        if self.net.training:  # someone trained it in place since; rewards must be deterministic
            self.net.eval()
        out = np.empty(images.shape, dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                sl = slice(start, start + self.batch_size)
                x = torch.as_tensor(images[sl], dtype=torch.float32, device=self.device)
                a = torch.as_tensor(actions[sl].astype(np.int64, copy=False), device=self.device)
                out[sl] = self.net.reward_map(x, a).cpu().numpy()
        return out

    def __repr__(self) -> str:
        return (f"LearnedReward(n_classes={self.net.n_classes}, temperature={self.temperature:.4g}, "
                f"device={self.device}, batch_size={self.batch_size})")


# --------------------------------------------------------------------------------------------------
# temperature scaling
# --------------------------------------------------------------------------------------------------
#: temperatures are kept inside [1 / _T_BOUND, _T_BOUND]
_T_BOUND = 100.0


def fit_temperature(logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                    max_iter: int = 50) -> float:
    """Temperature scaling: the scalar T > 0 minimising ``BCE(sigmoid(logits / T), targets)``.

    Optimises ``log T`` (so T stays positive) with L-BFGS (strong-Wolfe line search) in float64.

    :param logits: (N,) raw logits (any shape; flattened).
    :param targets: (N,) 0/1 targets (bool or float), same number of elements.
    :param max_iter: L-BFGS iterations (default 50).
    :return: the temperature, clipped to [0.01, 100] (one class only or perfectly separable data would
        otherwise push it to 0 or infinity; a ``RuntimeWarning`` says so).
    """
    z = torch.as_tensor(logits).detach().reshape(-1).to("cpu", torch.float64)
    y = torch.as_tensor(targets).detach().reshape(-1).to("cpu", torch.float64)
    if z.numel() != y.numel():
        raise ValueError(f"fit_temperature: {z.numel()} logits but {y.numel()} targets")
    if z.numel() == 0:
        raise ValueError("fit_temperature: no logits to calibrate on (empty validation set?)")
    if not torch.isfinite(z).all():
        raise ValueError("fit_temperature: logits contain nan or inf")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(torch.exp(log_t.detach()))
    if not math.isfinite(t) or not (1.0 / _T_BOUND <= t <= _T_BOUND):
        warnings.warn(f"fit_temperature: the optimum temperature {t:.4g} is outside [{1 / _T_BOUND}, {_T_BOUND}] "
                      "(one class only, or perfectly separated validation data); clipping", RuntimeWarning,
                      stacklevel=2)
        t = 1.0 if math.isnan(t) else min(max(t, 1.0 / _T_BOUND), _T_BOUND)
    return t


def fit_temperature_on_labelled(net: RewardNet, actor: nn.Module, images: np.ndarray, labels: np.ndarray,
                                batch_size: int = 32, device: str | torch.device = "cpu") -> float:
    """Temperature of ``net`` fitted on *labelled* images against the true errors of ``actor``'s predictions.

    The loop fits the temperature on the reward set's validation split, whose references are the loop's own
    pseudo-labels and corrected maps: errors that a prediction shares with its reference are invisible
    there, so the network stays over-confident on the actor's test predictions. With labelled images of a
    domain the user has labels for (e.g. the *source* validation split), the actor's argmax predictions and
    their true error maps ``pred != label`` give a calibration set with real errors. Fitted over foreground
    pixels (prediction or label not background), like the ECE. ``net`` is not modified: call
    ``net.set_temperature(t)`` to use the result.

    :param images: (N, H, W) float32 in [0, 1]; ``labels``: (N, H, W) integer label maps.
    :return: the temperature (see :func:`fit_temperature`).
    """
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"fit_temperature_on_labelled: images {images.shape} and labels {labels.shape} must both "
                         "be (N, H, W)")
    device = torch.device(device)
    preds = predict(actor, images, batch_size, device)
    logits, targets = [], []
    with eval_mode(net), torch.no_grad():
        for start in range(0, len(images), batch_size):
            sl = slice(start, start + batch_size)
            x = torch.as_tensor(images[sl], device=device)
            a = torch.as_tensor(preds[sl].astype(np.int64), device=device)
            z = net(x, a)[:, 0].cpu().numpy()
            fg = (preds[sl] > 0) | (labels[sl] > 0)
            logits.append(z[fg])
            targets.append((preds[sl] == labels[sl])[fg])
    return fit_temperature(np.concatenate(logits), np.concatenate(targets))


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
_CHECKPOINT_KIND = "rl4seg.reward_net"


def save_reward_net(net: RewardNet, path: str | os.PathLike, **metadata: Any) -> Path:
    """Save a reward network, its constructor arguments and its temperature (atomic write).

    ``metadata`` must be plain Python values (numbers, strings, lists, dicts) so that the file loads
    with ``torch.load(..., weights_only=True)``.
    """
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return atomic_torch_save({"kind": _CHECKPOINT_KIND, "state_dict": state, "kwargs": net.constructor_kwargs(),
                              "temperature": float(net.temperature), "metadata": dict(metadata)}, path)


def load_reward_net(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[RewardNet, dict]:
    """Inverse of :func:`save_reward_net`: ``(net in eval mode on map_location, metadata)``."""
    ckpt = read_checkpoint(path, "reward-network", ("kind", "kwargs", "state_dict", "temperature"), map_location)
    if ckpt["kind"] != _CHECKPOINT_KIND:
        raise ValueError(f"{path}: not a reward-network checkpoint written by save_reward_net "
                         f"(expected kind {_CHECKPOINT_KIND!r}, found {ckpt['kind']!r})")
    net = RewardNet(**ckpt["kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    net.set_temperature(float(ckpt["temperature"]))
    return net.to(map_location).eval(), dict(ckpt.get("metadata", {}))
