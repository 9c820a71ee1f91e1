"""Inference with a trained actor: label maps and reward-network uncertainty maps for new images.

``Segmenter`` loads an actor checkpoint (``actor.pt`` from :func:`agents.networks.save_unet`, or a
``ppo.zip`` saved by :class:`agents.ppo.PixelPPO`) and optionally a reward network (``reward_net.pt``,
temperature included); :func:`export_predictions` writes, per image, the label map and the uncertainty
map (``1 - reward``) as NIfTI at the input's original size and spacing, plus a PNG overlay.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from agents.evaluation import predict
from rl4seg_env.data.base import SegDataset
from rl4seg_env.io import atomic_write_text


class Segmenter:
    """An actor (and optional reward network) ready for prediction.

    :param actor_path: ``actor.pt`` (U-Net checkpoint) or ``ppo.zip`` (PixelPPO model).
    :param reward_path: optional ``reward_net.pt``; enables uncertainty maps.
    :param device: torch device (default ``"cpu"``).
    :param batch_size: images per forward pass.
    :param test_time: a :class:`agents.test_time.TTOConfig`: optimise each image whose prediction fails the
        anatomical criteria against the reward network (needs ``reward_path``); None (default) predicts the
        plain argmax.
    """

    def __init__(self, actor_path: str | Path, reward_path: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32, test_time=None) -> None:
        actor_path = Path(actor_path)
        if not actor_path.is_file():
            raise FileNotFoundError(f"actor checkpoint not found: {actor_path}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        if actor_path.suffix == ".zip":
            from agents.ppo import PixelPPO

            self.actor = PixelPPO.load(str(actor_path), device=self.device).policy.actor
        else:
            from agents.networks import load_unet

            self.actor, _ = load_unet(str(actor_path), map_location=self.device)
        self.actor.eval()
        self.reward_model = None
        if reward_path is not None:
            from reward.network import LearnedReward, load_reward_net

            net, _ = load_reward_net(reward_path, map_location=self.device)
            self.reward_model = LearnedReward(net, device=self.device)
        if test_time is not None and self.reward_model is None:
            raise ValueError("test-time optimisation needs a reward network (reward_path)")
        self.test_time = test_time

    @property
    def n_classes(self) -> int:
        return int(self.actor.out_channels)

    def __call__(self, images: np.ndarray, spacings=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Images (N, H, W) float32 [0, 1] -> (label maps (N, H, W) uint8, uncertainty (N, H, W) float32 or None).

        ``spacings`` (per-image pixel sizes in mm) are used by the anatomical criteria of test-time optimisation.
        """
        if self.test_time is not None:
            from agents.test_time import tto_predict

            preds = tto_predict(self.actor, images, self.reward_model, self.test_time, spacings=spacings,
                                device=self.device, batch_size=self.batch_size).preds
        else:
            preds = predict(self.actor, images, self.batch_size, self.device)
        if self.reward_model is None:
            return preds, None
        return preds, 1.0 - self.reward_model(images, preds)


def manifest_for_files(paths: list[Path], out_dir: Path) -> Path:
    """Write an unlabelled manifest listing NIfTI ``paths`` (so they load through the validated loader)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "image", "label", "split"])
    for p in paths:
        name = p.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        writer.writerow([name, str(p.resolve()), "", "test"])
    return atomic_write_text(out_dir / "inputs_manifest.csv", buf.getvalue())


def export_predictions(segmenter: Segmenter, dataset: SegDataset, out_dir: str | Path, png: bool = True,
                       progress: bool = True) -> list[Path]:
    """Predict every image of ``dataset``; write ``<id>_seg.nii.gz``, ``<id>_uncertainty.nii.gz`` and ``<id>.png``.

    Outputs are resized back to each input's original shape (labels nearest-neighbour) and carry its
    original spacing when the dataset knows them (NIfTI / CAMUS); otherwise the working size and spacing.
    """
    from rl4seg_env.data.base import resize_image, resize_label
    from rl4seg_env.data.nifti import write_nifti_2d

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="predicting", unit="img")
    written = []
    for i in indices:
        sample = dataset[i]
        pred, unc = segmenter(sample.image[None], spacings=[sample.spacing])
        pred, unc = pred[0], None if unc is None else unc[0]
        shape = tuple(dataset.original_shape(i)) if hasattr(dataset, "original_shape") else pred.shape
        spacing = tuple(dataset.original_spacing(i)) if hasattr(dataset, "original_spacing") else sample.spacing
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample.id)
        written.append(write_nifti_2d(out_dir / f"{safe}_seg.nii.gz", resize_label(pred, shape), spacing))
        if unc is not None:
            written.append(write_nifti_2d(out_dir / f"{safe}_uncertainty.nii.gz",
                                          resize_image(unc, shape).astype(np.float32), spacing))
        if png:
            from agents.report import plot_predictions

            written.append(plot_predictions(sample.image[None], pred[None], None if unc is None else 1 - unc[None],
                                            out_dir / f"{safe}.png", title=sample.id))
    return written
