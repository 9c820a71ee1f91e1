"""How well each label-free selection score picks the iteration a labelled oracle would pick.

    python scripts/selection_study.py RUN_DIR [RUN_DIR ...]

For every run (e.g. the default config on each development shift, docs/protocol.md), reads the report rows
of iterations 0 (source model) .. N and, for each score of ``evaluation.selection``, the iteration it picks
and that iteration's target-test Dice LV+MYO, against the best iteration by that Dice (which needs labels:
this study is for tuning on development shifts only). Prints one Markdown table.
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import sys

import numpy as np

from pipeline.config import SELECTION_SCORES
from pipeline.run_dir import RunDirectory
from pipeline.tables import markdown_table


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories of rl4seg-train")
    args = parser.parse_args(argv)
    rows, regrets = [], {k: [] for k in SELECTION_SCORES}
    for run in args.runs:
        try:
            state = RunDirectory(run).load_state()
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        its = [r for r in state["rows"] if isinstance(r.get("iteration"), int) and not r.get("test_time")
               and (r["model"] == "source-only" or r["model"].startswith("RL4Seg"))]
        if len(its) < 2:
            print(f"error: {run}: no completed iteration", file=sys.stderr)
            return 2
        best = max(its, key=lambda r: r["dice_mean"])
        cells = [run, " / ".join(f"{r['dice_mean']:.3f}" for r in its), f"{best['iteration']}"]
        for key in SELECTION_SCORES:
            if key == "last":
                pick = its[-1]
            else:
                scored = [r for r in its if np.isfinite(r.get(f"sel_{key}", np.nan))]
                pick = max(scored, key=lambda r: (r[f"sel_{key}"], r["iteration"]))
            regrets[key].append(best["dice_mean"] - pick["dice_mean"])
            cells.append(f"{pick['iteration']} ({pick['dice_mean']:.3f})")
        rows.append(cells)
    rows.append(["mean Dice lost to the best iteration", "", ""]
                + [f"{np.mean(regrets[k]):.4f}" for k in SELECTION_SCORES])
    print(markdown_table(["run", "Dice LV+MYO, iterations 0..N", "best", *SELECTION_SCORES], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
