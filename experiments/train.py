"""Train a world model on episodes from the store, phase by phase.

    python experiments/train.py world_model=dreamer4 task=toy-reach preset=tiny
    python experiments/train.py world_model=whale task=toy-reach preset=tiny

Resumes from `<out>/checkpoint` after a kill. Ends with held-out metrics: recon PSNR,
8-step rollout PSNR gain over repeating the last frame, and the action-shuffle ratio.
`ensemble=K` then trains K more dynamics on the same tokenizer (`<out>/member<k>`), the
ensemble baseline of `experiments/hallucination.py`.
"""
from pathlib import Path

import numpy as np
import torch
from cli import entry_point, resolve_device
from omegaconf import DictConfig, OmegaConf

import world_models
from replay import EpisodeStore
from uncertainty import world_model_quality
from world_models.training import TrainConfig, split_episodes, train, train_member


def evaluate(model, store, episodes, batch: int, seed: int) -> dict[str, float]:
    """Held-out metrics on windows of 9 frames (1 context + 8 imagined), per task."""
    rng = np.random.default_rng(seed)
    out = {}
    for task in sorted({e.task for e in episodes}):
        eps = [e for e in episodes if e.task == task]
        b = store.sample(batch, 9, episodes=eps, rng=rng)
        q = world_model_quality(model, b, seed)
        out[f"{task}/recon_psnr_db"] = q.recon_psnr
        out[f"{task}/rollout8_psnr_gain_db"] = q.rollout_gain
        out[f"{task}/action_shuffle_ratio"] = q.shuffle_ratio
    return out


@entry_point("train")
def main(cfg: DictConfig) -> None:
    tasks = [cfg.task] if isinstance(cfg.task, str) else list(cfg.task)
    if cfg.ensemble < 0:
        raise ValueError(f"ensemble must be >= 0, got {cfg.ensemble}")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = world_models.make(cfg.world_model, cfg.preset, tasks=tuple(tasks),
                              **OmegaConf.to_container(cfg.model)).to(device)
    mc = model.cfg
    steps = {**mc.phase_steps, **OmegaConf.to_container(cfg.steps)}
    unknown = set(steps) - set(model.phases)
    if unknown:
        raise ValueError(f"steps: unknown phase(s) {sorted(unknown)}; {cfg.world_model} has {model.phases}")
    out = Path(cfg.out or f"runs/train/{cfg.world_model}-{cfg.preset}/{'+'.join(tasks)}/{cfg.seed}")
    store = EpisodeStore(cfg.store)
    train_eps, held_eps = split_episodes(store, tasks, cfg.holdout, cfg.seed)
    print(f"{cfg.world_model}/{cfg.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{len(train_eps)} train / {len(held_eps)} held-out episodes, phases "
          + ", ".join(f"{p} {steps[p]} steps" for p in model.phases) + f" -> {out}")
    train_cfg = TrainConfig(steps=steps, batch=mc.batch, seq_len=mc.seq_len, lr=mc.lr, weight_decay=mc.weight_decay,
                            weighting=cfg.weighting, seed=cfg.seed, progress=cfg.progress)
    metrics = train(model, store, train_eps, out, train_cfg)
    results = evaluate(model, store, held_eps or train_eps, cfg.eval_batch, cfg.seed)
    print(f"{'phase time':<40}" + "  ".join(f"{p} {metrics.get(f'{p}/seconds', 0) / 60:.1f} min" for p in model.phases))
    for k, v in results.items():
        print(f"{k:<40}{v:8.3f}")
    print(f"checkpoint: {out / 'checkpoint'}")
    if cfg.ensemble:
        members = []
        for k in range(1, cfg.ensemble + 1):
            print(f"ensemble member {k}/{cfg.ensemble}: a new {model.phases[-1]} on this model's earlier phases")
            train_member(model, cfg.seed + k, store, train_eps, out / f"member{k}", train_cfg)
            members.append(str(out / f"member{k}" / "checkpoint"))
        print(f"ensemble baseline: python experiments/hallucination.py checkpoint={out / 'checkpoint'} "
              f"task={tasks[0]} \"ensemble=[{','.join(members)}]\"")


if __name__ == "__main__":
    main()
