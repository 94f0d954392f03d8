"""Offline model-based RL from an episode store: MOPO on world-model features (d3rlpy learners).

    python experiments/offline.py task=toy-reach checkpoint=<ckpt> penalty=u_r lam=1 algo=sac
    python experiments/offline.py task=toy-reach checkpoint=<ckpt> algo=iql model_free=true   # the anchor

Learns only from the store: real transitions are the model's features of the recorded
frames (cached next to the run), imagined ones come from the world model. The real
environment is used to evaluate every `eval_every` steps and for nothing else. Writes, under
`runs/offline/<task>/<method>/<seed>/`: TensorBoard events, `metrics.csv` (one row per
evaluation), the learner (`learner/`: safetensors + JSON) and, in `runs/offline/<task>/`,
`returns_seed<seed>.png`, the return against gradient steps of every method run on this
task and seed (WHALE's figure 4). With `out=<dir>`, the features cache and the curve stay
inside `<dir>`.
A killed run resumes from its last saved learner; its model buffer is refilled.
"""
import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cli import entry_point, load_model, resolve_device  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import envs  # noqa: E402
from agents import FeaturePolicyAgent, ObservationPolicyAgent  # noqa: E402
from agents.evaluate import evaluate  # noqa: E402
from agents.learner import ALGOS, Learner  # noqa: E402
from agents.offline import (MOPOConfig, Transitions, feature_transitions, features_cache, learner_hyper, mopo,  # noqa: E402
                            rollout_scale)
from replay import EpisodeStore  # noqa: E402
from uncertainty import MotionStats, step_signal, step_signal_names  # noqa: E402
from world_models.checkpoint import hold_lock  # noqa: E402
from world_models.imagined import StartWindows  # noqa: E402


def method_name(cfg: DictConfig) -> str:
    if cfg.model_free:
        return cfg.algo
    return f"mopo-{cfg.algo}-{cfg.penalty}-{cfg.lam:g}" if cfg.penalty else f"mopo-{cfg.algo}-lam0"


def check_lam(cfg: DictConfig) -> None:
    """A penalty and its λ come together: either alone would be silently ignored or refused late."""
    if cfg.lam < 0:
        raise ValueError(f"lam must be >= 0, got {cfg.lam}")
    if cfg.model_free and (cfg.penalty or cfg.lam):
        raise ValueError("model_free=true imagines nothing to penalise: drop penalty and lam")
    if cfg.penalty and not cfg.lam:
        raise ValueError(f"penalty={cfg.penalty} with lam=0 penalises nothing: give lam > 0 (each signal has its own "
                         "unit; a run prints its imagined reward and u per step), or drop penalty for the λ = 0 run")
    if cfg.lam and not cfg.penalty:
        raise ValueError(f"lam={cfg.lam:g} needs a penalty=<signal> to weigh")


def check_penalty(cfg: DictConfig, model) -> None:
    """Refuse a penalty the model does not offer, before any feature is computed."""
    if cfg.penalty and cfg.penalty not in step_signal_names(model, cfg.task):
        raise ValueError(f"{model.name} on {cfg.task} offers the penalties {step_signal_names(model, cfg.task)}, "
                         f"not {cfg.penalty!r}")


def make_penalty(cfg: DictConfig, model, store, episodes, checkpoint: Path, real: Transitions):
    """The penalty by name (`uncertainty.step_signal`), motion-normalised for pixel models."""
    if not cfg.penalty:
        return None
    motion = MotionStats.load(checkpoint, cfg.task) if not model.reads_states else None
    return step_signal(cfg.penalty, model, task=cfg.task, motion=motion, store=store, episodes=episodes,
                       retracing_ks=tuple(cfg.retracing_ks), seed=cfg.seed, real=real.sars)


def plot_returns(runs: dict[str, Path], path: Path, title: str, dataset_return: float) -> Path:
    """Eval return against gradient steps at `path`, one line per method: `runs` maps each
    method to its `metrics.csv`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, csv_path in runs.items():
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        if rows:
            steps = [int(r["step"]) for r in rows]
            ret = np.array([float(r["return"]) for r in rows])
            std = np.array([float(r["return_std"]) for r in rows])
            line, = ax.plot(steps, ret, label=method)
            ax.fill_between(steps, ret - std, ret + std, alpha=0.15, color=line.get_color())
    ax.axhline(dataset_return, color="gray", ls="--", lw=1, label="dataset mean")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("return (real environment)")
    ax.set_title(f"{title}: offline RL")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@entry_point("offline")
def main(cfg: DictConfig) -> None:
    if cfg.algo not in ALGOS:
        raise ValueError(f"unknown algo {cfg.algo!r}; choose from {', '.join(ALGOS)}")
    check_lam(cfg)
    device = resolve_device(cfg.device)
    found, model = load_model(cfg.checkpoint, cfg.task, device)
    if cfg.world_model and cfg.world_model != model.name:
        raise ValueError(f"world_model={cfg.world_model}, but {cfg.checkpoint} holds a {model.name} model")
    if not cfg.model_free and not model.has_reward:
        raise ValueError(f"{cfg.checkpoint} has no reward head: MOPO needs the model's rewards (or model_free=true)")
    store = EpisodeStore(cfg.store)
    episodes = store.episodes(task=cfg.task, behavior=cfg.behavior)
    if not episodes:
        raise ValueError(f"no {cfg.task} episodes{f' of {cfg.behavior}' if cfg.behavior else ''} in {cfg.store}")
    torch.manual_seed(cfg.seed)
    check_penalty(cfg, model)
    method = method_name(cfg)
    out = Path(cfg.out or f"runs/offline/{cfg.task}/{method}/{cfg.seed}")
    task_dir = out.parent.parent if cfg.out is None else out  # shared features and curves, or the run's own
    hold_lock(out)
    OmegaConf.save(cfg, out / "config.yaml")
    is_state = model.reads_states
    context = 1 if is_state else model.max_context
    cache = features_cache(task_dir, found, context, episodes)
    real = feature_transitions(model, store, episodes, cfg.task, context=context, cache=cache, progress=cfg.progress)
    penalty = make_penalty(cfg, model, store, episodes, found, real)
    dataset_return = float(np.mean([store.load(e).episode_return for e in episodes]))
    spec = envs.task_spec(cfg.task)
    hyper = learner_hyper(cfg.algo, batch_size=cfg.mopo.batch, **OmegaConf.to_container(cfg.learner))
    learner_dir = out / "learner"
    resumed = cfg.resume and (learner_dir / "learner.json").exists()
    if resumed:
        learner = Learner.load(learner_dir)
        print(f"resuming {method} from {learner_dir} at step {learner.steps}; the model buffer is refilled")
    else:
        learner = Learner(cfg.algo, real.obs_dim, spec.action_dim, **hyper)
    mopo_cfg = MOPOConfig(steps=cfg.steps, eval_every=cfg.eval_every, seed=cfg.seed,
                          **{k: v for k, v in OmegaConf.to_container(cfg.mopo).items() if k != "batch"},
                          batch=cfg.mopo.batch)
    starts = None if cfg.model_free else StartWindows(store, episodes, task=cfg.task, context=context,
                                                     observation="states" if is_state else "frames")
    env = envs.make(cfg.task, obs="state" if is_state else "pixels",
                    size=64 if is_state else model.cfg.image_size, seed=cfg.seed)

    def act(obs: np.ndarray) -> np.ndarray:
        return learner.act(obs[None])[0]

    def agent(seed: int):
        return ObservationPolicyAgent(act) if is_state else FeaturePolicyAgent(model, act, cfg.task, context=context)

    def run_eval(learner: Learner) -> dict[str, float]:
        return evaluate(env, agent, cfg.eval_episodes, seed=10_000 * (cfg.seed + 1))

    writer = SummaryWriter(str(out / "tb"))
    metrics_path = out / "metrics.csv"

    rounds = []

    def log(step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            writer.add_scalar(k, v, step)
        if any(k.startswith("rollout/") for k in metrics):
            rounds.append(metrics)

    def checkpoint(learner: Learner) -> None:
        learner.save(learner_dir, with_optimizers=True)

    print(f"{method} on {cfg.task}: {len(episodes)} episodes, {len(real)} real transitions of {real.obs_dim}-dim "
          f"{'states' if is_state else model.name + ' features'} (dataset mean return {dataset_return:.1f}); "
          f"{cfg.steps} gradient steps -> {out}")
    evaluations = mopo(None if cfg.model_free else model, learner, real, starts, mopo_cfg, penalty=penalty,
                       lam=cfg.lam, evaluate=run_eval, log=log, checkpoint=checkpoint, progress=cfg.progress)
    writer.close()
    if evaluations:
        previous = []
        if resumed and metrics_path.exists():  # keep the evaluations made before the kill
            with open(metrics_path) as f:
                previous = [r for r in csv.DictReader(f) if int(r["step"]) < evaluations[0]["step"]]
        fields = ["step", "seconds", "return", "return_std"] + (["success"] if "success" in evaluations[0] else [])
        tmp = metrics_path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(previous + evaluations)
        os.replace(tmp, metrics_path)
    learner.save(learner_dir)
    runs = ({p.parent.parent.name: p for p in sorted(task_dir.glob(f"*/{cfg.seed}/metrics.csv"))} if cfg.out is None
            else {method: metrics_path})
    figure = plot_returns(runs, task_dir / f"returns_seed{cfg.seed}.png", cfg.task, dataset_return)
    print(f"\n{'step':>8}{'return':>10}{'± std':>8}" + (f"{'success':>9}" if evaluations and "success" in evaluations[0] else ""))
    for e in evaluations:
        print(f"{e['step']:>8}{e['return']:>10.1f}{e['return_std']:>8.1f}" + (f"{e['success']:>9.0%}" if "success" in e else ""))
    print(f"dataset mean return {dataset_return:.1f}{rollout_scale(rounds)}; learner (actor and critic): {learner_dir}; curves: {figure}")


if __name__ == "__main__":
    main()
