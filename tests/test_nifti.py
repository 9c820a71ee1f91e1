"""2D NIfTI read/write, the manifest-backed NiftiFolderDataset and export_to_nifti_folder."""
from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import nibabel as nib
from conftest import TinyDataset
import numpy as np
import pytest

from rl4seg_env.data import DataError, make_dataset
from rl4seg_env.data.base import normalize_intensity, resize_label
from rl4seg_env.data import nifti as nifti_module
from rl4seg_env.data.nifti import NiftiFolderDataset, export_to_nifti_folder, read_nifti_2d, write_nifti_2d

SPACING = (0.154, 0.308)  # (row_mm, col_mm): non-square pixels


# ---------------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_write_read_round_trip_is_exact(tmp_path, suffix):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 7)).astype(np.float32)
    label = rng.integers(0, 4, size=(12, 7)).astype(np.uint8)
    write_nifti_2d(tmp_path / f"image{suffix}", image, SPACING)
    write_nifti_2d(tmp_path / f"label{suffix}", label, SPACING, dtype=np.uint8)
    read_image, spacing = read_nifti_2d(tmp_path / f"image{suffix}")
    read_label, _ = read_nifti_2d(tmp_path / f"label{suffix}")
    np.testing.assert_array_equal(read_image, image)
    np.testing.assert_array_equal(read_label, label)
    assert read_image.dtype == np.float32 and spacing == pytest.approx(SPACING)
    # On disk: x-first like CAMUS, zooms (x = col_mm, y = row_mm), labels stored as uint8.
    on_disk = nib.load(str(tmp_path / f"label{suffix}"))
    assert on_disk.shape == (7, 12) and on_disk.get_data_dtype() == np.uint8
    assert on_disk.header.get_zooms()[:2] == pytest.approx((0.308, 0.154))
    np.testing.assert_array_equal(np.asarray(on_disk.dataobj), label.T)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"image{suffix}", f"label{suffix}"])  # no temp files
    if suffix == ".nii.gz":
        assert (tmp_path / f"image{suffix}").read_bytes()[:2] == b"\x1f\x8b"


def test_write_defaults_and_refusals(tmp_path):
    write_nifti_2d(tmp_path / "int.nii.gz", np.array([[0, 1], [2, 3]], dtype=np.int64), (1.0, 1.0))
    assert nib.load(str(tmp_path / "int.nii.gz")).get_data_dtype() == np.uint8  # 64-bit ints narrowed
    with pytest.raises(ValueError, match="2D"):
        write_nifti_2d(tmp_path / "x.nii", np.zeros((2, 2, 2)), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        write_nifti_2d(tmp_path / "x.nii", np.zeros((2, 2)), (0.0, 1.0))


def test_read_accepts_trailing_singleton_refuses_other_ndim(tmp_path):
    data = np.arange(6, dtype=np.float32).reshape(3, 2, 1)  # (x, y, 1)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.25, 1.0, 1.0])), str(tmp_path / "s.nii.gz"))
    array, spacing = read_nifti_2d(tmp_path / "s.nii.gz")
    np.testing.assert_array_equal(array, data[:, :, 0].T)
    assert spacing == pytest.approx((0.25, 0.5))
    nib.save(nib.Nifti1Image(np.zeros((3, 2, 2), np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
    with pytest.raises(DataError, match=r"v\.nii\.gz: expected a 2D image .* found 3D"):
        read_nifti_2d(tmp_path / "v.nii.gz")
    with pytest.raises(DataError, match=r"absent\.nii\.gz: file not found"):
        read_nifti_2d(tmp_path / "absent.nii.gz")


# ---------------------------------------------------------------------------------------------------
# Manifest dataset
# ---------------------------------------------------------------------------------------------------
def _write_manifest(path: Path, rows: list[dict[str, str]], columns=("id", "image", "label", "split")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _label(shape: tuple[int, int], k: int) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[1 : 5 + k, 2:6] = 1  # LV near the top (row 0 = apex)
    label[5 + k : 7 + k, 2:6] = 2
    label[-3:, 1:4] = 3  # atrium at the bottom
    return label


@pytest.fixture
def nifti_folder(tmp_path: Path) -> dict:
    """Four 16 x 8 frames (rows x cols): a, b (train, relative paths), c (test, absolute paths),
    d (test, unlabelled)."""
    shape = (16, 8)
    rows, truth = [], {}
    for k, (sample_id, split) in enumerate([("a", "train"), ("b", "train"), ("c", "test"), ("d", "test")]):
        label = _label(shape, k)
        image = (10.0 + 5.0 * k + 100.0 * (label == 2) + np.arange(label.size).reshape(shape)).astype(np.float32)
        write_nifti_2d(tmp_path / "img" / f"{sample_id}.nii.gz", image, SPACING)
        write_nifti_2d(tmp_path / "lbl" / f"{sample_id}.nii.gz", label, SPACING, dtype=np.uint8)
        prefix = f"{tmp_path}/" if sample_id == "c" else ""
        rows.append({"id": sample_id, "image": f"{prefix}img/{sample_id}.nii.gz",
                     "label": "" if sample_id == "d" else f"{prefix}lbl/{sample_id}.nii.gz", "split": split})
        truth[sample_id] = (image, label)
    return {"manifest": _write_manifest(tmp_path / "manifest.csv", rows), "rows": rows, "truth": truth,
            "dir": tmp_path}


def test_manifest_dataset_loads_labels_spacing_and_splits(nifti_folder):
    train = NiftiFolderDataset(nifti_folder["manifest"], split="train", image_size=(16, 8), keep_atrium=True)
    assert train.ids == ["a", "b"] and train.n_classes == 4
    image, label = nifti_folder["truth"]["b"]
    sample = train[1]
    np.testing.assert_array_equal(sample.label, label)
    np.testing.assert_array_equal(sample.image, normalize_intensity(image))
    assert sample.spacing == pytest.approx(SPACING) and sample.id == "b"

    small = NiftiFolderDataset(nifti_folder["manifest"], split="train", image_size=8, keep_atrium=True)  # 16x8 -> 8x8
    sample = small[0]
    assert sample.spacing == pytest.approx((0.308, 0.308))
    assert small.original_spacing(0) == pytest.approx(SPACING) and small.original_shape(0) == (16, 8)
    np.testing.assert_array_equal(sample.label, resize_label(nifti_folder["truth"]["a"][1], (8, 8)))

    test = NiftiFolderDataset(nifti_folder["manifest"], split="test", image_size=8, with_labels=False)
    assert test.ids == ["c", "d"] and test[0].label is None  # absolute path (c) and unlabelled row (d)
    assert test.info(1)["split"] == "test" and test.info(1)["label_path"] is None
    everything = make_dataset("nifti", manifest=str(nifti_folder["manifest"]), image_size=8, with_labels=False)
    assert isinstance(everything, NiftiFolderDataset) and everything.ids == ["a", "b", "c", "d"]


def test_atrium_handling(nifti_folder):
    raw = nifti_folder["truth"]["a"][1]
    folded = NiftiFolderDataset(nifti_folder["manifest"], split="train", image_size=(16, 8), keep_atrium=False)
    np.testing.assert_array_equal(folded[0].label, np.where(raw == 3, 0, raw))
    # keep_atrium=None: labels as stored, checked against the 3 declared classes -> the atrium (3) is refused.
    as_stored = NiftiFolderDataset(nifti_folder["manifest"], split="train", image_size=(16, 8))
    with pytest.raises(DataError, match=r"lbl/a\.nii\.gz: label values \[3\] outside the declared set 0..2"):
        as_stored[0]
    with pytest.raises(ValueError, match="keep_atrium=True needs 4 class names"):
        NiftiFolderDataset(nifti_folder["manifest"], keep_atrium=True, class_names=("bg", "lv", "myo", "la", "x"))


def test_without_labels_never_reads_label_files(nifti_folder, monkeypatch):
    for path in (nifti_folder["dir"] / "lbl").iterdir():
        path.write_bytes(b"garbage")  # reading any of them would fail
    read_paths: list[str] = []
    real_read = nifti_module.load_nifti_2d
    monkeypatch.setattr(nifti_module, "load_nifti_2d", lambda p: (read_paths.append(str(p)), real_read(p))[1])
    for on_error in ("raise", "skip"):  # "skip" reads every sample at construction
        ds = NiftiFolderDataset(nifti_folder["manifest"], image_size=8, with_labels=False, on_error=on_error)
        assert [ds[i].label for i in range(len(ds))] == [None] * 4 and ds.skipped == []
    assert read_paths and all("/img/" in p for p in read_paths)
    with pytest.raises(DataError, match=r"lbl/a\.nii\.gz: cannot read"):
        # the label files really are unreadable
        NiftiFolderDataset(nifti_folder["manifest"], split="train", image_size=8)[0]


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------
def _corrupt_image(folder):
    path = folder["dir"] / "img" / "a.nii.gz"
    path.write_bytes(path.read_bytes()[:40])
    return path, "cannot read NIfTI"


def _nan_image(folder):
    path = folder["dir"] / "img" / "a.nii.gz"
    image = folder["truth"]["a"][0].copy()
    image[0, 0] = np.nan
    write_nifti_2d(path, image, SPACING)
    return path, "1 NaN/Inf pixel"


def _volume(folder):
    path = folder["dir"] / "img" / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 16, 4), np.float32), np.eye(4)), str(path))
    return path, "expected a 2D image"


def _shape_mismatch(folder):
    path = folder["dir"] / "lbl" / "a.nii.gz"
    write_nifti_2d(path, np.zeros((16, 9), np.uint8), SPACING)
    return path, "does not match image shape"


def _bad_values(folder):
    path = folder["dir"] / "lbl" / "a.nii.gz"
    write_nifti_2d(path, np.full((16, 8), 9, np.uint8), SPACING)
    return path, r"label values \[9\] outside"


def _missing_image(folder):
    path = folder["dir"] / "img" / "a.nii.gz"
    path.unlink()
    return path, "image file not found"


def _missing_label(folder):
    path = folder["dir"] / "lbl" / "a.nii.gz"
    path.unlink()
    return path, "label file not found"


def _unlabelled_row(folder):
    rows = [dict(r, label="") if r["id"] == "a" else r for r in folder["rows"]]
    _write_manifest(folder["manifest"], rows)
    return folder["manifest"], "line 2: sample 'a' has no label but with_labels=True"


BAD_CASES = {
    "truncated": _corrupt_image,
    "nan": _nan_image,
    "volume": _volume,
    "shape_mismatch": _shape_mismatch,
    "label_values": _bad_values,
    "missing_image": _missing_image,
    "missing_label": _missing_label,
    "unlabelled_row": _unlabelled_row,
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_naming_file(nifti_folder, case):
    path, problem = BAD_CASES[case](nifti_folder)
    with pytest.raises(DataError, match=problem) as info:
        ds = NiftiFolderDataset(nifti_folder["manifest"], split="train", image_size=8, keep_atrium=False)
        [ds[i] for i in range(len(ds))]
    assert info.value.path == str(path) and path.name in str(info.value)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_skipped_and_reported(nifti_folder, case):
    path, problem = BAD_CASES[case](nifti_folder)
    with pytest.warns(UserWarning, match="skipped 1 bad input.*kept 1 sample"):
        ds = NiftiFolderDataset(nifti_folder["manifest"], split="train", image_size=8, keep_atrium=False,
                                on_error="skip", progress=False)
    assert ds.ids == ["b"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == str(path) and re.search(problem, ds.skipped[0][1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[0].label is not None


def test_malformed_and_empty_manifests(nifti_folder, tmp_path):
    manifest = nifti_folder["manifest"]
    with pytest.raises(DataError, match=r"no rows for split 'val' \(splits present: \['test', 'train'\]\)") as info:
        NiftiFolderDataset(manifest, split="val")
    assert info.value.path == str(manifest)
    bad = _write_manifest(tmp_path / "no_split.csv", nifti_folder["rows"], columns=("id", "image", "label"))
    with pytest.raises(DataError, match=r"no_split\.csv: manifest is missing column\(s\) 'split'"):
        NiftiFolderDataset(bad)
    header_only = _write_manifest(tmp_path / "header_only.csv", [])
    with pytest.raises(DataError, match=r"header_only\.csv: no rows"):
        NiftiFolderDataset(header_only)
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(DataError, match=r"blank\.csv: empty manifest"):
        NiftiFolderDataset(tmp_path / "blank.csv")
    with pytest.raises(DataError, match=r"absent\.csv: manifest file not found"):
        NiftiFolderDataset(tmp_path / "absent.csv")
    dup = _write_manifest(tmp_path / "dup.csv", nifti_folder["rows"] + nifti_folder["rows"][:1])
    with pytest.raises(DataError, match=r"dup\.csv: line 6: duplicate id 'a' \(first on line 2\)"):
        NiftiFolderDataset(dup)
    with pytest.raises(ValueError, match="on_error"):
        NiftiFolderDataset(manifest, on_error="ignore")


# ---------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------
def test_export_round_trips_through_manifest_dataset(tmp_path):
    sources = {"train": TinyDataset(3, (12, 10), spacing=SPACING, prefix="src/"), "test": TinyDataset(2, (12, 10), with_labels=False, spacing=SPACING, prefix="tgt/")}
    manifest = export_to_nifti_folder(sources, tmp_path / "export", progress=False)
    assert manifest == tmp_path / "export" / "manifest.csv"
    assert sorted(p.name for p in (tmp_path / "export" / "labels").iterdir()) == [
        "src_000.nii.gz", "src_001.nii.gz", "src_002.nii.gz"]
    train = NiftiFolderDataset(manifest, split="train", image_size=(12, 10))
    assert train.ids == ["src/000", "src/001", "src/002"]
    for i in range(3):
        expected = sources["train"][i]
        got = train[i]
        np.testing.assert_array_equal(got.label, expected.label)
        np.testing.assert_array_equal(got.image, normalize_intensity(expected.image))  # float32 stored exactly
        assert got.spacing == pytest.approx(SPACING)
    test = NiftiFolderDataset(manifest, split="test", image_size=(12, 10), with_labels=False)
    assert test.ids == ["tgt/000", "tgt/001"] and test.info(0)["label_path"] is None
    with pytest.raises(DataError, match="no label but with_labels=True"):
        NiftiFolderDataset(manifest, split="test")


def test_export_refuses_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="'src/000' appears in split 'train' and 'val'"):
        export_to_nifti_folder({"train": TinyDataset(1, (12, 10), spacing=SPACING, prefix="src/"), "val": TinyDataset(1, (12, 10), spacing=SPACING, prefix="src/")}, tmp_path,
                               progress=False)
    assert not (tmp_path / "manifest.csv").exists()  # the manifest is written last


@pytest.mark.parametrize("codes", ["RAS", "LAS", "RPS", "LPS", "ARS", "PLS"])
def test_any_orientation_reads_the_same_and_maps_round_trip(tmp_path, codes):
    """The same picture stored flipped or with its axes swapped reads as the same (rows, cols) array with the
    same spacing, and a map written with the image's geometry lands on the same voxels under its affine."""
    import nibabel as nib

    from rl4seg_env.data.nifti import load_nifti_2d

    rng = np.random.default_rng(0)
    picture = rng.random((12, 20)).astype(np.float32)  # (rows, cols) as a RAS file gives them
    spacing = (0.5, 0.25)  # (row_mm, col_mm)
    ras = np.ascontiguousarray(picture.T)  # stored x-first: x = columns (R), y = rows (A)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), target)
    stored = nib.orientations.apply_orientation(ras[:, :, None], transform)
    base = nib.Nifti1Image(ras[:, :, None], np.diag([spacing[1], spacing[0], 1.0, 1.0]))
    affine = base.affine @ nib.orientations.inv_ornt_aff(transform, ras[:, :, None].shape)
    affine[:3, 3] += (4.0, -2.0, 7.0)  # an origin offset moves nothing in the array
    nib.save(nib.Nifti1Image(stored, affine), tmp_path / "img.nii.gz")
    assert "".join(nib.aff2axcodes(affine)) == codes
    image = load_nifti_2d(tmp_path / "img.nii.gz")
    assert np.array_equal(image.array, picture) and image.spacing == pytest.approx(spacing)
    assert image.geometry.orientation == codes
    mask = (picture > 0.5).astype(np.uint8)
    write_nifti_2d(tmp_path / "seg.nii.gz", mask, geometry=image.geometry)
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert np.allclose(seg.affine, affine) and seg.shape == stored.shape
    assert np.array_equal(np.asarray(seg.dataobj), (stored > 0.5).astype(np.uint8))
    assert load_nifti_2d(tmp_path / "seg.nii.gz").array.tolist() == mask.tolist()
    with pytest.raises(ValueError, match="does not match"):
        write_nifti_2d(tmp_path / "bad.nii.gz", mask.T, geometry=image.geometry)
