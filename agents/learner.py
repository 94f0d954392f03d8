"""`Learner`: a d3rlpy offline-RL algorithm over feature vectors, saved without pickles.

    learner = Learner("iql", obs_dim=128, action_dim=2)
    learner.update(obs, actions, rewards, next_obs, terminals)   # one gradient step
    learner.act(obs)                  # [N, A] deterministic actions
    learner.value(obs_t, actions_t)   # torch [N]: Q(f, a), batched for planners
    learner.save("runs/offline/.../learner"); Learner.load(...)

d3rlpy is the learner; Mirage supplies the batches (real and imagined transitions). A
learner folder holds `learner.safetensors` (every torch module of the algorithm),
`learner.json` (algorithm, sizes, hyperparameters, gradient steps) and, for resuming,
`optim.pt` (optimiser states, loaded with `weights_only=True`). Nothing is unpickled.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from world_models.checkpoint import load_module, read_json, read_weights, sha256

ALGOS = ("sac", "cql", "iql", "td3+bc", "bc")
EXPLORE_STD = 0.2   # rollout noise on the actions of TD3+BC and BC (TD3+BC's target-smoothing std)


def d3rlpy():
    """The d3rlpy module. Its import pulls in the unmaintained `gym` package, which prints a
    deprecation banner to stderr that no Mirage user can act on: it is silenced here."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        import d3rlpy as module
    return module


def _config(algo: str, **hyper):
    d3rlpy = globals()["d3rlpy"]()
    configs = {"sac": d3rlpy.algos.SACConfig, "cql": d3rlpy.algos.CQLConfig, "iql": d3rlpy.algos.IQLConfig,
               "td3+bc": d3rlpy.algos.TD3PlusBCConfig, "bc": d3rlpy.algos.BCConfig}
    if algo not in configs:
        raise ValueError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")
    cls = configs[algo]
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(hyper) - known)
    if bad:
        raise ValueError(f"{algo}: unknown hyperparameter(s) {', '.join(bad)}")
    return cls(**hyper)


class Learner:
    """See the module docstring. `hyper` are the d3rlpy config's fields (e.g. `gamma`,
    `batch_size`, `expectile`). `reward_scale` multiplies every reward the algorithm trains
    on (d3rlpy's IQL and SAC need rewards of order 1; Meta-World's reach 20 per step, see
    docs/offline.md); `value` divides it out again, so Q stays in the task's reward units
    for planners."""

    def __init__(self, algo: str, obs_dim: int, action_dim: int, device: str = "cpu:0",
                 reward_scale: float = 1.0, **hyper):
        if not (np.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"reward_scale must be a positive number, got {reward_scale}")
        self.name, self.obs_dim, self.action_dim, self.hyper = algo, obs_dim, action_dim, hyper
        self.reward_scale = float(reward_scale)
        self.algo = _config(algo, **hyper).create(device=device)
        self.algo.create_impl((obs_dim,), action_dim)
        self.steps = 0

    @property
    def modules(self) -> dict[str, nn.Module]:
        m = self.algo.impl.modules
        return {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if isinstance(getattr(m, f.name), nn.Module)}

    @property
    def has_critic(self) -> bool:
        return self.name != "bc"

    def update(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
               terminals: np.ndarray) -> dict[str, float]:
        """One gradient step on a batch: `obs, next_obs [N, F]`, `actions [N, A]`, `rewards,
        terminals [N]`."""
        TransitionMiniBatch = d3rlpy().dataset.TransitionMiniBatch
        n = len(obs)
        f32 = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
        rewards = f32(rewards).reshape(n, 1) * np.float32(self.reward_scale)
        batch = TransitionMiniBatch(observations=f32(obs), actions=f32(actions), rewards=rewards,
                                    next_observations=f32(next_obs), next_actions=f32(actions),
                                    terminals=f32(terminals).reshape(n, 1), intervals=np.ones((n, 1), np.float32),
                                    transitions=[])
        self.steps += 1
        return self.algo.update(batch)

    def act(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        """Actions `[N, A]` for observations `[N, F]`. With `explore`, SAC and CQL sample
        their policy, TD3+BC and BC add Gaussian noise of std `EXPLORE_STD` to their action
        (torch's global generator, clipped to [-1, 1]), and IQL keeps its mean action: on
        plate-slide, sampling IQL's wide policy or adding the noise made MOPO-IQL worse over
        two seeds (docs/offline.md)."""
        obs = np.ascontiguousarray(obs, np.float32)
        if explore and self.name in ("sac", "cql"):
            return self.algo.sample_action(obs)
        action = self.algo.predict(obs)
        if explore and self.name in ("td3+bc", "bc"):
            noise = EXPLORE_STD * torch.randn(action.shape).numpy()
            action = np.clip(action + noise, -1, 1).astype(np.float32)
        return action

    @torch.no_grad()
    def policy(self, obs: Tensor) -> Tensor:
        """Deterministic actions `[N, A]` for feature tensors `[N, F]` (torch, batched)."""
        return self.algo.impl.predict_best_action(obs.float().to(self.algo.impl.device)).to(obs.device)

    @torch.no_grad()
    def value(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Q(f, a) `[N]` (the critics' mean, in reward units) for feature tensors `[N, F]` and
        actions `[N, A]`."""
        if not self.has_critic:
            raise ValueError("bc has no critic")
        dev = self.algo.impl.device
        q = self.algo.impl.predict_value(obs.float().to(dev), actions.float().to(dev)).reshape(-1).to(obs.device)
        return q / self.reward_scale

    @torch.no_grad()
    def state_value(self, obs: Tensor) -> Tensor:
        """V(f) = Q(f, π(f)) `[N]`: the terminal value of value-guided MPC."""
        return self.value(obs, self.policy(obs))

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, folder: str | Path, with_optimizers: bool = False) -> Path:
        """Write the learner into `folder` (each file atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {f"{name}.{k}": v.detach().contiguous().cpu() for name, mod in self.modules.items()
                   for k, v in mod.state_dict().items()}
        tmp = folder / f".learner.{os.getpid()}.tmp"
        save_file(weights, str(tmp))
        os.replace(tmp, folder / "learner.safetensors")
        if with_optimizers:
            m = self.algo.impl.modules
            optims = {f.name: getattr(m, f.name).state_dict() for f in dataclasses.fields(m)
                      if hasattr(getattr(m, f.name), "optim")}
            torch.save(optims, tmp)
            os.replace(tmp, folder / "optim.pt")
        tmp.write_text(json.dumps({"algo": self.name, "obs_dim": self.obs_dim, "action_dim": self.action_dim,
                                   "hyper": self.hyper, "reward_scale": self.reward_scale, "steps": self.steps,
                                   "weights_sha256": sha256(folder / "learner.safetensors")}, indent=2))
        os.replace(tmp, folder / "learner.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu:0") -> "Learner":
        folder = Path(folder)
        if not (folder / "learner.json").exists() or not (folder / "learner.safetensors").exists():
            raise ValueError(f"no learner in {folder} (learner.json and learner.safetensors)")
        spec_path, weights_path, optim_path = folder / "learner.json", folder / "learner.safetensors", folder / "optim.pt"
        spec = read_json(spec_path, ("algo", "obs_dim", "action_dim", "hyper", "steps"))
        try:
            learner = cls(spec["algo"], spec["obs_dim"], spec["action_dim"], device=device,
                          reward_scale=spec.get("reward_scale", 1.0), **spec["hyper"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{spec_path}: does not describe a learner ({' '.join(str(err).split())})") from None
        weights = read_weights(weights_path, spec.get("weights_sha256"))
        for name, mod in learner.modules.items():
            load_module(mod, {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")}, weights_path)
        if optim_path.exists():
            m = learner.algo.impl.modules
            try:
                optims = torch.load(optim_path, map_location="cpu", weights_only=True)
                for name, state in optims.items():
                    getattr(m, name).load_state_dict(state)
            except (OSError, RuntimeError, EOFError, AttributeError, ValueError, pickle.UnpicklingError) as err:
                raise ValueError(f"{optim_path}: damaged or not this learner's optimisers ({type(err).__name__})") from None
        learner.steps = spec["steps"]
        return learner
