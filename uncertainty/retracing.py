"""WHALE's retracing-rollout uncertainty (WHALE §4.2, eq. 5).

For the transition `(o_t, a_t)` and a retracing step k, roll out from `o_{t-k}` with the
retracing action of `a_{t-k..t}` (the accumulating pose dims summed, the rest — e.g. the
gripper — kept at their last value), split into k + 1 equal steps so that it stays within
the action bounds; the outcome should equal the direct prediction from `(o_t, a_t)`. The
estimate is the mean disagreement over k times the model's predictive entropy.

Disagreement: LPIPS between the decoded frames when `lpips` is available, else the RMS
distance of the two predicted latents (`RetracingResult.distance` says which).
Predictive entropy: WHALE's `token_entropy`. The flow model has no next-token entropy; it
uses its flow instability `u_f` instead — like entropy, a per-transition measure of how
unsure the model's own prediction is, and native, so it costs no extra rollouts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from envs import task_spec
from uncertainty.metrics import lpips
from uncertainty.predictors import rms
from world_models.base import WorldModel


def retracing_actions(actions: Tensor, delta_dims: tuple[int, ...]) -> Tensor:
    """Eq. 5, split: `actions [..., k, A]` -> `[..., k, A]` of k equal steps whose
    `delta_dims` sum to the sum of the originals; the other dims all take the last value."""
    if not delta_dims:
        raise ValueError("retracing needs delta_pose actions (accumulating dims); this task has none")
    k = actions.shape[-2]
    out = actions[..., -1:, :].expand_as(actions).clone()
    dims = list(delta_dims)
    out[..., dims] = actions[..., dims].sum(-2, keepdim=True).expand(*actions.shape[:-1], len(dims)) / k
    return out


@dataclass
class RetracingResult:
    uncertainty: Tensor        # [B] mean disagreement x predictive entropy
    disagreement: Tensor       # [B, len(ks)] per retracing step k
    entropy: Tensor            # [B] token entropy (WHALE) or flow instability (flow models)
    distance: str              # "lpips" or "latent_rms"
    entropy_signal: str


@torch.no_grad()
def retracing_uncertainty(model: WorldModel, frames: Tensor, actions: Tensor, *, task: str,
                          ks: tuple[int, ...] = (1, 2, 3), generator: torch.Generator | None = None) -> RetracingResult:
    """Uncertainty of the last transition of each window.

    Args:
        frames: `[B, t + 1, 3, H, W]`, the window `o_0 .. o_t`.
        actions: `[B, t + 1, A]`, the actions `a_0 .. a_t` (`a_t` is the action being judged).
        ks: retracing steps, each at most t.
    """
    spec = task_spec(task)
    if spec.action_kind != "delta_pose":
        raise ValueError(f"retracing-rollout needs delta_pose actions; {task} has {spec.action_kind} actions")
    t = frames.shape[1] - 1
    if actions.shape[1] != t + 1:
        raise ValueError(f"{t + 1} frames need {t + 1} actions (the last one is judged), got {actions.shape[1]}")
    if not ks or max(ks) > t or min(ks) < 1:
        raise ValueError(f"retracing steps {ks} must lie in 1..{t} for windows of {t + 1} frames")
    entropy_signal = "token_entropy" if "token_entropy" in model.native_signals else "flow_instability"
    if entropy_signal not in model.native_signals:
        raise ValueError(f"{model.name} offers neither token_entropy nor flow_instability")
    direct = model.imagine(frames[:, t], actions[:, t: t + 1], decode=True, signals=(entropy_signal,),
                           task=task, generator=generator)
    lat, img = [], []
    for k in ks:
        plan = retracing_actions(actions[:, t - k:], spec.delta_dims)
        r = model.imagine(frames[:, t - k], plan, decode=True, task=task, generator=generator)
        lat.append(r.latents[:, -1])
        img.append(r.frames[:, -1])
    perceptual = lpips(torch.stack(img, 1), direct.frames[:, -1:].expand(-1, len(ks), -1, -1, -1))
    if perceptual is not None:
        disagreement, distance = perceptual, "lpips"
    else:
        disagreement = rms(torch.stack(lat, 1) - direct.latents[:, -1:])
        distance = "latent_rms"
    entropy = direct.signals[entropy_signal][:, 0]
    return RetracingResult(disagreement.mean(1) * entropy, disagreement, entropy, distance, entropy_signal)
