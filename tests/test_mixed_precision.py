"""The mixed-precision switch (``mixed_precision``): bfloat16 autocast runs every training step on a CPU here
(CUDA's float16 path with loss scaling cannot be exercised without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.networks import autocast_dtype, grad_scaler
from conftest import TinyDataset


def test_modes_resolve_per_device():
    assert autocast_dtype("off", "cpu") is None and autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="mixed_precision must be one of off, auto, bf16, fp16, got 'half'"):
        autocast_dtype("half", "cpu")
    assert not grad_scaler(torch.bfloat16, "cpu").is_enabled()  # bfloat16 needs no loss scaling


def test_bf16_pretraining_and_reward_training_steps_run_and_learn(tmp_path):
    from agents.pretrain import PretrainConfig, pretrain_segmentation
    from reward.training import RewardTrainConfig, train_reward_network
    from test_reward_network import disc_toy

    config = PretrainConfig(epochs=2, batch_size=8, channels=(4, 8), augment=False, progress=False,
                            mixed_precision="bf16")
    result = pretrain_segmentation(TinyDataset(n=16), TinyDataset(n=4), tmp_path / "a.pt", config)
    losses = [row["train_loss"] for row in result.history]
    assert np.isfinite(losses).all() and losses[1] < losses[0]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # weights stay float32

    samples = disc_toy(24, size=16)
    reward = train_reward_network(samples, 3, RewardTrainConfig(epochs=2, batch_size=8, channels=(4, 8),
                                                                progress=False, mixed_precision="bf16"))
    assert np.isfinite(reward.train_losses).all() and np.isfinite(reward.temperature)


def test_bf16_ppo_update_runs_and_moves_the_actor():
    from agents.ppo import PixelPPO
    from agents.vec_env import make_sb3_vec_env

    env = make_sb3_vec_env(2, dataset=TinyDataset(n=6))
    unet = {"channels": [4, 8]}
    model = PixelPPO("PixelUNetPolicy", env, n_steps=2, batch_size=4, n_epochs=2, seed=0, image_log_interval=0,
                     mixed_precision="bf16", policy_kwargs={"actor_kwargs": unet, "critic_kwargs": unet})
    before = [p.detach().clone() for p in model.policy.actor.parameters()]
    model.learn(4)
    after = list(model.policy.actor.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        PixelPPO("PixelUNetPolicy", env, mixed_precision="half")


def test_step_benchmark_measures_every_variant_and_keeps_rows_as_it_goes(tmp_path):
    """scripts/bench_gpu_step.py (the GPU session's precision table) on a tiny CPU setting: every step in
    float32 and bfloat16, contiguous and channels_last, one row each, float32 contiguous the 1.0x reference."""
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu_step.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "step.csv"
    assert bench.main(["--device", "cpu", "--image-size", "16", "--channels", "4", "8", "--batch", "2", "2", "2",
                       "--steps", "1", "--warmup", "1", "--compile", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["step"], r["precision"], r["format"]) for r in rows] == [
        (s, p, f) for s in ("pretrain", "reward", "ppo") for p in ("off", "bf16") for f in ("contiguous", "channels_last")]
    assert all(not r["error"] and float(r["ms"]) > 0 for r in rows)
    assert [float(r["speedup"]) for r in rows if r["precision"] == "off" and r["format"] == "contiguous"] == [1.0] * 3


def _channels_last(module: torch.nn.Module) -> bool:
    weights = [p for p in module.parameters() if p.ndim == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_channels_last_is_auto_on_cuda_and_cpu_and_changes_strides_not_results(tmp_path):
    """The channels_last switch (GPU speed, docs/scaling.md): auto means CUDA and CPUs; on a CPU, pretraining,
    the reward network and PPO train in that layout with the same numbers as the default layout, and their
    returned networks and checkpoints are ordinary (contiguous) ones."""
    from agents.networks import load_unet, use_channels_last
    from agents.ppo import PixelPPO
    from agents.pretrain import PretrainConfig, pretrain_segmentation
    from agents.vec_env import make_sb3_vec_env
    from reward.training import RewardTrainConfig, train_reward_network
    from test_reward_network import disc_toy

    assert use_channels_last(None, "cuda") and use_channels_last(None, "cpu") and not use_channels_last(None, "mps")
    assert use_channels_last(True, "cpu") and not use_channels_last(False, "cuda")

    runs = {}
    for layout in (False, True):
        config = PretrainConfig(epochs=2, batch_size=8, channels=(4, 8), augment=False, progress=False,
                                channels_last=layout)
        result = pretrain_segmentation(TinyDataset(n=16), TinyDataset(n=4), tmp_path / f"a{layout}.pt", config)
        assert not _channels_last(result.model)  # returned laid out as a loaded checkpoint, whatever it trained in
        runs[layout] = [row["train_loss"] for row in result.history]
        loaded, _ = load_unet(str(tmp_path / f"a{layout}.pt"))
        assert not _channels_last(loaded)
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-4)

    samples = disc_toy(24, size=16)
    reward = {layout: train_reward_network(samples, 3, RewardTrainConfig(epochs=2, batch_size=8, channels=(4, 8),
                                                                         progress=False, channels_last=layout))
              for layout in (False, True)}
    assert not _channels_last(reward[True].net) and not _channels_last(reward[False].net)
    np.testing.assert_allclose(reward[True].train_losses, reward[False].train_losses, rtol=1e-4)

    env = make_sb3_vec_env(2, dataset=TinyDataset(n=6))
    unet = {"channels": [4, 8]}
    model = PixelPPO("PixelUNetPolicy", env, n_steps=2, batch_size=4, n_epochs=2, seed=0, image_log_interval=0,
                     channels_last=True, policy_kwargs={"actor_kwargs": unet, "critic_kwargs": unet})
    assert _channels_last(model.policy.actor) and _channels_last(model.policy.critic)
    model.learn(4)
    assert all(torch.isfinite(p).all() for p in model.policy.actor.parameters())
    model.save(tmp_path / "ppo.zip")
    reloaded = PixelPPO.load(tmp_path / "ppo.zip", device="cpu")
    assert reloaded.channels_last is True and _channels_last(reloaded.policy.actor)


def test_compile_switch_traces_the_training_steps_with_the_same_numbers_and_plain_checkpoints(tmp_path):
    """``compile`` (torch.compile of the training steps' forward passes; here the ``eager`` backend, which traces
    the graphs without needing a C++ compiler): pretraining, the reward network and a PPO update give the
    numbers of the uncompiled steps, and checkpoints hold the plain networks' keys."""
    import torch._dynamo

    from agents.networks import compile_backend
    from agents.ppo import PixelPPO
    from agents.pretrain import PretrainConfig, pretrain_segmentation
    from agents.vec_env import make_sb3_vec_env
    from reward.training import RewardTrainConfig, train_reward_network
    from test_reward_network import disc_toy

    assert compile_backend(False) is None and compile_backend(True) == "inductor"
    with pytest.raises(ValueError, match="PretrainConfig.compile must be true, false or a torch.compile backend"):
        PretrainConfig(compile="fast")
    torch._dynamo.reset()
    runs = {}
    for setting in (False, "eager"):
        config = PretrainConfig(epochs=2, batch_size=8, channels=(4, 8), augment=False, progress=False,
                                compile=setting)
        runs[setting] = pretrain_segmentation(TinyDataset(n=16), TinyDataset(n=4), tmp_path / f"a{setting}.pt",
                                              config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # something was traced
    np.testing.assert_allclose([r["train_loss"] for r in runs["eager"].history],
                               [r["train_loss"] for r in runs[False].history], rtol=1e-5)
    saved = torch.load(tmp_path / "aeager.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in saved["state_dict"])

    samples = disc_toy(24, size=16)
    reward = {s: train_reward_network(samples, 3, RewardTrainConfig(epochs=2, batch_size=8, channels=(4, 8),
                                                                    progress=False, compile=s))
              for s in (False, "eager")}
    np.testing.assert_allclose(reward["eager"].train_losses, reward[False].train_losses, rtol=1e-5)

    unet = {"channels": [4, 8]}
    actors = {}
    for setting in (False, "eager"):
        env = make_sb3_vec_env(2, dataset=TinyDataset(n=6))
        model = PixelPPO("PixelUNetPolicy", env, n_steps=2, batch_size=4, n_epochs=2, seed=0, image_log_interval=0,
                         compile=setting, policy_kwargs={"actor_kwargs": unet, "critic_kwargs": unet})
        model.learn(4)
        actors[setting] = model.policy.actor.state_dict()
    for key, value in actors[False].items():
        assert torch.allclose(actors["eager"][key].float(), value.float(), atol=1e-5), key
    model.save(tmp_path / "ppo.zip")
    reloaded = PixelPPO.load(tmp_path / "ppo.zip", device="cpu")
    assert reloaded.compile == "eager" and reloaded._compiled is None
    with pytest.raises(ValueError, match="PixelPPO.compile must be"):
        PixelPPO("PixelUNetPolicy", env, compile="fast")
