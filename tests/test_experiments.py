"""The Hydra entry points fail on bad input with one line that names the problem."""
import os
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
    ("eval_start=-1", "eval_start"),
    ("eval_workers=0", "eval_workers"),
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
    ("hallucination.py", "seed=0", "needs checkpoint=..."),    # no checkpoint given
    ("train.py", "world_model=whale2", "whale2"),
    ("train.py", "ensemble=-1", "ensemble"),
    ("mpc.py", "eval_episodes=abc", "eval_episodes must be an integer"),
    ("mpc.py", "eval_episodes=1.5", "eval_episodes must be an integer"),
    ("mpc.py", "planner.horizon=abc", "planner.horizon must be an integer"),
    ("mpc.py", "video=maybe", "video must be true or false"),
    ("mpc.py", "job.episodes=many", "job: episodes = 'many': expected an integer"),
    ("mpc.py", "+job.bogus=1", "job: unknown JobConfig field(s) bogus"),
    ("offline.py", "lam=abc", "lam must be a number"),
    ("offline.py", "checkpoint=/nonexistent penalty=u_r", "penalty=u_r with lam=0 penalises nothing"),
    ("offline.py", "checkpoint=/nonexistent lam=1", "needs a penalty"),
    ("offline.py", "checkpoint=/nonexistent lam=-1", "lam must be >= 0"),
    ("collect.py", "episodes=abc", "episodes must be an integer"),
    ("value_estimation.py", "checkpoint=/nonexistent", "checkpoint"),
    ("value_estimation.py", "seed=0", "needs checkpoint=..."),
    ("value_estimation.py", "episodes=many", "episodes must be an integer"),
])
def test_other_entry_points_reject_bad_values_in_one_line(script, override, word, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *override.split(), f"store={tmp_path / 'data'}"]
                         + ([f"out={out}"] if script != "collect.py" else []),
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], run.stderr
    assert not out.exists() and not (tmp_path / "data").exists()


def test_an_unwritable_output_is_one_line_naming_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "mpc.py"), "task=toy-reach",
                          f"store={tmp_path / 'data'}", f"out={blocker / 'run'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1 and str(blocker) in lines[0], run.stderr


FULL_DISK = """
import errno, os, pathlib
_mkdir = pathlib.Path.mkdir
def mkdir(self, *args, **kwargs):
    if self.name == "full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return _mkdir(self, *args, **kwargs)
pathlib.Path.mkdir = mkdir
"""


def test_a_full_disk_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(FULL_DISK)  # every mkdir of a folder named "full" fails
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "mpc.py"), "task=toy-reach",
                          f"store={tmp_path / 'data'}", f"out={tmp_path / 'full'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and lines == [f"error: No space left on device: {tmp_path / 'full'}"], run.stderr


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from world_models.checkpoint import hold_lock; "
                               f"hold_lock({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = subprocess.run([sys.executable, str(ROOT / "experiments" / "mpc.py"), "task=toy-reach",
                              f"store={tmp_path / 'data'}", f"out={tmp_path}"], capture_output=True, text=True, cwd=tmp_path)
        lines = run.stderr.strip().splitlines()
        assert run.returncode != 0 and len(lines) == 1 and f"pid {holder.pid}" in lines[0], run.stderr
    finally:
        holder.kill()
        holder.wait()


def test_mpc_runs_the_main_job_end_to_end_on_a_toy_budget(tmp_path):
    # every stage at a token size: the point is the path through the script, including the
    # summary of 50-step episodes (too short for a Q error at γ = 0.99) and the margin line
    # (the margin keeps a rolled-out prior's plan, so this run plans with agent.prior=policy)
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "mpc.py"), "task=toy-reach", "preset=tiny",
                          "job.behavior=random", "job.episodes=4", "job.episode_steps=null", "job.num_envs=1",
                          "+job.model.tok_steps=4", "+job.model.dyn_steps=4", "job.compile=eager", "job.learner_steps=20",
                          "compile=false", "eval_episodes=1", "eval_workers=1",  # worker processes: test_agents.py
                          "policies=[mpc,actor,random]", "planner.population=8", "planner.elites=2",
                          "planner.iterations=1", "planner.margin=0.5", "agent.prior=policy", "video=false", "progress=false",
                          f"store={tmp_path / 'data'}", f"out={tmp_path / 'out'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    for line in ("mpc ", "actor ", "random ", "kept the actor's plan", "no Q error"):
        assert line in run.stdout, (line, run.stdout[-2000:])
    assert (tmp_path / "out" / "metrics.csv").exists()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny checkpoints of both pixel families (with scene motion)."""
    import world_models
    from world_models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    for name in ("dreamer4", "whale"):
        save_checkpoint(root / name, world_models.make(name, "tiny"), scene_motion={"toy-reach": 1.0})
    return root


@pytest.mark.parametrize("script, overrides, word", [
    ("collect.py", ["behavior=curiosity"], "give checkpoint=<a trained model's checkpoint>"),
    ("collect.py", ["behavior=curiosity", "checkpoint={ckpt}/dreamer4", "signal=token_entropy"],
     "offers the signals"),
    ("collect.py", ["behavior=curiosity", "checkpoint={ckpt}/dreamer4", "signal=u_r/x"], "only suffix is '/m'"),
    ("collect.py", ["behavior=random", "finetune_every=2"], "finetune_every needs a world model"),
    ("train.py", ["world_model=whale", "init={ckpt}/dreamer4"], "is a dreamer4 checkpoint"),
    ("train.py", ["init={ckpt}/nothing"], "no checkpoint there"),
])
def test_curiosity_and_finetuning_reject_bad_input_in_one_line(script, overrides, word, checkpoints, tmp_path):
    out = tmp_path / "out"
    args = [o.format(ckpt=checkpoints) for o in overrides] + [f"store={tmp_path / 'data'}", "size=16"][: 2 if script == "collect.py" else 1]
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args]
                         + ([f"out={out}"] if script == "train.py" else [f"finetune_out={out}"]),
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], run.stderr
    assert not out.exists()
