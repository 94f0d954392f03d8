"""Collect pixel episodes with a behaviour into an `EpisodeStore`, on parallel environments."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

import envs
from replay.behaviors import make_behavior
from replay.episode import Episode
from replay.experts import DEFAULT_EXPERT_DIR, make_expert, medium_snapshots
from replay.store import EpisodeStore


@dataclass
class CollectSummary:
    task: str
    seconds: float = 0.0
    returns: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    successes: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))
    frames: int = 0

    @property
    def episodes(self) -> int:
        return sum(len(r) for r in self.returns.values())

    def table(self) -> str:
        lines = [f"{self.task}: {self.episodes} episodes, {self.frames} frames in {self.seconds:.1f} s "
                 f"({self.frames / max(self.seconds, 1e-9):.0f} frames/s)",
                 f"{'behavior':<16}{'episodes':>9}{'return (mean ± std)':>24}{'success':>9}"]
        for name, rets in sorted(self.returns.items()):
            succ = self.successes.get(name)
            s = f"{np.mean(succ):.0%}" if succ else "-"
            lines.append(f"{name:<16}{len(rets):>9}{np.mean(rets):>15.1f} ± {np.std(rets):<6.1f}{s:>9}")
        return "\n".join(lines)


def collect(task: str, behavior: str, store: EpisodeStore | str | Path, episodes: int, *,
            num_envs: int = 1, size: int = 64, seed: int = 0, expert_dir: str | Path = DEFAULT_EXPERT_DIR,
            episode_steps: int | None = None, progress: bool = True,
            agents: dict[str, Callable[[int], object]] | None = None, **env_kwargs) -> CollectSummary:
    """Run `episodes` episodes of `behavior` on `task` and add them to `store`.

    `episode_steps` cuts every episode short (truncated) after that many steps: more and
    shorter episodes cover more starts for the same frames (on cup-catch, the swing-up).
    `agents` names behaviours that act from pixels, e.g. ``{"curiosity": make_agent}`` with
    `make_agent(seed)` an agent of `agents` (see `replay.behaviors.AgentBehavior`).

    Environments run in parallel worker processes (`gymnasium.vector.AsyncVectorEnv`)
    when `num_envs > 1`. Episode k is reset with its own seed drawn from `seed`, and its
    behaviour draws from a generator with that seed, so a run is reproducible.
    """
    spec = envs.task_spec(task)
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    steps = spec.episode_length if episode_steps is None else episode_steps
    if not 1 <= steps <= spec.episode_length:
        raise ValueError(f"episode_steps must be in [1, {spec.episode_length}] for {task}, got {episode_steps}")
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    agents = agents or {}
    expert = None if behavior in ("random", "noop", *agents) else make_expert(task, expert_dir)
    snapshots = medium_snapshots(task, expert_dir) if behavior.startswith("medium") else None
    behaviors = [make_behavior(behavior, spec.action_dim, expert, snapshots, agents) for _ in range(num_envs)]
    ep_seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(episodes)]
    make_env = partial(envs.make, task, "pixels", size, seed, **env_kwargs)
    if num_envs > 1:  # spawned workers: a forked GL (EGL) context of the parent would hang them
        venv = gym.vector.AsyncVectorEnv([make_env] * num_envs, context="spawn",
                                         autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    else:
        venv = gym.vector.SyncVectorEnv([make_env], autoreset_mode=gym.vector.AutoresetMode.DISABLED)

    summary, t0 = CollectSummary(task), time.perf_counter()
    slot = [-1] * num_envs  # episode index running in each env (-1: idle)
    buffers: list[dict] = [{} for _ in range(num_envs)]
    next_ep, done = 0, 0

    def start(mask: np.ndarray, obs: np.ndarray, info: dict) -> None:
        nonlocal next_ep
        for i in np.flatnonzero(mask):
            slot[i] = next_ep if next_ep < episodes else -1
            if slot[i] < 0:
                continue
            behaviors[i].reset(np.random.default_rng(ep_seeds[next_ep]))
            behaviors[i].begin(obs[i])
            buffers[i] = {"frames": [obs[i]], "states": [info["state"][i]], "actions": [],
                          "rewards": [], "success": []}
            next_ep += 1

    def seeds_for(mask: np.ndarray) -> list[int | None]:
        pending = iter(ep_seeds[next_ep:])
        return [next(pending, None) if m else None for m in mask]

    bar = tqdm(total=episodes * steps, unit="frame", desc=f"collect {task}/{behavior}",
               disable=not progress)
    try:
        everyone = np.ones(num_envs, bool)
        obs, info = venv.reset(seed=seeds_for(everyone))
        state = info["state"]
        start(everyone, obs, info)
        while done < episodes:
            actions = np.stack([behaviors[i](state[i]) if slot[i] >= 0
                                else np.zeros(spec.action_dim, np.float32) for i in range(num_envs)])
            obs, reward, terminated, truncated, info = venv.step(actions)
            state = info["state"]
            ended = np.zeros(num_envs, bool)
            for i in range(num_envs):
                if slot[i] < 0:
                    continue
                buf = buffers[i]
                behaviors[i].see(actions[i], obs[i])
                buf["frames"].append(obs[i])
                buf["states"].append(state[i])
                buf["actions"].append(actions[i])
                buf["rewards"].append(reward[i])
                buf["success"].append(bool(info["success"][i]) if spec.has_success else False)
                bar.update(1)
                if terminated[i] or truncated[i] or len(buf["actions"]) == steps:
                    _finish(store, summary, task, behaviors[i].name, ep_seeds[slot[i]], buf,
                            bool(terminated[i]), spec.has_success)
                    ended[i], done = True, done + 1
            if ended.any() and next_ep < episodes:
                obs, info = venv.reset(seed=seeds_for(ended), options={"reset_mask": ended})
                state = np.where(ended[:, None], info["state"], state)  # others keep their state
                start(ended, obs, info)
            else:
                for i in np.flatnonzero(ended):
                    slot[i] = -1
    finally:
        bar.close()
        venv.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _finish(store: EpisodeStore, summary: CollectSummary, task: str, label: str, seed: int,
            buf: dict, terminated: bool, has_success: bool) -> None:
    ep = Episode(frames=np.stack(buf["frames"]).astype(np.uint8),
                 actions=np.stack(buf["actions"]).astype(np.float32),
                 rewards=np.asarray(buf["rewards"], np.float32), task=task, behavior=label,
                 seed=seed, terminated=terminated, truncated=not terminated,
                 states=np.stack(buf["states"]).astype(np.float32),
                 success=np.asarray(buf["success"], bool) if has_success else None)
    store.add(ep)
    summary.returns[label].append(ep.episode_return)
    if has_success:
        summary.successes[label].append(bool(ep.success.any()))
    summary.frames += len(ep.frames)
