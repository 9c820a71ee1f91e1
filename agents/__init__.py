"""Agents of RL4Seg: U-Net networks, the per-pixel policy and PixelPPO (Stable-Baselines3 API)."""
from agents.buffers import PixelRolloutBuffer, PixelRolloutBufferSamples
from agents.distributions import PixelCategorical
from agents.policies import PixelActorCriticPolicy, shrink_perturb
from agents.ppo import PixelPPO

__all__ = ["PixelActorCriticPolicy", "PixelCategorical", "PixelPPO", "PixelRolloutBuffer",
           "PixelRolloutBufferSamples", "shrink_perturb"]
