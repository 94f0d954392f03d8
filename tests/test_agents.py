"""MPC agent with the oracle (exact simulator) and the oracle's contract."""
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from agents import MPCAgent, RandomAgent
from agents.evaluate import run_episode
from planners import CEM, MPC
from world_models.oracle import Oracle


@pytest.mark.parametrize("task", ["toy-reach", "cup-catch"])
def test_oracle_rewards_match_the_environment(task):
    env = envs.make(task, size=16, seed=0)
    obs, _ = env.reset(seed=3)
    for a in np.random.default_rng(0).uniform(-1, 1, (10, env.task.action_dim)):
        obs, *_ = env.step(a.astype(np.float32))  # a state with motion in it
    plans = torch.rand(3, 5, env.task.action_dim) * 2 - 1
    im = Oracle(env).imagine(torch.as_tensor(obs)[None], plans, decode=True)
    snap = env.get_sim_state()
    for n in range(3):
        env.set_sim_state(snap)
        for h in range(5):
            frame, r, *_ = env.step(plans[n, h].numpy())
            assert im.rewards[n, h].item() == pytest.approx(r, abs=1e-6)
        assert torch.equal((im.frames[n, -1] * 255).round().byte(), torch.as_tensor(frame))
    with pytest.raises(ValueError, match="no BC policy"):
        Oracle(env).imagine(torch.as_tensor(obs)[None], None)


def test_oracle_mpc_reaches_the_goal():
    env = envs.make("toy-reach", obs="pixels", size=16, seed=0)
    cem = CEM(2, horizon=8, population=64, elites=8, iterations=3, noise_beta=1.0, seed=0)
    agent = MPCAgent(Oracle(env), MPC(cem, replan_every=2), "toy-reach", prior_samples=0)
    results = [run_episode(env, agent, seed) for seed in range(10)]
    assert np.mean([r.success for r in results]) >= 0.9


def sideways(states: torch.Tensor) -> torch.Tensor:
    """A toy-reach policy on states `[N, 4]` that circles the goal: full speed at 90° to it."""
    to_goal = states[:, 2:4] - states[:, :2]
    return torch.stack([-to_goal[:, 1], to_goal[:, 0]], 1) / to_goal.norm(dim=1, keepdim=True).clamp(min=1e-6)


def test_residual_planning_corrects_the_policy_in_closed_loop():
    env = envs.make("toy-reach", obs="pixels", size=16, seed=0)
    cem = CEM(2, horizon=4, population=64, elites=8, iterations=3, noise_beta=1.0, seed=0)
    agent = MPCAgent(Oracle(env), MPC(cem, replan_every=2), "toy-reach", policy=sideways, prior="residual",
                     prior_samples=4)
    alone = MPCAgent(Oracle(env), MPC(CEM(2, horizon=1, population=1, elites=1, iterations=1, init_std=0.05,
                                          min_std=0.05), replan_every=1), "toy-reach", policy=sideways,
                     prior="residual", prior_samples=1, reward_weight=0.0, value=lambda f: torch.zeros(len(f)))
    planned = [run_episode(env, agent, seed) for seed in range(6)]
    assert np.mean([r.success for r in planned]) >= 5 / 6
    assert not any(run_episode(env, alone, seed).success for seed in range(6))  # δ = 0: the policy circles
    # between replans the executed action is the policy on the REAL state plus the plan's next δ
    obs, _ = env.reset(seed=7)
    agent.reset(obs)
    agent.act()
    obs, *_ = env.step(np.array([0.3, -0.2], np.float32))  # not what was planned: the state moves elsewhere
    agent.observe(np.array([0.3, -0.2], np.float32), obs)
    state = torch.as_tensor(env.state())[None]
    expected = (sideways(state)[0] + agent.mpc.last_plan.actions[1]).clamp(-1, 1)
    np.testing.assert_allclose(agent.act(), expected.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="needs a policy"):
        MPCAgent(Oracle(env), MPC(CEM(2, 4)), "toy-reach", prior="residual")
    with pytest.raises(ValueError, match="margin"):
        MPCAgent(Oracle(env), MPC(CEM(2, 4), margin=1.0), "toy-reach", policy=sideways, prior="residual")


def test_agent_rejects_a_signal_the_model_lacks():
    env = envs.make("toy-reach", size=16)
    with pytest.raises(ValueError, match="signal"):
        MPCAgent(Oracle(env), MPC(CEM(2, 4)), "toy-reach", signal="flow_instability", lam=1.0)


def test_penalty_by_name_is_divided_by_scene_motion():
    import world_models
    from uncertainty import MotionStats, round_trip_residual

    torch.manual_seed(0)
    model = world_models.make("whale", "tiny", temperature=0.0).eval()  # greedy: repeatable rollouts
    obs = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)
    plans = torch.rand(5, 4, 2) * 2 - 1

    def score(lam, motion=None):
        agent = MPCAgent(model, MPC(CEM(2, horizon=4, population=8, elites=2)), "toy-reach", signal="u_r",
                         lam=lam, motion=motion, prior_samples=0)
        agent.reset(obs)
        return agent._score(model.start(*agent.context.tensors(model.device), task="toy-reach"), plans)

    free, plain, halved = score(0.0), score(1.0), score(1.0, MotionStats({"toy-reach": 2.0}))
    im = model.imagine(torch.as_tensor(obs)[None], plans, task="toy-reach")
    torch.testing.assert_close(free - plain, round_trip_residual(model, im.latents).sum(-1))
    torch.testing.assert_close(free - halved, (free - plain) / 2)
    with pytest.raises(ValueError, match="seeds >= 2"):
        MPCAgent(model, MPC(CEM(2, horizon=4)), "toy-reach", signal="u_s", lam=1.0)


def test_value_check_pairs_values_with_returns_and_imagined_values():
    import world_models
    from agents.learner import Learner
    from world_models import episode_features
    from agents.value_check import discounted_returns, summarize, value_check

    np.testing.assert_allclose(discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0])
    torch.manual_seed(0)
    model = world_models.make("dreamer4", "tiny").eval()
    env = envs.make("toy-reach", size=16, seed=0)
    result = run_episode(env, RandomAgent(2, seed=0), 0, keep_frames=True)
    assert len(result.frames) == result.steps + 1 == len(result.actions) + 1 == len(result.rewards) + 1
    learner = Learner("td3+bc", model.feature_dim, 2)
    checks = [value_check(model, learner, torch.from_numpy(np.stack(result.frames)),
                          torch.from_numpy(np.stack(result.actions)), np.array(result.rewards), "toy-reach",
                          gamma=0.9, context=2, horizon=3, every=5)]
    c = checks[0]
    assert len(c["q"]) == len(c["returns"]) == result.steps - 29  # 0.9^29 < 0.05: the cut returns are left out
    np.testing.assert_allclose(c["returns"], discounted_returns(np.array(result.rewards), 0.9)[: len(c["q"])])
    # each value is paired with the step it belongs to: Q(f_t, a_t) with G_t, V(f_{t+3}) three
    # steps after each imagined start (t = 1, 6, ...), as the real frames give it
    frames, actions = torch.from_numpy(np.stack(result.frames)), torch.from_numpy(np.stack(result.actions))
    feats = episode_features(model, frames, actions, "toy-reach", 2)
    np.testing.assert_allclose(c["q"], learner.value(feats[: len(c["q"])], actions[: len(c["q"])]).numpy(), rtol=1e-5)
    starts = list(range(1, result.steps - 3, 5))
    np.testing.assert_allclose(c["v_real"], learner.state_value(feats[[t + 3 for t in starts]]).numpy(), rtol=1e-5)
    assert len(c["v_imagined"]) == len(starts)
    s = summarize(checks)
    assert s["q_mae"] == pytest.approx(np.abs(c["q"] - c["returns"]).mean())
    assert s["imagined_v_gap"] > 0  # an untrained model's imagination moves the value


def test_the_main_jobs_episodes_give_the_same_rows_in_worker_processes(tmp_path):
    from omegaconf import OmegaConf

    import world_models
    from agents.evaluate import EpisodeJob, run_jobs
    from agents.job_episodes import JobEpisodes
    from agents.learner import Learner
    from world_models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = world_models.make("dreamer4", "tiny")
    save_checkpoint(tmp_path / "ckpt", model, scene_motion={"toy-reach": 1.0})
    Learner("td3+bc", model.feature_dim, 2).save(tmp_path / "learner")
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "experiments" / "configs" / "mpc.yaml")
    cfg.merge_with({"task": "toy-reach", "compile": False, "video": False, "policies": ["mpc", "actor", "random"],
                    "planner": {"population": 8, "elites": 2, "iterations": 1}})
    runner = functools.partial(JobEpisodes, OmegaConf.to_container(cfg), str(tmp_path / "ckpt"),
                               str(tmp_path / "learner"), out=str(tmp_path))
    jobs = [EpisodeJob(name, k, seed=100 + k) for name in ("mpc", "actor", "random") for k in range(2)]
    steps = {"here": [], "workers": []}
    here = run_jobs(jobs, runner, workers=1, tick=steps["here"].append)
    spread = run_jobs(jobs, runner, workers=2, tick=steps["workers"].append)
    assert [o.row["return"] for o in here] == [o.row["return"] for o in spread]
    assert [o.check is not None for o in spread] == [j.policy == "actor" for j in jobs]  # the critic's check
    assert [(o.row["policy"], o.row["episode"]) for o in spread] == [(j.policy, j.index) for j in jobs]
    assert len(steps["here"]) == len(steps["workers"]) == sum(o.row["steps"] for o in here)
    env = envs.make("toy-reach", size=16, seed=0)  # random episodes skip rendering: the same episodes with frames
    assert [o.row["return"] for o in here[4:]] == [
        round(run_episode(env, RandomAgent(2, seed=j.seed), j.seed).episode_return, 3) for j in jobs[4:]]
    with pytest.raises(KeyError, match="nope"):  # a worker's error reaches the caller
        run_jobs([EpisodeJob("nope", 0, seed=0)], runner, workers=2)
