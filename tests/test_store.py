import zipfile

import numpy as np
import pytest
import torch

from envs import MAX_ACTION_DIM, task_index
from replay import Episode, EpisodeDataset, EpisodeStore


def make_episode(task="toy-reach", T=10, action_dim=2, behavior="random", seed=0, size=8):
    rng = np.random.default_rng(seed)
    return Episode(frames=rng.integers(0, 256, (T + 1, 3, size, size), dtype=np.uint8),
                   actions=rng.uniform(-1, 1, (T, action_dim)).astype(np.float32),
                   rewards=np.arange(T, dtype=np.float32), task=task, behavior=behavior, seed=seed)


def test_roundtrip_keeps_arrays_and_metadata(tmp_path):
    ep = make_episode()
    ep.states = np.ones((11, 4), np.float32)
    path = EpisodeStore(tmp_path).add(ep)
    back = Episode.load(path)
    np.testing.assert_array_equal(back.frames, ep.frames)
    np.testing.assert_array_equal(back.actions, ep.actions)
    np.testing.assert_array_equal(back.states, ep.states)
    assert (back.task, back.behavior, back.seed, back.truncated) == ("toy-reach", "random", 0, True)
    assert back.meta()["format_version"] == 1


def test_episode_rejects_inconsistent_arrays():
    ep = make_episode()
    with pytest.raises(ValueError, match="frames"):
        Episode(ep.frames[:-1], ep.actions, ep.rewards, "toy-reach", "random", 0)
    with pytest.raises(ValueError, match="actions"):
        Episode(ep.frames, ep.actions.astype(np.float64), ep.rewards, "toy-reach", "random", 0)


def test_crash_during_write_leaves_no_episode_file(tmp_path, monkeypatch):
    def crash(fh, **arrays):
        fh.write(b"PK\x03\x04 half an episode")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        EpisodeStore(tmp_path).add(make_episode())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_truncated_and_garbage_files_are_skipped_with_a_warning(tmp_path):
    store = EpisodeStore(tmp_path)
    good = store.add(make_episode(seed=1))
    truncated = store.add(make_episode(seed=2))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage = good.with_name("20260101-000000-3-deadbeef-T10.npz")
    garbage.write_bytes(b"not a zip at all")

    with pytest.warns(RuntimeWarning) as record:
        batch = store.sample(8, 4)
    messages = " ".join(str(w.message) for w in record)
    assert str(truncated) in messages and str(garbage) in messages
    assert batch["frames"].shape[0] == 8
    assert [i.path for i in store.episodes()] == [good]  # skipped from now on


def test_corrupt_member_is_never_half_used(tmp_path):
    store = EpisodeStore(tmp_path)
    path = store.add(make_episode())
    with zipfile.ZipFile(path) as z:  # rewrite with a frames array of the wrong length
        members = {n: z.read(n) for n in z.namelist()}
    bad = make_episode(T=5)
    tmp = tmp_path / "frames.npy"
    np.save(tmp, bad.frames)
    members["frames.npy"] = tmp.read_bytes()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.warns(RuntimeWarning, match="frames must be"):
        assert store.load(store.episodes()[0]) is None


def test_sample_pads_actions_and_marks_valid_dims(tmp_path):
    store = EpisodeStore(tmp_path)
    store.add(make_episode("toy-reach", action_dim=2))
    store.add(make_episode("mw-push", action_dim=4))
    b = store.sample(64, 5, rng=np.random.default_rng(0))
    assert b["frames"].shape == (64, 5, 3, 8, 8) and b["frames"].dtype == torch.uint8
    assert b["actions"].shape == (64, 4, MAX_ACTION_DIM) and b["rewards"].shape == (64, 4)
    toy = b["task_id"] == task_index("toy-reach")
    assert toy.any() and (~toy).any()
    assert b["action_mask"][toy].sum(1).eq(2).all() and b["action_mask"][~toy].sum(1).eq(4).all()
    assert (b["actions"][toy][..., 2:] == 0).all()
    # windows are consecutive: rewards are 0..T-1 in every episode
    assert (b["rewards"][:, 1:] - b["rewards"][:, :-1]).eq(1).all()


@pytest.mark.parametrize("weighting", ["frame", "task", "reward"])
def test_every_window_names_its_episode_and_first_frame(tmp_path, weighting):
    store = EpisodeStore(tmp_path)
    for seed, T in enumerate([3, 12, 20]):  # the 3-step episode is too short for the windows
        store.add(make_episode(T=T, seed=seed))
    infos = store.episodes()
    b = store.sample(64, 5, weighting, episodes=infos, rng=np.random.default_rng(0))
    assert set(b["episode"].tolist()) == {1, 2}  # positions in `episodes`, the short one skipped
    for frames, i, s in zip(b["frames"], b["episode"], b["start"]):
        assert torch.equal(frames, torch.from_numpy(store.load(infos[i]).frames[s: s + 5]))


def test_listing_order_does_not_depend_on_write_times(tmp_path):
    # the same collection written at other times: seed 9 in an earlier second than seed 10
    # in one run, a later one in the other; the listing (and so any split of it) is the same
    names = {}
    for run, stamps in (("a", {9: "20260101-000000", 10: "20260101-000001"}),
                        ("b", {9: "20260101-000001", 10: "20260101-000000"})):
        for seed, stamp in stamps.items():
            make_episode(seed=seed).save(tmp_path / run / "toy-reach/random" / f"{stamp}-{seed}-0a1b2c3d-T10.npz")
        names[run] = [info.path.name.split("-")[2] for info in EpisodeStore(tmp_path / run).episodes()]
    assert names["a"] == names["b"] == ["9", "10"]


def test_filters_by_task_and_behavior(tmp_path):
    store = EpisodeStore(tmp_path)
    store.add(make_episode("toy-reach", behavior="expert"))
    store.add(make_episode("toy-reach", behavior="random"))
    store.add(make_episode("mw-push", action_dim=4, behavior="expert"))
    assert len(store.episodes()) == 3
    assert len(store.episodes(task="toy-reach")) == 2
    assert [i.task for i in store.episodes(behavior="expert")] == ["mw-push", "toy-reach"]
    assert store.tasks() == ["mw-push", "toy-reach"]
    b = store.sample(16, 3, task="mw-push")
    assert b["task_id"].eq(task_index("mw-push")).all()


def test_task_weighting_is_uniform_over_tasks_on_an_unbalanced_store(tmp_path):
    store = EpisodeStore(tmp_path)
    for s in range(9):
        store.add(make_episode("toy-reach", T=20, seed=s))
    store.add(make_episode("mw-push", T=20, action_dim=4, seed=99))
    rng = np.random.default_rng(0)

    def share(w):
        return (store.sample(4000, 4, w, rng=rng)["task_id"] == task_index("mw-push")).float().mean().item()

    assert abs(share("task") - 0.5) < 0.03
    assert abs(share("frame") - 0.1) < 0.03


def test_sample_errors_are_clear(tmp_path):
    store = EpisodeStore(tmp_path)
    store.add(make_episode(T=3))
    with pytest.raises(ValueError, match="weighting"):
        store.sample(2, 3, "tasks")
    with pytest.raises(ValueError, match="has 10 frames or more"):
        store.sample(2, 10)


def test_dataset_feeds_dataloader_workers_with_different_batches(tmp_path):
    store = EpisodeStore(tmp_path)
    for s in range(4):
        store.add(make_episode(seed=s, T=30))
    ds = EpisodeDataset(tmp_path, batch=4, seq_len=6, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    it = iter(loader)
    a, b = next(it), next(it)  # one batch from each worker
    assert a["frames"].shape == (4, 6, 3, 8, 8)
    assert not torch.equal(a["frames"], b["frames"])
