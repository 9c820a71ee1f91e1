"""The configuration of a run: one schema composed of the library's own dataclasses, YAML and overrides.

Every option is declared once, where the code that uses it lives: :class:`~agents.networks.UNetConfig`,
:class:`~agents.pretrain.PretrainConfig`, :class:`~reward.correctors.ShapeAEConfig`,
:class:`~reward.builder.PerturbationConfig`, :class:`~reward.training.RewardTrainConfig`,
:class:`~agents.callbacks.IterationSchedule`, :class:`~agents.test_time.TTOConfig` and
:class:`~rl4seg_env.data.DatasetConfig`. The sections below only add what the run itself needs
(``iterations``, ``enabled`` switches, ...) by subclassing them.

:func:`load_config` merges defaults <- a YAML file (``yaml.safe_load``) <- ``key=value`` overrides and
checks everything before any work starts: unknown keys (with the nearest valid key), types (lists and
optionals included), ranges and names (each library dataclass checks its own in ``__post_init__``) and
the image size against the U-Net depth. Every :class:`ConfigError` names the key and where its value came
from (the file, or "command line").

Why not OmegaConf: its structured configs do not type ``tuple[int, ...]`` fields, which the library
dataclasses use, and its errors would still need rewriting to name the source and the nearest key; the
merge + type check below is ~150 lines.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.callbacks import IterationSchedule
from agents.networks import UNetConfig, check_speed_settings
from agents.ppo import ADVANTAGE_NORMALIZATION
from agents.pretrain import PretrainConfig
from agents.test_time import TTOConfig
from reward.anatomy import CRITERIA_SETS
from reward.builder import PerturbationConfig, SourceSampleConfig
from reward.correctors import CORRECTIONS, ShapeAEConfig
from reward.training import RewardTrainConfig
from rl4seg_env.data import DatasetConfig
from rl4seg_env.io import atomic_write_text, plain_values

#: the configs shipped with the package (``configs/*.yaml`` of a checkout)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
COMMAND_LINE = "command line"
#: the actors RL can start from (``ppo.init``) -> the report row of that model
RL_INITS = {"source": "source-only", "adabn": "AdaBN", "tent": "TENT"}
#: label-free model-selection scores (``evaluation.selection``)
SELECTION_SCORES = ("validity", "agreement", "confidence", "last")
#: what the reward network is fused with (``reward_net.fusion`` for PPO, ``test_time.fusion`` for test-time optimisation)
REWARD_FUSIONS = ("none", "shape_ae")


def check_fusion(fusion: str, owner: str) -> None:
    """``owner.fusion`` must be one of :data:`REWARD_FUSIONS`."""
    if fusion not in REWARD_FUSIONS:
        raise ValueError(f"{owner}.fusion must be one of {', '.join(REWARD_FUSIONS)}, got {fusion!r}")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key and where its value came from."""


# --------------------------------------------------------------------------------------------------
# the sections the run adds to the library's dataclasses
# --------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    source: DatasetConfig = field(default_factory=lambda: DatasetConfig(preset="source", n_train=800, n_val=100))
    target: DatasetConfig = field(default_factory=lambda: DatasetConfig(preset="default_target", n_train=1000,
                                                                        n_val=100, n_test=200))
    #: working image size in pixels (H = W); a multiple of the U-Net's 2 ** (levels - 1)
    image_size: int = 64
    #: keep the left atrium as class 3 (the paper segments LV and MYO only)
    keep_atrium: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"DataConfig.image_size must be >= 8, got {self.image_size}")


@dataclass
class ShapeAESection(ShapeAEConfig):
    #: train the shape auto-encoder corrector on source labels (false = morphological correction only)
    enabled: bool = True


@dataclass
class RewardDatasetSection(PerturbationConfig):
    """The reward-set builder (:class:`reward.builder.RewardDatasetBuilder`) and its negatives."""

    #: new target images predicted per iteration (authors: 2,500)
    images_per_iteration: int = 250
    #: a target training set smaller than iterations x images_per_iteration: predict again on the images of
    #: earlier iterations (with the current actor) once the fresh ones run out; false: fail instead
    reuse_images: bool = True
    #: anatomical criteria: "calibrated" (the echo criteria fitted to the labelled source maps at the working
    #: size, :mod:`reward.anatomy_calibration`), a set of :mod:`reward.anatomy` ("echo" = the paper's
    #: thresholds, "generic", a registered name) or the path of a calibrated-criteria YAML file
    criteria: str = "calibrated"
    #: with "calibrated": the fraction of source label maps each criterion must pass
    calibration_quantile: float = 0.99
    #: Dice(prediction, corrected) above which a valid prediction becomes a pseudo-label
    valid_dice_threshold: float = 0.95
    #: how predictions are corrected before the checks: "full" (the paper's: morphological correction, then the
    #: shape auto-encoder's projection of every map) or "minimal" (the projection only for maps the morphological
    #: correction leaves anatomically invalid; :class:`reward.correctors.Corrector`'s ``validity_fn``)
    correction: str = "full"
    #: images per forward pass of the builder
    batch_size: int = 32
    #: labelled *source* images per iteration whose predictions and / or moved boundaries join the reward set with
    #: their true labels as reference (kind "source"; ``source.images: 0``, the default: the paper's target-only set)
    source: SourceSampleConfig = field(default_factory=SourceSampleConfig)
    #: write the target samples (pseudo-labels, their negatives, corrected predictions) to the reward set; false
    #: trains the reward network on the ``source`` samples alone (needs ``source.images`` > 0), so it cannot learn
    #: the actor's own boundaries as right; pseudo-labels are still made (PPO's anchors)
    target_samples: bool = True
    #: the reward network of iteration i trains on the samples of iterations i - window + 1 .. i only (1: the
    #: current actor's samples alone); None: every iteration's samples so far (the paper's growing set). Samples are
    #: kept on disk either way
    window: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target_samples and not self.source.images:
            raise ValueError("reward_dataset.target_samples: false needs reward_dataset.source.images > 0 "
                             "(the reward set would be empty)")
        if self.window is not None and self.window < 1:
            raise ValueError(f"RewardDatasetSection.window must be >= 1 or null, got {self.window}")
        if self.images_per_iteration < 1 or self.batch_size < 1:
            raise ValueError("RewardDatasetSection.images_per_iteration and batch_size must be >= 1, got "
                             f"{self.images_per_iteration} and {self.batch_size}")
        if self.criteria != "calibrated" and self.criteria not in CRITERIA_SETS and not (
                self.criteria.endswith((".yaml", ".yml")) and Path(self.criteria).is_file()):
            raise ValueError(f"RewardDatasetSection.criteria must be calibrated, {', '.join(CRITERIA_SETS)} or an "
                             f"existing calibrated-criteria .yaml file, got {self.criteria!r}")
        if not 0.5 < self.calibration_quantile <= 1:
            raise ValueError("RewardDatasetSection.calibration_quantile must be in (0.5, 1], "
                             f"got {self.calibration_quantile}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"RewardDatasetSection.correction must be one of {', '.join(CORRECTIONS)}, "
                             f"got {self.correction!r}")
        if not 0 <= self.valid_dice_threshold <= 1:
            raise ValueError(f"RewardDatasetSection.valid_dice_threshold must be in [0, 1], "
                             f"got {self.valid_dice_threshold}")


@dataclass
class RewardNetSection(RewardTrainConfig):
    """The reward network's training (inherited from :class:`reward.training.RewardTrainConfig`) and what the loop
    makes of it (:mod:`reward.fusion`)."""

    #: reward networks trained per iteration (different seeds, same samples); PPO and test-time optimisation use the
    #: pixelwise mean of their maps. The held-out checks are the first network's
    ensemble: int = 1
    #: "none": the learned reward alone (the paper); "shape_ae": the pixelwise minimum of the learned reward and the
    #: shape auto-encoder's agreement with the action (reward.fusion.ShapeAgreementReward; needs shape_ae.enabled)
    fusion: str = "none"
    #: with ``fusion: shape_ae``, fuse PPO's reward only when the model RL starts from (``ppo.init``) has at most this
    #: label-free validity (its ``sel_validity``: % of the unlabelled target validation images anatomically valid),
    #: the regime where the learned reward is weakest (docs/experiments.md, "Stop 35"); null: always fuse
    fusion_max_validity: float | None = None
    #: iterations after the first start their network from the previous iteration's (the same ensemble member)
    #: instead of fresh weights; with ``max_steps`` each iteration then trains a bounded number of steps on the
    #: growing set. ``split_by: image`` becomes ``image_id`` (seeded by ``seed``): an image stays on its side of
    #: the validation split in every iteration. False: from scratch every iteration (the paper)
    warm_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ensemble < 1:
            raise ValueError(f"RewardNetSection.ensemble must be >= 1, got {self.ensemble}")
        check_fusion(self.fusion, "RewardNetSection")
        if self.fusion_max_validity is not None:
            if self.fusion == "none":
                raise ValueError("RewardNetSection.fusion_max_validity gates a fusion; set fusion: shape_ae with it")
            if not 0 <= self.fusion_max_validity <= 100:
                raise ValueError(f"RewardNetSection.fusion_max_validity must be a percentage in [0, 100], "
                                 f"got {self.fusion_max_validity}")


@dataclass
class PPOSection(IterationSchedule):
    """PixelPPO's settings and the iteration schedule (inherited from :class:`IterationSchedule`)."""

    #: RL4Seg iterations (authors: 4)
    iterations: int = 3
    #: PPO rollouts per iteration: each rollout has ``batch_size_base * i`` images
    updates_per_iteration: int = 20
    n_epochs: int = 5
    clip_range: float = 0.2
    actor_lr: float = 5e-4
    critic_lr: float = 5e-4
    max_grad_norm: float = 0.5
    #: "off", "mean" or "mean_std": per-minibatch advantage normalisation (PixelPPO's normalize_advantage)
    normalize_advantage: str = "off"
    #: dual-clip PPO bound c > 1 for negative advantages (null: plain clipping). Per-pixel ratios of actions sampled
    #: at tiny probabilities blew PPO up without it (approx. KL 1.6-81 in single updates, docs/experiments.md)
    dual_clip: float | None = 3.0
    #: stop an update's epochs once a minibatch's approximate KL to the rollout policy exceeds 1.5 x this
    #: (PixelPPO's target_kl, SB3's rule; null: every epoch runs)
    target_kl: float | None = None
    #: critic-only epochs on the first rollout before the first actor update
    critic_warmup_epochs: int = 0
    #: use accepted pseudo-labels as supervised anchors inside the RL batch
    anchors: bool = True
    #: the actor RL starts from and is KL-anchored to: "source" (the source-pretrained actor, the paper),
    #: "adabn" or "tent" (that label-free baseline's adapted copy of it, so RL refines what the baseline reaches);
    #: label-free selection then compares the RL iterations with this starting model
    init: str = "source"
    #: re-estimate the actor's batch-norm statistics on the unlabelled target images of iteration 1 before its
    #: first update (actor and reference policy; false: the statistics of the initial actor)
    adapt_norm_stats: bool = False
    #: also re-estimate them after each iteration's updates. PPO optimises the actor with its statistics frozen;
    #: re-estimating afterwards changes the function it optimised (development suite, ground-truth reward: the
    #: myocardium grew 20-50 px per image and Dice fell by up to 2.4 points; docs/experiments.md, "Levers")
    readapt_norm_stats: bool = False
    #: let batch-norm statistics drift with each PPO minibatch (train mode, SB3's behaviour)
    update_norm_stats_in_ppo: bool = True
    #: log an image panel to TensorBoard every N updates
    image_log_interval: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("iterations", "updates_per_iteration", "n_epochs", "image_log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOSection.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("clip_range", "actor_lr", "critic_lr", "max_grad_norm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PPOSection.{name} must be > 0, got {getattr(self, name)}")
        if self.init not in RL_INITS:
            raise ValueError(f"PPOSection.init must be one of {', '.join(RL_INITS)}, got {self.init!r}")
        if self.normalize_advantage not in ADVANTAGE_NORMALIZATION:
            raise ValueError(f"PPOSection.normalize_advantage must be one of {', '.join(ADVANTAGE_NORMALIZATION)}, "
                             f"got {self.normalize_advantage!r}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"PPOSection.dual_clip must be > 1 or null, got {self.dual_clip}")
        if self.critic_warmup_epochs < 0:
            raise ValueError(f"PPOSection.critic_warmup_epochs must be >= 0, got {self.critic_warmup_epochs}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"PPOSection.target_kl must be > 0 or null, got {self.target_kl}")


@dataclass
class EvalSection:
    #: test images of the target domain used for the per-iteration report
    n_test: int = 200
    batch_size: int = 32
    #: target images shown in the prediction PNG
    n_figures: int = 4
    #: also train a target-supervised oracle (same network and budget as the source pretraining) for the
    #: report's upper bound. It reads target *training* labels, so it lives in the evaluation, never in the loop.
    oracle: bool = True
    #: label-free baselines reported next to RL4Seg on the same source model and test images ("adabn", "tent";
    #: "TENT + TTO" rows follow each iteration when test_time is enabled)
    baselines: list[str] = field(default_factory=lambda: ["adabn", "tent"])
    #: label-free score that picks the reported iteration ("RL4Seg selected" rows) among 0 (the model RL
    #: starts from, ppo.init) .. N, on the unlabelled target validation images: "validity" (% anatomically valid;
    #: chosen on the development suite, docs/protocol.md), "confidence" (mean max softmax probability),
    #: "agreement" (Dice with the previous iteration's predictions) or "last" (the last iteration, the paper's choice)
    selection: str = "validity"

    def __post_init__(self) -> None:
        for name in ("n_test", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalSection.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_figures < 0:
            raise ValueError(f"EvalSection.n_figures must be >= 0, got {self.n_figures}")
        unknown = sorted(set(self.baselines) - {"adabn", "tent"})
        if unknown:
            raise ValueError(f"EvalSection.baselines must list adabn and/or tent, got {unknown}")
        if self.selection not in SELECTION_SCORES:
            raise ValueError(f"EvalSection.selection must be one of {', '.join(SELECTION_SCORES)}, "
                             f"got {self.selection!r}")


@dataclass
class TestTimeSection(TTOConfig):
    """Test-time optimisation (RL4Seg3D; :mod:`agents.test_time`) of the target test images whose prediction
    fails the anatomical criteria, reported as extra "RL4Seg + TTO" rows; training is unchanged."""

    enabled: bool = False
    #: also rank the morphologically corrected version of each candidate (reward.correctors.morphological_correction:
    #: largest component per structure, holes and gaps filled), label-free; ranked by reward like the others
    repair: bool = True
    #: the reward optimised: "none" (the reward network) or "shape_ae" (its pixelwise minimum with the shape
    #: auto-encoder's agreement with the action, reward.fusion; needs shape_ae.enabled)
    fusion: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fusion(self.fusion, "TestTimeSection")


@dataclass
class DistributedSection:
    """What a ``torchrun`` run needs set by hand (ranks, world size and addresses come from torchrun)."""

    #: ``null``: ``nccl`` on CUDA with one GPU per process, ``gloo`` otherwise (also when processes share a GPU)
    backend: str | None = None
    #: how long a process waits for the others at a collective; rank 0 alone pretrains and evaluates while
    #: the others wait, so this must cover the longest of those phases (a crash of one process stops all of
    #: them through torchrun whatever this is)
    timeout_minutes: float = 240.0

    def __post_init__(self) -> None:
        if self.backend not in (None, "gloo", "nccl", "mpi"):
            raise ValueError(f"DistributedSection.backend must be gloo, nccl, mpi or null, got {self.backend!r}")
        if self.timeout_minutes <= 0:
            raise ValueError(f"DistributedSection.timeout_minutes must be > 0, got {self.timeout_minutes}")


@dataclass
class LoopConfig:
    """Everything ``rl4seg-train`` runs: source pretraining, N RL4Seg iterations, evaluation."""

    seed: int = 0
    #: "auto", "cpu", "cuda", "cuda:1", "mps"
    device: str = "auto"
    #: torch threads on the CPU (0 = torch's default)
    num_threads: int = 0
    #: training precision of pretraining, reward network and PPO updates: "off" (float32), "auto" (bfloat16
    #: autocast on CUDA devices that support it, float16 with loss scaling on others, off on CPUs), "bf16",
    #: "fp16" (CUDA only). Off by default until measured on a GPU (docs/scaling.md)
    mixed_precision: str = "off"
    #: channels_last memory format for the networks' training (pretraining, reward network, PPO): null (auto) on
    #: CUDA and CPUs, where it made every training step 1.6-1.9x (CUDA) and 1.14-1.35x (CPU) faster
    #: (docs/scaling.md); true / false to force it
    channels_last: bool | None = None
    #: torch.compile the training steps' forward passes (pretraining, reward network, PPO update): false, true
    #: (the default backend, inductor: needs a C++ compiler on CPUs) or a backend name. Off: 1.57x per float32 step
    #: for 32 s of compilation per network and process on an H200 (docs/scaling.md), less than channels_last
    compile: bool | str = False
    run_dir: str = "runs/default"
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    network: UNetConfig = field(default_factory=UNetConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    shape_ae: ShapeAESection = field(default_factory=ShapeAESection)
    reward_dataset: RewardDatasetSection = field(default_factory=RewardDatasetSection)
    reward_net: RewardNetSection = field(default_factory=RewardNetSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    evaluation: EvalSection = field(default_factory=EvalSection)
    test_time: TestTimeSection = field(default_factory=TestTimeSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    #: train the reward net on ground-truth target rewards instead (ablation; reads target labels!)
    oracle_reward: bool = False
    #: build the reward set as usual, then replace the reference of every target sample by the true label of its
    #: image (ablation: the ceiling of better references; PPO's pseudo-label anchors stay the actor's predictions;
    #: reads target labels!)
    oracle_references: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"LoopConfig.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.num_threads < 0:
            raise ValueError(f"LoopConfig.num_threads must be >= 0, got {self.num_threads}")
        check_speed_settings(self.mixed_precision, self.compile, "LoopConfig.")
        if self.oracle_reward and self.oracle_references:
            raise ValueError("LoopConfig: oracle_reward and oracle_references exclude each other (the ground-truth "
                             "reward trains no reward network, so there are no references to replace)")
        for key, fusion in (("reward_net.fusion", self.reward_net.fusion), ("test_time.fusion", self.test_time.fusion)):
            if fusion == "shape_ae" and not self.shape_ae.enabled:
                raise ValueError(f"LoopConfig: {key} 'shape_ae' needs the shape auto-encoder (shape_ae.enabled: true)")


#: fields of library dataclasses that the run fills from one top-level key (declared once, set once):
#: ``{section: {field: the key that sets it}}``. Setting them inside the section is an error.
RUN_FILLED: dict[str, dict[str, str]] = {
    "pretrain": {"channels": "network.channels", "norm": "network.norm", "device": "device", "seed": "seed",
                 "tensorboard_log": "run_dir", "progress": "progress", "mixed_precision": "mixed_precision",
                 "channels_last": "channels_last", "compile": "compile"},
    "reward_net": {"channels": "network.channels", "norm": "network.norm", "device": "device", "seed": "seed",
                   "tensorboard_dir": "run_dir", "progress": "progress", "mixed_precision": "mixed_precision",
                   "channels_last": "channels_last", "compile": "compile"},
}


# --------------------------------------------------------------------------------------------------
# loading and checking
# --------------------------------------------------------------------------------------------------
def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _describe(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {_describe(inner[0], plural=True)}" if inner else "a list"
    names = {bool: ("true/false", "true/false values"), int: ("an integer", "integers"),
             float: ("a number", "numbers"), str: ("a string", "strings")}
    return names[hint][plural] if hint in names else str(hint)


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (int -> float, list -> tuple); raises TypeError when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise TypeError
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        return items if origin is list else tuple(items)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if value is False:  # YAML 1.1 reads an unquoted `off` as false: mixed_precision: off
            return "off"
    raise TypeError


class _Builder:
    """Builds a :class:`LoopConfig` from a tree of plain values, remembering where each value came from."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def where(self, key: str) -> str:
        source = self.sources.get(key)
        if source is None:  # a section: where its keys came from (the last layer that set one)
            source = next((s for k, s in reversed(list(self.sources.items())) if k.startswith(key + ".")),
                          "defaults")
        return source if source == COMMAND_LINE or source == "defaults" else f"file {source}"

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"config key '{key}' ({self.where(key)}): {message}")

    def build(self, cls: type, values: Any, prefix: str) -> Any:
        if not isinstance(values, dict):
            raise self.fail(prefix, f"is a section; expected a mapping of keys, found {values!r}")
        hints = _fields(cls)
        section = prefix.split(".")[-1]
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            if key not in hints:
                near = difflib.get_close_matches(str(key), list(hints), n=1)
                hint = f"; did you mean '{prefix + '.' if prefix else ''}{near[0]}'?" if near else ""
                raise ConfigError(f"unknown config key '{full}' ({self.where(full)}){hint} "
                                  f"(valid keys here: {', '.join(hints)})")
            filled_by = RUN_FILLED.get(section, {}).get(key) if prefix == section else None
            if filled_by is not None:
                raise self.fail(full, f"is set by the run from '{filled_by}'; set that key instead")
            hint = hints[key]
            if dataclasses.is_dataclass(hint):
                if not isinstance(value, dict):
                    raise self.fail(full, f"is a section; expected a mapping of keys, found {value!r}")
                defaults = _plain_fields(getattr(cls(), key))
                for filled in RUN_FILLED.get(key, {}) if not prefix else ():
                    defaults.pop(filled)
                kwargs[key] = self.build(hint, {**defaults, **value}, full)
                continue
            try:
                kwargs[key] = _coerce(value, hint)
            except TypeError:
                raise self.fail(full, f"expects {_describe(hint)}, found {value!r}") from None
        try:
            return cls(**kwargs)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            message = str(exc)
            names = re.findall(r"\b[A-Za-z]+\.(\w+)", message) + re.findall(r"\w+", message)
            key = next((n for n in names if n in hints and not dataclasses.is_dataclass(hints[n])), None)
            # a check across sections names the key it is about as 'section.key'
            key = key or next((d for d in re.findall(r"\b\w+(?:\.\w+)+\b", message)
                               if dataclasses.is_dataclass(hints.get(d.split(".")[0]))), None)
            raise self.fail(f"{prefix}.{key}" if prefix and key else (key or prefix or "<root>"), message) from None


def _plain_fields(obj: Any) -> dict[str, Any]:
    """A dataclass's own fields as a tree of plain values (nested sections as dicts)."""
    return {f.name: (_plain_fields(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v)
            for f in dataclasses.fields(obj)}


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}' ({COMMAND_LINE}): '{'.'.join(parts[:i + 1])}' is not a section")
    node[parts[-1]] = value


def _record_sources(tree: Any, source: str, sources: dict[str, str], prefix: str = "") -> None:
    """Where each leaf value came from (sections are not recorded: their keys may come from several layers)."""
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            _record_sources(value, source, sources, full)
        else:
            sources[full] = source


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``["ppo.iterations=2", ...]`` -> ``[("ppo.iterations", 2), ...]`` (values parsed as YAML)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} ({COMMAND_LINE}) must look like key=value (e.g. ppo.iterations=2)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key '{key.strip()}' ({COMMAND_LINE}): value {raw!r} is not valid YAML "
                              f"({exc})") from None
        out.append((key.strip(), value))
    return out


def _duplicate_keys(text: str) -> list[str]:
    """Keys given twice in one mapping of a YAML document, as ``'key' (lines a and b)``: plain YAML keeps the last
    one silently, so a key edited in one place and left in another would be ignored. Reads the document's node
    tree (``yaml.compose``), which builds no objects."""
    found: list[str] = []
    stack = [yaml.compose(text, Loader=yaml.SafeLoader)]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        found.append(f"{key.value!r} (lines {seen[key.value]} and {line})")
                    seen.setdefault(key.value, line)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return found


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
        tree = yaml.safe_load(text)
        duplicates = _duplicate_keys(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if duplicates:
        raise ConfigError(f"{path}: key given twice in one section (YAML would keep the last silently): "
                          + ", ".join(duplicates))
    tree = tree or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return tree


def _build_config(layers: Sequence[tuple[dict[str, Any], str]]) -> LoopConfig:
    """Merge trees (later wins; each with its source name) and build the checked :class:`LoopConfig`."""
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer, source in layers:
        _record_sources(layer, source, sources)
        _merge(tree, layer)
    builder = _Builder(sources)
    config = builder.build(LoopConfig, tree, "")
    divisor = config.network.divisor
    if config.data.image_size % divisor:
        # blame the key that was set (the image size, else the network depth)
        key = "network.channels" if "network.channels" in sources and "data.image_size" not in sources \
            else "data.image_size"
        raise builder.fail(key, f"data.image_size must be a multiple of {divisor} for a U-Net of "
                                f"{len(config.network.channels)} levels (network.channels), got {config.data.image_size}")
    return config


def _merge(tree: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] | None = None) -> LoopConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, checked (module docstring).

    >>> cfg = load_config(None, ["ppo.iterations=2", "data.image_size=32"])
    """
    layers = []
    if path is not None:
        layers.append((_read_yaml(Path(path)), str(path)))
    overridden: dict[str, Any] = {}
    for key, value in parse_overrides(overrides or []):
        _set_dotted(overridden, key, value)
    layers.append((overridden, COMMAND_LINE))
    return _build_config(layers)


def apply_overrides(config: LoopConfig, overrides: Sequence[str]) -> LoopConfig:
    """A copy of ``config`` with ``key=value`` overrides applied and checked (errors name the command line)."""
    overridden: dict[str, Any] = {}
    for key, value in parse_overrides(overrides):
        _set_dotted(overridden, key, value)
    return _build_config([(config_to_dict(config), "defaults"), (overridden, COMMAND_LINE)])


def default_config_path() -> Path:
    """``configs/default.yaml`` shipped with the package."""
    return CONFIG_DIR / "default.yaml"


def config_to_dict(config: LoopConfig) -> dict[str, Any]:
    """The config as plain values (tuples as lists), without the fields the run fills (:data:`RUN_FILLED`)."""
    tree = _plain_fields(config)
    for section, filled in RUN_FILLED.items():
        for key in filled:
            tree[section].pop(key, None)
    return plain_values(tree)


def config_to_yaml(config: LoopConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: LoopConfig, path: str | os.PathLike) -> None:
    atomic_write_text(path, config_to_yaml(config))
