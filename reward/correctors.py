"""Correctors: turn a predicted label map into a nearby plausible one (docs/method.md, loop step 1).

Two stages, as in RL4Seg:

1. :func:`morphological_correction` - keep the largest 8-connected component of each structure, fill
   holes inside each structure, then fill background enclosed between structures.
2. :class:`ShapeAutoEncoder` - a small convolutional *denoising* auto-encoder over one-hot label maps,
   trained on **source-domain** label maps (:func:`train_shape_autoencoder`) to map corrupted masks back to
   clean ones; its ``project`` snaps a mask onto the anatomy it learned.

:class:`Corrector` chains them (the auto-encoder is optional: ``ae=None`` is the "without shape
auto-encoder" ablation) and gives the comparison score Dice(prediction, corrected) that decides, with the
anatomy checks, whether a prediction becomes a pseudo-label.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from reward.anatomy import holes, largest_component
from rl4seg_env.io import atomic_torch_save, read_checkpoint
from rl4seg_env.metrics import dice_per_class

#: the corrections :class:`Corrector` makes: every map projected (the paper's) or only those left invalid
CORRECTIONS = ("full", "minimal")
_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndimage.generate_binary_structure(2, 1)


# ------------------------------------------------------------------------------ morphological correction
def _correct_one(label_map: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    out = label_map.copy()
    # 1. largest 8-connected component per structure; the rest becomes background
    for c in labels:
        mask = out == c
        if mask.any():
            out[mask & ~largest_component(mask)] = 0
    # 2. holes inside each structure (8-connected background of its complement, off the border) take its
    #    label; only background pixels are filled, so a structure enclosed by another is not erased
    for c in labels:
        mask = out == c
        if mask.any():
            out[holes(mask) & (out == 0)] = c
    # 3. background enclosed by the union of structures (4-connected, the stricter rule of the gap criterion):
    #    each enclosed region takes the first label in ``labels`` that touches it (LV before MYO by default)
    union = np.isin(out, labels)
    gaps, n = ndimage.label(holes(union, _FOUR) & (out == 0), structure=_FOUR)
    if n:
        todo = np.ones(n + 1, dtype=bool)
        todo[0] = False
        for c in labels:
            touching = np.unique(gaps[ndimage.binary_dilation(out == c, structure=_EIGHT)])
            hit = np.zeros(n + 1, dtype=bool)
            hit[touching] = True
            hit &= todo
            out[hit[gaps]] = c
            todo &= ~hit
    return out


def morphological_correction(label_map: np.ndarray, n_classes: int = 3,
                             gap_priority: Sequence[int] | None = None) -> np.ndarray:
    """Largest component per structure, holes filled inside and between structures.

    Rules, per (H, W) map:

    1. each foreground structure keeps only its largest 8-connected component (other pieces -> background);
    2. background pixels in the holes of a structure (complement regions, 8-connected, not touching the
       image border) take that structure's label;
    3. background regions enclosed by the union of all structures (4-connected background, so gaps that
       leak only diagonally are closed too) take the label of the first structure in ``gap_priority`` that
       touches them (8-neighbourhood): with the default order an LV-MYO gap becomes LV, a gap touching only
       MYO becomes MYO.

    :param label_map: (H, W) or (B, H, W) integer label map (numpy; torch tensors are moved to CPU).
    :param n_classes: number of classes including background (default 3: background, LV, MYO).
    :param gap_priority: label order for rule 3; default ``(1, ..., n_classes - 1)``.
    :return: corrected map, same shape and dtype as the input (numpy).
    """
    if hasattr(label_map, "detach"):
        label_map = label_map.detach().cpu().numpy()
    label_map = np.asarray(label_map)
    if label_map.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (B, H, W) label map, found an array of shape {label_map.shape}")
    labels = tuple(range(1, n_classes)) if gap_priority is None else tuple(gap_priority)
    if label_map.ndim == 2:
        return _correct_one(label_map, labels)
    return np.stack([_correct_one(m, labels) for m in label_map]) if len(label_map) else label_map.copy()


# ----------------------------------------------------------------------------------- shape auto-encoder
def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


class ShapeAutoEncoder(nn.Module):
    """Convolutional auto-encoder over one-hot label maps, used to project a mask onto plausible anatomy.

    Fully convolutional: each encoder level halves H and W, so any input whose H and W are divisible by
    :attr:`divisor` (``2 ** len(channels)``) works; the bottleneck is a ``latent_channels`` x H/divisor x
    W/divisor map (256 numbers for a 32 x 32 input with the defaults), small enough that the decoder must
    rebuild a mask from its coarse shape rather than copy pixels.

    :param n_classes: classes of the label maps, background included (default 3).
    :param channels: feature widths of the encoder levels, shallow to deep (default (16, 32, 64)); the decoder
        mirrors them.
    :param latent_channels: channels of the bottleneck map (default 16). Smaller = stronger projection but
        lower fidelity on masks that are already plausible; Dice(clean, corrected) must exceed the pseudo-label
        threshold (0.95) for valid predictions to be accepted (see docs/anatomy.md for measured values).
    """

    def __init__(self, n_classes: int = 3, channels: Sequence[int] = (16, 32, 64), latent_channels: int = 16):
        super().__init__()
        if n_classes < 2 or not channels or latent_channels < 1:
            raise ValueError(f"ShapeAutoEncoder needs n_classes >= 2, a non-empty channels list and "
                             f"latent_channels >= 1; got n_classes={n_classes}, channels={list(channels)}, "
                             f"latent_channels={latent_channels}")
        self.n_classes, self.channels, self.latent_channels = int(n_classes), tuple(int(c) for c in channels), \
            int(latent_channels)
        enc: list[nn.Module] = []
        c_prev = self.n_classes
        for c in self.channels:
            enc += [_block(c_prev, c, stride=2), _block(c, c, stride=1)]
            c_prev = c
        enc.append(nn.Conv2d(c_prev, self.latent_channels, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [_block(self.latent_channels, c_prev, stride=1)]
        for c in reversed((self.channels[0],) + self.channels[:-1]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _block(c_prev, c, stride=1), _block(c, c, stride=1)]
            c_prev = c
        dec.append(nn.Conv2d(c_prev, self.n_classes, 1))
        self.decoder = nn.Sequential(*dec)

    @property
    def divisor(self) -> int:
        """H and W must be multiples of this (``2 ** len(channels)``)."""
        return 2 ** len(self.channels)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Constructor arguments (stored in checkpoints)."""
        return {"n_classes": self.n_classes, "channels": list(self.channels), "latent_channels": self.latent_channels}

    def one_hot(self, label_maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer labels -> (B, n_classes, H, W) float one-hot."""
        if label_maps.ndim != 3:
            raise ValueError(f"expected (B, H, W) label maps, found shape {tuple(label_maps.shape)}")
        h, w = label_maps.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"label map size {h}x{w} is not divisible by the auto-encoder's divisor {self.divisor}")
        if label_maps.numel() and (int(label_maps.min()) < 0 or int(label_maps.max()) >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes - 1}], found "
                             f"[{int(label_maps.min())}, {int(label_maps.max())}]")
        return F.one_hot(label_maps.long(), self.n_classes).permute(0, 3, 1, 2).float()

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        """(B, n_classes, H, W) one-hot (or probabilities) -> (B, n_classes, H, W) logits."""
        return self.decoder(self.encoder(one_hot))

    @torch.no_grad()
    def project(self, label_maps: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray | torch.Tensor:
        """Project masks onto learned anatomy: argmax of the decoder output, in eval mode, without gradients.

        :param label_maps: (B, H, W) integer labels (numpy or torch, any device).
        :param batch_size: maps per forward pass (bounds memory).
        :return: (B, H, W) labels, numpy with the input's dtype for numpy input, else an int64 tensor on the
            input's device.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        as_numpy = not torch.is_tensor(label_maps)
        src = torch.as_tensor(np.asarray(label_maps) if as_numpy else label_maps)
        out = [self(self.one_hot(chunk.to(device))).argmax(1) for chunk in src.split(batch_size)] if len(src) \
            else [torch.zeros_like(src, dtype=torch.long, device=device)]
        self.train(was_training)
        result = torch.cat(out)
        if as_numpy:
            return result.cpu().numpy().astype(np.asarray(label_maps).dtype)
        return result.to(src.device)

    def save(self, path: str | os.PathLike, **metadata: Any) -> Path:
        """Write ``{"kwargs", "state_dict", "metadata"}`` atomically (a crash never leaves half a file)."""
        return atomic_torch_save({"kwargs": self.kwargs, "state_dict": self.state_dict(), "metadata": metadata},
                                 path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ShapeAutoEncoder:
        """Rebuild a saved auto-encoder (``torch.load(weights_only=True)``), in eval mode."""
        ckpt = read_checkpoint(path, "ShapeAutoEncoder", ("kwargs", "state_dict"), map_location)
        model = cls(**ckpt["kwargs"])
        model.load_state_dict(ckpt["state_dict"])
        return model.to(map_location).eval()


# ------------------------------------------------------------------------------------------ corruption
def _disks(shape: tuple[int, int, int], centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: a disk per map, centres (B, 2) in pixels, radii (B,) in pixels."""
    b, h, w = shape
    rows = torch.arange(h, device=centres.device).view(1, h, 1).float()
    cols = torch.arange(w, device=centres.device).view(1, 1, w).float()
    d2 = (rows - centres[:, 0].view(b, 1, 1)) ** 2 + (cols - centres[:, 1].view(b, 1, 1)) ** 2
    return d2 <= radii.view(b, 1, 1).float() ** 2


def corrupt_label_maps(label_maps: torch.Tensor, n_classes: int, generator: torch.Generator | None = None,
                       p: float = 0.5, max_radius: float = 0.12) -> torch.Tensor:
    """Random anatomical damage, batched: what a segmentation network gets wrong.

    Each map independently receives, each with probability ``p``: a hole (a disk inside the foreground set
    to background), a stray blob (a disk of a random foreground label anywhere), an erosion or dilation
    (3x3, 1-2 steps) of one random structure, and a cut-out (a rectangle set to background).

    :param label_maps: (B, H, W) integer labels (torch, any device); not modified.
    :param n_classes: classes including background.
    :param generator: torch random generator on the labels' device (None: global RNG).
    :param p: probability of each corruption type (default 0.5).
    :param max_radius: largest disk radius / rectangle half-side, as a fraction of min(H, W) (default 0.12).
    :return: corrupted (B, H, W) int64 labels.
    """
    x = label_maps.long().clone()
    b, h, w = x.shape
    dev = x.device
    if b == 0:
        return x

    def rand(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=generator, device=dev)

    r_max = max(1.0, max_radius * min(h, w))
    size = torch.tensor([h, w], device=dev).float()
    # hole: a disk centred on a random foreground pixel
    fg = (x > 0).view(b, -1).float()
    centre_idx = torch.multinomial(fg + 1e-6, 1, generator=generator).squeeze(1)
    centres = torch.stack([centre_idx // w, centre_idx % w], 1).float()
    hole = _disks(x.shape, centres, 1 + rand(b) * (r_max - 1)) & (rand(b) < p).view(b, 1, 1)
    x[hole] = 0
    # stray blob of a random foreground label
    blob = _disks(x.shape, rand(b, 2) * size, 1 + rand(b) * (r_max - 1)) & (rand(b) < p).view(b, 1, 1)
    blob_label = 1 + (rand(b) * (n_classes - 1)).long().clamp(max=n_classes - 2)
    x = torch.where(blob, blob_label.view(b, 1, 1), x)
    # erosion / dilation of one structure (3x3 max-pooling of its mask)
    cls = (1 + (rand(b) * (n_classes - 1)).long().clamp(max=n_classes - 2)).view(b, 1, 1)
    mask = (x == cls).float().unsqueeze(1)
    steps = 1 + (rand(b) < 0.5).long()
    dilated, eroded = mask, mask
    for k in range(2):
        grow = F.max_pool2d(dilated, 3, 1, 1)
        shrink = -F.max_pool2d(-eroded, 3, 1, 1)
        use = (steps > k).view(b, 1, 1, 1)
        dilated, eroded = torch.where(use, grow, dilated), torch.where(use, shrink, eroded)
    morph = (rand(b) < p).view(b, 1, 1)
    dilate = (rand(b) < 0.5).view(b, 1, 1)
    x = torch.where(morph & dilate & (dilated[:, 0] > 0), cls, x)
    x = torch.where(morph & ~dilate & (mask[:, 0] > 0) & (eroded[:, 0] == 0), torch.zeros_like(x), x)
    # cut-out rectangle
    half = (1 + rand(b, 2) * (r_max - 1)).view(b, 2, 1)
    centre = (rand(b, 2) * size).view(b, 2, 1)
    rows = torch.arange(h, device=dev).view(1, h).float()
    cols = torch.arange(w, device=dev).view(1, w).float()
    in_r = (rows - centre[:, 0]).abs() <= half[:, 0]
    in_c = (cols - centre[:, 1]).abs() <= half[:, 1]
    cut = in_r.unsqueeze(2) & in_c.unsqueeze(1) & (rand(b) < p).view(b, 1, 1)
    x[cut] = 0
    return x


#: ranges of :func:`random_affine_labels` when the auto-encoder trains with ``augment``: isotropic scale (log-uniform),
#: rotation in degrees and shift as a fraction of the image side. A heart's size, tilt and position vary with the
#: probe's depth and sector and with the patient (e.g. ``target_speckle``'s shallower sector draws larger hearts);
#: a shape prior trained on the source's alone projects every other one back towards them.
AUGMENT_SCALE = (0.8, 1.25)
AUGMENT_ROTATION_DEG = 15.0
AUGMENT_SHIFT = 0.08


def similarity_theta(angle: torch.Tensor, zoom: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor,
                     size: tuple[int, int]) -> torch.Tensor:
    """(B, 2, 3) ``theta`` of :func:`torch.nn.functional.affine_grid` for a similarity transform in *pixel* units.

    :param angle: (B,) rotation in radians (counter-clockwise in (x, y) = (column, row) coordinates).
    :param zoom: (B,) isotropic zoom (> 1 enlarges the content).
    :param shift_x: (B,) translation of the sampling grid along x, in normalised coordinates (the image spans 2).
    :param shift_y: (B,) the same along y.
    :param size: (H, W) of the images; the rotation is conjugated by the per-axis scaling of normalised coordinates,
        so a non-square image rotates without shear.
    """
    h, w = size
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # output -> input sampling: the inverse zoom
    return torch.stack([torch.stack([cos, -sin * h / w, shift_x], 1), torch.stack([sin * w / h, cos, shift_y], 1)], 1)


def random_affine_labels(label_maps: torch.Tensor, generator: torch.Generator | None = None,
                         scale: tuple[float, float] = AUGMENT_SCALE, rotation_deg: float = AUGMENT_ROTATION_DEG,
                         shift: float = AUGMENT_SHIFT) -> torch.Tensor:
    """Each (H, W) label map moved by its own random similarity transform (nearest-neighbour resampling).

    :param label_maps: (B, H, W) integer labels (torch, any device); not modified.
    :param generator: torch random generator on the labels' device (None: global RNG).
    :param scale: (low, high) isotropic zoom, drawn log-uniformly (> 1 enlarges the structures).
    :param rotation_deg: largest rotation in degrees, either way.
    :param shift: largest translation along each axis, as a fraction of the image side.
    :return: (B, H, W) int64 labels; pixels that come from outside the map are background.
    """
    low, high = float(scale[0]), float(scale[1])
    if not 0 < low <= high:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    b, h, w = label_maps.shape
    if b == 0:
        return label_maps.long().clone()
    dev = label_maps.device

    def uniform(a: float, b_: float) -> torch.Tensor:
        return a + (b_ - a) * torch.rand(b, generator=generator, device=dev)

    zoom = torch.exp(uniform(math.log(low), math.log(high)))
    angle = uniform(-1.0, 1.0) * math.radians(rotation_deg)
    tx, ty = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)  # normalised coordinates span 2
    grid = F.affine_grid(similarity_theta(angle, zoom, tx, ty, (h, w)), [b, 1, h, w], align_corners=False)
    moved = F.grid_sample(label_maps[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)
    return moved[:, 0].round().long()


def _source_labels(source: Any) -> np.ndarray:
    """(N, H, W) label maps from an array, a sequence of (H, W) arrays, or a labelled SegDataset."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        arr = source.detach().cpu().numpy() if torch.is_tensor(source) else source
    else:
        maps = []
        for i in range(len(source)):
            item = source[i]
            label = getattr(item, "label", item)
            if label is None:
                raise ValueError(f"source item {i} ({getattr(item, 'id', '?')}) has no label map; the shape "
                                 f"auto-encoder trains on labelled source data (with_labels=True)")
            maps.append(np.asarray(label))
        arr = np.stack(maps) if maps else np.zeros((0, 0, 0), np.uint8)
    arr = np.asarray(arr)
    if arr.ndim != 3 or len(arr) == 0:
        raise ValueError(f"expected source label maps (N, H, W) with N >= 1, found shape {arr.shape}")
    return arr


@dataclass
class ShapeAEConfig:
    """Hyper-parameters of :func:`train_shape_autoencoder` (the shape auto-encoder corrector)."""

    #: passes over the source label maps
    epochs: int = 15
    batch_size: int = 32
    #: Adam learning rate
    lr: float = 1e-3
    #: probability that a training map is damaged by :func:`corrupt_label_maps` (denoising objective)
    corruption_p: float = 0.5
    #: also move each training map by a random scale, rotation and shift (:func:`random_affine_labels`), so that
    #: hearts larger, smaller or more tilted than the source's keep their shape when projected
    augment: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ShapeAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"ShapeAEConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.corruption_p <= 1:
            raise ValueError(f"ShapeAEConfig.corruption_p must be in [0, 1], got {self.corruption_p}")


def train_shape_autoencoder(source: Any, epochs: int = 15, batch_size: int = 32, lr: float = 1e-3,
                            device: str | torch.device = "cpu", progress: bool = True,
                            augment_with_corruption: bool = True, n_classes: int | None = None, seed: int = 0,
                            corruption_p: float = 0.5, augment: bool = False, **model_kwargs: Any
                            ) -> ShapeAutoEncoder:
    """Train a denoising :class:`ShapeAutoEncoder` on source-domain label maps.

    Input = a source label map damaged by :func:`corrupt_label_maps` (fresh damage every epoch); target =
    the clean map; loss = per-pixel cross-entropy. So the model learns to return masks to the source
    anatomy. Without corruption it is a plain auto-encoder.

    :param source: (N, H, W) integer label maps (numpy or torch), a sequence of (H, W) maps, or a dataset
        whose items have a ``label`` (e.g. a :class:`~rl4seg_env.data.base.SegDataset` with labels).
    :param epochs: passes over the source maps (default 15).
    :param batch_size: maps per step (default 32).
    :param lr: Adam learning rate (default 1e-3).
    :param device: torch device to train on (default ``"cpu"``).
    :param progress: show a tqdm progress bar (default True).
    :param augment_with_corruption: train as a denoising auto-encoder (default True).
    :param n_classes: classes including background; default: ``source.n_classes`` if present, else max label + 1.
    :param seed: seed of the weights, batch order and corruptions (default 0).
    :param corruption_p: probability of each corruption type (default 0.5).
    :param augment: move each clean map by :func:`random_affine_labels` first (fresh every epoch; default False).
    :param model_kwargs: forwarded to :class:`ShapeAutoEncoder` (``channels``, ``latent_channels``).
    :return: the trained model, in eval mode, on ``device``.
    """
    labels = _source_labels(source)
    if n_classes is None:
        n_classes = int(getattr(source, "n_classes", 0)) or int(labels.max()) + 1
    torch.manual_seed(seed)
    model = ShapeAutoEncoder(n_classes=max(int(n_classes), 2), **model_kwargs).to(device)
    data = torch.as_tensor(labels.astype(np.int64)).to(device)
    model.one_hot(data[:1])  # validates size and label range before training
    gen = torch.Generator(device=data.device).manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n_batches = -(-len(data) // batch_size)
    bar = tqdm(total=epochs * n_batches, desc="shape auto-encoder", disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen, device=data.device)
        for start in range(0, len(data), batch_size):
            clean = data[order[start:start + batch_size]]
            if augment:
                clean = random_affine_labels(clean, gen)
            noisy = corrupt_label_maps(clean, model.n_classes, gen, p=corruption_p) if augment_with_corruption \
                else clean
            loss = F.cross_entropy(model(model.one_hot(noisy)), clean)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return model.eval()


# ---------------------------------------------------------------------------------------- the corrector
class Corrector:
    """Morphological correction followed (optionally) by the shape auto-encoder's projection.

    :param ae: a trained :class:`ShapeAutoEncoder`, or None for morphological correction only (the
        "without shape auto-encoder" ablation). Default None.
    :param n_classes: classes including background (default 3); must match ``ae.n_classes`` when given.
    :param batch_size: maps per auto-encoder forward pass (default 64).
    :param validity_fn: ``(label_maps (B, H, W)) -> bool (B,)``. Given, the correction is *minimal*: the
        auto-encoder projects only the maps that the morphological correction leaves anatomically invalid, and a
        map made valid by it is kept as it is. None (the default, the paper's corrector): every map is projected.
        The projection rebuilds a mask from its coarse shape, so on a map that is already plausible it moves
        boundaries the prediction had right (``docs/experiments.md``, "Stop 37").
    """

    def __init__(self, ae: ShapeAutoEncoder | None = None, n_classes: int = 3, batch_size: int = 64,
                 validity_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        if ae is not None and ae.n_classes != n_classes:
            raise ValueError(f"Corrector(n_classes={n_classes}) but the shape auto-encoder has "
                             f"n_classes={ae.n_classes}")
        self.ae, self.n_classes, self.batch_size = ae, n_classes, batch_size
        self.validity_fn = validity_fn

    def correct(self, label_maps: np.ndarray) -> np.ndarray:
        """(B, H, W) integer predictions -> (B, H, W) corrected maps (numpy, the input's dtype)."""
        if hasattr(label_maps, "detach"):
            label_maps = label_maps.detach().cpu().numpy()
        label_maps = np.asarray(label_maps)
        if label_maps.ndim != 3:
            raise ValueError(f"expected (B, H, W) label maps, found shape {label_maps.shape}")
        out = morphological_correction(label_maps, self.n_classes)
        if self.ae is None or not len(out):
            return out
        if self.validity_fn is None:
            return self.ae.project(out, batch_size=self.batch_size)
        invalid = ~np.asarray(self.validity_fn(out), dtype=bool)
        if invalid.any():
            out[invalid] = self.ae.project(out[invalid], batch_size=self.batch_size)
        return out

    def comparison_dice(self, pred: np.ndarray, corrected: np.ndarray) -> np.ndarray:
        """Mean foreground Dice of each prediction with its corrected version: (B, H, W) x 2 -> (B,) float64.

        A structure absent from both maps counts as Dice 1.
        """
        if hasattr(pred, "detach"):
            pred = pred.detach().cpu().numpy()
        if hasattr(corrected, "detach"):
            corrected = corrected.detach().cpu().numpy()
        pred, corrected = np.asarray(pred), np.asarray(corrected)
        if pred.shape != corrected.shape or pred.ndim != 3:
            raise ValueError(f"expected two (B, H, W) batches of the same shape, found {pred.shape} and "
                             f"{corrected.shape}")
        return dice_per_class(pred, corrected, self.n_classes).mean(axis=1)


__all__ = ["CORRECTIONS", "Corrector", "ShapeAutoEncoder", "corrupt_label_maps", "morphological_correction",
           "train_shape_autoencoder"]
