"""RePULSe's losses and its baselines', as plain PyTorch functions.

Shapes (every function): N prompts, K samples per prompt, T new tokens (right-padded).

- tok_logp  [N, K, T]  log p_θ(s_t | x, s_<t) of each new token of each sample.
- tok_logq  [N, K, T]  the same under the proposal q_ξ.
- mask      [N, K, T]  1 for a sample's real new tokens (up to and including its EOS), 0 after.
- reward    [N, K]     r(x, s) of each full sample, from a reward source held fixed.

A sequence's log-probability is log p(s) = Σ_t mask·tok_logp; the "token mean"
mean_t f = Σ_t mask·f / Σ_t mask.

Sign convention for β (the authors' code's): the target is
σ_θ(s | x) ∝ p_θ(s | x) · exp(β · r(s)) with β < 0, so low reward gets the weight.
DESIGN.md writes σ ∝ p_θ · exp(−β r) with β > 0: its β = 10 is β = −10 here.

Importance weights are computed in float64 and are always detached (no gradient flows
through a weight).  Reference: Zhao, Li, Brekelmans, Grosse, "Reducing the Probability of
Undesirable Outputs in Language Models Using Probabilistic Inference" (RePULSe, NeurIPS
2025, arXiv 2510.21184).
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["masked_token_mean", "sequence_logprob", "kl_penalised_returns", "loo_advantages", "rloo_loss",
           "transformed_rewards", "sigma_log_weights", "snis_weights", "effective_sample_size", "negative_loss",
           "token_twist", "pi_log_weights", "twist_loss"]


# ----------------------------------------------------------------------------- checks
def _tensor(name: str, t, dim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name}: expected {dim} dimensions ({'[N, K, T]' if dim == 3 else '[N, K]'}), "
                         f"got shape {tuple(t.shape)}")
    return t


def _same(name: str, t: torch.Tensor, shape) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _number(name: str, v, *, lo: float | None = None, hi_open: float | None = None) -> float:
    if isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype != torch.bool:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi_open is not None and v >= hi_open):
        want = "a finite number" + (f" >= {lo}" if lo is not None else "") + (f" < {hi_open}" if hi_open is not None
                                                                            else "")
        raise ValueError(f"{name}: expected {want}, got {v!r}")
    return v


def _mask_like(mask, ref: torch.Tensor, name: str = "mask") -> torch.Tensor:
    _tensor(name, mask, 3)
    _same(name, mask, ref.shape)
    return mask.to(ref.dtype)


# ----------------------------------------------------------------------------- shared pieces
def masked_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_t x over each sample's real tokens: [N, K, T] -> [N, K] (0 for an empty sample)."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp(min=1)


def sequence_logprob(tok_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(s) = Σ_t mask·tok_logp: [N, K, T] -> [N, K]."""
    return (tok_logp * mask.to(tok_logp.dtype)).sum(-1)


# ----------------------------------------------------------------------------- p_θ: RLOO
def kl_penalised_returns(reward: torch.Tensor, tok_logp: torch.Tensor, tok_logp_ref: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """R_i = r_i − c · Σ_t (log p_θ − log p_ref)(s_i,t), [N, K] float64 (detached).

    The per-sample KL term is the usual single-sample estimate of KL(p_θ ‖ p_ref) on
    p_θ's own samples; c = kl_coef >= 0."""
    _tensor("reward", reward, 2)
    _tensor("tok_logp", tok_logp, 3)
    _same("tok_logp_ref", _tensor("tok_logp_ref", tok_logp_ref, 3), tok_logp.shape)
    _same("reward", reward, tok_logp.shape[:2])
    c = _number("kl_coef", kl_coef, lo=0.0)
    m = _mask_like(mask, tok_logp)
    kl = ((tok_logp.detach().double() - tok_logp_ref.detach().double()) * m.double()).sum(-1)
    return (reward.detach().double() - c * kl).detach()


def loo_advantages(returns: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages A_i = R_i − (1/(K−1)) Σ_{j≠i} R_j per prompt, [N, K] -> [N, K].

    Needs K >= 2.  The result is detached."""
    _tensor("returns", returns, 2)
    K = returns.shape[1]
    if K < 2:
        raise ValueError(f"returns: the leave-one-out baseline needs K >= 2 samples per prompt, got K = {K}")
    R = returns.detach()
    return R - (R.sum(-1, keepdim=True) - R) / (K - 1)


def rloo_loss(tok_logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """RLOO policy-gradient loss on p_θ's own samples (a scalar):

        L_RLOO = −(1/(N K)) Σ_n Σ_i A_{n,i} · mean_t log p_θ(s_{n,i,t} | x_n, s_{n,i,<t})

    with A detached (`loo_advantages` of `kl_penalised_returns`).  Its gradient is the
    REINFORCE estimate with the leave-one-out baseline, using token-mean log-probs as the
    authors' code does (a per-sample rescaling of the sequence log-probability)."""
    _tensor("tok_logp", tok_logp, 3)
    _same("advantages", _tensor("advantages", advantages, 2), tok_logp.shape[:2])
    m = _mask_like(mask, tok_logp)
    return -(advantages.detach().to(tok_logp.dtype) * masked_token_mean(tok_logp, m)).mean()


def transformed_rewards(reward: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The baseline's transformed reward r − α · exp(β r), [N, K] in float64 (β < 0: a large
    extra penalty for low reward; exp overflows float32 already at β r ≈ 89)."""
    a = _number("alpha", alpha, lo=0.0)
    b = _number("beta", beta)
    r = _tensor("reward", reward, 2).detach().double()
    return r - a * torch.exp(b * r)


# ----------------------------------------------------------------------------- SNIS weights
def sigma_log_weights(seq_logp: torch.Tensor, seq_logq: torch.Tensor, reward: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """Unnormalised log importance weights of q-samples for σ ∝ p_θ · exp(β r):

        log w̃_i = log p_θ(s̃_i) + β · r(s̃_i) − log q_ξ(s̃_i),   [N, K] float64, detached."""
    _tensor("seq_logp", seq_logp, 2)
    _same("seq_logq", _tensor("seq_logq", seq_logq, 2), seq_logp.shape)
    _same("reward", _tensor("reward", reward, 2), seq_logp.shape)
    b = _number("beta", beta)
    return (seq_logp.detach().double() + b * reward.detach().double() - seq_logq.detach().double())


def snis_weights(log_w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Self-normalised weights softmax(log_w) along `dim` (the K samples of a prompt), float64.

    Σ_i w_i f(s̃_i) is the SNIS estimate of E_σ[f]."""
    if not isinstance(log_w, torch.Tensor):
        raise TypeError(f"log_w: expected a torch.Tensor, got {type(log_w).__name__}")
    lw = log_w.detach().double()
    if torch.isnan(lw).any():
        raise ValueError("log_w: holds NaN (a reward or log-probability is NaN)")
    return torch.softmax(lw, dim=dim)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size 1 / Σ_i w_i² of normalised weights [N, K] -> [N]."""
    return 1.0 / (weights.double() ** 2).sum(-1)


def negative_loss(tok_logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """RePULSe's push-down term on the proposal's samples s̃ (a scalar):

        L_neg = (1/N) Σ_n Σ_i w_{n,i} · mean_t log p_θ(s̃_{n,i,t} | x_n, s̃_{n,i,<t})

    w = `snis_weights`(`sigma_log_weights`(...)) per prompt, detached, so Σ_i w_i (·) is the
    SNIS estimate of E_σ[mean_t log p_θ].  Minimising α·L_neg lowers p_θ's probability of
    the outputs σ favours (low reward).  (The authors' OpenRLHF code averages this over
    the K samples as well, an extra 1/K: their α at K samples is K·α here.)"""
    _tensor("tok_logp", tok_logp, 3)
    _same("weights", _tensor("weights", weights, 2), tok_logp.shape[:2])
    m = _mask_like(mask, tok_logp)
    return (weights.detach().to(tok_logp.dtype) * masked_token_mean(tok_logp, m)).sum(-1).mean()


# ----------------------------------------------------------------------------- q_ξ: contrastive twist learning
def token_twist(tok_logq: torch.Tensor, tok_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The twist of a proposal that is itself an LM, per token:

        log ψ_t(s_{1:t}) = log q_ξ(s_t | x, s_<t) − log p_θ(s_t | x, s_<t),   [N, K, T]

    with p_θ detached (the gradient flows into q_ξ only) and 0 after a sample's end.  The
    twisted proposal p_θ(s_t|·) ψ_t / Σ_{s_t} p_θ ψ_t is then q_ξ itself."""
    m = _mask_like(mask, tok_logq)
    return (tok_logq - tok_logp.detach()) * m


def pi_log_weights(tok_logp: torch.Tensor, tok_logq: torch.Tensor, mask: torch.Tensor,
                   log_psi: torch.Tensor) -> torch.Tensor:
    """Log importance weights of q-samples for the intermediate targets π_t ∝ p_θ(s_{1:t}) ψ_t(s_{1:t}):

        log w^π_{i,t} = Σ_{t'≤t} (log p_θ − log q_ξ)(s_{i,t'}) + log ψ_t(s_{i,1:t}),   [N, K, T] float64

    (detached).  With the per-token twist of `token_twist` this is Σ_{t'<t}(log p_θ − log q_ξ).

    Note: DESIGN.md writes w^π_{i,t} = softmax_i(Σ_{t'≤t}[log p_θ − log q_ξ]), which leaves
    out log ψ_t: those are the weights of p_θ's own marginal p_θ(s_{1:t}), not of π_t, and
    the negative term's expectation is then E_{p_θ}[∇ log ψ_t] instead of E_{π_t}[∇ log ψ_t]
    (tests/test_repulse.py shows the difference against exact enumeration)."""
    m = _mask_like(mask, tok_logp)
    d = (tok_logp.detach().double() - tok_logq.detach().double()) * m.double()
    return d.cumsum(-1) + log_psi.detach().double()


def twist_loss(tok_logq: torch.Tensor, tok_logp: torch.Tensor, mask: torch.Tensor, reward: torch.Tensor,
               beta: float, *, log_w0: torch.Tensor | None = None) -> torch.Tensor:
    """Contrastive twist learning (CTL) loss of the proposal q_ξ on its own samples s̃ (a scalar):

        L_q = −(1/(N K)) Σ_n Σ_i mean_t (w^σ_{n,i} − w^π_{n,i,t}) · log ψ_t(s̃_{n,i,1:t})

    log ψ_t = `token_twist` (gradient into q_ξ only); w^σ = softmax_i(log p_θ(s̃_i) + β r_i
    − log q_ξ(s̃_i)) (sequence-level SNIS weights for σ); w^π_{·,t} = softmax_i(`pi_log_weights`)
    (per-step weights for π_t ∝ p_θ ψ_t); no resampling.  In expectation its gradient is
    (1/(K T))·Σ_t (E_{π_t}[∇ log ψ_t] − E_σ[∇ log ψ_t]), the gradient of
    Σ_t KL(σ(s_{1:t}) ‖ π_t(s_{1:t})); with the per-token twist π_t's normaliser is 1 and
    the π term is a zero-mean control variate, so q_ξ moves towards σ.

    log_w0 [N, K]: optional prior log-weights of the samples (0: plain samples from q_ξ;
    log q_ξ(s) when the "samples" are a whole enumerated output space, which turns every
    SNIS sum into the exact expectation)."""
    _tensor("tok_logq", tok_logq, 3)
    _same("tok_logp", _tensor("tok_logp", tok_logp, 3), tok_logq.shape)
    _same("reward", _tensor("reward", reward, 2), tok_logq.shape[:2])
    m = _mask_like(mask, tok_logq)
    log_psi = token_twist(tok_logq, tok_logp, m)
    with torch.no_grad():
        lw_sigma = sigma_log_weights(sequence_logprob(tok_logp, m), sequence_logprob(tok_logq, m), reward, beta)
        lw_pi = pi_log_weights(tok_logp, tok_logq, m, log_psi)
        if log_w0 is not None:
            _same("log_w0", _tensor("log_w0", log_w0, 2), tok_logq.shape[:2])
            lw_sigma = lw_sigma + log_w0.double()
            lw_pi = lw_pi + log_w0.double()[..., None]
        w_sigma = snis_weights(lw_sigma, dim=1)
        w_pi = snis_weights(lw_pi, dim=1)
        coef = (w_sigma[..., None] - w_pi).to(tok_logq.dtype)
    return -masked_token_mean(coef * log_psi, m).mean()
