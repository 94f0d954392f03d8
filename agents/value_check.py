"""How far a critic can be trusted inside value-guided MPC, measured on real episodes.

Two numbers explain whether planning with `Σ γ^h r_h + γ^H V(f_H)` can beat the actor:
- the critic's error on real frames: Q(f_t, a_t) against the discounted return that
  followed in an episode of the policy it values (the actor's own episodes);
- the imagination gap: V(f̂_{t+h}) of the model's imagined features after h steps of the
  recorded actions, against V(f_{t+h}) of the real frames at t + h.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from agents.learner import Learner
from world_models import episode_features
from agents.value_estimation import pearson
from world_models import Simulator


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Return-to-go `[T]`: G_t = Σ_k γ^k r_{t+k} within the episode."""
    out = np.zeros(len(rewards))
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


@torch.no_grad()
def value_check(model: Simulator, learner: Learner, frames: Tensor, actions: Tensor, rewards: np.ndarray,
                task: str, *, gamma: float, context: int, horizon: int = 3, every: int = 10) -> dict[str, np.ndarray]:
    """Per-step values of one real episode (`frames [T+1, 3, h, w]`, `actions [T, A]`,
    `rewards [T]`): `q` Q(f_t, a_t) and `returns` G_t for the steps whose return is not cut
    by the episode's end by more than γ^T' < 0.05; and, every `every` steps from `context`
    on, `v_real` V(f_{t+h}) and `v_imagined` V(f̂_{t+h}) after `horizon` imagined steps."""
    feats = episode_features(model, frames, actions, task, context)
    T = len(actions)
    valid = T - int(np.ceil(np.log(0.05) / np.log(gamma)))
    q = learner.value(feats[:T], actions.float()).numpy()
    g = discounted_returns(rewards, gamma)
    starts = list(range(context - 1, T - horizon, every))
    v_real = v_imagined = np.zeros(0)
    if starts:
        ctx = torch.stack([frames[t - context + 1: t + 1] for t in starts])
        ctx_actions = torch.stack([actions[t - context + 1: t] for t in starts]) if context > 1 else None
        plan = torch.stack([actions[t: t + horizon] for t in starts])
        im = model.imagine(ctx.to(model.device), plan.to(model.device), context_actions=None if ctx_actions is None
                           else ctx_actions.to(model.device), task=task)
        v_imagined = learner.state_value(im.features[:, -1].float().cpu()).numpy()
        v_real = learner.state_value(feats[[t + horizon for t in starts]]).numpy()
    return {"q": q[:max(valid, 0)], "returns": g[:max(valid, 0)], "v_real": v_real, "v_imagined": v_imagined}


def summarize(checks: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Pooled figures of several `value_check`s: the critic's MAE, bias and correlation with
    the returns, and the mean |V(f̂) - V(f)| of the imagination gap next to the spread of V."""
    pool = {k: np.concatenate([c[k] for c in checks]) for k in checks[0]}
    q, g, vr, vi = pool["q"], pool["returns"], pool["v_real"], pool["v_imagined"]
    out = {}
    if len(q) > 1:
        out.update(q_mae=float(np.abs(q - g).mean()), q_bias=float((q - g).mean()), return_mean=float(g.mean()),
                   q_corr=pearson(q, g))
    if len(vr) > 1:
        out.update(imagined_v_gap=float(np.abs(vi - vr).mean()), imagined_v_bias=float((vi - vr).mean()),
                   v_std=float(vr.std()))
    return out
