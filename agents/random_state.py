"""The random state of a PixelPPO run, captured at an iteration boundary and restored on resume.

A run killed after iteration ``i`` and resumed must continue exactly as the uninterrupted run would have:
same rollout images, same sampled actions, same updates. What the continuation depends on, besides the
saved weights and optimiser states (``ppo.zip``), is captured here as plain JSON values:

- the global generators: Python's ``random``, NumPy's legacy generator, torch's CPU generator and, when
  the model runs on CUDA, every CUDA device's generator;
- the training env's episode state (``SegVectorEnv.get_episode_state``: each sub-env's generator and the
  images its current episodes show); the model's last observation is rebuilt from it, so PPO's next
  rollout starts from the same images.

:func:`capture_random_state` is called where the uninterrupted run would go on, and
:func:`restore_random_state` at the same point of the resumed run (the callback's training start).
"""
from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch

FORMAT = 1


def _tensor_to_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _text_to_tensor(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def _numpy_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    return {**state, "state": {"key": state["state"]["key"].tolist(), "pos": int(state["state"]["pos"])}}


def _set_numpy_state(state: dict[str, Any]) -> None:
    np.random.set_state({**state, "state": {"key": np.asarray(state["state"]["key"], dtype=np.uint32),
                                            "pos": state["state"]["pos"]}})


def capture_random_state(model: Any = None) -> dict[str, Any]:
    """The global generators' states and, with a model, its training env's episode state (JSON-able).

    :param model: a PixelPPO (any SB3 algorithm whose env is a ``SegVectorEnv`` under SB3 wrappers), or
        ``None`` for the global generators alone.
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"format": FORMAT, "python": [version, list(internal), gauss], "numpy": _numpy_state(),
                             "torch": _tensor_to_text(torch.get_rng_state())}
    device = getattr(model, "device", torch.device("cpu"))
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        state["cuda"] = [_tensor_to_text(s) for s in torch.cuda.get_rng_state_all()]
    env = None if model is None else model.get_env()
    if env is not None:
        state["env"] = env.env_method("get_episode_state", indices=[0])[0]
    return state


def restore_random_state(state: dict[str, Any], model: Any = None) -> None:
    """Put back what :func:`capture_random_state` captured; with a model, also its env's episodes and its
    last observation (the next rollout starts from the captured images).

    :raises ValueError: ``state`` is not a captured random state (the message names the missing part).
    """
    if state.get("format") != FORMAT:
        raise ValueError(f"not a captured random state: format {state.get('format')!r}, expected {FORMAT}")
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        _set_numpy_state(state["numpy"])
        torch.set_rng_state(_text_to_tensor(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_text_to_tensor(s) for s in state["cuda"]])
        if model is not None and "env" in state:
            env = model.get_env()
            obs = env.env_method("set_episode_state", state["env"], indices=[0])[0]
            model._last_obs = obs
            model._last_episode_starts = np.ones((env.num_envs,), dtype=bool)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise ValueError(f"not a captured random state ({type(exc).__name__}: {exc})") from exc


__all__ = ["capture_random_state", "restore_random_state"]
