"""Evaluation of a segmentation actor on a labelled dataset (docs/method.md, "Evaluation").

Argmax prediction, keep the largest foreground component, then per-structure Dice and Hausdorff
distance (mm, with each image's spacing) for LV, MYO and epicardium, anatomical validity with the
failing criteria counted and, when a reward model is given, the reward network's uncertainty metrics.
Labels are read here only: training code never calls this module on target data.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from agents.distributed import context, gather_objects
from pipeline.tables import rows_to_csv
from reward.anatomy import Criterion, check_anatomy, get_criteria, is_valid
from reward.uncertainty import UncertaintyAccumulator
from rl4seg_env.data.base import SegDataset, resize_label
from rl4seg_env.data.nifti import read_nifti_2d
from rl4seg_env.io import atomic_write_text
from rl4seg_env.metrics import ECHO_STRUCTURES, keep_largest_foreground, segmentation_scores


@dataclasses.dataclass
class EvaluationResult:
    """Per-image rows (``id``, ``dice_*``, ``hd_*``, ``hd95_*``, ``masd_*``, ``valid``, ``failed``, ``mean_reward``), their
    summary, the (N, H, W) predictions scored (as given; gathered from every process in a distributed call) and,
    with a reward model, its per-pixel calibration over them (what a reliability diagram plots)."""

    per_image: list[dict]
    summary: dict[str, float]
    preds: np.ndarray | None = None
    uncertainty: UncertaintyAccumulator | None = None


def evaluate_predictions(preds: np.ndarray, dataset: SegDataset, images: np.ndarray | None = None,
                         criteria: str | Sequence[Criterion] = "echo",
                         reward_model: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                         structures: dict[str, tuple[int, ...]] | None = None,
                         also_criteria: Mapping[str, str | Sequence[Criterion]] | None = None,
                         indices: Sequence[int] | None = None, distributed: bool = False) -> EvaluationResult | None:
    """Score label maps against the samples of a labelled ``dataset``: the first ``len(preds)`` ones, or
    ``indices``.

    :param preds: (N, H, W) integer label maps.
    :param images: (N, H, W) float32 images of the same samples (needed with ``reward_model``; read from the
        dataset otherwise); with ``indices``, the images of the whole dataset (or of its first
        ``max(indices) + 1`` samples).
    :param criteria: anatomical criteria of :mod:`reward.anatomy`: a set name (``"echo"``, ``"generic"``), a
        calibrated-criteria YAML path or a list of criteria.
    :param also_criteria: other criteria sets to report validity under, by name: adds ``valid_<name>`` per
        image and ``validity_<name>_pct`` to the summary (e.g. ``{"paper": "echo"}`` next to calibrated ones).
    :param reward_model: learned reward ``(images, preds) -> reward maps``; adds calibration metrics of
        ``1 - reward`` against the error map over foreground pixels, and the reward-Dice correlation.
    :param indices: the dataset index of each prediction (default ``0 .. len(preds) - 1``).
    :param distributed: under ``torchrun`` every process calls it with its share of the samples (``indices``);
        each scores its own images, the rows and predictions are gathered to rank 0, which returns the result
        over all of them in index order, as one process given every prediction would; the others get ``None``.
    """
    if not dataset.with_labels:
        raise ValueError("evaluation needs a labelled dataset (built with with_labels=True)")
    structures = ECHO_STRUCTURES if structures is None else structures
    preds = np.asarray(preds)
    indices = np.arange(len(preds)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(indices) != len(preds):
        raise ValueError(f"evaluate_predictions: {len(preds)} predictions but {len(indices)} indices")
    rows = score_images(preds, dataset, indices, criteria, structures, also_criteria)
    if distributed and context().enabled:
        parts = gather_objects((indices, preds, rows))
        if parts is None:
            return None
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        indices = np.concatenate([p[0] for p in parts])[order]
        preds = np.concatenate([p[1] for p in parts])[order]
        every = [row for p in parts for row in p[2]]
        rows = [every[i] for i in order]
    summary = summarize(rows, structures)
    for name in also_criteria or {}:
        summary[f"validity_{name}_pct"] = 100.0 * float(np.mean([r[f"valid_{name}"] for r in rows]))
    if reward_model is not None:
        if images is None:
            images = np.stack([dataset[int(i)].image for i in indices])
        elif len(images) != len(preds) or not np.array_equal(indices, np.arange(len(preds))):
            images = np.asarray(images)[indices]
        labels = np.stack([dataset[int(i)].label for i in indices])
        uncertainty = _uncertainty(reward_model, images, preds, labels, rows, dataset.n_classes)
        summary.update({f"reward_{k}": float(v) for k, v in uncertainty.compute().items()})
        return EvaluationResult(rows, summary, preds, uncertainty)
    return EvaluationResult(rows, summary, preds)


def score_images(preds: np.ndarray, dataset: SegDataset, indices: Sequence[int],
                 criteria: str | Sequence[Criterion] = "echo", structures: dict[str, tuple[int, ...]] | None = None,
                 also_criteria: Mapping[str, str | Sequence[Criterion]] | None = None) -> list[dict]:
    """The per-image rows of :func:`evaluate_predictions` (``preds[k]`` is the prediction of sample
    ``indices[k]``): largest foreground component kept, Dice / Hausdorff distances per structure, validity."""
    structures = ECHO_STRUCTURES if structures is None else structures
    criteria = get_criteria(criteria)
    also = {name: get_criteria(c) for name, c in (also_criteria or {}).items()}
    rows: list[dict] = []
    for index, pred in zip(indices, preds):
        sample = dataset[int(index)]
        if sample.label is None:
            raise ValueError(f"sample {sample.id} has no label; cannot evaluate")
        pred = keep_largest_foreground(pred)
        row: dict = {"id": sample.id}
        row.update(segmentation_scores(pred, sample.label, sample.spacing, structures, largest_component=False))
        report = check_anatomy(pred, sample.spacing, criteria)
        row["valid"] = bool(report.valid)
        row["failed"] = ";".join(report.failed)
        for name, other in also.items():
            row[f"valid_{name}"] = is_valid(pred, sample.spacing, other)
        rows.append(row)
    return rows


def summarize(rows: list[dict], structures: dict[str, tuple[int, ...]] | None = None) -> dict[str, float]:
    """Means of the per-image scores, validity %, and the number of images failing each criterion."""
    structures = ECHO_STRUCTURES if structures is None else structures
    out: dict[str, float] = {"n_images": float(len(rows))}
    for name in structures:
        out[f"dice_{name}"] = float(np.mean([r[f"dice_{name}"] for r in rows]))
        for metric in ("hd", "hd95", "masd"):
            values = np.array([r.get(f"{metric}_{name}", np.nan) for r in rows], dtype=float)
            out[f"{metric}_{name}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    if "dice_lv" in out and "dice_myo" in out:
        out["dice_mean"] = (out["dice_lv"] + out["dice_myo"]) / 2
    out["validity_pct"] = 100.0 * float(np.mean([r["valid"] for r in rows]))
    failures = Counter(c for r in rows for c in r["failed"].split(";") if c)
    for name, count in sorted(failures.items()):
        out[f"failed_{name}"] = float(count)
    return out


def _uncertainty(reward_model, images, preds, labels, rows, n_classes: int) -> UncertaintyAccumulator:
    """The reward maps' calibration against the error maps of ``preds``; each row gets its ``mean_reward``."""
    acc = UncertaintyAccumulator(n_classes)
    mean_rewards = []
    for start in range(0, len(images), 64):
        sl = slice(start, start + 64)
        maps = np.asarray(reward_model(images[sl], preds[sl]))
        acc.update(maps, preds[sl], labels[sl])
        mean_rewards.extend(maps.reshape(len(maps), -1).mean(1).tolist())
    for row, r in zip(rows, mean_rewards):
        row["mean_reward"] = float(r)
    return acc


# --------------------------------------------------------------------------------------------------
# evaluation of saved predictions, and its files (scripts/evaluate.py)
# --------------------------------------------------------------------------------------------------
def prediction_file_names(sample_id: str) -> list[str]:
    """File names accepted for the prediction of ``sample_id``, in order of preference.

    ``<id>_seg.nii.gz`` (what :func:`pipeline.inference.export_predictions` writes), then ``<id>.nii.gz``, and
    the same with ``.nii``; ``<id>`` is also tried with the characters other than letters, digits, ``-_.``
    replaced by ``_`` (the file-name-safe form export_predictions uses).
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)
    stems = [sample_id] if safe == sample_id else [sample_id, safe]
    return [f"{stem}{suffix}{ext}" for suffix in ("_seg", "") for ext in (".nii.gz", ".nii") for stem in stems]


def load_prediction_folder(folder: str | os.PathLike, dataset: SegDataset) -> np.ndarray:
    """Predicted label maps of every sample of ``dataset`` read from a folder of 2D NIfTI files.

    Each sample's file is found by :func:`prediction_file_names`; label maps of another size are resized
    to the dataset's working size ``dataset.image_size`` with nearest neighbour (labels never mix).

    :param folder: folder holding the predictions.
    :param dataset: the dataset the predictions are for (its ids and working size are used).
    :return: (N, H, W) uint8 label maps in dataset order.
    :raises FileNotFoundError: the folder does not exist, or some ids have no prediction file (the
        message lists them, with the names that were looked for).
    :raises ValueError: a file holds non-integer values or labels outside ``0..n_classes-1``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {folder}")
    present = {p.name for p in folder.iterdir()}
    paths, missing = [], []
    for i in range(len(dataset)):
        sample_id = dataset[i].id
        name = next((n for n in prediction_file_names(sample_id) if n in present), None)
        if name is None:
            missing.append(sample_id)
        paths.append(None if name is None else folder / name)
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{folder}: no prediction for {len(missing)} of {len(dataset)} dataset ids: {shown} "
                                f"(looked for <id>_seg.nii.gz, <id>.nii.gz, <id>_seg.nii, <id>.nii)")
    size = tuple(dataset.image_size)
    preds = np.empty((len(paths), *size), dtype=np.uint8)
    for i, path in enumerate(paths):
        array, _ = read_nifti_2d(path)
        values = np.unique(array)
        if not np.all(values == np.round(values)) or values.min() < 0 or values.max() >= dataset.n_classes:
            raise ValueError(f"{path}: expected integer labels in 0..{dataset.n_classes - 1} "
                             f"({', '.join(dataset.class_names)}), found values {', '.join(f'{v:g}' for v in values[:8])}")
        preds[i] = resize_label(np.rint(array).astype(np.uint8), size)
    return preds


def evaluation_markdown(summary: dict[str, float], title: str = "Evaluation",
                        structures: dict[str, tuple[int, ...]] | None = None) -> str:
    """Markdown summary of :func:`evaluate_predictions`: Dice / HD / HD95 / MASD (mm) per structure, validity %, the
    failing anatomical criteria, and the reward-network uncertainty metrics when present."""
    structures = ECHO_STRUCTURES if structures is None else structures

    def fmt(value: float, digits: int = 3) -> str:
        return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"

    n = int(summary.get("n_images", 0))
    lines = [f"# {title}", "", f"{n} images.", "",
             "| structure | Dice | Hausdorff (mm) | HD95 (mm) | MASD (mm) |", "|---|---|---|---|---|"]
    for name in structures:
        lines.append(f"| {name.upper()} | {fmt(summary.get(f'dice_{name}'))} | "
                     + " | ".join(fmt(summary.get(f"{m}_{name}"), 2) for m in ("hd", "hd95", "masd")) + " |")
    if "dice_mean" in summary:
        lines.append(f"| mean LV+MYO | {fmt(summary['dice_mean'])} | | | |")
    lines += ["", f"Anatomical validity: **{fmt(summary.get('validity_pct'), 1)} %** of the images.", ""]
    failed = {k[len("failed_"):]: v for k, v in summary.items() if k.startswith("failed_")}
    if failed:
        lines += ["| failing criterion | images |", "|---|---|"]
        lines += [f"| {k} | {int(v)} |" for k, v in sorted(failed.items(), key=lambda kv: -kv[1])]
        lines.append("")
    reward = {k[len("reward_"):]: v for k, v in summary.items() if k.startswith("reward_")}
    if reward:
        lines += ["Reward-network uncertainty (`1 - reward`, foreground pixels):", "",
                  "| ECE | ACE | MCE | MI (nats) | reward-Dice r | pixels |", "|---|---|---|---|---|---|",
                  f"| {fmt(reward.get('ece'))} | {fmt(reward.get('ace'))} | {fmt(reward.get('mce'))} | "
                  f"{fmt(reward.get('mi'), 4)} | {fmt(reward.get('correlation'))} | {int(reward.get('n_pixels', 0))} |",
                  ""]
    return "\n".join(lines)


def write_evaluation(result: EvaluationResult, out_dir: str | os.PathLike, metadata: dict | None = None,
                     title: str = "Evaluation") -> dict[str, Path]:
    """Write ``per_image.csv``, ``summary.json`` and ``summary.md`` into ``out_dir`` (atomic writes).

    :param result: the output of :func:`evaluate_predictions`.
    :param out_dir: output folder (created).
    :param metadata: plain values stored under ``"metadata"`` in the JSON (e.g. checkpoint, dataset).
    :param title: title of the Markdown summary.
    :return: ``{"csv": ..., "json": ..., "markdown": ...}`` paths. NaN (undefined Hausdorff, correlation)
        is written as an empty CSV cell and as JSON ``null``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finite = {k: (float(v) if np.isfinite(v) else None) for k, v in result.summary.items()}
    doc = {"metadata": dict(metadata or {}), "summary": finite}
    return {"csv": atomic_write_text(out_dir / "per_image.csv", rows_to_csv(result.per_image)),
            "json": atomic_write_text(out_dir / "summary.json", json.dumps(doc, indent=1) + "\n"),
            "markdown": atomic_write_text(out_dir / "summary.md", evaluation_markdown(result.summary, title))}
