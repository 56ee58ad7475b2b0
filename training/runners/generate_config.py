"""The config of candidate generation (torch-free: the web process imports it); the runner is generate.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import PolicyRunConfig, option


@dataclass
class GenerateRunConfig(PolicyRunConfig):
    KEY_METRICS: ClassVar[tuple[str, ...]] = ()  # nothing is trained
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("candidates", "mean_score", "mean_best_score")
    EXAMPLES: ClassVar[str] = "prompts"

    num_samples: int = option(2, "Responses sampled per prompt (K): 2 for a pairwise round, 3–9 for a ranking round.")
    model_label: str = option(
        "", "Label written beside each response (the registered model's name); empty: the policy folder's name."
    )

    def validate(self) -> None:
        super().validate()
        if self.num_samples < 1:
            raise ConfigError("num_samples must be at least 1.")


CONFIG_CLASS = GenerateRunConfig
