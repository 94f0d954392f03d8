"""The Hydra entry points fail on bad input with one line that names the problem."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, word", [
    ("task=cup-katch", "cup-catch"),             # unknown task: the close name is suggested
    ("planner.elites=999", "elites"),
    ("planner.replan_every=0", "replan_every"),
    ("eval_episodes=0", "eval_episodes"),
    ("policies=[mpc,nope]", "policies"),
    ("device=tpu", "device"),
])
def test_mpc_rejects_bad_values_in_one_line(override, word, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "mpc.py"), override, f"out={tmp_path}",
                          f"store={tmp_path / 'data'}"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], run.stderr


@pytest.mark.parametrize("script, override, word", [
    ("hallucination.py", "checkpoint=/nonexistent", "checkpoint"),
    ("train.py", "world_model=whale2", "whale2"),
    ("train.py", "ensemble=-1", "ensemble"),
])
def test_other_entry_points_reject_bad_values_in_one_line(script, override, word, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / script), override, f"store={tmp_path / 'data'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], run.stderr


def test_mpc_runs_the_main_job_end_to_end_on_a_toy_budget(tmp_path):
    # every stage at a token size: the point is the path through the script, including the
    # summary of 50-step episodes (too short for a Q error at γ = 0.99) and the margin line
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "mpc.py"), "task=toy-reach", "preset=tiny",
                          "job.behavior=random", "job.episodes=4", "job.episode_steps=null", "job.num_envs=1",
                          "+job.model.tok_steps=4", "+job.model.dyn_steps=4", "job.learner_steps=20", "eval_episodes=1",
                          "policies=[mpc,actor,random]", "planner.population=8", "planner.elites=2",
                          "planner.iterations=1", "planner.margin=0.5", "video=false", "progress=false",
                          f"store={tmp_path / 'data'}", f"out={tmp_path / 'out'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    for line in ("mpc ", "actor ", "random ", "kept the actor's plan", "no Q error"):
        assert line in run.stdout, (line, run.stdout[-2000:])
    assert (tmp_path / "out" / "metrics.csv").exists()
