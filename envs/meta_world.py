"""Meta-World (v3) tasks behind `TaskEnv`: goal-observable, action repeat 2, 100 agent steps."""
from __future__ import annotations

import metaworld
import numpy as np

from envs.base import TaskEnv
from envs.registry import TaskSpec

_CAMERA = "corner2"
_CAMERA_POS = (0.75, 0.075, 0.7)  # TD-MPC2's framing of the corner2 camera


class MetaWorldEnv(TaskEnv):
    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        env = metaworld.ALL_V3_ENVIRONMENTS[spec.source](
            render_mode="rgb_array", camera_name=_CAMERA, width=size, height=size)
        # What metaworld's goal-observable constructor does, without its fixed 480px renderer:
        env._partially_observable = False
        del env.sawyer_observation_space
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # goals drawn from env.np_random, so reset(seed) is reproducible
        env.model.cam_pos[env.model.camera(_CAMERA).id] = _CAMERA_POS
        self._env = env
        self._obs = np.zeros(env.observation_space.shape, np.float32)
        super().__init__(spec, obs, size, seed)

    @property
    def state_dim(self) -> int:
        return self._obs.shape[0]

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self._env.seed(int(rng.integers(2**31)))
        obs, _ = self._env.reset()
        self._obs = obs.astype(np.float32)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        obs, reward, _, _, info = self._env.step(action)
        self._obs = obs.astype(np.float32)
        return float(reward), bool(info["success"])

    def _state(self) -> np.ndarray:
        return self._obs.copy()

    def _render(self) -> np.ndarray:
        return np.ascontiguousarray(self._env.render()[::-1])  # MuJoCo's rows run bottom-up

    def close(self) -> None:
        self._env.close()
