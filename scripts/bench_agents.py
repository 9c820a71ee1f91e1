"""Benchmark: PixelPPO vs stock Stable-Baselines3 PPO on RL4Seg-v0, same wall-clock budget.

PixelPPO acts on the full (H, W) label map through the batched env; stock PPO (``MlpPolicy``) can
only act through :class:`rl4seg_env.wrappers.DownsampledActionWrapper` (``RL4SegSmall-v0``: an 8 x 8
action grid upsampled to H x W, a 16 x 16 observation). Both train for ``--seconds`` of wall clock
on the ground-truth pixel-accuracy reward, then their deterministic policies are scored on
``--eval-episodes`` images (mean full-size reward). One run per setting, on this machine.

    python scripts/bench_agents.py --seconds 60 --sizes 32 64
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv


import rl4seg_env  # noqa: F401  (registers RL4Seg-v0 / RL4SegSmall-v0)
from agents import PixelPPO
from rl4seg_env.io import atomic_write_text
from agents.vec_env import make_sb3_vec_env


class StopAfterSeconds(BaseCallback):
    """Stop ``learn`` once ``seconds`` of wall clock have passed (checked at every env step)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.start = 0.0

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        return time.perf_counter() - self.start < self.seconds


def mean_reward(model: BaseAlgorithm, env: VecEnv, n_episodes: int) -> float:
    """Mean episode reward of the deterministic policy over ``n_episodes`` one-step episodes."""
    rewards: list[float] = []
    obs = env.reset()
    while len(rewards) < n_episodes:
        actions, _ = model.predict(obs, deterministic=True)
        obs, step_rewards, _, _ = env.step(actions)
        rewards.extend(float(r) for r in step_rewards)
    return float(np.mean(rewards[:n_episodes]))


def run(name: str, model: BaseAlgorithm, eval_env: VecEnv, seconds: float, n_eval: int, pixels: int) -> dict:
    start = time.perf_counter()
    model.learn(total_timesteps=10**9, callback=StopAfterSeconds(seconds))
    elapsed = time.perf_counter() - start
    steps_per_s = model.num_timesteps / elapsed
    return {"agent": name, "steps": model.num_timesteps, "seconds": elapsed, "steps_per_s": steps_per_s,
            "decisions_per_s": steps_per_s * pixels, "reward": mean_reward(model, eval_env, n_eval)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training wall-clock budget per agent (s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sizes in pixels")
    parser.add_argument("--n-envs", type=int, default=8, help="parallel envs (images per rollout step)")
    parser.add_argument("--eval-episodes", type=int, default=64, help="images scored after training")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64], help="PixelPPO U-Net widths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device for both agents (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--output", default="docs/benchmarks.md", help="Markdown file whose 'Agents' section "
                        "is (re)written; '' to skip")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        data = {"image_size": size}
        pixel_env = make_sb3_vec_env(args.n_envs, **data)
        pixel = PixelPPO("PixelUNetPolicy", pixel_env, n_steps=1, batch_size=8, seed=args.seed, device=args.device,
                         policy_kwargs={"actor_kwargs": {"channels": tuple(args.channels)}})
        rows.append({"size": size, **run("PixelPPO", pixel, make_sb3_vec_env(args.n_envs, split="val", **data),
                                         args.seconds, args.eval_episodes, size * size)})
        small_kwargs = {"image_size": size}
        stock_env = make_vec_env("RL4SegSmall-v0", n_envs=args.n_envs, seed=args.seed, env_kwargs=small_kwargs)
        stock = PPO("MlpPolicy", stock_env, n_steps=64, batch_size=64, seed=args.seed, device=args.device)
        eval_env = make_vec_env("RL4SegSmall-v0", n_envs=args.n_envs, seed=args.seed + 1,
                                env_kwargs={**small_kwargs, "split": "val"})
        rows.append({"size": size, **run("SB3 PPO (8x8 actions)", stock, eval_env, args.seconds,
                                         args.eval_episodes, 64)})
        for row in rows[-2:]:
            print(f"{size:>4} px  {row['agent']:<22} {row['steps']:>7} steps in {row['seconds']:.1f} s  "
                  f"{row['steps_per_s']:8.1f} steps/s  reward {row['reward']:.3f}", flush=True)

    header = ("| size | agent | env steps | steps/s | label decisions/s | final reward |\n"
              "|---:|---|---:|---:|---:|---:|\n")
    table = header + "".join(f"| {r['size']} | {r['agent']} | {r['steps']} | {r['steps_per_s']:.1f} | "
                             f"{r['decisions_per_s']:.3g} | {r['reward']:.3f} |\n" for r in rows)
    ratios = []
    for size in args.sizes:
        pixel_row, stock_row = (r for r in rows if r["size"] == size)
        ratios.append(f"{size} px: PixelPPO / SB3 PPO steps per second = "
                      f"{pixel_row['steps_per_s'] / stock_row['steps_per_s']:.3f}x, final reward "
                      f"{pixel_row['reward']:.3f} vs {stock_row['reward']:.3f}")
    print("\n" + table + "\n" + "\n".join(ratios))

    if args.output:
        section = ("## Agents\n\n"
                   f"`python scripts/bench_agents.py --seconds {args.seconds:g} --sizes "
                   f"{' '.join(map(str, args.sizes))} --n-envs {args.n_envs}"
                   + (f" --threads {args.threads}" if args.threads else "") + f"` - one run, {platform.machine()} "
                   f"{platform.system()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                   f"device {args.device}. Reward = mean pixel accuracy of the deterministic policy on "
                   f"{args.eval_episodes} validation images (full size). 'Label decisions' = env steps x "
                   "labels chosen per step (H*W for PixelPPO, 64 for the 8x8 grid). 1-minute load average at "
                   f"the end: {os.getloadavg()[0]:.1f} (the machine may be shared: compare ratios, not rates).\n\n"
                   + table + "\n" + "\n".join(f"- {r}" for r in ratios) + "\n")
        write_section(args.output, "## Agents", section)
        print(f"wrote section 'Agents' of {args.output}")


def write_section(path: str, heading: str, section: str) -> None:
    """Replace the Markdown section starting at ``heading`` (up to the next '## ') or append it."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    atomic_write_text(path, text)


if __name__ == "__main__":
    main()
