"""V-D4RL's model-free pixel anchors: d3rlpy learners on stacked raw frames (conv encoder,
DrQ's random shifts), the transitions they learn from, and the agent that acts with them."""
import json

import numpy as np
import pytest
import torch

import envs
from agents import RandomAgent, StackedFramesAgent
from agents.evaluate import evaluate
from agents.learner import Learner, random_shift
from agents.offline import MOPOConfig, frame_transitions, mopo
from replay import EpisodeStore, collect


def test_frame_transitions_stack_what_the_acting_agent_sees(tmp_path):
    store = EpisodeStore(tmp_path)
    collect("toy-reach", "random", store, 2, size=16, seed=0, progress=False)
    infos = store.episodes()
    t = frame_transitions(store, infos, "toy-reach", stack=3, progress=False)
    ep = store.load(infos[0])
    T = len(ep.actions)
    assert t.obs.dtype == np.uint8 and t.obs.shape == (len(t), 9, 16, 16)
    f = ep.frames
    np.testing.assert_array_equal(t.obs[0], np.concatenate([f[0], f[0], f[0]]))   # the first frame repeated
    np.testing.assert_array_equal(t.obs[4], np.concatenate([f[2], f[3], f[4]]))
    np.testing.assert_array_equal(t.next_obs[: T - 1], t.obs[1:T])                # within the episode
    seen = []
    agent = StackedFramesAgent(lambda o: seen.append(o) or np.zeros(2, np.float32), stack=3)
    agent.reset(f[0])
    for k in range(T):
        agent.act()
        agent.observe(ep.actions[k], f[k + 1])
    np.testing.assert_array_equal(np.stack(seen), t.obs[:T])                      # acting reads what training read
    with pytest.raises(ValueError, match="stack"):
        frame_transitions(store, infos, "toy-reach", stack=0)


def test_pixel_learner_shifts_its_batches_and_roundtrips_without_pickles(tmp_path):
    images = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8)
    torch.manual_seed(0)
    shifted = random_shift(images, pad=2)
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    for i in range(2):  # each is a crop of its own padded image
        assert any((padded[i, :, y: y + 8, x: x + 8] == shifted[i]).all() for y in range(5) for x in range(5))
    learner = Learner("td3+bc", (9, 16, 16), 2)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (32, 9, 16, 16), dtype=np.uint8)
    for _ in range(2):
        learner.update(obs, rng.uniform(-1, 1, (32, 2)), rng.normal(size=32), obs, np.zeros(32))
    learner.save(tmp_path)
    assert json.loads((tmp_path / "learner.json").read_text())["obs_dim"] == [9, 16, 16]
    loaded = Learner.load(tmp_path)
    x = torch.as_tensor(obs[:4])
    torch.testing.assert_close(loaded.policy(x), learner.policy(x))
    np.testing.assert_allclose(loaded.act(obs[:4]), learner.policy(x).numpy(), atol=1e-6)  # scaled the same way
    with pytest.raises(ValueError, match="C, H, W"):
        Learner("bc", (16, 16), 2)


def test_bc_from_stacked_pixels_beats_random_on_toy_reach(tmp_path):
    store = EpisodeStore(tmp_path)
    collect("toy-reach", "expert", store, 40, size=16, seed=0, progress=False)
    real = frame_transitions(store, store.episodes(), "toy-reach", stack=3, progress=False)
    torch.manual_seed(0)
    learner = Learner("bc", real.obs.shape[1:], 2)
    env = envs.make("toy-reach", obs="pixels", size=16)
    act = lambda o: learner.act(o[None])[0]  # noqa: E731
    ev = mopo(None, learner, real, None, MOPOConfig(steps=400, batch=64, eval_every=400), progress=False,
              evaluate=lambda lrn: evaluate(env, lambda s: StackedFramesAgent(act), 10, seed=100))
    random = evaluate(env, lambda s: RandomAgent(2, seed=s), 10, seed=100)
    print(f"bc from pixels {ev[-1]['return']:.1f}, random {random['return']:.1f}")
    assert ev[-1]["return"] > random["return"] + 10
