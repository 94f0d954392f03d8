"""WHALE-ST world model: VQ tokenizer, behaviour-conditioning model and ST-transformer dynamics."""
from world_models.whale.config import PRESETS, WhaleConfig, make_config
from world_models.whale.model import Whale

__all__ = ["PRESETS", "Whale", "WhaleConfig", "make_config"]
