"""The RL4Seg reward network: P(pixel correct | image, segmentation), with temperature scaling.

- :class:`RewardNet` - a U-Net on the image stacked with the segmentation (one-hot or a label channel),
  one logit per pixel, and a scalar ``temperature`` buffer: ``reward_map = sigmoid(logit / temperature)``.
- :func:`train_reward_network` - BCE on the per-pixel target ``pred == reference``, trained from scratch,
  90/10 split, best-on-validation checkpoint, then :func:`fit_temperature` on the validation logits.
- :class:`LearnedReward` - the adapter implementing :class:`rl4seg_env.rewards.RewardModel` (numpy in,
  numpy out) that the environment's learned-reward wrapper calls.
- :func:`save_reward_net` / :func:`load_reward_net` - atomic checkpoints that include the temperature.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from agents.networks import UNet, eval_mode, predict, unet_kwargs
from reward.uncertainty import expected_calibration_error
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
# training
# --------------------------------------------------------------------------------------------------
@dataclass
class RewardTrainConfig:
    """Settings of :func:`train_reward_network` (defaults: the authors' optimiser, CPU-sized network)."""

    #: maximum number of passes over the training split
    epochs: int = 10
    #: samples per optimisation step
    batch_size: int = 32
    #: Adam learning rate (authors: 1e-3)
    lr: float = 1e-3
    #: fraction of the samples held out for validation, early stopping and temperature scaling (authors: 0.1)
    val_fraction: float = 0.1
    #: stop after this many epochs without a lower validation loss (None: never stop early)
    patience: int | None = 3
    #: U-Net widths per level, shallow to deep
    channels: tuple[int, ...] = (16, 32, 64, 128)
    #: U-Net normalisation: "batch", "instance", "group" or None
    norm: str | None = "batch"
    #: segmentation input: "onehot" or "label" (see RewardNet)
    seg_encoding: str = "onehot"
    #: fit the temperature after training (False keeps T = 1)
    calibrate: bool = True
    #: pixels used to fit the temperature and measure ECE: "foreground" (prediction or reference not
    #: background, where the evaluation measures calibration) or "all"
    calibration_pixels: str = "foreground"
    #: at most this many validation pixels (a seeded random subset) are kept for calibration
    calibration_max_pixels: int = 4_000_000
    #: L-BFGS iterations of the temperature fit
    temperature_max_iter: int = 50
    #: ECE bins
    n_bins: int = 15
    #: torch device (the caller decides; "cpu" by default)
    device: str = "cpu"
    #: seeds the split, the weight initialisation and the shuffling
    seed: int = 0
    #: DataLoader worker processes
    num_workers: int = 0
    #: show tqdm progress bars
    progress: bool = True
    #: write TensorBoard scalars here (None: no TensorBoard)
    tensorboard_dir: str | None = None
    #: prefix of the TensorBoard tags
    tensorboard_prefix: str = "reward_net"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "calibration_max_pixels", "temperature_max_iter", "n_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"RewardTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"RewardTrainConfig.lr must be > 0, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"RewardTrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"RewardTrainConfig.patience must be >= 1 or null, got {self.patience}")
        if self.seg_encoding not in ("onehot", "label"):
            raise ValueError(f"RewardTrainConfig.seg_encoding must be 'onehot' or 'label', got {self.seg_encoding!r}")
        if self.calibration_pixels not in ("foreground", "all"):
            raise ValueError("RewardTrainConfig.calibration_pixels must be 'foreground' or 'all', "
                             f"got {self.calibration_pixels!r}")
        self.channels = tuple(int(c) for c in self.channels)


@dataclass
class RewardTrainResult:
    """What :func:`train_reward_network` returns.

    :param net: the best-on-validation network (on ``config.device``, eval mode) with its temperature set.
    :param temperature: the fitted temperature (1.0 when ``calibrate=False``).
    :param train_losses: mean training BCE per epoch.
    :param val_losses: validation BCE per epoch (before temperature scaling).
    :param best_epoch: index (0-based) of the epoch whose weights were kept.
    :param val_ece_before: ECE of ``1 - reward`` vs the error map on the validation calibration pixels, T = 1.
    :param val_ece_after: the same with the fitted temperature.
    :param val_accuracy: fraction of validation pixels where ``reward > 0.5`` matches the target (all pixels).
    :param val_majority_accuracy: accuracy of the best constant predictor on the same pixels (the baseline
        ``val_accuracy`` must beat).
    :param n_train: training samples. :param n_val: validation samples.
    :param out_path: where the checkpoint was saved, if anywhere.
    """

    net: RewardNet
    temperature: float
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int = 0
    val_ece_before: float = float("nan")
    val_ece_after: float = float("nan")
    val_accuracy: float = float("nan")
    val_majority_accuracy: float = float("nan")
    n_train: int = 0
    n_val: int = 0
    out_path: str | None = None

    def summary(self) -> dict[str, float]:
        """Scalars for logs and reports."""
        return {"temperature": self.temperature, "best_epoch": self.best_epoch,
                "train_loss": self.train_losses[self.best_epoch] if self.train_losses else float("nan"),
                "val_loss": self.val_losses[self.best_epoch] if self.val_losses else float("nan"),
                "val_ece_before": self.val_ece_before, "val_ece_after": self.val_ece_after,
                "val_accuracy": self.val_accuracy, "val_majority_accuracy": self.val_majority_accuracy,
                "n_train": self.n_train, "n_val": self.n_val}


def _unpack(sample: Any) -> tuple[Any, Any, Any]:
    if isinstance(sample, Mapping):
        try:
            return sample["image"], sample["pred"], sample["target"]
        except KeyError as exc:
            raise KeyError(f"reward sample mapping needs keys 'image', 'pred', 'target'; missing {exc}") from None
    if len(sample) != 3:
        raise ValueError(f"a reward sample is (image, pred, target); got a sequence of {len(sample)} items")
    return sample[0], sample[1], sample[2]


def _collate(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack samples into images (B, 1, H, W) float32, preds (B, H, W) int64, targets (B, H, W) float32."""
    images, preds, targets = [], [], []
    for sample in batch:
        image, pred, target = _unpack(sample)
        image = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image, dtype=torch.float32)
        images.append(image.reshape(1, *image.shape[-2:]))
        preds.append(torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred).long())
        targets.append(torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target).float())
    try:
        return torch.stack(images), torch.stack(preds), torch.stack(targets)
    except RuntimeError as exc:
        shapes = sorted({tuple(t.shape) for t in preds})
        raise ValueError(f"reward samples must all have the same size; found prediction shapes {shapes}") from exc


class _Subset(torch.utils.data.Dataset):
    def __init__(self, samples: Any, indices: np.ndarray) -> None:
        self.samples, self.indices = samples, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.samples[int(self.indices[i])]


def train_reward_network(samples: Any, n_classes: int, config: RewardTrainConfig | None = None,
                         out_path: str | os.PathLike | None = None, **metadata: Any) -> RewardTrainResult:
    """Train a reward network from scratch, keep the best-on-validation weights, then temperature-scale it.

    :param samples: indexable with ``len`` (list, ``torch.utils.data.Dataset`` such as
        :class:`reward.builder.RewardSampleDataset`) of ``(image, pred, target)``: image float32 (H, W) or
        (1, H, W) in [0, 1], pred (H, W) int label map, target (H, W) bool/float = ``pred == reference``.
        Mappings with keys ``image``, ``pred``, ``target`` work too.
    :param n_classes: classes of the label maps, background included.
    :param config: :class:`RewardTrainConfig` (default settings if None).
    :param out_path: if given, the final network is saved there with :func:`save_reward_net` (atomic).
    :param metadata: extra plain values stored in the checkpoint (e.g. ``iteration=2``).
    :return: :class:`RewardTrainResult`.

    Loss: mean per-pixel BCE with logits on the target. Split: a seeded random ``val_fraction`` of the
    samples (at least one) is held out. The temperature is fitted on the held-out logits (the
    ``calibration_pixels`` of up to ``calibration_max_pixels`` pixels) with :func:`fit_temperature`.
    """
    config = config or RewardTrainConfig()
    if config.calibration_pixels not in ("foreground", "all"):
        raise ValueError(f"RewardTrainConfig.calibration_pixels must be 'foreground' or 'all', "
                         f"got {config.calibration_pixels!r}")
    n = len(samples)
    if n < 2:
        raise ValueError(f"train_reward_network needs at least 2 samples (train + validation), got {n}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError(f"RewardTrainConfig: epochs and batch_size must be >= 1, got epochs={config.epochs}, "
                         f"batch_size={config.batch_size}")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"RewardTrainConfig.val_fraction must be in (0, 1), got {config.val_fraction}")
    device = torch.device(config.device)
    # seeded run that leaves the caller's global RNG streams as they were
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _train(samples, n_classes, config, device, out_path, metadata)


def _train(samples: Any, n_classes: int, config: RewardTrainConfig, device: torch.device,
           out_path: str | os.PathLike | None, metadata: dict[str, Any]) -> RewardTrainResult:
    n = len(samples)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_val = min(max(1, int(round(config.val_fraction * n))), n - 1)
    val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]

    gen = torch.Generator().manual_seed(config.seed)
    loader_kw = {"batch_size": config.batch_size, "collate_fn": _collate, "num_workers": config.num_workers}
    train_loader = torch.utils.data.DataLoader(_Subset(samples, train_idx), shuffle=True, generator=gen,
                                               # a last batch of one sample would break batch norm
                                               drop_last=len(train_idx) % config.batch_size == 1, **loader_kw)
    val_loader = torch.utils.data.DataLoader(_Subset(samples, val_idx), shuffle=False, **loader_kw)

    net = RewardNet(n_classes, seg_encoding=config.seg_encoding, channels=config.channels,
                    norm=config.norm).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    writer = None
    if config.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config.tensorboard_dir)
    tag = config.tensorboard_prefix

    result = RewardTrainResult(net=net, temperature=1.0, n_train=len(train_idx), n_val=n_val)
    best_loss, best_state, stale = math.inf, None, 0
    epochs = tqdm(range(config.epochs), desc="reward net", unit="epoch", disable=not config.progress, leave=False)
    for epoch in epochs:
        net.train()
        total, count = 0.0, 0
        for images, preds, targets in tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, unit="batch",
                                           disable=not config.progress):
            images, preds, targets = images.to(device), preds.to(device), targets.to(device)
            loss = F.binary_cross_entropy_with_logits(net(images, preds)[:, 0], targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(images)
            count += len(images)
        train_loss = total / max(count, 1)
        val_loss = _validation_loss(net, val_loader, device)
        result.train_losses.append(train_loss)
        result.val_losses.append(val_loss)
        epochs.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if writer is not None:
            writer.add_scalar(f"{tag}/train_loss", train_loss, epoch)
            writer.add_scalar(f"{tag}/val_loss", val_loss, epoch)
        if val_loss < best_loss:
            best_loss, stale, result.best_epoch = val_loss, 0, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if config.patience is not None and stale >= config.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()

    # temperature scaling on the held-out split
    logits, targets, fg, result.val_accuracy, result.val_majority_accuracy = _collect_validation(
        net, val_loader, device, config)
    keep = fg if config.calibration_pixels == "foreground" else torch.ones_like(fg)
    if config.calibrate and keep.any():
        temperature = fit_temperature(logits[keep], targets[keep], max_iter=config.temperature_max_iter)
    else:
        temperature = 1.0
    net.set_temperature(temperature)
    result.temperature = temperature
    errors = (targets < 0.5).numpy()
    mask = keep.numpy()
    result.val_ece_before = expected_calibration_error(torch.sigmoid(-logits).numpy(), errors, mask, config.n_bins)
    result.val_ece_after = expected_calibration_error(torch.sigmoid(-logits / temperature).numpy(), errors, mask,
                                                      config.n_bins)
    if writer is not None:
        for name in ("temperature", "val_ece_before", "val_ece_after", "val_accuracy"):
            writer.add_scalar(f"{tag}/{name}", float(getattr(result, name)), result.best_epoch)
        writer.close()
    if out_path is not None:
        save_reward_net(net, out_path, **{**result.summary(), **metadata})
        result.out_path = str(out_path)
    return result


def _validation_loss(net: RewardNet, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for images, preds, targets in loader:
            logits = net(images.to(device), preds.to(device))[:, 0]
            total += float(F.binary_cross_entropy_with_logits(logits, targets.to(device), reduction="sum"))
            count += targets.numel()
    return total / max(count, 1)


def _collect_validation(net: RewardNet, loader: torch.utils.data.DataLoader, device: torch.device,
                        config: RewardTrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """Validation logits, targets and foreground flags of a seeded subset of at most
    ``config.calibration_max_pixels`` pixels, plus the accuracy of ``logit > 0`` and of the best constant
    predictor over all validation pixels."""
    pixels_per_sample = int(np.prod(_collate([loader.dataset[0]])[1].shape[1:]))
    total_pixels = len(loader.dataset) * pixels_per_sample
    keep_prob = min(1.0, config.calibration_max_pixels / max(total_pixels, 1))
    gen = torch.Generator().manual_seed(config.seed + 1)
    logits, targets, fg = [], [], []
    correct, n_correct_targets, n_pix = 0, 0, 0
    with torch.no_grad():
        for images, preds, target in loader:
            z = net(images.to(device), preds.to(device))[:, 0].cpu()
            correct += int(((z > 0) == (target > 0.5)).sum())
            n_correct_targets += int((target > 0.5).sum())
            n_pix += target.numel()
            # an error needs a foreground label on one side: pred or reference is foreground
            is_fg = (preds > 0) | (target < 0.5)
            z, target, is_fg = z.reshape(-1), target.reshape(-1), is_fg.reshape(-1)
            if keep_prob < 1.0:
                sel = torch.rand(z.shape, generator=gen) < keep_prob
                z, target, is_fg = z[sel], target[sel], is_fg[sel]
            logits.append(z)
            targets.append(target)
            fg.append(is_fg)
    majority = max(n_correct_targets, n_pix - n_correct_targets)
    return torch.cat(logits), torch.cat(targets), torch.cat(fg), correct / max(n_pix, 1), majority / max(n_pix, 1)


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
