"""Episode storage, window samplers, data-collection behaviours and experts.

    store = EpisodeStore("runs/data")
    collect("toy-reach", "mixed", store, episodes=50, num_envs=2)
    batch = store.sample(16, seq_len=8, weighting="task")
"""
from replay.behaviors import BEHAVIORS, Behavior, make_behavior
from replay.collect import CollectSummary, collect
from replay.episode import Episode
from replay.experts import MLPActor, make_expert
from replay.store import EpisodeDataset, EpisodeInfo, EpisodeStore

__all__ = ["BEHAVIORS", "Behavior", "CollectSummary", "Episode", "EpisodeDataset", "EpisodeInfo",
           "EpisodeStore", "MLPActor", "collect", "make_behavior", "make_expert"]
