"""One episode, stored as one compressed `.npz` file written atomically."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1

LOAD_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)
"""What reading a damaged or truncated episode file can raise."""


@dataclass
class Episode:
    """A recorded episode of T agent steps.

    Attributes:
        frames: `uint8 [T+1, 3, H, W]`, the observation before each step and the last one.
        actions: `float32 [T, A]`; `actions[t]` takes `frames[t]` to `frames[t+1]`.
        rewards: `float32 [T]`.
        task, behavior, seed: metadata (registry name, behaviour label, episode seed).
        terminated, truncated: how the episode ended.
        states: optional `float32 [T+1, S]` low-dimensional states.
        success: optional `bool [T]`, the task's success flag after each step.
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    task: str
    behavior: str
    seed: int
    terminated: bool = False
    truncated: bool = True
    states: np.ndarray | None = None
    success: np.ndarray | None = None
    extra_meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())

    def validate(self) -> None:
        """Raise `ValueError` unless dtypes and lengths are consistent and every value is finite."""
        T = len(self.actions)
        f, a, r = self.frames, self.actions, self.rewards
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[1] != 3 or len(f) != T + 1:
            raise ValueError(f"frames must be uint8 [T+1, 3, H, W] with T={T}, got {f.dtype} {f.shape}")
        if a.dtype != np.float32 or a.ndim != 2:
            raise ValueError(f"actions must be float32 [T, A], got {a.dtype} {a.shape}")
        if r.dtype != np.float32 or r.shape != (T,):
            raise ValueError(f"rewards must be float32 [T], got {r.dtype} {r.shape}")
        if self.states is not None and (self.states.ndim != 2 or len(self.states) != T + 1):
            raise ValueError(f"states must be [T+1, S], got {self.states.shape}")
        if self.success is not None and self.success.shape != (T,):
            raise ValueError(f"success must be [T], got {self.success.shape}")
        for name in ("actions", "rewards", "states"):
            x = getattr(self, name)
            if x is not None and not np.isfinite(x).all():
                raise ValueError(f"{name} contain {int((~np.isfinite(x)).sum())} non-finite values")

    def meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, "task": self.task, "behavior": self.behavior,
                "seed": int(self.seed), "terminated": bool(self.terminated),
                "truncated": bool(self.truncated), **self.extra_meta}

    def save(self, path: str | Path) -> Path:
        """Write to `path` atomically: a temporary file in the same folder, then a rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"frames": self.frames, "actions": self.actions, "rewards": self.rewards,
                  "meta": np.array(json.dumps(self.meta()))}
        if self.states is not None:
            arrays["states"] = self.states
        if self.success is not None:
            arrays["success"] = self.success
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{os.getpid()}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Episode":
        """Read and validate an episode; damaged files raise one of `LOAD_ERRORS`."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format_version {meta.get('format_version')}")
            known = {"format_version", "task", "behavior", "seed", "terminated", "truncated"}
            return cls(frames=z["frames"], actions=z["actions"], rewards=z["rewards"],
                       task=meta["task"], behavior=meta["behavior"], seed=meta["seed"],
                       terminated=meta["terminated"], truncated=meta["truncated"],
                       states=z["states"] if "states" in z.files else None,
                       success=z["success"] if "success" in z.files else None,
                       extra_meta={k: v for k, v in meta.items() if k not in known})
