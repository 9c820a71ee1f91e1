"""Shared pytest fixtures."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from rl4seg_env.data.base import Sample, SegDataset


# ---------------------------------------------------------------------------------------------------
# toy datasets shared by the tests (import them: ``from conftest import TinyDataset, RingDataset``)
# ---------------------------------------------------------------------------------------------------
class TinyDataset(SegDataset):
    """Deterministic random images; label = intensity bins, so a thresholding policy is perfect.

    :param spacing: (row, col) pixel size in mm of every sample.
    :param prefix: ids are ``f"{prefix}{index:03d}"`` (a ``/`` in it exercises file-name-safe ids).
    """

    def __init__(self, n: int = 6, size: tuple[int, int] = (16, 16), with_labels: bool = True,
                 spacing: tuple[float, float] = (0.5, 0.3), prefix: str = "tiny_") -> None:
        self.image_size = size
        self.class_names = ("background", "lv", "myo")
        self.with_labels = with_labels
        self.n, self.spacing, self.prefix = n, spacing, prefix

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        image = np.random.default_rng(index).random(self.image_size).astype(np.float32)
        label = np.minimum(image * 3, 2).astype(np.uint8) if self.with_labels else None
        return Sample(image, label, self.spacing, f"{self.prefix}{index:03d}")


class RingDataset(SegDataset):
    """A disc (class 1) inside a ring (class 2) at a random place on a noisy background, deterministic per
    (seed, index): the smallest echo-like segmentation task.

    :param intensities: mean intensity of background, disc and ring.
    :param noise: std of the Gaussian image noise.
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32, with_labels: bool = True,
                 class_names: tuple[str, ...] = ("background", "disc", "ring"),
                 intensities: tuple[float, float, float] = (0.15, 0.45, 0.85), noise: float = 0.12) -> None:
        self.n, self.seed, self.with_labels = n, seed, with_labels
        self.image_size = (size, size)
        self.class_names = class_names
        self.intensities, self.noise = intensities, noise

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        rng = np.random.default_rng((self.seed, index))
        h, w = self.image_size
        r_in = rng.uniform(0.12, 0.2) * h
        r_out = r_in + rng.uniform(0.08, 0.14) * h
        cy, cx = rng.uniform(r_out + 1, h - r_out - 1), rng.uniform(r_out + 1, w - r_out - 1)
        yy, xx = np.mgrid[:h, :w]
        dist = np.hypot(yy - cy, xx - cx)
        label = np.where(dist < r_in, 1, np.where(dist < r_out, 2, 0)).astype(np.uint8)
        image = np.choose(label, self.intensities) + rng.normal(0, self.noise, (h, w))
        image = np.clip(image, 0, 1).astype(np.float32)
        return Sample(image, label if self.with_labels else None, (1.0, 1.0), f"toy_{index}")


# ---------------------------------------------------------------------------------------------------
# CAMUS-layout fixture (data/camus.py, data/nifti.py)
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CamusLayout:
    """A small CAMUS tree written with nibabel directly (x-first arrays, non-square pixels).

    Every frame is ``rows x cols = 40 x 20`` stored as ``(x=20, y=40)``, with pixel size
    ``row_mm = 0.154`` (header zoom y) and ``col_mm = 0.308`` (header zoom x). The LV (1) sits near the
    top (apex) and left of centre, the myocardium (2) wraps it, the atrium (3) is at the bottom.
    """

    root: Path
    splits: dict[str, list[str]]
    shape: tuple[int, int] = (40, 20)
    row_mm: float = 0.154
    col_mm: float = 0.308

    def path(self, patient: str, view: str, phase: str, gt: bool = False) -> Path:
        suffix = "_gt" if gt else ""
        return self.root / "database_nifti" / patient / f"{patient}_{view}_{phase}{suffix}.nii.gz"

    def label(self, patient: str, view: str, phase: str) -> np.ndarray:
        """Expected (rows, cols) uint8 label of one frame, CAMUS values 0..3."""
        k = int(patient[-4:]) + (1 if view == "4CH" else 0) + (1 if phase == "ES" else 0)
        rows, cols = np.mgrid[: self.shape[0], : self.shape[1]]
        label = np.zeros(self.shape, np.uint8)
        label[(rows >= 2) & (rows < 16 + k) & (cols >= 2) & (cols < 12)] = 2
        label[(rows >= 4) & (rows < 14 + k) & (cols >= 4) & (cols < 10)] = 1
        label[(rows >= 30) & (rows < 38) & (cols >= 4) & (cols < 16)] = 3
        return label

    def image(self, patient: str, view: str, phase: str) -> np.ndarray:
        """Expected (rows, cols) float32 image: bright myocardium, a ramp so normalisation is non-trivial."""
        label = self.label(patient, view, phase)
        ramp = np.linspace(0.0, 20.0, self.shape[0] * self.shape[1], dtype=np.float32).reshape(self.shape)
        return (np.float32(40.0) + ramp + np.float32(150.0) * (label == 2)).astype(np.float32)

    def write_frame(self, path: Path, array_rc: np.ndarray, dtype=np.float32) -> None:
        """Write a (rows, cols) array as CAMUS does: x-first, zooms (col_mm, row_mm)."""
        import nibabel as nib

        data = np.ascontiguousarray(np.asarray(array_rc).T).astype(dtype)
        img = nib.Nifti1Image(data, np.diag([self.col_mm, self.row_mm, 1.0, 1.0]))
        img.header.set_zooms((self.col_mm, self.row_mm) + (1.0,) * (data.ndim - 2))
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))


def write_camus_layout(root: Path) -> CamusLayout:
    splits = {
        "train": ["patient0001", "patient0002"],
        "val": ["patient0003"],
        "test": ["patient0004"],
    }
    layout = CamusLayout(root=root, splits=splits)
    split_files = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt", "test": "subgroup_testing.txt"}
    (root / "database_split").mkdir(parents=True)
    for split, patients in splits.items():
        (root / "database_split" / split_files[split]).write_text("\n".join(patients) + "\n")
    for n, patient in enumerate(p for ps in splits.values() for p in ps):
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                layout.write_frame(layout.path(patient, view, phase), layout.image(patient, view, phase))
                layout.write_frame(layout.path(patient, view, phase, gt=True), layout.label(patient, view, phase),
                                   dtype=np.uint8)
            quality = "Poor" if (patient, view) == ("patient0002", "4CH") else ("Good" if n % 2 == 0 else "Medium")
            cfg = (f"ED: 1\nES: {10 + n}\nNbFrame: {10 + n}\nSex: {'F' if n % 2 else 'M'}\nAge: {50 + n}\n"
                   f"ImageQuality: {quality}\nEF: {55.5 + n}\nFrameRate: 50.0\n")
            (root / "database_nifti" / patient / f"Info_{view}.cfg").write_text(cfg)
    return layout


@pytest.fixture
def camus_layout(tmp_path: Path) -> CamusLayout:
    """A fresh 4-patient CAMUS tree (train: 0001, 0002; val: 0003; test: 0004) under ``tmp_path/camus``."""
    return write_camus_layout(tmp_path / "camus")


# ---------------------------------------------------------------------------------------------------
# one torch thread for every test
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tests use small networks, which run fastest on one thread; on a shared 2-core machine thread
    oversubscription made them up to ~5x slower. Restored after each test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
