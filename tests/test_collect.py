import subprocess
import sys
from pathlib import Path

import numpy as np

from replay import EpisodeStore, collect

ROOT = Path(__file__).resolve().parents[1]


def test_parallel_collection_writes_reproducible_episodes(tmp_path):
    one = collect("toy-reach", "mixed", tmp_path / "a", 5, num_envs=1, size=16, seed=3, progress=False)
    two = collect("toy-reach", "mixed", tmp_path / "b", 5, num_envs=2, size=16, seed=3, progress=False)
    assert one.episodes == two.episodes == 5 and one.frames == 5 * 51
    assert sorted(one.returns["mixed"]) == sorted(two.returns["mixed"])
    store = EpisodeStore(tmp_path / "b")
    eps = [store.load(i) for i in store.episodes(task="toy-reach", behavior="mixed")]
    assert len(eps) == 5
    for ep in eps:
        assert ep.frames.shape == (51, 3, 16, 16) and ep.actions.shape == (50, 2)
        assert ep.states.shape == (51, 4) and ep.success.shape == (50,)
        # the recorded states and frames belong together: goal never moves, agent moves by actions
        assert np.all(ep.states[:, 2:] == ep.states[0, 2:])
        step = np.clip(ep.states[:-1, :2] + 0.15 * ep.actions, -1, 1)
        np.testing.assert_allclose(step, ep.states[1:, :2], atol=1e-5)
    assert len({ep.seed for ep in eps}) == 5


def test_dmc_collection_in_parallel_after_rendering_in_this_process(tmp_path):
    import envs
    env = envs.make("cup-catch", size=16)  # a live GL context here must not hang the workers
    env.reset()
    summary = collect("cup-catch", "random", tmp_path, 2, num_envs=2, size=16, progress=False)
    ep = EpisodeStore(tmp_path).load(EpisodeStore(tmp_path).episodes()[0])
    assert ep.frames.shape == (501, 3, 16, 16) and ep.success is None
    assert "random" in summary.table()
    env.close()


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "collect.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_collect_cli(tmp_path):
    out = run_cli("task=toy-reach", "behavior=mixed", "episodes=4", "num_envs=2", "size=16", "progress=false",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "mixed" in out.stdout and "4 episodes" in out.stdout
    assert len(list((tmp_path / "runs/data/toy-reach/mixed").glob("*.npz"))) == 4
    assert not (tmp_path / "outputs").exists()


def test_collect_cli_passes_environment_options(tmp_path):
    left = ("+env.start_box=[[-0.8,-0.8],[-0.1,0.8]]", "+env.goal_box=[[-0.8,-0.8],[-0.1,0.8]]")
    out = run_cli("task=toy-reach", "behavior=random", "episodes=3", "num_envs=1", "size=16", "progress=false",
                  *left, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    states = np.concatenate([EpisodeStore(tmp_path / "runs/data").load(e).states
                             for e in EpisodeStore(tmp_path / "runs/data").episodes()])
    firsts = [EpisodeStore(tmp_path / "runs/data").load(e).states[0] for e in EpisodeStore(tmp_path / "runs/data").episodes()]
    assert states[:, 2].max() <= -0.1 and max(f[0] for f in firsts) <= -0.1  # goals and starts in the left half
    bad = run_cli("task=toy-reach", "episodes=1", "+env.start_bx=[[0,0],[1,1]]", cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == ["error: toy-reach: unexpected options ['start_bx']"]


def test_collect_cli_bad_task_is_one_line(tmp_path):
    out = run_cli("task=cup-cach", cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["error: unknown task 'cup-cach'. Did you mean: cup-catch, cup-catch-var1, mw-reach?"]
