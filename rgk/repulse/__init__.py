"""RePULSe: fine-tune a causal LM to lower the probability of low-reward outputs while keeping
its average reward (Zhao, Li, Brekelmans, Grosse, NeurIPS 2025, arXiv 2510.21184).

- `rgk.repulse.losses`: the losses (RLOO, RePULSe's push-down term, the contrastive twist
  loss of the proposal, the transformed-reward baseline) as functions, with their math.
- `rgk.repulse.trainer`: `RePULSeConfig`, `RePULSeTrainer` (samples p_θ and q_ξ, updates q
  then p, logs, checkpoints, resumes; DDP through `accelerate`).
- `rgk.repulse.evaluate`: `evaluate_policy` (average reward, P(r < η), worst-tail mean, KL).
- `rgk repulse train | eval` (rgk.repulse.cli).

Sign convention: σ ∝ p_θ · exp(β r) with β < 0 (the authors' code); DESIGN.md's β = 10
is β = −10 here.
"""
from rgk.repulse.losses import (effective_sample_size, kl_penalised_returns, loo_advantages, negative_loss,
                                pi_log_weights, rloo_loss, sigma_log_weights, snis_weights, token_twist,
                                transformed_rewards, twist_loss)
from rgk.repulse.trainer import METHODS, Experience, RePULSeConfig, RePULSeTrainer
from rgk.repulse.evaluate import evaluate_policy

__all__ = ["RePULSeConfig", "RePULSeTrainer", "Experience", "METHODS", "rloo_loss", "negative_loss", "twist_loss",
           "kl_penalised_returns", "loo_advantages", "transformed_rewards", "sigma_log_weights", "snis_weights",
           "effective_sample_size", "pi_log_weights", "token_twist", "evaluate_policy"]

