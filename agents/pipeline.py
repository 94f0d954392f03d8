"""The main job's build pipeline: expert -> data -> world model -> actor and critic.

    job = MainJob(JobConfig(task="cup-catch"))
    job.build()                       # runs only the stages whose results are not cached
    model, learner = job.load()

Each `Stage` knows its cache (a folder on disk), says what it will do and how long that
takes on a 2-core CPU (`MINUTES`, measured here) before it runs, and reports the time it
really took. A stage writes the config it is built from (its key) to `<folder>/stage.json`
before it runs; a cache built from another config is refused by name, never silently reused
(the data stage only counts episodes: the store is shared and grows). `experiments/mpc.py`
builds then evaluates; other experiments reuse stages.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import imageio.v2 as imageio
import numpy as np
import torch

import envs
import world_models
from agents.learner import Learner
from agents.mpc import MPCAgent
from agents.policy import FeaturePolicyAgent
from agents.offline import MOPOConfig, feature_transitions, features_cache, mopo
from planners import CEM, MPC
from replay import EpisodeStore, collect
from replay.experts import DEFAULT_EXPERT_DIR, expert_path, make_expert, train_sac_expert
from uncertainty import MotionStats, step_signal, world_model_quality
from uncertainty.fidelity import fidelity_report, start_rollout_image, zero_action_starts
from world_models.checkpoint import find_checkpoint, load_trainer_state
from world_models.imagined import StartWindows
from world_models.training import TrainConfig, split_episodes, train

# Minutes on this project's 2-core CPU (software GL), measured from a fresh clone with
# nothing else running (docs/cup_catch.md).
MINUTES = {
    "expert_per_1k_steps": 0.22,        # SAC on dm_control states, one torch thread
    "collect_per_1k_frames": {"dmc": 0.37, "metaworld": 0.80, "toy": 0.01},  # 64 px, two env workers
    "train_s_per_step": {"tiny": {"tokenizer": 0.05, "dynamics": 0.07},
                         "small": {"tokenizer": 0.19, "dynamics": 0.18}},
    "world_model_report": {"small": 2.9},
    "features_per_1k_frames": 0.10,    # each frame encoded once for all its context windows
    "learner_per_1k_steps": 0.43,
}
EXPERT_BEHAVIORS = ("expert", "transformed", "mixed", "noise", "medium", "medium-replay")


@dataclass
class Stage:
    name: str
    what: str
    minutes: float
    done: Callable[[], bool]
    run: Callable[[], object]
    folder: Path | None = None      # where its key goes
    key: dict = field(default_factory=dict)


STAGE_KEY = "stage.json"


def check_key(stage: Stage) -> None:
    """Refuse a stage whose folder was built (or started) from another config."""
    path = stage.folder / STAGE_KEY if stage.folder is not None else None
    if path is None or not path.exists():
        return
    built, want = dotted(json.loads(path.read_text())), dotted(json.loads(json.dumps(stage.key, sort_keys=True)))
    diff = sorted(k for k in built.keys() | want.keys() if built.get(k) != want.get(k))
    if diff:
        raise ValueError(f"{stage.name}: {stage.folder} was built with "
                         + ", ".join(f"{k}={json.dumps(built.get(k))}" for k in diff) + ", not "
                         + ", ".join(f"{k}={json.dumps(want.get(k))}" for k in diff)
                         + "; remove that folder to rebuild it")


def dotted(key: dict, prefix: str = "") -> dict:
    """A nested key flattened to `{"outer.inner": value}`, so that a refusal names the
    fields that changed, not whole nested keys."""
    out = {}
    for k, v in key.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def build(stages: list[Stage]) -> dict[str, float]:
    """Run the stages that are not done, in order; say first what each will do and how long
    it takes here. Returns the minutes each stage that ran took."""
    for s in stages:
        check_key(s)
    todo = [s for s in stages if not s.done()]
    for s in stages:
        if s not in todo and s.folder is not None and not (s.folder / STAGE_KEY).exists():
            print(f"  note: {s.folder} has no {STAGE_KEY} (built before stage keys), so its config is not checked")
    for s in stages:
        print(f"  {'cached' if s not in todo else 'to do':>7}  {s.name}: {s.what}"
              + (f" (about {s.minutes:.0f} min on a 2-core CPU)" if s in todo else ""))
    took = {}
    for s in todo:
        print(f"\n== {s.name}: {s.what}", flush=True)
        t0 = time.perf_counter()
        if s.folder is not None:
            s.folder.mkdir(parents=True, exist_ok=True)
            write_json(s.folder / STAGE_KEY, s.key)
        s.run()
        took[s.name] = (time.perf_counter() - t0) / 60
        print(f"== {s.name} took {took[s.name]:.1f} min (estimated {s.minutes:.0f})", flush=True)
    return took


def trained(folder: Path, phases: int) -> bool:
    found = find_checkpoint(folder)
    return found is not None and (load_trainer_state(found) or {"phase": phases})["phase"] >= phases


def write_json(path: Path, values: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values, indent=2))
    os.replace(tmp, path)


def make_planner(p, action_dim: int, seed: int) -> MPC:
    """CEM-MPC from a config's `planner` fields (`experiments/configs/mpc.yaml`)."""
    try:
        cem = CEM(action_dim, p.horizon, population=p.population, elites=p.elites, iterations=p.iterations,
                  init_std=p.init_std, min_std=p.min_std, max_std=p.max_std, momentum=p.momentum,
                  noise_beta=p.noise_beta, keep_elites=p.keep_elites, select=p.select, seed=seed)
        return MPC(cem, replan_every=p.replan_every, margin=p.get("margin"))
    except ValueError as err:
        raise ValueError(f"planner: {err}") from None


def make_mpc_agent(cfg, model, learner: Learner | None, action_dim: int, seed: int, context: int,
                   motion: MotionStats | None = None) -> MPCAgent:
    """The main job's MPC agent from a config's `task`, `planner` and `agent` fields: the
    learner's critic values each plan's end and its actor seeds the plans (the BC head when
    there is no learner). A pixel model's penalty is divided by the checkpoint's `motion`."""
    a = cfg.agent
    use_value = a.value and learner is not None and learner.has_critic
    prior = "bc" if a.prior in ("policy", "residual") and learner is None else a.prior
    return MPCAgent(model, make_planner(cfg.planner, action_dim, seed), cfg.task, context=context,
                    discount=a.discount, signal=a.penalty, lam=a.lam, seeds=a.seeds, motion=motion,
                    value=learner.state_value if use_value else None,
                    policy=learner.policy if learner is not None else None, prior=prior,
                    prior_samples=a.prior_samples, prior_noise=a.prior_noise, seed=seed)


def make_actor_agent(model, learner: Learner, task: str, context: int) -> FeaturePolicyAgent:
    """The offline actor alone, acting from the model's features of its last `context` real frames."""
    return FeaturePolicyAgent(model, lambda f: learner.act(f[None])[0], task, context=context)


def world_model_report(model, store: EpisodeStore, train_eps, held_eps, tasks, seed: int,
                       batch: int = 128, out: Path | None = None,
                       expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> dict[str, float]:
    """Held-out quality per task: recon PSNR, 8-step rollout gain, shuffle ratio and, where
    states were recorded, the fidelity report (the BC head against the task's expert too,
    where one exists) and the zero-action start check (its picture, real / reconstructed /
    imagined rows, to `<out>/<task>_zero_action_start.png`)."""
    rng = np.random.default_rng(seed)
    report = {}
    for task in tasks:
        held = [e for e in held_eps if e.task == task] or [e for e in train_eps if e.task == task]
        q = world_model_quality(model, store.sample(batch, 9, episodes=held, rng=rng), seed)
        report.update({f"{task}/recon_psnr_db": q.recon_psnr, f"{task}/rollout8_psnr_gain_db": q.rollout_gain,
                       f"{task}/action_shuffle_ratio": q.shuffle_ratio})
        tr = [e for e in train_eps if e.task == task]
        if store.load(held[0]).states is not None and tr:
            report.update({f"{task}/{k}": v for k, v in
                           fidelity_report(model, store, tr, held, task, seed=seed,
                                           expert=task_expert(task, expert_dir)).items()})
            if envs.task_spec(task).domain != "metaworld":
                starts = zero_action_starts(model, task, seed=10_000 + seed)
                if out is not None:
                    image = np.kron(start_rollout_image(starts), np.ones((3, 3, 1), np.uint8))
                    imageio.imwrite(out / f"{task}_zero_action_start.png", image)
                if starts.imagined_rewards is not None:
                    report[f"{task}/zero_action_start/real_reward"] = starts.real_rewards.mean().item()
                    report[f"{task}/zero_action_start/imagined_reward"] = starts.imagined_rewards.mean().item()
    return report


def task_expert(task: str, expert_dir: str | Path = DEFAULT_EXPERT_DIR):
    """The task's expert `state -> action`, or None where there is none (yet)."""
    try:
        return make_expert(task, expert_dir)()
    except ValueError:
        return None


def train_world_model(name: str, preset: str, tasks: list[str], store: EpisodeStore, out: Path, *,
                      seed: int = 0, holdout: float = 0.1, weighting: str = "frame", compile: str | None = None,
                      overrides: dict | None = None,
                      steps: dict | None = None, device: str = "cpu", progress: bool = True,
                      expert_dir: str | Path = DEFAULT_EXPERT_DIR) -> dict[str, float]:
    """Train (or resume) a pixel world model on the store's episodes of `tasks`, then write
    its held-out report to `<out>/quality.json` and return it."""
    torch.manual_seed(seed)
    model = world_models.make(name, preset, tasks=tuple(tasks), **(overrides or {})).to(device)
    phase_steps = {**model.cfg.phase_steps, **(steps or {})}
    unknown = set(phase_steps) - set(model.phases)
    if unknown:
        raise ValueError(f"steps: unknown phase(s) {sorted(unknown)}; {name} has {model.phases}")
    train_eps, held_eps = split_episodes(store, tasks, holdout, seed)
    mc = model.cfg
    print(f"{name}/{preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {len(train_eps)} train / "
          f"{len(held_eps)} held-out episodes, " + ", ".join(f"{p} {phase_steps[p]} steps" for p in model.phases)
          + f" -> {out}")
    cfg = TrainConfig(steps=phase_steps, batch=mc.batch, seq_len=mc.seq_len, lr=mc.lr, weight_decay=mc.weight_decay,
                      weighting=weighting, compile=compile, seed=seed, progress=progress)
    metrics = train(model, store, train_eps, out, cfg)
    report = {**{k: v for k, v in metrics.items() if k.endswith("/seconds")},
              **world_model_report(model, store, train_eps, held_eps, tasks, seed, out=out, expert_dir=expert_dir)}
    write_json(out / "quality.json", report)
    return report


@dataclass
class JobConfig:
    """What the main job builds and where its stages are cached."""

    task: str = "cup-catch"
    world_model: str = "dreamer4"
    preset: str = "small"
    seed: int = 0
    store: str = "runs/data"
    expert_dir: str = "runs/experts"
    expert_steps: int = 30_000
    behavior: str = "mixed"
    episodes: int = 200
    episode_steps: int | None = 100
    num_envs: int = 2
    weighting: str = "frame"
    compile: str | None = None                      # a torch.compile backend for the world model's training
    model: dict = field(default_factory=dict)       # world-model config overrides
    algo: str = "td3+bc"
    learner_steps: int = 10_000
    model_based: bool = False                       # MOPO rollouts in the learner stage
    penalty: str | None = None
    lam: float = 0.0
    learner: dict = field(default_factory=dict)     # d3rlpy config fields
    mopo: dict = field(default_factory=dict)
    device: str = "cpu"
    progress: bool = True


class MainJob:
    """The stages of `JobConfig`, their cache folders, and the built results."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.spec = envs.task_spec(cfg.task)
        self.store = EpisodeStore(cfg.store)
        self.run_dir = Path(f"runs/train/{cfg.world_model}-{cfg.preset}/{cfg.task}/{cfg.seed}")
        method = f"{'mopo-' if cfg.model_based else ''}{cfg.algo}" + (f"-{cfg.penalty}-{cfg.lam:g}" if cfg.lam else "")
        self.learner_dir = Path(f"runs/offline/{cfg.task}/{method}/{cfg.seed}/learner")

    # ---- the stages ------------------------------------------------------------------------
    def episodes(self):
        return self.store.episodes(task=self.cfg.task, behavior=self.cfg.behavior)

    def stages(self) -> list[Stage]:
        c, spec = self.cfg, self.spec
        steps = c.episode_steps or spec.episode_length
        have = len(self.episodes())
        need = max(0, c.episodes - have)
        stages = []
        if spec.domain == "dmc" and c.behavior in EXPERT_BEHAVIORS:
            stages.append(Stage(
                "expert", f"SAC on {c.task}'s states for {c.expert_steps} steps -> {expert_path(c.task, c.expert_dir)}",
                c.expert_steps / 1000 * MINUTES["expert_per_1k_steps"],
                lambda: (expert_path(c.task, c.expert_dir) / "actor.safetensors").exists(),
                lambda: train_sac_expert(c.task, steps=c.expert_steps, seed=c.seed, expert_dir=c.expert_dir,
                                         progress=c.progress),
                expert_path(c.task, c.expert_dir), {"expert_steps": c.expert_steps}))
        size = world_models.make(c.world_model, c.preset).cfg.image_size
        stages.append(Stage(
            "data", f"collect {need or c.episodes} {c.behavior} episodes of {steps} steps at {size} px -> {c.store}",
            need * steps / 1000 * MINUTES["collect_per_1k_frames"][spec.domain] * spec.action_repeat / 2,
            lambda: len(self.episodes()) >= c.episodes,
            lambda: print(collect(c.task, c.behavior, self.store, max(0, c.episodes - len(self.episodes())),
                                  num_envs=c.num_envs, size=size, seed=c.seed + len(self.episodes()),
                                  expert_dir=c.expert_dir, episode_steps=c.episode_steps,
                                  progress=c.progress).table())))
        probe = world_models.make(c.world_model, c.preset, **c.model)
        per_step = MINUTES["train_s_per_step"].get(c.preset, {})
        train_min = (sum(n * per_step.get(p, 0) for p, n in probe.cfg.phase_steps.items()) / 60
                     + MINUTES["world_model_report"].get(c.preset, 0))
        stages.append(Stage(
            "world model", f"train {c.world_model}/{c.preset} ({', '.join(f'{p} {n}' for p, n in probe.cfg.phase_steps.items())} "
                           f"steps) -> {self.run_dir}", train_min,
            lambda: trained(self.run_dir / "checkpoint", len(probe.phases)) and (self.run_dir / "quality.json").exists(),
            lambda: self._print_report(train_world_model(c.world_model, c.preset, [c.task], self.store, self.run_dir,
                                                         seed=c.seed, weighting=c.weighting, compile=c.compile,
                                                         overrides=c.model,
                                                         device=c.device, progress=c.progress,
                                                         expert_dir=c.expert_dir)),
            self.run_dir, self.world_model_key()))
        stages.append(Stage(
            "actor and critic", f"{'MOPO with ' if c.model_based else ''}{c.algo} on the model's features, "
                                f"{c.learner_steps} gradient steps -> {self.learner_dir}",
            c.episodes * steps / 1000 * MINUTES["features_per_1k_frames"] + c.learner_steps / 1000 * MINUTES["learner_per_1k_steps"],
            lambda: (self.learner_dir / "learner.json").exists(), self.train_learner,
            self.learner_dir, {"algo": c.algo, "learner_steps": c.learner_steps, "learner": c.learner,
                               "model_based": c.model_based, "penalty": c.penalty, "lam": c.lam, "mopo": c.mopo,
                               "world_model": self.world_model_key()}))
        return stages

    def world_model_key(self) -> dict:
        c = self.cfg
        config = asdict(world_models.make_config(c.world_model, c.preset, **c.model))  # the preset's fields too
        return {"world_model": c.world_model, "preset": c.preset, **{f"config.{k}": v for k, v in config.items()},
                "weighting": c.weighting,
                "store": os.path.normpath(c.store), "behavior": c.behavior, "episodes": c.episodes,
                "episode_steps": c.episode_steps}

    def build(self) -> dict[str, float]:
        print(f"main job for {self.cfg.task}: each stage is cached, so a rerun skips what is done")
        return build(self.stages())

    # ---- results ---------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        found = find_checkpoint(self.run_dir / "checkpoint")
        if found is None:
            raise ValueError(f"no world model at {self.run_dir / 'checkpoint'}: build() first")
        return found

    def load(self):
        """The world model and the learner (None if that stage has not run)."""
        model = world_models.load(self.checkpoint(), device=self.cfg.device)
        learner = Learner.load(self.learner_dir) if (self.learner_dir / "learner.json").exists() else None
        return model, learner

    def train_learner(self) -> dict:
        c = self.cfg
        model = world_models.load(self.checkpoint(), device=c.device)
        episodes = self.episodes()
        cache = features_cache(self.learner_dir.parents[2], self.checkpoint(), model.max_context, episodes)
        real = feature_transitions(model, self.store, episodes, c.task, cache=cache, progress=c.progress)
        learner = Learner(c.algo, real.obs_dim, self.spec.action_dim, **{"gamma": 0.99, **c.learner})
        starts = StartWindows(self.store, episodes, task=c.task, context=model.max_context) if c.model_based else None
        penalty = (step_signal(c.penalty, model, task=c.task, motion=MotionStats.load(self.checkpoint(), c.task),
                               store=self.store, episodes=episodes, seed=c.seed, real=real.sars)
                   if c.model_based and c.lam else None)
        mopo(model if c.model_based else None, learner, real, starts,
             MOPOConfig(steps=c.learner_steps, seed=c.seed, **c.mopo), penalty=penalty, lam=c.lam, progress=c.progress)
        learner.save(self.learner_dir)
        return {"transitions": len(real)}

    @staticmethod
    def _print_report(report: dict) -> None:
        for k, v in report.items():
            print(f"  {k:<52}{v:10.3f}")
