"""`Whale`: VQ tokenizer + behaviour-conditioning model + ST dynamics behind `WorldModel`.

Training phases: `tokenizer`, then `behavior` (skipped with `behavior_conditioning=False`,
the paper's ablation), then `dynamics` on the frozen tokenizer and behaviour model.
Latents are the quantised token vectors `[B, T, N, latent_dim]`, so generic predictors
(tokenizer round trip, seed variance) work on them as on any continuous latent.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from envs import task_spec
from world_models.base import SimState, Step, WorldModel, previous_actions, to_float_frames
from world_models.blocks import RolloutWindow
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
        self.dynamics = STDynamics(cfg, self.tokenizer.n_tokens, self.behavior.z_dim if self.behavior else 0,
                                   num_tasks=len(self.tasks))

    @property
    def has_reward(self) -> bool:
        return self.dynamics.reward is not None

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

    def loss(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, Tensor]]:
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
        metrics = {"dyn/token_ce": ce.detach(), "dyn/token_acc": (logits.detach().argmax(-1) == target).float().mean()}
        loss = ce
        if reward_logits is not None:
            rl = self.dynamics.twohot.loss(reward_logits, batch["rewards"].to(self.device))
            loss = loss + rl
            metrics["dyn/reward_ce"] = rl.detach()
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
                                 mask[:, None].expand_as(actions), z, self.batch_task_rows(batch["task_id"]))
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
    @property
    def feature_dim(self) -> int:
        return self.cfg.dyn_dim

    @property
    def max_context(self) -> int:
        """`cfg.max_context`: by default the `seq_len - 1` frames (itself included) a frame is
        predicted from in training."""
        return self.cfg.max_context

    @torch.no_grad()
    def start(self, obs: Tensor, context_actions: Tensor | None = None, *, task: str | None = None,
              seeds: int = 1, generator: torch.Generator | None = None, max_context: int | None = None,
              cached: bool = True, temperature: float | None = None, encoded: Tensor | None = None) -> WhaleState:
        """See `Simulator.start`. WHALE extras: `temperature` of next-token sampling (default
        `cfg.temperature`; 0 = argmax); `max_context` frames are kept (default
        `self.max_context`); `cached=False` recomputes the window at every step (the test
        reference); `encoded`: `encode(obs)`, when already computed (`WorldModel.context_latents`)."""
        frames, prev, prev_mask, window = self.start_context(obs, context_actions, seeds, max_context)
        temp = self.cfg.temperature if temperature is None else temperature
        if temp < 0:
            raise ValueError(f"temperature must be >= 0, got {temp}")
        frames = to_float_frames(frames)
        B = frames.shape[0]
        name = self.tasks[self.task_row(task)]
        rows = torch.full((B,), self.task_row(name), dtype=torch.long, device=self.device)
        vectors = self.context_latents(frames, encoded)  # [B, W, N, D]
        z, beh = None, None
        if self.behavior is not None:
            beh = RolloutWindow(self.behavior.history, self.cfg.seq_len, cached, reset_first=self.behavior.without_action)
            h, beh = beh.appended(self.behavior.history_tokens(frames, prev, prev_mask))
            z = self.behavior.prior_probs(h)
        past = RolloutWindow(self.dynamics, window, cached)
        if frames.shape[1] > 1:  # every context frame but the last, with the action taken there
            _, past = past.appended(self.dynamics.tokens(vectors[:, :-1], prev[:, 1:], prev_mask[:, 1:],
                                                         None if z is None else z[:, :-1], rows))
        z_now = None if z is None else z[:, -1:]
        features = self._features(past, vectors[:, -1:], z_now, rows)
        rep = torch.arange(B, device=self.device).repeat(seeds)
        return WhaleState(owner=id(self), batch=B, seeds=seeds, task=name, action_width=task_spec(name).action_dim,
                          features_all=features[rep], policy_all=None, generator=generator, window=past.select(rep),
                          behavior=None if beh is None else beh.select(rep), current=vectors[:, -1:][rep],
                          z=None if z_now is None else z_now[rep], task_rows=rows[rep], temperature=temp)

    @torch.no_grad()
    def step(self, state: WhaleState, actions: Tensor, signals: tuple[str, ...] = (),
             decode: bool = False) -> tuple[WhaleState, Step]:
        """See `Simulator.step`: the current frame joins the window with the action taken
        there; all N tokens of the next frame are sampled in parallel. Native signal:
        `token_entropy`, the mean predictive entropy (nats, at temperature 1) of those tokens.
        With behaviour conditioning the new frame is decoded so the prior can infer z from it."""
        a, mask = self.check_step_actions(state, actions)
        unknown = set(signals) - set(self.native_signals)
        if unknown:
            raise ValueError(f"{self.name} computes {self.native_signals} natively, not {sorted(unknown)}")
        a, mask = a[:, None], mask[:, None]
        dyn = self.dynamics
        h, window = state.window.appended(dyn.tokens(state.current, a, mask, state.z, state.task_rows))
        logits = dyn.logits(h)[:, 0].float()  # [R, N, K]
        current = self.tokenizer.vq.lookup(self._sample(logits, state.temperature, state.generator))[:, None]
        z, beh = state.z, state.behavior
        if beh is not None:
            hb, beh = beh.appended(self.behavior.history_tokens(self.decode(current), a, mask))
            z = self.behavior.prior_probs(hb)
        features = self._features(window, current, z, state.task_rows)
        new = replace(state, window=window, behavior=beh, current=current, z=z, features_all=features)
        S, B = state.seeds, state.batch
        seed_mean = lambda v: v.view(S, B, *v.shape[1:]).mean(0)  # noqa: E731
        latent = current[:, 0]
        reward = seed_mean(dyn.twohot.decode(dyn.reward_logits(h))[:, 0]) if self.has_reward else None
        out = Step(latent=latent[:B], reward=reward, features=features[:B],
                   seed_latents=latent.view(S, B, *latent.shape[1:]) if S > 1 else None,
                   frame=self.decode(current[:B])[:, 0] if decode else None)
        if "token_entropy" in signals:
            logp = logits.log_softmax(-1)
            out.signals["token_entropy"] = seed_mean(-(logp.exp() * logp).sum(-1).mean(-1))
        return new, out

    def _features(self, window: RolloutWindow, current: Tensor, z: Tensor | None, rows: Tensor) -> Tensor:
        """`[R, dyn_dim]`: the dynamics output at the current frame `[R, 1, N, D]`, read with
        no action yet and pooled over its tokens."""
        none = torch.zeros(current.shape[0], 1, self.action_dim, device=current.device)
        h = window.query(self.dynamics.tokens(current, none, none.bool(), z, rows))
        return self.dynamics.out_norm(h).mean(2)[:, 0]

    def _sample(self, logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        """Codes `[rows, N]` drawn from `logits [rows, N, K]` at `temperature` (Gumbel-max)."""
        if temperature == 0:
            return logits.argmax(-1)
        u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-9, 1 - 1e-9)
        return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)


@dataclass
class WhaleState(SimState):
    """`SimState` of a WHALE rollout: the dynamics window (past frames with the action taken
    at each), the behaviour-history window, the current frame's token vectors
    `[R, 1, N, D]`, its behaviour embedding `[R, 1, z_dim]` (None without conditioning),
    the task rows `[R]` and the sampling temperature."""

    window: RolloutWindow
    behavior: RolloutWindow | None
    current: Tensor
    z: Tensor | None
    task_rows: Tensor
    temperature: float

    def _select_rows(self, rows: Tensor, batch: int) -> "WhaleState":
        return replace(super()._select_rows(rows, batch), window=self.window.select(rows),
                       behavior=None if self.behavior is None else self.behavior.select(rows),
                       current=self.current[rows], z=None if self.z is None else self.z[rows],
                       task_rows=self.task_rows[rows])
