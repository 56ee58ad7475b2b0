"""The config of rejection sampling (torch-free: the web process imports it); the runner is
rejection_sampling.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import PolicyRunConfig, option


@dataclass
class RejectionSamplingRunConfig(PolicyRunConfig):
    FULL_LEARNING_RATE: ClassVar[float] = 1e-5  # of the fine-tuning on the kept samples
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss", "mean_token_accuracy")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("kept_mean_score", "sample_mean_score", "kept")
    EXAMPLES: ClassVar[str] = "kept samples"

    num_samples: int = option(
        4, "Responses sampled per prompt (K); the best of them is kept. Llama 2 used up to 10 or more."
    )
    min_score: float | None = option(
        None,
        "Keep a prompt's best response only when its combined reward reaches this (rewards are standardised: 0 is "
        "a typical response); none: keep every prompt's best.",
    )

    def validate(self) -> None:
        super().validate()
        if self.num_samples < 2:
            raise ConfigError("num_samples must be at least 2: rejection sampling keeps the best of several.")


CONFIG_CLASS = RejectionSamplingRunConfig
