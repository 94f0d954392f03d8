"""Curiosity-driven collection (the hallucination paper, §5) on toy-reach with a coverage gap.

One module-scoped run trains the tiny Dreamer-4 model on mixed episodes confined to the
left half of the arena: tokenizer and dynamics alike have never seen the right half.
Curiosity then plans in that model from left-half starts for the actions whose imagined
future scores highest on a hallucination signal, and is compared with random actions from
the same starts: where the episodes go (a state histogram of the right half), and what
finetuning on them does to held-out rollouts in the right half.
"""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import envs
import world_models
from agents import ObservationPolicyAgent, RandomAgent
from agents.curiosity import collect_curious, state_coverage, train_explorer
from agents.evaluate import run_episode
from replay import EpisodeStore, collect
from uncertainty import StepSignal
from uncertainty.metrics import rollout_mse
from world_models.base import psnr_from_mse
from world_models.imagined import StartWindows
from world_models.training import TrainConfig, train

LEFT = dict(start_box=((-0.8, -0.8), (-0.1, 0.8)), goal_box=((-0.8, -0.8), (-0.1, 0.8)))
RIGHT = dict(start_box=((0.1, -0.8), (0.8, 0.8)), goal_box=((0.1, -0.8), (0.8, 0.8)))
PLANNER = dict(horizon=5, population=24, elites=4, iterations=1, replan_every=2)
FINETUNE = {"tokenizer": 200, "dynamics": 200}


@pytest.fixture(scope="module")
def gap(tmp_path_factory):
    root = tmp_path_factory.mktemp("curiosity")
    train_store, right = EpisodeStore(root / "train"), EpisodeStore(root / "right")
    collect("toy-reach", "mixed", train_store, 300, size=16, seed=0, progress=False, **LEFT)
    collect("toy-reach", "mixed", right, 20, size=16, seed=7, progress=False, **RIGHT)
    torch.manual_seed(1)
    model = world_models.make("dreamer4", "tiny")
    train(model, train_store, train_store.episodes(), root / "run",
          TrainConfig.for_model(model, {"tokenizer": 900, "dynamics": 550}, progress=False))
    return SimpleNamespace(root=root, checkpoint=root / "run" / "checkpoint", model=model.eval(),
                           held=right.sample(128, 9, rng=np.random.default_rng(1)))


def right_half(store: EpisodeStore) -> tuple[float, int]:
    """Share of visited states in the uncovered half, and the cells of an 8 x 8 histogram
    of that half they reach."""
    xy = np.concatenate([store.load(e).states[:, :2] for e in store.episodes()])
    return float(np.mean(xy[:, 0] > 0.1)), state_coverage(xy, (0.1, -1), (1, 1), bins=8)


def rollout_psnr(model, batch) -> float:
    err, _ = rollout_mse(model, batch, generator=torch.Generator().manual_seed(0))
    return psnr_from_mse(err.mean()).item()


def test_curiosity_explores_the_uncovered_half_and_finetuning_on_it_beats_random(gap):
    # Flow instability (u_f/m) is the signal that leads out of the covered half here; u_r/m
    # stayed in the left half on two of three models tried. Curiosity executes the best plan
    # (an elite mean of a noisy signal dithers in place). When written, six episodes each:
    # curiosity 0.45 of its states in the right half and 32 of its 64 cells, random 0.13 and
    # 8. Held-out right-half rollout PSNR 19.32 dB before finetuning (200 + 200 steps on the
    # six episodes alone), 19.04 after on curiosity's, 18.25 after on random's. With this
    # fixture at torch seed 0, curiosity reached 33 and 9 cells over two collection seeds
    # (random 8 and 20): the margin depends on the model. On an Intel CPU (the above: AMD)
    # the same fixture gave 21 cells against 8 and 18.78 dB against 18.71: the finetuning
    # margin depends on the machine's float kernels, so only its sign is asserted.
    stores = {b: EpisodeStore(gap.root / b) for b in ("curiosity", "random")}
    summaries, finetuned = collect_curious("toy-reach", gap.checkpoint, stores["curiosity"], 6, signal="u_f/m",
                                           finetune_every=6, finetune_steps=FINETUNE, out=gap.root / "rounds",
                                           planner=PLANNER, size=16, seed=100, progress=False, **LEFT)
    collect("toy-reach", "random", stores["random"], 6, size=16, seed=100, progress=False, **LEFT)
    assert [e.behavior for e in stores["curiosity"].episodes()] == ["curiosity"] * 6
    explored = {b: right_half(s) for b, s in stores.items()}
    random_model = copy.deepcopy(gap.model).train()
    train(random_model, stores["random"], stores["random"].episodes(), gap.root / "random-ft",
          TrainConfig.for_model(random_model, FINETUNE, progress=False))
    psnr = {"before": rollout_psnr(gap.model, gap.held),
            "curiosity": rollout_psnr(world_models.load(finetuned), gap.held),
            "random": rollout_psnr(random_model.eval(), gap.held)}
    print(f"right half (share, cells of 64): {explored}; held-out right rollout PSNR: {psnr}")
    assert explored["curiosity"][1] > explored["random"][1] + 4 and explored["curiosity"][0] > explored["random"][0]
    assert psnr["curiosity"] > psnr["random"]
    assert finetuned == gap.root / "rounds" / "round1" / "checkpoint"


def test_the_amortised_explorer_learns_to_seek_its_signal(tmp_path):
    # Plan2Explore on the state ensemble (seconds, not minutes): an actor trained in
    # imagination with max_std as its only reward. Scored in the real environment by the
    # ensemble's max_std along each episode, against random actions from the same starts.
    # The ensemble's max_std peaks at the arena's walls (the clipped, nonlinear part of
    # the data), not in the uncovered half: near-linear dynamics extrapolate well there.
    store = EpisodeStore(tmp_path)
    collect("toy-reach", "random", store, 150, size=8, seed=0, progress=False, **LEFT)
    torch.manual_seed(0)
    model = world_models.make("ensemble", "tiny", tasks=("toy-reach",), max_epochs=40)
    model.fit(store, store.episodes(), progress=False)
    signal = StepSignal("max_std", model)
    explorer = train_explorer(model, StartWindows(store, task="toy-reach", observation="states"), signal,
                              steps=1000, progress=False)
    env = envs.make("toy-reach", obs="state", **LEFT)

    def mean_signal(make_agent) -> float:
        values = []
        for k in range(8):
            result = run_episode(env, make_agent(k), 100 + k, keep_frames=True)
            states = torch.as_tensor(np.stack(result.frames[:-1]))
            actions = torch.as_tensor(np.stack(result.actions))
            with torch.no_grad():
                _, out = model.step(model.start(states[:, None], generator=torch.Generator().manual_seed(k)),
                                    actions, signals=signal.signals)
            values.append(signal(out).mean().item())
        return float(np.mean(values))

    seeking = mean_signal(lambda k: ObservationPolicyAgent(lambda o: explorer.act(o[None])[0]))
    rand = mean_signal(lambda k: RandomAgent(2, seed=k))
    print(f"max_std along real episodes: explorer {seeking:.4f}, random {rand:.4f}")
    assert seeking > 1.1 * rand
