"""Softmax, MC-dropout and TTA uncertainty maps, their comparison, and scripts/benchmark_uncertainty.py."""
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn


from agents.networks import UNet
from reward.uncertainty_methods import (compare_uncertainty, mc_dropout_uncertainty,
                                        probabilities_to_uncertainty, softmax_uncertainty, tta_uncertainty,
                                        uncertainty_methods_benchmark)




@pytest.fixture()
def actor():
    torch.manual_seed(0)
    unet = UNet(1, 3, (4, 8)).eval()
    with torch.no_grad():  # confident logits, so that the methods have something to disagree about
        unet.head.weight.mul_(30.0)
    return unet


@pytest.fixture()
def images():
    return np.random.default_rng(0).random((3, 16, 24), dtype=np.float32)


class PixelwiseActor(nn.Module):
    """Logits depend on each pixel's own intensity only (so the actor commutes with any translation)."""

    def __init__(self, sharpness: float = 1.0, column_bias: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(sharpness * torch.tensor([-4.0, 0.0, 4.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(sharpness * torch.tensor([1.0, 0.0, -3.0]))
        self.column_bias = column_bias  # > 0 breaks translation equivariance

    def forward(self, x):
        logits = self.conv(x)
        cols = torch.linspace(-1, 1, x.shape[-1], device=x.device)
        return logits + self.column_bias * torch.stack([cols, -cols, 0 * cols])[None, :, None, :]


METHODS = {
    "softmax entropy": lambda a, x: softmax_uncertainty(a, x),
    "softmax max_prob": lambda a, x: softmax_uncertainty(a, x, kind="max_prob"),
    "mc entropy": lambda a, x: mc_dropout_uncertainty(a, x, n_samples=3),
    "mc disagreement": lambda a, x: mc_dropout_uncertainty(a, x, n_samples=3, kind="disagreement"),
    "tta entropy": lambda a, x: tta_uncertainty(a, x, n_augmentations=3),
    "tta disagreement": lambda a, x: tta_uncertainty(a, x, n_augmentations=3, kind="disagreement"),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_maps_have_the_image_shape_and_lie_in_unit_interval(name, actor, images):
    maps = METHODS[name](actor, images)
    assert maps.shape == images.shape and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    # deterministic: the same call gives the same maps (seeded sampling)
    np.testing.assert_array_equal(maps, METHODS[name](actor, images))
    # batched: an image's map does not depend on the other images of the batch (MC-dropout masks are
    # drawn per batch, so only its distribution is batch-independent)
    if not name.startswith("mc"):
        np.testing.assert_allclose(maps[1:2], METHODS[name](actor, images[1:2]), atol=1e-5)


def test_entropy_is_normalised_by_the_number_of_classes():
    uniform = torch.full((1, 4, 2, 2), 0.25)
    one_hot = torch.zeros(1, 4, 2, 2)
    one_hot[:, 2] = 1
    assert torch.allclose(probabilities_to_uncertainty(uniform), torch.ones(1, 2, 2))
    assert torch.allclose(probabilities_to_uncertainty(one_hot), torch.zeros(1, 2, 2))
    assert torch.allclose(probabilities_to_uncertainty(uniform, "max_prob"), torch.full((1, 2, 2), 0.75))
    with pytest.raises(ValueError, match="needs the per-sample votes"):
        probabilities_to_uncertainty(uniform, "disagreement")


def test_mc_dropout_leaves_the_actor_unchanged(actor, images):
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    plain = softmax_uncertainty(actor, images)
    rng_state = torch.get_rng_state()
    for mode in (False, True):  # eval stays eval, train stays train
        actor.train(mode)
        mc_dropout_uncertainty(actor, images, n_samples=2, p=0.3)
        assert actor.training is mode
    actor.eval()
    assert all(torch.equal(before[k], v) for k, v in actor.state_dict().items())
    assert all(not m._forward_hooks for m in actor.modules())  # hooks removed
    np.testing.assert_array_equal(softmax_uncertainty(actor, images), plain)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is untouched


def test_mc_dropout_samples_differ_and_p_zero_is_the_softmax(actor, images):
    a = mc_dropout_uncertainty(actor, images, n_samples=4, p=0.3, seed=0)
    b = mc_dropout_uncertainty(actor, images, n_samples=4, p=0.3, seed=1)
    assert np.abs(a - b).max() > 1e-3  # dropout does act
    assert mc_dropout_uncertainty(actor, images, n_samples=4, p=0.3, kind="disagreement").max() > 0
    np.testing.assert_allclose(mc_dropout_uncertainty(actor, images, n_samples=2, p=0.0),
                               softmax_uncertainty(actor, images), atol=1e-6)


def test_mc_dropout_needs_modules_for_a_foreign_actor(images):
    with pytest.raises(ValueError, match="pass the modules"):
        mc_dropout_uncertainty(PixelwiseActor(), images)
    maps = mc_dropout_uncertainty(PixelwiseActor(), images, modules=[PixelwiseActor().conv], n_samples=2)
    assert maps.shape == images.shape


def test_tta_inverts_its_shifts(images):
    shifts_only = dict(n_augmentations=6, contrast_range=(1.0, 1.0), max_shift=3, max_rotation=0.0)
    equivariant = PixelwiseActor(sharpness=3.0)
    # every shifted prediction, moved back, agrees with the unshifted one: no disagreement anywhere, and the
    # averaged softmax is the plain softmax
    assert tta_uncertainty(equivariant, images, kind="disagreement", **shifts_only).max() == 0.0
    np.testing.assert_allclose(tta_uncertainty(equivariant, images, **shifts_only),
                               softmax_uncertainty(equivariant, images), atol=1e-5)
    # the shifts are real: an actor that is not translation-equivariant disagrees with itself
    biased = PixelwiseActor(sharpness=3.0, column_bias=20.0)
    assert tta_uncertainty(biased, images, kind="disagreement", **shifts_only).max() > 0.1


def test_tta_inverts_its_rotations():
    image = np.full((1, 24, 24), 0.4, np.float32)  # constant image: the pixelwise actor's output is constant
    rotations_only = dict(n_augmentations=5, contrast_range=(1.0, 1.0), max_shift=0, max_rotation=20.0)
    actor = PixelwiseActor(sharpness=3.0)
    np.testing.assert_allclose(tta_uncertainty(actor, image, **rotations_only)[:, 4:-4, 4:-4],
                               softmax_uncertainty(actor, image)[:, 4:-4, 4:-4], atol=1e-4)


def test_tta_contrast_changes_the_uncertainty(images):
    actor = PixelwiseActor(sharpness=3.0)
    contrast_only = dict(n_augmentations=4, contrast_range=(0.5, 2.0), max_shift=0, max_rotation=0.0)
    assert np.abs(tta_uncertainty(actor, images, **contrast_only) - softmax_uncertainty(actor, images)).max() > 1e-2


def toy_errors(n=20, size=16, seed=0):
    """Predictions with an error rate growing across images, and their ground truth."""
    rng = np.random.default_rng(seed)
    gts = np.zeros((n, size, size), np.uint8)
    gts[:, 4:12, 4:12] = 1
    preds = gts.copy()
    flip = rng.random(gts.shape) < np.linspace(0.02, 0.5, n)[:, None, None]
    preds[flip] = 1 - preds[flip]
    return preds, gts, rng


def test_compare_uncertainty_ranks_an_informative_uncertainty_above_a_random_one():
    preds, gts, rng = toy_errors()
    errors = preds != gts
    informative = np.where(errors, 0.8, 0.1).astype(np.float32)
    rows = compare_uncertainty({"informative": informative, "random": rng.random(preds.shape).astype(np.float32)},
                               preds, gts, n_classes=2)
    good, rand = rows
    assert [r["method"] for r in rows] == ["informative", "random"]
    assert good["ece"] < rand["ece"] and good["ace"] < rand["ace"]
    assert good["mi"] > rand["mi"] + 0.1
    assert good["correlation"] > 0.9 and good["correlation"] > rand["correlation"]
    assert good["n_pixels"] == rand["n_pixels"] == int(((preds > 0) | (gts > 0)).sum())
    assert good["n_images"] == 20


def test_compare_uncertainty_refuses_mismatched_maps():
    preds, gts, _ = toy_errors(n=3)
    with pytest.raises(ValueError, match="method 'bad' have shape"):
        compare_uncertainty({"bad": np.zeros((3, 8, 8))}, preds, gts, n_classes=2)
    with pytest.raises(ValueError, match=r"uncertainty must lie in \[0, 1\]"):
        compare_uncertainty({"neg": np.full(preds.shape, 1.5)}, preds, gts, n_classes=2)


@pytest.mark.filterwarnings("ignore:reward_dice_correlation")
def test_benchmark_has_one_row_per_method(actor, images):
    from agents.networks import predict

    gts = predict(actor, images)
    gts[:, 4:12, 6:18] = (gts[:, 4:12, 6:18] + 1) % 3  # errors in a box, correct elsewhere
    oracle_reward = lambda im, pr: (pr == gts[: len(pr)]).astype(np.float32)  # noqa: E731
    rows, accs = uncertainty_methods_benchmark(actor, images, gts, oracle_reward, mc_samples=2, tta_augmentations=2)
    assert [r["method"] for r in rows] == ["reward network", "softmax entropy", "MC dropout", "TTA"]
    assert set(accs) == {r["method"] for r in rows}
    assert rows[0]["ece"] == pytest.approx(0.0) and rows[0]["mi"] > 0  # a perfect reward is perfectly calibrated
    assert all(r["seconds"] >= 0 for r in rows)


def test_source_recalibration_needs_a_learned_reward(actor, images):
    gts = np.zeros(images.shape, np.uint8)
    with pytest.raises(ValueError, match="LearnedReward"):
        uncertainty_methods_benchmark(actor, images, gts, lambda im, pr: np.ones(pr.shape, np.float32),
                                      calibration_images=images, calibration_labels=gts)


@pytest.mark.filterwarnings("ignore:reward_dice_correlation")
def test_benchmark_script_on_a_run_directory(tmp_path, capsys):
    from pipeline.commands import benchmark_uncertainty

    from pipeline.config import load_config, save_config
    from agents.networks import save_unet
    from reward.network import RewardNet, save_reward_net

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "iter_001"
    ckpt.mkdir(parents=True)
    save_config(load_config("configs/quick.yaml", ["data.image_size=32", "evaluation.n_test=3"]), run / "config.yaml")
    torch.manual_seed(0)
    save_unet(UNet(1, 3, (4, 8)).eval(), str(ckpt / "actor.pt"))
    save_reward_net(RewardNet(3, channels=(4, 8)).eval(), ckpt / "reward_net.pt")
    assert benchmark_uncertainty.main([str(run), "--quick"]) == 2  # no state.json: no completed iteration
    assert "no state.json" in capsys.readouterr().err
    (run / "state.json").write_text(json.dumps({"completed_iterations": 1}))
    assert benchmark_uncertainty.main([str(run), "--quick"]) == 0
    out = run / "uncertainty_iter_001"
    with open(out / "uncertainty.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows][:4] == ["reward network", "softmax entropy", "MC dropout", "TTA"]
    # the reward network again, its temperature refitted on the labelled source validation split
    assert len(rows) == 5 and rows[4]["method"].startswith("reward network, T=") and "source images" in rows[4]["method"]
    assert all(r["n_images"] == "3" for r in rows)
    for slug in ("reward_network", "softmax_entropy", "mc_dropout", "tta", "reward_network_source_calibrated"):
        assert (out / f"reliability_{slug}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| MC dropout |" in (out / "uncertainty.md").read_text()
