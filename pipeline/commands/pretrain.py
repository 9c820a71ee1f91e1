"""Supervised pretraining of the actor on a labelled domain (RL4Seg step 0).

    python scripts/pretrain.py --dataset synthetic --preset source --size 64 --epochs 10 \
        --out runs/pretrain/actor.pt
    python scripts/pretrain.py --dataset camus --root /data/CAMUS --size 128 --out runs/camus/actor.pt
    python scripts/pretrain.py --dataset nifti --manifest data/manifest.csv --out runs/nifti/actor.pt

Writes the best checkpoint (``--out``, highest validation Dice), ``<out stem>.last.pt`` (resumable with
``--resume``) and TensorBoard scalars (default: ``<out folder>/tb``). The target-supervised oracle is the
same command on the target domain's labels (e.g. ``--preset target_noise``).
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import sys
import time
from pathlib import Path

import torch

from agents.pretrain import LOSSES, PretrainConfig, pretrain_segmentation
from rl4seg_env.data import DATASETS, DataError, DatasetConfig, dataset_from_config


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, default="synthetic")
    d.add_argument("--preset", default="source", help="synthetic preset (default: source)")
    d.add_argument("--root", default=None, help="CAMUS folder (--dataset camus)")
    d.add_argument("--manifest", default=None, help="manifest CSV id,image,label,split (--dataset nifti)")
    d.add_argument("--size", type=int, default=64, help="working image size in pixels (H = W; default 64)")
    d.add_argument("--n-train", type=int, default=None,
                   help="training images (synthetic: generated; real data: the first n of the split; "
                        "default: all, or the generator's default)")
    d.add_argument("--n-val", type=int, default=None, help="validation images (same rules as --n-train)")
    d.add_argument("--train-split", default="train")
    d.add_argument("--val-split", default="val")
    d.add_argument("--keep-atrium", action="store_true", help="segment the left atrium as class 3")
    d.add_argument("--data-seed", type=int, default=0, help="synthetic generator seed (default 0)")
    t = p.add_argument_group("training (defaults: agents.pretrain.PretrainConfig)")
    defaults = PretrainConfig()
    t.add_argument("--epochs", type=int, default=defaults.epochs)
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    t.add_argument("--dice-weight", type=float, default=defaults.dice_weight)
    t.add_argument("--patience", type=int, default=defaults.patience, help="0 = no early stopping")
    t.add_argument("--channels", type=int, nargs="+", default=list(defaults.channels), help="U-Net widths per level")
    t.add_argument("--norm", default=defaults.norm, choices=["batch", "instance", "group", "none"])
    t.add_argument("--no-augment", action="store_true", help="disable the light intensity/shift augmentation")
    t.add_argument("--num-workers", type=int, default=defaults.num_workers)
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/pretrain/actor.pt", help="best checkpoint path")
    o.add_argument("--tensorboard", default=None, help="TensorBoard folder (default: <out folder>/tb; 'none' = off)")
    o.add_argument("--resume", action="store_true", help="continue from <out stem>.last.pt when it exists")
    o.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.dataset == "camus" and not args.root:
        p.error("--dataset camus needs --root (the CAMUS folder)")
    if args.dataset == "nifti" and not args.manifest:
        p.error("--dataset nifti needs --manifest (a CSV with columns id,image,label,split)")

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    tensorboard = str(out.parent / "tb") if args.tensorboard is None else args.tensorboard
    config = PretrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=args.loss, dice_weight=args.dice_weight,
        patience=args.patience or None, channels=tuple(args.channels), norm=None if args.norm == "none" else args.norm,
        num_workers=args.num_workers, augment=not args.no_augment, device=args.device, seed=args.seed,
        tensorboard_log=None if tensorboard.lower() == "none" else tensorboard, progress=not args.no_progress)
    try:
        domain = DatasetConfig(dataset=args.dataset, preset=args.preset, root=args.root, manifest=args.manifest,
                               seed=args.data_seed)
        train = dataset_from_config(domain, args.train_split, args.size, True, args.keep_atrium, args.n_train)
        val = dataset_from_config(domain, args.val_split, args.size, True, args.keep_atrium, args.n_val)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[pretrain] {args.dataset}: {len(train)} training / {len(val)} validation images, "
          f"{args.size} px, classes {', '.join(train.class_names)}", flush=True)

    start = time.perf_counter()
    result = pretrain_segmentation(train, val, out, config, resume=args.resume)
    elapsed = time.perf_counter() - start

    best = result.history[result.best_epoch - 1]
    per_class = ", ".join(f"{k[len('val_dice_'):]} {v:.3f}" for k, v in best.items()
                          if k.startswith("val_dice_") and k != "val_dice_mean")
    stop = " (early stop)" if result.stopped_early else ""
    print(f"[pretrain] best validation Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}/"
          f"{len(result.history)}{stop} ({per_class}); {elapsed:.0f} s this run", flush=True)
    print(f"[pretrain] best checkpoint: {result.best_path}  resumable state: {result.last_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
