"""Metrics of world-model quality and of uncertainty predictors.

Frames are float in [0, 1] (uint8 is converted): `[..., 3, H, W]`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from envs import TASKS
from world_models.base import WorldModel, psnr_from_mse, to_float_frames


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
    true = model.prediction_error(batch, torch.Generator().manual_seed(seed)).mean()
    perm = torch.randperm(len(batch["actions"]), generator=torch.Generator().manual_seed(seed + 1))
    shuffled = dict(batch, actions=batch["actions"][perm])
    return (model.prediction_error(shuffled, torch.Generator().manual_seed(seed)).mean() / true).item()
