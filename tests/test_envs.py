import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs

SIM_TASKS = envs.list_tasks("dmc") + envs.list_tasks("metaworld")


@pytest.mark.parametrize("task", SIM_TASKS)
def test_every_simulated_task_resets_steps_and_renders(task):
    env = envs.make(task, size=16)
    try:
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(np.zeros(env.task.action_dim))
        assert obs.shape == (3, 16, 16) and obs.dtype == np.uint8
        assert obs.std() > 0, "rendered frame is blank"
        assert np.isfinite(reward)
        assert info["state"].dtype == np.float32 and info["state"].shape == (env.state_dim,)
        assert ("success" in info) == env.task.has_success
    finally:
        env.close()


def test_registry_covers_mt50_and_required_dmc_tasks():
    import metaworld
    assert {s.source for s in envs.TASKS.values() if s.domain == "metaworld"} == set(metaworld.ALL_V3_ENVIRONMENTS)
    for t in ["cup-catch", "finger-turn-easy", "reacher-easy", "reacher-hard", "walker-walk",
              "cartpole-swingup", "cheetah-run", "pendulum-swingup", "cup-catch-var1",
              "finger-turn-easy-var1", "toy-reach"]:
        assert t in envs.TASKS
    spec = envs.task_spec("mw-push")
    assert (spec.action_kind, spec.delta_dims, spec.episode_length) == ("delta_pose", (0, 1, 2), 100)
    spec = envs.task_spec("cup-catch")
    assert (spec.action_kind, spec.action_repeat, spec.episode_length) == ("torque", 2, 500)


@pytest.mark.parametrize("task,obs", [("toy-reach", "pixels"), ("toy-reach", "state"),
                                      ("cup-catch", "pixels"), ("mw-push", "state")])
def test_check_env(task, obs):
    env = envs.make(task, obs=obs, size=16)
    try:
        check_env(env, skip_render_check=False)
    finally:
        env.close()


def test_unknown_task_lists_close_names():
    with pytest.raises(ValueError, match="cup-catch"):
        envs.make("cup-cach")


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((1, 2)), np.array([np.nan, 0.0]), np.array([np.inf, 0.0])])
def test_bad_actions_are_rejected(bad):
    env = envs.make("toy-reach", size=16)
    env.reset()
    with pytest.raises(ValueError, match="toy-reach: action"):
        env.step(bad)


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="obs"):
        envs.make("toy-reach", obs="rgb")
    with pytest.raises(ValueError, match="size"):
        envs.make("toy-reach", size=3)
    with pytest.raises(ValueError, match="unexpected options"):
        envs.make("cup-catch", goal_box=((0, 0), (1, 1)))


def test_reset_seed_reproduces_episode():
    env = envs.make("cup-catch", obs="state")
    a = [env.reset(seed=3)[0]] + [env.step(np.full(2, 0.5))[0] for _ in range(5)]
    b = [env.reset(seed=3)[0]] + [env.step(np.full(2, 0.5))[0] for _ in range(5)]
    c = env.reset(seed=4)[0]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(a[0], c)


def test_visual_variant_changes_pixels_not_physics():
    base, var = envs.make("cup-catch", size=32), envs.make("cup-catch-var1", size=32)
    fb, ib = base.reset(seed=1)
    fv, iv = var.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = rng.uniform(-1, 1, 2)
        fb, rb, *_, ib = base.step(a)
        fv, rv, *_, iv = var.step(a)
        assert rb == rv
        np.testing.assert_array_equal(ib["state"], iv["state"])
    assert np.abs(fb.astype(int) - fv.astype(int)).mean() > 20  # different skybox, floor, colours


def test_toy_reach_reward_and_success():
    env = envs.make("toy-reach", size=32, start_box=((-0.8, -0.8), (-0.7, -0.7)), goal_box=((0.6, 0.6), (0.7, 0.7)))
    _, info = env.reset(seed=0)
    pos, goal = info["state"][:2], info["state"][2:]
    rewards, success, t = [], False, 0
    while not success:
        _, r, _, trunc, info = env.step(np.clip((goal - pos) / 0.15, -1, 1))
        pos, success, t = info["state"][:2], info["success"], t + 1
        rewards.append(r)
        assert not trunc
    assert np.all(np.diff(rewards) > 0) and t <= 15


def test_toy_reach_renders_agent_where_it_is():
    env = envs.make("toy-reach", size=32, start_box=((-0.7, 0.7), (-0.7, 0.7)), goal_box=((0.7, -0.7), (0.7, -0.7)))
    frame, _ = env.reset(seed=0)
    red = (frame[0] > 200) & (frame[1] < 100)
    green = (frame[1] > 150) & (frame[0] < 100)
    ys, xs = np.nonzero(red)
    assert xs.mean() < 16 and ys.mean() < 16  # agent top-left
    ys, xs = np.nonzero(green)
    assert xs.mean() > 16 and ys.mean() > 16  # goal bottom-right


@pytest.mark.parametrize("preset,expected", [(None, "egl"), ("osmesa", "osmesa")])
def test_mujoco_gl_defaults_to_egl_unless_set(preset, expected):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    if preset:
        env["MUJOCO_GL"] = preset
    out = subprocess.run([sys.executable, "-c", "import os, envs; print(os.environ['MUJOCO_GL'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == expected


TOYS = ("toy-reach", "toy-pong", "toy-maze", "toy-push")


@pytest.mark.parametrize("task", TOYS)
def test_toy_expert_succeeds_and_beats_random(task):
    from replay.experts import make_expert

    env, expert = envs.make(task, obs="state"), make_expert(task)()
    returns = {"expert": [], "random": []}
    successes = []
    for k in range(10):
        for who in returns:
            _, info = env.reset(seed=k)
            rng, total, done, ok = np.random.default_rng(k), 0.0, False, False
            while not done:
                a = expert(info["state"]) if who == "expert" else rng.uniform(-1, 1, env.task.action_dim)
                _, r, term, trunc, info = env.step(a.astype(np.float32))
                total, ok, done = total + r, ok or info["success"], term or trunc
            returns[who].append(total)
            if who == "expert":
                successes.append(ok)
    assert np.mean(successes) == 1.0
    assert np.mean(returns["expert"]) > np.mean(returns["random"]) + 10, returns


@pytest.mark.parametrize("task", TOYS[1:])
def test_toys_render_their_own_scene_and_restore_snapshots(task):
    env = envs.make(task, size=16)
    check_env(env, skip_render_check=False)
    first, _ = env.reset(seed=0)
    snap = env.get_sim_state()
    a = np.full(env.task.action_dim, 0.7, np.float32)
    frames = [env.step(a)[0] for _ in range(5)]
    env.set_sim_state(snap)
    np.testing.assert_array_equal(frames[-1], [env.step(a)[0] for _ in range(5)][-1])
    assert any(not np.array_equal(first, f) for f in frames)  # something moves
    looks = {t: envs.make(t, size=16).reset(seed=0)[0][:, 0, 0] for t in TOYS}
    assert len({tuple(v) for v in looks.values()}) == len(TOYS)  # each has its own background


def test_pong_ball_re_enters_after_a_miss():
    env = envs.make("toy-pong", obs="state")
    s, _ = env.reset(seed=0)
    ys = []
    for _ in range(60):  # the paddle runs away from the ball
        s, *_ = env.step(np.array([-np.sign(s[1] - s[0]) or 1.0], np.float32))
        ys.append(s[2])
    assert min(ys) > -1 and max(np.diff(ys)) > 1.0  # a jump back to the top, never below the floor


def test_maze_walls_block_the_agent():
    from envs.toy import ToyMazeEnv

    env = envs.make("toy-maze", obs="state")
    env.reset(seed=0)
    env.set_sim_state({"steps": 0, "sim": np.array([0.125, 0.375, 0.9, -0.9], np.float32)})
    for _ in range(10):  # straight up into the wall of row 1
        s, *_ = env.step(np.array([0.0, 1.0], np.float32))
    assert not ToyMazeEnv._blocked(s[:2]) and s[1] < 0.5


def test_push_moves_the_block_only_when_pushed():
    env = envs.make("toy-push", obs="state")
    env.reset(seed=0)
    env.set_sim_state({"steps": 0, "sim": np.array([-0.6, 0.0, 0.0, 0.0, 0.6, 0.0], np.float32)})
    s, *_ = env.step(np.array([0.0, 1.0], np.float32))  # away from the block
    np.testing.assert_array_equal(s[2:4], [0.0, 0.0])
    for _ in range(6):
        s, *_ = env.step(np.array([1.0, 0.0], np.float32))
    assert s[2] > 0.2 and abs(s[3]) < 1e-6 and s[0] < s[2]
