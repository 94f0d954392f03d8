"""Agents: glue between world models, planners and uncertainty signals."""
from agents.mpc import MPCAgent

__all__ = ["MPCAgent"]
