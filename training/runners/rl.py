"""The arithmetic of PPO for language models (InstructGPT; Ziegler et al. 2019), as small pure functions on torch
tensors, so that each piece can be checked against a hand computation. ``ppo.py`` strings them together.

Shapes: ``[batch, tokens]`` for per-token quantities of the responses, ``[batch, tokens, vocab]`` for logits;
``mask`` is 1 on real response tokens (up to and including the eos token) and 0 on padding.

    logprobs = token_logprobs(logits, response_ids)
    rewards, kl = kl_penalty_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.05)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    loss, clip_fraction = clipped_policy_loss(new_logprobs, logprobs, whiten(advantages, mask), mask, 0.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ppo_config import KL_ESTIMATORS

# --- masked statistics --------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 (over all of them, or along ``dim``)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions (Bessel-corrected by default, as whitening in the PPO literature is)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Scale the masked values to unit variance, and to zero mean when ``shift_mean`` (advantages); rewards are
    whitened with ``shift_mean=False`` so that their sign, and so the direction of the KL penalty, survives.
    Padding stays 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# --- log-probabilities, entropy, KL --------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token | context) for each position: ``logits[b, t]`` is the distribution that ``token_ids[b, t]``
    was drawn from. Sampling at a temperature draws from softmax(logits / T), so the log-probs divide too."""
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logprobs, -1, token_ids.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution, H = logsumexp(z) − Σ softmax(z)·z, in nats."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from the sampled token's log-probs (Schulman, "Approximating KL").

    k1 = log π − log π_ref: unbiased, but negative on some tokens. k3 = (r − 1) − log r with r = π_ref / π:
    unbiased too (E_π[r] = 1), never negative, and of lower variance when the two policies are close.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"Unknown KL estimator {estimator!r}; use one of {', '.join(KL_ESTIMATORS)}.")


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) ‖ softmax(ref_logits)) summed over the vocabulary: the quantity the estimators estimate
    (affordable on a tiny vocabulary, and what the tests compare them with)."""
    logp, ref_logp = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def approx_kl(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str = "half_squared"
) -> torch.Tensor:
    """How far an update moved the policy from the one that sampled: ½·mean((log π − log π_old)²), or k3."""
    if estimator == "half_squared":
        return 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)
    return masked_mean(kl_estimate(logprobs, old_logprobs, "k3"), mask)


# --- rewards --------------------------------------------------------------------------------------------


def response_mask(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, has_eos) of sampled responses: the mask is 1 up to and including the first eos token, and on every
    token of a response that has none (cut off at max_new_tokens). Padding after eos may be the eos id itself."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))
    has_eos = is_eos.any(dim=1)
    last = torch.where(
        has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, response_ids.shape[1] - 1, dtype=torch.long)
    )
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)
    return (positions[None, :] <= last[:, None]).long(), has_eos


def penalize_missing_eos(
    scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None, mode: str = "subtract"
) -> torch.Tensor:
    """The reward model's scores, with responses cut off at max_new_tokens (no eos) penalised: ``subtract`` takes
    ``penalty`` off their score, ``replace`` gives them ``penalty`` as their score. ``penalty=None`` changes nothing.

    Without it a policy can learn to ramble to the length limit whenever the reward model likes long text.
    """
    if penalty is None:
        return scores
    if mode == "subtract":
        return torch.where(has_eos, scores, scores - penalty)
    if mode == "replace":
        return torch.where(has_eos, scores, torch.full_like(scores, penalty))
    raise ValueError(f"Unknown missing-eos mode {mode!r}; use subtract or replace.")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=1).values


def kl_penalty_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's per-token reward: −β·KL_t on every response token, plus the sequence's score on its last real
    token. Returns (rewards, per-token KL); both are 0 on padding."""
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask, kl


# --- advantages -----------------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), one episode per row.

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}, where V and A past the last real token are 0.
    Returns (advantages, returns = advantages + values), 0 on padding.
    """
    rewards, values = rewards * mask, values * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    carry = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        if t + 1 < steps:
            next_value, following = values[:, t + 1], mask[:, t + 1].to(carry.dtype)
        else:
            next_value = following = torch.zeros_like(carry)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        carry = delta + gamma * lam * carry * following
        advantages[:, t] = carry
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


# --- losses ---------------------------------------------------------------------------------------------


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) with ρ = π/π_old, averaged over real tokens.

    Once ρ has left [1−ε, 1+ε] in the direction the advantage pushes it, the clipped term is the smaller one and
    the token's gradient is 0: one batch of rollouts cannot drag the policy far. Returns (loss, clip fraction).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """½·max((V − R)², (V_clipped − R)²) with V_clipped = V_old + clip(V − V_old, ±ε_v): the value function, too,
    moves at most ε_v from its rollout-time estimate per batch. Returns (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction


# --- the KL coefficient ---------------------------------------------------------------------------------


@dataclass
class FixedKLController:
    """β stays where it started."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β·(1 + clip(KL/target − 1, ±0.2)·n_steps/horizon), a proportional controller
    that raises β when the policy drifts further than ``target`` nats from the reference and lowers it when it
    stays closer. ``n_steps`` is the number of episodes since the last update; ``horizon`` sets the speed."""

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> float:
        if math.isfinite(current_kl):
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
