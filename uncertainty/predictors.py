"""Hallucination predictors (hallucination paper §4.2) through the public `WorldModel` interface.

- `u_r`, tokenizer round-trip residual: the RMS latent change of one decode -> encode
  round trip of a predicted latent.
- `u_f`, flow instability: native in the Dreamer-4 model (`Imagination.signals`).
- `u_s`, inter-seed variance: the variance of the predicted latent across S sampling seeds.
  At the first imagined step the past and the action are fixed, as in the paper; at later
  steps the seeds' pasts differ too, so it measures how far the rollouts fan out.
- Scene-motion normalisation `ũ = u / m`, with `m` the per-step RMS latent change: a
  per-task average over a dataset (`MotionStats`) or a running estimate (`RunningMotion`).

Every function takes latents `[B, H, ...]` as the model returns them; signals are `[B, H]`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from envs import TASKS
from replay import EpisodeInfo, EpisodeStore
from world_models.base import Imagination, SimState, Simulator, Step, WorldModel
from world_models.checkpoint import read_config
from world_models.training import latent_motion, scene_motion

PREDICTORS = ("u_r", "u_f", "u_s")


def rms(x: Tensor, lead: int = 2) -> Tensor:
    """Root mean square over all but the first `lead` dims."""
    return x.float().pow(2).flatten(lead).mean(-1).sqrt()


@torch.no_grad()
def round_trip_residual(model: WorldModel, latents: Tensor) -> Tensor:
    """`u_r [B, H]`: RMS of `encode(decode(z)) - z` for latents `z [B, H, ...]`."""
    return rms(model.encode(model.decode(latents)) - latents)


def seed_variance(seed_latents: Tensor) -> Tensor:
    """`u_s [B, H]`: variance across seeds of `seed_latents [S, B, H, ...]`, averaged over the
    latent dims (zero when every seed predicts the same latent)."""
    if seed_latents is None or seed_latents.shape[0] < 2:
        raise ValueError("inter-seed variance needs an imagination with seeds >= 2")
    return seed_latents.float().var(0, unbiased=False).flatten(2).mean(-1)


class MotionStats:
    """Per-task scene motion `m`: the mean per-step RMS latent change over a dataset.

    Training measures it and writes it into the checkpoint's `config.json`
    (`world_models.training.scene_motion`), since `m` belongs to the model's latent space;
    `load` reads it from there. Checkpoints from before that keep it in `motion.json`
    (`fit(...).save(folder)`, as `experiments/hallucination.py` does).
    """

    FILE = "motion.json"

    def __init__(self, per_task: dict[str, float]):
        bad = {t: m for t, m in per_task.items() if not m > 0}
        if bad:
            raise ValueError(f"scene motion must be positive, got {bad}")
        self.per_task = dict(per_task)

    @classmethod
    def fit(cls, store: EpisodeStore, model: WorldModel, episodes: list[EpisodeInfo] | None = None,
            windows: int = 64, seq_len: int = 8, batch: int = 32, seed: int = 0) -> "MotionStats":
        """Average RMS latent change over `windows` windows per task of `episodes` (default: all)."""
        episodes = episodes if episodes is not None else store.episodes()
        return cls(scene_motion(model, store, episodes, windows, seq_len, batch, seed))

    def __call__(self, task: str) -> float:
        if task not in self.per_task:
            raise KeyError(f"no scene motion for task {task!r}; fitted on {sorted(self.per_task)}")
        return self.per_task[task]

    def normalise(self, u: Tensor, task: str) -> Tensor:
        return u / self(task)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / self.FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.per_task, indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        """Whether the checkpoint at `folder` carries scene motion."""
        return "scene_motion" in cls._config(folder) or (Path(folder) / cls.FILE).exists()

    @staticmethod
    def _config(folder: str | Path) -> dict:
        return read_config(folder) if (Path(folder) / "config.json").exists() else {}

    @classmethod
    def load(cls, folder: str | Path, task: str | None = None) -> "MotionStats":
        """The scene motion of the checkpoint at `folder` (with `task`: which it must cover);
        a checkpoint without it raises one `ValueError` that says how to add it."""
        spec = cls._config(folder)
        path = Path(folder) / cls.FILE
        if "scene_motion" in spec:
            per_task, source = spec["scene_motion"], Path(folder) / "config.json"
        elif path.exists():
            per_task, source = json.loads(path.read_text()), path
        else:
            raise ValueError(f"{folder} has no scene motion, so an uncertainty penalty would have no units; "
                             f"models trained now carry it. For this one: python experiments/hallucination.py "
                             f"checkpoint={folder} task=... (writes {cls.FILE})")
        if not isinstance(per_task, dict) or set(per_task) - set(TASKS):
            raise ValueError(f"{source}: scene motion must map registered task names to numbers, got {per_task!r}")
        if task is not None and task not in per_task:
            raise ValueError(f"{source}: no scene motion for {task!r} (has {sorted(per_task)})")
        return cls(per_task)


class RunningMotion:
    """Online scene motion: an exponential moving average of observed RMS latent changes."""

    def __init__(self, decay: float = 0.99, initial: float | None = None):
        self.decay, self.value, self.count = decay, initial, 0

    def update(self, latents: Tensor) -> float:
        """Fold in the steps of a latent sequence `[B, T, ...]`; returns the current estimate."""
        for m in latent_motion(latents).flatten().tolist():
            self.count += 1
            w = max(1 - self.decay, 1 / self.count)  # exact mean while few steps were seen
            self.value = m if self.value is None else (1 - w) * self.value + w * m
        return self.value

    def __call__(self, task: str | None = None) -> float:
        if self.value is None:
            raise ValueError("RunningMotion has seen no steps yet: call update() first")
        return self.value

    def normalise(self, u: Tensor, task: str | None = None) -> Tensor:
        return u / self(task)


def signal(name: str, model: WorldModel, im: Imagination) -> Tensor:
    """A per-step uncertainty signal `[B, H]` of an imagination, by name: `u_r`, `u_s`, or one
    the model computes natively (`u_f` is Dreamer-4's `flow_instability`)."""
    if name == "u_r":
        return round_trip_residual(model, im.latents)
    if name == "u_s":
        return seed_variance(im.seed_latents)
    native = "flow_instability" if name == "u_f" else name
    if native not in im.signals:
        raise ValueError(f"signal {name!r} was not computed; {model.name} offers {offered_signals(model)} "
                         "(native ones must be asked for in imagine(signals=...))")
    return im.signals[native]


def offered_signals(model: Simulator) -> list[str]:
    """The signal names `signal` and `StepSignal` accept for `model`: `u_r`, `u_s`, the
    model's native signals and, for flow models, `u_f` (their `flow_instability`)."""
    native = list(getattr(model, "native_signals", ()))
    return ["u_r", "u_s", *native, *(["u_f"] if "flow_instability" in native else [])]


def check_signal(name: str, model: Simulator, seeds: int | None = None) -> None:
    """Refuse a signal `model` does not offer, or `u_s` with fewer than 2 seeds, in one line."""
    if name not in offered_signals(model):
        raise ValueError(f"{model.name} offers the signals {offered_signals(model)}, not {name!r}")
    if name == "u_s" and seeds is not None and seeds < 2:
        raise ValueError("the signal u_s (inter-seed variance) needs seeds >= 2")


class MemorylessSignal:
    """The `Signal` hooks of a signal that reads each step alone: nothing to remember."""

    def begin(self, state: SimState, frames: Tensor, context_actions: Tensor | None) -> None:
        pass

    def before(self, state: SimState, action: Tensor) -> None:
        pass


class StepSignal(MemorylessSignal):
    """The `Signal` of imagined environments (`world_models.imagined`): a per-step
    uncertainty `u [B]` of a `Step` by name — `u_r`, `u_s`, `u_f` or a native signal —
    divided by the scene motion of `task` when `motion` is given."""

    def __init__(self, name: str, model: Simulator, *, motion: MotionStats | RunningMotion | None = None,
                 task: str | None = None):
        check_signal(name, model)
        native = tuple(getattr(model, "native_signals", ()))
        self.name, self.model, self.motion, self.task = name, model, motion, task
        as_native = "flow_instability" if name == "u_f" else name
        self.signals = (as_native,) if as_native in native else ()
        self.seeds = 2 if name == "u_s" else 1

    @torch.no_grad()
    def __call__(self, out: Step) -> Tensor:
        im = Imagination(latents=out.latent[:, None], rewards=None,
                         signals={k: v[:, None] for k, v in out.signals.items()},
                         seed_latents=None if out.seed_latents is None else out.seed_latents[:, :, None])
        u = signal(self.name, self.model, im)[:, 0]
        return u if self.motion is None else self.motion.normalise(u, self.task)


@torch.no_grad()
def hallucination_signals(model: WorldModel, obs: Tensor, actions: Tensor, *, task: str,
                          context_actions: Tensor | None = None, seeds: int = 4,
                          motion: MotionStats | RunningMotion | None = None,
                          generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], Imagination]:
    """Imagine `actions` from `obs` with `seeds` samples and return every predictor the model
    supports, `[B, H]` each — `u_r`, `u_s`, `u_f` (flow models), `token_entropy` (WHALE) — plus
    their motion-normalised versions `<name>/m` when `motion` is given; and the imagination."""
    native = tuple(getattr(model, "native_signals", ()))
    im = model.imagine(obs, actions, context_actions=context_actions, seeds=seeds, signals=native,
                       task=task, generator=generator)
    out = {"u_r": signal("u_r", model, im), "u_s": signal("u_s", model, im)}
    if "flow_instability" in native:
        out["u_f"] = im.signals["flow_instability"]
    if "token_entropy" in native:
        out["token_entropy"] = im.signals["token_entropy"]
    if motion is not None:
        m = motion(task)
        out.update({f"{k}/m": out[k] / m for k in PREDICTORS if k in out})
    return out, im
