"""Offline model-based RL: MOPO on world-model features, with d3rlpy as the learner.

    real = feature_transitions(model, store, episodes, task)      # real data, as features
    starts = StartWindows(store, episodes, task=task, context=model.max_context)
    result = mopo(model, Learner("sac", real.obs_dim, A), real, starts, MOPOConfig(),
                  penalty=StepSignal("u_r", model), lam=1.0)

Every `rollout_every` gradient steps, `rollout_batch` imagined rollouts of `horizon` steps
branch from real start windows, acting with the current policy; their reward is the
model's minus `lam * u` (MOPO, WHALE §4.2). A model buffer keeps the last `keep_rounds`
rounds, and each batch mixes a `real_ratio` share of real transitions with imagined ones.
With `model=None` the same loop is the model-free anchor on the real transitions alone.
Nothing here touches an environment: `evaluate` (optional) is the caller's.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.context import stack_frames
from agents.learner import Learner
from replay import Episode, EpisodeInfo, EpisodeStore
from world_models import Simulator, episode_features
from world_models.checkpoint import read_config
from world_models.imagined import ImaginedReward, Signal, StartWindows


@dataclass
class Transitions:
    """`obs, next_obs [N, F]`, `actions [N, A]`, `rewards, terminals [N]` (float32 arrays)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminals: np.ndarray

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def sars(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`(obs, actions, rewards, next_obs)`, as `uncertainty.step_signal(real=...)` takes them."""
        return self.obs, self.actions, self.rewards, self.next_obs

    def sample(self, n: int, rng: np.random.Generator) -> "Transitions":
        i = rng.integers(len(self), size=n)
        return Transitions(self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.terminals[i])

    @staticmethod
    def cat(parts: list["Transitions"]) -> "Transitions":
        return Transitions(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                             ("obs", "actions", "rewards", "next_obs", "terminals")))

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # two writers never share a temporary file
        np.savez(tmp, **self.__dict__)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Transitions":
        with np.load(path) as z:
            return cls(**{k: z[k] for k in ("obs", "actions", "rewards", "next_obs", "terminals")})


def features_cache(folder: str | Path, checkpoint: str | Path, context: int, episodes: list[EpisodeInfo]) -> Path:
    """Where `feature_transitions` caches a checkpoint's features of `episodes`. The name
    hashes the checkpoint's weights (sha256), the context and the episodes, so a retrained
    model or other data never reads stale features."""
    spec = read_config(checkpoint)
    weights = spec.get("weights_sha256") or str(Path(checkpoint).resolve())
    key = hashlib.sha1(f"{weights}|{context}|{[e.path.name for e in episodes]}".encode()).hexdigest()[:12]
    return Path(folder) / f"features-{spec['name']}-{key}.npz"


def feature_transitions(model: Simulator, store: EpisodeStore, episodes: list[EpisodeInfo], task: str, *,
                        context: int | None = None, cache: Path | None = None, progress: bool = True) -> Transitions:
    """Every real transition of `episodes` as features (`model.features` of the real frames,
    or the recorded states for a state model), computed once and cached at `cache`. An
    episode that ends by time limit still has its last frame, so all T transitions count."""
    if cache is not None and cache.exists():
        return Transitions.load(cache)
    context = context or getattr(model, "max_context", 1)
    device = getattr(model, "device", torch.device("cpu"))

    def features(info: EpisodeInfo, ep: Episode) -> np.ndarray:
        if not model.reads_states:
            return episode_features(model, torch.from_numpy(ep.frames).to(device),
                                    torch.from_numpy(ep.actions).to(device), task, context).cpu().numpy()
        if ep.states is None:
            raise ValueError(f"{info.path}: the state ensemble needs recorded states")
        return ep.states.astype(np.float32)

    real = episode_transitions(store, episodes, task, features, desc="features", progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        real.save(cache)
    return real


def frame_transitions(store: EpisodeStore, episodes: list[EpisodeInfo], task: str, *, stack: int = 3,
                      progress: bool = True) -> Transitions:
    """Every real transition of `episodes` as raw frames for a pixel learner: `obs, next_obs`
    uint8 `[N, 3 * stack, H, W]`, the last `stack` frames on the channel axis (the first
    frame repeated before an episode's start, as DrQ's frame stack does at reset)."""
    if stack < 1:
        raise ValueError(f"stack must be >= 1 frame, got {stack}")
    return episode_transitions(store, episodes, task, lambda info, ep: stack_frames(ep.frames, stack),
                               desc="frames", progress=progress)


def episode_transitions(store: EpisodeStore, episodes: list[EpisodeInfo], task: str,
                        observe: Callable[[EpisodeInfo, Episode], np.ndarray], *, desc: str,
                        progress: bool = True) -> Transitions:
    """The T transitions of each readable episode of `episodes`, observed as `observe(info,
    episode) [T + 1, ...]`; only the last one of a terminated episode is terminal."""
    parts = []
    for info in tqdm(episodes, desc=desc, disable=not progress):
        ep = store.load(info)
        if ep is None:
            continue
        obs = observe(info, ep)
        term = np.zeros(len(ep.actions), np.float32)
        term[-1] = float(ep.terminated)
        parts.append(Transitions(obs[:-1], ep.actions.astype(np.float32), ep.rewards.astype(np.float32), obs[1:], term))
    if not parts:
        raise ValueError(f"no readable {task} episodes among {len(episodes)}")
    return Transitions.cat(parts)


class ModelBuffer:
    """A ring buffer of imagined transitions (MOPO's model buffer)."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int):
        self.data = Transitions(np.zeros((capacity, obs_dim), np.float32), np.zeros((capacity, action_dim), np.float32),
                                np.zeros(capacity, np.float32), np.zeros((capacity, obs_dim), np.float32),
                                np.zeros(capacity, np.float32))
        self.capacity, self.size, self.head = capacity, 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, t: Transitions) -> None:
        idx = (self.head + np.arange(len(t))) % self.capacity
        for k in ("obs", "actions", "rewards", "next_obs", "terminals"):
            getattr(self.data, k)[idx] = getattr(t, k)
        self.head = (self.head + len(t)) % self.capacity
        self.size = min(self.capacity, self.size + len(t))

    def sample(self, n: int, rng: np.random.Generator) -> Transitions:
        i = rng.integers(self.size, size=n)
        d = self.data
        return Transitions(d.obs[i], d.actions[i], d.rewards[i], d.next_obs[i], d.terminals[i])


def learner_hyper(algo: str, **overrides) -> dict:
    """The d3rlpy hyperparameters MOPO's learner starts from: γ = 0.99, and for SAC an
    entropy temperature that starts at 0.1. d3rlpy starts it at 1.0, and at its rate of 3e-4
    it is still about 0.5 after 3000 steps: on cup-catch (rewards ≤ 2 per step) the entropy
    term then drowns the reward in a CPU-sized run (docs/offline.md). `overrides` win."""
    return {"gamma": 0.99, **({"initial_temperature": 0.1} if algo == "sac" else {}), **overrides}


@dataclass
class MOPOConfig:
    """MOPO / OfflineRL-Kit defaults, scaled to a 2-core CPU (see `experiments/configs/offline.yaml`)."""

    steps: int = 20_000           # gradient steps
    batch: int = 256
    rollout_every: int = 250      # gradient steps between rollout rounds (OfflineRL-Kit: 1000)
    rollout_batch: int = 1000     # imagined rollouts per round (OfflineRL-Kit: 50,000)
    horizon: int = 5              # steps per imagined rollout (MOPO: 1-5)
    keep_rounds: int = 5          # rounds the model buffer keeps (OfflineRL-Kit: 5)
    real_ratio: float = 0.5       # share of real transitions in each batch (MOPO: 5%; docs/offline.md)
    eval_every: int = 2000
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.real_ratio <= 1:
            raise ValueError(f"real_ratio must be in [0, 1], got {self.real_ratio}")
        for name in ("steps", "batch", "rollout_every", "rollout_batch", "horizon", "keep_rounds", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@torch.no_grad()
def imagined_rollouts(model: Simulator, learner: Learner, starts: StartWindows, n: int, horizon: int,
                      penalty: Signal | None, earn: ImaginedReward, rng: np.random.Generator,
                      generator: torch.Generator) -> tuple[Transitions, dict[str, float]]:
    """`n` rollouts of `horizon` steps from real start windows, acting with the learner's
    exploring policy; rewards are `earn(r, u)`: the model's minus `lam * u` for MOPO."""
    frames, actions = starts.draw(n, rng)
    penalised = penalty is not None and earn.uses_signal
    state = model.start(frames, actions, task=starts.task, seeds=penalty.seeds if penalised else 1,
                        generator=generator)
    if penalised:
        penalty.begin(state, frames, actions)
    obs = state.features.float().cpu().numpy()
    parts, us, rs = [], [], []
    for _ in range(horizon):
        a = np.clip(learner.act(obs, explore=True), -1, 1).astype(np.float32)
        act = torch.as_tensor(a, device=state.features.device)
        if penalised:
            penalty.before(state, act)
        state, out = model.step(state, act, signals=penalty.signals if penalised else ())
        r, u = out.reward, penalty(out).float() if penalised else None
        if r is not None:
            rs.append(r.float().mean().item())
        if u is not None:
            us.append(u.mean().item())
        r = earn(r, u)
        nxt = out.features.float().cpu().numpy()
        parts.append(Transitions(obs, a, r.cpu().numpy(), nxt, np.zeros(n, np.float32)))
        obs = nxt
    stats = {"rollout/model_reward": float(np.mean(rs))} if rs else {}
    if us:
        stats["rollout/u"] = float(np.mean(us))
    return Transitions.cat(parts), stats


def rollout_scale(logs: list[dict[str, float]]) -> str:
    """The mean imagined reward and signal per step over MOPO's rounds in `logs` (the
    penalty's scale against the reward it is subtracted from), or "" without rounds."""
    rewards = [m["rollout/model_reward"] for m in logs if "rollout/model_reward" in m]
    us = [m["rollout/u"] for m in logs if "rollout/u" in m]
    return (f"; imagined reward {np.mean(rewards):.2f}/step" if rewards else "") + (f", u {np.mean(us):.2f}/step" if us else "")


def mopo(model: Simulator | None, learner: Learner, real: Transitions, starts: StartWindows | None, cfg: MOPOConfig, *,
         penalty: Signal | None = None, lam: float = 0.0, bonus: float = 0.0, reward_weight: float = 1.0,
         evaluate: Callable[[Learner], dict[str, float]] | None = None,
         log: Callable[[int, dict[str, float]], None] | None = None,
         checkpoint: Callable[[Learner], None] | None = None, progress: bool = True) -> list[dict[str, float]]:
    """Train `learner` for `cfg.steps` gradient steps from its current step count (so a
    reloaded learner resumes). With `model`, batches mix real and imagined transitions
    (MOPO); without, they are real only (the model-free anchor). `evaluate(learner)` runs
    every `eval_every` steps and at the end; `log(step, metrics)` receives everything;
    `checkpoint(learner)` runs after each evaluation. Imagined rewards are
    `reward_weight * r - lam * u + bonus * u` (`ImaginedReward`, with `u` the `penalty`
    signal): MOPO's penalty, or with `bonus` a curiosity reward (`agents.curiosity`).
    Returns the evaluations."""
    earn = ImaginedReward(reward_weight, lam, bonus)
    if model is not None and earn.reward and not model.has_reward:
        raise ValueError(f"{model.name} has no reward head: MOPO needs the model's rewards")
    if model is not None and starts is None:
        raise ValueError("MOPO with a model needs start windows for its rollouts")
    if earn.uses_signal and penalty is None:
        raise ValueError("lam or bonus > 0 needs a penalty (an uncertainty signal)")
    rng = np.random.default_rng([cfg.seed, learner.steps])
    generator = torch.Generator(device=getattr(model, "device", torch.device("cpu"))).manual_seed(cfg.seed + learner.steps)
    buffer = ModelBuffer(cfg.rollout_batch * cfg.horizon * cfg.keep_rounds, real.obs_dim, real.actions.shape[1])
    evaluations = []
    bar = tqdm(range(learner.steps, cfg.steps), initial=learner.steps, total=cfg.steps, desc=learner.name,
               disable=not progress)
    t0 = time.perf_counter()
    for step in bar:
        metrics: dict[str, float] = {}
        if model is not None and step % cfg.rollout_every == 0:
            imagined, stats = imagined_rollouts(model, learner, starts, cfg.rollout_batch, cfg.horizon, penalty, earn,
                                                rng, generator)
            buffer.add(imagined)
            metrics.update(stats)
        n_real = cfg.batch if len(buffer) == 0 else round(cfg.real_ratio * cfg.batch)
        parts = [real.sample(n_real, rng)] + ([buffer.sample(cfg.batch - n_real, rng)] if n_real < cfg.batch else [])
        b = Transitions.cat(parts)
        metrics.update({f"train/{k}": v for k, v in learner.update(b.obs, b.actions, b.rewards, b.next_obs,
                                                                   b.terminals).items()})
        done = step + 1
        if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            result = {"step": done, "seconds": time.perf_counter() - t0, **evaluate(learner)}
            evaluations.append(result)
            metrics.update({f"eval/{k}": v for k, v in result.items() if k != "step"})
            bar.set_postfix(ret=f"{result.get('return', float('nan')):.1f}")
            if checkpoint is not None:
                checkpoint(learner)
        if log is not None and (metrics.keys() - {k for k in metrics if k.startswith("train/")} or done % 100 == 0):
            log(done, metrics)
    bar.close()
    return evaluations
