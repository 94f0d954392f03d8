"""Do the hallucination predictors flag the model's bad rollouts? Scores on held-out windows.

    python experiments/hallucination.py checkpoint=runs/train/dreamer4-tiny/toy-reach/0/checkpoint task=toy-reach

Per predictor (`u_r`, `u_s`, `u_f` / `token_entropy`, their scene-motion-normalised
versions `<u>/m`) and baseline (kNN distance to training latents, retracing-rollout on
delta-pose tasks, an ensemble when `ensemble=[...]` lists more checkpoints): Spearman ρ
against 8-step rollout PSNR, AUROC against the labels *action ignored* and *scene
divergent*, and ρ against the rollout's perceptual error. Writes `scores.csv`,
`windows.csv` and PNG plots under `out`, and prints the table.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cli import entry_point, load_model, resolve_device, write_csv  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import world_models  # noqa: E402
from replay import EpisodeStore  # noqa: E402
from uncertainty import KNNDistance, MotionStats  # noqa: E402
from uncertainty.evaluation import phase_signals, score_signals, window_signals  # noqa: E402
from world_models.checkpoint import hold_lock  # noqa: E402
from world_models.training import split_episodes  # noqa: E402

COLUMNS = ("spearman_psnr", "auroc_action_ignored", "auroc_scene_divergent", "spearman_perceptual")


def plot(per_window: dict, scores: dict, out: Path) -> None:
    names = list(scores)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.scatter(per_window[name], per_window["rollout_psnr"], s=6, alpha=0.6)
        ax.set_title(f"{name}  ρ={scores[name]['spearman_psnr']:.2f}", fontsize=9)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("rollout PSNR (dB)", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "scatter_vs_psnr.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(names), 3.2))
    x = np.arange(len(names))
    for i, label in enumerate(("auroc_action_ignored", "auroc_scene_divergent")):
        ax.bar(x + (i - 0.5) * 0.4, [scores[n][label] for n in names], 0.4, label=label.removeprefix("auroc_"))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("AUROC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=110)
    plt.close(fig)


@entry_point("hallucination")
def main(cfg: DictConfig) -> None:
    device = resolve_device(cfg.device)
    folder, model = load_model(cfg.checkpoint, cfg.task, device)
    ensemble = [world_models.load(p, device=str(device)) for p in cfg.ensemble]
    if any(type(m) is not type(model) for m in ensemble):
        raise ValueError("ensemble: every checkpoint must be of the same model family as checkpoint")
    store = EpisodeStore(cfg.store)
    train_eps, held_eps = split_episodes(store, [cfg.task], cfg.holdout, cfg.seed)
    held_eps = held_eps or train_eps
    if MotionStats.exists(folder):
        motion = MotionStats.load(folder, cfg.task)
        print(f"scene motion of the checkpoint: {motion(cfg.task):.4f}")
    else:
        motion = MotionStats.fit(store, model, train_eps)
        motion.save(folder)
        print(f"scene motion fitted on {len(train_eps)} training episodes: {motion(cfg.task):.4f} "
              f"(saved to {folder / MotionStats.FILE})")
    knn = KNNDistance.fit(store, model, train_eps, size=cfg.knn_bank) if cfg.knn_bank else None
    torch.manual_seed(cfg.seed)
    per_window = window_signals(model, store, held_eps, cfg.task, windows=cfg.windows, horizon=cfg.horizon,
                                context=cfg.context, seeds=cfg.seeds, motion=motion, knn=knn, ensemble=ensemble,
                                retracing_ks=tuple(cfg.retracing_ks), seed=cfg.seed)
    scores = score_signals(per_window, cfg.shuffle_threshold)
    out = Path(cfg.out or f"runs/hallucination/{cfg.task}/{cfg.seed}")
    hold_lock(out)
    write_csv(out / "scores.csv", ("signal", *COLUMNS), [(n, *(f"{s[c]:.4f}" for c in COLUMNS)) for n, s in scores.items()])
    keys = list(per_window)
    write_csv(out / "windows.csv", keys, zip(*(per_window[k] for k in keys)))
    plot(per_window, scores, out)
    divergent = (per_window["rollout_psnr"] < per_window["repeat_psnr"]).mean()
    ignored = (per_window["shuffle_ratio"] < cfg.shuffle_threshold).mean()
    perceptual = "LPIPS" if per_window["perceptual_metric"][0] else "1 - SSIM (no LPIPS here)"
    print(f"{model.name} on {len(held_eps)} held-out {cfg.task} episodes, {cfg.windows} windows: "
          f"rollout PSNR {per_window['rollout_psnr'].mean():.2f} dB (repeat-frame {per_window['repeat_psnr'].mean():.2f}); "
          f"scene divergent {divergent:.0%}, action ignored {ignored:.0%}; perceptual error = {perceptual}")
    print(f"{'signal':<18}" + "".join(f"{c:>24}" for c in COLUMNS))
    for name, s in scores.items():
        print(f"{name:<18}" + "".join(f"{s[c]:>24.3f}" for c in COLUMNS))
    print("true_motion is a reference, not a predictor: the latent motion of the real future frames")
    if store.load(held_eps[0]).states is not None and cfg.phase_windows:
        phases = phase_signals(model, store, held_eps, cfg.task, windows=cfg.phase_windows, horizon=cfg.horizon,
                               seeds=cfg.seeds, start_steps=cfg.start_steps, motion=motion, knn=knn,
                               ensemble=ensemble, seed=cfg.seed)
        if len(phases) == 2:
            names = list(phases["start"])
            write_csv(out / "phases.csv", ("signal", "start", "rest", "start/rest"),
                      [(n, f"{phases['start'][n]:.5g}", f"{phases['rest'][n]:.5g}",
                        f"{phases['start'][n] / phases['rest'][n]:.3f}") for n in names])
            print(f"\nstart phase (first {cfg.start_steps} steps) against the rest, {cfg.phase_windows} windows each:")
            print(f"{'signal':<18}{'start':>12}{'rest':>12}{'start/rest':>12}")
            for n in names:
                print(f"{n:<18}{phases['start'][n]:>12.4g}{phases['rest'][n]:>12.4g}"
                      f"{phases['start'][n] / phases['rest'][n]:>12.3f}")
    print(f"wrote {out / 'scores.csv'}, {out / 'windows.csv'}, {out / 'scatter_vs_psnr.png'}, {out / 'auroc.png'}")


if __name__ == "__main__":
    main()
