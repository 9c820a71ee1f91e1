"""LearnedRewardWrapper and the small-action wrapper for stock Stable-Baselines3."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import rl4seg_env  # noqa: F401  (registers the envs)
from rl4seg_env.env import SegEnv
from rl4seg_env.rewards import RewardModel
from rl4seg_env.wrappers import DownsampledActionWrapper, LearnedRewardWrapper, coarse_to_full
from conftest import TinyDataset
from test_env import assert_no_warnings  # tests/ is on sys.path under pytest


class ConvReward(nn.Module):
    """A tiny learned reward: 1x1 conv on [image, one-hot action] + sigmoid, numpy in / numpy out."""

    def __init__(self, n_classes: int = 3, bias: float = 0.0) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.conv = nn.Conv2d(1 + n_classes, 1, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 1 + 1] = 3.0  # predicting class 1 is "right"
            self.conv.bias.fill_(bias)
        self.calls: list[tuple[int, ...]] = []

    @torch.no_grad()
    def __call__(self, images: np.ndarray, actions: np.ndarray) -> np.ndarray:
        self.calls.append(images.shape)
        x = torch.from_numpy(images)[:, None]
        onehot = nn.functional.one_hot(torch.from_numpy(actions.astype(np.int64)), self.n_classes)
        x = torch.cat([x, onehot.permute(0, 3, 1, 2).float()], dim=1)
        return torch.sigmoid(self.conv(x))[:, 0].numpy()


def test_reward_model_protocol() -> None:
    assert isinstance(ConvReward(), RewardModel)


def test_learned_reward_replaces_ground_truth_and_swaps() -> None:
    env = LearnedRewardWrapper(SegEnv(TinyDataset()), ConvReward(bias=0.0))
    env.reset(seed=0)
    action = np.ones((16, 16), np.uint8)
    _, reward, terminated, _, info = env.step(action)
    assert terminated
    expected = 1 / (1 + np.exp(-3.0))
    np.testing.assert_allclose(info["reward_map"], expected, rtol=1e-6)
    assert reward == pytest.approx(expected)
    # the ground-truth map is kept for monitoring, and differs from the learned one
    label = env.unwrapped.current_sample.label
    np.testing.assert_array_equal(info["gt_reward_map"], (label == 1).astype(np.float32))

    env.set_reward_model(ConvReward(bias=-10.0))
    env.reset(seed=0)
    _, swapped, *_ = env.step(action)
    assert swapped < 0.001 < reward
    with pytest.raises(TypeError, match="RewardModel protocol"):
        env.set_reward_model("not a model")


def test_learned_reward_on_unlabelled_env_and_model_sees_image() -> None:
    model = ConvReward()
    env = LearnedRewardWrapper(SegEnv(TinyDataset(with_labels=False), reward=None), model)
    env.reset(seed=1)
    _, reward, *_, info = env.step(np.zeros((16, 16), np.uint8))
    assert model.calls == [(1, 16, 16)]
    assert "gt_reward_map" not in info and "dice" not in info
    assert reward == pytest.approx(0.5)  # only class-1 pixels are rewarded above chance


def test_learned_reward_refuses_bad_model_output() -> None:
    env = LearnedRewardWrapper(SegEnv(TinyDataset()), lambda images, actions: images[:, :8])
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"returned shape \(1, 8, 16\), expected \(1, 16, 16\)"):
        env.step(np.zeros((16, 16), np.uint8))
    env.set_reward_model(lambda images, actions: images * 2 + 1)
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        env.step(np.zeros((16, 16), np.uint8))


def test_learned_reward_above_action_wrapper() -> None:
    model = ConvReward()
    env = LearnedRewardWrapper(DownsampledActionWrapper(SegEnv(TinyDataset()), action_size=4), model)
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.ones(16, np.int64))
    assert info["reward_map"].shape == (16, 16)
    assert reward == pytest.approx(1 / (1 + np.exp(-3.0)))


def test_coarse_to_full_is_nearest_neighbour() -> None:
    coarse = np.arange(6).reshape(2, 3)
    full = coarse_to_full(coarse, (4, 7))
    assert full.shape == (4, 7)
    np.testing.assert_array_equal(full[:2, 0], [0, 0])
    np.testing.assert_array_equal(full[3], [3, 3, 3, 4, 4, 5, 5])
    assert set(np.unique(full)) == set(range(6))


def test_downsampled_wrapper_spaces_and_action() -> None:
    base = SegEnv(TinyDataset(size=(32, 32)))
    env = DownsampledActionWrapper(base, action_size=(4, 8), obs_size=8)
    assert env.action_space == gym.spaces.MultiDiscrete(np.full(32, 3))
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (64,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs.mean(), base.current_sample.image.mean(), atol=0.02)
    coarse = np.random.default_rng(0).integers(0, 3, 32)
    env.step(coarse)
    np.testing.assert_array_equal(base.last_action[::8, ::4], coarse.reshape(4, 8))
    with pytest.raises(ValueError, match=r"shape \(32,\).*found shape \(4, 8\)"):
        env.step(coarse.reshape(4, 8))
    image_obs = DownsampledActionWrapper(base, obs_size=16, flatten_obs=False)
    assert image_obs.reset(seed=0)[0].shape == (16, 16, 1)


def test_sb3_check_env_passes_without_warnings() -> None:
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_env(gym.make("RL4SegSmall-v0", dataset=TinyDataset(size=(32, 32))))
    assert_no_warnings(record)


def test_registered_small_env_on_synthetic_data() -> None:
    pytest.importorskip("rl4seg_env.data.synthetic")
    env = gym.make("RL4SegSmall-v0", n_images=4)
    assert env.unwrapped.image_size == (32, 32)
    assert env.action_space.shape == (64,) and env.observation_space.shape == (256,)


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Tiny networks run faster on one thread, and the CI machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_stock_sb3_ppo_trains_through_small_wrapper(one_torch_thread: None) -> None:
    from stable_baselines3 import PPO

    env = gym.make("RL4SegSmall-v0", dataset=TinyDataset(n=8, size=(32, 32)))
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32]})
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    _, reward, terminated, *_ = env.step(action)
    assert terminated and 0.0 <= reward <= 1.0
