"""Block-causal transformer dynamics over packed tokenizer latents (Dreamer 4).

Per timestep the token layout is `[action x1, shortcut x1, spatial x S, register x R,
agent x G]`. Each layer runs space attention within a timestep (with the modality mask:
agent tokens read everything, nothing else reads agent tokens), then causal time attention
along the timesteps at each token position, then a SwiGLU MLP. The output head predicts
the clean latent x̂ of every spatial token (x-prediction) and is zero-initialised.

Noise convention (flow matching): `z_τ = (1 - τ) ε + τ x`, τ = 0 pure noise, τ = 1 clean.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from world_models import distributed
from world_models.blocks import KV, RMSNorm, SpaceTimeStack, TwoHot
from world_models.dreamer4.config import Dreamer4Config

class TokenLayout:
    """Where each modality sits in a timestep's token sequence."""

    def __init__(self, spatial: int, registers: int, agents: int):
        self.action, self.shortcut = 0, 1
        self.spatial = slice(2, 2 + spatial)
        self.register = slice(self.spatial.stop, self.spatial.stop + registers)
        self.agent = slice(self.register.stop, self.register.stop + agents)
        self.n = self.agent.stop

    def space_mask(self) -> Tensor:
        """`bool [n, n]`, True = query may read key: agents read all; others skip agents."""
        m = torch.ones(self.n, self.n, dtype=torch.bool)
        m[: self.agent.start, self.agent] = False
        return m


class AgentHeads(nn.Module):
    """Reward (multi-step symlog two-hot) and BC (deterministic, tanh) heads that read the
    agent tokens through attention pooling against a learned query."""

    def __init__(self, cfg: Dreamer4Config):
        super().__init__()
        d = cfg.dyn_dim
        self.query = nn.Parameter(torch.randn(d) / math.sqrt(d))
        self.norm = RMSNorm(d)
        self.horizon, self.bins = cfg.reward_horizon, cfg.reward_bins
        self.reward = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, cfg.reward_horizon * cfg.reward_bins)) \
            if cfg.reward_head else None
        self.policy = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, cfg.action_dim)) if cfg.bc_head else None
        if self.reward is not None:
            nn.init.zeros_(self.reward[-1].weight)
            nn.init.zeros_(self.reward[-1].bias)
        self.twohot = TwoHot(cfg.reward_bins, cfg.reward_range)

    def pool(self, agent: Tensor) -> Tensor:
        """agent tokens `[B, T, G, C]` -> `[B, T, C]`."""
        agent = self.norm(agent)
        w = (agent @ self.query / math.sqrt(agent.shape[-1])).softmax(-1)
        return (w[..., None] * agent).sum(-2)

    def reward_logits(self, pooled: Tensor) -> Tensor:
        """`[B, T, C]` -> `[B, T, horizon, bins]`; offset j predicts the reward of the
        transition into frame t + j."""
        return rearrange(self.reward(pooled), "b t (j k) -> b t j k", j=self.horizon)

    def action(self, pooled: Tensor) -> Tensor:
        """`[B, T, C]` -> BC mean action `[B, T, A]` in [-1, 1]."""
        return torch.tanh(self.policy(pooled))


class Dynamics(nn.Module):
    def __init__(self, cfg: Dreamer4Config, num_tasks: int = 1):
        super().__init__()
        self.cfg = cfg
        d = cfg.dyn_dim
        self.n_spatial = cfg.n_latents // cfg.pack
        self.d_spatial = cfg.d_bottleneck * cfg.pack
        self.layout = TokenLayout(self.n_spatial, cfg.registers, cfg.agent_tokens)
        self.action_in = nn.Sequential(nn.Linear(2 * cfg.action_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.tau_embed = nn.Embedding(cfg.k_max + 1, d // 2)
        self.step_embed = nn.Embedding(int(math.log2(cfg.k_max)) + 1, d - d // 2)
        self.spatial_in = nn.Linear(self.d_spatial, d)
        self.spatial_pos = nn.Parameter(torch.randn(self.n_spatial, d) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(cfg.registers, d) * 0.02)
        self.agent_tokens = nn.Parameter(torch.randn(cfg.agent_tokens, d) * 0.02)
        self.task_in = nn.Linear(cfg.text_dim, d) if cfg.text_dim else nn.Embedding(num_tasks, d)
        self.stack = SpaceTimeStack(d, cfg.dyn_heads, cfg.dyn_depth, cfg.mlp_ratio, causal=True,
                                    space_mask=self.layout.space_mask())
        self.out_norm = RMSNorm(d)
        self.out = nn.Linear(d, self.d_spatial)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.heads = AgentHeads(cfg) if cfg.reward_head or cfg.bc_head else None
        # per-dimension moments of the packed latents (identity until `fit_latent_stats`)
        self.register_buffer("latent_mean", torch.zeros(self.n_spatial, self.d_spatial))
        self.register_buffer("latent_sq", torch.ones(self.n_spatial, self.d_spatial))
        self.register_buffer("stat_batches", torch.zeros((), dtype=torch.long))

    # ---- packing --------------------------------------------------------------------------
    @torch.no_grad()
    def fit_latent_stats(self, latents: Tensor, max_batches: int = 50) -> None:
        """Accumulate the exact mean and second moment of tokenizer latents
        `[..., n_latents, d_bottleneck]` over the first `max_batches` calls (of every rank's
        batch), then freeze.

        The tanh latents are small next to the unit flow noise (on toy-reach: RMS step
        change 0.14, per-dimension spread 0.41, offsets up to 0.6); standardising them
        lifts the motion above the noise. Measured on toy-reach, tiny, 800 dynamics steps:
        8-step rollout PSNR gain -3.8 dB without, -2.9 dB with.
        """
        x = rearrange(latents, "... (s k) d -> (...) s (k d)", k=self.cfg.pack).float()
        fitting = self.stat_batches < max_batches
        self.stat_batches += fitting.long()
        w = torch.where(fitting, self.stat_batches.float().reciprocal(), 0.0)  # 1 on the first call: replace
        self.latent_mean.lerp_(distributed.mean(x.mean(0)), w)
        self.latent_sq.lerp_(distributed.mean(x.pow(2).mean(0)), w)

    def _scale(self) -> Tensor:
        return (self.latent_sq - self.latent_mean.pow(2)).clamp(min=1e-4).sqrt()

    def pack(self, latents: Tensor) -> Tensor:
        """Tokenizer latents `[..., n_latents, d_bottleneck]` -> standardised packed
        latents `[..., S, pack * d_bottleneck]`, the space the flow runs in."""
        x = rearrange(latents, "... (s k) d -> ... s (k d)", k=self.cfg.pack)
        return (x - self.latent_mean) / self._scale()

    def unpack(self, z: Tensor) -> Tensor:
        """Inverse of `pack`."""
        return rearrange(z * self._scale() + self.latent_mean, "... s (k d) -> ... (s k) d", k=self.cfg.pack)

    # ---- tokens ---------------------------------------------------------------------------
    def tokens(self, z: Tensor, tau: Tensor, step: Tensor, prev_action: Tensor, action_mask: Tensor,
               task: Tensor) -> Tensor:
        """Build `[B, T, N, C]` input tokens.

        Args:
            z: noisy packed latents `[B, T, S, d_s]`.
            tau: noise-level index `[B, T]` in 0..k_max (τ = tau / k_max).
            step: step-size index `[B, T]` (d = 1 / 2**step).
            prev_action: action that led to each frame `[B, T, A]` (zeros at episode start).
            action_mask: valid action dims `[B, T, A]` (all False where there is no action).
            task: task embedding rows `[B]` (long) or text embeddings `[B, text_dim]`.
        """
        B, T = z.shape[:2]
        act = self.action_in(torch.cat([prev_action, action_mask.to(prev_action.dtype)], -1))
        shortcut = torch.cat([self.tau_embed(tau), self.step_embed(step)], -1)
        spatial = self.spatial_in(z) + self.spatial_pos
        agent = self.agent_tokens + self.task_in(task)[:, None, None, :]
        return torch.cat([act[:, :, None], shortcut[:, :, None], spatial,
                          self.register_tokens.expand(B, T, -1, -1), agent.expand(B, T, -1, -1)], dim=2)

    def without_action(self, tokens: Tensor) -> Tensor:
        """Tokens `[B, T, N, C]` with the action slot of every step replaced by "no action"
        (what the first frame of a training window holds)."""
        none = self.action_in(tokens.new_zeros(2 * self.cfg.action_dim))
        out = tokens.clone()
        out[:, :, self.layout.action] = none
        return out

    def forward(self, x: Tensor, t0: int = 0, cache: list[KV] | None = None, **layout) -> tuple[Tensor, list[KV]]:
        """Run the transformer on tokens `[B, T, N, C]` at times t0..t0+T-1, after the
        cached past (`layout`: `t_pos`, `time_mask` overrides, see `SpaceTimeStack`).
        Returns the output tokens and each layer's new keys/values."""
        return self.stack(x, t0, cache, **layout)

    def predict_clean(self, h: Tensor) -> Tensor:
        """Output tokens `[B, T, N, C]` -> predicted clean packed latents `[B, T, S, d_s]`."""
        return self.out(self.out_norm(h[:, :, self.layout.spatial]))

    def agent_out(self, h: Tensor) -> Tensor:
        return h[:, :, self.layout.agent]


def two_stream_mask(T: int, device=None) -> Tensor:
    """`bool [2T-1, 2T-1]` time mask (True = may attend) of the two-stream training layout
    of a T-frame row: frames 0..T-1 at the sampling context level, then noisy copies of
    frames 1..T-1. Context frame t reads context frames <= t; noisy frame t reads the
    context frames < t and itself — exactly the past it has when it is sampled — so every
    frame after the first is a flow target, and the context stream is what the heads read."""
    ctx = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    noisy_reads_ctx = torch.ones(T - 1, T, dtype=torch.bool, device=device).tril()  # noisy t reads context < t
    return torch.cat([torch.cat([ctx, torch.zeros(T, T - 1, dtype=torch.bool, device=device)], 1),
                      torch.cat([noisy_reads_ctx, torch.eye(T - 1, dtype=torch.bool, device=device)], 1)], 0)


def flow_weight(tau: Tensor, kind: str = "ramp") -> Tensor:
    """Loss weight per noise level: `"ramp"` is the paper's `0.9 τ + 0.1`, emphasising the
    cleaner, more informative levels; `"uniform"` weighs every level alike."""
    return 0.9 * tau + 0.1 if kind == "ramp" else torch.ones_like(tau)


def reward_loss(heads: AgentHeads, pooled: Tensor, rewards: Tensor) -> Tensor:
    """Two-hot CE of the multi-step reward predictions. pooled `[B, T, C]` for frames
    0..T-1, rewards `[B, T-1]` (reward t is earned entering frame t+1)."""
    logits = heads.reward_logits(pooled)  # [B, T, J, K]
    losses = []
    for j in range(heads.horizon):
        # frame t, offset j predicts rewards[t - 1 + j]; valid for 1 <= t + j <= T - 1, t <= T - 1
        first = max(0, 1 - j)
        last = rewards.shape[1] + 1 - j  # exclusive bound on t
        if last <= first:
            continue
        losses.append(heads.twohot.loss(logits[:, first:last, j], rewards[:, first - 1 + j: last - 1 + j]))
    return torch.stack(losses).mean()
