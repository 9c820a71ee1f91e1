"""How right are the labels a run's reward network trained on? An audit of the reward set against the target labels.

    python scripts/reward_audit.py RUN_DIR [--iteration I ...] [--csv FILE] [--plot FILE.png]

Every reward sample ``(image, pred, reference, kind)`` teaches the reward network that the pixels where ``pred``
differs from ``reference`` are wrong and the others right. The builder makes the references without labels (the
actor's accepted predictions, their corrections), so some of what it teaches is false. This tool reads the stored
samples of the run's completed iterations (``reward_dataset/iter_XXX``; the run directory is only read), finds each
target sample's image among the target *training* labels by its id, and reports per iteration and sample kind:

- ``samples``, and ``marked wrong / sample``: pixels per sample taught as wrong (``pred != reference``);
- ``precision``: the fraction of those pixels that are truly wrong (``pred != label``); 0.5 teaches no direction;
- ``false right / sample``: pixels per sample taught as right (``pred == reference``) that are truly wrong;
- ``Dice ref`` and ``Dice pred``: mean Dice LV+MYO (the run's foreground classes) of the reference and of the
  prediction against the label.

``--plot`` draws the precision and the truly wrong pixels taught as right of each kind, one bar per iteration.
``source`` samples (labelled source images) are exact by construction and are left out. It reads target labels, so
it is a tool for development shifts (docs/protocol.md).
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.commands import cli
from pipeline.config import load_config
from pipeline.run_dir import RunDirectory
from pipeline.tables import markdown_table
from reward.builder import SAMPLE_KINDS, RewardSampleStore
from rl4seg_env.data import dataset_from_config
from rl4seg_env.data.base import labels_by_id
from rl4seg_env.metrics import dice_per_class

COLUMNS = ("iteration", "kind", "samples", "marked wrong / sample", "precision", "false right / sample", "Dice ref",
           "Dice pred")


def audit_iteration(store: RewardSampleStore, iteration: int, labels: dict[str, np.ndarray], n_classes: int
                    ) -> list[dict]:
    """One row per sample kind of ``iteration`` (in :data:`reward.builder.SAMPLE_KINDS` order, ``source`` left
    out): the figures of the module docstring. ``labels`` maps target image ids to their (H, W) label maps."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for shard in store.shards([iteration]):
        with np.load(shard, allow_pickle=False) as z:
            preds, refs, kinds, ids = z["preds"], z["references"], z["kinds"], z["ids"]
        for pred, ref, kind, sid in zip(preds, refs, kinds, ids):
            kind, sid = str(kind), str(sid)
            if kind == "source":
                continue
            if sid not in labels:
                raise ValueError(f"{shard}: sample id {sid!r} is not an image of the run's target training set "
                                 "(was the run's data config changed after it was built?)")
            label = labels[sid]
            if label.shape != pred.shape:
                raise ValueError(f"{shard}: sample {sid!r} is {pred.shape}, its label {label.shape}")
            marked, wrong = pred != ref, pred != label
            s = sums[kind]
            s["samples"] += 1
            s["marked"] += marked.sum()
            s["marked_truly_wrong"] += (marked & wrong).sum()
            s["false_right"] += (~marked & wrong).sum()
            s["dice_ref"] += dice_per_class(ref[None], label[None], n_classes).mean()
            s["dice_pred"] += dice_per_class(pred[None], label[None], n_classes).mean()
    rows = []
    for kind in SAMPLE_KINDS:
        if kind not in sums:
            continue
        s, n = sums[kind], sums[kind]["samples"]
        rows.append({"iteration": iteration, "kind": kind, "samples": int(n), "marked_wrong_per_sample": s["marked"] / n,
                     "precision": s["marked_truly_wrong"] / s["marked"] if s["marked"] else float("nan"),
                     "false_right_per_sample": s["false_right"] / n, "dice_ref": s["dice_ref"] / n,
                     "dice_pred": s["dice_pred"] / n})
    return rows


def plot_audit(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """PNG of :func:`audit_iteration`'s rows: per sample kind, the precision of the pixels taught as wrong (left; the
    dashed line is 0.5, no direction) and the truly wrong pixels taught as right per sample (right), one bar per
    iteration."""
    import io

    from matplotlib.figure import Figure

    from rl4seg_env.io import atomic_write_bytes

    kinds = [k for k in SAMPLE_KINDS if any(r["kind"] == k for r in rows)]
    iterations = sorted({r["iteration"] for r in rows})
    width = 0.8 / len(iterations)
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    for j, it in enumerate(iterations):
        by_kind = {r["kind"]: r for r in rows if r["iteration"] == it}
        x = np.arange(len(kinds)) + (j - (len(iterations) - 1) / 2) * width
        for ax, key in ((left, "precision"), (right, "false_right_per_sample")):
            values = [by_kind[k][key] if k in by_kind else np.nan for k in kinds]
            ax.bar(x, values, width, color=f"C{j}", label=f"iteration {it}")
    left.axhline(0.5, color="k", ls="--", lw=0.8)
    left.set(ylim=(0, 1), ylabel="fraction of pixels taught as wrong\nthat are wrong (precision)")
    right.set(ylabel="wrong pixels taught as right\nper sample")
    for ax in (left, right):
        ax.set_xticks(np.arange(len(kinds)), kinds, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    left.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory of rl4seg-train with a built reward set")
    parser.add_argument("--iteration", type=int, nargs="+", default=None,
                        help="iterations to audit (default: every completed one)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the audit into this PNG file")
    args = parser.parse_args(argv)
    dirs = RunDirectory(args.run)
    dirs.require_run()
    config = load_config(dirs.config_path)
    store = RewardSampleStore(dirs.reward_dataset) if dirs.reward_dataset.is_dir() else None
    done = store.completed_iterations() if store is not None else []
    iterations = done if args.iteration is None else args.iteration
    missing = sorted(set(iterations) - set(done))
    if not iterations or missing:
        raise FileNotFoundError(f"{dirs.reward_dataset}: no completed reward set for iteration(s) "
                                f"{missing or 'any'} (completed: {done or 'none'})")
    d = config.data
    target = dataset_from_config(d.target, "train", d.image_size, True, d.keep_atrium)  # reads target labels
    labels = labels_by_id(target)
    rows = [row for it in iterations for row in audit_iteration(store, it, labels, target.n_classes)]
    print(markdown_table(list(COLUMNS), [
        [r["iteration"], r["kind"], r["samples"], f"{r['marked_wrong_per_sample']:.1f}", f"{r['precision']:.3f}",
         f"{r['false_right_per_sample']:.1f}", f"{r['dice_ref']:.4f}", f"{r['dice_pred']:.4f}"] for r in rows]))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot is not None:
        print(f"[reward_audit] {plot_audit(rows, args.plot, title=str(dirs.root))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
