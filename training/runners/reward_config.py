"""The reward model's config (torch-free: the web process imports it); the runner is reward.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import PAIR_WEIGHTS, PAIR_WEIGHTS_HELP, VOTE_SOURCES, RunConfig, option

OBJECTIVES = ("bradley_terry", "regression")


@dataclass
class RewardRunConfig(RunConfig):
    # TRL's RewardTrainer logs loss and accuracy (chosen scored above rejected) of the training batches; the runner
    # measures eval_accuracy on the held-out pairs at the end (eval_rmse for regression).
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss", "accuracy", "lm_loss")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("eval_accuracy", "eval_rmse")

    base_model: str = option(
        "", "Folder of the base model; Arbiter fills it in from --base-model (MODEL_ROOTS or the registry)."
    )
    votes: str = option(
        "human",
        "Whose votes the snapshot takes: human (people's), ai (AI judges': RLAIF) or all. A snapshot given with "
        "--snapshot must have been made from the same votes.",
        VOTE_SOURCES,
    )
    objective: str = option(
        "bradley_terry",
        "bradley_terry: pairwise loss on preference pairs (pairwise, ranking projects); "
        "regression: mean-squared error on rating scores (rating projects).",
        OBJECTIVES,
    )
    use_margin: bool = option(
        True, "Subtract each pair's margin (the annotators' mean strength, 0–3) in the loss, as Llama 2 does."
    )
    margin_scale: float = option(
        1.0, "Multiply margins by this: 1 uses strengths 0–3 as Llama 2's large margins, 1/3 gives small ones."
    )
    center_rewards_coefficient: float | None = option(
        None,
        "TRL's reward centering: adds coef × mean((r_chosen + r_rejected)²) so rewards stay near 0 (0.01 is typical); none: off.",
    )
    lm_loss_coefficient: float = option(
        0.0,
        "Adds coef × the language-model loss on the chosen text (decoder models, full or lora), keeping the backbone "
        "a language model; 0: off.",
    )
    criterion: str = option(
        "", "Train on one criterion's preferences or scores (projects with criteria); empty: the overall judgment."
    )
    pair_weights: str = option("none", PAIR_WEIGHTS_HELP, PAIR_WEIGHTS)

    def validate(self) -> None:
        super().validate()
        if self.margin_scale < 0:
            raise ConfigError("margin_scale must be 0 or more.")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ConfigError("center_rewards_coefficient must be 0 or more (or none).")
        if self.lm_loss_coefficient < 0:
            raise ConfigError("lm_loss_coefficient must be 0 or more.")
        if self.lm_loss_coefficient and self.method in ("prompt_tuning", "prefix_tuning"):
            raise ConfigError("lm_loss_coefficient works with method full, lora or qlora, not with virtual tokens.")
        if self.lm_loss_coefficient and self.objective != "bradley_terry":
            raise ConfigError("lm_loss_coefficient is a regulariser of the bradley_terry objective.")
        if self.pair_weights != "none" and self.objective != "bradley_terry":
            raise ConfigError(
                f"pair_weights={self.pair_weights} weighs preference pairs: it needs objective=bradley_terry "
                "(a regression reward model learns from rating scores, which have no pairs)."
            )


CONFIG_CLASS = RewardRunConfig
