"""Domain-adaptation benchmark (pipeline/benchmark_da.py, scripts/benchmark_da.py) on a tiny quick run."""
import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.commands import benchmark_da as benchmark_da_command
import torch

from pipeline.benchmark_da import METHODS, DABenchmark, method_config, skip_reason, summarize, write_tables
from pipeline.config import load_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
# configs/quick.yaml made smaller still: the test checks the plumbing, not the numbers
TINY = ["num_threads=1", "pretrain.epochs=10", "data.source.n_train=128", "data.target.n_train=16",
        "reward_dataset.images_per_iteration=16"]
METHODS_RUN = ["source_only", "oracle", "adabn", "tent", "self_training", "rl4seg", "rl4seg_tto", "tent_tto",
               "self_training_tto", "rl4seg_no_shape_ae"]


def _script():
    return benchmark_da_command


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    rc = _script().main(["--quick", "--results", str(out), "--st-epochs", "1", "--methods", *METHODS_RUN, "--", *TINY])
    assert rc == 0
    return out


def test_quick_benchmark_writes_table_csv_and_chart(quick_results):
    d = quick_results
    for name in ("results.md", "results.csv", "per_seed.csv", "results.png", "profiles.png", "config.yaml"):
        assert (d / name).is_file(), name
    with open(d / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # quick.yaml disables the shape auto-encoder, so that ablation would repeat RL4Seg: skipped, and said so
    assert [r["method"] for r in rows] == [m for m in METHODS_RUN if m != "rl4seg_no_shape_ae"]
    for key in ("dice_lv", "dice_myo", "dice_epi", "hd_lv", "hd_epi", "hd95_myo", "masd_epi", "validity_pct"):
        assert f"{key}_mean" in rows[0] and f"{key}_std" in rows[0], key
    for r in rows:
        assert 0.0 <= float(r["dice_epi_mean"]) <= 1.0 and 0.0 <= float(r["validity_pct_mean"]) <= 100.0
        assert r["n_seeds"] == "1"
    md = (d / "results.md").read_text()
    for label in ("source only", "AdaBN", "TENT", "self-training", "RL4Seg", "Dice LV", "Dice MYO", "Dice epi",
                  "HD epi (mm)", "valid %"):
        assert label in md, label
    assert "`rl4seg_no_shape_ae` not run" in md and "python scripts/benchmark_da.py --quick" in md
    import matplotlib.image

    assert matplotlib.image.imread(d / "results.png").shape[0] > 100
    # every method started from the same source pretraining and was scored on the same test images
    per_seed = [json.loads(p.read_text()) for p in sorted((d / "seed_0").glob("*.json"))]
    assert {r["n_images"] for r in per_seed} == {8.0}
    state = json.loads((d / "seed_0" / "rl4seg" / "state.json").read_text())
    source = json.loads((d / "seed_0" / "source_only.json").read_text())
    assert state["rows"][0]["dice_mean"] == pytest.approx(source["dice_mean"])
    assert (d / "seed_0" / "rl4seg" / "checkpoints" / "actor_source.pt").read_bytes() == \
        (d / "seed_0" / "base" / "checkpoints" / "actor_source.pt").read_bytes()
    # baselines changed the model (AdaBN re-estimates statistics: target scores move)
    adabn = json.loads((d / "seed_0" / "adabn.json").read_text())
    assert adabn["dice_mean"] != source["dice_mean"]
    assert len(json.loads((d / "seed_0" / "self_training.json").read_text())["pseudo_labels_per_round"]) == 1
    # RL4Seg + TTO: the rl4seg run's final actor, its invalid test predictions optimised
    rl4seg = json.loads((d / "seed_0" / "rl4seg.json").read_text())
    tto = json.loads((d / "seed_0" / "rl4seg_tto.json").read_text())
    assert tto["tto_optimised"] == pytest.approx(8 * (1 - rl4seg["validity_pct"] / 100))
    assert tto["validity_pct"] >= rl4seg["validity_pct"] and tto["test_time_settings"]["steps"] == 2
    # TENT + TTO: TENT's model (the one the tent row scored: the same invalid predictions) optimised against the
    # same reward network, and its cost includes the RL4Seg run that reward network comes from
    tent_row = json.loads((d / "seed_0" / "tent.json").read_text())
    tent_tto = json.loads((d / "seed_0" / "tent_tto.json").read_text())
    assert tent_tto["tto_optimised"] == pytest.approx(8 * (1 - tent_row["validity_pct"] / 100))
    assert tent_tto["test_time_settings"] == tto["test_time_settings"]
    assert tent_tto["minutes"] > rl4seg["minutes"]
    # self-training + TTO: the same self-training (seeded: the same pseudo-labels) and its invalid predictions
    st_row = json.loads((d / "seed_0" / "self_training.json").read_text())
    st_tto = json.loads((d / "seed_0" / "self_training_tto.json").read_text())
    assert st_tto["pseudo_labels_per_round"] == st_row["pseudo_labels_per_round"]
    assert st_tto["tto_optimised"] == pytest.approx(8 * (1 - st_row["validity_pct"] / 100))
    # each baseline adapted once and kept; its + TTO row counts that adaptation's minutes too
    assert sorted(p.name for p in (d / "seed_0" / "baselines").glob("*.pt")) == ["adabn.pt", "self_training.pt",
                                                                               "tent.pt"]
    assert st_tto["minutes"] > rl4seg["minutes"] + st_row["minutes"] * 0.5
    assert "TENT + TTO" in md


def test_benchmark_resumes_skipping_finished_results(quick_results, capsys):
    d = quick_results
    mtimes = {p: p.stat().st_mtime_ns for p in (d / "seed_0").glob("*.json")}
    kept = {p: p.stat().st_mtime_ns for p in (d / "seed_0" / "baselines").glob("*.pt")}
    rc = _script().main([*TINY, "--quick", "--results", str(d), "--st-epochs", "1", "--methods", *METHODS_RUN])
    assert rc == 0
    assert {p: p.stat().st_mtime_ns for p in (d / "seed_0").glob("*.json")} == mtimes  # nothing recomputed
    assert "every result already in" in capsys.readouterr().out
    # other test-time settings: only the test-time-optimised results are recomputed (from the same RL4Seg run)
    rc = _script().main([*TINY, "test_time.steps=1", "--quick", "--results", str(d), "--st-epochs", "1",
                         "--methods", *METHODS_RUN])
    assert rc == 0
    changed = {p.name for p in (d / "seed_0").glob("*.json") if p.stat().st_mtime_ns != mtimes[p]}
    assert changed == {"rl4seg_tto.json", "tent_tto.json", "self_training_tto.json"}
    assert {p: p.stat().st_mtime_ns for p in (d / "seed_0" / "baselines").glob("*.pt")} == kept  # not re-adapted
    assert json.loads((d / "seed_0" / "rl4seg_tto.json").read_text())["test_time_settings"]["steps"] == 1
    # --table-only runs nothing, lists what is missing and rewrites the tables from what has finished
    mtimes = {p: p.stat().st_mtime_ns for p in (d / "seed_0").glob("*.json")}
    rc = _script().main([*TINY, "test_time.steps=1", "--quick", "--results", str(d), "--seeds", "0", "1",
                         "--methods", "source_only", "adabn", "--table-only"])
    assert rc == 0
    assert {p: p.stat().st_mtime_ns for p in (d / "seed_0").glob("*.json")} == mtimes
    assert not (d / "seed_1").exists() and "source_only (seed 1), adabn (seed 1)" in capsys.readouterr().out
    with open(d / "results.csv") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["source_only", "adabn"]


def test_baseline_model_is_kept_and_made_again_for_other_settings(tmp_path):
    """A baseline's adapted model is made once per seed and reused (no target images needed); a kept model made
    with other settings of that baseline is not reused."""
    import dataclasses
    from types import SimpleNamespace

    from agents.networks import UNet
    from pipeline.baselines import AdaBNConfig

    config = load_config(ROOT / "configs" / "quick.yaml", TINY)
    bench = DABenchmark(config, tmp_path, seeds=[0], methods=["adabn"], adabn_config=AdaBNConfig(batch_size=4))
    torch.manual_seed(0)
    source, base = UNet(channels=(4, 8)).eval(), SimpleNamespace(device=torch.device("cpu"))
    calls = []

    def images():
        calls.append(1)
        return torch.rand(8, 32, 32).numpy()

    first, extra, minutes = bench._baseline("adabn", source, images, 0, base)
    assert bench.baseline_path("adabn", 0).is_file() and len(calls) == 1 and extra == {} and minutes >= 0
    again, _, kept_minutes = bench._baseline("adabn", source, images, 0, base)
    assert len(calls) == 1 and kept_minutes == minutes  # loaded, not adapted again
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    bench.adabn_config = dataclasses.replace(bench.adabn_config, batch_size=2)
    bench._baseline("adabn", source, images, 0, base)
    assert len(calls) == 2  # other settings: adapted again (and kept in place of the old model)
    bench._baseline("adabn", source, images, 1, base)
    assert len(calls) == 3 and bench.baseline_path("adabn", 1).is_file()  # another seed, its own model


def test_results_folder_of_another_config_is_refused(quick_results):
    other = load_config(ROOT / "configs" / "quick.yaml", [*TINY, "network.channels=[4, 8, 16]"])
    with pytest.raises(ValueError, match="another configuration.*network.channels"):
        DABenchmark(other, quick_results, seeds=[0], methods=["source_only"])


def test_results_made_before_a_key_existed_still_count(quick_results):
    """A key added to the library since the results were made, at its default (the old behaviour), does not make
    them another configuration; the same key set to something else does, and is named."""
    config = load_config(ROOT / "configs" / "quick.yaml", ["ppo.iterations=1", *TINY])  # what --quick ran
    path = quick_results / "config.yaml"
    text = path.read_text()
    stored = yaml.safe_load(text)
    del stored["reward_dataset"]["source"]["style"]
    path.write_text(yaml.safe_dump(stored, sort_keys=False))
    try:
        DABenchmark(config, quick_results, seeds=[0], methods=["source_only"])
        other = load_config(ROOT / "configs" / "quick.yaml", ["ppo.iterations=1", *TINY,
                                                                "reward_dataset.source.style=fourier"])
        with pytest.raises(ValueError, match="keys differing: reward_dataset.source.style"):
            DABenchmark(other, quick_results, seeds=[0], methods=["source_only"])
    finally:
        path.write_text(text)


def test_run_only_keys_do_not_make_another_configuration(quick_results):
    """Threads and progress bars change how a run is carried out, not its results: a folder made with other values
    of them (written before they were left out, too) is reused, so that --table-only needs no run-only overrides."""
    path = quick_results / "config.yaml"
    text = path.read_text()
    stored = yaml.safe_load(text)
    assert "num_threads" not in stored and "progress" not in stored
    path.write_text(yaml.safe_dump({"num_threads": 1, "progress": False, **stored}, sort_keys=False))  # older layout
    try:
        for overrides in (["num_threads=2", "progress=true"], ["num_threads=0"]):
            config = load_config(ROOT / "configs" / "quick.yaml", ["ppo.iterations=1", *TINY, *overrides])
            DABenchmark(config, quick_results, seeds=[0], methods=["source_only"])
    finally:
        path.write_text(text)


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown method.*tnet"):
        DABenchmark(load_config(None), tmp_path, methods=["tnet"])


def test_ablation_already_in_the_config_is_skipped():
    cfg = load_config(None, ["ppo.anchors=false"])
    assert "identical to rl4seg" in skip_reason(cfg, METHODS["rl4seg_no_anchors"])
    assert skip_reason(cfg, METHODS["rl4seg_no_kl"]) is None
    assert skip_reason(cfg, METHODS["tent"]) is None


@pytest.mark.parametrize("config", ["default.yaml", "paper.yaml", "quick.yaml", "camus.yaml"])
def test_every_rl4seg_variant_is_a_valid_config_of_the_shipped_configs(config, tmp_path):
    # the shape-AE ablation once failed on configs/default.yaml (test_time.fusion still read the auto-encoder)
    base = load_config(ROOT / "configs" / config)
    for method in METHODS.values():
        if method.kind == "rl4seg" and skip_reason(base, method) is None:
            cfg = method_config(base, method, 1, tmp_path / method.name)
            assert cfg.seed == 1 and cfg.run_dir == str(tmp_path / method.name)
    no_ae = method_config(base, METHODS["rl4seg_no_shape_ae"], 0, tmp_path)
    assert not no_ae.shape_ae.enabled and no_ae.test_time.fusion == "none" and no_ae.reward_net.fusion == "none"
    ceiling = METHODS["rl4seg_gt_reward_no_anchors"]
    cfg = method_config(base, ceiling, 0, tmp_path)
    assert cfg.oracle_reward and not cfg.ppo.anchors and ceiling.reads_target_labels
    refs = METHODS["rl4seg_true_refs"]
    cfg = method_config(base, refs, 0, tmp_path)
    assert cfg.oracle_references and not cfg.oracle_reward and refs.reads_target_labels
    refs_free = METHODS["rl4seg_true_refs_no_anchors"]
    cfg = method_config(base, refs_free, 0, tmp_path)
    assert cfg.oracle_references and not cfg.ppo.anchors and not cfg.oracle_reward and refs_free.reads_target_labels


def test_summary_mean_std_gap_and_bold_best(tmp_path):
    rows = []
    for seed, (src, orc, ada) in enumerate([(0.5, 0.9, 0.6), (0.7, 0.9, 0.8)]):
        for method, d in (("source_only", src), ("oracle", orc), ("adabn", ada)):
            rows.append({"method": method, "seed": seed, "minutes": 1.0, "dice_lv": d, "dice_myo": d,
                         "dice_epi": d, "dice_mean": d, "hd_lv": 10 * (1 - d), "hd_myo": math.nan,
                         "hd_epi": 5.0, "validity_pct": 100 * d})
    summary = summarize(rows)
    by = {e["method"]: e for e in summary}
    assert by["adabn"]["dice_lv_mean"] == pytest.approx(0.7)
    assert by["adabn"]["dice_lv_std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.6, 0.8
    assert math.isnan(by["adabn"]["hd_myo_mean"])
    assert by["adabn"]["gap_closed"] == pytest.approx((0.7 - 0.6) / (0.9 - 0.6))
    write_tables(rows, summary, tmp_path, seeds=[0, 1])
    md = (tmp_path / "results.md").read_text()
    adabn_line = next(line for line in md.splitlines() if line.startswith("| AdaBN"))
    oracle_line = next(line for line in md.splitlines() if line.startswith("| oracle"))
    assert "**0.700 ± 0.141**" in adabn_line and "**" not in oracle_line.split("|")[2]  # oracle never bold
    assert "33%" in adabn_line


def test_suites_are_valid_disjoint_presets_and_the_held_out_one_has_a_new_family():
    from pipeline.benchmark_da import SUITES
    from rl4seg_env.data.synthetic import available_presets

    dev, held = set(SUITES["development"]), set(SUITES["held-out"])
    assert dev | held <= set(available_presets()) and not dev & held
    assert {"default_target", "target_artifact", "target_hypertrophy_artifact", "target_mild"} <= held
    assert "target_clutter" in dev  # the artefact family has a development shift of its own


def test_suite_table_has_every_shift_and_the_mean_over_shifts(tmp_path):
    from pipeline.benchmark_da import write_suite_tables

    def entry(method, dice, valid):
        return {"method": method, "n_seeds": 3, "dice_mean_mean": dice, "dice_mean_std": 0.01,
                "validity_pct_mean": valid, "dice_mean_by_seed": {0: dice - 0.01, 1: dice, 2: dice + 0.01}}

    per_shift = {"a": [entry("tent", 0.80, 70.0), entry("rl4seg", 0.90, 90.0)],
                 "b": [entry("tent", 0.60, 50.0), entry("rl4seg", 0.70, 100.0)]}
    text = write_suite_tables(per_shift, tmp_path, "held-out")
    line = next(x for x in text.splitlines() if x.startswith("| RL4Seg |"))
    assert "0.90" in line and "0.70" in line and "**0.800 / 95%**" in line
    # IQM over the 3 seeds x 2 shifts (0.69, 0.70, 0.71, 0.89, 0.90, 0.91 -> middle half 0.71, 0.89) and its interval
    assert "0.800 [" in line.split("|")[-2]
    assert (tmp_path / "suite.csv").read_text().count("\n") == 5  # header + 2 methods x 2 shifts
