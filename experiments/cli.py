"""Shared entry-point plumbing for the Hydra scripts in this folder."""
from __future__ import annotations

import csv
import functools
import os
import sys
from pathlib import Path
from typing import Callable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import world_models
from world_models.checkpoint import check_fields, find_checkpoint

CONFIGS = Path(__file__).parent / "configs"


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cpu` / `cuda` as asked (cuda needs a GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") or (name == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"device must be auto, cpu or cuda (with a GPU), got {name!r}")
    return torch.device(name)


def load_model(checkpoint: str | Path, task: str, device: torch.device, **options) -> tuple[Path, "world_models.Simulator"]:
    """The checkpoint folder found at `checkpoint` (a run or a checkpoint folder) and the model
    it holds, on `device` (`options` go to `world_models.load`); `ValueError` when nothing
    loads there or the model was not trained on `task`."""
    found = find_checkpoint(checkpoint)
    if found is None:
        raise ValueError(f"checkpoint: nothing loadable at {checkpoint}")
    model = world_models.load(found, device=str(device), **options)
    if task not in model.tasks:
        raise ValueError(f"task: the checkpoint was trained on {list(model.tasks)}, not {task}")
    return found, model


def write_csv(path: Path, header: list[str], rows: list) -> None:
    """Write a CSV atomically (a temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def check_types(cfg: dict, defaults: dict, schemas: dict[str, type] | None = None, prefix: str = "") -> None:
    """Raise `ValueError` where an override's type differs from its default's in the script's
    YAML: an integer default takes integers, a number default takes numbers, a boolean
    default takes true or false. Null and string defaults take anything. A node named in
    `schemas` is checked against that dataclass's fields and type hints instead."""
    for key, default in defaults.items():
        if key == "defaults" or key not in cfg:
            continue
        value, name = cfg[key], f"{prefix}{key}"
        if schemas and key in schemas and isinstance(value, dict):
            check_fields(value, schemas[key], name)
            continue
        if isinstance(default, dict):
            if isinstance(value, dict):
                check_types(value, default, prefix=f"{name}.")
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise ValueError(f"{name} must be {kind}, got {value!r}")


def one_line(err: BaseException) -> str:
    """The error as one line: I/O errors name their path, the rest keep their message."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__


def entry_point(config_name: str, schemas: dict[str, type] | None = None
                ) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """`@hydra.main` over `configs/<config_name>.yaml`. Before the script runs, every
    override must have its default's type and every mandatory value must be given; a
    `ValueError`, a non-finite training loss or an I/O error exits with one line that names
    the problem instead of a stack trace. `schemas` maps config nodes to the dataclasses they
    fill (see `check_types`)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{config_name}.yaml"))

    def wrap(fn: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(fn)
        def guarded(cfg: DictConfig) -> None:
            try:
                check_types(OmegaConf.to_container(cfg), defaults, schemas)
                missing = sorted(OmegaConf.missing_keys(cfg))
                if missing:
                    raise ValueError(f"{config_name}.py needs {' '.join(f'{k}=...' for k in missing)} "
                                     f"(see experiments/configs/{config_name}.yaml)")
                fn(cfg)
            except (ValueError, FloatingPointError, OSError, OmegaConfBaseException) as err:
                sys.exit(f"error: {one_line(err)}")

        return hydra.main(config_path="configs", config_name=config_name, version_base="1.3")(guarded)

    return wrap
