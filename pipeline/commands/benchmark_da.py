"""Domain-adaptation benchmark: source only, oracle, AdaBN, TENT, self-training, RL4Seg and its ablations.

Every method starts from the same source pretraining (one per seed) and is scored on the target test split
with the same network; results are mean +- std over seeds. Finished (method, seed) results are skipped, so
re-running the same command resumes an interrupted benchmark.

    python scripts/benchmark_da.py                                  # synthetic benchmark, seeds 0 1 2, all methods
    python scripts/benchmark_da.py --quick                          # CI smoke run (configs/quick.yaml, < 3 min)
    python scripts/benchmark_da.py --methods source_only adabn tent --seeds 0 1 2 3 4
    python scripts/benchmark_da.py --config configs/camus.yaml --results runs/bench_camus ppo.iterations=2
    python scripts/benchmark_da.py --suite held-out --results runs/heldout   # every held-out shift, then the mean

Overrides after --seeds / --methods need a ``--`` in between (``--methods tent -- ppo.iterations=2``).
Outputs in --results: results.md, results.csv (mean/std per method), per_seed.csv, results.png.
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import shlex
import sys
import time
from pathlib import Path

from pipeline.baselines import SelfTrainingConfig, TentConfig
from pipeline.benchmark_da import METHODS, SUITES, DABenchmark, summarize, write_suite_tables
from pipeline.config import CONFIG_DIR, ConfigError, apply_overrides, load_config


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rl4seg-benchmark-da", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="loop YAML config (default: configs/default.yaml; configs/quick.yaml with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (about 1 min on 1 CPU thread): configs/quick.yaml, seed 0, 1 RL4Seg "
                        "iteration, 2 self-training epochs per round; numbers are not meaningful")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), metavar="METHOD",
                        help=f"methods to run (default: all): {', '.join(METHODS)}")
    parser.add_argument("--results", default=None,
                        help="results folder (default runs/benchmark_da, or runs/benchmark_da_quick with --quick)")
    parser.add_argument("--tent-epochs", type=int, default=1, help="TENT passes over the target images (default 1)")
    parser.add_argument("--tent-lr", type=float, default=1e-3, help="TENT Adam learning rate (default 1e-3)")
    parser.add_argument("--st-epochs", type=int, default=None,
                        help="self-training epochs per round (default 5; --quick: 2); rounds = ppo.iterations")
    parser.add_argument("--suite", choices=list(SUITES), default=None,
                        help="run every method on every shift of a suite (docs/protocol.md): "
                             + "; ".join(f"{k}: {', '.join(v)}" for k, v in SUITES.items())
                             + ". Results per shift in RESULTS/<shift>/, the per-shift and mean table in "
                               "RESULTS/suite.md")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: write results.md / .csv / .png from the results already in --results "
                        "(the selected methods and seeds that have finished)")
    parser.add_argument("overrides", nargs="*", help="key=value loop-config overrides, e.g. ppo.iterations=2")
    args = parser.parse_args(argv)

    config_path = args.config or CONFIG_DIR / ("quick.yaml" if args.quick else "default.yaml")
    overrides = (["ppo.iterations=1"] if args.quick else []) + list(args.overrides)
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    methods = args.methods or list(METHODS)
    results = args.results or ("runs/benchmark_da_quick" if args.quick else "runs/benchmark_da")
    st_epochs = args.st_epochs or (2 if args.quick else 5)
    command = "python scripts/benchmark_da.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                      else sys.argv[1:]))
    t0 = time.time()
    shifts = SUITES[args.suite] if args.suite else [None]
    per_shift = {}
    for shift in shifts:
        try:
            shift_config = apply_overrides(config, [f"data.target.preset={shift}"]) if shift else config
            out = Path(results) / shift if shift else Path(results)
            bench = DABenchmark(shift_config, out, seeds=seeds, methods=methods,
                                tent_config=TentConfig(epochs=args.tent_epochs, lr=args.tent_lr),
                                self_training_config=SelfTrainingConfig(
                                    iterations=config.ppo.iterations, epochs=st_epochs,
                                    valid_dice_threshold=config.reward_dataset.valid_dice_threshold),
                                command=command.strip())
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if shift:
            print(f"[benchmark] {args.suite} suite, shift {shift}", flush=True)
        if args.table_only:
            rows = bench.write()
            missing = [f"{m} (seed {s})" for m in methods for s in seeds
                       if m not in bench.skipped and not bench.finished(m, s)]
            if missing:
                print(f"[benchmark] {out}: not in the table (not run yet): {', '.join(missing)}")
            if not rows and not shift:
                print(f"error: {results} holds no finished result of the selected methods and seeds",
                      file=sys.stderr)
                return 2
        else:
            rows = bench.run()
        per_shift[shift] = summarize(rows)
    if args.suite:
        print(write_suite_tables(per_shift, Path(results), args.suite, command.strip()))
    else:
        print((Path(results) / "results.md").read_text())
    print(f"[benchmark] {command.strip()}: {(time.time() - t0) / 60:.1f} min; results in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
