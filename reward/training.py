"""Training the reward network (docs/method.md, iteration step 2).

:func:`train_reward_network` - BCE on the per-pixel target ``pred == reference``, from scratch every
iteration, a seeded 90/10 split, the best-on-validation checkpoint, then :func:`reward.network.fit_temperature`
on the validation logits (calibration pixels: foreground by default) with ECE before and after.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from tqdm.auto import tqdm

from agents.distributed import RankSlice, average_gradients, per_process_batch, sync_buffers
from agents.distributed import context as distributed_context
from agents.networks import autocast, autocast_dtype, check_speed_settings, compiled, grad_scaler, to_memory_format
from agents.pretrain import augment_intensity, random_shift
from reward.network import RewardNet, fit_temperature, save_reward_net
from reward.uncertainty import expected_calibration_error


#: ``augment``'s ranges: gamma and contrast (those of the actor's pretraining), the largest shift (fraction of the size)
AUGMENT_INTENSITY = ((0.7, 1.4), (0.8, 1.2))
AUGMENT_SHIFT = 0.06


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
@dataclass
class RewardTrainConfig:
    """Settings of :func:`train_reward_network` (defaults: the authors' optimiser, CPU-sized network)."""

    #: maximum number of passes over the training split (with ``max_steps``: of validation rounds)
    epochs: int = 10
    #: None: ``epochs`` full passes, so the time grows with the accumulated reward set; an int bounds the
    #: training to this many gradient steps whatever the set's size: ``epochs`` rounds of
    #: ``ceil(max_steps / epochs)`` steps (the loader cycled, reshuffled at each pass), each round followed
    #: by the validation and early-stopping check of an epoch
    max_steps: int | None = None
    #: samples per optimisation step
    batch_size: int = 32
    #: Adam learning rate (authors: 1e-3)
    lr: float = 1e-3
    #: fraction of the samples held out for validation, early stopping and temperature scaling (authors: 0.1)
    val_fraction: float = 0.1
    #: "image": all samples of one image (same ``ids`` entry of the sample set) on the same side of the split,
    #: so validation (early stopping, temperature, ECE) never sees an image it trained on; "image_id": the same, each
    #: image's side drawn from its id and ``split_seed`` alone (a hash), so an image keeps its side as the sample set
    #: grows: what a network started from an earlier one (``init``) needs; "sample": per sample
    split_by: str = "image"
    #: seed of the "image_id" split's hash (``seed`` seeds the other splits)
    split_seed: int = 0
    #: use the network (for PPO and test-time optimisation) only when :meth:`RewardTrainResult.informative`;
    #: false uses it whatever its checks say
    require_informative: bool = True
    #: the network counts as informative with at least this many samples
    min_samples: int = 64
    #: ... and removing at least this fraction of the best constant predictor's validation errors
    #: (1 - (1 - accuracy) / (1 - constant accuracy)); scale-free, unlike an accuracy gain, which a reward
    #: network for an already good actor (few wrong pixels) cannot reach
    min_error_reduction: float = 0.2
    #: ... or, when set, telling wrong from right validation pixels with at least this ROC AUC (0.5: no better than
    #: a constant); ranks matter to PPO's advantages, and a network whose probabilities never cross 0.5 on a rare
    #: error class removes no thresholded errors however well it ranks them (None: the error-reduction check only)
    min_auc: float | None = None
    #: stop after this many epochs without a lower validation loss (None: never stop early)
    patience: int | None = 3
    #: augment every training batch, one draw per sample: gamma and contrast of the image
    #: (:func:`agents.pretrain.augment_intensity`, the pretraining's ranges) and an integer shift of up to 6% of
    #: the size moving image, segmentation and target together (uncovered pixels: black image, background
    #: segmentation, right). Neither changes which pixels are wrong; validation batches are never augmented
    augment: bool = False
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
    #: at most this many validation pixels (a seeded random subset) are kept for calibration: plenty for a
    #: one-parameter fit and a 15-bin ECE, and a bound on memory (9 bytes per kept pixel) however large the
    #: validation split grows
    calibration_max_pixels: int = 1_000_000
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
    #: "off", "auto", "bf16" or "fp16", as :attr:`agents.pretrain.PretrainConfig.mixed_precision`
    mixed_precision: str = "off"
    #: channels_last memory format for the network (None: on CUDA and CPUs; :func:`agents.networks.use_channels_last`)
    channels_last: bool | None = None
    #: torch.compile the training steps' forward pass: false, true or a backend name (:func:`agents.networks.compiled`)
    compile: bool | str = False
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
        if self.min_auc is not None and not 0.5 <= self.min_auc <= 1:
            raise ValueError(f"RewardTrainConfig.min_auc must be null or in [0.5, 1], got {self.min_auc}")
        if self.min_samples < 0 or not 0 <= self.min_error_reduction <= 1:
            raise ValueError("RewardTrainConfig.min_samples must be >= 0 and min_error_reduction in [0, 1], got "
                             f"{self.min_samples} and {self.min_error_reduction}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"RewardTrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        check_speed_settings(self.mixed_precision, self.compile, "RewardTrainConfig.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"RewardTrainConfig.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"RewardTrainConfig.patience must be >= 1 or null, got {self.patience}")
        if self.split_by not in ("image", "image_id", "sample"):
            raise ValueError("RewardTrainConfig.split_by must be 'image', 'image_id' or 'sample', "
                             f"got {self.split_by!r}")
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
    val_auc: float = float("nan")
    n_train: int = 0
    n_val: int = 0
    out_path: str | None = None

    @property
    def val_error_reduction(self) -> float:
        """Fraction of the best constant predictor's validation errors the network removes (0 when the
        constant predictor makes none: then there is nothing to tell apart)."""
        errors = 1.0 - self.val_majority_accuracy
        return 0.0 if errors <= 0 else 1.0 - (1.0 - self.val_accuracy) / errors

    def informative(self, min_samples: int, min_error_reduction: float, min_auc: float | None = None) -> bool:
        """Whether the network's own held-out checks say it tells right from wrong pixels: at least
        ``min_samples`` samples, and :attr:`val_error_reduction` >= ``min_error_reduction`` with an accuracy above
        the constant predictor's, or (with ``min_auc``) :attr:`val_auc` >= ``min_auc``."""
        if self.n_train + self.n_val < min_samples:
            return False
        if self.val_error_reduction >= min_error_reduction and self.val_accuracy > self.val_majority_accuracy:
            return True
        return min_auc is not None and self.val_auc >= min_auc

    def summary(self) -> dict[str, float]:
        """Scalars for logs and reports."""
        return {"temperature": self.temperature, "best_epoch": self.best_epoch,
                "train_loss": self.train_losses[self.best_epoch] if self.train_losses else float("nan"),
                "val_loss": self.val_losses[self.best_epoch] if self.val_losses else float("nan"),
                "val_ece_before": self.val_ece_before, "val_ece_after": self.val_ece_after,
                "val_accuracy": self.val_accuracy, "val_majority_accuracy": self.val_majority_accuracy,
                "val_error_reduction": self.val_error_reduction, "val_auc": self.val_auc,
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


class ShardBlockSampler(torch.utils.data.Sampler[int]):
    """A fresh shuffled order of ``len(shard_of)`` positions each pass, shuffled in blocks of shards: the
    shards in a random order, taken ``block_shards`` at a time, the positions of each block shuffled together.

    With a lazily read sample set (:class:`reward.builder.RewardSampleDataset`) whose cache holds
    ``block_shards`` shards, each shard is decoded once per pass; when every shard fits in one block this is a
    plain shuffle.

    :param shard_of: shard of each position (e.g. ``dataset.shard_of[subset_indices]``).
    :param block_shards: shards per block (>= 1).
    :param generator: torch generator that seeds each pass's order.
    """

    def __init__(self, shard_of: np.ndarray, block_shards: int, generator: torch.Generator | None = None) -> None:
        self.shard_of = np.asarray(shard_of)
        self.block_shards = max(1, int(block_shards))
        self.generator = generator

    def __len__(self) -> int:
        return len(self.shard_of)

    def __iter__(self):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        rng = np.random.default_rng(seed)
        shards = rng.permutation(np.unique(self.shard_of))
        for start in range(0, len(shards), self.block_shards):
            block = np.flatnonzero(np.isin(self.shard_of, shards[start:start + self.block_shards]))
            yield from rng.permutation(block).tolist()


def train_reward_network(samples: Any, n_classes: int, config: RewardTrainConfig | None = None,
                         out_path: str | os.PathLike | None = None, init: RewardNet | None = None,
                         **metadata: Any) -> RewardTrainResult:
    """Train a reward network (from scratch, or from ``init``'s weights), keep the best-on-validation weights, then
    temperature-scale it.

    :param samples: indexable with ``len`` (list, ``torch.utils.data.Dataset`` such as
        :class:`reward.builder.RewardSampleDataset`) of ``(image, pred, target)``: image float32 (H, W) or
        (1, H, W) in [0, 1], pred (H, W) int label map, target (H, W) bool/float = ``pred == reference``.
        Mappings with keys ``image``, ``pred``, ``target`` work too.
    :param n_classes: classes of the label maps, background included.
    :param config: :class:`RewardTrainConfig` (default settings if None).
    :param out_path: if given, the final network is saved there with :func:`save_reward_net` (atomic).
    :param init: a trained :class:`RewardNet` of the same architecture (``n_classes``, ``config.channels``,
        ``config.norm``, ``config.seg_encoding``) whose weights training starts from (a warm start, e.g. the previous
        RL iteration's network); it is not modified. None: fresh weights (seeded by ``config.seed``).
    :param metadata: extra plain values stored in the checkpoint (e.g. ``iteration=2``).
    :return: :class:`RewardTrainResult`.

    Loss: mean per-pixel BCE with logits on the target. Split: a seeded random ``val_fraction`` of the
    samples (at least one) is held out; with ``split_by="image"`` and samples that carry ``ids`` (one per
    sample, the source image's id, as :class:`reward.builder.RewardSampleDataset`), whole images are held out. The temperature is fitted on the held-out logits (the
    ``calibration_pixels`` of up to ``calibration_max_pixels`` pixels) with :func:`fit_temperature`.
    """
    config = config or RewardTrainConfig()
    n = len(samples)
    if n < 2:
        raise ValueError(f"train_reward_network needs at least 2 samples (train + validation), got {n}")
    device = torch.device(config.device)
    # seeded run that leaves the caller's global RNG streams as they were
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _train(samples, n_classes, config, device, out_path, metadata, init)


def split_indices(n: int, val_fraction: float, seed: int, groups: Sequence[Any] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices of ``n`` samples: a seeded ``val_fraction`` (at least one) held out.

    With ``groups`` (one key per sample, e.g. the image id), whole groups go to one side: groups are drawn in
    a seeded order until the validation side holds ``val_fraction`` of the samples; one group is always left
    for training. With a single group the split falls back to samples (there is nothing to group).
    """
    rng = np.random.default_rng(seed)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    if groups is not None:
        keys = np.asarray([str(g) for g in groups])
        if len(keys) != n:
            raise ValueError(f"split_indices: {len(keys)} group keys for {n} samples")
        unique = np.unique(keys)
        if len(unique) > 1:
            chosen, size = [], 0
            counts = {k: int(c) for k, c in zip(*np.unique(keys, return_counts=True))}
            for key in rng.permutation(unique)[:-1]:
                if size >= n_val:
                    break
                chosen.append(key)
                size += counts[key]
            val = np.isin(keys, chosen)
            return np.flatnonzero(val), rng.permutation(np.flatnonzero(~val))
    order = rng.permutation(n)
    return np.sort(order[:n_val]), order[n_val:]


def stable_split_indices(groups: Sequence[Any], val_fraction: float, split_seed: int, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices, whole groups (e.g. image ids) on one side, each group's side drawn from the
    group key and ``split_seed`` alone: the group goes to validation when a hash of both, read as a number in [0, 1),
    is below ``val_fraction``. A group keeps its side whatever other groups the set holds, so a set that grows keeps
    its earlier validation groups out of training. At least one group is on each side when there are two or more
    (the lowest hash is moved to validation, or the highest to training); the training indices are shuffled with
    ``seed``."""
    keys = np.asarray([str(g) for g in groups])
    unique = np.unique(keys)
    if len(unique) < 2:  # a single group: split by sample, as split_indices does
        return split_indices(len(keys), val_fraction, seed)
    draws = {k: int.from_bytes(hashlib.sha256(f"{split_seed}:{k}".encode()).digest()[:8], "big") / 2**64
             for k in unique}
    ordered = sorted(unique, key=draws.get)
    chosen = {k for k in unique if draws[k] < val_fraction} or {ordered[0]}
    if len(chosen) == len(unique):
        chosen.discard(ordered[-1])
    val = np.isin(keys, sorted(chosen))
    return np.flatnonzero(val), np.random.default_rng(seed).permutation(np.flatnonzero(~val))


def _train(samples: Any, n_classes: int, config: RewardTrainConfig, device: torch.device,
           out_path: str | os.PathLike | None, metadata: dict[str, Any], init: RewardNet | None = None
           ) -> RewardTrainResult:
    groups = getattr(samples, "ids", None) if config.split_by != "sample" else None
    if config.split_by == "image_id" and groups is not None:
        val_idx, train_idx = stable_split_indices(groups, config.val_fraction, config.split_seed, config.seed)
    else:
        val_idx, train_idx = split_indices(len(samples), config.val_fraction, config.seed, groups)

    gen = torch.Generator().manual_seed(config.seed)
    ctx = distributed_context()
    # worker processes read the shards while the device trains; page-locked batches copy to a GPU asynchronously
    loader_kw = {"batch_size": config.batch_size, "collate_fn": _collate, "num_workers": config.num_workers,
                 "pin_memory": device.type == "cuda", "persistent_workers": config.num_workers > 0}
    # a lazily read sample set is shuffled in blocks of the shards its cache holds (each decoded once a pass)
    order = (ShardBlockSampler(samples.shard_of[train_idx], samples.block_shards, gen)
             if hasattr(samples, "shard_of") else torch.utils.data.RandomSampler(train_idx, generator=gen))
    train_kw = dict(loader_kw)
    if ctx.enabled:  # torchrun: each process trains on its share of every batch, gradients averaged
        order = RankSlice(order, ctx)
        train_kw["batch_size"] = per_process_batch(config.batch_size, ctx, "reward_net.batch_size")
    train_loader = torch.utils.data.DataLoader(_Subset(samples, train_idx), sampler=order,
                                               # a last batch of one sample would break batch norm
                                               drop_last=len(order) % train_kw["batch_size"] == 1, **train_kw)
    val_loader = torch.utils.data.DataLoader(_Subset(samples, val_idx), shuffle=False, **loader_kw)

    net = RewardNet(n_classes, seg_encoding=config.seg_encoding, channels=config.channels,
                    norm=config.norm).to(device)
    if init is not None:
        built, wanted = ({k: v for k, v in m.constructor_kwargs().items() if k != "temperature"} for m in (init, net))
        if built != wanted:
            raise ValueError(f"train_reward_network: the network to start from was built with {built}, the one to "
                             f"train with {wanted}; a warm start needs the same architecture")
        net.load_state_dict(init.state_dict())
        net.set_temperature(1.0)  # refitted below; training reads the raw logits
    to_memory_format(net, config.channels_last, device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    writer = None
    if config.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config.tensorboard_dir)
    tag = config.tensorboard_prefix

    result = RewardTrainResult(net=net, temperature=1.0, n_train=len(train_idx), n_val=len(val_idx))
    best_loss, best_state, stale = math.inf, None, 0
    rounds, steps_per_round = _training_rounds(train_loader, config.max_steps, config.epochs)
    precision = autocast_dtype(config.mixed_precision, device)
    scaler = grad_scaler(precision, device)
    # the U-Net is compiled; the input checks and encoding of the label maps stay outside its graph
    unet = compiled(net.unet, config.compile, "RewardTrainConfig.compile")
    epochs = tqdm(range(config.epochs), desc="reward net", unit="epoch", disable=not config.progress, leave=False)
    for epoch in epochs:
        net.train()
        total, count = torch.zeros((), device=device), 0  # summed on the device: no transfer per step
        for images, preds, targets in tqdm(next(rounds), desc=f"epoch {epoch + 1}", leave=False, unit="batch",
                                           total=steps_per_round, disable=not config.progress):
            images, preds, targets = (t.to(device, non_blocking=True) for t in (images, preds, targets))
            if config.augment:
                images = augment_intensity(images, gen, *AUGMENT_INTENSITY)
                images, (preds, targets) = random_shift(images, [preds, targets], [0, 1.0], gen, AUGMENT_SHIFT)
            with autocast(precision, device):
                logits = unet(net.encode(images, preds))[:, 0]
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            average_gradients(net.parameters())
            scaler.step(optimizer)
            scaler.update()
            total += loss.detach() * len(images)
            count += len(images)
        train_loss = float(total) / max(count, 1)
        sync_buffers(net)  # torchrun: the same network on every process before it is validated
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
    result.val_auc = error_detection_auc(logits.numpy(), errors)
    result.val_ece_before = expected_calibration_error(torch.sigmoid(-logits).numpy(), errors, mask, config.n_bins)
    result.val_ece_after = expected_calibration_error(torch.sigmoid(-logits / temperature).numpy(), errors, mask,
                                                      config.n_bins)
    if writer is not None:
        for name in ("temperature", "val_ece_before", "val_ece_after", "val_accuracy"):
            writer.add_scalar(f"{tag}/{name}", float(getattr(result, name)), result.best_epoch)
        writer.close()
    # trained in channels_last or not, the network returned is laid out as a loaded checkpoint is: the same reward
    # maps, bit for bit, as load_reward_net(out_path) (the memory format changes the kernels' float rounding)
    net.to(memory_format=torch.contiguous_format)
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


def _training_rounds(loader: torch.utils.data.DataLoader, max_steps: int | None, epochs: int):
    """``(iterator of rounds, steps per round)``: each round an iterable of batches; a full pass of ``loader``
    without ``max_steps``, else ``ceil(max_steps / epochs)`` batches of the loader cycled (a new shuffled
    pass whenever one ends)."""
    if max_steps is None:
        return (loader for _ in range(epochs)), len(loader)
    per_round = -(-max_steps // epochs)

    def cycled():
        while True:
            yield from loader

    batches = cycled()
    return (itertools.islice(batches, per_round) for _ in range(epochs)), per_round


def error_detection_auc(logits: np.ndarray, errors: np.ndarray) -> float:
    """ROC AUC of telling wrong pixels (``errors`` true) from right ones by a low logit: the probability that a
    random wrong pixel scores below a random right one, ties counting half (NaN when one class is absent)."""
    errors = np.asarray(errors, dtype=bool).ravel()
    n_wrong = int(errors.sum())
    n_right = errors.size - n_wrong
    if n_wrong == 0 or n_right == 0:
        return float("nan")
    ranks = rankdata(-np.asarray(logits, dtype=np.float64).ravel())  # rank 1: the highest logit
    return float((ranks[errors].sum() - n_wrong * (n_wrong + 1) / 2) / (n_wrong * n_right))


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
