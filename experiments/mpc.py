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
It prints means with 95% intervals and how far the critic can be trusted (its error on the
actor's own episodes, and how much H imagined steps move its value: `agents/value_check.py`),
and writes TensorBoard logs, `metrics.csv`, `value_check.json` and, for the first MPC
episodes, videos of the real frames beside what the model imagined for its plans.
"""
import csv
import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from cli import entry_point, load_model, resolve_device
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import envs
import world_models
from agents import BCAgent, MPCAgent, RandomAgent
from agents.evaluate import interval, run_episode
from agents.learner import Learner
from agents.offline import MOPOConfig, feature_transitions, mopo
from agents.pipeline import JobConfig, MainJob, make_actor_agent, make_mpc_agent, make_planner, write_json
from agents.value_check import summarize, value_check
from replay import EpisodeStore
from uncertainty import MotionStats
from world_models.checkpoint import hold_lock
from world_models.oracle import Oracle

POLICIES = ("mpc", "actor", "bc", "random")


def state_learner(cfg: DictConfig, store: EpisodeStore, algo: str, steps: int) -> Learner:
    """An actor and critic learned offline on the recorded states (the oracle's value)."""
    folder = Path(f"runs/offline/{cfg.task}/{algo}-states/{cfg.seed}/learner")
    if (folder / "learner.json").exists():
        return Learner.load(folder)
    spec = envs.task_spec(cfg.task)
    state_model = world_models.make("ensemble", "tiny", tasks=(cfg.task,))  # its features are the states
    real = feature_transitions(state_model, store, store.episodes(task=cfg.task), cfg.task, progress=cfg.progress)
    learner = Learner(algo, real.obs_dim, spec.action_dim, gamma=0.99)
    print(f"training {algo} on {len(real)} recorded state transitions for the oracle's value")
    mopo(None, learner, real, None, MOPOConfig(steps=steps, seed=cfg.seed), progress=cfg.progress)
    learner.save(folder)
    return learner


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
    make_planner(cfg.planner, spec.action_dim, cfg.seed)  # a bad planner value fails now, not after training
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out or f"runs/mpc/{cfg.task}/{cfg.seed}")
    hold_lock(out)
    OmegaConf.save(cfg, out / "config.yaml")
    store = EpisodeStore(cfg.store)
    policies: dict[str, callable] = {}
    size, model, learner = 64, None, None
    if cfg.world_model != "oracle":
        job = MainJob(JobConfig(task=cfg.task, world_model=cfg.world_model, preset=cfg.preset, seed=cfg.seed,
                                store=cfg.store, expert_dir=cfg.expert_dir, device=str(device), progress=cfg.progress,
                                **OmegaConf.to_container(cfg.job)))
        if cfg.checkpoint == "auto":
            job.build()
        checkpoint, model = load_model(job.checkpoint() if cfg.checkpoint == "auto" else cfg.checkpoint, cfg.task,
                                       device, **cfg.sampling)
        if cfg.compile:
            world_models.compile_transformers(model)
        if cfg.learner == "auto":
            learner = Learner.load(job.learner_dir) if (job.learner_dir / "learner.json").exists() else None
        elif cfg.learner != "none":
            learner = Learner.load(cfg.learner)
        size = model.cfg.image_size
        context = cfg.agent.context or model.max_context
        motion = MotionStats.load(checkpoint, cfg.task) if cfg.agent.penalty and cfg.agent.lam else None
        if "mpc" in cfg.policies:
            policies["mpc"] = lambda env, s: make_mpc_agent(cfg, model, learner, spec.action_dim, s, context, motion)
        if "actor" in cfg.policies and learner is not None:
            policies["actor"] = lambda env, s: make_actor_agent(model, learner, cfg.task, context)
        if "bc" in cfg.policies and model.has_policy:
            policies["bc"] = lambda env, s: BCAgent(model, cfg.task, spec.action_dim, context=context, seed=s)
    if cfg.world_model == "oracle" or cfg.oracle:
        value = state_learner(cfg, store, cfg.job.algo, cfg.job.learner_steps) if cfg.agent.value else None
        prior = "none" if value is None else cfg.agent.prior if cfg.agent.prior in ("policy", "residual") else "policy"
        oracle_cfg = OmegaConf.merge(cfg, {"agent": {"prior": prior}})
        policies["mpc-oracle"] = lambda env, s: make_mpc_agent(oracle_cfg, Oracle(env), value, spec.action_dim, s, 1)
    if "random" in cfg.policies:
        policies["random"] = lambda env, s: RandomAgent(spec.action_dim, seed=s)

    env = envs.make(cfg.task, obs="pixels", size=size, seed=cfg.seed)
    writer = SummaryWriter(str(out / "tb"))
    rows, checks = [], []
    for name, build in policies.items():
        bar = tqdm(total=cfg.eval_episodes * spec.episode_length, desc=name, unit="step", disable=not cfg.progress)
        for k in range(cfg.eval_start, cfg.eval_start + cfg.eval_episodes):
            seed = 10_000 * (cfg.seed + 1) + k  # the same start states for every policy
            agent = build(env, seed)
            track = ImaginedTrack(agent) if name == "mpc" and cfg.video and k < cfg.eval_start + 3 else None

            def on_step(t, track=track):
                bar.update(1)
                if track is not None:
                    track(t)
            check = name == "actor" and learner.has_critic
            result = run_episode(env, agent, seed, keep_frames=track is not None or check, on_step=on_step)
            if check:
                checks.append(value_check(model, learner, torch.from_numpy(np.stack(result.frames)),
                                          torch.from_numpy(np.stack(result.actions)), np.array(result.rewards),
                                          cfg.task, gamma=cfg.agent.discount, context=context,
                                          horizon=cfg.planner.horizon))
            rows.append({"policy": name, "episode": k, "seed": seed, "return": round(result.episode_return, 3),
                         "success": "" if result.success is None else int(result.success),
                         "steps": result.steps, "seconds": round(result.seconds, 1),
                         "prior_kept": round(agent.mpc.prior_kept / agent.mpc.plans, 3)
                         if isinstance(agent, MPCAgent) and agent.mpc.margin is not None and agent.mpc.plans else ""})
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
    first = f", starts {cfg.eval_start}-{cfg.eval_start + cfg.eval_episodes - 1}" if cfg.eval_start else ""
    print(f"\n{cfg.task}: {cfg.eval_episodes} episodes per policy (seed {cfg.seed}{first})")
    print(f"{'policy':<12}{'return (mean ± 95% CI)':>26}{'std':>8}{'success':>9}{'s / episode':>13}")
    for name in policies:
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
