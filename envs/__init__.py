"""Task registry and Gymnasium environments: dm_control, Meta-World and numpy pixel toys.

    env = envs.make("cup-catch", obs="pixels", size=64, seed=0)

Every environment follows the same conventions: actions in [-1, 1], pixel observations
`uint8 [3, size, size]`, `info["state"]` always and `info["success"]` where defined.
"""
import os

# Headless rendering by default; must happen before dm_control or mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from envs.base import TaskEnv  # noqa: E402
from envs.registry import MAX_ACTION_DIM, MT50, TASKS, TaskSpec, list_tasks, task_index, task_spec  # noqa: E402


def make(task: str, obs: str = "pixels", size: int = 64, seed: int = 0, **kwargs) -> TaskEnv:
    """Build the environment for a registered task.

    Args:
        task: registry name, e.g. ``"cup-catch"``, ``"mw-push"``, ``"toy-reach"``, ``"toy-pong"``.
        obs: ``"pixels"`` (`uint8 [3, size, size]`) or ``"state"`` (`float32 [state_dim]`).
        size: square frame size in pixels.
        seed: seed of the first ``reset()`` when none is given.
        **kwargs: backend options (e.g. ``start_box`` / ``goal_box`` for toy-reach).
    """
    spec = task_spec(task)
    if spec.domain == "toy":
        from envs.toy import TOYS
        cls = TOYS[spec.source]
    elif spec.domain == "dmc":
        from envs.dmc import DMCEnv as cls
    else:
        from envs.meta_world import MetaWorldEnv as cls
    bad = sorted(set(kwargs) - set(getattr(cls, "OPTIONS", ())))
    if bad:
        raise ValueError(f"{task}: unexpected options {bad}")
    return cls(spec, obs=obs, size=size, seed=seed, **kwargs)


__all__ = ["MAX_ACTION_DIM", "MT50", "TASKS", "TaskEnv", "TaskSpec", "list_tasks", "make",
           "task_index", "task_spec"]
