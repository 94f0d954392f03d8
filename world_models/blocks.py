"""Building blocks shared by the world models.

RMSNorm pre-norm, multi-head attention with RoPE, QK-norm, an optional boolean mask and
an optional key/value prefix (the KV cache), a SwiGLU MLP, the spatial-temporal layer
and its sliding-window rollout context, patchify, running-RMS loss normalisation and the
symlog two-hot reward encoding. Shapes use einops names: B batch, T time, N tokens,
H heads, D head dim.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from world_models import distributed


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


Rotary = tuple[Tensor, Tensor]


def rotary(pos: Tensor, dim: int, base: float = 10000.0) -> Rotary:
    """RoPE tables `(cos, sin)`, each `[N, dim / 2]` float32, for positions `pos [N]`
    (computed once per stack call and shared by its layers, queries and keys)."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    angles = pos.to(torch.float32)[:, None] * freqs
    return angles.cos(), angles.sin()


def rope(x: Tensor, tables: Rotary) -> Tensor:
    """Rotary position embedding on the last dim of `x [..., N, D]` with `rotary` tables."""
    cos, sin = (t.to(x.dtype) for t in tables)  # no copy unless under autocast
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and QK-norm.

    `forward(x [B, N, C], rot (cos, sin) tables for the N positions (`rotary`), mask [N, N_kv]
    bool (True = may attend), past (k, v))` where `past` holds earlier keys/values
    `[B, H, P, D]` prepended to this call's, so queries attend over `P + N` keys. Returns
    the output and this call's `(k, v)`.
    """

    def __init__(self, dim: int, heads: int, rope: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.use_rope = heads, rope
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, rot: Rotary | None = None, mask: Tensor | None = None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = rope(q, rot), rope(k, rot)
        if past is None and torch.is_grad_enabled():
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = small_attention(q, k, v, mask, past)
        return self.out(rearrange(y, "b h n d -> b n (h d)")), (k, v)


def small_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, past: KV | None) -> Tensor:
    """Attention of `q [B, H, N, D]` over the cached `past` keys/values `[B, H, P, D]` and
    this call's `k, v [B, H, N, D]` without concatenating the cache (the scores are
    concatenated instead, `[B, H, N, P + N]`), and with the softmax written out: for the
    short rows of imagination (N = one step's tokens, P + N <= a window) PyTorch's CPU
    softmax over a last dim of 9-13 was 2.3x slower (`docs/scale.md`)."""
    scores = q @ k.transpose(-1, -2)
    if past is not None:
        scores = torch.cat([q @ past[0].transpose(-1, -2), scores], -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = (scores - scores.amax(-1, keepdim=True)).mul_(q.shape[-1] ** -0.5).exp_()
    w = w / w.sum(-1, keepdim=True)
    if past is None:
        return w @ v
    P = past[0].shape[2]
    return w[..., :P] @ past[1] + w[..., P:] @ v


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

    def forward(self, x: Tensor, rot: Rotary | None = None, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rot, mask)[0]
        return x + self.mlp(self.norm2(x))


def patchify(frames: Tensor, patch: int) -> Tensor:
    """`[B, 3, H, W]` -> patches `[B, (H/p)(W/p), 3 p p]`."""
    return rearrange(frames, "b c (h p) (w q) -> b (h w) (c p q)", p=patch, q=patch)


def unpatchify(patches: Tensor, patch: int, size: int) -> Tensor:
    """Inverse of `patchify` for square frames of side `size`."""
    return rearrange(patches, "b (h w) (c p q) -> b c (h p) (w q)", h=size // patch, p=patch, q=patch)


class RunningRMS(nn.Module):
    """Divides a loss by the running RMS of its own values (Dreamer 4's loss normalisation).

    The statistic is a buffer, so it is saved in checkpoints and restored on resume; under
    data-parallel training it averages the loss over the ranks, so it stays identical. The
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
                self.mean_sq.lerp_(distributed.mean(loss.detach().float() ** 2), 1 - self.decay)
        corrected = self.mean_sq / (1 - self.decay ** self.count.clamp(min=1))
        return loss / corrected.sqrt().clamp(min=self.floor)


def track_host_count(module: nn.Module, name: str) -> None:
    """Mirror the integer buffer `name` of `module` as a Python int (`host_count`), so that
    branching on it every training step costs no device sync. Loading a state dict
    refreshes the mirror."""
    def forget(m: nn.Module, _) -> None:
        m.__dict__.pop(f"_host_{name}", None)

    module.register_load_state_dict_post_hook(forget)


def host_count(module: nn.Module, name: str) -> int:
    """The value of a buffer registered with `track_host_count` (read from the device once)."""
    key = f"_host_{name}"
    if key not in module.__dict__:
        module.__dict__[key] = int(getattr(module, name))
    return module.__dict__[key]


def increment(module: nn.Module, name: str) -> None:
    """Add one to a buffer registered with `track_host_count`, and to its mirror."""
    n = host_count(module, name)
    getattr(module, name).add_(1)
    module.__dict__[f"_host_{name}"] = n + 1


KV = tuple[Tensor, Tensor]


class SpaceTimeLayer(nn.Module):
    """A spatial-temporal transformer layer on tokens `[B, T, N, C]`.

    Space attention runs within each timestep (over N tokens, optionally masked), then time
    attention runs along T at each token position — causal (a token reads the same position
    in earlier steps only) unless `causal=False` — then a SwiGLU MLP. This is both the
    Dreamer-4 block-causal layer and the ST-transformer layer of WHALE / Genie.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.space_norm, self.space_attn = RMSNorm(dim), Attention(dim, heads)
        self.time_norm, self.time_attn = RMSNorm(dim), Attention(dim, heads)
        self.mlp_norm, self.mlp = RMSNorm(dim), SwiGLU(dim, mlp_ratio)

    def forward(self, x: Tensor, space_rot: Rotary, time_rot: Rotary, space_mask: Tensor | None = None,
                past: KV | None = None, time_mask: Tensor | None = None) -> tuple[Tensor, KV]:
        """x `[B, T, N, C]` with RoPE tables for the N token positions and the T absolute
        times (`rotary`), after `past` keys/values `[B*N, heads, P, D]` (causal layers only).
        `time_mask [T, T]` (True = may attend) replaces the causal mask, for layouts where
        the sequence is not one time line. Returns the new x and this call's keys/values."""
        B, T, N, _ = x.shape
        xs = rearrange(x, "b t n c -> (b t) n c")
        y, _ = self.space_attn(self.space_norm(xs), space_rot, space_mask)
        x = x + rearrange(y, "(b t) n c -> b t n c", b=B)
        P = 0 if past is None else past[0].shape[2]
        if time_mask is not None and past is not None:
            raise ValueError("a custom time mask cannot extend a cached past")
        if self.causal and time_mask is None:
            time_mask = torch.arange(P + T, device=x.device)[None, :] <= (P + torch.arange(T, device=x.device))[:, None]
        elif past is not None:
            raise ValueError("a non-causal layer cannot extend a cached past")
        xt = rearrange(x, "b t n c -> (b n) t c")
        y, kv = self.time_attn(self.time_norm(xt), time_rot, time_mask, past)
        x = x + rearrange(y, "(b n) t c -> b t n c", b=B)
        return x + self.mlp(self.mlp_norm(x)), kv


class SpaceTimeStack(nn.Module):
    """`depth` `SpaceTimeLayer`s. `forward(x [B, T, N, C], t0, cache)` runs them at times
    t0..t0+T-1 after a cached past (one `(k, v)` per layer) and returns the output tokens
    and each layer's new keys/values, the interface `KVContext` drives."""

    def __init__(self, dim: int, heads: int, depth: int, mlp_ratio: float = 4.0, causal: bool = True,
                 space_mask: Tensor | None = None):
        super().__init__()
        self.layers = nn.ModuleList(SpaceTimeLayer(dim, heads, mlp_ratio, causal) for _ in range(depth))
        self.register_buffer("space_mask", space_mask, persistent=False)

    def forward(self, x: Tensor, t0: int = 0, cache: list[KV] | None = None, *, t_pos: Tensor | None = None,
                time_mask: Tensor | None = None) -> tuple[Tensor, list[KV]]:
        """`t_pos [T]` and `time_mask [T, T]` override the times t0.. and the causal mask."""
        if t_pos is None:
            t_pos = torch.arange(t0, t0 + x.shape[1], device=x.device)
        head_dim = x.shape[-1] // self.layers[0].time_attn.heads
        space_rot = rotary(torch.arange(x.shape[2], device=x.device), head_dim)
        time_rot = rotary(t_pos, head_dim)
        new_kv = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, space_rot, time_rot, self.space_mask, None if cache is None else cache[i], time_mask)
            new_kv.append(kv)
        return x, new_kv


def allow_recompiles() -> None:
    """Room in dynamo's cache for each shape family a module meets (batch 1 / N, empty /
    cached past, with and without gradients)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 64)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 512)


def outer_transformers(model: nn.Module) -> list[nn.Module]:
    """The `Block`s and `SpaceTimeStack`s of `model` that are not inside another one."""
    found, inside = [], set()
    for module in model.modules():  # parents before children
        if isinstance(module, (Block, SpaceTimeStack)) and id(module) not in inside:
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


class CompiledForward:
    """Inside `with self:` the modules' `forward` runs through `torch.compile`; outside it
    they run eagerly, so that calls at other shapes (evaluation between training steps)
    compile nothing. Each shape family compiles once, on its first call inside."""

    def __init__(self, modules: list[nn.Module], backend: str = "inductor"):
        allow_recompiles()
        self.compiled = [(m, torch.compile(m.forward, backend=backend)) for m in modules]

    def __enter__(self) -> "CompiledForward":
        for module, forward in self.compiled:
            module.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        for module, _ in self.compiled:
            del module.forward  # back to the class's eager forward


def compile_transformers(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`torch.compile` every `SpaceTimeStack` of `model` in place (dynamic shapes: the batch
    and the window length vary during a rollout) and return `model`. The first calls
    compile (half a minute to minutes on a CPU, once per process and shape family); it pays
    off over long planning runs (`benchmarks/planner_speed.py --compile`)."""
    allow_recompiles()
    for module in model.modules():
        if isinstance(module, SpaceTimeStack):
            module.compile(dynamic=True, backend=backend)
    return model


class RolloutWindow:
    """The past a causal `SpaceTimeStack` reads during a rollout: the input tokens of at most
    `window` steps `[R, W, N, C]` and, when `cached`, every layer's keys/values for them.

    It is immutable: `appended` returns a new window, so a rollout state can be branched
    and stepped without touching the one it came from. When a step would overflow a full
    window, its oldest `slide` steps leave at once and the rest is recomputed from its
    tokens after `reset_first` rewrites the new first step's tokens: the model then reads
    exactly what it read in training, where a window starts with no past (for example, no
    action that led to its first frame). Between slides steps are appended to the cache,
    so with `slide = window // 2` a step costs about one extra step's pass on average and
    the cost stays flat however long the rollout. `cached=False` keeps only the tokens and
    recomputes the window at every query (the reference the cache is tested against).
    """

    def __init__(self, stack: nn.Module, window: int, cached: bool = True,
                 reset_first: Callable[[Tensor], Tensor] | None = None, slide: int | None = None):
        if window < 1:
            raise ValueError(f"a rollout window holds at least 1 step, got {window}")
        self.stack, self.window, self.cached, self.reset_first = stack, window, cached, reset_first
        self.slide = max(1, window // 2) if slide is None else slide
        if not 1 <= self.slide <= window:
            raise ValueError(f"slide must be in [1, window={window}], got {slide}")
        self.tokens: Tensor | None = None
        self.kv: list[KV] | None = None
        self.origin: tuple[RolloutWindow, Tensor] | None = None  # (window, rows) this one was selected from
        self.restarts: dict[int, tuple[Tensor, list[KV]]] = {}  # memo of `_restarted`

    @property
    def length(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]

    def _with(self, tokens: Tensor | None, kv: list[KV] | None, origin=None) -> "RolloutWindow":
        new = copy.copy(self)
        new.tokens, new.kv, new.origin, new.restarts = tokens, kv, origin, {}
        return new

    def query(self, x: Tensor) -> Tensor:
        """Outputs for the tokens `[R, 1, N, C]` of the next step, reading the window
        (nothing is stored)."""
        if self.cached:
            return self.stack(x, self.length, self.kv)[0]
        full = x if self.tokens is None else torch.cat([self.tokens, x], 1)
        return self.stack(full)[0][:, -x.shape[1]:]

    def appended(self, x: Tensor) -> tuple[Tensor, "RolloutWindow"]:
        """Push steps `[R, T, N, C]`: their outputs `[R, T, N, C]` (each reading the window it
        ends up in) and the new window."""
        if self.length + x.shape[1] <= self.window:
            tokens = x if self.tokens is None else torch.cat([self.tokens, x], 1)
            if not self.cached:
                return self.stack(tokens)[0][:, -x.shape[1]:], self._with(tokens, None)
            h, kv = self.stack(x, self.length, self.kv)
            if self.kv is not None:
                kv = [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(self.kv, kv)]
            return h, self._with(tokens, kv)
        keep = min(self.window, max(self.window - self.slide, x.shape[1]))
        old = keep - x.shape[1]
        if self.cached and old > 0:  # the kept past restarts (shared by rows selected alike), then x joins it
            tokens, kv = self._restarted(old)
            h, kv_x = self.stack(x, old, kv)
            kv = [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(kv, kv_x)]
            return h, self._with(torch.cat([tokens, x], 1), kv)
        tokens = torch.cat([x] if self.tokens is None else [self.tokens, x], 1)[:, -keep:]
        if self.reset_first is not None:
            tokens = torch.cat([self.reset_first(tokens[:, :1]), tokens[:, 1:]], 1)
        h, kv = self.stack(tokens)
        return h[:, -min(x.shape[1], keep):], self._with(tokens, kv if self.cached else None)

    def _restarted(self, n: int) -> tuple[Tensor, list[KV]]:
        """The last `n` steps of the window as the start of a new one (`reset_first` on the
        first) and their keys/values. Computed once per window, and on the rows a window was
        selected from: every candidate plan branched from one state slides the same past."""
        if n not in self.restarts:
            if self.origin is not None:
                parent, rows = self.origin
                tokens, kv = parent._restarted(n)
                self.restarts[n] = tokens[rows], select_kv(kv, len(tokens), rows)
            else:
                tokens = self.tokens[:, -n:]
                if self.reset_first is not None:
                    tokens = torch.cat([self.reset_first(tokens[:, :1]), tokens[:, 1:]], 1)
                self.restarts[n] = tokens, self.stack(tokens)[1]
        return self.restarts[n]

    def select(self, index: Tensor) -> "RolloutWindow":
        """The rows `index [R']` (picked or repeated) of the window."""
        if self.tokens is None:
            return self
        kv = None if self.kv is None else select_kv(self.kv, self.tokens.shape[0], index)
        return self._with(self.tokens[index], kv, origin=(self, index))


def select_kv(kv: list[KV], rows: int, index: Tensor) -> list[KV]:
    """Rows `index [R']` of per-layer keys/values `[rows * N, H, P, D]`."""
    return [tuple(t.view(rows, -1, *t.shape[1:])[index].flatten(0, 1) for t in pair) for pair in kv]


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

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of `logits [..., bins]` against the two-hot encoding of `y [...]`."""
        return -(self.encode(y) * F.log_softmax(logits.float(), -1)).sum(-1).mean()
