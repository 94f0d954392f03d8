"""Configuration and presets of the WHALE-ST world model (WHALE §5.1, appendix B)."""
from __future__ import annotations

from dataclasses import dataclass

from envs import MAX_ACTION_DIM
from world_models.base import preset_config


@dataclass(frozen=True)
class WhaleConfig:
    # data
    image_size: int = 64
    action_dim: int = MAX_ACTION_DIM     # padded action width
    # VQ tokenizer
    patch: int = 8
    tok_dim: int = 128
    tok_heads: int = 4
    enc_depth: int = 2
    enc_window: int = 1                  # encoder attention reaches patches this many rows/cols away (0: all)
    dec_depth: int = 2
    mlp_ratio: float = 4.0
    num_codes: int = 512
    latent_dim: int = 16
    commitment: float = 0.25             # β of the commitment term
    mse_weight: float = 10.0             # pixel MSE added to the L1 reconstruction loss
    tok_batch: int = 64                  # frames per tokenizer step (drawn from the batch's windows)
    restart_every: int = 50              # tokenizer steps between dead-code restarts
    # behaviour-conditioning model (eq. 3-4)
    behavior_conditioning: bool = True
    beh_patch: int = 8
    beh_dim: int = 128
    beh_heads: int = 4
    posterior_depth: int = 2
    prior_depth: int = 2
    categories: int = 16                 # z is `categories` one-hots over `classes`
    classes: int = 16
    kl_beta: float = 0.1
    log_std_range: tuple[float, float] = (-5.0, 2.0)
    # dynamics
    dyn_dim: int = 128
    dyn_heads: int = 4
    dyn_depth: int = 4
    # next-token sampling temperature (0 = argmax). The N tokens of a frame are sampled
    # independently, so at 1.0 a moving object can land in two places at once: on toy-reach
    # (tiny) the 8-step rollout PSNR gain was -0.07 dB at 1.0, +0.96 at 0.5, +1.34 at 0
    temperature: float = 0.5
    reward_head: bool = True
    reward_bins: int = 101
    reward_range: float = 5.0            # bins span [-r, r] in symlog space
    # optimisation
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch: int = 16
    seq_len: int = 8
    max_context: int = 7                 # frames a rollout keeps in its sliding window (see RolloutWindow)
    tok_steps: int = 2000
    beh_steps: int = 1000
    dyn_steps: int = 2000

    def __post_init__(self):
        for name, p in (("patch", self.patch), ("beh_patch", self.beh_patch)):
            if self.image_size % p:
                raise ValueError(f"image_size {self.image_size} is not a multiple of {name} {p}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_context < 1:
            raise ValueError(f"max_context must be >= 1, got {self.max_context}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (a frame and its successor), got {self.seq_len}")

    @property
    def phase_steps(self) -> dict[str, int]:
        steps = {"tokenizer": self.tok_steps, "behavior": self.beh_steps, "dynamics": self.dyn_steps}
        if not self.behavior_conditioning:
            del steps["behavior"]
        return steps


PRESETS = {
    # about two minutes on a 2-core CPU, for tests: 16 px frames, 2 px patches (64 tokens a
    # frame; with 4 px patches the tokenizer reached 26 dB after 1000 steps, with 2 px 35 dB
    # after 800, on toy-reach)
    "tiny": dict(image_size=16, patch=2, tok_dim=64, tok_heads=4, enc_depth=1, dec_depth=1,
                 num_codes=256, latent_dim=8, beh_patch=8, beh_dim=64, beh_heads=4,
                 posterior_depth=1, prior_depth=1, categories=8, classes=8, dyn_dim=64,
                 dyn_heads=4, dyn_depth=3, reward_bins=41, lr=2e-3, batch=16, seq_len=8,
                 tok_steps=700, beh_steps=300, dyn_steps=600),
    # the 64 px CPU model for one DMC task (16 x 16 = 64 tokens a frame... at patch 8: 64)
    "small": dict(image_size=64, patch=8, tok_dim=128, tok_heads=4, enc_depth=2, dec_depth=2,
                  num_codes=512, latent_dim=16, beh_patch=16, beh_dim=128, posterior_depth=2,
                  prior_depth=2, categories=16, classes=16, dyn_dim=128, dyn_heads=4, dyn_depth=4,
                  lr=5e-4, batch=16, seq_len=6, max_context=5, tok_steps=1200, beh_steps=400, dyn_steps=1200),
    # appendix B (Whale-ST 64 x 64): tokenizer 4 + 8 layers of 512, 1024 codes of 32 dims
    # at patch 4; behaviour model 512 wide with 16 x 16 categorical z; dynamics 12 x 512
    "paper": dict(image_size=64, patch=4, tok_dim=512, tok_heads=8, enc_depth=4, dec_depth=8,
                  num_codes=1024, latent_dim=32, beh_patch=8, beh_dim=512, beh_heads=8,
                  posterior_depth=8, prior_depth=4, categories=16, classes=16, dyn_dim=512,
                  dyn_heads=8, dyn_depth=12, reward_bins=255, reward_range=20.0, lr=3e-4,
                  batch=32, seq_len=16, max_context=15, tok_steps=100_000, beh_steps=100_000, dyn_steps=300_000),
}


def make_config(preset: str = "small", **overrides) -> WhaleConfig:
    """The preset's config with `overrides` applied; unknown names raise `ValueError`."""
    return preset_config(WhaleConfig, PRESETS, preset, overrides)
