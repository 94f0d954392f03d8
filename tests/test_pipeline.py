"""The main job's stages end to end on toy-reach (no expert stage there): data, a tiny world
model with its report and start picture, an actor and critic on its features; a rerun
finds every stage cached (a world model that lost its report is reported again), a cache
built from another config (or an older preset) is refused by name, cached features are keyed by the weights
they came from, and the config's MPC agent plans with the results."""
import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import envs
from agents.offline import features_cache
from agents.pipeline import JobConfig, MainJob, Stage, check_key, make_mpc_agent
from world_models.checkpoint import save_checkpoint
from world_models.dreamer4.config import PRESETS

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "mpc.yaml"


def test_stages_build_once_and_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    job_cfg = JobConfig(task="toy-reach", preset="tiny", behavior="random", episodes=6, episode_steps=None,
                        num_envs=1, model={"tok_steps": 4, "dyn_steps": 4}, algo="td3+bc", learner_steps=20,
                        store=str(tmp_path / "data"), progress=False)
    job = MainJob(job_cfg)
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

    with pytest.raises(ValueError, match=r"actor and critic: .* was built with learner_steps=20, not learner_steps=30"):
        MainJob(replace(job_cfg, learner_steps=30)).build()
    with pytest.raises(ValueError, match=r"world model: .* was built with config.dyn_steps=4, not config.dyn_steps=8;"):
        MainJob(replace(job_cfg, model={"tok_steps": 4, "dyn_steps": 8})).build()
    tiny = PRESETS["tiny"]
    monkeypatch.setitem(PRESETS, "tiny", {**tiny, "lr": tiny["lr"] / 2})  # the preset itself changed since the build
    with pytest.raises(ValueError, match=rf"world model: .* was built with config.lr={tiny['lr']}, not config.lr={tiny['lr'] / 2};"):
        job.build()
    monkeypatch.setitem(PRESETS, "tiny", tiny)
    assert MainJob(replace(job_cfg, compile="inductor")).build() == {}  # how it trains fast is not in a key
    (job.learner_dir / "stage.json").unlink()  # a cache from before stage keys: used, and said so
    capsys.readouterr()
    assert job.build() == {} and "learner has no stage.json" in capsys.readouterr().out

    folder, episodes = job.learner_dir.parents[2], job.episodes()
    cache = features_cache(folder, job.checkpoint(), model.max_context, episodes)
    assert [p.name for p in folder.glob("features-*.npz")] == [cache.name]  # the learner stage's features
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    retrained = save_checkpoint(tmp_path / "retrained", other)
    assert features_cache(folder, retrained, model.max_context, episodes) != cache
    assert features_cache(folder, job.checkpoint(), model.max_context, episodes[:-1]) != cache

    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), {"task": "toy-reach", "planner": {"population": 8, "elites": 2,
                                                                                     "iterations": 1}})
    env = envs.make("toy-reach", size=model.cfg.image_size)
    agent = make_mpc_agent(cfg, model, learner, 2, seed=0, context=2)
    obs, _ = env.reset(seed=0)
    agent.reset(obs)
    action = agent.act()
    assert action.shape == (2,) and abs(action).max() <= 1


def test_a_refusal_names_the_nested_fields_that_changed(tmp_path):
    (tmp_path / "stage.json").write_text('{"world_model": {"config.lr": 1, "preset": "small"}, "steps": 20}')
    stage = Stage("actor and critic", "", 0.0, lambda: True, lambda: None, folder=tmp_path,
                  key={"world_model": {"config.lr": 2, "preset": "small"}, "steps": 20})
    with pytest.raises(ValueError, match=r"was built with world_model.config.lr=1, not world_model.config.lr=2; remove"):
        check_key(stage)
    check_key(replace(stage, key={"world_model": {"config.lr": 1, "preset": "small"}, "steps": 20}))
