"""Play inside a world model from the browser, watch its hallucination signals, record play.

    python experiments/play.py checkpoint=<ckpt> task=cup-catch                # open the printed URL
    python experiments/play.py checkpoint=<ckpt> task=cup-catch record=true    # episodes -> store, behaviour "human"

The page shows the imagined frame driven by the keyboard (the key map is on the page), the
predicted reward and the hallucination signals of every step (u_r, u_s, and u_f or
token_entropy, divided by the checkpoint's scene motion). With `real=true` (default) the
environment steps beside the model on the same actions, with the PSNR between the two
frames. Finished episodes are listed in `runs/play/<task>/<seed>/episodes.json`.
"""
from dataclasses import asdict
from pathlib import Path

import torch
from cli import entry_point, load_model, resolve_device
from omegaconf import DictConfig

from agents.pipeline import write_json
from agents.playground import Played, PlaySession, bind, check_playable, make_app, motion_of, server
from replay import EpisodeStore
from world_models.checkpoint import hold_lock


@entry_point("play")
def main(cfg: DictConfig) -> None:
    if cfg.max_players < 1:
        raise ValueError(f"max_players must be >= 1, got {cfg.max_players}")
    device = resolve_device(cfg.device)
    folder, model = load_model(cfg.checkpoint, cfg.task, device)
    motion = motion_of(folder, cfg.task)
    check_playable(model, cfg.task, real=cfg.real, record=cfg.record)
    store = EpisodeStore(cfg.store) if cfg.record else None
    sock = bind(cfg.host, cfg.port)
    out = Path(cfg.out or f"runs/play/{cfg.task}/{cfg.seed}")
    hold_lock(out)
    played: list[Played] = []

    def log(episode: Played) -> None:
        played.append(episode)
        write_json(out / "episodes.json", {"episodes": [asdict(p) for p in played]})
        psnr = "" if episode.mean_psnr is None else f", mean PSNR {episode.mean_psnr:.1f} dB"
        real = "" if episode.real_return is None else f", real return {episode.real_return:.2f}"
        saved = f", saved {episode.saved}" if episode.saved else ""
        print(f"player {episode.player}: {episode.steps} steps, imagined return {episode.imagined_return:.2f}"
              f"{real}{psnr}{saved}", flush=True)

    app = make_app(lambda player: PlaySession(model, cfg.task, motion=motion, real=cfg.real, store=store,
                                              seed=cfg.seed * 1000 + player, player=player),
                   max_players=cfg.max_players, on_played=log)
    torch.set_grad_enabled(False)
    host, port = sock.getsockname()[:2]
    signals = "divided by scene motion" if motion is not None else "raw (this checkpoint has no scene motion)"
    print(f"{model.name} on {cfg.task} ({folder}); signals {signals}"
          + ("; recording to " + str(store.root) if store else ""))
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {cfg.host}, not localhost: anyone who reaches it can play")
    print(f"open http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl-C stops)", flush=True)
    _, run = server(app, sock)
    run()


if __name__ == "__main__":
    main()
