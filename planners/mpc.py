"""Receding-horizon control around a planner: plan, execute the first k actions, replan."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import torch
from torch import Tensor

from planners.cem import CEM, Objective, Plan


class MPC:
    """Model-predictive control with a shifted warm start.

    Every `replan_every` steps it plans a fresh `[H, A]` sequence and queues its first
    `replan_every` actions. The next plan starts from the last mean shifted by the steps
    executed since (the tail filled with zeros), unless the caller passes `init_mean`
    (e.g. a BC-policy rollout). Call `reset()` between episodes.

    With a `margin`, a given `init_mean` is a trust region: the planned sequence replaces it
    only if the objective scores the plan at least `margin` above it (both re-scored
    together), so a noisy model cannot talk a good prior policy out of its action.
    `prior_kept` and `plans` count how often that happened.
    """

    def __init__(self, planner: CEM, replan_every: int = 1, warm_start: bool = True, margin: float | None = None):
        if not isinstance(replan_every, int) or not 1 <= replan_every <= planner.horizon:
            raise ValueError(f"replan_every must be an integer in [1, horizon={planner.horizon}], got {replan_every!r}")
        if margin is not None and (not isinstance(margin, (int, float)) or not 0 <= margin < math.inf):
            raise ValueError(f"margin must be a finite number >= 0 (or None), got {margin!r}")
        self.planner, self.replan_every, self.warm_start, self.margin = planner, replan_every, warm_start, margin
        self.last_plan: Plan | None = None
        self.plans = self.prior_kept = 0
        self.reset()

    def reset(self) -> None:
        """Forget the queued actions and the warm start (new episode)."""
        self._queue: deque[Tensor] = deque()
        self._mean: Tensor | None = None
        self.last_plan = None

    @property
    def needs_plan(self) -> bool:
        """True when the next `act` call will plan (the queue is empty)."""
        return not self._queue

    def shifted_mean(self) -> Tensor | None:
        """The last plan's mean advanced by `replan_every` steps `[H, A]`, or None."""
        if self._mean is None or not self.warm_start:
            return None
        k = self.replan_every
        return torch.cat([self._mean[k:], torch.zeros_like(self._mean[:k])])

    def act(self, objective: Objective, *, init_mean: Tensor | None = None,
            prior_samples: Tensor | None = None) -> Tensor:
        """The next action `[A]`. `objective` (`[N, H, A] -> [N]`) is only called when a
        new plan is due; `init_mean` overrides the shifted warm start for that plan."""
        if self.needs_plan:
            start = init_mean if init_mean is not None else self.shifted_mean()
            plan = self.planner.plan(objective, init_mean=start, prior_samples=prior_samples)
            self.plans += 1
            if self.margin is not None and init_mean is not None and self._prior_wins(objective, plan, init_mean):
                self.prior_kept += 1
                plan = replace(plan, actions=init_mean.to(plan.actions))
            self.last_plan, self._mean = plan, plan.mean
            self._queue.extend(plan.actions[: self.replan_every])
        return self._queue.popleft()

    def _prior_wins(self, objective: Objective, plan: Plan, prior: Tensor) -> bool:
        plan_score, prior_score = objective(torch.stack([plan.actions, prior.to(plan.actions)])).tolist()
        return plan_score - prior_score < self.margin
