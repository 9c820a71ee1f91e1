#!/usr/bin/env python
"""Scaling figures (docs/scaling.md): peak memory of the reward-network training against the reward-set size.

    python scripts/bench_scaling.py                       # 2k, 8k and 32k samples at 64 px
    python scripts/bench_scaling.py --sizes 2000 8000 --image-size 128 --out /tmp/scaling

For each size, a reward-sample store of that many samples (random images and label maps, written once into
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
