"""Measure the domain gap of the synthetic presets: train a small U-Net on ``source`` (and an oracle on the
default target), then print mean LV/MYO Dice on the test split of every preset.

    python scripts/check_domain_gap.py --seconds 150 --threads 1

A useful benchmark needs a source-only model that is clearly worse on the target than a model trained on
the target itself (the gap RL4Seg closes), while still far from chance (the target stays adaptable).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


from agents.networks import UNet
from rl4seg_env.data.synthetic import DEFAULT_TARGET, SyntheticEcho, available_presets
from rl4seg_env.metrics import dice_per_class


def load_arrays(dataset: SyntheticEcho) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) float32 images and (N, H, W) int64 labels of a whole dataset."""
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.from_numpy(np.stack([s.image for s in samples]))[:, None]
    labels = torch.from_numpy(np.stack([s.label for s in samples]).astype(np.int64))
    return images, labels


def train_for(images: torch.Tensor, labels: torch.Tensor, seconds: float, seed: int,
              batch_size: int = 16, lr: float = 1e-3) -> UNet:
    """Cross-entropy training of ``UNet(1, 3, (16, 32, 64, 128))`` with Adam for a wall-clock budget."""
    torch.manual_seed(seed)
    model = UNet(1, 3, (16, 32, 64, 128))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start, steps = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - start < seconds:
        order = torch.randperm(len(images), generator=generator)
        for batch in order.split(batch_size):
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    print(f"  trained {steps} steps in {time.perf_counter() - start:.0f} s")
    return model.eval()


@torch.no_grad()
def mean_dice(model: UNet, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean (LV, MYO) Dice of the argmax prediction."""
    pred = torch.cat([model(chunk).argmax(1) for chunk in images.split(64)]).numpy()
    scores = dice_per_class(pred, labels.numpy(), 3)
    return float(scores[:, 0].mean()), float(scores[:, 1].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0, help="training time per model (default 150)")
    parser.add_argument("--n-train", type=int, default=600, help="training images per model (default 600)")
    parser.add_argument("--n-test", type=int, default=100, help="test images per preset (default 100)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"oracle preset (default {DEFAULT_TARGET})")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def data(preset: str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_arrays(SyntheticEcho(preset, split, n, args.size, seed=args.seed, cache_size=0))

    print(f"source-only model ({args.n_train} images, {args.seconds:.0f} s)")
    source_model = train_for(*data("source", "train", args.n_train), args.seconds, args.seed)
    print(f"oracle model on {args.target}")
    oracle = train_for(*data(args.target, "train", args.n_train), args.seconds, args.seed)

    print(f"\n{'test preset':<18}{'source-only LV':>16}{'MYO':>8}{'mean':>8}{'oracle mean':>14}")
    for preset in available_presets():
        test = data(preset, "test", args.n_test)
        lv, myo = mean_dice(source_model, *test)
        oracle_cell = ""
        if preset == args.target:
            oracle_cell = f"{np.mean(mean_dice(oracle, *test)):14.3f}"
        print(f"{preset:<18}{lv:16.3f}{myo:8.3f}{(lv + myo) / 2:8.3f}{oracle_cell}")


if __name__ == "__main__":
    main()
