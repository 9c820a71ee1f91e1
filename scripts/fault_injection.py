#!/usr/bin/env python
"""Kill the quick RL4Seg run at random moments (SIGKILL), resume it each time, and check what must hold.

    python scripts/fault_injection.py --kills 3 --seed 0 --out /tmp/faults

    python scripts/fault_injection.py --kills 3 --in-iteration 2    # every kill inside iteration 2

Runs, as subprocesses: one uninterrupted quick run (the reference, whose iteration ends are timed), then one
run killed ``--kills`` times at random moments and resumed with ``rl4seg-train --resume`` until it finishes.
The moments are drawn over the reference's whole timeline, or with ``--in-iteration I`` inside iteration I
(each attempt waits for iteration I - 1 to complete and for the process to hold the run's lock, then is
killed a random fraction of the reference's iteration I later). Checks (printed, and written to ``OUT/summary.md``): every resume exits 0; the finished
run has each report row once and one selected model; no reward-sample shard twice; no temporary file of an
interrupted write left; the lock is free at the end; report.csv equals the reference run's (timing columns
aside). Exit status 1 when a check fails.
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

def is_timing(column: str) -> bool:
    return column == "minutes" or column.endswith("seconds")


def completed_iterations(run: Path) -> int:
    try:
        return int(json.loads((run / "state.json").read_text())["completed_iterations"])
    except (OSError, ValueError, KeyError):
        return 0


def holds_lock(run: Path, pid: int) -> bool:
    try:
        return (run / ".lock").read_text().startswith(f"pid {pid},")
    except OSError:
        return False


def train(args: list[str], run: Path, kill_after: float | None = None, once_completed: int = 0,
          iteration_ends: dict[int, float] | None = None) -> tuple[int, float]:
    """One training process: ``(exit status or -9 when killed, seconds)``.

    :param kill_after: SIGKILL it this many seconds after ``once_completed`` iterations are complete and it
        holds the run's lock (i.e. is past its start-up; 0: after its start); ``None`` lets it finish.
    :param iteration_ends: filled with the seconds at which each iteration was seen complete.
    """
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.commands.train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    aim = start + kill_after if kill_after is not None and once_completed == 0 else None
    while proc.poll() is None:
        done = completed_iterations(run)
        if iteration_ends is not None and done > 0:
            iteration_ends.setdefault(done, time.time() - start)
        if aim is None and kill_after is not None and done >= once_completed and holds_lock(run, proc.pid):
            aim = time.time() + kill_after
        if aim is not None and time.time() >= aim:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9, time.time() - start
        time.sleep(0.01)
    err = proc.stderr.read()
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
    parser.add_argument("--in-iteration", type=int, default=None, metavar="I",
                        help="kill inside iteration I only (default: anywhere in the run)")
    parser.add_argument("--out", default="results/fault_injection")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    common = ["--config", "quick", "progress=false", "evaluation.oracle=false", "num_threads=1"]
    reference = out / "reference"
    timeline = out / "reference_timeline.json"
    if not (reference / "report.csv").is_file() or not timeline.is_file():
        ends: dict[int, float] = {}
        rc, seconds = train([*common, f"run_dir={reference}"], reference, iteration_ends=ends)
        if rc != 0:
            print("the reference run failed", file=sys.stderr)
            return 1
        timeline.write_text(json.dumps({"seconds": seconds, "iteration_ends": ends}))
    recorded = json.loads(timeline.read_text())
    full, ends = recorded["seconds"], {int(k): v for k, v in recorded["iteration_ends"].items()}
    target = args.in_iteration
    if target is not None and not (target in ends and (target == 1 or target - 1 in ends)):
        print(f"--in-iteration {target}: the reference run has iterations {sorted(ends)}", file=sys.stderr)
        return 2
    run = out / f"killed_seed{args.seed}"
    lines, failures = [], []
    first = True
    kills_done, elapsed = 0, 0.0
    moments = sorted(rng.uniform(0.05, 0.95) * full for _ in range(args.kills))
    if target is not None:  # offsets into iteration `target`, measured from the end of the one before
        length = ends[target] - ends.get(target - 1, 0.0)
        moments = [rng.uniform(0.05, 0.95) * length for _ in range(args.kills)]
    while True:
        command = [*common, f"run_dir={run}"] if first else ["--resume", str(run)]
        if kills_done < args.kills and (target is None or completed_iterations(run) < target):
            if target is None:
                # kill moments spread over the reference run's timeline; a resume starts about where the last
                # kill stopped, so each attempt runs until the next moment
                rc, seconds = train(command, run, kill_after=max(moments[kills_done] - elapsed, 2.0))
            else:
                rc, seconds = train(command, run, kill_after=moments[kills_done], once_completed=target - 1)
            if rc == -9:
                kills_done += 1
                elapsed += seconds
                into = "" if target is None else f", {moments[kills_done - 1]:.1f} s into iteration {target}"
                lines.append(f"- kill {kills_done}: SIGKILL after {seconds:.1f} s{into} "
                             f"({'start' if first else 'resume'}; state: {state_summary(run)})")
                first = False
                continue
        else:
            rc, seconds = train(command, run)
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
    differing = sorted({k for r in rows for k, v in r.items() if not is_timing(k)
                        and ref_rows.get((r["iteration"], r["model"]), {}).get(k) != v})
    checks["report.csv equals the uninterrupted run's (timing aside)"] = (
        not differing and sorted(ref_rows) == sorted(keys))
    lines += [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in checks.items()]
    if differing:
        lines.append(f"- report.csv fields that differ: {len(differing)} ({', '.join(differing[:12])}"
                     f"{' ...' if len(differing) > 12 else ''})")
    where = "" if target is None else f" --in-iteration {target}"
    text = (f"# Fault injection, seed {args.seed}: {kills_done} SIGKILL(s) of the quick run ({args.kills} asked; a "
            "run that finished before its kill time was not killed again)\n\n"
            f"`python scripts/fault_injection.py --kills {args.kills} --seed {args.seed}{where}`; reference run "
            f"{full:.0f} s, its iterations complete at " + ", ".join(f"{v:.0f} s" for _, v in sorted(ends.items()))
            + ".\n\n" + "\n".join(lines) + "\n")
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
