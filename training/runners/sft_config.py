"""The config of supervised fine-tuning (torch-free: the web process imports it); the runner is sft.py."""

from __future__ import annotations

from dataclasses import dataclass

from .config import PolicyRunConfig, option

SOURCES = ("demonstrations", "chosen")
SFT_LOSSES = ("nll", "dft")


@dataclass
class SFTRunConfig(PolicyRunConfig):
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
    learning_rate: float = option(2e-5, "Peak learning rate (AdamW).")


CONFIG_CLASS = SFTRunConfig
