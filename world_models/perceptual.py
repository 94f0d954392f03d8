"""LPIPS, where the `lpips` package and its AlexNet weights are available (never required)."""
from __future__ import annotations

import functools
import warnings

import torch


@functools.lru_cache(maxsize=None)
def lpips_net(device: torch.device):
    """Frozen `lpips.LPIPS(net="alex")` on `device`, or None (with one warning) when the
    package or its backbone weights cannot be loaded here."""
    try:
        import lpips
        net = lpips.LPIPS(net="alex", verbose=False).eval().to(device)
    except Exception as err:  # ImportError, or torchvision / weight download failures
        warnings.warn(f"LPIPS unavailable ({type(err).__name__}: {err}); tokenizers train with pixel "
                      "losses only and perceptual distances fall back to the model's latents",
                      RuntimeWarning, stacklevel=2)
        return None
    for p in net.parameters():
        p.requires_grad_(False)
    return net

