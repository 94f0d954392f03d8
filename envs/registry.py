"""Task registry: one `TaskSpec` per task name, following TD-MPC2 / MMBench naming."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

MAX_ACTION_DIM = 16
"""Multi-task batches zero-pad every action to this width and carry an `action_mask`."""


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task.

    Attributes:
        name: registry name, e.g. ``"cup-catch"``, ``"mw-push"``, ``"toy-reach"``.
        domain: ``"dmc"``, ``"metaworld"`` or ``"toy"``.
        source: the backend's own id (``"ball_in_cup/catch"``, ``"push-v3"``, ``"reach"``).
        action_dim: number of action dimensions (all in [-1, 1]).
        episode_length: agent steps per episode (after action repeat).
        action_kind: ``"delta_pose"`` (some dims accumulate into a pose) or ``"torque"``.
        delta_dims: the accumulating dims of a ``delta_pose`` action; the rest (e.g. a
            gripper) are absolute. Empty for ``"torque"``.
        instruction: one-line natural-language description of the goal.
        action_repeat: simulator steps per agent step.
        has_success: whether ``info["success"]`` is reported.
        variant: visual variant name (same physics and reward), or None.
    """

    name: str
    domain: Literal["dmc", "metaworld", "toy"]
    source: str
    action_dim: int
    episode_length: int
    action_kind: Literal["delta_pose", "torque"]
    instruction: str
    delta_dims: tuple[int, ...] = ()
    action_repeat: int = 1
    has_success: bool = False
    variant: str | None = None

    def __post_init__(self):
        if self.action_dim > MAX_ACTION_DIM:
            raise ValueError(f"{self.name}: action_dim {self.action_dim} > MAX_ACTION_DIM")
        if (self.action_kind == "delta_pose") != bool(self.delta_dims):
            raise ValueError(f"{self.name}: delta_dims must be given exactly for delta_pose tasks")


_DMC = {
    # name: (domain/task, action_dim, instruction)
    "cup-catch": ("ball_in_cup/catch", 2, "Swing the ball up and catch it in the cup."),
    "finger-turn-easy": ("finger/turn_easy", 2, "Rotate the hinged body so its tip reaches the target."),
    "reacher-easy": ("reacher/easy", 2, "Move the arm's fingertip onto the large target."),
    "reacher-hard": ("reacher/hard", 2, "Move the arm's fingertip onto the small target."),
    "walker-walk": ("walker/walk", 6, "Make the planar walker walk forward upright."),
    "cartpole-swingup": ("cartpole/swingup", 1, "Swing the pole up and balance it on the cart."),
    "cheetah-run": ("cheetah/run", 6, "Make the planar cheetah run forward as fast as possible."),
    "pendulum-swingup": ("pendulum/swingup", 1, "Swing the pendulum up and hold it upright."),
}
_DMC_VARIANTS = {"cup-catch-var1": "cup-catch", "finger-turn-easy-var1": "finger-turn-easy"}

MT50 = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown",
    "button-press-topdown-wall", "button-press", "button-press-wall", "coffee-button",
    "coffee-pull", "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock",
    "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open", "faucet-open",
    "faucet-close", "hammer", "handle-press-side", "handle-press", "handle-pull-side",
    "handle-pull", "lever-pull", "pick-place-wall", "pick-out-of-hole", "pick-place",
    "plate-slide", "plate-slide-side", "plate-slide-back", "plate-slide-back-side", "peg-insert-side",
    "peg-unplug-side", "soccer", "stick-push", "stick-pull", "push", "push-wall", "push-back",
    "reach", "reach-wall", "shelf-place", "sweep-into", "sweep", "window-open", "window-close",
)


def _build() -> dict[str, TaskSpec]:
    specs: list[TaskSpec] = []
    for name, (source, adim, instr) in _DMC.items():
        specs.append(TaskSpec(name, "dmc", source, adim, 500, "torque", instr, action_repeat=2))
    for name, base in _DMC_VARIANTS.items():
        b = next(s for s in specs if s.name == base)
        specs.append(TaskSpec(name, "dmc", b.source, b.action_dim, b.episode_length, "torque",
                              b.instruction, action_repeat=2, variant="var1"))
    for mw in MT50:
        specs.append(TaskSpec(f"mw-{mw}", "metaworld", f"{mw}-v3", 4, 100, "delta_pose",
                              f"Use the Sawyer arm to {mw.replace('-', ' ')}.",
                              delta_dims=(0, 1, 2), action_repeat=2, has_success=True))
    specs.append(TaskSpec("toy-reach", "toy", "reach", 2, 50, "delta_pose",
                          "Move the red dot onto the green goal.", delta_dims=(0, 1),
                          has_success=True))
    specs.append(TaskSpec("toy-pong", "toy", "pong", 1, 100, "delta_pose",
                          "Keep the ball in play with the paddle.", delta_dims=(0,), has_success=True))
    specs.append(TaskSpec("toy-maze", "toy", "maze", 2, 80, "delta_pose",
                          "Find the way through the maze to the blue goal.", delta_dims=(0, 1),
                          has_success=True))
    specs.append(TaskSpec("toy-push", "toy", "push", 2, 80, "delta_pose",
                          "Push the blue block onto the green pad.", delta_dims=(0, 1), has_success=True))
    return {s.name: s for s in specs}


TASKS: dict[str, TaskSpec] = _build()
_INDEX = {name: i for i, name in enumerate(TASKS)}


def task_spec(name: str) -> TaskSpec:
    """The `TaskSpec` for `name`; an unknown name raises `ValueError` listing close names."""
    if not isinstance(name, str):
        raise ValueError(f"task must be a registry name (str), got {type(name).__name__}")
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else " See envs.TASKS for all names."
        raise ValueError(f"unknown task {name!r}.{hint}")
    return TASKS[name]


def task_index(name: str) -> int:
    """Stable integer id of a task (its position in the registry), for task embeddings."""
    task_spec(name)
    return _INDEX[name]


def list_tasks(domain: str | None = None) -> list[str]:
    """Registered task names, optionally for one domain (``"dmc"``, ``"metaworld"``, ``"toy"``)."""
    return [n for n, s in TASKS.items() if domain is None or s.domain == domain]
