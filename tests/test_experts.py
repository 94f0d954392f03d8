import numpy as np
import torch

import envs
from replay.experts import MLPActor, make_expert


def run_expert(task, episodes=5, **kw):
    env, expert = envs.make(task, obs="state", **kw), make_expert(task)()
    successes = []
    for k in range(episodes):
        _, info = env.reset(seed=k)
        expert.reset(np.random.default_rng(k))
        done, ok = False, False
        while not done:
            _, _, term, trunc, info = env.step(expert(info["state"]))
            ok, done = ok or info["success"], term or trunc
        successes.append(ok)
    env.close()
    return np.mean(successes)


def test_toy_reach_expert_always_succeeds():
    assert run_expert("toy-reach", 20) == 1.0


def test_metaworld_scripted_expert_solves_push():
    assert run_expert("mw-push", 2) == 1.0


def test_actor_matches_stable_baselines3_and_roundtrips(tmp_path):
    from stable_baselines3 import SAC
    env = envs.make("pendulum-swingup", obs="state")
    sac = SAC("MlpPolicy", env, policy_kwargs={"net_arch": [32, 32]}, device="cpu", seed=0)
    actor = MLPActor.from_sb3(sac.policy)
    states = np.random.default_rng(0).normal(size=(16, env.state_dim)).astype(np.float32)
    expected, _ = sac.predict(states, deterministic=True)
    np.testing.assert_allclose(actor.act(states), expected, atol=1e-5)
    actor.save(tmp_path / "pendulum-swingup")
    loaded = MLPActor.load(tmp_path / "pendulum-swingup")
    np.testing.assert_allclose(loaded.act(states), expected, atol=1e-5)
    behavior = make_expert("pendulum-swingup", expert_dir=tmp_path)()
    np.testing.assert_allclose(behavior(states[0]), expected[0], atol=1e-5)
    assert isinstance(loaded.net[0], torch.nn.Linear)
