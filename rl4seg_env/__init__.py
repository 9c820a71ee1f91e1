"""rl4seg_env: segmentation as a one-step Gymnasium environment (RL4Seg).

Importing the package registers:

- ``RL4Seg-v0``: :class:`~rl4seg_env.env.SegEnv` on the synthetic default target domain with the
  ground-truth ``"accuracy"`` reward (kwargs select ``dataset``, ``preset``, ``split``, ``image_size``,
  ``keep_atrium``, ``reward``, ...). ``gymnasium.make_vec("RL4Seg-v0", num_envs=B)`` builds the natively
  batched :class:`~rl4seg_env.vector.SegVectorEnv`.
- ``RL4SegSmall-v0``: 32 px images, an 8 x 8 flattened action grid and a 16 x 16 flat observation
  (:class:`~rl4seg_env.wrappers.DownsampledActionWrapper`) for stock Stable-Baselines3 PPO/A2C.
- the named task levels ``RL4Seg-Easy-v0``, ``RL4Seg-Medium-v0``, ``RL4Seg-Hard-v0`` and their
  ``RL4SegSmall-<Level>-v0`` variants (:mod:`rl4seg_env.levels`).
"""
from __future__ import annotations

from gymnasium.envs.registration import register, registry

from rl4seg_env.env import SegEnv
from rl4seg_env.levels import register_levels
from rl4seg_env.vector import SegVectorEnv
from rl4seg_env.wrappers import DownsampledActionWrapper, LearnedRewardWrapper

__version__ = "0.2.0"

__all__ = ["DownsampledActionWrapper", "LearnedRewardWrapper", "SegEnv", "SegVectorEnv", "__version__"]

if "RL4Seg-v0" not in registry:
    register(
        id="RL4Seg-v0",
        entry_point="rl4seg_env.env:SegEnv",
        vector_entry_point="rl4seg_env.vector:SegVectorEnv",
        kwargs={"dataset": "synthetic", "reward": "accuracy"},
    )
if "RL4SegSmall-v0" not in registry:
    register(
        id="RL4SegSmall-v0",
        entry_point="rl4seg_env.wrappers:make_small_env",
        kwargs={"dataset": "synthetic", "reward": "accuracy", "image_size": 32, "action_size": 8, "obs_size": 16},
    )
register_levels()
