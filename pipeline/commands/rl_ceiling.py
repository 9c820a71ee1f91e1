"""The ceiling of the RL step: PixelPPO with the ground-truth reward, scored on target test labels as it trains.

    python scripts/rl_ceiling.py RUN_DIR [--iterations 3] [--every 8] [--csv out.csv] [key=value ...]

Starts from the actor a finished (or running) ``rl4seg-train`` run starts RL from (``ppo.init``: its TENT, AdaBN
or source checkpoint), runs the run's PPO schedule (``ppo`` section: updates per iteration, per-iteration KL and
entropy coefficients and rollout batch, shrink-and-perturb, target normalisation) with the pixel-accuracy reward
against the target *training labels* instead of a learned reward, no pseudo-label anchors, and prints after every
``--every`` updates (and after each step that changes the actor outside PPO: shrink-and-perturb, re-estimated
batch-norm statistics) the Dice LV+MYO, validity and myocardial area / false positives / false negatives per
image on the first ``--n-test`` target test images.

It reads target labels, so it is a diagnostic for development shifts (docs/protocol.md): with a perfect reward,
how far can this PPO budget take the actor, and which step of an iteration moves it where? ``key=value``
overrides change the run's config for this study only (e.g. ``ppo.dual_clip=null ppo.perturb_sigma=0.01``;
``ppo.readapt_norm_stats=true`` re-estimates the statistics after every iteration, the legacy loop). The
run directory is only read (its lock is not taken).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

from agents.networks import predict, reestimate_norm_statistics, resolve_device
from agents.vec_env import make_sb3_vec_env
from pipeline.commands import cli
from pipeline.config import load_config
from pipeline.evaluation import evaluate_predictions
from pipeline.loop import make_pixel_ppo
from pipeline.run_dir import RunDirectory
from reward.anatomy import get_criteria
from rl4seg_env.data import dataset_from_config
from rl4seg_env.data.base import load_images, load_labels
from rl4seg_env.metrics import ECHO_STRUCTURES

COLUMNS = ("iteration", "updates", "step", "dice_mean", "dice_lv", "dice_myo", "validity_pct", "myo_area",
           "myo_area_labels", "myo_false_pos", "myo_false_neg", "seconds")


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory of rl4seg-train (its config.yaml and starting checkpoint)")
    parser.add_argument("--iterations", type=int, default=None, help="RL iterations (default: the run's ppo.iterations)")
    parser.add_argument("--every", type=int, default=8, help="score the actor every N PPO updates (default 8)")
    parser.add_argument("--n-test", type=int, default=100, help="target test images scored (default 100)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the run's config, e.g. ppo.dual_clip=null")
    args = parser.parse_intermixed_args(argv)

    dirs = RunDirectory(args.run)
    config = load_config(dirs.config_path, args.overrides)
    p = config.ppo
    iterations = p.iterations if args.iterations is None else args.iterations
    if iterations < 1 or args.every < 1 or args.n_test < 1:
        raise ValueError("--iterations, --every and --n-test must be >= 1")
    start = dirs.source_actor if p.init == "source" else dirs.baseline_actor(p.init)
    if not start.is_file():
        raise FileNotFoundError(f"{start}: the run has no starting actor for ppo.init={p.init} yet; run rl4seg-train")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)

    d = config.data
    train = dataset_from_config(d.target, "train", d.image_size, True, d.keep_atrium, None)  # target labels
    test = dataset_from_config(d.target, "test", d.image_size, True, d.keep_atrium, args.n_test)
    test_images, _ = load_images(test)
    test_labels = load_labels(test)
    criteria = get_criteria(dirs.calibrated_criteria if config.reward_dataset.criteria == "calibrated"
                            and dirs.calibrated_criteria.is_file() else "echo")
    myo = ECHO_STRUCTURES["myo"][0]
    per = min(config.reward_dataset.images_per_iteration, len(train))

    env = make_sb3_vec_env(num_envs=p.batch_size_base, dataset=train, reward="accuracy")
    env.seed(config.seed + 1)
    model = make_pixel_ppo(config, env, start, device)
    model.use_pseudo_labels = False
    rows: list[dict] = []
    t0 = time.time()

    def score(iteration: int, updates: int, step: str) -> None:
        preds = predict(model.policy.actor, test_images, config.evaluation.batch_size, device)
        summary = evaluate_predictions(preds, test, images=test_images, criteria=criteria).summary
        row = {"iteration": iteration, "updates": updates, "step": step,
               **{k: summary[k] for k in ("dice_mean", "dice_lv", "dice_myo", "validity_pct")},
               "myo_area": float((preds == myo).sum((1, 2)).mean()),
               "myo_area_labels": float((test_labels == myo).sum((1, 2)).mean()),
               "myo_false_pos": float(((preds == myo) & (test_labels != myo)).sum((1, 2)).mean()),
               "myo_false_neg": float(((preds != myo) & (test_labels == myo)).sum((1, 2)).mean()),
               "seconds": time.time() - t0}
        rows.append(row)
        print(f"iteration {iteration} update {updates:3d} {step:28s} Dice LV+MYO {row['dice_mean']:.4f}  "
              f"valid {row['validity_pct']:5.1f}%  MYO area {row['myo_area']:6.1f} (labels {row['myo_area_labels']:.1f})"
              f"  FP {row['myo_false_pos']:5.1f}  FN {row['myo_false_neg']:5.1f}", flush=True)

    def iteration_images(i: int) -> torch.Tensor:
        idx = [k % len(train) for k in range((i - 1) * per, i * per)]
        return torch.as_tensor(np.stack([train[k].image for k in idx]).astype(np.float32)[:, None], device=device)

    if p.adapt_norm_stats:
        images = iteration_images(1)
        for net in (model.policy.actor, model.policy.reference_policy):
            reestimate_norm_statistics(net, images)
    score(0, 0, "start")
    for i in range(1, iterations + 1):
        env.env_method("set_active_indices", list(range(min(i * per, len(train)))))
        if p.apply(model, i, iteration_images(i) if i > 1 and p.perturbs else None):
            score(i, 0, "after shrink-perturb")
        done = 0
        while done < p.updates_per_iteration:
            block = min(args.every, p.updates_per_iteration - done)
            model.learn(block * model.n_steps * model.n_envs, reset_num_timesteps=False)
            done += block
            score(i, done, "PPO")
        if p.adapt_norm_stats and p.readapt_norm_stats:  # the loop's rule (agents.callbacks)
            reestimate_norm_statistics(model.policy.actor, iteration_images(i))
            score(i, done, "re-estimated statistics")
    env.close()
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
