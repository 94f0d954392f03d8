"""Every uncertainty signal by name, as the per-step `Signal` of imagined rollouts (MOPO's
penalty, a curiosity bonus): `u_r`, `u_s`, `u_f`, `token_entropy`, `max_std`,
`disagreement` (`StepSignal`), `knn` (`KNNSignal`), `retracing` (`RetracingSignal`) and
`ensemble` (`FeatureEnsembleSignal`).

    signal = step_signal("retracing", model, task="mw-plate-slide", motion=motion)
    state = model.start(frames, context_actions, task=task)
    signal.begin(state, frames, context_actions)
    for a in actions:                      # a: [B, A]
        signal.before(state, a)
        state, out = model.step(state, a, signals=signal.signals)
        u = signal(out)                    # [B]
"""
from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from envs import task_spec
from replay import EpisodeInfo, EpisodeStore
from uncertainty.baselines import KNNDistance
from uncertainty.predictors import MemorylessSignal, MotionStats, RunningMotion, StepSignal, offered_signals, rms
from uncertainty.retracing import retracing_actions
from world_models.base import SimState, Simulator, Step
from world_models.ensemble import Ensemble, make_config


class KNNSignal(MemorylessSignal):
    """Mean distance of each imagined latent to its k nearest training latents `[B]`."""

    signals: tuple[str, ...] = ()
    seeds = 1

    def __init__(self, knn: KNNDistance, *, motion: MotionStats | RunningMotion | None = None,
                 task: str | None = None):
        self.knn, self.motion, self.task = knn, motion, task

    @torch.no_grad()
    def __call__(self, out: Step) -> Tensor:
        u = self.knn(out.latent[:, None])[:, 0].to(out.latent.device)
        return u if self.motion is None else self.motion.normalise(u, self.task)


class RetracingSignal:
    """WHALE's retracing-rollout uncertainty (§4.2, eq. 5) of each imagined transition `[B]`.

    For the step `(s_t, a_t)` and each k in `ks`, the model steps again from `s_{t-k}` with
    the retracing actions of `a_{t-k..t}` (k + 1 equal steps, `retracing_actions`); the
    RMS distance of that latent from the direct one, averaged over k, times the step's
    predictive entropy (`token_entropy`, or `flow_instability` for flow models) is `u`.

    The states `s_{-k}` before the first imagined step are rebuilt from the real context
    windows in `begin`, so every step has its k steps of history: contexts need more than
    `max(ks)` frames. Each step costs `Σ (k + 1)` extra model steps (2 with the default
    `ks = (1,)`; WHALE's (1, 2, 3) costs 9). Distances are latent RMS; the offline
    `retracing_uncertainty` uses LPIPS of decoded frames where `lpips` can run.
    """

    seeds = 1

    def __init__(self, model: Simulator, task: str, *, ks: tuple[int, ...] = (1,),
                 motion: MotionStats | RunningMotion | None = None):
        spec = task_spec(task)
        if spec.action_kind != "delta_pose":
            raise ValueError(f"retracing needs delta_pose actions; {task} has {spec.action_kind} actions")
        native = tuple(getattr(model, "native_signals", ()))
        entropy = next((s for s in ("token_entropy", "flow_instability") if s in native), None)
        if entropy is None:
            raise ValueError(f"retracing needs a predictive entropy; {model.name} offers neither token_entropy "
                             "nor flow_instability")
        if not ks or min(ks) < 1:
            raise ValueError(f"retracing steps must be >= 1, got {ks}")
        self.model, self.task, self.ks, self.motion = model, task, tuple(sorted(set(ks))), motion
        self.delta_dims = spec.delta_dims
        self.signals = (entropy,)
        self.history: deque[tuple[SimState, Tensor]] = deque(maxlen=max(self.ks) + 1)

    @torch.no_grad()
    def begin(self, state: SimState, frames: Tensor, context_actions: Tensor | None) -> None:
        """Rebuild `s_{-k}` and `a_{-k}` for k = 1..max(ks) from the context `frames
        [B, T0, ...]` and `context_actions [B, T0 - 1, A]` that `state` was started from."""
        K, T0 = max(self.ks), frames.shape[1]
        if T0 <= K or context_actions is None:
            raise ValueError(f"retracing {K} steps back needs start windows of more than {K} frames "
                             f"with their actions, got {T0}")
        self.history.clear()
        for k in range(K, 0, -1):
            last = T0 - 1 - k  # index of the context frame that s_{-k} ends on
            past = self.model.start(frames[:, : last + 1], context_actions[:, :last] if last else None,
                                    task=self.task, generator=state.generator)
            self.history.append((past, context_actions[:, last].to(state.features.device)))

    def before(self, state: SimState, action: Tensor) -> None:
        """Remember the state and the action `[B, A]` of the step about to be taken."""
        if len(self.history) < max(self.ks):
            raise RuntimeError("RetracingSignal.begin must be called with the start windows before the first step")
        self.history.append((state, action.to(state.features.device)))

    @torch.no_grad()
    def __call__(self, out: Step) -> Tensor:
        steps = list(self.history)  # (s_{t-K}, a_{t-K}) .. (s_t, a_t)
        gaps = []
        for k in self.ks:
            state, _ = steps[-1 - k]
            plan = retracing_actions(torch.stack([a for _, a in steps[-1 - k:]], 1), self.delta_dims)
            for j in range(k + 1):
                state, retraced = self.model.step(state, plan[:, j])
            gaps.append(rms(retraced.latent - out.latent, lead=1))
        u = torch.stack(gaps).mean(0) * out.signals[self.signals[0]]
        return u if self.motion is None else self.motion.normalise(u, self.task)


class FeatureEnsembleSignal:
    """Disagreement of an ensemble of latent dynamics about each imagined transition `[B]`.

    K Gaussian MLPs (`world_models.Ensemble`, MOPO's dynamics) are fitted on the real
    transitions of the pixel model's features, `[f_t, a_t] -> f_{t+1}` (latent MOPO, as in
    LOMPO); `u` is the largest distance of an elite's mean from the elites' mean. The pixel
    model imagines; the ensemble only judges each of its steps: WHALE's ensemble baseline
    without K pixel models. Normalised, `u` is divided by the mean real feature step
    `|f_{t+1} - f_t|`, the ensemble's own unit, not by the scene motion of the latents.
    """

    signals: tuple[str, ...] = ()
    seeds = 1

    def __init__(self, ensemble: Ensemble, task: str, *, motion: MotionStats | RunningMotion | None = None):
        self.ensemble, self.task, self.motion = ensemble, task, motion
        self.pending: tuple[Tensor, Tensor] | None = None

    @classmethod
    def fit(cls, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, *, task: str,
            normalise: bool = False, seed: int = 0, preset: str = "small", **overrides) -> "FeatureEnsembleSignal":
        """Fit on real feature transitions `obs, next_obs [N, F]`, `actions [N, A]`, `rewards [N]`;
        `normalise` divides `u` by their mean step."""
        cfg = make_config(preset, state_dim=obs.shape[1], action_dim=actions.shape[1], **{"max_seconds": 180.0, **overrides})
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            ensemble = Ensemble(cfg, tasks=(task,))
        ensemble.fit_transitions(obs, actions, rewards, next_obs, seed=seed, progress=False)
        step = float((next_obs - obs).norm(dim=-1).mean())
        return cls(ensemble, task, motion=MotionStats({task: step}) if normalise else None)

    def begin(self, state: SimState, frames: Tensor, context_actions: Tensor | None) -> None:
        self.pending = None

    def before(self, state: SimState, action: Tensor) -> None:
        """Remember the features `[B, F]` and the action `[B, A]` of the step about to be taken."""
        self.pending = (state.features, action)

    @torch.no_grad()
    def __call__(self, out: Step) -> Tensor:
        if self.pending is None:
            raise RuntimeError("FeatureEnsembleSignal.before must be called with each state and action before the step")
        features, action = self.pending
        ens = self.ensemble
        start = ens.start(features.float().to(ens.device), task=self.task)
        _, judged = ens.step(start, action.float().to(ens.device), signals=("disagreement",))
        u = judged.signals["disagreement"].to(out.latent.device)
        return u if self.motion is None else self.motion.normalise(u, self.task)


def step_signal_names(model: Simulator, task: str) -> list[str]:
    """The names `step_signal` accepts for `model` on `task`."""
    names = offered_signals(model)
    if not getattr(model, "reads_states", False):
        names += ["knn", "ensemble"]
        native = getattr(model, "native_signals", ())
        if task_spec(task).action_kind == "delta_pose" and {"token_entropy", "flow_instability"} & set(native):
            names.append("retracing")
    return names


def step_signal(name: str, model: Simulator, *, task: str, motion: MotionStats | RunningMotion | None = None,
                store: EpisodeStore | None = None, episodes: list[EpisodeInfo] | None = None,
                retracing_ks: tuple[int, ...] = (1,), seed: int = 0,
                real: tuple[Tensor, Tensor, Tensor, Tensor] | None = None):
    """The step `Signal` called `name` for `model` on `task`, divided by `motion` when given.
    `knn` fits its bank of training latents on `episodes` of `store`; `ensemble` fits on
    `real`, the features of real transitions `(obs [N, F], actions [N, A], rewards [N],
    next_obs [N, F])`, and is divided by their mean feature step instead of `motion`."""
    names = step_signal_names(model, task)
    if name not in names:
        raise ValueError(f"{model.name} on {task} offers the signals {names}, not {name!r}")
    if name == "knn":
        if store is None or not episodes:
            raise ValueError("the knn signal needs the store and the training episodes for its latent bank")
        return KNNSignal(KNNDistance.fit(store, model, episodes, seed=seed), motion=motion, task=task)
    if name == "ensemble":
        if real is None:
            raise ValueError("the ensemble signal needs the real feature transitions (real=) to fit on")
        return FeatureEnsembleSignal.fit(*(torch.as_tensor(x).float() for x in real), task=task,
                                         normalise=motion is not None, seed=seed)
    if name == "retracing":
        return RetracingSignal(model, task, ks=retracing_ks, motion=motion)
    return StepSignal(name, model, motion=motion, task=task)
