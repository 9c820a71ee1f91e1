"""Reward fusion (reward.fusion): the shape auto-encoder's agreement reward and pixelwise min / mean fusion."""
import numpy as np
import pytest
import torch

from reward.correctors import train_shape_autoencoder
from reward.fusion import FusedReward, ShapeAgreementReward
from test_correctors import toy_masks


def constant(value):
    return lambda images, actions: np.full(np.shape(actions), value, dtype=np.float32)


def test_fusion_takes_the_pixelwise_minimum_or_mean():
    images, actions = np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.int64)
    ramp = lambda im, a: np.broadcast_to(np.linspace(0, 1, 8, dtype=np.float32), a.shape).copy()
    out = FusedReward([constant(0.5), ramp])(images, actions)
    assert out.shape == (2, 8, 8) and out.dtype == np.float32
    assert np.allclose(out, np.minimum(0.5, np.linspace(0, 1, 8)))
    assert np.allclose(FusedReward([constant(0.2), constant(0.6)], how="mean")(images, actions), 0.4)


def test_fusion_refuses_bad_settings_and_mismatched_maps():
    with pytest.raises(ValueError, match="at least one"):
        FusedReward([])
    with pytest.raises(ValueError, match="how must be one of min, mean, got 'max'"):
        FusedReward([constant(1.0)], how="max")
    wrong = lambda images, actions: np.ones((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="different shapes"):
        FusedReward([constant(1.0), wrong])(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.int64))


@pytest.fixture(scope="module")
def shape_ae():
    torch.manual_seed(0)
    return train_shape_autoencoder(toy_masks(96, seed=0), epochs=20, batch_size=16, lr=1e-3, progress=False,
                                   seed=0, latent_channels=8)


def test_shape_agreement_is_low_where_a_mask_is_not_anatomy(shape_ae):
    clean = toy_masks(8, seed=1)
    broken = clean.copy()
    broken[:, 2:6, 2:6] = 2  # a myocardium blob in the background corner: no anatomy has one there
    images = np.zeros(clean.shape, np.float32)
    reward = ShapeAgreementReward(shape_ae, batch_size=3)  # several forward passes
    r_clean, r_broken = reward(images, clean), reward(images, broken)
    assert r_clean.shape == clean.shape and r_clean.dtype == np.float32
    assert 0 <= r_broken.min() and r_clean.max() <= 1
    blob = np.zeros(clean.shape, bool)
    blob[:, 2:6, 2:6] = True
    # the blob's pixels: the auto-encoder redraws them as background
    assert r_broken[blob].mean() < 0.5 < r_clean[blob].mean()
    # a clean mask is kept almost everywhere: those pixels get exactly 1, leaving them to the other reward of a fusion
    assert (r_clean == 1).mean() > 0.9


def test_shape_agreement_refuses_mismatched_shapes(shape_ae):
    with pytest.raises(ValueError, match=r"same shape \(B, H, W\)"):
        ShapeAgreementReward(shape_ae)(np.zeros((2, 32, 32), np.float32), np.zeros((2, 16, 16), np.int64))
