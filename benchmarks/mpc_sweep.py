"""Planner sweep on the main job: return and time of planner variants on the same starts.

    python benchmarks/mpc_sweep.py [--task cup-catch] [--episodes 5] [--steps 150] \\
        --variant "planner.horizon=3 planner.population=32 planner.iterations=2" \\
        --variant "sampling.sample_steps=1 planner.horizon=3" ...

Each variant is a space-separated list of `experiments/configs/mpc.yaml` overrides applied
to the defaults (an empty string is the defaults themselves). Every variant plans with the
main job's world model and offline actor and critic (`agents.pipeline.MainJob`, built by
`python experiments/mpc.py task=<task>`), and the first row is that actor alone on the same
starts. Episodes are cut after `--steps` agent steps, so the return counts how early the
policy succeeds (cup-catch: about one per agent step once the ball is in the cup).
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

import envs
import world_models
from agents.evaluate import interval, run_episode
from agents.learner import Learner
from agents.pipeline import JobConfig, MainJob, make_actor_agent, make_mpc_agent

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "mpc.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cup-catch")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--steps", type=int, default=150, help="agent steps per episode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", action="append", default=[], help="mpc.yaml overrides, e.g. planner.horizon=3")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = OmegaConf.merge(OmegaConf.load(CONFIG), {"task": args.task})
    job = MainJob(JobConfig(task=args.task, **OmegaConf.to_container(base.job)))
    checkpoint, learner = job.checkpoint(), Learner.load(job.learner_dir)
    spec = envs.task_spec(args.task)
    seeds = [10_000 + k for k in range(args.episodes)]  # experiments/mpc.py's starts at seed 0
    rows = []

    def run(name: str, make_agent, model) -> None:
        env = envs.make(args.task, obs="pixels", size=model.cfg.image_size, seed=0)
        returns, seconds = [], 0.0
        for s in seeds:
            r = run_episode(env, make_agent(s), s, max_steps=args.steps)
            returns.append(r.episode_return)
            seconds += r.seconds / r.steps
        rows.append((name, np.array(returns), seconds / len(seeds)))
        print(f"{name}: returns {[round(x) for x in returns]}, {seconds / len(seeds):.2f} s per agent step", flush=True)

    model = world_models.load(checkpoint)
    context = base.agent.context or model.max_context
    run("actor", lambda s: make_actor_agent(model, learner, args.task, context), model)
    for variant in args.variant or [""]:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(variant.split()))
        model = world_models.load(checkpoint, **cfg.sampling)
        context = cfg.agent.context or model.max_context
        t0 = time.perf_counter()
        run(f"mpc {variant or '(defaults)'}",
            lambda s: make_mpc_agent(cfg, model, learner, spec.action_dim, s, context), model)
        print(f"  ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
    print(f"\n{args.task}: {args.episodes} episodes cut at {args.steps} agent steps, same starts for every row")
    print(f"{'policy':<72}{'return (mean ± 95% CI)':>24}{'s / step':>10}")
    for name, returns, sec in rows:
        print(f"{name:<72}{returns.mean():>15.1f} ± {interval(returns):<6.1f}{sec:>10.2f}")


if __name__ == "__main__":
    main()
