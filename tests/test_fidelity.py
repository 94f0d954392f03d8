"""Metrics that see objects, and the coverage-aware sampler inside one task.

toy-reach with the expert mirrors cup-catch's failure: the agent reaches the goal within
the first few steps and stays there, so most frames show it at the goal and the approach
(the part that needs control) is rare. The metrics split that start phase from the rest;
sampling windows uniformly over reward levels draws more of it.
"""
import numpy as np
import pytest
import torch

import world_models
from replay import EpisodeStore, collect, make_expert
from uncertainty.fidelity import (MLPProbe, StateProbe, WindowSampler, fidelity_report, foreground_mask,
                                 foreground_psnr)
from world_models.training import TrainConfig, train

START = 8  # toy-reach's expert crosses the arena in at most 15 steps of 0.15


@pytest.fixture(scope="module")
def expert_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    train_store, held = EpisodeStore(root / "train"), EpisodeStore(root / "held")
    collect("toy-reach", "expert", train_store, 300, size=16, seed=0, progress=False)
    collect("toy-reach", "expert", held, 30, size=16, seed=9, progress=False)
    return train_store, held


@pytest.fixture(scope="module")
def report(expert_data, tmp_path_factory):
    train_store, held = expert_data
    torch.manual_seed(0)
    model = world_models.make("dreamer4", "tiny")
    cfg = model.cfg
    # half the preset's steps: enough for the metrics to tell the phases apart
    tc = TrainConfig(steps={"tokenizer": 900, "dynamics": 550}, batch=cfg.batch, seq_len=cfg.seq_len, lr=cfg.lr,
                     progress=False)
    train(model, train_store, train_store.episodes(), tmp_path_factory.mktemp("run"), tc)
    return fidelity_report(model, train_store, train_store.episodes(), held.episodes(), "toy-reach",
                           windows=256, horizon=4, start_steps=START, expert=make_expert("toy-reach")())


def test_foreground_psnr_sees_a_vanished_object():
    bg = torch.zeros(3, 16, 16)
    real = bg.clone()
    real[:, 4:6, 4:6] = 1.0                      # a 4-pixel object
    assert foreground_mask(real, bg).sum() == 4
    assert foreground_psnr(bg[None], real[None], bg) < 1.0      # it vanished: foreground PSNR ~0 dB
    full = -10 * torch.log10((bg - real).pow(2).mean())
    assert full > 15                                            # while full-frame PSNR looks fine
    assert np.isnan(foreground_psnr(bg[None], bg[None], bg))    # nothing moves: no number


def test_state_probe_recovers_a_linear_state_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    states = torch.stack([x[:, 0] * 2 + x[:, 3], torch.randn(500, generator=g)], 1)
    probe = StateProbe().fit(x[:400], states[:400])
    r2 = probe.r2(x[400:], states[400:])
    assert r2[0] > 0.99 and r2[1] < 0.1


def test_mlp_probe_reads_a_nonlinear_state_that_ridge_misses():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3000, 8, generator=g) * 2 - 1
    states = torch.stack([x[:, 0] * x[:, 1] + x[:, 2].abs(), torch.randn(3000, generator=g)], 1)  # no linear part
    ridge = StateProbe().fit(x[:2500], states[:2500]).r2(x[2500:], states[2500:])
    mlp = MLPProbe(hidden=64, steps=1500, seed=0).fit(x[:2500], states[:2500]).r2(x[2500:], states[2500:])
    assert ridge[0] < 0.2 and mlp[0] > 0.8
    assert mlp[1] < 0.1  # and no more from noise


def test_window_sampler_splits_phases(tmp_path):
    store = EpisodeStore(tmp_path)
    collect("toy-reach", "random", store, 3, size=8, seed=0, progress=False)
    sampler = WindowSampler(store, store.episodes(), context=2, horizon=3, start_steps=10)
    rng = np.random.default_rng(0)
    start, rest = sampler.sample(64, "start", rng), sampler.sample(64, "rest", rng)
    assert (start.start + 1 < 10).all() and (rest.start + 1 >= 10).all()  # the last context frame's index
    assert start.frames.shape == (64, 5, 3, 8, 8) and start.states.shape == (64, 5, 4)


def test_reward_weighting_draws_the_rare_approach_more_often(expert_data):
    store = expert_data[0]
    rng = np.random.default_rng(0)
    share = {w: (store.sample(2048, 2, w, rng=rng)["rewards"][:, 0] < 0.9).float().mean().item()
             for w in ("frame", "reward")}
    print(f"windows before the goal is reached: {share}")
    assert share["reward"] > 2 * share["frame"]


def test_metrics_see_the_rare_approach(report):
    print("  ".join(f"{k} {v:.3f}" for k, v in sorted(report.items())))
    # the reward head errs more in the rare approach phase than at the goal
    assert report["start/reward_mae"] > 2 * report["rest/reward_mae"]
    assert report["start/rollout_fg_psnr"] < report["rest/rollout_fg_psnr"]  # and its rollouts lose the moving agent
    assert report["start/bc_mse"] > 2 * report["rest/bc_mse"]  # and its BC head misses the approach (0.15 vs 0.01)
    # the linear probe reads the agent worse in the rare phase; the MLP probe reads what is there
    assert report["start/probe_r2/x"] < report["rest/probe_r2/x"]
    assert report["start/mlp_probe_r2/x"] > max(0.9, report["start/probe_r2/x"])


def test_the_expert_target_is_the_recorded_action_on_expert_data(report):
    # the expert's action is read at the state the recorded action was taken in
    for phase in ("start", "rest"):
        assert report[f"{phase}/bc_mse_expert"] == pytest.approx(report[f"{phase}/bc_mse"], abs=1e-7)
        assert report[f"{phase}/bc_mse_expert_mean_action"] == pytest.approx(report[f"{phase}/bc_mse_mean_action"], abs=1e-7)
