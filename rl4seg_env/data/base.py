"""What every data source shares: the :class:`Sample` record, the :class:`SegDataset` interface,
intensity normalisation, resizing, input validation and the error type loaders raise.

Conventions (all loaders):

- ``image``: float32 array of shape (H, W), intensities normalised to [0, 1];
- ``label``: uint8 array of shape (H, W) with values in ``range(n_classes)``, or ``None`` when the
  dataset was built with ``with_labels=False`` (training on the target domain never loads labels);
- ``spacing``: (row, column) pixel size in millimetres *at the working size* (after resizing);
- rows run apex (probe, top) -> base (bottom) for echo data.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

#: CAMUS label convention. Index = label value.
CAMUS_CLASS_NAMES: tuple[str, ...] = ("background", "lv", "myo", "la")


class DataError(ValueError):
    """A data file or folder is unusable. The message names the file and what was wrong."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass
class Sample:
    """One image (and optionally its label map).

    :param image: float32 (H, W) in [0, 1].
    :param label: uint8 (H, W) label map, or ``None`` when labels are not loaded.
    :param spacing: (row, column) pixel size in mm at the working size.
    :param id: stable, unique identifier of the sample inside its dataset.
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float]
    id: str


class SegDataset(abc.ABC):
    """Indexable collection of :class:`Sample`.

    Subclasses set ``image_size`` (H, W), ``class_names`` (label value -> name, background first)
    and ``with_labels``, and implement ``__len__`` and ``__getitem__``.
    """

    image_size: tuple[int, int]
    class_names: tuple[str, ...]
    with_labels: bool

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, problem) of every input that was skipped because it was bad (``on_error='skip'``)."""
        return getattr(self, "_skipped", [])

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {n} samples")
        return index % n


def as_image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``64`` -> ``(64, 64)``; ``(H, W)`` unchanged. Refuses non-positive sizes."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (H, W), got {size!r}")
    return size  # type: ignore[return-value]


def normalize_intensity(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Percentile min-max normalisation to float32 [0, 1] (robust to a few saturated pixels)."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image to ``size`` (H, W), anti-aliased when shrinking."""
    from skimage.transform import resize

    if image.shape == tuple(size):
        return image.astype(np.float32, copy=False)
    return resize(image, size, order=1, preserve_range=True, anti_aliasing=True).astype(np.float32)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size`` (H, W); values are never mixed."""
    from skimage.transform import resize

    if label.shape == tuple(size):
        return label.astype(np.uint8, copy=False)
    out = resize(label, size, order=0, preserve_range=True, anti_aliasing=False)
    return np.rint(out).astype(np.uint8)


#: the smallest image side accepted: below it there is no heart to segment (and a 1 x 1 map would score Dice 1)
MIN_IMAGE_SIDE = 8


def check_image(image: np.ndarray, path: object, ndim: int = 2) -> np.ndarray:
    """Refuse wrong dimensionality, degenerate sizes (a side under :data:`MIN_IMAGE_SIDE` pixels) and NaN/Inf
    pixels, naming ``path``."""
    image = np.asarray(image)
    if image.ndim != ndim:
        raise DataError(path, f"expected a {ndim}D image, found {image.ndim}D with shape {image.shape}")
    if min(image.shape[-2:]) < MIN_IMAGE_SIDE:
        raise DataError(path, f"image of {image.shape[-2]} x {image.shape[-1]} pixels is too small to segment "
                              f"(at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE})")
    if not np.issubdtype(image.dtype, np.number):
        raise DataError(path, f"image has non-numeric dtype {image.dtype}")
    if not np.all(np.isfinite(image)):
        n_bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise DataError(path, f"image contains {n_bad} NaN/Inf pixel(s)")
    return image


def check_label(label: np.ndarray, path: object, n_classes: int, image_shape: tuple[int, ...]) -> np.ndarray:
    """Refuse a label map whose shape differs from its image or whose values are outside the class set."""
    label = np.asarray(label)
    if label.shape != tuple(image_shape):
        raise DataError(path, f"label shape {label.shape} does not match image shape {tuple(image_shape)}")
    if not np.all(np.isfinite(label)):
        raise DataError(path, "label contains NaN/Inf values")
    if np.any(label != np.round(label)):
        raise DataError(path, "label contains non-integer values")
    values = np.unique(label).astype(np.int64)
    bad = values[(values < 0) | (values >= n_classes)]
    if bad.size:
        raise DataError(
            path, f"label values {bad.tolist()} outside the declared set 0..{n_classes - 1}"
        )
    return label.astype(np.uint8)


class SubsetDataset(SegDataset):
    """A view on some samples of another dataset (e.g. the first ``n`` of a split), in the given order.

    :param dataset: the wrapped dataset.
    :param indices: indices into ``dataset``.
    """

    def __init__(self, dataset: SegDataset, indices: Sequence[int]) -> None:
        self.base = dataset
        self.indices = [int(i) for i in indices]
        n = len(dataset)
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"SubsetDataset: indices {bad[:5]} out of range for {n} samples")
        self.image_size = dataset.image_size
        self.class_names = dataset.class_names
        self.with_labels = dataset.with_labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.base[self.indices[self._check_index(index)]]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.base.skipped


def load_images(dataset: SegDataset, n: int | None = None, progress: bool = False, desc: str = "loading"
                ) -> tuple[np.ndarray, list[str]]:
    """First ``n`` images of ``dataset`` stacked as (N, H, W) float32, with their ids (labels untouched)."""
    n = len(dataset) if n is None else min(n, len(dataset))
    idx = range(n)
    if progress:
        idx = tqdm(idx, desc=desc, unit="img", leave=False)
    samples = [dataset[i] for i in idx]
    return np.stack([s.image for s in samples]).astype(np.float32), [s.id for s in samples]


def load_labels(dataset: SegDataset) -> np.ndarray:
    """Every label map of a labelled ``dataset`` stacked as (N, H, W), in dataset order (the order of
    :func:`load_images`; reads its labels: for evaluation and label-reading diagnostics, never for training)."""
    return np.stack([dataset[i].label for i in range(len(dataset))])


def labels_by_id(dataset: SegDataset) -> dict[str, np.ndarray]:
    """``{sample id: label map (H, W) uint8}`` of every sample of a labelled ``dataset`` (reads its labels: for
    ablations and label-reading diagnostics, never for training)."""
    return {sample.id: np.asarray(sample.label, dtype=np.uint8) for sample in (dataset[i] for i in range(len(dataset)))}
