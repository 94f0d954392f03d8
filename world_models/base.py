"""The contracts every world model implements.

`Simulator` is what can be driven: `start` encodes a context once, `step` advances it by
one action, `features` reads real frames the way a policy reads imagined ones, and
`imagine` / `rollout` loop over `step` with fixed actions or a policy. `WorldModel` adds
what can be trained: phases, losses, an encoder and a decoder. The `Oracle` (the true
simulator) is a `Simulator` only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

Policy = Callable[[Tensor], Tensor]
"""features `[B, F]` -> actions `[B, A]`."""


@dataclass
class SimState:
    """A batch of B rollouts of one simulator, at the frame they have reached.

    Internally a state holds `R = seeds * B` rows, seed-major (row `s * B + b` is seed s of
    rollout b): the seeds of one rollout are independent samples of its future, all
    driven by the same actions. A state is never changed in place: `step` returns a new
    one, so the same start can be branched many times.

    Attributes:
        owner: `id` of the simulator that made it (a state only steps in its own model).
        batch, seeds: B and S.
        task: the task being imagined; `action_width` its action dims.
        features_all: `[R, F]` features of the current frame of every row.
        policy_all: `[R, A]` the BC head's action at the current frame (the task's A
            dims), or None.
        generator: the random source of every sample drawn while stepping.
    """

    owner: int
    batch: int
    seeds: int
    task: str
    action_width: int
    features_all: Tensor
    policy_all: Tensor | None
    generator: torch.Generator | None

    @property
    def features(self) -> Tensor:
        """`[B, F]` features of the current frame (seed 0): what a policy or a critic reads."""
        return self.features_all[: self.batch]

    @property
    def policy_action(self) -> Tensor | None:
        """`[B, A]` the BC head's action at the current frame (seed 0), when there is a head."""
        return None if self.policy_all is None else self.policy_all[: self.batch]

    def rows(self, index: Tensor) -> Tensor:
        """Internal row indices `[S * B']` of the rollouts `index [B']`, for every seed."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.features_all.device)
        if index.ndim != 1:
            raise ValueError(f"select takes a 1-D index of rollouts, got shape {tuple(index.shape)}")
        if len(index) and (index.min() < -self.batch or index.max() >= self.batch):
            raise ValueError(f"index out of range for a state of {self.batch} rollouts")
        index = index % self.batch
        offsets = torch.arange(self.seeds, device=index.device)[:, None] * self.batch
        return (offsets + index[None]).flatten()

    def select(self, index: Tensor) -> "SimState":
        """The rollouts `index [B']`, picked or repeated (`torch.zeros(N)` broadcasts a
        single start over N candidate plans)."""
        rows = self.rows(index)
        return self._select_rows(rows, len(rows) // self.seeds)

    def _select_rows(self, rows: Tensor, batch: int) -> "SimState":
        """Subclasses pick their own per-row tensors too."""
        return replace(self, batch=batch, features_all=self.features_all[rows],
                       policy_all=None if self.policy_all is None else self.policy_all[rows])


@dataclass
class Step:
    """What `Simulator.step` returns for B rollouts (seed 0 unless said otherwise).

    Attributes:
        latent: `[B, ...]` the new frame's latent.
        reward: `[B]` the predicted reward of the action (mean over seeds); None when the
            model has no reward head (`has_reward`).
        features: `[B, F]` features of the new frame.
        signals: name -> `[B]` native uncertainty signals that were asked for (mean over seeds).
        policy_action: `[B, A]` the BC head's action at the new frame, when there is a head.
        seed_latents: `[S, B, ...]` the new latent of every seed, when S > 1.
        frame: `[B, 3, h, w]` in [0, 1] with `decode=True`.
    """

    latent: Tensor
    reward: Tensor | None
    features: Tensor
    signals: dict[str, Tensor] = field(default_factory=dict)
    policy_action: Tensor | None = None
    seed_latents: Tensor | None = None
    frame: Tensor | None = None


@dataclass
class Imagination:
    """What `imagine` / `rollout` return for B rollouts of H steps.

    Attributes:
        latents: `[B, H, ...]` predicted latent of each imagined frame (seed 0).
        rewards: `[B, H]` predicted reward of each action (mean over seeds); None without a
            reward head.
        features: `[B, H, F]` features of each imagined frame (seed 0).
        actions: `[B, H, A]` the actions that were taken (given, or chosen by the policy).
        frames: `[B, H, 3, h, w]` in [0, 1] when `decode=True` (seed 0).
        policy_actions: `[B, H, A]` the BC head's action at the frame each step starts from
            (the context's last frame, then the imagined ones), when the model has one.
        signals: name -> `[B, H]` natively computed uncertainty signals that were asked for.
        seed_latents: `[S, B, H, ...]` latents of every seed when `seeds = S > 1`.
    """

    latents: Tensor
    rewards: Tensor | None
    features: Tensor | None = None
    actions: Tensor | None = None
    frames: Tensor | None = None
    policy_actions: Tensor | None = None
    signals: dict[str, Tensor] = field(default_factory=dict)
    seed_latents: Tensor | None = None


class Simulator(ABC):
    """Anything that imagines: a trained world model, or the true simulator.

        state = sim.start(obs, task="toy-reach")            # encode a context once
        state = state.select(torch.zeros(N, dtype=torch.long))   # branch it over N plans
        state, out = sim.step(state, actions)               # actions [N, A] -> out.reward [N]
    """

    name: str
    action_dim: int
    native_signals: tuple[str, ...] = ()
    reads_states: bool = False  # True: `start` takes recorded states and `features` are them (the state ensemble)

    @property
    def has_policy(self) -> bool:
        """True when a BC head proposes actions (`SimState.policy_action`)."""
        return False

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """F, the size of `features`."""

    @property
    def has_reward(self) -> bool:
        """True when the model predicts rewards (else `Step.reward` is None)."""
        return True

    @abstractmethod
    def start(self, obs: Tensor, context_actions: Tensor | None = None, *, task: str | None = None,
              seeds: int = 1, generator: torch.Generator | None = None) -> SimState:
        """Encode a context: one frame `[B, 3, H, W]` or frames `[B, T0, 3, H, W]` with the
        `context_actions [B, T0 - 1, A]` between them. `seeds` independent samples of the
        future are kept per rollout; `generator` drives every sample the state draws."""

    @abstractmethod
    def step(self, state: SimState, actions: Tensor, signals: tuple[str, ...] = (),
             decode: bool = False) -> tuple[SimState, Step]:
        """Advance every rollout of `state` by `actions [B, A]`."""

    def features(self, frames: Tensor, context_actions: Tensor | None = None, task: str | None = None) -> Tensor:
        """`[B, F]` features of real frames (the last of a context `[B, T0, 3, H, W]`, or a
        single frame `[B, 3, H, W]`): the features `step` gives for an imagined frame."""
        return self.start(frames, context_actions, task=task).features

    def check_state(self, state: SimState) -> None:
        if not isinstance(state, SimState) or state.owner != id(self):
            raise ValueError(f"this state was not made by this {self.name} model's start()")

    def check_step_actions(self, state: SimState, actions: Tensor) -> tuple[Tensor, Tensor]:
        """`actions [B, A]` (A = the task's action dims, finite) -> padded actions
        `[S * B, action_dim]` for every row and their validity mask, on the state's device."""
        self.check_state(state)
        if not isinstance(actions, Tensor) or actions.shape != (state.batch, state.action_width):
            got = tuple(actions.shape) if isinstance(actions, Tensor) else type(actions).__name__
            raise ValueError(f"step takes actions [B={state.batch}, A={state.action_width}] for {state.task}, got {got}")
        device = state.features_all.device
        padded = check_actions(actions[:, None].to(device), self.action_dim)[:, 0].repeat(state.seeds, 1)
        mask = torch.zeros_like(padded, dtype=torch.bool)
        mask[:, : state.action_width] = True
        return padded, mask

    @torch.no_grad()
    def imagine(self, obs: Tensor, actions: Tensor | Policy | None = None, *, horizon: int | None = None,
                context_actions: Tensor | None = None, decode: bool = False, seeds: int = 1,
                signals: tuple[str, ...] = (), task: str | None = None,
                generator: torch.Generator | None = None, **options) -> Imagination:
        """Roll out from `obs` (see `start`): `actions [B, H, A]` (or `[N, H, A]` from one
        context, broadcast over N plans), a policy (features `[B, F]` -> actions `[B, A]`)
        for `horizon` steps, or None: the BC head's policy for `horizon` steps. `options`
        go to `start` (e.g. `cached`, `max_context`)."""
        state = self.start(obs, context_actions, task=task, seeds=seeds, generator=generator, **options)
        return self.rollout(state, actions, horizon=horizon, signals=signals, decode=decode)

    @torch.no_grad()
    def rollout(self, state: SimState, actions: Tensor | Policy | None = None, *, horizon: int | None = None,
                signals: tuple[str, ...] = (), decode: bool = False) -> Imagination:
        """`imagine` from a state that `start` (or `step`) made; see `imagine`."""
        self.check_state(state)
        plan, policy = None, None
        if isinstance(actions, Tensor):
            if actions.ndim != 3:
                raise ValueError(f"actions must be [B, H, A], got shape {tuple(actions.shape)}")
            if horizon is not None and horizon != actions.shape[1]:
                raise ValueError(f"horizon {horizon} differs from the plans' {actions.shape[1]} steps")
            if actions.shape[1] < 1:
                raise ValueError(f"plans must have at least one step, got actions of shape {tuple(actions.shape)}")
            if actions.shape[0] != state.batch:
                if state.batch != 1:
                    raise ValueError(f"actions batch {actions.shape[0]} must equal obs batch {state.batch}, "
                                     "or obs batch must be 1")
                state = state.select(torch.zeros(actions.shape[0], dtype=torch.long))
            plan, horizon = actions, actions.shape[1]
        else:
            if actions is None and not self.has_policy:
                raise ValueError(f"{self.name} has no BC policy head: pass actions [B, H, A] or a policy")
            if actions is not None and not callable(actions):
                raise ValueError(f"actions must be a tensor [B, H, A], a policy or None, got {type(actions).__name__}")
            if horizon is None or horizon < 1:
                raise ValueError("a policy rollout needs horizon >= 1")
            policy = actions
        steps: list[Step] = []
        taken, suggested = [], []
        for h in range(horizon):
            if state.policy_action is not None:
                suggested.append(state.policy_action)
            if plan is not None:
                a = plan[:, h]
            elif policy is None:
                a = state.policy_action
            else:
                a = policy(state.features)
                if not isinstance(a, Tensor) or a.shape != (state.batch, state.action_width):
                    got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
                    raise ValueError(f"the policy must return actions [B={state.batch}, A={state.action_width}], "
                                     f"got {got}")
            state, out = self.step(state, a, signals=signals, decode=decode)
            taken.append(a)
            steps.append(out)
        stack = lambda key: torch.stack([getattr(o, key) for o in steps], 1)  # noqa: E731
        return Imagination(
            latents=stack("latent"), rewards=None if steps[0].reward is None else stack("reward"),
            features=stack("features"), actions=torch.stack(taken, 1).to(steps[0].latent.device),
            frames=stack("frame") if decode else None,
            policy_actions=torch.stack(suggested, 1) if suggested else None,
            signals={k: torch.stack([o.signals[k] for o in steps], 1) for k in steps[0].signals},
            seed_latents=torch.stack([o.seed_latents for o in steps], 2) if state.seeds > 1 else None)


class WorldModel(Simulator, nn.Module):
    """A trainable pixel world model. Frames are `[B, T, 3, H, W]`, uint8 in [0, 255] or
    float in [0, 1].

    Training runs in `phases` (e.g. tokenizer, then dynamics); `loss(batch, phase)` is the
    objective of one phase and `phase_parameters(phase)` what it trains. `tasks` are the
    tasks it was built for; a task's embedding row is its position in that list.
    """

    phases: tuple[str, ...]
    tasks: tuple[str, ...]

    @abstractmethod
    def encode(self, frames: Tensor) -> Tensor:
        """`[B, T, 3, H, W]` -> latents `[B, T, ...]`."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """latents `[B, T, ...]` -> frames `[B, T, 3, H, W]` float in [0, 1]."""

    @abstractmethod
    def loss(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss of one training phase on a batch from `EpisodeStore.sample`, and
        metrics as detached scalar tensors (the trainer reads them only when it logs, so a
        step costs no device sync)."""

    @abstractmethod
    def prediction_error(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Per-sequence one-step prediction loss of the dynamics `[B]` (the quantity whose
        rise under shuffled actions measures how much the model uses actions)."""

    @abstractmethod
    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        """The parameters that `phase` trains."""

    def frozen_encoder(self, phase: str) -> Callable[[Tensor], Tensor] | None:
        """The deterministic encoder (frames `[B, T, 3, H, W]` -> latents `[B, T, ...]`) whose
        output `phase` reads from `batch["latents"]` when present, instead of encoding the
        frames itself; None where the phase needs the pixels. The trainer then encodes
        every frame once (`training.LatentCache`)."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    @abstractmethod
    def max_context(self) -> int:
        """Frames a prediction reads by default: the longest past the model trained on."""

    def task_row(self, task: str | None) -> int:
        """The embedding row of `task` (default: the first training task)."""
        name = task if task is not None else self.tasks[0]
        if name not in self.tasks:
            raise ValueError(f"this {self.name} model was trained on {list(self.tasks)}, not {name!r}")
        return self.tasks.index(name)

    def batch_task_rows(self, task_id: Tensor) -> Tensor:
        """Registry task ids of a batch (`EpisodeStore.sample`) -> this model's embedding rows."""
        from envs import TASKS
        names = list(TASKS)
        rows = [self.task_row(names[int(i)]) for i in task_id.tolist()]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def start_context(self, obs: Tensor, context_actions: Tensor | None, seeds: int,
                      max_context: int | None) -> tuple[Tensor, Tensor, Tensor, int]:
        """Validate a context for `start`: its last `max_context` frames `[B, W, 3, H, W]`, the
        action that led to each `[B, W, action_dim]`, its mask (none at the first) and the
        window size (`max_context`, by default `self.max_context`)."""
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        window = self.max_context if max_context is None else max_context
        if window < 1:
            raise ValueError(f"max_context must be >= 1, got {window}")
        obs = check_frames(obs, self.cfg.image_size)
        B, T0 = obs.shape[:2]
        prev, prev_mask = context_action_inputs(context_actions, B, T0, self.action_dim, self.device)
        prev, prev_mask = prev[:, -window:], prev_mask[:, -window:].clone()
        prev_mask[:, 0] = False
        return obs[:, -window:].to(self.device), prev * prev_mask, prev_mask, window

    def context_latents(self, frames: Tensor, encoded: Tensor | None) -> Tensor:
        """`encode` of a context's frames `[B, W, 3, H, W]` (from `start_context`), or the
        last W steps of `encoded [B, T0, ...]`, the latents of the whole context computed
        beforehand (windows of one episode share their frames' encodings)."""
        if encoded is None:
            return self.encode(frames)
        B, W = frames.shape[:2]
        if encoded.ndim < 3 or encoded.shape[0] != B or encoded.shape[1] < W:
            raise ValueError(f"encoded must be the latents [B={B}, T0>={W}, ...] of obs, got {tuple(encoded.shape)}")
        return encoded[:, -W:].to(self.device)


def check_frames(obs: Tensor, size: int) -> Tensor:
    """Validate observations for `start`: `[B, 3, H, W]` or `[B, T0, 3, H, W]` (B, T0 >= 1,
    H = W = `size`), uint8 in 0..255 or finite floats in 0..1. Returns `[B, T0, 3, H, W]`."""
    expected = f"frames [B, 3, {size}, {size}] or [B, T, 3, {size}, {size}]"
    if not isinstance(obs, Tensor):
        raise ValueError(f"obs must be a tensor of {expected}, got {type(obs).__name__}")
    obs = obs[:, None] if obs.ndim == 4 else obs
    if obs.ndim != 5 or obs.shape[2] != 3 or obs.shape[-2:] != (size, size):
        raise ValueError(f"obs must be {expected}, got shape {tuple(obs.shape)}")
    if obs.shape[0] == 0 or obs.shape[1] == 0:
        raise ValueError(f"obs is empty: shape {tuple(obs.shape)}")
    if obs.dtype != torch.uint8:
        if not obs.is_floating_point():
            raise ValueError(f"obs must be uint8 (0..255) or float (0..1), got {obs.dtype}")
        if not torch.isfinite(obs).all():
            raise ValueError("obs contain non-finite values")
        if obs.min() < 0 or obs.max() > 1:
            raise ValueError(f"float obs must lie in [0, 1] (uint8 for 0..255), got [{obs.min():.3g}, {obs.max():.3g}]")
    return obs


def to_float_frames(frames: Tensor) -> Tensor:
    """uint8 frames in [0, 255] -> float32 in [0, 1]; float frames pass through."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def check_actions(actions: Tensor, action_dim: int) -> Tensor:
    """Validate `[B, H, A]` actions (A <= action_dim) and zero-pad them to `action_dim`."""
    if actions.ndim != 3:
        raise ValueError(f"actions must be [B, H, A], got shape {tuple(actions.shape)}")
    if actions.shape[-1] > action_dim:
        raise ValueError(f"actions have {actions.shape[-1]} dims, the model takes at most {action_dim}")
    if not torch.isfinite(actions).all():
        raise ValueError("actions contain non-finite values")
    return nn.functional.pad(actions.float(), (0, action_dim - actions.shape[-1]))


def context_action_inputs(context_actions: Tensor | None, B: int, T0: int, action_dim: int,
                          device: torch.device) -> tuple[Tensor, Tensor]:
    """The action that led to each of T0 context frames, padded `[B, T0, action_dim]`, and its
    mask (all False at the first frame), from `context_actions [B, T0 - 1, A]`."""
    prev = torch.zeros(B, T0, action_dim, device=device)
    prev_mask = torch.zeros(B, T0, action_dim, dtype=torch.bool, device=device)
    if T0 > 1:
        if context_actions is None or context_actions.shape[:2] != (B, T0 - 1):
            raise ValueError(f"a context of {T0} frames needs context_actions [B={B}, {T0 - 1}, A]")
        prev[:, 1:] = check_actions(context_actions.to(device), action_dim)
        prev_mask[:, 1:, : context_actions.shape[-1]] = True
    return prev, prev_mask


def previous_actions(actions: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The action that led to each of `length` frames `[B, length, A]` and its mask (no action
    before the first frame), from `actions [B, length - 1, A]` and `mask [B, A]`."""
    B, _, A = actions.shape
    prev = nn.functional.pad(actions, (0, 0, 1, 0))
    prev_mask = mask[:, None].expand(B, length, A).clone()
    prev_mask[:, 0] = False
    return prev, prev_mask


def preset_config(config_cls, presets: dict[str, dict], preset: str, overrides: dict):
    """`config_cls` built from `presets[preset]` with `overrides`; unknown names raise `ValueError`."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    bad = sorted(set(overrides) - {f.name for f in fields(config_cls)})
    if bad:
        raise ValueError(f"unknown {config_cls.__name__} field(s): {', '.join(bad)}")
    return replace(config_cls(**presets[preset]), **overrides)


def psnr_from_mse(err: Tensor) -> Tensor:
    """PSNR in dB of frames in [0, 1] with mean squared error `err` (capped at 100 dB)."""
    return -10 * torch.log10(err.clamp(min=1e-10))
