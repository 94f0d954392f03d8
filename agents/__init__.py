"""Agents: glue between world models, planners and uncertainty signals.

All share one loop: `reset(obs)` at the start of an episode, `act()` for the next action,
`observe(action, next_obs)` after each step.
"""
from agents.bc import BCAgent, RandomAgent
from agents.context import FrameContext
from agents.curiosity import CuriosityAgent
from agents.mpc import MPCAgent
from agents.policy import FeaturePolicyAgent, ObservationPolicyAgent, StackedFramesAgent

__all__ = ["BCAgent", "CuriosityAgent", "FeaturePolicyAgent", "FrameContext", "MPCAgent", "ObservationPolicyAgent",
           "RandomAgent", "StackedFramesAgent"]
