"""The phase trainer: losses fall on toy-reach, checkpoints resume after a kill."""
import numpy as np
import pytest
import torch

import world_models
from replay import EpisodeStore, collect
from world_models.checkpoint import find_checkpoint, load_trainer_state
from world_models import distributed
from world_models.training import LatentCache, TrainConfig, phase_step, split_episodes, train, train_member


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    collect("toy-reach", "mixed", root, 30, size=16, seed=0, progress=False)
    return EpisodeStore(root)


def losses(model, store, phase, n=8):
    rng = np.random.default_rng(123)
    torch.manual_seed(0)
    model.eval()
    out = [model.loss(store.sample(16, 6, rng=rng), phase)[1] for _ in range(n)]
    return out


def test_short_training_lowers_both_losses(toy_store, tmp_path):
    torch.manual_seed(0)
    model = world_models.make("dreamer4", "tiny")
    eps, _ = split_episodes(toy_store, ["toy-reach"], holdout=0.0)
    before_tok = np.mean([m["tok/mse"] for m in losses(model, toy_store, "tokenizer")])
    train(model, toy_store, eps, tmp_path, TrainConfig(steps={"tokenizer": 150, "dynamics": 0}, batch=16,
                                                       seq_len=6, lr=1e-3, progress=False))
    after_tok = np.mean([m["tok/mse"] for m in losses(model, toy_store, "tokenizer")])
    before_dyn = np.mean([m["dyn/flow_mse"] for m in losses(model, toy_store, "dynamics")])
    model2 = world_models.load(tmp_path / "checkpoint")
    train(model2, toy_store, eps, tmp_path / "dyn", TrainConfig(steps={"tokenizer": 0, "dynamics": 150}, batch=16,
                                                                seq_len=6, lr=1e-3, progress=False))
    after_dyn = np.mean([m["dyn/flow_mse"] for m in losses(model2, toy_store, "dynamics")])
    assert after_tok < 0.2 * before_tok
    assert after_dyn < 0.7 * before_dyn


def test_each_phase_samples_its_own_episodes(toy_store, tmp_path, monkeypatch):
    eps = toy_store.episodes()
    drawn_from, sample = [], toy_store.sample
    monkeypatch.setattr(toy_store, "sample", lambda *a, episodes, **k: drawn_from.append(episodes) or
                        sample(*a, episodes=episodes, **k))
    model = world_models.make("dreamer4", "tiny")
    cfg = TrainConfig(steps={"tokenizer": 2, "dynamics": 2}, batch=2, seq_len=2, progress=False)
    train(model, toy_store, {"tokenizer": eps, "dynamics": eps[:3]}, tmp_path, cfg)
    assert drawn_from[:4] == [eps, eps, eps[:3], eps[:3]]
    assert all(d == eps for d in drawn_from[4:])  # then the scene motion, over the tokenizer's episodes
    for bad in ({"dynamics": eps}, {"tokenizer": eps, "dynamics": []}, []):
        with pytest.raises(ValueError, match="episodes must be"):
            train(model, toy_store, bad, tmp_path / "bad", cfg)


def test_training_resumes_after_a_kill(toy_store, tmp_path, monkeypatch):
    model = world_models.make("dreamer4", "tiny")
    eps, _ = split_episodes(toy_store, ["toy-reach"], holdout=0.0)
    cfg = TrainConfig(steps={"tokenizer": 3, "dynamics": 6}, batch=4, seq_len=4, ckpt_every=2, progress=False)
    calls = {"n": 0}
    real_loss = type(model).loss

    def dying_loss(self, batch, phase):
        calls["n"] += 1
        if phase == "dynamics" and calls["n"] == 3 + 5:  # the 5th dynamics step
            raise KeyboardInterrupt("killed")
        return real_loss(self, batch, phase)

    monkeypatch.setattr(type(model), "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(model, toy_store, eps, tmp_path, cfg)
    state = load_trainer_state(find_checkpoint(tmp_path / "checkpoint"))
    assert (state["phase"], state["step"]) == (1, 4) and "optimizer" in state

    monkeypatch.setattr(type(model), "loss", real_loss)
    resumed = world_models.make("dreamer4", "tiny")
    calls["n"] = 0

    def counting(self, batch, phase):
        calls["n"] += 1
        return real_loss(self, batch, phase)

    monkeypatch.setattr(type(resumed), "loss", counting)
    train(resumed, toy_store, eps, tmp_path, cfg)
    assert calls["n"] == 2  # only dynamics steps 5 and 6 were left
    final = load_trainer_state(find_checkpoint(tmp_path / "checkpoint"))
    assert final["phase"] == 2
    torch.testing.assert_close(dict(resumed.state_dict())["dynamics.out.weight"],
                               dict(world_models.load(tmp_path / "checkpoint").state_dict())["dynamics.out.weight"])


@pytest.mark.parametrize("name", ["dreamer4", "whale"])
def test_ensemble_members_share_all_but_the_last_phase(toy_store, tmp_path, name):
    torch.manual_seed(0)
    base = world_models.make(name, "tiny")
    eps, _ = split_episodes(toy_store, ["toy-reach"], holdout=0.0)
    cfg = TrainConfig(steps={p: 2 for p in base.phases}, batch=4, seq_len=4, progress=False)
    train(base, toy_store, eps, tmp_path / "base", cfg)
    members = [train_member(base, k, toy_store, eps, tmp_path / f"member{k}", cfg) for k in (1, 2)]
    last = base.phases[-1]
    for k, m in enumerate(members, 1):
        assert m.cfg == base.cfg and m.tasks == base.tasks
        for phase in base.phases:
            same = all(torch.equal(a, b) for a, b in zip(base.phase_parameters(phase), m.phase_parameters(phase)))
            assert same == (phase != last), phase  # earlier phases shared and left frozen
        saved = world_models.load(find_checkpoint(tmp_path / f"member{k}" / "checkpoint"))
        assert all(torch.equal(a, b) for a, b in zip(saved.parameters(), m.parameters()))
    differ = [not torch.equal(a, b) for a, b in zip(*(m.phase_parameters(last) for m in members))]
    assert any(differ)  # the members' dynamics differ from each other
    assert load_trainer_state(find_checkpoint(tmp_path / "member1" / "checkpoint"))["phase"] == len(base.phases)


def test_frames_of_another_size_are_refused_by_name(toy_store, tmp_path):
    model = world_models.make("dreamer4", "tiny", image_size=8, patch=4)
    with pytest.raises(ValueError, match=r"16x16 px; this dreamer4 model takes 8x8 \(collect with size=8\)"):
        train(model, toy_store, toy_store.episodes(), tmp_path, TrainConfig(steps={"tokenizer": 1, "dynamics": 1}))
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize("name", ["dreamer4", "whale"])
def test_finetuning_an_unseen_task_grows_its_embedding_and_trains_only_the_chosen_phase(name, toy_store, tmp_path):
    from world_models.training import with_tasks

    torch.manual_seed(0)
    model = world_models.make(name, "tiny", tasks=("cup-catch",)).eval()
    grown = with_tasks(model, ["toy-reach"])
    assert grown.tasks == ("cup-catch", "toy-reach") and with_tasks(grown, ["toy-reach"]) is grown
    table = grown.dynamics.task_in.weight
    torch.testing.assert_close(table[0], model.dynamics.task_in.weight[0])
    torch.testing.assert_close(table[1], model.dynamics.task_in.weight.mean(0))
    before = {k: v.clone() for k, v in grown.state_dict().items()}
    train(grown, toy_store, toy_store.episodes(), tmp_path, TrainConfig(steps={"dynamics": 3}, batch=4, seq_len=2,
                                                                        progress=False))
    after = grown.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    first = {id(p) for p in grown.phase_parameters(grown.phases[0])}
    kept = {n for n, p in grown.named_parameters() if id(p) in first}
    trained = {id(p) for p in grown.phase_parameters("dynamics")}
    assert kept and not changed & kept, sorted(changed & kept)  # the first phase was not trained
    assert any(id(p) in trained for n, p in grown.named_parameters() if n in changed)
    assert load_trainer_state(find_checkpoint(tmp_path / "checkpoint"))["phase"] == len(grown.phases)


@pytest.mark.parametrize("name", ["dreamer4", "whale"])
def test_compiled_training_steps_match_eager_ones(toy_store, tmp_path, name):
    # dynamo's "eager" backend: the capture and guards of a real compile without minutes of
    # code generation; the weights after a few steps of each phase must match eager training
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    trained = []
    for compile in (None, "eager"):
        torch.manual_seed(0)
        model = world_models.make(name, "tiny")
        steps = {p: 3 for p in model.phases}
        train(model, toy_store, toy_store.episodes(), tmp_path / str(compile),
              TrainConfig(steps=steps, batch=4, seq_len=4, compile=compile, progress=False))
        trained.append(model)
    assert counters["stats"]["unique_graphs"] > 0  # the compiled run did run compiled
    eager, compiled = (dict(m.named_parameters()) for m in trained)
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert not any("forward" in vars(m) for m in trained[1].modules())  # eager again outside the steps
    with pytest.raises(ValueError, match="unknown torch.compile backend 'bogus'"):
        train(model, toy_store, toy_store.episodes(), tmp_path / "bogus",
              TrainConfig(steps=steps, batch=4, seq_len=4, compile="bogus", progress=False))


def test_the_dynamics_trains_at_its_own_learning_rate_where_the_config_sets_one():
    model = world_models.make("dreamer4", "tiny", dyn_lr=1e-2)
    cfg, rank = TrainConfig.for_model(model), distributed.setup(model.device)
    lrs = {}
    for phase in model.phases:
        with phase_step(model, phase, cfg, rank) as step_fn:
            lrs[phase] = step_fn.opt.param_groups[0]["lr"]
    assert lrs == {"tokenizer": model.cfg.lr, "dynamics": 1e-2} and model.cfg.lr != 1e-2
    with pytest.raises(ValueError, match="dyn_lr"):
        world_models.make("dreamer4", "tiny", dyn_lr=-1.0)


def test_the_dynamics_learns_from_cached_latents_as_from_encoded_frames(toy_store):
    torch.manual_seed(0)
    model = world_models.make("dreamer4", "tiny")
    assert model.frozen_encoder("tokenizer") is None
    eps = toy_store.episodes()[::3]
    cache = LatentCache(model.frozen_encoder("dynamics"), toy_store, eps, model.device, chunk=7)
    batch = toy_store.sample(8, 4, episodes=eps, rng=np.random.default_rng(0))
    cached = dict(batch, latents=cache.windows(batch["episode"], batch["start"], 4))
    torch.testing.assert_close(cached["latents"], model.encode(batch["frames"]), rtol=1e-4, atol=1e-5)
    model.eval()

    def flow_mse(b):
        torch.manual_seed(1)
        return model.loss(b, "dynamics")[1]["dyn/flow_mse"]

    torch.testing.assert_close(flow_mse(cached), flow_mse(batch), rtol=1e-4, atol=1e-5)
    assert flow_mse(dict(batch, latents=torch.zeros_like(cached["latents"]))) != flow_mse(batch)  # it reads them


def test_training_caches_latents_only_where_its_steps_read_more_frames_than_there_are(toy_store, tmp_path, monkeypatch):
    eps = toy_store.episodes()[:4]
    stored = sum(info.length + 1 for info in eps)
    model = world_models.make("dreamer4", "tiny")
    real_loss, seen = type(model).loss, []

    def recording_loss(self, batch, phase):
        seen.append((phase, "latents" in batch))
        return real_loss(self, batch, phase)

    monkeypatch.setattr(type(model), "loss", recording_loss)
    for steps in (2, stored // (4 * 8) + 1):  # 4 windows of 8 frames a step
        seen.clear()
        train(model, toy_store, eps, tmp_path / str(steps), TrainConfig(steps={"tokenizer": 2, "dynamics": steps}, batch=4,
                                                                        seq_len=8, progress=False))
        cached = steps * 4 * 8 > stored
        assert seen == [("tokenizer", False)] * 2 + [("dynamics", cached)] * steps
    assert cached
