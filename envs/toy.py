"""Numpy pixel toys: small tasks with their own look and dynamics, for tests, demos and
multi-task experiments that run in minutes (no MuJoCo needed).

Every toy lives in the arena [-1, 1]^2 (y up), renders with numpy, and has an analytic
expert, `expert(state) -> action`:

- `toy-reach`: a point mass (red disk) moves by `STEP * action` onto a green goal.
- `toy-pong`: a paddle (1-D action) keeps a bouncing ball in play; a missed ball
  re-enters at the top (the scene divergence the hallucination paper shows on a ball).
- `toy-maze`: a point mass finds its way to a goal through fixed walls.
- `toy-push`: a point mass pushes a block onto a goal pad.

Rewards are dense and in [0, 1] per step.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from envs.base import TaskEnv
from envs.registry import TaskSpec

STEP = 0.15
SUCCESS_RADIUS = 0.1
AGENT_RADIUS = 0.2
GOAL_RADIUS = 0.25
_DIAGONAL = 2 * np.sqrt(2)
_AGENT = np.array([230, 60, 50], np.uint8)
_GOAL = np.array([60, 200, 90], np.uint8)


def _box(value, name: str) -> np.ndarray:
    box = np.asarray(value, np.float32)
    if box.shape != (2, 2) or np.any(box[0] > box[1]) or np.any(np.abs(box) > 1):
        raise ValueError(f"{name} must be ((xlo, ylo), (xhi, yhi)) inside [-1, 1]^2")
    return box


class ToyEnv(TaskEnv):
    """The shared arena: pixel-centre coordinates, a background and shape painters. Every
    toy adds `expert(state) -> action`, its analytic expert, and `OPTIONS`, the keyword
    options `envs.make` passes through."""

    OPTIONS: tuple[str, ...] = ()

    BACKGROUND = np.array([30, 30, 40], np.uint8)
    GRID = np.array([55, 55, 70], np.uint8)

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        super().__init__(spec, obs, size, seed)
        c = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size * 2 - 1
        self._gx, self._gy = np.meshgrid(c, -c)  # [size, size] each, arena units
        lines = (np.abs(((self._gx + 1) * 4) % 1 - 0.5) > 0.46) | (np.abs(((self._gy + 1) * 4) % 1 - 0.5) > 0.46)
        self._canvas = np.where(lines[..., None], self.GRID, self.BACKGROUND).astype(np.uint8)

    def _disk(self, img: np.ndarray, centre, radius: float, colour) -> None:
        img[(self._gx - centre[0]) ** 2 + (self._gy - centre[1]) ** 2 <= radius ** 2] = colour

    def _rect(self, img: np.ndarray, lo, hi, colour) -> None:
        img[(self._gx >= lo[0]) & (self._gx <= hi[0]) & (self._gy >= lo[1]) & (self._gy <= hi[1])] = colour


class PointGoalEnv(ToyEnv):
    """A point mass at `pos` and a goal at `goal`: the state `[x, y, goal_x, goal_y]`."""

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        self.pos, self.goal = np.zeros(2, np.float32), np.zeros(2, np.float32)
        super().__init__(spec, obs, size, seed)

    @property
    def state_dim(self) -> int:
        return 4

    def state_names(self) -> list[str]:
        return ["x", "y", "goal_x", "goal_y"]

    def _get_sim(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal])

    def _set_sim(self, sim: np.ndarray) -> None:
        self.pos, self.goal = sim[:2].copy(), sim[2:].copy()

    def _state(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal]).astype(np.float32)


class ToyReachEnv(PointGoalEnv):
    """Point-mass reaching with 2-D delta-position actions. Reward `1 - |pos - goal| / D`
    (D the arena diagonal); `success` within `SUCCESS_RADIUS`.

    Args:
        start_box, goal_box: ``(low, high)`` corners, each ``[2]``, of the regions the agent
            start and the goal are drawn from (default: the whole arena less a margin).
            Restricting them builds coverage-gap datasets (e.g. the left half only).
    """

    OPTIONS = ("start_box", "goal_box")

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0,
                 start_box=((-0.8, -0.8), (0.8, 0.8)), goal_box=((-0.8, -0.8), (0.8, 0.8))):
        self.start_box, self.goal_box = _box(start_box, "start_box"), _box(goal_box, "goal_box")
        super().__init__(spec, obs, size, seed)

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self.pos = rng.uniform(*self.start_box).astype(np.float32)
        self.goal = rng.uniform(*self.goal_box).astype(np.float32)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        self.pos = np.clip(self.pos + STEP * action, -1.0, 1.0).astype(np.float32)
        dist = float(np.linalg.norm(self.pos - self.goal))
        return 1.0 - dist / _DIAGONAL, dist < SUCCESS_RADIUS

    def _render(self) -> np.ndarray:
        img = self._canvas.copy()
        self._disk(img, self.goal, GOAL_RADIUS, _GOAL)
        self._disk(img, self.pos, AGENT_RADIUS, _AGENT)
        return img

    @staticmethod
    def expert(state: np.ndarray) -> np.ndarray:
        """Head straight for the goal at full speed, slowing down on arrival."""
        return np.clip((state[2:4] - state[:2]) / STEP, -1.0, 1.0)


class ToyPongEnv(ToyEnv):
    """A paddle at the bottom (action: its x velocity) keeps a ball in play. The ball
    bounces off the side and top walls and the paddle; a ball that passes the paddle
    re-enters at the top with a new direction. Reward `1 - |paddle_x - ball_x| / 2`;
    `success` on every return. State `[paddle_x, ball_x, ball_y, ball_vx, ball_vy]`."""

    BACKGROUND = np.array([15, 35, 30], np.uint8)
    GRID = np.array([15, 35, 30], np.uint8)
    PADDLE_Y, PADDLE_HALF, BALL_RADIUS, SPEED = -0.85, 0.25, 0.15, 0.12
    _PADDLE = np.array([230, 230, 230], np.uint8)
    _BALL = np.array([250, 200, 40], np.uint8)

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        self.paddle, self.ball, self.vel = 0.0, np.zeros(2, np.float32), np.zeros(2, np.float32)
        self._rng = np.random.default_rng(seed)
        super().__init__(spec, obs, size, seed)

    @property
    def state_dim(self) -> int:
        return 5

    def state_names(self) -> list[str]:
        return ["paddle_x", "ball_x", "ball_y", "ball_vx", "ball_vy"]

    def _serve(self, rng: np.random.Generator) -> None:
        self.ball = np.array([rng.uniform(-0.7, 0.7), 0.8], np.float32)
        angle = rng.uniform(-0.6, 0.6)
        self.vel = (self.SPEED * np.array([np.sin(angle), -np.cos(angle)])).astype(np.float32)

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.paddle = float(rng.uniform(-0.6, 0.6))
        self._serve(rng)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        self.paddle = float(np.clip(self.paddle + STEP * action[0], -1 + self.PADDLE_HALF, 1 - self.PADDLE_HALF))
        ball, vel = self.ball + self.vel, self.vel.copy()
        for axis, wall in ((0, 1 - self.BALL_RADIUS), (1, 1 - self.BALL_RADIUS)):
            if ball[axis] > wall:
                ball[axis], vel[axis] = 2 * wall - ball[axis], -abs(vel[axis])
        if ball[0] < -1 + self.BALL_RADIUS:
            ball[0], vel[0] = 2 * (-1 + self.BALL_RADIUS) - ball[0], abs(vel[0])
        returned = False
        floor = self.PADDLE_Y + self.BALL_RADIUS
        if ball[1] < floor <= self.ball[1]:
            if abs(ball[0] - self.paddle) <= self.PADDLE_HALF + self.BALL_RADIUS:
                ball[1], vel[1], returned = 2 * floor - ball[1], abs(vel[1]), True
                vel[0] = np.clip(vel[0] + 0.3 * self.SPEED * (ball[0] - self.paddle) / self.PADDLE_HALF,
                                 -0.8 * self.SPEED, 0.8 * self.SPEED)
        self.ball, self.vel = ball.astype(np.float32), vel.astype(np.float32)
        if self.ball[1] < -1:  # missed: the ball re-enters at the top
            self._serve(self._rng)
        return 1.0 - abs(self.paddle - float(self.ball[0])) / 2, returned

    def _get_sim(self) -> np.ndarray:
        return np.array([self.paddle, *self.ball, *self.vel], np.float32)

    def _set_sim(self, sim: np.ndarray) -> None:
        self.paddle, self.ball, self.vel = float(sim[0]), sim[1:3].copy(), sim[3:5].copy()

    def _state(self) -> np.ndarray:
        return self._get_sim()

    def _render(self) -> np.ndarray:
        img = self._canvas.copy()
        self._rect(img, (self.paddle - self.PADDLE_HALF, self.PADDLE_Y - 0.12), (self.paddle + self.PADDLE_HALF,
                                                                                 self.PADDLE_Y), self._PADDLE)
        self._disk(img, self.ball, self.BALL_RADIUS, self._BALL)
        return img

    @staticmethod
    def expert(state: np.ndarray) -> np.ndarray:
        """Follow the ball's x."""
        return np.clip((state[1] - state[0]) / STEP, -1.0, 1.0)[None]


class ToyMazeEnv(PointGoalEnv):
    """A point mass (2-D delta-position actions) reaches a goal in a fixed maze: walls block
    it (a move into a wall slides along it). Reward `1 - d / D` with `d` the goal's
    shortest-path distance over the maze's 8 x 8 cells; `success` within `SUCCESS_RADIUS`."""

    BACKGROUND = np.array([40, 30, 25], np.uint8)
    GRID = np.array([40, 30, 25], np.uint8)
    _WALL = np.array([120, 110, 160], np.uint8)
    _GOAL = np.array([80, 170, 230], np.uint8)
    LAYOUT = ("........",
              "..####..",
              ".....#..",
              "####.#..",
              ".....#..",
              ".#####..",
              "........",
              "........")
    RADIUS = 0.1
    CELL = 2 / 8

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        super().__init__(spec, obs, size, seed)
        self._walls = self._wall_mask(self._gx, self._gy)

    @classmethod
    def _cell(cls, p) -> tuple[int, int]:
        col = int(np.clip((p[0] + 1) / cls.CELL, 0, 7))
        row = int(np.clip((1 - p[1]) / cls.CELL, 0, 7))
        return row, col

    @classmethod
    def _centre(cls, row: int, col: int) -> np.ndarray:
        return np.array([-1 + (col + 0.5) * cls.CELL, 1 - (row + 0.5) * cls.CELL], np.float32)

    @classmethod
    def _wall_mask(cls, x, y):
        col = np.clip(((np.asarray(x) + 1) / cls.CELL).astype(int), 0, 7)
        row = np.clip(((1 - np.asarray(y)) / cls.CELL).astype(int), 0, 7)
        return np.array([[c == "#" for c in line] for line in cls.LAYOUT])[row, col]

    @classmethod
    def _blocked(cls, p) -> bool:
        """Whether a disk of `RADIUS` at `p` overlaps a wall or leaves the arena."""
        if np.any(np.abs(p) > 1 - cls.RADIUS):
            return True
        offsets = np.array([[dx, dy] for dx in (-1, 0, 1) for dy in (-1, 0, 1)]) * cls.RADIUS * 0.99
        return bool(cls._wall_mask(p[0] + offsets[:, 0], p[1] + offsets[:, 1]).any())

    @classmethod
    def _free_cells(cls) -> list[tuple[int, int]]:
        return [(r, c) for r in range(8) for c in range(8) if cls.LAYOUT[r][c] == "."]

    @classmethod
    def _distances(cls, goal_cell) -> dict[tuple[int, int], int]:
        """Breadth-first cell distances to `goal_cell`."""
        dist, queue = {goal_cell: 0}, deque([goal_cell])
        while queue:
            r, c = queue.popleft()
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < 8 and 0 <= nc < 8 and cls.LAYOUT[nr][nc] == "." and (nr, nc) not in dist:
                    dist[(nr, nc)] = dist[(r, c)] + 1
                    queue.append((nr, nc))
        return dist

    def _reset_sim(self, rng: np.random.Generator) -> None:
        cells = self._free_cells()
        start, goal = rng.choice(len(cells), 2, replace=False)
        self.pos, self.goal = self._centre(*cells[start]), self._centre(*cells[goal])

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        move = STEP * action
        for candidate in (self.pos + move, self.pos + move * [1, 0], self.pos + move * [0, 1]):
            if not self._blocked(candidate):
                self.pos = candidate.astype(np.float32)
                break
        d = self._distances(self._cell(self.goal)).get(self._cell(self.pos), 14) * self.CELL
        d = max(d, float(np.linalg.norm(self.pos - self.goal)))
        return 1.0 - min(d / (14 * self.CELL), 1.0), bool(np.linalg.norm(self.pos - self.goal) < SUCCESS_RADIUS)

    def _render(self) -> np.ndarray:
        img = self._canvas.copy()
        img[self._walls] = self._WALL
        self._disk(img, self.goal, 0.12, self._GOAL)
        self._disk(img, self.pos, self.RADIUS, _AGENT)
        return img

    @classmethod
    def expert(cls, state: np.ndarray) -> np.ndarray:
        """Head for the centre of the neighbouring cell nearer the goal (by breadth-first
        distance), and straight for the goal within its cell."""
        pos, goal = state[:2], state[2:4]
        here, dist = cls._cell(pos), cls._distances(cls._cell(goal))
        if here == cls._cell(goal) or here not in dist:
            target = goal
        else:
            r, c = here
            nxt = min(((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)), key=lambda n: dist.get(n, 99))
            centre = cls._centre(*here)
            # leave the cell from its centre line, so the disk clears the wall corners
            target = cls._centre(*nxt) if np.abs(pos - centre).max() < 0.06 or _aligned(pos, centre, nxt, here) \
                else centre
        return np.clip((target - pos) / STEP, -1.0, 1.0)


def _aligned(pos, centre, nxt, here) -> bool:
    """Whether `pos` is on the line through `centre` along which the next cell lies."""
    axis = 1 if nxt[0] != here[0] else 0  # moving between rows: keep x (axis 0) centred
    return abs(pos[1 - axis] - centre[1 - axis]) < 0.06


class ToyPushEnv(ToyEnv):
    """A point mass (2-D delta-position actions) pushes a square block onto a goal pad: the
    block moves only when pushed, by as much as the agent overlaps it. Reward
    `1 - |block - goal| / D`; `success` within `SUCCESS_RADIUS`. State
    `[x, y, block_x, block_y, goal_x, goal_y]`."""

    BACKGROUND = np.array([35, 35, 35], np.uint8)
    GRID = np.array([50, 50, 50], np.uint8)
    HALF, RADIUS = 0.15, 0.1
    _BLOCK = np.array([70, 110, 240], np.uint8)
    _PAD = np.array([90, 160, 80], np.uint8)

    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        self.pos, self.block, self.goal = (np.zeros(2, np.float32) for _ in range(3))
        super().__init__(spec, obs, size, seed)

    @property
    def state_dim(self) -> int:
        return 6

    def state_names(self) -> list[str]:
        return ["x", "y", "block_x", "block_y", "goal_x", "goal_y"]

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self.block = rng.uniform(-0.4, 0.4, 2).astype(np.float32)
        self.goal = rng.uniform(-0.6, 0.6, 2).astype(np.float32)
        while True:
            self.pos = rng.uniform(-0.8, 0.8, 2).astype(np.float32)
            if np.abs(self.pos - self.block).max() > self.HALF + self.RADIUS + 0.05:
                break

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        before = self.pos - self.block
        self.pos = np.clip(self.pos + STEP * action, -1 + self.RADIUS, 1 - self.RADIUS).astype(np.float32)
        gap = self.pos - self.block
        reach = self.HALF + self.RADIUS
        if np.all(np.abs(gap) < reach):  # overlap: push along the axis the agent came in by
            axis = int(np.argmax(np.abs(before) - reach))
            shift = np.zeros(2, np.float32)
            shift[axis] = gap[axis] - np.sign(gap[axis]) * reach
            self.block = np.clip(self.block + shift, -1 + self.HALF, 1 - self.HALF).astype(np.float32)
            self.pos = np.where(np.arange(2) == axis, self.block + np.sign(gap) * reach, self.pos).astype(np.float32)
        dist = float(np.linalg.norm(self.block - self.goal))
        return 1.0 - dist / _DIAGONAL, dist < SUCCESS_RADIUS

    def _get_sim(self) -> np.ndarray:
        return np.concatenate([self.pos, self.block, self.goal])

    def _set_sim(self, sim: np.ndarray) -> None:
        self.pos, self.block, self.goal = sim[:2].copy(), sim[2:4].copy(), sim[4:6].copy()

    def _state(self) -> np.ndarray:
        return self._get_sim().astype(np.float32)

    def _render(self) -> np.ndarray:
        img = self._canvas.copy()
        self._rect(img, self.goal - self.HALF, self.goal + self.HALF, self._PAD)
        self._rect(img, self.block - self.HALF, self.block + self.HALF, self._BLOCK)
        self._disk(img, self.pos, self.RADIUS, _AGENT)
        return img

    @classmethod
    def expert(cls, state: np.ndarray) -> np.ndarray:
        """Push along x, then along y: get behind the block (going around it, clear of its
        sides), then push, slowing down on arrival."""
        pos, block, goal = state[:2], state[2:4], state[4:6]
        to_goal = goal - block
        if np.abs(to_goal).max() < 0.03:
            return np.zeros(2, np.float32)
        axis = 0 if abs(to_goal[0]) >= 0.03 else 1
        other, d = 1 - axis, np.sign(to_goal[axis])
        reach, clear = cls.HALF + cls.RADIUS, cls.HALF + cls.RADIUS + 0.06
        along, across = (pos[axis] - block[axis]) * d, pos[other] - block[other]  # agent relative to the block
        act = np.zeros(2)
        if along < -reach + 0.02 and abs(across) < 0.05:  # in place: push
            act[axis] = d * min(1.0, (abs(to_goal[axis]) - reach - along) / STEP)
            act[other] = -across / STEP
        elif along < -reach + 0.02:  # behind it but off the line: slide onto the line
            act[other] = -across / STEP
            act[axis] = d * ((-reach - 0.03) - along) / STEP
        elif abs(across) < clear:  # beside or ahead, too close: step out sideways
            act[other] = (1.0 if across >= 0 else -1.0)
        else:  # clear to one side: go past the block along the axis
            act[axis] = d * ((-reach - 0.03) - along) / STEP
        return np.clip(act, -1.0, 1.0).astype(np.float32)


TOYS = {"reach": ToyReachEnv, "pong": ToyPongEnv, "maze": ToyMazeEnv, "push": ToyPushEnv}
