import numpy as np
import pytest

from replay.behaviors import (MixedBehavior, NoOpBehavior, RandomBehavior, StructuredNoise,
                              TransformedExpert, make_behavior)
from replay.experts import make_expert

A = 3
CONST = np.array([0.5, -0.25, 0.1])


class ConstantExpert(RandomBehavior):
    name = "expert"

    def act(self, state):
        return CONST.copy()


def rollout(behavior, steps=2000, seed=0):
    behavior.reset(np.random.default_rng(seed))
    return np.stack([behavior(np.zeros(4)) for _ in range(steps)])


def autocorr(x):
    x = x - x.mean(0)
    return float((x[1:] * x[:-1]).mean() / x.var())


def test_noop_is_zero():
    assert np.all(rollout(NoOpBehavior(A)) == 0)


def test_random_is_uniform_in_bounds():
    a = rollout(RandomBehavior(A), 20000)
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_allclose(a.mean(0), 0, atol=0.02)
    np.testing.assert_allclose(a.var(0), 1 / 3, atol=0.02)
    assert abs(autocorr(a)) < 0.05


def test_ou_noise_is_autocorrelated_and_gaussian_is_not():
    ou = rollout(StructuredNoise(ConstantExpert(A), "ou")) - CONST
    gauss = rollout(StructuredNoise(ConstantExpert(A), "gaussian")) - CONST
    assert autocorr(ou) > 0.6
    assert abs(autocorr(gauss)) < 0.1
    assert 0.05 < gauss.std() < 0.7


def test_mix_noise_is_a_convex_combination_with_random():
    b = StructuredNoise(ConstantExpert(A), "mix")
    a = rollout(b)
    np.testing.assert_allclose(a.mean(0), (1 - b.alpha) * CONST, atol=0.03)
    assert a.std(0).min() > 0.1


def test_noise_parameters_are_drawn_per_episode():
    b = StructuredNoise(ConstantExpert(A))
    params = set()
    for s in range(30):
        b.reset(np.random.default_rng(s))
        params.add((b.kind, round(b.sigma, 6)))
    assert len(params) == 30 and len({k for k, _ in params}) == 3


def test_transformed_expert_applies_each_transform_for_runs_of_steps():
    b = TransformedExpert(ConstantExpert(A), p_start=0.2, max_steps=10)
    a = rollout(b, 5000)
    plain = np.all(a == np.float32(CONST), axis=1)
    assert 0.2 < plain.mean() < 0.9
    assert np.any(np.all(a == 0, axis=1))                  # all-zero
    assert np.any(np.all(a == -np.float32(CONST), axis=1))  # sign flip
    dropped = np.any(a == 0, axis=1) & ~np.all(a == 0, axis=1)
    assert dropped.any()                                     # dropout of some dims
    ratio = a[:, 0] / CONST[0]
    assert np.any((ratio > 0) & (np.abs(ratio - 1) > 0.05))  # scaled
    changes = np.count_nonzero(plain[1:] != plain[:-1])
    assert changes < 0.5 * (~plain).sum()                    # transforms persist over steps


def test_mixed_switches_behaviours_within_an_episode():
    b = MixedBehavior([NoOpBehavior(A), ConstantExpert(A)], min_len=5, max_len=20)
    a = rollout(b, 500)
    zero = np.all(a == 0, axis=1)
    assert 0.2 < zero.mean() < 0.8
    runs = np.count_nonzero(zero[1:] != zero[:-1])
    assert 5 < runs < 100


def test_same_seed_same_actions():
    make = lambda: make_behavior("mixed", 2, make_expert("toy-reach"))
    np.testing.assert_array_equal(rollout(make(), 200, seed=7), rollout(make(), 200, seed=7))
    assert not np.array_equal(rollout(make(), 200, seed=7), rollout(make(), 200, seed=8))


def test_unknown_behavior_and_missing_expert(tmp_path):
    with pytest.raises(ValueError, match="unknown behavior"):
        make_behavior("curious", 2)
    with pytest.raises(ValueError, match="needs an expert"):
        make_behavior("expert", 2)
    with pytest.raises(ValueError, match="train_expert.py task=cup-catch"):
        make_expert("cup-catch-var1", expert_dir=tmp_path)


def test_graded_recipes_sit_between_random_and_expert():
    # toy-reach has no SAC snapshots: medium is the expert with half of every action random
    import envs
    from replay.experts import make_expert

    env = envs.make("toy-reach", obs="state")
    returns = {}
    for name in ("random", "medium", "medium-replay", "expert"):
        total = []
        for k in range(10):
            b = make_behavior(name, 2, make_expert("toy-reach"))
            b.reset(np.random.default_rng(k))
            s, _ = env.reset(seed=k)
            ret, done = 0.0, False
            while not done:
                s, r, term, trunc, _ = env.step(b(s))
                ret, done = ret + r, term or trunc
            total.append(ret)
        returns[name] = np.mean(total)
    assert returns["random"] < returns["medium-replay"] < returns["medium"] < returns["expert"], returns


def test_an_agent_mixes_with_other_behaviours_and_sees_every_frame(tmp_path):
    # an agent behaviour (e.g. curiosity) acts from pixels: within a mix it must see every
    # frame and every executed action, also those of the steps other behaviours acted on
    from replay import EpisodeStore, collect

    class CountingAgent:
        made = []

        def __init__(self, seed):
            self.frames, self.acted = 0, 0
            CountingAgent.made.append(self)

        def reset(self, obs):
            assert obs.shape == (3, 8, 8)
            self.frames = 1

        def observe(self, action, obs):
            self.frames += 1

        def act(self):
            self.acted += 1
            return np.full(2, 0.5, np.float32)

    store = EpisodeStore(tmp_path)
    collect("toy-reach", "mixed", store, 3, size=8, seed=0, progress=False, agents={"curiosity": CountingAgent})
    episodes = [store.load(e) for e in store.episodes()]
    assert [a.frames for a in CountingAgent.made] == [len(ep.frames) for ep in episodes]
    assert 0 < sum(a.acted for a in CountingAgent.made) < sum(len(ep.actions) for ep in episodes)
    with pytest.raises(ValueError, match="give checkpoint="):
        make_behavior("curiosity", 2)


def test_sac_expert_trains_on_one_thread_and_gives_the_caller_its_threads_back(tmp_path):
    # the main job trains its world model in the same process right after the expert
    import torch

    from replay.experts import expert_path, train_sac_expert

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        metrics = train_sac_expert("cup-catch", steps=200, learning_starts=100, eval_episodes=1, snapshot_every=10_000,
                                   expert_dir=tmp_path, threads=1, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert metrics["steps"] == 200 and (expert_path("cup-catch", tmp_path) / "actor.safetensors").exists()
