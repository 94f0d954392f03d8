"""Planner speed: milliseconds per planning decision at the default planner settings.

    python benchmarks/planner_speed.py [--task cup-catch] [--threads 2] [--decisions 6]
                                       [--checkpoint runs/train/dreamer4-small/cup-catch/0/checkpoint]
                                       [--learner runs/offline/cup-catch/td3+bc/0/learner] [overrides ...]

A planning decision is one CEM solve inside `MPCAgent.act` (every `replan_every` agent
steps); the steps in between pop queued actions and are timed too. Both are measured side
by side in one run for the `small` Dreamer-4 model (a trained checkpoint when given, else
a freshly initialised one: the cost does not depend on the weights) and for the oracle
(the true simulator replaying every candidate), each with the value-guided planner: a
critic scores each plan's end and the actor seeds the plans (a fresh learner of the
job's `algo` unless one is given). Settings come from
`experiments/configs/mpc.yaml` (with any `key=value` overrides), so the figures are those
of the default main job.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

import envs
import world_models
from agents.learner import Learner
from agents.pipeline import make_mpc_agent
from world_models.oracle import Oracle

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "mpc.yaml"


def time_agent(agent, env, steps: int, seed: int) -> tuple[list[float], list[float]]:
    """Seconds of each planning `act()` and of each queued one, over `steps` env steps."""
    obs, _ = env.reset(seed=seed)
    agent.reset(obs)
    plan, queued = [], []
    for _ in range(steps):
        plans = agent.mpc.needs_plan
        t0 = time.perf_counter()
        action = agent.act()
        (plan if plans else queued).append(time.perf_counter() - t0)
        obs, *_ = env.step(action)
        agent.observe(action, obs)
    return plan, queued


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cup-catch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decisions", type=int, default=6, help="planning decisions timed per model")
    p.add_argument("--checkpoint", default=None, help="a trained small Dreamer-4 (default: fresh weights)")
    p.add_argument("--learner", default=None, help="a learner folder on the model's features (default: fresh)")
    p.add_argument("overrides", nargs="*", help="mpc.yaml overrides, e.g. planner.horizon=5 +sampling.sample_steps=2")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dotlist = [o.lstrip("+") for o in args.overrides]
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), {"task": args.task}, OmegaConf.from_dotlist(dotlist))
    spec = envs.task_spec(args.task)
    if args.checkpoint:
        model = world_models.load(args.checkpoint, **cfg.sampling)
    else:
        model = world_models.make("dreamer4", "small", tasks=[args.task], **cfg.sampling)
    model.eval()
    pl = cfg.planner
    learner = Learner.load(args.learner) if args.learner else Learner(cfg.job.algo, model.feature_dim, spec.action_dim)
    context = cfg.agent.context or model.max_context
    print(f"{args.task}, {args.threads} threads; planner: population {pl.population}, elites {pl.elites}, "
          f"{pl.iterations} iterations, horizon {pl.horizon}, replan every {pl.replan_every}; "
          f"{cfg.agent.prior} prior samples {cfg.agent.prior_samples}, value {cfg.agent.value} ({learner.name}), "
          f"context {context}")
    steps = args.decisions * pl.replan_every
    rows = []
    env = envs.make(args.task, obs="pixels", size=model.cfg.image_size, seed=0)
    agent = make_mpc_agent(cfg, model, learner, spec.action_dim, 0, context)
    rows.append((f"dreamer4/small{' (trained)' if args.checkpoint else ''}", *time_agent(agent, env, steps, 0)))
    env = envs.make(args.task, obs="pixels", size=model.cfg.image_size, seed=0)
    oracle = Oracle(env)
    agent = make_mpc_agent(cfg, oracle, Learner(cfg.job.algo, oracle.feature_dim, spec.action_dim), spec.action_dim, 0, 1)
    rows.append(("oracle", *time_agent(agent, env, steps, 0)))
    print(f"{'model':<26}{'ms / decision':>15}{'± std':>8}{'ms / queued step':>18}{'ms / agent step':>17}")
    for name, plan, queued in rows:
        per_step = 1e3 * (sum(plan) + sum(queued)) / (len(plan) + len(queued))
        print(f"{name:<26}{1e3 * np.mean(plan):>15.0f}{1e3 * np.std(plan):>8.0f}"
              f"{1e3 * np.mean(queued):>18.1f}{per_step:>17.0f}")
    ratio = np.mean(rows[0][1]) / np.mean(rows[1][1])
    print(f"dreamer4 / oracle time per decision: {ratio:.2f}x")


if __name__ == "__main__":
    main()
