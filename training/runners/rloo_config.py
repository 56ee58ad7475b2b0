"""The config of RLOO (torch-free: the web process imports it); the runner is rloo.py. Names follow TRL's
``RLOOConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from .config import OnlineRunConfig, option


@dataclass
class RLOORunConfig(OnlineRunConfig):
    beta: float = option(
        0.05, "Weight of the KL to the starting policy, subtracted from each response's reward; 0 loads no reference."
    )
    normalize_advantages: bool = option(False, "Scale each batch's advantages to mean 0 and standard deviation 1.")


CONFIG_CLASS = RLOORunConfig
