"""`toy-reach`: a point mass rendered by numpy, for tests and demos (no MuJoCo needed).

The arena is [-1, 1]^2. The agent (red disk) moves by `STEP * action` per step and is
clipped to the arena; the goal is a green disk. Reward is dense, `1 - |pos - goal| / D`
with D the arena diagonal, and `success` means the agent is within `SUCCESS_RADIUS` of the
goal. The state is `[x, y, goal_x, goal_y]`.
"""
from __future__ import annotations

import numpy as np

from envs.base import TaskEnv
from envs.registry import TaskSpec

STEP = 0.15
SUCCESS_RADIUS = 0.1
AGENT_RADIUS = 0.2
GOAL_RADIUS = 0.25
_DIAGONAL = 2 * np.sqrt(2)
_BACKGROUND = np.array([30, 30, 40], np.uint8)
_GRID = np.array([55, 55, 70], np.uint8)
_AGENT = np.array([230, 60, 50], np.uint8)
_GOAL = np.array([60, 200, 90], np.uint8)


class ToyReachEnv(TaskEnv):
    """Point-mass reaching with 2-D delta-position actions.

    Args:
        start_box, goal_box: ``(low, high)`` corners, each ``[2]``, of the regions the agent
            start and the goal are drawn from (default: the whole arena less a margin).
            Restricting them builds coverage-gap datasets (e.g. the left half only).
    """

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0,
                 start_box=((-0.8, -0.8), (0.8, 0.8)), goal_box=((-0.8, -0.8), (0.8, 0.8))):
        self.start_box = np.asarray(start_box, np.float32)
        self.goal_box = np.asarray(goal_box, np.float32)
        for name, box in (("start_box", self.start_box), ("goal_box", self.goal_box)):
            if box.shape != (2, 2) or np.any(box[0] > box[1]) or np.any(np.abs(box) > 1):
                raise ValueError(f"{name} must be ((xlo, ylo), (xhi, yhi)) inside [-1, 1]^2")
        self.pos = np.zeros(2, np.float32)
        self.goal = np.zeros(2, np.float32)
        super().__init__(spec, obs, size, seed)
        # pixel-centre coordinates in arena units, y pointing up: [size, size] each
        c = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size * 2 - 1
        self._gx, self._gy = np.meshgrid(c, -c)
        grid = (np.abs(((self._gx + 1) * 4) % 1 - 0.5) > 0.46) | (np.abs(((self._gy + 1) * 4) % 1 - 0.5) > 0.46)
        self._canvas = np.where(grid[..., None], _GRID, _BACKGROUND).astype(np.uint8)

    @property
    def state_dim(self) -> int:
        return 4

    def state_names(self) -> list[str]:
        return ["x", "y", "goal_x", "goal_y"]

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self.pos = rng.uniform(*self.start_box).astype(np.float32)
        self.goal = rng.uniform(*self.goal_box).astype(np.float32)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        self.pos = np.clip(self.pos + STEP * action, -1.0, 1.0).astype(np.float32)
        dist = float(np.linalg.norm(self.pos - self.goal))
        return 1.0 - dist / _DIAGONAL, dist < SUCCESS_RADIUS

    def _get_sim(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal])

    def _set_sim(self, sim: np.ndarray) -> None:
        self.pos, self.goal = sim[:2].copy(), sim[2:].copy()

    def _state(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def _render(self) -> np.ndarray:
        img = self._canvas.copy()
        for centre, radius, colour in ((self.goal, GOAL_RADIUS, _GOAL), (self.pos, AGENT_RADIUS, _AGENT)):
            inside = (self._gx - centre[0]) ** 2 + (self._gy - centre[1]) ** 2 <= radius ** 2
            img[inside] = colour
        return img
