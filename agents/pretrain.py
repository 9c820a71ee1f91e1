"""Supervised pretraining of the actor on a labelled domain (docs/method.md, loop step 0).

The source-pretrained actor is where RL4Seg starts: :class:`~agents.policies.PixelActorCriticPolicy` loads it (``pretrained_actor``) as
the initial actor *and* as the frozen reference policy of the KL term. Training is plain supervised
segmentation: cross-entropy (optionally plus soft Dice), Adam (lr 1e-3 as the authors), validation Dice
after every epoch, the best checkpoint kept, early stopping, a progress bar and TensorBoard scalars.

Typical use::

    from rl4seg_env.data import make_dataset
    from agents.pretrain import PretrainConfig, pretrain_segmentation

    train = make_dataset("synthetic", preset="source", split="train", n_images=800, image_size=64)
    val = make_dataset("synthetic", preset="source", split="val", n_images=100, image_size=64)
    result = pretrain_segmentation(train, val, "runs/pretrain/actor.pt", PretrainConfig(epochs=15))
    print(result.best_val_dice, result.best_epoch)

**Target-supervised oracle.** The same function trained on *target* labels
(``pretrain_segmentation(target_train, target_val, "runs/oracle.pt", config)``) gives the upper bound
reported next to RL4Seg (same network, same budget). It reads target training labels, so it belongs
to the evaluation, never to the adaptation loop.

Files written next to ``out_path`` (e.g. ``actor.pt``):

- ``actor.pt``: the best model so far (highest validation Dice), a :func:`~agents.networks.save_unet`
  checkpoint loadable with :func:`~agents.networks.load_unet`;
- ``actor.last.pt``: the state after the last finished epoch (model, optimizer, epoch, history,
  early-stopping counters), from which ``pretrain_segmentation(..., resume=True)`` continues.

Both are written atomically, so a run killed at any moment can be resumed.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from agents.distributed import RankSlice, average_gradients, barrier, per_process_batch, sync_buffers
from agents.distributed import context as distributed_context
from agents.networks import (UNet, autocast, autocast_dtype, check_speed_settings, compiled, grad_scaler,
                             resolve_device, save_unet, to_memory_format, unet_kwargs)
from rl4seg_env.data.base import SegDataset
from rl4seg_env.io import atomic_torch_save, plain_values, read_checkpoint
from rl4seg_env.metrics import dice_per_class

LOSSES = ("ce", "ce+dice")


@dataclass
class PretrainConfig:
    """Hyper-parameters of supervised pretraining. Defaults suit 64 px synthetic data on a CPU."""

    #: maximum number of passes over the training set (the total, also when resuming)
    epochs: int = 15
    #: images per gradient step
    batch_size: int = 16
    #: Adam learning rate (authors: 1e-3)
    lr: float = 1e-3
    #: "ce" (cross-entropy) or "ce+dice" (cross-entropy + dice_weight * soft Dice loss)
    loss: str = "ce"
    #: weight of the soft Dice term when loss == "ce+dice"
    dice_weight: float = 1.0
    #: stop after this many epochs without an improvement of the validation Dice (None = never stop early)
    patience: int | None = 5
    #: an epoch counts as an improvement only if the validation Dice rises by more than this
    min_delta: float = 0.0
    #: U-Net widths per level (shallow to deep); ignored when a model is passed in
    channels: tuple[int, ...] = (16, 32, 64, 128)
    #: U-Net normalisation: "batch", "instance", "group" or None; ignored when a model is passed in
    norm: str | None = "batch"
    #: DataLoader worker processes (0 = load in the main process)
    num_workers: int = 0
    #: "off", "auto" (bfloat16 on CUDA when supported, else float16 with loss scaling; off elsewhere), "bf16",
    #: "fp16" (:func:`agents.networks.autocast_dtype`)
    mixed_precision: str = "off"
    #: channels_last memory format for the network (None: on CUDA and CPUs; :func:`agents.networks.use_channels_last`)
    channels_last: bool | None = None
    #: torch.compile the training steps' forward pass: false, true or a backend name (:func:`agents.networks.compiled`)
    compile: bool | str = False
    #: light on-the-fly augmentation of training batches (random gamma, contrast, small shifts)
    augment: bool = True
    #: gamma range: image <- image ** gamma, gamma log-uniform in this range
    gamma_range: tuple[float, float] = (0.7, 1.4)
    #: contrast range: image <- mean + c * (image - mean), c uniform in this range
    contrast_range: tuple[float, float] = (0.8, 1.2)
    #: maximum shift along each axis, as a fraction of the image size (labels shift with the image)
    max_shift: float = 0.06
    #: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: seed of the weight initialisation, the batch order and the augmentation
    seed: int = 0
    #: TensorBoard log folder (None = no TensorBoard)
    tensorboard_log: str | None = None
    #: show a tqdm progress bar per epoch
    progress: bool = True
    #: batch size of the validation pass
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"PretrainConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"PretrainConfig.{key} must be >= 1, got {getattr(self, key)!r}")
        if self.lr <= 0:
            raise ValueError(f"PretrainConfig.lr must be > 0, got {self.lr!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"PretrainConfig.patience must be >= 1 or None, got {self.patience!r}")
        if self.num_workers < 0:
            raise ValueError(f"PretrainConfig.num_workers must be >= 0, got {self.num_workers!r}")
        check_speed_settings(self.mixed_precision, self.compile, "PretrainConfig.")
        if not 0 <= self.max_shift < 0.5:
            raise ValueError(f"PretrainConfig.max_shift must be in [0, 0.5), got {self.max_shift!r}")
        self.channels = tuple(int(c) for c in self.channels)


@dataclass
class PretrainResult:
    """Outcome of :func:`pretrain_segmentation`.

    :param best_val_dice: highest mean foreground validation Dice reached (the one stored in the best checkpoint).
    :param best_epoch: 1-based epoch at which it was reached.
    :param history: one dict per finished epoch (including epochs of earlier runs when resumed): ``epoch``,
        ``train_loss``, ``val_dice_mean``, ``val_dice_<class name>`` per foreground class, ``lr``, ``seconds``.
    :param best_path: path of the best checkpoint (``out_path``).
    :param last_path: path of the resumable last-epoch checkpoint.
    :param stopped_early: True when the patience ran out before ``config.epochs``.
    :param model: the trained network, with the best weights loaded, in eval mode.
    """

    best_val_dice: float
    best_epoch: int
    history: list[dict[str, float]]
    best_path: Path
    last_path: Path
    stopped_early: bool
    model: UNet = field(repr=False)


class SegTorchDataset(Dataset):
    """:class:`torch.utils.data.Dataset` view of a labelled :class:`~rl4seg_env.data.base.SegDataset`.

    ``ds[i]`` returns ``(image, label)``: image float32 tensor (1, H, W) in [0, 1], label int64 tensor (H, W).

    :param dataset: a dataset built with ``with_labels=True``; refused otherwise (clear error).
    """

    def __init__(self, dataset: SegDataset) -> None:
        if not getattr(dataset, "with_labels", False):
            raise ValueError(f"{type(dataset).__name__} has no labels (built with with_labels=False); "
                             "supervised training and evaluation need a labelled dataset")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[index]
        if sample.label is None:
            raise ValueError(f"{type(self.dataset).__name__}: sample {sample.id!r} (index {index}) has no label")
        image = torch.from_numpy(np.ascontiguousarray(sample.image, dtype=np.float32))[None]
        label = torch.from_numpy(np.ascontiguousarray(sample.label).astype(np.int64))
        return image, label


def augment_intensity(images: torch.Tensor, generator: torch.Generator, gamma_range: tuple[float, float],
                      contrast_range: tuple[float, float]) -> torch.Tensor:
    """Gamma (log-uniform in ``gamma_range``) then contrast about each image's mean (uniform in
    ``contrast_range``), one draw per image, clipped to [0, 1]; the gamma draws come first.

    :param images: (B, 1, H, W) float32 in [0, 1].
    :param generator: CPU random generator (makes the augmentation reproducible).
    :return: the augmented images, same shape, dtype and device.
    """
    b = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(b, generator=generator)).to(images.device).view(b, 1, 1, 1)

    images = images.clamp(0, 1) ** uniform(math.log(gamma_range[0]), math.log(gamma_range[1])).exp()
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + uniform(*contrast_range) * (images - mean)).clamp(0, 1)


def augment_batch(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                  gamma_range: tuple[float, float] = (0.7, 1.4), contrast_range: tuple[float, float] = (0.8, 1.2),
                  max_shift: float = 0.06) -> tuple[torch.Tensor, torch.Tensor]:
    """Light augmentation of a batch, one random draw per image, vectorised over the batch.

    Intensity: :func:`augment_intensity`. Geometry: :func:`random_shift` of up to ``max_shift`` * size pixels along
    each axis, the same for image and label; uncovered pixels become 0 (black, background).

    :param images: (B, 1, H, W) float32 in [0, 1].
    :param labels: (B, H, W) int64.
    :param generator: CPU random generator (makes the augmentation reproducible).
    :return: augmented ``(images, labels)``, same shapes, dtypes and device.
    """
    images = augment_intensity(images, generator, gamma_range, contrast_range)
    images, (labels,) = random_shift(images, [labels], [0], generator, max_shift)
    return images, labels


def random_shift(images: torch.Tensor, maps: Sequence[torch.Tensor], fills: Sequence[float],
                 generator: torch.Generator, max_shift: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Shift each image and its (H, W) maps by one random integer offset of up to ``max_shift`` * size pixels per
    axis; uncovered image pixels become 0, uncovered pixels of ``maps[k]`` become ``fills[k]``.

    :param images: (B, 1, H, W).
    :param maps: (B, H, W) tensors moved with the images (labels, predictions, targets).
    :return: ``(images, maps)``, same shapes, dtypes and device.
    """
    b, _, h, w = images.shape
    device = images.device
    sy, sx = int(round(max_shift * h)), int(round(max_shift * w))
    if sy == 0 and sx == 0:
        return images, list(maps)
    # pad, then crop each image at its own offset through advanced indexing (no loop over the batch)
    dy = torch.randint(-sy, sy + 1, (b,), generator=generator).to(device)
    dx = torch.randint(-sx, sx + 1, (b,), generator=generator).to(device)
    rows = (torch.arange(h, device=device)[None] + sy - dy[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w, device=device)[None] + sx - dx[:, None])[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=device)[:, None, None]
    padded = [F.pad(images[:, 0], (sx, sx, sy, sy))] + [F.pad(m, (sx, sx, sy, sy), value=fill)
                                                        for m, fill in zip(maps, fills, strict=True)]
    moved = [t[batch, rows, cols] for t in padded]
    return moved[0][:, None], moved[1:]


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, pooled over the batch.

    :param logits: (B, C, H, W) class logits.
    :param labels: (B, H, W) int64 in ``range(C)``.
    :param eps: smoothing added to numerator and denominator (pixels); keeps absent classes finite.
    """
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def _check_model_fits(model: nn.Module, dataset: SegDataset, role: str) -> None:
    n_out = getattr(model, "out_channels", None)
    if n_out is not None and n_out != dataset.n_classes:
        raise ValueError(f"class count mismatch: the model outputs {n_out} classes but the {role} dataset "
                         f"{type(dataset).__name__} has {dataset.n_classes} ({', '.join(dataset.class_names)})")
    n_in = getattr(model, "in_channels", 1)
    if n_in != 1:
        raise ValueError(f"the segmentation model must take 1 input channel (the image), found {n_in}")
    divisor = getattr(model, "divisor", 1)
    h, w = dataset.image_size
    if h % divisor or w % divisor:
        raise ValueError(f"the {role} dataset's image size {h}x{w} is not divisible by {divisor}, "
                         f"as the model's {len(model.channels)}-level U-Net needs")


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset: SegDataset, batch_size: int = 32,
                          device: str | torch.device = "cpu", num_workers: int = 0) -> dict[str, float]:
    """Mean per-class Dice of the argmax prediction of ``model`` on a labelled ``dataset``.

    Raw argmax (no post-processing), :func:`rl4seg_env.metrics.dice_per_class` per image (1 when a class
    is absent from both prediction and label), averaged over images. For the paper's evaluation (largest
    component, Hausdorff, anatomical validity) use :mod:`pipeline.evaluation`.

    :param model: network mapping (B, 1, H, W) float32 images to (B, n_classes, H, W) logits; it is run in
        eval mode and its train/eval mode is restored afterwards. Must already be on ``device``.
    :param dataset: labelled dataset with ``n_classes`` equal to the model's output channels.
    :param batch_size: images per forward pass (default 32).
    :param device: device of the model (default ``"cpu"``).
    :param num_workers: DataLoader worker processes (default 0).
    :return: ``{"dice_mean": mean over foreground classes, "dice_<class name>": ... per foreground class}``.
    """
    _check_model_fits(model, dataset, "evaluation")
    loader = DataLoader(SegTorchDataset(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    scores = []
    try:
        for images, labels in loader:
            preds = model(images.to(device)).argmax(dim=1).cpu().numpy()
            scores.append(dice_per_class(preds, labels.numpy(), dataset.n_classes))
    finally:
        model.train(was_training)
    per_class = np.concatenate(scores).mean(axis=0)
    out = {"dice_mean": float(per_class.mean())}
    out.update({f"dice_{name}": float(d) for name, d in zip(dataset.class_names[1:], per_class)})
    return out


def last_checkpoint_path(out_path: str | Path) -> Path:
    """Path of the resumable checkpoint written beside the best one: ``actor.pt`` -> ``actor.last.pt``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.last{out_path.suffix or '.pt'}")


def pretrain_segmentation(train: SegDataset, val: SegDataset, out_path: str | Path,
                          config: PretrainConfig | None = None, model: UNet | None = None,
                          resume: bool = False) -> PretrainResult:
    """Train a segmentation U-Net with supervision; keep the checkpoint with the best validation Dice.

    Each epoch: one shuffled pass over ``train`` (optionally augmented), the loss of ``config.loss``,
    Adam; then :func:`evaluate_segmentation` on ``val``. When the mean validation Dice improves by more
    than ``config.min_delta``, the model is saved to ``out_path`` with
    :func:`~agents.networks.save_unet` (metadata: ``class_names``, ``image_size``, ``val_dice``,
    ``val_dice_per_class``, ``epoch``); training stops after ``config.patience`` epochs without
    improvement. After every epoch the full state goes to :func:`last_checkpoint_path` (``*.last.pt``).

    Used on the source domain this is RL4Seg's step 0; on target labels it is the oracle (module doc).

    :param train: labelled training dataset (``with_labels=True``).
    :param val: labelled validation dataset with the same ``class_names`` and ``image_size``.
    :param out_path: where the best checkpoint goes (folders are created).
    :param config: hyper-parameters; default :class:`PretrainConfig()`.
    :param model: network to train (its out_channels must equal ``train.n_classes``); default a new
        ``UNet(1, train.n_classes, config.channels, config.norm)`` seeded with ``config.seed``.
    :param resume: continue from ``*.last.pt`` when it exists (weights, optimizer, history, early-stopping
        counters; ``config.epochs`` is the total, so raise it to train longer). Without such a file the
        run starts from scratch, so a restart script can always pass ``resume=True``.
    :return: :class:`PretrainResult`; its ``model`` holds the best weights.
    """
    config = PretrainConfig() if config is None else config
    for role, ds in (("training", train), ("validation", val)):
        if not getattr(ds, "with_labels", False):
            raise ValueError(f"the {role} dataset {type(ds).__name__} has no labels (built with "
                             "with_labels=False); supervised pretraining needs labels")
        if len(ds) == 0:
            raise ValueError(f"the {role} dataset {type(ds).__name__} is empty")
    if tuple(val.class_names) != tuple(train.class_names):
        raise ValueError(f"class names differ: training {tuple(train.class_names)} vs validation "
                         f"{tuple(val.class_names)}")
    if tuple(val.image_size) != tuple(train.image_size):
        raise ValueError(f"image sizes differ: training {tuple(train.image_size)} vs validation "
                         f"{tuple(val.image_size)}")

    out_path = Path(out_path)
    last_path = last_checkpoint_path(out_path)
    device = resolve_device(config.device)  # "auto" -> CUDA if available; a missing one is an error
    state = (read_checkpoint(last_path, "pretraining state", ("state_dict", "unet_kwargs", "optimizer", "history"))
             if resume and last_path.exists() else None)

    if model is None:
        if state is not None:
            model = UNet(**state["unet_kwargs"])
        else:
            torch.manual_seed(config.seed)
            model = UNet(1, train.n_classes, channels=config.channels, norm=config.norm)
    _check_model_fits(model, train, "training")
    to_memory_format(model.to(device), config.channels_last, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    history: list[dict[str, float]] = []
    best_val_dice, best_epoch, since_best = -math.inf, 0, 0
    if state is not None:
        if state["unet_kwargs"] != unet_kwargs(model):
            raise ValueError(f"{last_path}: checkpoint of a U-Net {state['unet_kwargs']}, cannot resume into "
                             f"a U-Net {unet_kwargs(model)}")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the config's lr wins over the stored one
            group["lr"] = config.lr
        history = list(state["history"])
        best_val_dice, best_epoch, since_best = state["best_val_dice"], state["best_epoch"], state["since_best"]

    writer = None
    if config.tensorboard_log is not None and distributed_context().is_main:
        writer = SummaryWriter(log_dir=str(config.tensorboard_log))
    # worker processes generate / read images while the device trains (num_workers: the loop config's
    # pretrain.num_workers); page-locked batches copy to a GPU asynchronously. Under torchrun every process
    # takes its share of each batch (same order everywhere, gradients averaged)
    ctx = distributed_context()
    shuffle = torch.Generator()
    train_set = SegTorchDataset(train)
    sampler: torch.utils.data.Sampler = torch.utils.data.RandomSampler(train_set, generator=shuffle)
    if ctx.enabled:
        sampler = RankSlice(sampler, ctx)
    loader = DataLoader(train_set, batch_size=per_process_batch(config.batch_size, ctx, "pretrain.batch_size"),
                        sampler=sampler, num_workers=config.num_workers, generator=shuffle,
                        pin_memory=torch.device(device).type == "cuda", persistent_workers=config.num_workers > 0)
    class_names = list(train.class_names)
    stopped_early = config.patience is not None and since_best >= config.patience
    start_epoch = len(history) + 1
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if stopped_early:
                break
            t0 = time.perf_counter()
            # one seed per epoch: a resumed run draws the same batches and augmentations as an unbroken one
            loader.generator.manual_seed(config.seed * 100_003 + epoch)
            aug_gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch + 50_000)
            train_loss = _train_one_epoch(model, loader, optimizer, config, device, aug_gen,
                                          desc=f"pretrain {epoch}/{config.epochs}")
            sync_buffers(model)  # torchrun: one model on every process before it is validated
            scores = evaluate_segmentation(model, val, config.eval_batch_size, device, config.num_workers)
            row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss, "val_dice_mean": scores["dice_mean"]}
            row.update({f"val_{k}": v for k, v in scores.items() if k != "dice_mean"})
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)

            if scores["dice_mean"] > best_val_dice + config.min_delta:
                best_val_dice, best_epoch, since_best = scores["dice_mean"], epoch, 0
                if ctx.is_main:
                    save_unet(model, str(out_path), class_names=class_names, image_size=list(train.image_size),
                              val_dice=float(best_val_dice), epoch=epoch,
                              val_dice_per_class={k[len("dice_"):]: v for k, v in scores.items() if k != "dice_mean"})
            else:
                since_best += 1
            stopped_early = config.patience is not None and since_best >= config.patience
            if ctx.is_main:
                atomic_torch_save({"state_dict": model.state_dict(), "unet_kwargs": unet_kwargs(model),
                                   "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                                   "best_val_dice": float(best_val_dice), "best_epoch": best_epoch,
                                   "since_best": since_best, "config": plain_values(dataclasses.asdict(config))},
                                  last_path)
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(f"pretrain/{key}", value, epoch)
                writer.add_scalar("pretrain/best_val_dice", best_val_dice, epoch)
                writer.flush()
    finally:
        if writer is not None:
            writer.close()
    barrier()  # torchrun: rank 0 has written the best checkpoint

    if not out_path.exists():
        raise RuntimeError(f"no epoch was run and {out_path} does not exist (epochs={config.epochs}, "
                           f"{len(history)} epoch(s) already in {last_path})")
    best = read_checkpoint(out_path, "U-Net", ("state_dict",), map_location=device)
    # trained in channels_last or not, the model returned is laid out as a loaded checkpoint is: the same outputs,
    # bit for bit, as load_unet(out_path) (the memory format changes the kernels' float rounding)
    model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(best["state_dict"])
    model.eval()
    return PretrainResult(best_val_dice=float(best_val_dice), best_epoch=best_epoch, history=history,
                          best_path=out_path, last_path=last_path, stopped_early=stopped_early, model=model)


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     config: PretrainConfig, device: torch.device, aug_gen: torch.Generator, desc: str) -> float:
    """One pass over ``loader`` (in ``config.mixed_precision``); returns the mean loss per image."""
    dtype = autocast_dtype(config.mixed_precision, device)
    scaler = grad_scaler(dtype, device)
    model.train()
    forward = compiled(model, config.compile, "PretrainConfig.compile")
    total, seen = 0.0, 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not config.progress)
    for images, labels in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if config.augment:
            images, labels = augment_batch(images, labels, aug_gen, config.gamma_range, config.contrast_range,
                                           config.max_shift)
        with autocast(dtype, device):
            logits = forward(images)
            loss = F.cross_entropy(logits, labels)
            if config.loss == "ce+dice":
                loss = loss + config.dice_weight * soft_dice_loss(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        average_gradients(model.parameters())  # torchrun: every process steps with the global batch's mean
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    bar.close()
    return total / max(seen, 1)


__all__ = ["LOSSES", "PretrainConfig", "PretrainResult", "SegTorchDataset", "augment_batch", "evaluate_segmentation",
           "last_checkpoint_path", "pretrain_segmentation", "soft_dice_loss"]
