"""Phase-by-phase training of any `WorldModel` from an `EpisodeStore`.

AdamW per phase (only that phase's parameters train), bf16 autocast on CUDA, optionally
`torch.compile`d transformer layers (`TrainConfig.compile`; docs/cup_catch.md), a progress
bar, TensorBoard logs (losses, metrics, image grids of real frames over model frames), and
an atomic checkpoint every `ckpt_every` steps; a killed run resumes where it stopped. A
non-finite loss or gradient stops the run (`FloatingPointError`) before it can reach a
checkpoint. Under `torchrun` the same code trains with DistributedDataParallel
(`world_models.distributed`); metrics are read from the device only when they are logged.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from envs import TASKS
from replay import EpisodeInfo, EpisodeStore
from world_models import distributed
from world_models.base import WorldModel
from world_models.blocks import CompiledForward, outer_transformers
from world_models.checkpoint import find_checkpoint, hold_lock, load_trainer_state, load_weights, save_checkpoint


@dataclass
class TrainConfig:
    steps: dict[str, int]           # steps per phase; a phase not listed is kept as it is (finetuning)
    batch: int = 16
    seq_len: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    weighting: str = "frame"        # "task" | "reward": coverage-aware (see EpisodeStore.sample)
    compile: str | None = None      # a torch.compile backend ("inductor") for the transformer layers' steps
    ckpt_every: int = 500
    log_every: int = 25
    image_every: int = 250
    seed: int = 0
    progress: bool = True
    cache_latents: bool = True      # LatentCache where a phase's encoder is frozen (and its steps read more frames than there are)

    @classmethod
    def for_model(cls, model: WorldModel, steps: dict[str, int] | None = None, **kwargs) -> "TrainConfig":
        """The model config's batch, window, learning rate and weight decay; its phase steps
        unless `steps` are given."""
        c = model.cfg
        return cls(steps=dict(c.phase_steps if steps is None else steps), batch=c.batch, seq_len=c.seq_len,
                   lr=c.lr, weight_decay=c.weight_decay, **kwargs)


def split_episodes(store: EpisodeStore, tasks, holdout: float, seed: int = 0) -> tuple[list[EpisodeInfo], list[EpisodeInfo]]:
    """Deterministic train / held-out split of the episodes of `tasks` (by episode)."""
    infos = store.episodes(task=list(tasks))
    if not infos:
        raise ValueError(f"no episodes for {list(tasks)} in {store.root}; collect some first "
                         "(python experiments/collect.py task=...)")
    order = np.random.default_rng(seed).permutation(len(infos))
    n_hold = int(round(holdout * len(infos))) if len(infos) > 1 else 0
    held = sorted(order[:n_hold])
    return [infos[i] for i in sorted(order[n_hold:])], [infos[i] for i in held]


def train(model: WorldModel, store: EpisodeStore, episodes: list[EpisodeInfo] | dict[str, list[EpisodeInfo]],
          out_dir: str | Path, cfg: TrainConfig) -> dict[str, float]:
    """Train every phase of `model` in order, resuming from `out_dir/checkpoint` if present.

    `episodes` is one list for every phase, or a list per phase name (for example a
    tokenizer trained on more of the world than the dynamics).
    Returns the last step's metrics and `<phase>/seconds` of the phases run now. Writes TensorBoard events to `out_dir/tb`.

    Under `torchrun` each rank trains a DistributedDataParallel copy on its own batches
    (the effective batch is `world_size * cfg.batch`), and rank 0 alone logs and checkpoints;
    `out_dir` and the store must be visible to every rank.
    """
    per_phase = episodes if isinstance(episodes, dict) else {phase: episodes for phase in model.phases}
    if set(per_phase) != set(model.phases) or not all(per_phase.values()):
        raise ValueError(f"episodes must be one non-empty list, or a non-empty list for each phase of {model.phases}")
    check_frame_size(model, store, per_phase.values())
    if cfg.compile and cfg.compile not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"compile: unknown torch.compile backend {cfg.compile!r}; try inductor, or null for eager")
    from torch.utils.tensorboard import SummaryWriter

    rank = distributed.setup(model.device)
    if model.device.type == "cuda" and rank.world > 1:
        model.to(torch.device("cuda", rank.local_rank))
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    if rank.master:
        hold_lock(out_dir)
    distributed.barrier()
    state = {"phase": 0, "step": 0}
    found = find_checkpoint(ckpt_dir)
    if found is not None:
        load_weights(model, found)
        state = load_trainer_state(found) or {"phase": len(model.phases), "step": 0}
        if rank.master:
            print(f"resuming from {found}: phase {state['phase']}, step {state['step']}")
    writer = SummaryWriter(str(out_dir / "tb")) if rank.master else None
    seed = [cfg.seed, state["phase"], state["step"]] + ([rank.rank] if rank.world > 1 else [])
    rng = np.random.default_rng(seed)
    if rank.world > 1:  # the same weights everywhere (DDP broadcasts them), but each rank's own noise
        torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for p in range(state["phase"], len(model.phases)):
        phase = model.phases[p]
        start = state["step"] if p == state["phase"] else 0
        t0 = time.perf_counter()
        if start < cfg.steps.get(phase, 0):
            metrics = train_phase(model, p, start, state.get("optimizer") if start else None, store,
                                  per_phase[phase], cfg, rank, rng, writer, ckpt_dir)
        seconds[f"{phase}/seconds"] = time.perf_counter() - t0
        if rank.master:
            last = p == len(model.phases) - 1
            motion = scene_motion(model, store, per_phase[model.phases[0]], seed=cfg.seed) if last else None
            save_checkpoint(ckpt_dir, model, {"phase": p + 1, "step": 0}, scene_motion=motion)
        distributed.barrier()
    if writer:
        writer.close()
    model.eval()
    return {**metrics, **seconds}


def train_phase(model: WorldModel, p: int, start: int, optimizer_state: dict | None, store: EpisodeStore,
                episodes: list[EpisodeInfo], cfg: TrainConfig, rank: distributed.Rank, rng: np.random.Generator,
                writer, ckpt_dir: Path) -> dict[str, float]:
    """Steps `start` to `cfg.steps[phase]` of phase `p`, checkpointing every `cfg.ckpt_every`;
    returns the last step's metrics. `writer` is rank 0's TensorBoard writer (None elsewhere)."""
    phase = model.phases[p]
    total = cfg.steps[phase]
    windows = getattr(model.cfg, "phase_batches", {}).get(phase, (cfg.batch, cfg.seq_len))
    encoder = model.frozen_encoder(phase) if cfg.cache_latents else None
    reads, stored = (total - start) * windows[0] * windows[1], sum(info.length + 1 for info in episodes)
    cache = (LatentCache(encoder, store, episodes, model.device, progress=cfg.progress and rank.master)
             if encoder and reads > stored else None)  # worth it only where the steps read more frames than there are
    with phase_step(model, phase, cfg, rank) as step_fn:
        if optimizer_state is not None:
            step_fn.opt.load_state_dict(optimizer_state)
        bar = tqdm(range(start, total), initial=start, total=total, desc=f"{model.name}/{phase}",
                   disable=not (cfg.progress and rank.master))
        for step in bar:
            batch = store.sample(*windows, cfg.weighting, episodes=episodes, rng=rng)
            if cache:
                batch["latents"] = cache.windows(batch["episode"], batch["start"], windows[1])
            step_fn(batch, step)
            done = step + 1
            log, ckpt = done % cfg.log_every == 0 or done == total, done % cfg.ckpt_every == 0 and done < total
            if log or ckpt:
                metrics = step_fn.synced_metrics(ckpt_dir)  # raises on a non-finite step: nothing saved after it
            if writer and log:
                for k, v in metrics.items():
                    writer.add_scalar(k, v, done)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()})
            if writer and (done % cfg.image_every == 0 or done == total):
                writer.add_image(f"{phase}/real_over_model", image_grid(model, batch, phase), done)
            if ckpt:
                if rank.master:
                    save_checkpoint(ckpt_dir, model, {"phase": p, "step": done, "optimizer": step_fn.opt.state_dict()})
                    model.train()
                distributed.barrier()
        bar.close()
    return metrics


class LatentCache:
    """Every frame of `episodes` encoded once by a frozen `encoder` (`WorldModel.frozen_encoder`),
    kept on the CPU: `windows` cuts the latents of sampled windows. On cup-catch (small
    Dreamer-4, 2 CPU threads) encoding took 0.08 s of a 0.20 s dynamics step."""

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], store: EpisodeStore,
                 episodes: list[EpisodeInfo], device: torch.device, chunk: int = 256, progress: bool = False):
        parts, lengths = [], []
        with torch.no_grad():
            for info in tqdm(episodes, desc="encoding frames", disable=not progress):
                ep = store.load(info)
                frames = torch.from_numpy(ep.frames) if ep is not None else torch.zeros(0, dtype=torch.uint8)
                parts += [encoder(frames[i: i + chunk][None].to(device))[0].cpu()
                          for i in range(0, len(frames), chunk)]
                lengths.append(len(frames))
        if not parts:
            raise ValueError(f"no readable episode among the {len(episodes)} given in {store.root}")
        self.latents = torch.cat(parts)  # [frames, ...]
        self.offsets = torch.cumsum(torch.tensor([0] + lengths[:-1]), 0)

    def windows(self, episode: torch.Tensor, start: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Latents `[B, seq_len, ...]` of the windows starting at frame `start [B]` of the
        episodes at positions `episode [B]` (`EpisodeStore.sample`'s keys)."""
        return self.latents[(self.offsets[episode] + start)[:, None] + torch.arange(seq_len)]


def check_frame_size(model: WorldModel, store: EpisodeStore, episode_lists) -> None:
    """Refuse episodes whose frames are not the model's size, naming both."""
    size = model.cfg.image_size
    for eps in episode_lists:
        first = next((ep for ep in map(store.load, eps) if ep is not None), None)
        if first is None:
            raise ValueError(f"no readable episode among the {len(eps)} given in {store.root}")
        h, w = first.frames.shape[-2:]
        if (h, w) != (size, size):
            raise ValueError(f"{first.task} episodes in {store.root} are {h}x{w} px; this {model.name} model "
                             f"takes {size}x{size} (collect with size={size})")


class PhaseLoss(nn.Module):
    """One phase's loss as a module's `forward`, so that DistributedDataParallel's gradient
    hooks see it: `forward(batch) -> (loss, metrics)`."""

    def __init__(self, model: WorldModel, phase: str):
        super().__init__()
        self.model, self.phase = model, phase

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model.loss(batch, self.phase)


NEVER = 2 ** 62  # the step of the first non-finite loss while there is none


class PhaseStep:
    """One optimiser step of one phase: `step_fn(batch, step)`. Metrics and the finiteness
    of the loss and gradient norm stay on the device until `synced_metrics`."""

    def __init__(self, model: WorldModel, phase: str, cfg: TrainConfig, rank: distributed.Rank):
        self.model, self.phase = model, phase
        self.params = list(model.phase_parameters(phase))
        lr = getattr(model.cfg, "phase_lrs", {}).get(phase, cfg.lr)  # a model config may set a phase's own
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=cfg.weight_decay)
        loss_fn = PhaseLoss(model, phase)
        if rank.world > 1:
            device_ids = [rank.local_rank] if model.device.type == "cuda" else None
            loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, device_ids=device_ids,
                                                                forward_sync_buffers=False)
        self.loss_fn = loss_fn
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if model.device.type == "cuda"
                         else contextlib.nullcontext())
        self.compiled = (CompiledForward(outer_transformers(model), backend=cfg.compile) if cfg.compile
                         else contextlib.nullcontext())
        self.metrics: dict[str, torch.Tensor] = {}
        self.first_bad = torch.full((), NEVER, dtype=torch.long, device=model.device)  # 1-based step

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> None:
        with self.autocast, self.compiled:
            loss, metrics = self.loss_fn(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        self.first_bad = torch.where(bad, self.first_bad.clamp(max=step + 1), self.first_bad)
        self.opt.step()
        self.metrics = {**metrics, f"{self.phase}/loss": loss.detach(), f"{self.phase}/grad_norm": grad_norm}

    def synced_metrics(self, ckpt_dir: Path) -> dict[str, float]:
        """The last step's metrics, averaged over the ranks, as floats (read from the device
        here, not at every step).
        Raises `FloatingPointError` on every rank if any step of the phase so far had a
        non-finite loss or gradient norm on any rank: nothing after it is checkpointed."""
        first_bad = distributed.smallest(self.first_bad)
        names = sorted(self.metrics)
        values = distributed.mean(torch.stack([self.metrics[k].float() for k in names]))
        first_bad, values = int(first_bad), values.tolist()
        if first_bad != NEVER:
            raise FloatingPointError(
                f"{self.model.name}/{self.phase} step {first_bad}: non-finite loss or gradient norm; stopped "
                f"without saving (last good checkpoint: {find_checkpoint(ckpt_dir) or 'none yet'})")
        return dict(zip(names, values))


@contextlib.contextmanager
def phase_step(model: WorldModel, phase: str, cfg: TrainConfig, rank: distributed.Rank):
    """A `PhaseStep` with only `phase`'s parameters requiring gradients (so DDP wraps only
    them); the others are restored on exit."""
    trains = {p: p.requires_grad for p in model.parameters()}
    for p in trains:
        p.requires_grad_(False)
    try:
        for p in model.phase_parameters(phase):
            p.requires_grad_(trains[p])
        model.train()
        yield PhaseStep(model, phase, cfg, rank)
    finally:
        for p, flag in trains.items():
            p.requires_grad_(flag)


@torch.no_grad()
def scene_motion(model: WorldModel, store: EpisodeStore, episodes: list[EpisodeInfo], windows: int = 64,
                 seq_len: int = 8, batch: int = 32, seed: int = 0) -> dict[str, float]:
    """Per-task scene motion `m`: the mean per-step RMS change of the model's latents over
    `windows` windows of `seq_len` frames per task. Uncertainty signals are divided by it
    (`uncertainty.MotionStats`), so it is saved with the checkpoint it belongs to."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    per_task = {}
    for task in sorted({e.task for e in episodes}):
        eps = [e for e in episodes if e.task == task]
        moves = []
        for start in range(0, windows, batch):
            frames = store.sample(min(batch, windows - start), seq_len, episodes=eps, rng=rng)["frames"]
            moves.append(latent_motion(model.encode(frames.to(model.device))).flatten())
        per_task[task] = torch.cat(moves).mean().item()
    model.train(was_training)
    return per_task


def latent_motion(latents: torch.Tensor) -> torch.Tensor:
    """Per-step RMS latent change `[B, T - 1]` of a latent sequence `[B, T, ...]`."""
    return (latents[:, 1:] - latents[:, :-1]).float().pow(2).flatten(2).mean(-1).sqrt()


@torch.no_grad()
def image_grid(model: WorldModel, batch: dict, phase: str, n: int = 4) -> torch.Tensor:
    """`[3, 2h, T w]`: a sequence of real frames over the model's version of it — the
    reconstructions in the tokenizer phase, an open-loop rollout from the first frame
    (with the recorded actions) afterwards."""
    was_training = model.training
    model.eval()
    frames = batch["frames"][:1, :n].to(model.device)
    if phase == model.phases[0]:
        fake = model.decode(model.encode(frames))
    else:
        a_dim = int(batch["action_mask"][0].sum())
        actions = batch["actions"][:1, : frames.shape[1] - 1, :a_dim].to(model.device)
        task = list(TASKS)[int(batch["task_id"][0])]
        fake = torch.cat([frames[:, :1].float() / 255,
                          model.imagine(frames[:, 0], actions, decode=True, task=task).frames], 1)
    model.train(was_training)
    real = frames.float() / 255
    return rearrange(torch.cat([real, fake.cpu().float()], 0), "r t c h w -> c (r h) (t w)").clamp(0, 1)


def with_tasks(model: WorldModel, tasks) -> WorldModel:
    """`model`, or a copy of it that also knows `tasks` (to finetune on a task it never saw).
    The new rows of every task embedding (`*.task_in`) start at the mean of the trained rows;
    every other weight is copied."""
    new = tuple(t for t in dict.fromkeys(tasks) if t not in model.tasks)
    if not new:
        return model
    grown = type(model)(model.cfg, tasks=model.tasks + new).to(model.device)
    state = model.state_dict()
    for name, module in grown.named_modules():
        if name.endswith("task_in") and isinstance(module, torch.nn.Embedding):
            old = state[f"{name}.weight"]
            state[f"{name}.weight"] = torch.cat([old, old.mean(0, keepdim=True).expand(len(new), -1)])
    grown.load_state_dict(state)
    return grown.train(model.training)


def ensemble_member(base: WorldModel, seed: int) -> WorldModel:
    """A new member of an ensemble around a trained `base`: the same config, the modules
    of every phase but the last (the tokenizer, WHALE's behaviour model) copied from
    `base`, and the last phase (the dynamics, with its loss normalisers and step count)
    freshly initialised from `seed`. Train it with `train_member`."""
    torch.manual_seed(seed)
    member = type(base)(base.cfg, tasks=base.tasks).to(base.device)
    last = {id(p) for p in member.phase_parameters(member.phases[-1])}
    owned = {name: [id(p) for p in child.parameters()] for name, child in member.named_children()}
    shared = {name for name, ids in owned.items() if ids and last.isdisjoint(ids)}
    member.load_state_dict({k: v for k, v in base.state_dict().items() if k.split(".")[0] in shared}, strict=False)
    return member


def train_member(base: WorldModel, seed: int, store: EpisodeStore, episodes: list[EpisodeInfo],
                 out_dir: str | Path, cfg: TrainConfig) -> WorldModel:
    """Train (or resume) the ensemble member `seed` of `base` in `out_dir`: only the last
    phase runs, on the shared earlier phases, with its data order also drawn from `seed`.
    Returns the trained member."""
    ckpt = Path(out_dir) / "checkpoint"
    member = ensemble_member(base, seed)
    if distributed.setup(member.device).master and find_checkpoint(ckpt) is None:
        save_checkpoint(ckpt, member, {"phase": len(member.phases) - 1, "step": 0})
    distributed.barrier()
    train(member, store, episodes, out_dir, replace(cfg, seed=seed))
    return member
