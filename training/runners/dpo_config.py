"""The config of DPO (torch-free: the web process imports it); the runner is dpo.py. Names follow TRL's ``DPOConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import PAIR_WEIGHTS, PAIR_WEIGHTS_HELP, VOTE_SOURCES, PolicyRunConfig, option

# TRL 1.16's DPOTrainer._compute_loss accepts exactly these (its "Unknown loss type" message lists them).
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
# Losses built on the chosen − rejected reward difference: the only ones with an f-divergence generalisation.
F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
REFERENCES = ("base", "model", "none")


@dataclass
class DPORunConfig(PolicyRunConfig):
    # TRL's implicit reward β·log(π/π_ref): how often the chosen response gets more of it, and by how much.
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss", "rewards/accuracies", "rewards/margins")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss")
    EXAMPLES: ClassVar[str] = "pairs"

    votes: str = option(
        "human",
        "Whose votes the snapshot takes: human (people's), ai (AI judges': RLAIF) or all. A snapshot given with "
        "--snapshot must have been made from the same votes.",
        VOTE_SOURCES,
    )
    beta: float = option(
        0.1, "How far the policy may move from the reference: higher β keeps it closer (IPO: the regularisation τ)."
    )
    loss_type: list[str] = option(
        ["sigmoid"],
        "TRL's DPO losses: sigmoid (DPO), ipo, hinge (SLiC), robust, exo_pair, nca_pair, bco_pair, sppo_hard, "
        "aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm, sft (the NLL of the chosen response); "
        "several are added up with loss_weights (e.g. sigmoid,sft is RPO).",
    )
    loss_weights: list[float] = option([], "Weight of each loss in loss_type; empty: 1 each.")
    label_smoothing: float = option(
        0.0,
        "robust: the probability that a preference label is flipped (below 0.5; 0.1 is typical); exo_pair: ε (above 0; 1e-3 is typical); aot: the smoothing.",
    )
    f_divergence_type: str = option(
        "reverse_kl", "The divergence from the reference (f-DPO); reverse_kl is standard DPO.", F_DIVERGENCES
    )
    f_alpha_divergence_coef: float = option(0.5, "alpha_divergence: its α.")
    ld_alpha: float | None = option(
        None, "LD-DPO: weight (0–1) of the tokens of the longer response beyond the shorter one's length; none: off."
    )
    use_weighting: bool = option(
        False, "WPO: weight each pair by the policy's (length-normalised) probability of both responses."
    )
    pair_weights: str = option("none", PAIR_WEIGHTS_HELP, PAIR_WEIGHTS)
    discopop_tau: float = option(0.05, "discopop: the temperature τ of its log-ratio modulation.")
    reference: str = option(
        "base",
        "base: a frozen copy of the starting policy (with adapters: the model with its adapter disabled); "
        "model: the policy in ref_model; none: reference-free DPO.",
        REFERENCES,
    )
    ref_model: str = option(
        "", "reference=model: folder of the reference policy (a registered artifact, resolved by Arbiter)."
    )
    precompute_ref_log_probs: bool = option(
        False,
        "Compute the reference's log-probabilities once before training, so that it needs no memory during training.",
    )
    sync_ref_model: bool = option(
        False, "TR-DPO: move the reference towards the policy every ref_model_sync_steps steps (full method only)."
    )
    ref_model_mixup_alpha: float = option(0.6, "TR-DPO: π_ref ← α·π + (1 − α)·π_ref at each sync.")
    ref_model_sync_steps: int = option(512, "TR-DPO: steps between syncs.")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta must be above 0 (it scales the implicit reward), not {self.beta}.")
        if not self.loss_type:
            raise ConfigError(f"loss_type needs at least one of: {', '.join(DPO_LOSSES)}.")
        unknown = [name for name in self.loss_type if name not in DPO_LOSSES]
        if unknown:
            raise ConfigError(
                f"Unknown DPO loss_type {', '.join(map(repr, unknown))}; TRL offers: {', '.join(DPO_LOSSES)}."
            )
        if self.loss_weights and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError("loss_weights needs one weight per loss in loss_type (or none for 1 each).")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing must be at least 0 and below 1.")
        if "robust" in self.loss_type and self.label_smoothing >= 0.5:
            raise ConfigError(
                "robust: label_smoothing is the probability that a label is flipped and must be below 0.5."
            )
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ConfigError("exo_pair needs label_smoothing above 0 (the EXO paper uses 1e-3).")
        if self.f_divergence_type != "reverse_kl" and not set(self.loss_type) <= F_DIVERGENCE_LOSSES:
            raise ConfigError(
                f"f_divergence_type={self.f_divergence_type} works only with the losses {', '.join(sorted(F_DIVERGENCE_LOSSES))}."
            )
        if self.ld_alpha is not None and not 0 <= self.ld_alpha <= 1:
            raise ConfigError("ld_alpha must be between 0 and 1 (or none).")
        if self.use_weighting and {"aot", "aot_unpaired"} & set(self.loss_type):
            raise ConfigError("use_weighting does not work with the aot losses (they sort the pairs).")
        if self.pair_weights != "none" and {"aot", "aot_unpaired"} & set(self.loss_type):
            raise ConfigError(
                "pair_weights does not work with the aot losses: they sort the pairs of a batch, so a pair's loss "
                "is not its own to weigh."
            )
        if self.discopop_tau <= 0:
            raise ConfigError("discopop_tau must be above 0.")
        if self.reference == "model" and not self.ref_model:
            raise ConfigError("reference=model needs ref_model, the folder of the reference policy.")
        if self.ref_model and self.reference != "model":
            raise ConfigError(f"ref_model is set but reference is {self.reference!r}; set reference=model to use it.")
        if self.sync_ref_model:
            if self.method != "full" or self.reference == "none" or self.precompute_ref_log_probs:
                raise ConfigError(
                    "sync_ref_model (TR-DPO) needs method=full, a reference model and precompute_ref_log_probs off."
                )
            if not 0 <= self.ref_model_mixup_alpha <= 1 or self.ref_model_sync_steps < 1:
                raise ConfigError("ref_model_mixup_alpha must be between 0 and 1 and ref_model_sync_steps at least 1.")


CONFIG_CLASS = DPORunConfig
