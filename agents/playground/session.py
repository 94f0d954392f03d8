"""One player's episode inside a world model: `start` once, then `step` per key press.

The model imagines from a real first frame. With `real=True` the environment steps beside
it on the same actions, so the player sees where the model drifts, with the PSNR between
the two frames and the hallucination signals of every step. Recorded episodes (real frames,
actions and rewards) go to the episode store as behaviour `human`.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import envs
from replay import Episode, EpisodeStore
from uncertainty import MotionStats, StepSignal, offered_signals, psnr, spearman
from world_models import WorldModel

BEHAVIOR = "human"
KEY_PAIRS = (("ArrowRight", "ArrowLeft"), ("ArrowUp", "ArrowDown"), ("d", "a"), ("w", "s"), ("l", "j"), ("i", "k"))
"""Keys (`KeyboardEvent.key`) that push action dim i to +1 and -1."""


def key_map(action_dim: int) -> list[dict]:
    """`[{key, dim, sign}]` for the first `action_dim` pairs of `KEY_PAIRS`."""
    if action_dim > len(KEY_PAIRS):
        raise ValueError(f"play maps keys to at most {len(KEY_PAIRS)} action dims; this task has {action_dim}")
    return [{"key": key, "dim": dim, "sign": sign}
            for dim, pair in enumerate(KEY_PAIRS[:action_dim]) for key, sign in zip(pair, (1, -1))]


def check_playable(model, task: str, *, real: bool, record: bool) -> None:
    """Refuse, in one line, what cannot be played: a model that is not a pixel world model, a
    task it did not train on or with too many action dims, recording without `real`."""
    if not isinstance(model, WorldModel):
        raise ValueError(f"play drives a pixel world model (dreamer4 or whale), not {model.name}")
    model.task_row(task)
    key_map(envs.task_spec(task).action_dim)
    if record and not real:
        raise ValueError("recording saves the real episode: it needs real=true")


def gauge_signals(model: WorldModel) -> list[str]:
    """The signals a player watches: `u_r`, `u_s` and `u_f` (flow models) or `token_entropy`."""
    return [name for name in offered_signals(model) if name != "flow_instability"]


def png(frame: np.ndarray) -> str:
    """`uint8 [3, H, W]` -> a PNG data URL."""
    buf = io.BytesIO()
    Image.fromarray(frame.transpose(1, 2, 0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Played:
    """What an episode became: its steps, returns, mean PSNR and the file it was saved to."""

    player: int
    steps: int
    imagined_return: float
    real_return: float | None
    mean_psnr: float | None
    saved: str | None
    psnr_rho: dict[str, float | None] | None = None
    """Spearman ρ of each signal against the step's PSNR (negative: the signal rose where the
    model drifted from the real frame); None per signal where either series is constant."""


class PlaySession:
    """The episode one player drives. Not thread-safe: one session per connection.

    Args:
        model: a trained pixel world model.
        task: a task the model trained on.
        motion: scene motion that divides the signals, or None (raw signals).
        real: step the environment beside the model.
        store: where played episodes are recorded (needs `real`), or None.
        seed: seeds the starts (one per episode) and the model's sampling.
    """

    def __init__(self, model: WorldModel, task: str, *, motion: MotionStats | None = None, real: bool = False,
                 store: EpisodeStore | None = None, seed: int = 0, player: int = 0):
        check_playable(model, task, real=real, record=store is not None)
        self.model, self.task, self.real, self.store, self.player = model, task, real, store, player
        self.spec = envs.task_spec(task)
        self.keys = key_map(self.spec.action_dim)
        self.env = envs.make(task, obs="pixels", size=model.cfg.image_size, seed=seed)
        self.gauges = {name: StepSignal(name, model, motion=motion, task=task) for name in gauge_signals(model)}
        self.native = tuple({s for g in self.gauges.values() for s in g.signals})
        self.seeds = max(g.seeds for g in self.gauges.values())
        self.normalised = motion is not None
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(model.device).manual_seed(seed)
        self.substeps = model.cfg.sample_steps if hasattr(model, "with_sample_steps") else None
        self.state = None

    def hello(self) -> dict:
        """What the page needs before the first frame."""
        choices = list(self.model.sample_step_choices()) if self.substeps else []
        return {"type": "hello", "task": self.task, "model": self.model.name, "instruction": self.spec.instruction,
                "action_dim": self.spec.action_dim, "keys": self.keys, "signals": list(self.gauges),
                "normalised": self.normalised, "real": self.real, "record": self.store is not None,
                "substeps": self.substeps, "substep_choices": choices, "episode_length": self.spec.episode_length}

    @torch.no_grad()
    def reset(self) -> dict:
        """Start a new episode from a fresh real start: the first frame's message."""
        seed = int(self.rng.integers(2**31))
        obs, info = self.env.reset(seed=seed)
        options = {"sample_steps": self.substeps} if self.substeps else {}
        self.state = self.model.start(torch.as_tensor(obs)[None], task=self.task, seeds=self.seeds,
                                      generator=self.generator, **options)
        self.episode = {"seed": seed, "frames": [obs], "states": [info["state"]], "actions": [], "rewards": [],
                        "success": [], "imagined": [], "psnr": [], "terminated": False,
                        "signals": {name: [] for name in self.gauges}}
        return {"type": "frame", "t": 0, "imagined": png(obs), "real": png(obs) if self.real else None,
                "reward": None, "real_reward": None, "psnr": None, "signals": {}, "done": False}

    def set_substeps(self, k: int) -> dict:
        if not self.substeps:
            raise ValueError(f"{self.model.name} samples a frame in one pass: it has no Euler substeps")
        self.substeps = self.model.check_sample_steps(k)
        if self.state is not None:
            self.state = self.model.with_sample_steps(self.state, k)
        return {"type": "substeps", "substeps": k}

    @torch.no_grad()
    def step(self, action: np.ndarray) -> dict:
        """Advance the model (and the environment, with `real`) by `action [A]` in [-1, 1]."""
        if self.state is None:
            raise ValueError("no episode is running: call reset() first")
        ep = self.episode
        a = torch.as_tensor(action, dtype=torch.float32)[None]
        self.state, out = self.model.step(self.state, a, signals=self.native, decode=True)
        imagined = (out.frame[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
        reply = {"type": "frame", "t": len(ep["actions"]) + 1, "imagined": png(imagined),
                 "reward": None if out.reward is None else finite(out.reward[0]),
                 "signals": {name: finite(g(out)[0]) for name, g in self.gauges.items()},
                 "real": None, "real_reward": None, "psnr": None}
        for name, u in reply["signals"].items():
            ep["signals"][name].append(u)
        ep["actions"].append(np.asarray(action, np.float32))
        ep["imagined"].append(reply["reward"] or 0.0)
        done = len(ep["actions"]) >= self.spec.episode_length
        if self.real:
            obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, np.float64))
            ep["frames"].append(obs)
            ep["states"].append(info["state"])
            ep["rewards"].append(float(reward))
            ep["success"].append(bool(info.get("success", False)))
            ep["terminated"] = bool(terminated)
            ep["psnr"].append(float(psnr(out.frame[0].cpu(), torch.as_tensor(obs).float() / 255)))
            reply.update(real=png(obs), real_reward=float(reward), psnr=ep["psnr"][-1])
            done = done or terminated or truncated
        reply["done"] = bool(done)
        return reply

    def finish(self) -> Played | None:
        """Close the episode: record it when there is a store and it has steps. None before
        the first `reset`."""
        if self.state is None:
            return None
        ep, saved = self.episode, None
        if self.store is not None and ep["actions"]:
            saved = self.store.add(Episode(
                frames=np.stack(ep["frames"]).astype(np.uint8), actions=np.stack(ep["actions"]),
                rewards=np.asarray(ep["rewards"], np.float32), task=self.task, behavior=BEHAVIOR, seed=ep["seed"],
                terminated=ep["terminated"], truncated=not ep["terminated"],
                states=np.stack(ep["states"]).astype(np.float32),
                success=np.asarray(ep["success"], bool) if self.spec.has_success else None))
        self.state = None
        rho = None
        if len(ep["psnr"]) >= 3:
            rho = {name: finite(spearman(torch.tensor(u, dtype=torch.float64), torch.tensor(ep["psnr"])))
                   for name, u in ep["signals"].items() if None not in u}
        return Played(self.player, len(ep["actions"]), float(sum(ep["imagined"])),
                      float(sum(ep["rewards"])) if self.real else None,
                      float(np.mean(ep["psnr"])) if ep["psnr"] else None, None if saved is None else str(saved), rho)

    def close(self) -> None:
        """Close the environment and drop it, so that it is freed on the calling thread."""
        self.env.close()
        self.env = None


def finite(x) -> float | None:
    """A float for JSON, None where it is not finite (JSON has no NaN)."""
    x = float(x)
    return x if np.isfinite(x) else None


def action_from(value, action_dim: int) -> np.ndarray:
    """A message's action: a list of `action_dim` finite numbers, clipped to [-1, 1]."""
    if (not isinstance(value, list) or len(value) != action_dim
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"action must be a list of {action_dim} numbers")
    a = np.asarray(value, np.float64)
    if not np.isfinite(a).all():
        raise ValueError("action must be finite")
    return np.clip(a, -1.0, 1.0)


def motion_of(folder: Path, task: str) -> MotionStats | None:
    """The checkpoint's scene motion for `task`, or None when it has none."""
    if not MotionStats.exists(folder):
        return None
    motion = MotionStats.load(folder)
    return motion if task in motion.per_task else None
