"""Data-collection behaviours (MMBench2 appendix D), all behind one small interface.

A behaviour maps the low-dimensional state to an action in [-1, 1]. It is reset at the
start of every episode with a generator, from which it draws everything random
(including per-episode parameters), so an episode seed reproduces its actions. Behaviours
that act from the camera (an agent of `agents`, e.g. curiosity) also `begin(obs)` an
episode and `see(action, obs)` every step, through `AgentBehavior`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np


class Behavior(ABC):
    name: str = "behavior"

    def __init__(self, action_dim: int):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def begin(self, obs: np.ndarray) -> None:
        """The episode's first frame `uint8 [3, h, w]` (for behaviours that act from pixels)."""

    def see(self, action: np.ndarray, obs: np.ndarray) -> None:
        """The action executed (by this or another behaviour of a mix) and the frame it led to."""

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """Action `float32 [action_dim]` in [-1, 1] for `state`."""
        return np.clip(self.act(state), -1.0, 1.0).astype(np.float32)

    @abstractmethod
    def act(self, state: np.ndarray) -> np.ndarray: ...


class RandomBehavior(Behavior):
    """Uniform actions in [-1, 1]: diverse, low return."""

    name = "random"

    def act(self, state):
        return self.rng.uniform(-1.0, 1.0, self.action_dim)


class NoOpBehavior(Behavior):
    """All-zero actions: the dynamics without the agent's interference."""

    name = "noop"

    def act(self, state):
        return np.zeros(self.action_dim)


class ExpertBehavior(Behavior):
    """A task expert: any callable `state -> action` (scripted, analytic or learned)."""

    name = "expert"

    def __init__(self, action_dim: int, policy: Callable[[np.ndarray], np.ndarray]):
        super().__init__(action_dim)
        self.policy = policy

    def act(self, state):
        return self.policy(state)


class TransformedExpert(Behavior):
    """Expert actions, now and then transformed for a random number of steps.

    With probability `p_start` per step (when none is active) one of five transforms
    starts and lasts U{1, max_steps} steps: scale by U(0.2, 2), action dropout (each dim
    zeroed with probability 0.5), sign flip, all-zero, or repeat the previous action.
    These give counterfactual transitions near the expert's state distribution.
    """

    name = "transformed"
    TRANSFORMS = ("scale", "dropout", "flip", "zero", "repeat")

    def __init__(self, expert: Behavior, p_start: float = 0.1, max_steps: int = 20):
        super().__init__(expert.action_dim)
        self.expert, self.p_start, self.max_steps = expert, p_start, max_steps

    def reset(self, rng):
        super().reset(rng)
        self.expert.reset(rng)
        self.active, self.steps_left, self.prev = None, 0, np.zeros(self.action_dim)

    def act(self, state):
        a = np.asarray(self.expert(state), np.float64)
        if self.steps_left == 0 and self.rng.random() < self.p_start:
            self.active = self.TRANSFORMS[self.rng.integers(len(self.TRANSFORMS))]
            self.steps_left = int(self.rng.integers(1, self.max_steps + 1))
            self.scale = self.rng.uniform(0.2, 2.0)
        if self.steps_left > 0:
            self.steps_left -= 1
            a = {"scale": lambda: a * self.scale,
                 "dropout": lambda: a * (self.rng.random(self.action_dim) >= 0.5),
                 "flip": lambda: -a,
                 "zero": lambda: np.zeros_like(a),
                 "repeat": lambda: self.prev}[self.active]()
        self.prev = np.clip(a, -1.0, 1.0)
        return a


class StructuredNoise(Behavior):
    """Expert actions plus noise whose kind and parameters are drawn per episode.

    kinds: ``"gaussian"`` (σ ~ U(0.1, 0.6)), ``"ou"`` (Ornstein–Uhlenbeck, temporally
    correlated: θ ~ U(0.05, 0.3), σ ~ U(0.1, 0.4)), ``"mix"`` (convex mixture with a
    uniform random action, weight α ~ U(0.2, 0.8)). With `kind=None` it is drawn per
    episode too. A fixed `scale` replaces the draw of σ (gaussian, ou) or α (mix): graded
    policies of fixed quality, e.g. for off-policy evaluation.
    """

    KINDS = ("gaussian", "ou", "mix")

    def __init__(self, expert: Behavior, kind: str | None = None, scale: float | None = None):
        if kind is not None and kind not in self.KINDS:
            raise ValueError(f"noise kind must be one of {self.KINDS}, got {kind!r}")
        if scale is not None and (kind is None or not scale >= 0 or (kind == "mix" and scale > 1)):
            raise ValueError(f"a fixed noise scale needs a kind and a value >= 0 (<= 1 for mix), got {kind!r}, {scale!r}")
        super().__init__(expert.action_dim)
        self.expert, self.fixed_kind, self.scale = expert, kind, scale
        self.name = f"noise-{kind}" if kind else "noise"
        if scale is not None:
            self.name += f"-{scale:g}"

    def reset(self, rng):
        super().reset(rng)
        self.expert.reset(rng)
        self.kind = self.fixed_kind or self.KINDS[rng.integers(len(self.KINDS))]
        self.sigma = rng.uniform(0.1, 0.6) if self.kind == "gaussian" else rng.uniform(0.1, 0.4)
        self.theta = rng.uniform(0.05, 0.3)
        self.alpha = rng.uniform(0.2, 0.8)
        if self.scale is not None:
            self.sigma = self.alpha = self.scale
        self.ou = np.zeros(self.action_dim)

    def act(self, state):
        a = np.asarray(self.expert(state), np.float64)
        if self.kind == "gaussian":
            return a + self.sigma * self.rng.standard_normal(self.action_dim)
        if self.kind == "ou":
            self.ou += -self.theta * self.ou + self.sigma * self.rng.standard_normal(self.action_dim)
            return a + self.ou
        return (1 - self.alpha) * a + self.alpha * self.rng.uniform(-1.0, 1.0, self.action_dim)


class AgentBehavior(Behavior):
    """An agent (`reset(obs)`, `act()`, `observe(action, obs)`: see `agents`) as a behaviour:
    it acts from the camera, not the state. `make_agent(seed)` builds a fresh one per
    episode, seeded from the episode's generator, so an episode seed reproduces it."""

    def __init__(self, name: str, action_dim: int, make_agent: Callable[[int], object]):
        super().__init__(action_dim)
        self.name, self.make_agent, self.agent = name, make_agent, None

    def reset(self, rng):
        super().reset(rng)
        self.agent = self.make_agent(int(rng.integers(2**31)))

    def begin(self, obs):
        self.agent.reset(obs)

    def see(self, action, obs):
        self.agent.observe(action, obs)

    def act(self, state):
        return self.agent.act()


class MixedBehavior(Behavior):
    """Switches between behaviours within an episode, in segments of U{min_len, max_len} steps.

    For example, noise for a while to reach rarely visited states, then the expert again,
    which records recovery behaviour.
    """

    name = "mixed"

    def __init__(self, behaviors: list[Behavior], min_len: int = 5, max_len: int = 50):
        if not behaviors:
            raise ValueError("MixedBehavior needs at least one behaviour")
        super().__init__(behaviors[0].action_dim)
        self.behaviors, self.min_len, self.max_len = behaviors, min_len, max_len

    def reset(self, rng):
        super().reset(rng)
        for b in self.behaviors:
            b.reset(rng)
        self.steps_left = 0

    def begin(self, obs):
        for b in self.behaviors:
            b.begin(obs)

    def see(self, action, obs):
        for b in self.behaviors:
            b.see(action, obs)

    def act(self, state):
        if self.steps_left == 0:
            self.current = self.behaviors[self.rng.integers(len(self.behaviors))]
            self.steps_left = int(self.rng.integers(self.min_len, self.max_len + 1))
        self.steps_left -= 1
        return self.current(state)


class SnapshotMix(Behavior):
    """One policy per episode, drawn from `policies`, its action mixed with a uniform random
    one: `(1 - α) a + α u`, α drawn per episode from `alpha_range`. With the snapshots of a
    SAC run up to its medium one this is D4RL's medium-replay (what a learner saw on its
    way to medium performance); with one policy and α = 0, its medium."""

    def __init__(self, policies: list[Behavior], name: str, alpha_range: tuple[float, float] = (0.0, 0.0)):
        if not policies:
            raise ValueError(f"{name} needs at least one policy")
        super().__init__(policies[0].action_dim)
        self.policies, self.name, self.alpha_range = policies, name, alpha_range

    def reset(self, rng):
        super().reset(rng)
        self.current = self.policies[rng.integers(len(self.policies))]
        self.current.reset(rng)
        self.alpha = rng.uniform(*self.alpha_range)

    def act(self, state):
        a = np.asarray(self.current(state), np.float64)
        return a if self.alpha == 0 else (1 - self.alpha) * a + self.alpha * self.rng.uniform(-1.0, 1.0, self.action_dim)


BEHAVIORS = ("random", "noop", "expert", "transformed", "noise", "noise-gaussian", "noise-ou",
             "noise-mix", "mixed", "medium", "medium-replay", "curiosity", "human")
"""Names `make_behavior` takes; `noise-<kind>-<scale>` (e.g. `noise-gaussian-0.3`) fixes the noise's scale."""


def make_behavior(name: str, action_dim: int, expert: Callable[[], ExpertBehavior] | None = None,
                  snapshots: list[Callable[[], ExpertBehavior]] | None = None,
                  agents: dict[str, Callable[[int], object]] | None = None) -> Behavior:
    """Build a behaviour by name (see `BEHAVIORS`).

    Args:
        agents: agent factories by behaviour name (e.g. ``{"curiosity": ...}``, see
            `agents.curiosity`); such a behaviour needs one, and ``mixed`` mixes them in.
        expert: a factory for the task's expert; needed by every behaviour built on it
            (all but ``random`` and ``noop``). See `replay.experts.make_expert`.
        snapshots: factories of a learned expert's snapshots up to its medium one (the last);
            without them ``medium`` is the expert with half of every action random and
            ``medium-replay`` mixes in a random share drawn per episode from [0.5, 1].
    """
    agents = agents or {}
    if name in agents:
        return AgentBehavior(name, action_dim, agents[name])
    if name == "human":
        raise ValueError("behavior 'human' is recorded by playing in a browser: python experiments/play.py "
                         "checkpoint=<a trained model> task=<task> record=true")
    if name == "curiosity":
        raise ValueError("behavior 'curiosity' plans in a world model: give checkpoint=<a trained model>")
    if name == "random":
        return RandomBehavior(action_dim)
    if name == "noop":
        return NoOpBehavior(action_dim)
    kind, scale = noise_spec(name)
    if name not in BEHAVIORS and scale is None:
        raise ValueError(f"unknown behavior {name!r}; choose from {', '.join(BEHAVIORS)} "
                         "(or noise-<gaussian|ou|mix>-<scale>)")
    if expert is None:
        raise ValueError(f"behavior {name!r} needs an expert for this task")
    if name == "expert":
        return expert()
    if name == "transformed":
        return TransformedExpert(expert())
    if name == "medium":
        return (SnapshotMix([snapshots[-1]()], "medium") if snapshots
                else SnapshotMix([expert()], "medium", (0.5, 0.5)))
    if name == "medium-replay":
        return (SnapshotMix([s() for s in snapshots], "medium-replay", (0.0, 0.3)) if snapshots
                else SnapshotMix([expert()], "medium-replay", (0.5, 1.0)))
    if name.startswith("noise"):
        return StructuredNoise(expert(), kind=kind, scale=scale)
    return MixedBehavior([RandomBehavior(action_dim), NoOpBehavior(action_dim), expert(),
                          TransformedExpert(expert()), StructuredNoise(expert())]
                         + [AgentBehavior(n, action_dim, make) for n, make in agents.items()])


def noise_spec(name: str) -> tuple[str | None, float | None]:
    """`noise-<kind>[-<scale>]` -> (kind, scale); (None, None) for `noise` and other names."""
    parts = name.split("-")
    if parts[0] != "noise" or len(parts) < 2 or parts[1] not in StructuredNoise.KINDS or len(parts) > 3:
        return None, None
    if len(parts) == 2:
        return parts[1], None
    try:
        return parts[1], float(parts[2])
    except ValueError:
        return None, None
