"""Stable-Baselines3's view of the batched environment: :class:`SB3VecEnvAdapter` and :func:`make_sb3_vec_env`.

:class:`rl4seg_env.vector.SegVectorEnv` speaks Gymnasium's vector API (batched info dicts with ``_key``
masks, same-step autoreset); SB3 algorithms expect a ``VecEnv`` (a list of per-env info dicts, each
with ``terminal_observation``). Gymnasium's own :class:`~gymnasium.wrappers.vector.DictInfoToList` does
the info conversion.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers.vector import DictInfoToList
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from rl4seg_env.vector import SegVectorEnv


class SB3VecEnvAdapter(VecEnv):
    """A Stable-Baselines3 ``VecEnv`` over a :class:`SegVectorEnv` (rewards stay batched).

    ``step_wait`` returns the next episodes' observations (B, H, W, 1) uint8, float32 (B,) rewards, all
    ``dones`` ``True`` and a list of B info dicts with the stepped episode's keys (``reward_map``,
    ``sample_id``, ``index``, ``dice``, ``pseudo_label``, ``gt_reward_map`` when present) plus
    ``terminal_observation`` and ``TimeLimit.truncated``. ``env_method(name, *args)`` calls the batched
    env's method once and returns its result repeated for each requested index; ``get_attr`` /
    ``set_attr`` likewise act on the batched env. ``seed(s)`` before ``reset()`` seeds sub-env ``i`` with
    ``s + i``; reset options are taken from env 0 (``{"index": [i_0, ..., i_B-1]}`` selects all images).

    :param vec_env: the batched env.
    """

    def __init__(self, vec_env: SegVectorEnv) -> None:
        if not isinstance(vec_env.unwrapped, SegVectorEnv):
            raise TypeError(f"SB3VecEnvAdapter needs a SegVectorEnv, found {type(vec_env).__name__}")
        self.venv = vec_env
        self._list_info = DictInfoToList(vec_env)
        self._actions: np.ndarray | None = None
        super().__init__(vec_env.num_envs, vec_env.single_observation_space, vec_env.single_action_space)

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] if self._options[0] else None
        obs, self.reset_infos = self._list_info.reset(seed=seeds, options=options)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, step_infos = self._list_info.step(self._actions)
        infos = []
        for i, info in enumerate(step_infos):
            # same-step autoreset: the stepped episode's info and observation sit under final_info / final_obs
            episode = dict(info.get("final_info", {}))
            episode["terminal_observation"] = info["final_obs"]
            episode["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos.append(episode)
        self.reset_infos = [{k: v for k, v in info.items() if not k.startswith("final_")} for info in step_infos]
        return obs, rewards.astype(np.float32), terminated | truncated, infos

    def close(self) -> None:
        self.venv.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * self._count(indices)  # the batched env has no per-env wrappers

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs


def make_sb3_vec_env(num_envs: int = 8, monitor: bool = True, monitor_dir: str | os.PathLike | None = None,
                     **kwargs: Any) -> VecEnv:
    """``SB3VecEnvAdapter(SegVectorEnv(num_envs, **kwargs))`` under SB3's ``VecMonitor``; kwargs as for
    :class:`SegVectorEnv`.

    :param monitor: wrap with :class:`~stable_baselines3.common.vec_env.VecMonitor` (default ``True``): each
        step's infos get SB3's ``episode`` entry (reward, length 1, time), so any SB3 algorithm logs
        ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean`` as on any other env.
    :param monitor_dir: also write the episodes to ``monitor_dir/monitor.csv`` (SB3's Monitor format,
        readable by ``stable_baselines3.common.monitor.load_results`` and rl_zoo3's plotting scripts).
    """
    env: VecEnv = SB3VecEnvAdapter(SegVectorEnv(num_envs, **kwargs))
    if monitor or monitor_dir is not None:
        filename = None
        if monitor_dir is not None:
            os.makedirs(monitor_dir, exist_ok=True)
            filename = os.path.join(os.fspath(monitor_dir), "monitor.csv")
        env = VecMonitor(env, filename=filename)
    return env


__all__ = ["SB3VecEnvAdapter", "make_sb3_vec_env"]
