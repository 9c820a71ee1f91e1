"""PixelPPO: Proximal Policy Optimization for per-pixel actions (RL4Seg).

Built on Stable-Baselines3's ``OnPolicyAlgorithm``: ``learn``, callbacks, the logger, ``save`` /
``load`` and ``get_parameters`` / ``set_parameters`` are inherited. What differs from SB3's PPO is
what a (H, W) label-map action needs: the rollout stores per-pixel log-probabilities and reward
maps, and :meth:`PixelPPO.train` takes the importance ratio per pixel (a sum over 4,096 pixels of
log-ratios would overflow ``exp``). See ``docs/agents.md`` for the equations.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from agents.buffers import PixelRolloutBuffer
from agents.distributed import average_gradients, global_mean_std, sync_buffers
from agents.networks import autocast, autocast_dtype, check_speed_settings, compiled, grad_scaler, to_memory_format
from agents.policies import PixelActorCriticPolicy, pixel_action_classes, shrink_perturb

__all__ = ["ADVANTAGE_NORMALIZATION", "PixelPPO", "clipped_objective", "shrink_perturb"]

SelfPixelPPO = TypeVar("SelfPixelPPO", bound="PixelPPO")

#: values of ``PixelPPO(normalize_advantage=...)``
ADVANTAGE_NORMALIZATION = ("off", "mean", "mean_std")


def clipped_objective(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float,
                      dual_clip: float | None = None) -> torch.Tensor:
    """PPO's clipped objective, element-wise: ``min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)``.

    With ``dual_clip`` (``c > 1``), where ``A < 0`` it is bounded below by ``c * A`` (dual-clip PPO): a huge ratio
    (an action sampled at a tiny probability that the update made likely) then has no gradient instead of one
    ``ratio`` times larger than any other pixel's.
    """
    clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    objective = torch.minimum(ratio * advantages, clipped * advantages)
    if dual_clip is not None:
        objective = torch.where(advantages < 0, torch.maximum(objective, dual_clip * advantages), objective)
    return objective


class PixelPPO(OnPolicyAlgorithm):
    """PPO with a per-pixel categorical actor, a per-pixel critic and a KL penalty to a reference policy.

    Each environment step is a one-step episode: image -> label map -> per-pixel reward map
    (``info["reward_map"]``; the scalar reward is broadcast when an env gives none). The update
    (:meth:`train`) follows RL4Seg: shaped reward ``r - kl_coef * (log pi - log pi_ref)``, advantage
    ``shaped - V`` per pixel, per-pixel clipped ratio, entropy bonus, critic MSE on the reward map.

    :param policy: ``"PixelUNetPolicy"`` or a :class:`~agents.policies.PixelActorCriticPolicy` (sub)class.
    :param env: a Gymnasium env, a VecEnv or a registered id (e.g. ``"RL4Seg-v0"``) with a
        ``MultiDiscrete((H, W))`` action space and single-channel image observations.
    :param learning_rate: default learning rate of both Adam optimisers (default 5e-4, the authors');
        a callable schedule (progress remaining 1 -> 0) is applied to both at every update.
        ``policy_kwargs["actor_lr"]`` / ``["critic_lr"]`` override it per network.
    :param n_steps: rollout steps per environment per update; a rollout holds ``n_steps * n_envs``
        images (default 8). A callback may change it between updates (the buffer is rebuilt).
    :param batch_size: images per minibatch (default 8; the whole rollout if larger).
    :param n_epochs: passes over the rollout per update, k in the paper (default 5).
    :param clip_range: PPO clipping epsilon of the per-pixel ratio (default 0.2).
    :param ent_coef: weight of the mean per-pixel entropy bonus (default 0.15 = the authors' 0.3 / (2 i), i = 1).
    :param kl_coef: beta of the KL reward shaping toward the reference policy (default 0.05 = 0.1 / (2 i)).
    :param vf_coef: weight of the critic's MSE loss (default 1.0). The critic has its own
        optimiser, so this only rescales its loss (Adam is nearly invariant to that); kept for the SB3 API.
    :param max_grad_norm: actor gradient-norm clip (default 0.5; ``None`` disables it).
    :param normalize_advantage: ``"off"`` (default), ``"mean"`` (subtract each minibatch's mean advantage) or
        ``"mean_std"`` (SB3's ``normalize_advantage``: also divide by its standard deviation). The critic starts
        untrained, so its values lag the rewards and every advantage of the first updates is biased; the mean
        removes that bias.
    :param dual_clip: dual-clip PPO's bound ``c > 1`` (Ye et al., 2020): for a negative advantage the per-pixel
        objective is at least ``c * advantage``, so a pixel whose sampled action was improbable (a huge ratio)
        cannot dominate the update (default ``None``: plain PPO clipping).
    :param target_kl: stop an update's epochs at the first minibatch whose approximate KL to the rollout policy
        (mean over its pixels of ``(ratio - 1) - log ratio``) exceeds ``1.5 * target_kl``, before its gradient
        step (SB3's ``target_kl``; default ``None``: every epoch runs). Under torchrun the KL is the global mean, so
        every process stops at the same minibatch.
    :param critic_warmup_epochs: epochs of critic-only regression on the first rollout before the first actor
        update (default 0), so that the first advantages use a critic that has seen the rewards.
    :param use_pseudo_labels: when an env's ``info["pseudo_label"]`` is present, credit that label as
        the action with a reward of 1 at every pixel (supervised anchor; default ``True``).
    :param update_actor_norm_stats: run the actor in training mode during updates, as SB3's PPO does:
        normalisation layers use batch statistics and their running means adapt to the rollout images
        (default ``True``; from a randomly initialised batch-norm actor this is what makes learning
        work). ``False`` evaluates the actor exactly as during the rollout (frozen statistics, dropout
        off), so the importance ratio starts at exactly 1; suited to fine-tuning a pretrained actor
        whose statistics should stay those of the source domain.
    :param image_log_interval: log an image panel (image | action | reward map | value map) every this
        many updates (default 10; 0 disables it).
    :param image_log_count: images (rows) in the panel (default 4).
    :param mixed_precision: precision of the update's forward passes: ``"off"`` (default), ``"auto"``, ``"bf16"``,
        ``"fp16"`` (:func:`agents.networks.autocast_dtype`; rollouts stay float32).
    :param channels_last: the networks in the channels_last memory format (``None``, the default: on CUDA and CPUs).
    :param compile: ``torch.compile`` the actor's and critic's forward passes of the update: ``False`` (default),
        ``True`` or a backend name (:func:`agents.networks.compiled`; rollouts and the weights are unchanged).
    :param stats_window_size: episodes averaged in ``rollout/ep_rew_mean`` (default 100).
    :param tensorboard_log: TensorBoard log folder (default ``None``: no TensorBoard).
    :param monitor_wrapper: wrap a non-vectorised env in SB3's ``Monitor`` (default ``True``).
    :param policy_kwargs: policy arguments (``actor_kwargs``, ``critic_kwargs``, ``pretrained_actor``,
        ``actor_lr``, ``critic_lr``, ...; see :class:`~agents.policies.PixelActorCriticPolicy`). After
        construction ``model.policy_kwargs`` holds the resolved architecture (``pretrained_actor`` is
        replaced by its U-Net kwargs: its weights are in the model, so a saved model reloads without it).
    :param verbose: 0 silent, 1 info, 2 debug (default 0).
    :param seed: seed of Python, NumPy, torch and the env (default ``None``).
    :param device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda:0"``, a ``torch.device``.
    :param _init_setup_model: build networks and buffer now (default ``True``; ``load`` uses ``False``).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"PixelUNetPolicy": PixelActorCriticPolicy}
    policy: PixelActorCriticPolicy
    rollout_buffer: PixelRolloutBuffer

    def __init__(
        self,
        policy: str | type[PixelActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 5e-4,
        n_steps: int = 8,
        batch_size: int = 8,
        n_epochs: int = 5,
        clip_range: float = 0.2,
        ent_coef: float = 0.15,
        kl_coef: float = 0.05,
        vf_coef: float = 1.0,
        max_grad_norm: float | None = 0.5,
        normalize_advantage: str = "off",
        dual_clip: float | None = None,
        target_kl: float | None = None,
        critic_warmup_epochs: int = 0,
        use_pseudo_labels: bool = True,
        update_actor_norm_stats: bool = True,
        image_log_interval: int = 10,
        image_log_count: int = 4,
        mixed_precision: str = "off",
        channels_last: bool | None = None,
        compile: bool | str = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        monitor_wrapper: bool = True,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        super().__init__(
            policy, env, learning_rate=learning_rate, n_steps=n_steps, gamma=0.0, gae_lambda=1.0,
            ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm, use_sde=False, sde_sample_freq=-1,
            rollout_buffer_class=PixelRolloutBuffer, stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log, monitor_wrapper=monitor_wrapper, policy_kwargs=policy_kwargs,
            verbose=verbose, seed=seed, device=device, _init_setup_model=False,
        )
        if n_steps < 1 or batch_size < 1 or n_epochs < 1:
            raise ValueError(f"n_steps, batch_size and n_epochs must be >= 1, got {n_steps}, {batch_size}, {n_epochs}")
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        if normalize_advantage not in ADVANTAGE_NORMALIZATION:
            raise ValueError(f"normalize_advantage must be one of {', '.join(ADVANTAGE_NORMALIZATION)}, "
                             f"got {normalize_advantage!r}")
        if dual_clip is not None and dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
        if critic_warmup_epochs < 0:
            raise ValueError(f"critic_warmup_epochs must be >= 0, got {critic_warmup_epochs}")
        if target_kl is not None and target_kl <= 0:
            raise ValueError(f"target_kl must be > 0 (or None), got {target_kl}")
        self.target_kl = target_kl
        self.normalize_advantage = normalize_advantage
        self.dual_clip = dual_clip
        self.critic_warmup_epochs = int(critic_warmup_epochs)
        self.kl_coef = kl_coef
        self.use_pseudo_labels = use_pseudo_labels
        self.update_actor_norm_stats = update_actor_norm_stats
        #: when True, :meth:`train` changes nothing (rollouts still run): set by the reward-retraining callback
        #: for an iteration whose reward network failed its own held-out checks
        self.skip_updates = False
        self.image_log_interval = image_log_interval
        self.image_log_count = image_log_count
        check_speed_settings(mixed_precision, compile, "PixelPPO.")  # clear errors now, not at the first update
        #: "off", "auto", "bf16" or "fp16": the precision of the update's forward passes (rollouts stay float32)
        self.mixed_precision = mixed_precision
        #: channels_last memory format for the actor, critic and reference (None: on CUDA and CPUs)
        self.channels_last = channels_last
        #: torch.compile the update's forward passes (False, True or a backend name)
        self.compile = compile
        self._compiled: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self._scalers: dict[str, torch.amp.GradScaler] = {}
        self._n_train_calls = 0
        self._warned_scalar_reward = False
        if _init_setup_model:
            self._setup_model()

    # --- setup ----------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        pixel_action_classes(self.action_space)  # clear error before anything is built
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                        **self.policy_kwargs).to(self.device)
        to_memory_format(self.policy, getattr(self, "channels_last", None), self.device)
        self.policy_kwargs = {**self.policy_kwargs, "pretrained_actor": None,
                              "actor_kwargs": self.policy.actor_kwargs, "critic_kwargs": self.policy.critic_kwargs}
        self.rollout_buffer = self._make_rollout_buffer()

    def _make_rollout_buffer(self) -> PixelRolloutBuffer:
        return self.rollout_buffer_class(self.n_steps, self.observation_space, self.action_space,
                                         device=self.device, n_envs=self.n_envs, **self.rollout_buffer_kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_scalers", "_compiled"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.actor_optimizer", "policy.critic_optimizer"], []

    def _update_networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The actor and critic the update calls: their ``torch.compile`` wrappers (made once, sharing the weights)
        when :attr:`compile` asks for them, else the networks themselves."""
        setting = getattr(self, "compile", False)  # models saved before the switch existed
        if not setting:
            return self.policy.actor, self.policy.critic
        if getattr(self, "_compiled", None) is None or self._compiled[0]._orig_mod is not self.policy.actor:
            self._compiled = (compiled(self.policy.actor, setting, "PixelPPO.compile"),
                              compiled(self.policy.critic, setting, "PixelPPO.compile"))
        return self._compiled

    @property
    def actor_lr(self) -> float:
        """Current learning rate of the actor's optimiser (settable, e.g. from a callback)."""
        return float(self.policy.actor_optimizer.param_groups[0]["lr"])

    @actor_lr.setter
    def actor_lr(self, value: float) -> None:
        for group in self.policy.actor_optimizer.param_groups:
            group["lr"] = float(value)
        self.policy.actor_lr = float(value)

    @property
    def critic_lr(self) -> float:
        """Current learning rate of the critic's optimiser (settable, e.g. from a callback)."""
        return float(self.policy.critic_optimizer.param_groups[0]["lr"])

    @critic_lr.setter
    def critic_lr(self, value: float) -> None:
        for group in self.policy.critic_optimizer.param_groups:
            group["lr"] = float(value)
        self.policy.critic_lr = float(value)

    # --- rollout ----------------------------------------------------------------------------------
    def _credit(self, actions: np.ndarray, rewards: np.ndarray, infos: list[dict[str, Any]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per env: the credited action, the env's reward map, the credited reward map and the anchor flag.

        An accepted pseudo-label (``info["pseudo_label"]``) replaces the sampled action and earns a
        reward of 1 at every pixel (docs/method.md, PPO step 3). The loop runs over envs, not pixels.
        """
        shape = actions.shape[1:]
        credited = actions.copy()
        env_maps = np.empty(actions.shape, dtype=np.float32)
        anchors = np.zeros(len(infos), dtype=bool)
        for i, info in enumerate(infos):
            if "reward_map" in info:
                env_maps[i] = self._checked_map(info["reward_map"], "reward_map", i, shape)
            else:
                if not self._warned_scalar_reward:
                    warnings.warn("env info has no 'reward_map'; PixelPPO broadcasts the scalar reward to every "
                                  "pixel (an image-level reward)", stacklevel=3)
                    self._warned_scalar_reward = True
                env_maps[i] = rewards[i]
            if self.use_pseudo_labels and info.get("pseudo_label") is not None:
                credited[i] = self._checked_map(info["pseudo_label"], "pseudo_label", i, shape)
                anchors[i] = True
        credited_maps = np.where(anchors[:, None, None], np.float32(1.0), env_maps)
        return credited, env_maps, credited_maps, anchors

    @staticmethod
    def _checked_map(value: Any, key: str, env_index: int, shape: tuple[int, ...]) -> np.ndarray:
        array = np.asarray(value)
        if array.shape != shape:
            raise ValueError(f"info[{key!r}] of env {env_index} has shape {array.shape}, expected {shape} (H, W)")
        return array

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """Fill the buffer with ``n_steps * n_envs`` one-step episodes sampled from the actor.

        ``self.n_steps`` is read after ``callback.on_rollout_start()`` (it overrides ``n_rollout_steps``).
        """
        assert self._last_obs is not None, "No previous observation was provided"
        # first, so that a callback may change n_steps / coefficients for this very rollout
        # (the RL4Seg schedule grows the rollout batch at each iteration boundary)
        callback.on_rollout_start()
        n_rollout_steps = self.n_steps
        if rollout_buffer.buffer_size != n_rollout_steps or rollout_buffer.n_envs != env.num_envs:
            self.n_envs = env.num_envs
            self.rollout_buffer = rollout_buffer = self._make_rollout_buffer()
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        reward_means, dices, n_anchors = [], [], 0

        for _ in range(n_rollout_steps):
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                dist = self.policy.get_distribution(obs_tensor)
                actions = dist.sample()
                values = self.policy.predict_values(obs_tensor)
            env_actions = actions.cpu().numpy().astype(self.action_space.dtype)
            new_obs, rewards, dones, infos = env.step(env_actions)
            self.num_timesteps += env.num_envs

            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            if not np.all(dones):
                raise ValueError("PixelPPO treats every step as a one-step episode (image -> label map -> reward), "
                                 f"but the env returned done={dones.tolist()}")

            credited, env_maps, reward_maps, anchors = self._credit(env_actions, rewards, infos)
            with torch.no_grad():
                credited_tensor = torch.as_tensor(credited, device=self.device).long()
                log_probs = dist.log_prob(credited_tensor)
                ref_log_probs = self.policy.reference_log_prob(obs_tensor, credited_tensor)
            rollout_buffer.add(self._last_obs, credited, reward_maps, values, log_probs, ref_log_probs, anchors)
            reward_means.extend(env_maps.mean(axis=(1, 2)).tolist())
            dices.extend(float(info["dice"]) for info in infos if info.get("dice") is not None)
            n_anchors += int(anchors.sum())
            self._last_obs = new_obs
            self._last_episode_starts = dones

        self.logger.record("rollout/reward_mean", float(np.mean(reward_means)))
        if dices:
            self.logger.record("rollout/dice_mean", float(np.mean(dices)))
        self.logger.record("rollout/anchor_fraction", n_anchors / max(len(reward_means), 1))
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # --- update ------------------------------------------------------------------------------------
    def train(self) -> None:
        """k epochs of the RL4Seg PPO update on the last rollout (docs/method.md, "PPO update")."""
        self.logger.record("train/skipped_update", int(self.skip_updates))
        if self.skip_updates:
            return
        self.policy.set_training_mode(True)
        if not self.update_actor_norm_stats:
            self.policy.actor.eval()  # same function as during the rollout: the ratio starts at exactly 1
        if callable(self.learning_rate):
            self.actor_lr = self.critic_lr = self.lr_schedule(self._current_progress_remaining)
        actor = self.policy.actor
        stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        precision = autocast_dtype(self.mixed_precision, self.device)
        scalers = self._scalers
        for name in ("actor", "critic"):  # float16 only; kept across updates (its scale adapts)
            scalers.setdefault(name, grad_scaler(precision, self.device))

        if self._n_train_calls == 0 and self.critic_warmup_epochs > 0:
            self._warm_up_critic(precision)
        stopped_at = None  # (epoch, minibatch) where target_kl stopped the update
        for epoch in range(self.n_epochs):
            if stopped_at is not None:
                break
            for minibatch, batch in enumerate(self.rollout_buffer.get(self.batch_size)):
                with autocast(precision, self.device):
                    values, log_prob, entropy = self.policy.evaluate_actions(batch.observations, batch.actions,
                                                                             *self._update_networks())
                values, log_prob, entropy = values.float(), log_prob.float(), entropy.float()
                with torch.no_grad():
                    shaped_reward = batch.reward_maps - self.kl_coef * (log_prob - batch.ref_log_prob)
                    advantages = shaped_reward - values  # per pixel, no bootstrapping (one-step episodes)
                    if self.normalize_advantage != "off":
                        # over the global minibatch: under torchrun every process centres by the same mean
                        mean, std = global_mean_std(advantages)
                        advantages = advantages - mean
                        if self.normalize_advantage == "mean_std":
                            advantages = advantages / (std + 1e-8)

                ratio = torch.exp(log_prob - batch.old_log_prob)  # per pixel, never summed over pixels
                if self.target_kl is not None:
                    with torch.no_grad():
                        kl = global_mean_std((ratio - 1) - (log_prob - batch.old_log_prob))[0]
                    if float(kl) > 1.5 * self.target_kl:
                        stopped_at = (epoch, minibatch)
                        break
                surrogate = clipped_objective(ratio, advantages, self.clip_range, self.dual_clip).mean()
                policy_loss = -surrogate - self.ent_coef * entropy.mean()
                self.policy.actor_optimizer.zero_grad()
                scalers["actor"].scale(policy_loss).backward()
                average_gradients(actor.parameters())  # torchrun: every process steps with the global mean
                if self.max_grad_norm is not None:
                    scalers["actor"].unscale_(self.policy.actor_optimizer)
                    torch.nn.utils.clip_grad_norm_(actor.parameters(), self.max_grad_norm)
                scalers["actor"].step(self.policy.actor_optimizer)
                scalers["actor"].update()

                value_loss = self.vf_coef * F.mse_loss(values, batch.reward_maps)
                self.policy.critic_optimizer.zero_grad()
                scalers["critic"].scale(value_loss).backward()
                average_gradients(self.policy.critic.parameters())
                scalers["critic"].step(self.policy.critic_optimizer)
                scalers["critic"].update()

                with torch.no_grad():  # kept on the device: one transfer after the update, not one per value
                    log_ratio = log_prob - batch.old_log_prob
                    stats["policy_gradient_loss"].append(-surrogate)  # SB3's key and meaning
                    stats["loss"].append(policy_loss + value_loss)
                    stats["value_loss"].append(value_loss.detach())
                    stats["entropy"].append(entropy.mean())
                    stats["entropy_loss"].append(-entropy.mean())  # SB3's sign convention
                    stats["reward_mean"].append(batch.reward_maps.mean())
                    stats["shaped_reward_mean"].append(shaped_reward.mean())
                    stats["advantage_mean"].append(advantages.mean())
                    stats["advantage_std"].append(advantages.std())
                    stats["ratio_mean"].append(ratio.mean())
                    stats["clip_fraction"].append(((ratio - 1).abs() > self.clip_range).float().mean())
                    stats["approx_kl"].append(((ratio - 1) - log_ratio).mean())
                    stats["kl_ref"].append((log_prob - batch.ref_log_prob).mean())

        sync_buffers(self.policy)  # torchrun: batch-norm statistics equal on every process
        if self.target_kl is not None:
            self.logger.record("train/stopped_early", int(stopped_at is not None))
            if stopped_at is not None and self.verbose >= 2:
                print(f"PixelPPO: update stopped at epoch {stopped_at[0]}, minibatch {stopped_at[1]} "
                      f"(approximate KL > 1.5 x target_kl {self.target_kl})")
        self._n_updates += self.n_epochs
        self._n_train_calls += 1
        if stats:
            means = torch.stack([torch.stack(v).detach().float().mean() for v in stats.values()]).cpu().tolist()
            for key, mean in zip(stats, means):
                self.logger.record(f"train/{key}", mean)
        buffer = self.rollout_buffer
        self.logger.record("train/explained_variance",
                           float(explained_variance(buffer.values.ravel(), buffer.reward_maps.ravel())))
        self.logger.record("train/ent_coef", self.ent_coef)
        self.logger.record("train/clip_range", self.clip_range)
        self.logger.record("train/kl_coef", self.kl_coef)
        self.logger.record("train/actor_lr", self.actor_lr)
        self.logger.record("train/critic_lr", self.critic_lr)
        self.logger.record("train/batch_size", self.batch_size)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if self.image_log_interval > 0 and self._n_train_calls % self.image_log_interval == 0:
            self.logger.record("train/panel", Image(self.image_panel(), "HW"),
                               exclude=("stdout", "log", "json", "csv"))

    def _warm_up_critic(self, precision: torch.dtype | None) -> None:
        """``critic_warmup_epochs`` passes of critic regression on the rollout, before any actor update."""
        critic, scaler = self.policy.critic, self._scalers["critic"]
        for _ in range(self.critic_warmup_epochs):
            for batch in self.rollout_buffer.get(self.batch_size):
                with autocast(precision, self.device):
                    values = self.policy.predict_values(batch.observations)
                value_loss = self.vf_coef * F.mse_loss(values.float(), batch.reward_maps)
                self.policy.critic_optimizer.zero_grad()
                scaler.scale(value_loss).backward()
                average_gradients(critic.parameters())
                scaler.step(self.policy.critic_optimizer)
                scaler.update()

    def image_panel(self) -> np.ndarray:
        """Rows ``image | action | reward map | value map`` of the first rollout images, float32 in [0, 1].

        Shape (rows * H, 4 * W); the action is shown as label / (n_classes - 1).
        """
        buffer = self.rollout_buffer
        n = min(self.image_log_count, buffer.size() * buffer.n_envs)
        flat = lambda array: array[: buffer.size()].reshape((-1, *array.shape[2:]))[:n]  # noqa: E731
        with torch.no_grad():
            images = self.policy.preprocess(torch.as_tensor(flat(buffer.observations))).squeeze(1).numpy()
        actions = flat(buffer.actions).astype(np.float32) / (self.policy.n_classes - 1)
        rows = [np.concatenate(parts, axis=1) for parts in
                zip(images, actions, flat(buffer.reward_maps), flat(buffer.values))]
        return np.clip(np.concatenate(rows, axis=0), 0.0, 1.0).astype(np.float32)

    # --- SB3 API --------------------------------------------------------------------------------
    def predict(self, observation: np.ndarray, state: tuple[np.ndarray, ...] | None = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Label maps for image observations: (B, H, W) for a batch, (H, W) for one image.

        Unlike SB3's default, ``deterministic=True`` (per-pixel argmax, the segmentation) is the
        default; ``False`` samples from the per-pixel categorical.
        """
        return self.policy.predict(observation, state, episode_start, deterministic)

    def learn(self: SelfPixelPPO, total_timesteps: int, callback: MaybeCallback = None, log_interval: int = 1,
              tb_log_name: str = "PixelPPO", reset_num_timesteps: bool = True,
              progress_bar: bool = False) -> SelfPixelPPO:
        """Train for ``total_timesteps`` env steps (= images). See SB3's ``OnPolicyAlgorithm.learn``."""
        return super().learn(total_timesteps=total_timesteps, callback=callback, log_interval=log_interval,
                             tb_log_name=tb_log_name, reset_num_timesteps=reset_num_timesteps,
                             progress_bar=progress_bar)
