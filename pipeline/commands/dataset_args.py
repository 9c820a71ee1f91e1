"""Command-line arguments that name one split of a labelled dataset, shared by the commands that read one."""
from __future__ import annotations

import argparse

from rl4seg_env.data import DATASETS, DatasetConfig, SegDataset, dataset_from_config


def add_dataset_arguments(parser: argparse.ArgumentParser, preset: str, split: str) -> None:
    """``--dataset --preset --seed --root --manifest --split --n --keep-atrium`` (defaults ``preset``, ``split``)."""
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic")
    parser.add_argument("--preset", default=preset, help=f"synthetic preset (default: {preset})")
    parser.add_argument("--seed", type=int, default=0, help="synthetic domain seed (default 0, as the loop)")
    parser.add_argument("--root", help="CAMUS folder (--dataset camus)")
    parser.add_argument("--manifest", help="manifest CSV (--dataset nifti)")
    parser.add_argument("--split", default=split, help=f"split to read (default: {split})")
    parser.add_argument("--n", type=int, default=None, help="first N images of the split (default: all)")
    parser.add_argument("--keep-atrium", action="store_true", help="keep the left atrium as class 3")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="a bad file (camus, nifti): stop with its error, or leave the sample out and list it")


def dataset_from_args(args: argparse.Namespace, size: int, with_labels: bool = True) -> SegDataset:
    """The dataset split the arguments of :func:`add_dataset_arguments` describe, at ``size`` pixels.

    :raises ValueError: a missing ``--root`` / ``--manifest`` or ``--n`` below 1 (the message names the option).
    """
    if args.dataset == "camus" and not args.root:
        raise ValueError("--dataset camus needs --root (the CAMUS folder)")
    if args.dataset == "nifti" and not args.manifest:
        raise ValueError("--dataset nifti needs --manifest (a CSV with columns id,image,label,split)")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    domain = DatasetConfig(dataset=args.dataset, preset=args.preset if args.dataset == "synthetic" else "source",
                           root=args.root, manifest=args.manifest, seed=args.seed)
    return dataset_from_config(domain, args.split, size, with_labels=with_labels, keep_atrium=args.keep_atrium,
                               n_images=args.n, on_error=getattr(args, "on_error", "raise"))
