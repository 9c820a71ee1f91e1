"""Per-pixel categorical distribution over label maps.

Stock Stable-Baselines3 turns a ``MultiDiscrete`` action into one ``Categorical`` per dimension and
sums their log-probabilities, which is neither tractable for (H, W) label maps (one Python object
per pixel) nor what RL4Seg needs (the PPO ratio is taken per pixel). :class:`PixelCategorical`
keeps the pixels as tensor dimensions: every method is one vectorised operation on
(B, C, H, W) logits and returns per-pixel maps (B, H, W).
"""
from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from stable_baselines3.common.distributions import Distribution
from torch import nn

SelfPixelCategorical = TypeVar("SelfPixelCategorical", bound="PixelCategorical")


class PixelCategorical(Distribution):
    """Independent categorical distribution at every pixel of a label map.

    :param n_classes: number of classes C (the actor's output channels).

    Call :meth:`proba_distribution` with logits (B, C, H, W) before using the distribution.
    Actions are integer label maps (B, H, W); ``log_prob`` and ``entropy`` return float maps
    (B, H, W) (never summed over pixels: the caller decides how to reduce them).
    """

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"PixelCategorical needs at least 2 classes, got n_classes={n_classes}")
        self.n_classes = int(n_classes)
        self.logits: torch.Tensor | None = None
        self.log_probs: torch.Tensor | None = None

    def proba_distribution_net(self, latent_channels: int) -> nn.Module:
        """A 1x1 convolution mapping ``latent_channels`` feature maps to C logit maps.

        (The U-Net actor already ends with such a head, so :class:`~agents.policies.PixelActorCriticPolicy`
        does not need it; it is provided for feature extractors that output latent maps.)
        """
        return nn.Conv2d(latent_channels, self.n_classes, kernel_size=1)

    def proba_distribution(self: SelfPixelCategorical, logits: torch.Tensor) -> SelfPixelCategorical:
        """Set the distribution from logits (B, C, H, W) (any float dtype; unnormalised)."""
        if logits.ndim != 4 or logits.shape[1] != self.n_classes:
            raise ValueError(f"PixelCategorical expects logits of shape (B, {self.n_classes}, H, W), "
                             f"got {tuple(logits.shape)}")
        self.logits = logits
        self.log_probs = F.log_softmax(logits, dim=1)
        return self

    def _require(self) -> torch.Tensor:
        if self.log_probs is None:
            raise RuntimeError("PixelCategorical: call proba_distribution(logits) first")
        return self.log_probs

    @property
    def probs(self) -> torch.Tensor:
        """Class probabilities (B, C, H, W)."""
        return self._require().exp()

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability of each pixel's label: actions (B, H, W) integer -> (B, H, W) float."""
        log_probs = self._require()
        if actions.shape != (log_probs.shape[0], *log_probs.shape[2:]):
            raise ValueError(f"actions must have shape {(log_probs.shape[0], *log_probs.shape[2:])} (B, H, W), "
                             f"got {tuple(actions.shape)}")
        return log_probs.gather(1, actions.long().unsqueeze(1)).squeeze(1)

    def entropy(self) -> torch.Tensor:
        """Per-pixel entropy in nats (B, H, W)."""
        log_probs = self._require()
        return -(log_probs.exp() * log_probs).sum(dim=1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample a label map (B, H, W) int64 (Gumbel-max trick: one vectorised draw for all pixels)."""
        log_probs = self._require()
        uniform = torch.rand(log_probs.shape, generator=generator, device=log_probs.device, dtype=log_probs.dtype)
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(log_probs.dtype).tiny)))
        return (log_probs + gumbel).argmax(dim=1)

    def mode(self) -> torch.Tensor:
        """Most likely label of each pixel (B, H, W) int64 (the argmax segmentation)."""
        return self._require().argmax(dim=1)

    def kl_divergence(self, other: PixelCategorical) -> torch.Tensor:
        """Exact per-pixel KL(self || other) in nats (B, H, W)."""
        log_p, log_q = self._require(), other._require()
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)

    def actions_from_params(self, logits: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Set the distribution from logits (B, C, H, W) and return a label map (B, H, W)."""
        self.proba_distribution(logits)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a label map from logits and return ``(actions, log_prob)``, both (B, H, W)."""
        actions = self.actions_from_params(logits)
        return actions, self.log_prob(actions)
