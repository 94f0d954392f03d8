"""Data-parallel training with gloo on two CPU processes: both ranks hold the same weights
and statistics after every phase, each rank draws its own batches, the loss falls, and
`torchrun experiments/train.py` resumes after a kill."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import world_models
from replay import EpisodeStore, collect
from world_models import distributed
from world_models.checkpoint import find_checkpoint, load_trainer_state, read_config, save_checkpoint
from world_models.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"dreamer4": {"tokenizer": 60, "dynamics": 10}, "whale": {"tokenizer": 6, "behavior": 4, "dynamics": 4}}


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    collect("toy-reach", "mixed", root, 12, size=16, seed=0, progress=False)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_worker(rank: int, world: int, port: int, family: str, store_root: str, out: str) -> None:
    """What `torchrun` starts: a process with the rendezvous in its environment."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = world_models.make(family, "tiny")
    store = EpisodeStore(store_root)
    drawn, sample = [], store.sample
    store.sample = lambda *a, **k: (drawn.append(b := sample(*a, **k)) or b)
    rank_here = distributed.setup(model.device)
    for k, phase in enumerate(model.phases):  # one phase per run, each resuming where the last ended
        run = Path(out) / "run" / phase
        if rank_here.master:
            save_checkpoint(run / "checkpoint", model, {"phase": k, "step": 0})
        distributed.barrier()
        cfg = TrainConfig(steps={phase: STEPS[family][phase]}, batch=8, seq_len=4, lr=1e-3, ckpt_every=5,
                          progress=False)
        train(model, store, store.episodes(), run, cfg)
        torch.save({"state": model.state_dict(), "first_frames": drawn[0]["frames"]}, Path(out) / f"{phase}{rank}.pt")


@pytest.fixture(scope="module")
def ddp_run(request, toy_store, tmp_path_factory):
    """Two gloo ranks trained every phase of a tiny `request.param` model: what each rank
    held after each phase, and the last phase's run folder."""
    out, world, phases = tmp_path_factory.mktemp(f"ddp-{request.param}"), 2, list(STEPS[request.param])
    mp.spawn(rank_worker, args=(world, free_port(), request.param, str(toy_store), str(out)), nprocs=world)
    return {phase: [torch.load(out / f"{phase}{r}.pt", weights_only=True) for r in range(world)]
            for phase in phases}, out / "run" / phases[-1]


@pytest.mark.parametrize("ddp_run", ["dreamer4", "whale"], indirect=True)
def test_two_ranks_hold_identical_weights_and_statistics_after_every_phase(ddp_run):
    per_phase, run = ddp_run
    family = read_config(run / "checkpoint")["name"]
    fresh = world_models.make(family, "tiny").state_dict()
    stats = {"tokenizer": ("frame_mean", "mse_rms.mean_sq"), "dynamics": ("latent_mean", "dyn_rms.flow.mean_sq")
             } if family == "dreamer4" else {"tokenizer": ("vq.usage",)}
    for phase, (a, b) in per_phase.items():
        a, b = a["state"], b["state"]
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], phase
        moved = {k for k in a if not torch.equal(a[k], fresh[k])}
        assert all(any(s in k for k in moved) for s in stats.get(phase, ())), phase  # the statistics moved, together
    first = per_phase[next(iter(per_phase))]
    assert not torch.equal(first[0]["first_frames"], first[1]["first_frames"])  # each rank its own batches
    state = load_trainer_state(find_checkpoint(run / "checkpoint"))
    assert state["phase"] == len(STEPS[family])  # finished: rank 0 wrote the final checkpoint


@pytest.mark.parametrize("ddp_run", ["dreamer4"], indirect=True)
def test_data_parallel_training_lowers_the_loss(ddp_run, toy_store):
    store = EpisodeStore(toy_store)

    def tokenizer_mse(model):
        torch.manual_seed(0)
        model.eval()
        batch = store.sample(16, 2, rng=np.random.default_rng(1))
        return float(model.loss(batch, "tokenizer")[1]["tok/mse"])

    torch.manual_seed(0)
    fresh = tokenizer_mse(world_models.make("dreamer4", "tiny"))
    assert tokenizer_mse(world_models.load(ddp_run[1] / "checkpoint")) < 0.5 * fresh


def descendants(pid: int) -> list[int]:
    children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                for c in (t / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


def test_torchrun_train_script_resumes_after_a_kill(toy_store, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "experiments" / "train.py"), "world_model=dreamer4", "preset=tiny", "task=toy-reach",
           f"store={toy_store}", f"out={out}", "+steps.tokenizer=120", "+steps.dynamics=10", "ckpt_every=10",
           "progress=false", "eval_batch=4", "device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and first.poll() is None:
            found = find_checkpoint(out / "checkpoint")
            if found is not None and (load_trainer_state(found) or {}).get("step", 0) >= 10:
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[0].decode()[-2000:]
    finally:  # kill -9 the launcher and every worker, as a lost node would
        for pid in [first.pid, *descendants(first.pid)]:
            os.kill(pid, signal.SIGKILL)
        first.wait()
    killed_at = load_trainer_state(find_checkpoint(out / "checkpoint"))
    assert killed_at["phase"] == 0 and 10 <= killed_at["step"] < 120

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert log.count(f"resuming from {out / 'checkpoint'}: phase 0, step") == 1  # rank 0 alone speaks
    assert load_trainer_state(find_checkpoint(out / "checkpoint"))["phase"] == 2  # both phases done
    assert "rollout" in log  # rank 0's held-out report ran


@pytest.mark.parametrize("family, overrides", [("dreamer4", {"self_consistency": 0.25, "bootstrap_start": 0}),
                                               ("whale", {"restart_every": 1})])
def test_a_training_step_reads_nothing_back_from_the_device(family, overrides, toy_store, monkeypatch):
    """Every phase's loss, with the bootstrap branch and the code restarts, keeps its
    metrics and running statistics on the device: no `.item()`, `bool()`, `int()`,
    `float()` or `.tolist()` of a tensor (each one is a host sync on a GPU)."""
    model = world_models.make(family, "tiny", **overrides).train()
    batch = EpisodeStore(toy_store).sample(8, 4, rng=np.random.default_rng(0))
    for phase in model.phases:  # the first call reads the step counters once
        model.loss(batch, phase)

    host = {t.untyped_storage().data_ptr() for t in batch.values()}  # the sampler's CPU batch may be read

    def guarded(name):
        real = getattr(torch.Tensor, name)

        def read(t, *args):
            if t.untyped_storage().data_ptr() not in host:
                raise AssertionError(f"Tensor.{name}: a host sync in the training step")
            return real(t, *args)
        return read

    for name in ("item", "__bool__", "__int__", "__float__", "__index__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, guarded(name))
    for _ in range(2):
        for phase in model.phases:
            loss, metrics = model.loss(batch, phase)
            loss.backward()
            assert all(isinstance(v, torch.Tensor) for v in metrics.values())
