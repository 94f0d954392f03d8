"""Imagined environments: Gymnasium's checker, SB3's truncation conventions, penalties."""
import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import world_models
from replay import EpisodeStore, collect
from uncertainty import StepSignal
from world_models.imagined import ImaginedEnv, ImaginedReward, ImaginedVecEnv, StartWindows


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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3 warns of a VecEnv without `render_mode`
        venv = ImaginedVecEnv(model, StartWindows(store, task="toy-reach"), num_envs=3, horizon=4, seed=0)
    assert venv.render_mode is None
    first = venv.reset()
    assert first.shape == (3, model.feature_dim) and first.dtype == np.float32
    for t in range(4):
        obs, rewards, dones, infos = venv.step(np.zeros((3, 2), np.float32))
        assert rewards.shape == (3,) and dones.all() == (t == 3)
    assert all(i["TimeLimit.truncated"] for i in infos)
    assert all(i["terminal_observation"].shape == (model.feature_dim,) for i in infos)
    assert not np.allclose(obs, infos[0]["terminal_observation"])  # the next episode's first features


def test_penalty_is_subtracted_and_a_bonus_added_by_one_builder(model, store):
    starts = StartWindows(store, task="toy-reach")
    u_f = StepSignal("u_f", model)
    for weights, expect in (({"lam": 2.0}, lambda r, u: r - 2.0 * u),
                            ({"bonus": 3.0}, lambda r, u: r + 3.0 * u),
                            ({"bonus": 3.0, "reward_weight": 0.0}, lambda r, u: 3.0 * u)):
        env = ImaginedVecEnv(model, starts, num_envs=2, horizon=3, signal=u_f, seed=1, **weights)
        env.reset()
        _, rewards, _, infos = env.step(np.zeros((2, 2), np.float32))
        for r, info in zip(rewards, infos):
            assert r == pytest.approx(expect(info["model_reward"], info["u"]), abs=1e-5), weights
    assert StepSignal("u_s", model).seeds == 2
    with pytest.raises(ValueError, match="offers the signals"):
        StepSignal("token_entropy", model)
    with pytest.raises(ValueError, match="needs an uncertainty signal"):
        ImaginedVecEnv(model, starts, lam=1.0)


@pytest.mark.parametrize("weights,message", [({"penalty": -1.0}, ">= 0"), ({"bonus": float("nan")}, ">= 0"),
                                             ({"penalty": 1.0, "bonus": 1.0}, "not both"),
                                             ({"reward": 0.0}, "earn nothing"), ({"reward": True}, ">= 0")])
def test_imagined_reward_refuses_sign_tricks_and_empty_objectives(weights, message):
    with pytest.raises(ValueError, match=message):
        ImaginedReward(**weights)
    r, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(ImaginedReward(penalty=2.0)(r, u), torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(ImaginedReward(reward=0.0, bonus=3.0)(None, u), torch.tensor([1.5, 3.0]))


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
