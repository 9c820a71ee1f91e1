"""CAMUS loader on a CAMUS-layout tree written by the test (tests/conftest.py: ``camus_layout``)."""
from __future__ import annotations

import gzip
import re
import warnings

import nibabel as nib
import numpy as np
import pytest

from rl4seg_env.data import DataError, make_dataset
from rl4seg_env.data.base import normalize_intensity, resize_label
from rl4seg_env.data.camus import CamusDataset, read_camus_cfg


def _index(ds: CamusDataset, sample_id: str) -> int:
    return ds.ids.index(sample_id)


def test_orientation_labels_and_spacing_at_native_size(camus_layout):
    ds = CamusDataset(camus_layout.root, split="train", image_size=camus_layout.shape, keep_atrium=True)
    sample = ds[_index(ds, "patient0001_2CH_ED")]
    # Stored x-first (20, 40); loaded as rows x cols (40, 20) with the LV near the top (apex) and left.
    assert nib.load(str(camus_layout.path("patient0001", "2CH", "ED"))).shape == (20, 40)
    assert sample.image.shape == sample.label.shape == (40, 20)
    np.testing.assert_array_equal(sample.label, camus_layout.label("patient0001", "2CH", "ED"))
    np.testing.assert_array_equal(sample.image, normalize_intensity(camus_layout.image("patient0001", "2CH", "ED")))
    lv_rows, lv_cols = np.nonzero(sample.label == 1)
    la_rows, _ = np.nonzero(sample.label == 3)
    assert lv_rows.max() < 20 < la_rows.min()  # LV in the top half, atrium at the bottom
    assert lv_cols.mean() < 10  # left of centre: no left-right flip
    assert sample.spacing == pytest.approx((0.154, 0.308))
    assert sample.image.dtype == np.float32 and sample.label.dtype == np.uint8
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0


def test_resized_spacing_and_nearest_labels(camus_layout):
    ds = CamusDataset(camus_layout.root, split="val", image_size=20, keep_atrium=True)
    i = _index(ds, "patient0003_4CH_ES")
    sample = ds[i]
    assert sample.image.shape == sample.label.shape == (20, 20)
    # rows 40 -> 20 (x2 coarser), cols 20 -> 20: (0.154 * 2, 0.308 * 1) mm
    assert sample.spacing == pytest.approx((0.308, 0.308))
    assert ds.original_spacing(i) == pytest.approx((0.154, 0.308))
    assert ds.original_shape(i) == (40, 20)
    expected = resize_label(camus_layout.label("patient0003", "4CH", "ES"), (20, 20))
    np.testing.assert_array_equal(sample.label, expected)
    assert set(np.unique(sample.label)) == {0, 1, 2, 3}


def test_atrium_folded_by_default(camus_layout):
    ds = CamusDataset(camus_layout.root, split="train", image_size=camus_layout.shape)
    assert ds.class_names == ("background", "lv", "myo") and ds.n_classes == 3
    raw = camus_layout.label("patient0002", "2CH", "ES")
    sample = ds[_index(ds, "patient0002_2CH_ES")]
    np.testing.assert_array_equal(sample.label, np.where(raw == 3, 0, raw))
    four = CamusDataset(camus_layout.root, split="train", image_size=16, keep_atrium=True)
    assert four.class_names == ("background", "lv", "myo", "la") and four.n_classes == 4


def test_split_membership_views_phases_and_ids(camus_layout):
    for split, patients in camus_layout.splits.items():
        ds = CamusDataset(camus_layout.root, split=split, image_size=16)
        expected = [f"{p}_{v}_{ph}" for p in patients for v in ("2CH", "4CH") for ph in ("ED", "ES")]
        assert ds.ids == expected
        assert len(ds) == len(expected)
    everyone = CamusDataset(camus_layout.root, split="all", image_size=16, views=("4CH",), phases=("ES",))
    assert everyone.ids == [f"patient000{n}_4CH_ES" for n in range(1, 5)]
    assert [s.id for s in (everyone[i] for i in range(len(everyone)))] == everyone.ids
    with pytest.raises(ValueError, match="split"):
        CamusDataset(camus_layout.root, split="training")
    with pytest.raises(ValueError, match="views"):
        CamusDataset(camus_layout.root, views=("3CH",))


def test_cfg_metadata_and_quality_filter(camus_layout):
    ds = CamusDataset(camus_layout.root, split="train", image_size=16)
    info = ds.info(_index(ds, "patient0002_2CH_ES"))
    assert info["patient"] == "patient0002" and info["view"] == "2CH" and info["phase"] == "ES"
    assert info["ES"] == 11 and info["frame"] == 11 and info["NbFrame"] == 11
    assert info["Sex"] == "F" and info["Age"] == 51 and info["EF"] == pytest.approx(56.5)
    assert info["FrameRate"] == pytest.approx(50.0) and info["ImageQuality"] == "Medium"
    assert info["label_path"].endswith("patient0002_2CH_ES_gt.nii.gz")
    good = CamusDataset(camus_layout.root, split="train", image_size=16, image_quality=("good", "medium"))
    assert "patient0002_4CH_ED" not in good.ids and len(good) == 6  # patient0002 4CH is "Poor"
    cfg = read_camus_cfg(camus_layout.root / "database_nifti" / "patient0001" / "Info_2CH.cfg")
    assert cfg["ED"] == 1 and isinstance(cfg["ED"], int) and cfg["Sex"] == "M"


def test_factory_and_cache_returns_copies(camus_layout):
    ds = make_dataset("camus", root=str(camus_layout.root), split="test", image_size=16, cache_size=1)
    assert isinstance(ds, CamusDataset)
    first = ds[0]
    first.image[:] = 0.0
    first.label[:] = 0
    again = ds[0]
    assert again.image.max() > 0 and again.label.max() > 0
    ds[1], ds[0]  # evictions with a one-entry cache still give the same data
    np.testing.assert_array_equal(ds[0].label, again.label)


def test_without_labels_never_opens_label_files(camus_layout, monkeypatch):
    for gt in camus_layout.root.rglob("*_gt.nii.gz"):
        gt.write_bytes(b"not a nifti file")  # any attempt to read one would raise
    opened: list[str] = []
    real_load = nib.load
    monkeypatch.setattr(nib, "load", lambda path, *a, **k: (opened.append(str(path)), real_load(path, *a, **k))[1])
    for on_error in ("raise", "skip"):  # "skip" reads every sample at construction
        ds = CamusDataset(camus_layout.root, split="train", image_size=16, with_labels=False, on_error=on_error)
        samples = [ds[i] for i in range(len(ds))]
        assert all(s.label is None for s in samples) and ds.skipped == []
    assert opened and not any("_gt" in p for p in opened)
    for gt in camus_layout.root.rglob("*_gt.nii.gz"):
        gt.unlink()
    assert len(CamusDataset(camus_layout.root, split="val", with_labels=False, image_size=16)) == 4


# ---------------------------------------------------------------------------------------------------
# Bad input: each case -> DataError naming the file; on_error="skip" drops it and reports it
# ---------------------------------------------------------------------------------------------------
def _truncate(layout):
    path = layout.path("patient0001", "2CH", "ED")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "cannot read"


def _garbage(layout):
    path = layout.path("patient0001", "2CH", "ED")
    path.write_bytes(gzip.compress(b"\x00" * 10))
    return path, "cannot read"


def _wrong_ndim(layout):
    path = layout.path("patient0001", "2CH", "ED")
    layout.write_frame(path, np.ones((40, 20, 3), np.float32).transpose(1, 0, 2))
    return path, "expected a 2D image"


def _nan(layout):
    path = layout.path("patient0001", "2CH", "ED")
    image = layout.image("patient0001", "2CH", "ED")
    image[5, 5] = np.nan
    image[6, 6] = np.inf
    layout.write_frame(path, image)
    return path, "2 NaN/Inf"


def _shape_mismatch(layout):
    path = layout.path("patient0001", "2CH", "ED", gt=True)
    layout.write_frame(path, np.zeros((40, 21), np.uint8), dtype=np.uint8)
    return path, r"label shape \(40, 21\) does not match image shape \(40, 20\)"


def _bad_values(layout):
    path = layout.path("patient0001", "2CH", "ED", gt=True)
    label = layout.label("patient0001", "2CH", "ED")
    label[0, 0] = 7
    layout.write_frame(path, label, dtype=np.uint8)
    return path, r"label values \[7\] outside the declared set 0..2"


def _missing_label(layout):
    path = layout.path("patient0001", "2CH", "ED", gt=True)
    path.unlink()
    return path, "label file not found"


def _missing_image(layout):
    path = layout.path("patient0001", "2CH", "ED")
    path.unlink()
    return path, "image file not found"


def _bad_cfg(layout):
    path = layout.root / "database_nifti" / "patient0001" / "Info_2CH.cfg"
    path.write_text("ED: 1\nthis line has no colon\n")
    return path, "line 2: expected 'key: value'"


BAD_SAMPLE_CASES = {
    "truncated": (_truncate, 1),
    "corrupt": (_garbage, 1),
    "wrong_ndim": (_wrong_ndim, 1),
    "nan_inf": (_nan, 1),
    "shape_mismatch": (_shape_mismatch, 1),
    "label_values": (_bad_values, 1),
    "missing_label": (_missing_label, 1),
    "missing_image": (_missing_image, 1),
    "malformed_cfg": (_bad_cfg, 2),  # one bad file, two samples dropped (both phases of the view)
}


@pytest.mark.parametrize("case", list(BAD_SAMPLE_CASES))
def test_bad_sample_raises_naming_file(camus_layout, case):
    corrupt, _ = BAD_SAMPLE_CASES[case]
    path, problem = corrupt(camus_layout)
    with pytest.raises(DataError, match=problem) as info:
        ds = CamusDataset(camus_layout.root, split="train", image_size=16)
        [ds[i] for i in range(len(ds))]
    assert info.value.path == str(path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("case", list(BAD_SAMPLE_CASES))
def test_bad_sample_skipped_and_reported(camus_layout, case):
    corrupt, n_bad = BAD_SAMPLE_CASES[case]
    path, problem = corrupt(camus_layout)
    with pytest.warns(UserWarning, match="skipped 1 bad input"):
        ds = CamusDataset(camus_layout.root, split="train", image_size=16, on_error="skip", progress=False)
    assert len(ds) == 8 - n_bad
    assert "patient0001_2CH_ED" not in ds.ids
    assert [p for p, _ in ds.skipped] == [str(path)]  # one report per bad file, naming it
    assert any(re.search(problem, msg) for _, msg in ds.skipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all remaining samples load cleanly
        assert all(ds[i].label is not None for i in range(len(ds)))


def test_bad_sample_in_other_split_is_irrelevant(camus_layout):
    _truncate(camus_layout)  # patient0001 is in train
    ds = CamusDataset(camus_layout.root, split="test", image_size=16)
    assert len([ds[i] for i in range(len(ds))]) == 4


def test_missing_split_file(camus_layout):
    split_file = camus_layout.root / "database_split" / "subgroup_validation.txt"
    split_file.unlink()
    with pytest.raises(DataError, match="split file for split 'val' not found") as info:
        CamusDataset(camus_layout.root, split="val")
    assert info.value.path == str(split_file)
    assert len(CamusDataset(camus_layout.root, split="test", image_size=16)) == 4


def test_empty_folders_and_missing_patient(camus_layout, tmp_path):
    empty = tmp_path / "empty"
    (empty / "database_nifti").mkdir(parents=True)
    with pytest.raises(DataError, match="no patient folders") as info:
        CamusDataset(empty, split="all")
    assert "database_nifti" in str(info.value)
    with pytest.raises(DataError, match="expected the CAMUS 'database_nifti' folder"):
        CamusDataset(tmp_path, split="all")
    with pytest.raises(DataError, match="root folder not found"):
        CamusDataset(tmp_path / "missing")
    (camus_layout.root / "database_split" / "subgroup_testing.txt").write_text("\n\n")
    with pytest.raises(DataError, match="lists no patients"):
        CamusDataset(camus_layout.root, split="test")
    (camus_layout.root / "database_split" / "subgroup_testing.txt").write_text("patient0099\npatient0004\n")
    with pytest.raises(DataError, match="patient folder listed in split 'test' not found") as info:
        CamusDataset(camus_layout.root, split="test")
    assert "patient0099" in str(info.value)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = CamusDataset(camus_layout.root, split="test", on_error="skip", image_size=16, progress=False)
    assert len(ds) == 4 and "patient0099" in ds.skipped[0][0]


def test_everything_bad_is_an_error_even_when_skipping(camus_layout):
    for path in (camus_layout.root / "database_nifti" / "patient0004").glob("*_gt.nii.gz"):
        path.unlink()
    with pytest.warns(UserWarning, match="skipped 4"), pytest.raises(DataError, match="no usable samples"):
        CamusDataset(camus_layout.root, split="test", on_error="skip", progress=False)
