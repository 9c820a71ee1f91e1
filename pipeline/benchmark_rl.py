"""The segmentation env as an RL benchmark: zoo hyper-parameters, held-out evaluation, budgets, reports.

Every algorithm trains on the same target domain, image size, seeds and budget (env steps and/or
wall-clock seconds of training), and is scored at regular points of that budget on one fixed,
held-out set of labelled target images: mean reward (pixel accuracy) and mean foreground Dice of its
deterministic actions at full resolution. ``scripts/benchmark_rl.py`` is the command line;
``docs/benchmarking.md`` the guide.

- :func:`pipeline.zoo.load_zoo_config` reads rl-zoo3-style YAML (``algorithm -> env id -> hyper-parameters``)
  and refuses unknown keys, naming the key and the file.
- :class:`HeldOutSet` scores any ``observations (N, H, W, 1) -> label maps (N, H, W)`` predictor;
  :func:`make_predictor` makes one from a trained model (upsampling coarse-grid actions).
- :class:`HeldOutEvalCallback` evaluates during ``learn`` and enforces the wall-clock budget.
- :func:`run_benchmark` trains every (algorithm, seed); :func:`write_results` writes CSV, Markdown, PNG.
"""
from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

import rl4seg_env  # noqa: F401  (registers RL4Seg-v0 / RL4SegSmall-v0)
from rl4seg_env.data import SegDataset, make_dataset
from rl4seg_env.data.synthetic import DEFAULT_TARGET
from rl4seg_env.io import atomic_write_bytes, atomic_write_text
from agents.vec_env import make_sb3_vec_env
from pipeline.aggregate import iqm, plot_performance_profiles, stratified_bootstrap_ci
from pipeline.tables import markdown_table, rows_to_csv
from pipeline.zoo import ENV_IDS, FULL_ENV_ID, LEVEL_IDS, ZooEntry, pair
from rl4seg_env.vector import SegVectorEnv
from rl4seg_env.wrappers import DownsampledActionWrapper, coarse_to_full, make_small_env

Predictor = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------
# Held-out evaluation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutScores:
    """Scores of one predictor on a :class:`HeldOutSet`.

    :param reward: mean episode reward (the env's ground-truth reward, pixel accuracy by default).
    :param dice: mean foreground Dice (mean over classes 1.. then over images).
    :param rewards: float64 (N,) per-image rewards.
    :param dices: float64 (N,) per-image mean foreground Dice.
    """

    reward: float
    dice: float
    rewards: np.ndarray
    dices: np.ndarray


class HeldOutSet:
    """A fixed set of labelled images that every agent is scored on, at full resolution, in one batch.

    :param dataset: labelled dataset (all of it is used, in index order).
    :param reward: ground-truth reward of the score (default ``"accuracy"``: pixel accuracy, the benchmark's
        training reward).
    """

    def __init__(self, dataset: SegDataset, reward: str = "accuracy") -> None:
        if not dataset.with_labels:
            raise ValueError(f"the held-out set needs labels; {dataset!r} was built with with_labels=False")
        self.dataset = dataset
        self.env = SegVectorEnv(len(dataset), dataset=dataset, reward=reward)
        self._indices = np.arange(len(dataset))

    @classmethod
    def synthetic(cls, n_images: int = 32, image_size: int = 32, preset: str = DEFAULT_TARGET, split: str = "test",
                  seed: int = 0) -> HeldOutSet:
        """The first ``n_images`` of a synthetic split (default: 32 test images of the default target, 32 px).

        The ``"test"`` split never shares an image with the ``"train"`` split the agents learn on.
        """
        return cls(make_dataset("synthetic", preset=preset, split=split, n_images=n_images, image_size=image_size,
                                seed=seed))

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return self.env.image_size

    @property
    def observations(self) -> np.ndarray:
        """uint8 (N, H, W, 1) observations, as the env shows them."""
        obs, _ = self.env.reset(options={"index": self._indices})
        return obs

    @property
    def labels(self) -> np.ndarray:
        """uint8 (N, H, W) ground-truth label maps."""
        return np.stack([self.dataset[int(i)].label for i in self._indices])

    def evaluate(self, predict: Predictor) -> HeldOutScores:
        """Score ``predict``: uint8 observations (N, H, W, 1) -> integer label maps (N, H, W).

        :raises ValueError: when the predictions have the wrong shape, dtype or values (from the env).
        """
        obs, _ = self.env.reset(options={"index": self._indices})
        actions = np.asarray(predict(obs))
        _, rewards, _, _, info = self.env.step(actions)
        dices = np.asarray(info["final_info"]["dice"], dtype=np.float64)
        return HeldOutScores(float(rewards.mean()), float(dices.mean()), rewards.astype(np.float64), dices)

    def coarse_ceiling(self, action_size: int | tuple[int, int]) -> HeldOutScores:
        """Scores of the best coarse-grid agent: each cell takes its block's majority label.

        This maximises pixel accuracy over every (h, w) grid action (upsampled as
        :class:`~rl4seg_env.wrappers.DownsampledActionWrapper` does), so no coarse-grid agent can score
        a higher reward on these images.
        """
        return self.evaluate(lambda obs: block_majority(self.labels, action_size, self.dataset.n_classes))


def block_majority(labels: np.ndarray, action_size: int | tuple[int, int], n_classes: int) -> np.ndarray:
    """Most frequent label of each coarse block, upsampled back: (N, H, W) -> (N, H, W) uint8.

    Blocks are those of :func:`~rl4seg_env.wrappers.coarse_to_full` (cell ``i`` covers the rows ``r`` with
    ``r * h // H == i``); ties go to the lower label.
    """
    labels = np.asarray(labels)
    h, w = pair(action_size)
    height, width = labels.shape[-2:]
    row_starts = np.searchsorted((np.arange(height) * h) // height, np.arange(h))
    col_starts = np.searchsorted((np.arange(width) * w) // width, np.arange(w))
    one_hot = (labels[..., None] == np.arange(n_classes)).astype(np.int32)  # (N, H, W, C)
    counts = np.add.reduceat(np.add.reduceat(one_hot, row_starts, axis=1), col_starts, axis=2)  # (N, h, w, C)
    return coarse_to_full(counts.argmax(axis=-1), (height, width)).astype(np.uint8)


def make_predictor(model: BaseAlgorithm, heldout: HeldOutSet, env_id: str = FULL_ENV_ID,
                   env_kwargs: Mapping[str, Any] | None = None) -> Predictor:
    """Full-resolution deterministic predictor of a model trained on ``env_id``, for ``heldout``'s images.

    :param model: anything with SB3's ``predict(obs, deterministic=True) -> (actions, state)``.
    :param heldout: the evaluation images.
    :param env_id: ``"RL4Seg-v0"`` (default): the model predicts (N, H, W) label maps directly.
        ``"RL4SegSmall-v0"``: the model sees each image as the small wrapper shows it and its flat
        coarse action is upsampled to (H, W) by nearest neighbour, exactly as
        :class:`~rl4seg_env.wrappers.DownsampledActionWrapper` does.
    :param env_kwargs: the small wrapper's ``action_size``, ``obs_size``, ``flatten_obs`` if not the
        ``RL4SegSmall-v0`` defaults (8, 16, ``True``).
    """
    if env_id not in (*ENV_IDS, *LEVEL_IDS):
        raise ValueError(f"env_id must be one of {list(ENV_IDS + LEVEL_IDS)}, found {env_id!r}")
    if not env_id.startswith("RL4SegSmall"):
        return lambda obs: np.asarray(model.predict(obs, deterministic=True)[0])
    kwargs = {"action_size": 8, "obs_size": 16, **(env_kwargs or {})}
    wrapper: DownsampledActionWrapper = make_small_env(heldout.dataset, reward=None, **kwargs)

    def predict(obs: np.ndarray) -> np.ndarray:
        small = np.stack([wrapper.observation(o) for o in obs])  # a loop over images, not pixels
        coarse = np.asarray(model.predict(small, deterministic=True)[0])
        return np.stack([wrapper.action(a) for a in coarse])

    return predict


# ----------------------------------------------------------------------------------------------
# Budgets and periodic evaluation
# ----------------------------------------------------------------------------------------------
class HeldOutEvalCallback(BaseCallback):
    """Evaluate on a held-out set at ``n_points`` even points of the budget; stop at the time budget.

    Progress is ``max(steps / budget_steps, train_seconds / budget_seconds)``; an evaluation runs at
    progress 0 (before any update), each time it crosses ``k / n_points`` and after training. Training
    time excludes evaluation time. ``learn`` is stopped (mid-rollout if need be) once ``budget_seconds``
    of training have passed; a step budget is left to ``learn(total_timesteps=...)``, which finishes
    the current rollout and its update.

    :param predict: full-resolution predictor of the model being trained (see :func:`make_predictor`).
    :param heldout: the evaluation images.
    :param n_points: evaluations during training besides the first (default 10).
    :param budget_steps: env-step budget (default ``None``: none).
    :param budget_seconds: training wall-clock budget in seconds (default ``None``: none).
    :param verbose: 1 prints each evaluation (default 0).

    ``records`` holds one dict per evaluation: ``steps``, ``wall_time_s`` (training seconds), ``reward``, ``dice``.
    """

    def __init__(self, predict: Predictor, heldout: HeldOutSet, n_points: int = 10, budget_steps: int | None = None,
                 budget_seconds: float | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        if budget_steps is None and budget_seconds is None:
            raise ValueError("give budget_steps and/or budget_seconds")
        if n_points < 1:
            raise ValueError(f"n_points must be >= 1, found {n_points}")
        self.predict = predict
        self.heldout = heldout
        self.n_points = int(n_points)
        self.budget_steps = budget_steps
        self.budget_seconds = budget_seconds
        self.records: list[dict[str, float]] = []
        self._start = 0.0
        self._eval_seconds = 0.0
        self._next_point = 1
        self._end_seconds: float | None = None

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds of training so far (evaluations excluded)."""
        if self._end_seconds is not None:
            return self._end_seconds
        return time.perf_counter() - self._start - self._eval_seconds

    def progress(self) -> float:
        """Fraction of the budget used (the larger of the step and time fractions)."""
        fractions = []
        if self.budget_steps:
            fractions.append(self.num_timesteps / self.budget_steps)
        if self.budget_seconds:
            fractions.append(self.train_seconds / self.budget_seconds)
        return max(fractions)

    def evaluate(self) -> dict[str, float]:
        """Score the current model and append a record (its time is not counted as training)."""
        train_seconds = self.train_seconds
        start = time.perf_counter()
        scores = self.heldout.evaluate(self.predict)
        record = {"steps": int(self.num_timesteps), "wall_time_s": train_seconds, "reward": scores.reward,
                  "dice": scores.dice}
        self.records.append(record)
        if self._end_seconds is None:
            self._eval_seconds += time.perf_counter() - start
        if self.verbose:
            print(f"  steps {record['steps']:>7}  {train_seconds:7.1f} s  reward {scores.reward:.3f}  "
                  f"dice {scores.dice:.3f}", flush=True)
        return record

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        self._eval_seconds, self._next_point, self._end_seconds = 0.0, 1, None
        self.records = []
        self.evaluate()

    def _on_step(self) -> bool:
        progress = self.progress()
        if self._next_point < self.n_points and progress >= self._next_point / self.n_points:
            self.evaluate()
            self._next_point = int(math.floor(progress * self.n_points)) + 1
        return self.budget_seconds is None or self.train_seconds < self.budget_seconds

    def _on_training_end(self) -> None:
        self._end_seconds = self.train_seconds
        if len(self.records) > 1 and self.records[-1]["steps"] == self.num_timesteps:
            self.records.pop()  # scored before the last update: superseded by the final score
        self.evaluate()


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkSettings:
    """What every algorithm shares.

    :param preset: synthetic target domain trained and evaluated on (default ``"default_target"``).
    :param image_size: image size in pixels, H = W (default 32).
    :param budget_steps: env steps (images) per algorithm and seed (default ``None``: no step budget).
        Algorithms finish their current rollout, so they may exceed it by up to one rollout.
    :param budget_seconds: training wall-clock seconds per algorithm and seed (default 60; ``None``: none).
    :param seeds: training seeds (default ``(0, 1, 2)``).
    :param eval_images: held-out test images (default 32).
    :param eval_points: evaluations per run besides the initial one (default 10).
    :param device: torch device of every model (default ``"cpu"``).
    :param reward: the training env's ground-truth reward, ``"accuracy"`` (default) or ``"dice"``; the
        held-out scores are always pixel accuracy and Dice.
    """

    preset: str = DEFAULT_TARGET
    image_size: int = 32
    budget_steps: int | None = None
    budget_seconds: float | None = 60.0
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_images: int = 32
    eval_points: int = 10
    device: str = "cpu"
    reward: str = "accuracy"

    def __post_init__(self) -> None:
        if self.budget_steps is None and self.budget_seconds is None:
            raise ValueError("set a budget: budget_steps and/or budget_seconds")
        if self.budget_steps is not None and self.budget_steps < 1:
            raise ValueError(f"budget_steps must be >= 1, found {self.budget_steps}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ValueError(f"budget_seconds must be > 0, found {self.budget_seconds}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.eval_images < 1 or self.eval_points < 1 or self.image_size < 8:
            raise ValueError(f"eval_images and eval_points must be >= 1 and image_size >= 8, found "
                             f"{self.eval_images}, {self.eval_points}, {self.image_size}")


@dataclass
class RunResult:
    """One (algorithm, seed) run.

    :param algorithm: YAML name; ``label`` the display name; ``env_id`` the env it trained on.
    :param seed: training seed.
    :param steps: env steps (images) trained on.
    :param train_seconds: training wall clock, evaluations excluded.
    :param curve: evaluation records (``steps``, ``wall_time_s``, ``reward``, ``dice``).
    :param choices_per_step: categorical choices per action (H*W or h*w).
    """

    algorithm: str
    label: str
    env_id: str
    seed: int
    steps: int
    train_seconds: float
    curve: list[dict[str, float]]
    choices_per_step: int

    @property
    def steps_per_s(self) -> float:
        """Env steps per second of training."""
        return self.steps / max(self.train_seconds, 1e-9)

    @property
    def final_reward(self) -> float:
        """Held-out reward after training."""
        return self.curve[-1]["reward"]

    @property
    def final_dice(self) -> float:
        """Held-out mean foreground Dice after training."""
        return self.curve[-1]["dice"]


def make_train_env(entry: ZooEntry, settings: BenchmarkSettings, seed: int) -> VecEnv:
    """The training ``VecEnv`` of ``entry``: the batched full env or stock SB3 envs of the small wrapper."""
    data = {"preset": settings.preset, "image_size": settings.image_size, "split": "train", "reward": settings.reward}
    if entry.full_resolution:
        env = make_sb3_vec_env(entry.n_envs, dataset="synthetic", **data)
        env.seed(seed)
        return env
    return make_vec_env(entry.env_id, n_envs=entry.n_envs, seed=seed, env_kwargs={**data, **entry.small_env_kwargs})


def run_algorithm(entry: ZooEntry, settings: BenchmarkSettings, seed: int, heldout: HeldOutSet,
                  verbose: int = 0) -> RunResult:
    """Train ``entry``'s algorithm once under the settings' budget, scoring it on ``heldout`` as it goes."""
    env = make_train_env(entry, settings, seed)
    model = entry.algorithm_class(entry.policy, env, seed=seed, device=settings.device, verbose=0,
                                  **copy.deepcopy(entry.hyperparams))
    predict = make_predictor(model, heldout, entry.env_id, entry.small_env_kwargs)
    callback = HeldOutEvalCallback(predict, heldout, settings.eval_points, settings.budget_steps,
                                   settings.budget_seconds, verbose=verbose)
    total = settings.budget_steps if settings.budget_steps is not None else 10**12
    model.learn(total_timesteps=total, callback=callback)
    env.close()
    if entry.full_resolution:
        choices = settings.image_size ** 2
    else:
        h, w = pair(entry.small_env_kwargs.get("action_size", 8))
        choices = h * w
    return RunResult(entry.algorithm, entry.label, entry.env_id, seed, int(model.num_timesteps),
                     callback.train_seconds, callback.records, choices)


def run_benchmark(entries: Mapping[str, ZooEntry], settings: BenchmarkSettings,
                  verbose: int = 1) -> list[RunResult]:
    """Train every algorithm of ``entries`` with every seed; one shared held-out set.

    :param verbose: 0 silent, 1 one line per run, 2 also every evaluation.
    """
    heldout = HeldOutSet.synthetic(settings.eval_images, settings.image_size, settings.preset)
    results = []
    for entry in entries.values():
        for seed in settings.seeds:
            if verbose:
                print(f"{entry.label} on {entry.env_id}, seed {seed}", flush=True)
            result = run_algorithm(entry, settings, seed, heldout, verbose=int(verbose >= 2))
            if verbose:
                print(f"  {result.steps} steps in {result.train_seconds:.1f} s ({result.steps_per_s:.1f} steps/s): "
                      f"reward {result.curve[0]['reward']:.3f} -> {result.final_reward:.3f}, "
                      f"dice {result.curve[0]['dice']:.3f} -> {result.final_dice:.3f}", flush=True)
            results.append(result)
    return results


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------
CURVE_COLUMNS = ("algorithm", "label", "env_id", "seed", "steps", "wall_time_s", "reward", "dice")
SUMMARY_COLUMNS = ("algorithm", "label", "env_id", "seed", "choices_per_step", "steps", "train_seconds",
                   "steps_per_s", "initial_reward", "initial_dice", "final_reward", "final_dice")


def curve_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per evaluation (columns :data:`CURVE_COLUMNS`)."""
    return [{"algorithm": r.algorithm, "label": r.label, "env_id": r.env_id, "seed": r.seed, **point}
            for r in results for point in r.curve]


def summary_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per run (columns :data:`SUMMARY_COLUMNS`)."""
    return [{"algorithm": r.algorithm, "label": r.label, "env_id": r.env_id, "seed": r.seed,
             "choices_per_step": r.choices_per_step, "steps": r.steps, "train_seconds": r.train_seconds,
             "steps_per_s": r.steps_per_s, "initial_reward": r.curve[0]["reward"], "initial_dice": r.curve[0]["dice"],
             "final_reward": r.final_reward, "final_dice": r.final_dice} for r in results]


def _mean_std(values: Sequence[float], fmt: str) -> str:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}"


def summary_markdown(results: Sequence[RunResult]) -> str:
    """Markdown table, one row per algorithm: mean ± std (sample std) over its seeds, and the interquartile
    mean of the final scores with its 95% bootstrap interval (:mod:`pipeline.aggregate`)."""
    rows = []
    for algorithm in dict.fromkeys(r.algorithm for r in results):
        runs = [r for r in results if r.algorithm == algorithm]
        rows.append([runs[0].label, runs[0].env_id, runs[0].choices_per_step, len(runs),
                     _mean_std([r.steps for r in runs], ".0f"), _mean_std([r.steps_per_s for r in runs], ".1f"),
                     _mean_std([r.final_reward for r in runs], ".3f"), _mean_std([r.final_dice for r in runs], ".3f"),
                     _iqm_ci([r.final_reward for r in runs]), _iqm_ci([r.final_dice for r in runs])])
    return markdown_table(["algorithm", "env id", "choices / step", "seeds", "env steps", "steps/s", "final reward",
                           "final Dice", "reward IQM [95% CI]", "Dice IQM [95% CI]"], rows, "llrrrrrrrr")


def _iqm_ci(values: Sequence[float]) -> str:
    finite = [v for v in values if np.isfinite(v)]
    return stratified_bootstrap_ci(finite, iqm).format() if finite else "-"


def plot_profiles(results: Sequence[RunResult], path: str | Path) -> Path:
    """PNG of the performance profiles (final held-out Dice over seeds) with 95% bootstrap bands."""
    scores = {}
    for algorithm in dict.fromkeys(r.algorithm for r in results):
        runs = [r for r in results if r.algorithm == algorithm and np.isfinite(r.final_dice)]
        if runs:
            scores[runs[0].label] = np.array([r.final_dice for r in runs])
    return plot_performance_profiles(scores, path, xlabel="final held-out Dice",
                                     title="performance profiles (runs = seeds)")


def plot_curves(results: Sequence[RunResult], path: str | Path) -> Path:
    """PNG of reward and Dice against env steps and training wall time (one line per run)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2)
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r.algorithm for r in results))}
    for (row, metric), (col, x) in ((a, b) for a in enumerate(("reward", "dice"))
                                    for b in enumerate(("steps", "wall_time_s"))):
        ax = axes[row, col]
        labelled: set[str] = set()
        for r in results:
            ax.plot([p[x] for p in r.curve], [p[metric] for p in r.curve], marker=".", color=colours[r.algorithm],
                    alpha=0.8, label=None if r.algorithm in labelled else r.label)
            labelled.add(r.algorithm)
        ax.set_xlabel("env steps (images)" if x == "steps" else "training wall time (s)")
        ax.set_ylabel("held-out reward (pixel accuracy)" if metric == "reward" else "held-out mean foreground Dice")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def ceiling_lines(entries: Mapping[str, ZooEntry], heldout: HeldOutSet) -> list[str]:
    """One Markdown bullet per coarse action grid in ``entries``: the best score any such agent can reach."""
    grids = dict.fromkeys(pair(e.small_env_kwargs.get("action_size", 8)) for e in entries.values()
                          if not e.full_resolution)
    lines = []
    for grid in grids:
        best = heldout.coarse_ceiling(grid)
        lines.append(f"- Ceiling of an {grid[0]}x{grid[1]} action grid on these images (block-majority oracle): "
                     f"reward {best.reward:.3f}, Dice {best.dice:.3f}. Full-resolution agents can reach 1.000.")
    return lines


def write_results(results: Sequence[RunResult], entries: Mapping[str, ZooEntry], settings: BenchmarkSettings,
                  out_dir: str | Path, command: str = "") -> dict[str, Path]:
    """Write ``curves.csv``, ``summary.csv``, ``results.md``, ``curves.png``, ``profiles.png`` and
    ``hyperparams.yml`` to ``out_dir``.

    :return: ``{"curves", "summary", "markdown", "png", "profiles", "hyperparams"}`` -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = " and ".join(part for part in (
        f"{settings.budget_steps} env steps" if settings.budget_steps else "",
        f"{settings.budget_seconds:g} s of training" if settings.budget_seconds else "") if part)
    if settings.budget_steps and settings.budget_seconds:
        budget += " (whichever ends first)"
    markdown = (
        "# RL benchmark on the rl4seg env\n\n"
        + (f"`{command}`\n\n" if command else "")
        + f"Target domain `{settings.preset}`, {settings.image_size} px, training reward `{settings.reward}`, budget "
        f"{budget} per algorithm and seed, "
        f"seeds {list(settings.seeds)}, device {settings.device}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} thread(s)). Scores: deterministic actions on "
        f"{settings.eval_images} held-out test images at full resolution; reward = pixel accuracy, Dice = mean "
        "foreground Dice (LV, MYO). Mean ± std over seeds; IQM = interquartile mean over seeds with its 95% "
        "stratified-bootstrap interval (Agarwal et al. 2021). Steps/s counts training time only.\n\n"
        + summary_markdown(results))
    ceilings = ceiling_lines(entries, HeldOutSet.synthetic(settings.eval_images, settings.image_size, settings.preset))
    if ceilings:
        markdown += "\n" + "\n".join(ceilings) + "\n"
    paths = {
        "curves": atomic_write_text(out / "curves.csv", rows_to_csv(curve_rows(results), CURVE_COLUMNS, ".6g")),
        "summary": atomic_write_text(out / "summary.csv", rows_to_csv(summary_rows(results), SUMMARY_COLUMNS, ".6g")),
        "markdown": atomic_write_text(out / "results.md", markdown),
        "png": plot_curves(results, out / "curves.png"),
        "profiles": plot_profiles(results, out / "profiles.png"),
        "hyperparams": atomic_write_text(out / "hyperparams.yml", yaml.safe_dump(
            {name: entry.raw for name, entry in entries.items()}, sort_keys=False)),
    }
    return paths


__all__ = ["BenchmarkSettings", "CURVE_COLUMNS", "HeldOutEvalCallback", "HeldOutScores", "HeldOutSet", "RunResult",
           "SUMMARY_COLUMNS", "block_majority", "ceiling_lines", "curve_rows", "make_predictor",
           "make_train_env", "plot_curves", "run_algorithm", "run_benchmark", "summary_markdown", "summary_rows",
           "write_results"]
