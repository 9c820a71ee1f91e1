"""Source-calibrated anatomical criteria: source maps that fail the paper's thresholds pass, broken maps do not."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from reward.anatomy import check_anatomy, get_criteria, is_valid
from reward.anatomy_calibration import calibrate_criteria, load_calibration, save_calibrated_criteria


def heart(k: int, size: int = 64, wall: int = 3) -> np.ndarray:
    """An LV (1) inside a ``wall``-pixel myocardium (2), open at the base; wide enough that about half of them
    fail the paper's LV/MYO width ratio (4.15) although nothing is wrong with them."""
    rng = np.random.default_rng(k)
    rows, cols = np.mgrid[:size, :size]
    cy, cx = size * 0.45, size * 0.5 + rng.uniform(-2, 2)
    ry, rx = size * rng.uniform(0.25, 0.3), size * rng.uniform(0.2, 0.24)
    base = rows < cy + ry * 0.6
    lv = (((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1) & base
    epi = ndimage.binary_dilation(lv, np.ones((3, 3), bool), iterations=wall) & base
    label = np.zeros((size, size), np.uint8)
    label[epi] = 2
    label[lv] = 1
    return label


@pytest.fixture(scope="module")
def source_maps() -> list[np.ndarray]:
    return [heart(k) for k in range(50)]


def test_source_maps_failing_the_paper_thresholds_pass_after_calibration(source_maps):
    assert np.mean([is_valid(m) for m in source_maps]) < 0.7  # the paper's width ratio rejects many
    criteria, report = calibrate_criteria(source_maps, base="echo", quantile=0.99)
    assert report.pass_before < 0.7 and report.pass_after >= 0.99
    assert all(is_valid(m, criteria=criteria) for m in source_maps)
    # loosened only where needed, and only as far as needed
    assert report.changed() == ["width_ratio"]
    widest = max(check_anatomy(m)["width_ratio"].value for m in source_maps)
    assert 4.15 < report.bounds["width_ratio"]["high"] <= widest
    assert [c.name for c in criteria] == [c.name for c in get_criteria("echo")]


def test_clearly_broken_maps_still_fail_after_calibration(source_maps):
    criteria, _ = calibrate_criteria(source_maps)
    good = source_maps[0]
    two_lv = good.copy()
    two_lv[58:62, 4:8] = 1  # a second LV piece in the background
    hole = good.copy()
    rows, cols = np.nonzero(good == 1)
    hole[int(rows.mean()), int(cols.mean())] = 0  # a hole in the LV
    thin = heart(0, wall=1)  # a one-pixel myocardium
    for name, broken in (("two LV pieces", two_lv), ("LV hole", hole), ("1-px myocardium", thin)):
        assert not is_valid(broken, criteria=criteria), name
    assert is_valid(good, criteria=criteria)


def test_calibration_never_loosens_a_positive_lower_bound_to_zero():
    """Maps whose myocardium breaks at the first erosion (value 0) cannot be told from a 1-px myocardium:
    the bound stays positive and the report shows the criterion's pass rate below the target."""
    maps = [heart(k, wall=1) for k in range(20)]
    _, report = calibrate_criteria(maps)
    assert report.bounds["myo_thickness"]["low"] > 0
    assert report.bounds["myo_thickness"]["pass_after"] < 0.99


def test_calibrated_criteria_round_trip_through_yaml(source_maps, tmp_path):
    criteria, report = calibrate_criteria(source_maps)
    path = save_calibrated_criteria(report, tmp_path / "criteria.yaml")
    loaded = get_criteria(str(path))  # reward.anatomy reads the file by path
    assert [(c.name, c.bounds((64, 64))) for c in loaded] == [(c.name, c.bounds((64, 64))) for c in criteria]
    assert load_calibration(path).pass_after == report.pass_after
    assert is_valid(source_maps[1], criteria=str(path)) == is_valid(source_maps[1], criteria=criteria)


def test_bad_calibration_input_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        calibrate_criteria([])
    with pytest.raises(ValueError, match="one size"):
        calibrate_criteria([np.zeros((8, 8), np.uint8), np.zeros((9, 9), np.uint8)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("hello: 1\n")
    with pytest.raises(ValueError, match="bad.yaml.*base"):
        get_criteria(str(bad))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        get_criteria(str(tmp_path / "nope.yaml"))


def test_calibrate_command_writes_the_file_and_ends_with_the_pass_rates(tmp_path, capsys):
    from pipeline.commands.calibrate_anatomy import main

    out = tmp_path / "criteria.yaml"
    assert main(["--preset", "source", "--n", "20", "--image-size", "64", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("source labels passing: before") and "after" in last
    assert len(get_criteria(str(out))) == 9
    assert main(["--dataset", "camus", "--out", str(out)]) == 2  # no --root: a clear error, status 2
