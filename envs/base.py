"""`TaskEnv`: the Gymnasium environment every Mirage task shares.

Subclasses wrap one simulator and implement four small hooks; this class owns the
conventions: actions in [-1, 1] with validation, action repeat, the episode time limit,
pixel (`uint8 [3, size, size]`) or state observations, and `info["state"]` /
`info["success"]`.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np

from envs.registry import TaskSpec


class TaskEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        if obs not in ("pixels", "state"):
            raise ValueError(f"obs must be 'pixels' or 'state', got {obs!r}")
        if not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
            raise ValueError(f"size must be an int in [8, 1024], got {size!r}")
        self.task = spec
        self.obs_mode = obs
        self.size = int(size)
        self.render_mode = "rgb_array"
        self._initial_seed = seed
        self._steps = 0
        self.action_space = gym.spaces.Box(-1.0, 1.0, (spec.action_dim,), np.float32)
        if obs == "pixels":
            self.observation_space = gym.spaces.Box(0, 255, (3, size, size), np.uint8)
        else:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)

    # ---- hooks for subclasses -------------------------------------------------------------
    @property
    @abstractmethod
    def state_dim(self) -> int: ...

    @abstractmethod
    def _reset_sim(self, rng: np.random.Generator) -> None:
        """Start a new episode, drawing all randomness from `rng`."""

    @abstractmethod
    def _step_sim(self, action: np.ndarray) -> tuple[float, bool | None]:
        """Advance one simulator step; returns (reward, success or None)."""

    @abstractmethod
    def _state(self) -> np.ndarray:
        """Low-dimensional state `float32 [state_dim]`."""

    @abstractmethod
    def _render(self) -> np.ndarray:
        """Current frame `uint8 [size, size, 3]`."""

    def _get_sim(self) -> Any:
        """Everything needed to restore the simulator (see `get_sim_state`)."""
        raise ValueError(f"{self.task.name}: the {self.task.domain} backend cannot snapshot its simulator")

    def _set_sim(self, sim: Any) -> None:
        raise ValueError(f"{self.task.name}: the {self.task.domain} backend cannot restore a simulator snapshot")

    # ---- snapshots (for the oracle model) --------------------------------------------------
    def get_sim_state(self) -> dict[str, Any]:
        """A copy of the simulator state and the step count; `set_sim_state` restores it,
        so the same actions then give the same rewards and frames."""
        return {"steps": self._steps, "sim": self._get_sim()}

    def set_sim_state(self, state: dict[str, Any]) -> None:
        self._steps = state["steps"]
        self._set_sim(state["sim"])

    def state(self) -> np.ndarray:
        """The low-dimensional state now, `float32 [state_dim]`."""
        return self._state()

    def state_names(self) -> list[str]:
        """A name per state dimension (`state[i]` unless the backend knows better)."""
        return [f"state[{i}]" for i in range(self.state_dim)]

    # ---- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._np_random is None:
            seed = self._initial_seed
        super().reset(seed=seed)
        self._steps = 0
        self._reset_sim(self.np_random)
        return self._observe(), self._info(success=False if self.task.has_success else None)

    def step(self, action):
        action = self._validate_action(action)
        reward, success = 0.0, None
        for _ in range(self.task.action_repeat):
            r, s = self._step_sim(action)
            reward += r
            success = s if success is None else (success or s)
        self._steps += 1
        truncated = self._steps >= self.task.episode_length
        return self._observe(), float(reward), False, truncated, self._info(success)

    def render(self) -> np.ndarray:
        """The current frame, `uint8 [size, size, 3]` (Gymnasium's rgb_array layout)."""
        return self._render()

    # ---- helpers --------------------------------------------------------------------------
    def _validate_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self.task.action_dim,):
            raise ValueError(f"{self.task.name}: action must have shape ({self.task.action_dim},), "
                             f"got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.task.name}: action has non-finite values: {a}")
        return np.clip(a, -1.0, 1.0)

    def _observe(self) -> np.ndarray:
        if self.obs_mode == "state":
            return self._state()
        return np.ascontiguousarray(self._render().transpose(2, 0, 1))

    def _info(self, success: bool | None) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self._state()}
        if self.task.has_success:
            info["success"] = bool(success)
        return info
