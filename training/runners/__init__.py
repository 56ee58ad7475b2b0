"""One runner module per training kind; plain functions, runnable and testable without Django.

Each module has ``CONFIG_CLASS`` (a dataclass with help text on every field) and
``run(config, dataset_paths, output_dir, progress_callback, checkpoint_dir=None) -> metrics``; see base.py.
The kinds of the next issue (sft, dpo, rejection_sampling, ppo, grpo, rloo, generate) plug in here.
"""

from __future__ import annotations

import importlib

RUNNERS = {
    "reward": "training.runners.reward",
    "generate": "training.runners.generate",
    "rejection_sampling": "training.runners.rejection_sampling",
    "evaluate": "training.runners.evaluate",
    "sft": "training.runners.sft",
    "dpo": "training.runners.dpo",
    "ppo": "training.runners.ppo",
    "grpo": "training.runners.grpo",
    "rloo": "training.runners.rloo",
}


def available_kinds() -> list[str]:
    return list(RUNNERS)


def load_runner(kind: str):
    """The runner module of ``kind``; ValueError for a kind without one (yet)."""
    if kind not in RUNNERS:
        raise ValueError(f"No runner for {kind!r} yet; available: {', '.join(RUNNERS)}.")
    return importlib.import_module(RUNNERS[kind])


def config_class(kind: str):
    return load_runner(kind).CONFIG_CLASS
