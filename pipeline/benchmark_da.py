"""Domain-adaptation benchmark: RL4Seg, its ablations and the baselines on one source -> target setting.

Every method starts from the same source-pretrained actor (one pretraining per seed, shared), uses the
same network and is scored by the same evaluation (:meth:`pipeline.loop.RL4SegRun.evaluate`: target test
split, largest component, Dice / Hausdorff for LV, MYO and epicardium, anatomical validity).

Results folder layout::

    config.yaml                   the loop configuration every method shares (checked on resume)
    seed_S/base/                  RL4Seg run dir holding the shared phases: actor_source.pt, oracle, shape AE
    seed_S/<method>.json          one finished (method, seed) result; present = skipped on the next call
    seed_S/baselines/<kind>.pt    the adapted model of AdaBN / TENT / self-training (with its settings and minutes),
                                  made once per seed and reused by that baseline's + TTO row
    seed_S/<rl4seg method>/       RL4Seg run dir of that method (resumable by RL4SegRun itself)
    results.csv, results.md       mean +- std over seeds per method; per_seed.csv: one row per (method, seed)
    results.png                   bar chart (Dice LV / MYO / epi and validity %, mean +- std)

A benchmark killed at any point restarts where it stopped: finished (method, seed) results are skipped
and an interrupted RL4Seg run resumes after its last completed iteration.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agents.networks import load_unet, save_unet
from pipeline.aggregate import iqm, plot_performance_profiles, stratified_bootstrap_ci
from pipeline.baselines import (AdaBNConfig, SelfTrainingConfig, SelfTrainingResult, TentConfig, adabn,
                                self_training, tent)
from pipeline.config import LoopConfig, apply_overrides, config_to_dict, config_to_yaml
from pipeline.loop import RL4SegRun, load_reward_model
from pipeline.run_dir import RunDirectory
from pipeline.tables import markdown_table, rows_to_csv
from reward.anatomy import validity_batch
from reward.correctors import Corrector
from rl4seg_env.data.base import load_images
from rl4seg_env.io import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class Method:
    """One row of the benchmark.

    :param name: key used on the command line and in file names.
    :param label: row label in the tables and the chart.
    :param kind: ``"source_only"``, ``"oracle"``, ``"adabn"``, ``"tent"``, ``"self_training"``, ``"rl4seg"``, or one
        of :data:`TTO_KINDS`: ``"rl4seg_tto"``, ``"adabn_tto"``, ``"tent_tto"``, ``"self_training_tto"`` (that model, then
        :mod:`agents.test_time` against the reward network of the ``rl4seg`` run of the same seed).
    :param overrides: ``key=value`` loop-config overrides of an RL4Seg ablation.
    :param description: one line for the docs and the Markdown notes.
    :param reads_target_labels: trains with target labels (a reference, not an unsupervised method).
    """

    name: str
    label: str
    kind: str
    overrides: tuple[str, ...] = ()
    description: str = ""
    reads_target_labels: bool = False


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("source_only", "source only", "source_only", description="source-pretrained actor, no adaptation"),
    Method("oracle", "oracle (target labels)", "oracle",
           description="same network and budget trained on target labels (upper bound)", reads_target_labels=True),
    Method("adabn", "AdaBN", "adabn", description="BatchNorm statistics re-estimated on target images"),
    Method("tent", "TENT", "tent", description="entropy minimisation of the normalisation affine parameters"),
    Method("self_training", "self-training", "self_training",
           description="iterative pseudo-label fine-tuning, anatomically valid predictions only"),
    Method("rl4seg", "RL4Seg", "rl4seg", description="this package (the loop config as given)"),
    Method("rl4seg_tto", "RL4Seg + TTO", "rl4seg_tto",
           description="RL4Seg's final actor, with test-time optimisation of its invalid predictions (RL4Seg3D)"),
    Method("adabn_tto", "AdaBN + TTO", "adabn_tto",
           description="AdaBN's model with the same test-time optimisation (the RL4Seg run's reward network)"),
    Method("tent_tto", "TENT + TTO", "tent_tto",
           description="TENT's model with the same test-time optimisation (the RL4Seg run's reward network)"),
    Method("self_training_tto", "self-training + TTO", "self_training_tto",
           description="self-training's model with the same test-time optimisation (the RL4Seg run's reward network)"),
    Method("rl4seg_no_kl", "RL4Seg w/o KL", "rl4seg", ("ppo.kl_coef_base=0",),
           "no KL term to the reference policy (the actor RL starts from, ppo.init)"),
    Method("rl4seg_no_anchors", "RL4Seg w/o anchors", "rl4seg", ("ppo.anchors=false",),
           "no pseudo-label anchors in the RL batch"),
    # the reward fusions read the shape auto-encoder, so the ablation turns them off with it
    Method("rl4seg_no_shape_ae", "RL4Seg w/o shape AE", "rl4seg",
           ("shape_ae.enabled=false", "reward_net.fusion=none", "test_time.fusion=none"),
           "morphological correction only; no shape-prior fusion of the reward"),
    Method("rl4seg_gt_reward", "RL4Seg GT reward (target labels)", "rl4seg", ("oracle_reward=true",),
           "ground-truth reward instead of the learned one", reads_target_labels=True),
    Method("rl4seg_true_refs", "RL4Seg true references (target labels)", "rl4seg", ("oracle_references=true",),
           "the learned reward trained on the same samples with true labels as references: the ceiling of better "
           "references", reads_target_labels=True),
    # the anchors (accepted pseudo-labels as actions of reward 1) pull against an exact reward where they are wrong:
    # without them the row is the reach of the RL step itself (docs/benchmarks.md, held-out suite)
    Method("rl4seg_gt_reward_no_anchors", "RL4Seg GT reward w/o anchors (target labels)", "rl4seg",
           ("oracle_reward=true", "ppo.anchors=false"),
           "ground-truth reward and no pseudo-label anchors: the RL step's ceiling", reads_target_labels=True),
    # the best any label-free reference construction could give the learned reward in the default loop
    Method("rl4seg_true_refs_no_anchors", "RL4Seg true references w/o anchors (target labels)", "rl4seg",
           ("oracle_references=true", "ppo.anchors=false"),
           "true labels as the reward set's references and no pseudo-label anchors: the ceiling of better references",
           reads_target_labels=True),
)}

#: kinds whose model is optimised at test time against the reward network of the seed's ``rl4seg`` run: their
#: results record the test-time settings and are recomputed when those change
TTO_KINDS = ("rl4seg_tto", "adabn_tto", "tent_tto", "self_training_tto")
#: kinds that adapt the source actor on the unlabelled target images (:meth:`DABenchmark._baseline`); ``<kind>_tto``
#: optimises that model at test time
BASELINE_KINDS = ("adabn", "tent", "self_training")

#: metrics of the tables, in display order, with their headers; higher is better except Hausdorff
METRICS: dict[str, str] = {
    "dice_lv": "Dice LV", "dice_myo": "Dice MYO", "dice_epi": "Dice epi", "dice_mean": "Dice LV+MYO",
    "hd_lv": "HD LV (mm)", "hd_myo": "HD MYO (mm)", "hd_epi": "HD epi (mm)", "hd95_lv": "HD95 LV (mm)",
    "hd95_myo": "HD95 MYO (mm)", "hd95_epi": "HD95 epi (mm)", "masd_lv": "MASD LV (mm)", "masd_myo": "MASD MYO (mm)",
    "masd_epi": "MASD epi (mm)", "validity_pct": "valid %",
}
#: top-level config keys that say how a run is carried out (threads, progress bars), not what it computes: a results
#: folder made with other values of these holds results of the same configuration
RUN_ONLY_KEYS = ("num_threads", "progress")

LOWER_IS_BETTER = ("hd_lv", "hd_myo", "hd_epi", "hd95_lv", "hd95_myo", "hd95_epi", "masd_lv", "masd_myo", "masd_epi")


def method_config(base: LoopConfig, method: Method, seed: int, run_dir: Path) -> LoopConfig:
    """The loop config of one (method, seed): ``base`` with the method's overrides, the seed and run dir
    (and no oracle inside the run: the benchmark trains it once per seed)."""
    return apply_overrides(base, [*method.overrides, f"seed={seed}", f"run_dir={run_dir}", "evaluation.oracle=false"])


def skip_reason(base: LoopConfig, method: Method) -> str | None:
    """Why ``method`` cannot run (or would duplicate ``rl4seg``) under ``base``; None when it can run."""
    if method.kind != "rl4seg" or not method.overrides:
        return None
    fields = {f.name for f in dataclasses.fields(LoopConfig)}
    for item in method.overrides:
        key, raw = item.split("=", 1)
        if key.split(".")[0] not in fields:
            return f"this version of pipeline.loop has no config key '{key}'"
    tree = config_to_dict(base)
    same = True
    for item in method.overrides:
        key, raw = item.split("=", 1)
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        same &= node == yaml.safe_load(raw)
    if same:
        return f"the config already sets {', '.join(method.overrides)}: identical to rl4seg"
    return None


def config_differences(stored: dict, current: dict, defaults: Any = None, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (``config_to_dict``), ``stored`` being the one
    results were made with. A key absent from ``stored`` whose current value is its library default (``defaults``,
    the tree of ``LoopConfig()``) was added to the library since, with a default that keeps the old behaviour, and
    does not count."""
    out = []
    for k in sorted(set(stored) | set(current)):
        s, c = stored.get(k), current.get(k)
        default = defaults.get(k, ...) if isinstance(defaults, dict) else ...
        if k not in stored and c == default:  # added to the library since, at its default
            continue
        if isinstance(s, dict) and isinstance(c, dict):
            out += config_differences(s, c, default, f"{prefix}{k}.")
        elif s != c:
            out.append(f"{prefix}{k}")
    return out


class DABenchmark:
    """Run and tabulate the domain-adaptation benchmark (module docstring).

    :param config: loop configuration shared by every method (data, network, pretraining, RL4Seg budget);
        its ``seed`` and ``run_dir`` are replaced per (method, seed).
    :param results_dir: output folder (created). A folder from an earlier call with a different
        configuration is refused, so that skipped results stay comparable.
    :param seeds: training seeds (default ``(0, 1, 2)``); the data realisation does not change with them.
    :param methods: names from :data:`METHODS` (default: all, in that order).
    :param adabn_config: :class:`~pipeline.baselines.AdaBNConfig` (default ``AdaBNConfig()``).
    :param tent_config: :class:`~pipeline.baselines.TentConfig` (default ``TentConfig()``); its seed is set per seed.
    :param self_training_config: :class:`~pipeline.baselines.SelfTrainingConfig` (default: RL4Seg's number of
        iterations and Dice threshold; its validity filter is the run's anatomical criteria); its seed is set
        per seed.
    :param command: the command line that produced the results, quoted in results.md (optional).
    """

    def __init__(self, config: LoopConfig, results_dir: str | Path, seeds: tuple[int, ...] | list[int] = (0, 1, 2),
                 methods: tuple[str, ...] | list[str] | None = None, adabn_config: AdaBNConfig | None = None,
                 tent_config: TentConfig | None = None,
                 self_training_config: SelfTrainingConfig | None = None, command: str | None = None) -> None:
        methods = list(METHODS) if methods is None else list(methods)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; expected names among {', '.join(METHODS)}")
        if not seeds:
            raise ValueError("at least one seed is needed")
        self.config, self.seeds, self.methods = config, [int(s) for s in seeds], methods
        self.results_dir = Path(results_dir)
        self.adabn_config = adabn_config or AdaBNConfig(batch_size=config.evaluation.batch_size)
        self.tent_config = tent_config or TentConfig()
        self.self_training_config = self_training_config or SelfTrainingConfig(
            iterations=config.ppo.iterations, valid_dice_threshold=config.reward_dataset.valid_dice_threshold)
        self.skipped: dict[str, str] = {m: r for m in methods if (r := skip_reason(config, METHODS[m]))}
        self.command = command
        self._check_results_dir()

    # --- bookkeeping ----------------------------------------------------------------------------------
    def _shared_config(self) -> dict[str, Any]:
        tree = config_to_dict(self.config)
        # test_time changes only the rows of TTO_KINDS, and each of those records the settings it used
        tree.pop("seed"), tree.pop("run_dir"), tree.pop("test_time")
        for key in RUN_ONLY_KEYS:
            tree.pop(key)
        return tree

    def _check_results_dir(self) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / "config.yaml"
        shared = self._shared_config()
        if path.is_file():
            # folders written before RUN_ONLY_KEYS was left out still store them
            stored = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in RUN_ONLY_KEYS}
            diff = config_differences(stored, shared, config_to_dict(LoopConfig()))
            if diff:
                raise ValueError(f"{self.results_dir} holds results of another configuration (keys differing: "
                                 f"{', '.join(diff)}); choose another results folder or restore that config")
        else:
            atomic_write_text(path, yaml.safe_dump(shared, sort_keys=False))

    def result_path(self, method: str, seed: int) -> Path:
        return self.results_dir / f"seed_{seed}" / f"{method}.json"

    def finished(self, method: str, seed: int) -> bool:
        """The (method, seed) result exists (for :data:`TTO_KINDS`: made with the current test_time settings)."""
        path = self.result_path(method, seed)
        if not path.is_file():
            return False
        if METHODS[method].kind in TTO_KINDS:
            stored = json.loads(path.read_text()).get("test_time_settings")
            return stored == config_to_dict(self.config)["test_time"]
        return True

    # --- running --------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run every missing (method, seed), write the tables and the chart; returns the per-seed rows."""
        for method, reason in self.skipped.items():
            print(f"[benchmark] skipping {method}: {reason}", flush=True)
        for seed in self.seeds:
            todo = [m for m in self.methods if m not in self.skipped and not self.finished(m, seed)]
            if not todo:
                print(f"[benchmark] seed {seed}: every result already in {self.results_dir}", flush=True)
                continue
            self._run_seed(seed, todo)
            self.write()
        return self.write()

    def _run_seed(self, seed: int, todo: list[str]) -> None:
        base_dir = self.results_dir / f"seed_{seed}" / "base"
        if RunDirectory(base_dir).state_path.is_file():
            base = RL4SegRun(resume=True, run_dir=base_dir)
        else:
            base = RL4SegRun(method_config(self.config, METHODS["rl4seg"], seed, base_dir))
        try:
            self._run_methods(seed, todo, base)
        finally:  # the base run's write lock, released now rather than whenever the object is collected
            base.dirs.unlock()

    def _run_methods(self, seed: int, todo: list[str], base) -> None:
        """The missing methods of one seed, on the shared ``base`` run (source model, shape AE, test set)."""
        t0 = time.time()
        source_path = base.pretrain_source()
        pretrain_path = base.dirs.root / "pretrain_minutes.json"
        if not pretrain_path.is_file():  # first time only: a resumed base run did not pretrain now
            atomic_write_text(pretrain_path, json.dumps({"minutes": (time.time() - t0) / 60}))
        source, _ = load_unet(str(source_path), map_location=base.device)
        target: list[np.ndarray] = []  # loaded on first need: a baseline whose model is kept needs no images

        def target_images() -> np.ndarray:
            if not target:  # unlabelled: RL4SegRun builds target_train with with_labels=False
                target.append(load_images(base.datasets["target_train"], progress=self.config.progress,
                                          desc="target train images")[0])
            return target[0]

        source_scores: dict[str, float] | None = None
        for name in todo:
            method = METHODS[name]
            print(f"[benchmark] seed {seed}: {method.label}", flush=True)
            torch.manual_seed(seed)
            t0 = time.time()
            extra: dict[str, Any] = {}
            if method.kind == "rl4seg" or method.kind in TTO_KINDS:
                if source_scores is None:
                    # the selection scores make the source model a candidate of the label-free selection
                    source_scores = {**base.evaluate(source), **base.selection_scores(source)}
                if method.kind == "rl4seg":
                    scores = self._run_rl4seg(method, seed, base, source_scores)
                    minutes = (time.time() - t0) / 60
                else:
                    # the cost of a test-time-optimised row includes the RL4Seg run its reward network comes from
                    # (and the baseline's adaptation, for the baselines' rows)
                    minutes = self._rl4seg_minutes(seed, base, source_scores)
                    actor = None
                    if method.kind != "rl4seg_tto":
                        actor, extra, adapt_minutes = self._baseline(method.kind.removesuffix("_tto"), source,
                                                                     target_images, seed, base)
                        minutes += adapt_minutes
                    t0 = time.time()
                    scores = {**self._test_time(seed, base, actor), **extra}
                    minutes += (time.time() - t0) / 60
                self._save(name, seed, scores, minutes)
                continue
            minutes = 0.0  # a baseline's row counts its adaptation's minutes, also when its model was kept
            if method.kind == "source_only":
                model = source
            elif method.kind == "oracle":
                model, _ = load_unet(str(base.train_oracle()), map_location=base.device)
            elif method.kind in BASELINE_KINDS:
                model, extra, minutes = self._baseline(method.kind, source, target_images, seed, base)
                t0 = time.time()
            else:
                raise ValueError(f"method {name}: unknown kind {method.kind!r}")
            scores = base.evaluate(model)
            minutes += (time.time() - t0) / 60
            if method.kind == "source_only":
                source_scores = {**scores, **base.selection_scores(source)}
            self._save(name, seed, {**scores, **extra}, minutes)

    def baseline_path(self, kind: str, seed: int) -> Path:
        """Where the adapted model of baseline ``kind`` for ``seed`` is kept."""
        return self.results_dir / f"seed_{seed}" / "baselines" / f"{kind}.pt"

    def _baseline_settings(self, kind: str, seed: int) -> dict[str, Any]:
        config = {"adabn": self.adabn_config, "tent": self.tent_config,
                  "self_training": self.self_training_config}[kind]
        fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}  # progress bars: not a setting
        # JSON round trip: plain values (tuples as lists) that load with weights_only=True and compare equal
        return json.loads(json.dumps({"kind": kind, "seed": seed, "config": fields}, default=str))

    def _baseline(self, kind: str, source: torch.nn.Module, target_images, seed: int,
                  base) -> tuple[torch.nn.Module, dict[str, Any], float]:
        """The ``"adabn"``, ``"tent"`` or ``"self_training"`` adaptation of the source actor to the unlabelled target
        images (``target_images()`` returns them), what the method records beside its scores, and the minutes the
        adaptation took. The model is kept in :meth:`baseline_path` and reused, by the baseline's row and its
        + TTO row, as long as it was made with the same settings (the baseline's config and the seed)."""
        path, settings = self.baseline_path(kind, seed), self._baseline_settings(kind, seed)
        if path.is_file():
            model, meta = load_unet(str(path), map_location=base.device)
            if meta.get("settings") == settings:
                return model, meta["extra"], float(meta["minutes"])
            print(f"[benchmark] {path}: made with other settings; adapting again", flush=True)
        t0 = time.time()
        model, extra = self._adapt(kind, source, target_images(), seed, base)
        minutes = (time.time() - t0) / 60
        path.parent.mkdir(parents=True, exist_ok=True)
        save_unet(model, str(path), settings=settings, extra=json.loads(json.dumps(extra, default=float)),
                  minutes=minutes)
        return model, extra, minutes

    def _adapt(self, kind: str, source: torch.nn.Module, target_images: np.ndarray, seed: int,
               base) -> tuple[torch.nn.Module, dict[str, Any]]:
        if kind == "adabn":
            return adabn(source, target_images, self.adabn_config, base.device), {}
        if kind == "tent":
            cfg = dataclasses.replace(self.tent_config, seed=seed, progress=self.config.progress)
            return tent(source, target_images, cfg, base.device), {}
        cfg = dataclasses.replace(self.self_training_config, seed=seed, progress=self.config.progress)
        # RL4Seg's pseudo-label filter: validity + Dice with the corrected map (shape AE when enabled)
        record = SelfTrainingResult()
        corrector = Corrector(base.train_shape_ae(), n_classes=base.n_classes)
        model = self_training(source, target_images, cfg, base.device, result=record, corrector=corrector,
                              validity_fn=partial(validity_batch, criteria=base.criteria))
        return model, {"pseudo_labels_per_round": record.accepted}

    def _rl4seg_minutes(self, seed: int, base, source_scores: dict[str, float]) -> float:
        """The training minutes of the seed's ``rl4seg`` run, which is run (and its result saved) first when it has
        not finished: the test-time-optimised rows use its reward network."""
        path = self.result_path("rl4seg", seed)
        if not path.is_file():
            t0 = time.time()
            scores = self._run_rl4seg(METHODS["rl4seg"], seed, base, source_scores)
            self._save("rl4seg", seed, scores, (time.time() - t0) / 60)
        return json.loads(path.read_text())["minutes"]

    def _run_rl4seg(self, method: Method, seed: int, base, source_scores: dict[str, float]) -> dict[str, float]:
        """One RL4Seg run seeded with the shared source pretraining (and shape auto-encoder)."""
        run_dir = self.results_dir / f"seed_{seed}" / method.name
        dirs = RunDirectory(run_dir)
        if not dirs.state_path.is_file():
            cfg = method_config(self.config, method, seed, run_dir)
            dirs.create(config_to_yaml(cfg))
            shutil.copy(base.dirs.source_actor, dirs.source_actor)
            if cfg.shape_ae.enabled:
                base.train_shape_ae()  # once per seed, shared by the RL4Seg methods that use it
                shutil.copy(base.dirs.shape_ae, dirs.shape_ae)
            # the source phase is done (shared) and its evaluation is the one already made on the same test set
            dirs.save_state({"completed_iterations": 0, "source_done": True, "baselines_done": True,
                             "rows": [{"iteration": 0, "model": "source-only", **source_scores}]})
            dirs.unlock()  # the run below takes it
        rows = RL4SegRun(resume=True, run_dir=run_dir).run()
        # the model the run selected without labels (the "selected" row; its iteration is selected_iteration)
        selected = [r for r in rows if r.get("iteration") == "selected" and not r.get("test_time")]
        if not selected:
            raise RuntimeError(f"{run_dir}: the RL4Seg run finished without a selected model")
        return {k: v for k, v in selected[-1].items() if k not in ("iteration", "model", "minutes")}

    def _test_time(self, seed: int, base, actor: torch.nn.Module | None = None) -> dict[str, Any]:
        """Test-time optimisation of ``actor`` (default: the finished ``rl4seg`` run's selected actor) against that
        run's last reward network."""
        dirs = RunDirectory(self.results_dir / f"seed_{seed}" / "rl4seg")
        done = dirs.last_completed_iteration()
        if actor is None:
            selected = [r for r in dirs.load_state()["rows"] if r.get("iteration") == "selected"]
            chosen = int(selected[-1]["selected_iteration"]) if selected else done
            actor, _ = load_unet(str(dirs.actor(chosen)), map_location=base.device)
        reward = load_reward_model(dirs, done, self.config.reward_net.ensemble, base.device)
        scores = base.evaluate_tto(actor, reward, self.config.test_time)
        return {**scores, "test_time_settings": config_to_dict(self.config)["test_time"]}

    def _save(self, method: str, seed: int, scores: dict[str, Any], minutes: float) -> None:
        row = {"method": method, "seed": seed, "minutes": minutes, **scores}
        path = self.result_path(method, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(row, indent=1, default=float))
        print(f"[benchmark] seed {seed} {METHODS[method].label}: Dice LV+MYO {scores.get('dice_mean', math.nan):.3f}, "
              f"validity {scores.get('validity_pct', math.nan):.1f}%  ({minutes:.1f} min)", flush=True)

    # --- tables ---------------------------------------------------------------------------------------
    def load_rows(self) -> list[dict]:
        """Every finished (method, seed) result of the selected methods and seeds, in method order."""
        rows = []
        for method in self.methods:
            for seed in self.seeds:
                path = self.result_path(method, seed)
                if path.is_file():
                    rows.append(json.loads(path.read_text()))
        return rows

    def write(self) -> list[dict]:
        """(Re)write results.csv, results.md, per_seed.csv and results.png from the finished results."""
        rows = self.load_rows()
        summary = summarize(rows)
        pretrain = [json.loads(p.read_text())["minutes"] for s in self.seeds
                    if (p := self.results_dir / f"seed_{s}" / "base" / "pretrain_minutes.json").is_file()]
        write_tables(rows, summary, self.results_dir, skipped=self.skipped, seeds=self.seeds, command=self.command,
                     pretrain_minutes=pretrain)
        if summary:
            plot_results(summary, self.results_dir / "results.png")
            profiles = {e["label"]: np.array([v for v in e["dice_mean_by_seed"].values() if math.isfinite(v)])
                        for e in summary}
            plot_performance_profiles({k: v for k, v in profiles.items() if len(v)},
                                      self.results_dir / "profiles.png", xlabel="Dice LV+MYO (target test)",
                                      title="performance profiles (runs = seeds)")
        return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per method: ``n_seeds``, ``<metric>_mean`` and ``<metric>_std`` (sample std, NaN for one seed) of
    every metric of :data:`METRICS` and of ``minutes``, plus ``gap_closed`` (share of the source -> oracle
    Dice LV+MYO gap closed) when both references are present."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "label": METHODS[method].label if method in METHODS else method,
                                 "n_seeds": len(mine), "seeds": " ".join(str(r["seed"]) for r in mine)}
        for key in (*METRICS, "minutes"):
            values = np.array([r.get(key, math.nan) for r in mine], dtype=float)
            finite = values[np.isfinite(values)]
            entry[f"{key}_mean"] = float(finite.mean()) if len(finite) else math.nan
            entry[f"{key}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
        # per seed, for the interquartile mean and its bootstrap interval
        entry["dice_mean_by_seed"] = {int(r["seed"]): float(r.get("dice_mean", math.nan)) for r in mine}
        out.append(entry)
    ref = {e["method"]: e["dice_mean_mean"] for e in out}
    if "source_only" in ref and "oracle" in ref and ref["oracle"] > ref["source_only"]:
        for e in out:
            e["gap_closed"] = (e["dice_mean_mean"] - ref["source_only"]) / (ref["oracle"] - ref["source_only"])
    return out


#: the shift suites of docs/protocol.md: settings may be tuned on the development shifts only; the held-out
#: shifts (one new shift family, one mild shift where adapting can only harm) are for reporting
SUITES: dict[str, tuple[str, ...]] = {
    "development": ("target_contrast", "target_speckle", "target_shape", "target_clutter"),
    "held-out": ("default_target", "target_artifact", "target_hypertrophy_artifact", "target_mild"),
}


def write_suite_tables(per_shift: dict[str, list[dict]], results_dir: Path, suite: str,
                       command: str | None = None) -> str:
    """``suite.md`` / ``suite.csv`` in ``results_dir``: per method, Dice LV+MYO and validity on every shift
    (mean over seeds) and the mean over shifts. ``per_shift``: shift -> :func:`summarize` entries.

    :return: the Markdown text.
    """
    methods = list(dict.fromkeys(e["method"] for entries in per_shift.values() for e in entries))
    shifts = list(per_shift)
    rows, csv_rows = [], []
    for method in methods:
        cells, dice, valid = [], [], []
        for shift in shifts:
            e = next((x for x in per_shift[shift] if x["method"] == method), None)
            if e is None:
                cells.append("-")
                continue
            dice.append(e["dice_mean_mean"])
            valid.append(e["validity_pct_mean"])
            cells.append(f"{_cell(e['dice_mean_mean'], e['dice_mean_std'], 'dice_mean')} / "
                         f"{e['validity_pct_mean']:.0f}%")
            csv_rows.append({"method": method, "shift": shift, "n_seeds": e["n_seeds"],
                             "dice_mean": e["dice_mean_mean"], "dice_mean_std": e["dice_mean_std"],
                             "validity_pct": e["validity_pct_mean"]})
        complete = len(dice) == len(shifts)
        mean = f"**{np.mean(dice):.3f} / {np.mean(valid):.0f}%**" if complete else "(incomplete)"
        label = METHODS[method].label if method in METHODS else method
        rows.append([label, *cells, mean, _suite_iqm(per_shift, method) if complete else "-"])
    text = (f"# Domain adaptation, {suite} suite\n\n" + (f"`{command}`\n\n" if command else "")
            + markdown_table(["method", *shifts, "mean over shifts", "IQM [95% CI]"], rows,
                             "l" + "r" * (len(shifts) + 2))
            + "\nEach cell: Dice LV+MYO (mean ± std over seeds) / anatomical validity, target test split. IQM: "
              "interquartile mean of Dice LV+MYO over every (seed, shift), with its 95% stratified-bootstrap "
              "interval (seeds resampled within each shift; Agarwal et al. 2021).\n")
    atomic_write_text(results_dir / "suite.md", text)
    atomic_write_text(results_dir / "suite.csv", rows_to_csv(csv_rows))
    return text


def _suite_iqm(per_shift: dict[str, list[dict]], method: str) -> str:
    """IQM [95% CI] of the method's Dice LV+MYO over the (seeds common to every shift) x shifts array."""
    by_shift = [next(e for e in entries if e["method"] == method).get("dice_mean_by_seed") for entries in
                per_shift.values()]
    if not all(by_shift):
        return "-"
    seeds = sorted(set.intersection(*(set(b) for b in by_shift)))
    scores = np.array([[b[seed] for b in by_shift] for seed in seeds], dtype=float)
    if not seeds or not np.isfinite(scores).all():
        return "-"
    return stratified_bootstrap_ci(scores, iqm).format()


def _cell(mean: float, std: float, key: str) -> str:
    if not math.isfinite(mean):
        return "-"
    digits = 1 if key.startswith(("hd_", "hd95_", "masd_")) or key == "validity_pct" else 2 if key == "minutes" else 3
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def write_tables(rows: list[dict], summary: list[dict], results_dir: Path, skipped: dict[str, str] | None = None,
                 seeds: list[int] | None = None, command: str | None = None,
                 pretrain_minutes: list[float] | None = None) -> None:
    """results.csv (summary), per_seed.csv and results.md (mean ± std; best adaptation method in bold)."""
    flat = [{k: v for k, v in e.items() if k != "dice_mean_by_seed"} for e in summary]
    atomic_write_text(results_dir / "results.csv", rows_to_csv(flat) if flat else "")
    atomic_write_text(results_dir / "per_seed.csv", rows_to_csv(rows) if rows else "")

    # bold the best unsupervised method per column (not the references that train on target labels)
    contenders = [e for e in summary if not (e["method"] in METHODS and METHODS[e["method"]].reads_target_labels)]
    best: dict[str, str] = {}
    for key in METRICS:
        scored = [e for e in contenders if math.isfinite(e[f"{key}_mean"])]
        if scored:
            pick = min if key in LOWER_IS_BETTER else max
            best[key] = pick(scored, key=lambda e: e[f"{key}_mean"])["method"]
    has_gap = any("gap_closed" in e for e in summary)
    header = ["method", *METRICS.values(), *(["gap closed"] if has_gap else []), "Dice LV+MYO IQM [95% CI]", "seeds",
              "min / seed"]
    table = []
    for e in summary:
        cells = [e["label"]]
        for key in METRICS:
            text = _cell(e[f"{key}_mean"], e[f"{key}_std"], key)
            cells.append(f"**{text}**" if best.get(key) == e["method"] else text)
        if has_gap:
            gap = e.get("gap_closed", math.nan)
            cells.append(f"{100 * gap:.0f}%" if math.isfinite(gap) else "-")
        by_seed = [v for v in e.get("dice_mean_by_seed", {}).values() if math.isfinite(v)]
        cells += [stratified_bootstrap_ci(by_seed, iqm).format() if by_seed else "-", str(e["n_seeds"]),
                  _cell(e["minutes_mean"], math.nan, "minutes")]
        table.append(cells)
    seeds = list(seeds or sorted({r["seed"] for r in rows}))
    spread = f"Mean ± sample std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else \
        f"Single seed ({seeds[0] if seeds else '-'}), no std"
    notes = ["", f"{spread} (target test split). Bold: best method per column among those that never read "
             "target labels (not the oracle, not the GT-reward ablation). HD in mm; valid % = share of anatomically "
             "valid predictions. 'min / seed': wall time of the method's own training (adaptation; for the oracle "
             "its supervised training), without the source pretraining all methods share."]
    if pretrain_minutes:
        notes.append(f"Shared source pretraining: {np.mean(pretrain_minutes):.2f} min per seed.")
    if has_gap:
        notes.append("Gap closed = (Dice LV+MYO - source only) / (oracle - source only).")
    notes.append("IQM: interquartile mean of Dice LV+MYO over seeds with its 95% bootstrap interval (Agarwal et al. "
                 "2021; with 3 seeds it is the median and the interval spans the seeds).")
    if command:
        notes.append(f"Produced by `{command}`.")
    for method, reason in (skipped or {}).items():
        notes.append(f"- `{method}` not run: {reason}.")
    text = markdown_table(header, table, "l" + "r" * (len(header) - 1)) + "\n".join(notes) + "\n"
    atomic_write_text(results_dir / "results.md", text)


def plot_results(summary: list[dict], path: Path) -> None:
    """Bar chart: Dice LV / MYO / epi per method (left) and validity % (right), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e["label"] for e in summary]
    x = np.arange(len(summary))
    fig, (ax_dice, ax_valid) = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(summary) + 4), 4.5),
                                            gridspec_kw={"width_ratios": [3, 1.4]})
    width = 0.26
    for k, key in enumerate(("dice_lv", "dice_myo", "dice_epi")):
        means = np.array([e[f"{key}_mean"] for e in summary])
        stds = np.nan_to_num(np.array([e[f"{key}_std"] for e in summary]))
        ax_dice.bar(x + (k - 1) * width, means, width, yerr=stds, capsize=2, label=METRICS[key])
    ax_dice.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax_dice.set_ylim(0, 1)
    ax_dice.set_ylabel("Dice (target test)")
    ax_dice.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax_dice.grid(axis="y", alpha=0.3)
    ax_valid.bar(x, [e["validity_pct_mean"] for e in summary],
                 yerr=np.nan_to_num([e["validity_pct_std"] for e in summary]), capsize=2, color="tab:gray")
    ax_valid.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax_valid.set_ylim(0, 100)
    ax_valid.set_ylabel("anatomically valid (%)")
    ax_valid.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = __import__("io").BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["SUITES", "write_suite_tables", "DABenchmark", "LOWER_IS_BETTER", "METHODS", "METRICS", "Method", "method_config", "plot_results",
           "skip_reason", "summarize", "write_tables"]
