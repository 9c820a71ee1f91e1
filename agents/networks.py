"""U-Net used by the actor, the critic, the reward network and the shape auto-encoder.

Sizes are arguments; nothing depends on the image size except that H and W must be divisible by
``2 ** (len(channels) - 1)`` (checked with a clear error).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rl4seg_env.io import atomic_torch_save, read_checkpoint


#: normalisation layers a :class:`UNet` can use (None: no normalisation)
NORMS = ("batch", "instance", "group", None)


@dataclass
class UNetConfig:
    """Size of the U-Nets of a run (actor, critic and reward network share it).

    Images must have H and W divisible by :attr:`divisor` (``2 ** (len(channels) - 1)``).
    """

    #: feature widths per level, shallow to deep (depth = number of levels, at least 2)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    #: "batch", "instance", "group" or null
    norm: str | None = "batch"

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"UNetConfig.channels must list at least 2 positive widths, got {list(self.channels)}")
        if self.norm not in NORMS:
            raise ValueError(f"UNetConfig.norm must be one of batch, instance, group or null, got {self.norm!r}")

    @property
    def divisor(self) -> int:
        """Image sides must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.channels) - 1)


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'instance', 'group' or None")


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and ReLU (optional dropout at the end)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str | None, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm in (None, "none")),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm in (None, "none")),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """2D U-Net.

    :param in_channels: input channels (1 for an image; image + one-hot segmentation for the reward net).
    :param out_channels: output channels (classes for the actor, 1 for critic / reward net).
    :param channels: feature widths per level, shallow to deep; depth = ``len(channels)``.
        Default ``(16, 32, 64, 128)`` suits 64-128 px on a CPU; the paper scale uses wider nets.
    :param norm: ``"batch"`` (default), ``"instance"``, ``"group"`` or ``None``.
    :param dropout: dropout probability inside each block (enables MC-dropout uncertainty).
    :param output_activation: ``None`` (logits, default) or ``"sigmoid"``.

    Input (B, in_channels, H, W) float32 -> output (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 3, channels: Sequence[int] = (16, 32, 64, 128),
                 norm: str | None = "batch", dropout: float = 0.0, output_activation: str | None = None) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"UNet needs at least 2 levels, got channels={channels}")
        self.in_channels, self.out_channels, self.channels = in_channels, out_channels, channels
        self.encoders = nn.ModuleList()
        prev = in_channels
        for c in channels:
            self.encoders.append(ConvBlock(prev, c, norm, dropout))
            prev = c
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.ups.append(nn.ConvTranspose2d(prev, c, 2, stride=2))
            self.decoders.append(ConvBlock(2 * c, c, norm, dropout))
            prev = c
        self.head = nn.Conv2d(prev, out_channels, 1)
        if output_activation not in (None, "sigmoid"):
            raise ValueError(f"output_activation must be None or 'sigmoid', got {output_activation!r}")
        self.output_activation = output_activation

    @property
    def divisor(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"UNet with {len(self.channels)} levels needs H and W divisible by {self.divisor}, "
                             f"got {h}x{w}")
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        x = self.head(x)
        return torch.sigmoid(x) if self.output_activation == "sigmoid" else x


def save_unet(model: UNet, path: str, **metadata: object) -> None:
    """Save a U-Net with its constructor arguments (atomic write).

    ``metadata`` (e.g. ``class_names``, ``image_size``) must be plain Python values so that the file
    loads with ``torch.load(..., weights_only=True)``.
    """
    atomic_torch_save({"state_dict": model.state_dict(), "unet_kwargs": unet_kwargs(model),
                       "metadata": dict(metadata)}, path)


def unet_kwargs(model: UNet) -> dict:
    """Constructor arguments that rebuild ``model``."""
    norm = None
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            norm = "batch"
        elif isinstance(m, nn.InstanceNorm2d):
            norm = "instance"
        elif isinstance(m, nn.GroupNorm):
            norm = "group"
        if norm:
            break
    dropout = next((m.p for m in model.modules() if isinstance(m, nn.Dropout2d)), 0.0)
    return {"in_channels": model.in_channels, "out_channels": model.out_channels, "channels": list(model.channels),
            "norm": norm, "dropout": dropout, "output_activation": model.output_activation}


def load_unet(path: str, map_location: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Inverse of :func:`save_unet`: returns ``(model, metadata)``. Clear error for a missing/corrupt file."""
    ckpt = read_checkpoint(path, "U-Net (save_unet)", ("state_dict", "unet_kwargs"), map_location)
    model = UNet(**ckpt["unet_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location), dict(ckpt.get("metadata", {}))


@torch.no_grad()
def reestimate_norm_statistics(model: nn.Module, images: torch.Tensor, batch_size: int = 32,
                               progress: bool = False) -> int:
    """Recompute the running statistics of every ``BatchNorm`` layer of ``model`` from ``images``, in place.

    Statistics are reset, then accumulated as a plain average of per-batch statistics (momentum None)
    over forward passes in which only the batch-norm layers run in training mode (dropout stays off, no
    gradient, weights untouched); momenta and the model's train/eval modes are restored. Used after the
    weights change (shrink-and-perturb), to target-normalise the actor, and by AdaBN. Returns the number
    of batch-norm layers updated.

    :param images: (N, C, H, W) float32 on the model's device.
    :param progress: show a tqdm bar over the batches.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the passes below
        m.train()
    starts = range(0, len(images), batch_size)
    if progress:
        starts = tqdm(starts, desc="batch-norm statistics", unit="batch", leave=False)
    try:
        for start in starts:
            model(images[start:start + batch_size])
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return len(norms)


# --------------------------------------------------------------------------------------------------
# batched eval-mode inference: the one implementation every predictor, evaluator and baseline uses
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block; its previous train/eval mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def image_batches(images: np.ndarray | torch.Tensor, batch_size: int, device: str | torch.device,
                  generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """(B, 1, H, W) float32 tensors on ``device`` from images (N, H, W); shuffled when a generator is given.

    :raises ValueError: ``batch_size < 1`` or images that are not (N, H, W).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {tuple(images.shape)}")
    order = (torch.randperm(len(images), generator=generator).numpy() if generator is not None
             else np.arange(len(images)))
    for start in range(0, len(images), batch_size):
        index = order[start:start + batch_size]
        yield torch.as_tensor(images[index], dtype=torch.float32).to(device)[:, None]


@torch.no_grad()
def predict(actor: nn.Module, images: np.ndarray, batch_size: int = 32, device: str | torch.device = "cpu",
            return_probs: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Argmax label maps (N, H, W) uint8 of ``actor`` (eval mode, restored after) on images (N, H, W) in [0, 1].

    With ``return_probs`` also returns the softmax probabilities (N, C, H, W) float32.
    """
    preds, probs = [], []
    with eval_mode(actor):
        for x in image_batches(images, batch_size, device):
            logits = actor(x)
            preds.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
            if return_probs:
                probs.append(torch.softmax(logits, 1).cpu().numpy())
    if not preds:
        size = tuple(images.shape[1:])
        preds = [np.zeros((0, *size), np.uint8)]
        probs = [np.zeros((0, int(getattr(actor, "out_channels", 1)), *size), np.float32)]
    out = np.concatenate(preds)
    return (out, np.concatenate(probs)) if return_probs else out


#: values of the ``mixed_precision`` settings
MIXED_PRECISION = ("off", "auto", "bf16", "fp16")


def check_speed_settings(mixed_precision: str, compile: bool | str | None, owner: str = "") -> None:
    """Check the training-speed settings of a config or model (``owner``, e.g. ``"PretrainConfig."``, prefixes
    the key in the message): ``mixed_precision`` one of :data:`MIXED_PRECISION`, ``compile`` as
    :func:`compile_backend` accepts it.

    :raises ValueError: naming the key and the accepted values.
    """
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"{owner}mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    compile_backend(compile, f"{owner}compile")


def autocast_dtype(mode: str, device: str | torch.device) -> torch.dtype | None:
    """The reduced precision training runs in: ``None`` for ``"off"``; ``"auto"``: bfloat16 on a CUDA device
    that supports it, float16 on one that does not, ``None`` elsewhere; ``"bf16"`` / ``"fp16"`` as named.

    :raises ValueError: an unknown mode, or ``"fp16"`` off CUDA (CPU autocast is bfloat16 only here).
    """
    if mode not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mode!r}")
    kind = torch.device(device).type
    if mode == "off" or (mode == "auto" and kind != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and kind != "cuda":
        raise ValueError(f"mixed_precision 'fp16' needs a CUDA device, the run's is {kind!r} (use bf16 or off)")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def autocast(dtype: torch.dtype | None, device: str | torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type (a no-op context for ``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: str | torch.device) -> torch.amp.GradScaler:
    """A loss scaler, active for float16 only (bfloat16 has float32's range and needs none)."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind if kind == "cuda" else "cpu", enabled=dtype == torch.float16)


def use_channels_last(setting: bool | None, device: str | torch.device) -> bool:
    """Whether the ``channels_last`` setting applies on ``device``: ``None`` (auto) on CUDA, where it made every
    training step 1.6-1.9x faster in float32 and 2.6-3.3x with reduced precision, and on CPUs, where it made every
    float32 step 1.14-1.35x faster and the default run 1.20x (docs/scaling.md); off elsewhere (MPS: not measured)."""
    return torch.device(device).type in ("cuda", "cpu") if setting is None else bool(setting)


def to_memory_format(model: nn.Module, channels_last: bool | None, device: str | torch.device) -> nn.Module:
    """``model`` with its 4-D weights in the channels_last memory format when the ``channels_last`` setting applies
    on ``device`` (:func:`use_channels_last`; in place: the values, the state dict and the outputs' values do not
    change, only the strides), unchanged otherwise."""
    return model.to(memory_format=torch.channels_last) if use_channels_last(channels_last, device) else model


def compiled(model: nn.Module, setting: bool | str | None, what: str = "compile") -> nn.Module:
    """What a training step calls in place of ``model``: ``torch.compile(model)`` when ``setting`` is true (a
    string: that ``torch.compile`` backend, e.g. ``"eager"`` to check a graph without a C++ compiler), ``model``
    itself when it is false or ``None``. The compiled wrapper shares ``model``'s parameters and buffers: the
    optimiser, the state dict, checkpoints and copies stay ``model``'s, and evaluation calls ``model``.

    Compilation costs tens of seconds per network and process (32 s for the paper's U-Net on an H200, for
    1.57x per float32 step; docs/scaling.md); the first steps of each new input shape pay it.

    :raises ValueError: ``setting`` is neither a bool, ``None`` nor a backend name (``what`` names the key).
    """
    backend = compile_backend(setting, what)
    return model if backend is None else torch.compile(model, backend=backend)


def compile_backend(setting: bool | str | None, what: str = "compile") -> str | None:
    """The ``torch.compile`` backend a ``compile`` setting asks for: ``None`` (off) for false / ``None``,
    ``"inductor"`` (torch's default) for true, the name itself for a backend name.

    :raises ValueError: anything else, or an unknown backend (the message names ``what`` and the backends).
    """
    if setting is None or setting is False:
        return None
    if setting is True:
        return "inductor"
    known = torch.compiler.list_backends(exclude_tags=())
    if isinstance(setting, str) and setting in known:
        return setting
    raise ValueError(f"{what} must be true, false or a torch.compile backend (e.g. "
                     f"{', '.join(torch.compiler.list_backends())}), got {setting!r}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device to run on: ``"auto"`` is CUDA when available, else the CPU; an explicitly requested
    accelerator that is not there is an error (never a silent fall back to the CPU).

    :raises ValueError: e.g. ``device="cuda"`` on a machine without CUDA, or an unknown device name.
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: unknown device {device!r} (cpu, cuda, cuda:N, mps or auto)") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but CUDA is not available on this machine "
                             "(use device=cpu or device=auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} requested but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device: {device!r} requested but MPS is not available on this machine")
    return resolved

