"""Run an agent for whole episodes."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
from scipy import stats


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
    actions: list[np.ndarray] = field(default_factory=list)  # with them, the actions `[A]` and rewards
    rewards: list[float] = field(default_factory=list)


def run_episode(env, agent: Agent, seed: int, keep_frames: bool = False,
                on_step: Callable[[int], None] | None = None, max_steps: int | None = None) -> EpisodeResult:
    """One episode of `agent` in `env` from `reset(seed=seed)`, cut after `max_steps` agent
    steps when given; `on_step(t)` runs after each step (e.g. to advance a progress bar or
    record what the agent imagined)."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed)
    agent.reset(obs)
    frames, actions, rewards = ([obs] if keep_frames else []), [], []
    total, success, done, t = 0.0, info.get("success"), False, 0
    while not done:
        action = agent.act()
        obs, reward, terminated, truncated, info = env.step(action)
        agent.observe(action, obs)
        t += 1
        total, done = total + reward, terminated or truncated or t == max_steps
        if success is not None:
            success = success or bool(info.get("success"))
        if keep_frames:
            frames.append(obs)
            actions.append(np.asarray(action, np.float32))
            rewards.append(float(reward))
        if on_step is not None:
            on_step(t)
    return EpisodeResult(total, success, t, time.perf_counter() - t0, frames, actions, rewards)


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


def interval(values) -> float:
    """Half-width of the 95% t-interval of the mean of `values` (nan for fewer than 2)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
