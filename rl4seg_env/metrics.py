"""Segmentation metrics on label maps: Dice and surface distances (mm), per structure.

Surface distances follow the usual definitions (medpy's ``hd``, ``hd95`` and ``assd``, cross-checked in
``tests/test_metrics.py``): a mask's surface is its pixels with a 4-neighbour outside it; for each surface
pixel of one mask, the Euclidean distance (with the pixel spacing) to the other's surface. Hausdorff (HD)
is the largest of those distances in both directions, HD95 their 95th percentile (both directions pooled),
MASD the mean of all of them, both directions pooled (average symmetric surface distance; the mean absolute
distance of the CAMUS papers).

Structures follow the paper: LV (label 1), MYO (label 2) and epicardium (LV u MYO).
Functions take numpy label maps (H, W) or batches (B, H, W).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, target: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two boolean masks; ``empty`` when both are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    denom = pred.sum() + target.sum()
    if denom == 0:
        return float(empty)
    return float(2.0 * np.logical_and(pred, target).sum() / denom)


def dice_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """Vectorised Dice of each foreground class 1..n_classes-1.

    :param pred: (B, H, W) or (H, W) integer label maps.
    :return: (B, n_classes - 1) float64 (or (n_classes - 1,) for a single map); 1 where both are empty.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    single = pred.ndim == 2
    if single:
        pred, target = pred[None], target[None]
    classes = np.arange(1, n_classes)[None, :, None]
    p = pred.reshape(len(pred), 1, -1) == classes
    t = target.reshape(len(target), 1, -1) == classes
    inter = np.logical_and(p, t).sum(-1)
    denom = p.sum(-1) + t.sum(-1)
    out = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)
    return out[0] if single else out


def surface_distances(pred: np.ndarray, target: np.ndarray,
                      spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed surface distances in mm: (from each surface pixel of ``pred`` to ``target``'s surface, and
    from ``target``'s to ``pred``'s). ``None`` when a mask is empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() or not target.any():
        return None
    edge_p = pred & ~ndimage.binary_erosion(pred)
    edge_t = target & ~ndimage.binary_erosion(target)
    to_t = ndimage.distance_transform_edt(~edge_t, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~edge_p, sampling=spacing)
    return to_t[edge_p], to_p[edge_t]


def _max_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(a.max(), b.max()))


def _percentile_95(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.percentile(np.concatenate([a, b]), 95))


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.concatenate([a, b]).mean())


#: report prefix -> reduction of the two directed surface-distance arrays
SURFACE_METRICS = {"hd": _max_distance, "hd95": _percentile_95, "masd": _mean_distance}


def _surface_metric(pred, target, spacing, reduce) -> float:
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() and not target.any():
        return 0.0
    distances = surface_distances(pred, target, spacing)
    return float("nan") if distances is None else float(reduce(*distances))


def hausdorff(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Symmetric Hausdorff distance in mm between two boolean masks (surface to surface).

    ``nan`` when exactly one mask is empty, 0 when both are (as :func:`hd95` and :func:`masd`).
    """
    return _surface_metric(pred, target, spacing, _max_distance)


def hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """95th percentile of the surface distances of both directions, pooled (mm): a Hausdorff distance that
    one stray pixel does not decide."""
    return _surface_metric(pred, target, spacing, _percentile_95)


def masd(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Mean absolute (average symmetric) surface distance in mm: the mean surface distance, both directions
    pooled."""
    return _surface_metric(pred, target, spacing, _mean_distance)


def keep_largest_foreground(label_map: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of the foreground (all labels > 0), zero elsewhere."""
    fg = label_map > 0
    lab, n = ndimage.label(fg, structure=np.ones((3, 3)))
    if n <= 1:
        return label_map.copy()
    sizes = np.bincount(lab.ravel())[1:]
    keep = lab == (1 + int(np.argmax(sizes)))
    return np.where(keep, label_map, 0).astype(label_map.dtype)


#: structure name -> label values it contains (paper convention)
ECHO_STRUCTURES: dict[str, tuple[int, ...]] = {"lv": (1,), "myo": (2,), "epi": (1, 2)}


def segmentation_scores(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0),
                        structures: dict[str, tuple[int, ...]] | None = None,
                        largest_component: bool = True) -> dict[str, float]:
    """Dice, Hausdorff, HD95 and MASD (mm) of one (H, W) prediction per structure, as ``{"dice_lv": ...,
    "hd_lv": ..., "hd95_lv": ..., "masd_lv": ...}``.

    Follows docs/method.md: keeps the largest foreground component of the prediction first.
    """
    structures = ECHO_STRUCTURES if structures is None else structures
    if largest_component:
        pred = keep_largest_foreground(pred)
    out: dict[str, float] = {}
    for name, values in structures.items():
        p, t = np.isin(pred, values), np.isin(target, values)
        out[f"dice_{name}"] = dice(p, t)
        # one distance computation for the three surface metrics (the conventions of _surface_metric)
        both_empty = not p.any() and not t.any()
        distances = None if both_empty else surface_distances(p, t, spacing)
        for metric, reduce in SURFACE_METRICS.items():
            out[f"{metric}_{name}"] = 0.0 if both_empty else float("nan") if distances is None else reduce(*distances)
    return out
