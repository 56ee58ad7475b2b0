"""One runner module per training kind; plain functions, runnable and testable without Django.

Each kind has two modules, as TRL lays out its trainers: ``<kind>_config.py``, torch-free, with ``CONFIG_CLASS`` (a
dataclass with help text on every field; the web process imports only these), and ``<kind>.py``, the runner, with
``run(config, dataset_paths, output_dir, progress_callback, checkpoint_dir=None) -> metrics``; see base.py.
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


def _module_name(kind: str) -> str:
    if kind not in RUNNERS:
        raise ValueError(f"No runner for {kind!r} yet; available: {', '.join(RUNNERS)}.")
    return RUNNERS[kind]


def load_runner(kind: str):
    """The runner module of ``kind``; ValueError for a kind without one (yet)."""
    return importlib.import_module(_module_name(kind))


def config_class(kind: str):
    """The config dataclass of ``kind``, from its torch-free ``<kind>_config`` module (the runner is not imported)."""
    return importlib.import_module(_module_name(kind) + "_config").CONFIG_CLASS
