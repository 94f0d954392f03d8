"""Run an agent for whole episodes."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


class Agent(Protocol):
    def reset(self, obs: np.ndarray) -> None: ...
    def act(self) -> np.ndarray: ...
    def observe(self, action: np.ndarray, obs: np.ndarray) -> None: ...


@dataclass
class EpisodeResult:
    episode_return: float
    success: bool | None
    steps: int
    seconds: float
    frames: list[np.ndarray] = field(default_factory=list)  # observations `[3, h, w]` when kept


def run_episode(env, agent: Agent, seed: int, keep_frames: bool = False,
                on_step: Callable[[int], None] | None = None) -> EpisodeResult:
    """One episode of `agent` in `env` from `reset(seed=seed)`; `on_step(t)` runs after
    each step (e.g. to advance a progress bar or record what the agent imagined)."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed)
    agent.reset(obs)
    frames = [obs] if keep_frames else []
    total, success, done, t = 0.0, info.get("success"), False, 0
    while not done:
        action = agent.act()
        obs, reward, terminated, truncated, info = env.step(action)
        agent.observe(action, obs)
        total, done, t = total + reward, terminated or truncated, t + 1
        if success is not None:
            success = success or bool(info.get("success"))
        if keep_frames:
            frames.append(obs)
        if on_step is not None:
            on_step(t)
    return EpisodeResult(total, success, t, time.perf_counter() - t0, frames)
