"""The process reward model's config (torch-free: the web process imports it); the runner is prm.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import VOTE_SOURCES, RunConfig, option

# How a response's score is made from its steps' probabilities of being positive: the weakest step (min), or the
# probability that every step is right (prod). Both are in [0, 1]; Lightman et al. 2023 ("Let's Verify Step by
# Step") rank solutions by the product, Wang et al. 2024 (Math-Shepherd) by the minimum.
AGGREGATES = ("min", "prod")


@dataclass
class PRMRunConfig(RunConfig):
    # Trainer logs the token-classification loss; the runner measures the held-out metrics at the end.
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss",)
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("eval_step_accuracy", "eval_first_error_f1")
    EXAMPLES: ClassVar[str] = "responses"

    base_model: str = option(
        "", "Folder of the base model; Arbiter fills it in from --base-model (MODEL_ROOTS or the registry)."
    )
    votes: str = option(
        "human",
        "Whose votes the snapshot takes: human (people's), ai (AI judges') or all. A snapshot given with --snapshot "
        "must have been made from the same votes.",
        VOTE_SOURCES,
    )
    step_separator: str = option(
        "\n",
        "Text put after every step; the model reads each step's label on its last token (TRL's PRMTrainer). "
        "Scoring splits a response into steps on it. At launch the default is the project's step separator.",
    )
    neutral_steps: str = option(
        "positive",
        "What a step labelled neutral teaches: positive or negative (TRL's two classes, the steps export's booleans), "
        "or class: a third class of its own (the export keeps the label names).",
        ("positive", "negative", "class"),
    )
    aggregate: str = option(
        "min",
        "How a response's score is made from its steps' probabilities of being right, where the PRM serves as a "
        "reward model: min (the weakest step) or prod (every step right).",
        AGGREGATES,
    )
    max_prompt_length: int | None = option(256, "Prompts longer than this many tokens keep their end (none: no limit).")
    max_completion_length: int | None = option(
        None, "Steps beyond this many tokens of the response are left out (none: only max_length limits them)."
    )
    train_on_last_step_only: bool = option(
        False, "Learn only from each response's last step (an outcome reward model; TRL's option of the same name)."
    )

    def validate(self) -> None:
        super().validate()
        if self.method in ("prompt_tuning", "prefix_tuning"):
            # Virtual tokens shift every position, and the labels sit on positions.
            raise ConfigError("A PRM trains with method full, lora or qlora, not with virtual tokens.")
        if not self.step_separator:
            raise ConfigError("step_separator cannot be empty: each step's label sits on its last token.")
        for name in ("max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 (or none).")


CONFIG_CLASS = PRMRunConfig
