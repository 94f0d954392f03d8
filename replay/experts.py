"""Task experts: analytic (toy-reach), scripted (Meta-World) and learned (DMC, SAC actors).

Learned actors are stored as safetensors plus a JSON config, so loading one never
unpickles code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import envs
from envs import task_spec
from replay.behaviors import ExpertBehavior

DEFAULT_EXPERT_DIR = Path("runs/experts")


class MLPActor(nn.Module):
    """Deterministic actor `tanh(MLP(state))`, the mean action of a SAC policy.

    Shapes: state `[..., state_dim]` -> action `[..., action_dim]` in [-1, 1].
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.config = {"state_dim": state_dim, "action_dim": action_dim, "hidden": list(hidden)}
        dims, layers = [state_dim, *hidden], []
        for i, o in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(i, o), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], action_dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(state))

    @torch.no_grad()
    def act(self, state: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(state, dtype=torch.float32)).numpy()

    @classmethod
    def from_sb3(cls, sac) -> "MLPActor":
        """Copy the mean-action path of a stable-baselines3 SAC policy (flat state input)."""
        latent = [m for m in sac.actor.latent_pi if isinstance(m, nn.Linear)]
        actor = cls(latent[0].in_features, sac.actor.mu.out_features, tuple(m.out_features for m in latent))
        linears = [m for m in actor.net if isinstance(m, nn.Linear)]
        for dst, src in zip(linears, [*latent, sac.actor.mu]):
            dst.load_state_dict(src.state_dict())
        return actor

    def save(self, folder: str | Path) -> None:
        """Write `actor.safetensors` and `actor.json` into `folder`, each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".actor.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        os.replace(tmp, folder / "actor.safetensors")
        tmp.write_text(json.dumps(self.config))
        os.replace(tmp, folder / "actor.json")

    @classmethod
    def load(cls, folder: str | Path) -> "MLPActor":
        folder = Path(folder)
        cfg = json.loads((folder / "actor.json").read_text())
        actor = cls(cfg["state_dim"], cfg["action_dim"], tuple(cfg["hidden"]))
        actor.load_state_dict(load_file(str(folder / "actor.safetensors")))
        return actor.eval()


def expert_path(task: str, expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> Path:
    """Folder of the learned expert for a DMC task (visual variants share their base task's)."""
    spec = task_spec(task)
    base = task.removesuffix(f"-{spec.variant}") if spec.variant else task
    return Path(expert_dir) / base


def make_expert(task: str, expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> Callable[[], ExpertBehavior]:
    """A factory of expert behaviours for `task`; raises `ValueError` if none is available."""
    spec = task_spec(task)
    if spec.domain == "toy":
        from envs.toy import TOYS
        return lambda: ExpertBehavior(spec.action_dim, TOYS[spec.source].expert)
    if spec.domain == "metaworld":
        from metaworld.policies import ENV_POLICY_MAP
        policy_cls = ENV_POLICY_MAP[spec.source]
        return lambda: ExpertBehavior(spec.action_dim, policy_cls().get_action)
    folder = expert_path(task, expert_dir)
    if not (folder / "actor.safetensors").exists():
        raise ValueError(f"no expert for {task} in {folder}; train one with: "
                         f"python experiments/train_expert.py task={folder.name}")
    actor = MLPActor.load(folder)
    return lambda: ExpertBehavior(spec.action_dim, actor.act)


def medium_snapshots(task: str, expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> list[Callable[[], ExpertBehavior]]:
    """Factories of a learned expert's snapshots up to its medium one: the first whose return
    reaches half the final expert's (D4RL's medium is a policy at about half the expert's
    return). Empty when the task has no learned expert with snapshots."""
    spec = task_spec(task)
    folder = expert_path(task, expert_dir)
    if spec.domain != "dmc" or not (folder / "metrics.json").exists():
        return []
    metrics = json.loads((folder / "metrics.json").read_text())
    snaps = metrics.get("snapshots", [])
    half = metrics["eval_return_mean"] / 2
    upto = next((i for i, s in enumerate(snaps) if s["return"] >= half), len(snaps) - 1)
    actors = [MLPActor.load(folder / "snapshots" / str(s["step"])) for s in snaps[: upto + 1]]
    return [lambda a=a: ExpertBehavior(spec.action_dim, a.act) for a in actors]


def evaluate_actor(actor: MLPActor, task: str, episodes: int, seed: int) -> list[float]:
    """Returns of the deterministic actor on the state-observation env."""
    env, returns = envs.make(task, obs="state", seed=seed), []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(actor.act(obs))
            total, done = total + r, term or trunc
        returns.append(total)
    env.close()
    return returns


def train_sac_expert(task: str, *, steps: int = 100_000, learning_starts: int = 5000, seed: int = 0,
                     eval_episodes: int = 10, snapshot_every: int = 5000, expert_dir: str | Path = DEFAULT_EXPERT_DIR,
                     threads: int = 1, progress: bool = True) -> dict:
    """Train a state-based SAC expert (stable-baselines3) for a base dm_control task and save
    its deterministic actor to `expert_path(task)`; every `snapshot_every` steps the actor is
    also saved to `snapshots/<step>/` with its return, for the graded datasets (`medium`,
    `medium-replay`). Returns the metrics also written to `metrics.json`."""
    import time

    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    spec = task_spec(task)
    if spec.domain != "dmc" or spec.variant:
        raise ValueError(f"SAC experts are for base dm_control tasks; {task} is {spec.domain}"
                         f"{' variant ' + spec.variant if spec.variant else ''} (it has its own expert)")
    out = expert_path(task, expert_dir)
    snapshots: list[dict] = []

    class Progress(BaseCallback):
        def __init__(self):
            super().__init__()
            self.bar = tqdm(total=steps, unit="step", desc=f"SAC {task}", disable=not progress)

        def _on_step(self) -> bool:
            self.bar.update(1)
            if self.num_timesteps % snapshot_every == 0:
                actor = MLPActor.from_sb3(self.model.policy).eval()
                ret = float(np.mean(evaluate_actor(actor, task, 3, seed=20_000 + seed)))
                actor.save(out / "snapshots" / f"{self.num_timesteps}")
                snapshots.append({"step": self.num_timesteps, "return": ret})
                self.bar.set_postfix(ret=f"{ret:.0f}")
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    env = envs.make(task, obs="state", seed=seed)
    model = SAC("MlpPolicy", env, learning_starts=learning_starts, seed=seed, verbose=0, device="cpu")
    t0, caller_threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.learn(total_timesteps=steps, callback=Progress())
    finally:  # the caller's later work (the main job's world model) keeps its threads
        torch.set_num_threads(caller_threads)
    seconds = time.perf_counter() - t0
    actor = MLPActor.from_sb3(model.policy).eval()
    returns = evaluate_actor(actor, task, eval_episodes, seed=10_000 + seed)
    actor.save(out)
    metrics = {"task": task, "steps": steps, "train_seconds": round(seconds, 1),
               "eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
               "eval_episodes": eval_episodes, "snapshots": snapshots}
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")
    return metrics
