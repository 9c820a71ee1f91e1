"""scripts/reward_audit.py: what a run's reward set teaches, checked against the target labels."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from pipeline.commands import reward_audit as module
from pipeline.config import load_config, save_config
from reward.builder import BuildReport, RewardSampleStore
from rl4seg_env.data import dataset_from_config


@pytest.fixture
def run_dir(tmp_path):
    """A run directory (the quick config) whose reward set holds hand-made samples of two target images:
    iteration 1 one pseudo-label and one negative around each, iteration 2 one corrected sample."""
    run = tmp_path / "run"
    run.mkdir()
    config = load_config("configs/quick.yaml", [f"run_dir={run}"])
    save_config(config, run / "config.yaml")
    d = config.data
    target = dataset_from_config(d.target, "train", d.image_size, True, d.keep_atrium, 2)
    samples = [target[i] for i in range(2)]
    store = RewardSampleStore(run / "reward_dataset")
    writer = store.begin(1)
    for s in samples:
        label = np.asarray(s.label, dtype=np.uint8)
        pseudo = label.copy()
        lv = np.argwhere(label == 1)
        pseudo[tuple(lv[:3].T)] = 2  # the pseudo-label has 3 wrong pixels, taught as right
        negative = pseudo.copy()
        negative[tuple(lv[:3].T)] = 1  # moved back to the truth: 3 right pixels taught as wrong
        bg = np.argwhere(label == 0)
        negative[tuple(bg[:1].T)] = 2  # and 1 wrong one, taught as wrong
        writer.add(s.image, pseudo, pseudo, "pseudo_label", s.id)
        writer.add(s.image, negative, pseudo, "contrast", s.id)
        writer.add(s.image, label, label, "source", "source:x")  # exact by construction: left out
    writer.commit(BuildReport(1, samples_by_kind={"pseudo_label": 2, "contrast": 2, "source": 2}))
    writer = store.begin(2)
    label = np.asarray(samples[0].label, dtype=np.uint8)
    writer.add(samples[0].image, label, label, "corrected", samples[0].id)
    writer.commit(BuildReport(2, samples_by_kind={"corrected": 1}))
    return run


def test_the_audit_counts_what_each_kind_teaches_right_and_wrong(run_dir, tmp_path, capsys):
    out, png = tmp_path / "audit.csv", tmp_path / "figures" / "audit.png"
    assert module.main([str(run_dir), "--csv", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| iteration | kind | samples |" in table and "source" not in table
    with open(out) as f:
        rows = {(int(r["iteration"]), r["kind"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(1, "pseudo_label"), (1, "contrast"), (2, "corrected")}
    pseudo, negative = rows[1, "pseudo_label"], rows[1, "contrast"]
    assert int(pseudo["samples"]) == 2 and float(pseudo["marked_wrong_per_sample"]) == 0
    assert float(pseudo["false_right_per_sample"]) == 3  # its own 3 errors, taught as right
    assert float(negative["marked_wrong_per_sample"]) == 4
    assert float(negative["precision"]) == pytest.approx(0.25)  # 1 of the 4 pixels taught as wrong is wrong
    assert float(negative["false_right_per_sample"]) == 0
    assert float(negative["dice_pred"]) < 1 and float(pseudo["dice_ref"]) < 1
    assert float(rows[2, "corrected"]["dice_ref"]) == pytest.approx(1.0)

    capsys.readouterr()
    assert module.main([str(run_dir), "--iteration", "2"]) == 0
    assert "pseudo_label" not in capsys.readouterr().out


def test_bad_runs_and_iterations_are_named(run_dir, tmp_path, capsys):
    assert module.main([str(run_dir), "--iteration", "3"]) == 2
    assert "iteration(s) [3]" in capsys.readouterr().err
    assert module.main([str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err

    # a sample of an image the run's target set does not hold (its data config changed after the build)
    store = RewardSampleStore(run_dir / "reward_dataset")
    writer = store.begin(3)
    writer.add(np.zeros((64, 64), np.float32), np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8),
               "pseudo_label", "elsewhere-000001")
    writer.commit(BuildReport(3, samples_by_kind={"pseudo_label": 1}))
    assert module.main([str(run_dir), "--iteration", "3"]) == 2
    err = capsys.readouterr().err
    assert "elsewhere-000001" in err and "shard_0000.npz" in err
