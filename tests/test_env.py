"""SegEnv, RL4Seg-v0 registration and the batched vector env."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rl4seg_env  # noqa: F401  (registers RL4Seg-v0)
from conftest import TinyDataset  # tests/ is on sys.path under pytest
from rl4seg_env.env import SegEnv


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


# ----------------------------------------------------------------------------------------------
# Batched vector env
# ----------------------------------------------------------------------------------------------
from gymnasium.vector import AutoresetMode, SyncVectorEnv  # noqa: E402

from agents.vec_env import SB3VecEnvAdapter
from rl4seg_env.vector import SegVectorEnv  # noqa: E402


class CountingReward(rl4seg_env.rewards.PixelAccuracyReward):
    """Accuracy reward that records the batch shape of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, images, actions, labels):  # type: ignore[no-untyped-def]
        self.calls.append(actions.shape)
        return super().__call__(images, actions, labels)


def random_actions(rng: np.random.Generator, n: int, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    return rng.integers(0, 3, (n, *size)).astype(np.uint8)


def test_make_vec_builds_batched_env() -> None:
    envs = gym.make_vec("RL4Seg-v0", num_envs=4, vectorization_mode="vector_entry_point", dataset=TinyDataset())
    assert isinstance(envs, SegVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert envs.observation_space.shape == (4, 16, 16, 1) and envs.action_space.shape == (4, 16, 16)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (4, 16, 16, 1) and obs.dtype == np.uint8
    assert info["sample_id"].shape == (4,)


def test_vector_env_rewards_in_one_call_and_equal_single_env() -> None:
    reward = CountingReward()
    envs = SegVectorEnv(4, TinyDataset(n=20), reward=reward)
    singles = [SegEnv(TinyDataset(n=20)) for _ in range(4)]
    obs, info = envs.reset(seed=11)
    single_obs = [env.reset(seed=11 + i)[0] for i, env in enumerate(singles)]
    np.testing.assert_array_equal(obs, np.stack(single_obs))
    rng = np.random.default_rng(0)
    for _ in range(3):
        actions = random_actions(rng, 4)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        assert terminated.all() and not truncated.any()
        for i, env in enumerate(singles):
            final_obs, reward_i, _, _, info_i = env.step(actions[i])
            np.testing.assert_array_equal(info["final_obs"][i], final_obs)
            assert rewards[i] == reward_i
            assert info["final_info"]["sample_id"][i] == info_i["sample_id"]
            assert info["final_info"]["dice"][i] == info_i["dice"]
            np.testing.assert_array_equal(info["final_info"]["reward_map"][i], info_i["reward_map"])
            next_obs, next_info = env.reset()
            np.testing.assert_array_equal(obs[i], next_obs)
            assert info["sample_id"][i] == next_info["sample_id"]
    assert reward.calls == [(4, 16, 16)] * 3  # one batched reward call per step


def test_sync_vector_env_same_step_equals_segvectorenv() -> None:
    sync = SyncVectorEnv([lambda: SegEnv(TinyDataset(n=20)) for _ in range(3)], autoreset_mode=AutoresetMode.SAME_STEP)
    native = SegVectorEnv(3, TinyDataset(n=20))
    for env in sync.envs:
        env.set_pseudo_labels({"tiny_005": np.ones((16, 16), np.uint8)})
    native.set_pseudo_labels({"tiny_005": np.ones((16, 16), np.uint8)})
    obs_a, info_a = sync.reset(seed=5)
    obs_b, info_b = native.reset(seed=5)
    np.testing.assert_array_equal(obs_a, obs_b)
    rng = np.random.default_rng(1)
    seen_pseudo = False
    for _ in range(8):
        actions = random_actions(rng, 3)
        obs_a, rew_a, term_a, trunc_a, info_a = sync.step(actions)
        obs_b, rew_b, term_b, trunc_b, info_b = native.step(actions)
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(term_a, term_b)
        np.testing.assert_array_equal(trunc_a, trunc_b)
        assert set(info_a) == set(info_b)
        assert set(info_a["final_info"]) == set(info_b["final_info"])
        for key, value in info_a["final_info"].items():
            np.testing.assert_array_equal(np.stack(list(value)), np.stack(list(info_b["final_info"][key])), err_msg=key)
        for i in range(3):
            np.testing.assert_array_equal(info_a["final_obs"][i], info_b["final_obs"][i])
        np.testing.assert_array_equal(info_a["sample_id"], info_b["sample_id"])
        np.testing.assert_array_equal(info_a["index"], info_b["index"])
        seen_pseudo |= "pseudo_label" in info_b["final_info"]
    assert seen_pseudo


def test_vector_env_methods_and_bad_input() -> None:
    envs = SegVectorEnv(2, TinyDataset())
    with pytest.raises(RuntimeError, match="before reset"):
        envs.step(np.zeros((2, 16, 16), np.uint8))
    envs.set_active_indices([3])
    obs, info = envs.reset(seed=0)
    assert list(info["index"]) == [3, 3]
    assert envs.get_sample(3).id == "tiny_003"
    with pytest.raises(ValueError, match=r"shape \(2, 16, 16\).*found shape \(16, 16\)"):
        envs.step(np.zeros((16, 16), np.uint8))
    _, _, _, _, info = envs.step(np.zeros((2, 16, 16), np.uint8))
    assert list(info["index"]) == [3, 3] and list(info["final_info"]["index"]) == [3, 3]
    obs, info = envs.reset(options={"index": [0, 5]})
    assert list(info["sample_id"]) == ["tiny_000", "tiny_005"]


def test_vector_learned_reward_matches_wrapper_and_swaps() -> None:
    from test_wrappers import ConvReward

    from rl4seg_env.wrappers import LearnedRewardWrapper

    model = ConvReward()
    envs = SegVectorEnv(3, TinyDataset(), reward_model=model)
    singles = [LearnedRewardWrapper(SegEnv(TinyDataset()), ConvReward()) for _ in range(3)]
    envs.reset(seed=2)
    for i, env in enumerate(singles):
        env.reset(seed=2 + i)
    actions = random_actions(np.random.default_rng(3), 3)
    _, rewards, *_, info = envs.step(actions)
    assert model.calls == [(3, 16, 16)]
    for i, env in enumerate(singles):
        _, reward_i, *_, info_i = env.step(actions[i])
        assert rewards[i] == pytest.approx(reward_i, rel=1e-6)
        np.testing.assert_allclose(info["final_info"]["reward_map"][i], info_i["reward_map"], rtol=1e-6)
        np.testing.assert_array_equal(info["final_info"]["gt_reward_map"][i], info_i["gt_reward_map"])
    envs.set_reward_model(ConvReward(bias=-10.0))
    _, swapped, *_ = envs.step(actions)
    assert swapped.max() < 0.01 < rewards.min()


def test_sb3_adapter_infos_and_env_method() -> None:
    envs = SB3VecEnvAdapter(SegVectorEnv(4, TinyDataset(), render_mode="rgb_array"))
    envs.seed(0)
    obs = envs.reset()
    assert obs.shape == (4, 16, 16, 1)
    envs.env_method("set_pseudo_labels", {s: np.ones((16, 16), np.uint8) for s in ["tiny_000", "tiny_001", "tiny_002"]})
    envs.env_method("set_active_indices", [0, 1, 2])
    envs.reset()
    obs, rewards, dones, infos = envs.step(np.zeros((4, 16, 16), np.uint8))
    assert dones.all() and rewards.dtype == np.float32 and len(infos) == 4
    for info in infos:
        assert {"reward_map", "sample_id", "index", "dice", "pseudo_label", "terminal_observation"} <= set(info)
        assert info["index"] in (0, 1, 2)
        assert info["reward_map"].shape == (16, 16)
        np.testing.assert_array_equal(info["terminal_observation"][..., 0],
                                      np.rint(envs.env_method("get_sample", info["index"])[0].image * 255))
    assert envs.get_attr("n_classes") == [3] * 4
    assert envs.render(mode="rgb_array").ndim == 3
