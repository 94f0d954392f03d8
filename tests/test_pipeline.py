"""The main job's stages end to end on toy-reach (no expert stage there): data, a tiny world
model with its report and start picture, an actor and critic on its features; a rerun
finds every stage cached (a world model that lost its report is reported again), and the
config's MPC agent plans with the results."""
from pathlib import Path

import torch
from omegaconf import OmegaConf

import envs
from agents.pipeline import JobConfig, MainJob, make_mpc_agent

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "mpc.yaml"


def test_stages_build_once_and_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    job = MainJob(JobConfig(task="toy-reach", preset="tiny", behavior="random", episodes=6, episode_steps=None,
                            num_envs=1, model={"tok_steps": 4, "dyn_steps": 4}, algo="td3+bc", learner_steps=20,
                            store=str(tmp_path / "data"), progress=False))
    took = job.build()
    assert set(took) == {"data", "world model", "actor and critic"}
    assert (job.run_dir / "quality.json").exists() and (job.run_dir / "toy-reach_zero_action_start.png").exists()
    model, learner = job.load()
    assert learner.obs_dim == model.feature_dim and learner.steps == 20
    capsys.readouterr()
    assert job.build() == {}  # a rerun has nothing to do
    assert capsys.readouterr().out.count(" cached  ") == 3
    (job.run_dir / "quality.json").unlink()  # a report that failed after training: the stage reports again
    assert job.build().keys() == {"world model"} and (job.run_dir / "quality.json").exists()

    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), {"task": "toy-reach", "planner": {"population": 8, "elites": 2,
                                                                                     "iterations": 1}})
    env = envs.make("toy-reach", size=model.cfg.image_size)
    agent = make_mpc_agent(cfg, model, learner, 2, seed=0, context=2)
    obs, _ = env.reset(seed=0)
    agent.reset(obs)
    action = agent.act()
    assert action.shape == (2,) and abs(action).max() <= 1
