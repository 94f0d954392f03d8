"""The main job's evaluation episodes: its policies built from an `mpc.yaml` config, one
episode at a time, in whichever process runs them (`agents.evaluate.run_jobs`).

    runner = JobEpisodes(config, checkpoint, learner, out=out)
    outcome = runner(EpisodeJob("mpc", 0, seed=10_000))

Everything a runner needs pickles (a plain config dict and folder paths), so worker
processes build their own model, agents and environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from omegaconf import OmegaConf

import envs
import world_models
from agents.bc import BCAgent, RandomAgent
from agents.evaluate import EpisodeJob, Tick, run_episode
from agents.learner import Learner
from agents.mpc import MPCAgent
from agents.pipeline import make_actor_agent, make_mpc_agent
from agents.policy import FeaturePolicyAgent
from agents.value_check import value_check
from uncertainty import MotionStats
from world_models.oracle import Oracle

VIDEO_EPISODES = 3  # the first MPC episodes get a video of what the model imagined


@dataclass
class EpisodeOutcome:
    row: dict                 # one line of metrics.csv
    check: dict | None = None  # `value_check` of an actor episode


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


def policy_names(cfg, model, has_learner: bool) -> list[str]:
    """The policies the main job evaluates with `model` (None: the oracle alone), in the
    order they run: the slowest first."""
    wanted, names = set(cfg.policies), []
    if model is not None:
        names += ["mpc"] if "mpc" in wanted else []
        names += ["actor"] if "actor" in wanted and has_learner else []
        names += ["bc"] if "bc" in wanted and model.has_policy else []
    if model is None or cfg.oracle:
        names.append("mpc-oracle")
    return names + (["random"] if "random" in wanted else [])


class JobEpisodes:
    """The policies of `experiments/mpc.py` in this process: `runner(job)` plays one episode.

    Args:
        config: the script's config as a plain dict.
        checkpoint: the world model's checkpoint folder, or None for the oracle alone.
        learner: the offline actor and critic's folder, or None.
        oracle_value: the critic on recorded states for `mpc-oracle`, or None.
        out: where videos go.
        tick: called with the policy's name after every step.
    """

    def __init__(self, config: dict, checkpoint: str | None, learner: str | None = None,
                 oracle_value: str | None = None, *, out: str | Path, tick: Tick | None = None):
        cfg = self.cfg = OmegaConf.create(config)
        self.action_dim = envs.task_spec(cfg.task).action_dim
        self.out, self.tick = Path(out), tick or (lambda policy: None)
        self.model = self.learner = self.motion = self.context = None
        size = 64
        if checkpoint is not None:
            device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
            self.model = world_models.load(checkpoint, device=device, **cfg.sampling)
            if cfg.compile:
                world_models.compile_transformers(self.model)
            self.learner = Learner.load(learner) if learner is not None else None
            size, self.context = self.model.cfg.image_size, cfg.agent.context or self.model.max_context
            if cfg.agent.penalty and cfg.agent.lam:
                self.motion = MotionStats.load(checkpoint, cfg.task)
        self.env = envs.make(cfg.task, obs="pixels", size=size, seed=cfg.seed)
        self._state_env = None
        self.oracle_value = Learner.load(oracle_value) if oracle_value is not None else None
        makers = {"mpc": self._mpc, "actor": self._actor, "bc": self._bc, "mpc-oracle": self._oracle,
                  "random": self._random}
        self.policies = {name: makers[name] for name in policy_names(cfg, self.model, self.learner is not None)}

    def _mpc(self, seed: int) -> MPCAgent:
        return make_mpc_agent(self.cfg, self.model, self.learner, self.action_dim, seed, self.context, self.motion)

    def _actor(self, seed: int) -> FeaturePolicyAgent:
        return make_actor_agent(self.model, self.learner, self.cfg.task, self.context)

    def _bc(self, seed: int) -> BCAgent:
        return BCAgent(self.model, self.cfg.task, self.action_dim, context=self.context, seed=seed)

    def _oracle(self, seed: int) -> MPCAgent:
        """The planner on the true simulator, its plans seeded by the state critic's actor when there is one."""
        prior = self.cfg.agent.prior if self.cfg.agent.prior in ("policy", "residual") else "policy"
        cfg = OmegaConf.merge(self.cfg, {"agent": {"prior": "none" if self.oracle_value is None else prior}})
        return make_mpc_agent(cfg, Oracle(self.env), self.oracle_value, self.action_dim, seed, 1)

    def _random(self, seed: int) -> RandomAgent:
        return RandomAgent(self.action_dim, seed=seed)

    def env_for(self, policy: str):
        """Random actions need no frames, so their episodes skip rendering (same physics, same starts)."""
        if policy != "random":
            return self.env
        if self._state_env is None:
            self._state_env = envs.make(self.cfg.task, obs="state", seed=self.cfg.seed)
        return self._state_env

    def __call__(self, job: EpisodeJob) -> EpisodeOutcome:
        cfg, name = self.cfg, job.policy
        torch.manual_seed(job.seed)  # draws from the global generator (WHALE's behaviour codes) do not depend on the process
        agent = self.policies[name](job.seed)
        video = name == "mpc" and cfg.video and job.index < cfg.eval_start + VIDEO_EPISODES
        track = ImaginedTrack(agent) if video else None
        check = name == "actor" and self.learner.has_critic

        def on_step(t: int) -> None:
            self.tick(name)
            if track is not None:
                track(t)
        result = run_episode(self.env_for(name), agent, job.seed, keep_frames=video or check, on_step=on_step)
        if track is not None:
            write_video(self.out / f"mpc_episode{job.index}.mp4", result.frames[1:], track.frames)
        row = {"policy": name, "episode": job.index, "seed": job.seed, "return": round(result.episode_return, 3),
               "success": "" if result.success is None else int(result.success),
               "steps": result.steps, "seconds": round(result.seconds, 1),
               "prior_kept": round(agent.mpc.prior_kept / agent.mpc.plans, 3)
               if isinstance(agent, MPCAgent) and agent.mpc.margin is not None and agent.mpc.plans else ""}
        if not check:
            return EpisodeOutcome(row)
        return EpisodeOutcome(row, value_check(
            self.model, self.learner, torch.from_numpy(np.stack(result.frames)), torch.from_numpy(np.stack(result.actions)),
            np.array(result.rewards), cfg.task, gamma=cfg.agent.discount, context=self.context,
            horizon=cfg.planner.horizon))
