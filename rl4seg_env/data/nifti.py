"""2D NIfTI files: reading and writing single images, a folder dataset described by a CSV manifest, and
export of any :class:`~rl4seg_env.data.base.SegDataset` to such a folder.

Orientation: nibabel returns the stored voxel array, x-first ``(width, height)`` for CAMUS. Everything here
works in ``(rows, cols)`` in one orientation whatever the file's (:class:`NiftiGeometry`): for the usual
x-first file with a diagonal affine that is the stored array transposed, row 0 being the top of the image
(the apex / probe for echo data); a file stored flipped (e.g. "LAS") or with its axes swapped reads the
same. Pixel spacing comes from the header zooms and is returned as ``(row_mm, col_mm)``. A map written
with an input's geometry (:func:`write_nifti_2d`) gets that input's affine, orientation, voxel order and
header, so it overlays the input in ITK-SNAP or 3D Slicer.

Manifest format (``manifest.csv``)::

    id,image,label,split
    case001,images/case001.nii.gz,labels/case001.nii.gz,train
    case002,images/case002.nii.gz,,test

``label`` may be empty for unlabelled rows; paths are relative to the manifest's folder or absolute.
"""
from __future__ import annotations

import collections
import csv
import gzip
import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl4seg_env.data.base import (
    CAMUS_CLASS_NAMES,
    DataError,
    Sample,
    SegDataset,
    as_image_size,
    check_image,
    check_label,
    normalize_intensity,
    resize_image,
    resize_label,
)
from rl4seg_env.io import atomic_write_bytes, atomic_write_text

#: Columns a manifest must have (``label`` may hold empty cells but the column must exist).
MANIFEST_COLUMNS: tuple[str, ...] = ("id", "image", "label", "split")

_DEFAULT_CLASS_NAMES: tuple[str, ...] = ("background", "lv", "myo")
_ATRIUM = CAMUS_CLASS_NAMES.index("la")


# ---------------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NiftiGeometry:
    """Where the pixels of a 2D NIfTI image lie in the world, and how its stored voxel array maps to the
    in-memory ``(rows, cols)`` array: what a map written for this image needs to overlay it in a viewer.

    In-memory orientation (whatever the file's): of the two in-plane voxel axes, the one that runs along the
    lower world axis (R-L before A-P before S-I) gives the columns, increasing towards its positive world
    direction (R, or A); the other gives the rows, increasing towards A (or S). For the usual CAMUS-style file
    (x-first storage, diagonal affine, "RAS") this is the stored array transposed, row 0 being the probe.

    :ivar affine: the file's 4x4 voxel-to-world affine (what nibabel's ``img.affine`` returns).
    :ivar header: a copy of the file's NIfTI header (qform/sform codes, units, description, ...).
    :ivar stored_shape: the voxel array's shape on disk: ``(x, y)`` or ``(x, y, 1)``.
    :ivar row_axis: the stored axis (0 or 1) that gives the rows; the other gives the columns.
    :ivar flips: whether the rows / the columns run against their stored axis.
    """

    affine: np.ndarray
    header: Any
    stored_shape: tuple[int, ...]
    row_axis: int = 1
    flips: tuple[bool, bool] = (False, False)

    @classmethod
    def from_image(cls, img: Any, stored_shape: tuple[int, ...]) -> "NiftiGeometry":
        """The geometry of a loaded nibabel image whose voxel array has ``stored_shape``."""
        import nibabel as nib

        affine = np.asarray(img.affine, dtype=np.float64)
        row_axis, flips = 1, (False, False)
        try:
            ornt = nib.orientations.io_orientation(affine)
        except Exception:  # a singular or non-finite affine: keep the storage order
            ornt = np.full((3, 2), np.nan)
        world, sign = ornt[:2, 0], ornt[:2, 1]
        if np.all(np.isfinite(world)) and world[0] != world[1]:
            col_axis = int(np.argmin(world))
            row_axis = 1 - col_axis
            flips = (bool(sign[row_axis] < 0), bool(sign[col_axis] < 0))
        return cls(affine=affine, header=img.header.copy(), stored_shape=tuple(int(n) for n in stored_shape),
                   row_axis=row_axis, flips=flips)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the in-memory array."""
        return (self.stored_shape[self.row_axis], self.stored_shape[1 - self.row_axis])

    @property
    def orientation(self) -> str:
        """The file's axis codes, e.g. ``"RAS"`` or ``"LAS"`` (nibabel's ``aff2axcodes``; ``"?"`` if undefined)."""
        import nibabel as nib

        try:
            return "".join(c or "?" for c in nib.orientations.aff2axcodes(self.affine))
        except Exception:
            return "?"

    def to_rows_cols(self, stored: np.ndarray) -> np.ndarray:
        """Stored voxel array ``(x, y)`` (or ``(x, y, 1)``) -> in-memory ``(rows, cols)`` array (a view)."""
        data = stored.reshape(stored.shape[:2])
        data = data.T if self.row_axis == 1 else data
        if self.flips[0]:
            data = data[::-1, :]
        if self.flips[1]:
            data = data[:, ::-1]
        return data

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """In-memory ``(rows, cols)`` array -> the voxel array to store (``stored_shape``), exactly inverting
        :meth:`to_rows_cols`."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"array of shape {array.shape} does not match the image's (rows, cols) {self.shape}")
        if self.flips[0]:
            array = array[::-1, :]
        if self.flips[1]:
            array = array[:, ::-1]
        data = array.T if self.row_axis == 1 else array
        return np.ascontiguousarray(data).reshape(self.stored_shape)

    def spacing(self) -> tuple[float, float]:
        """(row_mm, col_mm) from the header zooms."""
        zooms = tuple(float(z) for z in self.header.get_zooms())
        return (zooms[self.row_axis], zooms[1 - self.row_axis])


@dataclass(frozen=True)
class NiftiImage2D:
    """A 2D NIfTI image read by :func:`load_nifti_2d`: float32 ``(rows, cols)`` pixels, ``(row_mm, col_mm)``
    spacing and the :class:`NiftiGeometry` that lets :func:`write_nifti_2d` write maps over it."""

    array: np.ndarray
    spacing: tuple[float, float]
    geometry: NiftiGeometry


def load_nifti_2d(path: str | Path) -> NiftiImage2D:
    """Read a 2D NIfTI image (``.nii`` or ``.nii.gz``) in the in-memory orientation of :class:`NiftiGeometry`
    (whatever the file's orientation), with its spacing and geometry.

    :param path: the file. A trailing singleton third dimension (``(x, y, 1)``) is accepted.
    :raises DataError: missing, unreadable, corrupt or truncated file; wrong number of dimensions;
        non-positive or non-finite pixel spacing. The message names the file.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
        # Reading the voxels is what detects a truncated or corrupt gzip stream.
        data = np.asarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:  # nibabel raises a zoo of types (ImageFileError, EOFError, zlib.error, ...)
        raise DataError(path, f"cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not (data.ndim == 2 or data.ndim == 3 and data.shape[2] == 1):
        raise DataError(path, f"expected a 2D image (x, y) or (x, y, 1), found {data.ndim}D with shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise DataError(path, f"expected real-valued pixels, found dtype {data.dtype}")
    if len(zooms) < 2 or not all(np.isfinite(z) and z > 0 for z in zooms[:2]):
        raise DataError(path, f"pixel spacing in the header must be positive and finite, found {zooms[:2]}")
    geometry = NiftiGeometry.from_image(img, data.shape)
    array = np.ascontiguousarray(geometry.to_rows_cols(data), dtype=np.float32)
    return NiftiImage2D(array=array, spacing=geometry.spacing(), geometry=geometry)


def read_nifti_2d(path: str | Path) -> tuple[np.ndarray, tuple[float, float]]:
    """``(array, spacing)`` of :func:`load_nifti_2d`: float32 ``(rows, cols)`` pixels and ``(row_mm, col_mm)``."""
    image = load_nifti_2d(path)
    return image.array, image.spacing


def _storage_dtype(array: np.ndarray, dtype: Any) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        # 64-bit integers are refused by nibabel by default (many tools cannot read them): narrow them.
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        raise ValueError(f"integer values in [{lo}, {hi}] do not fit in int32; pass dtype explicitly")
    return array.dtype


def write_nifti_2d(
    path: str | Path,
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    dtype: Any = None,
    geometry: NiftiGeometry | None = None,
) -> Path:
    """Write a ``(rows, cols)`` array as a 2D NIfTI file, atomically (temporary file, then rename).

    :param path: destination; ``.nii.gz`` is gzip-compressed, ``.nii`` is not. Parent folders are created.
    :param array: (rows, cols) image or map in the in-memory orientation of :class:`NiftiGeometry`.
    :param spacing: ``(row_mm, col_mm)`` pixel size in mm, for a new image (no ``geometry``): stored x-first
        (transposed, as CAMUS stores its files) with the diagonal affine ``diag(col_mm, row_mm, 1)`` ("RAS",
        origin 0; qform and sform code "scanner").
    :param dtype: on-disk data type (e.g. ``np.uint8`` for labels). ``None`` (default) keeps the array's
        dtype, except booleans (stored as uint8) and 64-bit integers (narrowed to the smallest of
        uint8/int16/int32 that holds the values).
    :param geometry: write a map *over an existing image* (e.g. a prediction for an input read with
        :func:`load_nifti_2d`): the file gets that image's affine, orientation, voxel order, shape and
        header (its data type and intensity scaling set for ``array``); ``spacing`` is then not needed.
    :return: ``path`` as a :class:`~pathlib.Path`.
    """
    import nibabel as nib

    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2D (rows, cols) array, got shape {array.shape}")
    store = _storage_dtype(array, dtype)
    if geometry is not None:
        if array.shape != geometry.shape:
            raise ValueError(f"{path}: array of shape {array.shape} does not match the (rows, cols) "
                             f"{geometry.shape} of the image whose geometry it is written with")
        header = geometry.header.copy()
        header.set_data_dtype(store)
        img = nib.Nifti1Image(geometry.to_stored(array).astype(store, copy=False), geometry.affine, header)
        img.header.set_slope_inter(1.0, 0.0)  # the values are the map's own (labels stay integers)
        img.header["cal_min"], img.header["cal_max"] = 0, 0
    else:
        if spacing is None:
            raise ValueError(f"{path}: give the pixel spacing (row_mm, col_mm) or the geometry of an image")
        row_mm, col_mm = (float(s) for s in spacing)
        if not (np.isfinite(row_mm) and np.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
            raise ValueError(f"{path}: spacing must be positive and finite (row_mm, col_mm), got {tuple(spacing)}")
        data = np.ascontiguousarray(array.T).astype(store, copy=False)
        affine = np.diag([col_mm, row_mm, 1.0, 1.0])
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code="scanner")
        img.set_sform(affine, code="scanner")
        img.header.set_data_dtype(store)
        img.header.set_zooms((col_mm, row_mm))
        img.header.set_xyzt_units("mm")
    payload = img.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: identical inputs give identical files
    return atomic_write_bytes(path, payload)


# ---------------------------------------------------------------------------------------------------
# Shared loader: a list of (id, image file, label file) records -> validated, resized Samples
# ---------------------------------------------------------------------------------------------------
class FileSegDataset(SegDataset):
    """Base of the file-backed loaders (:class:`NiftiFolderDataset`, ``CamusDataset``).

    Subclasses build ``self._records`` (one dict per sample with keys ``id``, ``image`` (Path), ``label``
    (Path or None) and ``info`` (dict of metadata)) and then call :meth:`_finish_init`, which checks the
    files exist and, with ``on_error="skip"``, reads every sample once, drops the bad ones and reports them.

    Each sample is: read (x-first -> rows x cols), checked (dimensions, NaN/Inf, label shape and values),
    atrium-folded if asked, intensity-normalised to [0, 1] at the original size, then resized to
    ``image_size`` (bilinear image, nearest-neighbour label). ``spacing`` is rescaled to the working size;
    the original shape and spacing stay available through :meth:`original_shape` / :meth:`original_spacing`.
    Processed samples are kept in an LRU cache of ``cache_size`` entries.
    """

    _records: list[dict[str, Any]]

    def _setup(
        self,
        image_size: int | Sequence[int],
        with_labels: bool,
        class_names: Sequence[str],
        fold_atrium: bool,
        on_error: str,
        cache_size: int,
        progress: bool,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.image_size = as_image_size(image_size)
        self.with_labels = bool(with_labels)
        self.class_names = tuple(class_names)
        if len(self.class_names) < 2:
            raise ValueError(f"class_names needs background and at least one structure, got {self.class_names}")
        self.on_error = on_error
        self.cache_size = int(cache_size)
        self.progress = progress
        self._fold_atrium = fold_atrium
        self._skipped: list[tuple[str, str]] = []
        self._cache: collections.OrderedDict[int, Sample] = collections.OrderedDict()
        self._original: dict[int, NiftiGeometry] = {}

    # -- construction -------------------------------------------------------------------------------
    def _drop_or_raise(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self._skipped.append((error.path, error.problem))

    def _finish_init(self, source: str | Path) -> None:
        """Check file existence; with ``on_error='skip'`` also validate every sample eagerly."""
        kept = []
        for rec in self._records:
            missing = [
                (rec[key], f"{kind} file not found (sample {rec['id']!r})")
                for key, kind in (("image", "image"), ("label", "label"))
                if rec.get(key) is not None and not Path(rec[key]).is_file()
            ]
            if missing:
                self._drop_or_raise(DataError(*missing[0]))
                continue
            kept.append(rec)
        self._records = kept
        if self.on_error == "skip" and self._records:
            from tqdm.auto import tqdm

            good_records, good_samples = [], []
            bar = tqdm(self._records, desc=f"checking {type(self).__name__}", disable=not self.progress,
                       unit="img", leave=False)
            for rec in bar:
                try:
                    sample, original = self._read(rec)
                except DataError as err:
                    self._skipped.append((err.path, err.problem))
                    continue
                good_records.append(rec)
                good_samples.append((sample, original))
            self._records = good_records
            for index, (sample, original) in enumerate(good_samples):
                self._original[index] = original
                if index < self.cache_size:
                    self._cache[index] = sample
        if self._skipped:
            first_path, first_problem = self._skipped[0]
            warnings.warn(
                f"{type(self).__name__} ({source}): skipped {len(self._skipped)} bad input(s), "
                f"kept {len(self._records)} sample(s); first: {first_path}: {first_problem} "
                f"(see .skipped for the full list)",
                stacklevel=3,
            )
        if not self._records:
            raise DataError(source, "no usable samples" + (
                f" ({len(self._skipped)} skipped as bad)" if self._skipped else ""))

    # -- reading one sample ---------------------------------------------------------------------------
    def _read(self, rec: dict[str, Any]) -> tuple[Sample, NiftiGeometry]:
        image_path = rec["image"]
        loaded = load_nifti_2d(image_path)
        image, spacing = loaded.array, loaded.spacing
        check_image(image, image_path)
        label = None
        if self.with_labels:
            label_path = rec["label"]
            raw = load_nifti_2d(label_path).array
            if raw.shape != image.shape:  # checked before folding so the message shows the file's shape
                raise DataError(label_path, f"label shape {raw.shape} does not match image shape {image.shape} "
                                            f"of {image_path}")
            if self._fold_atrium:
                raw = np.where(raw == _ATRIUM, 0, raw)
            label = check_label(raw, label_path, self.n_classes, image.shape)
        original_shape = (int(image.shape[0]), int(image.shape[1]))
        image = resize_image(normalize_intensity(image), self.image_size)
        if label is not None:
            label = resize_label(label, self.image_size)
        h, w = self.image_size
        work_spacing = (spacing[0] * original_shape[0] / h, spacing[1] * original_shape[1] / w)
        sample = Sample(image=image, label=label, spacing=work_spacing, id=rec["id"])
        return sample, loaded.geometry

    # -- public interface -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        sample = self._cache.get(index)
        if sample is None:
            sample, original = self._read(self._records[index])
            self._original[index] = original
            if self.cache_size:
                self._cache[index] = sample
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        # Copies: a caller editing its sample must not change what the next caller gets.
        return Sample(
            image=sample.image.copy(),
            label=None if sample.label is None else sample.label.copy(),
            spacing=sample.spacing,
            id=sample.id,
        )

    @property
    def ids(self) -> list[str]:
        """Sample ids, in index order."""
        return [rec["id"] for rec in self._records]

    def info(self, index: int) -> dict[str, Any]:
        """Metadata of sample ``index`` (file paths and, for CAMUS, the parsed ``Info_*.cfg``)."""
        index = self._check_index(index)
        rec = self._records[index]
        return {"id": rec["id"], "image_path": str(rec["image"]),
                "label_path": None if rec["label"] is None else str(rec["label"]), **rec["info"]}

    def original_shape(self, index: int) -> tuple[int, int]:
        """(rows, cols) of sample ``index`` as stored on disk, before resizing (reads it if needed)."""
        return self.geometry(index).shape

    def original_spacing(self, index: int) -> tuple[float, float]:
        """(row_mm, col_mm) pixel size of sample ``index`` as stored on disk, before resizing."""
        return self.geometry(index).spacing()

    def geometry(self, index: int) -> NiftiGeometry:
        """Affine, orientation and header of sample ``index``'s image file: write maps for it with
        ``write_nifti_2d(path, map, geometry=dataset.geometry(index))`` (at :meth:`original_shape`)."""
        index = self._check_index(index)
        if index not in self._original:
            self[index]
        return self._original[index]


def _resolve_class_names(class_names: Sequence[str], keep_atrium: bool | None) -> tuple[tuple[str, ...], bool]:
    """Apply the ``keep_atrium`` switch: returns (class names, whether label 3 is folded into background)."""
    class_names = tuple(class_names)
    if keep_atrium is None:
        return class_names, False
    if keep_atrium:
        if class_names == _DEFAULT_CLASS_NAMES:
            return CAMUS_CLASS_NAMES, False
        if len(class_names) != len(CAMUS_CLASS_NAMES):
            raise ValueError(f"keep_atrium=True needs 4 class names (atrium = label {_ATRIUM}), got {class_names}")
        return class_names, False
    if len(class_names) != _ATRIUM:
        raise ValueError(f"keep_atrium=False folds label {_ATRIUM} into background and needs {_ATRIUM} class "
                         f"names, got {class_names}")
    return class_names, True


# ---------------------------------------------------------------------------------------------------
# Manifest-described folder
# ---------------------------------------------------------------------------------------------------
class NiftiFolderDataset(FileSegDataset):
    """2D NIfTI images (and labels) listed in a CSV manifest with columns ``id,image,label,split``.

    :param manifest: path of the CSV manifest. Image/label paths in it are relative to the manifest's
        folder or absolute; ``label`` may be empty for unlabelled rows.
    :param split: keep only rows whose ``split`` equals this (e.g. ``"train"``); ``None`` (default) keeps
        all rows.
    :param image_size: working size, ``int`` or ``(H, W)`` in pixels (default 64).
    :param with_labels: load label maps (default ``True``). With ``False`` label files are never opened
        (training on the target domain must not see its labels) and ``Sample.label`` is ``None``.
        With ``True`` every kept row must have a label.
    :param class_names: label value -> name, background first (default ``("background", "lv", "myo")``).
    :param keep_atrium: CAMUS-style atrium handling. ``None`` (default): labels used as stored.
        ``False``: label 3 (left atrium) is folded into background (3 classes). ``True``: 4 classes
        (the default ``class_names`` become ``("background", "lv", "myo", "la")``).
    :param on_error: ``"raise"`` (default): construction checks the files exist; the first bad file read
        raises :class:`DataError`. ``"skip"``: every sample is read and checked at construction (with a
        progress bar), bad ones are dropped, listed in :attr:`skipped` as ``(path, problem)`` and
        summarised by a warning.
    :param cache_size: number of processed samples kept in memory (LRU, default 512; 0 disables).
    :param progress: show a progress bar while validating (``on_error="skip"``); default ``True``.
    :raises DataError: missing/malformed manifest (missing column named), duplicate or empty ids, no rows
        for ``split``, missing image or label file, unlabelled row with ``with_labels=True``.
    """

    def __init__(
        self,
        manifest: str | Path,
        split: str | None = None,
        image_size: int | Sequence[int] = 64,
        with_labels: bool = True,
        class_names: Sequence[str] = _DEFAULT_CLASS_NAMES,
        keep_atrium: bool | None = None,
        on_error: str = "raise",
        cache_size: int = 512,
        progress: bool = True,
    ) -> None:
        names, fold = _resolve_class_names(class_names, keep_atrium)
        self._setup(image_size, with_labels, names, fold, on_error, cache_size, progress)
        self.manifest = Path(manifest)
        self.split = split
        self._records = []
        for row_number, row in self._read_manifest():
            rec_id = row["id"]
            label_cell = (row.get("label") or "").strip()
            if self.with_labels and not label_cell:
                self._drop_or_raise(DataError(
                    self.manifest, f"line {row_number}: sample {rec_id!r} has no label but with_labels=True "
                                   f"(split {row['split']!r})"))
                continue
            self._records.append({
                "id": rec_id,
                "image": self._resolve(row["image"]),
                # Unlabelled loading never even resolves the label path: nothing downstream can open it.
                "label": self._resolve(label_cell) if self.with_labels else None,
                "info": {"split": row["split"]},
            })
        self._finish_init(self.manifest)

    def _resolve(self, cell: str) -> Path:
        path = Path(cell.strip())
        return path if path.is_absolute() else self.manifest.parent / path

    def _read_manifest(self) -> list[tuple[int, dict[str, str]]]:
        if not self.manifest.is_file():
            raise DataError(self.manifest, "manifest file not found")
        try:
            text = self.manifest.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(self.manifest, f"cannot read manifest ({exc})") from exc
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise DataError(self.manifest,
                            f"empty manifest: expected a header with columns {','.join(MANIFEST_COLUMNS)}")
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise DataError(self.manifest, f"manifest is missing column(s) {', '.join(map(repr, missing))}; "
                                           f"expected {','.join(MANIFEST_COLUMNS)}, found {','.join(header)}")
        rows, seen, splits = [], {}, set()
        for row_number, raw in enumerate(reader, start=2):  # line 1 is the header
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            if not row["id"] or not row["image"]:
                raise DataError(self.manifest, f"line {row_number}: empty 'id' or 'image' cell")
            if row["id"] in seen:
                raise DataError(self.manifest, f"line {row_number}: duplicate id {row['id']!r} "
                                               f"(first on line {seen[row['id']]})")
            seen[row["id"]] = row_number
            splits.add(row["split"])
            if self.split is None or row["split"] == self.split:
                rows.append((row_number, row))
        if not rows:
            what = "no rows" if not seen else f"no rows for split {self.split!r} (splits present: {sorted(splits)})"
            raise DataError(self.manifest, what)
        return rows


def _file_stem(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._") or "sample"


def export_to_nifti_folder(
    datasets: Mapping[str, SegDataset],
    out_dir: str | Path,
    progress: bool = True,
) -> Path:
    """Write datasets to a NIfTI folder readable by :class:`NiftiFolderDataset`.

    Layout: ``out_dir/images/<id>.nii.gz`` (float32 image in [0, 1]), ``out_dir/labels/<id>.nii.gz``
    (uint8, only for samples that have a label) and ``out_dir/manifest.csv`` (``id,image,label,split``,
    relative paths). Pixel spacing (``Sample.spacing``, mm) goes into the headers. Files are written
    atomically and the manifest last, so an interrupted export leaves no manifest.

    :param datasets: split name -> dataset, e.g. ``{"train": ds_train, "test": ds_test}``.
    :param out_dir: destination folder (created).
    :param progress: show a tqdm progress bar (default ``True``).
    :return: path of the written ``manifest.csv``.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    total = sum(len(ds) for ds in datasets.values())
    rows: list[dict[str, str]] = []
    stems: dict[str, str] = {}
    ids: dict[str, str] = {}
    with tqdm(total=total, desc=f"exporting to {out_dir}", disable=not progress, unit="img") as bar:
        for split, dataset in datasets.items():
            for index in range(len(dataset)):
                sample = dataset[index]
                if sample.id in ids:
                    raise ValueError(f"sample id {sample.id!r} appears in split {ids[sample.id]!r} and {split!r}; "
                                     f"ids must be unique across the exported splits")
                ids[sample.id] = split
                stem = _file_stem(sample.id)
                if stem in stems:  # two ids that differ only in characters unsafe for file names
                    stem = f"{stem}-{len(stems)}"
                stems[stem] = sample.id
                image_rel = f"images/{stem}.nii.gz"
                write_nifti_2d(out_dir / image_rel, sample.image.astype(np.float32), sample.spacing)
                label_rel = ""
                if sample.label is not None:
                    label_rel = f"labels/{stem}.nii.gz"
                    write_nifti_2d(out_dir / label_rel, sample.label.astype(np.uint8), sample.spacing)
                rows.append({"id": sample.id, "image": image_rel, "label": label_rel, "split": split})
                bar.update(1)
    return write_manifest(out_dir / "manifest.csv", rows)


def write_manifest(path: str | Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write a manifest CSV (columns :data:`MANIFEST_COLUMNS`; paths relative to its folder or absolute)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())


__all__ = [
    "MANIFEST_COLUMNS",
    "FileSegDataset",
    "NiftiFolderDataset",
    "export_to_nifti_folder",
    "NiftiGeometry",
    "NiftiImage2D",
    "load_nifti_2d",
    "read_nifti_2d",
    "write_manifest",
    "write_nifti_2d",
]
