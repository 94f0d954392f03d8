"""A probabilistic ensemble over low-dimensional states (PETS, MOPO), behind `Simulator`.

K Gaussian MLPs predict the change of state and the reward from `[state, action]`. They
train together on every transition of the store's recorded states, with early stopping on
held-out transitions, and the `elites` members with the lowest held-out error roll out:
each imagined transition is sampled from one elite drawn at random (MOPO). Log-variances
are softly bounded by learned limits (PETS); the means fit by squared error and the variances
by NLL, so that no output is given up to a large variance. Native signals:
- `max_std`: MOPO's penalty, the largest norm of a member's predicted std;
- `disagreement`: the largest distance of a member's mean from the elites' mean.

It is the fast CPU model for offline RL on `obs="state"` tasks, and the ensemble anchor of
MOPO and OfflineRL-Kit. Observations and features are the states themselves.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from envs import task_spec
from replay import EpisodeInfo, EpisodeStore
from world_models.base import SimState, Simulator, Step, preset_config


@dataclass(frozen=True)
class EnsembleConfig:
    state_dim: int = 4
    action_dim: int = 2
    members: int = 7
    elites: int = 5
    hidden: int = 200
    layers: int = 4
    lr: float = 1e-3
    weight_decay: float = 5e-5
    split_loss: bool = True         # means by squared error, variances by NLL (False: joint NLL)
    batch: int = 256
    holdout: float = 0.1            # share of transitions held out for early stopping
    max_epochs: int = 200
    patience: int = 5               # epochs without a 1% held-out improvement before stopping
    max_seconds: float = 600.0

    def __post_init__(self):
        if not 1 <= self.elites <= self.members:
            raise ValueError(f"need 1 <= elites <= members, got {self.elites} and {self.members}")
        if self.state_dim < 1 or self.action_dim < 1:
            raise ValueError("state_dim and action_dim must be >= 1")


PRESETS = {
    # OfflineRL-Kit's MOPO dynamics: 7 members, 5 elites, 4 x 200 units
    "small": {},
    # for tests: toy-reach's 9000 transitions train in about a minute; the log-variances
    # need the epochs (max_std only separates covered from uncovered states once they settle)
    "tiny": dict(hidden=64, layers=3, max_epochs=200, patience=10),
    "paper": {},
}


def make_config(preset: str = "small", **overrides) -> EnsembleConfig:
    return preset_config(EnsembleConfig, PRESETS, preset, overrides)


class EnsembleLinear(nn.Module):
    """K independent linear layers applied at once: `[K, N, in] -> [K, N, out]`."""

    def __init__(self, members: int, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(members, inputs, outputs) / math.sqrt(inputs))
        self.bias = nn.Parameter(torch.zeros(members, 1, outputs))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


@dataclass
class EnsembleState(SimState):
    """`SimState` of the ensemble: the states `[R, S]` are the features."""


class Ensemble(Simulator, nn.Module):
    """See the module docstring. `start(states [B, S])`, `step(state, actions [B, A])`."""

    name = "ensemble"
    native_signals = ("max_std", "disagreement")
    reads_states = True

    def __init__(self, cfg: EnsembleConfig, tasks: tuple[str, ...] = ("toy-reach",)):
        super().__init__()
        self.cfg, self.tasks = cfg, tuple(tasks)
        self.action_dim = cfg.action_dim
        S, A, H, K = cfg.state_dim, cfg.action_dim, cfg.hidden, cfg.members
        dims = [S + A] + [H] * cfg.layers
        self.body = nn.ModuleList(EnsembleLinear(K, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.head = EnsembleLinear(K, H, 2 * (S + 1))
        self.max_logvar = nn.Parameter(torch.full((S + 1,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((S + 1,), -10.0))
        for name, size in (("in_mean", S + A), ("in_std", S + A), ("out_mean", S + 1), ("out_std", S + 1)):
            self.register_buffer(name, torch.zeros(size) if "mean" in name else torch.ones(size))
        self.register_buffer("elite_idx", torch.arange(cfg.elites))
        self.register_buffer("active", torch.ones(S + 1))  # 0: an output the data never changes

    def config_dict(self) -> dict:
        return {"name": self.name, "tasks": list(self.tasks), "config": asdict(self.cfg)}

    @property
    def device(self) -> torch.device:
        return self.max_logvar.device

    @property
    def feature_dim(self) -> int:
        return self.cfg.state_dim

    # ---- the networks ----------------------------------------------------------------------
    def forward(self, states: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """`[K, N, S]`, `[K, N, A]` (or `[N, ...]`, shared) -> normalised mean and log-variance
        `[K, N, S + 1]` of `[Δstate, reward]`."""
        x = (torch.cat([states, actions], -1) - self.in_mean) / self.in_std
        if x.ndim == 2:
            x = x.expand(self.cfg.members, *x.shape)
        for layer in self.body:
            x = F.silu(layer(x))
        mean, logvar = self.head(x).chunk(2, -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean * self.active, logvar

    def loss(self, states: Tensor, actions: Tensor, targets: Tensor) -> Tensor:
        """Loss of `[K, N, S + 1]` raw targets over the active outputs: the means fit by
        squared error, the log-variances by Gaussian NLL around the (detached) means, plus
        the log-variance bound term. Under a joint NLL a member explains hard outputs by
        raising their variance and stops fitting their means (plate-slide's hand:
        docs/offline.md)."""
        mean, logvar = self(states, actions)
        y = (targets - self.out_mean) / self.out_std
        if self.cfg.split_loss:
            err = (mean - y).pow(2) + (mean.detach() - y).pow(2) * torch.exp(-logvar) + logvar
        else:
            err = (mean - y).pow(2) * torch.exp(-logvar) + logvar
        nll = (err * self.active).sum(2).mean(1).sum() / self.active.sum()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def member_errors(self, states: Tensor, actions: Tensor, targets: Tensor) -> Tensor:
        """`[K]` normalised MSE of each member's mean on `[N, ...]` transitions (active outputs)."""
        mean, _ = self(states, actions)
        err = (mean - (targets - self.out_mean) / self.out_std).pow(2) * self.active
        return err.sum(2).mean(1) / self.active.sum()

    @torch.no_grad()
    def mean_next_state(self, states: Tensor, actions: Tensor) -> Tensor:
        """`[N, S]` the elites' mean prediction of the next state (no sampling)."""
        mean, _ = self(states, actions)
        delta = mean[self.elite_idx].mean(0) * self.out_std + self.out_mean
        return states + delta[:, :-1]

    def member_keys(self) -> list[str]:
        """State-dict keys of the per-member weights (leading dim = members)."""
        return [k for k in self.state_dict() if k.startswith(("body.", "head."))]

    # ---- training ----------------------------------------------------------------------------
    def fit(self, store: EpisodeStore, episodes: list[EpisodeInfo], *, seed: int = 0,
            progress: bool = True) -> dict[str, float]:
        """Train every member on all transitions of `episodes` (recorded states), stop early
        on a held-out share, keep each member's best weights and pick the elites."""
        return self.fit_transitions(*transitions(store, episodes, self.cfg.state_dim, self.cfg.action_dim),
                                    seed=seed, progress=progress)

    def fit_transitions(self, s: Tensor, a: Tensor, r: Tensor, s2: Tensor, *, seed: int = 0,
                        progress: bool = True) -> dict[str, float]:
        """`fit` on transitions `s [N, S]`, `a [N, A]`, `r [N]`, `s2 [N, S]` of any vector state."""
        cfg = self.cfg
        if not (len(s) == len(a) == len(r) == len(s2)) or s.shape[1:] != (cfg.state_dim,) or \
                s2.shape != s.shape or a.shape[1:] != (cfg.action_dim,):
            raise ValueError(f"the ensemble fits s [N, {cfg.state_dim}], a [N, {cfg.action_dim}], r [N], s2 [N, "
                             f"{cfg.state_dim}]; got {tuple(s.shape)}, {tuple(a.shape)}, {tuple(r.shape)}, {tuple(s2.shape)}")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(s), generator=gen)
        n_hold = max(1, int(cfg.holdout * len(s)))
        hold, train = order[:n_hold], order[n_hold:]
        targets = torch.cat([s2 - s, r[:, None]], -1)
        inputs = torch.cat([s, a], -1)[train]
        self.in_mean.copy_(inputs.mean(0))
        self.in_std.copy_(inputs.std(0).clamp(min=1e-6))
        self.out_mean.copy_(targets[train].mean(0))
        self.out_std.copy_(targets[train].std(0).clamp(min=1e-6))
        # outputs the data never changes (Meta-World's padding, resting objects) are
        # constants, left out of the loss and of the held-out error
        self.active.copy_((targets[train].std(0) > 1e-6).float())
        self.active[-1] = 1.0
        dev = self.device
        s, a, targets = s.to(dev), a.to(dev), targets.to(dev)
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best = self.member_errors(s[hold], a[hold], targets[hold])
        best_state = {k: v.clone() for k, v in self.state_dict().items()}
        stale, t0, epoch = 0, time.perf_counter(), 0
        bar = tqdm(range(cfg.max_epochs), desc="ensemble", disable=not progress)
        for epoch in bar:
            self.train()
            # each member sees its own bootstrap order of the training transitions
            perm = torch.stack([train[torch.randint(len(train), (len(train),), generator=gen)]
                                for _ in range(cfg.members)])
            for i in range(0, len(train), cfg.batch):
                idx = perm[:, i: i + cfg.batch].to(dev)
                loss = self.loss(s[idx], a[idx], targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.eval()
            errors = self.member_errors(s[hold], a[hold], targets[hold])
            better = errors < best * 0.99
            if better.any():
                state = self.state_dict()
                for k in self.member_keys():  # keep each improved member's weights
                    best_state[k][better] = state[k][better]
                best = torch.where(better, errors, best)
                stale = 0
            else:
                stale += 1
            bar.set_postfix(holdout_mse=f"{best.min().item():.4f}")
            if stale >= cfg.patience or time.perf_counter() - t0 > cfg.max_seconds:
                break
        bar.close()
        members = self.member_keys()
        shared = {k: v for k, v in self.state_dict().items() if k not in members}
        self.load_state_dict({**{k: best_state[k] for k in members}, **shared})
        self.elite_idx.copy_(best.argsort()[: cfg.elites])
        self.eval()
        return {"ensemble/holdout_mse": best[self.elite_idx].mean().item(), "ensemble/epochs": epoch + 1,
                "ensemble/seconds": time.perf_counter() - t0, "ensemble/transitions": len(train)}

    # ---- the simulator -----------------------------------------------------------------------
    def start(self, obs: Tensor, context_actions: Tensor | None = None, *, task: str | None = None,
              seeds: int = 1, generator: torch.Generator | None = None) -> EnsembleState:
        """`obs`: states `[B, S]` (or a context `[B, T0, S]`, of which the last is used)."""
        obs = torch.as_tensor(obs, dtype=torch.float32)
        obs = obs[:, -1] if obs.ndim == 3 else obs
        if obs.ndim != 2 or obs.shape[1] != self.cfg.state_dim:
            raise ValueError(f"the ensemble starts from states [B, {self.cfg.state_dim}], got {tuple(obs.shape)}")
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        name = task or self.tasks[0]
        if name not in self.tasks:
            raise ValueError(f"this ensemble was trained on {list(self.tasks)}, not {name!r}")
        return EnsembleState(owner=id(self), batch=len(obs), seeds=seeds, task=name,
                             action_width=task_spec(name).action_dim, features_all=obs.to(self.device).repeat(seeds, 1),
                             policy_all=None, generator=generator)

    @torch.no_grad()
    def step(self, state: EnsembleState, actions: Tensor, signals: tuple[str, ...] = (),
             decode: bool = False) -> tuple[EnsembleState, Step]:
        a, _ = self.check_step_actions(state, actions)
        unknown = set(signals) - set(self.native_signals)
        if unknown:
            raise ValueError(f"{self.name} computes {self.native_signals} natively, not {sorted(unknown)}")
        if decode:
            raise ValueError("the state ensemble has no frames to decode")
        s = state.features_all
        a = a[:, : self.cfg.action_dim]
        mean, logvar = self(s, a)
        mean, std = mean[self.elite_idx], (0.5 * logvar[self.elite_idx]).exp() * self.active   # [E, R, S + 1]
        R = len(s)
        pick = torch.randint(len(self.elite_idx), (R,), generator=state.generator, device=s.device)
        rows = torch.arange(R, device=s.device)
        noise = torch.randn(R, mean.shape[-1], generator=state.generator, device=s.device)
        sample = (mean[pick, rows] + std[pick, rows] * noise) * self.out_std + self.out_mean
        nxt = s + sample[:, :-1]
        reward = (mean[pick, rows, -1] * self.out_std[-1] + self.out_mean[-1])
        S, B = state.seeds, state.batch
        seed_mean = lambda v: v.view(S, B, *v.shape[1:]).mean(0)  # noqa: E731
        out = Step(latent=nxt[:B], reward=seed_mean(reward), features=nxt[:B],
                   seed_latents=nxt.view(S, B, -1) if S > 1 else None)
        scale = self.out_std
        if "max_std" in signals:
            out.signals["max_std"] = seed_mean((std * scale).norm(dim=-1).amax(0))
        if "disagreement" in signals:
            m = mean * scale
            out.signals["disagreement"] = seed_mean((m - m.mean(0)).norm(dim=-1).amax(0))
        return replace(state, features_all=nxt), out


def transitions(store: EpisodeStore, episodes: list[EpisodeInfo], state_dim: int,
                action_dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All `(s, a, r, s')` of `episodes` as `[N, S]`, `[N, A]`, `[N]`, `[N, S]`; episodes
    without recorded states (or of another size) are refused by name."""
    s, a, r, s2 = [], [], [], []
    for info in episodes:
        ep = store.load(info)
        if ep is None:
            continue
        if ep.states is None or ep.states.shape[1] != state_dim or ep.actions.shape[1] != action_dim:
            raise ValueError(f"{info.path}: the ensemble needs states [T+1, {state_dim}] and actions "
                             f"[T, {action_dim}]")
        s.append(ep.states[:-1]), a.append(ep.actions), r.append(ep.rewards), s2.append(ep.states[1:])
    if not s:
        raise ValueError("no readable episodes to train the ensemble on")
    cat = lambda xs: torch.from_numpy(np.concatenate(xs)).float()  # noqa: E731
    return cat(s), cat(a), cat(r), cat(s2)
