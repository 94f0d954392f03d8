"""Do the predictors flag hallucination? Per-window signals and their scores.

A window is `context + horizon` real frames with the recorded actions: the model sees the
frame `o_t` (and, for retracing, the `context - 1` frames before it) and imagines the
next `horizon` frames. Per window we record every predictor (averaged over the imagined
steps), the rollout PSNR and the repeat-last-frame PSNR, the one-step action-shuffle
ratio and a perceptual error. One more column, `true_motion`, is a reference and not a
predictor: the RMS latent change of the real frames over the horizon, which uses the future
and so is unavailable at run time. Within one task it is what the per-task motion
normalisation cannot remove: a predictor that only tracks scene motion scores like it.
`score_signals` then gives, per signal, Spearman ρ against
rollout PSNR and against the perceptual error, and AUROC against the two hallucination
labels of the hallucination paper: *action ignored* (shuffle ratio below a threshold)
and *scene divergent* (rollout PSNR below the repeat-frame baseline's). The second label
is scored on windows where something moves: repeating a static window is exact, so every
static window would count as divergent however good the model (on toy-reach with mixed
behaviours many windows are static, and that inverted the AUROCs).
"""
from __future__ import annotations

import numpy as np
import torch

from envs import task_spec
from replay import EpisodeInfo, EpisodeStore
from uncertainty.baselines import KNNDistance, ensemble_disagreement
from uncertainty.fidelity import WindowSampler, foreground_psnr
from uncertainty.metrics import auroc, lpips, mse, shuffled_errors, spearman, ssim
from uncertainty.predictors import MotionStats, RunningMotion, hallucination_signals, latent_motion
from uncertainty.retracing import retracing_uncertainty
from world_models.base import WorldModel, psnr_from_mse


@torch.no_grad()
def window_signals(model: WorldModel, store: EpisodeStore, episodes: list[EpisodeInfo], task: str, *,
                   windows: int = 256, horizon: int = 8, context: int = 4, seeds: int = 4,
                   motion: MotionStats | RunningMotion | None = None, knn: KNNDistance | None = None,
                   ensemble: list[WorldModel] = (), retracing_ks: tuple[int, ...] = (1, 2, 3),
                   batch: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-window arrays `[windows]`: signals (`u_r`, `u_s`, `u_f`/`token_entropy`, `<u>/m`,
    `knn`, `ensemble`, `retracing`), the `true_motion` reference and outcomes (`rollout_psnr`, `repeat_psnr`,
    `shuffle_ratio`, `perceptual_error`). `perceptual_error` is LPIPS when available, else
    1 - SSIM (the key `perceptual_metric` says which: 1 = LPIPS, 0 = SSIM)."""
    spec = task_spec(task)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    use_retracing = spec.action_kind == "delta_pose" and retracing_ks and max(retracing_ks) < context
    cols: dict[str, list] = {}
    for start in range(0, windows, batch):
        b = store.sample(min(batch, windows - start), context + horizon, episodes=episodes, rng=rng)
        frames = b["frames"].to(model.device)
        actions = b["actions"][..., : spec.action_dim].to(model.device)
        t = context - 1
        real = frames[:, t + 1:]
        sig, im = hallucination_signals(model, frames[:, t], actions[:, t: t + horizon], task=task,
                                        seeds=seeds, motion=motion, generator=gen)
        row = {k: v.mean(1) for k, v in sig.items()}
        imagined = model.decode(im.latents)
        row["rollout_psnr"] = psnr_from_mse(mse(imagined, real).mean(1))
        row["repeat_psnr"] = psnr_from_mse(mse(frames[:, t: t + 1].expand_as(real), real).mean(1))
        row["true_motion"] = latent_motion(model.encode(frames[:, t:])).mean(1)
        perceptual = lpips(imagined, real)
        row["perceptual_error"] = (perceptual if perceptual is not None else 1 - ssim(imagined, real)).mean(1)
        row["perceptual_metric"] = torch.full_like(row["rollout_psnr"], float(perceptual is not None))
        row["shuffle_ratio"] = _shuffle_ratio(model, b, t, seed=seed + start)
        if knn is not None:
            row["knn"] = knn(im.latents).mean(1).to(model.device)
        if len(ensemble):
            row["ensemble"] = ensemble_disagreement([model, *ensemble], frames[:, t], actions[:, t: t + horizon],
                                                    task=task, generator_seed=seed).mean(1).to(model.device)
        if use_retracing:
            row["retracing"] = retracing_uncertainty(model, frames[:, : t + 1], actions[:, : t + 1], task=task,
                                                     ks=tuple(retracing_ks), generator=gen).uncertainty
        for k, v in row.items():
            cols.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v).numpy() for k, v in cols.items()}


def _shuffle_ratio(model: WorldModel, b: dict, t: int, seed: int) -> torch.Tensor:
    """Per-window one-step (o_t -> o_{t+1}) prediction error with each window's action taken
    from its neighbour over the error with the recorded action."""
    pair = {"frames": b["frames"][:, t: t + 2], "actions": b["actions"][:, t: t + 1],
            "action_mask": b["action_mask"], "task_id": b["task_id"], "rewards": b["rewards"][:, t: t + 1]}
    true, shuffled = shuffled_errors(model, pair, torch.roll(torch.arange(len(pair["actions"])), 1), seed)
    return shuffled / true.clamp(min=1e-12)


STATIC_PSNR = 99.0  # repeat-frame PSNR at (or near) the 100 dB cap: nothing in the window moved
OUTCOMES = ("rollout_psnr", "repeat_psnr", "shuffle_ratio", "perceptual_error", "perceptual_metric")


def score_signals(per_window: dict[str, np.ndarray], shuffle_threshold: float = 1.05) -> dict[str, dict[str, float]]:
    """Per signal: `spearman_psnr` (ρ vs rollout PSNR; negative = the signal rises as the
    rollout degrades), `auroc_action_ignored`, `auroc_scene_divergent` and
    `spearman_perceptual` (ρ vs the perceptual error of the rollout)."""
    psnr = torch.as_tensor(per_window["rollout_psnr"])
    ignored = torch.as_tensor(per_window["shuffle_ratio"]) < shuffle_threshold
    repeat = torch.as_tensor(per_window["repeat_psnr"])
    moving = repeat < STATIC_PSNR  # a static window is repeated exactly: no model can beat that
    divergent = psnr < repeat
    perceptual = torch.as_tensor(per_window["perceptual_error"])
    scores = {}
    for name, values in per_window.items():
        if name in OUTCOMES:
            continue
        u = torch.as_tensor(values)
        scores[name] = {"spearman_psnr": spearman(u, psnr), "auroc_action_ignored": auroc(u, ignored),
                        "auroc_scene_divergent": auroc(u[moving], divergent[moving]),
                        "spearman_perceptual": spearman(u, perceptual)}
    return scores



@torch.no_grad()
def phase_signals(model: WorldModel, store: EpisodeStore, episodes: list[EpisodeInfo], task: str, *,
                  windows: int = 128, horizon: int = 8, seeds: int = 4, start_steps: int = 50,
                  motion: MotionStats | RunningMotion | None = None, knn: KNNDistance | None = None,
                  ensemble: list[WorldModel] = (), batch: int = 32, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean of every predictor over `horizon`-step rollouts from windows of the start phase
    (the first `start_steps` steps of episodes) and of the rest: `{phase: {signal: mean}}`,
    plus the rollout's foreground PSNR. A predictor that sees a start-phase collapse (a
    tokenizer mapping a rare state onto a common one) is higher at the start."""
    spec = task_spec(task)
    sampler = WindowSampler(store, episodes, context=1, horizon=horizon, start_steps=start_steps)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    out = {}
    for phase, w in sampler.by_phase(windows, rng):
        cols: dict[str, list] = {}
        imagined = []
        for i in range(0, windows, batch):
            frames = w.frames[i: i + batch].to(model.device)
            actions = w.actions[i: i + batch, :, : spec.action_dim].to(model.device)
            sig, im = hallucination_signals(model, frames[:, 0], actions, task=task, seeds=seeds, motion=motion,
                                            generator=gen)
            row = {k: v.mean(1) for k, v in sig.items()}
            if knn is not None:
                row["knn"] = knn(im.latents).mean(1).to(model.device)
            if len(ensemble):
                row["ensemble"] = ensemble_disagreement([model, *ensemble], frames[:, 0], actions, task=task,
                                                        generator_seed=seed).mean(1).to(model.device)
            for k, v in row.items():
                cols.setdefault(k, []).append(v.float().cpu())
            imagined.append(model.decode(im.latents).cpu())
        out[phase] = {k: torch.cat(v).mean().item() for k, v in cols.items()}
        out[phase]["rollout_fg_psnr"] = foreground_psnr(torch.cat(imagined), w.frames[:, 1:], w.background[:, None])
    return out
