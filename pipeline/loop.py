"""The whole RL4Seg run of ``rl4seg-train``: source pretraining, the iterations, evaluation.

The run directory's format is :class:`pipeline.run_dir.RunDirectory`'s. Every file is written
atomically; an iteration counts as done only once ``state.json`` says so, so a killed run loses at most
the iteration in progress and ``resume=True`` continues after the last completed one. Target labels are
loaded only by :meth:`RL4SegRun.evaluate` (and the optional oracle baseline); the training datasets are
built with ``with_labels=False``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from agents.callbacks import RewardRetrainingCallback, total_timesteps
from agents.distributed import barrier, broadcast_object, init_distributed, per_process_batch
from agents.networks import load_unet, predict, resolve_device, save_unet
from pipeline.baselines import AdaBNConfig, TentConfig, adabn, tent
from agents.ppo import PixelPPO
from agents.pretrain import pretrain_segmentation
from agents.random_state import capture_random_state
from agents.test_time import tto_predict
from agents.vec_env import make_sb3_vec_env
from pipeline.config import RL_INITS, LoopConfig, TestTimeSection, config_to_yaml, load_config
from pipeline.evaluation import EvaluationResult, evaluate_predictions
from pipeline.html_report import write_html_report
from pipeline.inference import tto_repair
from pipeline.report import plot_metrics, plot_predictions, print_report, write_report
from pipeline.run_dir import RunDirectory
from reward.anatomy import Criterion, get_criteria, is_valid, validity_batch
from reward.anatomy_calibration import calibrate_criteria, save_calibrated_criteria
from reward.builder import RewardDatasetBuilder, RewardSampleDataset, RewardSampleStore
from reward.correctors import Corrector, ShapeAutoEncoder, train_shape_autoencoder
from reward.fusion import FusedReward, fuse_with_shape_prior
from reward.network import LearnedReward, RewardNet, load_reward_net
from reward.training import train_reward_network
from reward.uncertainty import plot_reliability_diagram
from rl4seg_env.data import SegDataset, dataset_from_config
from rl4seg_env.data.base import labels_by_id, load_images
from rl4seg_env.metrics import dice_per_class, keep_largest_foreground
from rl4seg_env.rewards import RewardModel


class RL4SegRun:
    """One RL4Seg run (see module docstring).

    :param config: the run's configuration (ignored when resuming: the run's own ``config.yaml`` is used).
    :param run_dir: output folder (default ``config.run_dir``).
    :param resume: continue an interrupted run in ``run_dir``: temporary files of interrupted writes are
        removed and every file the resume relies on is read first (:meth:`RunDirectory.verify`).
    :param from_iteration: with ``resume``, forget the iterations after this one first (e.g. after a
        :class:`~pipeline.run_dir.DamagedRunError` names a damaged file of a later iteration).
    """

    def __init__(self, config: LoopConfig | None = None, run_dir: str | os.PathLike | None = None,
                 resume: bool = False, from_iteration: int | None = None) -> None:
        if from_iteration is not None and not resume:
            raise ValueError("from_iteration needs resume=True")
        if resume and run_dir is None:
            raise ValueError("resume needs the run directory")
        if not resume and config is None:
            raise ValueError("a config is needed to start a new run")
        # under torchrun: one process per device; rank 0 alone writes the run directory, the others follow
        if resume:
            RunDirectory(run_dir).require_run()
        settings = load_config(RunDirectory(run_dir).config_path) if resume else config
        d = settings.distributed
        self.ctx = init_distributed(settings.device, d.backend, 60 * d.timeout_minutes)
        if self.ctx.is_main:
            self._open_run_directory(config, run_dir, resume, from_iteration)
        barrier()  # the run directory exists (or rank 0 failed, and torchrun stops every process)
        if not self.ctx.is_main:
            self.dirs = RunDirectory(run_dir or config.run_dir)
            self.config = load_config(self.dirs.config_path)
            self.config.run_dir = str(self.dirs.root)
        self.device = resolve_device(self.config.device)  # "auto": CUDA if available; a missing one is an error
        if self.device.type == "cuda" and self.ctx.enabled:
            self.device = torch.device("cuda", torch.cuda.current_device())  # set by init_distributed
        if self.config.num_threads > 0:
            torch.set_num_threads(self.config.num_threads)
        self.state = self.dirs.load_state()
        self._t0 = time.time()
        self._shape_ae: ShapeAutoEncoder | None = None  # set by run_iterations

    def _open_run_directory(self, config: LoopConfig | None, run_dir: str | os.PathLike | None, resume: bool,
                            from_iteration: int | None) -> None:
        if resume:
            self.dirs = RunDirectory(run_dir)
            self.dirs.require_run()
            self.dirs.lock()
            try:
                self._prepare_resume(from_iteration)
            except BaseException:
                self.dirs.unlock()
                raise
            self.config = load_config(self.dirs.config_path)
            self.config.run_dir = str(self.dirs.root)  # the folder it was resumed from, wherever it moved
        else:
            self.config = config
            resolve_device(config.device)  # before anything is written
            self.dirs = RunDirectory(run_dir or config.run_dir)
            self.config.run_dir = str(self.dirs.root)
            self.dirs.create(config_to_yaml(self.config))
        self.dirs.checkpoints.mkdir(parents=True, exist_ok=True)

    def _prepare_resume(self, from_iteration: int | None) -> None:
        stray = self.dirs.remove_temp_files()
        if stray:
            print(f"[rl4seg] removed {len(stray)} temporary file(s) left by interrupted writes", flush=True)
        if from_iteration is not None:
            self.dirs.roll_back(from_iteration)
            print(f"[rl4seg] resuming from iteration {from_iteration}: later iterations were removed", flush=True)
        self.dirs.verify()  # every file the resume relies on is readable, or a DamagedRunError names it

    @property
    def run_dir(self) -> Path:
        return self.dirs.root

    def _say(self, message: str) -> None:
        if self.ctx.is_main:
            print(f"[rl4seg] {message}", flush=True)

    def _save_state(self) -> None:
        if self.ctx.is_main:
            self.dirs.save_state(self.state)

    # --- data -----------------------------------------------------------------------------------------
    def dataset(self, role: str, split: str, with_labels: bool, n_images: int | None = None) -> SegDataset:
        """One split of the source or target domain of this run's config."""
        c = self.config.data
        return dataset_from_config(getattr(c, role), split, c.image_size, with_labels, c.keep_atrium, n_images)

    @functools.cached_property
    def datasets(self) -> dict[str, SegDataset]:
        return {
            "source_train": self.dataset("source", "train", with_labels=True),
            "source_val": self.dataset("source", "val", with_labels=True),
            # structural guarantee: the RL / reward-building side never has target labels to read
            "target_train": self.dataset("target", "train", with_labels=False),
        }

    @functools.cached_property
    def target_val(self) -> tuple[np.ndarray, list]:
        """Unlabelled target validation images (N, H, W) and their spacings: what label-free selection scores."""
        ds = self.dataset("target", "val", with_labels=False)
        images, _ = load_images(ds, progress=self.config.progress, desc="target validation images")
        return images, [ds[i].spacing for i in range(len(ds))]

    def selection_scores(self, actor: torch.nn.Module, previous: torch.nn.Module | None = None) -> dict[str, float]:
        """Label-free scores of ``actor`` on the unlabelled target validation images (``sel_*`` report columns):
        ``sel_validity`` (% anatomically valid under the run's criteria), ``sel_confidence`` (mean max softmax
        probability) and, given the previous iteration's actor, ``sel_agreement`` (mean foreground Dice
        between the two predictions). No label is read."""
        images, spacings = self.target_val
        bs = self.config.evaluation.batch_size
        preds, probs = predict(actor, images, bs, self.device, return_probs=True)
        preds = np.stack([keep_largest_foreground(p) for p in preds])
        out = {"sel_validity": 100.0 * float(np.mean([is_valid(p, s, self.criteria) for p, s in zip(preds, spacings)])),
               "sel_confidence": float(probs.max(axis=1).mean())}
        if previous is not None:
            before = np.stack([keep_largest_foreground(p) for p in predict(previous, images, bs, self.device)])
            out["sel_agreement"] = float(dice_per_class(preds, before, self.n_classes).mean())
        return out

    def _select(self) -> None:
        """Replace the "selected" rows: the iteration with the best label-free score, 0 being the model RL
        started from (``ppo.init``: the source-only, AdaBN or TENT row)."""
        rows = [r for r in self.state["rows"] if r.get("iteration") != "selected"]
        name = "RL4Seg (ground-truth reward)" if self.config.oracle_reward else "RL4Seg"
        start = RL_INITS[self.config.ppo.init]
        chosen = select(selection_candidates(rows, self.config.ppo.init, name), self.config.evaluation.selection)
        i = chosen["iteration"]
        rows.append({**chosen, "iteration": "selected", "model": f"{name} selected", "selected_iteration": i})
        # its test-time-optimised row; for the starting model, the one made with the latest reward network
        tto = [r for r in rows if r.get("test_time") and r.get("iteration") not in ("selected", "baseline")
               and (r.get("model") == f"{name} + TTO" and r.get("iteration") == i
                    or i == 0 and r.get("model") == f"{start} + TTO")]
        if tto:
            rows.append({**tto[-1], "iteration": "selected", "model": f"{name} selected + TTO",
                         "selected_iteration": i})
        self.state["rows"] = rows

    @functools.cached_property
    def test_set(self) -> tuple[SegDataset, np.ndarray]:
        n = min(self.config.evaluation.n_test, self.config.data.target.n_test or self.config.evaluation.n_test)
        ds = self.dataset("target", "test", with_labels=True, n_images=n)
        images, _ = load_images(ds, progress=self.config.progress, desc="target test images")
        return ds, images

    @functools.cached_property
    def criteria(self) -> list[Criterion]:
        """The anatomical criteria of this run (``reward_dataset.criteria``, see :meth:`criteria_for`)."""
        return self.criteria_for(self.config.reward_dataset.criteria)

    def criteria_for(self, name: str) -> list[Criterion]:
        """A criteria set by name. ``"calibrated"``: the echo criteria fitted to the labelled *source* training
        maps at the working size (target labels are never read), stored in the run's ``criteria.yaml``."""
        if name != "calibrated":
            return get_criteria(name)
        path = self.dirs.calibrated_criteria
        if not path.is_file():
            source = self.datasets["source_train"]
            samples = [source[i] for i in range(len(source))]
            _, report = calibrate_criteria([s.label for s in samples], [s.spacing for s in samples], "echo",
                                           self.config.reward_dataset.calibration_quantile)
            save_calibrated_criteria(report, path)
            print(f"[rl4seg] {report.summary()}", flush=True)
        return get_criteria(path)

    @property
    def reference_criteria(self) -> dict[str, str]:
        """Criteria the report also shows validity under: the paper's thresholds next to calibrated ones."""
        return {"paper": "echo"} if self.config.reward_dataset.criteria == "calibrated" else {}

    @property
    def n_classes(self) -> int:
        return self.datasets["source_train"].n_classes

    # --- phases ---------------------------------------------------------------------------------------
    def _pretrain(self, train: SegDataset, val: SegDataset, path: Path, tag: str):
        n = self.config.network
        cfg = dataclasses.replace(self.config.pretrain, channels=n.channels, norm=n.norm, device=str(self.device),
                                  seed=self.config.seed, mixed_precision=self.config.mixed_precision,
                                  channels_last=self.config.channels_last, compile=self.config.compile,
                                  tensorboard_log=str(self.dirs.tensorboard(tag)),
                                  progress=self.config.progress)
        return pretrain_segmentation(train, val, path, cfg, resume=True)

    def pretrain_source(self) -> Path:
        """Step 0: supervised pretraining on the source domain (skipped when its checkpoint exists)."""
        path = self.dirs.source_actor
        if not path.is_file() or not self.state.get("source_done"):
            self._say("supervised pretraining on the source domain")
            self._pretrain(self.datasets["source_train"], self.datasets["source_val"], path, "pretrain_source")
            self.state["source_done"] = True
            self._save_state()
        return path

    def train_oracle(self) -> Path:
        """Evaluation baseline: the same pretraining on *target* labels (the upper bound). Reads target labels."""
        path = self.dirs.oracle_actor
        if not path.is_file() or not self.state.get("oracle_done"):
            self._say("target-supervised oracle (evaluation baseline; reads target labels)")
            train = self.dataset("target", "train", with_labels=True)
            val = self.dataset("target", "val", with_labels=True)
            self._pretrain(train, val, path, "oracle_target")
            self.state["oracle_done"] = True
            self._save_state()
        return path

    def train_shape_ae(self) -> ShapeAutoEncoder | None:
        """Shape auto-encoder on the source label maps (None when disabled: morphological correction only)."""
        s = self.config.shape_ae
        if not s.enabled:
            return None
        path = self.dirs.shape_ae
        if path.is_file():
            return ShapeAutoEncoder.load(path, map_location=self.device)
        print("[rl4seg] shape auto-encoder on source label maps", flush=True)
        ae = train_shape_autoencoder(self.datasets["source_train"], epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                                     corruption_p=s.corruption_p, augment=s.augment, device=self.device,
                                     progress=self.config.progress, seed=self.config.seed)
        ae.save(path)
        return ae

    def _share(self, n: int, distributed: bool) -> np.ndarray:
        """The test images this process handles: every ``world_size``-th from its rank (all of them alone)."""
        if distributed and self.ctx.enabled:
            return np.arange(self.ctx.rank, n, self.ctx.world_size)
        return np.arange(n)

    def evaluate(self, actor: torch.nn.Module, reward_model=None, figure: str | None = None,
                 distributed: bool = False) -> dict[str, float]:
        """Scores of ``actor`` on the target test split (the only place target test labels are read).

        :param distributed: under ``torchrun`` every process calls it with the same actor and predicts and scores
            its share of the images (:meth:`_share`); rank 0 gathers them, makes the figures and returns the
            scores, the others get ``{}``.
        """
        result = self._evaluation(actor, reward_model, figure, distributed)
        return {} if result is None else result.summary

    def _evaluation(self, actor: torch.nn.Module, reward_model=None, figure: str | None = None,
                    distributed: bool = False) -> EvaluationResult | None:
        """:meth:`evaluate`'s whole result (rows, predictions, the reward network's calibration); None off rank 0
        in a distributed call."""
        ds, images = self.test_set
        e = self.config.evaluation
        share = self._share(len(images), distributed)
        result = evaluate_predictions(predict(actor, images[share], e.batch_size, self.device), ds, images=images,
                                      criteria=self.criteria, reward_model=reward_model,
                                      also_criteria=self.reference_criteria, indices=share, distributed=distributed)
        if result is None:
            return None
        preds = result.preds
        if figure:
            k = min(e.n_figures, len(images))
            maps = reward_model(images[:k], preds[:k]) if reward_model is not None else None
            labels = np.stack([ds[i].label for i in range(k)])
            plot_predictions(images[:k], preds[:k], maps, self.dirs.figure(figure), labels=labels, title=figure)
            if reward_model is not None:  # the worst, median and best test images by mean reward (report.html)
                order = np.argsort([r["mean_reward"] for r in result.per_image], kind="stable")
                mid = len(order) // 2
                pick = list(dict.fromkeys([*order[:2], *order[max(mid - 1, 0):mid + 1], *order[-2:]]))
                plot_predictions(images[pick], preds[pick], reward_model(images[pick], preds[pick]),
                                 self.dirs.figure(figure.replace("predictions", "cases")),
                                 labels=np.stack([ds[int(i)].label for i in pick]),
                                 title=f"{figure}: worst, median and best by mean reward")
        return result

    def evaluate_tto(self, actor: torch.nn.Module, reward_model, settings: TestTimeSection | None = None,
                     distributed: bool = False) -> dict[str, float]:
        """Scores on the target test split after test-time optimisation (:mod:`agents.test_time`) of the
        images whose prediction is anatomically invalid, plus the optimisation's own counts and wall time.

        :param reward_model: the reward network; the optimisation uses it fused as ``settings.fusion`` says, the
            reported reward metrics (test ECE, reward-Dice r) the network alone.
        :param settings: test-time settings (default: this run's ``test_time`` section).
        :param distributed: under ``torchrun`` every process calls it, optimises and scores its share of the
            images; rank 0 gathers the scores (the others get ``{}``).
        """
        ds, images = self.test_set
        criteria = self.criteria
        settings = self.config.test_time if settings is None else settings
        result = tto_predict(actor, images, self._fused(reward_model, settings.fusion),
                             functools.partial(is_valid, criteria=criteria), settings,
                             spacings=[ds[i].spacing for i in range(len(ds))], device=self.device,
                             batch_size=self.config.evaluation.batch_size, seed=self.config.seed,
                             progress=self.config.progress and self.ctx.is_main, distributed=distributed,
                             repair=tto_repair(settings.repair, self.n_classes))
        share = self._share(len(images), distributed)  # every process holds every result; each scores its share
        scored = evaluate_predictions(np.asarray(result.preds)[share], ds, images=images, criteria=criteria,
                                      reward_model=reward_model, also_criteria=self.reference_criteria, indices=share,
                                      distributed=distributed)
        return {} if scored is None else {**scored.summary, **result.summary()}

    def _baselines(self, actor_path: Path) -> None:
        """The reference rows (source only, oracle, AdaBN / TENT). Under ``torchrun`` every process calls it once
        rank 0 has made the adapted actors (:meth:`adapted_actor`): the evaluations are shared out, rank 0
        records the rows."""
        if self.state.get("baselines_done"):
            return
        main = self.ctx.is_main
        rows = []
        actor, _ = load_unet(str(actor_path), map_location=self.device)
        rows.append({"iteration": 0, "model": "source-only",
                     **self.evaluate(actor, figure="predictions_iter_000", distributed=True),
                     **(self.selection_scores(actor) if main else {})})
        if self.config.evaluation.oracle:
            oracle, _ = load_unet(str(self.train_oracle()), map_location=self.device)
            rows.append({"iteration": "oracle", "model": "oracle (target labels)",
                         **self.evaluate(oracle, distributed=True)})
        for name in self.config.evaluation.baselines:
            model = self.adapted_actor(name)
            rows.append({"iteration": "baseline", "model": RL_INITS[name], **self.evaluate(model, distributed=True),
                         **(self.selection_scores(model) if main else {})})
        self.state["rows"] = rows
        self.state["baselines_done"] = True
        self._save_state()
        self._write_report()

    def adapted_actor(self, name: str) -> torch.nn.Module:
        """The label-free baseline ``name`` ("adabn" or "tent") applied to the source actor with the unlabelled
        target training images; made once and kept in ``checkpoints/adabn.pt`` / ``tent.pt``."""
        path = self.dirs.baseline_actor(name)
        if path.is_file():
            return load_unet(str(path), map_location=self.device)[0]
        actor, _ = load_unet(str(self.dirs.source_actor), map_location=self.device)
        images, _ = load_images(self.datasets["target_train"], progress=self.config.progress,
                                desc="target train images")
        print(f"[rl4seg] baseline: {RL_INITS[name]}", flush=True)
        if name == "adabn":
            model = adabn(actor, images, AdaBNConfig(batch_size=self.config.evaluation.batch_size), self.device)
        else:
            model = tent(actor, images, TentConfig(seed=self.config.seed, progress=self.config.progress), self.device)
        save_unet(model, str(path))
        return model

    def initial_actor(self) -> Path:
        """The actor RL starts from and is KL-anchored to (``ppo.init``): the source actor, or the AdaBN / TENT
        copy of it saved as iteration 0; that model's report row gets its label-free selection scores (it is
        selection's iteration 0)."""
        init = self.config.ppo.init
        if init == "source":
            return self.dirs.source_actor
        path = self.dirs.iteration_dir(0, create=True) / "actor.pt"
        model = self.adapted_actor(init)
        if not path.is_file():
            save_unet(model, str(path), iteration=0)
        rows = self.state["rows"]
        row = next((r for r in rows if r.get("model") == RL_INITS[init]), None)
        if row is None:  # not one of evaluation.baselines (or a run seeded by the benchmark)
            row = {"iteration": "baseline", "model": RL_INITS[init], **self.evaluate(model)}
            rows.append(row)
        if "sel_confidence" not in row:
            row.update(self.selection_scores(model))
        self._save_state()
        return path

    # --- RL iterations --------------------------------------------------------------------------------
    def _train_reward(self, store: RewardSampleStore, iteration: int):
        if self.config.oracle_reward:
            return None, {}  # ablation: the env's ground-truth reward stays in place
        n, rn, window = self.config.network, self.config.reward_net, self.config.reward_dataset.window
        main = self.ctx.is_main
        nets, info = [], {}
        iterations = None if window is None else range(iteration - window + 1, iteration + 1)
        for member in range(rn.ensemble):  # member 0 keeps the seed of a single network: ensemble 1 is the paper
            cfg = dataclasses.replace(rn, channels=n.channels, norm=n.norm, device=str(self.device),
                                      mixed_precision=self.config.mixed_precision,
                                      seed=self.config.seed + iteration + 7919 * member,
                                      channels_last=self.config.channels_last, compile=self.config.compile,
                                      progress=self.config.progress and main,
                                      tensorboard_dir=str(self.dirs.tensorboard(f"reward_iter_{iteration:03d}"
                                                                                + (f"_{member}" if member else "")))
                                      if main else None)
            if rn.warm_start and cfg.split_by == "image":
                # an image keeps its side from one iteration to the next: the network started from never trained on
                # a validation image
                cfg = dataclasses.replace(cfg, split_by="image_id", split_seed=self.config.seed)
            out = self.dirs.reward_net(iteration, member) if main else None  # every process trains, rank 0 saves
            previous = self.dirs.reward_net(iteration - 1, member) if rn.warm_start and iteration > 1 else None
            init = load_reward_net(previous, map_location=self.device)[0] if previous and previous.is_file() else None
            result = train_reward_network(RewardSampleDataset(store, iterations=iterations), self.n_classes, cfg,
                                          out_path=out, init=init,
                                          iteration=iteration, warm_start=init is not None)
            nets.append(result.net)
            if member == 0:  # the held-out checks and the report describe the first network
                info = {"ece_before": result.val_ece_before, "ece_after": result.val_ece_after,
                        "temperature": result.temperature, "reward_val_accuracy": result.val_accuracy,
                        "reward_majority_accuracy": result.val_majority_accuracy,
                        "reward_error_reduction": result.val_error_reduction, "reward_val_auc": result.val_auc,
                        "reward_train_samples": result.n_train,
                        "reward_informative": (not cfg.require_informative
                                               or result.informative(cfg.min_samples, cfg.min_error_reduction,
                                                                     cfg.min_auc))}
        return learned_reward(nets, self.device), info

    def _fused(self, reward: RewardModel, fusion: str) -> RewardModel:
        """``reward`` alone (``fusion`` "none") or its pixelwise minimum with the shape auto-encoder's agreement
        ("shape_ae"; ``reward_net.fusion`` for PPO, ``test_time.fusion`` for test-time optimisation)."""
        if fusion == "none":
            return reward
        if self._shape_ae is None and self.dirs.shape_ae.is_file():  # e.g. test-time optimisation after the run
            self._shape_ae = ShapeAutoEncoder.load(self.dirs.shape_ae, map_location=self.device)
        if self._shape_ae is None:
            raise RuntimeError(f"reward fusion {fusion!r} needs the shape auto-encoder, and {self.dirs.shape_ae} "
                               "does not exist (shape_ae.enabled: false?)")
        return fuse_with_shape_prior(reward, self._shape_ae, self.device)

    def _ppo_fusion(self) -> str:
        """The fusion of PPO's reward: ``reward_net.fusion``, gated by ``reward_net.fusion_max_validity`` on the
        label-free validity of the model RL starts from (rank 0 decides; every process uses its decision)."""
        cfg = self.config.reward_net
        fusion = None
        if self.ctx.is_main:
            start = RL_INITS[self.config.ppo.init]
            row = next((r for r in self.state["rows"] if r.get("model") == start and "sel_validity" in r), None)
            fusion = gated_fusion(cfg.fusion, cfg.fusion_max_validity, None if row is None else row["sel_validity"])
            if cfg.fusion_max_validity is not None:
                print(f"[rl4seg] PPO's reward: fusion {fusion!r} ({start}: {row['sel_validity']:.1f}% of the target "
                      f"validation images valid; reward_net.fusion_max_validity {cfg.fusion_max_validity:g})",
                      flush=True)
        return broadcast_object(fusion)

    def _resumed_reward_model(self, start: int) -> RewardModel | None:
        """The reward the uninterrupted run would hold when iteration ``start`` begins: the last reward network
        that passed its held-out checks, else the first one trained (``None`` before iteration 2)."""
        rows = {r["iteration"]: r for r in self.state["rows"]
                if isinstance(r.get("iteration"), int) and not r.get("test_time") and r["iteration"] >= 1}
        trained = [i for i in range(1, start) if self.dirs.reward_net(i).is_file()]
        if not trained:
            return None
        informative = [i for i in trained if rows.get(i, {}).get("reward_informative", True)]
        return load_reward_model(self.dirs, informative[-1] if informative else trained[0],
                                 self.config.reward_net.ensemble, self.device)

    def _make_model(self, env, actor_path: Path) -> PixelPPO:
        done = self.state["completed_iterations"]
        if done > 0:
            return PixelPPO.load(str(self.dirs.ppo_model(done)), env=env, device=self.device)
        return make_pixel_ppo(self.config, env, actor_path, self.device,
                              tensorboard_log=str(self.dirs.tensorboard()) if self.ctx.is_main else None)

    def _on_iteration_end(self, iteration: int, callback: RewardRetrainingCallback) -> None:
        # every process optimises and scores its share of the test images; checkpoints, selection and the report:
        # rank 0, the other processes wait for it
        tto_rows = self._tto_rows(iteration, callback)
        result = self._evaluation(callback.model.policy.actor, callback.reward_model,
                                  figure=f"predictions_iter_{iteration:03d}", distributed=True)
        if self.ctx.is_main:
            self._finish_iteration(iteration, callback, tto_rows, result)
        barrier()

    def _tto_rows(self, iteration: int, callback: RewardRetrainingCallback) -> list[dict]:
        """The iteration's test-time-optimisation rows: the RL4Seg actor and the baselines a user would pick
        instead, with the same optimisation (``[]`` when TTO does not apply). Every process must call it; only
        rank 0's rows hold scores."""
        if not (self.config.test_time.enabled and callback.reward_model is not None and callback.reward_informative):
            return []
        name = "RL4Seg (ground-truth reward)" if self.config.oracle_reward else "RL4Seg"
        actors = [(name, callback.model.policy.actor)]
        for base in dict.fromkeys(["tent", self.config.ppo.init]):
            path = self.dirs.baseline_actor(base)
            if path is not None and path.is_file():
                actors.append((RL_INITS[base], load_unet(str(path), map_location=self.device)[0]))
        rows = []
        for model_name, actor in actors:
            scores = self.evaluate_tto(actor, callback.reward_model, distributed=True)
            rows.append({"iteration": iteration, "model": f"{model_name} + TTO", "test_time": True, **scores,
                         **({"minutes": (time.time() - self._t0) / 60} if model_name == name else {})})
        return rows

    def _finish_iteration(self, iteration: int, callback: RewardRetrainingCallback, tto_rows: list[dict],
                          evaluation: EvaluationResult) -> None:
        model = callback.model
        d = self.dirs.iteration_dir(iteration, create=True)
        tmp = d / ".ppo.zip.tmp.zip"
        model.save(str(tmp))
        os.replace(tmp, self.dirs.ppo_model(iteration))
        save_unet(model.policy.actor, str(self.dirs.actor(iteration)), iteration=iteration, class_names=list(
            self.datasets["source_train"].class_names), image_size=[self.config.data.image_size] * 2)
        save_unet(model.policy.critic, str(d / "critic.pt"), iteration=iteration)
        self.dirs.save_pseudo_labels(iteration, callback.pseudo_labels)
        scores = evaluation.summary
        if evaluation.uncertainty is not None:  # the reward network's reliability on the target test predictions
            plot_reliability_diagram(evaluation.uncertainty, self.dirs.figure(f"reliability_iter_{iteration:03d}"),
                                     title=f"reward network, iteration {iteration} (target test)")
        record = {k: v for k, v in callback.records[iteration].items() if not k.startswith("_")}
        name = "RL4Seg (ground-truth reward)" if self.config.oracle_reward else "RL4Seg"
        previous, _ = load_unet(str(self.dirs.actor(iteration - 1)), map_location=self.device)
        row = {"iteration": iteration, "model": name, **scores, **record,
               **self.selection_scores(model.policy.actor, previous), "minutes": (time.time() - self._t0) / 60}
        self.state["rows"] += [row, *tto_rows]
        self._select()
        # where the uninterrupted run goes on: a resume restores these generators and env episodes
        self.dirs.save_random_state(iteration, capture_random_state(model))
        self.state["completed_iterations"] = iteration
        self._save_state()  # the iteration is done from here on
        self._write_report()
        tto = next((r for r in self.state["rows"] if r.get("iteration") == iteration
                    and r.get("model") == f"{name} + TTO"), None)
        print(f"[rl4seg] iteration {iteration} done: target Dice LV+MYO {scores.get('dice_mean', float('nan')):.3f}, "
              f"validity {scores['validity_pct']:.1f}%" + (f"; with test-time optimisation {tto['dice_mean']:.3f}, "
                                                          f"{tto['validity_pct']:.1f}%" if tto else ""), flush=True)

    def _true_references(self) -> Callable[[str], np.ndarray] | None:
        """``oracle_references`` (ablation; reads target labels): the true label of a target training image by id,
        for the reward-set builder; None otherwise."""
        if not self.config.oracle_references:
            return None
        return labels_by_id(self.dataset("target", "train", with_labels=True)).__getitem__

    def run_iterations(self, actor_path: Path, ae: ShapeAutoEncoder | None) -> None:
        p, rd = self.config.ppo, self.config.reward_dataset
        start = self.state["completed_iterations"] + 1
        if start > p.iterations:
            return
        self._shape_ae = ae  # reward fusion "shape_ae" scores actions with it too
        if self.config.oracle_reward:
            # ablation "ground-truth reward instead of the learned one": the only training path that reads
            # target labels, and only when asked for explicitly
            labelled = self.dataset("target", "train", with_labels=True)
        # under torchrun each process steps its share of the rollout images (its own episodes)
        n_envs = per_process_batch(p.batch_size_base, self.ctx, "ppo.batch_size_base")
        if self.config.oracle_reward:
            env = make_sb3_vec_env(num_envs=n_envs, dataset=labelled, reward="accuracy")
        else:
            env = make_sb3_vec_env(num_envs=n_envs, dataset=self.datasets["target_train"], reward=None)
        env.seed(self.config.seed + 1000 * self.ctx.rank)
        model = self._make_model(env, actor_path)
        if self.ctx.enabled:  # same initial weights everywhere, different sampled actions per process
            torch.manual_seed(self.config.seed + self.ctx.rank)
        store = RewardSampleStore(self.dirs.reward_dataset)
        for stale in [i for i in store.completed_iterations() if i >= start] if self.ctx.is_main else ():
            store.discard(stale)  # written by an iteration that did not complete: rebuilt, never duplicated
        validity = functools.partial(validity_batch, criteria=self.criteria)
        builder = RewardDatasetBuilder(
            Corrector(ae, n_classes=self.n_classes, validity_fn=validity if rd.correction == "minimal" else None),
            validity,
            rd, valid_dice_threshold=rd.valid_dice_threshold, batch_size=rd.batch_size, device=self.device,
            seed=self.config.seed, source_dataset=self.datasets["source_train"] if rd.source.images else None,
            source=rd.source, target_samples=rd.target_samples, true_references=self._true_references())
        callback = RewardRetrainingCallback(
            self.datasets["target_train"], builder, store, self._train_reward, iterations=p.iterations,
            updates_per_iteration=p.updates_per_iteration, images_per_iteration=rd.images_per_iteration,
            schedule=p, use_anchors=p.anchors, start_iteration=start,
            pseudo_labels=self.dirs.load_pseudo_labels(start - 1), on_iteration_end=self._on_iteration_end,
            adapt_norm_stats=p.adapt_norm_stats, readapt_norm_stats=p.readapt_norm_stats,
            reuse_images=rd.reuse_images,
            reward_model=self._resumed_reward_model(start),
            training_reward=functools.partial(self._fused, fusion=self._ppo_fusion()),
            random_state=self.dirs.load_random_state(start - 1) if start > 1 and self.ctx.is_main else None,
            progress=self.config.progress and self.ctx.is_main,
            verbose=int(self.ctx.is_main))
        steps = total_timesteps(range(start, p.iterations + 1), p.updates_per_iteration, env.num_envs, p)
        # one TensorBoard run per run directory (tb/ppo_1), continued by every resume
        fresh = start == 1 and not (self.dirs.tensorboard() / "ppo_1").exists()
        model.learn(steps, callback=callback, progress_bar=self.config.progress and self.ctx.is_main, tb_log_name="ppo",
                    reset_num_timesteps=fresh)
        env.close()

    # --- everything -----------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every phase; returns the report rows. The run directory's write lock, taken when
        this object was made, is released at the end (also when a phase fails)."""
        try:
            return self._run()
        finally:
            self.dirs.unlock()

    def _run(self) -> list[dict]:
        # under torchrun every process takes part in the supervised pretraining (its share of each batch) and the
        # evaluations (its share of the test images); the shape auto-encoder and the AdaBN / TENT adaptations run
        # on rank 0 while the others wait, then read them
        source = self.pretrain_source()
        if self.config.evaluation.oracle:
            self.train_oracle()
        if self.ctx.is_main:
            ae = self.train_shape_ae()
            if not self.state.get("baselines_done"):
                for name in self.config.evaluation.baselines:
                    self.adapted_actor(name)
        barrier()
        if not self.ctx.is_main:
            self.state = self.dirs.load_state()
            ae = self.train_shape_ae()  # loads rank 0's
        self._baselines(source)  # evaluations shared out among the processes
        if self.ctx.is_main:
            init = self.initial_actor()
        barrier()
        if not self.ctx.is_main:
            init = self.dirs.actor(0)
        self.run_iterations(init, ae)
        barrier()
        if not self.ctx.is_main:
            return self.dirs.load_state()["rows"]
        self._write_report(plots=True)
        print_report(self.state["rows"])
        gap = gap_closed(self.state["rows"])
        if gap is not None:
            print(f"[rl4seg] domain gap closed: {100 * gap:.1f}% of (oracle - source-only) mean Dice LV+MYO")
        gap = gap_closed(self.state["rows"], test_time=True)
        if gap is not None:
            print(f"[rl4seg] with test-time optimisation: {100 * gap:.1f}%")
        print(f"[rl4seg] run directory: {self.run_dir}")
        return self.state["rows"]

    def _write_report(self, plots: bool = True) -> None:
        if not self.ctx.is_main:
            return
        rows = self.state["rows"]
        write_report(rows, self.run_dir, header=[f"world size: {self.ctx.world_size}"
                                                  + (f" (backend {self.ctx.backend})" if self.ctx.enabled else "")])
        if plots and rows:
            plot_metrics(rows, self.dirs.figure("metrics"))
        config_text = self.dirs.config_path.read_text() if self.dirs.config_path.is_file() else ""
        write_html_report(self.run_dir, rows, config_text)


def learned_reward(nets: list[RewardNet], device: str | torch.device = "cpu") -> RewardModel:
    """Reward networks as one reward model: the network's map, or an ensemble's pixelwise mean of its members'."""
    members = [LearnedReward(net, device=device) for net in nets]
    return members[0] if len(members) == 1 else FusedReward(members, how="mean")


def load_reward_model(dirs: RunDirectory, iteration: int, ensemble: int = 1,
                      device: str | torch.device = "cpu") -> RewardModel:
    """The reward network(s) iteration ``iteration`` of a run trained (``reward_net.ensemble`` members), as one
    reward model (:func:`learned_reward`); a missing member is named."""
    members = [dirs.reward_net(iteration, k) for k in range(ensemble)]
    missing = [str(p) for p in members if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"reward_net.ensemble is {ensemble} but {', '.join(missing)} is missing "
                                "(was the run started with a smaller ensemble?)")
    return learned_reward([load_reward_net(p, map_location=device)[0] for p in members], device)


def make_pixel_ppo(config: LoopConfig, env, actor_path: str | os.PathLike, device: str | torch.device,
                   tensorboard_log: str | None = None) -> PixelPPO:
    """The loop's PixelPPO for ``config`` (``ppo`` and ``network`` sections), its actor and KL reference loaded
    from ``actor_path``; the per-iteration coefficients are set by the reward-retraining callback."""
    p, n = config.ppo, config.network
    unet = {"channels": list(n.channels), "norm": n.norm}
    return PixelPPO("PixelUNetPolicy", env, n_steps=1, batch_size=p.batch_size_base, n_epochs=p.n_epochs,
                    clip_range=p.clip_range, max_grad_norm=p.max_grad_norm, normalize_advantage=p.normalize_advantage,
                    dual_clip=p.dual_clip, target_kl=p.target_kl, critic_warmup_epochs=p.critic_warmup_epochs, use_pseudo_labels=p.anchors,
                    update_actor_norm_stats=p.update_norm_stats_in_ppo, image_log_interval=p.image_log_interval,
                    mixed_precision=config.mixed_precision, channels_last=config.channels_last,
                    compile=config.compile, tensorboard_log=tensorboard_log, seed=config.seed,
                    device=device, policy_kwargs={"actor_kwargs": unet, "critic_kwargs": unet,
                                                  "pretrained_actor": str(actor_path), "actor_lr": p.actor_lr,
                                                  "critic_lr": p.critic_lr})


def gated_fusion(fusion: str, max_validity: float | None, start_validity: float | None) -> str:
    """``fusion``, or ``"none"`` when ``max_validity`` (%) gates it and the starting model's label-free validity
    ``start_validity`` (%) is above it. A gate without the starting model's score is an error."""
    if fusion == "none" or max_validity is None:
        return fusion
    if start_validity is None or not np.isfinite(start_validity):
        raise RuntimeError("reward_net.fusion_max_validity: the starting model has no label-free validity score "
                           "(sel_validity) in the run's state")
    return fusion if start_validity <= max_validity else "none"


def selection_candidates(rows: list[dict], init: str, name: str = "RL4Seg") -> list[dict]:
    """The report rows label-free selection chooses from: iteration 0, the model RL started from (``init``:
    the source-only, AdaBN or TENT row, renumbered 0), then each iteration's plain ``name`` row."""
    start = RL_INITS[init]
    return ([{**r, "iteration": 0} for r in rows if r.get("model") == start][:1]
            + [r for r in rows if r.get("model") == name and not r.get("test_time")])


def select(candidates: list[dict], key: str) -> dict:
    """The candidate with the best ``sel_<key>`` score (ties to the later iteration); ``last``: the last one."""
    if key == "last":
        return candidates[-1]
    scored = [r for r in candidates if np.isfinite(r.get(f"sel_{key}", np.nan))]
    return max(scored, key=lambda r: (r[f"sel_{key}"], r["iteration"])) if scored else candidates[-1]


def gap_closed(rows: list[dict], test_time: bool = False) -> float | None:
    """(last RL4Seg - source-only) / (oracle - source-only) of mean Dice LV+MYO, when all three exist.

    :param test_time: use the last row after test-time optimisation instead of the last plain row.
    """
    src = next((r for r in rows if r.get("model") == "source-only"), None)
    orc = next((r for r in rows if str(r.get("model", "")).startswith("oracle")), None)
    rl = [r for r in rows if str(r.get("model", "")).startswith("RL4Seg") and bool(r.get("test_time")) == test_time]
    if not (src and orc and rl) or "dice_mean" not in src:
        return None
    denom = orc["dice_mean"] - src["dice_mean"]
    return None if denom <= 0 else (rl[-1]["dice_mean"] - src["dice_mean"]) / denom
