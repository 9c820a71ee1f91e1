"""rl-zoo3-style hyper-parameter files of the RL benchmark: ``algorithm -> env id -> hyper-parameters``.

:func:`load_zoo_config` reads one, refuses unknown keys (naming the key and the file) and resolves the
algorithm classes, learning-rate schedules and policy kwargs; :class:`ZooEntry` is one algorithm's entry.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import LinearSchedule

#: env ids an algorithm may train on: the full (H, W) label-map action, or the coarse-grid wrapper
FULL_ENV_ID = "RL4Seg-v0"
SMALL_ENV_ID = "RL4SegSmall-v0"
ENV_IDS = (FULL_ENV_ID, SMALL_ENV_ID)

#: built-in algorithms: YAML name -> "module:Class" (sb3-contrib's come with ``pip install rl4seg[bench]``)
ALGORITHM_CLASSES: dict[str, str] = {
    "pixel_ppo": "agents.ppo:PixelPPO",
    "ppo": "stable_baselines3:PPO",
    "a2c": "stable_baselines3:A2C",
    "trpo": "sb3_contrib:TRPO",
}

#: YAML keys that are not constructor arguments
_ENTRY_KEYS = ("n_envs", "policy", "env_kwargs", "algorithm_class")
#: constructor arguments the benchmark sets itself (same for every algorithm)
_RESERVED_KEYS = ("env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model")
#: env kwargs of RL4SegSmall-v0 a YAML may set (the data itself is the benchmark's)
_SMALL_ENV_KEYS = ("action_size", "obs_size", "flatten_obs")
_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU, "leaky_relu": torch.nn.LeakyReLU,
    "gelu": torch.nn.GELU, "silu": torch.nn.SiLU,
}



# ----------------------------------------------------------------------------------------------
# Hyper-parameter YAML
# ----------------------------------------------------------------------------------------------
class ZooConfigError(ValueError):
    """A hyper-parameter file that cannot be used; the message names the file and the key."""


@dataclass
class ZooEntry:
    """The hyper-parameters of one algorithm on one env id, validated against the algorithm's class.

    :param algorithm: name of the YAML section (e.g. ``"ppo"``).
    :param env_id: ``"RL4Seg-v0"`` (full label-map actions) or ``"RL4SegSmall-v0"`` (coarse grid).
    :param algorithm_class: the class, e.g. ``stable_baselines3.PPO``.
    :param n_envs: parallel envs (images per env step).
    :param policy: policy name or class passed as the first constructor argument.
    :param env_kwargs: ``RL4SegSmall-v0`` wrapper arguments (``action_size``, ``obs_size``, ``flatten_obs``).
    :param hyperparams: remaining constructor arguments, resolved (schedules, activation classes).
    :param raw: the section as read from the file (for the results folder).
    :param source: the file it came from.
    """

    algorithm: str
    env_id: str
    algorithm_class: type[BaseAlgorithm]
    n_envs: int
    policy: Any
    env_kwargs: dict[str, Any]
    hyperparams: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def full_resolution(self) -> bool:
        """``True`` when the agent acts with a full (H, W) label map."""
        return self.env_id == FULL_ENV_ID

    @property
    def label(self) -> str:
        """Display name: the class name, plus the action grid for coarse-grid agents."""
        name = self.algorithm_class.__name__
        if self.full_resolution:
            return name
        h, w = pair(self.env_kwargs.get("action_size", 8))
        return f"{name} ({h}x{w} actions)"


def import_class(path: str) -> type:
    """Import ``"package.module:Class"``; ImportError / AttributeError name the path."""
    if ":" not in path:
        raise ValueError(f"algorithm class must be written 'module:Class', found {path!r}")
    module_name, _, class_name = path.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, class_name)
    except AttributeError as error:
        raise AttributeError(f"module {module_name!r} has no class {class_name!r} (from {path!r})") from error


def load_zoo_config(path: str | Path, algorithms: Sequence[str] | None = None,
                    skip_unavailable: bool = False) -> dict[str, ZooEntry]:
    """Read and validate an rl-zoo3-style hyper-parameter file.

    Layout: ``{algorithm: {env_id: {n_envs, policy, env_kwargs, <constructor argument>: value}}}`` with
    one env id per algorithm. ``algorithm`` is a built-in name (:data:`ALGORITHM_CLASSES`) or any name
    whose section sets ``algorithm_class: "module:Class"`` (a ``BaseAlgorithm`` subclass). Every other key
    must be a constructor argument of that class, except those the benchmark sets (``env``, ``seed``,
    ``device``, ``verbose``, ``tensorboard_log``). ``learning_rate: lin_<float>`` is a linear schedule;
    ``policy_kwargs.activation_fn`` a name (``tanh``, ``relu``, ...).

    :param path: the YAML file.
    :param algorithms: sections to load, in this order (default ``None``: all, in file order).
    :param skip_unavailable: when an algorithm's package is not installed (e.g. sb3-contrib), warn and
        leave it out instead of raising (default ``False``). Only for sections not asked for by name.
    :return: ``{algorithm: ZooEntry}``.
    :raises FileNotFoundError: no such file.
    :raises ZooConfigError: bad layout, unknown algorithm, env id or key, wrong value type.
    :raises ImportError: an algorithm's package is missing (with the install command).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hyper-parameter file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise ZooConfigError(f"{path}: expected a mapping 'algorithm -> env id -> hyper-parameters', "
                             f"found {type(data).__name__}")
    names = list(data) if algorithms is None else list(algorithms)
    missing = [name for name in names if name not in data]
    if missing:
        raise ZooConfigError(f"{path}: no section for algorithm(s) {missing}; the file has {list(data)}")
    entries: dict[str, ZooEntry] = {}
    for name in names:
        try:
            entries[name] = _parse_entry(path, str(name), data[name])
        except ImportError as error:
            if skip_unavailable and algorithms is None:
                warnings.warn(f"skipping {name!r} from {path}: {error}", stacklevel=2)
                continue
            raise
    return entries


def _parse_entry(path: Path, name: str, section: Any) -> ZooEntry:
    where = f"{path}: {name}"
    if not isinstance(section, dict) or len(section) != 1:
        found = list(section) if isinstance(section, dict) else type(section).__name__
        raise ZooConfigError(f"{where}: expected exactly one env id ({' or '.join(ENV_IDS)}) mapping to "
                             f"hyper-parameters, found {found}")
    (env_id, params), = section.items()
    if env_id not in ENV_IDS:
        raise ZooConfigError(f"{where}: unknown env id {env_id!r}; expected one of {list(ENV_IDS)}")
    where = f"{where}.{env_id}"
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ZooConfigError(f"{where}: hyper-parameters must be a mapping, found {type(params).__name__}")

    class_path = params.get("algorithm_class", ALGORITHM_CLASSES.get(name))
    if class_path is None:
        raise ZooConfigError(f"{where}: unknown algorithm {name!r}; built-in ones are {sorted(ALGORITHM_CLASSES)}, "
                             "or set 'algorithm_class: module:Class' in its section")
    try:
        algorithm_class = import_class(str(class_path))
    except ModuleNotFoundError as error:
        extra = " (pip install 'rl4seg[bench]' or pip install sb3-contrib)" if "sb3_contrib" in str(class_path) else ""
        raise ImportError(f"{where}: cannot import {class_path!r}: {error}{extra}") from error
    if not (inspect.isclass(algorithm_class) and issubclass(algorithm_class, BaseAlgorithm)):
        raise ZooConfigError(f"{where}: algorithm_class {class_path!r} is not a stable_baselines3 BaseAlgorithm")

    accepted = set(inspect.signature(algorithm_class.__init__).parameters) - {"self", "policy", *_RESERVED_KEYS}
    for key in params:
        if key in _ENTRY_KEYS or key in accepted:
            continue
        if key in _RESERVED_KEYS:
            raise ZooConfigError(f"{where}: key {key!r} is set by the benchmark, remove it from the file")
        if key == "n_timesteps":
            raise ZooConfigError(f"{where}: key 'n_timesteps' is not used: every algorithm gets the same budget "
                                 "from --budget-steps / --budget-seconds")
        raise ZooConfigError(f"{where}: unknown key {key!r} for {algorithm_class.__name__}; expected one of "
                             f"{sorted(accepted | set(_ENTRY_KEYS))}")

    n_envs = params.get("n_envs", 8)
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ZooConfigError(f"{where}.n_envs: expected a positive integer, found {n_envs!r}")
    policy = params.get("policy", "PixelUNetPolicy" if env_id == FULL_ENV_ID else "MlpPolicy")
    env_kwargs = params.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise ZooConfigError(f"{where}.env_kwargs: expected a mapping, found {type(env_kwargs).__name__}")
    allowed_env = _SMALL_ENV_KEYS if env_id == SMALL_ENV_ID else ()
    for key in env_kwargs:
        if key not in allowed_env:
            raise ZooConfigError(f"{where}.env_kwargs: unknown key {key!r} for {env_id}; expected one of "
                                 f"{list(allowed_env)} (the data, image size and reward are the benchmark's)")
    hyperparams = {k: copy.deepcopy(v) for k, v in params.items() if k not in _ENTRY_KEYS}
    if "learning_rate" in hyperparams:
        hyperparams["learning_rate"] = _learning_rate(hyperparams["learning_rate"], f"{where}.learning_rate")
    if "policy_kwargs" in hyperparams:
        hyperparams["policy_kwargs"] = _policy_kwargs(hyperparams["policy_kwargs"], f"{where}.policy_kwargs")
    return ZooEntry(algorithm=name, env_id=env_id, algorithm_class=algorithm_class, n_envs=n_envs, policy=policy,
                    env_kwargs=dict(env_kwargs), hyperparams=hyperparams, raw={env_id: copy.deepcopy(params)},
                    source=str(path))


def _learning_rate(value: Any, where: str) -> float | LinearSchedule:
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            return LinearSchedule(float(value[4:]), 0.0, end_fraction=1.0)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ZooConfigError(f"{where}: expected a positive number or 'lin_<number>', found {value!r}")


def _policy_kwargs(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ZooConfigError(f"{where}: expected a mapping (python-expression strings are not evaluated), "
                             f"found {value!r}")
    value = dict(value)
    if "activation_fn" in value:
        name = value["activation_fn"]
        if name not in _ACTIVATIONS:
            raise ZooConfigError(f"{where}.activation_fn: expected one of {sorted(_ACTIVATIONS)}, found {name!r}")
        value["activation_fn"] = _ACTIVATIONS[name]
    return value


def pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


__all__ = ["ALGORITHM_CLASSES", "ENV_IDS", "FULL_ENV_ID", "SMALL_ENV_ID", "ZooConfigError", "ZooEntry", "import_class",
           "load_zoo_config", "pair"]
