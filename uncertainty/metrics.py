"""Metrics of world-model quality and of uncertainty predictors.

Frames are float in [0, 1] (uint8 is converted): `[..., 3, H, W]`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from envs import TASKS
from world_models.base import WorldModel, psnr_from_mse, to_float_frames
from world_models.perceptual import lpips_net


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per frame: `[..., 3, H, W]` -> `[...]`."""
    return (to_float_frames(pred) - to_float_frames(target)).pow(2).mean((-3, -2, -1))


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per frame: `[..., 3, H, W]` -> `[...]` (capped at
    100 dB for identical frames)."""
    return psnr_from_mse(mse(pred, target))


def _task_of(batch: dict) -> tuple[str, int]:
    ids = batch["task_id"].unique()
    if len(ids) != 1:
        raise ValueError("evaluate one task at a time (batch mixes task ids)")
    return list(TASKS)[int(ids[0])], int(batch["action_mask"][0].sum())


@torch.no_grad()
def recon_psnr(model: WorldModel, batch: dict) -> float:
    """PSNR (dB) of the tokenizer's reconstructions, from the MSE over all frames."""
    frames = batch["frames"].to(model.device)
    return psnr_from_mse(mse(model.decode(model.encode(frames)), frames).mean()).item()


@torch.no_grad()
def rollout_mse(model: WorldModel, batch: dict, context: int = 1,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Open-loop rollout error against repeating the last context frame.

    The model sees `context` real frames and then imagines the rest of each window
    `frames [B, T]` from the recorded actions. Returns the per-step frame MSE
    `[B, T - context]` of the model and of the repeat-last-frame baseline.
    """
    task, a_dim = _task_of(batch)
    frames = batch["frames"].to(model.device)
    actions = batch["actions"][..., :a_dim].to(model.device)
    ctx_actions = actions[:, : context - 1] if context > 1 else None
    imagined = model.imagine(frames[:, :context], actions[:, context - 1:], context_actions=ctx_actions,
                             decode=True, task=task, generator=generator).frames
    real = frames[:, context:]
    baseline = frames[:, context - 1: context].expand_as(real)
    return mse(imagined, real), mse(baseline, real)


def rollout_psnr_gain(model: WorldModel, batch: dict, context: int = 1,
                      generator: torch.Generator | None = None) -> float:
    """Rollout PSNR minus the repeat-last-frame baseline's, in dB (> 0: the model is better),
    each PSNR computed from the MSE over the whole batch and horizon (static windows,
    where repeating is exact, would otherwise dominate a mean of per-window PSNRs)."""
    model_err, base_err = rollout_mse(model, batch, context, generator)
    return (psnr_from_mse(model_err.mean()) - psnr_from_mse(base_err.mean())).item()


@torch.no_grad()
def action_shuffle_ratio(model: WorldModel, batch: dict, seed: int = 0) -> float:
    """Prediction error with actions shuffled across the batch over the error with the true
    actions (same noise). About 1: the model ignores actions; higher: it uses them."""
    perm = torch.randperm(len(batch["actions"]), generator=torch.Generator().manual_seed(seed + 1))
    true, shuffled = shuffled_errors(model, batch, perm, seed)
    return (shuffled.mean() / true.mean()).item()


@torch.no_grad()
def shuffled_errors(model: WorldModel, batch: dict, perm: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-sequence prediction error `[B]` with the recorded actions and with the actions
    reordered by `perm`, both under the same noise (generator seeded with `seed`)."""
    gen = lambda: torch.Generator().manual_seed(seed)  # prediction_error draws on the CPU
    true = model.prediction_error(batch, gen())
    return true, model.prediction_error(dict(batch, actions=batch["actions"][perm]), gen())


def _ranks(x: Tensor) -> Tensor:
    """Ranks (0-based) of a 1-D tensor, ties given their average rank."""
    x = x.double()
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    for value in x.unique():  # average the ranks of tied values
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (Pearson correlation of their ranks)."""
    x, y = torch.as_tensor(x).flatten(), torch.as_tensor(y).flatten()
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equally long series of >= 2 values, got {len(x)} and {len(y)}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.pow(2).sum() * ry.pow(2).sum()).sqrt()
    return float("nan") if denom == 0 else (rx * ry).sum().div(denom).item()


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (1 = positive): the chance
    that a random positive scores above a random negative, ties counting one half."""
    scores, labels = torch.as_tensor(scores).flatten().double(), torch.as_tensor(labels).flatten().bool()
    pos, neg = labels.sum().item(), (~labels).sum().item()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _ranks(scores) + 1
    return ((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg)).item()


def ssim(pred: Tensor, target: Tensor, window: int = 7) -> Tensor:
    """Structural similarity per frame `[..., 3, H, W] -> [...]` (uniform `window` x `window`
    filter, constants of Wang et al. 2004 for a data range of 1; channels averaged)."""
    x, y = to_float_frames(pred), to_float_frames(target)
    lead = x.shape[:-3]
    x, y = x.reshape(-1, *x.shape[-3:]), y.reshape(-1, *y.shape[-3:])
    window = min(window, x.shape[-1], x.shape[-2])
    pool = lambda t: torch.nn.functional.avg_pool2d(t, window, stride=1)
    mx, my = pool(x), pool(y)
    vx, vy, cov = pool(x * x) - mx ** 2, pool(y * y) - my ** 2, pool(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((-3, -2, -1)).reshape(lead)


def lpips(pred: Tensor, target: Tensor) -> Tensor | None:
    """LPIPS (AlexNet) distance per frame `[..., 3, H, W] -> [...]`, or None when the `lpips`
    package or its weights are not available here (one warning is given)."""
    x, y = to_float_frames(pred), to_float_frames(target)
    net = lpips_net(x.device)
    if net is None:
        return None
    lead = x.shape[:-3]
    with torch.no_grad():
        d = net(x.reshape(-1, *x.shape[-3:]) * 2 - 1, y.reshape(-1, *y.shape[-3:]) * 2 - 1)
    return d.reshape(lead)


class Quality(NamedTuple):
    recon_psnr: float    # dB
    rollout_gain: float  # dB over repeating the last frame
    shuffle_ratio: float


def world_model_quality(model: WorldModel, batch: dict, seed: int = 0) -> Quality:
    """The three held-out numbers every world model is judged by, on windows `batch` of one
    task: recon PSNR, rollout PSNR gain over repeat-last-frame (1 context frame, the rest
    imagined) and the action-shuffle ratio."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    return Quality(recon_psnr(model, batch), rollout_psnr_gain(model, batch, generator=gen),
                   action_shuffle_ratio(model, batch, seed))
