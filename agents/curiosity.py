"""Curiosity: act where the world model expects to hallucinate (the hallucination paper, §5).

    agent = CuriosityAgent.from_checkpoint("runs/train/.../checkpoint", "toy-reach")
    run_episode(env, agent, seed=0)                   # CEM-MPC maximising u_r/m, closed loop
    explorer = train_explorer(model, starts, StepSignal("u_r", model, motion=m, task=t))
    make_actor_agent(model, explorer, task, context)  # the same objective at policy speed

`CuriosityAgent` plans with `MPCAgent`'s objective, the signal as a bonus (β > 0) instead of
a penalty, optionally mixed with the task reward. `train_explorer` is Plan2Explore's
amortised version: an actor learned in imagination (`mopo` on imagined rollouts only), whose
reward is the signal.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

import envs
import world_models
from agents.learner import Learner
from agents.mpc import MPCAgent
from agents.offline import MOPOConfig, Transitions, mopo
from planners import CEM, MPC
from replay import EpisodeStore, collect
from uncertainty import MotionStats
from world_models import Simulator
from world_models.imagined import Signal, StartWindows
from world_models.training import TrainConfig, train, with_tasks

DEFAULT_SIGNAL = "u_r/m"


def split_signal(name: str) -> tuple[str, bool]:
    """`"u_r/m"` -> (`"u_r"`, True): the signal and whether it is divided by scene motion."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a signal is a name such as {DEFAULT_SIGNAL!r}, got {name!r}")
    base, _, suffix = name.partition("/")
    if suffix not in ("", "m"):
        raise ValueError(f"signal {name!r}: the only suffix is '/m' (divided by scene motion)")
    return base, suffix == "m"


def task_motion(checkpoint: str | Path, task: str) -> MotionStats:
    """The checkpoint's scene motion, with `task` in it: a task the model never saw gets the
    mean over the tasks it knows (with a warning)."""
    motion = MotionStats.load(checkpoint)
    if task not in motion.per_task:
        known = motion.per_task
        warnings.warn(f"{checkpoint} has no scene motion for {task}: its signal is divided by the mean "
                      f"over {sorted(known)}", RuntimeWarning, stacklevel=2)
        motion = MotionStats({**known, task: float(np.mean(list(known.values())))})
    return motion


class CuriosityAgent(MPCAgent):
    """CEM-MPC in the world model that seeks a hallucination signal, executed closed-loop
    with replanning. A plan `[H, A]` scores `Σ_h γ^h (β u_h + w r_h)` (`MPCAgent` with a
    bonus instead of a penalty): `u` is the signal by name (`"u_r"`, `"u_s"`, `"u_f"`, a
    native one), divided by `motion` when given, and `w` the weight of the task reward
    (default 0: pure exploration).

    Args:
        model, mpc, task, context, discount, seed: as for `MPCAgent`.
        signal: the signal to seek.
        bonus: β > 0.
        reward_weight: w >= 0.
        motion: `MotionStats` (or `RunningMotion`) the signal is divided by, or None.
        seeds: samples per plan (default 2 for `"u_s"`, else 1).
    """

    def __init__(self, model: Simulator, mpc: MPC, task: str, *, signal: str = "u_r", bonus: float = 1.0,
                 reward_weight: float = 0.0, motion=None, context: int = 1, discount: float = 1.0,
                 seeds: int | None = None, seed: int = 0):
        if isinstance(bonus, bool) or not isinstance(bonus, (int, float)) or not bonus > 0:
            raise ValueError(f"curiosity needs a bonus > 0 on its signal, got {bonus!r}")
        seeds = (2 if signal == "u_s" else 1) if seeds is None else seeds
        super().__init__(model, mpc, task, context=context, discount=discount, signal=signal, bonus=bonus,
                         reward_weight=reward_weight, seeds=seeds, motion=motion, prior="none", prior_samples=0,
                         seed=seed)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, task: str, *, signal: str = DEFAULT_SIGNAL,
                        model: Simulator | None = None, horizon: int = 8, population: int = 64, elites: int = 8,
                        iterations: int = 3, replan_every: int = 2, select: str = "best", init_std: float = 0.7,
                        context: int | None = None, seed: int = 0, **kwargs) -> "CuriosityAgent":
        """The agent for a trained pixel world model at `checkpoint` (loaded unless `model`
        is given), seeking `signal` (`"u_r/m"`: u_r over the checkpoint's scene motion). It
        executes the highest-scoring plan (`select="best"`, as the paper does): the elite
        mean of a noisy signal shrinks towards standing still."""
        if not checkpoint:
            raise ValueError("curiosity plans in a world model: give checkpoint=<a trained model's checkpoint>")
        name, per_motion = split_signal(signal)
        if model is None:
            model = world_models.load(checkpoint)
        if model.reads_states:
            raise ValueError("curiosity acts from pixels: the state ensemble cannot drive it")
        motion = task_motion(checkpoint, task) if per_motion else None
        cem = CEM(envs.task_spec(task).action_dim, horizon, population=population, elites=elites, iterations=iterations,
                  init_std=init_std, noise_beta=1.0, select=select, seed=seed)
        return cls(model, MPC(cem, replan_every=replan_every), task, signal=name, motion=motion,
                   context=context or min(2, model.max_context), seed=seed, **kwargs)


def train_explorer(model: Simulator, starts: StartWindows, signal: Signal, *, steps: int = 2000,
                   algo: str = "sac", horizon: int = 5, rollout_batch: int = 256, bonus: float = 1.0,
                   reward_weight: float = 0.0, seed: int = 0, progress: bool = True) -> Learner:
    """Plan2Explore's amortised explorer: an actor learned by `algo` (d3rlpy) on imagined
    rollouts from `starts` whose reward is `bonus * u / u0 + reward_weight * r`, with `u0` the
    signal's mean under random actions (so the bonus is about 1 whatever the signal's units;
    SAC's entropy term drowns a raw signal of 0.02). Act with it in the real environment
    through `agents.pipeline.make_actor_agent`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    u0, obs_dim = random_signal(model, starts, signal, rollout_batch, horizon, rng)
    learner = Learner(algo, obs_dim, starts.action_dim, gamma=0.95)
    empty = Transitions(*(np.zeros((1, d), np.float32) for d in (obs_dim, starts.action_dim)),
                        np.zeros(1, np.float32), np.zeros((1, obs_dim), np.float32), np.zeros(1, np.float32))
    cfg = MOPOConfig(steps=steps, batch=256, rollout_every=max(1, steps // 20), rollout_batch=rollout_batch,
                     horizon=horizon, keep_rounds=5, real_ratio=0.0, eval_every=steps, seed=seed)
    mopo(model, learner, empty, starts, cfg, penalty=signal, bonus=bonus / u0, reward_weight=reward_weight,
         progress=progress)
    return learner


@torch.no_grad()
def random_signal(model: Simulator, starts: StartWindows, signal: Signal, n: int, horizon: int,
                  rng: np.random.Generator) -> tuple[float, int]:
    """The mean of `signal` over `n` imagined rollouts of uniform random actions from `starts`,
    and the model's feature size."""
    frames, actions = starts.draw(n, rng)
    generator = torch.Generator(device=getattr(model, "device", torch.device("cpu"))).manual_seed(int(rng.integers(2**31)))
    state = model.start(frames, actions, task=starts.task, seeds=signal.seeds, generator=generator)
    signal.begin(state, frames, actions)
    values = []
    for _ in range(horizon):
        a = torch.as_tensor(rng.uniform(-1, 1, (n, starts.action_dim)), dtype=torch.float32, device=state.features.device)
        signal.before(state, a)
        state, out = model.step(state, a, signals=signal.signals)
        values.append(signal(out).float().mean().item())
    u0 = float(np.mean(values))
    if not u0 > 0:
        raise ValueError(f"the signal's mean under random actions is {u0:.3g}: nothing to normalise the bonus by")
    return u0, state.features.shape[-1]


def collect_curious(task: str, checkpoint: str | Path, store, episodes: int, *, signal: str = DEFAULT_SIGNAL,
                    behavior: str = "curiosity", finetune_every: int = 0, finetune_steps: dict[str, int] | None = None,
                    out: str | Path | None = None, seed: int = 0, planner: dict | None = None,
                    progress: bool = True, **collect_kwargs) -> tuple[list, Path]:
    """Collect `episodes` episodes of `behavior` (``curiosity``, or ``mixed`` with curiosity
    in the mix) with the world model at `checkpoint`. With `finetune_every=K`, the model is
    finetuned on all of `task`'s episodes in `store` after every K episodes (`finetune_steps`
    per phase, default 200 dynamics steps) and the next round explores with it: the
    paper's closed loop. Round r's model is saved in `<out>/round<r>/checkpoint`.

    Returns the `CollectSummary` of each round and the checkpoint the last round ended with."""
    if finetune_every < 0 or (finetune_every and out is None):
        raise ValueError("finetune_every must be >= 0, and finetuning needs an out folder")
    found = world_models.find_checkpoint(checkpoint) if checkpoint else None
    if found is None:
        raise ValueError(f"curiosity plans in a world model: no checkpoint at {checkpoint!r} "
                         "(give checkpoint=<a trained model's checkpoint>)")
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
    model = with_tasks(world_models.load(found), [task]).eval()
    planner = planner or {}
    rounds, summaries, done = 0, [], 0
    while done < episodes:
        def make(agent_seed: int, checkpoint: Path = found) -> CuriosityAgent:
            return CuriosityAgent.from_checkpoint(checkpoint, task, signal=signal, model=model, seed=agent_seed,
                                                  **planner)
        make(seed)  # refuse a bad signal or planner before any episode runs
        n = min(finetune_every or episodes, episodes - done)
        summaries.append(collect(task, behavior, store, n, seed=seed + 1000 * rounds, agents={"curiosity": make},
                                 progress=progress, **collect_kwargs))
        done, rounds = done + n, rounds + 1
        if finetune_every:
            folder = Path(out) / f"round{rounds}"
            train(model.train(), store, store.episodes(task=task), folder,
                  TrainConfig.for_model(model, finetune_steps or {"dynamics": 200}, seed=seed, progress=progress))
            model.eval()
            found = folder / "checkpoint"
    return summaries, found


def state_coverage(states: np.ndarray, low, high, bins: int = 10) -> int:
    """How many cells of a `bins`-per-axis histogram over the box `[low, high]` the positions
    `states [N, 2]` (e.g. the agent's x, y) visit: the exploration measure of the curiosity
    experiments (points outside the box do not count)."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    inside = np.all((states >= low) & (states <= high), axis=1)
    counts, _ = np.histogramdd(states[inside], bins=bins, range=list(zip(low, high)))
    return int((counts > 0).sum())
