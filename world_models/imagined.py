"""Imagined environments: any `Simulator` as a Gymnasium env or a batched SB3 `VecEnv`.

    starts = StartWindows(store, store.episodes(task="toy-reach"), task="toy-reach", context=1)
    venv = ImaginedVecEnv(model, starts, num_envs=16, horizon=20)
    SAC("MlpPolicy", venv).learn(10_000)       # any SB3 algorithm, inside the world model
    agents.FeaturePolicyAgent(model, policy, "toy-reach")   # then act from a real camera

Observations are the model's features `float32 [F]` (what `Simulator.features` gives for
real frames), or decoded frames `uint8 [3, h, w]` with `obs="frames"`. Every episode
starts from a window of real frames and lasts `horizon` imagined steps, then ends as a
time-limit truncation (never a termination). The reward is the model's, shaped by an
optional uncertainty `signal` (see `Signal`; `uncertainty.StepSignal` builds one by name):
`ImaginedReward` subtracts it (MOPO's penalty `lam`) or adds it (a curiosity `bonus`).
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

with contextlib.redirect_stderr(io.StringIO()):  # SB3 probes for the unmaintained gym, which prints a banner
    from stable_baselines3.common.vec_env import VecEnv

from envs import task_spec
from replay import EpisodeInfo, EpisodeStore
from world_models.base import SimState, Simulator, Step


class Signal(Protocol):
    """A per-step uncertainty `u [B]` of a `Step`; `signals` are the native signals the step
    must compute for it and `seeds` the samples per rollout it needs. `begin` is told the
    start windows of each new batch of rollouts, `before` each state and action about to be
    stepped: signals that look back (retracing) keep them, the others ignore them."""

    signals: tuple[str, ...]
    seeds: int

    def begin(self, state: SimState, frames: Tensor, context_actions: Tensor | None) -> None: ...

    def before(self, state: SimState, action: Tensor) -> None: ...

    def __call__(self, out: Step) -> Tensor: ...


@dataclass(frozen=True)
class ImaginedReward:
    """What an imagined step earns: `reward * r - penalty * u + bonus * u`, for the model's
    reward `r [B]` and an uncertainty signal `u [B]`. MOPO penalises (`penalty` = λ); a
    curiosity objective seeks (`bonus` = β, with `reward` 0 for pure exploration). One
    builder serves both, every weight >= 0: a signal is a penalty or a bonus, never both."""

    reward: float = 1.0
    penalty: float = 0.0
    bonus: float = 0.0

    def __post_init__(self):
        for name in ("reward", "penalty", "bonus"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"the {name} weight must be a finite number >= 0, got {v!r}")
        if self.penalty and self.bonus:
            raise ValueError("an uncertainty signal is either a penalty (MOPO) or a bonus (curiosity), not both")
        if not (self.reward or self.penalty or self.bonus):
            raise ValueError("every weight is 0: an imagined step would earn nothing")

    @property
    def uses_signal(self) -> bool:
        return bool(self.penalty or self.bonus)

    def __call__(self, reward: Tensor | None, u: Tensor | None) -> Tensor:
        """The shaped reward; `reward` may be None when its weight is 0, `u` when the signal's is."""
        out = 0.0
        if self.reward:
            if reward is None:
                raise ValueError("a reward weight > 0 needs the model's reward")
            out = self.reward * reward
        if self.uses_signal:
            if u is None:
                raise ValueError("a penalty or bonus weight > 0 needs an uncertainty signal")
            out = out - self.penalty * u + self.bonus * u
        return out


class StartWindows:
    """Where imagined episodes start: windows of `context` real frames (and the actions
    between them) drawn from `episodes` of a store, or from given `frames [N, T0, 3, H, W]`
    (with `actions [N, T0 - 1, A]` when T0 > 1). `observation="states"` draws the recorded
    states `[N, T0, S]` instead, for state models such as the ensemble. `first_steps` draws
    only windows that end within the first steps of an episode: the real task's starting
    situations (uniform windows of expert-heavy data mostly show the task already solved)."""

    def __init__(self, store: EpisodeStore | None = None, episodes: Sequence[EpisodeInfo] | None = None, *,
                 task: str, context: int = 1, frames: Tensor | None = None, actions: Tensor | None = None,
                 observation: str = "frames", first_steps: int | None = None):
        if (store is None) == (frames is None):
            raise ValueError("start windows come from a store or from given frames (one of the two)")
        if context < 1:
            raise ValueError(f"context must be >= 1 frame, got {context}")
        if observation not in ("frames", "states"):
            raise ValueError(f"observation must be 'frames' or 'states', got {observation!r}")
        if first_steps is not None and first_steps < 1:
            raise ValueError(f"first_steps must be >= 1, got {first_steps}")
        self.task, self.context, self.store, self.observation = task, context, store, observation
        self.first_steps = first_steps
        self.action_dim = task_spec(task).action_dim
        if store is not None:
            self.episodes = list(episodes) if episodes is not None else store.episodes(task=task)
            if not self.episodes:
                raise ValueError(f"no {task} episodes in {store.root} to start imagined episodes from")
        else:
            frames = frames[:, None] if frames.ndim == 4 else frames
            if frames.shape[1] > 1 and (actions is None or actions.shape[:2] != (len(frames), frames.shape[1] - 1)):
                raise ValueError(f"start frames of {frames.shape[1]} steps need actions [N, {frames.shape[1] - 1}, A]")
            self.frames, self.actions = frames, actions

    def draw(self, n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor | None]:
        """`n` windows: frames `[n, T0, 3, H, W]` and context actions `[n, T0 - 1, A]` (or None)."""
        if self.store is None:
            idx = torch.as_tensor(rng.integers(len(self.frames), size=n))
            return self.frames[idx], None if self.actions is None else self.actions[idx]
        b = self.store.sample(n, max(2, self.context), episodes=self.episodes, rng=rng, first=self.first_steps)
        actions = b["actions"][:, : self.context - 1, : self.action_dim] if self.context > 1 else None
        if self.observation == "states":
            if "states" not in b:
                raise ValueError(f"the {self.task} episodes in {self.store.root} recorded no states")
            return b["states"][:, : self.context], actions
        return b["frames"][:, : self.context], actions


class _Rollouts:
    """The batch of imagined episodes behind both environments."""

    def __init__(self, model: Simulator, starts: StartWindows, horizon: int, signal: Signal | None,
                 earn: ImaginedReward, obs: str, seed: int):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if obs not in ("features", "frames"):
            raise ValueError(f"obs must be 'features' or 'frames', got {obs!r}")
        if earn.reward and not model.has_reward:
            raise ValueError(f"{model.name} has no reward head: give reward_weight=0 and a bonus signal")
        if earn.uses_signal and signal is None:
            raise ValueError("a penalty (lam) or bonus > 0 needs an uncertainty signal")
        self.model, self.starts, self.horizon = model, starts, horizon
        self.signal = signal if earn.uses_signal else None
        self.earn, self.obs_kind = earn, obs
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=getattr(model, "device", torch.device("cpu"))).manual_seed(seed)
        self.state: SimState | None = None
        self.t = 0
        frames, actions = starts.draw(1, self.rng)
        probe = model.start(frames, actions, task=starts.task)
        self.feature_dim = probe.features.shape[-1]
        self.frame_shape = tuple(frames.shape[-3:])

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.generator.manual_seed(seed)

    def space(self) -> gym.spaces.Box:
        if self.obs_kind == "features":
            return gym.spaces.Box(-np.inf, np.inf, (self.feature_dim,), np.float32)
        return gym.spaces.Box(0, 255, self.frame_shape, np.uint8)

    @torch.no_grad()
    def reset(self, n: int) -> np.ndarray:
        frames, actions = self.starts.draw(n, self.rng)
        seeds = self.signal.seeds if self.signal is not None else 1
        self.state = self.model.start(frames, actions, task=self.starts.task, seeds=seeds, generator=self.generator)
        if self.signal is not None:
            self.signal.begin(self.state, frames, actions)
        self.t = 0
        if self.obs_kind == "features":
            return self.state.features.float().cpu().numpy()
        return frames[:, -1].numpy()

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Observations, rewards `[B]` and the parts of the reward (`model_reward`, `u`)."""
        a = torch.as_tensor(np.asarray(actions, np.float32)).reshape(self.state.batch, -1)
        signals = self.signal.signals if self.signal is not None else ()
        if self.signal is not None:
            self.signal.before(self.state, a)
        self.state, out = self.model.step(self.state, a, signals=signals, decode=self.obs_kind == "frames")
        model_reward = None if out.reward is None else out.reward.float()
        u = None if self.signal is None else self.signal(out).float()
        parts = {name: v.cpu().numpy() for name, v in (("model_reward", model_reward), ("u", u)) if v is not None}
        reward = self.earn(model_reward, u)
        self.t += 1
        if self.obs_kind == "features":
            obs = out.features.float().cpu().numpy()
        else:
            obs = (out.frame.clamp(0, 1) * 255).round().byte().cpu().numpy()
        return obs, reward.cpu().numpy(), parts


class ImaginedVecEnv(VecEnv):
    """`num_envs` imagined episodes stepped as one batch (a stable-baselines3 `VecEnv`).

    All episodes start together and end together after `horizon` steps, as time-limit
    truncations: `dones` is True, `infos[i]["TimeLimit.truncated"]` is True and
    `infos[i]["terminal_observation"]` holds the last observation; the returned
    observation is then the first of the next episode. `infos[i]` also carries the
    model's reward and the signal `u` behind each step's reward.

    The reward is `reward_weight * r - lam * u + bonus * u` (`ImaginedReward`): MOPO's
    penalised reward with `lam`, a curiosity reward (Plan2Explore) with `bonus` and
    `reward_weight=0`.
    """

    render_mode = None  # SB3 asks each sub-environment; imagined ones draw no window

    def __init__(self, model: Simulator, starts: StartWindows, *, num_envs: int = 16, horizon: int = 20,
                 signal: Signal | None = None, lam: float = 0.0, bonus: float = 0.0, reward_weight: float = 1.0,
                 obs: str = "features", seed: int = 0):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        earn = ImaginedReward(reward_weight, lam, bonus)
        self.rollouts = _Rollouts(model, starts, horizon, signal, earn, obs, seed)
        action_space = gym.spaces.Box(-1.0, 1.0, (starts.action_dim,), np.float32)
        super().__init__(num_envs, self.rollouts.space(), action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        seed = next((s for s in self._seeds if s is not None), None) if self._seeds else None
        if seed is not None:
            self.rollouts.seed(seed)
        self._reset_seeds()
        return self.rollouts.reset(self.num_envs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, parts = self.rollouts.step(self._actions)
        infos: list[dict[str, Any]] = [{k: float(v[i]) for k, v in parts.items()} for i in range(self.num_envs)]
        done = self.rollouts.t >= self.rollouts.horizon
        if done:
            for i, info in enumerate(infos):
                info["TimeLimit.truncated"] = True
                info["terminal_observation"] = obs[i]
            obs = self.rollouts.reset(self.num_envs)
        return obs, rewards.astype(np.float32), np.full(self.num_envs, done), infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


class ImaginedEnv(gym.Env):
    """One imagined episode at a time, as a Gymnasium environment (see `ImaginedVecEnv`):
    `reset(seed=...)` draws a start window, `step` returns `truncated=True` after
    `horizon` steps and never `terminated`."""

    metadata = {"render_modes": []}

    def __init__(self, model: Simulator, starts: StartWindows, *, horizon: int = 20, signal: Signal | None = None,
                 lam: float = 0.0, bonus: float = 0.0, reward_weight: float = 1.0, obs: str = "features",
                 seed: int = 0):
        earn = ImaginedReward(reward_weight, lam, bonus)
        self.rollouts = _Rollouts(model, starts, horizon, signal, earn, obs, seed)
        self.observation_space = self.rollouts.space()
        self.action_space = gym.spaces.Box(-1.0, 1.0, (starts.action_dim,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.rollouts.seed(seed)
        return self.rollouts.reset(1)[0], {}

    def step(self, action):
        if self.rollouts.state is None:
            raise ValueError("call reset() before step()")
        action = np.asarray(action, np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        obs, reward, parts = self.rollouts.step(action[None])
        truncated = self.rollouts.t >= self.rollouts.horizon
        return obs[0], float(reward[0]), False, truncated, {k: float(v[0]) for k, v in parts.items()}
