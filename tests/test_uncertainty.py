"""Uncertainty predictors, retracing, baselines, penalties and metrics on constructed cases."""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import world_models
from replay import EpisodeStore, collect
from uncertainty import (KNNDistance, MotionStats, RunningMotion, auroc, latent_motion,
                         retracing_actions, retracing_uncertainty, round_trip_residual,
                         seed_variance, signal, spearman, ssim, step_signal, step_signal_names)
from uncertainty.step_signals import FeatureEnsembleSignal, RetracingSignal
from world_models.base import SimState, Simulator, Step


class PixelModel(torch.nn.Module):
    """A 'world model' whose latents are the frames themselves, optionally quantised on decode."""

    name, native_signals = "pixels", ()

    def __init__(self, levels: int | None = None):
        super().__init__()
        self.levels = levels
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.dummy.device

    def encode(self, frames):
        return frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()

    def decode(self, latents):
        return latents if self.levels is None else (latents * self.levels).round() / self.levels


def test_identity_tokenizer_gives_zero_round_trip_residual():
    z = torch.rand(2, 3, 3, 8, 8)
    assert round_trip_residual(PixelModel(), z).abs().max() == 0
    lossy = round_trip_residual(PixelModel(levels=4), z)
    assert lossy.shape == (2, 3) and (lossy > 0).all()


def test_identical_seeds_give_zero_seed_variance():
    same = torch.randn(1, 2, 5, 4).expand(3, -1, -1, -1)
    assert seed_variance(same).abs().max() == 0
    spread = torch.stack([torch.zeros(2, 5, 4), torch.full((2, 5, 4), 2.0)])
    torch.testing.assert_close(seed_variance(spread), torch.ones(2, 5))  # var of {0, 2} is 1
    with pytest.raises(ValueError, match="seeds >= 2"):
        seed_variance(same[:1])


def test_whale_greedy_seeds_agree_and_sampled_seeds_do_not():
    torch.manual_seed(0)
    model = world_models.make("whale", "tiny").eval()
    obs = torch.rand(1, 3, 16, 16)
    greedy = model.imagine(obs, torch.zeros(2, 3, 2), seeds=3, temperature=0)
    assert signal("u_s", model, greedy).abs().max() == 0
    sampled = model.imagine(obs, torch.zeros(2, 3, 2), seeds=3, temperature=1.0)
    assert (signal("u_s", model, sampled) > 0).all()
    with pytest.raises(ValueError, match="offers"):
        signal("flow_instability", model, sampled)


def test_retracing_actions_sum_correctly_and_stay_in_bounds():
    g = torch.Generator().manual_seed(0)
    actions = torch.rand(5, 4, 3, generator=g) * 2 - 1  # 4 steps, dims 0-1 accumulate, dim 2 a gripper
    retr = retracing_actions(actions, (0, 1))
    torch.testing.assert_close(retr[..., :2].sum(1), actions[..., :2].sum(1))
    assert torch.allclose(retr[..., :2], retr[:, :1, :2].expand(-1, 4, -1))  # k equal steps
    torch.testing.assert_close(retr[..., 2], actions[:, -1:, 2].expand(-1, 4))  # gripper keeps its last value
    assert retr.abs().max() <= 1.0
    with pytest.raises(ValueError, match="delta_pose"):
        retracing_actions(actions, ())


def test_retracing_uncertainty_runs_on_delta_pose_and_refuses_torque_tasks():
    torch.manual_seed(0)
    model = world_models.make("whale", "tiny").eval()
    frames, actions = torch.rand(2, 4, 3, 16, 16), torch.rand(2, 4, 2) * 2 - 1
    out = retracing_uncertainty(model, frames, actions, task="toy-reach", ks=(1, 2, 3))
    assert out.uncertainty.shape == (2,) and out.disagreement.shape == (2, 3)
    assert torch.isfinite(out.uncertainty).all() and (out.uncertainty > 0).all()
    assert out.entropy_signal == "token_entropy" and out.distance in ("lpips", "latent_rms")
    with pytest.raises(ValueError, match="delta_pose"):
        retracing_uncertainty(model, frames, torch.zeros(2, 4, 1), task="cup-catch")
    with pytest.raises(ValueError, match="retracing steps"):
        retracing_uncertainty(model, frames, actions, task="toy-reach", ks=(4,))


def test_motion_normalisation_divides_by_the_task_value(tmp_path):
    stats = MotionStats({"toy-reach": 2.0, "cup-catch": 4.0})
    u = torch.tensor([[1.0, 8.0]])
    torch.testing.assert_close(stats.normalise(u, "cup-catch"), torch.tensor([[0.25, 2.0]]))
    torch.testing.assert_close(stats.normalise(u, "toy-reach"), torch.tensor([[0.5, 4.0]]))
    stats.save(tmp_path)
    assert MotionStats.load(tmp_path).per_task == stats.per_task
    with pytest.raises(KeyError, match="finger"):
        stats("finger-spin")
    running = RunningMotion()
    running.update(torch.tensor([[[0.0], [1.0], [3.0]]]))  # steps of RMS 1 and 2
    assert running("toy-reach") == pytest.approx(1.5)


def test_motion_fit_is_the_mean_rms_latent_change(tmp_path):
    collect("toy-reach", "random", tmp_path, 3, size=16, seed=0, progress=False)
    store = EpisodeStore(tmp_path)
    stats = MotionStats.fit(store, PixelModel(), windows=8, seq_len=4, batch=8, seed=3)
    b = store.sample(8, 4, rng=np.random.default_rng(3))
    expected = latent_motion(b["frames"].float() / 255).mean().item()
    assert stats("toy-reach") == pytest.approx(expected, rel=1e-5) and expected > 0


def test_knn_distance_is_exact_on_a_small_bank():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    knn = KNNDistance(bank, k=2)
    d = knn(torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]))  # [1, 2 steps, 2]
    torch.testing.assert_close(d, torch.tensor([[0.5, 0.5 * (0 + 1)]]))


def test_spearman_and_auroc_match_hand_computed_values():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) == pytest.approx(0.8)
    # ties take their average rank: x ranks (1, 2.5, 2.5, 4)
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)
    assert math.isnan(auroc(torch.tensor([0.5, 0.7]), torch.tensor([1, 1])))


def test_ssim_is_one_for_identical_frames_and_lower_for_noise():
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert (ssim(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1)) < 0.9).all()


class Integrator(Simulator):
    """toy-reach's point as a simulator: the state is the position, observed as itself, and
    a step moves it by 0.15 a inside [-1, 1]². Retraced and direct steps agree exactly
    until a wall clips a move."""

    name, action_dim, native_signals = "integrator", 2, ("token_entropy",)

    @property
    def feature_dim(self) -> int:
        return 2

    def start(self, obs, context_actions=None, *, task=None, seeds=1, generator=None):
        pos = obs[:, -1].float().repeat(seeds, 1)  # obs: positions [B, T0, 2]
        return SimState(owner=id(self), batch=len(obs), seeds=seeds, task="toy-reach", action_width=2,
                        features_all=pos, policy_all=None, generator=generator)

    def step(self, state, actions, signals=(), decode=False):
        a, _ = self.check_step_actions(state, actions)
        pos = (state.features_all + 0.15 * a).clamp(-1, 1)
        B = state.batch
        return replace(state, features_all=pos), Step(latent=pos[:B], reward=torch.zeros(B), features=pos[:B],
                                                      signals={"token_entropy": torch.full((B,), 2.0)})


def integrate(start, actions):
    """Positions `[B, T + 1, 2]` of the Integrator from `start [B, 2]` under `actions [B, T, 2]`."""
    pos = [start]
    for t in range(actions.shape[1]):
        pos.append((pos[-1] + 0.15 * actions[:, t]).clamp(-1, 1))
    return torch.stack(pos, 1)


def run_signal(sig, model, context, context_actions, actions):
    state = model.start(context, context_actions)
    sig.begin(state, context, context_actions)
    out_u = []
    for t in range(actions.shape[1]):
        sig.before(state, actions[:, t])
        state, out = model.step(state, actions[:, t], signals=sig.signals)
        out_u.append(sig(out))
    return torch.stack(out_u, 1)


def test_retracing_step_signal_is_zero_where_the_model_is_consistent_and_sees_a_clipped_move():
    model, g = Integrator(), torch.Generator().manual_seed(0)
    acts = torch.rand(8, 7, 2, generator=g) * 2 - 1
    path = integrate(torch.zeros(8, 2), acts * 0.3)  # small moves around the centre: no wall
    context, context_actions, actions = path[:, :4], acts[:, :3] * 0.3, acts[:, 3:] * 0.3
    u = run_signal(RetracingSignal(model, "toy-reach", ks=(1, 2, 3)), model, context, context_actions, actions)
    assert u.shape == (8, 4)
    torch.testing.assert_close(u, torch.zeros(8, 4), atol=1e-6, rtol=0)  # from the first step on
    # at x = 0.95 the push right is clipped at 1.0 and the step back lands at 0.85, where
    # the retraced pair of zero moves stays at 0.95: a gap of 0.1 in x, times the entropy 2
    wall = torch.tensor([[[0.5, 0.0], [0.8, 0.0], [0.95, 0.0]]])
    wall_actions = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
    u = run_signal(RetracingSignal(model, "toy-reach", ks=(1,)), model, wall, wall_actions,
                   torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]))
    torch.testing.assert_close(u, torch.tensor([[0.0, 2 * math.sqrt(0.1 ** 2 / 2)]]))


def test_feature_ensemble_disagrees_more_off_the_data_than_on_it():
    model, g = Integrator(), torch.Generator().manual_seed(0)
    pos = torch.rand(3000, 2, generator=g) - 0.5                  # real features: the centre square only
    acts = torch.rand(3000, 2, generator=g) * 2 - 1
    nxt = (pos + 0.15 * acts).clamp(-1, 1)
    sig = FeatureEnsembleSignal.fit(pos, acts, torch.zeros(3000), nxt, task="toy-reach", preset="tiny", seed=0)
    test_acts = torch.rand(1, 3, 2, generator=g) * 2 - 1
    on = run_signal(sig, model, torch.zeros(1, 1, 2), None, test_acts * 0.3)
    off = run_signal(sig, model, torch.full((1, 1, 2), 0.95), None, test_acts * 0.3)  # a corner it never saw
    print(f"disagreement on the data {on.mean():.4f}, off it {off.mean():.4f}")
    assert off.mean() > 3 * on.mean()
    sig.begin(None, None, None)  # a new batch of rollouts forgets the last step
    with pytest.raises(RuntimeError, match="before"):
        sig(Step(latent=torch.zeros(1, 2), reward=None, features=torch.zeros(1, 2)))


def test_feature_ensemble_penalty_is_in_units_of_the_real_feature_step():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(2000, 2, generator=g) - 0.5
    acts = torch.rand(2000, 2, generator=g) * 2 - 1
    nxt = pos + 0.15 * acts
    test_pos, test_acts = torch.rand(16, 2, generator=g) * 2 - 1, torch.rand(16, 2, generator=g) * 2 - 1
    u = {}
    for scale in (1.0, 20.0):  # the same dynamics in features 20x larger
        sig = FeatureEnsembleSignal.fit(scale * pos, acts, torch.zeros(2000), scale * nxt, task="toy-reach",
                                        preset="tiny", seed=0, normalise=True)
        sig.before(SimpleNamespace(features=scale * test_pos), test_acts)
        u[scale] = sig(Step(latent=torch.zeros(16, 2), reward=None, features=torch.zeros(16, 2))).mean()
    print(f"normalised disagreement off the data: {u[1.0]:.3f} at scale 1, {u[20.0]:.3f} at scale 20")
    assert 0.5 < u[20.0] / u[1.0] < 2


def test_step_signals_by_name_refuse_what_the_model_or_task_cannot_give():
    torch.manual_seed(0)
    whale = world_models.make("whale", "tiny", tasks=("toy-reach", "cup-catch"))
    assert step_signal_names(whale, "toy-reach") == ["u_r", "u_s", "token_entropy", "knn", "ensemble", "retracing"]
    assert "retracing" not in step_signal_names(whale, "cup-catch")  # torque actions do not accumulate
    with pytest.raises(ValueError, match="not 'retracing'"):
        step_signal("retracing", whale, task="cup-catch")
    with pytest.raises(ValueError, match="not 'bogus'"):
        step_signal("bogus", whale, task="toy-reach")
    with pytest.raises(ValueError, match="needs the store"):
        step_signal("knn", whale, task="toy-reach")
    with pytest.raises(ValueError, match="real feature transitions"):
        step_signal("ensemble", whale, task="toy-reach")
    sig = step_signal("retracing", whale, task="toy-reach")
    with pytest.raises(ValueError, match="more than 1 frames"):
        sig.begin(whale.start(torch.zeros(2, 3, 16, 16)), torch.zeros(2, 1, 3, 16, 16), None)
    with pytest.raises(RuntimeError, match="begin"):
        RetracingSignal(whale, "toy-reach").before(None, torch.zeros(2, 2))
