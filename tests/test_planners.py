"""CEM and MPC on plain functions: optima, bounds, non-finite scores, priors, seeds."""
import math
import subprocess
import sys

import pytest
import torch

from planners import CEM, MPC, colored_noise


def quadratic(target):
    return lambda a: -(a - target).pow(2).sum((-2, -1))


def test_finds_the_maximum_of_a_quadratic():
    target = torch.tensor([[0.3, -0.6]] * 5)
    plan = CEM(2, 5, population=128, elites=16, iterations=8, seed=0).plan(quadratic(target))
    assert plan.actions.shape == (5, 2)
    assert (plan.actions - target).abs().max() < 0.05


def test_finds_the_global_maximum_of_a_multimodal_function():
    # two peaks in 2-D: a broad low one at (-0.6, -0.6), a narrower high one at (0.7, 0.5)
    peak = torch.tensor([0.7, 0.5])

    def f(a):
        x = a[..., 0, :]
        return torch.exp(-((x + 0.6) ** 2).sum(-1) / 0.2) + 2.0 * torch.exp(-((x - peak) ** 2).sum(-1) / 0.05)
    found = [(CEM(2, 1, population=512, elites=8, iterations=8, seed=s).plan(f).actions[0] - peak).abs().max() < 0.05
             for s in range(5)]
    assert sum(found) >= 4


def test_respects_bounds():
    cem = CEM(3, 4, population=64, elites=8, iterations=4, low=-0.5, high=0.25, init_std=2.0, seed=0)
    seen = []
    plan = cem.plan(lambda a: seen.append(a.clone()) or a.sum((-2, -1)))  # optimum outside
    every = torch.cat(seen)
    assert every.min() >= -0.5 and every.max() <= 0.25
    assert plan.actions.min() >= -0.5 and plan.actions.max() <= 0.25
    assert plan.actions.mean() > 0.15  # pushed towards the upper bound


def test_non_finite_scores_never_become_elites():
    def f(a):
        s = -(a - 0.5).pow(2).sum((-2, -1))
        bad = a[..., 0, 0] < 0.0  # half of the first population
        s = torch.where(bad & (a[..., 0, 1] < 0), torch.full_like(s, math.nan), s)
        return torch.where(bad & (a[..., 0, 1] >= 0), torch.full_like(s, math.inf), s)
    plan = CEM(2, 3, population=64, elites=8, iterations=5, seed=1).plan(f)
    assert torch.isfinite(plan.score)
    assert plan.best[0, 0] >= 0  # no NaN/inf candidate was ever taken as the best
    assert (plan.actions - 0.5).abs().max() < 0.15


def test_all_non_finite_keeps_the_distribution():
    init = torch.full((2, 1), 0.3)
    plan = CEM(1, 2, population=16, elites=4, iterations=2, seed=0).plan(
        lambda a: torch.full(a.shape[:1], math.nan), init_mean=init)
    assert plan.score == -math.inf
    assert torch.equal(plan.mean, init)


def test_prior_injection_helps_when_the_prior_is_good():
    target = torch.linspace(-0.9, 0.9, 12)[:, None].repeat(1, 4)  # far from the zero mean
    f = quadratic(target)
    kw = dict(population=16, elites=4, iterations=2, init_std=0.5, seed=3)
    without = CEM(4, 12, **kw).plan(f).score
    with_prior = CEM(4, 12, **kw).plan(f, prior_samples=target[None] + 0.01).score
    assert with_prior > without + 1.0


def test_same_seed_same_plan_and_different_seed_differs():
    f = quadratic(torch.full((6, 2), 0.2))
    a = CEM(2, 6, population=32, elites=4, iterations=3, seed=7, noise_beta=2.0).plan(f).actions
    b = CEM(2, 6, population=32, elites=4, iterations=3, seed=7, noise_beta=2.0).plan(f).actions
    c = CEM(2, 6, population=32, elites=4, iterations=3, seed=8, noise_beta=2.0).plan(f).actions
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_select_best_returns_the_best_sample_and_momentum_slows_the_mean():
    f = quadratic(torch.full((3, 1), 0.8))
    best = CEM(1, 3, population=64, elites=8, iterations=1, select="best", seed=0).plan(f)
    assert torch.equal(best.actions, best.best)
    fast = CEM(1, 3, population=64, elites=8, iterations=1, seed=0).plan(f).mean
    slow = CEM(1, 3, population=64, elites=8, iterations=1, momentum=0.9, seed=0).plan(f).mean
    assert torch.allclose(slow, 0.1 * fast, atol=1e-6)


def test_kept_elites_carry_over():
    def carried(keep):
        calls = []
        f = quadratic(torch.full((4, 2), -0.4))
        CEM(2, 4, population=8, elites=4, iterations=3, keep_elites=keep, seed=0).plan(
            lambda a: calls.append(a.clone()) or f(a))
        elites = calls[0][f(calls[0]).topk(4).indices]  # iteration 0's elites [4, H, A]
        return sum(bool((calls[1] == e).all((-2, -1)).any()) for e in elites)
    assert carried(1.0) == 4 and carried(0.0) == 0


def test_batched_planning_over_start_states():
    targets = torch.tensor([0.5, -0.5, 0.0])[:, None, None, None]  # [B, 1, 1, 1]
    calls = []

    def f(a):  # [B, N, H, A] -> [B, N]
        calls.append(a.shape)
        return -(a - targets).pow(2).sum((-2, -1))
    plan = CEM(2, 4, population=64, elites=8, iterations=6, seed=0).plan(f, batch=3)
    assert calls[0][0] == 3 and plan.actions.shape == (3, 4, 2)
    assert torch.allclose(plan.actions, targets[:, 0].expand(3, 4, 2), atol=0.1)


def test_colored_noise_is_unit_variance_and_smooth():
    g = torch.Generator().manual_seed(0)
    for n in (15, 16):
        white, red = colored_noise((4000, n), 0.0, g), colored_noise((4000, n), 2.0, g)
        assert abs(red.std().item() - 1) < 0.05
        lag1 = lambda x: (x[:, 1:] * x[:, :-1]).mean() / x.var()
        assert lag1(red) > 0.7 > 0.1 > abs(lag1(white))


def test_bad_arguments_raise_one_clear_error():
    with pytest.raises(ValueError, match="elites"):
        CEM(2, 4, population=8, elites=16)
    with pytest.raises(ValueError, match="one score per candidate"):
        CEM(2, 4, population=8, elites=2, seed=0).plan(lambda a: a.sum(-1))
    with pytest.raises(ValueError, match="init_mean"):
        CEM(2, 4, population=8, elites=2, seed=0).plan(quadratic(0.0), init_mean=torch.zeros(3, 2))


def test_mpc_replans_every_k_steps_and_warm_starts_by_shifting():
    cem = CEM(1, 4, population=32, elites=4, iterations=2, seed=0)
    mpc = MPC(cem, replan_every=2)
    calls = []
    f = lambda a: calls.append(1) or -(a - 0.5).pow(2).sum((-2, -1))
    for _ in range(4):
        mpc.act(f)
    assert len(calls) == 2 * 2  # two plans of two iterations each
    mean = mpc.last_plan.mean
    assert torch.equal(mpc.shifted_mean(), torch.cat([mean[2:], torch.zeros(2, 1)]))
    mpc.reset()
    assert mpc.shifted_mean() is None and mpc.needs_plan


def test_mpc_uses_the_given_init_mean():
    seen = {}
    cem = CEM(1, 3, population=4, elites=2, iterations=1, init_std=0.05, min_std=0.01, seed=0)
    MPC(cem).act(lambda a: seen.setdefault("a", a) is None or a.sum((-2, -1)), init_mean=torch.full((3, 1), 0.7))
    assert (seen["a"] - 0.7).abs().max() < 0.3


def test_mpc_margin_keeps_the_prior_unless_the_plan_clearly_beats_it():
    prior = torch.zeros(3, 1)
    objective = lambda a: -(a - 0.5).pow(2).sum((-2, -1))  # noqa: E731; the prior scores -0.75, 0.5 scores 0

    def first_action(margin):
        mpc = MPC(CEM(1, 3, population=64, elites=8, iterations=3, init_std=0.5, seed=0), margin=margin)
        return mpc.act(objective, init_mean=prior).item(), mpc
    planned, mpc = first_action(None)
    assert abs(planned - 0.5) < 0.15 and mpc.prior_kept == 0
    assert abs(first_action(0.5)[0] - 0.5) < 0.15  # the plan's gain (~0.75) clears the margin
    kept, mpc = first_action(1.0)                     # it does not clear this one: the prior acts
    assert kept == 0.0 and (mpc.plans, mpc.prior_kept) == (1, 1)
    with pytest.raises(ValueError, match="margin"):
        MPC(CEM(1, 3), margin=-1.0)


def test_cem_from_a_plain_function_needs_no_other_mirage_import():
    code = ("import sys, torch\n"
            "from planners import CEM\n"
            "p = CEM(2, 3, population=64, elites=8, iterations=8, seed=0).plan(lambda a: -(a - 0.25).pow(2).sum((-2, -1)))\n"
            "assert (p.actions - 0.25).abs().max() < 0.1\n"
            "mirage = {'envs', 'replay', 'world_models', 'uncertainty', 'agents'}\n"
            "assert not mirage & set(m.split('.')[0] for m in sys.modules), sys.modules.keys()\n")
    subprocess.run([sys.executable, "-c", code], check=True)
