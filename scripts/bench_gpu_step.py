#!/usr/bin/env python
"""Training-step speed of the loop's networks under each precision, memory format and ``torch.compile``
setting (docs/scaling.md), all measured in one process so the ratios are comparable.

    python scripts/bench_gpu_step.py                                  # 256 px, the paper's U-Net widths
    python scripts/bench_gpu_step.py --device cpu --image-size 64 --channels 16 32 64 128 --steps 3
    python scripts/bench_gpu_step.py --device cpu --image-size 64 --channels 16 32 64 128 --batch 16 32 8 \
        --precision off --compile --threads 1                         # the default config's steps on a CPU

Three steps, each with random inputs of the loop's shapes:

- ``pretrain``: one supervised step of the segmentation U-Net (cross-entropy, Adam), as source pretraining,
  the oracle and TENT's updates run it;
- ``reward``: one step of the reward network (image + one-hot segmentation in, per-pixel logit out, binary
  cross-entropy), as in every iteration's reward-network training;
- ``ppo``: one PixelPPO minibatch: actor and critic forward and backward, per-pixel log-probabilities of
  sampled actions, the clipped ratio objective with an entropy bonus and the critic's squared error.

Every step runs in float32 (``off``), bfloat16 autocast (``bf16``) and, on CUDA, float16 autocast with loss
scaling (``fp16``), with the default (``contiguous``) and the ``channels_last`` memory format; ``--compile``
adds ``torch.compile``d variants of the steps it names. Each row prints the median milliseconds per step
over ``--steps`` timed steps (after ``--warmup`` untimed ones; a compiled variant's first step, its
compilation, is printed apart), images per second, the peak device memory, and the speed-up over the same
step's float32 contiguous row.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.networks import UNet, autocast, autocast_dtype, grad_scaler, resolve_device  # noqa: E402
from agents.ppo import clipped_objective  # noqa: E402
from reward.network import RewardNet  # noqa: E402

STEPS = ("pretrain", "reward", "ppo")
N_CLASSES = 3


def _to_format(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last and tensor.ndim == 4 else tensor


def make_step(name: str, *, batch: int, size: int, channels: list[int], device: torch.device,
              precision: str, channels_last: bool, compiled: bool):
    """A closure running one training step of ``name`` on fixed random inputs (returns the loss tensor)."""
    gen = torch.Generator().manual_seed(0)
    images = _to_format(torch.rand(batch, 1, size, size, generator=gen).to(device), channels_last)
    labels = torch.randint(0, N_CLASSES, (batch, size, size), generator=gen).to(device)
    dtype = autocast_dtype(precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        return model.to(device=device, memory_format=memory_format)

    if name == "pretrain":
        net = prepare(UNet(1, N_CLASSES, channels=channels, norm="batch"))
        forward = torch.compile(net) if compiled else net
        optimizers = [torch.optim.Adam(net.parameters(), lr=1e-4)]

        def loss_fn() -> torch.Tensor:
            return F.cross_entropy(forward(images).float(), labels)
    elif name == "reward":
        net = prepare(RewardNet(N_CLASSES, channels=channels, norm="batch"))
        forward = torch.compile(net) if compiled else net
        targets = torch.randint(0, 2, (batch, 1, size, size), generator=gen).float().to(device)
        optimizers = [torch.optim.Adam(net.parameters(), lr=1e-4)]

        def loss_fn() -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(forward(images, labels).float(), targets)
    elif name == "ppo":
        actor = prepare(UNet(1, N_CLASSES, channels=channels, norm="batch"))
        critic = prepare(UNet(1, 1, channels=channels, norm="batch"))
        actor_fwd, critic_fwd = (torch.compile(actor), torch.compile(critic)) if compiled else (actor, critic)
        optimizers = [torch.optim.Adam(actor.parameters(), lr=1e-4), torch.optim.Adam(critic.parameters(), lr=1e-4)]
        old_log_prob = torch.full((batch, size, size), -1.1, device=device)
        reward = torch.rand(batch, size, size, generator=gen).to(device)

        def loss_fn() -> torch.Tensor:
            log_probs = torch.log_softmax(actor_fwd(images).float(), dim=1)
            log_prob = log_probs.gather(1, labels.unsqueeze(1))[:, 0]
            entropy = -(log_probs.exp() * log_probs).sum(1)
            values = critic_fwd(images).float()[:, 0]
            advantages = (reward - values).detach()
            ratio = torch.exp(log_prob - old_log_prob)
            policy = -clipped_objective(ratio, advantages, 0.2, 3.0).mean() - 0.01 * entropy.mean()
            return policy + F.mse_loss(values, reward)
    else:
        raise ValueError(f"unknown step {name!r}; choose from {', '.join(STEPS)}")
    scaler = grad_scaler(dtype, device)

    def step() -> torch.Tensor:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        with autocast(dtype, device):
            loss = loss_fn()
        scaler.scale(loss).backward()
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    """First-step seconds, median ms per timed step and peak device memory (MB; 0 off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {float(loss)}")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"first_s": first, "ms": 1000 * statistics.median(times), "peak_mb": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256, 512],
                        help="U-Net widths (default: the paper config's)")
    parser.add_argument("--batch", type=int, nargs=3, default=[32, 32, 8], metavar=("PRETRAIN", "REWARD", "PPO"),
                        help="batch of each step (default 32 32 8: the paper config's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS), help="steps to measure")
    parser.add_argument("--compile", nargs="*", choices=STEPS, default=["pretrain"],
                        help="steps that also get torch.compile'd rows (default: pretrain; none: --compile)")
    parser.add_argument("--precision", nargs="+", choices=["off", "bf16", "fp16"],
                        help="precisions to measure (default: off and bf16, and fp16 on CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (default 0: torch's)")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")

    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    precisions = args.precision or ["off", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    if "off" not in precisions:
        parser.error("--precision needs off: the speed-ups are measured against it")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {args.image_size} px, widths {args.channels}, "
          f"batches {dict(zip(STEPS, args.batch))}, {args.steps} timed steps")
    header = f"{'step':<9}{'precision':<10}{'format':<15}{'compile':<8}{'first s':>8}{'ms/step':>9}" \
             f"{'img/s':>8}{'peak MB':>9}{'speed-up':>9}"
    print(header)
    plan = [(name, batch, p, cl, False) for name, batch in zip(STEPS, args.batch) if name in args.only
            for p in precisions for cl in (False, True)]
    # the compiled rows last: their compilation is the slow part, and a time limit should cut them, not the rest
    plan += [(name, batch, p, cl, True) for name, batch in zip(STEPS, args.batch)
             if name in args.only and name in args.compile for p, cl in (("off", False), ("bf16", True))
             if p in precisions]
    fields = ["step", "precision", "format", "compile", "batch", "first_s", "ms", "img_per_s", "peak_mb",
              "speedup", "error"]
    writer = None
    if args.csv:  # written row by row, so a run stopped by a time limit keeps what it measured
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        csv_file = args.csv.open("w", newline="")
        writer = csv.DictWriter(csv_file, fieldnames=fields)
        writer.writeheader()
    rows: list[dict] = []
    baselines: dict[str, float] = {}
    for step_name, batch, precision, channels_last, compiled in plan:
        row = {"step": step_name, "precision": precision, "format": "channels_last" if channels_last
               else "contiguous", "compile": compiled, "batch": batch}
        try:
            step = make_step(step_name, batch=batch, size=args.image_size, channels=args.channels, device=device,
                             precision=precision, channels_last=channels_last, compiled=compiled)
            row.update(measure(step, device, args.warmup, args.steps))
        except Exception as exc:  # one variant failing (e.g. no compiler toolchain) must not end the run
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            print(f"{step_name:<9}{precision:<10}{row['format']:<15}{str(compiled):<8} failed: {row['error']}")
        else:
            if precision == "off" and not channels_last and not compiled:
                baselines[step_name] = row["ms"]
            row["img_per_s"] = 1000 * batch / row["ms"]
            row["speedup"] = baselines[step_name] / row["ms"] if step_name in baselines else float("nan")
            print(f"{step_name:<9}{precision:<10}{row['format']:<15}{str(compiled):<8}{row['first_s']:>8.1f}"
                  f"{row['ms']:>9.1f}{row['img_per_s']:>8.0f}{row['peak_mb']:>9.0f}{row['speedup']:>8.2f}x",
                  flush=True)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        if writer is not None:
            writer.writerow(row)
            csv_file.flush()
    return 1 if rows and all("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
