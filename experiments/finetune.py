"""Finetuning on unseen tasks, by data-collection behaviour (the hallucination paper, Table 2,
at toy scale).

    python experiments/finetune.py                                  # seen reach+push, unseen pong
    python experiments/finetune.py "unseen=[toy-push,toy-pong]" episodes=50 eval_episodes=10

1. Pretrain a world model on the seen tasks (mixed behaviours).
2. For each unseen task, collect `episodes` episodes with each behaviour: noop, random,
   expert, curiosity (CEM-MPC in the pretrained model maximising `signal`) and
   curiosity-actor (Plan2Explore: an actor trained in the pretrained model's imagination
   with the signal as its reward, acting at policy speed).
3. Finetune the tokenizer and the dynamics on each set (`finetune_steps`).
4. Report per behaviour, on held-out mixed episodes of the unseen task: recon PSNR,
   rollout PSNR, the action-shuffle ratio, and MPC's return in the real task as a
   normalised score, (mpc - random) / (expert - random). The zero-shot row is the
   pretrained model itself. The collection columns give its wall time and how many cells
   of a 10 x 10 histogram over the first two state dimensions its episodes visited.

Everything is cached under `out`: a rerun skips finished stages.
"""
import json
import time
from pathlib import Path

import numpy as np
import torch
from cli import entry_point
from omegaconf import DictConfig, OmegaConf

import envs
import world_models
from agents import MPCAgent, ObservationPolicyAgent, RandomAgent
from agents.curiosity import collect_curious, split_signal, state_coverage, task_motion, train_explorer
from agents.evaluate import run_episode
from agents.pipeline import make_actor_agent, trained, write_json
from planners import CEM, MPC
from replay import EpisodeStore, collect
from replay.experts import make_expert
from uncertainty import MotionStats, StepSignal, recon_psnr
from uncertainty.evaluation import window_signals
from world_models.imagined import StartWindows
from world_models.training import TrainConfig, split_episodes, train, with_tasks

BEHAVIORS = ("noop", "random", "expert", "curiosity", "curiosity-actor")


def pretrain(cfg: DictConfig, out: Path) -> Path:
    """The world model of the seen tasks (cached in `<out>/pretrain`)."""
    store = EpisodeStore(out / "data")
    for k, task in enumerate(cfg.seen):
        if not store.episodes(task=task):
            collect(task, "mixed", store, cfg.pretrain_episodes, size=cfg.size, seed=k, progress=cfg.progress)
    folder = out / "pretrain"
    model = world_models.make(cfg.world_model, cfg.preset, tasks=tuple(cfg.seen))
    if not trained(folder / "checkpoint", len(model.phases)):
        train_eps, _ = split_episodes(store, cfg.seen, holdout=0.0)
        t0 = time.perf_counter()
        steps = {**model.cfg.phase_steps, **OmegaConf.to_container(cfg.pretrain_steps)}
        train(model, store, train_eps, folder,
              TrainConfig.for_model(model, steps, weighting="task", seed=cfg.seed, progress=cfg.progress))
        print(f"pretrained on {list(cfg.seen)} in {(time.perf_counter() - t0) / 60:.1f} min")
    return folder / "checkpoint"


def first_frames(task: str, size: int, n: int, seed: int) -> torch.Tensor:
    """`[n, 3, size, size]`: the task's first observations, where imagined exploration starts."""
    env = envs.make(task, size=size)
    return torch.as_tensor(np.stack([env.reset(seed=seed + k)[0] for k in range(n)]))


def collect_behavior(cfg: DictConfig, behavior: str, task: str, base: Path, store: EpisodeStore) -> dict:
    """Collect `cfg.episodes` episodes of `behavior` on `task` into `store`; returns the wall time."""
    t0 = time.perf_counter()
    seed = 1000 + BEHAVIORS.index(behavior)
    common = dict(size=cfg.size, seed=seed, progress=cfg.progress, num_envs=1)
    if behavior in ("noop", "random", "expert"):
        collect(task, behavior, store, cfg.episodes, **common)
        return {"collect_s": time.perf_counter() - t0}
    if behavior == "curiosity":
        collect_curious(task, base, store, cfg.episodes, signal=cfg.signal, planner=OmegaConf.to_container(cfg.planner),
                        **common)
        return {"collect_s": time.perf_counter() - t0}
    model = with_tasks(world_models.load(base), [task]).eval()
    name, per_motion = split_signal(cfg.signal)
    motion = task_motion(base, task) if per_motion else None
    starts = StartWindows(frames=first_frames(task, cfg.size, 32, seed), task=task)
    explorer = train_explorer(model, starts, StepSignal(name, model, motion=motion, task=task),
                              steps=cfg.explorer_steps, horizon=cfg.planner.horizon, seed=cfg.seed,
                              progress=cfg.progress)
    trained_s = time.perf_counter() - t0
    context = min(2, model.max_context)
    collect(task, behavior, store, cfg.episodes, agents={behavior: lambda s: make_actor_agent(model, explorer, task,
                                                                                                context)}, **common)
    return {"collect_s": time.perf_counter() - t0, "explorer_s": trained_s}


def evaluate(cfg: DictConfig, model, task: str, held: EpisodeStore, references: dict[str, float]) -> dict:
    """Fidelity on held-out episodes and MPC's normalised score in the real task."""
    eps = held.episodes(task=task)
    sig = window_signals(model, held, eps, task, windows=cfg.windows, context=1, seed=cfg.seed, retracing_ks=())
    row = {"recon_psnr": recon_psnr(model, held.sample(64, 2, episodes=eps, rng=np.random.default_rng(cfg.seed))),
           "rollout_psnr": float(sig["rollout_psnr"].mean()), "shuffle_ratio": float(np.median(sig["shuffle_ratio"]))}
    env, spec = envs.make(task, size=cfg.size), envs.task_spec(task)
    returns = []
    for k in range(cfg.eval_episodes):
        agent = MPCAgent(model, planner(cfg, spec.action_dim, k), task, context=min(2, model.max_context),
                         prior_samples=4, seed=k)
        returns.append(run_episode(env, agent, 5000 + k).episode_return)
    row["mpc_return"] = float(np.mean(returns))
    row["mpc_score"] = (row["mpc_return"] - references["random"]) / (references["expert"] - references["random"])
    return row


def planner(cfg: DictConfig, action_dim: int, seed: int) -> MPC:
    """The evaluation's CEM-MPC from `cfg.planner`."""
    p = cfg.planner
    try:
        cem = CEM(action_dim, p.horizon, population=p.population, elites=p.elites, iterations=p.iterations,
                  init_std=0.7, noise_beta=1.0, seed=seed)
        return MPC(cem, replan_every=p.replan_every)
    except ValueError as err:
        raise ValueError(f"planner: {err}") from None


def reference_returns(task: str, episodes: int) -> dict[str, float]:
    """Random's and the expert's mean return on the evaluation seeds."""
    env, spec = envs.make(task, obs="state"), envs.task_spec(task)
    agents = {"random": lambda k: RandomAgent(spec.action_dim, seed=k),
              "expert": lambda k: ObservationPolicyAgent(make_expert(task)())}
    return {name: float(np.mean([run_episode(env, make(k), 5000 + k).episode_return for k in range(episodes)]))
            for name, make in agents.items()}


@entry_point("finetune")
def main(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg.behaviors) - set(BEHAVIORS))
    if unknown:
        raise ValueError(f"behaviors: unknown {unknown}; choose from {', '.join(BEHAVIORS)}")
    overlap = sorted(set(cfg.seen) & set(cfg.unseen))
    if overlap:
        raise ValueError(f"unseen tasks must not be seen in pretraining: {overlap}")
    for task in [*cfg.seen, *cfg.unseen]:
        envs.task_spec(task)
    split_signal(cfg.signal)
    planner(cfg, 1, 0)  # a bad planner fails here, not after pretraining
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out or f"runs/finetune/{'+'.join(cfg.seen)}-to-{'+'.join(cfg.unseen)}/{cfg.seed}")
    base = pretrain(cfg, out)
    table = {}
    for task in cfg.unseen:
        held = EpisodeStore(out / "held")
        if not held.episodes(task=task):
            collect(task, "mixed", held, cfg.held_episodes, size=cfg.size, seed=99, progress=False)
        references = reference_returns(task, cfg.eval_episodes)
        MotionStats.load(base)  # a u/m signal needs it; fail before any collection
        zero_shot = with_tasks(world_models.load(base), [task]).eval()
        table[(task, "zero-shot")] = evaluate(cfg, zero_shot, task, held, references)
        print(f"{task} zero-shot: {table[(task, 'zero-shot')]}", flush=True)
        for behavior in cfg.behaviors:
            folder = out / task / behavior
            result_file = folder / "result.json"
            if result_file.exists():
                table[(task, behavior)] = json.loads(result_file.read_text())
                continue
            store = EpisodeStore(folder / "data")
            timing = collect_behavior(cfg, behavior, task, base, store) if not store.episodes(task=task) else {}
            states = np.concatenate([store.load(e).states[:, :2] for e in store.episodes(task=task)])
            model = with_tasks(world_models.load(base), [task]).train()
            t0 = time.perf_counter()
            train(model, store, store.episodes(task=task), folder / "model",
                  TrainConfig.for_model(model, OmegaConf.to_container(cfg.finetune_steps), seed=cfg.seed,
                                        progress=cfg.progress))
            row = {**timing, "finetune_s": time.perf_counter() - t0,
                   "coverage": state_coverage(states, (-1, -1), (1, 1), bins=10),
                   **evaluate(cfg, model.eval(), task, held, references)}
            write_json(result_file, row)
            table[(task, behavior)] = row
            print(f"{task} {behavior}: {row}", flush=True)
    columns = ("recon_psnr", "rollout_psnr", "shuffle_ratio", "mpc_score", "coverage", "collect_s")
    print(f"\nseen {list(cfg.seen)}, {cfg.world_model}/{cfg.preset}, {cfg.episodes} episodes per behaviour, "
          f"finetune {dict(cfg.finetune_steps)}, MPC over {cfg.eval_episodes} episodes, seed {cfg.seed}")
    print(f"{'task':<10}{'behavior':<17}" + "".join(f"{c:>14}" for c in columns))
    for (task, behavior), row in table.items():
        print(f"{task:<10}{behavior:<17}" + "".join(f"{row[c]:>14.3f}" if c in row else f"{'-':>14}" for c in columns))
    write_json(out / "table.json", {f"{t}/{b}": row for (t, b), row in table.items()})
    print(f"results: {out / 'table.json'}")


if __name__ == "__main__":
    main()
