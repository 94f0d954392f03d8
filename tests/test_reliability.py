"""Bad input never gets into a run silently: each kind is refused or skipped in one line
that names it (README, "What happens when")."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import world_models
from replay import Episode, EpisodeStore, collect
from world_models.checkpoint import find_checkpoint, load_trainer_state, save_checkpoint
from world_models.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def episode(T=6, size=16, action_dim=2, task="toy-reach", behavior="random", seed=0) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(frames=rng.integers(0, 255, (T + 1, 3, size, size), dtype=np.uint8),
                   actions=rng.uniform(-1, 1, (T, action_dim)).astype(np.float32),
                   rewards=rng.uniform(0, 1, T).astype(np.float32), task=task, behavior=behavior, seed=seed)


def write_raw(store_root: Path, ep: Episode, name: str, folder: str | None = None) -> Path:
    """Save `ep` into the store's layout (under the task `folder`, default its own) without
    any of `add`'s checks, as a foreign tool would."""
    path = store_root / (folder or ep.task) / ep.behavior / f"20260101-000000-{ep.seed}-{name}-T{len(ep)}.npz"
    return ep.save(path)


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    collect("toy-reach", "mixed", root, 8, size=16, seed=0, progress=False)
    return root


# ---- episodes -------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("actions", np.nan), ("rewards", np.inf), ("rewards", -np.inf)])
def test_non_finite_episodes_are_refused_by_add(field, value, tmp_path):
    ep = episode()
    getattr(ep, field).flat[2] = value
    with pytest.raises(ValueError, match=f"{field} contain 1 non-finite"):
        EpisodeStore(tmp_path).add(ep)
    assert not list(tmp_path.rglob("*.npz"))


def test_a_non_finite_file_is_skipped_by_name_and_training_stays_finite(toy_store, tmp_path):
    root = tmp_path / "store"
    for path in toy_store.rglob("*.npz"):
        Episode.load(path).save(root / path.relative_to(toy_store))
    bad = episode(T=10)
    bad.actions[3, 0] = np.nan
    bad_path = write_raw(root, bad, "nanfile")
    store = EpisodeStore(root)
    with pytest.warns(RuntimeWarning, match=f"skipping episode file {bad_path}.*non-finite"):
        for info in store.episodes():
            store.load(info)
    model = world_models.make("dreamer4", "tiny")
    train(model, store, store.episodes(), tmp_path / "run",
          TrainConfig(steps={"tokenizer": 3, "dynamics": 3}, batch=4, seq_len=4, progress=False))
    saved = world_models.load(tmp_path / "run" / "checkpoint")
    assert all(torch.isfinite(p).all() for p in saved.state_dict().values())


@pytest.mark.parametrize("kind", ["wide actions", "toy actions of 3 dims", "another frame size", "wrong folder"])
def test_mismatched_episodes_are_skipped_by_name(kind, toy_store, tmp_path):
    root = tmp_path / "store"
    for path in toy_store.rglob("*.npz"):
        Episode.load(path).save(root / path.relative_to(toy_store))
    bad = {"wide actions": episode(action_dim=17), "toy actions of 3 dims": episode(action_dim=3),
           "another frame size": episode(size=32), "wrong folder": episode()}[kind]
    path = write_raw(root, bad, "odd", folder="cup-catch" if kind == "wrong folder" else None)
    store = EpisodeStore(root)
    with pytest.warns(RuntimeWarning, match=f"skipping episode file {path}"):
        batch = store.sample(8, 4, rng=np.random.default_rng(0))
    assert batch["frames"].shape[-1] == 16
    assert path not in {i.path for i in store.episodes()}


@pytest.mark.parametrize("task,behavior,match", [
    ("toy-reach", "x/../../evil", "behavior label"), ("toy-reach", ".hidden", "behavior label"),
    ("toy-rech", "random", "unknown task"), ("toy-reach", "random", "3-dim actions; toy-reach takes 2")])
def test_add_refuses_unknown_tasks_unsafe_labels_and_wrong_widths(task, behavior, match, tmp_path):
    ep = episode(action_dim=3 if "3-dim" in match else 2)
    ep.task, ep.behavior = task, behavior
    with pytest.raises(ValueError, match=match):
        EpisodeStore(tmp_path / "store").add(ep)
    assert not list(tmp_path.rglob("*.npz")) and not (tmp_path / "evil").exists()


def test_add_removes_temporary_files_of_killed_writers(tmp_path):
    folder = tmp_path / "toy-reach" / "random"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder / f".20260101-000000-0-abcd-T6.{int(dead.stdout)}.x1y2.tmp"
    live = folder / f".20260101-000000-1-abcd-T6.{os.getpid()}.z3w4.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    with pytest.warns(RuntimeWarning, match="removed 1 temporary"):
        EpisodeStore(tmp_path).add(episode())
    assert not stale.exists() and live.exists()


# ---- training -------------------------------------------------------------------------------
def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_last_checkpoint(toy_store, tmp_path, monkeypatch):
    store = EpisodeStore(toy_store)
    model = world_models.make("dreamer4", "tiny")
    calls, loss = [0], model.loss

    def loss_going_nan(batch, phase):
        calls[0] += 1
        value, metrics = loss(batch, phase)
        return (value * float("nan") if calls[0] == 3 else value), metrics

    monkeypatch.setattr(model, "loss", loss_going_nan)
    with pytest.raises(FloatingPointError, match="dreamer4/tokenizer step 3: non-finite loss"):
        train(model, store, store.episodes(), tmp_path, TrainConfig(
            steps={"tokenizer": 5, "dynamics": 1}, batch=2, seq_len=2, ckpt_every=2, progress=False))
    kept = find_checkpoint(tmp_path / "checkpoint")
    assert load_trainer_state(kept)["step"] == 2
    assert all(torch.isfinite(p).all() for p in world_models.load(kept).state_dict().values())


# ---- checkpoints ----------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    model = world_models.make("dreamer4", "tiny")
    return save_checkpoint(tmp_path / "checkpoint", model, {"phase": 1, "step": 4, "optimizer": {}})


def edit_json(path: Path, edit) -> None:
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))


def edit_config(folder: Path, edit) -> None:
    edit_json(folder / "config.json", edit)


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-2000:-1000] = np.random.default_rng(0).integers(0, 255, 1000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,match", [
    (lambda f: truncate(f / "model.safetensors", 0), "model.safetensors"),
    (lambda f: truncate(f / "model.safetensors", 100), "model.safetensors"),
    (lambda f: flip_bytes(f / "model.safetensors"), "model.safetensors: the weights do not match their recorded SHA-256"),
    (lambda f: (f / "config.json").write_text("{not json"), "config.json: not a readable JSON"),
    (lambda f: edit_config(f, lambda s: s["config"].update(tok_dim="abc")), "tok_dim = 'abc': expected an integer"),
    (lambda f: edit_config(f, lambda s: s["config"].update(tok_dim=-64)), "tok_dim = -64: must not be negative"),
    (lambda f: edit_config(f, lambda s: s["config"].update(lr=float("nan"))), "lr = nan: must be finite"),
    (lambda f: edit_config(f, lambda s: s["config"].update(bogus=1)), "unknown Dreamer4Config field"),
    (lambda f: edit_config(f, lambda s: s.pop("config")), "missing key"),
    (lambda f: edit_config(f, lambda s: s.update(tasks="toy-reach")), "'tasks' must be a non-empty list"),
])
def test_a_damaged_or_edited_checkpoint_is_one_error_naming_the_file(checkpoint, damage, match):
    damage(checkpoint)
    with pytest.raises(ValueError, match=match) as err:
        world_models.load(checkpoint)
    assert str(checkpoint) in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_trainer_state_is_one_error_naming_the_file(checkpoint):
    truncate(checkpoint / "trainer.pt", 50)
    with pytest.raises(ValueError, match=f"{checkpoint / 'trainer.pt'}: damaged"):
        load_trainer_state(checkpoint)


def test_saving_removes_folders_of_killed_writers(checkpoint):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = checkpoint.with_name(f"checkpoint.tmp-{int(dead.stdout)}")
    stale.mkdir()
    save_checkpoint(checkpoint, world_models.load(checkpoint))
    assert not stale.exists() and find_checkpoint(checkpoint) == checkpoint


# ---- imagination and planning -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return world_models.make("dreamer4", "tiny").eval()


@pytest.mark.parametrize("obs,match", [
    (lambda s: torch.zeros(2, 1, s, s, dtype=torch.uint8), r"obs must be frames \[B, 3, 16, 16\]"),
    (lambda s: torch.zeros(2, s, s, 3, dtype=torch.uint8), r"obs must be frames .*got shape \(2, 1, 16, 16, 3\)"),
    (lambda s: torch.zeros(2, 3, 2 * s, 2 * s, dtype=torch.uint8), r"\[B, 3, 16, 16\].*got shape \(2, 1, 3, 32, 32\)"),
    (lambda s: torch.full((2, 3, s, s), 200.0), r"float obs must lie in \[0, 1\]"),
    (lambda s: torch.zeros(2, 3, s, s, dtype=torch.int64), "uint8 .* or float .*got torch.int64"),
    (lambda s: torch.full((2, 3, s, s), float("nan")), "non-finite"),
    (lambda s: torch.zeros(0, 3, s, s, dtype=torch.uint8), "obs is empty"),
])
def test_imagine_refuses_frames_it_cannot_read(tiny, obs, match):
    size = tiny.cfg.image_size
    with pytest.raises(ValueError, match=match):
        tiny.imagine(obs(size), torch.zeros(2, 3, 2))


def test_imagine_refuses_an_unknown_task_and_an_empty_plan(tiny):
    obs = torch.zeros(1, 3, tiny.cfg.image_size, tiny.cfg.image_size, dtype=torch.uint8)
    with pytest.raises(ValueError, match="trained on .*toy-reach.*not 'cup-catch'"):
        tiny.imagine(obs, torch.zeros(1, 3, 2), task="cup-catch")
    with pytest.raises(ValueError, match="at least one step"):
        tiny.imagine(obs, torch.zeros(1, 0, 2))


def test_cem_refuses_non_finite_starts_and_non_integer_sizes():
    from planners import CEM, MPC

    with pytest.raises(ValueError, match="population=1.5"):
        CEM(2, 3, population=1.5)
    cem = CEM(2, 3, population=8, elites=2, seed=0)
    with pytest.raises(ValueError, match="init_mean contains non-finite"):
        cem.plan(lambda a: -a.pow(2).sum((1, 2)), init_mean=torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="prior_samples contain non-finite"):
        cem.plan(lambda a: -a.pow(2).sum((1, 2)), prior_samples=torch.full((4, 3, 2), float("inf")))
    for margin in ("abc", float("nan")):
        with pytest.raises(ValueError, match="margin must be a finite number"):
            MPC(cem, margin=margin)


def test_cem_warns_when_the_objective_is_never_finite():
    from planners import CEM

    cem = CEM(2, 3, population=8, elites=2, seed=0)
    with pytest.warns(RuntimeWarning, match="non-finite for every candidate"):
        plan = cem.plan(lambda a: torch.full(a.shape[:1], float("nan")))
    assert plan.score == -float("inf")


# ---- penalty units ------------------------------------------------------------------------------
def test_training_writes_the_scene_motion_that_every_penalty_is_divided_by(toy_store, tmp_path):
    from uncertainty import MotionStats

    store = EpisodeStore(toy_store)
    model = world_models.make("dreamer4", "tiny")
    train(model, store, store.episodes(), tmp_path, TrainConfig(
        steps={"tokenizer": 2, "dynamics": 1}, batch=2, seq_len=2, progress=False))
    motion = MotionStats.load(tmp_path / "checkpoint", "toy-reach")
    refit = MotionStats.fit(store, world_models.load(tmp_path / "checkpoint"), store.episodes())
    assert motion("toy-reach") == pytest.approx(refit("toy-reach"), rel=1e-4)
    untrained = save_checkpoint(tmp_path / "bare", model)
    with pytest.raises(ValueError, match="has no scene motion.*hallucination.py"):
        MotionStats.load(untrained, "toy-reach")


@pytest.mark.parametrize("damage,match", [
    (lambda f: flip_bytes(f / "learner.safetensors"), "learner.safetensors: the weights do not match"),
    (lambda f: truncate(f / "learner.safetensors", 10), "learner.safetensors"),
    (lambda f: truncate(f / "learner.json", 10), "learner.json: not a readable JSON"),
    (lambda f: edit_json(f / "learner.json", lambda s: s["hyper"].update(bogus=1)), "learner.json: does not describe"),
])
def test_a_damaged_learner_is_one_error_naming_the_file(damage, match, tmp_path):
    from agents.learner import Learner

    folder = Learner("td3+bc", obs_dim=4, action_dim=2).save(tmp_path / "learner")
    damage(folder)
    with pytest.raises(ValueError, match=match) as err:
        Learner.load(folder)
    assert "\n" not in str(err.value)
