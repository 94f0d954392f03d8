"""`Learner`: a d3rlpy offline-RL algorithm over feature vectors or raw frames, saved without pickles.

    learner = Learner("iql", obs_dim=128, action_dim=2)
    learner.update(obs, actions, rewards, next_obs, terminals)   # one gradient step
    learner.act(obs)                  # [N, A] deterministic actions
    learner.value(obs_t, actions_t)   # torch [N]: Q(f, a), batched for planners
    learner.save("runs/offline/.../learner"); Learner.load(...)
    Learner("cql", obs_dim=(9, 64, 64), action_dim=4)   # raw frames: d3rlpy's conv encoder, DrQ's shifts

d3rlpy is the learner; Mirage supplies the batches (real and imagined transitions). A
learner of raw frames (`obs_dim` a `(C, H, W)` shape, uint8 pixels) is V-D4RL's model-free
pixel baseline: d3rlpy's `PixelEncoderFactory` for every network (the Nature-DQN conv
stack from 36 px, two 3 x 3 stride-2 layers below), pixels scaled by 1/255, and DrQ's
random shifts (edge-pad by `PIXEL_SHIFT`, crop back at a random offset, independently for
`obs` and `next_obs`) on each batch.

A learner folder holds `learner.safetensors` (every torch module of the algorithm),
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
PIXEL_SHIFT = 4     # DrQ's random shift, in pixels (84 px frames in DrQ; 64 here)


def d3rlpy():
    """The d3rlpy module. Its import pulls in the unmaintained `gym` package, which prints a
    deprecation banner to stderr that no Mirage user can act on: it is silenced here."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        import d3rlpy as module
    return module


def _config(algo: str, frame: tuple[int, int] | None = None, **hyper):
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
    if frame is not None:
        small = [[32, 3, 2], [64, 3, 2]]  # the Nature stack's 8 x 8 / 4 first layer needs 36 px or more
        conv = d3rlpy.models.PixelEncoderFactory(**({} if min(frame) >= 36 else {"filters": small}))
        hyper = {**hyper, "observation_scaler": d3rlpy.preprocessing.PixelObservationScaler(),
                 **{f: conv for f in known if f.endswith("encoder_factory")}}
    return cls(**hyper)


def random_shift(images: np.ndarray, pad: int = PIXEL_SHIFT) -> np.ndarray:
    """DrQ's augmentation of `[N, C, H, W]` images: edge-pad by `pad`, crop back to `H x W`
    at an offset drawn for each image (torch's global generator)."""
    n, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n)).numpy()
    return np.stack([padded[i, :, y: y + h, x: x + w] for i, (y, x) in enumerate(zip(dy, dx))])


class Learner:
    """See the module docstring. `hyper` are the d3rlpy config's fields (e.g. `gamma`,
    `batch_size`, `expectile`). `reward_scale` multiplies every reward the algorithm trains
    on (d3rlpy's IQL and SAC need rewards of order 1; Meta-World's reach 20 per step, see
    docs/offline.md); `value` divides it out again, so Q stays in the task's reward units
    for planners."""

    def __init__(self, algo: str, obs_dim: int | tuple[int, int, int], action_dim: int, device: str = "cpu:0",
                 reward_scale: float = 1.0, **hyper):
        if not (np.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"reward_scale must be a positive number, got {reward_scale}")
        self.pixels = not isinstance(obs_dim, (int, np.integer))
        if self.pixels and (len(obs_dim) != 3 or min(obs_dim) < 1):
            raise ValueError(f"obs_dim is a feature size or a (C, H, W) frame shape, got {obs_dim}")
        obs_dim = tuple(int(d) for d in obs_dim) if self.pixels else int(obs_dim)
        self.name, self.obs_dim, self.action_dim, self.hyper = algo, obs_dim, action_dim, hyper
        self.reward_scale = float(reward_scale)
        self.algo = _config(algo, obs_dim[1:] if self.pixels else None, **hyper).create(device=device)
        self.algo.create_impl(obs_dim if self.pixels else (obs_dim,), action_dim)
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
        """One gradient step on a batch: `obs, next_obs [N, F]` (or uint8 frames `[N, C, H, W]`,
        shifted here), `actions [N, A]`, `rewards, terminals [N]`."""
        TransitionMiniBatch = d3rlpy().dataset.TransitionMiniBatch
        n = len(obs)
        if self.pixels:
            obs, next_obs = random_shift(obs), random_shift(next_obs)
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

    def _scaled(self, obs: Tensor) -> Tensor:
        """`obs` as the networks read it: on the algorithm's device, pixels scaled to [0, 1]."""
        x = obs.float().to(self.algo.impl.device)
        return self.algo.config.observation_scaler.transform(x) if self.pixels else x

    @torch.no_grad()
    def policy(self, obs: Tensor) -> Tensor:
        """Deterministic actions `[N, A]` for feature tensors `[N, F]` (torch, batched)."""
        return self.algo.impl.predict_best_action(self._scaled(obs)).to(obs.device)

    @torch.no_grad()
    def value(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Q(f, a) `[N]` (the critics' mean, in reward units) for feature tensors `[N, F]` and
        actions `[N, A]`."""
        if not self.has_critic:
            raise ValueError("bc has no critic")
        q = self.algo.impl.predict_value(self._scaled(obs), actions.float().to(self.algo.impl.device))
        q = q.reshape(-1).to(obs.device)
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
            obs_dim = tuple(spec["obs_dim"]) if isinstance(spec["obs_dim"], list) else spec["obs_dim"]
            learner = cls(spec["algo"], obs_dim, spec["action_dim"], device=device,
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
