"""The config of GRPO (torch-free: the web process imports it); the runner is grpo.py. Names follow TRL's
``GRPOConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from .config import OnlineRunConfig, option

LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GRPORunConfig(OnlineRunConfig):
    loss_type: str = option(
        "dapo",
        "How token losses add up: dapo (tokens of the whole batch, no length bias), grpo (per response, then "
        "mean; favours short good answers), dr_grpo (a constant), bnpo (tokens of the local batch).",
        LOSS_TYPES,
    )
    scale_rewards: str = option(
        "group",
        "Divide advantages by the reward spread of the group, of the batch, or not at all (Dr. GRPO).",
        SCALE_REWARDS,
    )


CONFIG_CLASS = GRPORunConfig
