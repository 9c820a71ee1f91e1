"""Configuration of the RL4Seg loop: nested dataclasses, YAML files and ``key=value`` overrides.

Every key is checked: an unknown key (in a file or an override) raises :class:`ConfigError` naming it
and suggesting the nearest valid key. Defaults are the CPU synthetic benchmark; ``configs/*.yaml``
hold the other settings (CI, CAMUS, the paper's 256 px GPU run).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key (and the file)."""


@dataclass
class DomainConfig:
    #: "synthetic", "camus" or "nifti"
    dataset: str = "synthetic"
    #: synthetic preset name ("source", "target_*"; "default_target" = the generator's DEFAULT_TARGET)
    preset: str = "source"
    #: CAMUS root folder (dataset: camus)
    root: str | None = None
    #: NIfTI manifest CSV (dataset: nifti)
    manifest: str | None = None
    #: number of images per split for synthetic data (null = the generator's default); for real data the
    #: first n of the split are used
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    #: synthetic generator seed (domain realisation)
    seed: int = 0


@dataclass
class DataConfig:
    source: DomainConfig = field(default_factory=lambda: DomainConfig(preset="source", n_train=800, n_val=100))
    target: DomainConfig = field(default_factory=lambda: DomainConfig(preset="default_target", n_train=1000,
                                                                      n_val=100, n_test=200))
    #: working image size in pixels (H = W)
    image_size: int = 64
    #: keep the left atrium as class 3 (the paper segments LV and MYO only)
    keep_atrium: bool = False


@dataclass
class NetworkConfig:
    #: U-Net widths per level (shallow to deep), shared by actor, critic and reward network
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    norm: str = "batch"


@dataclass
class PretrainSection:
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    patience: int = 5
    loss: str = "ce"


@dataclass
class ShapeAESection:
    #: train the shape auto-encoder corrector on source labels (false = morphological correction only)
    enabled: bool = True
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3


@dataclass
class RewardDatasetSection:
    #: new target images predicted per iteration (authors: 2,500)
    images_per_iteration: int = 250
    #: anatomical criteria set ("echo" or "generic")
    criteria: str = "echo"
    #: Dice(prediction, corrected) above which a valid prediction becomes a pseudo-label
    valid_dice_threshold: float = 0.95
    #: std of Gaussian noise added to all actor weights, one negative each
    weight_noise: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.015, 0.02])
    #: contrast-reduction factors, one negative each
    contrast: list[float] = field(default_factory=lambda: [0.7, 0.8])
    #: std of Gaussian image noise, one negative each
    image_noise: list[float] = field(default_factory=lambda: [0.05, 0.1])
    #: add a sampled prediction of another image of the batch (a swap)
    swap: bool = True
    batch_size: int = 32


@dataclass
class RewardNetSection:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.1
    patience: int = 3


@dataclass
class PPOSection:
    #: RL4Seg iterations (authors: 4)
    iterations: int = 3
    #: PPO rollouts per iteration: each rollout has ``batch_size_base * i`` images
    updates_per_iteration: int = 20
    n_epochs: int = 5
    clip_range: float = 0.2
    actor_lr: float = 5e-4
    critic_lr: float = 5e-4
    max_grad_norm: float = 0.5
    #: schedule: entropy coefficient = ent_coef_base / (2 i), KL coefficient = kl_coef_base / (2 i)
    ent_coef_base: float = 0.3
    kl_coef_base: float = 0.1
    #: rollout batch = batch_size_base * i images
    batch_size_base: int = 8
    #: shrink-and-perturb between iterations: w <- shrink * w + N(0, perturb_sigma^2)
    shrink: float = 0.5
    perturb_sigma: float = 0.01
    #: use accepted pseudo-labels as supervised anchors inside the RL batch
    anchors: bool = True
    #: re-estimate the actor's batch-norm statistics on the unlabelled target images of the iteration: before
    #: iteration 1 (actor and reference policy, so both start as the same target-normalised function) and after
    #: each iteration's updates. No labels are involved; false keeps the source statistics (the paper's setting)
    adapt_norm_stats: bool = False
    #: let batch-norm statistics drift with each PPO minibatch (train mode, SB3's behaviour); false evaluates
    #: the actor during updates exactly as during rollouts
    update_norm_stats_in_ppo: bool = True
    #: log an image panel to TensorBoard every N updates
    image_log_interval: int = 10


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


@dataclass
class TTOSection:
    """Test-time optimisation (RL4Seg3D; :mod:`agents.test_time`) of the target test images whose prediction
    fails the anatomical criteria: a few PPO steps per image against the reward network. Reported as extra
    "RL4Seg + TTO" rows next to each iteration's plain argmax row; training is unchanged."""

    enabled: bool = False
    #: PPO steps per invalid image at most (stops at the first valid prediction)
    steps: int = 10
    #: label maps sampled per step
    n_samples: int = 8
    #: clipped-surrogate updates per step
    n_epochs: int = 3
    lr: float = 5e-4
    #: KL shaping to the adapted actor
    kl_coef: float = 0.1
    ent_coef: float = 0.0


@dataclass
class LoopConfig:
    """Everything ``scripts/train_loop.py`` runs: source pretraining, N RL4Seg iterations, evaluation."""

    seed: int = 0
    #: "auto", "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: torch threads on the CPU (0 = torch's default)
    num_threads: int = 0
    run_dir: str = "runs/default"
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    shape_ae: ShapeAESection = field(default_factory=ShapeAESection)
    reward_dataset: RewardDatasetSection = field(default_factory=RewardDatasetSection)
    reward_net: RewardNetSection = field(default_factory=RewardNetSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    evaluation: EvalSection = field(default_factory=EvalSection)
    test_time: TTOSection = field(default_factory=TTOSection)
    #: train the reward net on ground-truth target rewards instead (ablation; reads target labels!)
    oracle_reward: bool = False


def _valid_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a dict, recursing into nested dataclasses; refuse unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(values).__name__} ({values!r})")
    hints = get_type_hints(cls)
    default = cls()
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            near = difflib.get_close_matches(str(key), _valid_keys(cls), n=1)
            hint = f"; did you mean {where.rstrip(':')}.{near[0]}?".replace("<root>.", "") if near else ""
            raise ConfigError(f"unknown config key '{_join(where, key)}'{hint} "
                              f"(valid keys here: {', '.join(_valid_keys(cls))})")
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            merged = dataclasses.asdict(current)
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{_join(where, key)}' is a section; expected a mapping, found {value!r}")
            merged.update(value)
            kwargs[key] = _build(type(current), merged, _join(where, key))
        else:
            kwargs[key] = _coerce(value, current, _join(where, key))
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return key if where == "<root>" else f"{where}.{key}"


def _coerce(value: Any, default: Any, key: str) -> Any:
    # ints are accepted where floats are expected (1 for 1.0), nothing else is converted silently
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects true/false, found {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, list) and isinstance(value, list):
        return value
    raise ConfigError(f"config key '{key}' expects {type(default).__name__}, found {value!r}")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> LoopConfig:
    """Defaults <- YAML file (``yaml.safe_load``) <- ``key=value`` overrides (values parsed as YAML).

    >>> cfg = load_config(None, ["ppo.iterations=2", "data.image_size=32"])
    """
    tree: dict[str, Any] = {}
    where = "<root>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
        tree = loaded or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ppo.iterations=2)")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return _build(LoopConfig, tree, where)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def config_to_dict(config: LoopConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: LoopConfig, path: str | os.PathLike) -> None:
    from rl4seg_env.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
