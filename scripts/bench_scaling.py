#!/usr/bin/env python
"""Scaling figures (docs/scaling.md): per-phase wall time of the loop on 1 and 2 processes, and peak memory of
the reward-network training against the reward-set size.

    python scripts/bench_scaling.py                       # both parts: the quick config, then 2k/8k/32k samples
    python scripts/bench_scaling.py --part processes --config default --processes 1 2
    python scripts/bench_scaling.py --part memory --sizes 2000 8000 --image-size 128 --out /tmp/scaling

Processes: the loop runs once per process count (``python scripts/train_loop.py`` for 1, ``torchrun
--standalone --nproc_per_node N`` otherwise) on the same config and seed; each phase's wall time is the time
between its log line and the next phase's (one thread per process).

Memory:
for each size, a reward-sample store of that many samples (random images and label maps, written once into
``--out`` and reused) is trained on for one epoch in a fresh process, twice: reading the store lazily
(:class:`reward.builder.RewardSampleDataset`, the loop's way) and, for comparison, with every sample loaded
into memory first (``RewardSampleStore.load()``, the loop's way before). Each process prints its peak
resident memory (``ru_maxrss``) and wall time; the table ends with the ratio largest / smallest size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_store(folder: Path, n: int, size: int, shard_size: int = 512) -> None:
    """``n`` random samples in ``folder`` (skipped when already complete)."""
    from reward.builder import BuildReport, RewardSampleStore

    store = RewardSampleStore(folder, shard_size=shard_size)
    if store.is_complete(1) and len(store) == n:
        return
    if store.is_complete(1):
        store.discard(1)
    rng = np.random.default_rng(n)
    writer = store.begin(1)
    for k in range(n):
        writer.add(rng.random((size, size), dtype=np.float32), rng.integers(0, 3, (size, size)),
                   rng.integers(0, 3, (size, size)), "weight_noise", f"image_{k // 10:06d}")
    writer.commit(BuildReport(1, images_seen=n // 10, samples_by_kind={"weight_noise": n}))


def measure(folder: Path, mode: str) -> dict:
    """One epoch of reward-network training on ``folder`` in this process: peak RSS (MB) and seconds."""
    import resource

    import torch

    from reward.builder import RewardSampleDataset, RewardSampleStore
    from reward.training import RewardTrainConfig, train_reward_network

    torch.set_num_threads(1)
    store = RewardSampleStore(folder)
    start = time.perf_counter()
    if mode == "lazy":
        samples = RewardSampleDataset(store)
    else:  # everything in memory, as the loop read it before
        data = store.load()
        samples = [(torch.from_numpy(data["images"][i][None]), torch.from_numpy(data["preds"][i].astype(np.int64)),
                    torch.from_numpy((data["preds"][i] == data["references"][i]).astype(np.float32)))
                   for i in range(len(data["ids"]))]
    config = RewardTrainConfig(epochs=1, batch_size=64, channels=(4, 8), calibrate=False, progress=False)
    train_reward_network(samples, 3, config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": peak, "seconds": time.perf_counter() - start}


#: (log line start, the phase that runs from that line to the next phase's line)
PHASE_MARKERS = (
    (r"supervised pretraining", "source pretraining"),
    (r"target-supervised oracle", "oracle pretraining"),
    (r"shape auto-encoder", "shape auto-encoder"),
    (r"calibrated", "anatomy calibration"),
    (r"baseline: AdaBN", "AdaBN"),
    (r"baseline: TENT", "TENT, then iteration 1's reward set"),
    (r"iteration (\d+) done", "iteration {next}'s reward set (or the report)"),
    (r"iteration (\d+):", "iteration {0}: reward net, PPO, evaluation, TTO"),
    (r"domain gap closed|run directory", "final report"),
)


def time_phases(processes: int, config: str, overrides: list[str], out: Path) -> list[tuple[str, float]]:
    """``(phase, seconds)`` of one loop run on ``processes`` processes (from the times of its log lines)."""
    import os
    import re
    import shutil

    run_dir = out / f"loop_{processes}proc"
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["scripts/train_loop.py", "--config", config, f"run_dir={run_dir}", "progress=false", "num_threads=1",
            *overrides]
    command = ([sys.executable, *args] if processes == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: list[tuple[str, float]] = [("start-up (imports, data, run directory)", 0.0)]
    for line in proc.stdout:  # type: ignore[union-attr]
        text = re.sub(r"^\[rl4seg\] ", "", line.strip())
        for pattern, label in PHASE_MARKERS:
            match = re.match(pattern, text)
            if match:
                groups = match.groups()
                name = label.format(*groups, next=int(groups[0]) + 1 if groups else "")
                if not (marks and marks[-1][0] == name):
                    marks.append((name, time.perf_counter() - start))
                break
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode})")
    marks.append(("end", time.perf_counter() - start))
    return [(name, t1 - t0) for (name, t0), (_, t1) in zip(marks[:-1], marks[1:])] + [("total", marks[-1][1])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["processes", "memory", "both"], default="both")
    parser.add_argument("--config", default="quick", help="loop config of the processes part (default quick)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="loop-config overrides of the processes part")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=["lazy", "in-memory"], choices=["lazy", "in-memory"])
    parser.add_argument("--out", default="results/bench_scaling")
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("processes", "both"):
        timings = {p: time_phases(p, args.config, args.override, out) for p in args.processes}
        names = list(dict.fromkeys(name for t in timings.values() for name, _ in t))
        print(f"\nloop phases, config {args.config}, seconds (one thread per process):\n")
        print("| phase | " + " | ".join(f"{p} process{'es' if p > 1 else ''}" for p in args.processes) + " |")
        print("|---|" + "---:|" * len(args.processes))
        for name in names:
            cells = [next((f"{s:.1f}" for n, s in timings[p] if n == name), "-") for p in args.processes]
            print(f"| {name} | " + " | ".join(cells) + " |")
        if args.part == "processes":
            return 0
    rows = []
    for n in args.sizes:
        folder = out / f"store_{n}_{args.image_size}px"
        build_store(folder, n, args.image_size)
        for mode in args.modes:
            result = subprocess.run([sys.executable, __file__, "--measure", str(folder), mode], capture_output=True,
                                    text=True, check=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append((n, mode, figures["peak_rss_mb"], figures["seconds"]))
            print(f"{n:>7} samples  {mode:<9}  peak RSS {figures['peak_rss_mb']:7.0f} MB  "
                  f"{figures['seconds']:6.1f} s", flush=True)
    print(f"\nreward-network training, one epoch, {args.image_size} px:\n")
    print("| samples | reading | peak RSS (MB) | seconds |\n|---:|---|---:|---:|")
    for n, mode, rss, seconds in rows:
        print(f"| {n} | {mode} | {rss:.0f} | {seconds:.1f} |")
    for mode in args.modes:
        mine = [r for r in rows if r[1] == mode]
        if len(mine) > 1:
            print(f"\n{mode}: peak RSS at {mine[-1][0]} samples / at {mine[0][0]} samples = {mine[-1][2] / mine[0][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
