"""CAMUS (Leclerc et al., IEEE TMI 2019) in its public NIfTI layout::

    root/
      database_nifti/patient0001/patient0001_2CH_ED.nii.gz      image (x-first: width, height)
                                 patient0001_2CH_ED_gt.nii.gz   label: 0 bg, 1 LV, 2 MYO, 3 LA
                                 ... _2CH_ES, _4CH_ED, _4CH_ES
                                 Info_2CH.cfg, Info_4CH.cfg     "key: value" lines (ED, ES, NbFrame,
                                                                Sex, Age, ImageQuality, EF, FrameRate)
      database_split/subgroup_training.txt                      one patient name per line
                     subgroup_validation.txt
                     subgroup_testing.txt

Images are transposed to (rows, cols) with the apex (probe) at row 0, normalised to [0, 1] and resized
to the working size (labels nearest-neighbour); the pixel spacing from the header is kept in mm.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl4seg_env.data.base import CAMUS_CLASS_NAMES, DataError
from rl4seg_env.data.nifti import FileSegDataset

#: ``split`` argument -> official split file name (in ``root/database_split``).
SPLIT_FILES: dict[str, str] = {
    "train": "subgroup_training.txt",
    "val": "subgroup_validation.txt",
    "test": "subgroup_testing.txt",
}
VIEWS: tuple[str, ...] = ("2CH", "4CH")
PHASES: tuple[str, ...] = ("ED", "ES")


def _parse_value(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_camus_cfg(path: str | Path) -> dict[str, int | float | str]:
    """Parse a CAMUS ``Info_*.cfg`` file of ``key: value`` lines (blank lines ignored).

    Numbers are converted (``ED: 1`` -> ``1``, ``EF: 55.3`` -> ``55.3``); other values stay strings.

    :raises DataError: missing/unreadable file, or a line that is not ``key: value`` (line number named).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "cfg file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read cfg file ({exc})") from exc
    info: dict[str, int | float | str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise DataError(path, f"line {number}: expected 'key: value', found {line!r}")
        info[key.strip()] = _parse_value(value.strip())
    return info


class CamusDataset(FileSegDataset):
    """The CAMUS 2D echocardiography dataset (apical 2- and 4-chamber views, ED and ES frames).

    Sample ids look like ``patient0001_2CH_ED``; :meth:`info` returns the patient, view, phase, the
    phase's ``frame`` number and every key of the view's ``Info_<view>.cfg`` (Sex, Age, ImageQuality, EF,
    FrameRate, ...). ``Sample.spacing`` is in mm at the working size; :meth:`original_spacing` and
    :meth:`original_shape` give the stored ones.

    :param root: CAMUS folder holding ``database_nifti/`` (and ``database_split/`` unless ``split="all"``).
    :param split: ``"train"``, ``"val"`` or ``"test"`` (official ``subgroup_*.txt`` files) or ``"all"``
        (every patient folder); default ``"train"``.
    :param views: views to load, subset of ``("2CH", "4CH")`` (default both).
    :param phases: phases to load, subset of ``("ED", "ES")`` (default both).
    :param image_size: working size, ``int`` or ``(H, W)`` in pixels (default 64).
    :param with_labels: load ``*_gt.nii.gz`` label maps (default ``True``); with ``False`` they are never
        opened and ``Sample.label`` is ``None``.
    :param keep_atrium: ``False`` (default, as in the paper): the left atrium (3) is folded into background,
        classes ``("background", "lv", "myo")``; ``True``: 4 classes ``("background", "lv", "myo", "la")``.
    :param on_error: ``"raise"`` (default): construction checks the files exist and the first bad file read
        raises :class:`DataError`; ``"skip"``: every sample is read and checked at construction, bad ones
        are dropped, listed in :attr:`skipped` as ``(path, problem)`` and summarised by a warning.
    :param cache_size: number of processed samples kept in memory (LRU, default 512; 0 disables).
    :param image_quality: keep only samples whose cfg ``ImageQuality`` is in this list (case-insensitive,
        e.g. ``("Good", "Medium")``); ``None`` (default) keeps all.
    :param progress: show a progress bar while validating (``on_error="skip"``); default ``True``.
    :raises DataError: missing root / ``database_nifti`` / split file, empty folder or split, patient folder
        listed but absent, missing image or label file, malformed cfg line.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        views: Sequence[str] = VIEWS,
        phases: Sequence[str] = PHASES,
        image_size: int | Sequence[int] = 64,
        with_labels: bool = True,
        keep_atrium: bool = False,
        on_error: str = "raise",
        cache_size: int = 512,
        image_quality: Sequence[str] | None = None,
        progress: bool = True,
    ) -> None:
        if split not in (*SPLIT_FILES, "all"):
            raise ValueError(f"split must be one of {', '.join([*SPLIT_FILES, 'all'])}, got {split!r}")
        for name, given, allowed in (("views", views, VIEWS), ("phases", phases, PHASES)):
            if isinstance(given, str) or not given or any(v not in allowed for v in given):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {given!r}")
        class_names = CAMUS_CLASS_NAMES if keep_atrium else CAMUS_CLASS_NAMES[:3]
        self._setup(image_size, with_labels, class_names, not keep_atrium, on_error, cache_size, progress)
        self.root = Path(root)
        self.split = split
        self.views = tuple(views)
        self.phases = tuple(phases)
        self.keep_atrium = bool(keep_atrium)
        self.image_quality = None if image_quality is None else tuple(q.lower() for q in image_quality)

        data_dir = self.root / "database_nifti"
        if not self.root.is_dir():
            raise DataError(self.root, "CAMUS root folder not found")
        if not data_dir.is_dir():
            raise DataError(data_dir, "folder not found (expected the CAMUS 'database_nifti' folder)")
        self._records = []
        for patient in self._patients(data_dir):
            folder = data_dir / patient
            if not folder.is_dir():
                self._drop_or_raise(DataError(folder, f"patient folder listed in split {split!r} not found"))
                continue
            for view in self.views:
                cfg = self._view_info(folder / f"Info_{view}.cfg")
                if cfg is None:
                    continue
                quality = str(cfg.get("ImageQuality", "")).lower()
                if self.image_quality is not None and quality not in self.image_quality:
                    continue
                for phase in self.phases:
                    stem = f"{patient}_{view}_{phase}"
                    self._records.append({
                        "id": stem,
                        "image": folder / f"{stem}.nii.gz",
                        "label": folder / f"{stem}_gt.nii.gz" if self.with_labels else None,
                        "info": {"patient": patient, "view": view, "phase": phase,
                                 "frame": cfg.get(phase), **cfg},
                    })
        if not self._records and not self._skipped and self.image_quality is not None:
            raise DataError(data_dir, f"no sample of split {split!r} has ImageQuality in {list(image_quality or [])}")
        self._finish_init(data_dir)

    def _patients(self, data_dir: Path) -> list[str]:
        if self.split == "all":
            patients = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
            if not patients:
                raise DataError(data_dir, "empty folder: no patient folders")
            return patients
        split_file = self.root / "database_split" / SPLIT_FILES[self.split]
        if not split_file.is_file():
            raise DataError(split_file, f"split file for split {self.split!r} not found")
        names = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DataError(split_file, "split file lists no patients")
        return list(dict.fromkeys(names))  # drop repeats, keep order

    def _view_info(self, cfg_path: Path) -> dict[str, Any] | None:
        """Parsed cfg; ``{}`` if absent and not needed; ``None`` if bad and skipped."""
        if not cfg_path.is_file() and self.image_quality is None:
            return {}  # the cfg only carries metadata: images load without it
        try:
            return read_camus_cfg(cfg_path)
        except DataError as err:
            self._drop_or_raise(err)
            return None


__all__ = ["PHASES", "SPLIT_FILES", "VIEWS", "CamusDataset", "read_camus_cfg"]
