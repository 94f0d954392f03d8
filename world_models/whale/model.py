"""`Whale`: VQ tokenizer + behaviour-conditioning model + ST dynamics behind `WorldModel`.

Training phases: `tokenizer`, then `behavior` (skipped with `behavior_conditioning=False`,
the paper's ablation), then `dynamics` on the frozen tokenizer and behaviour model.
Latents are the quantised token vectors `[B, T, N, latent_dim]`, so generic predictors
(tokenizer round trip, seed variance) work on them as on any continuous latent.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from envs import task_index
from world_models.base import (Imagination, WorldModel, check_actions, check_imagine_inputs, context_action_inputs,
                               previous_actions, to_float_frames)
from world_models.blocks import KVContext
from world_models.whale.behavior import BehaviorModel
from world_models.whale.config import WhaleConfig
from world_models.whale.dynamics import STDynamics
from world_models.whale.tokenizer import VQTokenizer


class Whale(WorldModel):
    name = "whale"
    native_signals = ("token_entropy",)

    def __init__(self, cfg: WhaleConfig, tasks: tuple[str, ...] = ("toy-reach",)):
        super().__init__()
        self.cfg, self.tasks = cfg, tuple(tasks)
        self.action_dim = cfg.action_dim
        self.phases = tuple(cfg.phase_steps)
        self.tokenizer = VQTokenizer(cfg)
        self.behavior = BehaviorModel(cfg) if cfg.behavior_conditioning else None
        self.dynamics = STDynamics(cfg, self.tokenizer.n_tokens, self.behavior.z_dim if self.behavior else 0)

    def config_dict(self) -> dict:
        return {"name": self.name, "tasks": list(self.tasks), "config": asdict(self.cfg)}

    # ---- tokenizer ------------------------------------------------------------------------
    def codes(self, frames: Tensor) -> Tensor:
        """`[B, T, 3, H, W]` -> code indices `[B, T, N]`."""
        B = frames.shape[0]
        c = self.tokenizer.codes(rearrange(to_float_frames(frames.to(self.device)), "b t c h w -> (b t) c h w"))
        return rearrange(c, "(b t) n -> b t n", b=B)

    def encode(self, frames: Tensor) -> Tensor:
        """`[B, T, 3, H, W]` -> quantised token vectors `[B, T, N, latent_dim]`."""
        return self.tokenizer.vq.lookup(self.codes(frames))

    def decode(self, latents: Tensor) -> Tensor:
        """`[B, T, N, latent_dim]` -> frames `[B, T, 3, H, W]` in [0, 1]."""
        B = latents.shape[0]
        x = self.tokenizer.decode(rearrange(latents, "b t n d -> (b t) n d")).clamp(0, 1)
        return rearrange(x, "(b t) c h w -> b t c h w", b=B)

    # ---- training -------------------------------------------------------------------------
    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        parts = {"tokenizer": self.tokenizer, "behavior": self.behavior, "dynamics": self.dynamics}
        if phase not in self.phases:
            raise ValueError(f"unknown phase {phase!r}; this whale model has {self.phases}")
        return parts[phase].parameters()

    def loss(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, float]]:
        frames = to_float_frames(batch["frames"].to(self.device))
        if phase == "tokenizer":
            return self.tokenizer.loss(rearrange(frames, "b t c h w -> (b t) c h w"))
        actions, mask = batch["actions"].to(self.device), batch["action_mask"].to(self.device)
        if phase == "behavior" and self.behavior is not None:
            return self.behavior.loss(frames, actions, mask)
        if phase != "dynamics":
            raise ValueError(f"unknown phase {phase!r}; this whale model has {self.phases}")
        logits, reward_logits, target = self._teacher_forced(batch)
        ce = F.cross_entropy(rearrange(logits.float(), "b t n k -> (b t n) k"), target.flatten())
        metrics = {"dyn/token_ce": ce.item(), "dyn/token_acc": (logits.argmax(-1) == target).float().mean().item()}
        loss = ce
        if reward_logits is not None:
            rl = self.dynamics.twohot.loss(reward_logits, batch["rewards"].to(self.device))
            loss = loss + rl
            metrics["dyn/reward_ce"] = rl.item()
        return loss, metrics

    def _teacher_forced(self, batch) -> tuple[Tensor, Tensor | None, Tensor]:
        """Next-frame logits `[B, L-1, N, K]` for frames 1..L-1 of a window, the reward
        logits `[B, L-1, bins]` and the target codes `[B, L-1, N]`."""
        frames = to_float_frames(batch["frames"].to(self.device))
        actions, mask = batch["actions"].to(self.device), batch["action_mask"].to(self.device)
        B, L = frames.shape[:2]
        with torch.no_grad():
            codes = self.codes(frames)
            z = None
            if self.behavior is not None:
                z = self.behavior.embed(frames, *previous_actions(actions, mask, L))[:, :-1]
        x = self.dynamics.tokens(self.tokenizer.vq.lookup(codes[:, :-1]).detach(), actions,
                                 mask[:, None].expand_as(actions), z, batch["task_id"].to(self.device))
        h, _ = self.dynamics(x)
        rewards = self.dynamics.reward_logits(h) if self.dynamics.reward is not None else None
        return self.dynamics.logits(h), rewards, codes[:, 1:]

    @torch.no_grad()
    def prediction_error(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Cross-entropy of the last frame's tokens given the window before it, per sequence `[B]`
        (teacher-forced, so deterministic; `generator` is unused)."""
        if batch["frames"].shape[1] < 2:
            raise ValueError("prediction_error needs sequences of at least 2 frames")
        logits, _, target = self._teacher_forced(batch)
        return F.cross_entropy(rearrange(logits[:, -1].float(), "b n k -> b k n"), target[:, -1], reduction="none").mean(1)

    # ---- imagination ----------------------------------------------------------------------
    def task_tensor(self, task: str | None, batch: int) -> Tensor:
        return torch.full((batch,), task_index(task or self.tasks[0]), dtype=torch.long, device=self.device)

    @torch.no_grad()
    def imagine(self, obs: Tensor, actions: Tensor, *, context_actions: Tensor | None = None,
                decode: bool = False, seeds: int = 1, signals: tuple[str, ...] = (),
                task: str | None = None, generator: torch.Generator | None = None,
                temperature: float | None = None, cached: bool = True) -> Imagination:
        """See `WorldModel.imagine`. WHALE extras:

        Args:
            generator: torch generator (on the model's device) for token sampling.
            temperature: next-token sampling temperature (default `cfg.temperature`; 0 = argmax).
            cached: reuse keys/values of the past (`False` recomputes it every step).

        The native signal `token_entropy` is the mean predictive entropy (nats, at
        temperature 1) of the N next-frame tokens. With behaviour conditioning every
        imagined frame is decoded so that the prior can infer z from it.
        """
        obs = check_imagine_inputs(self, obs, signals, seeds)
        if actions is None:
            raise ValueError("whale has no policy head: pass actions [B, H, A]")
        B, T0 = obs.shape[:2]
        plan = check_actions(actions.to(self.device), self.action_dim)
        n, H = plan.shape[:2]
        if n != B and B != 1:
            raise ValueError(f"actions batch {n} must equal obs batch {B}, or obs batch must be 1")
        temp = self.cfg.temperature if temperature is None else temperature
        frames = to_float_frames(obs.to(self.device))
        prev, prev_mask = context_action_inputs(context_actions, B, T0, self.action_dim, self.device)
        vectors = self.encode(frames)  # [B, T0, N, D]
        task_b = self.task_tensor(task, B)
        z = None
        if self.behavior is not None:
            beh = KVContext(self.behavior.history, cached)
            z = self.behavior.prior_probs(beh.append(self.behavior.history_tokens(frames, prev, prev_mask)))
        dyn = KVContext(self.dynamics, cached)
        if T0 > 1:  # every context frame but the last, with the action taken there
            dyn.append(self.dynamics.tokens(vectors[:, :-1], prev[:, 1:], prev_mask[:, 1:],
                                            None if z is None else z[:, :-1], task_b))
        rows = n * seeds
        reps = rows // B
        dyn.repeat(reps)
        current = vectors[:, -1:].repeat(reps, 1, 1, 1)
        z_now = None if z is None else z[:, -1:].repeat(reps, 1, 1)
        if self.behavior is not None:
            beh.repeat(reps)
        plan = plan.repeat(seeds, 1, 1)
        act_mask = torch.zeros(rows, 1, self.action_dim, dtype=torch.bool, device=self.device)
        act_mask[..., : actions.shape[-1]] = True
        task_rows = self.task_tensor(task, rows)
        latents, rewards, entropy = [], [], []
        for h in range(H):
            a = plan[:, h: h + 1]
            out = dyn.append(self.dynamics.tokens(current, a, act_mask, z_now, task_rows))
            logits = self.dynamics.logits(out)[:, 0].float()  # [rows, N, K]
            logp = logits.log_softmax(-1)
            entropy.append(-(logp.exp() * logp).sum(-1).mean(-1))
            current = self.tokenizer.vq.lookup(self._sample(logits, temp, generator))[:, None]
            latents.append(current[:, 0])
            rewards.append(self.dynamics.twohot.decode(self.dynamics.reward_logits(out))[:, 0]
                           if self.dynamics.reward is not None else torch.zeros(rows, device=self.device))
            if self.behavior is not None and h < H - 1:
                frame = self.decode(current)
                z_now = self.behavior.prior_probs(beh.append(self.behavior.history_tokens(frame, a, act_mask)))
        lat = rearrange(torch.stack(latents, 1), "(s n) h ... -> s n h ...", s=seeds)
        result = Imagination(latents=lat[0], rewards=rearrange(torch.stack(rewards, 1), "(s n) h -> s n h", s=seeds).mean(0),
                             seed_latents=lat if seeds > 1 else None)
        if "token_entropy" in signals:
            result.signals["token_entropy"] = rearrange(torch.stack(entropy, 1), "(s n) h -> s n h", s=seeds).mean(0)
        if decode:
            result.frames = self.decode(lat[0])
        return result

    def _sample(self, logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        """Codes `[rows, N]` drawn from `logits [rows, N, K]` at `temperature` (Gumbel-max)."""
        if temperature == 0:
            return logits.argmax(-1)
        u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-9, 1 - 1e-9)
        return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
