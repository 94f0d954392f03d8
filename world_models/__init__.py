"""World models behind one contract (`WorldModel.imagine`), their factory and checkpoints.

    model = world_models.make("dreamer4", preset="tiny", tasks=("toy-reach",))
    model = world_models.load("runs/train/toy-reach/0/checkpoint")
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from world_models.base import Imagination, WorldModel
from world_models.checkpoint import find_checkpoint, load_weights, read_config

MODELS = ("dreamer4",)


def make(name: str, preset: str = "small", *, tasks: tuple[str, ...] = ("toy-reach",),
         action_dim: int | None = None, image_size: int | None = None, **overrides) -> WorldModel:
    """Build an untrained world model from a preset, with config overrides."""
    if action_dim is not None:
        overrides["action_dim"] = action_dim
    if image_size is not None:
        overrides["image_size"] = image_size
    if name == "dreamer4":
        from world_models.dreamer4 import Dreamer4, make_config
        return Dreamer4(make_config(preset, **overrides), tasks=tuple(tasks))
    raise ValueError(f"unknown world model {name!r}; choose from {', '.join(MODELS)}")


def load(path: str | Path, device: str = "cpu") -> WorldModel:
    """Rebuild a saved model from its JSON config and safetensors weights."""
    folder = find_checkpoint(path)
    if folder is None:
        raise ValueError(f"no checkpoint at {path}")
    spec = read_config(folder)
    if spec["name"] == "dreamer4":
        from world_models.dreamer4 import Dreamer4, Dreamer4Config
        known = {f.name for f in fields(Dreamer4Config)}
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items() if k in known}
        model = Dreamer4(Dreamer4Config(**cfg), tasks=tuple(spec["tasks"]))
    else:
        raise ValueError(f"{path}: unknown world model {spec['name']!r}")
    load_weights(model, folder)
    return model.to(device).eval()


__all__ = ["Imagination", "MODELS", "WorldModel", "load", "make"]
