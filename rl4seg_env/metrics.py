"""Segmentation metrics on label maps: Dice and Hausdorff distance (mm), per structure.

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


def hausdorff(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Symmetric Hausdorff distance in mm between two boolean masks (boundary to boundary).

    ``nan`` when exactly one mask is empty, 0 when both are.
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float("nan")
    edge_p = pred & ~ndimage.binary_erosion(pred)
    edge_t = target & ~ndimage.binary_erosion(target)
    to_t = ndimage.distance_transform_edt(~edge_t, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~edge_p, sampling=spacing)
    return float(max(to_t[edge_p].max(), to_p[edge_t].max()))


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
    """Dice and Hausdorff (mm) of one (H, W) prediction per structure, as ``{"dice_lv": ..., "hd_lv": ...}``.

    Follows docs/method.md: keeps the largest foreground component of the prediction first.
    """
    structures = ECHO_STRUCTURES if structures is None else structures
    if largest_component:
        pred = keep_largest_foreground(pred)
    out: dict[str, float] = {}
    for name, values in structures.items():
        p, t = np.isin(pred, values), np.isin(target, values)
        out[f"dice_{name}"] = dice(p, t)
        out[f"hd_{name}"] = hausdorff(p, t, spacing)
    return out
