"""Anatomical validity of a 2D label map: the nine echo criteria of RL4Seg, a generic set, and a registry.

A prediction becomes a pseudo-label only if it passes every criterion of the chosen set
(docs/method.md, step 1 of the loop). Each echo criterion is a plain function returning its *value*
(a pixel count or a ratio); the pass rule (bounds) lives in a :class:`Criterion` next to it, so a
report can show value, threshold and pass/fail side by side::

    >>> report = check_anatomy(label_map)          # AnatomyReport
    >>> report.valid, report.failed                # (False, ['lv_holes', 'epicardium_holes'])
    >>> print(report)                              # one line per criterion
    >>> is_valid(label_map)                        # fast path: stops at the first failure
    >>> validity_batch(label_maps)                 # (B,) bool

Conventions (docs/method.md, ANATOMY): label maps are integer arrays (H, W) whose rows run apex -> base;
LV = 1, MYO = 2 (LA = 3 when present); "small" = H * W / 2**14 pixels. All echo criteria are measured in
pixels (counts and scale-free ratios), so they do not depend on the pixel spacing; ``spacing``
(row_mm, col_mm) is still passed to every criterion so that custom sets can use physical units.

Criterion sets are chosen by name from :data:`CRITERIA_SETS` (``"echo"``, ``"generic"``); other
modalities register theirs with :func:`register_criteria` (see :func:`make_generic_criteria`).
A missing structure or any exception raised while measuring a criterion makes that criterion fail;
it never crashes the caller.
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

Spacing = tuple[float, float]
#: value function of a criterion: (label_map (H, W) int, spacing (row_mm, col_mm)) -> value (None = not applicable)
MeasureFn = Callable[[np.ndarray, Spacing], "float | None"]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity / 3x3 structuring element
_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity

# thresholds of docs/method.md (ANATOMY)
MYO_THICKNESS_MIN = 0.12
WIDTH_RATIO_MAX = 4.15
FRONTIER_RANGE = (0.05, 1.5)


def small_area(shape: tuple[int, int]) -> float:
    """The "small" area of docs/method.md for an image of ``shape`` (H, W): ``H * W / 2**14`` pixels (4 at 256 x 256)."""
    return float(shape[0] * shape[1]) / 2**14


# ----------------------------------------------------------------------------------------------- helpers
def holes(mask: np.ndarray, structure: np.ndarray = _EIGHT) -> np.ndarray:
    """Boolean (H, W) map of the holes of ``mask``: complement regions not connected to the image border.

    :param mask: (H, W) bool.
    :param structure: connectivity of the complement (3x3 ones = 8-connectivity, the docs/method.md rule).
    """
    mask = np.asarray(mask, dtype=bool)
    comp, n = ndimage.label(~mask, structure=structure)
    if n == 0:
        return np.zeros_like(mask)
    on_border = np.zeros(n + 1, dtype=bool)
    on_border[np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]])] = True
    on_border[0] = True  # label 0 is the mask itself, never a hole
    return ~on_border[comp]


def fill_holes(mask: np.ndarray, structure: np.ndarray = _EIGHT) -> np.ndarray:
    """``mask`` with its :func:`holes` filled (bool (H, W))."""
    mask = np.asarray(mask, dtype=bool)
    return mask | holes(mask, structure)


def largest_component(mask: np.ndarray, structure: np.ndarray = _EIGHT) -> np.ndarray:
    """Largest connected component of a boolean (H, W) mask (all False if empty)."""
    comp, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return comp > 0
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == int(np.argmax(sizes))


def _n_large_components(mask: np.ndarray, min_size: float) -> int:
    """Number of 8-connected components of ``mask`` with at least ``min_size`` pixels."""
    comp, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return 0
    sizes = np.bincount(comp.ravel())[1:]
    return int((sizes >= min_size).sum())


# ------------------------------------------------------------------------------------- echo criteria
def lv_not_empty(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, lv: int = 1) -> float:
    """Criterion 1 value: number of LV pixels (pass: >= 1)."""
    return float(np.count_nonzero(np.asarray(label_map) == lv))


def lv_holes(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, lv: int = 1) -> float:
    """Criterion 2 value: pixels in holes of the LV (8-connected complement regions off the border; pass: 0)."""
    return float(holes(np.asarray(label_map) == lv).sum())


def pixels_outside_largest_component(mask: np.ndarray) -> float:
    """Pixels of a boolean mask outside its largest 8-connected component (0 for an empty or one-piece mask)."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.sum() - largest_component(mask).sum())


def lv_one_piece(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, lv: int = 1) -> float:
    """Criterion 3 value: LV pixels outside the LV's largest 8-connected component (pass: 0)."""
    return pixels_outside_largest_component(np.asarray(label_map) == lv)


def myo_one_piece(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, myo: int = 2) -> float:
    """Criterion 4 value: MYO pixels outside the MYO's largest 8-connected component (pass: 0)."""
    return pixels_outside_largest_component(np.asarray(label_map) == myo)


def myo_thickness(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, myo: int = 2) -> float:
    """Criterion 5 value: erosion ratio of the MYO (pass: >= 0.12; ``nan`` when there is no MYO).

    ``d`` = max of the Euclidean distance transform of the MYO (pixels). The MYO is eroded with a 3x3
    element, objects smaller than "small" being dropped after each step, until it is no longer one
    component; the value is (number of erosions that kept it in one piece) / ``d``. A 1-2 pixel
    thin spot breaks it at the first erosion (value 0). Measured on the largest MYO component, so that
    a MYO in several pieces fails :func:`myo_one_piece`, not this criterion.

    Implementation: ``k`` erosions with a 3x3 square = pixels whose chessboard distance to the outside
    exceeds ``k`` (the image border counts as outside, as in ``binary_erosion``); and removing small
    objects after each step commutes with eroding, so each step is one threshold + one labelling.
    """
    mask = largest_component(np.asarray(label_map) == myo)
    if not mask.any():
        return float("nan")
    min_size = small_area(mask.shape)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    padded = np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)  # bounding box: same result, less work
    d = float(ndimage.distance_transform_edt(padded).max())
    chess = ndimage.distance_transform_cdt(padded, metric="chessboard")
    n_erosions = 0
    for k in range(1, int(chess.max()) + 1):
        if _n_large_components(chess > k, min_size) != 1:
            break
        n_erosions = k
    return n_erosions / d


def epicardium_holes(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, lv: int = 1, myo: int = 2) -> float:
    """Criterion 6 value: pixels in holes of LV u MYO (8-connected complement regions off the border; pass: 0)."""
    label_map = np.asarray(label_map)
    return float(holes((label_map == lv) | (label_map == myo)).sum())


def lv_myo_gap(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, lv: int = 1, myo: int = 2) -> float:
    """Criterion 7 value: background pixels enclosed by LV u MYO after filling each one's own holes (pass: <= small).

    "Enclosed" uses 4-connectivity of the background, so a gap that only leaks to the outside through a
    diagonal step still counts (criterion 6 uses 8-connectivity and would miss it).
    """
    label_map = np.asarray(label_map)
    union = fill_holes(label_map == lv) | fill_holes(label_map == myo)
    return float((holes(union, _FOUR) & (label_map == 0)).sum())


def _row_of_centre(mask: np.ndarray) -> int:
    rows = np.nonzero(mask)[0]
    return int(round(float(rows.mean())))


def width_ratio(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, lv: int = 1, myo: int = 2) -> float:
    """Criterion 8 value: LV pixels / MYO pixels on the row through the centre of mass of LV u MYO (pass: <= 4.15).

    ``inf`` when that row has LV but no MYO (or when LV u MYO is empty), so the criterion fails.
    """
    label_map = np.asarray(label_map)
    epi = (label_map == lv) | (label_map == myo)
    if not epi.any():
        return float("inf")
    row = label_map[_row_of_centre(epi)]
    n_lv, n_myo = np.count_nonzero(row == lv), np.count_nonzero(row == myo)
    if n_myo == 0:
        return float("inf") if n_lv else float("nan")
    return n_lv / n_myo


def lv_frontier(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, lv: int = 1, la: int | None = 3) -> float | None:
    """Criterion 9 value: (LV pixels touching the 3x3-dilated background) / (LV bounding-box width in pixels).

    Pass: in [0.05, 1.5]. Not applicable (``None``, passes) when the map contains the LA label ``la``: the
    rule checks that an LV without atrium opens onto the background over a plausible length (the mitral
    valve), no more (an LV floating in background) and no less (an LV closed by the MYO). ``nan`` without LV.
    """
    label_map = np.asarray(label_map)
    if la is not None and np.any(label_map == la):
        return None
    lv_mask = label_map == lv
    if not lv_mask.any():
        return float("nan")
    touching = lv_mask & ndimage.binary_dilation(label_map == 0, structure=_EIGHT)
    cols = np.nonzero(lv_mask.any(axis=0))[0]
    return float(touching.sum()) / float(cols[-1] - cols[0] + 1)


# ------------------------------------------------------------------------------- criteria and reports
@dataclass(frozen=True)
class Criterion:
    """One validity rule: a value function and the bounds the value must lie in.

    :param name: identifier shown in reports (e.g. ``"lv_holes"``).
    :param measure: ``(label_map (H, W) int, spacing (row_mm, col_mm)) -> float | None``; ``None`` means
        "not applicable to this map" (the criterion passes), ``nan`` means "cannot be measured" (fails).
    :param low: smallest passing value (inclusive), a number or a function of the shape (H, W); None = no bound.
    :param high: largest passing value (inclusive), same forms as ``low``; None = no bound.
    :param description: one line for reports and docs.
    """

    name: str
    measure: MeasureFn
    low: float | Callable[[tuple[int, int]], float] | None = None
    high: float | Callable[[tuple[int, int]], float] | None = None
    description: str = ""

    def bounds(self, shape: tuple[int, int]) -> tuple[float | None, float | None]:
        """The numeric (low, high) bounds for an image of ``shape`` (H, W)."""
        low = self.low(shape) if callable(self.low) else self.low
        high = self.high(shape) if callable(self.high) else self.high
        return low, high

    def passes(self, value: float | None, shape: tuple[int, int]) -> bool:
        """Pass rule: ``None`` (not applicable) passes, ``nan`` fails, else ``low <= value <= high``."""
        if value is None:
            return True
        if math.isnan(value):
            return False
        low, high = self.bounds(shape)
        return (low is None or value >= low) and (high is None or value <= high)

    def threshold_text(self, shape: tuple[int, int]) -> str:
        """Human-readable pass rule, e.g. ``"<= 4.15"`` or ``"in [0.05, 1.5]"``."""
        low, high = self.bounds(shape)
        if low is not None and high is not None:
            return f"== {low:g}" if low == high else f"in [{low:g}, {high:g}]"
        if low is not None:
            return f">= {low:g}"
        if high is not None:
            return f"<= {high:g}"
        return "any"


@dataclass(frozen=True)
class CriterionResult:
    """Outcome of one criterion on one map.

    :param name: the criterion's name.
    :param value: measured value (``None`` = not applicable, ``nan`` = could not be measured).
    :param threshold: the pass rule as text (e.g. ``"<= 4.15"``).
    :param low: numeric lower bound (None if unbounded).
    :param high: numeric upper bound (None if unbounded).
    :param passed: whether the value satisfies the rule.
    :param error: the exception message when measuring raised (the criterion then fails), else None.
    """

    name: str
    value: float | None
    threshold: str
    low: float | None
    high: float | None
    passed: bool
    error: str | None = None


@dataclass
class AnatomyReport:
    """Per-criterion results of :func:`check_anatomy` on one (H, W) label map.

    :param results: one :class:`CriterionResult` per criterion, in evaluation order.
    :param criteria: name of the criterion set used (``"custom"`` for an explicit list).
    """

    results: list[CriterionResult] = field(default_factory=list)
    criteria: str = "echo"

    @property
    def valid(self) -> bool:
        """True when every criterion passed (and there was at least one)."""
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        """Names of the failed criteria, in evaluation order."""
        return [r.name for r in self.results if not r.passed]

    def __getitem__(self, name: str) -> CriterionResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no criterion {name!r} in this report; available: {', '.join(r.name for r in self.results)}")

    def to_dict(self) -> dict[str, dict]:
        """``{name: {"value", "threshold", "passed", "error"}}`` (JSON-friendly)."""
        return {r.name: {"value": r.value, "threshold": r.threshold, "passed": r.passed, "error": r.error}
                for r in self.results}

    def __str__(self) -> str:
        width = max((len(r.name) for r in self.results), default=4)
        lines = [f"anatomy ({self.criteria}): {'valid' if self.valid else 'INVALID'}"]
        for r in self.results:
            value = "n/a" if r.value is None else f"{r.value:.4g}"
            note = f"  ({r.error})" if r.error else ""
            lines.append(f"  {r.name:<{width}}  {value:>9}  {r.threshold:<16} {'pass' if r.passed else 'FAIL'}{note}")
        return "\n".join(lines)


def make_echo_criteria(lv: int = 1, myo: int = 2, la: int | None = 3) -> list[Criterion]:
    """The nine echo criteria of docs/method.md (ANATOMY) for the given label values, cheapest first.

    :param lv: label value of the LV cavity (default 1).
    :param myo: label value of the myocardium (default 2).
    :param la: label value of the left atrium (default 3); the frontier criterion is skipped on maps that
        contain it. None: always apply the frontier criterion.
    """
    return [
        Criterion("lv_not_empty", partial(lv_not_empty, lv=lv), low=1, description="LV not empty (LV pixels)"),
        Criterion("lv_one_piece", partial(lv_one_piece, lv=lv), high=0,
                  description="LV in one piece (pixels outside the largest 8-connected component)"),
        Criterion("myo_one_piece", partial(myo_one_piece, myo=myo), high=0,
                  description="MYO in one piece (pixels outside the largest 8-connected component)"),
        Criterion("lv_holes", partial(lv_holes, lv=lv), high=0, description="no holes in the LV (hole pixels)"),
        Criterion("epicardium_holes", partial(epicardium_holes, lv=lv, myo=myo), high=0,
                  description="no holes in LV u MYO (hole pixels)"),
        Criterion("lv_myo_gap", partial(lv_myo_gap, lv=lv, myo=myo), high=small_area,
                  description="background enclosed between LV and MYO, 4-connected (pixels) <= H*W/2^14"),
        Criterion("width_ratio", partial(width_ratio, lv=lv, myo=myo), high=WIDTH_RATIO_MAX,
                  description="LV / MYO pixels on the row through the centre of mass of LV u MYO"),
        Criterion("lv_frontier", partial(lv_frontier, lv=lv, la=la), low=FRONTIER_RANGE[0], high=FRONTIER_RANGE[1],
                  description="LV pixels touching background / LV bounding-box width (no LA in the map)"),
        Criterion("myo_thickness", partial(myo_thickness, myo=myo), low=MYO_THICKNESS_MIN,
                  description="erosions keeping MYO in one piece / max distance transform of MYO"),
    ]


# --------------------------------------------------------------------------------- generic criteria
def structure_not_empty(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, label: int) -> float:
    """Generic criterion value: pixels of structure ``label`` (pass: >= 1)."""
    return float(np.count_nonzero(np.asarray(label_map) == label))


def structure_one_piece(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, label: int) -> float:
    """Generic criterion value: pixels of ``label`` outside its largest 8-connected component (pass: 0)."""
    return pixels_outside_largest_component(np.asarray(label_map) == label)


def structure_holes(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0), *, label: int) -> float:
    """Generic criterion value: hole pixels of structure ``label`` (8-connected complement off the border; pass: 0)."""
    return float(holes(np.asarray(label_map) == label).sum())


def make_generic_criteria(structures: Mapping[str, int]) -> list[Criterion]:
    """Modality-agnostic set: each structure non-empty, in one piece, without holes.

    :param structures: structure name -> label value, e.g. ``{"liver": 1, "tumour": 2}``; criterion
        names are ``"{name}_not_empty"``, ``"{name}_one_piece"``, ``"{name}_holes"``.
    """
    out: list[Criterion] = []
    for name, label in structures.items():
        out += [
            Criterion(f"{name}_not_empty", partial(structure_not_empty, label=label), low=1,
                      description=f"{name} (label {label}) not empty"),
            Criterion(f"{name}_one_piece", partial(structure_one_piece, label=label), high=0,
                      description=f"{name} (label {label}) in one 8-connected piece"),
            Criterion(f"{name}_holes", partial(structure_holes, label=label), high=0,
                      description=f"no holes in {name} (label {label})"),
        ]
    return out


#: criterion set name -> criteria; "echo" = docs/method.md ANATOMY, "generic" = labels 1 and 2 non-empty,
#: one piece, no holes. Add sets with :func:`register_criteria`.
CRITERIA_SETS: dict[str, list[Criterion]] = {
    "echo": make_echo_criteria(),
    "generic": make_generic_criteria({"class_1": 1, "class_2": 2}),
}


def register_criteria(name: str, criteria: Sequence[Criterion], overwrite: bool = False) -> None:
    """Make a criterion set available by name (e.g. from a config's ``criteria`` key).

    :param name: the config name of the set.
    :param criteria: the :class:`Criterion` objects, in evaluation order (put cheap ones first: :func:`is_valid`
        stops at the first failure).
    :param overwrite: replace an existing set of that name (default False: refuse).
    """
    if not criteria or not all(isinstance(c, Criterion) for c in criteria):
        raise TypeError(f"criterion set {name!r} must be a non-empty sequence of Criterion objects")
    if name in CRITERIA_SETS and not overwrite:
        raise ValueError(f"criterion set {name!r} already exists; pass overwrite=True to replace it")
    CRITERIA_SETS[name] = list(criteria)


def get_criteria(criteria: str | os.PathLike | Sequence[Criterion]) -> list[Criterion]:
    """Resolve a set name (``"echo"``, ``"generic"``, or a registered one), the path of a calibrated-criteria
    YAML file (:mod:`reward.anatomy_calibration`), or pass an explicit list through."""
    if isinstance(criteria, os.PathLike) or (isinstance(criteria, str) and criteria.endswith((".yaml", ".yml"))):
        return criteria_from_file(criteria)
    if isinstance(criteria, str):
        if criteria not in CRITERIA_SETS:
            close = difflib.get_close_matches(criteria, CRITERIA_SETS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown criterion set {criteria!r}; expected one of "
                             f"{', '.join(sorted(CRITERIA_SETS))}{hint}")
        return CRITERIA_SETS[criteria]
    return list(criteria)


def criteria_from_file(path: str | os.PathLike) -> list[Criterion]:
    """The criteria of a calibrated-criteria YAML file: its ``base`` set with the stored ``bounds``
    (``{criterion: {"low": ..., "high": ...}}``); errors name the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"criteria file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
        base, bounds = doc["base"], doc["bounds"]
    except (yaml.YAMLError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: not a calibrated-criteria file (needs 'base' and 'bounds'; "
                         f"{type(exc).__name__}: {exc})") from None
    out = []
    for criterion in get_criteria(base):
        if criterion.name not in bounds:
            raise ValueError(f"{path}: no bounds for criterion {criterion.name!r} of set {base!r}")
        out.append(replace(criterion, low=bounds[criterion.name]["low"], high=bounds[criterion.name]["high"]))
    return out


def _as_map(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"expected one (H, W) label map, found an array of shape {label_map.shape}")
    return label_map


def _evaluate(criterion: Criterion, label_map: np.ndarray, spacing: Spacing) -> CriterionResult:
    shape = label_map.shape
    low, high = criterion.bounds(shape)
    try:
        value = criterion.measure(label_map, spacing)
        value = None if value is None else float(value)
        passed, error = criterion.passes(value, shape), None
    except Exception as exc:  # noqa: BLE001 - a map that breaks a measure is an invalid map, not a crash
        value, passed, error = float("nan"), False, f"{type(exc).__name__}: {exc}"
    return CriterionResult(criterion.name, value, criterion.threshold_text(shape), low, high, passed, error)


def check_anatomy(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0),
                  criteria: str | Sequence[Criterion] = "echo") -> AnatomyReport:
    """Evaluate every criterion of a set on one label map.

    :param label_map: (H, W) integer label map, rows apex -> base.
    :param spacing: pixel size (row_mm, col_mm); the echo criteria are in pixels and ignore it.
    :param criteria: set name from :data:`CRITERIA_SETS` or an explicit list of :class:`Criterion`.
    :return: :class:`AnatomyReport` with value, threshold and pass/fail per criterion.
    :raises ValueError: when ``label_map`` is not 2-D or the set name is unknown (caller errors).
    """
    label_map = _as_map(label_map)
    name = criteria if isinstance(criteria, str) and criteria in CRITERIA_SETS else (
        str(criteria) if isinstance(criteria, (str, os.PathLike)) else "custom")
    return AnatomyReport([_evaluate(c, label_map, spacing) for c in get_criteria(criteria)], criteria=name)


def is_valid(label_map: np.ndarray, spacing: Spacing = (1.0, 1.0),
             criteria: str | Sequence[Criterion] = "echo") -> bool:
    """True if ``label_map`` (H, W) passes every criterion; stops at the first failure (see :func:`check_anatomy`)."""
    label_map = _as_map(label_map)
    return all(_evaluate(c, label_map, spacing).passed for c in get_criteria(criteria))


def validity_batch(label_maps: np.ndarray, spacing: Spacing = (1.0, 1.0),
                   criteria: str | Sequence[Criterion] = "echo") -> np.ndarray:
    """:func:`is_valid` of each map of a batch.

    :param label_maps: (B, H, W) integer label maps (numpy, or a torch tensor, moved to CPU).
    :return: (B,) bool.
    """
    if hasattr(label_maps, "detach"):
        label_maps = label_maps.detach().cpu().numpy()
    label_maps = np.asarray(label_maps)
    if label_maps.ndim != 3:
        raise ValueError(f"expected a (B, H, W) batch of label maps, found an array of shape {label_maps.shape}")
    chosen = get_criteria(criteria)
    return np.fromiter((is_valid(m, spacing, chosen) for m in label_maps), dtype=bool, count=len(label_maps))


__all__ = [
    "AnatomyReport", "CRITERIA_SETS", "Criterion", "CriterionResult", "FRONTIER_RANGE", "MYO_THICKNESS_MIN",
    "WIDTH_RATIO_MAX", "check_anatomy", "criteria_from_file", "epicardium_holes", "fill_holes", "get_criteria", "holes", "is_valid",
    "largest_component", "lv_frontier", "lv_holes", "lv_myo_gap", "lv_not_empty", "lv_one_piece",
    "make_echo_criteria", "make_generic_criteria", "myo_one_piece", "myo_thickness",
    "pixels_outside_largest_component", "register_criteria", "small_area", "structure_holes",
    "structure_not_empty", "structure_one_piece", "validity_batch", "width_ratio",
]
