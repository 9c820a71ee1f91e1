"""The loop's report: one row per iteration, written as CSV and Markdown, printed, and plotted.

Columns (when available): iteration, target Dice LV / MYO / epicardium and their mean, Hausdorff
(mm), anatomical validity %, pseudo-labels accepted, reward samples, reward-net ECE before/after
temperature scaling, reward-Dice correlation, wall time; rows with ``test_time`` set are the same
iteration's actor after test-time optimisation (images optimised and made valid).
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.tables import markdown_table, rows_to_csv
from rl4seg_env.io import atomic_write_bytes, atomic_write_text

#: report columns, in display order, with their headers
COLUMNS: dict[str, str] = {
    "iteration": "iter",
    "model": "model",
    "dice_lv": "Dice LV",
    "dice_myo": "Dice MYO",
    "dice_epi": "Dice epi",
    "dice_mean": "Dice LV+MYO",
    "hd_lv": "HD LV (mm)",
    "hd_myo": "HD MYO (mm)",
    "hd_epi": "HD epi (mm)",
    "hd95_lv": "HD95 LV (mm)",
    "hd95_myo": "HD95 MYO (mm)",
    "hd95_epi": "HD95 epi (mm)",
    "masd_lv": "MASD LV (mm)",
    "masd_myo": "MASD MYO (mm)",
    "masd_epi": "MASD epi (mm)",
    "validity_pct": "valid %",
    "validity_paper_pct": "valid % (paper thresholds)",
    "images_seen": "target imgs",
    "accepted": "pseudo-labels",
    "n_samples": "reward samples",
    "ece_before": "ECE before T",
    "ece_after": "ECE after T",
    "temperature": "T",
    "reward_informative": "reward net informative",
    "reward_ece": "test ECE",
    "reward_correlation": "reward-Dice r",
    "selected_iteration": "selected iter",
    "sel_validity": "sel: valid % (target val)",
    "sel_agreement": "sel: agreement",
    "sel_confidence": "sel: confidence",
    "tto_optimised": "TTO imgs",
    "tto_made_valid": "TTO made valid",
    "minutes": "min",
}


#: the subset printed on the terminal (the files hold every column)
TERMINAL_COLUMNS = ("iteration", "model", "dice_lv", "dice_myo", "dice_epi", "dice_mean", "hd_epi", "validity_pct",
                    "accepted", "ece_after", "reward_ece", "reward_correlation", "minutes")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def present_columns(rows: Sequence[dict]) -> list[str]:
    return [c for c in COLUMNS if any(c in r for r in rows)]


def to_markdown(rows: Sequence[dict]) -> str:
    cols = present_columns(rows)
    return markdown_table([COLUMNS[c] for c in cols], [[_fmt(r.get(c)) for c in cols] for r in rows])


def write_report(rows: Sequence[dict], run_dir: str | Path, header: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``report.csv`` and ``report.md`` into ``run_dir`` (atomic); returns their paths.

    :param header: lines printed in ``report.md`` above the table (e.g. ``world size: 2 (gloo)``).
    """
    run_dir = Path(run_dir)
    cols = present_columns(rows)
    extra = sorted({k for r in rows for k in r} - set(cols))
    csv_path = atomic_write_text(run_dir / "report.csv", rows_to_csv(rows, cols + extra))
    lines = "".join(f"{line}\n\n" for line in header)
    md_path = atomic_write_text(run_dir / "report.md", "# RL4Seg run report\n\n" + lines + to_markdown(rows))
    return csv_path, md_path


def print_report(rows: Sequence[dict]) -> None:
    """Pretty table on the terminal (rich)."""
    cols = [c for c in present_columns(rows) if c in TERMINAL_COLUMNS]
    table = Table(title="RL4Seg report (target test split; all columns in report.md / report.csv)")
    for c in cols:
        table.add_column(COLUMNS[c], justify="right")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    Console(width=max(120, 12 * len(cols))).print(table)


def plot_metrics(rows: Sequence[dict], path: str | Path) -> Path:
    """Dice, validity and reward-net calibration per iteration (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the iterations of this run (source-only is iteration 0); baselines and the selected model are references
    ours = [r for r in rows if isinstance(r.get("iteration"), int)
            and (r.get("model") == "source-only" or str(r.get("model", "")).startswith("RL4Seg"))]
    loop_rows = [r for r in ours if not r.get("test_time")]
    tto_rows = [r for r in ours if r.get("test_time")]
    refs = [r for r in rows if not isinstance(r.get("iteration"), int) and not r.get("test_time")]
    it = [r["iteration"] for r in loop_rows]
    tto_it = [r["iteration"] for r in tto_rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("dice_lv", "LV"), ("dice_myo", "MYO"), ("dice_epi", "epi"), ("dice_mean", "LV+MYO")):
        axes[0].plot(it, [r.get(key, np.nan) for r in loop_rows], marker="o", label=label)
    if tto_rows:
        axes[0].plot(tto_it, [r.get("dice_mean", np.nan) for r in tto_rows], marker="s", ls="--", color="C3",
                     label="LV+MYO + TTO")
    axes[1].plot(it, [r.get("validity_pct", np.nan) for r in loop_rows], marker="o", color="C2", label="argmax")
    if tto_rows:
        axes[1].plot(tto_it, [r.get("validity_pct", np.nan) for r in tto_rows], marker="s", ls="--", color="C3",
                     label="+ TTO")
    # the references (oracle, baselines, the selected model) as dotted levels, named in the legends
    for k, r in enumerate(refs):
        style = {"ls": ":", "lw": 1.2, "color": f"C{4 + k % 6}", "label": str(r.get("model", ""))}
        if "dice_mean" in r:
            axes[0].axhline(r["dice_mean"], **{**style, "label": f"{style['label']} (LV+MYO)"})
        if "validity_pct" in r:
            axes[1].axhline(r["validity_pct"], **style)
    dice = [v for line in axes[0].get_lines() for v in np.ravel(line.get_ydata()) if np.isfinite(v)]
    low = max(0.0, np.floor((min(dice) if dice else 0.0) * 20) / 20 - 0.05)  # zoom on the values shown
    axes[0].set(title="target Dice", xlabel="iteration", ylim=(low, 1))
    axes[0].legend(fontsize=7)
    axes[1].set(title="anatomical validity (%)", xlabel="iteration", ylim=(0, 101))
    axes[1].legend(fontsize=7)
    for key, label in (("ece_before", "val ECE before T"), ("ece_after", "val ECE after T"),
                       ("reward_ece", "target test ECE"), ("reward_correlation", "reward-Dice r")):
        axes[2].plot(it, [r.get(key, np.nan) for r in loop_rows], marker="o", label=label)
    axes[2].set(title="reward network", xlabel="iteration")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        if it:
            ax.set_xticks(it)
    fig.tight_layout()
    return _save_fig(fig, path)


def plot_predictions(images: np.ndarray, preds: np.ndarray, reward_maps: np.ndarray | None, path: str | Path,
                     labels: np.ndarray | None = None, title: str = "") -> Path:
    """One row per image: image | prediction overlay | reward map (| ground truth). PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = len(images)
    ncols = 2 + (reward_maps is not None) + (labels is not None)
    fig, axes = plt.subplots(n, ncols, figsize=(2.4 * ncols, 2.4 * n), squeeze=False)
    cmap = ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.45), (0.2, 0.6, 1, 0.45), (1, 0.9, 0.2, 0.45)])
    for i in range(n):
        col = 0
        axes[i, col].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        axes[i, col].set_title("image" if i == 0 else "", fontsize=9)
        col += 1
        axes[i, col].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        axes[i, col].imshow(preds[i], cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        axes[i, col].set_title("prediction" if i == 0 else "", fontsize=9)
        if reward_maps is not None:
            col += 1
            im = axes[i, col].imshow(reward_maps[i], cmap="RdYlGn", vmin=0, vmax=1)
            axes[i, col].set_title("reward map" if i == 0 else "", fontsize=9)
        if labels is not None:
            col += 1
            axes[i, col].imshow(images[i], cmap="gray", vmin=0, vmax=1)
            axes[i, col].imshow(labels[i], cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
            axes[i, col].set_title("ground truth" if i == 0 else "", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    if reward_maps is not None:
        fig.colorbar(im, ax=axes[:, 2].tolist(), fraction=0.03)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_fig(fig, path)


def _save_fig(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
