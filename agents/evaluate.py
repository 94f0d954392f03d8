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


def evaluate(env, make_agent: Callable[[int], Agent], episodes: int, seed: int) -> dict[str, float]:
    """Mean and std of the return (and the success rate, where the task reports it) of
    `episodes` episodes, episode k from `reset(seed=seed + k)` with `make_agent(seed + k)`."""
    results = [run_episode(env, make_agent(seed + k), seed + k) for k in range(episodes)]
    returns = np.array([r.episode_return for r in results])
    out = {"return": float(returns.mean()), "return_std": float(returns.std())}
    successes = [r.success for r in results if r.success is not None]
    if successes:
        out["success"] = float(np.mean(successes))
    return out
