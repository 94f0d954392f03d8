"""Run an agent for whole episodes, in this process or spread over worker processes."""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from scipy import stats


class Agent(Protocol):
    def reset(self, obs: np.ndarray) -> None: ...
    def act(self) -> np.ndarray: ...
    def observe(self, action: np.ndarray, obs: np.ndarray) -> None: ...


@dataclass
class EpisodeResult:
    episode_return: float
    success: bool | None
    steps: int
    seconds: float
    frames: list[np.ndarray] = field(default_factory=list)  # observations `[3, h, w]` when kept
    actions: list[np.ndarray] = field(default_factory=list)  # with them, the actions `[A]` and rewards
    rewards: list[float] = field(default_factory=list)


def run_episode(env, agent: Agent, seed: int, keep_frames: bool = False,
                on_step: Callable[[int], None] | None = None, max_steps: int | None = None) -> EpisodeResult:
    """One episode of `agent` in `env` from `reset(seed=seed)`, cut after `max_steps` agent
    steps when given; `on_step(t)` runs after each step (e.g. to advance a progress bar or
    record what the agent imagined)."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed)
    agent.reset(obs)
    frames, actions, rewards = ([obs] if keep_frames else []), [], []
    total, success, done, t = 0.0, info.get("success"), False, 0
    while not done:
        action = agent.act()
        obs, reward, terminated, truncated, info = env.step(action)
        agent.observe(action, obs)
        t += 1
        total, done = total + reward, terminated or truncated or t == max_steps
        if success is not None:
            success = success or bool(info.get("success"))
        if keep_frames:
            frames.append(obs)
            actions.append(np.asarray(action, np.float32))
            rewards.append(float(reward))
        if on_step is not None:
            on_step(t)
    return EpisodeResult(total, success, t, time.perf_counter() - t0, frames, actions, rewards)


def evaluate(env, make_agent: Callable[[int], Agent], episodes: int, seed: int) -> dict[str, float]:
    """Mean and std of the return (and the success rate, where the task reports it) of
    `episodes` episodes, episode k from `reset(seed=seed + k)` with `make_agent(seed + k)`."""
    results = [run_episode(env, make_agent(seed + k), seed + k) for k in range(episodes)]
    returns = np.array([r.episode_return for r in results])
    out = {"return": float(returns.mean()), "return_std": float(returns.std())}
    successes = [r.success for r in results if r.success is not None]
    if successes:
        out["success"] = float(np.mean(successes))
    return out


def interval(values) -> float:
    """Half-width of the 95% t-interval of the mean of `values` (nan for fewer than 2)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


@dataclass(frozen=True)
class EpisodeJob:
    """Episode `index` of `policy`, played from `reset(seed=seed)`."""
    policy: str
    index: int
    seed: int


Tick = Callable[[str], None]                             # called with the policy's name after each step
RunnerFactory = Callable[..., Callable[[EpisodeJob], object]]  # factory(tick=...) -> runner

_runner: Callable[[EpisodeJob], object] | None = None  # the worker process's runner


def _start_worker(factory: RunnerFactory, ticks, threads: int) -> None:
    global _runner
    torch.set_num_threads(threads)
    _runner = factory(tick=ticks.put)


def _run_in_worker(job: EpisodeJob) -> object:
    return _runner(job)


def cpu_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_jobs(jobs: Sequence[EpisodeJob], factory: RunnerFactory, workers: int = 1, tick: Tick | None = None,
             on_done: Callable[[EpisodeJob, object], None] | None = None) -> list:
    """Each job's result, in the order of `jobs`. `factory(tick=tick)` builds a runner (a callable
    job -> result) once per process: here when `workers` is 1, else in each of `workers`
    spawned processes with an equal share of the CPU cores, which take the jobs in order (put
    the longest first). `factory` and the results must pickle. `tick(policy)` runs here after
    every step of every job, `on_done(job, result)` after each job."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tick = tick or (lambda policy: None)
    if workers == 1:
        runner, results = factory(tick=tick), []
        for job in jobs:
            results.append(runner(job))
            if on_done is not None:
                on_done(job, results[-1])
        return results
    context = multiprocessing.get_context("spawn")  # forking a process that ran OpenMP or EGL is unsafe
    ticks = context.SimpleQueue()  # written synchronously: a job's ticks are in the pipe before its result
    threads = max(1, cpu_workers() // workers)
    results: list = [None] * len(jobs)

    def drain() -> None:
        while not ticks.empty():
            tick(ticks.get())

    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(factory, ticks, threads))
    try:
        index = {pool.submit(_run_in_worker, job): i for i, job in enumerate(jobs)}
        pending = set(index)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for future in sorted(done, key=index.get):
                i = index[future]
                results[i] = future.result()  # a worker's exception is raised here
                if on_done is not None:
                    on_done(jobs[i], results[i])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
