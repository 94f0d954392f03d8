"""Train a state-based SAC expert (stable-baselines3) for a dm_control task.

    python experiments/train_expert.py task=cup-catch

Saves the deterministic actor as safetensors + JSON to `<expert_dir>/<task>/` (loaded
later by the `expert` behaviour without unpickling anything), with `metrics.json`
holding the evaluation return and the training time.
"""
import json
import time

import numpy as np
import torch
from cli import entry_point
from omegaconf import DictConfig
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

import envs
from replay.experts import MLPActor, expert_path


class ProgressBar(BaseCallback):
    """tqdm over environment steps, showing the mean return of recent episodes."""

    def __init__(self, total: int, enabled: bool):
        super().__init__()
        self.bar = tqdm(total=total, unit="step", desc="SAC", disable=not enabled)

    def _on_step(self) -> bool:
        self.bar.update(1)
        if self.model.ep_info_buffer and self.n_calls % 1000 == 0:
            self.bar.set_postfix(ret=f"{np.mean([e['r'] for e in self.model.ep_info_buffer]):.0f}")
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def evaluate(actor: MLPActor, task: str, episodes: int, seed: int) -> list[float]:
    """Returns of the deterministic actor on the state-observation env."""
    env, returns = envs.make(task, obs="state", seed=seed), []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(actor.act(obs))
            total, done = total + r, term or trunc
        returns.append(total)
    env.close()
    return returns


@entry_point("train_expert")
def main(cfg: DictConfig) -> None:
    spec = envs.task_spec(cfg.task)
    if spec.domain != "dmc" or spec.variant:
        raise ValueError(f"train_expert is for base dm_control tasks; {cfg.task} is {spec.domain}"
                         f"{' variant ' + spec.variant if spec.variant else ''} (it has its own expert)")
    torch.set_num_threads(cfg.threads)
    out = expert_path(cfg.task, cfg.expert_dir)
    print(f"training SAC on {cfg.task} (state) for {cfg.steps} agent steps -> {out}")
    env = envs.make(cfg.task, obs="state", seed=cfg.seed)
    model = SAC("MlpPolicy", env, learning_starts=cfg.learning_starts, seed=cfg.seed, verbose=0,
                device="cpu")
    t0 = time.perf_counter()
    model.learn(total_timesteps=cfg.steps, callback=ProgressBar(cfg.steps, cfg.progress))
    train_s = time.perf_counter() - t0
    actor = MLPActor.from_sb3(model.policy).eval()
    returns = evaluate(actor, cfg.task, cfg.eval_episodes, seed=10_000 + cfg.seed)
    actor.save(out)
    metrics = {"task": cfg.task, "steps": cfg.steps, "train_seconds": round(train_s, 1),
               "eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
               "eval_episodes": cfg.eval_episodes}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{cfg.task}: expert return {np.mean(returns):.1f} ± {np.std(returns):.1f} over "
          f"{cfg.eval_episodes} episodes; trained {cfg.steps} steps in {train_s / 60:.1f} min")


if __name__ == "__main__":
    main()
