"""Anatomical criteria fitted to a labelled source domain at the working resolution.

The paper's echo thresholds were fitted by its authors to CAMUS label maps at 256 px. Other labelling
conventions or a smaller working size make valid ground truth fail them (a 4-pixel myocardium breaks the
erosion criterion at one thin spot), and then RL4Seg accepts no pseudo-label and starves. Calibration
measures every criterion on the source label maps and loosens a bound *only when needed*, and only as
far as needed for ``quantile`` of the source maps to pass it (default 99%): a bound the source already
satisfies is kept as it is, so clearly broken maps (two LV pieces, holes, a 1-px myocardium) still fail.
Only source labels are read; the target domain is never looked at.

    >>> criteria, report = calibrate_criteria(source_label_maps, base="echo")
    >>> report.pass_before, report.pass_after      # fraction of source maps valid before / after
    >>> save_calibrated_criteria(report, "criteria.yaml")
    >>> is_valid(label_map, criteria="criteria.yaml")  # reward.anatomy reads the file
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reward.anatomy import Criterion, Spacing, get_criteria, is_valid
from rl4seg_env.io import atomic_write_text

#: fraction of source label maps each calibrated criterion must pass
DEFAULT_QUANTILE = 0.99


@dataclasses.dataclass
class CalibrationReport:
    """What :func:`calibrate_criteria` did.

    :param base: the criterion set that was calibrated (e.g. ``"echo"``).
    :param image_size: (H, W) of the label maps it was fitted on (pixel criteria depend on it).
    :param n_maps: source label maps measured.
    :param quantile: fraction of maps each criterion must pass.
    :param pass_before: fraction of maps valid under the base thresholds.
    :param pass_after: fraction valid under the calibrated ones.
    :param bounds: ``{criterion: {"low", "high", "base_low", "base_high", "pass_before", "pass_after"}}``.
    """

    base: str
    image_size: tuple[int, int]
    n_maps: int
    quantile: float
    pass_before: float
    pass_after: float
    bounds: dict[str, dict[str, Any]]

    def changed(self) -> list[str]:
        """Names of the criteria whose bounds were loosened."""
        return [name for name, b in self.bounds.items() if (b["low"], b["high"]) != (b["base_low"], b["base_high"])]

    def summary(self) -> str:
        lines = [f"calibrated {self.base} criteria on {self.n_maps} source label maps at "
                 f"{self.image_size[0]}x{self.image_size[1]} px (each criterion passed by >= "
                 f"{100 * self.quantile:g}% of them):"]
        for name, b in self.bounds.items():
            moved = "" if name not in self.changed() else \
                f"  (was {_text(b['base_low'], b['base_high'])}; {100 * b['pass_before']:.1f}% passed)"
            lines.append(f"  {name:<17} {_text(b['low'], b['high']):<20}{moved}")
        lines.append(f"source labels passing: before {100 * self.pass_before:.1f}%, after {100 * self.pass_after:.1f}%")
        return "\n".join(lines)


def _text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low:.4g}, {high:.4g}]"
    return f">= {low:.4g}" if low is not None else (f"<= {high:.4g}" if high is not None else "any")


def _measure(criterion: Criterion, label_map: np.ndarray, spacing: Spacing) -> float | None:
    try:
        value = criterion.measure(label_map, spacing)
    except Exception:  # noqa: BLE001 - a map that breaks a measure fails the criterion, as in reward.anatomy
        return math.nan
    return None if value is None else float(value)


def calibrate_criteria(label_maps: Sequence[np.ndarray] | np.ndarray, spacings: Sequence[Spacing] | None = None,
                       base: str | Sequence[Criterion] = "echo", quantile: float = DEFAULT_QUANTILE
                       ) -> tuple[list[Criterion], CalibrationReport]:
    """Fit the bounds of a criterion set to labelled (source) maps (module docstring).

    For each criterion, over the maps where it applies: when fewer than ``quantile`` of them pass the base
    bound, a ``high`` bound is raised to the ``quantile`` quantile of the values and a ``low`` bound lowered
    to the ``1 - quantile`` quantile; otherwise the base bound is kept. Values that cannot be measured
    (``nan``) keep failing.

    :param label_maps: (N, H, W) integer label maps of one size, rows apex -> base.
    :param spacings: per-map (row_mm, col_mm) (default 1 mm).
    :param base: the set to calibrate (name or list).
    :param quantile: fraction in (0.5, 1] of maps each criterion must pass.
    :return: the calibrated criteria (same names and order) and a :class:`CalibrationReport`.
    """
    if not 0.5 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0.5, 1], got {quantile}")
    maps = [np.asarray(m) for m in label_maps]
    if not maps:
        raise ValueError("calibrate_criteria needs at least one label map")
    shape = maps[0].shape
    if any(m.shape != shape or m.ndim != 2 for m in maps):
        raise ValueError(f"label maps must all be (H, W) of one size; found {sorted({m.shape for m in maps})}")
    spacings = [(1.0, 1.0)] * len(maps) if spacings is None else list(spacings)
    base_criteria = get_criteria(base)
    calibrated, bounds = [], {}
    for criterion in base_criteria:
        values = [_measure(criterion, m, s) for m, s in zip(maps, spacings)]
        applicable = np.array([v for v in values if v is not None], dtype=float)
        base_low, base_high = criterion.bounds(shape)
        low, high = base_low, base_high
        finite = applicable[np.isfinite(applicable)]
        passing = [criterion.passes(v, shape) for v in values]
        before = float(np.mean(passing))
        if before < quantile and len(finite):
            if high is not None:
                high = max(high, float(np.quantile(finite, quantile, method="higher")))
            if low is not None:
                q = float(np.quantile(finite, 1.0 - quantile, method="lower"))
                if q <= 0 < low:
                    # zero would accept the degenerate value (a 1-px myocardium breaks at the first erosion:
                    # ratio 0): stop at the smallest positive source value, so such maps keep failing
                    positive = finite[finite > 0]
                    q = float(positive.min()) if len(positive) else low
                low = min(low, q)
        fitted = dataclasses.replace(criterion, low=low, high=high)
        calibrated.append(fitted)
        bounds[criterion.name] = {"low": low, "high": high, "base_low": base_low, "base_high": base_high,
                                  "pass_before": before,
                                  "pass_after": float(np.mean([fitted.passes(v, shape) for v in values]))}
    pass_before = float(np.mean([is_valid(m, s, base_criteria) for m, s in zip(maps, spacings)]))
    pass_after = float(np.mean([is_valid(m, s, calibrated) for m, s in zip(maps, spacings)]))
    name = base if isinstance(base, str) else "custom"
    return calibrated, CalibrationReport(name, tuple(int(v) for v in shape), len(maps), quantile, pass_before,
                                         pass_after, bounds)


def save_calibrated_criteria(report: CalibrationReport, path: str | os.PathLike) -> Path:
    """Write the calibration as YAML (the base set's name and every criterion's bounds)."""
    doc = dataclasses.asdict(report)
    doc["image_size"] = list(report.image_size)
    return atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def load_calibration(path: str | os.PathLike) -> CalibrationReport:
    """Read a file written by :func:`save_calibrated_criteria` (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibrated criteria not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
        report = CalibrationReport(**{**doc, "image_size": tuple(doc["image_size"])})
        get_criteria(report.base)
    except (yaml.YAMLError, TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a calibrated-criteria file ({type(exc).__name__}: {exc})") from None
    return report


__all__ = ["CalibrationReport", "DEFAULT_QUANTILE", "calibrate_criteria", "load_calibration",
           "save_calibrated_criteria"]
