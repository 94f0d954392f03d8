"""Collect pixel episodes into the episode store.

    python experiments/collect.py task=toy-reach behavior=mixed episodes=50 num_envs=2
    python experiments/collect.py task=toy-reach size=16 "+env.start_box=[[-0.8,-0.8],[-0.1,0.8]]" \
        "+env.goal_box=[[-0.8,-0.8],[-0.1,0.8]]"    # a coverage gap: the left half only
"""
from cli import entry_point
from omegaconf import DictConfig, OmegaConf

from replay import collect


@entry_point("collect")
def main(cfg: DictConfig) -> None:
    summary = collect(cfg.task, cfg.behavior, cfg.store, cfg.episodes, num_envs=cfg.num_envs,
                      size=cfg.size, seed=cfg.seed, expert_dir=cfg.expert_dir,
                      episode_steps=cfg.episode_steps, progress=cfg.progress,
                      **OmegaConf.to_container(cfg.env))
    print(summary.table())
    print(f"wrote to {cfg.store}/{cfg.task}/")


if __name__ == "__main__":
    main()
