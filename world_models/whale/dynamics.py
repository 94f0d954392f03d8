"""WHALE-ST dynamics: a spatial-temporal transformer over VQ tokens (WHALE §5.1.2).

Timestep t holds the N tokens of frame t. Each token is the projected code vector plus a
position embedding, the embedding of the action `a_t` taken at that frame, of the
behaviour embedding `z_t` (when conditioned) and of the task. Space attention runs within
the frame, time attention causally along each token position (`SpaceTimeStack`). The
output at t gives logits over the codebook for every token of frame t+1, all predicted in
parallel, and the reward earned by `a_t` (symlog two-hot, read from the mean token).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from world_models.blocks import KV, RMSNorm, SpaceTimeStack, TwoHot
from world_models.whale.config import WhaleConfig


class STDynamics(nn.Module):
    def __init__(self, cfg: WhaleConfig, n_tokens: int, z_dim: int, num_tasks: int = 1):
        super().__init__()
        self.cfg = cfg
        d, A = cfg.dyn_dim, cfg.action_dim
        self.code_in = nn.Linear(cfg.latent_dim, d)
        self.pos = nn.Parameter(torch.randn(n_tokens, d) * 0.02)
        self.action_in = nn.Sequential(nn.Linear(2 * A, d), nn.SiLU(), nn.Linear(d, d))
        self.z_in = nn.Linear(z_dim, d) if z_dim else None
        self.task_in = nn.Embedding(num_tasks, d)
        self.stack = SpaceTimeStack(d, cfg.dyn_heads, cfg.dyn_depth, cfg.mlp_ratio, causal=True)
        self.out_norm = RMSNorm(d)
        self.out = nn.Linear(d, cfg.num_codes)
        self.reward = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, cfg.reward_bins)) if cfg.reward_head else None
        self.twohot = TwoHot(cfg.reward_bins, cfg.reward_range)

    def tokens(self, code_vectors: Tensor, actions: Tensor, action_mask: Tensor, z: Tensor | None,
               task: Tensor) -> Tensor:
        """Input tokens `[B, T, N, d]`.

        Args:
            code_vectors: quantised token vectors of each frame `[B, T, N, latent_dim]`.
            actions: the action taken at each frame `[B, T, A]`, with `action_mask [B, T, A]`.
            z: behaviour embedding `[B, T, z_dim]` (None without behaviour conditioning).
            task: task embedding rows `[B]`.
        """
        frame = self.action_in(torch.cat([actions, action_mask.to(actions.dtype)], -1)) + self.task_in(task)[:, None]
        if self.z_in is not None:
            if z is None:
                raise ValueError("this dynamics is behaviour-conditioned: pass z")
            frame = frame + self.z_in(z.to(frame.dtype))
        return self.code_in(code_vectors) + self.pos + frame[:, :, None]

    def forward(self, x: Tensor, t0: int = 0, cache: list[KV] | None = None) -> tuple[Tensor, list[KV]]:
        return self.stack(x, t0, cache)

    def logits(self, h: Tensor) -> Tensor:
        """Outputs `[B, T, N, d]` -> next-frame token logits `[B, T, N, num_codes]`."""
        return self.out(self.out_norm(h))

    def reward_logits(self, h: Tensor) -> Tensor:
        """Outputs `[B, T, N, d]` -> reward logits `[B, T, bins]` (reward of the action at t)."""
        return self.reward(self.out_norm(h).mean(2))
