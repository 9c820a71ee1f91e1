"""Anatomical validity criteria on hand-made label maps: a valid apical-view mask and each way to fail."""
from __future__ import annotations

import numpy as np
import pytest

from reward.anatomy import (
    CRITERIA_SETS,
    AnatomyReport,
    Criterion,
    check_anatomy,
    get_criteria,
    holes,
    is_valid,
    lv_frontier,
    make_generic_criteria,
    myo_thickness,
    register_criteria,
    small_area,
    validity_batch,
)

ECHO_NAMES = ["lv_not_empty", "lv_one_piece", "myo_one_piece", "lv_holes", "epicardium_holes", "lv_myo_gap",
              "width_ratio", "lv_frontier", "myo_thickness"]


def echo_mask(size: int = 64, thickness: float = 0.1, centre=(0.42, 0.5), axes=(0.26, 0.13),
              base: float = 0.62, open_base: bool = True) -> np.ndarray:
    """Apical-view toy (rows apex -> base): LV ellipse (1) in a MYO band (2) cut at the base, background below."""
    r, c = np.mgrid[:size, :size] / size
    (cy, cx), (a, b) = centre, axes
    inner = ((r - cy) / a) ** 2 + ((c - cx) / b) ** 2 <= 1
    outer = ((r - cy) / (a + thickness)) ** 2 + ((c - cx) / (b + thickness)) ** 2 <= 1
    keep = r <= cy + base * a
    m = np.zeros((size, size), np.uint8)
    m[outer & (keep if open_base else r <= cy + base * a + thickness / 2)] = 2
    m[inner & keep] = 1
    return m


def failed(m: np.ndarray) -> set[str]:
    return set(check_anatomy(m).failed)


def test_valid_mask_passes_all_nine_criteria():
    report = check_anatomy(echo_mask())
    assert [r.name for r in report.results] == ECHO_NAMES
    assert report.valid and report.failed == [] and is_valid(echo_mask())
    assert report["width_ratio"].threshold == "<= 4.15" and report["lv_frontier"].threshold == "in [0.05, 1.5]"
    assert report["lv_myo_gap"].high == pytest.approx(small_area((64, 64))) == 0.25
    assert 0 < report["width_ratio"].value <= 4.15 and report["myo_thickness"].value >= 0.12


@pytest.mark.parametrize("size", [128, 256])
def test_valid_at_larger_sizes(size):
    assert is_valid(echo_mask(size))


def test_lv_empty():
    m = echo_mask()
    m[m == 1] = 0
    report = check_anatomy(m)
    assert report.failed[0] == "lv_not_empty" and report["lv_not_empty"].value == 0
    # without an LV the frontier ratio is undefined (nan) and fails too; nothing else does
    assert set(report.failed) == {"lv_not_empty", "lv_frontier"} and np.isnan(report["lv_frontier"].value)


def test_lv_hole():
    m = echo_mask()
    m[25, 31] = 0  # one background pixel inside the cavity
    report = check_anatomy(m)
    assert report["lv_holes"].value == 1
    # a background hole in the LV is necessarily a hole of LV u MYO as well
    assert set(report.failed) == {"lv_holes", "epicardium_holes"}


def test_lv_in_two_pieces():
    m = echo_mask()
    m[50:52, 5:7] = 1
    report = check_anatomy(m)
    assert report.failed == ["lv_one_piece"] and report["lv_one_piece"].value == 4


def test_myo_in_two_pieces():
    m = echo_mask()
    m[55:58, 50:53] = 2
    report = check_anatomy(m)
    assert report.failed == ["myo_one_piece"] and report["myo_one_piece"].value == 9


def test_myo_too_thin():
    m = echo_mask()
    # apex: keep a single MYO row above the LV over a few columns (a 1-pixel thin spot)
    top_lv = np.nonzero((m == 1).any(axis=1))[0][0]
    m[: top_lv - 1, 29:35][m[: top_lv - 1, 29:35] == 2] = 0
    report = check_anatomy(m)
    assert report.failed == ["myo_thickness"] and report["myo_thickness"].value == 0


def test_myo_thickness_value_of_a_uniform_band():
    m = np.zeros((40, 40), np.uint8)
    m[10:16, 5:35] = 2  # 6-pixel band: 2 erosions keep one piece, the third empties it; d = 3
    assert myo_thickness(m) == pytest.approx(2 / 3)


def test_hole_in_epicardium():
    m = echo_mask()
    m[8, 31] = 0  # inside the MYO band above the apex
    report = check_anatomy(m)
    assert report.failed == ["epicardium_holes"] and report["epicardium_holes"].value == 1


def test_gap_between_lv_and_myo():
    m = echo_mask()
    lv_rows = np.nonzero((m == 1).any(axis=1))[0]
    base = lv_rows[-1]
    left = (m == 1).argmax(axis=1)
    col = left[base]
    for row in range(base - 3, base + 1):
        m[row, left[row]] = 0  # background strip between LV and MYO...
    m[base + 1, col] = 2  # ...closed at the base for 4-connectivity, leaking diagonally (8-connectivity)
    report = check_anatomy(m)
    assert report.failed == ["lv_myo_gap"] and report["lv_myo_gap"].value == 4


def test_width_ratio_too_large():
    m = echo_mask(thickness=0.06, axes=(0.3, 0.35))  # a wide cavity in a normal wall
    report = check_anatomy(m)
    assert report.failed == ["width_ratio"] and report["width_ratio"].value > 4.15


def test_frontier_too_small_when_myo_closes_the_base():
    m = echo_mask(open_base=False)  # the LV never touches the background
    report = check_anatomy(m)
    assert report.failed == ["lv_frontier"] and report["lv_frontier"].value == 0


def test_frontier_too_large_for_an_lv_open_on_the_side():
    m = np.zeros((32, 32), np.uint8)
    m[5:25, 10] = 1  # a one-pixel-wide LV line: 20 pixels touch background over a width of 1
    assert lv_frontier(m) == 20.0
    assert "lv_frontier" in failed(m)


def test_frontier_not_applicable_with_atrium():
    m = echo_mask(open_base=False)
    m[45:50, 28:36] = 3
    report = check_anatomy(m)
    assert report["lv_frontier"].value is None and report["lv_frontier"].passed


def test_missing_myo_is_invalid():
    m = echo_mask()
    m[m == 2] = 0
    report = check_anatomy(m)
    assert not report.valid and {"myo_thickness", "width_ratio"} <= set(report.failed)


def test_empty_map_is_invalid_not_a_crash():
    assert not is_valid(np.zeros((64, 64), np.uint8))
    assert not check_anatomy(np.zeros((64, 64), np.int64)).valid


def test_exception_in_a_criterion_counts_as_invalid():
    def broken(label_map, spacing):
        raise RuntimeError("boom")

    crit = [Criterion("broken", broken, high=0)]
    report = check_anatomy(echo_mask(), criteria=crit)
    assert report.failed == ["broken"] and "boom" in report["broken"].error
    assert not is_valid(echo_mask(), criteria=crit)
    assert "FAIL" in str(report)


def test_wrong_shape_and_unknown_set_are_caller_errors():
    with pytest.raises(ValueError, match="shape"):
        check_anatomy(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="did you mean 'echo'"):
        get_criteria("ecko")


def test_generic_set_on_a_non_echo_toy():
    r, c = np.mgrid[:48, :48]
    organ = (r - 24) ** 2 + (c - 24) ** 2 <= 15 ** 2
    lesion = (r - 20) ** 2 + (c - 28) ** 2 <= 4 ** 2
    m = np.where(organ, 1, 0).astype(np.uint8)
    m[lesion] = 2
    # the lesion is a hole of the organ (complement region off the border)
    assert check_anatomy(m, criteria="generic").failed == ["class_1_holes"]
    register_criteria("toy_organ", make_generic_criteria({"organ": 1}), overwrite=True)
    m2 = m.copy()
    m2[lesion] = 1
    assert is_valid(m2, criteria="toy_organ")
    m2[2:4, 2:4] = 1
    assert check_anatomy(m2, criteria="toy_organ").failed == ["organ_one_piece"]
    assert "toy_organ" in CRITERIA_SETS
    with pytest.raises(ValueError, match="already exists"):
        register_criteria("toy_organ", make_generic_criteria({"organ": 1}))


def test_holes_connectivity():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    assert holes(ring).sum() == 1
    # a diagonal leak: enclosed for 4-connected background, open for 8-connected background
    leak = np.zeros((5, 5), bool)
    leak[0:3, 0:3] = True
    leak[1, 1] = False
    leak[2, 2] = False
    assert holes(leak, np.ones((3, 3), bool)).sum() == 0
    assert holes(leak, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)).sum() == 1


def test_validity_batch_and_report():
    good, bad = echo_mask(), echo_mask()
    bad[bad == 1] = 0
    out = validity_batch(np.stack([good, bad, good]))
    assert out.dtype == bool and out.tolist() == [True, False, True]
    report = check_anatomy(good)
    assert isinstance(report, AnatomyReport) and set(report.to_dict()) == set(ECHO_NAMES)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        validity_batch(good)
