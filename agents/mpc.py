"""`MPCAgent`: plan through a world model's step API with CEM-MPC and a BC prior."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from agents.context import ContextAgent
from planners import MPC
from uncertainty import penalized_reward, signal
from world_models import Imagination, SimState, Simulator


class MPCAgent(ContextAgent):
    """Receding-horizon control with a world model.

    A candidate plan `[H, A]` scores `Σ_h γ^h (r_h - λ u_h)` (+ `γ^H V` when a terminal
    value is given), where `r` are the model's predicted rewards and `u` is a per-step
    uncertainty signal by name (`uncertainty.signal`: `"u_r"`, `"u_s"`, `"u_f"` or a native
    one such as `"token_entropy"`), divided by the scene motion when `motion` is given
    (MOPO-style penalty). When the model has a
    BC head, its rollout from the current context warm-starts the CEM mean and, with
    `prior_samples - 1` noisy copies, joins every iteration's candidates.

    Args:
        model: any `Simulator` (a trained world model, or the `Oracle`).
        mpc: the planner loop; its CEM's action_dim must be the task's.
        task: the task name passed to `imagine`.
        context: frames of history the model sees (with the actions between them).
        discount: γ.
        penalty, lam: the signal name and its weight λ (MOPO-style penalty).
        seeds: samples per plan (`"u_s"` needs >= 2; rewards are averaged over them).
        motion: `MotionStats` or `RunningMotion` to normalise the penalty by, or None.
        terminal_value: `Imagination -> [N]` value of each plan's last state, or None.
        prior_samples: BC-prior trajectories injected per iteration (0 disables the prior).
        prior_noise: std of the Gaussian perturbation of the extra prior trajectories.
        seed: seeds the prior noise and the model's sampling.
    """

    def __init__(self, model: Simulator, mpc: MPC, task: str, *, context: int = 1, discount: float = 1.0,
                 penalty: str | None = None, lam: float = 0.0, seeds: int = 1, motion=None,
                 terminal_value: Callable[[Imagination], Tensor] | None = None,
                 prior_samples: int = 8, prior_noise: float = 0.1, seed: int = 0):
        native = tuple(getattr(model, "native_signals", ()))
        if penalty is not None and lam:
            known = ("u_r", "u_s", *native, *(("u_f",) if "flow_instability" in native else ()))
            if penalty not in known:
                raise ValueError(f"{model.name} offers the signals {list(known)}, not {penalty!r}")
            if penalty == "u_s" and seeds < 2:
                raise ValueError("the penalty u_s (inter-seed variance) needs seeds >= 2")
        self.seeds, self.motion = seeds, motion
        self.model, self.mpc, self.task = model, mpc, task
        super().__init__(context)
        self.discount = discount
        self.penalty, self.lam, self.terminal_value = penalty, lam, terminal_value
        self.prior_samples, self.prior_noise = prior_samples, prior_noise
        self.generator = torch.Generator().manual_seed(seed)
        self.horizon, self.action_dim = mpc.planner.horizon, mpc.planner.action_dim
        self.plan_start: SimState | None = None

    def reset(self, obs: np.ndarray) -> None:
        """Start an episode at `obs` (`uint8 [3, h, w]`)."""
        self.mpc.reset()
        super().reset(obs)

    @torch.no_grad()
    def act(self) -> np.ndarray:
        """The next action `[A]` for the current context."""
        init_mean = prior = None
        if self.mpc.needs_plan:
            obs, ctx_actions = self.context.tensors(self.model.device)
            self.plan_start = self.model.start(obs, ctx_actions, task=self.task, seeds=self.seeds,
                                               generator=self.generator)
            if self.prior_samples > 0 and self.model.has_policy:
                init_mean, prior = self._bc_prior(self.plan_start)
        action = self.mpc.act(lambda plans: self._score(self.plan_start, plans),
                              init_mean=init_mean, prior_samples=prior)
        return action.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def imagine_last_plan(self) -> Imagination:
        """The decoded imagination `frames [1, H, 3, h, w]` of the last plan, from the
        state it was made in (for videos of real next to imagined)."""
        plan = self.mpc.last_plan.actions[None].to(self.model.device)
        return self.model.rollout(self.plan_start.select(torch.zeros(1, dtype=torch.long)), plan, decode=True)

    # ---- internals -------------------------------------------------------------------------
    def _score(self, start: SimState, plans: Tensor) -> Tensor:
        """Discounted (penalised) return of each plan `[N, H, A]` from `start` -> `[N]`."""
        penalised = bool(self.penalty and self.lam)
        native = "flow_instability" if self.penalty == "u_f" else self.penalty
        signals = (native,) if penalised and native in self.model.native_signals else ()
        im = self.model.rollout(start, plans.to(start.features.device), signals=signals)
        if im.rewards is None:
            raise ValueError(f"{self.model.name} has no reward head: MPC has nothing to maximise")
        reward = im.rewards
        if penalised:
            u = signal(self.penalty, self.model, im)
            u = u if self.motion is None else self.motion.normalise(u, self.task)
            reward = penalized_reward(reward, u, self.lam)
        weights = self.discount ** torch.arange(self.horizon, device=reward.device, dtype=reward.dtype)
        score = (reward * weights).sum(-1)
        if self.terminal_value is not None:
            score = score + self.discount ** self.horizon * self.terminal_value(im)
        return score.to(plans.device)

    def _bc_prior(self, start: SimState) -> tuple[Tensor, Tensor]:
        """The BC-policy rollout `[H, A]` and `[prior_samples, H, A]` trajectories: the
        rollout itself and noisy copies of it."""
        im = self.model.rollout(start, None, horizon=self.horizon)
        mean = im.actions[0, :, : self.action_dim].cpu()
        noise = torch.randn(self.prior_samples - 1, *mean.shape, generator=self.generator) * self.prior_noise
        return mean, torch.cat([mean[None], (mean + noise).clamp(-1, 1)])
