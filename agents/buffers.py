"""Rollout storage for per-pixel actions.

Each environment step is a whole one-step episode (RL4Seg is a contextual bandit): an image, the
label map the actor produced, its per-pixel log-probabilities under the actor at rollout time and
under the frozen reference policy, the per-pixel reward map and the critic's value map. No returns
or GAE are computed: the advantage is ``reward - V`` per pixel, built in :meth:`agents.ppo.PixelPPO.train`.
"""
from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer

from agents.policies import pixel_action_classes


class PixelRolloutBufferSamples(NamedTuple):
    """A minibatch of B images (torch tensors on the buffer's device).

    ``observations`` (B, *obs_shape) as stored (uint8 images); ``actions`` (B, H, W) int64;
    ``old_log_prob``, ``ref_log_prob``, ``reward_maps``, ``old_values`` (B, H, W) float32;
    ``anchors`` (B,) bool (True where the action is an accepted pseudo-label).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    old_log_prob: torch.Tensor
    ref_log_prob: torch.Tensor
    reward_maps: torch.Tensor
    old_values: torch.Tensor
    anchors: torch.Tensor


class PixelRolloutBuffer(BaseBuffer):
    """Stores ``buffer_size`` steps of ``n_envs`` images with per-pixel actions, log-probs and rewards.

    :param buffer_size: rollout steps per environment (``n_steps`` of the algorithm).
    :param observation_space: Box image space (as seen by the algorithm, e.g. (1, H, W) uint8).
    :param action_space: ``MultiDiscrete(np.full((H, W), n_classes))``.
    :param device: torch device of the sampled minibatches (default ``"auto"``).
    :param n_envs: number of parallel environments (default 1).
    :param gamma: unused (one-step episodes); accepted so that SB3's ``OnPolicyAlgorithm`` can build it.
    :param gae_lambda: unused, as ``gamma``.

    Actions are stored as uint8 when ``n_classes <= 256`` (int64 otherwise); every per-pixel float map
    as float32. Memory per image: ``obs + H*W*(1 + 4*4)`` bytes.
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space,
                 device: torch.device | str = "auto", n_envs: int = 1, gamma: float = 0.0,
                 gae_lambda: float = 1.0) -> None:
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.n_classes, self.image_shape = pixel_action_classes(action_space)
        self.action_dtype = np.uint8 if self.n_classes <= 256 else np.int64
        self.reset()

    def reset(self) -> None:
        """Allocate empty storage and rewind."""
        steps = (self.buffer_size, self.n_envs)
        self.observations = np.zeros((*steps, *self.obs_shape), dtype=self.observation_space.dtype)
        self.actions = np.zeros((*steps, *self.image_shape), dtype=self.action_dtype)
        self.log_probs = np.zeros((*steps, *self.image_shape), dtype=np.float32)
        self.ref_log_probs = np.zeros((*steps, *self.image_shape), dtype=np.float32)
        self.reward_maps = np.zeros((*steps, *self.image_shape), dtype=np.float32)
        self.values = np.zeros((*steps, *self.image_shape), dtype=np.float32)
        self.anchors = np.zeros(steps, dtype=bool)
        super().reset()

    def add(self, obs: np.ndarray, actions: np.ndarray, reward_maps: np.ndarray, values: torch.Tensor,
            log_probs: torch.Tensor, ref_log_probs: torch.Tensor, anchors: np.ndarray | None = None) -> None:
        """Store one step of all envs.

        :param obs: (n_envs, *obs_shape) observations the actions were taken on.
        :param actions: (n_envs, H, W) label maps actually credited (pseudo-labels for anchors).
        :param reward_maps: (n_envs, H, W) per-pixel rewards in [0, 1].
        :param values: (n_envs, H, W) critic value maps.
        :param log_probs: (n_envs, H, W) log pi_old(actions) per pixel.
        :param ref_log_probs: (n_envs, H, W) log pi_ref(actions) per pixel.
        :param anchors: (n_envs,) bool, True where the action is a pseudo-label (default all False).
        """
        if self.full:
            raise RuntimeError(f"PixelRolloutBuffer is full ({self.buffer_size} steps); call reset() first")
        expected = (self.n_envs, *self.image_shape)
        for name, array in (("actions", actions), ("reward_maps", reward_maps), ("values", values),
                            ("log_probs", log_probs), ("ref_log_probs", ref_log_probs)):
            if tuple(array.shape) != expected:
                raise ValueError(f"PixelRolloutBuffer.add: {name} must have shape {expected}, found {tuple(array.shape)}")
        self.observations[self.pos] = np.asarray(obs).reshape((self.n_envs, *self.obs_shape))
        self.actions[self.pos] = np.asarray(actions)
        self.reward_maps[self.pos] = np.asarray(reward_maps, dtype=np.float32)
        self.values[self.pos] = values.detach().cpu().numpy()
        self.log_probs[self.pos] = log_probs.detach().cpu().numpy()
        self.ref_log_probs[self.pos] = ref_log_probs.detach().cpu().numpy()
        self.anchors[self.pos] = False if anchors is None else np.asarray(anchors, dtype=bool)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def get(self, batch_size: int | None = None) -> Generator[PixelRolloutBufferSamples, None, None]:
        """Yield shuffled minibatches of ``batch_size`` images covering the filled buffer once.

        ``None`` (or a value larger than the buffer) yields the whole buffer as one batch.
        """
        n = self.size() * self.n_envs
        if n == 0:
            raise RuntimeError("PixelRolloutBuffer.get: the buffer is empty")
        indices = np.random.permutation(n)
        batch_size = n if batch_size is None else max(1, min(int(batch_size), n))
        for start in range(0, n, batch_size):
            yield self._get_samples(indices[start:start + batch_size])

    def _flat(self, array: np.ndarray) -> np.ndarray:
        return array[: self.size()].reshape((-1, *array.shape[2:]))

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> PixelRolloutBufferSamples:  # noqa: ANN001
        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(self._flat(array)[batch_inds], device=self.device)

        return PixelRolloutBufferSamples(
            observations=tensor(self.observations),
            actions=tensor(self.actions).long(),
            old_log_prob=tensor(self.log_probs),
            ref_log_prob=tensor(self.ref_log_probs),
            reward_maps=tensor(self.reward_maps),
            old_values=tensor(self.values),
            anchors=tensor(self.anchors),
        )
