"""Wrappers around :class:`~rl4seg_env.env.SegEnv`.

- :class:`LearnedRewardWrapper` - replaces the reward with a learned reward model's per-pixel map
  (the RL4Seg reward network); the model can be swapped in place during training.
- :class:`DownsampledActionWrapper` - a coarse, flattened action grid (and optionally a small
  observation) so that stock Stable-Baselines3 PPO/A2C with ``MlpPolicy`` can train on the env.
- :func:`make_small_env` - the ``RL4SegSmall-v0`` entry point (SegEnv + DownsampledActionWrapper).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rl4seg_env.data.base import SegDataset, as_image_size, resize_image
from rl4seg_env.env import SegEnv, check_actions, mean_reward, to_observation
from rl4seg_env.rewards import RewardFunction, RewardModel


def evaluate_reward_model(reward_model: RewardModel, images: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Call ``reward_model`` on a batch and check its answer.

    :param images: float32 (B, H, W) in [0, 1].
    :param actions: integer (B, H, W) label maps.
    :return: float32 (B, H, W) reward maps in [0, 1]. A torch tensor answer is moved to numpy.
    :raises ValueError: when the answer has the wrong shape, NaN/Inf values or values outside [0, 1].
    """
    out = reward_model(images, actions)
    if hasattr(out, "detach"):  # a torch tensor, possibly on an accelerator
        out = out.detach().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    name = type(reward_model).__name__
    if out.shape != images.shape:
        raise ValueError(f"reward model {name} returned shape {out.shape}, expected {images.shape} (B, H, W)")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"reward model {name} returned NaN/Inf rewards")
    if out.size and (out.min() < -1e-6 or out.max() > 1 + 1e-6):
        raise ValueError(f"reward model {name} returned values in [{out.min():.4g}, {out.max():.4g}], expected [0, 1]")
    return np.clip(out, 0.0, 1.0)


def _check_reward_model(reward_model: Any) -> RewardModel:
    if isinstance(reward_model, RewardFunction) or not callable(reward_model):
        raise TypeError(
            "reward_model must implement the RewardModel protocol: "
            f"(images (B, H, W), actions (B, H, W)) -> (B, H, W); found {type(reward_model).__name__}"
        )
    return reward_model


class LearnedRewardWrapper(gym.Wrapper):
    """Reward each step with a learned per-pixel reward model instead of the ground truth.

    On ``step`` the model is called once on the episode's image (float32 (1, H, W) in [0, 1]) and the
    full label map (integer (1, H, W)); the reward becomes the mean of its map, ``info["reward_map"]``
    becomes the learned map and a ground-truth map, when the base env computed one, moves to
    ``info["gt_reward_map"]`` (for monitoring only: the agent never needs labels). It reads the image and
    the full-size action from the base :class:`~rl4seg_env.env.SegEnv`, so it may sit above
    action/observation wrappers.

    :param env: an env whose ``unwrapped`` is a :class:`~rl4seg_env.env.SegEnv` (build it with
        ``reward=None`` on unlabelled target data).
    :param reward_model: any :class:`~rl4seg_env.rewards.RewardModel` (e.g. the RL4Seg reward network).
    """

    def __init__(self, env: gym.Env, reward_model: RewardModel) -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, SegEnv):
            raise TypeError(f"LearnedRewardWrapper needs a SegEnv underneath, found {type(env.unwrapped).__name__}")
        self._reward_model = _check_reward_model(reward_model)

    @property
    def reward_model(self) -> RewardModel:
        """The reward model in use."""
        return self._reward_model

    def set_reward_model(self, reward_model: RewardModel) -> None:
        """Swap the reward model in place (e.g. ``vec_env.env_method("set_reward_model", model)``)."""
        self._reward_model = _check_reward_model(reward_model)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, _, terminated, truncated, info = self.env.step(action)
        base: SegEnv = self.env.unwrapped  # type: ignore[assignment]
        image = base.current_sample.image[None]  # type: ignore[union-attr]
        reward_map = evaluate_reward_model(self._reward_model, image, base.last_action[None])[0]
        if "reward_map" in info:
            info["gt_reward_map"] = info.pop("reward_map")
        info["reward_map"] = reward_map
        base.set_reward_map_for_render(reward_map)
        return obs, float(mean_reward(reward_map[None])[0]), terminated, truncated, info


def coarse_to_full(coarse: np.ndarray, full_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of (..., h, w) label grids to (..., H, W) (any sizes, no mixing)."""
    h, w = coarse.shape[-2:]
    rows = (np.arange(full_size[0]) * h) // full_size[0]
    cols = (np.arange(full_size[1]) * w) // full_size[1]
    return coarse[..., rows[:, None], cols[None, :]]


class DownsampledActionWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Coarse, flattened actions (and optionally small observations) for stock SB3 algorithms.

    A full label map is H*W categorical choices: too many for SB3's ``MlpPolicy``. This wrapper exposes
    ``MultiDiscrete([n_classes] * h * w)`` (row-major flattening of an ``action_size`` = (h, w) grid);
    each coarse cell's class is copied to the block of full-size pixels it covers (nearest
    neighbour, H and W need not be multiples of h and w). Rewards and info are the base env's
    (``reward_map`` stays at full size).

    :param env: a :class:`~rl4seg_env.env.SegEnv` (or a wrapper of one keeping its spaces).
    :param action_size: coarse grid, an int (square) or (h, w); default 8 (8 x 8 = 64 choices).
    :param obs_size: ``None`` (default) keeps the full uint8 (H, W, 1) image; an int or (h, w)
        downsamples it (anti-aliased bilinear).
    :param flatten_obs: with ``obs_size``: ``True`` (default) gives a float32 vector of h*w intensities in
        [0, 1] (for ``MlpPolicy``), ``False`` a uint8 (h, w, 1) image.
    """

    def __init__(self, env: gym.Env, action_size: int | tuple[int, int] = 8,
                 obs_size: int | tuple[int, int] | None = None, flatten_obs: bool = True) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, action_size=action_size, obs_size=obs_size,
                                                 flatten_obs=flatten_obs)
        super().__init__(env)
        full = env.action_space
        if not isinstance(full, spaces.MultiDiscrete) or full.nvec.ndim != 2:
            raise TypeError(f"DownsampledActionWrapper needs a (H, W) MultiDiscrete action space, found {full}")
        self.full_size: tuple[int, int] = full.shape  # type: ignore[assignment]
        self.n_classes = int(full.nvec.max())
        self.action_size = as_image_size(action_size)
        if self.action_size[0] > self.full_size[0] or self.action_size[1] > self.full_size[1]:
            raise ValueError(f"action_size {self.action_size} is larger than the label map {self.full_size}")
        self.action_space = spaces.MultiDiscrete(np.full(self.action_size[0] * self.action_size[1], self.n_classes))
        self.obs_size = None if obs_size is None else as_image_size(obs_size)
        self.flatten_obs = flatten_obs
        if self.obs_size is None:
            self.observation_space = env.observation_space
        elif flatten_obs:
            self.observation_space = spaces.Box(0.0, 1.0, (self.obs_size[0] * self.obs_size[1],), np.float32)
        else:
            self.observation_space = spaces.Box(0, 255, (*self.obs_size, 1), np.uint8)

    def action(self, action: Any) -> np.ndarray:
        """Flat coarse action (h*w,) -> uint8 (H, W) full label map."""
        coarse = check_actions(action, (self.action_size[0] * self.action_size[1],), self.n_classes)
        return coarse_to_full(coarse.reshape(self.action_size), self.full_size).astype(np.uint8)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        """Full uint8 (H, W, 1) image -> the wrapper's observation."""
        if self.obs_size is None:
            return obs
        small = resize_image(obs[..., 0].astype(np.float32) / 255.0, self.obs_size)
        if self.flatten_obs:
            return np.clip(small, 0.0, 1.0).reshape(-1).astype(np.float32)
        return to_observation(small)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        return self.observation(obs), reward, terminated, truncated, info


def make_small_env(dataset: SegDataset | str = "synthetic", reward: str | RewardFunction | None = "accuracy",
                   render_mode: str | None = None, image_size: int = 32, action_size: int | tuple[int, int] = 8,
                   obs_size: int | tuple[int, int] | None = 16, flatten_obs: bool = True,
                   **dataset_kwargs: Any) -> DownsampledActionWrapper:
    """``RL4SegSmall-v0``: a :class:`SegEnv` at ``image_size`` wrapped in :class:`DownsampledActionWrapper`.

    :param dataset: dataset or name (default ``"synthetic"``, the default target domain).
    :param reward: ground-truth reward name or function (default ``"accuracy"``).
    :param render_mode: ``None`` or ``"rgb_array"``.
    :param image_size: working size in pixels (default 32); ignored for a dataset instance.
    :param action_size: coarse action grid (default 8 -> 64 flat choices).
    :param obs_size: observation size (default 16 -> a 256-vector), ``None`` for the full image.
    :param flatten_obs: flat float32 observation (default) or a small uint8 image.
    :param dataset_kwargs: passed to :func:`~rl4seg_env.data.make_dataset`.
    """
    if isinstance(dataset, str):
        dataset_kwargs["image_size"] = image_size
    env = SegEnv(dataset, reward=reward, render_mode=render_mode, **dataset_kwargs)
    return DownsampledActionWrapper(env, action_size=action_size, obs_size=obs_size, flatten_obs=flatten_obs)


make_small_env.metadata = SegEnv.metadata  # type: ignore[attr-defined]  # read by gymnasium.make
