"""The whole RL4Seg run of ``scripts/train_loop.py``: source pretraining, the iterations, evaluation.

Run directory layout::

    config.yaml              resolved configuration
    state.json               completed phases and report rows (written last at each boundary)
    checkpoints/actor_source.pt   source-pretrained actor (iteration 0; also the reference policy)
    checkpoints/oracle_target.pt  target-supervised oracle (evaluation baseline, optional)
    checkpoints/shape_ae.pt       shape auto-encoder trained on source label maps
    checkpoints/iter_XXX/         ppo.zip, actor.pt, critic.pt, reward_net.pt (with temperature), pseudo_labels.npz
    reward_dataset/iter_XXX/      reward samples (accumulate across iterations)
    tb/                           TensorBoard logs (pretraining, PPO, reward networks)
    report.csv, report.md, metrics.png, predictions_iter_XXX.png, reliability_iter_XXX.png

Every file is written atomically; an iteration counts as done only once ``state.json`` says so, so a
killed run loses at most the iteration in progress and ``resume=True`` continues after the last
completed one. Target labels are loaded only by :meth:`RL4SegRun.evaluate` (and the optional oracle
baseline); the training datasets are built with ``with_labels=False``.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.utils import get_device

from agents.callbacks import IterationSchedule, RewardRetrainingCallback, total_timesteps
from agents.config import ConfigError, LoopConfig, DomainConfig, load_config, save_config
from agents.evaluation import evaluate_predictions, load_images, predict
from agents.networks import load_unet
from agents.report import plot_metrics, plot_predictions, print_report, write_report
from rl4seg_env.data import make_dataset
from rl4seg_env.data.base import SegDataset, SubsetDataset
from rl4seg_env.io import atomic_save_npz, atomic_write_text


def domain_dataset(domain: DomainConfig, split: str, n: int | None, image_size: int, keep_atrium: bool,
                   with_labels: bool, role: str) -> SegDataset:
    """Build one split of a domain from its config section (``role`` names it in errors)."""
    common = dict(image_size=image_size, keep_atrium=keep_atrium, with_labels=with_labels)
    if domain.dataset == "synthetic":
        return make_dataset("synthetic", preset=domain.preset, split=split, n_images=n, seed=domain.seed, **common)
    if domain.dataset == "camus":
        if not domain.root:
            raise ConfigError(f"data.{role}.root must point to the CAMUS folder (dataset: camus)")
        ds = make_dataset("camus", root=domain.root, split=split, **common)
    elif domain.dataset == "nifti":
        if not domain.manifest:
            raise ConfigError(f"data.{role}.manifest must point to a manifest.csv (dataset: nifti)")
        ds = make_dataset("nifti", manifest=domain.manifest, split=split, **common)
    else:
        raise ConfigError(f"data.{role}.dataset: unknown dataset {domain.dataset!r}; expected synthetic, camus or nifti")
    return ds if n is None or n >= len(ds) else SubsetDataset(ds, range(n))


class RL4SegRun:
    """One RL4Seg run (see module docstring).

    :param config: the run's configuration (ignored when resuming: the run's own ``config.yaml`` is used).
    :param run_dir: output folder (default ``config.run_dir``).
    :param resume: continue an interrupted run in ``run_dir``.
    """

    def __init__(self, config: LoopConfig | None = None, run_dir: str | os.PathLike | None = None,
                 resume: bool = False) -> None:
        if resume:
            if run_dir is None:
                raise ValueError("resume needs the run directory")
            self.run_dir = Path(run_dir)
            if not (self.run_dir / "config.yaml").is_file():
                raise FileNotFoundError(f"{self.run_dir}: not a run directory (no config.yaml) - cannot resume")
            self.config = load_config(self.run_dir / "config.yaml")
        else:
            if config is None:
                raise ValueError("a config is needed to start a new run")
            self.config = config
            self.run_dir = Path(run_dir or config.run_dir)
            if (self.run_dir / "state.json").exists():
                raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume {self.run_dir} to continue "
                                      "it, or choose another run_dir")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
        self.config.run_dir = str(self.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.device = get_device(self.config.device)  # "auto": CUDA when available, else CPU
        if self.config.num_threads > 0:
            torch.set_num_threads(self.config.num_threads)
        self.state = self._load_state()
        self._t0 = time.time()

    # --- state ----------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        path = self.run_dir / "state.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: corrupt run state ({exc})") from exc
        return {"completed_iterations": 0, "rows": [], "baselines_done": False}

    def _save_state(self) -> None:
        atomic_write_text(self.run_dir / "state.json", json.dumps(self.state, indent=1, default=float))

    # --- data -----------------------------------------------------------------------------------------
    @functools.cached_property
    def datasets(self) -> dict[str, SegDataset]:
        c = self.config.data
        build = functools.partial(domain_dataset, image_size=c.image_size, keep_atrium=c.keep_atrium)
        return {
            "source_train": build(c.source, "train", c.source.n_train, with_labels=True, role="source"),
            "source_val": build(c.source, "val", c.source.n_val, with_labels=True, role="source"),
            # structural guarantee: the RL / reward-building side never has target labels to read
            "target_train": build(c.target, "train", c.target.n_train, with_labels=False, role="target"),
        }

    def _target_eval_dataset(self) -> SegDataset:
        c = self.config.data
        n = min(self.config.evaluation.n_test, c.target.n_test or self.config.evaluation.n_test)
        return domain_dataset(c.target, "test", n, c.image_size, c.keep_atrium, with_labels=True, role="target")

    @functools.cached_property
    def test_set(self) -> tuple[SegDataset, np.ndarray]:
        ds = self._target_eval_dataset()
        images, _ = load_images(ds, progress=self.config.progress, desc="target test images")
        return ds, images

    # --- phases ---------------------------------------------------------------------------------------
    def _pretrain(self, train: SegDataset, val: SegDataset, path: Path, tag: str):
        from agents.pretrain import PretrainConfig, pretrain_segmentation

        p, n = self.config.pretrain, self.config.network
        cfg = PretrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, patience=p.patience, loss=p.loss,
                             channels=tuple(n.channels), norm=n.norm, device=str(self.device), seed=self.config.seed,
                             tensorboard_log=str(self.run_dir / "tb" / tag), progress=self.config.progress)
        return pretrain_segmentation(train, val, path, cfg, resume=True)

    def pretrain_source(self) -> Path:
        """Step 0: supervised pretraining on the source domain (skipped when its checkpoint exists)."""
        path = self.ckpt_dir / "actor_source.pt"
        if not path.is_file() or not self.state.get("source_done"):
            print("[rl4seg] supervised pretraining on the source domain", flush=True)
            self._pretrain(self.datasets["source_train"], self.datasets["source_val"], path, "pretrain_source")
            self.state["source_done"] = True
            self._save_state()
        return path

    def train_oracle(self) -> Path:
        """Evaluation baseline: the same pretraining on *target* labels (the upper bound). Reads target labels."""
        path = self.ckpt_dir / "oracle_target.pt"
        if not path.is_file() or not self.state.get("oracle_done"):
            print("[rl4seg] target-supervised oracle (evaluation baseline; reads target labels)", flush=True)
            c = self.config.data
            train = domain_dataset(c.target, "train", c.target.n_train, c.image_size, c.keep_atrium, True, "target")
            val = domain_dataset(c.target, "val", c.target.n_val, c.image_size, c.keep_atrium, True, "target")
            self._pretrain(train, val, path, "oracle_target")
            self.state["oracle_done"] = True
            self._save_state()
        return path

    def train_shape_ae(self):
        """Shape auto-encoder on the source label maps (None when disabled: morphological correction only)."""
        from reward.correctors import ShapeAutoEncoder, train_shape_autoencoder

        s = self.config.shape_ae
        if not s.enabled:
            return None
        path = self.ckpt_dir / "shape_ae.pt"
        if path.is_file():
            return ShapeAutoEncoder.load(path, map_location=self.device)
        print("[rl4seg] shape auto-encoder on source label maps", flush=True)
        ae = train_shape_autoencoder(self.datasets["source_train"], epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                                     device=self.device, progress=self.config.progress, seed=self.config.seed)
        ae.save(path)
        return ae

    def evaluate(self, actor: torch.nn.Module, reward_model=None, figure: str | None = None) -> dict[str, float]:
        """Scores of ``actor`` on the target test split (the only place target test labels are read)."""
        ds, images = self.test_set
        e = self.config.evaluation
        preds = predict(actor, images, e.batch_size, self.device)
        result = evaluate_predictions(preds, ds, images=images, criteria=self.config.reward_dataset.criteria,
                                      reward_model=reward_model)
        if figure:
            k = min(e.n_figures, len(images))
            maps = reward_model(images[:k], preds[:k]) if reward_model is not None else None
            labels = np.stack([ds[i].label for i in range(k)])
            plot_predictions(images[:k], preds[:k], maps, self.run_dir / f"{figure}.png", labels=labels, title=figure)
        return result.summary

    def evaluate_tto(self, actor: torch.nn.Module, reward_model, settings=None) -> dict[str, float]:
        """Scores on the target test split after test-time optimisation (:mod:`agents.test_time`) of the
        images whose prediction is anatomically invalid, plus the optimisation's own counts and wall time.

        :param settings: a :class:`~agents.config.TTOSection` (default: this run's ``test_time``).
        """
        from agents.test_time import TTOConfig, tto_predict

        ds, images = self.test_set
        t = self.config.test_time if settings is None else settings
        cfg = TTOConfig(steps=t.steps, n_samples=t.n_samples, n_epochs=t.n_epochs, lr=t.lr, kl_coef=t.kl_coef,
                        ent_coef=t.ent_coef, criteria=self.config.reward_dataset.criteria, seed=self.config.seed,
                        progress=self.config.progress)
        result = tto_predict(actor, images, reward_model, cfg, spacings=[ds[i].spacing for i in range(len(ds))],
                             device=self.device, batch_size=self.config.evaluation.batch_size)
        scores = evaluate_predictions(result.preds, ds, images=images, criteria=self.config.reward_dataset.criteria,
                                      reward_model=reward_model).summary
        return {**scores, **result.summary()}

    def _baselines(self, actor_path: Path) -> None:
        if self.state.get("baselines_done"):
            return
        rows = []
        actor, _ = load_unet(str(actor_path), map_location=self.device)
        rows.append({"iteration": 0, "model": "source-only", **self.evaluate(actor, figure="predictions_iter_000")})
        if self.config.evaluation.oracle:
            oracle, _ = load_unet(str(self.train_oracle()), map_location=self.device)
            rows.append({"iteration": "oracle", "model": "oracle (target labels)", **self.evaluate(oracle)})
        self.state["rows"] = rows
        self.state["baselines_done"] = True
        self._save_state()
        self._write_report()

    # --- RL iterations --------------------------------------------------------------------------------
    def _train_reward(self, store, iteration: int):
        if self.config.oracle_reward:
            return None, {}  # ablation: the env's ground-truth reward stays in place
        from reward.builder import RewardSampleDataset
        from reward.network import LearnedReward, RewardTrainConfig, train_reward_network

        r, n = self.config.reward_net, self.config.network
        cfg = RewardTrainConfig(epochs=r.epochs, batch_size=r.batch_size, lr=r.lr, val_fraction=r.val_fraction,
                                patience=r.patience, channels=tuple(n.channels), norm=n.norm, device=str(self.device),
                                seed=self.config.seed + iteration, progress=self.config.progress,
                                tensorboard_dir=str(self.run_dir / "tb" / f"reward_iter_{iteration:03d}"))
        out = self._iter_dir(iteration) / "reward_net.pt"
        result = train_reward_network(RewardSampleDataset(store), self.n_classes, cfg, out_path=out,
                                      iteration=iteration)
        info = {"ece_before": result.val_ece_before, "ece_after": result.val_ece_after,
                "temperature": result.temperature, "reward_val_accuracy": result.val_accuracy,
                "reward_train_samples": result.n_train}
        return LearnedReward(result.net, device=self.device), info

    @property
    def n_classes(self) -> int:
        return self.datasets["source_train"].n_classes

    def _iter_dir(self, iteration: int) -> Path:
        d = self.ckpt_dir / f"iter_{iteration:03d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _make_model(self, env, actor_path: Path):
        from agents.ppo import PixelPPO

        p, n = self.config.ppo, self.config.network
        done = self.state["completed_iterations"]
        if done > 0:
            return PixelPPO.load(str(self._iter_dir(done) / "ppo.zip"), env=env, device=self.device)
        unet = {"channels": list(n.channels), "norm": n.norm}
        return PixelPPO("PixelUNetPolicy", env, n_steps=1, batch_size=p.batch_size_base, n_epochs=p.n_epochs,
                        clip_range=p.clip_range, max_grad_norm=p.max_grad_norm, use_pseudo_labels=p.anchors,
                        update_actor_norm_stats=p.update_norm_stats_in_ppo,
                        image_log_interval=p.image_log_interval, tensorboard_log=str(self.run_dir / "tb"),
                        seed=self.config.seed, device=self.device,
                        policy_kwargs={"actor_kwargs": unet, "critic_kwargs": unet, "pretrained_actor": str(actor_path),
                                       "actor_lr": p.actor_lr, "critic_lr": p.critic_lr})

    def _on_iteration_end(self, iteration: int, callback: RewardRetrainingCallback) -> None:
        from reward.uncertainty import UncertaintyAccumulator, plot_reliability_diagram
        from agents.networks import save_unet

        model = callback.model
        d = self._iter_dir(iteration)
        tmp = d / ".ppo.zip.tmp.zip"
        model.save(str(tmp))
        os.replace(tmp, d / "ppo.zip")
        save_unet(model.policy.actor, str(d / "actor.pt"), iteration=iteration, class_names=list(
            self.datasets["source_train"].class_names), image_size=[self.config.data.image_size] * 2)
        save_unet(model.policy.critic, str(d / "critic.pt"), iteration=iteration)
        ids = sorted(callback.pseudo_labels)
        atomic_save_npz(d / "pseudo_labels.npz", ids=np.asarray(ids, dtype=str),
                        labels=np.stack([callback.pseudo_labels[k] for k in ids]) if ids else np.zeros((0, 1, 1), np.uint8))
        scores = self.evaluate(model.policy.actor, callback.reward_model, figure=f"predictions_iter_{iteration:03d}")
        if callback.reward_model is not None:  # reliability diagram of the reward network on target test predictions
            ds, images = self.test_set
            preds = predict(model.policy.actor, images, self.config.evaluation.batch_size, self.device)
            acc = UncertaintyAccumulator(self.n_classes)
            acc.update(callback.reward_model(images, preds), preds, np.stack([ds[i].label for i in range(len(ds))]))
            plot_reliability_diagram(acc, self.run_dir / f"reliability_iter_{iteration:03d}.png",
                                     title=f"reward network, iteration {iteration} (target test)")
        record = {k: v for k, v in callback.records[iteration].items() if not k.startswith("_")}
        name = "RL4Seg (ground-truth reward)" if self.config.oracle_reward else "RL4Seg"
        row = {"iteration": iteration, "model": name, **scores, **record,
               "minutes": (time.time() - self._t0) / 60}
        self.state["rows"].append(row)
        if self.config.test_time.enabled and callback.reward_model is not None:
            self.state["rows"].append({"iteration": iteration, "model": f"{name} + TTO", "test_time": True,
                                       **self.evaluate_tto(model.policy.actor, callback.reward_model),
                                       "minutes": (time.time() - self._t0) / 60})
        self.state["completed_iterations"] = iteration
        self._save_state()  # the iteration is done from here on
        self._write_report()
        tto = self.state["rows"][-1] if self.state["rows"][-1].get("test_time") else None
        print(f"[rl4seg] iteration {iteration} done: target Dice LV+MYO {scores.get('dice_mean', float('nan')):.3f}, "
              f"validity {scores['validity_pct']:.1f}%" + (f"; with test-time optimisation {tto['dice_mean']:.3f}, "
                                                          f"{tto['validity_pct']:.1f}%" if tto else ""), flush=True)

    def _load_pseudo_labels(self) -> dict[str, np.ndarray]:
        done = self.state["completed_iterations"]
        if done == 0:
            return {}
        with np.load(self._iter_dir(done) / "pseudo_labels.npz", allow_pickle=False) as z:
            return {str(k): v for k, v in zip(z["ids"], z["labels"])}

    def run_iterations(self, actor_path: Path, ae) -> None:
        from functools import partial

        from reward.anatomy import validity_batch
        from reward.builder import PerturbationConfig, RewardDatasetBuilder, RewardSampleStore
        from reward.correctors import Corrector
        from rl4seg_env.vector import make_sb3_vec_env

        p, rd = self.config.ppo, self.config.reward_dataset
        start = self.state["completed_iterations"] + 1
        if start > p.iterations:
            return
        if self.config.oracle_reward:
            # ablation "ground-truth reward instead of the learned one": the only training path that reads
            # target labels, and only when asked for explicitly
            c = self.config.data
            labelled = domain_dataset(c.target, "train", c.target.n_train, c.image_size, c.keep_atrium, True, "target")
            env = make_sb3_vec_env(num_envs=p.batch_size_base, dataset=labelled, reward="accuracy")
        else:
            env = make_sb3_vec_env(num_envs=p.batch_size_base, dataset=self.datasets["target_train"], reward=None)
        env.seed(self.config.seed)
        model = self._make_model(env, actor_path)
        store = RewardSampleStore(self.run_dir / "reward_dataset")
        for stale in [i for i in store.completed_iterations() if i >= start]:
            store.discard(stale)  # written by an iteration that did not complete: rebuilt, never duplicated
        builder = RewardDatasetBuilder(
            Corrector(ae, n_classes=self.n_classes), partial(validity_batch, criteria=rd.criteria),
            PerturbationConfig(rd.weight_noise, rd.contrast, rd.image_noise, rd.swap),
            valid_dice_threshold=rd.valid_dice_threshold, batch_size=rd.batch_size, device=self.device,
            seed=self.config.seed)
        schedule = IterationSchedule(p.ent_coef_base, p.kl_coef_base, p.batch_size_base, p.shrink, p.perturb_sigma)
        callback = RewardRetrainingCallback(
            self.datasets["target_train"], builder, store, self._train_reward, iterations=p.iterations,
            updates_per_iteration=p.updates_per_iteration, images_per_iteration=rd.images_per_iteration,
            schedule=schedule, use_anchors=p.anchors, start_iteration=start, pseudo_labels=self._load_pseudo_labels(),
            on_iteration_end=self._on_iteration_end, adapt_norm_stats=p.adapt_norm_stats,
            progress=self.config.progress, verbose=1)
        steps = total_timesteps(range(start, p.iterations + 1), p.updates_per_iteration, env.num_envs, schedule)
        model.learn(steps, callback=callback, progress_bar=self.config.progress, tb_log_name="ppo",
                    reset_num_timesteps=start == 1)
        env.close()

    # --- everything -----------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run (or resume) every phase; returns the report rows."""
        actor_path = self.pretrain_source()
        ae = self.train_shape_ae()
        self._baselines(actor_path)
        self.run_iterations(actor_path, ae)
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
        rows = self.state["rows"]
        write_report(rows, self.run_dir)
        if plots and rows:
            plot_metrics(rows, self.run_dir / "metrics.png")


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
