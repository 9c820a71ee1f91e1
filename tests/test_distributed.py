"""Data parallelism across processes (gloo on CPU, started as torchrun starts them): N processes with
per-process batches of B / N end with the weights of one process with batches of B."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")
TOLERANCE = 1e-5  # float32 summation order differs between one and two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(task: str, out: Path, world_size: int) -> list[dict[str, torch.Tensor]]:
    port = _free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), task, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]
    return [torch.load(f"{out}.rank{r}.pt", weights_only=True) for r in range(world_size)]


@pytest.mark.parametrize("task", ["ppo", "reward"])
def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(task, tmp_path):
    (single,) = _launch(task, tmp_path / "one", 1)
    first, second = _launch(task, tmp_path / "two", 2)
    initial = None
    for name, value in single.items():
        assert torch.equal(first[name], second[name]), f"{name}: the two processes disagree"
        assert torch.allclose(first[name].float(), value.float(), atol=TOLERANCE, rtol=TOLERANCE), \
            f"{name}: max difference {(first[name].float() - value.float()).abs().max():.3g}"
        initial = initial or name
    assert initial is not None
