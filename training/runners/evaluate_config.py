"""The config of a policy-against-baseline evaluation (torch-free: the web process imports it); the runner is
evaluate.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import PolicyRunConfig, option


@dataclass
class EvaluateRunConfig(PolicyRunConfig):
    # Nothing is trained; the run page leads with the win rate and its interval.
    KEY_METRICS: ClassVar[tuple[str, ...]] = ()
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ()
    EXAMPLES: ClassVar[str] = "prompts"

    baseline_model: str = option(
        "", "Folder of the policy to compare with (usually the previous round's); Arbiter fills it in."
    )


CONFIG_CLASS = EvaluateRunConfig
