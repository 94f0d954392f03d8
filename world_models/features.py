"""What a policy reads from a world model: the features of real frames."""
from __future__ import annotations

import torch

from world_models.base import Simulator, WorldModel


@torch.no_grad()
def episode_features(model: Simulator, frames: torch.Tensor, actions: torch.Tensor, task: str, context: int,
                     batch: int = 128) -> torch.Tensor:
    """Features `[T + 1, F]` of every frame of one episode (`frames [T+1, ...]`, `actions
    [T, A]`), each read with the `context` frames up to it, as an agent acting from a real
    camera reads them. A pixel model encodes each frame once for all the windows it is in."""
    T1 = len(frames)
    latents = None
    if isinstance(model, WorldModel):
        latents = torch.cat([model.encode(frames[None, i: i + batch]) for i in range(0, T1, batch)], 1)[0]

    def window_features(ts: list[int], length: int) -> torch.Tensor:
        """Features of the windows of `length` frames that end at each frame of `ts`."""
        window = lambda x, t, n=length: x[t - n + 1: t + 1]  # noqa: E731
        f = torch.stack([window(frames, t) for t in ts])
        a = torch.stack([window(actions, t - 1, length - 1) for t in ts]) if length > 1 else None
        if latents is None:
            return model.features(f, a, task=task)
        return model.start(f, a, task=task, encoded=torch.stack([window(latents, t) for t in ts])).features

    out = [window_features([t], t + 1)[0] for t in range(min(context - 1, T1))]  # the first frames have a shorter past
    full = list(range(context - 1, T1))
    out += [feat for i in range(0, len(full), batch) for feat in window_features(full[i: i + batch], context)]
    return torch.stack(out).float().cpu()
