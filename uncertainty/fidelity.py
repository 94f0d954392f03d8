"""What full-frame PSNR hides: world-model metrics that look at the objects.

A few-pixel object (cup-catch's ball) can vanish from a model's frames while full-frame
PSNR stays at 30 dB. These metrics look where things move and at what the model knows:

- foreground PSNR: PSNR over the pixels that differ from their episode's median frame
  (in the real or in the model's frame), next to full-frame PSNR;
- state probes: a ridge regression, and a small MLP for what is there but not linear,
  from the model's features, read with a context so that velocities can be read, to the
  recorded low-dimensional states, scored by R² per state dimension on held-out episodes.
  States are for measuring only: no loss of a pixel model reads them, or the probes would
  measure nothing;
- reward error: the imagined reward against the recorded one along the recorded actions.

`fidelity_report` gives each for the start phase of episodes (frames before `start_steps`,
or windows whose last context frame comes before it) and for the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

import envs
from replay import EpisodeInfo, EpisodeStore
from world_models import episode_features
from world_models.base import WorldModel, psnr_from_mse, to_float_frames

PHASES = ("start", "rest")


@dataclass
class Windows:
    """Windows of `L` frames cut from episodes, with what the metrics need.

    frames `uint8 [B, L, 3, H, W]`; actions `[B, L-1, A]`; rewards `[B, L-1]`;
    states `[B, L, S]`; start `[B]` (index of frame 0 in its episode); background
    `uint8 [B, 3, H, W]` (the median frame of the window's episode).
    """

    frames: Tensor
    actions: Tensor
    rewards: Tensor
    states: Tensor
    start: Tensor
    background: Tensor


class WindowSampler:
    """Draws windows of `context + horizon` frames from episodes by phase: `"start"` when
    the last context frame comes before step `start_steps`, `"rest"` otherwise."""

    def __init__(self, store: EpisodeStore, episodes: list[EpisodeInfo], *, context: int, horizon: int,
                 start_steps: int = 50):
        self.eps = [ep for ep in map(store.load, episodes) if ep is not None and ep.states is not None
                    and len(ep.frames) >= context + horizon]
        if not self.eps:
            raise ValueError(f"no episode with recorded states and {context + horizon} frames among {len(episodes)}")
        self.context, self.horizon, self.start_steps = context, horizon, start_steps
        self._background: dict[int, np.ndarray] = {}

    def background(self, i: int) -> np.ndarray:
        if i not in self._background:
            self._background[i] = np.median(self.eps[i].frames, axis=0).astype(np.uint8)
        return self._background[i]

    def _ranges(self, phase: str | None) -> list[tuple[int, int]]:
        """Per episode, the [lo, hi) indices the last context frame of a `phase` window may take."""
        first_last = self.context - 1  # the earliest index of the last context frame
        ranges = []
        for ep in self.eps:
            hi = len(ep.frames) - self.horizon  # exclusive bound on the last context frame
            ranges.append({"start": (first_last, min(hi, self.start_steps)),
                           "rest": (max(first_last, self.start_steps), hi), None: (first_last, hi)}[phase])
        return ranges

    def by_phase(self, n: int, rng: np.random.Generator):
        """`(phase, n windows)` for each phase of `PHASES` that these episodes have."""
        for phase in PHASES:
            if any(hi > lo for lo, hi in self._ranges(phase)):
                yield phase, self.sample(n, phase, rng)

    def sample(self, n: int, phase: str | None, rng: np.random.Generator) -> Windows:
        """`n` windows of `phase` (None: any), uniform over the allowed window starts."""
        first_last = self.context - 1
        ranges = self._ranges(phase)
        sizes = np.array([max(0, hi - lo) for lo, hi in ranges], np.float64)
        if sizes.sum() == 0:
            raise ValueError(f"no window of phase {phase!r} fits these episodes")
        picks = rng.choice(len(self.eps), size=n, p=sizes / sizes.sum())
        starts = [int(rng.integers(*ranges[i])) - first_last for i in picks]
        L = self.context + self.horizon
        cut = lambda key, extra: np.stack([getattr(self.eps[i], key)[s: s + L + extra] for i, s in zip(picks, starts)])  # noqa: E731
        return Windows(frames=torch.from_numpy(cut("frames", 0)), actions=torch.from_numpy(cut("actions", -1)),
                       rewards=torch.from_numpy(cut("rewards", -1)), states=torch.from_numpy(cut("states", 0)),
                       start=torch.tensor(starts), background=torch.from_numpy(np.stack([self.background(i) for i in picks])))


def foreground_mask(frames: Tensor, background: Tensor, threshold: float = 0.1) -> Tensor:
    """`bool [..., H, W]`: pixels of `frames [..., 3, H, W]` that differ from `background`
    (broadcastable) by more than `threshold` in some channel (frames in [0, 1] or uint8)."""
    return (to_float_frames(frames) - to_float_frames(background)).abs().amax(-3) > threshold


def foreground_psnr(pred: Tensor, real: Tensor, background: Tensor, threshold: float = 0.1) -> float:
    """PSNR (dB) over the pixels that are foreground in the real or the predicted frame,
    pooled over every frame of `pred`/`real [..., 3, H, W]`; nan when nothing moves."""
    mask = foreground_mask(real, background, threshold) | foreground_mask(pred, background, threshold)
    if not mask.any():
        return float("nan")
    err = (to_float_frames(pred) - to_float_frames(real)).pow(2).mean(-3)
    return psnr_from_mse(err[mask].mean()).item()


def r2_score(predicted: Tensor, states: Tensor) -> Tensor:
    """`[S]` coefficient of determination of `predicted [N, S]` per state dimension."""
    y = states.double()
    res = (y - predicted.double()).pow(2).sum(0)
    tot = (y - y.mean(0)).pow(2).sum(0).clamp(min=1e-12)
    return (1 - res / tot).float()


class StateProbe:
    """Ridge regression from features `[N, F]` to states `[N, S]` on standardised features."""

    def __init__(self, ridge: float = 1e-2):
        self.ridge = ridge

    def fit(self, features: Tensor, states: Tensor) -> "StateProbe":
        x, y = features.double(), states.double()
        self.x_mean, self.x_std = x.mean(0), x.std(0).clamp(min=1e-6)
        self.y_mean = y.mean(0)
        xs = (x - self.x_mean) / self.x_std
        gram = xs.T @ xs + self.ridge * len(xs) * torch.eye(xs.shape[1], dtype=xs.dtype)
        self.weight = torch.linalg.solve(gram, xs.T @ (y - self.y_mean))
        return self

    def predict(self, features: Tensor) -> Tensor:
        return ((features.double() - self.x_mean) / self.x_std) @ self.weight + self.y_mean

    def r2(self, features: Tensor, states: Tensor) -> Tensor:
        return r2_score(self.predict(features), states)


class MLPProbe:
    """A two-hidden-layer MLP from standardised features `[N, F]` to standardised states
    `[N, S]`, trained with AdamW on the squared error: what the features hold beyond a
    linear readout (a position coded by which tokens light up is not linear in them)."""

    def __init__(self, hidden: int = 256, steps: int = 2000, batch: int = 256, lr: float = 1e-3,
                 weight_decay: float = 1e-4, seed: int = 0):
        self.hidden, self.steps, self.batch, self.lr, self.weight_decay, self.seed = hidden, steps, batch, lr, weight_decay, seed

    def fit(self, features: Tensor, states: Tensor) -> "MLPProbe":
        x, y = features.float(), states.float()
        self.x_mean, self.x_std = x.mean(0), x.std(0).clamp(min=1e-6)
        self.y_mean, self.y_std = y.mean(0), y.std(0).clamp(min=1e-6)
        xs, ys = (x - self.x_mean) / self.x_std, (y - self.y_mean) / self.y_std
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.net = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.GELU(), nn.Linear(self.hidden, self.hidden),
                                     nn.GELU(), nn.Linear(self.hidden, y.shape[1]))
        opt = torch.optim.AdamW(self.net.parameters(), self.lr, weight_decay=self.weight_decay)
        with torch.enable_grad():
            for _ in range(self.steps):
                i = torch.randint(len(xs), (self.batch,), generator=gen)
                loss = (self.net(xs[i]) - ys[i]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        return self.net((features.float() - self.x_mean) / self.x_std) * self.y_std + self.y_mean

    def r2(self, features: Tensor, states: Tensor) -> Tensor:
        return r2_score(self.predict(features), states)


@dataclass
class FrameFeatures:
    """Every frame of some episodes that has a full context and an action: the model's
    features there `[N, F]` (read with the `context` frames up to it), the recorded state
    `[N, S]`, the action taken `[N, A]` and the frame's index in its episode `t [N]`."""

    features: Tensor
    states: Tensor
    actions: Tensor
    t: Tensor


def frame_features(model: WorldModel, store: EpisodeStore, episodes: list[EpisodeInfo], task: str,
                   context: int) -> FrameFeatures:
    """`FrameFeatures` of the `episodes` that recorded states (each frame encoded once)."""
    parts = []
    for info in episodes:
        ep = store.load(info)
        if ep is None or ep.states is None or len(ep.actions) < context:
            continue
        feats = episode_features(model, torch.from_numpy(ep.frames).to(model.device),
                                 torch.from_numpy(ep.actions).to(model.device), task, context)
        keep = slice(context - 1, len(ep.actions))
        parts.append((feats[keep], torch.from_numpy(ep.states[keep]).float(), torch.from_numpy(ep.actions[keep]).float(),
                      torch.arange(len(ep.actions))[keep]))
    if not parts:
        raise ValueError(f"no episode with recorded states and {context} frames among {len(episodes)}")
    return FrameFeatures(*(torch.cat(p) for p in zip(*parts)))


@torch.no_grad()
def window_readout(model: WorldModel, w: Windows, context: int, task: str, batch: int = 64) -> tuple[Tensor, Tensor | None]:
    """Features `[B, F]` of each window's last context frame, read with the `context`
    frames up to it (and the actions between them), and the BC head's action there
    `[B, A]` (None for a model without one)."""
    features, actions = [], []
    for i in range(0, len(w.frames), batch):
        frames = w.frames[i: i + batch, :context].to(model.device)
        acts = w.actions[i: i + batch, : context - 1].to(model.device) if context > 1 else None
        state = model.start(frames, acts, task=task)
        features.append(state.features.float().cpu())
        if state.policy_action is not None:
            actions.append(state.policy_action.float().cpu())
    return torch.cat(features), torch.cat(actions) if actions else None


def window_features(model: WorldModel, w: Windows, context: int, task: str, batch: int = 64) -> Tensor:
    """The features of `window_readout`."""
    return window_readout(model, w, context, task, batch)[0]


@torch.no_grad()
def rollout_report(model: WorldModel, w: Windows, context: int, task: str, seed: int = 0,
                   batch: int = 32) -> dict[str, float]:
    """Recon and rollout PSNR, full-frame and foreground, and the reward error of `horizon`
    imagined steps along the recorded actions from each window's context."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    recon, imagined, rewards = [], [], []
    for i in range(0, len(w.frames), batch):
        frames = w.frames[i: i + batch].to(model.device)
        acts = w.actions[i: i + batch].to(model.device)
        recon.append(model.decode(model.encode(frames[:, context - 1: context])).cpu())
        im = model.imagine(frames[:, :context], acts[:, context - 1:], context_actions=acts[:, : context - 1]
                           if context > 1 else None, decode=True, task=task, generator=gen)
        imagined.append(im.frames.cpu())
        if im.rewards is not None:
            rewards.append(im.rewards.cpu())
    recon, imagined = torch.cat(recon), torch.cat(imagined)
    real_now, real_next = w.frames[:, context - 1: context], w.frames[:, context:]
    bg = w.background[:, None]
    full = lambda p, r: psnr_from_mse((p - to_float_frames(r)).pow(2).mean()).item()  # noqa: E731
    out = {"recon_psnr": full(recon, real_now), "recon_fg_psnr": foreground_psnr(recon, real_now, bg),
           "rollout_psnr": full(imagined, real_next), "rollout_fg_psnr": foreground_psnr(imagined, real_next, bg),
           "repeat_fg_psnr": foreground_psnr(real_now.expand_as(real_next), real_next, bg)}
    if rewards:
        err = torch.cat(rewards) - w.rewards[:, context - 1:]
        out["reward_mae"] = err.abs().mean().item()
        out["reward_bias"] = err.mean().item()
    return out


def fidelity_report(model: WorldModel, store: EpisodeStore, train: list[EpisodeInfo], held: list[EpisodeInfo],
                    task: str, *, windows: int = 128, horizon: int = 8, context: int | None = None,
                    start_steps: int = 50, seed: int = 0,
                    expert: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """Per phase (`start`: frames before `start_steps`, `rest`) of `held` episodes:
    recon / rollout PSNR and foreground PSNR and the reward error on `windows` windows of
    `horizon` imagined steps; the state probes' R² per named state dimension on every
    held-out frame (`<phase>/probe_r2/<name>`: ridge; `<phase>/mlp_probe_r2/<name>`: the
    `MLPProbe`); and the BC head's action error (`bc_mse`) next to always
    taking the mean action (`bc_mse_mean_action`). The probes and the mean action are fit on
    every frame of `train`. Phases with no window are left out.

    With an `expert` (`state [S] -> action [A]`) the BC head is also scored against the
    expert's action at the recorded state (`bc_mse_expert`, and `bc_mse_expert_mean_action`):
    on data mixed from several behaviours the recorded action carries noise no model can
    predict, and this error does not.

    The probes need many frames per feature: on cup-catch (small Dreamer-4, 1152 features)
    the ridge probe read the held-out ball x velocity at start with R² 0.62 from 4096
    frames and 0.68 from all 16,740 (docs/cup_catch.md)."""
    context = context or model.max_context
    names = envs.make(task, obs="state").state_names()
    rng = np.random.default_rng(seed)
    fit = frame_features(model, store, train, task, context)
    probes = {"probe_r2": StateProbe().fit(fit.features, fit.states),
              "mlp_probe_r2": MLPProbe(seed=seed).fit(fit.features, fit.states)}
    mean_action = fit.actions.mean(0)
    scored = frame_features(model, store, held, task, context)
    sampler = WindowSampler(store, held, context=context, horizon=horizon, start_steps=start_steps)
    out = {}
    for phase, w in sampler.by_phase(windows, rng):
        out.update({f"{phase}/{k}": v for k, v in rollout_report(model, w, context, task, seed).items()})
        frames = scored.t < start_steps if phase == "start" else scored.t >= start_steps
        for key, probe in probes.items():
            r2 = probe.r2(scored.features[frames], scored.states[frames])
            out.update({f"{phase}/{key}/{n}": v for n, v in zip(names, r2.tolist())})
        _, policy = window_readout(model, w, context, task)
        if policy is not None:
            taken = w.actions[:, context - 1]
            out[f"{phase}/bc_mse"] = (policy - taken).pow(2).mean().item()
            out[f"{phase}/bc_mse_mean_action"] = (mean_action - taken).pow(2).mean().item()
            if expert is not None:
                target = expert_actions(expert, w.states[:, context - 1], taken.shape[-1])
                out[f"{phase}/bc_mse_expert"] = (policy - target).pow(2).mean().item()
                out[f"{phase}/bc_mse_expert_mean_action"] = (mean_action - target).pow(2).mean().item()
    return out


def expert_actions(expert: Callable[[np.ndarray], np.ndarray], states: Tensor, width: int) -> Tensor:
    """The expert's actions `[B, width]` (zero-padded) at `states [B, S]`."""
    acts = torch.zeros(len(states), width)
    for i, s in enumerate(states.numpy()):
        a = torch.as_tensor(np.asarray(expert(s), dtype=np.float32))
        acts[i, : len(a)] = a
    return acts


@dataclass
class StartRollout:
    """Real episodes from `reset` under zero actions next to the model's version of them.

    real, recon, imagined: `[N, H, 3, h, w]` in [0, 1] — the real frames after the context,
    their tokenizer round trips, and what the model imagines from the context;
    real_rewards, imagined_rewards: `[N, H]`.
    """

    real: Tensor
    recon: Tensor
    imagined: Tensor
    real_rewards: Tensor
    imagined_rewards: Tensor | None


@torch.no_grad()
def zero_action_starts(model: WorldModel, task: str, *, episodes: int = 8, context: int | None = None,
                       horizon: int = 16, seed: int = 0) -> StartRollout:
    """From `episodes` fresh starts of `task` (env seeds `seed`, `seed + 1`, ...), hold zero
    actions: the model sees the first `context` real frames and imagines the next `horizon`
    (on cup-catch: the ball falls and hangs below the cup, where the reward is 0)."""
    context = context or model.max_context
    size = model.cfg.image_size
    env = envs.make(task, obs="pixels", size=size, seed=seed)
    zero = np.zeros(env.action_space.shape, np.float32)
    frames, rewards = [], []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        ep, rew = [obs], []
        for _ in range(context - 1 + horizon):
            obs, r, *_ = env.step(zero)
            ep.append(obs)
            rew.append(r)
        frames.append(np.stack(ep))
        rewards.append(rew)
    env.close()
    frames = torch.from_numpy(np.stack(frames)).to(model.device)
    rewards = torch.tensor(rewards, dtype=torch.float32)[:, context - 1:]
    plans = torch.zeros(episodes, horizon, len(zero), device=model.device)
    ctx_actions = torch.zeros(episodes, context - 1, len(zero), device=model.device) if context > 1 else None
    gen = torch.Generator(device=model.device).manual_seed(seed)
    im = model.imagine(frames[:, :context], plans, context_actions=ctx_actions, decode=True, task=task, generator=gen)
    real = to_float_frames(frames[:, context:]).cpu()
    return StartRollout(real=real, recon=model.decode(model.encode(frames[:, context:])).cpu(),
                        imagined=im.frames.cpu(), real_rewards=rewards,
                        imagined_rewards=None if im.rewards is None else im.rewards.cpu())


def start_rollout_image(r: StartRollout, episode: int = 0, every: int = 2) -> np.ndarray:
    """`uint8 [3h, T w, 3]`: real, reconstructed and imagined rows of one start, every
    `every`-th step (for a PNG)."""
    rows = [x[episode, ::every] for x in (r.real, r.recon, r.imagined)]
    grid = torch.cat([torch.cat(list(row), -1) for row in rows], -2)  # [3, 3h, T w]
    return (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
