"""Data sources: the procedural synthetic echo generator (default), NIfTI folders and CAMUS.

``make_dataset(name, **kwargs)`` builds one by name; :class:`DatasetConfig` + :func:`dataset_from_config`
build one split from a config section (what ``configs/*.yaml`` hold under ``data.source`` /
``data.target``). Every dataset is a :class:`~rl4seg_env.data.base.SegDataset` yielding
:class:`~rl4seg_env.data.base.Sample`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl4seg_env.data.base import CAMUS_CLASS_NAMES, DataError, Sample, SegDataset, SubsetDataset
from rl4seg_env.data.camus import CamusDataset
from rl4seg_env.data.nifti import NiftiFolderDataset
from rl4seg_env.data.synthetic import SyntheticEcho, available_presets

DATASETS = ("synthetic", "nifti", "camus")


def make_dataset(name: str, **kwargs: Any) -> SegDataset:
    """Build a dataset by name.

    - ``"synthetic"`` -> :class:`rl4seg_env.data.synthetic.SyntheticEcho` (kwargs: preset, split, n_images,
      image_size, seed, with_labels, keep_atrium)
    - ``"nifti"`` -> :class:`rl4seg_env.data.nifti.NiftiFolderDataset` (kwargs: manifest, split, ...)
    - ``"camus"`` -> :class:`rl4seg_env.data.camus.CamusDataset` (kwargs: root, split, ...)
    """
    if name == "synthetic":
        return SyntheticEcho(**kwargs)
    if name == "nifti":
        return NiftiFolderDataset(**kwargs)
    if name == "camus":
        return CamusDataset(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


@dataclass
class DatasetConfig:
    """One domain (source or target) as a config section; :func:`dataset_from_config` builds its splits."""

    #: "synthetic", "camus" or "nifti"
    dataset: str = "synthetic"
    #: synthetic preset name ("source", "target_*", "default_target"; see ``available_presets()``)
    preset: str = "source"
    #: CAMUS root folder (dataset: camus)
    root: str | None = None
    #: NIfTI manifest CSV (dataset: nifti)
    manifest: str | None = None
    #: images per split (None = the generator's default / the whole split; real data: the first n)
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    #: synthetic generator seed (domain realisation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"DatasetConfig.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset == "synthetic" and self.preset not in available_presets():
            raise ValueError(f"DatasetConfig.preset must be one of {', '.join(available_presets())}, "
                             f"got {self.preset!r}")
        if self.dataset == "camus" and not self.root:
            raise ValueError("DatasetConfig.root must point to the CAMUS folder (dataset: camus)")
        if self.dataset == "nifti" and not self.manifest:
            raise ValueError("DatasetConfig.manifest must point to a manifest.csv (dataset: nifti)")
        for name in ("n_train", "n_val", "n_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"DatasetConfig.{name} must be >= 1 or null, got {value}")

    def n_images(self, split: str) -> int | None:
        """The configured size of ``split`` ("train", "val" or "test")."""
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


def dataset_from_config(config: DatasetConfig, split: str, image_size: int | tuple[int, int],
                        with_labels: bool, keep_atrium: bool = False, n_images: int | None = None,
                        on_error: str = "raise") -> SegDataset:
    """One split of the domain ``config`` at the working ``image_size``.

    :param n_images: number of images (default: the config's size for this split; None = all).
    :param with_labels: False builds a dataset that never reads label files (target training data).
    :param on_error: file-backed datasets: ``"raise"`` on the first bad file, or ``"skip"`` bad files (listed
        in the dataset's ``skipped``).
    """
    n = config.n_images(split) if n_images is None else n_images
    common = dict(image_size=image_size, keep_atrium=keep_atrium, with_labels=with_labels)
    if config.dataset == "synthetic":
        return SyntheticEcho(preset=config.preset, split=split, n_images=n, seed=config.seed, **common)
    if config.dataset == "camus":
        ds = CamusDataset(root=config.root, split=split, on_error=on_error, **common)
    else:
        ds = NiftiFolderDataset(manifest=config.manifest, split=split, on_error=on_error, **common)
    return ds if n is None or n >= len(ds) else SubsetDataset(ds, range(n))


__all__ = ["CAMUS_CLASS_NAMES", "DATASETS", "DataError", "DatasetConfig", "Sample", "SegDataset", "dataset_from_config",
           "make_dataset"]
