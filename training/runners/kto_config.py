"""The config of KTO (torch-free: the web process imports it); the runner is kto.py. Names follow TRL's ``KTOConfig``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import VOTE_SOURCES, PolicyRunConfig, option

# TRL 1.16's KTOConfig.loss_type choices.
KTO_LOSSES = ("kto", "apo_zero_unpaired")

# The KTO paper's rule for unbalanced data (Ethayarajh et al. 2024, eq. 8; TRL's KTOTrainer warns outside it):
# desirable_weight·n_D / (undesirable_weight·n_U) within [1, 4/3].
BALANCE_RANGE = (1.0, 4 / 3)


def balanced_weights(
    n_desirable: int, n_undesirable: int, desirable_weight: float | None = None, undesirable_weight: float | None = None
) -> tuple[float, float]:
    """``(desirable_weight, undesirable_weight)`` for a train split of ``n_desirable`` and ``n_undesirable``
    examples, within :data:`BALANCE_RANGE`: a weight given is kept; with none given, a split already inside the
    range keeps 1 each, and otherwise the minority's weight is raised so that the ratio sits in the middle of the
    range (safely inside it, whatever the rounding); with one given, the other is set so.

    >>> balanced_weights(10, 10), balanced_weights(30, 10), balanced_weights(10, 35)
    ((1.0, 1.0), (1.0, 2.5714285714285716), (4.083333333333333, 1.0))
    """
    if n_desirable < 1 or n_undesirable < 1:
        raise ValueError("KTO needs desirable and undesirable examples to balance.")
    low, high = BALANCE_RANGE
    middle = (low + high) / 2
    if desirable_weight is not None and undesirable_weight is not None:
        return desirable_weight, undesirable_weight
    if desirable_weight is not None:
        return desirable_weight, desirable_weight * n_desirable / (middle * n_undesirable)
    if undesirable_weight is not None:
        return middle * undesirable_weight * n_undesirable / n_desirable, undesirable_weight
    ratio = n_desirable / n_undesirable
    if low <= ratio <= high:
        return 1.0, 1.0
    if ratio < low:  # fewer desirable examples: each weighs more
        return middle / ratio, 1.0
    return 1.0, ratio / middle  # fewer undesirable examples: each weighs more


def balance_ratio(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> float:
    """desirable_weight·n_D / (undesirable_weight·n_U): the quantity the KTO paper keeps within [1, 4/3]."""
    return desirable_weight * n_desirable / (undesirable_weight * n_undesirable)


@dataclass
class KTORunConfig(PolicyRunConfig):
    # TRL's implicit reward β·log(π/π_ref) of desirable ("chosen") and undesirable ("rejected") responses, their
    # difference, and the KL estimate z₀ both are measured against.
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss", "rewards/margins", "kl")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = (
        "eval_rewards/margins",
        "eval_rewards/chosen",
        "eval_rewards/rejected",
        "eval_loss",
    )
    EXAMPLES: ClassVar[str] = "responses"
    # What a project must collect for KTO (the launch refuses other projects with this reason).
    LEARNS_FROM: ClassVar[str] = "thumbs up/down: pairwise, ranking or rating votes"

    votes: str = option(
        "human",
        "Whose votes the snapshot takes: human (people's), ai (AI judges': RLAIF) or all. A snapshot given with "
        "--snapshot must have been made from the same votes.",
        VOTE_SOURCES,
    )
    threshold: float | None = option(
        None,
        "Rating projects: a response is desirable when its mean score is at least this, undesirable below it; "
        "empty: the scale's middle (responses exactly on it are left out). Pairwise and ranking projects label "
        "winners and losers and take no threshold.",
    )
    beta: float = option(
        0.1, "How far the policy may move from the reference (the starting policy): higher β keeps it closer."
    )
    loss_type: str = option(
        "kto",
        "kto: the KTO loss (rewards against the KL estimate z₀); apo_zero_unpaired: unpaired APO-zero, for "
        "desirable responses better than the model's own (no KL estimate).",
        KTO_LOSSES,
    )
    desirable_weight: float | None = option(
        None,
        "Weight of the desirable examples' loss; empty: balanced from the train split's counts so that "
        "desirable_weight·n_desirable / (undesirable_weight·n_undesirable) lies in [1, 4/3] (the KTO paper's rule).",
    )
    undesirable_weight: float | None = option(
        None, "Weight of the undesirable examples' loss; empty: balanced with desirable_weight (see there)."
    )
    max_length: int | None = option(
        512,
        "Longest sequence (prompt and response) in tokens; longer ones are cut at the end, as TRL's KTO does (none: no limit).",
    )
    precompute_ref_log_probs: bool = option(
        False,
        "Compute the reference's log-probabilities once before training, so that it needs no memory during training.",
    )

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta must be above 0 (it scales the implicit reward), not {self.beta}.")
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be above 0 (or empty to balance it from the data), not {value}.")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ConfigError("threshold must be a finite score (or empty for the scale's middle).")
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise ConfigError(
                "loss_type=kto needs per_device_train_batch_size of at least 2: it estimates the KL term from the "
                "other responses of the batch (with 1 it would equal the reward)."
            )

    def weights(self, n_desirable: int, n_undesirable: int) -> tuple[float, float]:
        """The weights training uses: the given ones, and :func:`balanced_weights` for those left empty."""
        return balanced_weights(n_desirable, n_undesirable, self.desirable_weight, self.undesirable_weight)


CONFIG_CLASS = KTORunConfig
