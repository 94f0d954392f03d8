"""`MPCAgent`: plan through a world model's step API with CEM-MPC, a terminal value and a
policy prior (value-guided MPC, as TD-MPC2 and LOOP do it)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from agents.context import ContextAgent
from planners import MPC
from uncertainty import check_signal, signal
from world_models import Imagination, SimState, Simulator
from world_models.imagined import ImaginedReward

PRIORS = ("bc", "policy", "residual", "none")


class MPCAgent(ContextAgent):
    """Receding-horizon control with a world model.

    A candidate plan `[H, A]` scores

        Σ_h γ^h (w r_h - λ u_h + β u_h)  +  γ^H V(f_H)

    where `r` are the model's predicted rewards, `u` a per-step uncertainty signal by name
    (`uncertainty.signal`: `"u_r"`, `"u_s"`, `"u_f"` or a native one such as
    `"token_entropy"`), divided by the scene motion when `motion` is given. The step term
    is `world_models.ImaginedReward(w, λ, β)`, the builder MOPO's penalty (λ) and curiosity's
    bonus (β, see `CuriosityAgent`) share; `V` is a terminal value of the features of the plan's last imagined frame — for example
    `Learner.state_value`, Q(f, π(f)) of an actor and critic learned offline.

    The prior warm-starts the CEM mean with a rollout from the current state and, with
    `prior_samples - 1` noisy copies, joins every iteration's candidates: `"bc"` rolls out
    the model's BC head, `"policy"` the given `policy` (features -> actions, e.g. the
    offline actor), `"none"` plans without one.

    `"residual"` keeps the policy in the loop: a plan `[H, A]` is a correction δ added to
    `policy(f_h)` at every step, both in imagination (the policy reads the imagined
    features) and in the real env, where each executed action is `policy(f_t) + δ` of the
    real frame even between replans. δ = 0 is the policy itself: it joins every iteration,
    with `prior_samples - 1` noisy copies, and the warm start is the last plan's δ shifted.

    Args:
        model: any `Simulator` (a trained world model, or the `Oracle`).
        mpc: the planner loop; its CEM's action_dim must be the task's.
        task: the task name passed to `start`.
        context: frames of history the model sees (with the actions between them).
        discount: γ.
        signal: the uncertainty signal's name, or None.
        lam, bonus: its weight as a penalty (λ) or as a bonus (β); at most one is > 0.
        reward_weight: w, the weight of the model's reward (default 1, or 0 for a model
            without a reward head; 0: the signal and the value alone).
        seeds: samples per plan (`"u_s"` needs >= 2; rewards are averaged over them).
        motion: `MotionStats` or `RunningMotion` to normalise the signal by, or None.
        value: features `[N, F]` -> `[N]`, the terminal value, or None (reward only).
        policy: features `[N, F]` -> actions `[N, A]`, for `prior="policy"` or `"residual"`.
        prior: `"bc"`, `"policy"`, `"residual"` or `"none"`; `"bc"` falls back to none
            without a BC head.
        prior_samples: prior trajectories injected per iteration (0 disables the prior).
        prior_noise: std of the Gaussian perturbation of the extra prior trajectories.
        seed: seeds the prior noise and the model's sampling.
    """

    def __init__(self, model: Simulator, mpc: MPC, task: str, *, context: int = 1, discount: float = 1.0,
                 signal: str | None = None, lam: float = 0.0, bonus: float = 0.0, reward_weight: float | None = None,
                 seeds: int = 1, motion=None, value: Callable[[Tensor], Tensor] | None = None,
                 policy: Callable[[Tensor], Tensor] | None = None, prior: str = "bc", prior_samples: int = 8,
                 prior_noise: float = 0.1, seed: int = 0):
        reward_weight = (1.0 if model.has_reward else 0.0) if reward_weight is None else reward_weight
        earn = ImaginedReward(reward_weight, lam, bonus) if (reward_weight or lam or bonus) else None
        if earn is not None and earn.uses_signal:
            if signal is None:
                raise ValueError("a penalty (lam) or bonus > 0 needs a signal name")
            check_signal(signal, model, seeds)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        if prior in ("policy", "residual") and policy is None:
            raise ValueError(f"prior={prior!r} needs a policy (features -> actions)")
        if prior == "residual" and mpc.margin is not None:
            raise ValueError("prior='residual' plans corrections to the policy: the margin's trust region "
                             "(keep the prior's plan) does not apply; set margin to None")
        if earn is not None and earn.reward and not model.has_reward:
            raise ValueError(f"{model.name} has no reward head: give reward_weight=0 (with a value or a bonus)")
        if earn is None and value is None:
            raise ValueError("every step weight is 0 and no value was given: nothing to maximise")
        super().__init__(context)
        self.model, self.mpc, self.task = model, mpc, task
        self.discount, self.seeds, self.motion = discount, seeds, motion
        self.earn, self.signal, self.value, self.policy = earn, signal, value, policy
        self.prior = "none" if prior == "bc" and not model.has_policy else prior
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
        init_mean = prior = base = None
        residual = self.prior == "residual"
        if self.mpc.needs_plan or residual:
            obs, ctx_actions = self.context.tensors(self.model.device)
            start = self.model.start(obs, ctx_actions, task=self.task, seeds=self.seeds, generator=self.generator)
            if residual:
                base = self.policy(start.features[:1])[0, : self.action_dim].cpu().float()
            if self.mpc.needs_plan:
                self.plan_start = start
                if self.prior != "none" and self.prior_samples > 0:
                    init_mean, prior = self._prior(start)
        action = self.mpc.act(lambda plans: self._score(self.plan_start, plans),
                              init_mean=init_mean, prior_samples=prior)
        if residual:
            action = (base + action.cpu()).clamp(self.mpc.planner.low, self.mpc.planner.high)
        return action.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def imagine_last_plan(self) -> Imagination:
        """The decoded imagination `frames [1, H, 3, h, w]` of the last plan, from the
        state it was made in (for videos of real next to imagined)."""
        plan = self.mpc.last_plan.actions[None].to(self.model.device)
        start = self.plan_start.select(torch.zeros(1, dtype=torch.long))
        return self.model.rollout(start, self._actions(plan), horizon=self.horizon, decode=True)

    # ---- internals -------------------------------------------------------------------------
    def _score(self, start: SimState, plans: Tensor) -> Tensor:
        """`Σ_h γ^h (w r_h - λ u_h + β u_h) + γ^H V(f_H)` of each plan `[N, H, A]` from `start` -> `[N]`."""
        uses_signal = self.earn is not None and self.earn.uses_signal
        native = "flow_instability" if self.signal == "u_f" else self.signal
        signals = (native,) if uses_signal and native in self.model.native_signals else ()
        plans = plans.to(start.features.device)
        if self.prior == "residual":
            start = start.select(torch.zeros(len(plans), dtype=torch.long, device=start.features.device))
        im = self.model.rollout(start, self._actions(plans), horizon=self.horizon, signals=signals)
        weights = self.discount ** torch.arange(self.horizon, device=im.latents.device, dtype=torch.float32)
        score = torch.zeros(len(plans), device=im.latents.device)
        if self.earn is not None:
            u = signal(self.signal, self.model, im) if uses_signal else None
            if u is not None and self.motion is not None:
                u = self.motion.normalise(u, self.task)
            score = (self.earn(im.rewards, u) * weights).sum(-1)
        if self.value is not None:
            score = score + self.discount ** self.horizon * self.value(im.features[:, -1]).to(score.device)
        return score.to(plans.device)

    def _actions(self, plans: Tensor) -> Tensor | Callable[[Tensor], Tensor]:
        """What `rollout` executes for plans `[N, H, A]`: the plans themselves, or (residual)
        a policy that adds step h's correction to the policy's action on the features."""
        if self.prior != "residual":
            return plans
        h = iter(range(self.horizon))

        def corrected(features: Tensor) -> Tensor:
            base = self.policy(features)[:, : self.action_dim]
            return (base + plans[:, next(h)].to(base)).clamp(self.mpc.planner.low, self.mpc.planner.high)
        return corrected

    def _prior(self, start: SimState) -> tuple[Tensor | None, Tensor]:
        """The prior's warm start `[H, A]` (None: the shifted last plan) and
        `[prior_samples, H, A]` trajectories: the prior itself and noisy copies of it.
        A rolled-out prior is its imagined actions; the residual prior is δ = 0."""
        if self.prior == "residual":
            zero = torch.zeros(self.horizon, self.action_dim)
            noise = torch.randn(self.prior_samples - 1, *zero.shape, generator=self.generator) * self.prior_noise
            return None, torch.cat([zero[None], noise])
        im = self.model.rollout(start, None if self.prior == "bc" else self.policy, horizon=self.horizon)
        mean = im.actions[0, :, : self.action_dim].cpu().float()
        noise = torch.randn(self.prior_samples - 1, *mean.shape, generator=self.generator) * self.prior_noise
        return mean, torch.cat([mean[None], (mean + noise).clamp(-1, 1)])
