"""Domain-adaptation baselines: AdaBN, TENT, pseudo-label self-training (pipeline/baselines.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.baselines import (AdaBNConfig, SelfTrainingConfig, SelfTrainingResult, TentConfig, adabn,
                              mean_prediction_entropy, norm_layers, select_pseudo_labels, self_training, tent)
from agents.networks import UNet
from rl4seg_env.data import make_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def target_images():
    ds = make_dataset("synthetic", preset="default_target", split="train", n_images=16, image_size=32,
                      with_labels=False)
    from rl4seg_env.data.base import load_images

    images, _ = load_images(ds)
    return images


def _actor(seed: int = 0, norm: str = "batch") -> UNet:
    torch.manual_seed(seed)
    return UNet(1, 3, channels=(8, 16), norm=norm).eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_adabn_sets_bn_statistics_to_the_target_statistics_and_leaves_the_input_alone(target_images):
    actor = _actor()
    before = _state(actor)
    adapted = adabn(actor, target_images, AdaBNConfig(batch_size=8))
    # input model untouched (weights and running statistics)
    for k, v in actor.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the first BatchNorm follows the first (bias-free) convolution: its running mean/var must be the
    # per-channel mean/variance of that convolution's output over all target pixels
    conv, bn = adapted.encoders[0][0], adapted.encoders[0][1]
    with torch.no_grad():
        feats = conv(torch.from_numpy(target_images)[:, None])
    mean = feats.mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    per_batch_var = torch.stack([feats[i:i + 8].var(dim=(0, 2, 3)) for i in (0, 8)])  # unbiased, as BN
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(bn.running_mean, before["encoders.0.1.running_mean"])  # it moved
    # weights are not changed, the original momentum is restored, the copy is in eval mode
    assert torch.equal(adapted.encoders[0][0].weight, actor.encoders[0][0].weight)
    assert bn.momentum == actor.encoders[0][1].momentum and not adapted.training


def test_adabn_accepts_an_unlabelled_dataset_and_warns_without_batchnorm(target_images):
    ds = make_dataset("synthetic", preset="default_target", split="train", n_images=16, image_size=32,
                      with_labels=False)
    a = adabn(_actor(), ds, AdaBNConfig(batch_size=8))
    b = adabn(_actor(), target_images, AdaBNConfig(batch_size=8))
    assert torch.equal(a.encoders[0][1].running_mean, b.encoders[0][1].running_mean)
    with pytest.warns(UserWarning, match="no BatchNorm"):
        adabn(_actor(norm="group"), target_images)


def test_tent_lowers_target_entropy_and_changes_only_norm_affine_parameters(target_images):
    actor = _actor()
    before = _state(actor)
    adapted = tent(actor, target_images, TentConfig(epochs=3, lr=1e-2, batch_size=8))
    h0, h1 = mean_prediction_entropy(actor, target_images), mean_prediction_entropy(adapted, target_images)
    assert h1 < 0.97 * h0, (h0, h1)
    for k, v in actor.state_dict().items():
        assert torch.equal(v, before[k]), f"input model changed: {k}"
    norm_params = {id(p) for m in norm_layers(adapted) for p in (m.weight, m.bias)}
    changed_norm = 0
    for (name, p), (_, p0) in zip(adapted.named_parameters(), actor.named_parameters()):
        if id(p) in norm_params:
            changed_norm += not torch.equal(p, p0)
        else:
            assert torch.equal(p, p0), f"TENT changed a non-normalisation parameter: {name}"
    assert changed_norm == len(norm_params)
    assert all(p.requires_grad for p in adapted.parameters()) and not adapted.training


def test_tent_refuses_a_network_without_norm_layers(target_images):
    with pytest.raises(ValueError, match="no normalisation layer"):
        tent(_actor(norm=None), target_images)


def test_self_training_with_a_filter_that_rejects_everything_changes_nothing(target_images):
    actor = _actor()
    before = _state(actor)
    result = SelfTrainingResult()
    adapted = self_training(actor, target_images, SelfTrainingConfig(iterations=2, epochs=1, batch_size=8),
                            validity_fn=lambda maps: np.zeros(len(maps), bool), result=result)
    assert result.accepted == [0, 0] and result.n_images == len(target_images)
    for k, v in adapted.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_self_training_trains_only_on_accepted_pseudo_labels(target_images, monkeypatch):
    from agents.networks import predict

    actor = _actor()
    preds0 = predict(actor, target_images, 8)
    keep = np.arange(len(target_images)) < 4
    assert preds0[keep].reshape(4, -1).any(1).all()  # non-empty, so only the filter decides
    seen = []
    real_ce = F.cross_entropy

    def recording_ce(logits, labels, *args, **kwargs):
        seen.extend(labels.cpu().numpy())
        return real_ce(logits, labels, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", recording_ce)
    result = SelfTrainingResult()
    adapted = self_training(actor, target_images,
                            SelfTrainingConfig(iterations=1, epochs=2, batch_size=2, augment=False, lr=1e-2),
                            validity_fn=lambda maps: keep[:len(maps)].copy(), result=result)
    assert result.accepted == [4]
    assert len(seen) == 4 * 2  # the 4 accepted maps, each epoch
    for label in seen:  # every training target is one of the accepted predictions of the source model
        assert any(np.array_equal(label, p) for p in preds0[keep])
    assert not torch.equal(adapted.head.weight, actor.head.weight)


def test_select_pseudo_labels_applies_rl4seg_correction_dice_test():
    from reward.correctors import Corrector

    good = np.zeros((32, 32), np.uint8)
    good[8:24, 10:22] = 2
    good[10:22, 12:20] = 1
    noisy = good.copy()
    noisy[::2, ::2] = 0  # holes everywhere: far from its morphological correction
    preds = np.stack([good, noisy, np.zeros_like(good)])
    always = lambda maps: np.ones(len(maps), bool)  # noqa: E731
    assert select_pseudo_labels(preds, always).tolist() == [True, True, False]  # empty maps never pass
    assert select_pseudo_labels(preds, always, Corrector(None, 3), 0.95).tolist() == [True, False, False]
