"""Train a world model on episodes from the store, phase by phase.

    python experiments/train.py world_model=dreamer4 task=toy-reach preset=tiny
    python experiments/train.py world_model=whale task=toy-reach preset=tiny
    python experiments/train.py world_model=ensemble task=toy-reach preset=small   # on states

Resumes from `<out>/checkpoint` after a kill. `init=<checkpoint>` finetunes a trained model
instead of starting from scratch: on the episodes of `task` (which it may never have seen:
its task embedding grows a row), for the phases in `phases` (default all) and the steps in
`steps` (default the phase steps of its config):

    python experiments/train.py world_model=dreamer4 task=toy-pong init=runs/train/.../checkpoint \
        "phases=[dynamics]" +steps.dynamics=300 out=runs/finetune/toy-pong

Ends with held-out metrics: recon PSNR,
8-step rollout PSNR gain over repeating the last frame, the action-shuffle ratio and,
where episodes recorded states, what full-frame PSNR hides — foreground PSNR, the state
probe's R² and the reward error, for the start phase and the rest (also in TensorBoard).
`ensemble=K` then trains K more dynamics on the same tokenizer (`<out>/member<k>`), the
ensemble baseline of `experiments/hallucination.py`. `world_model=ensemble` trains the
state ensemble (PETS/MOPO) on the recorded states instead.
"""
from pathlib import Path

import torch
from cli import entry_point, resolve_device
from omegaconf import DictConfig, OmegaConf

import world_models
from agents.pipeline import world_model_report, write_json
from replay import EpisodeStore
from world_models import distributed
from world_models.checkpoint import find_checkpoint, hold_lock, read_config, save_checkpoint
from world_models.training import TrainConfig, split_episodes, train, train_member, with_tasks


def log_scalars(out: Path, results: dict[str, float]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))
    for k, v in results.items():
        writer.add_scalar(f"quality/{k}", v, 0)
    writer.close()


def train_state_ensemble(cfg: DictConfig, tasks: list[str], store: EpisodeStore, out: Path) -> None:
    """`world_model=ensemble`: fit the state ensemble and report held-out one-step errors."""
    from world_models.ensemble import transitions

    if len(tasks) != 1:
        raise ValueError("the state ensemble trains on one task")
    model = world_models.make("ensemble", cfg.preset, tasks=tuple(tasks), **OmegaConf.to_container(cfg.model))
    train_eps, held_eps = split_episodes(store, tasks, cfg.holdout, cfg.seed)
    print(f"ensemble/{cfg.preset}: {model.cfg.members} members, {model.cfg.elites} elites, "
          f"{len(train_eps)} train / {len(held_eps)} held-out episodes -> {out}")
    info = model.fit(store, train_eps, seed=cfg.seed, progress=cfg.progress)
    save_checkpoint(out / "checkpoint", model)
    s, a, _, s2 = transitions(store, held_eps or train_eps, model.cfg.state_dim, model.cfg.action_dim)
    with torch.no_grad():
        state, step = model.step(model.start(s, generator=torch.Generator().manual_seed(cfg.seed)), a)
    for k, v in info.items():
        print(f"{k:<40}{v:10.4g}")
    print(f"{'held-out one-step MSE (sampled)':<40}{(step.latent - s2).pow(2).mean().item():10.4g}")
    print(f"{'held-out one-step MSE (elite mean)':<40}{(model.mean_next_state(s, a) - s2).pow(2).mean().item():10.4g}")
    print(f"{'held-out repeat-the-state MSE':<40}{(s - s2).pow(2).mean().item():10.4g}")
    print(f"checkpoint: {out / 'checkpoint'}")


def initial_model(cfg: DictConfig, tasks: list[str]):
    """A fresh model from the preset, or the trained one at `init` (grown to know `tasks`)."""
    if not cfg.init:
        return world_models.make(cfg.world_model, cfg.preset, tasks=tuple(tasks), **OmegaConf.to_container(cfg.model))
    found = find_checkpoint(cfg.init)
    if found is None:
        raise ValueError(f"init={cfg.init}: no checkpoint there")
    family = read_config(found)["name"]
    if family != cfg.world_model:
        raise ValueError(f"init={cfg.init} is a {family} checkpoint, but world_model={cfg.world_model} "
                         f"(finetune it with world_model={family})")
    if cfg.model:
        raise ValueError("model overrides do not apply to init=: the checkpoint's config is kept")
    return with_tasks(world_models.load(found).train(), tasks)


@entry_point("train")
def main(cfg: DictConfig) -> None:
    tasks = [cfg.task] if isinstance(cfg.task, str) else list(cfg.task)
    if cfg.ensemble < 0:
        raise ValueError(f"ensemble must be >= 0, got {cfg.ensemble}")
    device = resolve_device(cfg.device)
    rank = distributed.setup(device)  # under torchrun: one GPU per process (LOCAL_RANK)
    if device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
    torch.manual_seed(cfg.seed)
    if cfg.world_model == "ensemble":
        if rank.world > 1:
            raise ValueError("world_model=ensemble trains in one process; run it without torchrun")
        if cfg.init:
            raise ValueError("init= finetunes a pixel world model (dreamer4, whale), not the state ensemble")
        out = Path(cfg.out or f"runs/train/ensemble-{cfg.preset}/{'+'.join(tasks)}/{cfg.seed}")
        hold_lock(out)
        return train_state_ensemble(cfg, tasks, EpisodeStore(cfg.store), out)
    model = initial_model(cfg, tasks).to(device)
    mc = model.cfg
    steps = {**mc.phase_steps, **OmegaConf.to_container(cfg.steps)}
    phases = list(model.phases) if cfg.phases is None else list(cfg.phases)
    unknown = (set(steps) | set(phases)) - set(model.phases)
    if unknown:
        raise ValueError(f"steps/phases: unknown phase(s) {sorted(unknown)}; {cfg.world_model} has {model.phases}")
    steps = {p: steps[p] for p in phases}
    kind = "finetune" if cfg.init else "train"
    out = Path(cfg.out or f"runs/{kind}/{cfg.world_model}-{cfg.preset}/{'+'.join(tasks)}/{cfg.seed}")
    store = EpisodeStore(cfg.store)
    train_eps, held_eps = split_episodes(store, tasks, cfg.holdout, cfg.seed)
    master = rank.master
    say = print if master else lambda *_: None
    say(f"{cfg.world_model}/{cfg.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{len(train_eps)} train / {len(held_eps)} held-out episodes, phases "
          + ", ".join(f"{p} {steps[p]} steps" for p in phases) + (f" from {cfg.init}" if cfg.init else "")
          + f" -> {out}")
    train_cfg = TrainConfig(steps=steps, batch=mc.batch, seq_len=mc.seq_len, lr=mc.lr, weight_decay=mc.weight_decay,
                            weighting=cfg.weighting, compile=cfg.compile, ckpt_every=cfg.ckpt_every, seed=cfg.seed, progress=cfg.progress)
    metrics = train(model, store, train_eps, out, train_cfg)
    say(f"{'phase time':<40}" + "  ".join(f"{p} {metrics.get(f'{p}/seconds', 0) / 60:.1f} min" for p in model.phases))
    if master:
        results = world_model_report(model, store, train_eps, held_eps, tasks, cfg.seed, batch=cfg.eval_batch, out=out)
        log_scalars(out, results)
        for k, v in results.items():
            print(f"{k:<40}{v:8.3f}")
        write_json(out / "quality.json", results)
    say(f"checkpoint: {out / 'checkpoint'}")
    if cfg.ensemble:
        members = []
        for k in range(1, cfg.ensemble + 1):
            say(f"ensemble member {k}/{cfg.ensemble}: a new {model.phases[-1]} on this model's earlier phases")
            train_member(model, cfg.seed + k, store, train_eps, out / f"member{k}", train_cfg)
            members.append(str(out / f"member{k}" / "checkpoint"))
        say(f"ensemble baseline: python experiments/hallucination.py checkpoint={out / 'checkpoint'} "
              f"task={tasks[0]} \"ensemble=[{','.join(members)}]\"")


if __name__ == "__main__":
    main()
