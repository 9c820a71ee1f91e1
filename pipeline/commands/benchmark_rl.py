"""The rl4seg env as an RL benchmark: PixelPPO vs stock SB3 PPO / A2C (and sb3-contrib TRPO) under one budget.

PixelPPO acts on ``RL4Seg-v0`` (full (H, W) label maps, batched env); stock algorithms act on
``RL4SegSmall-v0`` (a coarse action grid upsampled to H x W). All train on the same synthetic target
domain, image size, seeds and budget, with the rl_zoo3 hyper-parameter files of ``configs/zoo/`` (one ``<algorithm>.yml`` each), and are
scored during training on one fixed held-out test set (reward = pixel accuracy, mean foreground Dice).
Writes ``curves.csv``, ``summary.csv``, ``results.md``, ``curves.png`` and ``hyperparams.yml``.
See ``docs/benchmarking.md``.

    python scripts/benchmark_rl.py --budget-seconds 120 --seeds 0 1 2
    python scripts/benchmark_rl.py --quick                       # < 1 minute smoke run
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import os
import shlex
import sys

import torch

from pipeline.benchmark_rl import BenchmarkSettings, run_benchmark, summary_markdown, write_results
from pipeline.config import CONFIG_DIR
from pipeline.zoo import load_zoo_config
from rl4seg_env.levels import LEVELS
from rl4seg_env.data.synthetic import DEFAULT_TARGET

DEFAULT_HYPERPARAMS = str(CONFIG_DIR / "zoo")
#: --quick: a tiny step budget (one PPO update, 16 PixelPPO updates), reproducible; explicit options win
QUICK = {"budget_steps": 128, "budget_seconds": None, "seeds": [0], "eval_images": 16, "eval_points": 2,
         "output": os.path.join("results", "benchmark_rl_quick")}
FULL = {"budget_steps": None, "budget_seconds": 60.0, "seeds": [0, 1, 2], "eval_images": 32, "eval_points": 10,
        "output": os.path.join("results", "benchmark_rl")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rl4seg-benchmark-rl", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--hyperparams", default=DEFAULT_HYPERPARAMS,
                        help="folder of rl_zoo3 hyper-parameter files <algorithm>.yml (or one such file)")
    parser.add_argument("--algos", nargs="+", default=None,
                        help="algorithms to run (default: every file of --hyperparams whose package is installed)")
    parser.add_argument("--level", choices=list(LEVELS), default=None,
                        help="a named task level (rl4seg_env.levels): its preset, size, reward and each algorithm's "
                             "level entry (RL4Seg-<Level>-v0 / RL4SegSmall-<Level>-v0); replaces --preset/--size")
    parser.add_argument("--preset", default=DEFAULT_TARGET, help="synthetic target domain")
    parser.add_argument("--size", type=int, default=32, help="image size in pixels (H = W)")
    parser.add_argument("--budget-steps", type=int, default=None,
                        help="env steps per algorithm and seed (default: none; --quick 128)")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="training seconds per algorithm and seed (default 60 without a step budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick 0)")
    parser.add_argument("--eval-images", type=int, default=None, help="held-out test images (default 32; --quick 16)")
    parser.add_argument("--eval-points", type=int, default=None,
                        help="evaluations per run besides the first (default 10; --quick 2)")
    parser.add_argument("--device", default="cpu", help="torch device of every model")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--output", default=None,
                        help="results folder (default results/benchmark_rl, --quick results/benchmark_rl_quick)")
    parser.add_argument("--quick", action="store_true", help="tiny budget, one seed: a smoke run (< 1 minute)")
    parser.add_argument("--verbose", type=int, default=1, help="0 silent, 1 one line per run, 2 every evaluation")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    if args.budget_steps is not None or args.budget_seconds is not None:
        defaults = {**defaults, "budget_steps": None, "budget_seconds": None}  # an explicit budget replaces both
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


@cli
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = load_zoo_config(args.hyperparams, args.algos, skip_unavailable=True, level=args.level)
    data = {"preset": args.preset, "image_size": args.size}
    if args.level is not None:
        env = LEVELS[args.level]["env"]
        data = {"preset": env["preset"], "image_size": env["image_size"], "reward": env["reward"]}
    settings = BenchmarkSettings(**data, budget_steps=args.budget_steps, budget_seconds=args.budget_seconds,
                                 seeds=tuple(args.seeds), eval_images=args.eval_images, eval_points=args.eval_points,
                                 device=args.device)
    results = run_benchmark(entries, settings, verbose=args.verbose)
    command = "python scripts/benchmark_rl.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    paths = write_results(results, entries, settings, args.output, command=command.strip())
    print("\n" + summary_markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


if __name__ == "__main__":
    main()
