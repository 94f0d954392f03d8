"""Sampling-based planners that depend on torch only.

    from planners import CEM, MPC
    cem = CEM(action_dim=2, horizon=10, seed=0)
    plan = cem.plan(lambda a: -(a - 0.5).pow(2).sum((-2, -1)))   # a: [N, H, A] -> scores [N]

Nothing here imports the rest of Mirage, so the planners plug into any RL code: all they
need is an objective that scores candidate action sequences.
"""
from planners.cem import CEM, Plan, colored_noise
from planners.mpc import MPC

__all__ = ["CEM", "MPC", "Plan", "colored_noise"]
