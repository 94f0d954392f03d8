"""WHALE's value-estimation metrics against values worked out by hand, and the entry point."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.value_estimation import pearson, regret_at_k, state_policy, value_gap, value_metrics

ROOT = Path(__file__).resolve().parents[1]
REAL = np.array([10.0, 20.0, 30.0, 40.0])
ESTIMATED = np.array([12.0, 18.0, 35.0, 30.0])


def test_metrics_match_hand_computed_values():
    # |V - V^|: 2, 2, 5, 10 -> mean 4.75 over a range of 30
    assert value_gap(REAL, ESTIMATED) == pytest.approx(4.75 / 30)
    # the top-1 estimate (35) is the policy worth 30: 10 short of the best; top-2 holds the best
    assert regret_at_k(REAL, ESTIMATED, 1) == pytest.approx(10 / 30)
    assert regret_at_k(REAL, ESTIMATED, 2) == 0.0
    # centred: (-15, -5, 5, 15) and (-11.75, -5.75, 11.25, 6.25): 355 / sqrt(500 * 336.75)
    assert pearson(REAL, ESTIMATED) == pytest.approx(355 / np.sqrt(500 * 336.75))
    m = value_metrics(REAL, ESTIMATED, k=5)
    # ranks (1, 2, 3, 4) against (1, 2, 4, 3): 1 - 6 * 2 / (4 * 15)
    assert m["rank_corr"] == pytest.approx(0.8)
    assert set(m) == {"value_gap", "return_corr", "rank_corr", "regret@1", "regret@4"}  # k capped at N


def test_a_constant_estimate_earns_the_full_regret_and_no_correlation():
    flat = np.full(4, 25.0)
    assert regret_at_k(REAL, flat, 1) == 1.0 and regret_at_k(REAL, flat, 3) == pytest.approx(10 / 30)
    assert np.isnan(pearson(REAL, flat))
    assert value_gap(REAL, REAL) == 0.0 and regret_at_k(REAL, REAL, 1) == 0.0


@pytest.mark.parametrize("real, estimated, k, word", [
    ([1.0, 1.0], [0.0, 1.0], 1, "same real value"),
    ([1.0, 2.0], [0.0, 1.0, 2.0], 1, "shapes"),
    ([1.0, 2.0], [0.0, np.nan], 1, "finite"),
    ([1.0, 2.0], [0.0, 1.0], 3, "k must be"),
])
def test_metrics_refuse_bad_input(real, estimated, k, word):
    with pytest.raises(ValueError, match=word):
        regret_at_k(np.array(real), np.array(estimated), k)


def test_an_unknown_policy_fails_before_any_episode():
    with pytest.raises(ValueError, match="unknown behavior 'expret'"):
        state_policy("expret", "toy-reach")


@pytest.mark.parametrize("name", ["dreamer4", "ensemble"])
def test_the_entry_point_writes_its_table_and_files(name, tmp_path):
    # the same evaluation for a pixel model and the state ensemble (which has no BC head)
    import world_models
    from replay import collect
    from world_models.checkpoint import save_checkpoint

    kwargs = {"scene_motion": {"toy-reach": 1.0}} if name == "dreamer4" else {}
    save_checkpoint(tmp_path / "ckpt", world_models.make(name, "tiny", tasks=("toy-reach",)), **kwargs)
    collect("toy-reach", "mixed", tmp_path / "data", 4, size=16, seed=0, progress=False)
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "value_estimation.py"), "task=toy-reach",
                          f"checkpoint={tmp_path / 'ckpt'}", f"store={tmp_path / 'data'}", f"out={tmp_path / 'out'}",
                          "policies=[expert,noise-gaussian-0.5,random,bc]", "episodes=2", "horizon=8",
                          "probe_windows=64", "num_envs=1", "progress=false"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    policies = 4 if name == "dreamer4" else 3
    for line in ("state probe", "value_gap", "model ", "replay ", "expert ",
                 "bc " if name == "dreamer4" else "bc: skipped, this ensemble model has no BC head"):
        assert line in run.stdout, (line, run.stdout)
    for file in ("returns.csv", "policies.csv", "metrics.json", "scatter.png"):
        assert (tmp_path / "out" / file).exists(), file
    assert len((tmp_path / "out" / "returns.csv").read_text().splitlines()) == 1 + policies * 2
    # the real episodes of the state policies are kept for the next model, next to the run
    size = 16 if name == "dreamer4" else 64
    kept = tmp_path / "runs" / "value_estimation" / "toy-reach" / "0" / f"real-{size}px-8steps" / "toy-reach"
    assert sorted(p.name for p in kept.iterdir()) == ["expert", "noise-gaussian-0.5", "random"]
