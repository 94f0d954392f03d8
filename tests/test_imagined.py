"""Imagined environments: Gymnasium's checker, SB3's truncation conventions, penalties."""
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import world_models
from replay import EpisodeStore, collect
from uncertainty import StepPenalty
from world_models.imagined import ImaginedEnv, ImaginedVecEnv, StartWindows


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return world_models.make("dreamer4", "tiny").eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = EpisodeStore(tmp_path_factory.mktemp("imagined"))
    collect("toy-reach", "random", store, 4, size=16, seed=0, progress=False)
    return store


def test_imagined_env_passes_gymnasiums_checker(model, store):
    for obs in ("features", "frames"):
        env = ImaginedEnv(model, StartWindows(store, task="toy-reach", context=2), horizon=5, obs=obs)
        check_env(env, skip_render_check=True)


def test_vec_env_truncates_together_and_restarts(model, store):
    venv = ImaginedVecEnv(model, StartWindows(store, task="toy-reach"), num_envs=3, horizon=4, seed=0)
    first = venv.reset()
    assert first.shape == (3, model.feature_dim) and first.dtype == np.float32
    for t in range(4):
        obs, rewards, dones, infos = venv.step(np.zeros((3, 2), np.float32))
        assert rewards.shape == (3,) and dones.all() == (t == 3)
    assert all(i["TimeLimit.truncated"] for i in infos)
    assert all(i["terminal_observation"].shape == (model.feature_dim,) for i in infos)
    assert not np.allclose(obs, infos[0]["terminal_observation"])  # the next episode's first features


def test_penalty_is_subtracted_from_the_models_reward(model, store):
    starts = StartWindows(store, task="toy-reach")
    penalty = StepPenalty("u_f", model)
    env = ImaginedVecEnv(model, starts, num_envs=2, horizon=3, penalty=penalty, lam=2.0, seed=1)
    env.reset()
    _, rewards, _, infos = env.step(np.zeros((2, 2), np.float32))
    for r, info in zip(rewards, infos):
        assert r == pytest.approx(info["model_reward"] - 2.0 * info["u"], abs=1e-5)
    assert StepPenalty("u_s", model).seeds == 2
    with pytest.raises(ValueError, match="offers the signals"):
        StepPenalty("token_entropy", model)
    with pytest.raises(ValueError, match="needs a penalty"):
        ImaginedVecEnv(model, starts, lam=1.0)


def test_start_windows_from_given_frames(model):
    frames = torch.randint(0, 256, (5, 2, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(ValueError, match="need actions"):
        StartWindows(frames=frames, task="toy-reach")
    starts = StartWindows(frames=frames, actions=torch.zeros(5, 1, 2), task="toy-reach", context=2)
    got, actions = starts.draw(7, np.random.default_rng(0))
    assert got.shape == (7, 2, 3, 16, 16) and actions.shape == (7, 1, 2)
    env = ImaginedEnv(model, starts, horizon=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(np.zeros(3, np.float32))
