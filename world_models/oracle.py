"""The true simulator behind the `WorldModel` contract, for checking planners.

    env = envs.make("toy-reach", size=32); obs, _ = env.reset()
    oracle = Oracle(env)          # mirrors `env`: every imagine() starts from env's state now
    im = oracle.imagine(obs, plans)   # plans [N, H, A] -> exact rewards [N, H]

It snapshots the live environment's simulator at each `imagine` call, replays every
candidate in a private copy (same action repeat and physics substeps, so rewards are
exactly the environment's) and restores nothing in the live one. `obs` is only used for
its batch shape: the state comes from the environment, which is the point of an oracle.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

import envs
from world_models.base import Imagination, WorldModel


class Oracle(WorldModel):
    name = "oracle"
    phases = ()

    def __init__(self, env: envs.TaskEnv):
        super().__init__()
        if env.task.domain not in ("toy", "dmc"):
            raise ValueError(f"the oracle supports toy-reach and dm_control tasks, not {env.task.name}")
        self.live = env
        self.action_dim = env.task.action_dim
        self.sim = envs.make(env.task.name, obs="state", size=env.size)
        self.sim.reset(seed=0)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def imagine(self, obs: Tensor, actions: Tensor | None, *, context_actions: Tensor | None = None,
                decode: bool = False, seeds: int = 1, signals: tuple[str, ...] = (),
                task: str | None = None, generator: torch.Generator | None = None,
                horizon: int | None = None) -> Imagination:
        """Exact rollouts of `actions [N, H, A]` from the live environment's current state.
        `latents` are the low-dimensional states `[N, H, state_dim]`; `frames` (decode)
        are rendered `[N, H, 3, h, w]` in [0, 1]. The simulator is deterministic, so
        `seeds` > 1 repeats the same rollout and there are no signals."""
        if actions is None:
            raise ValueError("the oracle has no policy: pass actions")
        if signals:
            raise ValueError(f"the oracle computes no uncertainty signals, asked for {list(signals)}")
        if task is not None and task != self.live.task.name:
            raise ValueError(f"the oracle mirrors {self.live.task.name}, not {task}")
        plans = actions.detach().cpu().float().numpy()
        if plans.ndim != 3 or plans.shape[-1] != self.action_dim:
            raise ValueError(f"actions must be [N, H, {self.action_dim}], got {tuple(actions.shape)}")
        start = self.live.get_sim_state()
        N, H = plans.shape[:2]
        states = np.zeros((N, H, self.sim.state_dim), np.float32)
        rewards = np.zeros((N, H), np.float32)
        frames = np.zeros((N, H, self.live.size, self.live.size, 3), np.uint8) if decode else None
        for n in range(N):
            self.sim.set_sim_state(start)
            for h in range(H):
                states[n, h], rewards[n, h], *_ = self.sim.step(np.clip(plans[n, h], -1, 1))
                if decode:
                    frames[n, h] = self.sim.render()
        out = Imagination(latents=torch.from_numpy(states), rewards=torch.from_numpy(rewards))
        if seeds > 1:
            out.seed_latents = out.latents.expand(seeds, *out.latents.shape)
        if decode:
            out.frames = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255
        return out

    def encode(self, frames: Tensor) -> Tensor:
        raise ValueError("the oracle has no encoder: it reads the simulator, not frames")

    def decode(self, latents: Tensor) -> Tensor:
        raise ValueError("the oracle cannot render from latents: use imagine(..., decode=True)")

    def loss(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, float]]:
        raise ValueError("the oracle is not trained")

    def prediction_error(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        raise ValueError("the oracle is exact: it has no prediction error to measure")

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        raise ValueError("the oracle has no parameters to train")
