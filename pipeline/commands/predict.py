"""Segment images with a trained actor; write label maps, uncertainty maps (NIfTI) and PNG overlays.

    rl4seg-predict --actor runs/default/checkpoints/iter_003/actor.pt \
        --reward runs/default/checkpoints/iter_003/reward_net.pt --input scans/ --out predictions/
    rl4seg-predict --actor ppo.zip --input manifest.csv --split test --out predictions/
    rl4seg-predict --actor actor.pt --synthetic default_target --n 8 --out predictions/

``python scripts/predict.py`` is the same command. ``--input`` is a NIfTI file, a folder of NIfTI files, or a manifest CSV (id,image,label,split).
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import sys
from pathlib import Path

from agents.test_time import TTOConfig
from pipeline.inference import Segmenter, export_predictions, manifest_for_files
from rl4seg_env.data import make_dataset


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rl4seg-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--actor", required=True, help="actor.pt or ppo.zip")
    p.add_argument("--reward", default=None, help="reward_net.pt (adds uncertainty maps)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="NIfTI file, folder of NIfTI files, or manifest.csv")
    src.add_argument("--synthetic", metavar="PRESET", help="a synthetic preset (test split)")
    p.add_argument("--split", default=None, help="manifest split to predict (default: all rows)")
    p.add_argument("--n", type=int, default=8, help="synthetic images (with --synthetic)")
    p.add_argument("--size", type=int, default=None, help="working size in pixels (default: the actor's training size when its checkpoint "
                   "records it, else 64)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (a missing accelerator is an error)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="a bad input file: stop with its error (raise) or leave it out and list it at the end (skip)")
    p.add_argument("--no-png", action="store_true")
    p.add_argument("--tto", action="store_true",
                   help="test-time optimisation of predictions that fail the anatomical criteria (needs --reward)")
    p.add_argument("--tto-steps", type=int, default=10, help="PPO steps per invalid image at most (default 10)")
    p.add_argument("--no-tto-repair", action="store_true",
                   help="--tto without the morphologically repaired candidates (test_time.repair: false)")
    p.add_argument("--tto-shape-ae", default=None, metavar="SHAPE_AE_PT",
                   help="--tto against the pixelwise minimum of the reward and this shape auto-encoder's agreement "
                        "(a run's checkpoints/shape_ae.pt; test_time.fusion: shape_ae)")
    p.add_argument("--criteria", default="echo", help="anatomical criteria set for --tto: echo or generic")
    args = p.parse_args(argv)

    try:
        test_time = None
        if args.tto:
            test_time = TTOConfig(steps=args.tto_steps)
        seg = Segmenter(args.actor, args.reward, device=args.device, test_time=test_time, criteria=args.criteria,
                        repair=not args.no_tto_repair, shape_ae_path=args.tto_shape_ae)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = args.size or seg.image_size or 64
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        ds = make_dataset("synthetic", preset=args.synthetic, split="test", n_images=args.n, image_size=size,
                          with_labels=False)
    else:
        src_path = Path(args.input)
        if src_path.suffix == ".csv":
            manifest = src_path
        elif src_path.is_dir():
            files = sorted([*src_path.glob("*.nii"), *src_path.glob("*.nii.gz")])
            if not files:
                print(f"error: {src_path}: no .nii / .nii.gz files", file=sys.stderr)
                return 2
            manifest = manifest_for_files(files, out)
        elif src_path.is_file():
            manifest = manifest_for_files([src_path], out)
        else:
            print(f"error: input not found: {src_path}", file=sys.stderr)
            return 2
        ds = make_dataset("nifti", manifest=manifest, split=args.split, image_size=size, with_labels=False,
                          class_names=tuple(f"class{i}" for i in range(seg.n_classes)), on_error=args.on_error)
    written = export_predictions(seg, ds, out, png=not args.no_png)
    print(f"wrote {len(written)} files for {len(ds)} images to {out}")
    skipped = getattr(ds, "skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} bad input(s):", file=sys.stderr)
        for path, problem in skipped:
            print(f"  {path}: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
