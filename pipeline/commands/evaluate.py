"""Evaluate a segmentation checkpoint, or a folder of predicted label maps, on a labelled dataset.

    rl4seg-evaluate --actor runs/default/checkpoints/iter_003/actor.pt \
        --reward runs/default/checkpoints/iter_003/reward_net.pt \
        --dataset synthetic --preset default_target --n 200 --out eval/iter_003
    rl4seg-evaluate --actor ppo.zip --dataset camus --root data/camus --out eval/camus
    rl4seg-evaluate --predictions predictions/ --dataset nifti --manifest data/manifest.csv \
        --split test --out eval/preds

Writes into --out: per_image.csv (id, Dice and Hausdorff per structure, validity, failed criteria,
mean reward), summary.json, summary.md (printed) and, with --reward, reliability.png.
Scores follow docs/method.md: keep the largest foreground component, then Dice and Hausdorff (mm, from
each image's spacing) for LV, MYO and epicardium (LV u MYO), and the anatomical criteria.
Predictions in a folder are matched by id (<id>_seg.nii.gz or <id>.nii.gz, as rl4seg-predict
writes them) and resized to the working size (--size) with nearest neighbour.
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import sys
from pathlib import Path

import numpy as np

from agents.test_time import TTOConfig
from pipeline.evaluation import evaluate_predictions, load_prediction_folder, write_evaluation
from pipeline.inference import Segmenter, actor_image_size
from reward.network import LearnedReward, load_reward_net
from reward.uncertainty import plot_reliability_diagram
from reward.uncertainty_methods import accumulate_uncertainty
from pipeline.commands.dataset_args import add_dataset_arguments, dataset_from_args
from reward.anatomy import get_criteria
from rl4seg_env.data import DataError
from rl4seg_env.data.base import load_images, load_labels


def working_size(args: argparse.Namespace) -> int:
    """--size, else the image size the actor's checkpoint records, else 64."""
    if args.size:
        return args.size
    return (actor_image_size(args.actor) if args.actor else None) or 64


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rl4seg-evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--actor", help="actor checkpoint: actor.pt or ppo.zip")
    src.add_argument("--predictions", help="folder of predicted label maps (<id>_seg.nii.gz or <id>.nii.gz)")
    p.add_argument("--reward", default=None, help="reward_net.pt: adds uncertainty metrics and reliability.png")
    add_dataset_arguments(p, preset="default_target", split="test")
    p.add_argument("--size", type=int, default=None,
                   help="working size in pixels (default: the actor.pt's training size, else 64)")
    p.add_argument("--criteria", default="echo",
                   help="anatomical criteria: echo (the paper's thresholds), generic, or a calibrated-criteria "
                        ".yaml (rl4seg-calibrate-anatomy, or criteria.yaml of a run)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tto", action="store_true", help="with --actor and --reward: test-time optimisation of the "
                   "predictions that fail the anatomical criteria before scoring them")
    p.add_argument("--tto-steps", type=int, default=10, help="PPO steps per invalid image at most (default 10)")
    p.add_argument("--no-tto-repair", action="store_true",
                   help="--tto without the morphologically repaired candidates (test_time.repair: false)")
    p.add_argument("--tto-shape-ae", default=None, metavar="SHAPE_AE_PT",
                   help="--tto against the pixelwise minimum of the reward and this shape auto-encoder's agreement "
                        "(a run's checkpoints/shape_ae.pt; test_time.fusion: shape_ae)")
    args = p.parse_args(argv)
    if args.tto and not (args.actor and args.reward):
        p.error("--tto needs --actor and --reward (it optimises the actor's predictions against the reward network)")

    try:
        criteria = get_criteria(args.criteria)
        ds = dataset_from_args(args, working_size(args))
        images, _ = load_images(ds)
        reward_model = None
        if args.actor:
            test_time = None
            if args.tto:
                test_time = TTOConfig(steps=args.tto_steps)
            seg = Segmenter(args.actor, args.reward, device=args.device, batch_size=args.batch_size,
                            test_time=test_time, criteria=criteria, repair=not args.no_tto_repair,
                            shape_ae_path=args.tto_shape_ae)
            if seg.n_classes != ds.n_classes:
                raise ValueError(f"{args.actor} predicts {seg.n_classes} classes but the dataset has {ds.n_classes} "
                                 f"({', '.join(ds.class_names)}); --keep-atrium switches 3 <-> 4 classes")
            preds, _ = seg(images, spacings=[ds[i].spacing for i in range(len(ds))])
            reward_model = seg.reward_model
        else:
            preds = load_prediction_folder(args.predictions, ds)
            if args.reward:
                reward_model = LearnedReward(load_reward_net(args.reward, map_location=args.device)[0],
                                             device=args.device)
    except (FileNotFoundError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    result = evaluate_predictions(preds, ds, images=images, criteria=criteria, reward_model=reward_model)
    metadata = {"actor": args.actor, "predictions": args.predictions, "reward": args.reward, "dataset": args.dataset,
                "preset": args.preset if args.dataset == "synthetic" else None, "root": args.root,
                "manifest": args.manifest, "split": args.split, "n_images": len(ds),
                "image_size": list(ds.image_size), "criteria": args.criteria}
    metadata["skipped"] = [f"{path}: {problem}" for path, problem in ds.skipped]
    paths = write_evaluation(result, args.out, metadata, title=f"Evaluation on {args.dataset} {args.split}")
    if ds.skipped:
        print(f"skipped {len(ds.skipped)} bad input(s) (listed in summary.json):", file=sys.stderr)
        for path, problem in ds.skipped:
            print(f"  {path}: {problem}", file=sys.stderr)
    if reward_model is not None:
        labels = load_labels(ds)
        acc = accumulate_uncertainty({"reward": 1.0 - reward_model(images, preds)}, preds, labels, ds.n_classes)
        paths["reliability"] = plot_reliability_diagram(acc["reward"], Path(args.out) / "reliability.png",
                                                        title=f"reward network on {args.dataset} {args.split}")
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
