"""Configuration and presets of the Dreamer-4-style world model."""
from __future__ import annotations

from dataclasses import dataclass

from envs import MAX_ACTION_DIM
from world_models.base import preset_config


@dataclass(frozen=True)
class Dreamer4Config:
    # data
    image_size: int = 64
    action_dim: int = MAX_ACTION_DIM     # padded action width
    text_dim: int = 0                    # > 0: agent tokens from given text embeddings instead
    # tokenizer
    patch: int = 8
    tok_dim: int = 128
    tok_heads: int = 4
    tok_depth: int = 2
    mlp_ratio: float = 4.0
    n_latents: int = 16
    d_bottleneck: int = 16
    mae_keep_range: tuple[float, float] = (0.1, 1.0)
    mae_loss: str = "masked"             # "masked" (the paper) | "all" patches
    lpips_weight: float = 0.2
    residual_decoder: bool = False       # decode the difference from the running mean frame
    fg_weight: float = 0.0               # extra weight of moving pixels in the reconstruction loss
    fg_threshold: float = 0.1            # a pixel moves where it differs from the running mean frame by more
    # dynamics
    pack: int = 2                        # spatial packing factor of the latents
    dyn_dim: int = 128
    dyn_heads: int = 4
    dyn_depth: int = 4
    registers: int = 2
    agent_tokens: int = 1
    k_max: int = 8                       # finest shortcut step 1 / k_max
    sample_steps: int = 4                # Euler substeps per imagined frame (without bootstrap rows each
                                         # reads the finest step's embedding: an x-prediction jump)
    self_consistency: float = 0.25       # fraction of rows with the bootstrap target
    flow_weighting: str = "ramp"         # loss weight per noise level: "ramp" 0.9τ + 0.1 (the paper) | "uniform"
    bootstrap_start: int = 500           # dynamics step from which bootstrap rows are used
    context_tau: float = 0.875           # noise level of past frames when sampling
    context_rows: float = 0.5            # share of flow rows in the two-stream layout (sampling-time past;
                                         # the heads train on these rows' context stream)
    max_context: int = 8                 # frames a rollout keeps in its sliding window (see RolloutWindow)
    # heads
    reward_head: bool = True
    bc_head: bool = True
    reward_bins: int = 101
    reward_range: float = 5.0            # bins span [-r, r] in symlog space
    reward_horizon: int = 2              # multi-step reward prediction
    # optimisation
    lr: float = 3e-4
    dyn_lr: float = 0.0                  # > 0: the dynamics phase's learning rate instead of lr
    weight_decay: float = 0.01
    batch: int = 16
    seq_len: int = 8
    tok_batch: int = 0                   # > 0: a tokenizer step reads one frame from each of tok_batch windows
    tok_steps: int = 2000
    dyn_steps: int = 2000

    def __post_init__(self):
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.max_context < 1:
            raise ValueError(f"max_context must be >= 1, got {self.max_context}")
        if not 0 <= self.context_rows <= 1:
            raise ValueError(f"context_rows must be in [0, 1], got {self.context_rows}")
        if self.context_rows == 0 and (self.reward_head or self.bc_head):
            raise ValueError("the reward and BC heads train on the two-stream rows: context_rows must be > 0")
        if self.dyn_lr < 0:
            raise ValueError(f"dyn_lr must be >= 0 (0: the dynamics trains at lr), got {self.dyn_lr}")
        if self.flow_weighting not in ("ramp", "uniform"):
            raise ValueError(f"flow_weighting must be 'ramp' or 'uniform', not {self.flow_weighting!r}")
        if self.mae_loss not in ("masked", "all"):
            raise ValueError(f"mae_loss must be 'masked' or 'all', not {self.mae_loss!r}")
        if self.n_latents % self.pack:
            raise ValueError(f"n_latents {self.n_latents} is not a multiple of pack {self.pack}")
        if self.k_max & (self.k_max - 1) or self.sample_steps & (self.sample_steps - 1) or self.sample_steps > self.k_max:
            raise ValueError("k_max and sample_steps must be powers of two with sample_steps <= k_max")
        if abs(self.context_tau * self.k_max - round(self.context_tau * self.k_max)) > 1e-6:
            raise ValueError(f"context_tau {self.context_tau} is not on the 1/{self.k_max} grid")

    @property
    def phase_steps(self) -> dict[str, int]:
        return {"tokenizer": self.tok_steps, "dynamics": self.dyn_steps}

    @property
    def phase_lrs(self) -> dict[str, float]:
        """Learning rates of the phases that do not train at `lr`."""
        return {"dynamics": self.dyn_lr} if self.dyn_lr else {}

    @property
    def phase_batches(self) -> dict[str, tuple[int, int]]:
        """(windows, frames per window) a phase samples when it differs from (batch, seq_len)."""
        return {"tokenizer": (self.tok_batch, 2)} if self.tok_batch else {}


# The small presets train without the shortcut bootstrap: switched on early (measured on
# toy-reach, tiny, after 100-300 of 300-600 steps) it drove the finest-step flow MSE from
# 0.065 back up to 0.15-0.34 every time. They use a 4-level noise grid; a substep reads the
# finest step's embedding whatever its size, so fewer substeps jump by the x-prediction.
_NO_BOOTSTRAP = dict(k_max=4, sample_steps=4, self_consistency=0.0, context_tau=0.75)

PRESETS = {
    # seconds to minutes on a CPU, for tests: 16 px frames, one tokenizer layer, three dynamics
    # layers. Departures from the paper, each measured on toy-reach (numbers in the issue-3
    # notes): with 16 patches a frame, a masked patch of a one-object scene cannot be
    # inferred from the visible ones, so the loss covers all patches under light masking
    # (the masked-only loss sat at the background-only 19.6 dB); the context is clean
    # (context_tau=1) and every flow row uses the two-stream layout — at 0.75 the context
    # noise was as large as a step's motion and the model learned to copy the last frame
    # (action-shuffle ratio 1.03 vs 1.14 clean, 900 steps). Rows of 2 frames, batch 48. A
    # 16-dim bottleneck (8 dims: 28.3 dB recon at 1200 steps, 16 dims: 30.7).
    # A 2-level noise grid (τ in {0, 1/2}, 2 substeps) with uniform level weights: the first
    # substep's x-prediction (τ = 0) is what moves the agent, and under the 4-level grid and
    # the paper's ramp (weight 0.1 at τ = 0) it stayed at copying the frame after 700 steps
    # (latent MSE 0.19 against 0.20 for the copy; a plain τ = 0 regression was at 0.196
    # after 350 steps and 0.159 after 700). 8-step gain over repeat-last-frame on 256
    # held-out windows, 700 dynamics steps on a fixed tokenizer: -0.25 dB (4 levels, ramp),
    # -0.07 (2, ramp), -0.16 (4, uniform), +0.17 / +0.41 / +0.10 (2, uniform; three seeds);
    # +0.50 / +0.54 at 900 steps.
    # 1800 + 1100 steps train in 103-112 s (the learning test).
    "tiny": dict(image_size=16, patch=4, tok_dim=64, tok_heads=4, tok_depth=1, n_latents=8,
                 d_bottleneck=16, dyn_dim=64, dyn_heads=4, dyn_depth=3, registers=1, agent_tokens=1,
                 reward_bins=41, batch=48, seq_len=2, tok_steps=1800, dyn_steps=1100, lr=2e-3,
                 mae_keep_range=(0.75, 1.0), mae_loss="all",
                 **{**_NO_BOOTSTRAP, "k_max": 2, "sample_steps": 2, "context_tau": 1.0, "context_rows": 1.0,
                    "flow_weighting": "uniform"}),
    # the 64 px CPU model for one DMC task. Its tokenizer departs from the paper where
    # cup-catch showed it must (docs/cup_catch.md): the loss covers all patches under
    # light masking and weighs moving pixels 5x, each step reads one frame from each of 32
    # windows, for 3000 steps. With the paper's masked-only loss the cup and the ball vanished
    # into the mean frame (foreground PSNR 13 dB) while the full frame read 29 dB. Rows
    # are 4 frames long so the model can read velocities. The dynamics trains as it
    # samples, as in the tiny preset: every row two-stream with a clean context, the two noise
    # levels that two substeps visit weighted alike, at twice the tokenizer's learning rate
    # (with half the rows noising their context and a 4-level ramp it hardly read the action),
    # for 2500 steps: with the latents cached they take the time 1500 took.
    "small": dict(image_size=64, patch=8, tok_dim=128, tok_heads=4, tok_depth=2, n_latents=16,
                  d_bottleneck=16, dyn_dim=128, dyn_heads=4, dyn_depth=4, registers=2,
                  agent_tokens=1, batch=16, seq_len=4, tok_batch=32, tok_steps=3000, dyn_steps=2500, lr=5e-4,
                  dyn_lr=1e-3, mae_keep_range=(0.75, 1.0), mae_loss="all", fg_weight=4.0,
                  **{**_NO_BOOTSTRAP, "k_max": 2, "sample_steps": 2, "context_tau": 1.0, "context_rows": 1.0,
                     "flow_weighting": "uniform"}),
    # appendix F scale, for GPUs (values the extracted paper lost are filled from Dreamer 4
    # reproductions: 128 px, patch 8, 64 latents x 32, spatial packing 2 -> 32 tokens)
    "paper": dict(image_size=128, patch=8, tok_dim=768, tok_heads=12, tok_depth=8, n_latents=64,
                  d_bottleneck=32, dyn_dim=1024, dyn_heads=16, dyn_depth=16, registers=4,
                  agent_tokens=4, reward_bins=255, reward_range=20.0, reward_horizon=8, batch=64,
                  seq_len=32, tok_steps=200_000, dyn_steps=200_000, lr=1e-4, bootstrap_start=5000, max_context=32),
}


def make_config(preset: str = "small", **overrides) -> Dreamer4Config:
    """The preset's config with `overrides` applied; unknown names raise `ValueError`."""
    return preset_config(Dreamer4Config, PRESETS, preset, overrides)
