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
