"""Speed of the procedural synthetic echo generator (milliseconds per image and pair).

Usage::

    python scripts/bench_synthetic.py [--sizes 64 128 256] [--n 50] [--presets source default_target]

Images are generated from scratch (``cache_size=0``), one process, one torch/BLAS thread.
"""
from __future__ import annotations

import argparse
import time

import torch


from rl4seg_env.data.synthetic import SyntheticEcho, available_presets


def time_generation(preset: str, size: int, n: int) -> float:
    """Mean seconds to generate one (image, label) pair of ``preset`` at ``size`` x ``size``."""
    ds = SyntheticEcho(preset, n_images=n, image_size=size, cache_size=0)
    start = time.perf_counter()
    for i in range(n):
        ds[i]
    return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--n", type=int, default=50, help="images per (preset, size) (default 50)")
    parser.add_argument("--presets", nargs="+", default=["source", "default_target"], choices=available_presets())
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| preset | size | ms / image | images / s |")
    print("|---|---:|---:|---:|")
    for preset in args.presets:
        for size in args.sizes:
            seconds = time_generation(preset, size, args.n)
            print(f"| {preset} | {size} | {1000 * seconds:.1f} | {1 / seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
