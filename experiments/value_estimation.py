"""Off-policy evaluation inside a world model (WHALE's value estimation, its appendix B.4).

    python experiments/value_estimation.py checkpoint=runs/train/dreamer4-small/cup-catch/0/checkpoint task=cup-catch
    python experiments/value_estimation.py checkpoint=<ckpt> task=mw-handle-press \\
        policies=[expert,noise-gaussian-0.3,random] actors=[runs/offline/mw-handle-press/td3+bc/0/learner]

Each policy runs `episodes` real episodes and, from the same start frames, as many closed
loop in the model through the step API (`agents.value_estimation`). Prints, for the model's
closed-loop estimate and for the open-loop replay of the real actions, the value gap (mean
|V − V̂| in % of the range of the real values), the return and rank correlations and
regret@1 / regret@k (in % of the same range), over all policies and, as WHALE scores them,
over the unseen ones (whose behaviour label has no episode in `store`, the model's training
data). Writes under `out`: `returns.csv` (one row per episode), `policies.csv`,
`metrics.json` and `scatter.png` (model against real return). Real episodes of the state
policies are kept next to `out` and reused by other models.
"""
import hashlib
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cli import entry_point, load_model, resolve_device, write_csv  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import envs  # noqa: E402
from agents.learner import Learner  # noqa: E402
from agents.pipeline import write_json  # noqa: E402
from agents.value_estimation import (estimate_values, feature_policy, fit_probe,  # noqa: E402
                                     state_policy, value_metrics)
from replay import EpisodeStore  # noqa: E402
from world_models.checkpoint import hold_lock  # noqa: E402


def plot(results, metrics: dict, path: Path, title: str) -> None:
    """Model (closed loop, filled) and replay (open loop, hollow) return against the real
    return, one point per policy, with the diagonal."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    real = np.array([r.real.mean() for r in results])
    for key, style in (("model", dict(marker="o")), ("replay", dict(marker="o", facecolors="none"))):
        est = np.array([getattr(r, key).mean() for r in results])
        m = metrics[key]
        ax.scatter(real, est, edgecolors="C0" if key == "model" else "C1", color="C0" if key == "model" else None,
                   label=f"{key}: gap {m['value_gap']:.0%}, r {m['return_corr']:.2f}", **style)
    for r, x in zip(results, real):
        ax.annotate(r.name, (x, r.model.mean()), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
    ax.set_xlabel("real return (mean over episodes)")
    ax.set_ylabel("return estimated in the model")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@entry_point("value_estimation")
def main(cfg: DictConfig) -> None:
    spec = envs.task_spec(cfg.task)
    device = resolve_device(cfg.device)
    found, model = load_model(cfg.checkpoint, cfg.task, device)
    if cfg.episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {cfg.episodes}")
    horizon = cfg.horizon or spec.episode_length
    if not 1 <= horizon <= spec.episode_length:
        raise ValueError(f"horizon must be in [1, {spec.episode_length}] for {cfg.task}, got {horizon}")
    pixels = not model.reads_states
    context = cfg.context or (model.max_context if pixels else 1)
    size = model.cfg.image_size if pixels else 64

    policies = []
    for name in cfg.policies:
        if name == "bc":
            if model.has_policy:
                policies.append(feature_policy("bc", None))
            else:
                print(f"bc: skipped, this {model.name} model has no BC head")
        else:
            policies.append(state_policy(name, cfg.task, cfg.expert_dir))
    for i, folder in enumerate(cfg.actors):
        learner = Learner.load(folder, device=f"{device.type}:0")
        if learner.obs_dim != model.feature_dim:
            raise ValueError(f"the actor in {folder} reads {learner.obs_dim} features, this {model.name} gives "
                             f"{model.feature_dim}: it was learned on another model")
        policies.append(feature_policy(f"actor-{learner.name}" + (f"-{i}" if len(cfg.actors) > 1 else ""),
                                       learner.policy))
    if len({p.name for p in policies}) < len(policies):
        raise ValueError(f"policies must have distinct names, got {[p.name for p in policies]}")
    if len(policies) < 2:
        raise ValueError("value estimation compares policies: give at least two")

    key = hashlib.sha1(str(found.resolve()).encode()).hexdigest()[:8]
    base = Path(f"runs/value_estimation/{cfg.task}/{cfg.seed}")
    out = Path(cfg.out or base / f"{model.name}-{key}")
    hold_lock(out)
    OmegaConf.save(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    probe, probe_r2 = None, float("nan")
    store = EpisodeStore(cfg.store)
    episodes = store.episodes(task=cfg.task)
    seen = {e.behavior for e in episodes}  # policies whose episodes the model (trained on this store) saw
    if any(p.reads == "state" for p in policies):
        if not episodes:
            raise ValueError(f"no {cfg.task} episodes in {cfg.store} to fit the state probe on")
        probe, probe_r2 = fit_probe(model, store, episodes, cfg.task, context=context, windows=cfg.probe_windows,
                                    seed=cfg.seed)
        print(f"state probe: {model.name} features -> {cfg.task} states, median R² {probe_r2:.2f} on held-out episodes")
    env = OmegaConf.to_container(cfg.env)
    options = f"-{hashlib.sha1(json.dumps(env, sort_keys=True).encode()).hexdigest()[:8]}" if env else ""
    results = estimate_values(model, cfg.task, policies, episodes=cfg.episodes, horizon=horizon, seed=cfg.seed,
                              real_root=base / f"real-{size}px-{horizon}steps{options}", model_root=out / "real", probe=probe,
                              context=context, size=size, num_envs=cfg.num_envs, expert_dir=cfg.expert_dir,
                              progress=cfg.progress, **env)

    real = np.array([r.real.mean() for r in results])
    metrics = {key: value_metrics(real, np.array([getattr(r, key).mean() for r in results]), cfg.k)
               for key in ("model", "replay")}
    unseen = [r for r in results if r.name not in seen]
    if len(unseen) < len(results) and len(unseen) >= 2 and np.ptp([r.real.mean() for r in unseen]) > 0:
        for key in ("model", "replay"):  # WHALE scores the policies that collected no training data
            metrics[f"{key}, unseen"] = value_metrics(np.array([r.real.mean() for r in unseen]),
                                                      np.array([getattr(r, key).mean() for r in unseen]), cfg.k)
    write_csv(out / "returns.csv", ["policy", "reads", "seen", "episode", "real", "model", "replay"],
              [[r.name, r.reads, r.name in seen, e, r.real[e], r.model[e], r.replay[e]]
               for r in results for e in range(len(r.real))])
    write_csv(out / "policies.csv", ["policy", "reads", "seen", "real", "real_std", "model", "model_std", "replay"],
              [[r.name, r.reads, r.name in seen, r.real.mean(), r.real.std(), r.model.mean(), r.model.std(),
                r.replay.mean()] for r in results])
    write_json(out / "metrics.json", {**metrics, "probe_r2": probe_r2, "policies": len(results),
                                      "episodes": cfg.episodes, "horizon": horizon, "checkpoint": str(found)})
    title = f"{cfg.task}: {model.name}, {len(results)} policies x {cfg.episodes} episodes, {horizon} steps"
    plot(results, metrics, out / "scatter.png", title)

    print(f"\n{title}")
    print(f"{'policy':<28}{'reads':>9}{'seen':>6}{'real':>10}{'model':>10}{'replay':>10}")
    for r in sorted(results, key=lambda r: -r.real.mean()):
        print(f"{r.name:<28}{r.reads:>9}{'yes' if r.name in seen else 'no':>6}{r.real.mean():>10.1f}"
              f"{r.model.mean():>10.1f}{r.replay.mean():>10.1f}")
    print(f"\n{'estimate':<16}" + "".join(f"{n:>12}" for n in metrics["model"]))
    for key, m in metrics.items():
        print(f"{key:<16}" + "".join(f"{v:>12.2f}" if "corr" in n else f"{v:>11.1%} " for n, v in m.items()))
    print(f"value gap and regret in % of the real values' range ({real.max() - real.min():.1f}); "
          f"model: closed loop through the step API, replay: the real episodes' actions open loop; "
          f"seen: the policy collected episodes of {cfg.store}")
    print(f"wrote {out}/returns.csv, policies.csv, metrics.json, scatter.png")


if __name__ == "__main__":
    main()
