"""The reward-retraining callback: turns ``PixelPPO.learn()`` into the RL4Seg loop.

At every iteration boundary (docs/method.md, "The iterative loop") the callback

1. predicts with the current actor on the next slice of unlabelled target images and builds reward
   samples (a :class:`RewardSetBuilder`, e.g. :class:`reward.builder.RewardDatasetBuilder`; the sample
   store accumulates);
2. retrains the reward network from scratch on all samples so far and temperature-scales it;
3. pushes it into the envs (``VecEnv.env_method("set_reward_model", ...)``), together with the
   accepted pseudo-labels (anchors) and the grown RL training set (``set_active_indices``);
4. applies the schedule of iteration i: entropy ``ent_coef_base / (2 i)``, KL ``kl_coef_base / (2 i)``,
   rollout batch ``batch_size_base * i`` images, and shrinks-and-perturbs actor and critic (i > 1).

After ``updates_per_iteration`` PPO updates the iteration ends and ``on_iteration_end`` is called
(the loop saves checkpoints and evaluates there). The callback never reads target labels.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents.distributed import per_process_batch
from agents.distributed import context as distributed_context
from agents.networks import reestimate_norm_statistics
from agents.policies import shrink_perturb
from agents.random_state import restore_random_state


class RewardSampleStore(Protocol):
    """Where reward samples accumulate across iterations (e.g. :class:`reward.builder.RewardSampleStore`)."""

    def __len__(self) -> int: ...

    def is_complete(self, iteration: int) -> bool: ...

    def discard(self, iteration: int) -> None: ...


class BuildReport(Protocol):
    images_seen: int
    accepted: int
    n_samples: int

    def as_dict(self) -> dict[str, Any]: ...


class RewardSetBuilder(Protocol):
    """Turns the actor's predictions on unlabelled images into reward samples written to a store and returns
    ``(report, accepted pseudo-labels by image id)`` (e.g. :class:`reward.builder.RewardDatasetBuilder`)."""

    def build(self, actor: torch.nn.Module, images: np.ndarray, ids: list[str], store: RewardSampleStore,
              iteration: int, progress: bool = False) -> tuple[BuildReport, dict[str, np.ndarray]]: ...


@dataclasses.dataclass
class IterationSchedule:
    """Per-iteration settings (docs/method.md, step 3; iteration ``i`` counts from 1).

    :param ent_coef_base: entropy coefficient = ``ent_coef_base / (2 i)`` (authors: 0.3).
    :param kl_coef_base: KL coefficient = ``kl_coef_base / (2 i)`` (authors: 0.1).
    :param batch_size_base: rollout = ``batch_size_base * i`` images (authors: 8).
    :param shrink: shrink factor applied to actor and critic weights between iterations (0.5).
    :param perturb_sigma: std of the Gaussian added after shrinking (0.01).
    """

    ent_coef_base: float = 0.3
    kl_coef_base: float = 0.1
    batch_size_base: int = 8
    shrink: float = 0.5
    perturb_sigma: float = 0.01

    def __post_init__(self) -> None:
        for name in ("ent_coef_base", "kl_coef_base", "perturb_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"IterationSchedule.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size_base < 1:
            raise ValueError(f"IterationSchedule.batch_size_base must be >= 1, got {self.batch_size_base}")
        if not 0 < self.shrink <= 1:
            raise ValueError(f"IterationSchedule.shrink must be in (0, 1], got {self.shrink}")

    def ent_coef(self, i: int) -> float:
        return self.ent_coef_base / (2 * i)

    def kl_coef(self, i: int) -> float:
        return self.kl_coef_base / (2 * i)

    def batch_size(self, i: int) -> int:
        return self.batch_size_base * i

    @property
    def perturbs(self) -> bool:
        """Whether iterations after the first shrink-and-perturb the networks."""
        return self.shrink != 1.0 or self.perturb_sigma > 0

    def apply(self, model: Any, i: int, images: torch.Tensor | None = None, batch_size: int | None = None) -> bool:
        """Put iteration ``i``'s settings on ``model`` (a :class:`agents.ppo.PixelPPO`): entropy and KL
        coefficients, the rollout of ``batch_size`` images (default :meth:`batch_size`; under torchrun, the
        process's share) and its steps per env; for ``i > 1`` shrink-and-perturb actor and critic and re-estimate
        their normalisation statistics on ``images`` (N, 1, H, W), which must then be given.

        :return: whether the networks were shrunk-and-perturbed.
        """
        model.ent_coef, model.kl_coef = self.ent_coef(i), self.kl_coef(i)
        model.batch_size = self.batch_size(i) if batch_size is None else batch_size
        model.n_steps = rollout_steps(model.batch_size, model.n_envs)
        if i == 1 or not self.perturbs:
            return False
        if images is None:
            raise ValueError(f"IterationSchedule.apply: iteration {i} shrinks-and-perturbs the networks and needs the "
                             "target images to re-estimate their normalisation statistics")
        gen = torch.Generator().manual_seed(1_000 + i)
        for net in (model.policy.actor, model.policy.critic):
            shrink_perturb(net, self.shrink, self.perturb_sigma, gen)
            # the shrunk weights no longer match the normalisation statistics used by rollouts (eval mode)
            reestimate_norm_statistics(net, images)
        return True


def rollout_steps(batch_images: int, n_envs: int) -> int:
    """Rollout steps per env so that a rollout holds at least ``batch_images`` images."""
    return max(1, -(-batch_images // n_envs))


def total_timesteps(iterations: range, updates_per_iteration: int, n_envs: int, schedule: IterationSchedule) -> int:
    """Env steps that ``learn`` needs for ``iterations`` (each update collects ``n_steps * n_envs`` images)."""
    return sum(updates_per_iteration * n_envs * rollout_steps(schedule.batch_size(i), n_envs) for i in iterations)


class RewardRetrainingCallback(BaseCallback):
    """SB3 callback implementing the RL4Seg iterations around ``PixelPPO.learn``.

    :param target_dataset: the unlabelled target training set (built with ``with_labels=False``);
        iteration ``i`` predicts on images ``[(i-1) * images_per_iteration, i * images_per_iteration)``
        (see ``reuse_images`` for a set smaller than that).
    :param builder: turns predictions into reward samples.
    :param store: on-disk reward-sample store (accumulates across iterations).
    :param train_reward: ``(store, iteration) -> (reward_model, info dict)``: trains a reward network from
        scratch on the store and returns the env-ready reward model (e.g. a calibrated
        :class:`reward.network.LearnedReward`) and scalars to report (``ece_before``, ``ece_after``, ...);
        a ``None`` model leaves the env's own reward in place (the ground-truth-reward ablation).
    :param iterations: last iteration to run (authors: 4).
    :param updates_per_iteration: PPO updates (rollout + k epochs) per iteration.
    :param images_per_iteration: new target images predicted per iteration (authors: 2,500).
    :param schedule: per-iteration coefficients (:class:`IterationSchedule`).
    :param use_anchors: push accepted pseudo-labels into the envs as supervised anchors.
    :param start_iteration: first iteration to run (> 1 when resuming).
    :param pseudo_labels: pseudo-labels accepted in earlier iterations (when resuming).
    :param on_iteration_end: ``(iteration, callback) -> None``, called once an iteration's updates are done
        (checkpoints, evaluation, report).
    :param adapt_norm_stats: re-estimate the actor's batch-norm statistics on the iteration's target images
        before the first iteration (actor and reference policy).
    :param readapt_norm_stats: with ``adapt_norm_stats``, re-estimate them again after every iteration's
        updates (default ``False``: PPO optimised the actor with its statistics frozen, and new statistics
        change that function; measured to grow the myocardium and lower Dice, docs/experiments.md).
    :param reuse_images: when the target set is smaller than ``iterations x images_per_iteration``, predict
        again on images of earlier iterations (:meth:`iteration_indices`) instead of failing. Their new reward
        samples are added next to the older ones (different predictions of the same image; the reward
        network's validation split keeps all samples of one image on one side) and a newly accepted
        pseudo-label replaces the image's older one.
    :param reward_model: when resuming, the last informative reward network of the completed iterations
        (kept if the next iteration's network fails its checks, as in the uninterrupted run).
    :param training_reward: ``reward_model -> reward`` that PPO trains against (e.g. the reward network fused
        with a shape prior, :mod:`reward.fusion`); default: the reward network itself. ``reward_model`` stays
        the network, for test-time optimisation and the reports.
    :param random_state: when resuming, :func:`agents.random_state.capture_random_state`'s capture at the end
        of the last completed iteration; restored at the start of training, so that the resumed run draws the
        same episodes and actions as the uninterrupted one.
    :param progress: show progress bars in the builder and reward training.
    :param verbose: 1 prints one line per phase.
    """

    def __init__(self, target_dataset, builder: RewardSetBuilder, store: RewardSampleStore,
                 train_reward: Callable[[RewardSampleStore, int], tuple[Any, dict]], iterations: int,
                 updates_per_iteration: int, images_per_iteration: int,
                 schedule: IterationSchedule | None = None, use_anchors: bool = True, start_iteration: int = 1,
                 pseudo_labels: dict[str, np.ndarray] | None = None,
                 on_iteration_end: Callable[[int, "RewardRetrainingCallback"], None] | None = None,
                 adapt_norm_stats: bool = False, readapt_norm_stats: bool = False, reuse_images: bool = True,
                 reward_model: Any = None, training_reward: Callable[[Any], Any] | None = None,
                 random_state: dict[str, Any] | None = None, progress: bool = False, verbose: int = 0) -> None:
        super().__init__(verbose)
        if target_dataset.with_labels:
            raise ValueError("RewardRetrainingCallback must not see target labels: build the target training set "
                             "with with_labels=False")
        if not 1 <= start_iteration <= iterations:
            raise ValueError(f"start_iteration must be in [1, {iterations}], got {start_iteration}")
        self.target_dataset = target_dataset
        self.builder, self.store, self.train_reward = builder, store, train_reward
        self.iterations, self.updates_per_iteration = int(iterations), int(updates_per_iteration)
        self.images_per_iteration = int(images_per_iteration)
        self.schedule = schedule or IterationSchedule()
        self.use_anchors = use_anchors
        self.start_iteration = int(start_iteration)
        self.pseudo_labels: dict[str, np.ndarray] = dict(pseudo_labels or {})
        self.on_iteration_end = on_iteration_end
        self.adapt_norm_stats = adapt_norm_stats
        self.readapt_norm_stats = readapt_norm_stats
        self.reuse_images = reuse_images
        self._images: np.ndarray | None = None
        self.progress = progress
        self.iteration = 0
        self.updates_done = 0
        self.finished = False
        self.reward_model: Any = reward_model
        self.training_reward = training_reward
        self.random_state = random_state
        #: whether ``reward_model`` passed its held-out checks (False: only an uninformative one exists yet)
        self.reward_informative = True
        #: per-iteration scalars: builder report, reward training info, timings
        self.records: dict[int, dict[str, Any]] = {}

    # --- SB3 hooks ---------------------------------------------------------------------------------
    def _on_training_start(self) -> None:
        if self.random_state is not None:
            restore_random_state(self.random_state, self.model)
        self._begin_iteration(self.start_iteration)

    def _on_rollout_start(self) -> None:
        if self.updates_done >= self.updates_per_iteration:
            self._end_iteration()
            if self.iteration < self.iterations:
                self._begin_iteration(self.iteration + 1)
        self.updates_done += 1

    def _on_step(self) -> bool:
        return not self.finished

    def _on_training_end(self) -> None:
        if not self.finished and self.updates_done >= self.updates_per_iteration:
            self._end_iteration()

    # --- iteration boundaries ----------------------------------------------------------------------
    def images_seen(self, iteration: int) -> int:
        """Distinct target images predicted on by the end of ``iteration`` (bounded by the dataset size)."""
        return min(iteration * self.images_per_iteration, len(self.target_dataset))

    def iteration_indices(self, i: int) -> list[int]:
        """Indices of the target images iteration ``i`` predicts on: the next ``images_per_iteration`` images.

        A target set smaller than ``iterations x images_per_iteration`` runs out: with ``reuse_images``
        the slice wraps around (fresh images first, then the earliest ones again, re-predicted by the current
        actor; at most the whole set per iteration); without it, iteration ``i`` gets what is left and an
        error once nothing is.
        """
        n = len(self.target_dataset)
        if not self.reuse_images:
            start, stop = self.images_seen(i - 1), self.images_seen(i)
            if stop <= start:
                raise ValueError(f"iteration {i}: no new target images left ({n} in the target set, "
                                 f"{self.images_per_iteration} used per iteration); add images, lower "
                                 "reward_dataset.images_per_iteration or allow reward_dataset.reuse_images")
            return list(range(start, stop))
        per = min(self.images_per_iteration, n)
        return [k % n for k in range((i - 1) * per, i * per)]

    def _begin_iteration(self, i: int) -> None:
        model = self.model
        t0 = time.time()
        self.iteration, self.updates_done = i, 0
        record: dict[str, Any] = {"iteration": i}

        # 1. reward samples from the actor's predictions on the next slice of target images
        indices = self.iteration_indices(i)
        reused = sum(k < self.images_seen(i - 1) for k in indices)
        if reused:
            self._log(f"iteration {i}: the target set has {len(self.target_dataset)} images, fewer than "
                      f"{i} x {self.images_per_iteration}: {reused} of its {len(indices)} images were seen in an "
                      "earlier iteration and are predicted again by the current actor (reward_dataset.reuse_images)",
                      always=True)
        record["images_reused"] = reused
        samples = [self.target_dataset[k] for k in indices]
        images = np.stack([s.image for s in samples]).astype(np.float32)
        self._images = images
        if self.adapt_norm_stats and i == 1:
            # target-normalise the starting actor and its reference copy alike (unlabelled images only)
            for net in (model.policy.actor, model.policy.reference_policy):
                reestimate_norm_statistics(net, torch.as_tensor(images[:, None], device=model.device))
        ctx = distributed_context()
        if ctx.is_main and self.store.is_complete(i):  # interrupted after the samples were written: rebuild,
            self.store.discard(i)                       # never duplicate
        # under torchrun the processes share the batches; rank 0 writes every sample, all get report and labels
        report, accepted = self.builder.build(model.policy.actor, images, [s.id for s in samples], self.store, i,
                                              progress=self.progress)
        self.pseudo_labels.update(accepted)
        record.update(report.as_dict())
        record["pseudo_labels_total"] = len(self.pseudo_labels)
        self._log(f"iteration {i}: {report.images_seen} target images, {report.accepted} pseudo-labels, "
                  f"{report.n_samples} new reward samples ({len(self.store)} in all)")

        if len(self.store) == 0:
            raise RuntimeError(
                f"iteration {i}: the reward dataset is still empty - none of the actor's {report.images_seen} "
                "target predictions was anatomically valid, nor valid after correction. Pretrain the actor longer, "
                "predict on more images (reward_dataset.images_per_iteration) or use a looser criteria set.")
        # 2. reward network from scratch on everything so far, temperature-scaled. One that fails its own
        #    held-out checks (info["reward_informative"] False) trains nothing: the previous informative network
        #    stays in the envs, and this iteration's PPO updates are skipped (do no harm)
        reward_model, info = self.train_reward(self.store, i)
        record.update(info)
        informative = bool(info.get("reward_informative", True))
        if informative or self.reward_model is None:
            self.reward_model, self.reward_informative = reward_model, informative
        model.skip_updates = not informative
        if not informative:
            self._log(f"iteration {i}: the reward network failed its held-out checks ({info.get('reward_train_samples')} "
                      "training samples, validation accuracy vs the constant predictor); PPO updates skipped, "
                      + ("no test-time optimisation" if not self.reward_informative else
                         "the previous reward network is kept"))

        # 3. push reward, anchors and the grown training set into the envs
        env = self.training_env
        if self.reward_model is not None:  # None: the env keeps its own (ground-truth) reward - an ablation
            env.env_method("set_reward_model", self.reward_model if self.training_reward is None
                           else self.training_reward(self.reward_model))
        env.env_method("set_pseudo_labels", self.pseudo_labels if self.use_anchors else {})
        env.env_method("set_active_indices", list(range(self.images_seen(i))))

        # 4. schedule, and shrink-and-perturb between iterations
        # under torchrun each process takes its share of the rollout and of every minibatch
        self.schedule.apply(model, i, torch.as_tensor(images[:, None], device=model.device),
                            per_process_batch(self.schedule.batch_size(i), ctx, "the rollout batch (ppo.batch_size_base)"))
        record.update(ent_coef=model.ent_coef, kl_coef=model.kl_coef, batch_size=self.schedule.batch_size(i),
                      prepare_seconds=time.time() - t0)
        record["_t_start"] = time.time()
        self.records[i] = record
        for key in ("images_seen", "accepted", "n_samples", "pseudo_labels_total", "ece_before", "ece_after",
                    "temperature"):
            if isinstance(record.get(key), (int, float)):
                self.logger.record(f"rl4seg/{key}", record[key])
        self.logger.record("rl4seg/iteration", i)

    def _end_iteration(self) -> None:
        i = self.iteration
        record = self.records[i]
        record["ppo_seconds"] = time.time() - record.pop("_t_start")
        if self.adapt_norm_stats and self.readapt_norm_stats and self._images is not None:
            reestimate_norm_statistics(self.model.policy.actor,
                                       torch.as_tensor(self._images[:, None], device=self.model.device))
        if self.on_iteration_end is not None:
            self.on_iteration_end(i, self)
        if i >= self.iterations:
            self.finished = True

    def _log(self, message: str, always: bool = False) -> None:
        if self.verbose or always:
            print(message, flush=True)
