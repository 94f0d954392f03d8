"""Offline RL plumbing: d3rlpy learners saved without pickles, the model buffer, the MOPO
loop's batches and resume, feature transitions, and one-line errors from offline.py."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import world_models
from agents.learner import ALGOS, EXPLORE_STD, Learner
from agents.offline import ModelBuffer, MOPOConfig, Transitions, feature_transitions, imagined_rollouts, mopo
from replay import EpisodeStore, collect
from uncertainty import MotionStats, step_signal
from world_models.checkpoint import save_checkpoint
from world_models.imagined import ImaginedReward, StartWindows

ROOT = Path(__file__).resolve().parents[1]


def random_transitions(n=64, obs=6, act=2, seed=0):
    rng = np.random.default_rng(seed)
    return Transitions(rng.normal(size=(n, obs)).astype(np.float32), rng.uniform(-1, 1, (n, act)).astype(np.float32),
                       rng.normal(size=n).astype(np.float32), rng.normal(size=(n, obs)).astype(np.float32),
                       np.zeros(n, np.float32))


@pytest.mark.parametrize("algo", ALGOS)
def test_learners_update_and_roundtrip_without_pickles(algo, tmp_path):
    learner = Learner(algo, 6, 2, batch_size=32)
    t = random_transitions()
    for _ in range(3):
        learner.update(t.obs, t.actions, t.rewards, t.next_obs, t.terminals)
    learner.save(tmp_path, with_optimizers=True)
    loaded = Learner.load(tmp_path)
    x = torch.randn(5, 6)
    torch.testing.assert_close(loaded.policy(x), learner.policy(x))
    assert loaded.steps == 3 and loaded.act(x.numpy()).shape == (5, 2)
    if learner.has_critic:
        torch.testing.assert_close(loaded.state_value(x), learner.state_value(x))
    with pytest.raises(ValueError, match="no learner"):
        Learner.load(tmp_path / "missing")


def test_reward_scale_trains_on_scaled_rewards_and_reports_q_in_reward_units(tmp_path):
    t = random_transitions()
    learners = []
    for scale, rewards in ((0.5, t.rewards), (1.0, 0.5 * t.rewards)):  # the same batches, once scaled inside
        torch.manual_seed(0)
        learner = Learner("td3+bc", 6, 2, batch_size=32, reward_scale=scale)
        for _ in range(3):
            learner.update(t.obs, t.actions, rewards, t.next_obs, t.terminals)
        learners.append(learner)
    x, a = torch.randn(5, 6), torch.rand(5, 2) * 2 - 1
    torch.testing.assert_close(learners[0].value(x, a), 2 * learners[1].value(x, a))
    loaded = Learner.load(learners[0].save(tmp_path))
    assert loaded.reward_scale == 0.5
    torch.testing.assert_close(loaded.value(x, a), learners[0].value(x, a))
    with pytest.raises(ValueError, match="reward_scale"):
        Learner("iql", 4, 2, reward_scale=0.0)


def test_learner_rejects_unknown_algorithms_and_fields():
    with pytest.raises(ValueError, match="unknown algo"):
        Learner("ppo", 4, 2)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        Learner("iql", 4, 2, expectyle=0.7)


def test_model_buffer_keeps_the_latest_rounds():
    buf = ModelBuffer(10, 6, 2)
    first, second = random_transitions(8, seed=1), random_transitions(8, seed=2)
    buf.add(first)
    buf.add(second)
    assert len(buf) == 10
    kept = {tuple(o) for o in buf.data.obs}
    assert all(tuple(o) in kept for o in second.obs)            # the newest round is all there
    assert sum(tuple(o) in kept for o in first.obs) == 2         # only the last 2 of the oldest


class CountingLearner(Learner):
    def __init__(self):
        super().__init__("bc", 4, 2, batch_size=16)
        self.batches = []

    def update(self, obs, actions, rewards, next_obs, terminals):
        self.batches.append(obs)
        return super().update(obs, actions, rewards, next_obs, terminals)


def test_mopo_mixes_real_and_imagined_and_resumes(tmp_path):
    store = EpisodeStore(tmp_path)
    collect("toy-reach", "random", store, 3, size=8, seed=0, progress=False)
    model = world_models.make("ensemble", "tiny", tasks=("toy-reach",), max_epochs=2)
    model.fit(store, store.episodes(), progress=False)
    real = feature_transitions(model, store, store.episodes(), "toy-reach", progress=False)
    assert len(real) == 3 * 50 and real.obs_dim == 4                 # every transition, as states
    np.testing.assert_allclose(real.next_obs[:49], real.obs[1:50])
    learner = CountingLearner()
    starts = StartWindows(store, task="toy-reach", observation="states")
    real.obs = real.obs + 1000  # marks the real rows (imagined rollouts start from the store's states)
    cfg = MOPOConfig(steps=6, batch=16, rollout_every=3, rollout_batch=4, horizon=2, real_ratio=0.25, eval_every=3)
    evals = mopo(model, learner, real, starts, cfg, evaluate=lambda lrn: {"return": 1.0}, progress=False)
    assert [e["step"] for e in evals] == [3, 6] and learner.steps == 6
    share = [np.mean(b[:, 0] > 500) for b in learner.batches]
    assert share == [0.25] * 6                                        # 4 real + 12 imagined each
    cfg_more = MOPOConfig(steps=8, batch=16, rollout_every=3, rollout_batch=4, horizon=2, eval_every=3)
    assert [e["step"] for e in mopo(model, learner, real, starts, cfg_more, evaluate=lambda lrn: {}, progress=False)] == [8]


@pytest.mark.parametrize("name", ["dreamer4", "whale"])
def test_episode_features_encode_each_frame_once_and_match_each_window_read_alone(name):
    torch.manual_seed(0)
    model = world_models.make(name, "tiny", tasks=("toy-reach",)).eval()
    frames = torch.randint(0, 256, (13, 3, 16, 16), dtype=torch.uint8)
    actions = torch.rand(12, 2) * 2 - 1
    encode, encoded = model.encode, []
    model.encode = lambda x: encoded.append(x.shape[1]) or encode(x)
    feats = world_models.episode_features(model, frames, actions, "toy-reach", 4, batch=5)
    del model.encode
    assert sum(encoded) == 13                                        # each frame once
    alone = torch.stack([model.features(frames[None, max(0, t - 3): t + 1], actions[None, max(0, t - 3): t] if t else None,
                                        task="toy-reach")[0] for t in range(13)])
    torch.testing.assert_close(feats, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="encoded must be the latents"):
        model.start(frames[None, :4], actions[None, :3], encoded=model.encode(frames[None, :2]))


def test_offline_entry_point_rejects_bad_input_in_one_line(tmp_path):
    torch.manual_seed(0)
    bare = world_models.make("dreamer4", "tiny", reward_head=False, bc_head=False, context_rows=0.0)
    save_checkpoint(tmp_path / "bare", bare)
    save_checkpoint(tmp_path / "full", world_models.make("dreamer4", "tiny"))
    store = tmp_path / "data"
    collect("toy-reach", "random", store, 2, size=16, seed=0, progress=False)
    cases = [("algo=ppo", "algo"), (f"checkpoint={tmp_path / 'nothing'}", "checkpoint"),
             (f"checkpoint={tmp_path / 'bare'}", "reward head"),
             (f"checkpoint={tmp_path / 'bare'} store={tmp_path / 'empty'} model_free=true", "no toy-reach episodes"),
             (f"checkpoint={tmp_path / 'full'} penalty=token_entropy lam=1", "not 'token_entropy'")]
    for override, word in cases:
        args = [sys.executable, str(ROOT / "experiments" / "offline.py"), f"store={store}", f"out={tmp_path / 'out'}",
                f"checkpoint={tmp_path / 'bare'}", *override.split()]
        run = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
        lines = run.stderr.strip().splitlines()
        assert run.returncode != 0 and len(lines) == 1 and word in lines[0], (override, run.stderr)


def test_imagined_rollouts_add_noise_to_td3_bc_and_keep_iqls_mean_action():
    # MOPO on plate-slide (docs/offline.md): TD3+BC 311.4 acting with its action alone, 550.3
    # with this noise (one seed); IQL 968.4 ± 137.3 with its mean action, 626.4 ± 510.0 with
    # the noise (two seeds), 159.6 sampling its policy (one seed)
    torch.manual_seed(0)
    obs = np.random.default_rng(0).normal(size=(4000, 6)).astype(np.float32)
    td3 = Learner("td3+bc", 6, 2)
    mean, noisy = td3.act(obs), td3.act(obs, explore=True)
    assert np.abs(noisy).max() <= 1 and not np.allclose(mean, noisy)
    inside = np.abs(mean).max(1) < 0.5  # where clipping cannot bite
    d = (noisy - mean)[inside]
    assert abs(d.std() - EXPLORE_STD) < 0.02 and abs(d.mean()) < 0.02
    iql = Learner("iql", 6, 2)
    np.testing.assert_array_equal(iql.act(obs, explore=True), iql.act(obs))


@pytest.mark.parametrize("name", ["dreamer4", "whale"])
def test_imagined_rollouts_penalise_with_retracing_knn_and_ensemble_from_pixels(name, tmp_path):
    torch.manual_seed(0)
    store = EpisodeStore(tmp_path)
    collect("toy-reach", "random", store, 2, size=16, seed=0, progress=False)
    model = world_models.make(name, "tiny", tasks=("toy-reach",)).eval()
    with torch.no_grad():  # zero-initialised output layers would make every prediction, and u_f, constant
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    starts = StartWindows(store, task="toy-reach", context=3)
    learner = Learner("td3+bc", model.feature_dim, 2)
    real = feature_transitions(model, store, store.episodes(), "toy-reach", context=3, progress=False)
    for signal in ("retracing", "knn", "ensemble"):
        penalty = step_signal(signal, model, task="toy-reach", store=store, episodes=store.episodes(),
                              real=(real.obs, real.actions, real.rewards, real.next_obs))
        rollouts, stats = imagined_rollouts(model, learner, starts, 4, 3, penalty, ImaginedReward(reward=0.0, penalty=1.0),
                                            np.random.default_rng(0), torch.Generator().manual_seed(0))
        assert len(rollouts) == 12 and np.isfinite(rollouts.rewards).all()
        assert (rollouts.rewards <= 0).all() and stats["rollout/u"] > 0, signal  # r = -u, u > 0 somewhere


def test_offline_entry_point_runs_end_to_end_and_resumes(tmp_path):
    # an untrained tiny model: the point is the path through the script, not the return
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model", world_models.make("dreamer4", "tiny", tasks=("toy-reach",)))
    MotionStats({"toy-reach": 1.0}).save(tmp_path / "model")
    collect("toy-reach", "random", tmp_path / "data", 2, size=16, seed=0, progress=False)
    out = tmp_path / "out"

    def run(steps):
        args = [sys.executable, str(ROOT / "experiments" / "offline.py"), "task=toy-reach", f"checkpoint={tmp_path / 'model'}",
                f"store={tmp_path / 'data'}", f"out={out}", "algo=td3+bc", "penalty=u_r", "lam=0.5", f"steps={steps}",
                "eval_every=10", "eval_episodes=1", "mopo.batch=16", "mopo.rollout_every=10", "mopo.rollout_batch=4",
                "progress=false"]
        done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    first = run(10)
    assert "imagined reward" in first and ", u " in first     # the penalty's scale, to choose λ by
    assert (out / "learner" / "learner.json").exists() and (out / "returns_seed0.png").exists()
    assert list(out.glob("features-*.npz")) and not list(out.parent.parent.glob("features-*"))  # not two folders up
    second = run(20)
    assert "resuming mopo-td3+bc-u_r-0.5 from" in second and "at step 10" in second
    with open(out / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [10, 20]   # the first run's row is kept
