"""Export a synthetic echo preset to a NIfTI folder with a manifest (readable by ``NiftiFolderDataset``).

    python scripts/make_dataset.py --preset target_contrast --out data/target_contrast --size 128 \\
        --n-train 100 --n-val 20 --n-test 20 [--keep-atrium] [--seed 0]

Writes ``OUT/images/<id>.nii.gz``, ``OUT/labels/<id>.nii.gz`` and ``OUT/manifest.csv`` (id,image,label,split).
A split with 0 images is left out.
"""
from __future__ import annotations

import argparse
from pathlib import Path


from rl4seg_env.data.nifti import export_to_nifti_folder
from rl4seg_env.data.synthetic import SyntheticEcho, available_presets


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="source", choices=available_presets(), help="domain preset (default source)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--size", type=int, nargs="+", default=[128], help="image size: H or H W (default 128)")
    parser.add_argument("--n-train", type=int, default=100, help="training images (default 100)")
    parser.add_argument("--n-val", type=int, default=20, help="validation images (default 20)")
    parser.add_argument("--n-test", type=int, default=20, help="test images (default 20)")
    parser.add_argument("--keep-atrium", action="store_true", help="keep the left atrium as label 3")
    parser.add_argument("--seed", type=int, default=0, help="domain realisation (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error(f"--size takes H or H W, got {len(args.size)} values")
    counts = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    for split, n in counts.items():
        if n < 0:
            parser.error(f"--n-{split} must be >= 0, got {n}")
    datasets = {split: SyntheticEcho(args.preset, split, n, tuple(args.size) if len(args.size) == 2 else args.size[0],
                                     seed=args.seed, keep_atrium=args.keep_atrium, cache_size=0)
                for split, n in counts.items() if n > 0}
    if not datasets:
        parser.error("nothing to export: every split has 0 images")
    manifest = export_to_nifti_folder(datasets, args.out, progress=not args.quiet)
    print(f"wrote {sum(counts.values())} images of preset {args.preset!r} to {manifest}")
    return manifest


if __name__ == "__main__":
    main()
