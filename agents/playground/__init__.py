"""Play inside a world model from a browser: `PlaySession` drives the model (and the real
environment beside it) step by step; `make_app` serves the page and a WebSocket per player."""
from agents.playground.server import bind, make_app, running, server
from agents.playground.session import BEHAVIOR, Played, PlaySession, check_playable, key_map, motion_of

__all__ = ["BEHAVIOR", "PlaySession", "Played", "bind", "check_playable", "key_map", "make_app", "motion_of", "running", "server"]
