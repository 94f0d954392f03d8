"""`FeaturePolicyAgent`: act in a real environment with a policy over world-model features."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from agents.context import ContextAgent
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
