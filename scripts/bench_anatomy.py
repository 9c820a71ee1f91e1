"""Throughput of the anatomical validity checks and the morphological corrector (masks per second).

Usage::

    python scripts/bench_anatomy.py [--sizes 128 256] [--n 50] [--criteria echo]

Valid masks are synthetic label maps (``rl4seg_env.data.synthetic.SyntheticEcho`` "source" preset when it is
available, else ellipse toys); invalid masks are the same maps damaged by
:func:`reward.correctors.corrupt_label_maps`, keeping those that fail. Timings are single-process CPU.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


from reward.anatomy import check_anatomy, is_valid
from reward.correctors import corrupt_label_maps, morphological_correction


def ellipse_masks(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Fallback toys: LV ellipse (1) in a MYO band (2) open at the base, rows apex -> base."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:size, :size] / size
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.5), rng.uniform(0.4, 0.6)
        a, b, t = rng.uniform(0.2, 0.3), rng.uniform(0.1, 0.16), rng.uniform(0.06, 0.1)
        keep = r <= cy + 0.62 * a
        out[i][(((r - cy) / (a + t)) ** 2 + ((c - cx) / (b + t)) ** 2 <= 1) & keep] = 2
        out[i][(((r - cy) / a) ** 2 + ((c - cx) / b) ** 2 <= 1) & keep] = 1
    return out


def source_masks(n: int, size: int) -> tuple[np.ndarray, str]:
    try:
        from rl4seg_env.data.synthetic import SyntheticEcho
    except ImportError:
        return ellipse_masks(n, size), "ellipse toys"
    ds = SyntheticEcho("source", split="train", n_images=n, image_size=size)
    return np.stack([ds[i].label for i in range(n)]), "SyntheticEcho source labels"


def rate(fn, maps: np.ndarray) -> float:
    start = time.perf_counter()
    for m in maps:
        fn(m)
    return len(maps) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="image sizes in pixels")
    parser.add_argument("--n", type=int, default=50, help="masks per kind and size")
    parser.add_argument("--criteria", default="echo", help="criterion set name")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print(f"{'size':>5} {'masks':<9} {'is_valid/s':>11} {'check_anatomy/s':>16} {'morph_correct/s':>16}  source")
    for size in args.sizes:
        valid, source = source_masks(args.n, size)
        valid = valid[[is_valid(m, criteria=args.criteria) for m in valid]]
        damaged = corrupt_label_maps(torch.as_tensor(np.concatenate([valid, valid])), 3,
                                     torch.Generator().manual_seed(0), p=0.5).numpy().astype(np.uint8)
        invalid = damaged[[not is_valid(m, criteria=args.criteria) for m in damaged]][: args.n]
        for kind, maps in (("valid", valid), ("invalid", invalid)):
            print(f"{size:>5} {kind:<9} {rate(lambda m: is_valid(m, criteria=args.criteria), maps):>11.0f} "
                  f"{rate(lambda m: check_anatomy(m, criteria=args.criteria), maps):>16.0f} "
                  f"{rate(morphological_correction, maps):>16.0f}  {len(maps)} {source}")


if __name__ == "__main__":
    main()
