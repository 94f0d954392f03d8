"""Baselines the hallucination predictors are compared with.

- Token entropy: WHALE's next-token predictive entropy (native: `signals=("token_entropy",)`).
- Ensemble disagreement: K independently trained dynamics models (WHALE B.3: three), the
  pixel variance of their decoded predictions.
- kNN distance: how far a predicted latent lies from the training latents (hallucination
  paper, appendix E) — a coverage measure that ignores the dynamics.
- The unnormalised predictors are `uncertainty.predictors` without the `/ m`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from replay import EpisodeInfo, EpisodeStore
from world_models.base import WorldModel


@torch.no_grad()
def ensemble_disagreement(models: list[WorldModel], obs: Tensor, actions: Tensor, *, task: str,
                          context_actions: Tensor | None = None,
                          generator_seed: int = 0) -> Tensor:
    """`[B, H]`: per-pixel variance across the models' decoded rollouts of `actions`, averaged
    over pixels. The models are independently trained (e.g. dynamics on a shared tokenizer)."""
    if len(models) < 2:
        raise ValueError("an ensemble needs at least 2 models")
    frames = []
    for m in models:
        gen = torch.Generator(device=m.device).manual_seed(generator_seed)
        frames.append(m.imagine(obs.to(m.device), actions.to(m.device), context_actions=context_actions,
                                decode=True, task=task, generator=gen).frames.float().cpu())
    return torch.stack(frames).var(0, unbiased=False).flatten(2).mean(-1)


class KNNDistance:
    """Mean distance of a latent to its `k` nearest training latents (flattened, Euclidean)."""

    def __init__(self, bank: Tensor, k: int = 5):
        if len(bank) < k:
            raise ValueError(f"the latent bank has {len(bank)} entries, fewer than k={k}")
        self.bank, self.k = bank.float(), k

    @classmethod
    @torch.no_grad()
    def fit(cls, store: EpisodeStore, model: WorldModel, episodes: list[EpisodeInfo], *, size: int = 4096,
            k: int = 5, batch: int = 64, seed: int = 0) -> "KNNDistance":
        """Encode `size` random training frames of `episodes` into the bank."""
        rng = np.random.default_rng(seed)
        bank = []
        for start in range(0, size, batch):
            b = store.sample(min(batch, size - start), 2, episodes=episodes, rng=rng)
            bank.append(model.encode(b["frames"][:, :1].to(model.device))[:, 0].flatten(1).float().cpu())
        return cls(torch.cat(bank), k)

    def __call__(self, latents: Tensor) -> Tensor:
        """latents `[B, H, ...]` -> `[B, H]` mean distance to the k nearest bank latents."""
        q = latents.flatten(2).float().cpu()
        d = torch.cdist(q.flatten(0, 1), self.bank)
        return d.topk(self.k, largest=False).values.mean(-1).view(q.shape[:2])
