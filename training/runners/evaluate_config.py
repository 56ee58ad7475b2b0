"""The config of a policy-against-baseline evaluation (torch-free: the web process imports it); the runner is
evaluate.py."""

from __future__ import annotations

from dataclasses import dataclass

from .config import PolicyRunConfig, option


@dataclass
class EvaluateRunConfig(PolicyRunConfig):
    baseline_model: str = option(
        "", "Folder of the policy to compare with (usually the previous round's); Arbiter fills it in."
    )


CONFIG_CLASS = EvaluateRunConfig
