"""The config of supervised fine-tuning (torch-free: the web process imports it); the runner is sft.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import PolicyRunConfig, option

SOURCES = ("demonstrations", "chosen")
SFT_LOSSES = ("nll", "dft")


@dataclass
class SFTRunConfig(PolicyRunConfig):
    FULL_LEARNING_RATE: ClassVar[float] = 2e-5  # TRL's SFTConfig default (and trl/scripts/sft.py's full run)
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss", "mean_token_accuracy")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("eval_loss", "eval_mean_token_accuracy")

    source: str = option(
        "demonstrations",
        "demonstrations: the sft export (a prompt's turns, then the demonstration); chosen: the "
        "chosen responses of a trl (preference) export.",
        SOURCES,
    )
    completion_only_loss: bool = option(
        True, "Learn only the responses (the loss skips the prompt's tokens); off: learn the whole conversation."
    )
    loss_type: str = option(
        "nll",
        "nll: the usual negative log-likelihood; dft: Dynamic Fine-Tuning (each token's loss weighted by its probability).",
        SFT_LOSSES,
    )


CONFIG_CLASS = SFTRunConfig
