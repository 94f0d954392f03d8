"""dm_control suite tasks behind `TaskEnv` (action repeat 2, 500 agent steps)."""
from __future__ import annotations

import numpy as np
from dm_control import suite

from envs.base import TaskEnv
from envs.registry import TaskSpec


def apply_visual_variant(physics, variant: str) -> None:
    """Recolour skybox, floor and materials in place; physics and reward are untouched.

    `var1` rotates the colour channels of every texture (skybox and floor grid), swaps the
    palette of every material, and brightens the skybox. It must run before the first
    render, which is when textures are uploaded to the GL context.
    """
    if variant != "var1":
        raise ValueError(f"unknown visual variant {variant!r}; known: var1")
    model = physics.model
    for i in range(model.ntex):
        adr, n = model.tex_adr[i], model.tex_height[i] * model.tex_width[i] * model.tex_nchannel[i]
        texels = model.tex_data[adr:adr + n].reshape(-1, model.tex_nchannel[i])
        rgb = texels[:, :3].astype(np.float32)[:, [2, 0, 1]]
        if model.texture(i).name == "skybox":
            rgb = 0.5 * rgb + 110.0
        texels[:, :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    model.mat_rgba[:, :3] = model.mat_rgba[:, [1, 2, 0]] * 0.8 + 0.15


class DMCEnv(TaskEnv):
    def __init__(self, spec: TaskSpec, obs: str = "pixels", size: int = 64, seed: int = 0):
        domain, task = spec.source.split("/")
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        if spec.variant:
            apply_visual_variant(self._env.physics, spec.variant)
        self._camera = 2 if domain == "quadruped" else 0
        self._time_step = None
        self._state_dim = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
        super().__init__(spec, obs, size, seed)

    @property
    def state_dim(self) -> int:
        return self._state_dim

    def state_names(self) -> list[str]:
        """`<observation>/<joint>` where an observation is per joint (position, velocity),
        else `<observation>[i]`."""
        physics, names = self._env.physics, []
        joints = list(physics.named.data.qpos.axes.row.names)
        for key, spec in self._env.observation_spec().items():
            n = int(np.prod(spec.shape))
            per_joint = key in ("position", "velocity") and n == len(joints)
            names += [f"{key}/{joints[i]}" if per_joint else f"{key}[{i}]" for i in range(n)]
        return names

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self._env.task.random.seed(int(rng.integers(2**31)))
        self._time_step = self._env.reset()

    def _step_sim(self, action: np.ndarray) -> tuple[float, None]:
        self._time_step = self._env.step(action)
        return float(self._time_step.reward or 0.0), None

    def _get_sim(self) -> tuple[np.ndarray, int]:
        return self._env.physics.get_state().copy(), self._env._step_count

    def _set_sim(self, sim: tuple[np.ndarray, int]) -> None:
        physics = self._env.physics
        with physics.reset_context():
            physics.set_state(sim[0])
        self._env._step_count = sim[1]
        self._env._reset_next_step = False
        self._time_step = self._time_step._replace(observation=self._env.task.get_observation(physics))

    def _state(self) -> np.ndarray:
        return np.concatenate([np.asarray(v, np.float32).ravel()
                               for v in self._time_step.observation.values()])

    def _render(self) -> np.ndarray:
        return self._env.physics.render(self.size, self.size, camera_id=self._camera)

    def close(self) -> None:
        self._env.close()
