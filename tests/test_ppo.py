"""PixelPPO: learning, KL to the reference, save/load, SB3 callbacks and logger, anchors, errors.

Everything runs on 32 px images of a tiny labelled dataset (a bright disk inside a grey ring on a
dark background) through the real :class:`rl4seg_env.env.SegEnv` with the ground-truth pixel
accuracy reward, with small U-Nets (channels 8-16-32), on the CPU.
"""
from __future__ import annotations

import glob

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from agents import PixelActorCriticPolicy, PixelCategorical, PixelPPO, shrink_perturb
from conftest import RingDataset
from rl4seg_env.data.base import SegDataset
from rl4seg_env.env import SegEnv
from rl4seg_env.metrics import dice_per_class

SIZE = 32
SMALL = {"actor_kwargs": {"channels": (8, 16, 32)}}


@pytest.fixture(scope="module")
def dataset() -> RingDataset:
    return RingDataset(16, size=SIZE, class_names=("background", "lv", "myo"), intensities=(0.1, 0.9, 0.5),
                       noise=0.05)


def make_env(dataset: SegDataset, n_envs: int = 2, seed: int = 0):
    return make_vec_env(lambda: SegEnv(dataset, reward="accuracy"), n_envs=n_envs, seed=seed)


def make_model(dataset: SegDataset, **kwargs) -> PixelPPO:
    kwargs = {"n_steps": 4, "batch_size": 8, "ent_coef": 0.01, "kl_coef": 0.0, "learning_rate": 1e-3,
              "policy_kwargs": SMALL, "seed": 0, "device": "cpu", **kwargs}
    return PixelPPO("PixelUNetPolicy", make_env(dataset), **kwargs)


def images_and_labels(dataset: RingDataset) -> tuple[np.ndarray, np.ndarray]:
    samples = [dataset[i] for i in range(len(dataset))]
    images = np.stack([np.round(s.image * 255).astype(np.uint8)[..., None] for s in samples])
    return images, np.stack([s.label for s in samples])


def score(model: PixelPPO, dataset: RingDataset) -> tuple[float, float]:
    """(mean pixel accuracy = the env's mean reward of the argmax action, mean foreground Dice)."""
    images, labels = images_and_labels(dataset)
    predictions, _ = model.predict(images, deterministic=True)
    assert predictions.shape == labels.shape and predictions.dtype == np.uint8
    return float((predictions == labels).mean()), float(dice_per_class(predictions, labels, 3).mean())


def mean_kl_to_reference(model: PixelPPO, dataset: RingDataset) -> float:
    images, _ = images_and_labels(dataset)
    obs, _ = model.policy.obs_to_tensor(images)
    model.policy.set_training_mode(False)
    return float(model.policy.kl_to_reference(obs).mean())


# --- learning --------------------------------------------------------------------------------------
def test_short_learn_raises_reward_and_dice_from_a_random_actor(dataset):
    model = make_model(dataset)
    reward_before, dice_before = score(model, dataset)
    model.learn(160)
    reward_after, dice_after = score(model, dataset)
    assert reward_before < 0.5 and dice_before < 0.4
    assert reward_after > reward_before + 0.3, (reward_before, reward_after)
    assert reward_after > 0.8
    assert dice_after > dice_before + 0.3, (dice_before, dice_after)


def test_large_kl_coef_keeps_the_policy_close_to_the_reference(dataset):
    free = make_model(dataset, ent_coef=0.0, kl_coef=0.0)
    free.learn(96)
    anchored = make_model(dataset, ent_coef=0.0, kl_coef=20.0)
    anchored.learn(96)
    kl_free, kl_anchored = mean_kl_to_reference(free, dataset), mean_kl_to_reference(anchored, dataset)
    assert kl_free > 0.05, kl_free
    assert kl_anchored < 0.2 * kl_free, (kl_anchored, kl_free)


def test_first_minibatch_ratio_is_one_and_nothing_is_clipped(dataset):
    """With frozen normalisation statistics the actor is evaluated as in the rollout: ratio == 1 at first."""
    model = make_model(dataset, n_epochs=1, batch_size=64, update_actor_norm_stats=False)
    model.learn(8)
    model.train()  # the logger keeps the last recorded values
    values = model.logger.name_to_value
    assert values["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert values["train/clip_fraction"] == 0.0


def test_target_kl_stops_the_update_at_the_first_minibatch_past_it(dataset):
    """target_kl: the first minibatch (ratio 1, KL 0) steps, the next one is past a tiny target: the update stops
    after one actor step (instead of n_epochs x minibatches) and says so; None runs every epoch."""
    steps = {}
    for target in (1e-9, None):
        model = make_model(dataset, n_epochs=3, batch_size=4, update_actor_norm_stats=False, target_kl=target)
        calls = []
        step = model.policy.actor_optimizer.step
        model.policy.actor_optimizer.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
        model.learn(8)  # one rollout (2 envs x 4 steps = 8 images: 2 minibatches per epoch), one update
        steps[target] = len(calls)
        if target is not None:
            assert model.logger.name_to_value["train/stopped_early"] == 1
    assert steps == {1e-9: 1, None: 3 * 2}
    with pytest.raises(ValueError, match="target_kl"):
        make_model(dataset, target_kl=0.0)


def test_dual_clip_bounds_the_objective_of_an_improbable_action_with_a_negative_advantage():
    from agents.ppo import clipped_objective

    ratio = torch.tensor([1000.0, 1000.0, 0.5, 1.1], requires_grad=True)
    advantages = torch.tensor([-0.5, 0.5, -0.5, -0.5])
    plain = clipped_objective(ratio, advantages, 0.2)
    dual = clipped_objective(ratio, advantages, 0.2, dual_clip=3.0)
    assert plain.tolist() == pytest.approx([-500.0, 0.6, -0.4, -0.55])
    assert dual.tolist() == pytest.approx([-1.5, 0.6, -0.4, -0.55])  # only the huge-ratio negative pixel changes
    dual.sum().backward()
    assert ratio.grad.tolist() == pytest.approx([0.0, 0.0, 0.0, -0.5])


@pytest.mark.parametrize("mode", ["mean", "mean_std"])
def test_advantage_normalisation_centres_each_minibatch(dataset, mode):
    model = make_model(dataset, n_epochs=1, batch_size=64, normalize_advantage=mode)
    model.learn(8)
    model.train()
    assert model.logger.name_to_value["train/advantage_mean"] == pytest.approx(0.0, abs=1e-5)
    raw = make_model(dataset, n_epochs=1, batch_size=64)
    raw.learn(8)
    raw.train()
    assert abs(raw.logger.name_to_value["train/advantage_mean"]) > 0.05  # an untrained critic's bias


def test_critic_warmup_fits_the_critic_before_the_first_actor_update(dataset):
    """The first update's advantages are centred by a critic that has seen the rollout's rewards."""
    cold = make_model(dataset, n_epochs=1, batch_size=64)
    warm = make_model(dataset, n_epochs=1, batch_size=64, critic_warmup_epochs=30)
    for model in (cold, warm):
        model.learn(8)
    assert warm._n_train_calls == cold._n_train_calls == 1
    bias = {name: abs(m.logger.name_to_value.get("train/advantage_mean", np.nan)) for name, m in
            (("cold", cold), ("warm", warm))}
    assert bias["warm"] < 0.5 * bias["cold"], bias


@pytest.mark.parametrize("kwargs, match", [({"normalize_advantage": "yes"}, "normalize_advantage"),
                                           ({"dual_clip": 1.0}, "dual_clip"),
                                           ({"critic_warmup_epochs": -1}, "critic_warmup_epochs")])
def test_bad_update_options_are_refused(dataset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_model(dataset, **kwargs)


# --- SB3 API ------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(dataset, tmp_path):
    model = make_model(dataset)
    model.learn(32)
    path = tmp_path / "pixel_ppo.zip"
    model.save(path)
    loaded = PixelPPO.load(path, env=make_env(dataset), device="cpu")
    images, _ = images_and_labels(dataset)
    np.testing.assert_array_equal(model.predict(images)[0], loaded.predict(images)[0])
    original, restored = model.get_parameters(), loaded.get_parameters()
    assert set(original) == set(restored) == {"policy", "policy.actor_optimizer", "policy.critic_optimizer"}
    for name, tensor in original["policy"].items():
        assert torch.equal(tensor, restored["policy"][name]), name
    # the reference policy is the initial actor, not the trained one, and survives the round trip
    assert not torch.equal(original["policy"]["actor.head.weight"], original["policy"]["reference_policy.head.weight"])
    assert (loaded.ent_coef, loaded.kl_coef, loaded.batch_size) == (model.ent_coef, model.kl_coef, model.batch_size)
    assert loaded.actor_lr == model.actor_lr
    loaded.learn(8)  # and it keeps training

    # set_parameters restores a model in place
    fresh = make_model(dataset, seed=1)
    fresh.set_parameters(original)
    np.testing.assert_array_equal(fresh.predict(images)[0], model.predict(images)[0])
    # predict-only load without an env
    assert PixelPPO.load(path, device="cpu").predict(images[0])[0].shape == (SIZE, SIZE)


def test_pretrained_actor_is_loaded_into_actor_and_reference(dataset, tmp_path):
    from agents.networks import UNet, save_unet

    torch.manual_seed(3)
    unet = UNet(1, 3, channels=(8, 16, 32))
    save_unet(unet, str(tmp_path / "actor.pt"), class_names=list(dataset.class_names), image_size=SIZE)
    model = make_model(dataset, policy_kwargs={"pretrained_actor": str(tmp_path / "actor.pt"), "actor_lr": 2e-4})
    for name, tensor in unet.state_dict().items():
        assert torch.equal(model.policy.actor.state_dict()[name], tensor)
        assert torch.equal(model.policy.reference_policy.state_dict()[name], tensor)
    assert model.actor_lr == 2e-4 and model.critic_lr == 1e-3
    assert model.policy_kwargs["pretrained_actor"] is None  # resolved: a saved model does not need the file
    bad = UNet(1, 4, channels=(8, 16, 32))
    save_unet(bad, str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="4 channels.*3 classes"):
        make_model(dataset, policy_kwargs={"pretrained_actor": str(tmp_path / "bad.pt")})


class CountingCallback(BaseCallback):
    """Counts calls and changes the coefficients between iterations, as the RL4Seg loop does."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = self.rollout_ends = 0

    def _on_step(self) -> bool:
        self.steps += 1
        return True

    def _on_rollout_end(self) -> None:
        self.rollout_ends += 1
        self.model.ent_coef, self.model.kl_coef = 0.05, 0.02
        self.model.actor_lr, self.model.critic_lr = 1e-4, 2e-4
        self.model.batch_size, self.model.n_steps = 4, 2


def test_sb3_callbacks_progress_bar_and_coefficient_changes(dataset, tmp_path):
    model = make_model(dataset)
    counting = CountingCallback()
    checkpoints = CheckpointCallback(save_freq=4, save_path=str(tmp_path / "ckpt"), name_prefix="pixel")
    evaluation = EvalCallback(make_env(dataset, n_envs=1, seed=5), eval_freq=4, n_eval_episodes=4,
                              log_path=str(tmp_path / "eval"), best_model_save_path=str(tmp_path / "best"))
    model.learn(24, callback=CallbackList([counting, checkpoints, evaluation]), progress_bar=True)
    # iteration 1: 4 steps x 2 envs; then the callback shrinks the rollout to 2 steps x 2 envs
    assert counting.steps == 4 + 2 * 4 == model.num_timesteps // 2
    assert counting.rollout_ends == 5
    assert model.rollout_buffer.buffer_size == 2
    assert model.policy.actor_optimizer.param_groups[0]["lr"] == 1e-4
    assert model.policy.critic_optimizer.param_groups[0]["lr"] == 2e-4
    assert model.logger.name_to_value["train/kl_coef"] == 0.02
    assert model.logger.name_to_value["train/batch_size"] == 4
    assert glob.glob(str(tmp_path / "ckpt" / "pixel_*_steps.zip"))
    assert (tmp_path / "best" / "best_model.zip").exists()
    evaluations = np.load(tmp_path / "eval" / "evaluations.npz")
    assert evaluations["results"].shape[1] == 4 and np.all((evaluations["results"] >= 0) & (evaluations["results"] <= 1))


def test_tensorboard_has_scalars_and_image_panel(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make_model(dataset, tensorboard_log=str(tmp_path), image_log_interval=1)
    model.learn(24, tb_log_name="tb")
    events = glob.glob(str(tmp_path / "tb_1" / "events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(events[0], size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(accumulator.Tags()["scalars"])
    for tag in ("rollout/reward_mean", "rollout/dice_mean", "train/reward_mean", "train/advantage_mean",
                "train/kl_ref", "train/ratio_mean", "train/clip_fraction", "train/entropy", "train/value_loss",
                "train/policy_gradient_loss", "train/entropy_loss", "train/loss", "train/approx_kl",
                "rollout/ep_rew_mean", "rollout/ep_len_mean"):
        assert tag in scalars, (tag, sorted(scalars))
    assert "train/panel" in accumulator.Tags()["images"]
    panel = accumulator.Images("train/panel")[-1]
    assert (panel.height, panel.width) == (4 * SIZE, 4 * SIZE)  # 4 rows of image | action | reward | value


# --- anchors --------------------------------------------------------------------------------------
def test_pseudo_label_anchors_replace_actions_with_reward_one(dataset):
    env = make_env(dataset)
    samples = [dataset[i] for i in range(len(dataset))]
    anchored_ids = {s.id for s in samples[::2]}
    pseudo = {s.id: np.full((SIZE, SIZE), 2, np.uint8) for s in samples if s.id in anchored_ids}
    env.env_method("set_pseudo_labels", pseudo)
    model = PixelPPO("PixelUNetPolicy", env, n_steps=8, policy_kwargs=SMALL, seed=0, device="cpu")
    model.learn(16)  # one rollout of 8 x 2 images
    buffer = model.rollout_buffer
    anchors = buffer.anchors.reshape(-1)
    assert anchors.any() and not anchors.all()
    actions = buffer.actions.reshape(-1, SIZE, SIZE)
    rewards = buffer.reward_maps.reshape(-1, SIZE, SIZE)
    assert np.all(actions[anchors] == 2) and np.all(rewards[anchors] == 1.0)
    assert np.all(rewards[~anchors].mean(axis=(1, 2)) < 0.9)  # a random actor's samples are far from perfect
    # old log-probs are those of the credited (pseudo-label) action
    obs = torch.as_tensor(buffer.observations.reshape(-1, 1, SIZE, SIZE)[anchors])
    model.policy.set_training_mode(False)
    with torch.no_grad():
        reference = model.policy.reference_log_prob(obs, torch.as_tensor(actions[anchors]).long())
    np.testing.assert_allclose(buffer.ref_log_probs.reshape(-1, SIZE, SIZE)[anchors], reference.numpy(), atol=1e-5)

    off = PixelPPO("PixelUNetPolicy", env, n_steps=8, policy_kwargs=SMALL, seed=0, device="cpu",
                   use_pseudo_labels=False)
    off.learn(16)
    assert not off.rollout_buffer.anchors.any()


# --- errors ---------------------------------------------------------------------------------------
class FixedSpacesEnv(gym.Env):
    """A one-step env with arbitrary spaces (for the error tests)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


@pytest.mark.parametrize("action_space, match", [
    (spaces.Discrete(3), "per-pixel action space MultiDiscrete"),
    (spaces.MultiDiscrete([3] * SIZE), "2D"),
    (spaces.MultiDiscrete(np.full((SIZE, SIZE), 1)), "same number"),
])
def test_non_pixel_action_space_is_refused(action_space, match):
    env = DummyVecEnv([lambda: FixedSpacesEnv(spaces.Box(0, 255, (SIZE, SIZE, 1), np.uint8), action_space)])
    with pytest.raises(ValueError, match=match):
        PixelPPO("PixelUNetPolicy", env, policy_kwargs=SMALL, device="cpu")


def test_wrong_observation_shape_is_refused(dataset):
    pixel_actions = spaces.MultiDiscrete(np.full((SIZE, SIZE), 3), dtype=np.uint8)
    env = DummyVecEnv([lambda: FixedSpacesEnv(spaces.Box(0, 255, (2 * SIZE, SIZE, 1), np.uint8), pixel_actions)])
    with pytest.raises(ValueError, match=r"does not match the action's label-map size 32x32"):
        PixelPPO("PixelUNetPolicy", env, policy_kwargs=SMALL, device="cpu")
    env = DummyVecEnv([lambda: FixedSpacesEnv(spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8), pixel_actions)])
    with pytest.raises(ValueError, match=r"expected \(1, 32, 32\)"):
        PixelPPO("PixelUNetPolicy", env, policy_kwargs=SMALL, device="cpu")

    model = make_model(dataset)
    with pytest.raises(ValueError, match=r"observation of shape \(2, 16, 16, 1\) does not fit"):
        model.predict(np.zeros((2, 16, 16, 1), np.uint8))
    with pytest.raises(ValueError, match=r"observations must be images of shape"):
        model.policy.predict_values(torch.zeros(2, 3, SIZE, SIZE))
    # both channel layouts (and plain (B, H, W)) give the same segmentation
    images, _ = images_and_labels(dataset)
    channels_last = model.predict(images)[0]
    np.testing.assert_array_equal(channels_last, model.predict(images.transpose(0, 3, 1, 2))[0])
    np.testing.assert_array_equal(channels_last, model.predict(images[..., 0])[0])


# --- building blocks --------------------------------------------------------------------------------
def test_pixel_categorical_matches_torch_categorical():
    logits = torch.randn(2, 3, 4, 5)
    dist = PixelCategorical(3).proba_distribution(logits)
    actions = torch.randint(0, 3, (2, 4, 5))
    reference = torch.distributions.Categorical(logits=logits.permute(0, 2, 3, 1))
    torch.testing.assert_close(dist.log_prob(actions), reference.log_prob(actions))
    torch.testing.assert_close(dist.entropy(), reference.entropy())
    assert torch.equal(dist.mode(), logits.argmax(1))
    # sampling frequencies match the probabilities at every pixel
    skewed = PixelCategorical(3).proba_distribution(torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(4000, 3, 2, 2))
    samples = skewed.sample(torch.Generator().manual_seed(0))
    frequencies = torch.bincount(samples.flatten(), minlength=3).float() / samples.numel()
    torch.testing.assert_close(frequencies, torch.softmax(torch.tensor([2.0, 0.0, -1.0]), 0), atol=0.01, rtol=0)


def test_shrink_perturb():
    model = torch.nn.Linear(200, 100)
    before = model.weight.detach().clone()
    shrink_perturb(model, shrink=0.5, sigma=0.0)
    torch.testing.assert_close(model.weight.detach(), 0.5 * before)
    twin = torch.nn.Linear(200, 100)
    twin.load_state_dict(model.state_dict())
    shrink_perturb(model, shrink=1.0, sigma=0.01, generator=torch.Generator().manual_seed(0))
    noise = model.weight.detach() - 0.5 * before
    assert noise.std().item() == pytest.approx(0.01, rel=0.05)
    shrink_perturb(twin, shrink=1.0, sigma=0.01, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(twin.weight.detach(), model.weight.detach())  # reproducible with a generator


def test_policy_outputs_have_pixel_shapes(dataset):
    model = make_model(dataset)
    assert isinstance(model.policy, PixelActorCriticPolicy)
    images, _ = images_and_labels(dataset)
    obs, _ = model.policy.obs_to_tensor(images[:3])
    actions, values, log_prob = model.policy(obs)
    assert actions.shape == values.shape == log_prob.shape == (3, SIZE, SIZE)
    assert values.min() >= 0 and values.max() <= 1 and log_prob.max() <= 0
    assert not any(p.requires_grad for p in model.policy.reference_policy.parameters())
    model.policy.set_training_mode(True)
    assert model.policy.actor.training and not model.policy.reference_policy.training


def test_batched_env_adapter(dataset, tmp_path):
    """The natively batched env (one reward call per step for all images) works like DummyVecEnv."""
    from agents.vec_env import make_sb3_vec_env

    env = make_sb3_vec_env(4, monitor_dir=tmp_path, dataset=dataset, reward="accuracy")
    model = PixelPPO("PixelUNetPolicy", env, n_steps=2, policy_kwargs=SMALL, seed=0, device="cpu")
    model.learn(16)
    assert model.num_timesteps == 16 and model.rollout_buffer.reward_maps.shape == (2, 4, SIZE, SIZE)
    assert model.predict(images_and_labels(dataset)[0][:5])[0].shape == (5, SIZE, SIZE)
    # SB3's VecMonitor: one-step episodes in monitor.csv and in the episode buffer behind rollout/ep_rew_mean
    from stable_baselines3.common.monitor import load_results

    episodes = load_results(str(tmp_path))
    assert len(episodes) == 16 and (episodes["l"] == 1).all() and episodes["r"].between(0, 1).all()
    assert len(model.ep_info_buffer) == 16


def test_iteration_schedule_puts_each_iterations_settings_on_the_model():
    """IterationSchedule.apply (shared by the reward-retraining callback and scripts/rl_ceiling.py): entropy and KL
    1/(2i), rollout batch_size_base * i, and shrink-and-perturb from iteration 2 on, which needs target images."""
    from agents.callbacks import IterationSchedule
    from agents.vec_env import make_sb3_vec_env

    env = make_sb3_vec_env(2, dataset=RingDataset(n=4))
    unet = {"channels": [4, 8]}
    model = PixelPPO("PixelUNetPolicy", env, n_steps=1, batch_size=2, seed=0, image_log_interval=0,
                     policy_kwargs={"actor_kwargs": unet, "critic_kwargs": unet})
    schedule = IterationSchedule(ent_coef_base=0.2, kl_coef_base=0.4, batch_size_base=3, shrink=0.5, perturb_sigma=0.01)
    before = [p.detach().clone() for p in model.policy.actor.parameters()]
    assert schedule.apply(model, 1) is False
    assert (model.ent_coef, model.kl_coef, model.batch_size, model.n_steps) == (0.1, 0.2, 3, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.policy.actor.parameters(), before))
    with pytest.raises(ValueError, match="iteration 2 shrinks-and-perturbs"):
        schedule.apply(model, 2)
    images = torch.rand(4, 1, 32, 32)
    assert schedule.apply(model, 2, images, batch_size=4) is True
    assert (model.ent_coef, model.kl_coef, model.batch_size, model.n_steps) == (0.05, 0.1, 4, 2)
    assert any(not torch.equal(a, b) for a, b in zip(model.policy.actor.parameters(), before))
    assert IterationSchedule(shrink=1.0, perturb_sigma=0.0).apply(model, 2) is False  # nothing to perturb
    env.close()
