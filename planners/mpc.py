"""Receding-horizon control around a planner: plan, execute the first k actions, replan."""
from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from planners.cem import CEM, Objective, Plan


class MPC:
    """Model-predictive control with a shifted warm start.

    Every `replan_every` steps it plans a fresh `[H, A]` sequence and queues its first
    `replan_every` actions. The next plan starts from the last mean shifted by the steps
    executed since (the tail filled with zeros), unless the caller passes `init_mean`
    (e.g. a BC-policy rollout). Call `reset()` between episodes.
    """

    def __init__(self, planner: CEM, replan_every: int = 1, warm_start: bool = True):
        if not 1 <= replan_every <= planner.horizon:
            raise ValueError(f"replan_every must be in [1, horizon={planner.horizon}], got {replan_every}")
        self.planner, self.replan_every, self.warm_start = planner, replan_every, warm_start
        self.last_plan: Plan | None = None
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
            self.last_plan, self._mean = plan, plan.mean
            self._queue.extend(plan.actions[: self.replan_every])
        return self._queue.popleft()
