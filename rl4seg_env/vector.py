"""A natively batched :class:`SegVectorEnv`.

:class:`SegVectorEnv` runs ``num_envs`` copies of :class:`~rl4seg_env.env.SegEnv` as arrays: one
reward-function (or learned reward model) call on (B, H, W) per step instead of B calls on (1, H, W).
Every episode lasts one step, so it uses *same-step* autoreset: ``step`` returns the observations of
the next episodes, with the stepped episodes' observations in ``info["final_obs"]`` and their info in
``info["final_info"]`` - exactly what ``SyncVectorEnv(..., autoreset_mode=AutoresetMode.SAME_STEP)``
returns over ``SegEnv`` copies for the same seeds (sub-env ``i`` is seeded ``seed + i``).

Stable-Baselines3 sees it through :class:`agents.vec_env.SB3VecEnvAdapter` (this package never imports
Stable-Baselines3: the env works with any RL library).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rl4seg_env.data import Sample, SegDataset
from rl4seg_env.env import (
    DatasetEpisodes,
    check_actions,
    check_indices,
    draw_index,
    mean_dice,
    mean_reward,
    render_panel,
    resolve_dataset,
    resolve_reward,
    to_observation,
)
from rl4seg_env.rewards import RewardFunction, RewardModel
from rl4seg_env.wrappers import _check_reward_model, evaluate_reward_model


def _all(num_envs: int) -> np.ndarray:
    return np.ones(num_envs, dtype=np.bool_)


class SegVectorEnv(DatasetEpisodes, VectorEnv):
    """``num_envs`` one-step segmentation episodes at a time, rewards computed in one batched call.

    Spaces: observation ``Box(0, 255, (B, H, W, 1), uint8)``, action ``MultiDiscrete`` of shape (B, H, W)
    (uint8). ``step`` returns the *next* episodes' observations (same-step autoreset), float64 (B,)
    rewards, ``terminated`` all ``True``, ``truncated`` all ``False``, and a Gymnasium vector info dict:
    top level ``sample_id``/``index`` of the new episodes, ``final_obs`` (object array of (H, W, 1)
    observations) and ``final_info`` with the stepped episodes' ``reward_map`` (float32 (B, H, W)),
    ``sample_id``, ``index``, ``dice`` (float64 (B,), labelled data only), ``gt_reward_map`` (with a
    learned reward and a ground-truth reward) and ``pseudo_label`` (uint8 (B, H, W), valid where the mask
    ``_pseudo_label`` is ``True``). Each key ``k`` has its boolean mask ``_k``.

    :param num_envs: batch size B (default 1).
    :param dataset: dataset or dataset name, as for :class:`~rl4seg_env.env.SegEnv` (default ``"synthetic"``).
    :param reward: ground-truth reward name/function or ``None``, as for ``SegEnv`` (default ``"accuracy"``).
    :param reward_model: optional learned :class:`~rl4seg_env.rewards.RewardModel`; when given its map is
        the reward (as with :class:`~rl4seg_env.wrappers.LearnedRewardWrapper`); swap it with
        :meth:`set_reward_model`. Default ``None``.
    :param render_mode: ``None`` or ``"rgb_array"`` (a tuple of per-env panels of the last step).
    :param dataset_kwargs: passed to :func:`~rl4seg_env.data.make_dataset` for a dataset name.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, dataset: SegDataset | str = "synthetic",
                 reward: str | RewardFunction | None = "accuracy", reward_model: RewardModel | None = None,
                 render_mode: str | None = None, **dataset_kwargs: Any) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, found {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"found {render_mode!r}")
        self.num_envs = int(num_envs)
        self._dataset = resolve_dataset(dataset, dataset_kwargs)
        self.reward_fn = resolve_reward(reward, self._dataset)
        self._reward_model = None if reward_model is None else _check_reward_model(reward_model)
        self.render_mode = render_mode
        height, width = self.image_size
        self.single_observation_space = gym.spaces.Box(0, 255, (height, width, 1), np.uint8)
        self.single_action_space = gym.spaces.MultiDiscrete(np.full((height, width), self.n_classes), dtype=np.uint8)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._active = check_indices(None, len(self._dataset))
        self._pseudo_labels: dict[str, np.ndarray] = {}
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._indices: np.ndarray | None = None
        self._samples: list[Sample] = []
        self._last_render: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = []

    @property
    def reward_model(self) -> RewardModel | None:
        """The learned reward model, or ``None`` for the ground-truth reward."""
        return self._reward_model

    # -- methods the training loop calls ----------------------------------------------------
    def set_reward_model(self, reward_model: RewardModel) -> None:
        """Set or swap the learned reward model in place."""
        self._reward_model = _check_reward_model(reward_model)

    def get_episode_state(self) -> dict[str, Any]:
        """What decides the next episodes, as JSON values: each sub-env's generator state and the dataset
        indices of the current episodes (``None`` before the first reset). See :meth:`set_episode_state`."""
        return {"rngs": [None if rng is None else rng.bit_generator.state for rng in self._rngs],
                "indices": None if self._indices is None else self._indices.tolist()}

    def set_episode_state(self, state: Mapping[str, Any]) -> np.ndarray | None:
        """Restore :meth:`get_episode_state`'s generators and current episodes (a resumed run goes on exactly
        where the captured one stood); returns the current observations (B, H, W, 1), ``None`` when the
        state was captured before the first reset.

        :raises ValueError: a state for another number of sub-envs or with indices outside the dataset.
        """
        rngs, indices = state["rngs"], state["indices"]
        if len(rngs) != self.num_envs or (indices is not None and len(indices) != self.num_envs):
            raise ValueError(f"episode state for {len(rngs)} sub-envs, this env has {self.num_envs}")
        restored: list[np.random.Generator | None] = []
        for rng_state in rngs:
            if rng_state is None:
                restored.append(None)
                continue
            bit_generator = getattr(np.random, rng_state["bit_generator"])()
            bit_generator.state = rng_state
            restored.append(np.random.Generator(bit_generator))
        self._rngs = restored
        if indices is None:
            self._indices, self._samples = None, []
            return None
        indices = np.asarray(indices, dtype=np.int64)
        if indices.min() < 0 or indices.max() >= len(self._dataset):
            raise ValueError(f"episode state indices must lie in 0..{len(self._dataset) - 1}, found {indices.tolist()}")
        return self._start(indices)

    # -- gymnasium vector API ---------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start B new episodes.

        :param seed: ``None`` (keep each sub-env's generator), an int (sub-env ``i`` gets ``seed + i``,
            like ``SyncVectorEnv``) or a list of B ints/``None``.
        :param options: ``{"index": int or B ints}`` selects the images instead of drawing them.
        """
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"a list of seeds must have num_envs={self.num_envs} entries, found {len(seeds)}")
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i] = seeding.np_random(s)[0]
        if options and "index" in options:
            indices = np.broadcast_to(np.asarray(options["index"], dtype=np.int64), (self.num_envs,)).copy()
            if indices.min() < 0 or indices.max() >= len(self._dataset):
                raise ValueError(f"options['index'] must lie in 0..{len(self._dataset) - 1}, found {indices.tolist()}")
        else:
            indices = self._draw()
        obs = self._start(indices)
        return obs, self._reset_info()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Score B label maps (B, H, W) in one batched reward call, then start the next B episodes."""
        if self._indices is None:
            raise RuntimeError("SegVectorEnv.step() called before reset(); call envs.reset() first")
        b = self.num_envs
        actions = check_actions(actions, (b, *self.image_size), self.n_classes)
        images = np.stack([s.image for s in self._samples])
        labels = np.stack([s.label for s in self._samples]) if self._dataset.with_labels else None

        final_info: dict[str, Any] = {
            "sample_id": np.array([s.id for s in self._samples], dtype=object), "_sample_id": _all(b),
            "index": self._indices.copy(), "_index": _all(b),
        }
        rewards = np.zeros(b, dtype=np.float64)
        reward_map = None
        if self.reward_fn is not None:
            reward_map = np.asarray(self.reward_fn(images, actions, labels), dtype=np.float32)
            rewards = mean_reward(reward_map)
        if self._reward_model is not None:
            if reward_map is not None:
                final_info["gt_reward_map"], final_info["_gt_reward_map"] = reward_map, _all(b)
            reward_map = evaluate_reward_model(self._reward_model, images, actions)
            rewards = mean_reward(reward_map)
        if reward_map is not None:
            final_info["reward_map"], final_info["_reward_map"] = reward_map, _all(b)
        if labels is not None:
            final_info["dice"], final_info["_dice"] = mean_dice(actions, labels, self.n_classes), _all(b)
        has_pseudo = np.array([s.id in self._pseudo_labels for s in self._samples])
        if has_pseudo.any():
            pseudo = np.zeros((b, *self.image_size), dtype=np.uint8)
            for i in np.flatnonzero(has_pseudo):
                pseudo[i] = self._pseudo_labels[self._samples[i].id]
            final_info["pseudo_label"], final_info["_pseudo_label"] = pseudo, has_pseudo

        final_obs = np.empty(b, dtype=object)
        for i, sample in enumerate(self._samples):
            final_obs[i] = to_observation(sample.image)
        self._last_render = [(s.image, actions[i].copy(), None if reward_map is None else reward_map[i])
                             for i, s in enumerate(self._samples)]

        obs = self._start(self._draw())  # same-step autoreset: every episode ended
        info = self._reset_info()
        info.update({"final_obs": final_obs, "_final_obs": _all(b), "final_info": final_info, "_final_info": _all(b)})
        return obs, rewards, np.ones(b, dtype=np.bool_), np.zeros(b, dtype=np.bool_), info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """``rgb_array``: per-env uint8 (H, 3W, 3) panels of the last step (current images before one)."""
        if self.render_mode != "rgb_array":
            return None
        if self._indices is None:
            raise RuntimeError("SegVectorEnv.render() called before reset()")
        frames = self._last_render or [(s.image, None, None) for s in self._samples]
        return tuple(render_panel(*frame) for frame in frames)

    # -- internals --------------------------------------------------------------------------
    def _draw(self) -> np.ndarray:
        return np.array([draw_index(rng, self._active) for rng in self._rngs], dtype=np.int64)  # type: ignore[arg-type]

    def _start(self, indices: np.ndarray) -> np.ndarray:
        self._indices = indices
        self._samples = [self._dataset[int(i)] for i in indices]
        return np.stack([to_observation(s.image) for s in self._samples])

    def _reset_info(self) -> dict[str, Any]:
        b = self.num_envs
        return {"sample_id": np.array([s.id for s in self._samples], dtype=object), "_sample_id": _all(b),
                "index": self._indices.copy(), "_index": _all(b)}  # type: ignore[union-attr]


__all__ = ["SegVectorEnv"]
