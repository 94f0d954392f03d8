"""World models behind one contract (`Simulator.start` / `step` / `imagine`), their
factory and checkpoints.

    model = world_models.make("dreamer4", preset="tiny", tasks=("toy-reach",))
    model = world_models.load("runs/train/toy-reach/0/checkpoint")
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from world_models.base import Imagination, Policy, SimState, Simulator, Step, WorldModel
from world_models.blocks import compile_transformers
from world_models.checkpoint import config_from_dict, find_checkpoint, load_weights, read_config
from world_models.features import episode_features

MODELS = ("dreamer4", "whale", "ensemble")


def _family(name: str):
    """(model class, config class, make_config) of a world model family."""
    if name == "dreamer4":
        from world_models.dreamer4 import Dreamer4, Dreamer4Config, make_config
        return Dreamer4, Dreamer4Config, make_config
    if name == "whale":
        from world_models.whale import Whale, WhaleConfig, make_config
        return Whale, WhaleConfig, make_config
    if name == "ensemble":
        from world_models.ensemble import Ensemble, EnsembleConfig, make_config
        return Ensemble, EnsembleConfig, make_config
    raise ValueError(f"unknown world model {name!r}; choose from {', '.join(MODELS)}")


def make(name: str, preset: str = "small", *, tasks: tuple[str, ...] = ("toy-reach",),
         action_dim: int | None = None, image_size: int | None = None, **overrides) -> Simulator:
    """Build an untrained world model from a preset, with config overrides. The state
    ensemble takes its state and action sizes from the first task unless given."""
    if action_dim is not None:
        overrides["action_dim"] = action_dim
    if image_size is not None:
        overrides["image_size"] = image_size
    if name == "ensemble":
        import envs
        overrides.setdefault("state_dim", envs.make(tasks[0], obs="state").state_dim)
        overrides.setdefault("action_dim", envs.task_spec(tasks[0]).action_dim)
    return _family(name)[0](make_config(name, preset, **overrides), tasks=tuple(tasks))


def make_config(name: str, preset: str = "small", **overrides):
    """The config a model built by `make(name, preset, **overrides)` would have."""
    return _family(name)[2](preset, **overrides)


def load(path: str | Path, device: str = "cpu", **overrides) -> Simulator:
    """Rebuild a saved model from its JSON config and safetensors weights. `overrides`
    replace config fields that do not change the weights, e.g. Dreamer-4's `sample_steps`."""
    folder = find_checkpoint(path)
    if folder is None:
        raise ValueError(f"no checkpoint at {path}")
    spec = read_config(folder)
    if spec["name"] not in MODELS:
        raise ValueError(f"{folder / 'config.json'}: unknown world model {spec['name']!r}")
    model_cls, config_cls, _ = _family(spec["name"])
    bad = sorted(set(overrides) - {f.name for f in fields(config_cls)})
    if bad:
        raise ValueError(f"unknown {config_cls.__name__} field(s): {', '.join(bad)}")
    cfg = config_from_dict(config_cls, {**spec["config"], **overrides}, folder / "config.json")
    model = model_cls(cfg, tasks=tuple(spec["tasks"]))
    load_weights(model, folder)
    return model.to(device).eval()


__all__ = ["Imagination", "MODELS", "Policy", "SimState", "Simulator", "Step", "WorldModel", "compile_transformers",
           "episode_features", "load", "make", "make_config"]
