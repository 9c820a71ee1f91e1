"""Supervised pretraining: learns, keeps the best checkpoint, stops early, resumes, refuses bad data.

Uses an in-test toy dataset (a disc = class 1 inside a ring = class 2, on noise) so that these tests
do not depend on the synthetic echo generator.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.networks import UNet, load_unet
from conftest import RingDataset
from agents.pretrain import (
    PretrainConfig,
    SegTorchDataset,
    augment_batch,
    evaluate_segmentation,
    last_checkpoint_path,
    pretrain_segmentation,
)

SIZE = 32
CHANNELS = (8, 16)


def small_config(tmp_path, **kwargs) -> PretrainConfig:
    defaults = dict(epochs=6, batch_size=8, lr=1e-2, channels=CHANNELS, device="cpu", progress=False,
                    patience=None, tensorboard_log=str(tmp_path / "tb"))
    defaults.update(kwargs)
    return PretrainConfig(**defaults)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread (the CPU is shared); module scope so that it also covers the module-scoped training run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run shared by several tests (the expensive part)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    train, val = RingDataset(32, seed=0), RingDataset(16, seed=1)
    torch.manual_seed(0)
    untrained = evaluate_segmentation(UNet(1, 3, CHANNELS), val, device="cpu")
    config = small_config(tmp, loss="ce+dice", epochs=8, batch_size=4, lr=5e-3)
    result = pretrain_segmentation(train, val, tmp / "actor.pt", config)
    return tmp, train, val, untrained, config, result


def test_training_raises_validation_dice(trained):
    _, _, _, untrained, config, result = trained
    # measured over seeds 0-4: untrained 0.07-0.14; best after 8 epochs 0.967-0.989
    assert untrained["dice_mean"] < 0.5
    assert result.best_val_dice > 0.9
    assert len(result.history) == config.epochs
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    first = result.history[0]
    assert {"train_loss", "val_dice_mean", "val_dice_disc", "val_dice_ring", "seconds"} <= set(first)
    assert result.best_val_dice == max(h["val_dice_mean"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_dice_mean"] == result.best_val_dice


def test_best_checkpoint_reproduces_reported_dice(trained):
    tmp, train, val, _, _, result = trained
    model, meta = load_unet(str(tmp / "actor.pt"))
    assert meta["class_names"] == list(train.class_names)
    assert meta["image_size"] == [SIZE, SIZE]
    assert meta["epoch"] == result.best_epoch
    assert meta["val_dice"] == pytest.approx(result.best_val_dice)
    scores = evaluate_segmentation(model, val, batch_size=5, device="cpu")
    assert scores["dice_mean"] == pytest.approx(result.best_val_dice, abs=1e-9)
    # the returned model carries the best weights too
    assert evaluate_segmentation(result.model, val)["dice_mean"] == pytest.approx(result.best_val_dice, abs=1e-9)


def test_tensorboard_scalars_written(trained):
    tmp, _, _, _, config, _ = trained
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((tmp / "tb").glob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    acc = EventAccumulator(str(tmp / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"pretrain/train_loss", "pretrain/val_dice_mean", "pretrain/val_dice_ring"} <= set(tags)
    assert len(acc.Scalars("pretrain/val_dice_mean")) == config.epochs


def test_early_stopping_stops_before_epochs(tmp_path):
    train, val = RingDataset(8, seed=0), RingDataset(4, seed=1)
    # lr = 1e-9: the weights barely move, so the validation Dice cannot improve after epoch 1
    config = small_config(tmp_path, epochs=20, lr=1e-9, patience=2, min_delta=1e-3, augment=False,
                          tensorboard_log=None)
    result = pretrain_segmentation(train, val, tmp_path / "actor.pt", config)
    assert result.stopped_early
    assert result.best_epoch == 1
    assert len(result.history) == 1 + config.patience < config.epochs


def test_resume_continues_from_last_epoch(tmp_path):
    train, val = RingDataset(16, seed=0), RingDataset(8, seed=1)
    out = tmp_path / "actor.pt"
    first = pretrain_segmentation(train, val, out, small_config(tmp_path, epochs=2))
    assert last_checkpoint_path(out).exists() and last_checkpoint_path(out).name == "actor.last.pt"
    resumed = pretrain_segmentation(train, val, out, small_config(tmp_path, epochs=4), resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history  # earlier epochs kept, not rerun

    # an unbroken 4-epoch run with the same seed reaches the same weights (batches are seeded per epoch)
    straight = pretrain_segmentation(train, val, tmp_path / "straight.pt", small_config(tmp_path, epochs=4))
    last = torch.load(last_checkpoint_path(out), weights_only=True)["state_dict"]
    last_straight = torch.load(last_checkpoint_path(tmp_path / "straight.pt"), weights_only=True)["state_dict"]
    for key in last:
        torch.testing.assert_close(last[key], last_straight[key], rtol=1e-4, atol=1e-5)
    assert straight.history[-1]["val_dice_mean"] == pytest.approx(resumed.history[-1]["val_dice_mean"], abs=1e-6)


def test_resume_refuses_other_architecture(tmp_path):
    train, val = RingDataset(8, seed=0), RingDataset(4, seed=1)
    out = tmp_path / "actor.pt"
    pretrain_segmentation(train, val, out, small_config(tmp_path, epochs=1, tensorboard_log=None))
    with pytest.raises(ValueError, match="cannot resume"):
        pretrain_segmentation(train, val, out, small_config(tmp_path, epochs=2, tensorboard_log=None),
                              model=UNet(1, 3, (4, 8)), resume=True)


def test_unlabelled_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="with_labels=False"):
        pretrain_segmentation(RingDataset(8, with_labels=False), RingDataset(4), tmp_path / "a.pt", small_config(tmp_path))
    with pytest.raises(ValueError, match="with_labels=False"):
        pretrain_segmentation(RingDataset(8), RingDataset(4, with_labels=False), tmp_path / "a.pt", small_config(tmp_path))
    with pytest.raises(ValueError, match="no labels"):
        SegTorchDataset(RingDataset(4, with_labels=False))
    assert not (tmp_path / "a.pt").exists()


def test_class_count_mismatch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outputs 4 classes .* has 3"):
        pretrain_segmentation(RingDataset(8), RingDataset(4), tmp_path / "a.pt", small_config(tmp_path),
                              model=UNet(1, 4, CHANNELS))
    with pytest.raises(ValueError, match="outputs 4 classes"):
        evaluate_segmentation(UNet(1, 4, CHANNELS), RingDataset(4))
    other = RingDataset(4, class_names=("background", "lv", "myo", "la"))
    with pytest.raises(ValueError, match="class names differ"):
        pretrain_segmentation(RingDataset(8), other, tmp_path / "a.pt", small_config(tmp_path))


def test_torch_dataset_adapter_shapes_and_dtypes():
    ds = SegTorchDataset(RingDataset(3))
    image, label = ds[1]
    assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float32
    assert label.shape == (SIZE, SIZE) and label.dtype == torch.int64
    assert len(ds) == 3
    np.testing.assert_array_equal(label.numpy(), RingDataset(3)[1].label)


def test_augmentation_moves_image_and_label_together():
    ds = SegTorchDataset(RingDataset(6))
    images = torch.stack([ds[i][0] for i in range(6)])
    labels = torch.stack([ds[i][1] for i in range(6)])
    gen = torch.Generator().manual_seed(0)
    aug_images, aug_labels = augment_batch(images, labels, gen, gamma_range=(1.0, 1.0), contrast_range=(1.0, 1.0),
                                           max_shift=0.1)
    assert aug_images.shape == images.shape and aug_labels.shape == labels.shape
    assert aug_labels.dtype == torch.int64 and 0 <= float(aug_images.min()) and float(aug_images.max()) <= 1
    shifted = 0
    for b in range(6):  # each image is shifted by an integer offset; its label by the same one
        found = False
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                ref = torch.roll(labels[b], (dy, dx), dims=(0, 1))
                inner = (slice(3, SIZE - 3), slice(3, SIZE - 3))
                if torch.equal(ref[inner], aug_labels[b][inner]):
                    ref_img = torch.roll(images[b, 0], (dy, dx), dims=(0, 1))
                    torch.testing.assert_close(ref_img[inner], aug_images[b, 0][inner])
                    found = True
                    shifted += (dy, dx) != (0, 0)
                    break
            if found:
                break
        assert found, f"image {b}: label not a shifted copy of the original"
    assert shifted >= 3
    # intensity augmentation changes the image but not the label
    gen = torch.Generator().manual_seed(1)
    aug_images, aug_labels = augment_batch(images, labels, gen, max_shift=0.0)
    assert torch.equal(aug_labels, labels) and not torch.allclose(aug_images, images)
