"""Write one PNG montage per synthetic domain preset to ``docs/synthetic_<preset>.png``.

    python scripts/make_montages.py [--out docs] [--size 128] [--grid 4] [--presets source target_shape]

Each montage shows ``grid x grid`` test images; the right half of each row repeats the left half with
the label contours (red LV, yellow myocardium, cyan left atrium).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rl4seg_env.data.synthetic import PRESETS, SyntheticEcho, available_presets

CONTOUR_COLOURS = ("red", "yellow", "cyan")  # LV, MYO, LA


def save_montage(preset: str, path: Path, size: int = 128, grid: int = 4, seed: int = 0) -> Path:
    """Draw a ``grid x grid`` montage of ``preset`` (test split) at ``size`` px and save it as a PNG."""
    dataset = SyntheticEcho(preset, split="test", n_images=grid * grid, image_size=size, seed=seed, keep_atrium=True)
    half = grid // 2
    fig, axes = plt.subplots(grid, grid, figsize=(1.6 * grid, 1.6 * grid + 0.35))
    for row in range(grid):
        for col in range(grid):
            sample = dataset[row * half + col % half]
            ax = axes[row, col]
            ax.imshow(sample.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if col >= half:
                for value, colour in enumerate(CONTOUR_COLOURS, start=1):
                    if (sample.label == value).any():
                        ax.contour(sample.label == value, levels=[0.5], colors=colour, linewidths=0.7)
            ax.set_axis_off()
    fig.suptitle(f"{preset}: {PRESETS[preset].description}", fontsize=7, wrap=True)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.03, hspace=0.03)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs"), help="output folder (default docs)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    parser.add_argument("--grid", type=int, default=4, help="images per row and column (default 4, even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", nargs="+", default=list(available_presets()), choices=available_presets())
    args = parser.parse_args()
    for preset in args.presets:
        path = save_montage(preset, args.out / f"synthetic_{preset}.png", args.size, args.grid, args.seed)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
