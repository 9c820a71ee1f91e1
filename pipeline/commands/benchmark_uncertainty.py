"""Compare the reward network's uncertainty with softmax entropy, MC dropout and test-time augmentation.

    python scripts/benchmark_uncertainty.py runs/default                     # last completed iteration
    python scripts/benchmark_uncertainty.py runs/default --iteration 2 --out results/uncertainty
    python scripts/benchmark_uncertainty.py runs/quick --quick               # a few images, few samples

Uses checkpoints/iter_XXX/actor.pt and reward_net.pt of an rl4seg-train run and the target test
split of the run's config.yaml (the images the loop's report is computed on). All methods predict the
errors of the same deterministic actor predictions; metrics are on foreground pixels (prediction or
ground truth not background). Writes into --out (default RUN_DIR/uncertainty_iter_XXX):
uncertainty.md, uncertainty.csv and reliability_<method>.png for each method.
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from agents.networks import load_unet
from pipeline.config import ConfigError, load_config
from pipeline.run_dir import RunDirectory
from pipeline.tables import markdown_table, rows_to_csv
from reward.network import LearnedReward, load_reward_net
from reward.uncertainty import plot_reliability_diagram
from reward.uncertainty_methods import uncertainty_methods_benchmark
from rl4seg_env.data import dataset_from_config
from rl4seg_env.data.base import load_images, load_labels
from rl4seg_env.io import atomic_write_text

#: table columns -> headers; ECE/ACE/MCE lower is better, MI and r higher is better
COLUMNS = {"method": "method", "ece": "ECE", "ace": "ACE", "mce": "MCE", "mi": "MI (nats)",
           "correlation": "confidence-Dice r", "mean_uncertainty": "mean uncertainty", "seconds": "seconds"}


def to_markdown(rows: list[dict], title: str, command: str) -> str:
    def fmt(v) -> str:
        if isinstance(v, str):
            return v
        return "-" if v is None or not np.isfinite(v) else (f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}")

    lines = [f"# {title}", "", f"`{command}`", "",
             markdown_table(list(COLUMNS.values()), [[fmt(r.get(k)) for k in COLUMNS] for r in rows]).rstrip("\n")]
    n_pixels, n_images = int(rows[0]["n_pixels"]), int(rows[0]["n_images"])
    lines += ["", f"{n_images} images, {n_pixels:,} foreground pixels. ECE/ACE/MCE: lower is better; "
              "MI (error vs binned uncertainty) and the per-image correlation of mean confidence with Dice: "
              "higher is better. MC dropout is post-hoc (dropout added at test time).", ""]
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory of scripts/train_loop.py")
    p.add_argument("--iteration", type=int, default=None, help="RL4Seg iteration (default: last completed)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/uncertainty_iter_XXX)")
    p.add_argument("--n", type=int, default=None, help="target test images (default: the run's evaluation.n_test)")
    p.add_argument("--mc-samples", type=int, default=10, help="MC-dropout passes (default 10)")
    p.add_argument("--mc-p", type=float, default=0.1, help="MC-dropout probability (default 0.1)")
    p.add_argument("--tta", type=int, default=8, help="TTA passes, identity included (default 8)")
    p.add_argument("--quick", action="store_true", help="8 images, 4 MC passes, 4 TTA passes (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)")
    p.add_argument("--no-source-calibration", action="store_true",
                   help="skip the extra row of the reward network with its temperature refitted on the labelled "
                        "source validation split (reward.network.fit_temperature_on_labelled)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    run_dir = Path(args.run_dir)
    dirs = RunDirectory(run_dir)
    try:
        config = load_config(dirs.config_path)
        iteration = args.iteration if args.iteration is not None else dirs.last_completed_iteration()
        actor, _ = load_unet(str(dirs.actor(iteration)), map_location=args.device)
        reward_model = LearnedReward(load_reward_net(dirs.reward_net(iteration), map_location=args.device)[0],
                                     device=args.device)
        c = config.data
        n = min(config.evaluation.n_test, c.target.n_test or config.evaluation.n_test)
        n = min(n, args.n or n, 8 if args.quick else n)
        ds = dataset_from_config(c.target, "test", c.image_size, True, c.keep_atrium, n)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mc_samples, tta = (min(args.mc_samples, 4), min(args.tta, 4)) if args.quick else (args.mc_samples, args.tta)

    images, _ = load_images(ds)
    labels = load_labels(ds)
    calibration_images = calibration_labels = None
    if not args.no_source_calibration:
        n_val = min(c.source.n_val or 100, 16 if args.quick else 10**9)
        src = dataset_from_config(c.source, "val", c.image_size, True, c.keep_atrium, n_val)
        calibration_images, _ = load_images(src)
        calibration_labels = load_labels(src)
    rows, accumulators = uncertainty_methods_benchmark(
        actor, images, labels, reward_model, ds.n_classes, mc_samples=mc_samples, mc_p=args.mc_p,
        tta_augmentations=tta, seed=args.seed, batch_size=args.batch_size, device=args.device,
        calibration_images=calibration_images, calibration_labels=calibration_labels)

    out = Path(args.out) if args.out else run_dir / f"uncertainty_iter_{iteration:03d}"
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/benchmark_uncertainty.py " + " ".join(sys.argv[1:] if argv is None else argv)
    title = f"Uncertainty methods, iteration {iteration}, target test ({c.target.dataset} {c.target.preset or ''})"
    md = to_markdown(rows, title, command)
    atomic_write_text(out / "uncertainty.md", md)
    atomic_write_text(out / "uncertainty.csv", rows_to_csv(rows, list(COLUMNS) + ["n_pixels", "n_images"]))
    for name, acc in accumulators.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower().split(",")[0]) + (
            "_source_calibrated" if "source images" in name else "")
        plot_reliability_diagram(acc, out / f"reliability_{slug}.png", title=f"{name} (iteration {iteration})")
    print(md)
    print(f"wrote {out}/uncertainty.md, uncertainty.csv and {len(accumulators)} reliability diagrams")
    return 0


if __name__ == "__main__":
    sys.exit(main())
