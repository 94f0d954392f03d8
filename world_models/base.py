"""The `WorldModel` contract every model implements, and its `Imagination` result."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from typing import Iterator

import torch
from torch import Tensor, nn


@dataclass
class Imagination:
    """What `WorldModel.imagine` returns for B rollouts of H steps.

    Attributes:
        latents: `[B, H, ...]` predicted latent of each imagined frame (seed 0).
        rewards: `[B, H]` predicted reward of each action (mean over seeds).
        frames: `[B, H, 3, h, w]` in [0, 1] when `decode=True` (seed 0).
        policy_actions: `[B, H, A]` the BC head's action at the frame each step starts from
            (the context's last frame, then the imagined ones), when the model has one. For a
            policy rollout (`actions=None`) these are the actions that were imagined.
        signals: name -> `[B, H]` natively computed uncertainty signals that were asked for.
        seed_latents: `[S, B, H, ...]` latents of every seed when `seeds = S > 1`.
    """

    latents: Tensor
    rewards: Tensor
    frames: Tensor | None = None
    policy_actions: Tensor | None = None
    signals: dict[str, Tensor] = field(default_factory=dict)
    seed_latents: Tensor | None = None


class WorldModel(nn.Module, ABC):
    """A pixel world model. Frames are `[B, T, 3, H, W]`, uint8 in [0, 255] or float in [0, 1].

    Training runs in `phases` (e.g. tokenizer, then dynamics); `loss(batch, phase)` is the
    objective of one phase and `phase_parameters(phase)` what it trains.
    """

    name: str
    action_dim: int
    phases: tuple[str, ...]
    native_signals: tuple[str, ...] = ()
    has_policy: bool = False  # True: imagine(obs, None, horizon=H) rolls out a BC policy

    @abstractmethod
    def encode(self, frames: Tensor) -> Tensor:
        """`[B, T, 3, H, W]` -> latents `[B, T, ...]`."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """latents `[B, T, ...]` -> frames `[B, T, 3, H, W]` float in [0, 1]."""

    @abstractmethod
    def imagine(self, obs: Tensor, actions: Tensor, *, context_actions: Tensor | None = None,
                decode: bool = False, seeds: int = 1, signals: tuple[str, ...] = (),
                task: str | None = None) -> Imagination:
        """Roll out `actions` from `obs`.

        Args:
            obs: one frame `[B, 3, H, W]` or a context `[B, T0, 3, H, W]`.
            actions: `[B, H, A]`, or `[N, H, A]` with `B == 1` (one context, N candidate plans).
            context_actions: `[B, T0 - 1, A]`, the actions between the context frames.
            decode: also render the imagined frames.
            seeds: independent samples per rollout (see `Imagination.seed_latents`).
            signals: native uncertainty signals to compute (see `native_signals`).
            task: the task being imagined (defaults to the model's first training task).
        """

    @abstractmethod
    def loss(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss of one training phase on a batch from `EpisodeStore.sample`, and metrics."""

    @abstractmethod
    def prediction_error(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Per-sequence one-step prediction loss of the dynamics `[B]` (the quantity whose
        rise under shuffled actions measures how much the model uses actions)."""

    @abstractmethod
    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        """The parameters that `phase` trains."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def to_float_frames(frames: Tensor) -> Tensor:
    """uint8 frames in [0, 255] -> float32 in [0, 1]; float frames pass through."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def check_actions(actions: Tensor, action_dim: int) -> Tensor:
    """Validate `[B, H, A]` actions (A <= action_dim) and zero-pad them to `action_dim`."""
    if actions.ndim != 3:
        raise ValueError(f"actions must be [B, H, A], got shape {tuple(actions.shape)}")
    if actions.shape[-1] > action_dim:
        raise ValueError(f"actions have {actions.shape[-1]} dims, the model takes at most {action_dim}")
    if not torch.isfinite(actions).all():
        raise ValueError("actions contain non-finite values")
    return nn.functional.pad(actions.float(), (0, action_dim - actions.shape[-1]))


def check_imagine_inputs(model: WorldModel, obs: Tensor, signals: tuple[str, ...], seeds: int) -> Tensor:
    """Validate the common `imagine` arguments; returns obs as a context `[B, T0, 3, H, W]`."""
    unknown = set(signals) - set(model.native_signals)
    if unknown:
        raise ValueError(f"{model.name} computes {model.native_signals} natively, not {sorted(unknown)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    obs = obs[:, None] if obs.ndim == 4 else obs
    if obs.ndim != 5:
        raise ValueError(f"obs must be [B, 3, H, W] or [B, T0, 3, H, W], got {tuple(obs.shape)}")
    return obs


def context_action_inputs(context_actions: Tensor | None, B: int, T0: int, action_dim: int,
                          device: torch.device) -> tuple[Tensor, Tensor]:
    """The action that led to each of T0 context frames, padded `[B, T0, action_dim]`, and its
    mask (all False at the first frame), from `context_actions [B, T0 - 1, A]`."""
    prev = torch.zeros(B, T0, action_dim, device=device)
    prev_mask = torch.zeros(B, T0, action_dim, dtype=torch.bool, device=device)
    if T0 > 1:
        if context_actions is None or context_actions.shape[:2] != (B, T0 - 1):
            raise ValueError(f"a context of {T0} frames needs context_actions [B={B}, {T0 - 1}, A]")
        prev[:, 1:] = check_actions(context_actions.to(device), action_dim)
        prev_mask[:, 1:, : context_actions.shape[-1]] = True
    return prev, prev_mask


def previous_actions(actions: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The action that led to each of `length` frames `[B, length, A]` and its mask (no action
    before the first frame), from `actions [B, length - 1, A]` and `mask [B, A]`."""
    B, _, A = actions.shape
    prev = nn.functional.pad(actions, (0, 0, 1, 0))
    prev_mask = mask[:, None].expand(B, length, A).clone()
    prev_mask[:, 0] = False
    return prev, prev_mask


def preset_config(config_cls, presets: dict[str, dict], preset: str, overrides: dict):
    """`config_cls` built from `presets[preset]` with `overrides`; unknown names raise `ValueError`."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    bad = sorted(set(overrides) - {f.name for f in fields(config_cls)})
    if bad:
        raise ValueError(f"unknown {config_cls.__name__} field(s): {', '.join(bad)}")
    return replace(config_cls(**presets[preset]), **overrides)


def psnr_from_mse(err: Tensor) -> Tensor:
    """PSNR in dB of frames in [0, 1] with mean squared error `err` (capped at 100 dB)."""
    return -10 * torch.log10(err.clamp(min=1e-10))
