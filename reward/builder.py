"""Reward-dataset builder (docs/method.md, iteration step 1).

For each new target image the current actor predicts a label map; the prediction is corrected and
checked, and gives reward-network training samples ``(image, pred, reference)`` whose per-pixel
target is ``pred == reference``:

- ``valid`` (passes every anatomical criterion and Dice(pred, corrected) > threshold): the prediction
  becomes a **pseudo-label** (reference = pred, target all ones) and negatives are made around it:
  predictions of the actor with Gaussian noise on all weights (``weight_noise``), predictions on
  contrast-reduced (``contrast``) and noisy (``image_noise``) images, and a sampled prediction of
  another image of the batch (``swap``), and, when ``anatomical`` > 0, copies of the pseudo-label damaged
  where the anatomical checks look (kind ``anatomical``: the myocardium broken or thinned, the LV grown
  into or shrunk away from the myocardium, in one patch; RL4Seg3D's stronger perturbations; see
  :func:`anatomical_negative`), and, when ``artifact`` > 0, the actor's predictions on copies of the image
  corrupted by a random generic artefact (bright blobs, a dark band or a smooth bias field,
  :func:`random_artefact`), each kept with its *corrupted* image (kind ``artifact``). Empty predictions are
  skipped.
- otherwise, if the corrected map is valid: reference = corrected map, pred = the sampled action
  (kind ``corrected``);
- otherwise the image gives no sample.

With ``source`` (:class:`SourceSampleConfig`, ``images`` > 0) and a labelled source dataset, each iteration also
predicts on that many *labelled source* images, intensity-augmented (gamma, contrast, noise) or restyled after the
iteration's target images (``style: fourier``, :func:`fourier_style`), and adds the actor's
argmax and one sampled prediction with the true label as reference (kind ``source``): real errors of the current
actor, which the target samples (references made from the actor's own predictions) cannot show. No target label is
read.

Samples are written to disk as compressed ``.npz`` shards, one folder per iteration, and accumulate
across iterations (:class:`RewardSampleStore`). Writes are atomic and an iteration is committed by a
``done.json`` marker written last, so a rerun of an interrupted iteration replaces its partial shards
instead of duplicating them.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agents.distributed import broadcast_object, context, gather_objects
from agents.pretrain import augment_intensity
from rl4seg_env.io import atomic_save_npz, atomic_write_text

#: sample kinds, in the order they are reported
SAMPLE_KINDS = ("pseudo_label", "weight_noise", "contrast", "image_noise", "swap", "anatomical", "artifact",
                "corrected", "source")
#: the damages :func:`anatomical_negative` draws from
ANATOMICAL_DAMAGES = ("break", "thin", "lv_grow", "lv_shrink")
#: boundary moves of the ``boundaries`` source samples: each boundary (epicardium, endocardium) moved in and out
BOUNDARY_MOVES = ("thin", "thicken", "lv_grow", "lv_shrink")
#: what ``source`` samples are made of (:class:`SourceSampleConfig`)
SOURCE_KINDS = ("predictions", "boundaries")
#: how the source images of ``source`` samples are made to look different (:class:`SourceSampleConfig`)
SOURCE_STYLES = ("intensity", "fourier")
_LV, _MYO = 1, 2


@dataclasses.dataclass
class PerturbationConfig:
    """Strengths of the negatives made around accepted pseudo-labels (docs/method.md defaults).

    :param weight_noise: std of Gaussian noise added to every actor weight; one negative per value.
    :param contrast: contrast-reduction factors (``mean + f * (x - mean)``); one negative per value.
    :param image_noise: std of additive Gaussian image noise (intensities in [0, 1]); one negative each.
    :param swap: add the sampled prediction of another image of the batch as a negative.
    :param anatomical: copies of the pseudo-label damaged in one patch (:func:`anatomical_negative`), one random
        damage each; 0 (the paper's set) makes none.
    :param artifact: copies of the image corrupted by one random generic artefact each (:func:`random_artefact`);
        the sample is the corrupted image, the actor's prediction on it and the pseudo-label as reference, so the
        reward network sees what a corrupted region does to a prediction; 0 (the paper's set) makes none.
    """

    weight_noise: Sequence[float] = (0.005, 0.01, 0.015, 0.02)
    contrast: Sequence[float] = (0.7, 0.8)
    image_noise: Sequence[float] = (0.05, 0.1)
    swap: bool = True
    anatomical: int = 0
    artifact: int = 0

    def __post_init__(self) -> None:
        for name in ("weight_noise", "contrast", "image_noise"):
            values = list(getattr(self, name))
            if any(v < 0 for v in values):
                raise ValueError(f"PerturbationConfig.{name} must hold values >= 0, got {values}")
        for name in ("anatomical", "artifact"):
            if getattr(self, name) < 0:
                raise ValueError(f"PerturbationConfig.{name} must be >= 0, got {getattr(self, name)}")
        if any(not 0 <= f <= 1 for f in self.contrast):
            raise ValueError(f"PerturbationConfig.contrast factors must be in [0, 1], got {list(self.contrast)}")


@dataclasses.dataclass
class SourceSampleConfig:
    """Labelled source images added to every iteration's reward set (kind ``source``).

    :param images: source images per iteration (0: none, the paper's target-only set). Consecutive windows of the
        source training set, so the iterations go through it in turn.
    :param kinds: what each image gives, with its true label as reference: ``"predictions"`` (the actor's argmax
        and one sampled prediction: the actor's own errors, which on augmented source images have a direction,
        e.g. a myocardium too thick) and/or ``"boundaries"`` (two copies of the true label with one boundary moved
        by ``H / 32`` px in one patch, :data:`BOUNDARY_MOVES`: in and out equally often, so no direction is
        taught).
    :param style: how each source image is changed before the actor sees it: ``"intensity"`` (gamma and contrast
        drawn from the ranges below) or ``"fourier"`` (:func:`fourier_style`: the low-frequency amplitude spectrum
        of a random target image of the iteration, so the source image takes the target's overall brightness,
        gain and attenuation while keeping its anatomy; no target label is read). Gaussian noise follows either.
    :param fourier_band: half-width of the swapped low-frequency square, as a fraction of the image side
        (``"fourier"`` only; FDA's beta).
    :param gamma: range of the gamma applied to each image (log-uniform; ``"intensity"`` only).
    :param contrast: range of the contrast factor about the image mean (uniform; ``"intensity"`` only).
    :param noise: range of the std of additive Gaussian noise (uniform; intensities in [0, 1]).
    """

    images: int = 0
    kinds: Sequence[str] = ("predictions",)
    style: str = "intensity"
    fourier_band: float = 0.05
    gamma: Sequence[float] = (0.5, 2.0)
    contrast: Sequence[float] = (0.6, 1.3)
    noise: Sequence[float] = (0.0, 0.12)

    def __post_init__(self) -> None:
        if self.images < 0:
            raise ValueError(f"SourceSampleConfig.images must be >= 0, got {self.images}")
        if not self.kinds or any(k not in SOURCE_KINDS for k in self.kinds):
            raise ValueError(f"SourceSampleConfig.kinds must be a non-empty list of {', '.join(SOURCE_KINDS)}, "
                             f"got {list(self.kinds)}")
        if self.style not in SOURCE_STYLES:
            raise ValueError(f"SourceSampleConfig.style must be one of {', '.join(SOURCE_STYLES)}, got {self.style!r}")
        if not 0 < self.fourier_band <= 0.5:
            raise ValueError(f"SourceSampleConfig.fourier_band must be in (0, 0.5], got {self.fourier_band}")
        for name, low in (("gamma", 1e-6), ("contrast", 0.0), ("noise", 0.0)):
            values = list(getattr(self, name))
            if len(values) != 2 or values[0] > values[1] or values[0] < low:
                raise ValueError(f"SourceSampleConfig.{name} must be a [low, high] range with {low} <= low <= high, "
                                 f"got {values}")


def argmax_and_sample(logits: torch.Tensor, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The actor's argmax prediction and one label map sampled pixel by pixel from its softmax:
    (B, C, H, W) logits -> two (B, H, W) uint8 arrays."""
    probs = torch.softmax(logits, 1).permute(0, 2, 3, 1).cpu()
    sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen).reshape(probs.shape[:-1])
    return logits.argmax(1).cpu().numpy().astype(np.uint8), sampled.numpy().astype(np.uint8)


def fourier_style(images: torch.Tensor, styles: torch.Tensor, band: float, gen: torch.Generator) -> torch.Tensor:
    """Fourier domain adaptation (FDA; Yang and Soatto, CVPR 2020): each image of ``images`` (B, 1, H, W) keeps
    its phase spectrum and takes, inside the square of frequencies ``|k| <= band * min(H, W)`` (at least 1), the
    amplitude spectrum of one image of ``styles`` (M, 1, H, W) drawn at random; clipped to [0, 1].

    The low frequencies carry the mean intensity, gain, attenuation and haze, the phase the edges: the result
    looks like the style image's acquisition and has the source image's anatomy (and label).
    """
    if images.ndim != 4 or styles.ndim != 4 or images.shape[1:] != styles.shape[1:]:
        raise ValueError(f"fourier_style: images and styles must be (B, C, H, W) of one size, got "
                         f"{tuple(images.shape)} and {tuple(styles.shape)}")
    if len(styles) == 0:
        raise ValueError("fourier_style: no style images")
    h, w = images.shape[-2:]
    pick = torch.randint(len(styles), (len(images),), generator=gen)
    spectrum = torch.fft.fft2(images.float())
    style_amplitude = torch.fft.fft2(styles[pick].to(images.device).float()).abs()
    radius = max(1, int(band * min(h, w)))
    fy, fx = (torch.fft.fftfreq(n, 1.0 / n).abs().to(images.device) for n in (h, w))  # integer frequencies
    low = (fy[:, None] <= radius) & (fx[None, :] <= radius)
    amplitude = torch.where(low, style_amplitude, spectrum.abs())
    return torch.fft.ifft2(torch.polar(amplitude, spectrum.angle())).real.clamp(0, 1).to(images.dtype)


def augment_source_images(images: torch.Tensor, config: SourceSampleConfig, gen: torch.Generator,
                          styles: torch.Tensor | None = None) -> torch.Tensor:
    """``config.style`` applied to ``images`` (B, 1, H, W) in [0, 1] (``"intensity"``:
    :func:`agents.pretrain.augment_intensity` over ``config``'s gamma and contrast ranges; ``"fourier"``:
    :func:`fourier_style` with ``styles``, the target images), then Gaussian noise (std uniform in
    ``config.noise``), one draw per image; clipped to [0, 1]."""
    if config.style == "fourier":
        if styles is None:
            raise ValueError("augment_source_images: style 'fourier' needs the target images (styles)")
        out = fourier_style(images, styles, config.fourier_band, gen)
    else:
        out = augment_intensity(images, gen, config.gamma, config.contrast)
    noise = torch.randn(out.shape, generator=gen)
    noise *= config.noise[0] + (config.noise[1] - config.noise[0]) * torch.rand(out.shape[0], 1, 1, 1, generator=gen)
    return (out + noise.to(images.device)).clamp(0, 1)


@dataclasses.dataclass
class BuildReport:
    """What one iteration of the builder did."""

    iteration: int
    images_seen: int = 0
    accepted: int = 0
    samples_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(sum(self.samples_by_kind.values()))

    def as_dict(self) -> dict:
        return {"iteration": self.iteration, "images_seen": self.images_seen, "accepted": self.accepted,
                "n_samples": self.n_samples, **{f"n_{k}": self.samples_by_kind.get(k, 0) for k in SAMPLE_KINDS}}


class RewardSampleStore:
    """On-disk, append-only store of reward samples, one folder per iteration.

    Layout: ``root/iter_XXX/shard_YYYY.npz`` (arrays ``images`` float16 (N,H,W), ``preds`` and
    ``references`` uint8 (N,H,W), ``kinds`` and ``ids`` str (N,)) and ``root/iter_XXX/done.json``.
    Only iterations with a ``done.json`` are visible to readers.

    :param root: folder of the store (created).
    :param shard_size: samples per shard file (bounds memory when reading 256 px data).
    """

    def __init__(self, root: str | Path, shard_size: int = 512) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_size = int(shard_size)

    def _iter_dir(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration:03d}"

    def completed_iterations(self) -> list[int]:
        out = []
        for d in sorted(self.root.glob("iter_*")):
            if (d / "done.json").is_file():
                out.append(int(d.name.split("_")[1]))
        return out

    def is_complete(self, iteration: int) -> bool:
        return (self._iter_dir(iteration) / "done.json").is_file()

    def report(self, iteration: int) -> dict:
        return json.loads((self._iter_dir(iteration) / "done.json").read_text())

    def discard(self, iteration: int) -> None:
        """Remove an iteration's samples (e.g. to rebuild it after an interrupted run)."""
        d = self._iter_dir(iteration)
        if d.exists():
            (d / "done.json").unlink(missing_ok=True)  # invisible first, then removed
            shutil.rmtree(d)

    def begin(self, iteration: int) -> "_IterationWriter":
        """Start (or restart) writing ``iteration``: any partial shards of an interrupted run are removed."""
        d = self._iter_dir(iteration)
        if d.exists():
            if (d / "done.json").is_file():
                raise FileExistsError(f"{d}: iteration {iteration} is already complete; refusing to duplicate it")
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return _IterationWriter(d, self.shard_size)

    def shards(self, iterations: Sequence[int] | None = None) -> list[Path]:
        """The shard files of the completed iterations (of those among ``iterations`` when given), in order."""
        files: list[Path] = []
        for it in self.completed_iterations():
            if iterations is not None and it not in iterations:
                continue
            files.extend(sorted(self._iter_dir(it).glob("shard_*.npz")))
        return files

    def __len__(self) -> int:
        return int(sum(self.report(it)["n_samples"] for it in self.completed_iterations()))

    def load(self) -> dict[str, np.ndarray]:
        """All completed samples concatenated (images float32)."""
        parts: dict[str, list[np.ndarray]] = {"images": [], "preds": [], "references": [], "kinds": [], "ids": []}
        for f in self.shards():
            try:
                with np.load(f, allow_pickle=False) as z:
                    for k in parts:
                        parts[k].append(z[k])
            except Exception as exc:
                raise ValueError(f"{f}: unreadable reward-sample shard ({type(exc).__name__}: {exc})") from exc
        if not parts["images"]:
            raise ValueError(f"{self.root}: the reward dataset is empty (no completed iteration with samples)")
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["images"] = out["images"].astype(np.float32)
        return out


class _IterationWriter:
    def __init__(self, folder: Path, shard_size: int) -> None:
        self.folder, self.shard_size = folder, shard_size
        self._buf: dict[str, list] = {"images": [], "preds": [], "references": [], "kinds": [], "ids": []}
        self._n_shards = 0

    def add(self, image: np.ndarray, pred: np.ndarray, reference: np.ndarray, kind: str, sample_id: str) -> None:
        self._buf["images"].append(image.astype(np.float16))
        self._buf["preds"].append(pred.astype(np.uint8))
        self._buf["references"].append(reference.astype(np.uint8))
        self._buf["kinds"].append(kind)
        self._buf["ids"].append(sample_id)
        if len(self._buf["ids"]) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buf["ids"]:
            return
        arrays = {k: np.stack(v) if k in ("images", "preds", "references") else np.asarray(v, dtype=str)
                  for k, v in self._buf.items()}
        atomic_save_npz(self.folder / f"shard_{self._n_shards:04d}.npz", **arrays)
        self._n_shards += 1
        for v in self._buf.values():
            v.clear()

    def commit(self, report: BuildReport) -> None:
        self._flush()
        atomic_write_text(self.folder / "done.json", json.dumps(report.as_dict(), indent=1))


@torch.no_grad()
def _predict(actor: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return actor(images).argmax(1)


def contrast_reduce(images: torch.Tensor, factor: float) -> torch.Tensor:
    """``mean + factor * (x - mean)`` per image; (B, 1, H, W) in [0, 1]."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + factor * (images - mean)).clamp(0, 1)


#: the artefacts :func:`random_artefact` draws from
ARTEFACTS = ("blobs", "band", "bias")


def random_artefact(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A copy of ``images`` (B, 1, H, W) in [0, 1], each image corrupted by one artefact drawn from
    :data:`ARTEFACTS` (modality-agnostic; sizes are fractions of the image side):

    - ``blobs``: 1-3 bright Gaussian blobs added (centre in the middle 70% of the image, std 4-12% of the side,
      peak 0.2-0.6), as clutter or haze over a cavity;
    - ``band``: the image darkened to 10-50% along a straight band of half-width 5-15% at a random angle through
      the middle 60% (soft edges), as an acoustic shadow or signal dropout;
    - ``bias``: multiplied by ``exp`` of a random quadratic field (coefficients N(0, 0.5)), as a gain or
      attenuation change across the image.

    Values are clipped to [0, 1]; the random numbers come from ``gen`` (CPU).
    """
    b, _, h, w = images.shape
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
    fields = torch.ones(b, h, w), torch.zeros(b, h, w)  # multiplicative and additive parts

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=gen))

    for i in range(b):
        artefact = ARTEFACTS[int(torch.randint(len(ARTEFACTS), (1,), generator=gen))]
        if artefact == "blobs":
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
                cy, cx, std, peak = uniform(-0.35, 0.35), uniform(-0.35, 0.35), uniform(0.04, 0.12), uniform(0.2, 0.6)
                fields[1][i] += peak * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * std ** 2))
        elif artefact == "band":
            angle, cy, cx = uniform(0, np.pi), uniform(-0.3, 0.3), uniform(-0.3, 0.3)
            half_width, level = uniform(0.05, 0.15), uniform(0.1, 0.5)
            distance = ((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)).abs()
            fields[0][i] = 1 - (1 - level) * torch.sigmoid((half_width - distance) / 0.02)
        else:
            c = torch.randn(5, generator=gen) * 0.5
            fields[0][i] = torch.exp(c[0] * yy + c[1] * xx + 4 * (c[2] * yy ** 2 + c[3] * xx ** 2 + c[4] * yy * xx))
    mul, add = (f[:, None].to(images.device) for f in fields)
    return (images * mul + add).clamp(0, 1)


def anatomical_negative(label: np.ndarray, damage: str, gen: torch.Generator) -> np.ndarray:
    """A copy of ``label`` (H, W; 0 background, 1 LV, 2 myocardium) damaged in one disk-shaped patch centred on a
    random myocardium pixel, of radius ``H / 10``; ``k = max(1, H / 32)`` pixels is the damage's depth:

    - ``break``: the myocardium in the patch becomes background (a gap in the wall);
    - ``thin``: the myocardium within ``k`` px of the outside, in the patch, becomes background;
    - ``thicken``: the background within ``k`` px of the myocardium, in the patch, becomes myocardium;
    - ``lv_grow``: the myocardium within ``k`` px of the LV, in the patch, becomes LV;
    - ``lv_shrink``: the LV within ``k`` px of the myocardium, in the patch, becomes myocardium.

    Other classes (the atrium) are left alone. The copy equals ``label`` when there is no myocardium or the
    damage changes nothing (a wall already thinner than the patch's reach, say).
    """
    from scipy import ndimage

    if damage not in ANATOMICAL_DAMAGES + BOUNDARY_MOVES:
        raise ValueError(f"anatomical_negative: unknown damage {damage!r}; choose from "
                         f"{tuple(dict.fromkeys(ANATOMICAL_DAMAGES + BOUNDARY_MOVES))}")
    out = np.array(label, copy=True)
    myo = out == _MYO
    rows, cols = np.nonzero(myo)
    if not len(rows):
        return out
    h, w = out.shape
    i = int(torch.randint(len(rows), (1,), generator=gen))
    radius, k = max(2.0, h / 10), max(1, round(h / 32))
    yy, xx = np.ogrid[:h, :w]
    patch = (yy - rows[i]) ** 2 + (xx - cols[i]) ** 2 <= radius ** 2
    lv = out == _LV
    near = np.ones((2 * k + 1, 2 * k + 1), bool)
    if damage == "break":
        out[patch & myo] = 0
    elif damage == "thin":
        outside = ~(myo | lv)
        out[patch & myo & ndimage.binary_dilation(outside, near)] = 0
    elif damage == "thicken":
        out[patch & (out == 0) & ndimage.binary_dilation(myo, near)] = _MYO
    elif damage == "lv_grow":
        out[patch & myo & ndimage.binary_dilation(lv, near)] = _LV
    else:
        out[patch & lv & ndimage.binary_dilation(myo, near)] = _MYO
    return out


class RewardDatasetBuilder:
    """Turns actor predictions on unlabelled target images into reward-network samples.

    :param corrector: object with ``correct(label_maps (B,H,W)) -> (B,H,W)`` and
        ``comparison_dice(preds, corrected) -> (B,)`` (see :class:`reward.correctors.Corrector`).
    :param validity_fn: ``(label_maps (B,H,W)) -> bool (B,)`` anatomical validity
        (e.g. ``functools.partial(reward.anatomy.validity_batch, criteria="echo")``).
    :param perturbations: strengths of the negatives (:class:`PerturbationConfig`).
    :param valid_dice_threshold: Dice(pred, corrected) above which a valid prediction is accepted.
    :param batch_size: images per forward pass.
    :param device: torch device of the actor.
    :param seed: seeds the sampled actions, weight noise and image noise.
    :param source_dataset: labelled source dataset (a :class:`rl4seg_env.data.SegDataset`) for the ``source``
        samples; needed when ``source.images`` > 0.
    :param source: :class:`SourceSampleConfig` (default: no source samples).
    :param true_references: ablation (reads target labels): ``sample id -> true label map``; every target sample's
        reference is replaced by it after the sample is made, so the reward set holds the same images and predictions
        with exact per-pixel targets (the ceiling of better references). The pseudo-labels returned are unchanged.
    :param target_samples: write the target samples (pseudo-labels, their negatives, corrected predictions); false
        leaves the reward set to the ``source`` samples alone (the target predictions still give the pseudo-labels
        returned by :meth:`build`), so the reward does not learn the actor's own boundaries as right.
    """

    def __init__(self, corrector, validity_fn: Callable[[np.ndarray], np.ndarray],
                 perturbations: PerturbationConfig | None = None, valid_dice_threshold: float = 0.95,
                 batch_size: int = 32, device: str | torch.device = "cpu", seed: int = 0,
                 source_dataset=None, source: SourceSampleConfig | None = None, target_samples: bool = True,
                 true_references: Callable[[str], np.ndarray] | None = None) -> None:
        self.source = source or SourceSampleConfig()
        self.target_samples = bool(target_samples)
        if not self.target_samples and not self.source.images:
            raise ValueError("RewardDatasetBuilder: without target samples (target_samples=False) the reward set "
                             "needs source samples (source.images > 0); it would be empty")
        if self.source.images and source_dataset is None:
            raise ValueError("RewardDatasetBuilder: source samples (source.images > 0) need a labelled source dataset")
        if source_dataset is not None and self.source.images and not getattr(source_dataset, "with_labels", True):
            raise ValueError("RewardDatasetBuilder: the source dataset must be labelled (with_labels=True)")
        self.source_dataset = source_dataset
        self.corrector = corrector
        self.validity_fn = validity_fn
        self.perturbations = perturbations or PerturbationConfig()
        self.valid_dice_threshold = float(valid_dice_threshold)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.true_references = true_references

    def build(self, actor: nn.Module, images: np.ndarray, ids: Sequence[str], store: RewardSampleStore | None,
              iteration: int, progress: bool = False) -> tuple[BuildReport, dict[str, np.ndarray]]:
        """Predict on ``images`` (N, H, W) float32 [0, 1], write the iteration's samples to ``store``.

        Under ``torchrun`` every process must call it with the same actor, images and ids: the batches are
        dealt out to the processes in turn, each batch's samples are gathered to rank 0, which alone writes
        them (``store`` may be ``None`` on the other ranks), in batch order. Every batch draws its random
        numbers from its own generator (seeded by ``seed``, ``iteration`` and the batch's index), so the
        samples written are the same for any number of processes.

        :return: the report and the accepted pseudo-labels ``{id: label map (H, W) uint8}`` (on every process).
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or len(images) != len(ids):
            raise ValueError(f"images must be (N, H, W) with one id each; got {images.shape} and {len(ids)} ids")
        if not np.all(np.isfinite(images)):
            raise ValueError("target images contain NaN/Inf values")
        ctx = context()
        if ctx.is_main and store is None:
            raise ValueError("RewardDatasetBuilder.build: rank 0 needs the sample store it writes to")
        writer = store.begin(iteration) if ctx.is_main else None
        report = BuildReport(iteration=iteration)
        counts: Counter = Counter()
        pseudo_labels: dict[str, np.ndarray] = {}
        was_training = actor.training
        actor.eval()
        noisy_actors = self._noisy_actors(actor, self._generator(iteration))
        n_batches = -(-len(images) // self.batch_size)
        rounds = range(0, n_batches, ctx.world_size)  # one batch per process and round
        if progress and ctx.is_main:
            from tqdm.auto import tqdm

            rounds = tqdm(rounds, desc=f"reward set (iter {iteration})", unit="batch" if not ctx.enabled else "round",
                          leave=False)
        try:
            for first in rounds:
                b = first + ctx.rank
                part: tuple[list, dict] = ([], {})
                if b < n_batches:
                    sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
                    part = self._build_batch(actor, noisy_actors, images[sl], list(ids[sl]),
                                             self._generator(iteration, b))
                parts = gather_objects(part)
                if not ctx.is_main:
                    continue
                for samples, accepted in parts:
                    for sample in samples:
                        writer.add(*sample)
                        counts[sample[3]] += 1
                    pseudo_labels.update(accepted)
            report.images_seen = len(images)
            if self.source.images and ctx.is_main:
                for sample in self.source_samples(actor, iteration, images):
                    writer.add(*sample)
                    counts["source"] += 1
        finally:
            actor.train(was_training)
        report.accepted = len(pseudo_labels)
        report.samples_by_kind = {k: counts.get(k, 0) for k in SAMPLE_KINDS}
        if ctx.is_main:
            writer.commit(report)
        return broadcast_object((report, pseudo_labels))

    def _generator(self, iteration: int, batch: int | None = None, source: bool = False) -> torch.Generator:
        """The random stream of one batch (``batch``), of the weight noise (``None``) or of the source samples
        (``source``) of an iteration."""
        key = [self.seed, iteration] + ([] if batch is None else [batch + 1]) + ([0, 1] if source else [])
        return torch.Generator(device="cpu").manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))

    def source_indices(self, iteration: int) -> list[int]:
        """The source images of iteration ``iteration`` (>= 1): the ``iteration``-th window of ``source.images``
        consecutive images, wrapping around the source set."""
        n, size = self.source.images, len(self.source_dataset)
        return [((iteration - 1) * n + k) % size for k in range(min(n, size))]

    @torch.no_grad()
    def source_samples(self, actor: nn.Module, iteration: int, target_images: np.ndarray | None = None
                       ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, str, str]]:
        """``(augmented source image, prediction or moved-boundary label, true label, "source", id)`` for this
        iteration's source images (``source.kinds``); rank 0 alone makes them (a few hundred forward passes), with
        its own random stream. ``target_images`` (N, H, W), the iteration's target images, are the styles of
        ``source.style: fourier`` (required then)."""
        gen = self._generator(iteration, source=True)
        styles = None if target_images is None else torch.from_numpy(np.asarray(target_images, np.float32))[:, None]
        out = []
        indices = self.source_indices(iteration)
        for first in range(0, len(indices), self.batch_size):
            samples = [self.source_dataset[i] for i in indices[first:first + self.batch_size]]
            x = torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32))[:, None]
            x = augment_source_images(x, self.source, gen, styles).to(self.device)
            if "predictions" in self.source.kinds:  # the actor runs only when its predictions are used
                pred, sampled = argmax_and_sample(actor(x), gen)
            for k, s in enumerate(samples):
                image, label, sid = x[k, 0].cpu().numpy(), np.asarray(s.label, dtype=np.uint8), f"source:{s.id}"
                if "predictions" in self.source.kinds:
                    out.append((image, pred[k], label, "source", sid))
                    out.append((image, sampled[k], label, "source", sid))
                if "boundaries" in self.source.kinds:
                    for _ in range(2):
                        move = BOUNDARY_MOVES[int(torch.randint(len(BOUNDARY_MOVES), (1,), generator=gen))]
                        out.append((image, anatomical_negative(label, move, gen), label, "source", sid))
        return out

    def _noisy_actors(self, actor: nn.Module, gen: torch.Generator) -> list[tuple[float, nn.Module]]:
        # copies, so the actor's own weights are never touched (equivalent to "perturb then restore")
        out = []
        for sigma in self.perturbations.weight_noise:
            noisy = copy.deepcopy(actor).eval()
            with torch.no_grad():
                for p in noisy.parameters():
                    p.add_(torch.randn(p.shape, generator=gen).to(p.device) * sigma)
            out.append((float(sigma), noisy))
        return out

    @torch.no_grad()
    def _build_batch(self, actor, noisy_actors, batch: np.ndarray, batch_ids: list[str], gen: torch.Generator
                     ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, str, str]], dict[str, np.ndarray]]:
        """One batch's samples ``(image, pred, reference, kind, id)`` in writing order and its pseudo-labels."""
        x = torch.from_numpy(batch).to(self.device)[:, None]
        pred, sampled = argmax_and_sample(actor(x), gen)
        corrected = np.asarray(self.corrector.correct(pred)).astype(np.uint8)
        pred_valid = np.asarray(self.validity_fn(pred), dtype=bool)
        closeness = np.asarray(self.corrector.comparison_dice(pred, corrected))
        nonempty = pred.reshape(len(pred), -1).any(1)
        accepted = pred_valid & (closeness > self.valid_dice_threshold) & nonempty
        pseudo_labels = {sid: pred[i] for i, sid in enumerate(batch_ids) if accepted[i]}
        if not self.target_samples:  # the reward set takes the source samples alone
            return [], pseudo_labels
        corrected_valid = np.zeros(len(pred), bool)
        if (~accepted).any():
            corrected_valid[~accepted] = np.asarray(self.validity_fn(corrected[~accepted]), dtype=bool)

        negatives: list[tuple[str, np.ndarray, np.ndarray | None]] = []  # (kind, maps, images or None: the batch's)
        if accepted.any():
            for sigma, noisy in noisy_actors:
                negatives.append(("weight_noise", _predict(noisy, x).cpu().numpy(), None))
            for f in self.perturbations.contrast:
                negatives.append(("contrast", _predict(actor, contrast_reduce(x, f)).cpu().numpy(), None))
            for std in self.perturbations.image_noise:
                noise = torch.randn(x.shape, generator=gen).to(x.device) * std
                negatives.append(("image_noise", _predict(actor, (x + noise).clamp(0, 1)).cpu().numpy(), None))
            if self.perturbations.swap and len(batch) > 1:
                negatives.append(("swap", np.roll(sampled, 1, axis=0), None))
            for _ in range(self.perturbations.anatomical):
                damages = torch.randint(len(ANATOMICAL_DAMAGES), (len(pred),), generator=gen).tolist()
                negatives.append(("anatomical", np.stack([
                    anatomical_negative(pred[i], ANATOMICAL_DAMAGES[d], gen) if accepted[i] else pred[i]
                    for i, d in enumerate(damages)]), None))
            for _ in range(self.perturbations.artifact):
                corrupted = random_artefact(x, gen)
                negatives.append(("artifact", _predict(actor, corrupted).cpu().numpy(), corrupted[:, 0].cpu().numpy()))

        samples = []
        for i, sid in enumerate(batch_ids):
            if accepted[i]:
                samples.append((batch[i], pred[i], pred[i], "pseudo_label", sid))
                samples.extend((batch[i] if imgs is None else imgs[i], maps[i], pred[i], kind, sid)
                               for kind, maps, imgs in negatives  # empty predictions are skipped, and damages
                               # that changed nothing
                               if maps[i].any() and (kind != "anatomical" or (maps[i] != pred[i]).any()))
            elif corrected_valid[i] and sampled[i].any():
                samples.append((batch[i], sampled[i], corrected[i], "corrected", sid))
        if self.true_references is not None:
            samples = [(image, pred_, np.asarray(self.true_references(sid), dtype=np.uint8), kind, sid)
                       for image, pred_, _, kind, sid in samples]
        return samples, pseudo_labels


class RewardSampleDataset(torch.utils.data.Dataset):
    """Torch view of a :class:`RewardSampleStore`: ``(image (1,H,W) float32, pred (H,W) int64,
    target (H,W) float32 = pred == reference)``, read lazily so that memory stays flat in the store's size.

    Only the ``ids`` and ``kinds`` of every sample are held in memory (a few bytes each); images and label maps
    are decoded shard by shard into a least-recently-used cache of at most ``cache_mb`` megabytes (at least
    one shard). Access in shard order (``shard_of``) decodes each shard once per pass; the reward-network
    training shuffles in blocks of :attr:`block_shards` shards for that reason
    (:class:`reward.training.ShardBlockSampler`).

    :param store: the sample store (its completed iterations, read when the dataset is made).
    :param cache_mb: bound of the decoded-shard cache (default 32 MB: 4 shards of 512 samples at 64 px,
        one shard at 256 px).
    :param iterations: read only these completed iterations (None: all of them).
    :raises ValueError: the store is empty or a shard is unreadable (the message names the file).
    """

    def __init__(self, store: RewardSampleStore, cache_mb: float = 32.0, iterations: Sequence[int] | None = None
                 ) -> None:
        self.files = store.shards(iterations)
        if not self.files:
            which = "" if iterations is None else f" among iterations {sorted(iterations)}"
            raise ValueError(f"{store.root}: the reward dataset is empty (no completed iteration with samples{which})")
        ids, kinds, shard_of, row_of = [], [], [], []
        for s, f in enumerate(self.files):
            with self._open(f) as z:
                ids.append(z["ids"])
                kinds.append(z["kinds"])
                if s == 0:
                    pixels = int(np.prod(z["preds"].shape[1:]))  # every shard holds maps of one size
            shard_of.append(np.full(len(ids[-1]), s, dtype=np.int32))
            row_of.append(np.arange(len(ids[-1]), dtype=np.int32))
        shard_bytes = max(len(i) for i in ids) * pixels * 4  # float16 image + two uint8 maps per sample
        self.ids, self.kinds = np.concatenate(ids), np.concatenate(kinds)
        #: index of the shard file (in :attr:`files`) holding each sample, and its row there
        self.shard_of, self.row_of = np.concatenate(shard_of), np.concatenate(row_of)
        #: shards the cache holds at once (the shuffling block of the reward-network training)
        self.block_shards = max(1, int(cache_mb * 2**20 // max(shard_bytes, 1)))
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    @staticmethod
    def _open(path: Path):
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"{path}: unreadable reward-sample shard ({type(exc).__name__}: {exc})") from exc

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        try:
            with self._open(self.files[s]) as z:
                arrays = (z["images"], z["preds"], z["references"])
        except ValueError:  # already names the file
            raise
        except Exception as exc:  # a member that fails to decode
            raise ValueError(f"{self.files[s]}: unreadable reward-sample shard ({type(exc).__name__}: {exc})") from exc
        self._cache[s] = arrays
        while len(self._cache) > self.block_shards:
            self._cache.popitem(last=False)
        return arrays

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        images, preds, references = self._shard(int(self.shard_of[i]))
        row = int(self.row_of[i])
        pred = preds[row]
        return (torch.from_numpy(images[row][None].astype(np.float32)), torch.from_numpy(pred.astype(np.int64)),
                torch.from_numpy((pred == references[row]).astype(np.float32)))
