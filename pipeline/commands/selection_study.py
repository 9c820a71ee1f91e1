"""How well each label-free selection score picks the iteration a labelled oracle would pick.

    python scripts/selection_study.py RUN_DIR [RUN_DIR ...]

For every run (e.g. the default config on each development shift, docs/protocol.md), reads the report rows
of iterations 0 (the model RL started from, ``ppo.init``: source-only, AdaBN or TENT, as the loop's own
selection) .. N and, for each score of ``evaluation.selection``, the iteration it picks
and that iteration's target-test Dice LV+MYO, against the best iteration by that Dice (which needs labels:
this study is for tuning on development shifts only). Prints one Markdown table.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from pipeline.commands import cli
from pipeline.config import SELECTION_SCORES, load_config
from pipeline.loop import select, selection_candidates
from pipeline.run_dir import RunDirectory
from pipeline.tables import markdown_table


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories of rl4seg-train")
    args = parser.parse_args(argv)
    rows, regrets = [], {k: [] for k in SELECTION_SCORES}
    for run in args.runs:
        dirs = RunDirectory(run)
        try:
            state = dirs.load_state()
            config = load_config(dirs.config_path)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        name = "RL4Seg (ground-truth reward)" if config.oracle_reward else "RL4Seg"
        its = selection_candidates(state["rows"], config.ppo.init, name)
        if len(its) < 2:
            print(f"error: {run}: no completed iteration", file=sys.stderr)
            return 2
        best = max(its, key=lambda r: r["dice_mean"])
        cells = [run, " / ".join(f"{r['dice_mean']:.3f}" for r in its), f"{best['iteration']}"]
        for key in SELECTION_SCORES:
            pick = select(its, key)
            regrets[key].append(best["dice_mean"] - pick["dice_mean"])
            cells.append(f"{pick['iteration']} ({pick['dice_mean']:.3f})")
        rows.append(cells)
    rows.append(["mean Dice lost to the best iteration", "", ""]
                + [f"{np.mean(regrets[k]):.4f}" for k in SELECTION_SCORES])
    print(markdown_table(["run", "Dice LV+MYO, iterations 0..N", "best", *SELECTION_SCORES], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
