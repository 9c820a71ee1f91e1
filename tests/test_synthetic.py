"""The synthetic echo generator: determinism, splits, formats, plausible anatomy, presets, errors, laziness."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from rl4seg_env.data import make_dataset
from rl4seg_env.data.base import CAMUS_CLASS_NAMES, normalize_intensity
from rl4seg_env.data.synthetic import (
    DEFAULT_SPLIT_SIZES,
    DEFAULT_TARGET,
    PRESETS,
    SyntheticEcho,
    SyntheticPreset,
    available_presets,
)

EIGHT = np.ones((3, 3), bool)
ROOT = Path(__file__).resolve().parents[1]


def _n_components(mask: np.ndarray) -> int:
    return ndimage.label(mask, structure=EIGHT)[1]


def _lag_correlation(image: np.ndarray, lag: int = 2) -> float:
    """Correlation between pixels ``lag`` columns apart inside the sector (grows with speckle size)."""
    left, right = image[:, :-lag], image[:, lag:]
    inside = (left > 0) & (right > 0)
    return float(np.corrcoef(left[inside], right[inside])[0, 1])


def test_same_arguments_give_identical_samples() -> None:
    a = SyntheticEcho("source", "train", n_images=5, seed=3)[4]
    b = SyntheticEcho("source", "train", n_images=5, seed=3, cache_size=0)[4]
    assert a.id == b.id == "source-train-000004"
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.spacing == b.spacing


def test_index_seed_split_and_preset_change_the_sample() -> None:
    ref = SyntheticEcho("source", "train", n_images=5)[2]
    others = [SyntheticEcho("source", "train", n_images=5)[3], SyntheticEcho("source", "train", n_images=5, seed=1)[2],
              SyntheticEcho("source", "val", n_images=5)[2], SyntheticEcho(DEFAULT_TARGET, "train", n_images=5)[2]]
    for other in others:
        assert not np.array_equal(ref.image, other.image), other.id
        assert not np.array_equal(ref.label, other.label), other.id


def test_cache_returns_copies() -> None:
    ds = SyntheticEcho("source", n_images=3)
    first = ds[0]
    first.image[:] = 0.0
    first.label[:] = 0
    again = ds[0]
    assert again.image.max() > 0 and again.label.max() > 0


def test_splits_have_disjoint_ids_and_images_and_default_sizes() -> None:
    ids, images = set(), []
    for split in ("train", "val", "test"):
        ds = SyntheticEcho("source", split, image_size=32)
        assert len(ds) == DEFAULT_SPLIT_SIZES[split]
        for i in range(4):
            sample = ds[i]
            assert sample.id not in ids
            ids.add(sample.id)
            images.append(sample.image)
    assert len({img.tobytes() for img in images}) == len(images)


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_dtype_range_shape_and_spacing(size: int | tuple[int, int]) -> None:
    ds = SyntheticEcho(DEFAULT_TARGET, "test", n_images=4, image_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    assert ds.image_size == (h, w)
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (h, w) and s.image.dtype == np.float32
        assert s.label.shape == (h, w) and s.label.dtype == np.uint8
        assert 0.0 <= s.image.min() and s.image.max() <= 1.0 and s.image.max() > 0.3
        # sector field of view: the top corners are outside it and black
        assert s.image[0, 0] == 0.0 and s.image[0, -1] == 0.0
        depth = s.spacing[0] * h
        assert 100.0 < depth < 200.0  # a plausible imaging depth in mm
        assert s.spacing[1] * w == pytest.approx(depth)  # square field of view


def test_label_values_and_atrium_folding() -> None:
    folded = SyntheticEcho("source", n_images=6)
    kept = SyntheticEcho("source", n_images=6, keep_atrium=True)
    assert folded.class_names == ("background", "lv", "myo") and folded.n_classes == 3
    assert kept.class_names == CAMUS_CLASS_NAMES and kept.n_classes == 4
    for i in range(6):
        a, b = folded[i].label, kept[i].label
        assert set(np.unique(a)) == {0, 1, 2}
        assert set(np.unique(b)) == {0, 1, 2, 3}
        np.testing.assert_array_equal(a, np.where(b == 3, 0, b))
        # the atrium lies below the mitral plane: its centre is deeper than the LV's
        assert np.nonzero(b == 3)[0].mean() > np.nonzero(b == 1)[0].mean()


def test_with_labels_false_gives_no_label() -> None:
    sample = SyntheticEcho("source", n_images=2, with_labels=False)[1]
    assert sample.label is None
    np.testing.assert_array_equal(sample.image, SyntheticEcho("source", n_images=2)[1].image)


@pytest.mark.parametrize("preset", available_presets())
def test_labels_are_plausible_anatomy(preset: str) -> None:
    ds = SyntheticEcho(preset, "train", n_images=12, image_size=64)
    for i in range(len(ds)):
        label = ds[i].label
        lv, myo = label == 1, label == 2
        assert _n_components(lv) == 1 and _n_components(myo) == 1, ds[i].id
        assert not (lv[0].any() or lv[-1].any() or lv[:, 0].any() or lv[:, -1].any()), ds[i].id
        assert not ndimage.binary_fill_holes(lv)[~lv].any(), ds[i].id  # no holes in the cavity
        # apex at the top: the LV's highest row is capped by myocardium
        top = np.nonzero(lv.any(1))[0][0]
        assert myo[:top].any()
        # myocardium on both lateral sides of every LV row above the (possibly tilted) mitral plane
        lv_rows = np.nonzero(lv.any(1))[0]
        height = lv_rows[-1] - lv_rows[0] + 1
        for r in lv_rows[: int(0.7 * height)]:
            cols = np.nonzero(lv[r])[0]
            assert myo[r, : cols[0]].any() and myo[r, cols[-1] + 1:].any(), (ds[i].id, r)
        # LV touches background (through the mitral plane) only in its lower part
        touching = lv & ndimage.binary_dilation(label == 0, structure=EIGHT)
        assert touching.any()
        assert np.nonzero(touching)[0].min() >= lv_rows[0] + 0.7 * height, ds[i].id


def test_labels_pass_the_anatomy_criteria() -> None:
    anatomy = pytest.importorskip("reward.anatomy")
    for preset in available_presets():
        for size in (32, 64, (48, 80)):
            ds = SyntheticEcho(preset, "val", n_images=8, image_size=size, cache_size=0)
            labels = np.stack([ds[i].label for i in range(len(ds))])
            assert anatomy.validity_batch(labels).all(), (preset, size)


def test_presets_differ_in_image_statistics() -> None:
    def stats(preset: str) -> np.ndarray:
        ds = SyntheticEcho(preset, "test", n_images=8, image_size=64)
        samples = [ds[i] for i in range(len(ds))]
        lv = np.mean([s.image[s.label == 1].mean() for s in samples])
        myo = np.mean([s.image[s.label == 2].mean() for s in samples])
        smooth = np.mean([_lag_correlation(s.image) for s in samples])  # speckle size and blur
        return np.array([lv, myo, myo - lv, smooth])

    reference = stats("source")
    for preset in available_presets():
        if preset != "source":
            assert np.abs(stats(preset) - reference).max() > 0.03, preset
    # the contrast target is a darker, flatter display; the speckle target is smoother at the pixel scale
    assert stats("target_contrast")[2] < reference[2] - 0.1
    assert stats("target_speckle")[3] > reference[3] + 0.1


def test_shape_preset_changes_anatomy() -> None:
    def lv_width_ratio(preset: str) -> float:
        ds = SyntheticEcho(preset, "test", n_images=16, image_size=64)
        ratios = []
        for i in range(len(ds)):
            label = ds[i].label
            ratios.append((label == 1).sum() / max((label == 2).sum(), 1))
        return float(np.mean(ratios))

    assert lv_width_ratio("target_shape") > 1.2 * lv_width_ratio("source")  # dilated cavity, thinner walls


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown synthetic preset 'nope'.*source.*target_contrast"):
        SyntheticEcho("nope")
    with pytest.raises(ValueError, match="unknown split 'training'.*train, val, test"):
        SyntheticEcho(split="training")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_images"):
            SyntheticEcho(n_images=bad)
    ds = SyntheticEcho(n_images=3)
    with pytest.raises(IndexError, match="index 3 out of range for 3"):
        ds[3]
    assert ds[-1].id == ds[2].id


def test_construction_is_lazy() -> None:
    start = time.perf_counter()
    ds = SyntheticEcho("source", n_images=10**6, image_size=256)
    assert time.perf_counter() - start < 5.0  # generating 10**6 images eagerly would take hours
    assert len(ds) == 10**6
    assert ds[999_999].id == "source-train-999999"


def test_presets_registry_and_factory() -> None:
    names = available_presets()
    assert names[0] == "source" and DEFAULT_TARGET in names and len(names) >= 5
    assert all(isinstance(p, SyntheticPreset) for p in PRESETS.values())
    with pytest.raises(Exception):  # frozen
        PRESETS["source"].gain = (1.0, 1.0)  # type: ignore[misc]
    ds = make_dataset("synthetic", preset="target_speckle", split="val", n_images=2, image_size=32)
    assert isinstance(ds, SyntheticEcho) and ds[0].id == "target_speckle-val-000000"
    custom = SyntheticEcho(PRESETS["source"].replace(noise_std=(0.2, 0.2)), n_images=1)
    assert custom[0].id == "custom-train-000000"


def test_make_dataset_script_round_trips(tmp_path: Path) -> None:
    nifti = pytest.importorskip("rl4seg_env.data.nifti")
    out = tmp_path / "export"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_dataset.py"), "--preset", "target_contrast",
                    "--out", str(out), "--size", "48", "64", "--n-train", "2", "--n-val", "1", "--n-test", "0",
                    "--keep-atrium", "--quiet"], check=True, capture_output=True, cwd=tmp_path)
    lines = (out / "manifest.csv").read_text().strip().splitlines()
    assert lines[0] == "id,image,label,split" and len(lines) == 4
    loaded = nifti.NiftiFolderDataset(out / "manifest.csv", split="train", image_size=(48, 64), keep_atrium=True,
                                      progress=False)
    original = SyntheticEcho("target_contrast", "train", n_images=2, image_size=(48, 64), keep_atrium=True)
    for i in range(2):
        np.testing.assert_array_equal(loaded[i].label, original[i].label)
        # the NIfTI loader re-normalises intensities (percentiles), as for any scanner export
        np.testing.assert_allclose(loaded[i].image, normalize_intensity(original[i].image), atol=1e-2)
        np.testing.assert_allclose(loaded[i].spacing, original[i].spacing, rtol=1e-4)
