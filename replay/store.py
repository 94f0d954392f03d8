"""`EpisodeStore`: a folder of episode files, with filtering and window sampling."""
from __future__ import annotations

import os
import re
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from envs import MAX_ACTION_DIM, task_index, task_spec
from replay.episode import LOAD_ERRORS, Episode


@dataclass(frozen=True)
class EpisodeInfo:
    """Where an episode lives and what it is, read from its path without opening it."""

    path: Path
    task: str
    behavior: str
    length: int  # agent steps T (the file holds T + 1 frames)


class EpisodeStore:
    """Episodes under `root/<task>/<behavior>/<stamp>-<seed>-<id>-T<len>.npz`.

    Episodes are loaded on first use and kept in memory (a 64 px frame is 12 KiB, so a
    500-step episode is 6 MiB). A file that is damaged, holds non-finite values, or does not
    match its task (action width, folder) or the frame size of the task's first episode
    loaded is skipped with a warning that names it.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._sizes: dict[str, tuple[int, int]] = {}
        self._loaded: dict[Path, Episode] = {}
        self._bad: set[Path] = set()
        self._levels: dict[tuple[int, int], np.ndarray] = {}
        self._swept = False

    # ---- writing and listing ------------------------------------------------------------
    def add(self, episode: Episode) -> Path:
        """Write `episode` under its task and behaviour; refuses non-finite data, unknown
        tasks, unsafe behaviour labels and actions of another width than the task's."""
        episode.validate()
        check_labels(episode.task, episode.behavior)
        wrong_width = width_mismatch(episode)
        if wrong_width:
            raise ValueError(wrong_width)
        if not self._swept:
            remove_stale_temporaries(self.root)
            self._swept = True
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{episode.seed}-{uuid.uuid4().hex[:8]}-T{len(episode)}.npz"
        return episode.save(self.root / episode.task / episode.behavior / name)

    def episodes(self, task: str | Sequence[str] | None = None,
                 behavior: str | Sequence[str] | None = None) -> list[EpisodeInfo]:
        """Episode files in the store, optionally only some tasks and/or behaviours, listed by
        task, behaviour, then episode seed: the same collection lists (and so splits and
        samples) in the same order however its writes fell across clock seconds."""
        task = [task] if isinstance(task, str) else task
        behavior = [behavior] if isinstance(behavior, str) else behavior
        infos = []
        for path in sorted(self.root.glob("*/*/*.npz"), key=_listing_key):
            if path in self._bad:
                continue
            t, b = path.parent.parent.name, path.parent.name
            if (task is not None and t not in task) or (behavior is not None and b not in behavior):
                continue
            try:
                length = int(path.stem.rsplit("-T", 1)[1])
            except (IndexError, ValueError):
                self._skip(path, "file name does not end in -T<length>")
                continue
            infos.append(EpisodeInfo(path, t, b, length))
        return infos

    def tasks(self) -> list[str]:
        return sorted({i.task for i in self.episodes()})

    def load(self, info: EpisodeInfo | str | Path) -> Episode | None:
        """The episode (cached), or None with a warning when its file is damaged."""
        path = info.path if isinstance(info, EpisodeInfo) else Path(info)
        if path in self._bad:
            return None
        if path not in self._loaded:
            try:
                episode = Episode.load(path)
            except LOAD_ERRORS as err:
                self._skip(path, f"{type(err).__name__}: {err}")
                return None
            mismatch = self._mismatch(episode, path)
            if mismatch:
                self._skip(path, mismatch)
                return None
            self._sizes.setdefault(episode.task, episode.frames.shape[-2:])
            self._loaded[path] = episode
        return self._loaded[path]

    def _mismatch(self, episode: Episode, path: Path) -> str | None:
        """Why `episode` (read from `path`) does not belong in this store, or None."""
        folder_task = path.parent.parent.name
        if episode.task != folder_task:
            return f"its task {episode.task!r} is not its folder's {folder_task!r}"
        try:
            wrong_width = width_mismatch(episode)
        except ValueError as err:
            return str(err)
        if wrong_width:
            return wrong_width
        h, w = episode.frames.shape[-2:]
        size = self._sizes.get(episode.task)
        if size is not None and (h, w) != size:
            return f"{h}x{w} px frames; this store reads {size[0]}x{size[1]} for {episode.task}"
        return None

    def _skip(self, path: Path, why: str) -> None:
        self._bad.add(path)
        warnings.warn(f"skipping episode file {path} ({why})", RuntimeWarning, stacklevel=3)

    # ---- sampling -----------------------------------------------------------------------
    def sample(self, batch: int, seq_len: int, weighting: str = "frame", *,
               task: str | Sequence[str] | None = None, behavior: str | Sequence[str] | None = None,
               episodes: Sequence[EpisodeInfo] | None = None, rng: np.random.Generator | None = None,
               first: int | None = None) -> dict[str, torch.Tensor]:
        """Sample `batch` windows of `seq_len` consecutive frames (with `first`, only windows
        that start within an episode's first `first` frames).

        Draws from `episodes` when given (e.g. a train split), else from every episode
        matching `task` and `behavior`.

        Args:
            weighting: ``"frame"``: every window equally likely (long and frequent tasks
                dominate). ``"task"``: uniform over tasks, then over that task's windows —
                the coverage-aware sampler. ``"reward"``: uniform over tasks, then over the
                levels of a window's mean reward within the task (`REWARD_LEVELS` equal
                bins over the task's range), then over the windows of a level — coverage
                inside a task, where rare outcomes (a ball not yet caught) would
                otherwise be drowned by common ones.

        Returns a dict of tensors, with `L = seq_len` and `A = MAX_ACTION_DIM`:
            frames `uint8 [B, L, 3, H, W]`; actions `float32 [B, L-1, A]` (zero-padded;
            `actions[:, t]` takes frame t to t+1); rewards `float32 [B, L-1]`;
            action_mask `bool [B, A]`; task_id `long [B]` (`envs.task_index`); and
            states `float32 [B, L, S]` when every episode recorded states of one size
            (for state-based models and measurements; pixel models never read them);
            episode `long [B]`, each window's episode as a position in `episodes` (or in
            the listing), and start `long [B]`, its first frame there.
        """
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (frames per window), got {seq_len}")
        if first is not None and (first < 1 or weighting == "reward"):
            raise ValueError(f"first must be >= 1 and combines with frame or task weighting, got {first} with {weighting}")
        rng = rng if rng is not None else np.random.default_rng()
        infos = self.episodes(task, behavior) if episodes is None else episodes
        loaded = [(i, ep) for i, ep in enumerate(map(self.load, infos)) if ep is not None and len(ep.frames) >= seq_len]
        position, pool = np.array([i for i, _ in loaded], np.int64), [ep for _, ep in loaded]
        if not pool:
            raise ValueError(f"no episode in {self.root} (task={task}, behavior={behavior}) "
                             f"has {seq_len} frames or more")
        n_windows = np.array([len(ep.frames) - seq_len + 1 for ep in pool], np.float64)
        if first is not None:
            n_windows = np.minimum(n_windows, first)
        if weighting == "reward":
            picks, starts = self._sample_by_reward(pool, batch, seq_len, rng)
        else:
            if weighting == "frame":
                p = n_windows / n_windows.sum()
            else:
                tasks = np.array([ep.task for ep in pool])
                per_task = {t: n_windows[tasks == t].sum() for t in set(tasks)}
                p = np.array([w / per_task[t] for w, t in zip(n_windows, tasks)]) / len(per_task)
            picks = rng.choice(len(pool), size=batch, p=p)
            starts = [int(rng.integers(n_windows[i])) for i in picks]
        out = collate([pool[i] for i in picks], starts, seq_len)
        out["episode"], out["start"] = torch.from_numpy(position[picks]), torch.tensor(starts, dtype=torch.long)
        return out

    def _sample_by_reward(self, pool: list[Episode], batch: int, seq_len: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        """`sample(weighting="reward")`'s picks in `pool` and window starts: tasks uniform,
        then reward levels, then windows."""
        levels = [self._window_rewards(ep, seq_len) for ep in pool]
        episode = np.concatenate([np.full(len(v), i) for i, v in enumerate(levels)])
        start = np.concatenate([np.arange(len(v)) for v in levels])
        mean = np.concatenate(levels)
        tasks = np.array([ep.task for ep in pool])[episode]
        p = np.zeros(len(mean))
        for t in set(tasks):
            in_task = tasks == t
            lo, hi = mean[in_task].min(), mean[in_task].max()
            bins = np.minimum(((mean[in_task] - lo) / max(hi - lo, 1e-8) * REWARD_LEVELS).astype(int), REWARD_LEVELS - 1)
            count = np.bincount(bins)
            p[in_task] = 1.0 / (count[bins] * (count > 0).sum())
        picks = rng.choice(len(mean), size=batch, p=p / p.sum())
        return episode[picks], [int(start[i]) for i in picks]

    def _window_rewards(self, ep: Episode, seq_len: int) -> np.ndarray:
        """Mean reward of every window of `seq_len` frames of `ep` (cached)."""
        key = (id(ep), seq_len)
        if key not in self._levels:
            c = np.concatenate([[0.0], np.cumsum(ep.rewards, dtype=np.float64)])
            self._levels[key] = (c[seq_len - 1:] - c[: len(c) - seq_len + 1]) / (seq_len - 1)
        return self._levels[key]


WEIGHTINGS = ("frame", "task", "reward")
REWARD_LEVELS = 10
LABEL = re.compile(r"[a-z0-9][a-z0-9_.+-]*")


def check_labels(task: str, behavior: str) -> None:
    """Raise `ValueError` unless `task` is registered and `behavior` is a plain folder name
    (lower-case letters, digits, `_ . + -`; no path separators, no leading dot)."""
    task_spec(task)
    if not isinstance(behavior, str) or not LABEL.fullmatch(behavior):
        raise ValueError(f"behavior label {behavior!r} must be a plain name like 'expert' or 'noise-ou'")


def width_mismatch(episode: Episode) -> str | None:
    """Why the episode's actions do not fit its task, or None (unknown tasks raise `ValueError`)."""
    width, spec = episode.actions.shape[1], task_spec(episode.task)
    return None if width == spec.action_dim else f"{width}-dim actions; {spec.name} takes {spec.action_dim}"


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the hidden `.<name>.<pid>.<random>.tmp` files under `root/<task>/<behavior>/`
    that a killed writer left (its process is gone). Returns what it removed."""
    removed = []
    for tmp in root.glob("*/*/.*.tmp"):
        parts = tmp.name.split(".")
        if len(parts) >= 4 and parts[-3].isdigit() and not pid_alive(int(parts[-3])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        warnings.warn(f"removed {len(removed)} temporary file(s) left by killed writers under {root}",
                      RuntimeWarning, stacklevel=2)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def _listing_key(path: Path) -> tuple[str, str, int, str]:
    """Task, behaviour, episode seed (-1 if the name has none), then the name itself, of a
    file named `<date>-<time>-<seed>-<id>-T<len>.npz` (`EpisodeStore.add`)."""
    parts = path.stem.split("-")
    seed = int(parts[2]) if len(parts) == 5 and parts[2].isdigit() else -1
    return path.parent.parent.name, path.parent.name, seed, path.name


def collate(episodes: list[Episode], starts: list[int], seq_len: int) -> dict[str, torch.Tensor]:
    """Cut windows `[start, start + seq_len)` from episodes and stack them (see `sample`)."""
    shapes = {ep.frames.shape[1:] for ep in episodes}
    if len(shapes) > 1:
        raise ValueError(f"episodes have different frame shapes {sorted(shapes)}; sample one size at a time")
    B = len(episodes)
    actions = np.zeros((B, seq_len - 1, MAX_ACTION_DIM), np.float32)
    mask = np.zeros((B, MAX_ACTION_DIM), bool)
    for b, (ep, s) in enumerate(zip(episodes, starts)):
        A = ep.actions.shape[1]
        actions[b, :, :A] = ep.actions[s:s + seq_len - 1]
        mask[b, :A] = True
    batch = {
        "frames": torch.from_numpy(np.stack([ep.frames[s:s + seq_len] for ep, s in zip(episodes, starts)])),
        "actions": torch.from_numpy(actions),
        "rewards": torch.from_numpy(np.stack([ep.rewards[s:s + seq_len - 1] for ep, s in zip(episodes, starts)])),
        "action_mask": torch.from_numpy(mask),
        "task_id": torch.tensor([task_index(ep.task) for ep in episodes], dtype=torch.long),
    }
    if all(ep.states is not None for ep in episodes) and len({ep.states.shape[1] for ep in episodes}) == 1:
        batch["states"] = torch.from_numpy(np.stack([ep.states[s:s + seq_len] for ep, s in zip(episodes, starts)]))
    return batch


class EpisodeDataset(torch.utils.data.IterableDataset):
    """Endless stream of sampled batches for `DataLoader(ds, batch_size=None, num_workers=k)`.

    Each worker opens the store itself and draws from its own seed, so workers never
    repeat each other's batches.
    """

    def __init__(self, root: str | Path, batch: int, seq_len: int, weighting: str = "frame",
                 task: str | None = None, behavior: str | None = None, seed: int = 0):
        self.root, self.batch, self.seq_len, self.weighting = root, batch, seq_len, weighting
        self.task, self.behavior, self.seed = task, behavior, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        store = EpisodeStore(self.root)
        while True:
            yield store.sample(self.batch, self.seq_len, self.weighting, task=self.task,
                               behavior=self.behavior, rng=rng)
