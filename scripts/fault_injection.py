#!/usr/bin/env python
"""Kill the quick RL4Seg run at random moments (SIGKILL), resume it each time, and check what must hold.

    python scripts/fault_injection.py --kills 3 --seed 0 --out /tmp/faults

Runs, as subprocesses: one uninterrupted quick run (the reference), then one run killed ``--kills`` times at
random moments and resumed with ``rl4seg-train --resume`` until it finishes. Checks (printed, and written to
``OUT/summary.md``): every resume exits 0; the finished run has each report row once and one selected model;
no reward-sample shard twice; no temporary file of an interrupted write left; the lock is free at the end; and,
reported (not required), which report.csv fields differ from the reference run's (timing columns aside).
Exit status 1 when a required check fails.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

TIMING = {"minutes", "prepare_seconds", "seconds", "train_seconds", "tto_seconds", "ppo_seconds"}


def train(args: list[str], timeout: float | None = None) -> tuple[int, float]:
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.commands.train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9, time.time() - start
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return proc.returncode, time.time() - start


def report(run_dir: Path) -> list[dict]:
    with open(run_dir / "report.csv") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/fault_injection")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    common = ["--config", "quick", "progress=false", "evaluation.oracle=false", "num_threads=1"]
    reference = out / "reference"
    if not (reference / "report.csv").is_file():
        rc, seconds = train([*common, f"run_dir={reference}"])
        if rc != 0:
            print("the reference run failed", file=sys.stderr)
            return 1
        (out / "reference_seconds.txt").write_text(f"{seconds:.1f}\n")
    full = float((out / "reference_seconds.txt").read_text())
    run = out / f"killed_seed{args.seed}"
    lines, failures = [], []
    first = True
    kills_done, elapsed = 0, 0.0
    moments = sorted(rng.uniform(0.05, 0.95) * full for _ in range(args.kills))
    while True:
        command = [*common, f"run_dir={run}"] if first else ["--resume", str(run)]
        if kills_done < args.kills:
            # kill moments spread over the reference run's timeline; a resume starts about where the last
            # kill stopped, so each attempt runs until the next moment
            at = max(moments[kills_done] - elapsed, 2.0)
            rc, seconds = train(command, timeout=at)
            if rc == -9:
                kills_done += 1
                elapsed += seconds
                lines.append(f"- kill {kills_done}: SIGKILL after {seconds:.1f} s "
                             f"({'start' if first else 'resume'}; state: {state_summary(run)})")
                first = False
                continue
        else:
            rc, seconds = train(command)
        if rc != 0:
            failures.append(f"{'start' if first else 'resume'} exited {rc}")
        first = False
        break
    rows = report(run)
    keys = [(r["iteration"], r["model"]) for r in rows]
    checks = {
        "every resume exits 0": not failures,
        "each report row once": len(keys) == len(set(keys)),
        "one selected model": sum(r["iteration"] == "selected" for r in rows if "TTO" not in r["model"]) == 1,
        "no temporary file left": not [p for p in run.rglob("*.tmp")],
        "no shard twice": no_duplicate_shards(run),
        "lock free at the end": lock_free(run),
    }
    ref_rows = {(r["iteration"], r["model"]): r for r in report(reference)}
    differing = sorted({k for r in rows for k, v in r.items() if k not in TIMING
                        and (r["iteration"], r["model"]) in ref_rows and ref_rows[(r["iteration"], r["model"])].get(k) != v})
    lines += [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()]
    lines.append(f"- report.csv fields that differ from the uninterrupted run (timing aside): "
                 f"{len(differing)}" + (f" ({', '.join(differing[:12])}{' ...' if len(differing) > 12 else ''})"
                                        if differing else ""))
    text = (f"# Fault injection, seed {args.seed}: {kills_done} SIGKILL(s) of the quick run ({args.kills} asked; a "
            "run that finished before its kill time was not killed again)\n\n"
            f"`python scripts/fault_injection.py --kills {args.kills} --seed {args.seed}`; reference run "
            f"{full:.0f} s.\n\n" + "\n".join(lines) + "\n")
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(checks.values()) else 1


def state_summary(run: Path) -> str:
    try:
        state = json.loads((run / "state.json").read_text())
        return f"{state['completed_iterations']} iteration(s) done, {len(state.get('rows', []))} rows"
    except (OSError, ValueError, KeyError):
        return "no state yet"


def no_duplicate_shards(run: Path) -> bool:
    from reward.builder import RewardSampleStore

    store = RewardSampleStore(run / "reward_dataset")
    return len(store.load()["ids"]) == sum(store.report(i)["n_samples"] for i in store.completed_iterations())


def lock_free(run: Path) -> bool:
    from pipeline.run_dir import RunDirectory, RunLockedError

    dirs = RunDirectory(run)
    try:
        dirs.lock()
    except RunLockedError:
        return False
    dirs.unlock()
    return True


if __name__ == "__main__":
    sys.exit(main())
