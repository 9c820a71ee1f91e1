"""Segmentation as a one-step Gymnasium environment (a contextual bandit).

Each episode shows one image; the agent answers with a full label map and the episode ends with a
scalar reward, the mean of a per-pixel reward map. See ``docs/environment.md``.

The module-level helpers (action checks, index drawing, reward averaging) are shared with the batched
:class:`rl4seg_env.vector.SegVectorEnv` so that both produce bit-identical episodes for the same seeds.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rl4seg_env.data import Sample, SegDataset, make_dataset
from rl4seg_env.metrics import dice_per_class
from rl4seg_env.rewards import RewardFunction, make_reward

#: colours (RGB, uint8) of label values 0..7 in renders; background is transparent
CLASS_COLOURS = np.array(
    [[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 130, 240], [240, 200, 40], [200, 80, 220],
     [60, 210, 220], [250, 140, 40]],
    dtype=np.uint8,
)


# ----------------------------------------------------------------------------------------------
# Helpers shared with the batched env
# ----------------------------------------------------------------------------------------------
def resolve_dataset(dataset: SegDataset | str, dataset_kwargs: Mapping[str, Any]) -> SegDataset:
    """Return ``dataset`` itself, or build it by name with :func:`rl4seg_env.data.make_dataset`.

    For ``"synthetic"`` the defaults are the default *target* domain
    (``rl4seg_env.data.synthetic.DEFAULT_TARGET``), split ``"train"``, 64 px, with labels.
    """
    if isinstance(dataset, SegDataset):
        if dataset_kwargs:
            raise TypeError(
                f"dataset kwargs {sorted(dataset_kwargs)} are only used when `dataset` is a name; "
                f"got a {type(dataset).__name__} instance"
            )
        return dataset
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a SegDataset or a dataset name, found {type(dataset).__name__}")
    kwargs = dict(dataset_kwargs)
    if dataset == "synthetic":
        from rl4seg_env.data.synthetic import DEFAULT_TARGET

        kwargs.setdefault("preset", DEFAULT_TARGET)
        kwargs.setdefault("split", "train")
        kwargs.setdefault("image_size", 64)
        kwargs.setdefault("with_labels", True)
    built = make_dataset(dataset, **kwargs)
    if len(built) == 0:
        raise ValueError(f"dataset {dataset!r} built with {kwargs} has no samples")
    return built


def resolve_reward(reward: str | RewardFunction | None, dataset: SegDataset) -> RewardFunction | None:
    """Build a ground-truth reward by name, or check that ``reward`` can run on ``dataset``."""
    if reward is None:
        return None
    if isinstance(reward, str):
        reward = make_reward(reward, dataset.n_classes)
    if not isinstance(reward, RewardFunction):
        raise TypeError(
            f"reward must be a name ('accuracy', 'dice'), a RewardFunction or None, found "
            f"{type(reward).__name__}; wrap the env with LearnedRewardWrapper for a learned reward model"
        )
    if reward.requires_labels and not dataset.with_labels:
        raise ValueError(
            f"the {reward.name or type(reward).__name__!r} reward needs labels but the dataset was built "
            "with with_labels=False; use reward=None with a LearnedRewardWrapper"
        )
    return reward


def check_actions(actions: Any, shape: tuple[int, ...], n_classes: int) -> np.ndarray:
    """Validate label map(s) and return them as an integer array of ``shape``.

    :param actions: array-like of integer class indices.
    :param shape: expected shape, (H, W) for one env or (B, H, W) for a batch.
    :param n_classes: values must lie in ``0 .. n_classes - 1``.
    :raises ValueError: naming the expected and found shape, dtype or values.
    """
    actions = np.asarray(actions)
    if actions.shape != tuple(shape):
        raise ValueError(f"action must have shape {tuple(shape)} (a label map), found shape {actions.shape}")
    if not np.issubdtype(actions.dtype, np.integer):
        detail = ""
        if np.issubdtype(actions.dtype, np.floating) and not np.all(np.isfinite(actions)):
            detail = f" containing {int(np.size(actions) - np.isfinite(actions).sum())} NaN/Inf value(s)"
        raise ValueError(
            f"action must have an integer dtype (uint8 label values), found dtype {actions.dtype}{detail}"
        )
    if actions.size and (actions.min() < 0 or actions.max() >= n_classes):
        bad = np.unique(actions[(actions < 0) | (actions >= n_classes)])[:10]
        raise ValueError(
            f"action values must lie in 0..{n_classes - 1} (n_classes={n_classes}), found {bad.tolist()}"
        )
    return actions


def check_pseudo_labels(mapping: Mapping[str, Any], image_size: tuple[int, int],
                        n_classes: int) -> dict[str, np.ndarray]:
    """Validate a ``sample_id -> label map`` mapping; return private uint8 (H, W) copies."""
    if not isinstance(mapping, Mapping):
        raise TypeError("pseudo labels must be a mapping sample_id -> (H, W) label map, "
                        f"found {type(mapping).__name__}")
    out: dict[str, np.ndarray] = {}
    for sample_id, label in mapping.items():
        if not isinstance(sample_id, str):
            raise TypeError(f"pseudo-label keys must be sample ids (str), found {sample_id!r}")
        label = np.asarray(label)
        if label.shape != tuple(image_size):
            raise ValueError(f"pseudo label of {sample_id!r}: expected shape {tuple(image_size)}, found {label.shape}")
        if not (np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.bool_)):
            raise ValueError(f"pseudo label of {sample_id!r}: expected an integer label map, found dtype {label.dtype}")
        if label.size and (label.min() < 0 or label.max() >= n_classes):
            bad = np.unique(label[(label < 0) | (label >= n_classes)])[:10]
            raise ValueError(f"pseudo label of {sample_id!r}: values must lie in 0..{n_classes - 1}, "
                             f"found {bad.tolist()}")
        out[sample_id] = label.astype(np.uint8, copy=True)
    return out


def check_indices(indices: Sequence[int] | np.ndarray | None, n_samples: int) -> np.ndarray:
    """Validate active indices (``None`` = all samples); return a sorted-as-given int64 array."""
    if indices is None:
        return np.arange(n_samples, dtype=np.int64)
    arr = np.asarray(indices)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"active indices must be a non-empty 1D sequence, found shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"active indices must be integers, found dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= n_samples)]
    if bad.size:
        raise ValueError(f"active indices must lie in 0..{n_samples - 1} (dataset size {n_samples}), "
                         f"found {bad[:10].tolist()}")
    if np.unique(arr).size != arr.size:
        raise ValueError("active indices contain duplicates; each image must appear once")
    return arr.astype(np.int64)


def draw_index(rng: np.random.Generator, active: np.ndarray) -> int:
    """Draw one dataset index uniformly among ``active`` (consumes exactly one draw of ``rng``)."""
    return int(active[rng.integers(len(active))])


def to_observation(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) image in [0, 1] -> uint8 (H, W, 1) observation in [0, 255]."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]


def mean_reward(reward_maps: np.ndarray) -> np.ndarray:
    """(B, H, W) reward maps -> (B,) float64 episode rewards (the mean over pixels)."""
    return reward_maps.reshape(len(reward_maps), -1).mean(axis=1, dtype=np.float64)


def mean_dice(actions: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, H, W) actions and labels -> (B,) float64 mean foreground Dice."""
    return dice_per_class(actions, labels, n_classes).reshape(len(actions), -1).mean(axis=1)


def render_panel(image: np.ndarray, action: np.ndarray | None, reward_map: np.ndarray | None) -> np.ndarray:
    """uint8 (H, 3W, 3) RGB panel: image | action overlaid in colour | reward map (viridis, 0..1).

    Panels not available yet (before a step) are black.
    """
    from matplotlib import colormaps

    gray = np.repeat(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    overlay = np.zeros_like(gray)
    if action is not None:
        colours = CLASS_COLOURS[np.asarray(action) % len(CLASS_COLOURS)].astype(np.float32)
        alpha = np.where(np.asarray(action) > 0, 0.55, 0.0)[..., None]
        overlay = np.rint((1 - alpha) * gray + alpha * colours).astype(np.uint8)
    heat = np.zeros_like(gray)
    if reward_map is not None:
        heat = (colormaps["viridis"](np.clip(reward_map, 0, 1))[..., :3] * 255).round().astype(np.uint8)
    return np.concatenate([gray, overlay, heat], axis=1)


# ----------------------------------------------------------------------------------------------
# The environment
# ----------------------------------------------------------------------------------------------
class DatasetEpisodes:
    """What :class:`SegEnv` and :class:`~rl4seg_env.vector.SegVectorEnv` share: the dataset episodes are
    drawn from, the active indices, the pseudo-labels, and the methods the training loop calls
    (through ``VecEnv.env_method``). Subclasses set ``_dataset``, ``_active`` and ``_pseudo_labels``.
    """

    _dataset: SegDataset
    _active: np.ndarray
    _pseudo_labels: dict[str, np.ndarray]

    @property
    def dataset(self) -> SegDataset:
        """The dataset episodes are drawn from."""
        return self._dataset

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return tuple(self._dataset.image_size)  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        """Number of label values (background included)."""
        return self._dataset.n_classes

    @property
    def active_indices(self) -> np.ndarray:
        """int64 dataset indices that resets draw from (a copy)."""
        return self._active.copy()

    def set_active_indices(self, indices: Sequence[int] | np.ndarray | None) -> None:
        """Restrict the images resets draw from to ``indices`` (``None`` = the whole dataset).

        :raises ValueError: on an empty, non-integer, duplicated or out-of-range index list.
        """
        self._active = check_indices(indices, len(self._dataset))

    def set_pseudo_labels(self, mapping: Mapping[str, np.ndarray]) -> None:
        """Replace the pseudo labels: ``sample_id -> uint8 (H, W) label map`` (values < n_classes).

        A registered pseudo label is returned in ``info["pseudo_label"]`` when its sample is stepped
        (PixelPPO uses it as a supervised anchor: action = pseudo label, reward 1 everywhere).
        Ids not in the dataset are kept but never match.
        """
        self._pseudo_labels = check_pseudo_labels(mapping, self.image_size, self.n_classes)

    def get_sample(self, index: int) -> Sample:
        """The dataset sample at ``index``."""
        return self._dataset[int(index)]


class SegEnv(DatasetEpisodes, gym.Env):
    """One-step segmentation environment: observe an image, act with a full label map.

    - observation: ``Box(0, 255, (H, W, 1), uint8)``, the image (intensity x 255);
    - action: ``MultiDiscrete(np.full((H, W), n_classes), dtype=uint8)``, one class per pixel;
    - reward: the mean of a per-pixel reward map in [0, 1]; every episode terminates after one step.

    ``step`` info: ``reward_map`` (float32 (H, W), absent when ``reward=None``), ``sample_id`` (str),
    ``index`` (int, position in the dataset), ``dice`` (float, mean foreground Dice of the action,
    only when the dataset has labels) and ``pseudo_label`` (uint8 (H, W), only when one was
    registered for the sample with :meth:`set_pseudo_labels`). ``reset`` info: ``sample_id``, ``index``.

    :param dataset: a :class:`~rl4seg_env.data.SegDataset`, or a dataset name for
        :func:`~rl4seg_env.data.make_dataset` (default ``"synthetic"``: the synthetic default target
        domain, split ``"train"``, 64 px, with labels).
    :param reward: ground-truth reward, by name (``"accuracy"`` - default - or ``"dice"``) or as a
        :class:`~rl4seg_env.rewards.RewardFunction`; ``None`` for no built-in reward (reward 0.0 and no
        ``reward_map``; use under :class:`~rl4seg_env.wrappers.LearnedRewardWrapper`).
    :param render_mode: ``None`` (default) or ``"rgb_array"`` (image | action | reward map panel).
    :param dataset_kwargs: passed to ``make_dataset`` when ``dataset`` is a name (``preset``, ``split``,
        ``image_size``, ``n_images``, ``keep_atrium``, ``with_labels``, ``root``, ``manifest``, ...).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, dataset: SegDataset | str = "synthetic",
                 reward: str | RewardFunction | None = "accuracy",
                 render_mode: str | None = None, **dataset_kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"found {render_mode!r}")
        self._dataset = resolve_dataset(dataset, dataset_kwargs)
        self.reward_fn = resolve_reward(reward, self._dataset)
        self.render_mode = render_mode
        height, width = self.image_size
        self.observation_space = spaces.Box(0, 255, (height, width, 1), np.uint8)
        self.action_space = spaces.MultiDiscrete(np.full((height, width), self.n_classes), dtype=np.uint8)
        self._active = check_indices(None, len(self._dataset))
        self._pseudo_labels: dict[str, np.ndarray] = {}
        self._index: int | None = None
        self._sample: Sample | None = None
        self._last_action: np.ndarray | None = None
        self._last_reward_map: np.ndarray | None = None

    @property
    def current_sample(self) -> Sample | None:
        """The sample of the current episode (``None`` before the first reset)."""
        return self._sample

    @property
    def last_action(self) -> np.ndarray | None:
        """The validated (H, W) label map of the last step of this episode (``None`` before it)."""
        return self._last_action

    # -- methods the training loop calls (through VecEnv.env_method) -------------------------
    # -- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on a random active image, or on ``options={"index": i}``."""
        super().reset(seed=seed)
        if options and "index" in options:
            index = int(options["index"])
            if not 0 <= index < len(self._dataset):
                raise ValueError(f"options['index'] must lie in 0..{len(self._dataset) - 1}, found {index}")
        else:
            index = draw_index(self.np_random, self._active)
        self._index, self._sample = index, self._dataset[index]
        self._last_action = self._last_reward_map = None
        return to_observation(self._sample.image), {"sample_id": self._sample.id, "index": index}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Score the label map ``action`` (H, W) on the current image; always ``terminated=True``."""
        if self._sample is None:
            raise RuntimeError("SegEnv.step() called before reset(); call env.reset() to draw an image first")
        action = check_actions(action, self.image_size, self.n_classes)
        sample = self._sample
        info: dict[str, Any] = {"sample_id": sample.id, "index": self._index}
        reward = 0.0
        if self.reward_fn is not None:
            labels = None if sample.label is None else sample.label[None]
            reward_map = np.asarray(self.reward_fn(sample.image[None], action[None], labels), dtype=np.float32)[0]
            info["reward_map"] = reward_map
            reward = float(mean_reward(reward_map[None])[0])
            self._last_reward_map = reward_map
        if sample.label is not None:
            info["dice"] = float(mean_dice(action[None], sample.label[None], self.n_classes)[0])
        if sample.id in self._pseudo_labels:
            info["pseudo_label"] = self._pseudo_labels[sample.id].copy()
        self._last_action = action.copy()
        return to_observation(sample.image), reward, True, False, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: uint8 (H, 3W, 3) panel image | action overlay | reward map; else ``None``."""
        if self.render_mode != "rgb_array":
            return None
        if self._sample is None:
            raise RuntimeError("SegEnv.render() called before reset()")
        return render_panel(self._sample.image, self._last_action, self._last_reward_map)

    def set_reward_map_for_render(self, reward_map: np.ndarray | None) -> None:
        """Let a reward wrapper show its own map in :meth:`render` (internal use)."""
        self._last_reward_map = reward_map
