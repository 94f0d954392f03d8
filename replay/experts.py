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


def toy_reach_expert(state: np.ndarray) -> np.ndarray:
    """Head straight for the goal at full speed, slowing down on arrival."""
    from envs.toy import STEP
    return np.clip((state[2:4] - state[:2]) / STEP, -1.0, 1.0)


def expert_path(task: str, expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> Path:
    """Folder of the learned expert for a DMC task (visual variants share their base task's)."""
    spec = task_spec(task)
    base = task.removesuffix(f"-{spec.variant}") if spec.variant else task
    return Path(expert_dir) / base


def make_expert(task: str, expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> Callable[[], ExpertBehavior]:
    """A factory of expert behaviours for `task`; raises `ValueError` if none is available."""
    spec = task_spec(task)
    if spec.domain == "toy":
        return lambda: ExpertBehavior(spec.action_dim, toy_reach_expert)
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
