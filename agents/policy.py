"""Agents that act with a learned policy: over world-model features of real frames, over
stacked raw frames, or over the environment's own observations."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from agents.context import ContextAgent, stack_frames
from world_models import Simulator


class FeaturePolicyAgent(ContextAgent):
    """Reads `model.features` of its recent real frames (`context` of them, with the actions
    between) and acts with `policy(features [F]) -> action [A]`: a policy trained on
    imagined features (e.g. in an `ImaginedVecEnv`) acting from a real camera."""

    def __init__(self, model: Simulator, policy: Callable[[np.ndarray], np.ndarray], task: str, *, context: int = 1):
        super().__init__(context)
        self.model, self.policy, self.task = model, policy, task

    @torch.no_grad()
    def act(self) -> np.ndarray:
        frames, actions = self.context.tensors(self.model.device)
        features = self.model.features(frames, actions, task=self.task)[0].float().cpu().numpy()
        return np.asarray(self.policy(features), np.float32)


class StackedFramesAgent(ContextAgent):
    """Acts with `policy(frames [3 * stack, h, w]) -> action [A]` on its last `stack` real
    frames, the first repeated at an episode's start (`agents.context.stack_frames`): the
    model-free pixel learners of `agents.learner`."""

    def __init__(self, policy: Callable[[np.ndarray], np.ndarray], stack: int = 3):
        super().__init__(stack)
        self.policy, self.stack = policy, stack

    def act(self) -> np.ndarray:
        frames = np.stack([f.numpy() for f in self.context.frames])
        return np.asarray(self.policy(stack_frames(frames, self.stack)[-1]), np.float32)


class ObservationPolicyAgent:
    """Acts with `policy(obs) -> action [A]` on the environment's own observations (e.g. the
    low-dimensional state of an `obs="state"` env, for policies learned on the state ensemble)."""

    def __init__(self, policy: Callable[[np.ndarray], np.ndarray]):
        self.policy, self.obs = policy, None

    def reset(self, obs: np.ndarray) -> None:
        self.obs = obs

    def observe(self, action: np.ndarray, obs: np.ndarray) -> None:
        self.obs = obs

    def act(self) -> np.ndarray:
        return np.asarray(self.policy(np.asarray(self.obs, np.float32)), np.float32)
