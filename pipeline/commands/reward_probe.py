"""How well a reward network tells PPO's right moves from wrong ones, in minutes instead of a full run.

    python scripts/reward_probe.py RUN_DIR [--iteration 1] [--source-images 0,250] [--seeds 1] [--samples 4]
                                   [key=value ...]

Takes the target reward samples one iteration of a ``rl4seg-train`` run built (``reward_dataset/iter_XXX``, its
``source`` samples left out) and the actor that built them (``checkpoints/iter_{XXX-1}/actor.pt``, the source actor for iteration 1 of a run
started from it; without the re-estimation of ``ppo.adapt_norm_stats`` before iteration 1), trains one reward
network per ``--source-images`` value (that many labelled source images added the way
``reward_dataset.source.images`` adds them) with the run's ``reward_net`` settings, and scores each on the first
``--n-test`` target test images against their labels:

- ``AUC argmax``: wrong pixels of the actor's argmax ranked below right ones by the reward;
- ``AUC explored``: the same on the pixels where a sampled action differs from the argmax (the pixels PPO's
  advantages are made of), over ``--samples`` sampled predictions per image;
- ``advantage AUC``: on those pixels, how often reward(sample) - reward(argmax) is higher where the sampled label
  is right than where it is wrong (0.5: the reward cannot tell PPO which way to move);
- ``MYO drift``: myocardium pixels per image the reward pushes towards (explored moves that add a myocardium pixel
  minus those that remove one, among those whose reward beats the argmax's), against the same count among the right
  moves: a reward that ranks well can still favour a direction the labels do not.

One reward network is a noisy reading: its training seed alone moves the advantage AUC by several hundredths on one
reward set. ``--seeds K`` trains K networks per variant (seeds as the loop's ensemble members), scores them on the
same sampled moves and adds each variant's mean and standard deviation over the K.

It reads target labels, so it is a tool for development shifts (docs/protocol.md). The run directory is only read.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.networks import load_unet, resolve_device
from pipeline.commands import cli
from pipeline.config import load_config
from pipeline.run_dir import RunDirectory
from pipeline.tables import markdown_table
from reward.builder import BuildReport, RewardDatasetBuilder, RewardSampleDataset, RewardSampleStore
from reward.network import LearnedReward
from reward.training import error_detection_auc, train_reward_network
from rl4seg_env.data import dataset_from_config
from rl4seg_env.data.base import load_images, load_labels
from rl4seg_env.metrics import ECHO_STRUCTURES

COLUMNS = ("source images", "reward net", "reward samples", "val AUC", "AUC argmax", "AUC explored", "advantage AUC",
           "MYO drift (reward / right)")


def probe_store(dirs: RunDirectory, iteration: int, out: Path, with_target: bool = True
                ) -> tuple[RewardSampleStore, np.ndarray]:
    """A store in ``out`` holding the target samples (every kind but ``source``) of the run's ``iteration`` (none
    when not ``with_target``), and the target images they were made from (one per id; the styles of
    ``reward_dataset.source.style: fourier``)."""
    run_store = RewardSampleStore(dirs.reward_dataset)
    if not run_store.is_complete(iteration):
        raise FileNotFoundError(f"{dirs.reward_dataset}: iteration {iteration}'s reward set is not complete")
    store = RewardSampleStore(out)
    writer = store.begin(iteration)
    counts: dict[str, int] = {}
    images: dict[str, np.ndarray] = {}
    for shard in sorted((dirs.reward_dataset / f"iter_{iteration:03d}").glob("shard_*.npz")):
        with np.load(shard) as data:
            for i in np.flatnonzero(data["kinds"] != "source"):
                if with_target:
                    writer.add(data["images"][i], data["preds"][i], data["references"][i], str(data["kinds"][i]),
                               str(data["ids"][i]))
                    counts[str(data["kinds"][i])] = counts.get(str(data["kinds"][i]), 0) + 1
                images.setdefault(str(data["ids"][i]), data["images"][i].astype(np.float32))
    writer.commit(BuildReport(iteration, samples_by_kind=counts))
    return store, np.stack(list(images.values()))


def score_reward(reward: LearnedReward, actor: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                 n_samples: int, seed: int = 0) -> dict[str, float]:
    """The AUCs and the myocardium drift of the module docstring for ``reward`` on ``images`` (N, H, W) with true
    ``labels``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = torch.cat([actor(torch.from_numpy(images[i:i + 32])[:, None]) for i in range(0, len(images), 32)])
    probs = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    argmax = logits.argmax(1).numpy()
    r_argmax = reward(images, argmax)
    explored, advantage, explored_wrong, sample_right = [], [], [], []
    myo = ECHO_STRUCTURES["myo"][0]
    drift = np.zeros(2)  # myocardium pixels added minus removed: by the moves the reward prefers, by the right ones
    for _ in range(n_samples):
        sampled = torch.multinomial(probs, 1, generator=gen).reshape(argmax.shape).numpy()
        r = reward(images, sampled)
        moved = sampled != argmax
        explored.append(r[moved])
        advantage.append((r - r_argmax)[moved])
        explored_wrong.append((sampled != labels)[moved])
        sample_right.append((sampled == labels)[moved])
        change = (sampled == myo).astype(int) - (argmax == myo).astype(int)  # +1 adds, -1 removes a myocardium pixel
        drift += [(change * (r > r_argmax)).sum(), (change * (sampled == labels)).sum()]
    drift /= n_samples * len(images)
    explored_wrong, sample_right = np.concatenate(explored_wrong), np.concatenate(sample_right)
    return {"AUC argmax": error_detection_auc(r_argmax, argmax != labels),
            "AUC explored": error_detection_auc(np.concatenate(explored), explored_wrong),
            # "errors" = sampled label right: a good reward gives them the *higher* advantage, so rank by -advantage
            "advantage AUC": error_detection_auc(-np.concatenate(advantage), sample_right),
            "MYO drift (reward)": float(drift[0]), "MYO drift (right)": float(drift[1])}


def table_row(n_source: int, network: int | str, n_samples: int, scores: dict[str, float]) -> list[Any]:
    """One row of the table: a variant, its network (0..K-1 of ``--seeds``, or "mean" / "std"), its sample count
    and its scores."""
    return [n_source, network, n_samples, *(f"{scores[k]:.4f}" for k in COLUMNS[3:7]),
            f"{scores['MYO drift (reward)']:+.1f} / {scores['MYO drift (right)']:+.1f}"]


def image_counts(text: str) -> list[int]:
    """``"0,250"`` -> ``[0, 250]`` (argparse names this function in its error for a bad value)."""
    return [int(v) for v in text.split(",")]


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory of rl4seg-train with a built reward set")
    parser.add_argument("--iteration", type=int, default=1, help="whose reward set and starting actor (default 1)")
    parser.add_argument("--source-images", type=image_counts, default=[0, 250],
                        help="comma-separated labelled source images added per variant (default: 0,250)")
    parser.add_argument("--source-only", action="store_true",
                        help="train each reward network on the source samples alone (the run's target samples "
                             "left out; every --source-images value must then be > 0)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="reward networks trained per variant, with the seeds of the loop's ensemble members; "
                             "with more than one, each variant also gets a mean and a std row (default 1)")
    parser.add_argument("--samples", type=int, default=4, help="sampled predictions per test image (default 4)")
    parser.add_argument("--n-test", type=int, default=200, help="target test images scored (default 200)")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the run's config, e.g. "
                                                     "reward_dataset.source.noise=[0,0.2] reward_net.epochs=10")
    args = parser.parse_intermixed_args(argv)
    if min(args.iteration, args.samples, args.n_test, args.seeds) < 1 or min(args.source_images) < 0:
        raise ValueError("--iteration, --seeds, --samples and --n-test must be >= 1, --source-images >= 0")
    if args.source_only and min(args.source_images) == 0:
        raise ValueError("--source-only trains on source samples alone: every --source-images value must be > 0")
    dirs = RunDirectory(args.run)
    config = load_config(dirs.config_path, args.overrides)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    actor_path = dirs.actor(args.iteration - 1)
    if not actor_path.is_file():
        raise FileNotFoundError(f"{actor_path}: the actor that built iteration {args.iteration}'s reward set")
    actor, _ = load_unet(str(actor_path), map_location="cpu")
    actor.eval()
    d = config.data
    test = dataset_from_config(d.target, "test", d.image_size, True, d.keep_atrium, args.n_test)  # target labels
    images, _ = load_images(test)
    labels = load_labels(test)
    source = dataset_from_config(d.source, "train", d.image_size, True, d.keep_atrium)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.source_images:
            store, target_images = probe_store(dirs, args.iteration, Path(tmp) / f"source_{n}",
                                               with_target=not args.source_only)
            if n:
                builder = RewardDatasetBuilder(None, None, batch_size=config.reward_dataset.batch_size,
                                               seed=config.seed, source_dataset=source,
                                               source=dataclasses.replace(config.reward_dataset.source,
                                                                          images=n))
                writer = store.begin(0)
                made = builder.source_samples(actor, args.iteration, target_images)
                for sample in made:
                    writer.add(*sample)
                writer.commit(BuildReport(0, samples_by_kind={"source": len(made)}))
            samples = RewardSampleDataset(store)
            scores = []
            for member in range(args.seeds):
                cfg = dataclasses.replace(config.reward_net, channels=config.network.channels,
                                          norm=config.network.norm, device=str(device), progress=False,
                                          seed=config.seed + args.iteration + 7919 * member)
                result = train_reward_network(samples, test.n_classes, cfg)
                # the sampling seed stays: every network is scored on the same explored moves
                score = score_reward(LearnedReward(result.net, device=device), actor, images, labels, args.samples,
                                     seed=config.seed)
                scores.append({"val AUC": result.val_auc, **score})
                rows.append(table_row(n, member, len(samples), scores[-1]))
                print(f"[reward_probe] {n} source images, reward net {member}: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in scores[-1].items()), flush=True)
            if args.seeds > 1:
                for name, stat in (("mean", np.mean), ("std", np.std)):
                    values = {k: float(stat([sc[k] for sc in scores])) for k in scores[0]}
                    rows.append(table_row(n, name, len(samples), values))
    print(markdown_table(list(COLUMNS), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
