"""Dreamer-4-style world model: MAE tokenizer and shortcut-flow block-causal dynamics."""
from world_models.dreamer4.config import PRESETS, Dreamer4Config, make_config
from world_models.dreamer4.model import Dreamer4

__all__ = ["PRESETS", "Dreamer4", "Dreamer4Config", "make_config"]
