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


@pytest.mark.parametrize("task", ["ppo", "ppo_mean_std", "reward", "pretrain"])
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


@pytest.mark.parametrize("task", ["build", "tto", "evaluate"])
def test_work_shared_out_among_processes_gives_the_one_process_result(task, tmp_path):
    # the reward samples rank 0 writes, the test-time optimised predictions and the evaluation, exactly
    (single,) = _launch(task, tmp_path / "one", 1)
    first, second = _launch(task, tmp_path / "two", 2)
    assert single and single.keys() == first.keys()
    if task == "evaluate":  # rank 0 alone gets the result, over every image in order
        assert second == {"none": torch.tensor(1)}
        assert torch.equal(first["ids"], torch.arange(7))
        second = first
    for name, value in single.items():
        assert torch.equal(first[name], second[name]), f"{name}: the two processes disagree"
        assert torch.equal(first[name], value), f"{name}: two processes differ from one"


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "scripts/train_loop.py", *args], env=env, capture_output=True, text=True, timeout=600)


def test_a_two_process_run_writes_one_report_and_resumes(tmp_path):
    """torchrun with 2 CPU processes (gloo) on the quick config: one report saying so, each reward sample once;
    killed after iteration 1 (SIGKILL of torchrun and its workers), --resume under torchrun finishes it."""
    import json
    import signal
    import time

    from reward.builder import RewardSampleStore

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "scripts/train_loop.py", "--config", "quick", f"run_dir={run}", "progress=false",
                              "evaluation.oracle=false", "num_threads=1"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        try:
            if json.loads((run / "state.json").read_text())["completed_iterations"] >= 1:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()[-3000:]
    # SIGKILL of torchrun and of its workers (they run in sessions of their own, so a group kill misses them)
    for pid in [*_children(first.pid), first.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first.wait(timeout=60)
    from pipeline.run_dir import RunDirectory, RunLockedError

    probe = RunDirectory(run)
    for _ in range(600):  # the killed workers are gone (the OS has freed their lock) before the resume starts
        try:
            probe.lock()
        except RunLockedError:
            time.sleep(0.05)
            continue
        probe.unlock()
        break
    assert json.loads((run / "state.json").read_text())["completed_iterations"] == 1

    resumed = _torchrun("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "world size: 2 (backend gloo)" in (run / "report.md").read_text()
    state = json.loads((run / "state.json").read_text())
    keys = [(r["iteration"], r["model"]) for r in state["rows"]]
    assert len(keys) == len(set(keys)) and state["completed_iterations"] == 2
    assert [i for i, m in keys if m == "RL4Seg"] == [1, 2]
    tto = [r for r in state["rows"] if r["model"] == "RL4Seg + TTO"]  # optimised by both processes, rank 0 wrote
    assert [r["iteration"] for r in tto] == [1, 2] and all(r["tto_images"] > 0 for r in tto)
    store = RewardSampleStore(run / "reward_dataset")
    assert store.completed_iterations() == [1, 2]
    assert len(store.load()["ids"]) == sum(store.report(i)["n_samples"] for i in (1, 2))  # no sample twice
    assert sorted(p.name for p in (run / "tb").glob("ppo_*")) == ["ppo_1"]


def test_one_process_needs_no_process_group_and_batches_must_split_evenly():
    from agents.distributed import (
        DistributedContext,
        RankSlice,
        average_gradients,
        context,
        per_process_batch,
    )

    assert context() == DistributedContext() and context().is_main and not context().enabled
    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    before = layer.weight.grad.clone()
    average_gradients(layer.parameters())  # one process: unchanged
    assert torch.equal(layer.weight.grad, before)
    two = DistributedContext(rank=1, world_size=2)
    assert per_process_batch(8, two) == 4
    with pytest.raises(ValueError, match=r"ppo.batch_size_base=5 must be a multiple of the number of processes \(2\)"):
        per_process_batch(5, two, "ppo.batch_size_base")
    assert list(RankSlice(range(7), two)) == [1, 3, 5] and len(RankSlice(range(7), two)) == 3


@pytest.mark.parametrize("n_gpus, device_index, backend", [(2, 1, "nccl"), (1, 0, "gloo")])
def test_processes_take_their_own_gpu_or_share_one_over_gloo(monkeypatch, n_gpus, device_index, backend):
    """Rank 1 of 2 on a node: its own GPU and NCCL when there are two, else the one GPU shared over gloo (NCCL
    refuses two processes on one device). The process group is not started; its arguments are recorded."""
    from agents import distributed

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: n_gpus)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, timeout: calls.setdefault("backend", backend))
    monkeypatch.setattr(distributed, "context", lambda: None)
    distributed.init_distributed("cuda")
    assert calls == {"device": device_index, "backend": backend}
    calls.clear()
    distributed.init_distributed("cuda", backend="gloo")  # a backend set by hand is kept
    assert calls["backend"] == "gloo"
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        distributed.init_distributed("cuda")
