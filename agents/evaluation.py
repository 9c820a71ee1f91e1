"""Evaluation of a segmentation actor on a labelled dataset (METHOD.md, "Evaluation").

Argmax prediction, keep the largest foreground component, then per-structure Dice and Hausdorff
distance (mm, with each image's spacing) for LV, MYO and epicardium, anatomical validity with the
failing criteria counted and, when a reward model is given, the reward network's uncertainty metrics.
Labels are read here only: training code never calls this module on target data.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rl4seg_env.data.base import SegDataset
from rl4seg_env.metrics import ECHO_STRUCTURES, keep_largest_foreground, segmentation_scores


@dataclasses.dataclass
class EvaluationResult:
    """Per-image rows (``id``, ``dice_*``, ``hd_*``, ``valid``, ``failed``, ``mean_reward``) and their summary."""

    per_image: list[dict]
    summary: dict[str, float]


def load_images(dataset: SegDataset, n: int | None = None, progress: bool = False, desc: str = "loading"
                ) -> tuple[np.ndarray, list[str]]:
    """First ``n`` images of ``dataset`` stacked as (N, H, W) float32, with their ids (labels untouched)."""
    n = len(dataset) if n is None else min(n, len(dataset))
    idx = range(n)
    if progress:
        from tqdm.auto import tqdm

        idx = tqdm(idx, desc=desc, unit="img", leave=False)
    samples = [dataset[i] for i in idx]
    return np.stack([s.image for s in samples]).astype(np.float32), [s.id for s in samples]


@torch.no_grad()
def predict(actor: nn.Module, images: np.ndarray, batch_size: int = 32, device: str | torch.device = "cpu",
            return_probs: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Argmax label maps (N, H, W) uint8 of ``actor`` on images (N, H, W) float32 in [0, 1].

    With ``return_probs`` also returns the softmax probabilities (N, C, H, W) float32.
    """
    was_training = actor.training
    actor.eval()
    preds, probs = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = torch.as_tensor(images[start:start + batch_size], dtype=torch.float32, device=device)[:, None]
            logits = actor(x)
            preds.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
            if return_probs:
                probs.append(torch.softmax(logits, 1).cpu().numpy())
    finally:
        actor.train(was_training)
    out = np.concatenate(preds)
    return (out, np.concatenate(probs)) if return_probs else out


def evaluate_predictions(preds: np.ndarray, dataset: SegDataset, images: np.ndarray | None = None,
                         criteria: str = "echo",
                         reward_model: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                         structures: dict[str, tuple[int, ...]] | None = None) -> EvaluationResult:
    """Score label maps against the first ``len(preds)`` samples of a labelled ``dataset``.

    :param preds: (N, H, W) integer label maps.
    :param images: (N, H, W) float32 images (needed with ``reward_model``; read from the dataset otherwise).
    :param criteria: anatomical criteria set of :mod:`reward.anatomy` (``"echo"`` or ``"generic"``).
    :param reward_model: learned reward ``(images, preds) -> reward maps``; adds calibration metrics of
        ``1 - reward`` against the error map over foreground pixels, and the reward-Dice correlation.
    """
    if not dataset.with_labels:
        raise ValueError("evaluation needs a labelled dataset (built with with_labels=True)")
    from reward.anatomy import check_anatomy

    structures = ECHO_STRUCTURES if structures is None else structures
    rows: list[dict] = []
    labels = []
    for i, pred in enumerate(np.asarray(preds)):
        sample = dataset[i]
        if sample.label is None:
            raise ValueError(f"sample {sample.id} has no label; cannot evaluate")
        labels.append(sample.label)
        pred = keep_largest_foreground(pred)
        row: dict = {"id": sample.id}
        row.update(segmentation_scores(pred, sample.label, sample.spacing, structures, largest_component=False))
        report = check_anatomy(pred, sample.spacing, criteria)
        row["valid"] = bool(report.valid)
        row["failed"] = ";".join(report.failed)
        rows.append(row)
    summary = summarize(rows, structures)
    if reward_model is not None:
        if images is None:
            images = np.stack([dataset[i].image for i in range(len(rows))])
        summary.update(_uncertainty_summary(reward_model, images, np.asarray(preds), np.stack(labels), rows,
                                            dataset.n_classes))
    return EvaluationResult(rows, summary)


def summarize(rows: list[dict], structures: dict[str, tuple[int, ...]] | None = None) -> dict[str, float]:
    """Means of the per-image scores, validity %, and the number of images failing each criterion."""
    structures = ECHO_STRUCTURES if structures is None else structures
    out: dict[str, float] = {"n_images": float(len(rows))}
    for name in structures:
        out[f"dice_{name}"] = float(np.mean([r[f"dice_{name}"] for r in rows]))
        hd = np.array([r[f"hd_{name}"] for r in rows], dtype=float)
        out[f"hd_{name}"] = float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan")
    if "dice_lv" in out and "dice_myo" in out:
        out["dice_mean"] = (out["dice_lv"] + out["dice_myo"]) / 2
    out["validity_pct"] = 100.0 * float(np.mean([r["valid"] for r in rows]))
    failures = Counter(c for r in rows for c in r["failed"].split(";") if c)
    for name, count in sorted(failures.items()):
        out[f"failed_{name}"] = float(count)
    return out


def _uncertainty_summary(reward_model, images, preds, labels, rows, n_classes: int) -> dict[str, float]:
    from reward.uncertainty import UncertaintyAccumulator

    acc = UncertaintyAccumulator(n_classes)
    mean_rewards = []
    for start in range(0, len(images), 64):
        sl = slice(start, start + 64)
        maps = np.asarray(reward_model(images[sl], preds[sl]))
        acc.update(maps, preds[sl], labels[sl])
        mean_rewards.extend(maps.reshape(len(maps), -1).mean(1).tolist())
    for row, r in zip(rows, mean_rewards):
        row["mean_reward"] = float(r)
    return {f"reward_{k}": float(v) for k, v in acc.compute().items()}
