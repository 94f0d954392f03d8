"""Uncertainty of world models: hallucination predictors, retracing-rollout, baselines,
reward penalties and the metrics that evaluate them."""
from uncertainty.baselines import KNNDistance, ensemble_disagreement
from uncertainty.metrics import (action_shuffle_ratio, auroc, lpips, mse, psnr, recon_psnr, rollout_mse,
                                 rollout_psnr_gain, spearman, ssim, world_model_quality)
from uncertainty.predictors import (PREDICTORS, MotionStats, RunningMotion, StepSignal, check_signal,
                                    hallucination_signals, offered_signals,
                                    latent_motion, round_trip_residual, seed_variance, signal)
from uncertainty.retracing import RetracingResult, retracing_actions, retracing_uncertainty
from uncertainty.step_signals import FeatureEnsembleSignal, KNNSignal, RetracingSignal, step_signal, step_signal_names

__all__ = ["FeatureEnsembleSignal", "KNNDistance", "KNNSignal", "MotionStats", "PREDICTORS", "RetracingResult", "RetracingSignal",
           "RunningMotion", "StepSignal", "step_signal", "step_signal_names", "action_shuffle_ratio",
           "auroc", "check_signal", "ensemble_disagreement", "hallucination_signals", "latent_motion", "lpips",
           "mse", "offered_signals", "psnr", "recon_psnr", "retracing_actions", "retracing_uncertainty",
           "rollout_mse", "rollout_psnr_gain", "round_trip_residual", "seed_variance", "signal", "spearman", "ssim",
           "world_model_quality"]
