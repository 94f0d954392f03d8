"""Collect pixel episodes into the episode store.

    python experiments/collect.py task=toy-reach behavior=mixed episodes=50 num_envs=2
    python experiments/collect.py task=toy-reach size=16 "+env.start_box=[[-0.8,-0.8],[-0.1,0.8]]" \
        "+env.goal_box=[[-0.8,-0.8],[-0.1,0.8]]"    # a coverage gap: the left half only
    python experiments/collect.py task=toy-reach size=16 behavior=curiosity checkpoint=<ckpt> \
        episodes=40 finetune_every=10               # explore where the model hallucinates, finetune, repeat

`behavior=curiosity` plans in the world model at `checkpoint` for the actions whose
imagined frames score highest on `signal` (default u_r/m, `agents.CuriosityAgent`);
`behavior=mixed checkpoint=...` mixes it with the other behaviours within episodes.
"""
from pathlib import Path

from cli import entry_point
from omegaconf import DictConfig, OmegaConf

from agents.curiosity import collect_curious
from replay import collect


@entry_point("collect")
def main(cfg: DictConfig) -> None:
    env = OmegaConf.to_container(cfg.env)
    common = dict(num_envs=cfg.num_envs, size=cfg.size, expert_dir=cfg.expert_dir, episode_steps=cfg.episode_steps,
                  progress=cfg.progress, **env)
    if cfg.behavior == "curiosity" or cfg.checkpoint:
        out = Path(cfg.finetune_out or f"runs/finetune/curiosity/{cfg.task}/{cfg.seed}")
        summaries, last = collect_curious(cfg.task, cfg.checkpoint, cfg.store, cfg.episodes, signal=cfg.signal,
                                          behavior=cfg.behavior, finetune_every=cfg.finetune_every,
                                          finetune_steps=OmegaConf.to_container(cfg.finetune_steps), out=out,
                                          seed=cfg.seed, planner=OmegaConf.to_container(cfg.planner), **common)
        for k, summary in enumerate(summaries, 1):
            print((f"round {k}: " if len(summaries) > 1 else "") + summary.table())
        if cfg.finetune_every:
            print(f"finetuned model: {last}")
    else:
        if cfg.finetune_every:
            raise ValueError("finetune_every needs a world model to finetune: behavior=curiosity checkpoint=<ckpt>")
        print(collect(cfg.task, cfg.behavior, cfg.store, cfg.episodes, seed=cfg.seed, **common).table())
    print(f"wrote to {cfg.store}/{cfg.task}/")


if __name__ == "__main__":
    main()
