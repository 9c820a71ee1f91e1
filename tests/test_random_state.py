"""Capturing and restoring a run's random state: generators and the training env's episodes."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import TinyDataset

from agents.random_state import capture_random_state, restore_random_state
from agents.vec_env import make_sb3_vec_env
from rl4seg_env.vector import SegVectorEnv


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_global_generators_continue_where_they_were_captured():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    _draws()
    state = json.loads(json.dumps(capture_random_state()))  # plain JSON values
    expected = [_draws() for _ in range(3)]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_random_state(state)
    assert [_draws() for _ in range(3)] == expected


def test_env_episodes_continue_where_they_were_captured():
    env = SegVectorEnv(3, dataset=TinyDataset(n=20))
    env.reset(seed=5)
    env.step(np.zeros((3, 16, 16), np.uint8))
    state = json.loads(json.dumps(env.get_episode_state()))
    current = env.step(np.zeros((3, 16, 16), np.uint8))[4]["final_info"]["index"]
    expected = [env.step(np.zeros((3, 16, 16), np.uint8))[0] for _ in range(4)]

    other = SegVectorEnv(3, dataset=TinyDataset(n=20))
    other.reset(seed=123)
    obs = other.set_episode_state(state)
    assert other.step(np.zeros((3, 16, 16), np.uint8))[4]["final_info"]["index"].tolist() == current.tolist()
    assert all(np.array_equal(other.step(np.zeros((3, 16, 16), np.uint8))[0], e) for e in expected)
    assert obs.shape == (3, 16, 16, 1)
    with pytest.raises(ValueError, match="episode state for 3 sub-envs, this env has 2"):
        SegVectorEnv(2, dataset=TinyDataset(n=20)).set_episode_state(state)


def test_a_model_gets_back_its_last_observation():
    class Model:  # what restore_random_state uses of an SB3 algorithm
        device = torch.device("cpu")

        def __init__(self, env):
            self.env, self._last_obs = env, None

        def get_env(self):
            return self.env

    model = Model(make_sb3_vec_env(2, dataset=TinyDataset(n=10)))
    model.env.seed(0)
    last = model.env.reset()
    state = capture_random_state(model)
    model.env.reset()
    restore_random_state(state, model)
    assert np.array_equal(model._last_obs, last) and model._last_episode_starts.tolist() == [True, True]
    with pytest.raises(ValueError, match="not a captured random state"):
        restore_random_state({"format": 1, "python": [3]})
