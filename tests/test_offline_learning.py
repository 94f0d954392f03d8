"""Does offline MOPO learn? On toy-reach, from low-quality data only (mostly random, some
noisy expert), MOPO on the state ensemble must beat behaviour cloning and the dataset's
mean return. The pixel version does not fit the 2-minute budget (the tiny pixel model
follows actions too weakly over several imagined steps to train a policy in); its figures
are in benchmarks/offline.py."""
import numpy as np
import pytest
import torch

import envs
import world_models
from agents import ObservationPolicyAgent
from agents.evaluate import evaluate
from agents.learner import Learner
from agents.offline import MOPOConfig, feature_transitions, learner_hyper, mopo
from replay import EpisodeStore, collect
from uncertainty import StepSignal
from world_models.imagined import StartWindows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    store = EpisodeStore(tmp_path_factory.mktemp("offline"))
    collect("toy-reach", "random", store, 150, size=8, seed=0, progress=False)
    collect("toy-reach", "noise", store, 50, size=8, seed=1, progress=False)
    torch.manual_seed(0)
    model = world_models.make("ensemble", "tiny", tasks=("toy-reach",), max_epochs=40)
    model.fit(store, store.episodes(), progress=False)
    return store, model


def run(store, model, algo, use_model, steps=1500, penalty=None, lam=0.0):
    torch.manual_seed(0)
    real = feature_transitions(model, store, store.episodes(), "toy-reach", progress=False)
    learner = Learner(algo, 4, 2, **learner_hyper(algo))
    starts = StartWindows(store, task="toy-reach", observation="states")
    env = envs.make("toy-reach", obs="state")
    cfg = MOPOConfig(steps=steps, rollout_every=250, rollout_batch=500, horizon=5, eval_every=steps)
    ev = mopo(model if use_model else None, learner, real, starts, cfg, penalty=penalty, lam=lam, progress=False,
              evaluate=lambda l: evaluate(env, lambda s: ObservationPolicyAgent(lambda o: l.act(o[None])[0]), 20, 1000))
    return ev[-1]["return"]


def test_mopo_beats_bc_and_the_dataset(data):
    # this 1-minute version gave dataset 37.8, BC 41.1, MOPO (SAC, max_std, λ=1) 48.7 (one
    # run; 48.5 under the ensemble's old joint NLL, 44.6 with d3rlpy's initial temperature of 1.0)
    store, model = data
    dataset = np.mean([store.load(e).episode_return for e in store.episodes()])
    bc = run(store, model, "bc", use_model=False)
    ours = run(store, model, "sac", use_model=True, penalty=StepSignal("max_std", model), lam=1.0)
    print(f"toy-reach offline, 20 episodes: dataset {dataset:.1f}, BC {bc:.1f}, MOPO {ours:.1f}")
    assert ours > bc + 2 and ours > dataset + 5
