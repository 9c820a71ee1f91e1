"""Test-time optimisation (RL4Seg3D): a few PPO steps on each test image whose prediction is invalid.

The adapted actor's argmax prediction of a test image is checked against the anatomical criteria
(label-free: only the prediction is looked at). For each image that fails, a copy of the actor is
fine-tuned on that image alone with the clipped PPO surrogate against the learned reward network:

- each step samples ``n_samples`` label maps from the copy's per-pixel Categorical, scores them with
  the reward network, shapes the reward with a KL term to the actor before optimisation
  (``r - kl_coef * (log pi(a) - log pi_ref(a))``), and uses the per-pixel mean of the shaped rewards
  over the samples as the baseline (advantage = shaped reward - baseline; no critic is needed for a
  single image);
- ``n_epochs`` clipped-surrogate updates follow (per-pixel ratio, epsilon ``clip_range``, entropy bonus,
  gradient norm clipped at ``max_grad_norm``), with the normalisation statistics frozen;
- after each step the argmax prediction is a candidate (and, given a label-free ``repair`` such as the
  morphological correction, its repaired version, and the repaired start before any step). The prediction
  kept is the candidate with the best worst-case reward (the ``worst_quantile`` quantile of its reward map; ties, e.g.
  with 0/1 reward maps, go to the higher mean reward), the starting prediction included, among those whose
  mean foreground Dice to the start is at least ``min_dice_to_start``: a candidate must beat the start's
  reward and stay close to it, so TTO can repair a thin myocardium but cannot redraw a heart. The optimisation
  ends once the prediction kept is anatomically valid (``stop_when_valid``: validity is the stop condition
  only, never a ranking criterion; a valid candidate the reward does not prefer neither is kept nor stops it).

Every image starts from the same adapted actor: nothing learnt on one test image carries over to the
next, so results do not depend on the order of the test set. Target labels are never read here.

    from functools import partial
    from agents.test_time import TTOConfig, tto_predict
    from reward.anatomy import is_valid

    result = tto_predict(actor, images, reward_model, partial(is_valid, criteria="echo"), TTOConfig(steps=10))
    result.preds            # (N, H, W) uint8, the optimised predictions
    result.summary()        # images optimised, made valid, steps used, seconds
"""
from __future__ import annotations

import copy
import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tqdm.auto import tqdm

from agents.distributed import DistributedContext, context, gather_objects
from agents.networks import predict
from agents.ppo import clipped_objective
from rl4seg_env.metrics import keep_largest_foreground

#: ``(label map (H, W) uint8, spacing (mm, mm)) -> bool``: the anatomical check deciding which images are
#: optimised and when to stop, e.g. ``functools.partial(reward.anatomy.is_valid, criteria="echo")``
ValidityCheck = Callable[[np.ndarray, Sequence[float]], bool]
#: ``label map (H, W) uint8 -> repaired label map (H, W)``: a label-free repair whose output competes as one more
#: candidate, e.g. ``functools.partial(reward.correctors.morphological_correction, n_classes=3)``
Repair = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class TTOConfig:
    """Hyper-parameters of :func:`tto_predict` (the defaults are those of ``configs/default.yaml``)."""

    #: PPO steps (rollout + ``n_epochs`` updates) per invalid image at most
    steps: int = 10
    #: label maps sampled per step
    n_samples: int = 8
    #: clipped-surrogate updates per step
    n_epochs: int = 3
    lr: float = 5e-4
    clip_range: float = 0.2
    #: KL shaping to the actor before test-time optimisation (keeps the copy close to the adapted actor)
    kl_coef: float = 0.1
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    #: stop at the first valid argmax prediction
    stop_when_valid: bool = True
    #: quantile of the reward map used as the "worst-case reward" candidates are ranked by (then the mean)
    worst_quantile: float = 0.01
    #: a candidate is kept only if its mean foreground Dice to the starting prediction is at least this (bounded
    #: change: TTO may repair a thin myocardium, not redraw a heart)
    min_dice_to_start: float = 0.85

    def __post_init__(self) -> None:
        for name in ("steps", "n_samples", "n_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TTOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_dice_to_start <= 1.0:
            raise ValueError(f"TTOConfig.min_dice_to_start must be in [0, 1], got {self.min_dice_to_start}")
        if not 0.0 <= self.worst_quantile <= 1.0:
            raise ValueError(f"TTOConfig.worst_quantile must be in [0, 1], got {self.worst_quantile}")
        for name in ("lr", "clip_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TTOConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("kl_coef", "ent_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"TTOConfig.{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class TTOResult:
    """Outcome of :func:`tto_predict`.

    ``preds``: (N, H, W) uint8 predictions (unchanged for images that were valid already);
    ``optimised``: (N,) bool, the images that were optimised (invalid at the start);
    ``valid_before`` / ``valid_after``: (N,) bool anatomical validity of the prediction before / after;
    ``steps``: (N,) int, PPO steps spent per image (0 when not optimised);
    ``worst_before`` / ``worst_after``: (N,) worst-case reward (NaN when not optimised);
    ``seconds``: wall time.
    """

    preds: np.ndarray
    optimised: np.ndarray
    valid_before: np.ndarray
    valid_after: np.ndarray
    steps: np.ndarray
    worst_before: np.ndarray
    worst_after: np.ndarray
    seconds: float

    def summary(self) -> dict[str, float]:
        n_opt = int(self.optimised.sum())
        return {"tto_images": float(len(self.preds)), "tto_optimised": float(n_opt),
                "tto_made_valid": float((self.optimised & self.valid_after).sum()),
                "tto_mean_steps": float(self.steps[self.optimised].mean()) if n_opt else 0.0,
                "tto_seconds": float(self.seconds)}


def _valid(pred: np.ndarray, spacing, is_valid: ValidityCheck) -> bool:
    return bool(is_valid(keep_largest_foreground(pred), (1.0, 1.0) if spacing is None else spacing))


def _score(reward_map: np.ndarray, q: float) -> tuple[float, float]:
    """(worst-case reward, mean reward) of one reward map: what the kept prediction maximises."""
    return float(np.quantile(reward_map, q)), float(reward_map.mean())


def optimise_image(actor: nn.Module, image: np.ndarray, reward_model: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   is_valid: ValidityCheck, config: TTOConfig, spacing: Sequence[float] | None = None,
                   device: str | torch.device = "cpu", generator: torch.Generator | None = None,
                   repair: Repair | None = None) -> tuple[np.ndarray, bool, int, float, float]:
    """Test-time optimisation of one image (module docstring).

    :param actor: the adapted actor (left unchanged: a copy is optimised).
    :param image: (H, W) float32 in [0, 1].
    :param reward_model: ``(images (B, H, W), label maps (B, H, W)) -> reward maps (B, H, W)`` in [0, 1].
    :param is_valid: the anatomical check (:data:`ValidityCheck`).
    :param repair: optional :data:`Repair`; the repaired start and the repaired prediction of every step are
        candidates too, ranked and bounded like the others (a repair the reward does not prefer is not kept).
    :return: (prediction (H, W) uint8, valid, steps used, worst-case reward before, after).
    """
    device = torch.device(device)
    x = torch.as_tensor(image, dtype=torch.float32, device=device)[None, None]
    model = copy.deepcopy(actor).to(device).eval()  # eval: normalisation statistics stay those of the actor
    with torch.no_grad():
        ref_logp = torch.log_softmax(model(x), 1)[0]  # (C, H, W) of the actor before optimisation
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n, batch = config.n_samples, np.repeat(image[None], config.n_samples, axis=0)

    start = ref_logp.argmax(0).to(torch.uint8).cpu().numpy()
    score_before = _score(reward_model(image[None], start[None])[0], config.worst_quantile)
    # ((worst-case, mean reward), prediction, valid); the start competes too
    best = (score_before, start, _valid(start, spacing, is_valid))

    def consider(pred: np.ndarray, repaired: bool = False) -> None:
        """Rank one candidate (with ``repaired``, its repair instead) against the best so far."""
        nonlocal best
        if repaired:
            if repair is None:
                return
            fixed = np.asarray(repair(pred), dtype=np.uint8)
            if np.array_equal(fixed, pred):
                return
            pred = fixed
        score = _score(reward_model(image[None], pred[None])[0], config.worst_quantile)
        # ranked by reward only; a candidate that redraws the prediction (Dice to the start below
        # min_dice_to_start) is never kept: TTO repairs a prediction, it does not replace it
        if score > best[0] and _foreground_dice(pred, start) >= config.min_dice_to_start:
            best = (score, pred, _valid(pred, spacing, is_valid))

    def result() -> tuple[np.ndarray, bool, int, float, float]:
        return best[1], best[2], steps, score_before[0], best[0][0]

    steps = 0
    consider(start, repaired=True)
    if best[1] is not start and best[2] and config.stop_when_valid:  # repaired start valid and preferred: no step
        return result()
    for steps in range(1, config.steps + 1):
        with torch.no_grad():
            logp_all = torch.log_softmax(model(x), 1)[0]
            flat = logp_all.exp().permute(1, 2, 0).reshape(-1, logp_all.shape[0])
            actions = torch.multinomial(flat, n, replacement=True, generator=generator).T.reshape(n, *logp_all.shape[1:])
            old_logp = logp_all.gather(0, actions)  # (n, H, W)
            rewards = torch.as_tensor(reward_model(batch, actions.to(torch.uint8).cpu().numpy()), device=device)
            shaped = rewards - config.kl_coef * (old_logp - ref_logp.gather(0, actions))
            advantages = shaped - shaped.mean(0, keepdim=True)
        for _ in range(config.n_epochs):
            logp_all = torch.log_softmax(model(x), 1)[0]
            ratio = torch.exp(logp_all.gather(0, actions) - old_logp)
            surrogate = clipped_objective(ratio, advantages, config.clip_range).mean()
            entropy = -(logp_all.exp() * logp_all).sum(0).mean()
            loss = -surrogate - config.ent_coef * entropy
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            opt.step()
        with torch.no_grad():
            pred = model(x).argmax(1)[0].to(torch.uint8).cpu().numpy()
        consider(pred)
        consider(pred, repaired=True)
        # validity is the stop condition, not a ranking criterion: stop once the prediction kept is valid
        if best[2] and config.stop_when_valid:
            break
    return result()


def _foreground_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in either map (1.0 when both are all background)."""
    classes = [c for c in np.union1d(np.unique(a), np.unique(b)) if c != 0]
    if not classes:
        return 1.0
    return float(np.mean([2.0 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c)) for c in classes]))


def tto_predict(actor: nn.Module, images: np.ndarray,
                reward_model: Callable[[np.ndarray, np.ndarray], np.ndarray], is_valid: ValidityCheck,
                config: TTOConfig | None = None, spacings: Sequence[Sequence[float] | None] | None = None,
                device: str | torch.device = "cpu", batch_size: int = 32, preds: np.ndarray | None = None,
                seed: int = 0, progress: bool = False, repair: Repair | None = None,
                distributed: bool = False) -> TTOResult:
    """Predict ``images`` with ``actor`` and optimise the images whose prediction is anatomically invalid.

    :param images: (N, H, W) float32 in [0, 1].
    :param reward_model: the learned reward (:class:`reward.network.LearnedReward` or any callable with its
        signature).
    :param is_valid: the anatomical check (:data:`ValidityCheck`) deciding which images are optimised and
        when to stop; it sees only predictions, never labels.
    :param spacings: per-image pixel spacing (mm) for the criteria that use it (default: none).
    :param preds: the actor's argmax predictions when already computed (skips one forward pass).
    :param seed: seeds the label-map sampling; each image draws from its own generator (seeded by ``seed`` and
        the image's pixels), so an image's result depends neither on the other images, nor on their order, nor
        on how they are shared out.
    :param progress: show a progress bar over the optimised images.
    :param repair: optional label-free :data:`Repair` whose outputs compete as candidates (:func:`optimise_image`).
    :param distributed: under ``torchrun``, every process optimises its share of the invalid images (images
        ``rank, rank + N, ...``) and receives everyone's results; every process must then call it with the same
        arguments. The result is the one-process result.
    """
    config = config or TTOConfig()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"tto_predict expects images (N, H, W), got shape {images.shape}")
    if spacings is not None and len(spacings) != len(images):
        raise ValueError(f"tto_predict: {len(spacings)} spacings for {len(images)} images")
    t0 = time.time()
    preds = predict(actor, images, batch_size, device) if preds is None else np.asarray(preds, dtype=np.uint8).copy()
    out = preds.copy()
    n = len(images)
    spacing = (lambda i: None) if spacings is None else (lambda i: spacings[i])
    valid_before = np.array([_valid(preds[i], spacing(i), is_valid) for i in range(n)], dtype=bool)
    valid_after, steps = valid_before.copy(), np.zeros(n, dtype=int)
    worst_before, worst_after = np.full(n, np.nan), np.full(n, np.nan)
    ctx = context() if distributed else DistributedContext()
    todo = np.flatnonzero(~valid_before)
    mine = todo[ctx.rank::ctx.world_size]
    it = tqdm(mine, desc="test-time optimisation", unit="img", leave=False) if progress and len(mine) and ctx.is_main \
        else mine
    results = {}
    for i in it:
        image_seed = int(np.random.SeedSequence([seed, zlib.crc32(images[i].tobytes())]).generate_state(1)[0])
        torch.manual_seed(image_seed)
        generator = torch.Generator(device=torch.device(device)).manual_seed(image_seed)
        results[int(i)] = optimise_image(actor, images[i], reward_model, is_valid, config, spacing(i), device,
                                         generator, repair)
    for part in gather_objects(results, to_all=True) if ctx.enabled else [results]:
        for i, (pred, valid, n_steps, before, after) in part.items():
            out[i], valid_after[i], steps[i], worst_before[i], worst_after[i] = pred, valid, n_steps, before, after
    return TTOResult(out, ~valid_before, valid_before, valid_after, steps, worst_before, worst_after, time.time() - t0)
