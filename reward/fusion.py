"""Reward fusion: several per-pixel reward maps combined into one (RL4Seg3D).

- :class:`ShapeAgreementReward` - a label-free reward from the shape auto-encoder alone: 1 where its
  reconstruction keeps a pixel's chosen class, lower where it would redraw the pixel;
- :class:`FusedReward` - the pixelwise minimum (or mean) of any reward models' maps: with the minimum a pixel is
  rewarded only where every model agrees it is right, so the policy cannot exploit one model's blind spot
  (e.g. the learned reward's shared errors with its pseudo-labels, which the shape prior may still see).

Both implement :class:`rl4seg_env.rewards.RewardModel`: (B, H, W) float32 images in [0, 1] and integer actions
in, (B, H, W) float32 maps in [0, 1] out.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reward.correctors import ShapeAutoEncoder
from rl4seg_env.rewards import RewardModel

#: how :class:`FusedReward` combines maps
FUSIONS = ("min", "mean")


class ShapeAgreementReward:
    """Per-pixel plausibility of a segmentation under the shape auto-encoder.

    The action's one-hot map goes through the auto-encoder; each pixel's reward is the probability the
    reconstruction gives the class the action chose there, divided by the probability of the reconstruction's
    most likely class: 1 where the auto-encoder keeps the action's class, less where it would redraw the pixel
    (holes, islands, a broken myocardium), down to 0. The image is not used. Normalised so, the map leaves the
    pixels the auto-encoder keeps to the other reward in a pixelwise-minimum fusion (the raw probabilities of an
    auto-encoder trained for minutes are far from 1 everywhere, and would dominate the minimum).

    :param ae: a trained :class:`reward.correctors.ShapeAutoEncoder` (put in eval mode here).
    :param device: torch device of the auto-encoder's forward passes (default: where its weights are).
    :param batch_size: maps per forward pass (default 64).
    """

    def __init__(self, ae: ShapeAutoEncoder, device: str | torch.device | None = None, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"ShapeAgreementReward: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else next(ae.parameters()).device
        self.ae = ae.to(self.device).eval()
        self.batch_size = int(batch_size)

    def __call__(self, images: np.ndarray, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.ndim != 3 or np.shape(images) != actions.shape:
            raise ValueError(f"ShapeAgreementReward expects images and actions of the same shape (B, H, W), got "
                             f"images {np.shape(images)} and actions {actions.shape}")
        if self.ae.training:
            self.ae.eval()
        out = np.empty(actions.shape, dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(actions), self.batch_size):
                sl = slice(start, start + self.batch_size)
                a = torch.as_tensor(actions[sl].astype(np.int64, copy=False), device=self.device)
                probs = self.ae(self.ae.one_hot(a)).softmax(1)
                out[sl] = (probs.gather(1, a[:, None]).squeeze(1) / probs.max(1).values).cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"ShapeAgreementReward(latent_channels={self.ae.latent_channels}, device={self.device})"


class FusedReward:
    """Several reward models' maps combined pixel by pixel.

    :param models: the reward models (at least one), e.g. a learned reward and a :class:`ShapeAgreementReward`,
        or the members of an ensemble of reward networks.
    :param how: ``"min"`` (default; a pixel is as good as its worst verdict) or ``"mean"``.
    """

    def __init__(self, models: Sequence[RewardModel], how: str = "min") -> None:
        if not models:
            raise ValueError("FusedReward needs at least one reward model")
        if how not in FUSIONS:
            raise ValueError(f"FusedReward: how must be one of {', '.join(FUSIONS)}, got {how!r}")
        self.models, self.how = list(models), how

    def __call__(self, images: np.ndarray, actions: np.ndarray) -> np.ndarray:
        maps = [np.asarray(m(images, actions), dtype=np.float32) for m in self.models]
        if any(m.shape != maps[0].shape for m in maps):
            raise ValueError(f"FusedReward: the models returned maps of different shapes {[m.shape for m in maps]}")
        stacked = np.stack(maps)
        return stacked.min(0) if self.how == "min" else stacked.mean(0)

    def __repr__(self) -> str:
        return f"FusedReward(how={self.how!r}, models={self.models!r})"


def fuse_with_shape_prior(reward: RewardModel, ae: ShapeAutoEncoder, device: str | torch.device | None = None
                          ) -> FusedReward:
    """``reward``'s pixelwise minimum with ``ae``'s :class:`ShapeAgreementReward` (``fusion: shape_ae``)."""
    return FusedReward([reward, ShapeAgreementReward(ae, device=device)], how="min")
