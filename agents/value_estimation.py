"""Off-policy evaluation inside a world model: WHALE's value estimation (its appendix B.4).

Every evaluation policy runs `episodes` episodes in the real environment and, from the same
start frames, closed loop inside the model through the step API: the model's estimate of
the policy's value is the mean imagined return. WHALE's own protocol, replaying each real
episode's actions open loop from its start, is measured next to it (`replay`). Metrics
compare estimates with real values across the policies: the value gap, the return
(Pearson) and rank (Spearman) correlations, and regret@k.

A policy reads one of two things:
- the low-dimensional state (experts, noisy and transformed experts, random): the true
  state in the environment; in the model, a ridge probe of the imagined features, fitted on
  recorded states of real frames (a measurement, never a loss of the model);
- the model's features (offline actors, the BC head): of the real frames in the
  environment, of the imagined frames in the model.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

import envs
from agents.bc import BCAgent
from agents.policy import FeaturePolicyAgent
from replay import Episode, EpisodeInfo, EpisodeStore, collect
from replay.behaviors import Behavior, make_behavior
from replay.experts import DEFAULT_EXPERT_DIR, make_expert
from uncertainty.fidelity import StateProbe, Windows, WindowSampler, window_features
from uncertainty.metrics import spearman
from world_models import Simulator


# ---- metrics: arrays of one value per policy ------------------------------------------------

def value_range(real: np.ndarray) -> float:
    """max − min of the policies' real values: the scale WHALE (after DOPE) normalises by."""
    real = np.asarray(real, np.float64)
    if real.ndim != 1 or len(real) < 2:
        raise ValueError(f"value metrics need one real value per policy for >= 2 policies, got shape {real.shape}")
    spread = real.max() - real.min()
    if spread <= 0:
        raise ValueError("every policy has the same real value: normalised gaps and regrets are undefined")
    return float(spread)


def value_gap(real: np.ndarray, estimated: np.ndarray) -> float:
    """Mean |V − V̂| over the policies, in units of the real values' range."""
    real, estimated = _pair(real, estimated)
    return float(np.abs(real - estimated).mean() / value_range(real))


def regret_at_k(real: np.ndarray, estimated: np.ndarray, k: int) -> float:
    """max V − max of V over the k policies the estimates rank highest, in units of the range.
    Ties in the estimates are broken against the estimator (the worse real value first), so
    a constant estimate earns the full regret."""
    real, estimated = _pair(real, estimated)
    if not 1 <= k <= len(real):
        raise ValueError(f"k must be in [1, {len(real)}] for {len(real)} policies, got {k}")
    top = np.lexsort((real, -estimated))[:k]
    return float((real.max() - real[top].max()) / value_range(real))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (nan when either side is constant)."""
    x, y = _pair(x, y)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float("nan") if denom == 0 else float((x * y).sum() / denom)


def value_metrics(real: np.ndarray, estimated: np.ndarray, k: int = 5) -> dict[str, float]:
    """`value_gap`, `return_corr`, `rank_corr`, `regret@1` and `regret@k` (k capped at the
    number of policies) of per-policy `estimated` values against `real` ones."""
    real, estimated = _pair(real, estimated)
    k = min(k, len(real))
    return {"value_gap": value_gap(real, estimated), "return_corr": pearson(real, estimated),
            "rank_corr": spearman(torch.from_numpy(real), torch.from_numpy(estimated)),
            "regret@1": regret_at_k(real, estimated, 1), f"regret@{k}": regret_at_k(real, estimated, k)}


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-D arrays of one value per policy, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("policy values must be finite")
    return x, y


# ---- policies ----------------------------------------------------------------------------

@dataclass
class EvaluationPolicy:
    """One policy under evaluation.

    Attributes:
        name: its label (an `EpisodeStore` behaviour name).
        reads: ``"state"`` or ``"features"`` (see the module docstring).
        behavior: for state policies, `behavior()` builds a fresh `Behavior`.
        act: for feature policies, features `[B, F]` -> actions `[B, A]`; None: the BC head.
    """

    name: str
    reads: str
    behavior: Callable[[], Behavior] | None = None
    act: Callable[[Tensor], Tensor] | None = None


def state_policy(name: str, task: str, expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> EvaluationPolicy:
    """A collection behaviour by name (see `replay.behaviors.make_behavior`), e.g. ``expert``,
    ``noise-gaussian-0.3``, ``transformed``, ``random``."""
    action_dim = envs.task_spec(task).action_dim
    expert = None if name in ("random", "noop") else make_expert(task, expert_dir)
    make_behavior(name, action_dim, expert)  # an unknown name fails here, before any episode runs
    return EvaluationPolicy(name, "state", behavior=lambda: make_behavior(name, action_dim, expert))


def feature_policy(name: str, act: Callable[[Tensor], Tensor] | None) -> EvaluationPolicy:
    """A policy on the model's features, e.g. an offline actor's `Learner.policy`; None: the
    model's BC head."""
    return EvaluationPolicy(name, "features", act=act)


# ---- returns -----------------------------------------------------------------------------

@dataclass
class PolicyReturns:
    """Per-episode returns `[E]` of one policy: `real` in the environment, `model` closed loop
    in the model, `replay` the model along the real episode's actions (open loop)."""

    name: str
    reads: str
    real: np.ndarray
    model: np.ndarray
    replay: np.ndarray


def fit_probe(model: Simulator, store: EpisodeStore, episodes: list[EpisodeInfo], task: str, *, context: int,
              windows: int = 2048, seed: int = 0) -> tuple[StateProbe, float]:
    """A `StateProbe` from the model's features (read with `context` frames) to the recorded
    states, fitted on `windows` windows of 90% of `episodes`, and its median R² over the
    state dimensions that vary, on as many windows of the other 10%."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(episodes))
    cut = len(episodes) - max(1, len(episodes) // 10) if len(episodes) > 1 else 1
    fit_eps, held_eps = [episodes[i] for i in order[:cut]], [episodes[i] for i in order[cut:]] or None

    def sample(eps) -> Windows:
        return WindowSampler(store, eps, context=context, horizon=1).sample(windows, None, rng)

    def features(w: Windows) -> Tensor:
        if not model.reads_states:
            return window_features(model, w, context, task)
        return model.features(w.states[:, context - 1], task=task).float().cpu()

    fit = sample(fit_eps)
    held = sample(held_eps or fit_eps)
    probe = StateProbe(ridge=1e-3).fit(features(fit), fit.states[:, context - 1])
    states = held.states[:, context - 1]
    r2 = probe.r2(features(held), states)[states.std(0) > 1e-6]
    return probe, float(r2.median()) if len(r2) else float("nan")


@torch.no_grad()
def imagined_returns(model: Simulator, starts: Tensor, policy: EvaluationPolicy, episode_seeds: list[int], *,
                     horizon: int, task: str, probe: StateProbe | None, generator: torch.Generator) -> np.ndarray:
    """Closed-loop returns `[E]` of `policy` for `horizon` steps from `starts` (frames
    `[E, 3, h, w]` or states `[E, S]`); state policies read `probe(features)`, each episode's
    behaviour drawing from its episode seed as in the environment."""
    if policy.reads == "state":
        if probe is None:
            raise ValueError(f"{policy.name} reads the state: imagining it needs a state probe")
        behaviors = [policy.behavior() for _ in episode_seeds]
        for b, s in zip(behaviors, episode_seeds):
            b.reset(np.random.default_rng(s))

        def act(features: Tensor) -> Tensor:
            states = probe.predict(features.float().cpu()).float().numpy()
            return torch.from_numpy(np.stack([b(x) for b, x in zip(behaviors, states)])).to(features.device)
    else:
        act = policy.act
    im = model.imagine(starts.to(model.device), act, horizon=horizon, task=task, generator=generator)
    return im.rewards.sum(1).double().cpu().numpy()


@torch.no_grad()
def replayed_returns(model: Simulator, starts: Tensor, actions: Tensor, *, task: str,
                     generator: torch.Generator) -> np.ndarray:
    """Open-loop returns `[E]`: the model from `starts` along recorded `actions [E, H, A]`."""
    im = model.imagine(starts.to(model.device), actions.to(model.device), task=task, generator=generator)
    return im.rewards.sum(1).double().cpu().numpy()


def real_episodes(task: str, policy: EvaluationPolicy, root: Path, episodes: int, *, horizon: int, size: int,
                  seed: int, model: Simulator | None = None, context: int = 1, num_envs: int = 1,
                  expert_dir: str | Path = DEFAULT_EXPERT_DIR, **env_kwargs) -> list[Episode]:
    """`episodes` real episodes of `policy` of `horizon` steps at `size` px, from the starts
    that `seed` draws (every policy gets the same ones), in episode-seed order. Episodes of
    these seeds already under `root` are reused, so `root` must be specific to horizon and
    size (and environment options `env_kwargs`); feature policies act through `model`,
    reading `context` frames."""
    store = EpisodeStore(root)
    wanted = [int(s) for s in np.random.SeedSequence(seed).generate_state(episodes)]

    def stored() -> dict[int, Episode]:
        return {ep.seed: ep for ep in map(store.load, store.episodes(task=task, behavior=policy.name)) if ep is not None}

    have = stored()
    if not all(s in have for s in wanted):
        shutil.rmtree(root / task / policy.name, ignore_errors=True)
        agents = None
        if policy.reads == "features":
            agents, num_envs = {policy.name: feature_agent(model, policy, task, context)}, 1
        collect(task, policy.name, store, episodes, num_envs=num_envs, size=size, seed=seed, episode_steps=horizon,
                expert_dir=expert_dir, progress=False, agents=agents, **env_kwargs)
        have = stored()
    return [have[s] for s in wanted]


def feature_agent(model: Simulator, policy: EvaluationPolicy, task: str, context: int) -> Callable[[int], object]:
    """`make_agent(seed)` acting with `policy` from the model's features of real frames."""
    if policy.act is None:
        action_dim = envs.task_spec(task).action_dim
        return lambda seed: BCAgent(model, task, action_dim, context=context, seed=seed)

    def act(features: np.ndarray) -> np.ndarray:
        return policy.act(torch.as_tensor(features, device=model.device)[None])[0].float().cpu().numpy()
    return lambda seed: FeaturePolicyAgent(model, act, task, context=context)


def estimate_values(model: Simulator, task: str, policies: list[EvaluationPolicy], *, episodes: int, horizon: int,
                    seed: int, real_root: Path, model_root: Path, probe: StateProbe | None, context: int,
                    size: int = 64, num_envs: int = 1, expert_dir: str | Path = DEFAULT_EXPERT_DIR,
                    progress: bool = True, **env_kwargs) -> list[PolicyReturns]:
    """Real, closed-loop imagined and open-loop replayed returns of every policy.

    Real episodes of state policies go under `real_root` (they do not depend on the model and
    are reused by the next model's evaluation), those of feature policies under `model_root`.
    Every policy starts from the same real frames; the model starts from the first frame.
    `env_kwargs` go to the environment (e.g. toy-reach's `start_box`).
    """
    if not model.has_reward:
        raise ValueError(f"{model.name} has no reward head: it cannot estimate returns")
    pixels, results = not model.reads_states, []
    for policy in tqdm(policies, desc="policies", unit="policy", disable=not progress):
        if policy.reads == "features" and policy.act is None and not model.has_policy:
            raise ValueError(f"policy {policy.name!r} is the BC head, and {model.name} has none")
        if policy.reads == "features" and not pixels:
            raise ValueError(f"policy {policy.name!r} reads pixel-model features; {model.name} reads states")
        root = real_root if policy.reads == "state" else model_root
        eps = real_episodes(task, policy, root, episodes, horizon=horizon, size=size, seed=seed, model=model,
                            context=context, num_envs=num_envs, expert_dir=expert_dir, **env_kwargs)
        starts = torch.from_numpy(np.stack([ep.frames[0] if pixels else ep.states[0] for ep in eps]))
        gen = lambda: torch.Generator(device=model.device).manual_seed(seed)  # noqa: E731
        imagined = imagined_returns(model, starts, policy, [ep.seed for ep in eps], horizon=horizon, task=task,
                                    probe=probe, generator=gen())
        replay = replayed_returns(model, starts, torch.from_numpy(np.stack([ep.actions for ep in eps])), task=task,
                                  generator=gen())
        results.append(PolicyReturns(policy.name, policy.reads, np.array([ep.episode_return for ep in eps]),
                                     imagined, replay))
    return results
