"""Shared entry-point plumbing for the Hydra scripts in this folder."""
from __future__ import annotations

import functools
import sys
from typing import Callable

import hydra
import torch
from omegaconf import DictConfig


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cpu` / `cuda` as asked (cuda needs a GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") or (name == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"device must be auto, cpu or cuda (with a GPU), got {name!r}")
    return torch.device(name)


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """`@hydra.main` over `configs/<config_name>.yaml`; a `ValueError` (unknown task, bad
    value) exits with one line naming the problem instead of a stack trace."""

    def wrap(fn: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(fn)
        def guarded(cfg: DictConfig) -> None:
            try:
                fn(cfg)
            except ValueError as err:
                sys.exit(f"error: {err}")

        return hydra.main(config_path="configs", config_name=config_name, version_base="1.3")(guarded)

    return wrap
