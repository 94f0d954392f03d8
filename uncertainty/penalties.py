"""Turning an uncertainty signal into a reward: MOPO's penalty and Plan2Explore's curiosity."""
from __future__ import annotations

from torch import Tensor


def penalized_reward(reward: Tensor, u: Tensor, lam: float) -> Tensor:
    """MOPO: `r - λ u` (pessimism where the model is unsure). Shapes broadcast, e.g. `[B, H]`."""
    if lam < 0:
        raise ValueError(f"the penalty weight must be >= 0, got {lam}")
    return reward - lam * u


def curiosity_reward(u: Tensor, scale: float = 1.0) -> Tensor:
    """Plan2Explore-style intrinsic reward: seek what the model is unsure about, `scale u`."""
    return scale * u
