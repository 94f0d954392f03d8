"""Cross-entropy method over action sequences, with the iCEM and TD-MPC2 additions.

Shapes: B start states, N candidates, H horizon, A action dims. An objective maps
`[N, H, A] -> [N]` (or, batched, `[B, N, H, A] -> [B, N]`) and is MAXIMISED. Non-finite
scores count as -inf: they never become elites.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]


@dataclass
class Plan:
    """What `CEM.plan` returns (no batch dim for unbatched calls).

    actions: the chosen plan `[B, H, A]`: the final elite mean, or the best sample.
    mean, std: the final sampling distribution `[B, H, A]` (the MPC warm start).
    score: the best finite score seen `[B]` (-inf if none was finite).
    best: the best sample `[B, H, A]`.
    history: the best score after each iteration `[iterations, B]`.
    """
    actions: Tensor
    mean: Tensor
    std: Tensor
    score: Tensor
    best: Tensor
    history: Tensor


def colored_noise(shape: tuple[int, ...], beta: float, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """Unit-variance Gaussian noise whose power spectrum along the LAST axis falls as
    1 / f^beta (iCEM; beta = 0 is white noise, 2 is Brownian-like and smooth in time)."""
    if beta == 0 or shape[-1] < 2:
        return torch.randn(shape, generator=generator, device=device)
    n = shape[-1]
    f = torch.fft.rfftfreq(n, device=device)
    f[0] = f[1]  # no infinite DC power: the lowest frequency's amplitude is reused
    amp = f ** (-beta / 2)
    spec = torch.complex(torch.randn(*shape[:-1], len(f), generator=generator, device=device),
                         torch.randn(*shape[:-1], len(f), generator=generator, device=device)) * amp
    x = torch.fft.irfft(spec, n=n)
    # variance of each sample of irfft: DC and (n even) Nyquist add amp^2, others 4 amp^2 / 2 * 2
    power = amp[0] ** 2 + 4 * (amp[1:-1] ** 2).sum() + (amp[-1] ** 2 if n % 2 == 0 else 4 * amp[-1] ** 2)
    return x / (power.sqrt() / n)


def _checked(scores, expected: torch.Size) -> Tensor:
    if not isinstance(scores, Tensor) or scores.shape != expected:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"objective must return one score per candidate, shape {tuple(expected)}; got {got}")
    return scores


class CEM:
    """Cross-entropy method with momentum, colored noise, kept elites and a policy prior.

    Args:
        action_dim, horizon: plan shape `[H, A]`.
        population: Gaussian samples per iteration.
        elites: candidates whose mean and std become the next distribution.
        iterations: refinement rounds per `plan` call.
        init_std, min_std, max_std: the std starts at `init_std` and stays in [min, max].
        momentum: `mean <- momentum * mean + (1 - momentum) * elite mean` (same for std).
        noise_beta: colored-noise exponent in time (iCEM; 0 = white).
        keep_elites: fraction of the elites carried into the next iteration's candidates.
        low, high: action bounds; every candidate is clipped to them.
        select: "mean" returns the final elite mean, "best" the best sample seen.
        seed: seeds the planner's own generator, so the same seed gives the same plan.
        device: where samples live (default CPU); the objective sees tensors there.
    """

    def __init__(self, action_dim: int, horizon: int, population: int = 256, elites: int = 32,
                 iterations: int = 4, init_std: float = 1.0, min_std: float = 0.05, max_std: float = 2.0,
                 momentum: float = 0.0, noise_beta: float = 0.0, keep_elites: float = 0.0,
                 low: float = -1.0, high: float = 1.0, select: str = "mean", seed: int | None = None,
                 device: torch.device | str | None = None):
        ints = {"action_dim": action_dim, "horizon": horizon, "population": population, "elites": elites,
                "iterations": iterations}
        floats = {"init_std": init_std, "min_std": min_std, "max_std": max_std, "momentum": momentum,
                  "noise_beta": noise_beta, "keep_elites": keep_elites, "low": low, "high": high}
        wrong = [f"{k}={v!r}" for k, v in ints.items() if not isinstance(v, int) or isinstance(v, bool)]
        wrong += [f"{k}={v!r}" for k, v in floats.items()
                  if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)]
        if wrong:
            raise ValueError(f"CEM: {', '.join(ints)} must be integers and the rest finite numbers; "
                             f"got {', '.join(wrong)}")
        checks = {
            "action_dim >= 1": action_dim >= 1, "horizon >= 1": horizon >= 1,
            "population >= 1": population >= 1, "1 <= elites <= population": 1 <= elites <= population,
            "iterations >= 1": iterations >= 1, "0 < min_std <= init_std <= max_std": 0 < min_std <= init_std <= max_std,
            "0 <= momentum < 1": 0 <= momentum < 1, "noise_beta >= 0": noise_beta >= 0,
            "0 <= keep_elites <= 1": 0 <= keep_elites <= 1, "low < high": low < high,
            "select in ('mean', 'best')": select in ("mean", "best"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"CEM: need {', '.join(bad)}")
        self.action_dim, self.horizon = action_dim, horizon
        self.population, self.elites, self.iterations = population, elites, iterations
        self.init_std, self.min_std, self.max_std = init_std, min_std, max_std
        self.momentum, self.noise_beta, self.keep_elites = momentum, noise_beta, keep_elites
        self.low, self.high, self.select = low, high, select
        self.device = torch.device(device or "cpu")
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed if seed is not None else torch.seed())

    def plan(self, objective: Objective, *, init_mean: Tensor | None = None, init_std: Tensor | None = None,
             prior_samples: Tensor | None = None, batch: int | None = None) -> Plan:
        """Maximise `objective` over action sequences.

        Args:
            objective: `[N, H, A] -> [N]`, or with `batch`: `[B, N, H, A] -> [B, N]`.
            init_mean: starting mean `[H, A]` (or `[B, H, A]`), e.g. a shifted previous plan
                or a BC-policy rollout; zeros when None.
            init_std: starting std, same shape (default `init_std` everywhere).
            prior_samples: `[P, H, A]` (or `[B, P, H, A]`) trajectories, e.g. from a policy
                prior, scored alongside the Gaussian samples in every iteration.
            batch: plan for B start states at once (the objective is then batched).
        """
        B = batch or 1
        shape = (B, self.horizon, self.action_dim)
        mean = self._as_batched(init_mean, shape, "init_mean", 0.0)
        std = self._as_batched(init_std, shape, "init_std", self.init_std).clamp(self.min_std, self.max_std)
        prior = None
        if prior_samples is not None:
            prior = prior_samples.to(self.device, torch.float32)
            if prior.dim() == 3:
                prior = prior.expand(B, *prior.shape)
            if prior.shape[0] != B or prior.shape[2:] != shape[1:]:
                raise ValueError(f"prior_samples must be [P, {self.horizon}, {self.action_dim}] "
                                 f"(or [B, P, H, A] with B={B}), got {tuple(prior_samples.shape)}")
            if not torch.isfinite(prior).all():
                raise ValueError("prior_samples contain non-finite values")
            prior = prior.clamp(self.low, self.high)
        score_fn = objective if batch is not None else (lambda a: _checked(objective(a[0]), a.shape[1:2])[None])
        n_keep = round(self.keep_elites * self.elites)
        kept = None
        best, best_score = mean.clone(), torch.full((B,), -math.inf, device=self.device)
        history = []
        for _ in range(self.iterations):
            noise = colored_noise((B, self.population, self.action_dim, self.horizon), self.noise_beta,
                                  self.generator, self.device).transpose(-1, -2)
            cand = (mean[:, None] + std[:, None] * noise).clamp(self.low, self.high)
            cand = torch.cat([c for c in (cand, prior, kept) if c is not None], dim=1)
            scores = _checked(score_fn(cand), cand.shape[:2]).to(self.device, torch.float32)
            scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))
            top_scores, idx = scores.topk(self.elites, dim=1)
            elite = cand.gather(1, idx[..., None, None].expand(-1, -1, *shape[1:]))
            improved = top_scores[:, 0] > best_score
            best = torch.where(improved[:, None, None], elite[:, 0], best)
            best_score = torch.where(improved, top_scores[:, 0], best_score)
            history.append(best_score.clone())
            mean, std = self._refit(mean, std, elite, top_scores)
            kept = elite[:, :n_keep] if n_keep else None
        actions = mean if self.select == "mean" else best
        history = torch.stack(history)
        lost = int((best_score == -math.inf).sum())
        if lost:
            warnings.warn(f"CEM: the objective was non-finite for every candidate of {lost} of {B} start "
                          "state(s); their plan is the initial mean (Plan.score is -inf)", RuntimeWarning, stacklevel=2)
        if batch is None:
            return Plan(actions[0], mean[0], std[0], best_score[0], best[0], history[:, 0])
        return Plan(actions, mean, std, best_score, best, history)

    def _as_batched(self, x: Tensor | None, shape: tuple[int, int, int], name: str, fill: float) -> Tensor:
        if x is None:
            return torch.full(shape, fill, device=self.device)
        x = x.to(self.device, torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains non-finite values")
        if x.shape == shape[1:]:
            x = x.expand(shape)
        if x.shape != shape:
            raise ValueError(f"{name} must be [{shape[1]}, {shape[2]}] or [B={shape[0]}, ...], got {tuple(x.shape)}")
        return x.clone()

    def _refit(self, mean: Tensor, std: Tensor, elite: Tensor, elite_scores: Tensor) -> tuple[Tensor, Tensor]:
        """Elite mean and std over the finite elites; rows with none keep their distribution."""
        w = torch.isfinite(elite_scores).float()[..., None, None]  # [B, E, 1, 1]
        n = w.sum(1)
        safe = n.clamp(min=1)
        e_mean = (w * elite).sum(1) / safe
        e_std = ((w * (elite - e_mean[:, None]).pow(2)).sum(1) / safe).sqrt()
        has = n > 0
        new_mean = torch.where(has, self.momentum * mean + (1 - self.momentum) * e_mean, mean)
        new_std = torch.where(has, self.momentum * std + (1 - self.momentum) * e_std, std)
        return new_mean, new_std.clamp(self.min_std, self.max_std)
