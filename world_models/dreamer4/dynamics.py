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
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from world_models.blocks import Attention, RMSNorm, SwiGLU
from world_models.dreamer4.config import Dreamer4Config

KV = tuple[Tensor, Tensor]


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


class DynamicsLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.space_norm, self.space_attn = RMSNorm(dim), Attention(dim, heads)
        self.time_norm, self.time_attn = RMSNorm(dim), Attention(dim, heads)
        self.mlp_norm, self.mlp = RMSNorm(dim), SwiGLU(dim, mlp_ratio)

    def forward(self, x: Tensor, t_pos: Tensor, space_mask: Tensor, past: KV | None) -> tuple[Tensor, KV]:
        """x `[B, T, N, C]` at absolute times `t_pos [T]`, after `past` keys/values
        `[B*N, heads, P, D]`. Returns the new x and this call's keys/values."""
        B, T, N, _ = x.shape
        xs = rearrange(x, "b t n c -> (b t) n c")
        y, _ = self.space_attn(self.space_norm(xs), torch.arange(N, device=x.device), space_mask)
        x = x + rearrange(y, "(b t) n c -> b t n c", b=B)
        P = 0 if past is None else past[0].shape[2]
        causal = torch.arange(P + T, device=x.device)[None, :] <= (P + torch.arange(T, device=x.device))[:, None]
        xt = rearrange(x, "b t n c -> (b n) t c")
        y, kv = self.time_attn(self.time_norm(xt), t_pos, causal, past)
        x = x + rearrange(y, "(b n) t c -> b t n c", b=B)
        return x + self.mlp(self.mlp_norm(x)), kv


def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot(nn.Module):
    """Symlog two-hot encoding over `bins` evenly spaced in [-r, r] (symlog space)."""

    def __init__(self, bins: int, r: float):
        super().__init__()
        self.register_buffer("centers", torch.linspace(-r, r, bins), persistent=False)

    def encode(self, y: Tensor) -> Tensor:
        """`[...]` -> two-hot targets `[..., bins]`."""
        c = self.centers
        y = symlog(y).clamp(c[0], c[-1])
        hi = torch.searchsorted(c, y.contiguous()).clamp(1, len(c) - 1)
        lo = hi - 1
        w_hi = (y - c[lo]) / (c[hi] - c[lo])
        out = torch.zeros(*y.shape, len(c), device=y.device)
        out.scatter_(-1, lo[..., None], (1 - w_hi)[..., None])
        out.scatter_add_(-1, hi[..., None], w_hi[..., None])
        return out

    def decode(self, logits: Tensor) -> Tensor:
        """Expected value of `logits [..., bins]`, back in reward units."""
        return symexp((logits.float().softmax(-1) * self.centers).sum(-1))


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
    def __init__(self, cfg: Dreamer4Config):
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
        self.task_in = nn.Linear(cfg.text_dim, d) if cfg.text_dim else nn.Embedding(cfg.num_tasks, d)
        self.layers = nn.ModuleList(DynamicsLayer(d, cfg.dyn_heads, cfg.mlp_ratio) for _ in range(cfg.dyn_depth))
        self.out_norm = RMSNorm(d)
        self.out = nn.Linear(d, self.d_spatial)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.heads = AgentHeads(cfg) if cfg.reward_head or cfg.bc_head else None
        self.register_buffer("space_mask", self.layout.space_mask(), persistent=False)
        # per-dimension moments of the packed latents (identity until `fit_latent_stats`)
        self.register_buffer("latent_mean", torch.zeros(self.n_spatial, self.d_spatial))
        self.register_buffer("latent_sq", torch.ones(self.n_spatial, self.d_spatial))
        self.register_buffer("stat_batches", torch.zeros((), dtype=torch.long))

    # ---- packing --------------------------------------------------------------------------
    @torch.no_grad()
    def fit_latent_stats(self, latents: Tensor, max_batches: int = 50) -> None:
        """Accumulate the exact mean and second moment of tokenizer latents
        `[..., n_latents, d_bottleneck]` over the first `max_batches` calls, then freeze.

        The tanh latents are small next to the unit flow noise (on toy-reach: RMS step
        change 0.14, per-dimension spread 0.41, offsets up to 0.6); standardising them
        lifts the motion above the noise. Measured on toy-reach, tiny, 800 dynamics steps:
        8-step rollout PSNR gain -3.8 dB without, -2.9 dB with.
        """
        if self.stat_batches >= max_batches:
            return
        x = rearrange(latents, "... (s k) d -> (...) s (k d)", k=self.cfg.pack).float()
        self.stat_batches += 1
        if self.stat_batches == 1:
            self.latent_mean.zero_(), self.latent_sq.zero_()
        w = 1 / self.stat_batches.item()
        self.latent_mean.lerp_(x.mean(0), w)
        self.latent_sq.lerp_(x.pow(2).mean(0), w)

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
            task: task ids `[B]` (long) or text embeddings `[B, text_dim]`.
        """
        B, T = z.shape[:2]
        act = self.action_in(torch.cat([prev_action, action_mask.to(prev_action.dtype)], -1))
        shortcut = torch.cat([self.tau_embed(tau), self.step_embed(step)], -1)
        spatial = self.spatial_in(z) + self.spatial_pos
        agent = self.agent_tokens + self.task_in(task)[:, None, None, :]
        return torch.cat([act[:, :, None], shortcut[:, :, None], spatial,
                          self.register_tokens.expand(B, T, -1, -1), agent.expand(B, T, -1, -1)], dim=2)

    def forward(self, x: Tensor, t0: int = 0, cache: list[KV] | None = None) -> tuple[Tensor, list[KV]]:
        """Run the transformer on tokens `[B, T, N, C]` at times t0..t0+T-1, after the
        cached past. Returns the output tokens and each layer's new keys/values."""
        t_pos = torch.arange(t0, t0 + x.shape[1], device=x.device)
        new_kv = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, t_pos, self.space_mask, None if cache is None else cache[i])
            new_kv.append(kv)
        return x, new_kv

    def predict_clean(self, h: Tensor) -> Tensor:
        """Output tokens `[B, T, N, C]` -> predicted clean packed latents `[B, T, S, d_s]`."""
        return self.out(self.out_norm(h[:, :, self.layout.spatial]))

    def agent_out(self, h: Tensor) -> Tensor:
        return h[:, :, self.layout.agent]


class Context:
    """The past an imagined step conditions on: a KV cache of every layer (`cached=True`),
    or the raw input tokens of past steps, recomputed at every call (the reference)."""

    def __init__(self, dynamics: Dynamics, cached: bool = True):
        self.dyn, self.cached = dynamics, cached
        self.kv: list[KV] | None = None
        self.tokens: Tensor | None = None
        self.length = 0

    def query(self, x: Tensor) -> Tensor:
        """Outputs for the tokens `[B, T, N, C]` of the next step(s), without storing them."""
        if self.cached:
            return self.dyn(x, self.length, self.kv)[0]
        full = x if self.tokens is None else torch.cat([self.tokens, x], 1)
        return self.dyn(full)[0][:, -x.shape[1]:]

    def append(self, x: Tensor) -> Tensor:
        """Add steps `[B, T, N, C]` to the past and return their outputs."""
        if self.cached:
            h, kv = self.dyn(x, self.length, self.kv)
            self.kv = kv if self.kv is None else [(torch.cat([pk, k], 2), torch.cat([pv, v], 2))
                                                  for (pk, pv), (k, v) in zip(self.kv, kv)]
        else:
            self.tokens = x if self.tokens is None else torch.cat([self.tokens, x], 1)
            h = self.dyn(self.tokens)[0][:, -x.shape[1]:]
        self.length += x.shape[1]
        return h

    def repeat(self, n: int) -> None:
        """Broadcast a batch-1 past to n rollouts (`[B*N, ...]` cache rows are batch-major)."""
        if self.cached:
            self.kv = [(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)) for k, v in self.kv]
        else:
            self.tokens = self.tokens.repeat(n, 1, 1, 1)


def flow_weight(tau: Tensor) -> Tensor:
    """Loss weight `0.9 τ + 0.1`, emphasising the cleaner, more informative levels."""
    return 0.9 * tau + 0.1


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
        target = heads.twohot.encode(rewards[:, first - 1 + j: last - 1 + j])
        losses.append(-(target * F.log_softmax(logits[:, first:last, j].float(), -1)).sum(-1).mean())
    return torch.stack(losses).mean()
