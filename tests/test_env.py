"""SegEnv, RL4Seg-v0 registration and the batched vector env."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rl4seg_env  # noqa: F401  (registers RL4Seg-v0)
from rl4seg_env.data.base import Sample, SegDataset
from rl4seg_env.env import SegEnv


class TinyDataset(SegDataset):
    """Deterministic random images; label = intensity bins, so a thresholding policy is perfect."""

    def __init__(self, n: int = 6, size: tuple[int, int] = (16, 16), with_labels: bool = True) -> None:
        self.image_size = size
        self.class_names = ("background", "lv", "myo")
        self.with_labels = with_labels
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        image = np.random.default_rng(index).random(self.image_size).astype(np.float32)
        label = np.minimum(image * 3, 2).astype(np.uint8) if self.with_labels else None
        return Sample(image, label, (0.5, 0.3), f"tiny_{index:03d}")


def assert_no_warnings(record: list[warnings.WarningMessage]) -> None:
    assert not record, [f"{w.category.__name__}: {w.message}" for w in record]


@pytest.fixture
def env() -> SegEnv:
    return SegEnv(TinyDataset(), render_mode="rgb_array")


def test_spaces_and_one_step_episode(env: SegEnv) -> None:
    assert env.observation_space == gym.spaces.Box(0, 255, (16, 16, 1), np.uint8)
    assert env.action_space.shape == (16, 16) and env.action_space.dtype == np.uint8
    assert np.all(env.action_space.nvec == 3)
    obs, info = env.reset(seed=3)
    sample = env.get_sample(info["index"])
    assert info["sample_id"] == sample.id
    np.testing.assert_array_equal(obs[..., 0], np.rint(sample.image * 255).astype(np.uint8))

    obs2, reward, terminated, truncated, info = env.step(sample.label)  # the perfect answer
    assert terminated and not truncated
    np.testing.assert_array_equal(obs2, obs)
    assert reward == 1.0 and info["dice"] == 1.0
    assert info["reward_map"].dtype == np.float32 and info["reward_map"].shape == (16, 16)
    assert "pseudo_label" not in info

    env.reset(options={"index": 2})
    wrong = (env.get_sample(2).label + 1) % 3
    _, reward, *_, info = env.step(wrong.astype(np.uint8))
    assert reward == 0.0 and info["index"] == 2 and info["dice"] == 0.0
    assert float(info["reward_map"].mean()) == reward


def test_check_env_no_warnings() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        # through gymnasium.make so that the checker also tests the render modes (it needs a spec)
        check_env(gym.make("RL4Seg-v0", dataset=TinyDataset(), render_mode="rgb_array").unwrapped)
    assert_no_warnings(record)


def test_registered_default_passes_check_env() -> None:
    pytest.importorskip("rl4seg_env.data.synthetic")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        made = gym.make("RL4Seg-v0", n_images=8, image_size=32)
        check_env(made.unwrapped)
    assert_no_warnings(record)
    assert made.spec.max_episode_steps is None
    assert made.observation_space.shape == (32, 32, 1)


def test_registered_kwargs_pass_to_dataset() -> None:
    made = gym.make("RL4Seg-v0", dataset=TinyDataset(size=(8, 12)), reward="dice")
    assert made.observation_space.shape == (8, 12, 1)
    made.reset(seed=0)
    _, reward, terminated, *_ = made.step(np.zeros((8, 12), np.uint8))
    assert terminated and 0.0 <= reward <= 1.0


def test_same_seed_same_episodes() -> None:
    def run(seed: int) -> list[tuple[str, float]]:
        env = SegEnv(TinyDataset(n=50))
        out = []
        env.reset(seed=seed)
        env.action_space.seed(seed)
        for _ in range(6):
            obs, info = env.reset()
            _, reward, *_ = env.step(env.action_space.sample())
            out.append((info["sample_id"], reward, obs.tobytes()))
        return out

    assert run(7) == run(7)
    assert [s for s, *_ in run(7)] != [s for s, *_ in run(8)]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros((16, 15), np.uint8), r"shape \(16, 16\).*found shape \(16, 15\)"),
        (np.zeros((16, 16), np.float32), "integer dtype.*float32"),
        (np.full((16, 16), np.nan, np.float32), "integer dtype.*256 NaN"),
        (np.full((16, 16), 3, np.int64), r"0\.\.2.*found \[3\]"),
        (np.full((16, 16), -1, np.int64), r"found \[-1\]"),
    ],
)
def test_bad_actions_are_refused(env: SegEnv, action: np.ndarray, message: str) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_step_before_reset_is_refused() -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        SegEnv(TinyDataset()).step(np.zeros((16, 16), np.uint8))


def test_active_indices_are_respected(env: SegEnv) -> None:
    env.set_active_indices([1, 4])
    seen = {env.reset(seed=s)[1]["index"] for s in range(30)}
    assert seen == {1, 4}
    env.set_active_indices(None)
    assert len({env.reset()[1]["index"] for _ in range(60)}) == 6
    for bad, message in [([], "non-empty"), ([0, 6], r"0\.\.5.*\[6\]"), ([1, 1], "duplicates"), ([0.5], "integers")]:
        with pytest.raises(ValueError, match=message):
            env.set_active_indices(bad)


def test_pseudo_labels_appear_in_info(env: SegEnv) -> None:
    pseudo = np.ones((16, 16), np.uint8)
    env.set_pseudo_labels({"tiny_002": pseudo})
    env.reset(options={"index": 2})
    info = env.step(np.zeros((16, 16), np.uint8))[-1]
    np.testing.assert_array_equal(info["pseudo_label"], pseudo)
    env.reset(options={"index": 3})
    assert "pseudo_label" not in env.step(np.zeros((16, 16), np.uint8))[-1]
    env.set_pseudo_labels({})  # replaces
    env.reset(options={"index": 2})
    assert "pseudo_label" not in env.step(np.zeros((16, 16), np.uint8))[-1]
    with pytest.raises(ValueError, match=r"expected shape \(16, 16\), found \(8, 8\)"):
        env.set_pseudo_labels({"tiny_000": np.zeros((8, 8), np.uint8)})
    with pytest.raises(ValueError, match=r"0\.\.2, found \[5\]"):
        env.set_pseudo_labels({"tiny_000": np.full((16, 16), 5, np.uint8)})


def test_no_reward_and_unlabelled_data() -> None:
    env = SegEnv(TinyDataset(with_labels=False), reward=None)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.zeros((16, 16), np.uint8))
    assert reward == 0.0 and terminated
    assert "reward_map" not in info and "dice" not in info
    with pytest.raises(ValueError, match="needs labels"):
        SegEnv(TinyDataset(with_labels=False), reward="accuracy")


def test_render_rgb_panel(env: SegEnv) -> None:
    env.reset(seed=0)
    before = env.render()
    assert before.shape == (16, 48, 3) and before.dtype == np.uint8
    assert not before[:, 16:].any()  # no action or reward map yet
    env.step(np.ones((16, 16), np.uint8))
    after = env.render()
    assert after.shape == (16, 48, 3) and after[:, 16:].any()
    assert SegEnv(TinyDataset()).render() is None
