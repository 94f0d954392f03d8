"""The recent frames and actions an agent shows its world model."""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor


def stack_frames(frames: np.ndarray, stack: int) -> np.ndarray:
    """`[T, 3, H, W]` -> `[T, 3 * stack, H, W]`: each frame with the `stack - 1` before it on
    the channel axis, the first frame repeated before the start."""
    padded = np.concatenate([np.repeat(frames[:1], stack - 1, 0), frames])
    return np.concatenate([padded[k: k + len(frames)] for k in range(stack)], 1)


class FrameContext:
    """The last `length` frames and the actions between them.

    `reset(obs)` starts an episode, `push(action, obs)` records a step; `tensors(device)`
    gives `frames [1, T0, 3, h, w]` and `actions [1, T0 - 1, A]` (None when T0 == 1),
    the `obs` and `context_actions` arguments of `WorldModel.imagine`.
    """

    def __init__(self, length: int):
        if length < 1:
            raise ValueError(f"context must be >= 1 frame, got {length}")
        self.frames: deque[Tensor] = deque(maxlen=length)
        self.actions: deque[Tensor] = deque(maxlen=length - 1)

    def reset(self, obs: np.ndarray) -> None:
        self.frames.clear()
        self.actions.clear()
        self.frames.append(torch.as_tensor(obs))

    def push(self, action: np.ndarray, obs: np.ndarray) -> None:
        if self.actions.maxlen:
            self.actions.append(torch.as_tensor(action, dtype=torch.float32))
        self.frames.append(torch.as_tensor(obs))

    def tensors(self, device: torch.device) -> tuple[Tensor, Tensor | None]:
        frames = torch.stack(list(self.frames))[None].to(device)
        n = len(self.frames) - 1
        actions = torch.stack(list(self.actions)[-n:])[None].to(device) if n else None
        return frames, actions


class ContextAgent:
    """Base of the agents that act from a frame context: `reset(obs)` starts an episode at
    `obs` (`uint8 [3, h, w]`), `observe(action, obs)` records the executed `action [A]` and
    the frame it led to."""

    def __init__(self, context: int):
        self.context = FrameContext(context)

    def reset(self, obs: np.ndarray) -> None:
        self.context.reset(obs)

    def observe(self, action: np.ndarray, obs: np.ndarray) -> None:
        self.context.push(action, obs)
