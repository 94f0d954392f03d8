"""Curiosity-driven collection (the hallucination paper, §5) on toy-reach with a coverage gap.

One module-scoped run trains the tiny Dreamer-4 model on mixed episodes confined to the
left half of the arena. Curiosity plans in that model, from left-half starts, for the
actions whose imagined future scores highest on a hallucination signal, collects real
episodes with them and finetunes the model between rounds (the paper's closed loop).

Whether those episodes reach the uncovered right half is not asserted here: at this scale
it depends on the trained model, not on the method (`benchmarks/curiosity_gap.py`,
`docs/curiosity.md`). Models trained from the same data that differ only in torch seed or
thread count sent curiosity right on some and into a left-half corner on others.
"""
import numpy as np
import pytest
import torch

import envs
import world_models
from agents import ObservationPolicyAgent, RandomAgent
from agents.curiosity import CuriosityAgent, collect_curious, train_explorer
from agents.evaluate import run_episode
from replay import EpisodeStore, collect
from uncertainty import StepSignal, signal
from world_models.imagined import StartWindows
from world_models.training import TrainConfig, train

LEFT = dict(start_box=((-0.8, -0.8), (-0.1, 0.8)), goal_box=((-0.8, -0.8), (-0.1, 0.8)))
PLANNER = dict(horizon=5, population=24, elites=4, iterations=1, replan_every=2)


@pytest.fixture(scope="module")
def gap(tmp_path_factory):
    root = tmp_path_factory.mktemp("curiosity")
    store = EpisodeStore(root / "train")
    collect("toy-reach", "mixed", store, 300, size=16, seed=0, progress=False, **LEFT)
    torch.manual_seed(1)
    model = world_models.make("dreamer4", "tiny")
    train(model, store, store.episodes(), root / "run",
          TrainConfig.for_model(model, {"tokenizer": 900, "dynamics": 550}, progress=False))
    return root, store, model.eval()


def test_curiosity_plans_for_its_signal_and_finetunes_between_rounds(gap):
    # The plan curiosity executes against uniform random plans from the same real start,
    # each rolled out again with fresh noise: imagined u_f over 12 starts. On three models
    # (Intel, one thread) the ratio was above 1 at every start, 1.11 to 1.20 on average.
    root, store, model = gap
    agent = CuriosityAgent.from_checkpoint(root / "run" / "checkpoint", "toy-reach", signal="u_f/m", model=model,
                                           **PLANNER)
    rng = np.random.default_rng(0)

    def imagined_u_f(plans: torch.Tensor) -> float:
        start = agent.plan_start.select(torch.zeros(len(plans), dtype=torch.long))
        im = model.rollout(start, plans, horizon=PLANNER["horizon"], signals=("flow_instability",))
        return signal("u_f", model, im).mean().item()

    ratios = []
    for info in store.episodes()[:12]:
        agent.reset(store.load(info).frames[0])
        agent.act()
        chosen = imagined_u_f(agent.mpc.last_plan.actions[None].expand(8, -1, -1))
        uniform = imagined_u_f(torch.as_tensor(rng.uniform(-1, 1, (24, PLANNER["horizon"], 2)), dtype=torch.float32))
        ratios.append(chosen / uniform)
    print(f"imagined u_f, chosen plan / uniform random plans, per start: {np.round(ratios, 2)}")
    assert np.mean(ratios) > 1.05 and np.mean(np.array(ratios) > 1) >= 0.75

    collected = EpisodeStore(root / "collected")
    summaries, finetuned = collect_curious("toy-reach", root / "run" / "checkpoint", collected, 4, signal="u_f/m",
                                           finetune_every=2, finetune_steps={"dynamics": 30}, out=root / "rounds",
                                           planner=PLANNER, size=16, seed=100, progress=False, **LEFT)
    assert [e.behavior for e in collected.episodes()] == ["curiosity"] * 4 and len(summaries) == 2
    assert finetuned == root / "rounds" / "round2" / "checkpoint"
    assert (root / "rounds" / "round1" / "checkpoint").exists()
    before, after = model.state_dict(), world_models.load(finetuned).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("dynamics"))


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
