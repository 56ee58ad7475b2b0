"""One runner module per training kind; plain functions, runnable and testable without Django.

Each kind has two modules, as TRL lays out its trainers: ``<kind>_config.py``, torch-free, with ``CONFIG_CLASS`` (a
dataclass with help text on every field; the web process imports only these), and ``<kind>.py``, the runner, with
``run(config, dataset_paths, output_dir, progress_callback, checkpoint_dir=None) -> metrics``; see base.py.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

# No list of kinds here: the registry (training/kinds.py) names each kind's config and runner, and the worker's
# spec carries the runner's module path. A kind of this package is a ``<kind>_config.py`` beside its ``<kind>.py``.
_SUFFIX = "_config"


def available_kinds() -> list[str]:
    """The kinds whose runner ships in this package (each ``<kind>_config`` module beside its ``<kind>`` module)."""
    names = {m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])}
    return sorted(n.removesuffix(_SUFFIX) for n in names if n.endswith(_SUFFIX) and n.removesuffix(_SUFFIX) in names)


def _module_name(kind: str) -> str:
    if kind not in available_kinds():
        raise ValueError(f"No runner for {kind!r} yet; available: {', '.join(available_kinds())}.")
    return f"{__name__}.{kind}"


def load_runner(kind: str):
    """The runner module of ``kind``; ValueError for a kind without one (yet)."""
    return importlib.import_module(_module_name(kind))


def config_class(kind: str):
    """The config dataclass of ``kind``, from its torch-free ``<kind>_config`` module (the runner is not imported)."""
    return importlib.import_module(_module_name(kind) + _SUFFIX).CONFIG_CLASS
