"""Train a state-based SAC expert (stable-baselines3) for a dm_control task.

    python experiments/train_expert.py task=cup-catch

Saves the deterministic actor as safetensors + JSON to `<expert_dir>/<task>/` (loaded
later by the `expert` behaviour without unpickling anything), snapshots of it every
`snapshot_every` steps under `snapshots/<step>/` (for the `medium` datasets), and
`metrics.json` with the evaluation return, the snapshots' returns and the training time.
"""
from cli import entry_point
from omegaconf import DictConfig

from replay.experts import train_sac_expert


@entry_point("train_expert")
def main(cfg: DictConfig) -> None:
    print(f"training SAC on {cfg.task} (state) for {cfg.steps} agent steps")
    m = train_sac_expert(cfg.task, steps=cfg.steps, learning_starts=cfg.learning_starts, seed=cfg.seed,
                         eval_episodes=cfg.eval_episodes, snapshot_every=cfg.snapshot_every,
                         expert_dir=cfg.expert_dir, threads=cfg.threads, progress=cfg.progress)
    print(f"{cfg.task}: expert return {m['eval_return_mean']:.1f} ± {m['eval_return_std']:.1f} over "
          f"{cfg.eval_episodes} episodes; trained {cfg.steps} steps in {m['train_seconds'] / 60:.1f} min")
    if m["snapshots"]:
        print("snapshots (step: return): " + ", ".join(f"{s['step']}: {s['return']:.0f}" for s in m["snapshots"]))


if __name__ == "__main__":
    main()
