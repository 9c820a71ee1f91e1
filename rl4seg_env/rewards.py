"""Pixelwise reward functions.

A reward is a per-pixel map in [0, 1]; the scalar episode reward is its mean. Two kinds exist:

- :class:`RewardFunction` - ground-truth rewards that need the label map (oracle / "supervised RL");
- :class:`RewardModel` - learned rewards that see only the image and the action (the RL4Seg reward
  network, see :mod:`reward.network`). :class:`rl4seg_env.wrappers.LearnedRewardWrapper` plugs one
  into any env.

All functions are batched: images (B, H, W) float32 in [0, 1], actions and labels (B, H, W) integer
label maps; they return (B, H, W) float32 maps.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RewardModel(Protocol):
    """Anything that maps (images, actions) to per-pixel rewards in [0, 1] without labels."""

    def __call__(self, images: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """:param images: (B, H, W) float32 in [0, 1]. :param actions: (B, H, W) int label maps.
        :return: (B, H, W) float32 reward maps in [0, 1]."""
        ...


class RewardFunction:
    """Base class of ground-truth rewards: ``__call__(images, actions, labels) -> (B, H, W)``."""

    #: name used in configs and ``gymnasium.make(..., reward=name)``
    name: str = ""
    requires_labels: bool = True

    def __call__(self, images: np.ndarray, actions: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


class PixelAccuracyReward(RewardFunction):
    """1 where the action equals the label, 0 elsewhere (the learned reward's training target)."""

    name = "accuracy"

    def __call__(self, images: np.ndarray, actions: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        if labels is None:
            raise ValueError("the 'accuracy' reward needs labels; build the dataset with with_labels=True")
        return (np.asarray(actions) == np.asarray(labels)).astype(np.float32)


class DiceReward(RewardFunction):
    """Mean foreground Dice of each image, broadcast to a constant map (a sparse, image-level reward)."""

    name = "dice"

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def __call__(self, images: np.ndarray, actions: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        from rl4seg_env.metrics import dice_per_class

        if labels is None:
            raise ValueError("the 'dice' reward needs labels; build the dataset with with_labels=True")
        actions, labels = np.asarray(actions), np.asarray(labels)
        dice = dice_per_class(actions, labels, self.n_classes).mean(axis=1)  # (B,)
        return np.broadcast_to(dice[:, None, None], actions.shape).astype(np.float32)


def make_reward(name: str, n_classes: int) -> RewardFunction:
    """Ground-truth reward by config name: ``"accuracy"`` or ``"dice"``."""
    if name == "accuracy":
        return PixelAccuracyReward()
    if name == "dice":
        return DiceReward(n_classes)
    raise ValueError(f"unknown reward {name!r}; expected one of 'accuracy', 'dice' (or wrap the env "
                     "with LearnedRewardWrapper for a learned reward)")
