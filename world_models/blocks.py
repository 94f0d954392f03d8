"""Transformer building blocks shared by the world models.

RMSNorm pre-norm, multi-head attention with RoPE, QK-norm, an optional boolean mask and
an optional key/value prefix (the KV cache), and a SwiGLU MLP. Shapes use einops names:
B batch, N tokens, H heads, D head dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


def rope(x: Tensor, pos: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding on the last dim of `x [..., N, D]` at positions `pos [N]`."""
    half = x.shape[-1] // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = pos.to(torch.float32)[:, None] * freqs  # [N, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and QK-norm.

    `forward(x [B, N, C], pos [N], mask [N, N_kv] bool (True = may attend), past (k, v))`
    where `past` holds earlier keys/values `[B, H, P, D]` prepended to this call's, so
    queries attend over `P + N` keys. Returns the output and this call's `(k, v)`.
    """

    def __init__(self, dim: int, heads: int, rope: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.use_rope = heads, rope
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, pos: Tensor | None = None, mask: Tensor | None = None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = rope(q, pos), rope(k, pos)
        new = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(rearrange(y, "b h n d -> b n (h d)")), new


class SwiGLU(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio * 2 / 3)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: masked self-attention then SwiGLU (one sequence axis)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, rope: bool = True):
        super().__init__()
        self.norm1, self.attn = RMSNorm(dim), Attention(dim, heads, rope)
        self.norm2, self.mlp = RMSNorm(dim), SwiGLU(dim, mlp_ratio)

    def forward(self, x: Tensor, pos: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), pos, mask)[0]
        return x + self.mlp(self.norm2(x))


def patchify(frames: Tensor, patch: int) -> Tensor:
    """`[B, 3, H, W]` -> patches `[B, (H/p)(W/p), 3 p p]`."""
    return rearrange(frames, "b c (h p) (w q) -> b (h w) (c p q)", p=patch, q=patch)


def unpatchify(patches: Tensor, patch: int, size: int) -> Tensor:
    """Inverse of `patchify` for square frames of side `size`."""
    return rearrange(patches, "b (h w) (c p q) -> b c (h p) (w q)", h=size // patch, p=patch, q=patch)


class RunningRMS(nn.Module):
    """Divides a loss by the running RMS of its own values (Dreamer 4's loss normalisation).

    The statistic is a buffer, so it is saved in checkpoints and restored on resume. The
    divisor never drops below `floor`: a loss that starts at (near) zero, like the shortcut
    bootstrap term of a zero-initialised head, would otherwise be amplified without bound.
    """

    def __init__(self, decay: float = 0.99, floor: float = 1e-3):
        super().__init__()
        self.decay, self.floor = decay, floor
        self.register_buffer("mean_sq", torch.zeros(()))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, loss: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.count += 1
                self.mean_sq.lerp_(loss.detach().float() ** 2, 1 - self.decay)
        corrected = self.mean_sq / (1 - self.decay ** self.count.clamp(min=1))
        return loss / corrected.sqrt().clamp(min=self.floor)
