"""rl_zoo3 hyper-parameter files of the RL benchmark: ``configs/zoo/<algorithm>.yml``, keyed by env id.

The same files train with ``python -m rl_zoo3.train --algo ppo --env RL4SegSmall-v0 --gym-packages rl4seg_env
--conf-file configs/zoo/ppo.yml``. :func:`load_zoo_config` reads them for ``benchmark_rl.py``, refuses unknown
keys (naming the key and the file) and resolves the algorithm classes, learning-rate schedules and policy
kwargs (rl_zoo3's ``"dict(...)"`` strings are parsed, never evaluated); :class:`ZooEntry` is one entry.
"""
from __future__ import annotations

import ast
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
#: the named task levels (rl4seg_env.levels): full label-map actions, and their coarse-grid variants
LEVEL_IDS = tuple(f"RL4Seg-{level}-v0" for level in ("Easy", "Medium", "Hard")) + tuple(
    f"RL4SegSmall-{level}-v0" for level in ("Easy", "Medium", "Hard"))
SMALL_LEVEL_IDS = tuple(i for i in LEVEL_IDS if i.startswith("RL4SegSmall-"))

#: built-in algorithms: YAML name -> "module:Class" (sb3-contrib's come with ``pip install rl4seg[bench]``)
ALGORITHM_CLASSES: dict[str, str] = {
    "pixel_ppo": "agents.ppo:PixelPPO",
    "ppo": "stable_baselines3:PPO",
    "a2c": "stable_baselines3:A2C",
    "trpo": "sb3_contrib:TRPO",
}

#: YAML keys that are not constructor arguments (n_timesteps: rl_zoo3's budget, not the benchmark's)
_ENTRY_KEYS = ("n_envs", "n_timesteps", "policy", "env_kwargs", "algorithm_class")
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
        """``True`` when the agent acts with a full (H, W) label map (``RL4Seg-v0`` or ``RL4Seg-<Level>-v0``)."""
        return not self.env_id.startswith("RL4SegSmall")

    @property
    def small_env_kwargs(self) -> dict[str, Any]:
        """The small wrapper's ``action_size`` / ``obs_size`` / ``flatten_obs``: the env id's registered values
        (a level's grid) overridden by the entry's ``env_kwargs``; empty for full-resolution entries."""
        if self.full_resolution:
            return {}
        import gymnasium as gym

        import rl4seg_env  # noqa: F401  (registers the ids)

        registered = {k: v for k, v in gym.spec(self.env_id).kwargs.items() if k in _SMALL_ENV_KEYS}
        return {**registered, **self.env_kwargs}

    @property
    def label(self) -> str:
        """Display name: the class name, plus the action grid for coarse-grid agents."""
        name = self.algorithm_class.__name__
        if self.full_resolution:
            return name
        h, w = pair(self.small_env_kwargs.get("action_size", 8))
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


def _algorithm_files(source: Path, algorithms: Sequence[str] | None) -> list[tuple[str, Path]]:
    """(algorithm, file) pairs of a folder of ``<algorithm>.yml`` files or of one such file."""
    if source.is_file():
        found = {source.stem: source}
    elif source.is_dir():
        found = {p.stem: p for p in sorted(source.glob("*.yml"))}
    else:
        raise FileNotFoundError(f"hyper-parameter file or folder {source} does not exist")
    order = [*[a for a in ALGORITHM_CLASSES if a in found], *[a for a in found if a not in ALGORITHM_CLASSES]]
    names = order if algorithms is None else list(algorithms)
    missing = [name for name in names if name not in found]
    if missing:
        raise ZooConfigError(f"{source}: no hyper-parameter file for algorithm(s) {missing}; found "
                             f"{[f'{a}.yml' for a in order]}")
    return [(name, found[name]) for name in names]


def load_zoo_config(source: str | Path, algorithms: Sequence[str] | None = None,
                    skip_unavailable: bool = False, level: str | None = None) -> dict[str, ZooEntry]:
    """Read and validate rl_zoo3 hyper-parameter files: one ``<algorithm>.yml`` per algorithm, keyed by env id.

    Layout of a file (rl_zoo3's own, so ``python -m rl_zoo3.train --conf-file`` reads it too)::

        RL4SegSmall-v0:            # one entry per env id: RL4Seg-v0, RL4SegSmall-v0 or a level id
          n_timesteps: 100000      # rl_zoo3's budget; the benchmark gives every algorithm its own budget
          n_envs: 8
          policy: MlpPolicy
          env_kwargs: {action_size: 8}
          policy_kwargs: "dict(net_arch=[256, 256], activation_fn=nn.Tanh)"
          <constructor argument>: value

    The benchmark uses each algorithm's ``RL4Seg-v0`` or ``RL4SegSmall-v0`` entry; the other entries (the
    named levels) are checked the same way. ``algorithm`` is a built-in name (:data:`ALGORITHM_CLASSES`) or
    any name whose entry sets ``algorithm_class: "module:Class"`` (a ``BaseAlgorithm`` subclass). Every
    other key must be a constructor argument of that class, except those the benchmark sets (``env``,
    ``seed``, ``device``, ``verbose``, ``tensorboard_log``). ``learning_rate: lin_<float>`` is a linear
    schedule; ``policy_kwargs`` a mapping or rl_zoo3's ``"dict(...)"`` string, read without ``eval``
    (literals, ``dict(...)`` and ``nn.<Module>`` names only).

    :param source: a folder of ``<algorithm>.yml`` files (e.g. ``configs/zoo``) or one such file.
    :param algorithms: algorithms to load, in this order (default ``None``: every file of the folder).
    :param skip_unavailable: when an algorithm's package is not installed (e.g. sb3-contrib), warn and
        leave it out instead of raising (default ``False``). Only for algorithms not asked for by name.
    :param level: use each algorithm's entry for the named level (``"Easy"``, ``"Medium"``, ``"Hard"``:
        ``RL4Seg-<Level>-v0`` or ``RL4SegSmall-<Level>-v0``) instead of its base entry.
    :return: ``{algorithm: ZooEntry}``.
    :raises FileNotFoundError: no such file or folder.
    :raises ZooConfigError: bad layout, unknown algorithm, env id or key, wrong value type.
    :raises ImportError: an algorithm's package is missing (with the install command).
    """
    source = Path(source)
    entries: dict[str, ZooEntry] = {}
    for name, path in _algorithm_files(source, algorithms):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not data:
            raise ZooConfigError(f"{path}: expected a mapping 'env id -> hyper-parameters' (rl_zoo3's layout), "
                                 f"found {type(data).__name__}")
        try:
            parsed = [_parse_entry(path, name, env_id, params) for env_id, params in data.items()]
        except ImportError as error:
            if skip_unavailable and algorithms is None:
                warnings.warn(f"skipping {name!r} from {path}: {error}", stacklevel=2)
                continue
            raise
        wanted = ENV_IDS if level is None else (f"RL4Seg-{level}-v0", f"RL4SegSmall-{level}-v0")
        usable = [e for e in parsed if e.env_id in wanted]
        if len(usable) != 1:
            raise ZooConfigError(f"{path}: expected exactly one entry for {' or '.join(wanted)} (the benchmark's "
                                 f"env ids{'' if level is None else ' of level ' + level}), found "
                                 f"{[e.env_id for e in usable]}")
        entries[name] = usable[0]
    return entries


def _parse_entry(path: Path, name: str, env_id: Any, params: Any) -> ZooEntry:
    where = f"{path}: {env_id}"
    known = (*ENV_IDS, *LEVEL_IDS)
    if env_id not in known:
        raise ZooConfigError(f"{where}: unknown env id {env_id!r}; expected one of {list(known)}")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ZooConfigError(f"{where}: hyper-parameters must be a mapping, found {type(params).__name__}")

    class_path = params.get("algorithm_class", ALGORITHM_CLASSES.get(name))
    if class_path is None:
        raise ZooConfigError(f"{where}: unknown algorithm {name!r}; built-in ones are {sorted(ALGORITHM_CLASSES)}, "
                             "or set 'algorithm_class: module:Class' in its entry")
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
        raise ZooConfigError(f"{where}: unknown key {key!r} for {algorithm_class.__name__}; expected one of "
                             f"{sorted(accepted | set(_ENTRY_KEYS))}")

    n_envs = params.get("n_envs", 8)
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ZooConfigError(f"{where}.n_envs: expected a positive integer, found {n_envs!r}")
    n_timesteps = params.get("n_timesteps", 1)
    if isinstance(n_timesteps, bool) or not isinstance(n_timesteps, (int, float)) or n_timesteps <= 0:
        raise ZooConfigError(f"{where}.n_timesteps: expected a positive number, found {n_timesteps!r}")
    small = env_id == SMALL_ENV_ID or env_id in SMALL_LEVEL_IDS
    policy = params.get("policy", "MlpPolicy" if small else "PixelUNetPolicy")
    env_kwargs = params.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise ZooConfigError(f"{where}.env_kwargs: expected a mapping, found {type(env_kwargs).__name__}")
    allowed_env = _SMALL_ENV_KEYS if small else ()
    for key in env_kwargs:
        if key not in allowed_env:
            raise ZooConfigError(f"{where}.env_kwargs: unknown key {key!r} for {env_id}; expected one of "
                                 f"{list(allowed_env)} (the data, image size and reward are the benchmark's)")
    hyperparams = {k: copy.deepcopy(v) for k, v in params.items() if k not in _ENTRY_KEYS}
    if "learning_rate" in hyperparams:
        hyperparams["learning_rate"] = _learning_rate(hyperparams["learning_rate"], f"{where}.learning_rate")
    if "policy_kwargs" in hyperparams:
        hyperparams["policy_kwargs"] = _policy_kwargs(hyperparams["policy_kwargs"], f"{where}.policy_kwargs")
    return ZooEntry(algorithm=name, env_id=str(env_id), algorithm_class=algorithm_class, n_envs=n_envs,
                    policy=policy, env_kwargs=dict(env_kwargs), hyperparams=hyperparams,
                    raw={env_id: copy.deepcopy(params)}, source=str(path))


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
    if isinstance(value, str):
        value = parse_kwargs_expression(value, where)
    if not isinstance(value, dict):
        raise ZooConfigError(f"{where}: expected a mapping or a 'dict(...)' string, found {value!r}")
    value = dict(value)
    if isinstance(value.get("activation_fn"), str):
        name = value["activation_fn"]
        if name not in _ACTIVATIONS:
            raise ZooConfigError(f"{where}.activation_fn: expected one of {sorted(_ACTIVATIONS)} or nn.<Module>, "
                                 f"found {name!r}")
        value["activation_fn"] = _ACTIVATIONS[name]
    return value


def parse_kwargs_expression(text: str, where: str = "policy_kwargs") -> Any:
    """Read rl_zoo3's ``policy_kwargs`` string (``"dict(net_arch=[64, 64], activation_fn=nn.Tanh)"``) without
    ``eval``: literals, lists, tuples, ``{...}`` and ``dict(...)`` with keyword arguments, and ``nn.<Name>``
    (also ``th.nn.`` / ``torch.nn.``) resolving to a ``torch.nn.Module`` subclass. Anything else is refused."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ZooConfigError(f"{where}: cannot parse {text!r}: {error.msg}") from error

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
            return {kw.arg: value(kw.value) for kw in node.keywords}
        if isinstance(node, ast.Attribute):
            dotted = ast.unparse(node)
            for prefix in ("nn.", "th.nn.", "torch.nn."):
                if dotted.startswith(prefix) and "." not in dotted[len(prefix):]:
                    module = getattr(torch.nn, dotted[len(prefix):], None)
                    if inspect.isclass(module) and issubclass(module, torch.nn.Module):
                        return module
            raise ZooConfigError(f"{where}: {dotted!r} is not a torch.nn module class")
        raise ZooConfigError(f"{where}: {ast.unparse(node)!r} is not allowed in {text!r} (literals, dict(...) and "
                             "nn.<Module> only; nothing is evaluated)")

    return value(tree.body)


def pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


__all__ = ["ALGORITHM_CLASSES", "ENV_IDS", "FULL_ENV_ID", "LEVEL_IDS", "SMALL_ENV_ID", "ZooConfigError", "ZooEntry",
           "import_class", "load_zoo_config", "pair", "parse_kwargs_expression"]
