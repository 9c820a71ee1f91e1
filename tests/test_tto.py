"""Test-time optimisation (agents/test_time.py): which images are optimised, what is kept, what changes."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from agents.networks import UNet
from agents.test_time import TTOConfig, tto_predict
from functools import partial

from reward.anatomy import is_valid
from rl4seg_env.data.synthetic import SyntheticEcho

ECHO = partial(is_valid, criteria="echo")
GENERIC = partial(is_valid, criteria="generic")


@pytest.fixture(scope="module")
def data():
    ds = SyntheticEcho(preset="source", split="test", n_images=2, image_size=32)
    return np.stack([ds[i].image for i in range(2)]), np.stack([ds[i].label for i in range(2)])


def _accuracy_reward(labels):
    """Ground-truth per-pixel reward: 1 where the action equals the label of the image at that batch position."""
    def reward(images, actions):
        images, actions = np.asarray(images), np.asarray(actions)
        ref = np.stack([labels[_which(img, images_ref)] for img in images])
        return (actions == ref).astype(np.float32)

    images_ref: list = []
    reward.images_ref = images_ref
    return reward


def _which(img, images_ref):
    return next(i for i, ref in enumerate(images_ref) if np.array_equal(ref, img))


def _fitted_actor(images, labels, steps=150):
    """A small U-Net fitted on the images' labels (its argmax is then anatomically valid)."""
    torch.manual_seed(0)
    actor = UNet(1, 3, channels=(8, 16), norm="batch")
    opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
    x, y = torch.as_tensor(images)[:, None], torch.as_tensor(labels, dtype=torch.long)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(actor(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return actor.eval()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        TTOConfig(steps=0)
    with pytest.raises(ValueError, match="worst_quantile"):
        TTOConfig(worst_quantile=1.5)


def test_tto_raises_the_reward_of_an_invalid_prediction(data):
    images, labels = data
    reward = _accuracy_reward(labels)
    reward.images_ref.extend(images)
    torch.manual_seed(0)
    actor = UNet(1, 3, channels=(8, 16), norm="batch").eval()  # random: noise predictions, invalid
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    # unbounded change (min_dice_to_start=0): the optimiser alone, from noise
    result = tto_predict(actor, images[:1], reward, GENERIC,
                         TTOConfig(steps=10, lr=2e-3, kl_coef=0.0, min_dice_to_start=0.0))
    start = np.asarray(actor(torch.as_tensor(images[:1])[:, None]).argmax(1))
    acc_before = (start == labels[:1]).mean()
    acc_after = (result.preds == labels[:1]).mean()
    assert result.optimised.tolist() == [True] and result.steps.tolist() == [10]
    assert acc_after > acc_before + 0.3
    # the default bound keeps what TTO returns close to the start: redrawing noise into a heart is refused
    bounded = tto_predict(actor, images[:1], reward, GENERIC, TTOConfig(steps=10, lr=2e-3, kl_coef=0.0))
    from agents.test_time import _foreground_dice

    assert _foreground_dice(bounded.preds[0], start[0]) >= 0.85
    assert bounded.worst_after[0] >= bounded.worst_before[0]  # never a lower reward than the start
    # the caller's actor is not modified: every image starts from the same weights
    assert all(torch.equal(before[k], v) for k, v in actor.state_dict().items())


def test_valid_predictions_are_kept_and_invalid_ones_replaced_by_the_first_valid(data):
    images, labels = data
    actor = _fitted_actor(images, labels)
    reward = _accuracy_reward(labels)
    reward.images_ref.extend(images)
    assert all(is_valid(np.asarray(actor(torch.as_tensor(images)[:, None]).argmax(1))[i]) for i in range(2))
    broken = labels[1].copy()
    rows, cols = np.nonzero(labels[1] == 2)
    broken[rows[rows == rows.min()], cols[rows == rows.min()]] = 0  # cut the myocardium's apical row
    broken[labels[1] == 2] = np.where(np.arange((labels[1] == 2).sum()) % 7 == 0, 0, 2)  # and holes in it
    assert not is_valid(broken)
    preds = np.stack([labels[0], broken])
    result = tto_predict(actor, images, reward, ECHO, TTOConfig(steps=5, lr=1e-4), preds=preds)
    assert result.optimised.tolist() == [False, True]
    assert result.valid_before.tolist() == [True, False] and result.valid_after.tolist() == [True, True]
    np.testing.assert_array_equal(result.preds[0], labels[0])  # valid: untouched
    assert result.steps.tolist() == [0, 1]  # stopped at the first valid prediction
    assert is_valid(result.preds[1]) and (result.preds[1] == labels[1]).mean() > 0.9
    summary = result.summary()
    assert summary["tto_optimised"] == 1 and summary["tto_made_valid"] == 1


def test_tto_is_deterministic_for_a_seed(data):
    images, labels = data
    reward = _accuracy_reward(labels)
    reward.images_ref.extend(images)
    torch.manual_seed(1)
    actor = UNet(1, 3, channels=(8, 16), norm="batch").eval()
    runs = [tto_predict(actor, images, reward, GENERIC, TTOConfig(steps=3, lr=2e-3), seed=3)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].preds, runs[1].preds)


def test_an_images_result_does_not_depend_on_the_other_images(data):
    # each image draws from its own generator: reordering (or sharing out) the test set changes nothing
    images, labels = data
    reward = _accuracy_reward(labels)
    reward.images_ref.extend(images)
    torch.manual_seed(1)
    actor = UNet(1, 3, channels=(8, 16), norm="batch").eval()
    config = TTOConfig(steps=3, lr=2e-3, min_dice_to_start=0.0)
    both = tto_predict(actor, images, reward, GENERIC, config, seed=3)
    alone = tto_predict(actor, images[1:], reward, GENERIC, config, seed=3)
    assert both.steps[1] > 0
    np.testing.assert_array_equal(both.preds[1], alone.preds[0])
    assert both.steps[1] == alone.steps[0]


def test_tto_checks_its_inputs(data):
    images, labels = data
    actor = UNet(1, 3, channels=(4, 8), norm="batch").eval()
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        tto_predict(actor, images[0], lambda i, a: np.ones(a.shape, np.float32), ECHO)
    with pytest.raises(ValueError, match="spacings"):
        tto_predict(actor, images, lambda i, a: np.ones(a.shape, np.float32), ECHO, spacings=[(1.0, 1.0)])


class _FixedLogits(torch.nn.Module):
    """An 'actor' whose logits are a learnable map (the image is ignored): its argmax is ``label_map``."""

    out_channels = 3

    def __init__(self, label_map):
        super().__init__()
        onehot = torch.nn.functional.one_hot(torch.as_tensor(label_map, dtype=torch.long), 3).permute(2, 0, 1)
        self.logits = torch.nn.Parameter(4.0 * onehot.float() - 2.0)

    def forward(self, x):
        return self.logits[None].expand(len(x), -1, -1, -1)


def _holed(label):
    """``label`` with three pixels inside the LV set to background: invalid (lv_holes)."""
    broken = label.copy()
    rows, cols = np.nonzero(ndimage.binary_erosion(label == 1, iterations=2))
    broken[rows[:3], cols[:3]] = 0
    assert not is_valid(broken) and is_valid(label)
    return broken


def test_a_repaired_candidate_the_reward_prefers_is_kept_without_any_step(data):
    from reward.correctors import morphological_correction

    images, labels = data
    broken = _holed(labels[0])
    reward = _accuracy_reward(labels)
    reward.images_ref.extend(images)
    repair = partial(morphological_correction, n_classes=3)
    result = tto_predict(_FixedLogits(broken), images[:1], reward, ECHO, TTOConfig(steps=5), repair=repair)
    assert result.optimised.tolist() == [True] and result.steps.tolist() == [0]
    np.testing.assert_array_equal(result.preds[0], labels[0])  # the holes filled: what the reward prefers
    assert result.valid_after.tolist() == [True] and result.worst_after[0] >= result.worst_before[0]


def test_a_valid_candidate_the_reward_does_not_prefer_neither_is_kept_nor_stops_the_optimisation(data):
    from reward.correctors import morphological_correction

    images, labels = data
    broken = _holed(labels[0])
    # a reward that agrees with the holed map: the repaired (valid) map scores lower than the start
    reward = _accuracy_reward(broken[None])
    reward.images_ref.append(images[0])
    repair = partial(morphological_correction, n_classes=3)
    result = tto_predict(_FixedLogits(broken), images[:1], reward, ECHO, TTOConfig(steps=4), repair=repair)
    np.testing.assert_array_equal(result.preds[0], broken)  # ranked by reward: the start stays
    assert result.steps.tolist() == [4]  # validity stops the optimisation only once the prediction kept is valid
    assert result.valid_after.tolist() == [False]
