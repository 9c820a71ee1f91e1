"""RL benchmark: the quick run end to end, the zoo YAML checks, the held-out evaluation and the budgets."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C

from pipeline.benchmark_rl import (
    BenchmarkSettings,
    HeldOutEvalCallback,
    HeldOutSet,
    block_majority,
    make_predictor,
    make_train_env,
)
from pipeline.commands import benchmark_rl as benchmark_rl_command
from pipeline.zoo import ZooConfigError, load_zoo_config
from rl4seg_env.wrappers import coarse_to_full

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "configs" / "zoo"




def load_script():
    return benchmark_rl_command


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------
def test_quick_benchmark_writes_curves_table_and_png(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    paths = load_script().main(["--quick", "--algos", "pixel_ppo", "ppo", "a2c", "--output", str(out),
                                "--verbose", "0"])
    assert {p.name for p in paths.values()} == {"curves.csv", "summary.csv", "results.md", "curves.png",
                                                "profiles.png", "hyperparams.yml"}

    columns, curves = read_csv(out / "curves.csv")
    assert columns == ["algorithm", "label", "env_id", "seed", "steps", "wall_time_s", "reward", "dice"]
    for algorithm in ("pixel_ppo", "ppo", "a2c"):
        rows = [r for r in curves if r["algorithm"] == algorithm]
        steps = [int(r["steps"]) for r in rows]
        times = [float(r["wall_time_s"]) for r in rows]
        # initial score, then at least the final one, in increasing steps and time
        assert len(rows) >= 2 and steps[0] == 0 and steps == sorted(steps) and times == sorted(times)
        assert steps[-1] >= 128  # the quick step budget (algorithms finish their rollout)
        assert all(0.0 <= float(r["reward"]) <= 1.0 and 0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert {r["env_id"] for r in curves if r["algorithm"] == "pixel_ppo"} == {"RL4Seg-v0"}
    assert {r["env_id"] for r in curves if r["algorithm"] != "pixel_ppo"} == {"RL4SegSmall-v0"}

    columns, summary = read_csv(out / "summary.csv")
    assert columns == ["algorithm", "label", "env_id", "seed", "choices_per_step", "steps", "train_seconds",
                       "steps_per_s", "initial_reward", "initial_dice", "final_reward", "final_dice"]
    by_algo = {r["algorithm"]: r for r in summary}
    assert set(by_algo) == {"pixel_ppo", "ppo", "a2c"}
    assert int(by_algo["pixel_ppo"]["choices_per_step"]) == 32 * 32 and int(by_algo["ppo"]["choices_per_step"]) == 64
    for row in summary:
        assert float(row["steps_per_s"]) == pytest.approx(int(row["steps"]) / float(row["train_seconds"]), rel=1e-3)
    # the benchmark trains: 16 PixelPPO updates on the ground-truth reward segment the LV and MYO
    pixel = by_algo["pixel_ppo"]
    assert float(pixel["final_dice"]) > float(pixel["initial_dice"]) + 0.3
    assert float(pixel["final_reward"]) > float(pixel["initial_reward"])

    markdown = (out / "results.md").read_text()
    header = ("| algorithm | env id | choices / step | seeds | env steps | steps/s | final reward | final Dice | "
              "reward IQM [95% CI] | Dice IQM [95% CI] |")
    assert header in markdown
    # one seed: the IQM is that seed's score and the interval collapses onto it
    d = f"{float(pixel['final_dice']):.3f}"
    assert f"{d} [{d}, {d}]" in markdown
    for label in ("| PixelPPO |", "| PPO (8x8 actions) |", "| A2C (8x8 actions) |"):
        assert label in markdown
    assert f"{float(pixel['final_dice']):.3f}" in markdown
    assert "Ceiling of an 8x8 action grid" in markdown

    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert (out / "profiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str, algorithm: str = "ppo") -> Path:
    path = tmp_path / f"{algorithm}.yml"
    path.write_text(text)
    return path


def test_shipped_zoo_config_loads() -> None:
    entries = load_zoo_config(ZOO, ["pixel_ppo", "ppo", "a2c"])
    assert list(entries) == ["pixel_ppo", "ppo", "a2c"]
    assert entries["pixel_ppo"].env_id == "RL4Seg-v0" and entries["pixel_ppo"].full_resolution
    assert entries["pixel_ppo"].hyperparams["policy_kwargs"] == {"actor_kwargs": {"channels": [16, 32, 64],
                                                                                  "norm": "batch"}}
    assert entries["ppo"].env_id == "RL4SegSmall-v0" and entries["ppo"].env_kwargs["action_size"] == 8
    assert entries["ppo"].hyperparams["policy_kwargs"]["activation_fn"] is torch.nn.Tanh
    assert entries["a2c"].algorithm_class is A2C


@pytest.mark.parametrize("text, message", [
    ("RL4SegSmall-v0:\n  n_step: 16\n", "unknown key 'n_step' for PPO"),
    ("RL4SegSmall-v0:\n  seed: 3\n", "key 'seed' is set by the benchmark"),
    ("RL4SegSmall-v0:\n  n_timesteps: -5\n", "n_timesteps: expected a positive number"),
    ("CartPole-v1:\n  n_steps: 16\n", "unknown env id 'CartPole-v1'"),
    ("RL4SegSmall-v0:\n  env_kwargs: {image_size: 64}\n", "env_kwargs: unknown key 'image_size'"),
    ("RL4SegSmall-v0:\n  policy_kwargs: 'dict(net_arch=[64], activation_fn=nn.NotAModule)'\n",
     "'nn.NotAModule' is not a torch.nn module class"),
    ("RL4SegSmall-v0:\n  policy_kwargs: '__import__(\"os\").system(\"true\")'\n", "is not allowed"),
    ("RL4SegSmall-v0:\n  policy_kwargs: 'dict(net_arch=[64]'\n", "cannot parse"),
    ("RL4SegSmall-v0:\n  policy_kwargs: {activation_fn: swish}\n", "activation_fn: expected one of"),
    ("RL4SegSmall-v0:\n  learning_rate: fast\n", "learning_rate: expected a positive number"),
    ("RL4SegSmall-v0:\n  n_envs: 0\n", "n_envs: expected a positive integer"),
    ("RL4SegSmall-Easy-v0: {}\n", "expected exactly one entry for RL4Seg-v0 or RL4SegSmall-v0"),
    ("RL4SegSmall-v0: {}\nRL4Seg-v0: {}\n", "expected exactly one entry"),
    ("- ppo\n", "expected a mapping"),
])
def test_zoo_config_errors_name_the_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ZooConfigError, match=message) as error:
        load_zoo_config(path)
    assert str(path) in str(error.value)


def test_zoo_config_unknown_algorithm_and_level_entries(tmp_path: Path) -> None:
    with pytest.raises(ZooConfigError, match="unknown algorithm 'sac'"):
        load_zoo_config(write(tmp_path, "RL4SegSmall-v0:\n  n_envs: 2\n", "sac"))
    path = write(tmp_path, "RL4SegSmall-v0:\n  policy_kwargs: 'dict(net_arch=dict(pi=[64], vf=[32]))'\n"
                           "RL4SegSmall-Hard-v0:\n  n_stepz: 3\n")
    with pytest.raises(ZooConfigError, match="RL4SegSmall-Hard-v0: unknown key 'n_stepz'"):
        load_zoo_config(path)  # the level entries are checked too


def test_zoo_config_missing_file_and_section(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yml"):
        load_zoo_config(tmp_path / "nope.yml")
    write(tmp_path, "RL4SegSmall-v0: {}\n", "a2c")
    with pytest.raises(ZooConfigError, match=r"no hyper-parameter file for algorithm\(s\) \['trpo'\]"):
        load_zoo_config(tmp_path, ["trpo"])


def test_unavailable_algorithms_are_skipped_only_when_not_asked_for(tmp_path: Path) -> None:
    write(tmp_path, "RL4SegSmall-v0: {}\n", "a2c")
    write(tmp_path, "RL4SegSmall-v0:\n  algorithm_class: not_installed_pkg:Algo\n", "mine")
    with pytest.warns(UserWarning, match="skipping 'mine'.*not_installed_pkg"):
        assert list(load_zoo_config(tmp_path, skip_unavailable=True)) == ["a2c"]
    with pytest.raises(ImportError, match="not_installed_pkg"):
        load_zoo_config(tmp_path, ["a2c", "mine"], skip_unavailable=True)


def test_zoo_config_linear_schedule_and_custom_class(tmp_path: Path) -> None:
    path = write(tmp_path, "RL4SegSmall-v0:\n  algorithm_class: stable_baselines3:A2C\n"
                           "  learning_rate: lin_1.0e-3\n  n_envs: 2\n", "mine")
    entry = load_zoo_config(path)["mine"]
    assert entry.algorithm_class is A2C and entry.n_envs == 2
    schedule = entry.hyperparams["learning_rate"]
    assert schedule(1.0) == pytest.approx(1e-3) and schedule(0.5) == pytest.approx(5e-4)
    with pytest.raises(ZooConfigError, match="is not a stable_baselines3 BaseAlgorithm"):
        load_zoo_config(write(tmp_path, "RL4SegSmall-v0:\n  algorithm_class: numpy:ndarray\n", "mine"))


@pytest.mark.parametrize("algo, env_id", [("ppo", "RL4SegSmall-v0"), ("a2c", "RL4SegSmall-v0"),
                                          ("trpo", "RL4SegSmall-v0"), ("ppo", "RL4SegSmall-Easy-v0")])
def test_rl_zoo3_trains_from_the_shipped_files(tmp_path: Path, algo: str, env_id: str) -> None:
    """The acceptance command of the zoo files: rl_zoo3 itself reads them and trains (a few hundred steps)."""
    import subprocess
    import sys

    pytest.importorskip("rl_zoo3", reason="rl_zoo3 is in the test extra (and the zoo extra)")
    result = subprocess.run([sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id,
                             "--gym-packages", "rl4seg_env", "--conf-file", str(ZOO / f"{algo}.yml"), "-n", "256",
                             "-f", str(tmp_path), "--seed", "0", "--log-interval", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / algo / f"{env_id}_1"
    assert (run / f"{env_id}.zip").is_file()
    monitors = sorted(run.glob("*.monitor.csv"))
    assert monitors and sum(len(p.read_text().splitlines()) - 2 for p in monitors) >= 200  # one row per episode
    assert "total_timesteps" in result.stdout


# ------------------------------------------------------------------------------------------------
# held-out evaluation
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heldout() -> HeldOutSet:
    return HeldOutSet.synthetic(n_images=8, image_size=32)


def test_heldout_oracle_scores_one_and_background_scores_lower(heldout: HeldOutSet) -> None:
    labels = heldout.labels
    assert labels.shape == (8, 32, 32) and set(np.unique(labels)) == {0, 1, 2}
    oracle = heldout.evaluate(lambda obs: labels)
    assert oracle.reward == pytest.approx(1.0) and oracle.dice == pytest.approx(1.0)
    background = heldout.evaluate(lambda obs: np.zeros(obs.shape[:3], dtype=np.uint8))
    assert background.dice == pytest.approx(0.0)
    assert background.reward == pytest.approx(float(np.mean(labels == 0)))  # pixel accuracy
    assert background.reward < 1.0
    with pytest.raises(ValueError, match="shape"):
        heldout.evaluate(lambda obs: labels[:, :16])


def test_heldout_is_the_test_split_and_fixed(heldout: HeldOutSet) -> None:
    assert all("-test-" in heldout.dataset[i].id for i in range(len(heldout)))
    assert np.array_equal(heldout.labels, HeldOutSet.synthetic(n_images=8, image_size=32).labels)


class FixedCoarsePolicy:
    """Answers every observation with the same flat coarse action, checking the observation shape."""

    def __init__(self, coarse: np.ndarray, obs_dim: int) -> None:
        self.coarse, self.obs_dim = coarse, obs_dim

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        assert obs.shape == (len(obs), self.obs_dim) and obs.dtype == np.float32 and deterministic
        return np.repeat(self.coarse[None], len(obs), axis=0), None


def test_small_action_agents_are_scored_at_full_resolution(heldout: HeldOutSet) -> None:
    entry = load_zoo_config(ZOO, ["ppo"])["ppo"]
    coarse = (np.arange(64) % 3).astype(np.int64)
    policy = FixedCoarsePolicy(coarse, 16 * 16)
    predict = make_predictor(policy, heldout, entry.env_id, entry.env_kwargs)  # type: ignore[arg-type]
    maps = predict(heldout.observations)
    expected = coarse_to_full(coarse.reshape(8, 8), (32, 32))
    assert maps.shape == (8, 32, 32) and all(np.array_equal(m, expected) for m in maps)


def test_block_majority_is_the_best_coarse_action(heldout: HeldOutSet) -> None:
    labels = np.array([[[1, 1, 0, 2],
                        [1, 0, 2, 2],
                        [0, 0, 0, 2],
                        [2, 1, 2, 0]]])
    # bottom-right block: two 0s, two 2s -> the lower label
    expected = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]]])
    assert np.array_equal(block_majority(labels, 2, 3), expected)
    ceiling = heldout.coarse_ceiling(8)
    background = heldout.evaluate(lambda obs: np.zeros(obs.shape[:3], dtype=np.uint8))
    assert background.reward < ceiling.reward < 1.0 and 0.0 < ceiling.dice < 1.0
    rng = np.random.default_rng(0)
    for _ in range(3):  # no other coarse action beats it
        noisy = block_majority(heldout.labels, 8, 3)
        flip = rng.random(noisy.shape) < 0.02
        other = np.where(flip, rng.integers(0, 3, noisy.shape), noisy).astype(np.uint8)
        other = coarse_to_full(other[:, ::4, ::4], (32, 32))
        assert heldout.evaluate(lambda obs: other).reward <= ceiling.reward


def test_time_budget_stops_training_and_excludes_evaluation(heldout: HeldOutSet) -> None:
    entry = load_zoo_config(ZOO, ["a2c"])["a2c"]
    settings = BenchmarkSettings(image_size=32, budget_seconds=1.0, seeds=(0,))
    model = A2C(entry.policy, make_train_env(entry, settings, 0), seed=0, device="cpu", **entry.hyperparams)
    predict = make_predictor(model, heldout, entry.env_id, entry.env_kwargs)

    def slow_predict(obs: np.ndarray) -> np.ndarray:
        time.sleep(0.2)
        return predict(obs)

    callback = HeldOutEvalCallback(slow_predict, heldout, n_points=4, budget_seconds=1.0)
    start = time.perf_counter()
    model.learn(total_timesteps=10**9, callback=callback)
    wall = time.perf_counter() - start
    assert callback.train_seconds >= 1.0  # stopped by the budget (an upper bound would depend on machine load)
    assert wall - callback.train_seconds >= 0.2 * len(callback.records) - 0.05  # evaluations are not training time
    assert 0 < model.num_timesteps < 10**6
    steps = [r["steps"] for r in callback.records]
    assert steps[0] == 0 and steps[-1] == model.num_timesteps and len(steps) >= 2  # before training and at the end
    assert steps == sorted(steps)
    assert callback.records[-1]["wall_time_s"] == pytest.approx(callback.train_seconds)


def test_settings_need_a_budget() -> None:
    with pytest.raises(ValueError, match="set a budget"):
        BenchmarkSettings(budget_steps=None, budget_seconds=None)


def test_level_entries_take_the_level_grid_and_data() -> None:
    from pipeline.commands.benchmark_rl import parse_args

    entries = load_zoo_config(ZOO, ["pixel_ppo", "ppo"], level="Hard")
    assert entries["pixel_ppo"].env_id == "RL4Seg-Hard-v0" and entries["pixel_ppo"].full_resolution
    assert entries["ppo"].env_id == "RL4SegSmall-Hard-v0" and not entries["ppo"].full_resolution
    assert entries["ppo"].small_env_kwargs == {"action_size": 16, "obs_size": 32}
    assert entries["ppo"].label == "PPO (16x16 actions)"
    settings = BenchmarkSettings(image_size=128, preset="target_artifact", reward="dice", budget_steps=8, seeds=(0,))
    env = make_train_env(entries["ppo"], settings, 0)
    assert env.action_space.shape == (256,) and env.observation_space.shape == (32 * 32,)
    assert env.get_attr("image_size")[0] == (128, 128)
    env.close()
    assert parse_args(["--level", "Hard"]).level == "Hard"
    with pytest.raises(SystemExit):
        parse_args(["--level", "Impossible"])
