"""Inference with a trained actor: label maps and reward-network uncertainty maps for new images.

``Segmenter`` loads an actor checkpoint (``actor.pt`` from :func:`agents.networks.save_unet`, or a
``ppo.zip`` saved by :class:`agents.ppo.PixelPPO`) and optionally a reward network (``reward_net.pt``,
temperature included); :func:`export_predictions` writes, per image, the label map and the uncertainty
map (``1 - reward``) as NIfTI at the input's original size and spacing, plus a PNG overlay.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.networks import load_unet, predict, resolve_device
from agents.ppo import PixelPPO
from agents.test_time import Repair, TTOConfig, tto_predict
from pipeline.report import plot_predictions
from reward.anatomy import Criterion, get_criteria, is_valid
from reward.correctors import ShapeAutoEncoder, morphological_correction
from reward.fusion import fuse_with_shape_prior
from reward.network import LearnedReward, load_reward_net
from rl4seg_env.data.base import SegDataset, resize_image, resize_label
from rl4seg_env.data.nifti import write_manifest, write_nifti_2d


def load_actor(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, int | None]:
    """The actor of an ``actor.pt`` (U-Net checkpoint) or a ``ppo.zip`` (PixelPPO model), and its training
    image size in pixels when the file records it (None otherwise)."""
    path = Path(path)
    if path.suffix == ".zip":
        policy = PixelPPO.load(str(path), device=device).policy
        return policy.actor, int(policy.observation_space.shape[0])
    actor, metadata = load_unet(str(path), map_location=device)
    size = metadata.get("image_size")
    return actor, (int(size[0] if isinstance(size, (list, tuple)) else size) if size else None)


def actor_image_size(path: str | Path) -> int | None:
    """The training image size an actor checkpoint records (None when it does not, or cannot be read)."""
    try:
        return load_actor(path)[1]
    except (FileNotFoundError, ValueError):
        return None


def tto_repair(enabled: bool, n_classes: int) -> Repair | None:
    """The label-free repair test-time optimisation ranks as extra candidates (``test_time.repair``): the
    morphological correction of :mod:`reward.correctors`, or None when disabled."""
    return functools.partial(morphological_correction, n_classes=n_classes) if enabled else None


class Segmenter:
    """An actor (and optional reward network) ready for prediction.

    :param actor_path: ``actor.pt`` (U-Net checkpoint) or ``ppo.zip`` (PixelPPO model).
    :param reward_path: optional ``reward_net.pt``; enables uncertainty maps.
    :param device: torch device (default ``"cpu"``).
    :param batch_size: images per forward pass.
    :param test_time: a :class:`agents.test_time.TTOConfig`: optimise each image whose prediction fails the
        anatomical criteria against the reward network (needs ``reward_path``); None (default) predicts the
        plain argmax.
    :ivar image_size: the actor's training image size when its checkpoint records it, else None.
    :param criteria: the anatomical criteria set (:mod:`reward.anatomy`) test-time optimisation checks.
    :param repair: with ``test_time``, also rank the morphologically corrected candidates (:func:`tto_repair`).
    :param shape_ae_path: with ``test_time``, optionally the run's ``shape_ae.pt``: the optimisation then uses the
        pixelwise minimum of the reward and the shape auto-encoder's agreement (``test_time.fusion: shape_ae``,
        :mod:`reward.fusion`); uncertainty maps stay the reward network's.
    """

    def __init__(self, actor_path: str | Path, reward_path: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32,
                 test_time: TTOConfig | None = None,
                 criteria: str | Sequence[Criterion] = "echo", repair: bool = True,
                 shape_ae_path: str | Path | None = None) -> None:
        actor_path = Path(actor_path)
        if not actor_path.is_file():
            raise FileNotFoundError(f"actor checkpoint not found: {actor_path}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.actor, self.image_size = load_actor(actor_path, self.device)
        self.actor.eval()
        self.reward_model = None
        if reward_path is not None:
            net, _ = load_reward_net(reward_path, map_location=self.device)
            self.reward_model = LearnedReward(net, device=self.device)
        if test_time is not None and self.reward_model is None:
            raise ValueError("test-time optimisation needs a reward network (reward_path)")
        self.test_time = test_time
        self.tto_reward = self.reward_model
        if shape_ae_path is not None:
            if test_time is None:
                raise ValueError("shape_ae_path fuses the reward of test-time optimisation; pass test_time too")
            ae = ShapeAutoEncoder.load(shape_ae_path, map_location=self.device)
            self.tto_reward = fuse_with_shape_prior(self.reward_model, ae, self.device)
        self.is_valid = functools.partial(is_valid, criteria=get_criteria(criteria))
        self.repair = tto_repair(repair, int(self.actor.out_channels))

    @property
    def n_classes(self) -> int:
        return int(self.actor.out_channels)

    def __call__(self, images: np.ndarray, spacings=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (N, H, W) float32 [0, 1] -> (label maps (N, H, W) uint8, uncertainty (N, H, W) float32 or None).

        ``spacings`` (per-image pixel sizes in mm) are used by the anatomical criteria of test-time optimisation.
        """
        if self.test_time is not None:
            preds = tto_predict(self.actor, images, self.tto_reward, self.is_valid, self.test_time, spacings=spacings,
                                device=self.device, batch_size=self.batch_size, repair=self.repair).preds
        else:
            preds = predict(self.actor, images, self.batch_size, self.device)
        if self.reward_model is None:
            return preds, None
        return preds, 1.0 - self.reward_model(images, preds)


def manifest_for_files(paths: list[Path], out_dir: Path) -> Path:
    """Write an unlabelled manifest listing NIfTI ``paths`` (so they load through the validated loader)."""
    rows = []
    for p in paths:
        name = p.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        rows.append({"id": name, "image": str(p.resolve()), "label": "", "split": "test"})
    return write_manifest(out_dir / "inputs_manifest.csv", rows)


def export_predictions(segmenter: Segmenter, dataset: SegDataset, out_dir: str | Path, png: bool = True,
                       progress: bool = True) -> list[Path]:
    """Predict every image of ``dataset``; write ``<id>_seg.nii.gz``, ``<id>_uncertainty.nii.gz`` and ``<id>.png``.

    Outputs are resized back to each input's original shape (labels nearest-neighbour) and written with its
    geometry when the dataset is file-backed (NIfTI / CAMUS: the input's affine, orientation, voxel order and
    header, so they overlay it in a viewer); otherwise at the working size and spacing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = range(len(dataset))
    if progress:
        indices = tqdm(indices, desc="predicting", unit="img")
    written = []
    for i in indices:
        sample = dataset[i]
        pred, unc = segmenter(sample.image[None], spacings=[sample.spacing])
        pred, unc = pred[0], None if unc is None else unc[0]
        # a file-backed input: its own geometry (affine, orientation, header); otherwise the working size
        geometry = dataset.geometry(i) if hasattr(dataset, "geometry") else None
        shape = geometry.shape if geometry is not None else pred.shape
        where = {"geometry": geometry} if geometry is not None else {"spacing": sample.spacing}
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample.id)
        written.append(write_nifti_2d(out_dir / f"{safe}_seg.nii.gz", resize_label(pred, shape), **where))
        if unc is not None:
            written.append(write_nifti_2d(out_dir / f"{safe}_uncertainty.nii.gz",
                                          resize_image(unc, shape).astype(np.float32), **where))
        if png:
            written.append(plot_predictions(sample.image[None], pred[None], None if unc is None else 1 - unc[None],
                                            out_dir / f"{safe}.png", title=sample.id))
    return written
