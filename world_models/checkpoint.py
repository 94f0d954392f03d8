"""Checkpoints: a folder with `model.safetensors`, `config.json` and (while training)
`trainer.pt` (optimiser state, loaded with `weights_only=True`). Nothing is unpickled.

A checkpoint folder is replaced atomically: the new one is written next to it, then
swapped in by renames, so a crash leaves either the old or the new checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(folder: str | Path, model, trainer_state: dict | None = None) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f"{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(model.config_dict(), indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint at `folder`, or the previous one if a crash interrupted a swap."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(f"{folder.name}.old")):
        if (candidate / "model.safetensors").exists() and (candidate / "config.json").exists():
            return candidate
    return None


def read_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def load_weights(model, folder: str | Path) -> None:
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))


def load_trainer_state(folder: str | Path) -> dict | None:
    path = Path(folder) / "trainer.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
