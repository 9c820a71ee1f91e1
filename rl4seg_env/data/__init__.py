"""Data sources: the procedural synthetic echo generator (default), NIfTI folders and CAMUS.

``make_dataset(name, **kwargs)`` builds one by config name; every dataset is a
:class:`~rl4seg_env.data.base.SegDataset` yielding :class:`~rl4seg_env.data.base.Sample`.
"""
from __future__ import annotations

from typing import Any

from rl4seg_env.data.base import CAMUS_CLASS_NAMES, DataError, Sample, SegDataset

DATASETS = ("synthetic", "nifti", "camus")


def make_dataset(name: str, **kwargs: Any) -> SegDataset:
    """Build a dataset by name.

    - ``"synthetic"`` -> :class:`rl4seg_env.data.synthetic.SyntheticEcho` (kwargs: preset, split, n_images,
      image_size, seed, with_labels, keep_atrium)
    - ``"nifti"`` -> :class:`rl4seg_env.data.nifti.NiftiFolderDataset` (kwargs: manifest, split, ...)
    - ``"camus"`` -> :class:`rl4seg_env.data.camus.CamusDataset` (kwargs: root, split, ...)
    """
    if name == "synthetic":
        from rl4seg_env.data.synthetic import SyntheticEcho

        return SyntheticEcho(**kwargs)
    if name == "nifti":
        from rl4seg_env.data.nifti import NiftiFolderDataset

        return NiftiFolderDataset(**kwargs)
    if name == "camus":
        from rl4seg_env.data.camus import CamusDataset

        return CamusDataset(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


__all__ = ["CAMUS_CLASS_NAMES", "DATASETS", "DataError", "Sample", "SegDataset", "make_dataset"]
