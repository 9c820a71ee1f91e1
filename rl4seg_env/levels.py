"""Named task levels of the segmentation benchmark, registered as Gymnasium ids on import of ``rl4seg_env``.

Each level fixes the data (synthetic preset, split, image size) and the ground-truth reward; the ``Small``
variant of a level is the same task through :class:`~rl4seg_env.wrappers.DownsampledActionWrapper` (a coarse
action grid and a small flat observation) for stock Stable-Baselines3 algorithms.

========  =================  =======  ==========  ===========================================================
level     preset             size     reward      what makes it harder
========  =================  =======  ==========  ===========================================================
Easy      ``source``         32 px    accuracy    in-domain images, dense reward (pixel accuracy)
Medium    ``default_target``  64 px   dice        a shifted domain (gain, gamma, noise, speckle, blur); Dice
                                                  reward (per structure, so small structures count)
Hard      ``target_artifact`` 128 px  dice        acoustic shadows and reverberation; 16,384 decisions/step
========  =================  =======  ==========  ===========================================================

``RL4Seg-<Level>-v0`` acts with the full label map; ``RL4SegSmall-<Level>-v0`` with an 8 x 8 (Easy, Medium)
or 16 x 16 (Hard) grid upsampled to the label map, observing a 16 x 16 (Easy) or 32 x 32 image.
"""
from __future__ import annotations

from typing import Any

#: level name -> (SegEnv kwargs, coarse action grid, small observation size, one-line description)
LEVELS: dict[str, dict[str, Any]] = {
    "Easy": {"env": {"dataset": "synthetic", "preset": "source", "image_size": 32, "reward": "accuracy"},
             "action_size": 8, "obs_size": 16,
             "description": "source-domain images at 32 px, pixel-accuracy reward"},
    "Medium": {"env": {"dataset": "synthetic", "preset": "default_target", "image_size": 64, "reward": "dice"},
               "action_size": 8, "obs_size": 32,
               "description": "shifted target domain at 64 px, Dice reward"},
    "Hard": {"env": {"dataset": "synthetic", "preset": "target_artifact", "image_size": 128, "reward": "dice"},
             "action_size": 16, "obs_size": 32,
             "description": "artefact target domain at 128 px, Dice reward"},
}


def level_ids() -> list[str]:
    """The registered level ids: ``RL4Seg-<Level>-v0`` then ``RL4SegSmall-<Level>-v0``."""
    return [f"RL4Seg-{name}-v0" for name in LEVELS] + [f"RL4SegSmall-{name}-v0" for name in LEVELS]


def register_levels() -> None:
    """Register every level id with Gymnasium (idempotent)."""
    from gymnasium.envs.registration import register, registry

    for name, level in LEVELS.items():
        if f"RL4Seg-{name}-v0" not in registry:
            register(id=f"RL4Seg-{name}-v0", entry_point="rl4seg_env.env:SegEnv",
                     vector_entry_point="rl4seg_env.vector:SegVectorEnv", kwargs=dict(level["env"]))
        if f"RL4SegSmall-{name}-v0" not in registry:
            register(id=f"RL4SegSmall-{name}-v0", entry_point="rl4seg_env.wrappers:make_small_env",
                     kwargs={**level["env"], "action_size": level["action_size"], "obs_size": level["obs_size"]})


__all__ = ["LEVELS", "level_ids", "register_levels"]
