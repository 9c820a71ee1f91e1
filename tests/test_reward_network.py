"""Reward network, temperature scaling, checkpoints and the env adapter (reward/network.py)."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from conftest import RingDataset

from reward.network import (
    LearnedReward,
    RewardNet,
    fit_temperature,
    fit_temperature_on_labelled,
    load_reward_net,
    save_reward_net,
)
from reward.training import RewardTrainConfig, RewardTrainResult, error_detection_auc, train_reward_network
from reward.uncertainty import expected_calibration_error
from rl4seg_env.rewards import RewardModel

N_CLASSES = 3
SMALL = (8, 16)  # U-Net widths: 2 levels keep the tests fast on a shared CPU




def disc_toy(n: int, size: int = 32, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Reward samples: an image with a bright disc (LV = 1) in a mid-grey ring (MYO = 2); the prediction is
    the ground truth with 1-3 random blobs overwritten by a random class; target = (pred == gt)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    samples = []
    for _ in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.12, 0.2) * size
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        gt = np.where(d2 < r ** 2, 1, np.where(d2 < (r + 3) ** 2, 2, 0))
        image = np.choose(gt, [0.1, 0.85, 0.5]) + rng.normal(0, 0.05, gt.shape)
        pred = gt.copy()
        for _ in range(rng.integers(1, 4)):
            by, bx = rng.uniform(0, size, 2)
            pred[(yy - by) ** 2 + (xx - bx) ** 2 < rng.uniform(2, 5) ** 2] = rng.integers(0, N_CLASSES)
        samples.append((image.clip(0, 1).astype(np.float32), pred, (pred == gt).astype(np.float32)))
    return samples


def calibrated_logits(n: int = 50_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and targets y ~ Bernoulli(sigmoid(z)): perfectly calibrated."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=torch.float64) * 2.5
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(z)).double()
    return z, y


# -- the network ------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["onehot", "label"])
def test_reward_net_shapes_and_temperature(encoding: str) -> None:
    torch.manual_seed(0)
    net = RewardNet(N_CLASSES, seg_encoding=encoding, channels=SMALL).eval()
    assert net.unet.in_channels == (1 + N_CLASSES if encoding == "onehot" else 2)
    images = torch.rand(2, 1, 16, 16)
    segs = torch.randint(0, N_CLASSES, (2, 16, 16))
    logits = net(images, segs)
    assert logits.shape == (2, 1, 16, 16) and logits.dtype == torch.float32
    reward = net.reward_map(images, segs)
    assert reward.shape == (2, 16, 16)
    torch.testing.assert_close(reward, torch.sigmoid(logits[:, 0]))
    net.set_temperature(4.0)
    torch.testing.assert_close(net.reward_map(images, segs), torch.sigmoid(logits[:, 0] / 4.0))
    assert "temperature" in net.state_dict()


def test_reward_net_sees_the_segmentation() -> None:
    torch.manual_seed(0)
    net = RewardNet(N_CLASSES, channels=SMALL).eval()
    images = torch.rand(1, 1, 16, 16)
    a, b = torch.zeros(1, 16, 16, dtype=torch.long), torch.ones(1, 16, 16, dtype=torch.long)
    assert not torch.allclose(net(images, a), net(images, b))


def test_reward_net_refuses_bad_input() -> None:
    net = RewardNet(N_CLASSES, channels=SMALL)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], found \[3, 3\]"):
        net(torch.rand(1, 1, 16, 16), torch.full((1, 16, 16), 3))
    with pytest.raises(ValueError, match="segs must be"):
        net(torch.rand(1, 1, 16, 16), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="integer label map"):
        net(torch.rand(1, 1, 16, 16), torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="seg_encoding"):
        RewardNet(N_CLASSES, seg_encoding="rgb")
    with pytest.raises(ValueError, match="temperature"):
        net.set_temperature(0.0)


# -- temperature scaling ----------------------------------------------------------------------------
def test_fit_temperature_recovers_the_scale_of_overconfident_logits() -> None:
    z, y = calibrated_logits()
    overconfident = 5.0 * z
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(5.0, rel=0.05)
    ece = lambda logits: expected_calibration_error(torch.sigmoid(-logits).numpy(), (y < 0.5).numpy())  # noqa: E731
    before, after = ece(overconfident), ece(overconfident / t)
    assert before > 0.1 and after < 0.02 and after < before / 5
    # already calibrated: T stays ~1; underconfident logits get T < 1
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    assert fit_temperature(0.5 * z, y) == pytest.approx(0.5, rel=0.05)


class _FixedActor(torch.nn.Module):
    """Predicts the same label map for every image."""

    def __init__(self, pred: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("onehot", torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), 3)
                             .permute(2, 0, 1).float())

    def forward(self, x):
        return 10.0 * self.onehot.expand(len(x), -1, -1, -1)


class _SureNet(torch.nn.Module):
    """A reward network that calls every pixel correct with logit 8 (probability 0.9997)."""

    def forward(self, images, segs):
        return torch.full((len(images), 1, *images.shape[1:]), 8.0)


def test_temperature_on_labelled_images_uses_the_true_errors() -> None:
    pred = np.zeros((10, 10), np.uint8)
    pred[2:8, 2:8] = 1  # 36 foreground pixels
    labels = np.repeat(pred[None], 4, axis=0)
    labels[:, 2:3, 2:8] = 0  # 6 of 36 pixels wrong per image -> true accuracy 5/6 over the foreground
    images = np.zeros((4, 10, 10), np.float32)
    t = fit_temperature_on_labelled(_SureNet(), _FixedActor(pred), images, labels, batch_size=3)
    assert torch.sigmoid(torch.tensor(8.0 / t)).item() == pytest.approx(5 / 6, abs=1e-3)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        fit_temperature_on_labelled(_SureNet(), _FixedActor(pred), images, labels[:, :5])


def test_fit_temperature_degenerate_input() -> None:
    with pytest.raises(ValueError, match="2 logits but 3 targets"):
        fit_temperature(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="no logits"):
        fit_temperature(torch.zeros(0), torch.zeros(0))
    # all targets 1 with positive logits: the optimum is T -> 0; clipped with a warning
    with pytest.warns(RuntimeWarning, match="clipping"):
        t = fit_temperature(torch.rand(100) + 0.1, torch.ones(100))
    assert t == pytest.approx(0.01)


# -- training -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    samples = disc_toy(160)
    config = RewardTrainConfig(epochs=12, batch_size=16, lr=3e-3, channels=SMALL, patience=None, progress=False,
                               seed=0, tensorboard_dir=str(tmp_path_factory.mktemp("tb")))
    out = tmp_path_factory.mktemp("ckpt") / "reward_net.pt"
    return samples, train_reward_network(samples, N_CLASSES, config, out_path=out, iteration=1), config


def test_training_learns_to_detect_errors(trained) -> None:
    samples, result, _ = trained
    assert result.n_train == 144 and result.n_val == 16
    assert len(result.train_losses) == len(result.val_losses) == 12
    assert result.val_losses[result.best_epoch] == min(result.val_losses)
    assert result.val_losses[-1] < 0.5 * result.val_losses[0]
    # ~4 % of the pixels are wrong: the constant "all correct" predictor scores 95.9 %. Measured: the net
    # reaches 99.6 %, i.e. it classifies ~90 % of the would-be errors right; require 75 %.
    assert 0.9 < result.val_majority_accuracy < 0.99
    assert result.val_accuracy > result.val_majority_accuracy + 0.75 * (1 - result.val_majority_accuracy)
    # temperature scaling does not hurt the (foreground) calibration it was fitted for
    assert result.val_ece_after <= result.val_ece_before + 1e-6
    assert result.val_ece_after < 0.05
    assert result.net.temperature.item() == pytest.approx(result.temperature)
    assert not result.net.training


def test_validation_auc_is_recorded_and_high_for_a_trained_network(trained) -> None:
    _, result, _ = trained
    assert result.val_auc > 0.95 and result.summary()["val_auc"] == result.val_auc


def test_error_detection_auc_ranks_wrong_pixels_below_right_ones() -> None:
    errors = np.array([1, 1, 0, 0, 0], bool)
    assert error_detection_auc(np.array([-3.0, -2.0, 1.0, 2.0, 3.0]), errors) == 1.0  # every error below
    assert error_detection_auc(np.array([3.0, 2.0, -1.0, -2.0, -3.0]), errors) == 0.0  # every error above
    assert error_detection_auc(np.zeros(5), errors) == 0.5  # a constant: ties count half
    assert error_detection_auc(np.array([-1.0, 2.5, 1.0, 2.0, 3.0]), errors) == pytest.approx(4 / 6)
    assert np.isnan(error_detection_auc(np.zeros(3), np.zeros(3, bool)))  # no error to find


def test_gate_passes_a_well_ranking_network_whose_probabilities_never_cross_one_half_only_with_min_auc() -> None:
    net = RewardNet(N_CLASSES, channels=SMALL)
    # 2% wrong pixels; the network never predicts "wrong" (accuracy = the constant's) but ranks them well
    ranks_well = RewardTrainResult(net=net, temperature=1.0, n_train=900, n_val=100, val_accuracy=0.98,
                                   val_majority_accuracy=0.98, val_auc=0.97)
    assert ranks_well.val_error_reduction == 0.0
    assert not ranks_well.informative(64, 0.2)
    assert ranks_well.informative(64, 0.2, min_auc=0.9)
    assert not ranks_well.informative(2000, 0.2, min_auc=0.9)  # too few samples either way
    constant = RewardTrainResult(net=net, temperature=1.0, n_train=900, n_val=100, val_accuracy=0.98,
                                 val_majority_accuracy=0.98, val_auc=0.5)
    assert not constant.informative(64, 0.2, min_auc=0.9)
    thresholded = RewardTrainResult(net=net, temperature=1.0, n_train=900, n_val=100, val_accuracy=0.99,
                                    val_majority_accuracy=0.98, val_auc=0.6)
    assert thresholded.informative(64, 0.2) and thresholded.informative(64, 0.2, min_auc=0.9)
    with pytest.raises(ValueError, match="min_auc"):
        RewardTrainConfig(min_auc=0.3)


def test_trained_reward_is_low_on_the_errors(trained) -> None:
    samples, result, _ = trained
    # fresh images the network never saw
    fresh = disc_toy(16, seed=99)
    images = torch.from_numpy(np.stack([s[0] for s in fresh]))
    preds = torch.from_numpy(np.stack([s[1] for s in fresh]))
    errors = np.stack([s[2] for s in fresh]) < 0.5
    with torch.no_grad():
        reward = result.net.reward_map(images, preds).numpy()
    assert reward[errors].mean() < 0.3 < 0.9 < reward[~errors].mean()


@pytest.mark.filterwarnings("ignore:fit_temperature")  # 2 validation images: T is ill-determined
def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    samples = disc_toy(20, size=16, seed=1)
    config = RewardTrainConfig(epochs=2, batch_size=8, channels=SMALL, progress=False, seed=3)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = train_reward_network(samples, N_CLASSES, config)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_reward_network(samples, N_CLASSES, config)
    assert a.val_losses == b.val_losses and a.temperature == b.temperature


def test_augmented_training_moves_image_segmentation_and_target_together(monkeypatch) -> None:
    # a network that only sees augmented batches still learns where the toy predictions are wrong, and every batch
    # it sees keeps target == (pred == the shifted ground truth): the shift never misaligns the three
    samples = disc_toy(160, seed=4)
    seen = []
    import reward.training as training
    shift = training.random_shift

    def spy(images, maps, fills, gen, max_shift):
        moved_images, moved = shift(images, maps, fills, gen, max_shift)
        seen.append((maps[0].clone(), maps[1].clone(), moved[0], moved[1]))
        return moved_images, moved

    monkeypatch.setattr(training, "random_shift", spy)
    config = RewardTrainConfig(epochs=12, batch_size=16, lr=3e-3, channels=SMALL, patience=None, progress=False,
                               seed=0, augment=True)
    result = train_reward_network(samples, N_CLASSES, config)
    assert result.val_auc > 0.9
    assert any(not torch.equal(before, after) for before, _, after, _ in seen)  # batches were shifted
    inner = (slice(2, -2), slice(2, -2))  # 32 px: shifts of at most round(0.06 * 32) = 2 px
    for preds, targets, moved_preds, moved_targets in seen[:5]:
        for b in range(len(preds)):  # the offset that moved the prediction moved the target too
            offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                       if torch.equal(torch.roll(preds[b], (dy, dx), (0, 1))[inner], moved_preds[b][inner])]
            assert any(torch.equal(torch.roll(targets[b], o, (0, 1))[inner], moved_targets[b][inner]) for o in offsets)
    # uncovered pixels: a black image, a background prediction, a right target
    images, (preds, targets) = shift(torch.ones(8, 1, 32, 32), [torch.full((8, 32, 32), 2), torch.zeros(8, 32, 32)],
                                     [0, 1.0], torch.Generator().manual_seed(0), 0.06)
    uncovered = preds == 0
    assert uncovered.any() and torch.equal(images[:, 0] == 0, uncovered) and torch.equal(targets == 1, uncovered)
    assert not RewardTrainConfig().augment  # off by default: the paper trains on the samples as built


def test_training_accepts_builder_style_samples() -> None:
    # (image (1, H, W) tensor, pred int64 tensor, target float tensor) as RewardSampleDataset yields them
    samples = [(torch.from_numpy(i[None]), torch.from_numpy(p), torch.from_numpy(t))
               for i, p, t in disc_toy(10, size=16)]
    result = train_reward_network(samples, N_CLASSES, RewardTrainConfig(epochs=1, channels=SMALL, progress=False))
    assert result.n_val == 1 and np.isfinite(result.val_losses[0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        train_reward_network(samples[:1], N_CLASSES, RewardTrainConfig(progress=False))


def test_tensorboard_scalars_written(trained) -> None:
    _, _, config = trained
    from pathlib import Path

    assert list(Path(config.tensorboard_dir).glob("events.out.tfevents.*"))


# -- checkpoints ------------------------------------------------------------------------------------
def test_checkpoint_round_trip_keeps_reward_maps_and_temperature(trained, tmp_path) -> None:
    samples, result, _ = trained
    assert result.temperature != 1.0
    loaded, meta = load_reward_net(result.out_path)
    assert meta["iteration"] == 1 and meta["temperature"] == pytest.approx(result.temperature)
    assert loaded.temperature.item() == pytest.approx(result.temperature)
    images = np.stack([s[0] for s in samples[:4]])
    preds = np.stack([s[1] for s in samples[:4]])
    np.testing.assert_array_equal(LearnedReward(loaded)(images, preds), LearnedReward(result.net)(images, preds))

    net = RewardNet(N_CLASSES, seg_encoding="label", channels=SMALL, norm="group", temperature=2.5)
    path = save_reward_net(net, tmp_path / "sub" / "r.pt", note="x")
    again, meta = load_reward_net(path)
    assert again.seg_encoding == "label" and again.temperature.item() == 2.5 and meta == {"note": "x"}
    assert not list(path.parent.glob("*.tmp"))


def test_load_refuses_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_reward_net(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a reward-network checkpoint"):
        load_reward_net(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_reward_net(tmp_path / "broken.pt")


# -- adapter for the env ---------------------------------------------------------------------------
def test_learned_reward_implements_the_env_protocol() -> None:
    torch.manual_seed(0)
    model = LearnedReward(RewardNet(N_CLASSES, channels=SMALL).train(), batch_size=2)
    assert isinstance(model, RewardModel)
    assert not model.net.training
    images = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    actions = np.random.default_rng(1).integers(0, N_CLASSES, (5, 16, 16)).astype(np.uint8)
    out = model(images, actions)
    assert out.shape == (5, 16, 16) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # batching in chunks of 2 gives the same maps as one pass
    np.testing.assert_allclose(out, LearnedReward(model.net, batch_size=64)(images, actions), atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        model(images, actions[:, :8])
    # copies and pickles (SubprocVecEnv.env_method pickles its arguments)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(clone(images, actions), out)


def test_learned_reward_is_swapped_into_vec_envs_by_env_method() -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rl4seg_env.env import SegEnv
    from rl4seg_env.wrappers import LearnedRewardWrapper

    torch.manual_seed(0)
    net = RewardNet(N_CLASSES, channels=SMALL)
    vec = DummyVecEnv([lambda: LearnedRewardWrapper(SegEnv(RingDataset(4, seed=2, size=16, class_names=("background", "lv", "myo"))), LearnedReward(net))])
    vec.reset()
    actions = np.zeros((1, 16, 16), np.uint8)
    _, before, _, _ = vec.step(actions)
    confident = copy.deepcopy(net)
    confident.unet.head.bias.data.fill_(20.0)  # "everything is correct"
    vec.env_method("set_reward_model", LearnedReward(confident))
    vec.reset()
    _, after, _, infos = vec.step(actions)
    assert after[0] == pytest.approx(1.0, abs=1e-3) and after[0] != pytest.approx(before[0])
    assert infos[0]["reward_map"].shape == (16, 16)


def test_the_validation_split_keeps_the_samples_of_one_image_together():
    from reward.training import split_indices

    groups = [f"img{i // 10}" for i in range(100)]  # ten samples per image, as the builder writes them
    val, train = split_indices(100, 0.1, seed=0, groups=groups)
    assert len(val) == 10 and len(train) == 90 and not set(val) & set(train)
    assert len({groups[i] for i in val} & {groups[i] for i in train}) == 0
    # per sample, the same images land on both sides
    val_s, train_s = split_indices(100, 0.1, seed=0)
    assert {groups[i] for i in val_s} & {groups[i] for i in train_s}
    # one image only: nothing to group, the split falls back to samples
    val_1, train_1 = split_indices(5, 0.2, seed=0, groups=["a"] * 5)
    assert len(val_1) == 1 and len(train_1) == 4


def test_a_step_budget_bounds_training_whatever_the_set_size(monkeypatch) -> None:
    steps = []
    original = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1), original(self, *a, **k))[1])
    for n in (12, 60):  # 11 and 54 training samples: 2 and 7 batches per pass
        steps.clear()
        config = RewardTrainConfig(epochs=3, batch_size=8, max_steps=10, patience=None, channels=SMALL,
                                   progress=False, split_by="sample")
        result = train_reward_network(disc_toy(n, size=16, seed=2), N_CLASSES, config)
        # 3 rounds of ceil(10 / 3) = 4 steps, each followed by a validation
        assert len(steps) == 12 and len(result.val_losses) == 3
    steps.clear()
    config = RewardTrainConfig(epochs=3, batch_size=8, channels=SMALL, progress=False, patience=None, split_by="sample")
    train_reward_network(disc_toy(60, size=16, seed=2), N_CLASSES, config)
    assert len(steps) == 3 * 7  # no budget: full passes
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        RewardTrainConfig(max_steps=0)


def test_a_warm_start_begins_from_the_given_network_and_leaves_it_unchanged() -> None:
    samples = disc_toy(20, size=16, seed=4)
    config = RewardTrainConfig(epochs=1, batch_size=8, channels=SMALL, progress=False, seed=5, calibrate=False)
    start = train_reward_network(samples, N_CLASSES, config).net
    before = {k: v.clone() for k, v in start.state_dict().items()}
    # a learning rate too small to move a weight: the result is the starting network
    still = train_reward_network(samples, N_CLASSES, RewardTrainConfig(**{**config.__dict__, "lr": 1e-30}),
                                 init=start).net
    fresh = train_reward_network(samples, N_CLASSES, RewardTrainConfig(**{**config.__dict__, "lr": 1e-30})).net
    weights = [k for k in before if "weight" in k]
    assert all(torch.allclose(still.state_dict()[k], before[k]) for k in weights)
    assert not all(torch.allclose(fresh.state_dict()[k], before[k]) for k in weights)
    assert all(torch.equal(start.state_dict()[k], before[k]) for k in before)  # the start is not modified
    with pytest.raises(ValueError, match="same architecture"):
        train_reward_network(samples, N_CLASSES, RewardTrainConfig(**{**config.__dict__, "channels": (4, 8)}),
                             init=start)


def test_the_stable_split_keeps_each_image_on_its_side_as_the_set_grows() -> None:
    from reward.training import stable_split_indices

    first = [f"img{k // 4}" for k in range(400)]  # 100 images, 4 samples each
    grown = first + [f"img{k // 4}" for k in range(400, 1200)]  # 200 more images
    val_a, train_a = stable_split_indices(first, 0.1, split_seed=3)
    val_b, train_b = stable_split_indices(grown, 0.1, split_seed=3, seed=9)
    held_a = {first[i] for i in val_a}
    held_b = {grown[i] for i in val_b}
    assert held_a == {g for g in held_b if int(g[3:]) < 100}  # the first images kept their side
    assert not held_b & {grown[i] for i in train_b} and len(val_b) + len(train_b) == len(grown)
    assert 0.05 < len(held_b) / 300 < 0.15  # about val_fraction of the images
    assert held_a != {first[i] for i in stable_split_indices(first, 0.1, split_seed=4)[0]}  # the seed matters
    val_1, _ = stable_split_indices(["a", "a", "b"], 0.0, split_seed=0)  # at least one group held out
    assert len(val_1) in (1, 2)
    val_2, train_2 = stable_split_indices(["a"] * 5, 0.2, split_seed=0)  # one group: split by sample
    assert len(val_2) == 1 and len(train_2) == 4
