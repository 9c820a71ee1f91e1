"""The named task levels: registered, documented in the registry listing, and valid Gymnasium envs."""
import io
import warnings
from contextlib import redirect_stdout

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rl4seg_env  # noqa: F401  (registers the ids)
from rl4seg_env.levels import LEVELS, level_ids


def test_the_registry_lists_every_level():
    out = io.StringIO()
    with redirect_stdout(out):
        gym.pprint_registry()
    listed = out.getvalue()
    assert level_ids() == [f"RL4Seg-{n}-v0" for n in LEVELS] + [f"RL4SegSmall-{n}-v0" for n in LEVELS]
    assert all(env_id in listed for env_id in level_ids())


@pytest.mark.parametrize("env_id", level_ids())
def test_each_level_passes_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if env_id.startswith("RL4SegSmall-"):
            sb3_check_env(env)
        else:
            check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_levels_get_harder_in_size_domain_and_reward():
    easy, medium, hard = (gym.make(f"RL4Seg-{n}-v0").unwrapped for n in ("Easy", "Medium", "Hard"))
    assert [e.image_size for e in (easy, medium, hard)] == [(32, 32), (64, 64), (128, 128)]
    assert [e.dataset.preset_name for e in (easy, medium, hard)] == ["source", "default_target", "target_artifact"]
    obs, _ = hard.reset(seed=0)
    _, reward, terminated, _, info = hard.step(np.zeros(hard.image_size, np.uint8))
    assert terminated and reward == pytest.approx(0.0)  # an empty map has Dice 0 with the Dice reward
