"""Fit the echo anatomical criteria to labelled source label maps at the working size; write criteria.yaml.

    rl4seg-calibrate-anatomy --preset source --split train --image-size 64 --out criteria.yaml
    rl4seg-calibrate-anatomy --dataset camus --root data/camus --image-size 128 --out criteria.yaml

Each criterion keeps the paper's bound when >= --quantile of the maps pass it, else is loosened just enough
(reward.anatomy_calibration). Use the file as ``reward_dataset.criteria: criteria.yaml`` of a run, or
``--criteria criteria.yaml`` of rl4seg-evaluate. Reads labels of the dataset given: give the *source*.
``python scripts/calibrate_anatomy.py`` is the same command.
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import sys

from pipeline.commands.dataset_args import add_dataset_arguments, dataset_from_args
from reward.anatomy_calibration import DEFAULT_QUANTILE, calibrate_criteria, save_calibrated_criteria
from rl4seg_env.data import DataError


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rl4seg-calibrate-anatomy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(p, preset="source", split="train")
    p.add_argument("--image-size", type=int, default=64, help="working size in pixels (default 64)")
    p.add_argument("--base", default="echo", help="criterion set to calibrate (default: echo)")
    p.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                   help=f"fraction of maps each criterion must pass (default {DEFAULT_QUANTILE})")
    p.add_argument("--out", required=True, help="the calibrated-criteria YAML to write")
    args = p.parse_args(argv)
    try:
        ds = dataset_from_args(args, args.image_size, with_labels=True)
        samples = [ds[i] for i in range(len(ds))]
        _, report = calibrate_criteria([s.label for s in samples], [s.spacing for s in samples], args.base,
                                       args.quantile)
    except (FileNotFoundError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_calibrated_criteria(report, args.out)
    print(f"wrote {args.out}")
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
