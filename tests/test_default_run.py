"""The README's main job, end to end, on the default config (~13 min on 2 CPU cores): `pytest -m slow`.

Asserts the acceptance targets the default run meets (docs/benchmarks.md has the measured figures):
validity >= 95% is reached with test-time optimisation (the plain argmax is asserted only against
source-only); ECE <= 0.05 holds on the reward network's validation split, not on target test predictions.
"""
import pytest

from pipeline.config import load_config
from pipeline.loop import RL4SegRun, gap_closed


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The default run (one seed, default_target), once for the tests of this module."""
    run_dir = tmp_path_factory.mktemp("default_run")
    return RL4SegRun(load_config("configs/default.yaml", [f"run_dir={run_dir}", "progress=false"])).run()


@pytest.mark.slow
def test_default_run_adapts_to_the_target(rows):
    source = next(r for r in rows if r["model"] == "source-only")
    oracle = next(r for r in rows if str(r["model"]).startswith("oracle"))
    final = [r for r in rows if str(r["model"]) == "RL4Seg"][-1]
    final_tto = [r for r in rows if str(r["model"]) == "RL4Seg + TTO"][-1]
    assert oracle["dice_mean"] - source["dice_mean"] >= 0.08  # the target is hard enough
    assert gap_closed(rows) >= 0.40  # RL4Seg closes at least 40% of the gap
    assert final["validity_pct"] > source["validity_pct"]
    assert final_tto["validity_pct"] >= 95.0 and gap_closed(rows, test_time=True) >= 0.40
    assert final["ece_after"] <= 0.05  # temperature-scaled reward net, on its validation split
    assert final["reward_correlation"] >= 0.6
    # the report shows RL4Seg next to what a user would pick instead, and the model chosen without labels
    models = {r["model"] for r in rows}
    assert {"AdaBN", "TENT", "TENT + TTO", "RL4Seg selected", "RL4Seg selected + TTO"} <= models or \
        next(r for r in rows if r["model"] == "RL4Seg selected")["selected_iteration"] == 0


@pytest.mark.slow
def test_default_run_beats_tent_by_one_point_with_valid_anatomy(rows):
    """Issue 15's goal on the default benchmark: the label-free selected model (with test-time optimisation, the
    default) is at least 1 Dice point above TENT and >= 98% anatomically valid. Not met yet (docs/benchmarks.md)."""
    tent = next(r for r in rows if r["model"] == "TENT")
    by_model = {r["model"]: r for r in rows}
    selected = by_model.get("RL4Seg selected + TTO", by_model["RL4Seg selected"])
    assert selected["dice_mean"] >= tent["dice_mean"] + 0.01, (selected["dice_mean"], tent["dice_mean"])
    assert selected["validity_pct"] >= 98.0
