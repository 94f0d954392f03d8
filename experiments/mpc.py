"""Plan with a world model: CEM-MPC with a BC prior, next to the BC policy and random.

    python experiments/mpc.py task=cup-catch

With `checkpoint=auto` it reuses the model cached under runs/train/, or builds it first,
each stage cached on disk: the SAC expert (dm_control), data collection, then world-model
training. It then evaluates `eval_episodes` episodes per policy on the same start states
and writes TensorBoard logs, metrics.csv and, per MPC episode, a video of the real frames
beside what the model imagined for the plan it was executing.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from cli import entry_point, resolve_device
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import envs
import world_models
from agents import BCAgent, MPCAgent, RandomAgent
from agents.evaluate import run_episode
from planners import CEM, MPC
from replay import EpisodeStore
from replay.experts import expert_path
from uncertainty import MotionStats
from world_models.checkpoint import find_checkpoint, load_trainer_state
from world_models.oracle import Oracle

HERE = Path(__file__).parent
# measured on the 2-core CPU this project is developed on (see the issue notes)
MINUTES = {"expert": 17, "collect_per_episode": 0.27, "train": {"tiny": 3, "small": 11, "paper": 10_000}}
EXPERT_BEHAVIORS = ("expert", "transformed", "mixed")


def trained(folder: Path, phases: int) -> bool:
    found = find_checkpoint(folder)
    return found is not None and (load_trainer_state(found) or {"phase": phases})["phase"] >= phases


def run_stage(script: str, *overrides: str) -> None:
    cmd = [sys.executable, str(HERE / script), *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd).returncode:
        raise ValueError(f"stage {script} failed (command above); fix it and rerun, finished stages are cached")


def ensure_model(cfg: DictConfig) -> Path:
    """The checkpoint to plan with: the given path, or the cached/built one for the task."""
    if cfg.checkpoint != "auto":
        if find_checkpoint(cfg.checkpoint) is None:
            raise ValueError(f"checkpoint: nothing loadable at {cfg.checkpoint}")
        return Path(cfg.checkpoint)
    run = Path(f"runs/train/{cfg.world_model}-{cfg.preset}/{cfg.task}/{cfg.seed}")
    phases = len(world_models.make(cfg.world_model, "tiny").phases)
    if trained(run / "checkpoint", phases):
        print(f"using the cached world model {run / 'checkpoint'}")
        return run / "checkpoint"
    spec = envs.task_spec(cfg.task)
    store = EpisodeStore(cfg.store)
    have = len(store.episodes(task=cfg.task, behavior=cfg.data.behavior))
    need_data = max(0, cfg.data.episodes - have)
    need_expert = (need_data and spec.domain == "dmc" and cfg.data.behavior in EXPERT_BEHAVIORS
                   and not (expert_path(cfg.task, cfg.expert_dir) / "actor.safetensors").exists())
    steps = [("SAC expert", MINUTES["expert"])] if need_expert else []
    if need_data:
        steps.append((f"collect {need_data} {cfg.data.behavior} episodes",
                      need_data * MINUTES["collect_per_episode"] * spec.episode_length / 500))
    steps.append((f"train {cfg.world_model}/{cfg.preset}", MINUTES["train"].get(cfg.preset, 0)))
    print(f"no trained {cfg.world_model}/{cfg.preset} model for {cfg.task} yet; building it first "
          f"(each stage is cached, so a rerun skips what is done):")
    for name, minutes in steps:
        print(f"  - {name}: about {minutes:.0f} min on a 2-core CPU")
    if need_expert:
        run_stage("train_expert.py", f"task={cfg.task}", f"expert_dir={cfg.expert_dir}",
                  f"progress={cfg.progress}")
    if need_data:
        size = world_models.make(cfg.world_model, cfg.preset).cfg.image_size
        run_stage("collect.py", f"task={cfg.task}", f"behavior={cfg.data.behavior}", f"episodes={need_data}",
                  f"num_envs={cfg.data.num_envs}", f"size={size}", f"seed={cfg.seed + have}",
                  f"store={cfg.store}", f"expert_dir={cfg.expert_dir}", f"progress={cfg.progress}")
    run_stage("train.py", f"world_model={cfg.world_model}", f"task={cfg.task}", f"preset={cfg.preset}",
              f"seed={cfg.seed}", f"store={cfg.store}", f"device={cfg.device}", f"out={run}",
              f"progress={cfg.progress}")
    return run / "checkpoint"


def make_planner(cfg: DictConfig, action_dim: int, seed: int) -> MPC:
    p = cfg.planner
    try:
        cem = CEM(action_dim, p.horizon, population=p.population, elites=p.elites, iterations=p.iterations,
                  init_std=p.init_std, min_std=p.min_std, max_std=p.max_std, momentum=p.momentum,
                  noise_beta=p.noise_beta, keep_elites=p.keep_elites, select=p.select, seed=seed)
        return MPC(cem, replan_every=p.replan_every)
    except ValueError as err:
        raise ValueError(f"planner: {err}") from None


def make_mpc_agent(cfg: DictConfig, model, action_dim: int, seed: int, motion=None) -> MPCAgent:
    a = cfg.agent
    return MPCAgent(model, make_planner(cfg, action_dim, seed), cfg.task, context=a.context,
                    discount=a.discount, penalty=a.penalty, lam=a.lam, seeds=a.seeds, motion=motion,
                    prior_samples=a.prior_samples, prior_noise=a.prior_noise, seed=seed)


def penalty_motion(cfg: DictConfig, checkpoint: Path) -> MotionStats | None:
    """The scene motion the penalty is divided by: the checkpoint's `motion.json` (written
    by experiments/hallucination.py) when there is one for the task, else none."""
    if not (cfg.agent.penalty and cfg.agent.lam) or not (checkpoint / MotionStats.FILE).exists():
        return None
    motion = MotionStats.load(checkpoint)
    if cfg.task not in motion.per_task:
        return None
    print(f"penalty {cfg.agent.penalty} is divided by the scene motion {motion(cfg.task):.4f} "
          f"from {checkpoint / MotionStats.FILE}")
    return motion


class ImaginedTrack:
    """`on_step` hook: after each step, the frame the model imagined for that step under
    the plan being executed (each new plan is imagined once, decoded)."""

    def __init__(self, agent: MPCAgent):
        self.agent, self.frames, self._plan, self._imagined, self._start = agent, [], None, None, 0

    def __call__(self, t: int) -> None:
        if self.agent.mpc.last_plan is not self._plan:  # this step's action opened a new plan
            self._plan, self._start = self.agent.mpc.last_plan, t
            self._imagined = self.agent.imagine_last_plan().frames[0]
        k = min(t - self._start, len(self._imagined) - 1)
        self.frames.append((self._imagined[k].clamp(0, 1) * 255).byte().cpu().numpy())


def write_video(path: Path, real: list[np.ndarray], imagined: list[np.ndarray], fps: int = 20) -> None:
    """mp4 of real (left) and imagined (right) frames `[3, h, w]`, written atomically."""
    tmp = path.with_name(path.stem + ".tmp.mp4")
    rows = [np.concatenate([r, i], axis=2).transpose(1, 2, 0) for r, i in zip(real, imagined)]
    rows = [np.kron(f, np.ones((4, 4, 1), np.uint8)) for f in rows]  # 4x upscale for viewing
    imageio.mimwrite(tmp, rows, fps=fps, macro_block_size=1)
    os.replace(tmp, path)


@entry_point("mpc")
def main(cfg: DictConfig) -> None:
    spec = envs.task_spec(cfg.task)
    device = resolve_device(cfg.device)
    unknown = set(cfg.baselines) - {"bc", "random"}
    if unknown:
        raise ValueError(f"baselines: unknown {sorted(unknown)}; choose from bc, random")
    if cfg.eval_episodes < 1:
        raise ValueError(f"eval_episodes must be >= 1, got {cfg.eval_episodes}")
    make_planner(cfg, spec.action_dim, cfg.seed)  # a bad planner value fails now, not after training
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out or f"runs/mpc/{cfg.task}/{cfg.seed}")
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    policies: dict[str, callable] = {}
    size = 64
    if cfg.world_model != "oracle":
        checkpoint = find_checkpoint(ensure_model(cfg))
        model = world_models.load(checkpoint, device=str(device))
        if cfg.task not in model.tasks:
            raise ValueError(f"the checkpoint was trained on {list(model.tasks)}, not {cfg.task}")
        size = model.cfg.image_size
        motion = penalty_motion(cfg, checkpoint)
        policies["mpc"] = lambda env, s: make_mpc_agent(cfg, model, spec.action_dim, s, motion)
        if "bc" in cfg.baselines and not model.has_policy:
            print(f"{cfg.world_model} has no BC policy head: no bc baseline, and MPC plans without a prior")
        elif "bc" in cfg.baselines:
            policies["bc"] = lambda env, s: BCAgent(model, cfg.task, spec.action_dim, context=cfg.agent.context, seed=s)
    if cfg.world_model == "oracle" or cfg.oracle:
        oracle_cfg = OmegaConf.merge(cfg, {"agent": {"prior_samples": 0, "context": 1}})
        policies["mpc-oracle"] = lambda env, s: make_mpc_agent(oracle_cfg, Oracle(env), spec.action_dim, s)
    if "random" in cfg.baselines:
        policies["random"] = lambda env, s: RandomAgent(spec.action_dim, seed=s)

    env = envs.make(cfg.task, obs="pixels", size=size, seed=cfg.seed)
    writer = SummaryWriter(str(out / "tb"))
    rows = []
    for name, build in policies.items():
        bar = tqdm(total=cfg.eval_episodes * spec.episode_length, desc=name, unit="step", disable=not cfg.progress)
        for k in range(cfg.eval_episodes):
            seed = 10_000 * (cfg.seed + 1) + k  # the same start states for every policy
            agent = build(env, seed)
            track = ImaginedTrack(agent) if name == "mpc" and cfg.video else None

            def on_step(t, track=track):
                bar.update(1)
                if track is not None:
                    track(t)
            result = run_episode(env, agent, seed, keep_frames=track is not None, on_step=on_step)
            rows.append({"policy": name, "episode": k, "seed": seed, "return": round(result.episode_return, 3),
                         "success": "" if result.success is None else int(result.success),
                         "steps": result.steps, "seconds": round(result.seconds, 1)})
            writer.add_scalar(f"return/{name}", result.episode_return, k)
            bar.set_postfix(ret=f"{result.episode_return:.1f}")
            if track is not None:
                write_video(out / f"mpc_episode{k}.mp4", result.frames[1:], track.frames)
        bar.close()
    writer.close()
    tmp = out / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "metrics.csv")
    print(f"\n{cfg.task}: {cfg.eval_episodes} episodes per policy (seed {cfg.seed})")
    print(f"{'policy':<12}{'return (mean ± std)':>22}{'success':>9}{'s / episode':>13}")
    for name in policies:
        r = [row for row in rows if row["policy"] == name]
        ret = np.array([row["return"] for row in r])
        succ = [row["success"] for row in r if row["success"] != ""]
        print(f"{name:<12}{ret.mean():>13.1f} ± {ret.std():<6.1f}{(f'{np.mean(succ):.0%}' if succ else '-'):>9}"
              f"{np.mean([row['seconds'] for row in r]):>13.1f}")
    print(f"logs, metrics.csv and videos: {out}")


if __name__ == "__main__":
    main()
