"""WHALE's behaviour-conditioning model (eq. 3-4): a categorical behaviour embedding z.

Three parts share a patch visual encoder (frames are patchified and embedded; each
timestep's tokens are `[action x1, patches x P]`):
- the posterior `q(z | τ_H)`: a non-causal spatial-temporal transformer over the whole
  segment, pairing each frame with the action taken there;
- the causal history encoder, pairing each frame with the action that led to it, and the
  prior head on it: `p(z | τ_h)` for every prefix h;
- the action decoder `π(a_h | o_h, z)`: a Gaussian over the padded action.

z is `categories` one-hot vectors over `classes`, sampled from q with straight-through
gradients. Loss: `mean_h -log π(a_h | ·) + β mean_h KL(q || p_h)`.

One departure from eq. 3: the action decoder reads the current frame and z, not the
action history. Given `τ_{h-1}`, a decoder can recognise a behaviour from its own past
actions (temporally correlated OU noise shows in them), and nothing would push z to
carry it; reading only `o_h`, it needs z to tell an expert from a noisy policy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from world_models.base import previous_actions
from world_models.blocks import RMSNorm, SpaceTimeStack, patchify
from world_models.whale.config import WhaleConfig

UNIMIX = 0.01  # share of uniform mixed into every categorical (keeps the KL finite)


def categorical_probs(logits: Tensor) -> Tensor:
    """`[..., C, K]` logits -> probabilities with a 1% uniform mix."""
    return (1 - UNIMIX) * logits.float().softmax(-1) + UNIMIX / logits.shape[-1]


def categorical_kl(q: Tensor, p: Tensor) -> Tensor:
    """KL(q || p) of `[..., C, K]` probabilities, summed over the C categoricals -> `[...]`."""
    return (q * (q.log() - p.log())).sum((-2, -1))


class BehaviorModel(nn.Module):
    """See the module docstring. Frames are `[B, T, 3, H, W]` in [0, 1], actions `[B, T, A]`
    padded with their validity mask."""

    def __init__(self, cfg: WhaleConfig):
        super().__init__()
        self.cfg = cfg
        d, A = cfg.beh_dim, cfg.action_dim
        self.n_patch = (cfg.image_size // cfg.beh_patch) ** 2
        self.patch_in = nn.Linear(3 * cfg.beh_patch ** 2, d)
        self.pos = nn.Parameter(torch.randn(1 + self.n_patch, d) * 0.02)
        self.action_in = nn.Sequential(nn.Linear(2 * A, d), nn.SiLU(), nn.Linear(d, d))
        self.posterior = SpaceTimeStack(d, cfg.beh_heads, cfg.posterior_depth, cfg.mlp_ratio, causal=False)
        self.history = SpaceTimeStack(d, cfg.beh_heads, cfg.prior_depth, cfg.mlp_ratio, causal=True)
        self.post_norm, self.hist_norm = RMSNorm(d), RMSNorm(d)
        self.z_dim = cfg.categories * cfg.classes
        self.post_head = nn.Linear(d, self.z_dim)
        self.prior_head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, self.z_dim))
        self.frame_in = nn.Linear(self.n_patch * d, d)
        self.policy = nn.Sequential(nn.Linear(d + self.z_dim, 2 * d), nn.SiLU(), nn.Linear(2 * d, 2 * A))

    # ---- tokens -----------------------------------------------------------------------------
    def _patches(self, frames: Tensor) -> Tensor:
        """`[B, T, 3, H, W]` -> patch embeddings `[B, T, P, d]` (no position yet)."""
        B = frames.shape[0]
        p = patchify(rearrange(frames, "b t c h w -> (b t) c h w") * 2 - 1, self.cfg.beh_patch)
        return rearrange(self.patch_in(p), "(b t) n d -> b t n d", b=B)

    def _tokens(self, patches: Tensor, actions: Tensor, mask: Tensor) -> Tensor:
        act = self.action_in(torch.cat([actions, mask.to(actions.dtype)], -1))
        return torch.cat([act[:, :, None], patches], 2) + self.pos

    def history_tokens(self, frames: Tensor, prev_actions: Tensor, prev_mask: Tensor) -> Tensor:
        """Inputs of the causal history encoder: each frame `[B, T, 3, H, W]` with the action
        that led to it `[B, T, A]` (mask all False at the first frame) -> `[B, T, 1 + P, d]`."""
        return self._tokens(self._patches(frames), prev_actions, prev_mask)

    def without_action(self, tokens: Tensor) -> Tensor:
        """History tokens `[B, T, 1 + P, d]` with every step's action token replaced by "no
        action" (what the first frame of a training segment holds)."""
        out = tokens.clone()
        out[:, :, 0] = self.action_in(tokens.new_zeros(2 * self.cfg.action_dim)) + self.pos[0]
        return out

    # ---- heads -----------------------------------------------------------------------------
    def prior_logits(self, history_out: Tensor) -> Tensor:
        """History encoder outputs `[B, T, 1 + P, d]` -> prior logits `[B, T, C, K]`."""
        pooled = self.hist_norm(history_out).mean(2)
        return rearrange(self.prior_head(pooled), "b t (c k) -> b t c k", c=self.cfg.categories)

    def prior_probs(self, history_out: Tensor) -> Tensor:
        """The behaviour embedding z_h the dynamics is conditioned on: prior probabilities `[B, T, C*K]`."""
        return rearrange(categorical_probs(self.prior_logits(history_out)), "b t c k -> b t (c k)")

    def posterior_logits(self, frames: Tensor, actions: Tensor, mask: Tensor) -> Tensor:
        """Whole segment -> `[B, C, K]`. `actions [B, T, A]` is the action taken at each frame."""
        h, _ = self.posterior(self._tokens(self._patches(frames), actions, mask))
        pooled = self.post_norm(h).mean((1, 2))
        return rearrange(self.post_head(pooled), "b (c k) -> b c k", c=self.cfg.categories)

    def action_distribution(self, frames: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """π(a | o, z): mean in [-1, 1] and log std, each `[B, T, A]`, for frames `[B, T, ...]`
        and a flat one-hot z `[B, C*K]` (shared by the segment) or `[B, T, C*K]`."""
        feat = F.silu(self.frame_in(rearrange(self._patches(frames) + self.pos[1:], "b t n d -> b t (n d)")))
        z = z[:, None].expand(-1, feat.shape[1], -1) if z.ndim == 2 else z
        mean, raw = self.policy(torch.cat([feat, z.to(feat.dtype)], -1)).chunk(2, -1)
        lo, hi = self.cfg.log_std_range
        return torch.tanh(mean), lo + (hi - lo) * torch.sigmoid(raw)

    # ---- objective ---------------------------------------------------------------------------
    def loss(self, frames: Tensor, actions: Tensor, action_mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 4 on a segment: frames `[B, L, 3, H, W]`, actions `[B, L-1, A]`, mask `[B, A]`."""
        B, L = frames.shape[:2]
        A = actions.shape[-1]
        mask = action_mask[:, None].expand(B, L, A).clone()
        taken = F.pad(actions, (0, 0, 0, 1))          # the action taken at each frame (none at the last)
        mask_taken = mask.clone()
        mask_taken[:, -1] = False
        prev, mask_prev = previous_actions(actions, action_mask, L)  # the action that led to each frame
        q = categorical_probs(self.posterior_logits(frames, taken, mask_taken))          # [B, C, K]
        sample = F.one_hot(torch.multinomial(rearrange(q, "b c k -> (b c) k"), 1)[:, 0], q.shape[-1])
        sample = rearrange(sample, "(b c) k -> b c k", b=B).to(q.dtype)
        z = rearrange(sample + q - q.detach(), "b c k -> b (c k)")   # straight-through
        mean, log_std = self.action_distribution(frames[:, :-1], z)
        valid = mask[:, :-1].to(mean.dtype)
        nll = 0.5 * ((actions - mean) / log_std.exp()).pow(2) + log_std + 0.9189385  # + log sqrt(2π)
        nll = (nll * valid).sum(-1).mean()
        p = categorical_probs(self.prior_logits(self.history(self.history_tokens(frames, prev, mask_prev))[0]))
        kl = categorical_kl(q[:, None], p).mean()
        loss = nll + self.cfg.kl_beta * kl
        return loss, {"beh/action_nll": nll.detach(), "beh/kl": kl.detach(),
                      "beh/action_mse": ((actions - mean.detach()).pow(2) * valid).sum(-1).mean()}

    @torch.no_grad()
    def embed(self, frames: Tensor, prev_actions: Tensor, prev_mask: Tensor) -> Tensor:
        """Prior embeddings z_h of every prefix: `[B, T, C*K]`."""
        return self.prior_probs(self.history(self.history_tokens(frames, prev_actions, prev_mask))[0])
