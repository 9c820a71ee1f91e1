"""One process of tests/test_distributed.py, started as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR/PORT):
``python tests/distributed_worker.py TASK OUT`` writes this rank's weights to ``OUT.rank<r>.pt`` after one
PPO update (TASK ``ppo``), one reward-network epoch (TASK ``reward``) or two pretraining epochs (TASK
``pretrain``) on fixed global batches; or the reward samples written (TASK ``build``) and the test-time
optimised predictions (TASK ``tto``) of a fixed actor, or its evaluation (TASK ``evaluate``), shared out
among the processes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from agents.distributed import init_distributed, shutdown_distributed

GLOBAL_BATCH, SIZE, N_CLASSES = 4, 16, 3


def ppo_update(ctx, normalize_advantage: str = "off") -> dict[str, torch.Tensor]:
    from conftest import TinyDataset
    from stable_baselines3.common.logger import configure

    from agents.ppo import PixelPPO
    from agents.vec_env import make_sb3_vec_env

    per_rank = GLOBAL_BATCH // ctx.world_size
    env = make_sb3_vec_env(per_rank, dataset=TinyDataset(n=8, size=(SIZE, SIZE)))
    unet = {"channels": [4, 8], "norm": "group"}
    model = PixelPPO("PixelUNetPolicy", env, n_steps=1, batch_size=per_rank, n_epochs=2, seed=0, image_log_interval=0,
                     normalize_advantage=normalize_advantage, policy_kwargs={"actor_kwargs": unet, "critic_kwargs": unet})
    model.set_logger(configure(None, []))
    model.kl_coef, model.ent_coef = 0.1, 0.01
    # the global batch: images 0..3 with fixed actions and rewards; this rank holds its contiguous share
    rng = np.random.default_rng(0)
    actions = rng.integers(0, N_CLASSES, (GLOBAL_BATCH, SIZE, SIZE)).astype(np.uint8)
    rewards = rng.random((GLOBAL_BATCH, SIZE, SIZE)).astype(np.float32)
    mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    obs = np.stack([(env.venv.venv.get_sample(i).image * 255).astype(np.uint8)[..., None]
                    for i in range(GLOBAL_BATCH)])[mine]
    policy = model.policy
    with torch.no_grad():
        obs_t = torch.as_tensor(obs)
        act_t = torch.as_tensor(actions[mine]).long()
        dist = policy.get_distribution(obs_t)
        model.rollout_buffer.reset()
        model.rollout_buffer.add(obs, actions[mine], rewards[mine], policy.predict_values(obs_t),
                                 dist.log_prob(act_t), policy.reference_log_prob(obs_t, act_t))
    model.train()
    return {f"actor.{k}": v for k, v in policy.actor.state_dict().items()} | \
        {f"critic.{k}": v for k, v in policy.critic.state_dict().items()}


def reward_epoch(ctx) -> dict[str, torch.Tensor]:
    from test_reward_network import disc_toy

    from reward.training import RewardTrainConfig, train_reward_network

    samples = [(torch.from_numpy(i[None]), torch.from_numpy(p), torch.from_numpy(t))
               for i, p, t in disc_toy(40, size=SIZE, seed=0)]
    config = RewardTrainConfig(epochs=1, batch_size=8, channels=(4, 8), norm="group", split_by="sample",
                               patience=None, progress=False, seed=0)
    return train_reward_network(samples, N_CLASSES, config).net.state_dict()


def pretrain_epoch(ctx, out: str) -> dict[str, torch.Tensor]:
    from conftest import TinyDataset

    from agents.pretrain import PretrainConfig, pretrain_segmentation

    config = PretrainConfig(epochs=2, batch_size=8, channels=(4, 8), norm="group", augment=False, seed=0,
                            progress=False)
    result = pretrain_segmentation(TinyDataset(n=16, size=(SIZE, SIZE)), TinyDataset(n=4, size=(SIZE, SIZE)),
                                   f"{out}.pretrained.pt", config)
    return result.model.state_dict()


def build_samples(ctx, out: str) -> dict[str, torch.Tensor]:
    from test_builder import _Corrector, _FixedActor, _validity

    from agents.distributed import barrier
    from reward.builder import SAMPLE_KINDS, PerturbationConfig, RewardDatasetBuilder, RewardSampleStore

    # 11 images (3 batches of 4: the last round has a batch for rank 0 only), bright ones give pseudo-labels
    rng = np.random.default_rng(0)
    images = (rng.random((11, 16, 16)) * 0.3 + rng.choice([0.1, 0.65], 11)[:, None, None]).astype(np.float32)
    ids = [f"im{i:02d}" for i in range(len(images))]
    builder = RewardDatasetBuilder(_Corrector(), _validity, PerturbationConfig(), batch_size=4, seed=0)
    store = RewardSampleStore(f"{out}.store") if ctx.is_main else None
    report, pseudo = builder.build(_FixedActor(), images, ids, store, iteration=1)
    barrier()  # every process reads what rank 0 wrote
    samples = RewardSampleStore(f"{out}.store").load()
    return {"images": torch.as_tensor(samples["images"]), "preds": torch.as_tensor(samples["preds"]),
            "references": torch.as_tensor(samples["references"]),
            "kinds": torch.tensor([SAMPLE_KINDS.index(k) for k in samples["kinds"]]),
            "ids": torch.tensor([ids.index(i) for i in samples["ids"]]),
            "pseudo": torch.as_tensor(np.stack([pseudo[k] for k in sorted(pseudo)])),
            "report": torch.tensor([report.images_seen, report.accepted, report.n_samples])}


def tto_predictions(ctx) -> dict[str, torch.Tensor]:
    from functools import partial

    from agents.networks import UNet
    from agents.test_time import TTOConfig, tto_predict
    from reward.anatomy import is_valid

    rng = np.random.default_rng(0)
    images = rng.random((5, SIZE, SIZE)).astype(np.float32)
    torch.manual_seed(0)
    actor = UNet(1, N_CLASSES, channels=(4, 8), norm="group").eval()
    reward = lambda imgs, actions: (np.asarray(actions) == 1).astype(np.float32)  # noqa: E731
    result = tto_predict(actor, images, reward, partial(is_valid, criteria="generic"),
                         TTOConfig(steps=2, n_samples=2, min_dice_to_start=0.0), seed=3, distributed=True)
    return {"preds": torch.as_tensor(result.preds), "steps": torch.as_tensor(result.steps),
            "valid": torch.as_tensor(result.valid_after), "worst": torch.as_tensor(np.nan_to_num(result.worst_after, nan=-1.0))}


def evaluation(ctx) -> dict[str, torch.Tensor]:
    from conftest import TinyDataset

    from agents.networks import UNet, predict
    from pipeline.evaluation import evaluate_predictions

    dataset = TinyDataset(n=7, size=(SIZE, SIZE))
    images = np.stack([dataset[i].image for i in range(len(dataset))])
    torch.manual_seed(0)
    actor = UNet(1, N_CLASSES, channels=(4, 8), norm="group").eval()
    share = np.arange(ctx.rank, len(images), ctx.world_size)  # this process's share of the test images
    reward = lambda imgs, actions: (np.asarray(actions) == 1).astype(np.float32)  # noqa: E731
    result = evaluate_predictions(predict(actor, images[share]), dataset, images=images, criteria="generic",
                                  reward_model=reward, also_criteria={"echo": "echo"}, indices=share,
                                  distributed=True)
    if result is None:  # not rank 0
        return {"none": torch.tensor(1)}
    keys = sorted(result.summary)
    return {"preds": torch.as_tensor(result.preds), "ids": torch.tensor([int(r["id"][-3:]) for r in result.per_image]),
            "summary": torch.tensor([result.summary[k] for k in keys], dtype=torch.float64).nan_to_num(nan=-1.0),
            "keys": torch.tensor([sum(map(ord, k)) for k in keys])}


if __name__ == "__main__":
    task, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    tasks = {"ppo": ppo_update, "reward": reward_epoch,
             # advantages normalised over the global minibatch, not each process's share
             "ppo_mean_std": lambda c: ppo_update(c, normalize_advantage="mean_std")}
    tasks |= {"pretrain": lambda c: pretrain_epoch(c, out), "build": lambda c: build_samples(c, out),
              "tto": tto_predictions, "evaluate": evaluation}
    state = tasks[task](ctx)
    torch.save({k: v.detach().cpu() for k, v in state.items()}, f"{out}.rank{ctx.rank}.pt")
    shutdown_distributed()
