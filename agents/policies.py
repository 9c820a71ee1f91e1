"""Actor-critic policy for per-pixel actions (RL4Seg).

The actor is a U-Net giving per-pixel class logits, read as a :class:`~agents.distributions.PixelCategorical`;
the critic is a second U-Net on the image giving a per-pixel value map V(s) in [0, 1]; the
reference policy is a frozen copy of the initial (pretrained) actor, used for the KL term of the
PPO update. Observations are single-channel uint8 images (H, W, 1) or, after Stable-Baselines3's
``VecTransposeImage``, (1, H, W); actions are ``MultiDiscrete`` label maps (H, W).
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import obs_as_tensor

from agents.distributions import PixelCategorical
from agents.networks import UNet, load_unet, unet_kwargs

#: UNet constructor keys that the policy sets itself (input/output channels, output activation)
_FIXED_UNET_KEYS = ("in_channels", "out_channels", "output_activation")


def pixel_action_classes(action_space: spaces.Space) -> tuple[int, tuple[int, int]]:
    """Return ``(n_classes, (H, W))`` of a per-pixel action space, or raise a clear ``ValueError``.

    A per-pixel action space is ``MultiDiscrete`` with a 2D ``nvec`` of shape (H, W) whose entries are
    all the same number of classes (>= 2).
    """
    if not isinstance(action_space, spaces.MultiDiscrete):
        raise ValueError(f"PixelPPO needs a per-pixel action space MultiDiscrete(np.full((H, W), n_classes)); "
                         f"found {action_space}. For stock SB3 algorithms use "
                         "rl4seg_env.wrappers.DownsampledActionWrapper instead.")
    nvec = np.asarray(action_space.nvec)
    if nvec.ndim != 2:
        raise ValueError(f"PixelPPO needs a 2D (H, W) MultiDiscrete action space (one label per pixel); "
                         f"found nvec of shape {nvec.shape}")
    if nvec.min() != nvec.max() or nvec.min() < 2:
        raise ValueError(f"PixelPPO needs the same number (>= 2) of classes at every pixel; "
                         f"found nvec values in [{nvec.min()}, {nvec.max()}]")
    return int(nvec.flat[0]), (int(nvec.shape[0]), int(nvec.shape[1]))


def _image_layout(observation_space: spaces.Space, hw: tuple[int, int]) -> str:
    """``"chw"`` for (1, H, W), ``"hwc"`` for (H, W, 1), ``"hw"`` for (H, W); clear error otherwise."""
    shape = getattr(observation_space, "shape", None)
    if not isinstance(observation_space, spaces.Box) or shape is None:
        raise ValueError(f"PixelPPO needs a Box image observation space, found {observation_space}")
    h, w = hw
    if shape == (1, h, w):
        return "chw"
    if shape == (h, w, 1):
        return "hwc"
    if shape == (h, w):
        return "hw"
    raise ValueError(f"observation space shape {shape} does not match the action's label-map size {h}x{w}: "
                     f"expected (1, {h}, {w}), ({h}, {w}, 1) or ({h}, {w})")


def shrink_perturb(model: torch.nn.Module, shrink: float = 0.5, sigma: float = 0.01,
                   generator: torch.Generator | None = None) -> None:
    """Shrink and perturb every parameter in place: ``w <- shrink * w + N(0, sigma^2)``.

    RL4Seg applies it to the actor and the critic between iterations (authors: shrink 0.5,
    sigma 0.01) so that the networks stay plastic for the next reward network. Buffers (e.g.
    batch-norm running statistics) are left untouched.

    :param model: module whose parameters are modified (no gradient is recorded).
    :param shrink: multiplicative factor (default 0.5; 1.0 = no shrink).
    :param sigma: standard deviation of the additive Gaussian noise (default 0.01; 0 = no noise).
    :param generator: optional ``torch.Generator`` for reproducible noise; the noise is drawn on the
        generator's device and moved to each parameter's device.
    """
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(shrink)
            if sigma > 0:
                device = generator.device if generator is not None else param.device
                noise = torch.randn(param.shape, generator=generator, device=device, dtype=param.dtype)
                param.add_(noise.to(param.device), alpha=sigma)


class PixelActorCriticPolicy(BasePolicy):
    """U-Net actor (per-pixel categorical), U-Net critic (per-pixel value) and frozen reference actor.

    :param observation_space: Box image space, (1, H, W), (H, W, 1) or (H, W); uint8 images are
        scaled from [0, 255] to [0, 1].
    :param action_space: ``MultiDiscrete(np.full((H, W), n_classes))``.
    :param lr_schedule: learning-rate schedule (progress remaining -> lr) from the algorithm; used
        for any optimiser whose ``actor_lr`` / ``critic_lr`` is not given.
    :param actor_kwargs: keyword arguments of the actor's :class:`~agents.networks.UNet` besides
        ``in_channels=1, out_channels=n_classes`` (e.g. ``{"channels": (8, 16, 32), "norm": "batch"}``).
        Default ``{}`` (the U-Net defaults). Ignored when ``pretrained_actor`` is given.
    :param critic_kwargs: keyword arguments of the critic's U-Net besides ``in_channels=1,
        out_channels=1, output_activation="sigmoid"``. Default: the actor's architecture.
    :param pretrained_actor: path to a :func:`~agents.networks.save_unet` checkpoint (e.g. from
        supervised pretraining); loaded into the actor AND the reference policy. Default ``None``
        (random actor; the reference is a copy of it).
    :param actor_lr: Adam learning rate of the actor (default ``None`` = ``lr_schedule(1)``; authors 5e-4).
    :param critic_lr: Adam learning rate of the critic (default ``None`` = ``lr_schedule(1)``; authors 5e-4).
    :param optimizer_class: optimiser of both networks (default ``torch.optim.Adam``).
    :param optimizer_kwargs: extra optimiser arguments, without the learning rate (default ``{}``).
    :param normalize_images: divide uint8 observations by 255 (default ``True``).
    :param use_sde: accepted for Stable-Baselines3 compatibility; must be ``False``.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        actor_kwargs: dict[str, Any] | None = None,
        critic_kwargs: dict[str, Any] | None = None,
        pretrained_actor: str | None = None,
        actor_lr: float | None = None,
        critic_lr: float | None = None,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        use_sde: bool = False,
    ) -> None:
        super().__init__(observation_space, action_space, optimizer_class=optimizer_class,
                         optimizer_kwargs=optimizer_kwargs, normalize_images=normalize_images)
        if use_sde:
            raise ValueError("PixelActorCriticPolicy does not support gSDE (use_sde=True): actions are discrete")
        self.n_classes, self.image_shape = pixel_action_classes(action_space)
        self.layout = _image_layout(observation_space, self.image_shape)

        if pretrained_actor is not None:
            actor, metadata = load_unet(pretrained_actor)
            if actor.in_channels != 1 or actor.out_channels != self.n_classes:
                raise ValueError(f"{pretrained_actor}: pretrained actor maps {actor.in_channels} -> "
                                 f"{actor.out_channels} channels; the env needs 1 image channel -> "
                                 f"{self.n_classes} classes")
            if actor.output_activation is not None:
                raise ValueError(f"{pretrained_actor}: the actor must output logits, found "
                                 f"output_activation={actor.output_activation!r}")
            self.pretrained_metadata = metadata
        else:
            actor = UNet(in_channels=1, out_channels=self.n_classes, **self._checked(actor_kwargs, "actor_kwargs"))
            self.pretrained_metadata = {}
        self.actor_kwargs = {k: v for k, v in unet_kwargs(actor).items() if k not in _FIXED_UNET_KEYS}
        critic_kwargs = self.actor_kwargs if critic_kwargs is None else self._checked(critic_kwargs, "critic_kwargs")
        self.critic = UNet(in_channels=1, out_channels=1, output_activation="sigmoid", **critic_kwargs)
        self.critic_kwargs = {k: v for k, v in unet_kwargs(self.critic).items() if k not in _FIXED_UNET_KEYS}
        self.actor = actor
        self.reference_policy = copy.deepcopy(actor).requires_grad_(False).eval()
        for name, net in (("actor", self.actor), ("critic", self.critic)):
            if self.image_shape[0] % net.divisor or self.image_shape[1] % net.divisor:
                raise ValueError(f"{name} U-Net with {len(net.channels)} levels needs H and W divisible by "
                                 f"{net.divisor}; the env's images are {self.image_shape[0]}x{self.image_shape[1]}")

        self.actor_lr = float(lr_schedule(1) if actor_lr is None else actor_lr)
        self.critic_lr = float(lr_schedule(1) if critic_lr is None else critic_lr)
        self.actor_optimizer = optimizer_class(self.actor.parameters(), lr=self.actor_lr, **self.optimizer_kwargs)
        self.critic_optimizer = optimizer_class(self.critic.parameters(), lr=self.critic_lr, **self.optimizer_kwargs)
        self.action_dist = PixelCategorical(self.n_classes)

    @staticmethod
    def _checked(kwargs: dict[str, Any] | None, name: str) -> dict[str, Any]:
        kwargs = dict(kwargs or {})
        fixed = sorted(set(kwargs) & set(_FIXED_UNET_KEYS))
        if fixed:
            raise ValueError(f"policy_kwargs[{name!r}] must not set {fixed}: the policy fixes them "
                             "(1 image channel in; n_classes logits for the actor, 1 sigmoid map for the critic)")
        return kwargs

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(lr_schedule=self._dummy_schedule, actor_kwargs=self.actor_kwargs, critic_kwargs=self.critic_kwargs,
                    actor_lr=self.actor_lr, critic_lr=self.critic_lr, optimizer_class=self.optimizer_class,
                    optimizer_kwargs=self.optimizer_kwargs)
        return data

    def train(self, mode: bool = True) -> PixelActorCriticPolicy:
        """Set training mode of actor and critic; the reference policy always stays in eval mode."""
        super().train(mode)
        self.reference_policy.eval()
        return self

    # --- observations -------------------------------------------------------------------------
    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations (B, 1, H, W), (B, H, W, 1) or (B, H, W) -> float images (B, 1, H, W) in [0, 1]."""
        h, w = self.image_shape
        if obs.ndim == 4 and obs.shape[1:] == (1, h, w):
            images = obs
        elif obs.ndim == 4 and obs.shape[1:] == (h, w, 1):
            images = obs.permute(0, 3, 1, 2)
        elif obs.ndim == 3 and obs.shape[1:] == (h, w):
            images = obs.unsqueeze(1)
        else:
            raise ValueError(f"observations must be images of shape (B, 1, {h}, {w}), (B, {h}, {w}, 1) or "
                             f"(B, {h}, {w}); found {tuple(obs.shape)}")
        images = images.float()
        if self.normalize_images and np.dtype(self.observation_space.dtype) == np.uint8:
            images = images / 255.0
        return images

    def obs_to_tensor(self, observation: np.ndarray | dict[str, np.ndarray]) -> tuple[torch.Tensor, bool]:
        """Numpy observation(s) -> (tensor (B, ...), vectorized flag), with a clear error for a wrong shape.

        Accepts one image ((1, H, W), (H, W, 1), (H, W)) or a batch ((B, 1, H, W), (B, H, W, 1), (B, H, W)).
        """
        if isinstance(observation, dict):
            raise ValueError("PixelActorCriticPolicy expects image observations, found a dict")
        observation = np.asarray(observation)
        h, w = self.image_shape
        single = observation.shape in ((1, h, w), (h, w, 1), (h, w))
        batched = (observation.ndim == 4 and observation.shape[1:] in ((1, h, w), (h, w, 1))) or \
                  (observation.ndim == 3 and observation.shape[1:] == (h, w))
        if not (single or batched):
            raise ValueError(f"observation of shape {observation.shape} does not fit the policy's {h}x{w} images: "
                             f"expected (1, {h}, {w}), ({h}, {w}, 1), ({h}, {w}) or a batch of them")
        vectorized = not single
        if single:
            observation = observation.reshape(1, h, w)
        return obs_as_tensor(observation, self.device), vectorized

    def predict(self, observation: np.ndarray | dict[str, np.ndarray], state: tuple[np.ndarray, ...] | None = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Label map(s) for image observation(s): (B, H, W) for a batch, (H, W) for one image,
        in the action space's dtype. ``deterministic=True`` takes the per-pixel argmax."""
        actions, state = super().predict(observation, state, episode_start, deterministic)
        return actions.astype(self.action_space.dtype, copy=False), state

    # --- networks -----------------------------------------------------------------------------
    def get_distribution(self, obs: torch.Tensor) -> PixelCategorical:
        """Actor's per-pixel distribution for observations (B, ...)."""
        return PixelCategorical(self.n_classes).proba_distribution(self.actor(self.preprocess(obs)))

    def reference_distribution(self, obs: torch.Tensor) -> PixelCategorical:
        """Frozen reference policy's per-pixel distribution (no gradient)."""
        with torch.no_grad():
            return PixelCategorical(self.n_classes).proba_distribution(self.reference_policy(self.preprocess(obs)))

    def predict_values(self, obs: torch.Tensor) -> torch.Tensor:
        """Critic's value map V(s): (B, H, W) float in [0, 1]."""
        return self.critic(self.preprocess(obs)).squeeze(1)

    def forward(self, obs: torch.Tensor, deterministic: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or argmax) label maps. Returns ``(actions (B, H, W) int64, values (B, H, W),
        log_prob (B, H, W))``."""
        images = self.preprocess(obs)
        dist = PixelCategorical(self.n_classes).proba_distribution(self.actor(images))
        actions = dist.get_actions(deterministic=deterministic)
        return actions, self.critic(images).squeeze(1), dist.log_prob(actions)

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor, actor: torch.nn.Module | None = None,
                         critic: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pixel ``(values, log_prob, entropy)`` of ``actions`` (B, H, W), each (B, H, W), with gradients.

        :param actor: what to call in place of :attr:`actor` (e.g. its ``torch.compile`` wrapper, which shares its
            weights); likewise ``critic``.
        """
        images = self.preprocess(obs)
        actor, critic = self.actor if actor is None else actor, self.critic if critic is None else critic
        dist = PixelCategorical(self.n_classes).proba_distribution(actor(images))
        return critic(images).squeeze(1), dist.log_prob(actions), dist.entropy()

    def reference_log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi_ref(a | s) per pixel (B, H, W), no gradient."""
        return self.reference_distribution(obs).log_prob(actions)

    def kl_to_reference(self, obs: torch.Tensor) -> torch.Tensor:
        """Exact per-pixel KL(pi_theta || pi_ref) in nats (B, H, W), no gradient.

        The actor runs in its current mode: call ``set_training_mode(False)`` first for the
        evaluation-mode policy (as ``predict`` does)."""
        with torch.no_grad():
            return self.get_distribution(obs).kl_divergence(self.reference_distribution(obs))

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)
