"""The main job: value-guided MPC with a learned world model, next to its actor, BC and random.

    python experiments/mpc.py task=cup-catch

With `checkpoint=auto` it builds what is missing, each stage cached on disk and announced
with its cost on a 2-core CPU (`agents/pipeline.py`): a SAC expert (dm_control), data,
the world model, then an actor and critic learned offline on the model's features. It
then evaluates `eval_episodes` episodes per policy on the same start states:
- mpc: CEM-MPC through the world model, scoring Σ γ^h r_h + γ^H Q(f_H, π(f_H)); by default
  (`agent.prior=residual`) a plan is a correction to the actor, which keeps acting in closed
  loop on the real frames (`agent.prior=policy`: plans of raw actions seeded by the actor's
  imagined rollout);
- actor: the offline actor alone, acting from the model's features of real frames;
- bc: the world model's BC head; random: uniform actions;
- with `oracle=true`, mpc-oracle: the same planner on the true simulator with a critic
  learned offline on the recorded states (the ceiling).
The episodes run in `eval_workers` processes (default: one per CPU core). It prints
means with 95% intervals and how far the critic can be trusted (its error on the
actor's own episodes, and how much H imagined steps move its value: `agents/value_check.py`),
and writes TensorBoard logs, `metrics.csv`, `value_check.json` and, for the first MPC
episodes, videos of the real frames beside what the model imagined for its plans.
"""
import csv
import functools
import os
from pathlib import Path

import numpy as np
import torch
from cli import entry_point, load_model, resolve_device
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import envs
import world_models
from agents.evaluate import EpisodeJob, cpu_workers, interval, run_jobs
from agents.job_episodes import EpisodeOutcome, JobEpisodes, policy_names
from agents.learner import Learner
from agents.offline import MOPOConfig, feature_transitions, mopo
from agents.pipeline import JobConfig, MainJob, make_planner, write_json
from agents.value_check import summarize
from replay import EpisodeStore
from world_models.checkpoint import hold_lock

POLICIES = ("mpc", "actor", "bc", "random")


def state_learner(cfg: DictConfig, store: EpisodeStore, algo: str, steps: int) -> Path:
    """The folder of an actor and critic learned offline on the recorded states (the
    oracle's value), trained here when it is not there yet."""
    folder = Path(f"runs/offline/{cfg.task}/{algo}-states/{cfg.seed}/learner")
    if (folder / "learner.json").exists():
        return folder
    spec = envs.task_spec(cfg.task)
    state_model = world_models.make("ensemble", "tiny", tasks=(cfg.task,))  # its features are the states
    real = feature_transitions(state_model, store, store.episodes(task=cfg.task), cfg.task, progress=cfg.progress)
    learner = Learner(algo, real.obs_dim, spec.action_dim, gamma=0.99)
    print(f"training {algo} on {len(real)} recorded state transitions for the oracle's value")
    mopo(None, learner, real, None, MOPOConfig(steps=steps, seed=cfg.seed), progress=cfg.progress)
    learner.save(folder)
    return folder


MAX_AUTO_WORKERS = 8  # each holds a model and its compiled code: about 1.4 GB with the small model


def eval_workers(value, device: torch.device, jobs: int) -> int:
    """`auto`: one process per CPU core up to `MAX_AUTO_WORKERS` (each on one thread; on two
    cores this plans faster than one process on two threads), or one on a GPU."""
    if value == "auto":
        return 1 if device.type == "cuda" else max(1, min(cpu_workers(), jobs, MAX_AUTO_WORKERS))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"eval_workers must be auto or an integer >= 1, got {value!r}")
    return value


@entry_point("mpc", schemas={"job": JobConfig})
def main(cfg: DictConfig) -> None:
    spec = envs.task_spec(cfg.task)
    device = resolve_device(cfg.device)
    unknown = set(cfg.policies) - set(POLICIES)
    if unknown:
        raise ValueError(f"policies: unknown {sorted(unknown)}; choose from {', '.join(POLICIES)}")
    if cfg.eval_episodes < 1:
        raise ValueError(f"eval_episodes must be >= 1, got {cfg.eval_episodes}")
    if cfg.eval_start < 0:
        raise ValueError(f"eval_start must be >= 0, got {cfg.eval_start}")
    eval_workers(cfg.eval_workers, device, 1)  # a bad value fails now, not after training
    make_planner(cfg.planner, spec.action_dim, cfg.seed)  # likewise a bad planner value
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out or f"runs/mpc/{cfg.task}/{cfg.seed}")
    hold_lock(out)
    OmegaConf.save(cfg, out / "config.yaml")
    store = EpisodeStore(cfg.store)
    checkpoint = learner = oracle_value = model = None
    if cfg.world_model != "oracle":
        job = MainJob(JobConfig(task=cfg.task, world_model=cfg.world_model, preset=cfg.preset, seed=cfg.seed,
                                store=cfg.store, expert_dir=cfg.expert_dir, device=str(device), progress=cfg.progress,
                                **OmegaConf.to_container(cfg.job)))
        if cfg.checkpoint == "auto":
            job.build()
        checkpoint, model = load_model(job.checkpoint() if cfg.checkpoint == "auto" else cfg.checkpoint, cfg.task,
                                       device, **cfg.sampling)
        if cfg.learner == "auto":
            learner = job.learner_dir if (job.learner_dir / "learner.json").exists() else None
        elif cfg.learner != "none":
            learner = Path(cfg.learner)
            Learner.load(learner)  # a bad folder fails here, in one line
    if (cfg.world_model == "oracle" or cfg.oracle) and cfg.agent.value:
        oracle_value = state_learner(cfg, store, cfg.job.algo, cfg.job.learner_steps)
    names = policy_names(cfg, model, learner is not None)
    del model  # each process that plays episodes loads its own

    jobs = [EpisodeJob(name, k, seed=10_000 * (cfg.seed + 1) + k)  # the same start states for every policy
            for name in names for k in range(cfg.eval_start, cfg.eval_start + cfg.eval_episodes)]
    workers = eval_workers(cfg.eval_workers, device, len(jobs))
    print(f"\nevaluating {', '.join(names)}: {cfg.eval_episodes} episodes each, "
          + ("in this process" if workers == 1 else
             f"in {workers} worker processes ({max(1, cpu_workers() // workers)} thread(s) each)"), flush=True)
    runner = functools.partial(JobEpisodes, OmegaConf.to_container(cfg, resolve=True),
                               None if checkpoint is None else str(checkpoint),
                               None if learner is None else str(learner),
                               None if oracle_value is None else str(oracle_value), out=str(out))
    writer = SummaryWriter(str(out / "tb"))
    bars = {name: tqdm(total=cfg.eval_episodes * spec.episode_length, desc=name, unit="step", position=i,
                       disable=not cfg.progress) for i, name in enumerate(names)}

    def on_done(job: EpisodeJob, outcome: EpisodeOutcome) -> None:
        writer.add_scalar(f"return/{job.policy}", outcome.row["return"], job.index)
        bars[job.policy].set_postfix(ret=f"{outcome.row['return']:.1f}")
    def tick(name: str) -> None:
        if bars[name].n == 0:
            bars[name].reset()  # its clock starts with its first step, not with the evaluation
        bars[name].update(1)
    outcomes = run_jobs(jobs, runner, workers, tick=tick, on_done=on_done)
    for bar in bars.values():
        bar.close()
    writer.close()
    rows = [o.row for o in outcomes]
    checks = [o.check for o in outcomes if o.check is not None]
    tmp = out / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "metrics.csv")
    first = f", starts {cfg.eval_start}-{cfg.eval_start + cfg.eval_episodes - 1}" if cfg.eval_start else ""
    print(f"\n{cfg.task}: {cfg.eval_episodes} episodes per policy (seed {cfg.seed}{first})")
    print(f"{'policy':<12}{'return (mean ± 95% CI)':>26}{'std':>8}{'success':>9}{'s / episode':>13}")
    for name in names:
        r = [row for row in rows if row["policy"] == name]
        ret = np.array([row["return"] for row in r])
        succ = [row["success"] for row in r if row["success"] != ""]
        print(f"{name:<12}{ret.mean():>17.1f} ± {interval(ret):<6.1f}{ret.std():>8.1f}"
              f"{(f'{np.mean(succ):.0%}' if succ else '-'):>9}{np.mean([row['seconds'] for row in r]):>13.1f}")
    kept = [row["prior_kept"] for row in rows if row["prior_kept"] != ""]
    if kept:
        print(f"mpc kept the actor's plan in {np.mean(kept):.0%} of its decisions "
              f"(margin {cfg.planner.margin}: the plan must score that much higher to act)")
    if checks:
        v = summarize(checks)
        write_json(out / "value_check.json", v)
        print("critic on the actor's own episodes: " + (
            f"Q MAE {v['q_mae']:.1f} (bias {v['q_bias']:+.1f}, correlation {v['q_corr']:.2f}) against "
            f"returns-to-go of mean {v['return_mean']:.1f}" if "q_mae" in v else
            f"no Q error (episodes of {spec.episode_length} steps cut every return-to-go of γ = "
            f"{cfg.agent.discount} by more than 5%)") + (
            f"; after {cfg.planner.horizon} imagined steps V is off by {v['imagined_v_gap']:.1f} "
            f"(bias {v['imagined_v_bias']:+.1f}; V's spread on real frames {v['v_std']:.1f})"
            if "imagined_v_gap" in v else ""))
    print(f"logs, metrics.csv{', value_check.json' if checks else ''} and videos: {out}")


if __name__ == "__main__":
    main()
