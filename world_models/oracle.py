"""The true simulator behind the `Simulator` contract, for checking planners.

    env = envs.make("toy-reach", size=32); obs, _ = env.reset()
    oracle = Oracle(env)          # mirrors `env`: every start() begins from env's state now
    im = oracle.imagine(obs, plans)   # plans [N, H, A] -> exact rewards [N, H]

`start` snapshots the live environment's simulator; `step` replays each row in a private
copy (same action repeat and physics substeps, so rewards are exactly the environment's)
and never touches the live one. `obs` is only used for its batch shape: the state comes
from the environment, which is the point of an oracle. Latents and features are the
low-dimensional states.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

import envs
from world_models.base import SimState, Simulator, Step


@dataclass
class OracleState(SimState):
    """`SimState` of the oracle: one simulator snapshot per row."""

    snapshots: list

    def _select_rows(self, rows: Tensor, batch: int) -> "OracleState":
        return replace(super()._select_rows(rows, batch), snapshots=[self.snapshots[i] for i in rows.tolist()])


class Oracle(Simulator):
    name = "oracle"

    def __init__(self, env: envs.TaskEnv):
        if env.task.domain not in ("toy", "dmc"):
            raise ValueError(f"the oracle supports toy-reach and dm_control tasks, not {env.task.name}")
        self.live = env
        self.action_dim = env.task.action_dim
        self.sim = envs.make(env.task.name, obs="state", size=env.size)
        self.sim.reset(seed=0)

    @property
    def feature_dim(self) -> int:
        return self.sim.state_dim

    def start(self, obs: Tensor, context_actions: Tensor | None = None, *, task: str | None = None,
              seeds: int = 1, generator: torch.Generator | None = None) -> OracleState:
        """The live environment's state now, once per row of `obs` (`[B, ...]`). The simulator
        is deterministic, so every seed is the same."""
        if task is not None and task != self.live.task.name:
            raise ValueError(f"the oracle mirrors {self.live.task.name}, not {task}")
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        B = obs.shape[0]
        snap = self.live.get_sim_state()
        state = torch.as_tensor(self.live.state()).expand(B * seeds, -1).clone()
        return OracleState(owner=id(self), batch=B, seeds=seeds, task=self.live.task.name,
                           action_width=self.action_dim, features_all=state, policy_all=None,
                           generator=generator, snapshots=[snap] * (B * seeds))

    def step(self, state: OracleState, actions: Tensor, signals: tuple[str, ...] = (),
             decode: bool = False) -> tuple[OracleState, Step]:
        """Exact: `latent` and `features` are the next low-dimensional states `[B, state_dim]`,
        `frame` (decode) the rendered frame; there are no uncertainty signals."""
        a, _ = self.check_step_actions(state, actions)
        if signals:
            raise ValueError(f"the oracle computes no uncertainty signals, asked for {list(signals)}")
        plans = a[:, : self.action_dim].cpu().numpy()
        R, B = len(plans), state.batch
        states = np.zeros((R, self.sim.state_dim), np.float32)
        rewards = np.zeros(R, np.float32)
        frames, snaps = [], []
        for r in range(R):
            self.sim.set_sim_state(state.snapshots[r])
            states[r], rewards[r], *_ = self.sim.step(np.clip(plans[r], -1, 1))
            snaps.append(self.sim.get_sim_state())
            if decode and r < B:
                frames.append(self.sim.render())
        latent = torch.from_numpy(states)
        new = replace(state, features_all=latent, snapshots=snaps)
        out = Step(latent=latent[:B], reward=torch.from_numpy(rewards[:B]), features=latent[:B],
                   seed_latents=latent.view(state.seeds, B, -1) if state.seeds > 1 else None)
        if decode:
            out.frame = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
        return new, out
