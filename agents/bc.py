"""`BCAgent`: act with a world model's behaviour-cloning head alone (no planning)."""
from __future__ import annotations

import numpy as np
import torch

from agents.context import ContextAgent
from world_models import WorldModel


class BCAgent(ContextAgent):
    """The first action of the model's BC-policy rollout from the current context."""

    def __init__(self, model: WorldModel, task: str, action_dim: int, *, context: int = 1, seed: int = 0):
        if not model.has_policy:
            raise ValueError(f"{model.name} has no BC policy head")
        super().__init__(context)
        self.model, self.task, self.action_dim = model, task, action_dim
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(self) -> np.ndarray:
        obs, ctx_actions = self.context.tensors(self.model.device)
        state = self.model.start(obs, ctx_actions, task=self.task, generator=self.generator)
        return state.policy_action[0, : self.action_dim].cpu().numpy().astype(np.float32)


class RandomAgent:
    """Uniform random actions in [-1, 1] (the floor of every comparison)."""

    def __init__(self, action_dim: int, seed: int = 0):
        self.action_dim, self.rng = action_dim, np.random.default_rng(seed)

    def reset(self, obs: np.ndarray) -> None:
        pass

    def observe(self, action: np.ndarray, obs: np.ndarray) -> None:
        pass

    def act(self) -> np.ndarray:
        return self.rng.uniform(-1, 1, self.action_dim).astype(np.float32)
