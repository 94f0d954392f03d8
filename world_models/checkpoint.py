"""Checkpoints: a folder with `model.safetensors`, `config.json` and (while training)
`trainer.pt` (optimiser state, loaded with `weights_only=True`). Nothing is unpickled.

A checkpoint folder is replaced atomically: the new one is written next to it, then
swapped in by renames, so a crash leaves either the old or the new checkpoint.
`config.json` holds the SHA-256 of the weights file, checked on load; a damaged, truncated
or edited file raises one `ValueError` that names it.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import math
import os
import pickle
import shutil
import types
import typing
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from replay.store import pid_alive

WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer.pt"


def save_checkpoint(folder: str | Path, model, trainer_state: dict | None = None,
                    scene_motion: dict[str, float] | None = None) -> Path:
    """Write `model` (and a training run's state) to `folder` atomically. `scene_motion`
    (per task, `world_models.training.scene_motion`; training writes it with the last phase)
    goes into `config.json`."""
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f"{folder.name}.old")
    remove_stale_folders(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
    spec = {**model.config_dict(), "weights_sha256": sha256(tmp / WEIGHTS)}
    if scene_motion is not None:
        spec["scene_motion"] = scene_motion
    (tmp / CONFIG).write_text(json.dumps(spec, indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def remove_stale_folders(folder: Path) -> None:
    """Delete `<folder>.tmp-<pid>` siblings whose writing process is gone (killed mid-save)."""
    for tmp in folder.parent.glob(f"{folder.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def hold_lock(folder: str | Path) -> None:
    """Lock `<folder>/.lock` for the rest of this process (again: no-op). A second process
    that asks for the same folder gets one `ValueError` instead of interleaving its writes;
    a killed process releases its locks."""
    folder = Path(folder).resolve()
    if folder in _HELD:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise ValueError(f"{folder} is being written by another run (pid {owner}); "
                         "wait for it to finish or choose another out=") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD[folder] = handle
    atexit.register(handle.close)


_HELD: dict = {}


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint at `folder`, or the previous one if a crash interrupted a swap."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(f"{folder.name}.old")):
        if (candidate / WEIGHTS).exists() and (candidate / CONFIG).exists():
            return candidate
    return None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_config(folder: str | Path) -> dict:
    """`config.json`: a model `name` (str), its `tasks` (registered names) and its `config`
    (an object); anything else raises `ValueError` naming the file."""
    import envs

    path = Path(folder) / CONFIG
    spec = read_json(path, ("name", "tasks", "config"))
    if not isinstance(spec["name"], str) or not isinstance(spec["config"], dict):
        raise ValueError(f"{path}: 'name' must be a string and 'config' an object")
    tasks = spec["tasks"]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{path}: 'tasks' must be a non-empty list of task names, got {tasks!r}")
    unknown = [t for t in tasks if t not in envs.TASKS]
    if unknown:
        raise ValueError(f"{path}: unknown task(s) {unknown}")
    return spec


def read_json(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object with at least `keys`; anything else raises one `ValueError` naming `path`."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    missing = sorted(set(keys) - set(spec))
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    return spec


def read_weights(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after checking its SHA-256 when one is expected;
    a missing, damaged or edited file raises one `ValueError` naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ValueError(f"{path}: the weights do not match their recorded SHA-256 (damaged or edited)")
    try:
        return load_safetensors(data)
    except SafetensorError as err:
        raise ValueError(f"{path}: not a valid safetensors file ({err})") from None


def load_module(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """`module.load_state_dict(state)`, a mismatch raising one `ValueError` naming `path`."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"{path}: does not fit this {type(module).__name__} ({' '.join(first[:2])})") from None


def config_from_dict(config_cls, values: dict, where: Path):
    """`config_cls(**values)`, refusing unknown fields, values of the wrong type (JSON lists
    for tuples), non-finite floats and negative integers, in one `ValueError` naming `where`."""
    check_fields(values, config_cls, where)
    try:
        return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def check_fields(values: dict, schema, where) -> None:
    """Raise one `ValueError` naming `where` unless every key of `values` is a field of the
    dataclass `schema` and its value fits the field's type hint (see `type_problem`)."""
    hints = typing.get_type_hints(schema)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{where}: unknown {schema.__name__} field(s) {', '.join(unknown)}")
    for name, value in values.items():
        problem = type_problem(value, hints[name])
        if problem:
            raise ValueError(f"{where}: {name} = {value!r}: {problem}")


def type_problem(value, hint) -> str | None:
    """Why a JSON `value` does not fit the annotation `hint`, or None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        fits = [type_problem(value, a) is None for a in args]
        return None if any(fits) else f"expected {hint}"
    if hint is type(None):
        return None if value is None else "expected null"
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return "expected an integer"
        return None if value >= 0 else "must not be negative"
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "expected a number"
        return None if math.isfinite(value) else "must be finite"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return "expected a list"
        if args and args[-1] is Ellipsis:
            items = (args[0],) * len(value)
        elif len(args) != len(value):
            return f"expected {len(args)} items"
        else:
            items = args
        for v, a in zip(value, items):
            problem = type_problem(v, a)
            if problem:
                return problem
        return None
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else "expected an object"
    return None


def load_weights(model, folder: str | Path) -> None:
    """Load `model.safetensors` into `model`, after checking its SHA-256 against `config.json`."""
    path = Path(folder) / WEIGHTS
    load_module(model, read_weights(path, read_config(folder).get("weights_sha256")), path)


def load_trainer_state(folder: str | Path) -> dict | None:
    """The optimiser state and position of a training run (None when the run has ended)."""
    path = Path(folder) / TRAINER
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path}: damaged or not a trainer state ({type(err).__name__})") from None
    if not isinstance(state, dict) or not {"phase", "step"} <= set(state):
        raise ValueError(f"{path}: not a trainer state (no phase and step)")
    return state


__all__ = ["check_fields", "config_from_dict", "find_checkpoint", "hold_lock", "load_module", "load_trainer_state", "load_weights",
           "read_config", "read_json", "read_weights", "save_checkpoint", "sha256"]
