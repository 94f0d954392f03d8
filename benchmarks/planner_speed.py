"""Planner speed against its FLOP floor: milliseconds per planning decision at the
`mpc.yaml` defaults, side by side in one run.

    python benchmarks/planner_speed.py [--task cup-catch] [--threads 2] [--decisions 8] [--compile] [--substeps 4 2]
                                       [--checkpoint runs/train/dreamer4-small/cup-catch/0/checkpoint]
                                       [--learner runs/offline/cup-catch/td3+bc/0/learner] [overrides ...]

A planning decision is one CEM solve inside `MPCAgent.act` (every `replan_every` agent
steps): a `start` on the context, the prior's rollout, then `iterations` rollouts of the
whole population. The FLOP floor is the model's FLOPs per imagined frame (one step of a
population-wide rollout, counted by `torch.utils.flop_counter`) times the frames imagined
per decision, divided by the rate of a 1024 x 1024 float32 matmul measured in the same
run: the time the decision would take if every FLOP ran at matmul speed; `x 1st floor`
compares each row with the first row's floor (the same frames at its substep count). Rows: the small
Dreamer-4 (a trained checkpoint when given, else fresh weights: the cost does not depend
on them) at each `--substeps` count, with `--compile` also with its transformer compiled
(`world_models.compile_transformers`), and the oracle (the true simulator replaying every
candidate). Each plans with the value-guided planner: a critic values each plan's end and
the actor seeds the plans (a fresh learner of the job's `algo` unless one is given).
`ms / step` is the mean time of every `act()` over the timed decisions, planning or not
(the residual prior runs the actor on each real frame between plans).
Decisions of the rows are interleaved, so a drift in the machine's speed hits them alike.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

import envs
import world_models
from agents.learner import Learner
from agents.pipeline import make_mpc_agent
from world_models.oracle import Oracle

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "mpc.yaml"


def matmul_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of an `n x n` float32 matmul on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e9


class Row:
    """One planner on its own env, stepped a decision at a time."""

    def __init__(self, name: str, agent, env, model, context: int):
        self.name, self.agent, self.env, self.model, self.context = name, agent, env, model, context
        self.seconds: list[float] = []
        self.acting, self.steps = 0.0, 0  # every act() since the warm-up, planning or not
        obs, _ = env.reset(seed=0)
        agent.reset(obs)

    def decide(self) -> float:
        """Step until the agent plans, and time that `act()`."""
        while True:
            plans = self.agent.mpc.needs_plan
            t0 = time.perf_counter()
            action = self.agent.act()
            dt = time.perf_counter() - t0
            self.acting, self.steps = self.acting + dt, self.steps + 1
            obs, *_ = self.env.step(action)
            self.agent.observe(action, obs)
            if plans:
                return dt


def frames_and_flops(row: Row) -> tuple[int, float, float]:
    """Frames imagined in one decision, the model's FLOPs per imagined frame (a step of the
    widest rollout of that decision, from a window that does not slide) and the FLOPs the
    decision executed."""
    model, rows = row.model, []
    step = model.step

    def counting(state, actions, **kw):
        rows.append(len(actions))
        return step(state, actions, **kw)

    model.step = counting
    with FlopCounterMode(display=False) as total:
        row.decide()
    del model.step
    widest = max(rows)
    state = row.agent.plan_start.select(torch.zeros(widest, dtype=torch.long))
    actions = torch.zeros(widest, row.env.action_space.shape[0])
    state, _ = model.step(state, actions)  # past any slide of a full window
    with FlopCounterMode(display=False) as one:
        model.step(state, actions)
    return sum(rows), one.get_total_flops() / widest, total.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="cup-catch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decisions", type=int, default=8, help="planning decisions timed per row")
    p.add_argument("--checkpoint", default=None, help="a trained small Dreamer-4 (default: fresh weights)")
    p.add_argument("--learner", default=None, help="a learner folder on the model's features (default: fresh)")
    p.add_argument("--compile", action="store_true", help="also time the model with its transformer compiled")
    p.add_argument("--substeps", type=int, nargs="+", default=None,
                   help="Euler substeps per imagined frame, a row (pair) each (default: the model's own)")
    p.add_argument("overrides", nargs="*", help="mpc.yaml overrides, e.g. planner.horizon=5 +sampling.sample_steps=2")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), {"task": args.task},
                          OmegaConf.from_dotlist([o.lstrip("+") for o in args.overrides]))
    spec = envs.task_spec(args.task)

    def load(substeps: int | None = None):
        sampling = {**cfg.sampling, **({"sample_steps": substeps} if substeps else {})}
        if args.checkpoint:
            return world_models.load(args.checkpoint, **sampling).eval()
        return world_models.make("dreamer4", "small", tasks=[args.task], **sampling).eval()

    model = load()
    learner = Learner.load(args.learner) if args.learner else Learner(cfg.job.algo, model.feature_dim, spec.action_dim)
    context = cfg.agent.context or model.max_context
    pl = cfg.planner
    print(f"{args.task}, {args.threads} threads; planner: population {pl.population}, elites {pl.elites}, "
          f"{pl.iterations} iterations, horizon {pl.horizon}, replan every {pl.replan_every}; "
          f"{cfg.agent.prior} prior samples {cfg.agent.prior_samples}, value {cfg.agent.value} ({learner.name}), "
          f"context {context}")

    def row(name, planner_model, planner_learner, ctx, env=None):
        env = env or envs.make(args.task, obs="pixels", size=model.cfg.image_size, seed=0)
        agent = make_mpc_agent(cfg, planner_model, planner_learner, spec.action_dim, 0, ctx)
        return Row(name, agent, env, planner_model, ctx)

    rows = []
    for substeps in args.substeps or [model.cfg.sample_steps]:
        name = f"dreamer4/small{' (trained)' if args.checkpoint else ''}, {substeps} substeps"
        rows.append(row(name, load(substeps), learner, context))
        if args.compile:
            t0 = time.perf_counter()
            rows.append(row(f"{name}, compiled", world_models.compile_transformers(load(substeps)), learner, context))
            rows[-1].decide()
            print(f"compiling: {time.perf_counter() - t0:.0f} s until the first decision was made")
    env = envs.make(args.task, obs="pixels", size=model.cfg.image_size, seed=0)
    oracle = Oracle(env)
    rows.append(row("oracle", oracle, Learner(cfg.job.algo, oracle.feature_dim, spec.action_dim), 1, env))

    rate = [matmul_gflops()]
    for r in rows:  # warm up until the context is full: first calls allocate, and a compiled
        while r.steps <= r.context:  # model compiles once for each context length
            r.decide()
        r.acting, r.steps = 0.0, 0
    for _ in range(args.decisions):
        for r in rows:
            r.seconds.append(r.decide())
    rate.append(matmul_gflops())
    gflops = float(np.mean(rate))
    print(f"float32 matmul: {gflops:.0f} GFLOP/s (before {rate[0]:.0f}, after {rate[1]:.0f})")
    print(f"{'row':<44}{'ms / decision':>14}{'IQR':>6}{'ms / step':>10}{'frames':>8}{'GFLOP/frame':>13}"
          f"{'floor ms':>10}{'x floor':>9}{'x 1st floor':>13}{'executed GFLOP':>16}")
    first_floor = None
    for r in rows:
        ms = 1e3 * np.array(r.seconds)
        q1, q3 = np.percentile(ms, [25, 75])
        per_step = 1e3 * r.acting / r.steps
        if isinstance(r.model, Oracle):
            print(f"{r.name:<44}{np.median(ms):>14.0f}{q3 - q1:>6.0f}{per_step:>10.0f}")
            continue
        frames, per_frame, executed = frames_and_flops(r)
        floor = 1e3 * frames * per_frame / (gflops * 1e9)
        first_floor = first_floor or floor
        print(f"{r.name:<44}{np.median(ms):>14.0f}{q3 - q1:>6.0f}{per_step:>10.0f}{frames:>8}{per_frame / 1e9:>13.4f}"
              f"{floor:>10.0f}"
              f"{np.median(ms) / floor:>9.2f}{np.median(ms) / first_floor:>13.2f}{executed / 1e9:>16.1f}")


if __name__ == "__main__":
    main()
