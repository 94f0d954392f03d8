"""Uncertainty of world models: hallucination predictors, baselines and metrics."""
from uncertainty.metrics import action_shuffle_ratio, mse, psnr, recon_psnr, rollout_mse, rollout_psnr_gain

__all__ = ["action_shuffle_ratio", "mse", "psnr", "recon_psnr", "rollout_mse", "rollout_psnr_gain"]
