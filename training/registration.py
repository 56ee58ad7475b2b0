"""Bring your own base model: a folder (config and safetensors) or a GGUF file becomes a model folder under the
first MODEL_ROOT, where the launch form, ``train --base-model NAME`` and the API find it.

``manage.py register_model NAME SOURCE`` and the page ``/training/models/register/`` do it through this module:

- :func:`check_source` refuses what it can without loading anything (no torch: the web process calls it): a bad
  name, a name taken, a path outside the roots the caller allows, a folder without ``config.json``, with only
  pickle weights, an adapter, a model that needs its own Python code, a file that is not GGUF.
- :func:`register_base_model` checks, then writes the folder: a folder's safetensors, config and tokenizer files
  are hard-linked (copied across file systems); a GGUF file is read by transformers (``gguf_file=``, the ``gguf``
  package), de-quantised to float32 and saved as safetensors with its tokenizer and chat template. It refuses an
  architecture transformers does not know, or one that is not the ``kind`` asked for.
- The page queues :func:`register_in_background` on the worker (which runs the command in a subprocess):
  de-quantising a GGUF file takes longer than a web request may (gunicorn ends a request after 30 s);
  :func:`recent_registrations` reads back how they went.

The folder is written inside a hidden staging folder of the root and renamed into place at the end, so a
half-written model is never listed, and a refused or failed registration leaves nothing behind.

Why transformers' own ``save_pretrained`` failed on a GGUF-loaded model ("The model is quantized with gguf and is
not serializable"): ``from_pretrained(gguf_file=...)`` attaches a GGUF quantizer that keeps the weights in GGUF
blocks where a matmul kernel exists (the ``kernels`` package); for architectures on its legacy loader (Llama
among them) the weights are in fact de-quantised, but the quantizer stays attached with ``dequantize=False``,
and a GGUF quantizer is never serialisable. Loading with ``quantization_config=GgufConfig(dequantize=True)`` asks
for plain dense weights in every case, and transformers then removes the quantizer and its config itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from django.conf import settings
from django.utils import timezone as django_timezone
from django_tasks import task
from django_tasks.base import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from . import kinds
from .runners.base import ALLOWED_SUFFIXES, PICKLE_SUFFIXES, folder_size, has_safetensors, is_adapter_folder
from .selectors import TrainingError, model_roots

# What a registered model is: a causal language model (a policy for generate, sft, dpo, ppo... and a reward
# model's backbone), or a sequence classifier (a reward model's backbone only). The values are kinds.py's.
MODEL_KINDS = {"causal-lm": kinds.CAUSAL_LM, "sequence-classifier": kinds.SEQUENCE_CLASSIFIER}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
GGUF_MAGIC = b"GGUF"
STAGING_PREFIX = ".registering-"
HOLD_NAME_FOR = timedelta(hours=6)  # a queued or running registration keeps others from taking its name this long


@dataclass
class Source:
    """A source that passed :func:`check_source`: what will be written where."""

    name: str
    path: Path
    kind: str  # a key of MODEL_KINDS
    format: str  # "folder" or "gguf"
    destination: Path
    model_type: str = ""  # a folder's config.json says it; a GGUF file's is read when it is loaded
    files: list[Path] = field(default_factory=list)  # a folder's files that are linked or copied
    skipped: list[str] = field(default_factory=list)  # and those left out (pickles, code, sub-folders)


@dataclass
class Registered:
    name: str
    path: str
    source: str
    kind: str
    format: str
    model_type: str
    architectures: list[str]
    size_bytes: int
    skipped: list[str]

    def as_json(self) -> dict:
        return asdict(self)


def check_source(
    name: str, source: str | Path, kind: str = "causal-lm", *, within: list[Path] | None = None, replace: bool = False
) -> Source:
    """Everything that can be refused before a model is loaded; TrainingError says why.

    ``within``: the folders ``source`` must be in (the page passes MODEL_ROOTS; the operator's command passes
    nothing). A relative ``source`` is looked up in them, or taken from the working directory without them.
    """
    if kind not in MODEL_KINDS:
        raise TrainingError(f"Unknown kind {kind!r}: use {' or '.join(MODEL_KINDS)}.")
    name = (name or "").strip()
    if not NAME_PATTERN.fullmatch(name):
        raise TrainingError(
            f"{name!r} cannot be a model name: use letters, digits, '.', '_' and '-' (it becomes a folder name), "
            "starting with a letter or digit, at most 100 characters."
        )
    roots = model_roots()
    if not roots:
        raise TrainingError("MODEL_ROOTS is empty: set it to the folder(s) base models may be loaded from.")
    path = _find(str(source or "").strip(), within)
    destination = roots[0] / name
    if path == destination or destination in path.parents or path in destination.parents:
        raise TrainingError(f"{path} is the destination {destination} itself, or holds it: nothing to register.")
    if destination.exists() and not replace:
        raise TrainingError(
            f"{destination} exists already: choose another name (the command's --replace overwrites it)."
        )
    if path.is_file():
        return _check_file(name, path, kind, destination)
    return _check_folder(name, path, kind, destination)


def _find(source: str, within: list[Path] | None) -> Path:
    if not source:
        raise TrainingError("Give the path of a model folder (config.json and .safetensors weights) or a .gguf file.")
    given = Path(source).expanduser()
    if within is None:
        path = given.resolve()
    else:
        roots = [Path(root).resolve() for root in within]
        candidates = [given] if given.is_absolute() else [root / given for root in roots]
        path = next((c for c in candidates if c.exists()), candidates[0] if candidates else given).resolve()
        # Resolved first: a symbolic link or '..' cannot lead out of the roots.
        if not any(path == root or root in path.parents for root in roots):
            raise TrainingError(
                f"{source} is outside MODEL_ROOTS ({', '.join(map(str, roots))}): the page registers only what the "
                "operator put there (manage.py register_model takes any path)."
            )
    if not path.exists():
        raise TrainingError(f"No file or folder {path}.")
    return path


def _check_file(name: str, path: Path, kind: str, destination: Path) -> Source:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise TrainingError(
            f"{path.name} is a pickle: Arbiter loads models only as safetensors (unpickling a file can run code)."
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if path.suffix.lower() != ".gguf" or magic != GGUF_MAGIC:
        raise TrainingError(
            f"{path} is neither a model folder nor a GGUF file (a .gguf file starting with 'GGUF'): give a folder "
            "with config.json and .safetensors weights, or a .gguf file."
        )
    return Source(name, path, kind, "gguf", destination)


def _check_folder(name: str, path: Path, kind: str, destination: Path) -> Source:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise TrainingError(f"{path} is not a model folder: it has no config.json.")
    if is_adapter_folder(path):
        raise TrainingError(
            f"{path} is a PEFT adapter, not a model: merge it into its base model first (merge_and_unload, then "
            "save_pretrained) and register the merged folder."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{config_path} is not readable JSON: {exc}.") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise TrainingError(f"{config_path} names no model_type: transformers cannot tell which model it is.")
    if config.get("auto_map"):
        raise TrainingError(
            f"{path} needs its own Python code (auto_map in config.json); Arbiter runs no code that comes with a model."
        )
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in ALLOWED_SUFFIXES)
    if not has_safetensors(path):
        pickles = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise TrainingError(
                f"{path} holds only pickle weights ({', '.join(pickles)}): Arbiter loads models only as safetensors "
                "(unpickling a file can run code). Convert them where you trust the file: "
                "AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)."
            )
        raise TrainingError(f"{path} has no weights: no .safetensors file.")
    skipped = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p not in files)
    return Source(name, path, kind, "folder", destination, str(config["model_type"]), files, skipped)


def check_architecture(model_type: str, kind: str) -> None:
    """The model type is one this transformers knows, of the kind asked for (imports transformers: not on the web)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    if model_type not in CONFIG_MAPPING_NAMES:
        raise TrainingError(
            f"Unknown architecture {model_type!r}: transformers {transformers.__version__} has no model of that type."
        )
    if kind == "causal-lm":
        # An encoder (BERT and friends) has a causal head in transformers too, but it is no policy.
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            raise TrainingError(
                f"A {model_type} model is not a causal language model; register it as sequence-classifier if it is a "
                "reward model's backbone."
            )
    elif model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise TrainingError(f"transformers has no sequence classifier for {model_type} models.")


def register_base_model(
    name: str, source: str | Path, kind: str = "causal-lm", *, within: list[Path] | None = None, replace: bool = False
) -> Registered:
    """Check ``source`` and write it as the model folder ``NAME`` under the first MODEL_ROOT (see the module doc).

    >>> register_base_model("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    Registered(name='smollm2', path='models/smollm2', format='gguf', model_type='llama', ...)
    """
    src = check_source(name, source, kind, within=within, replace=replace)
    root = src.destination.parent
    root.mkdir(parents=True, exist_ok=True)
    # The model is written one level down in a hidden folder: the launch form lists a root's hidden folders'
    # contents never, so nothing half-written is offered; the rename is the registration.
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        out = staging / name
        if src.format == "gguf":
            model_type, architectures = _from_gguf(src, out)
            provenance = {"sha256": _sha256(src.path)}
        else:
            check_architecture(src.model_type, kind)
            model_type = src.model_type
            architectures = _link_folder(src, out)
            provenance = {"skipped": src.skipped}
        _write_info(out, src, provenance)
        bad = [p.name for p in out.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]
        if bad:  # pragma: no cover - save_pretrained writes safetensors; this guards a future change
            raise TrainingError(f"Refusing to register pickled files: {', '.join(sorted(bad))}.")
        replaced = staging / "replaced"
        if src.destination.exists():  # with replace (check_source refused it otherwise)
            os.rename(src.destination, replaced)
        try:
            os.rename(out, src.destination)
        except OSError:
            if replaced.exists():
                os.rename(replaced, src.destination)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Registered(
        name=name,
        path=str(src.destination),
        source=str(src.path),
        kind=kind,
        format=src.format,
        model_type=model_type,
        architectures=architectures,
        size_bytes=folder_size(src.destination),
        skipped=src.skipped,
    )


def _link_folder(src: Source, out: Path) -> list[str]:
    """Hard links where the source is on the same file system (no second copy of the weights), copies elsewhere."""
    out.mkdir()
    # config.json last: until it is there, the folder is not a model folder for anyone looking.
    for path in sorted(src.files, key=lambda p: p.name == "config.json"):
        try:
            os.link(path, out / path.name)
        except OSError:
            shutil.copy2(path, out / path.name)
    return list(json.loads((out / "config.json").read_text(encoding="utf-8")).get("architectures") or [])


def _from_gguf(src: Source, out: Path) -> tuple[str, list[str]]:
    """De-quantise the GGUF file into a safetensors folder with its tokenizer (and chat template)."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        GgufConfig,
    )

    folder, file = str(src.path.parent), src.path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=file, local_files_only=True)
    except ImportError as exc:
        raise TrainingError(f"Reading a GGUF file needs the gguf package (requirements.txt): {exc}") from None
    except (ValueError, KeyError, OSError) as exc:
        raise TrainingError(f"{src.path} cannot be read as a model: {exc}") from None
    check_architecture(config.model_type, src.kind)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
    options = {"dtype": torch.float32, "quantization_config": GgufConfig(dequantize=True), "local_files_only": True}
    if src.kind == "causal-lm":
        model_class = AutoModelForCausalLM
    else:  # a reward backbone: the file has no score head, so it starts from a seeded random one (as a reward run's)
        model_class = AutoModelForSequenceClassification
        options.update(num_labels=1, pad_token_id=_pad_id(tokenizer, config))
        torch.manual_seed(0)
    try:
        model = model_class.from_pretrained(folder, gguf_file=file, **options)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(f"transformers could not load {src.path}: {exc}") from None
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise TrainingError(f"{src.path} stayed quantized after loading; it cannot be saved as plain safetensors.")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model.config.model_type, list(model.config.architectures or [])


def _pad_id(tokenizer, config) -> int | None:
    for value in (tokenizer.pad_token_id, getattr(config, "pad_token_id", None), tokenizer.eos_token_id):
        if value is not None:
            return value
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_info(out: Path, src: Source, provenance: dict) -> None:
    """``arbiter.json``: where the folder came from (a copied folder's own arbiter.json is kept, with this added)."""
    path = out / "arbiter.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if path.is_file():
        path.unlink()  # a hard link to the source's file: write a new one, never through the link
    info["registered"] = {
        "name": src.name,
        "source": str(src.path),
        "format": src.format,
        "kind": src.kind,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **provenance,
    }
    path.write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")


# --- the page's registrations, on the worker -----------------------------------------------------------


@task()
def register_in_background(name: str, source: str, kind: str, requested_by: str = "") -> dict:
    """The page's registration (``requested_by`` is shown beside it): ``register_model --only-model-roots`` in a
    subprocess, since de-quantising loads torch and the whole model in float32, which the long-lived worker (torch-free
    otherwise: runs train in subprocesses too) should not keep in its memory afterwards. A refusal is the task's
    result, ``{"error": ...}``; anything else that ends the command (a crash, the out-of-memory killer) fails the task.
    """
    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "register_model", name, source]
    env = {
        **os.environ,
        "MODEL_ROOTS": ",".join(str(root) for root in settings.MODEL_ROOTS),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    done = subprocess.run(
        [*command, "--kind", kind, "--only-model-roots"], capture_output=True, text=True, env=env, check=False
    )
    last = _last_line(done.stderr)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    if done.returncode == 1 and last.startswith("CommandError: "):
        return {"error": last.removeprefix("CommandError: ")}
    raise RuntimeError(f"register_model {name} ended with status {done.returncode}: {last or 'no message'}")


def queue_registration(name: str, source: str, kind: str, *, requested_by: str) -> Source:
    """Check now (the page shows a refusal at once), then leave the writing to the worker."""
    src = check_source(name, source, kind, within=model_roots())
    # A worker stopped mid-task (Ctrl-C on make run) leaves its row RUNNING for ever: only recent rows hold a name.
    waiting = DBTaskResult.objects.filter(
        task_path=register_in_background.module_path,
        status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING],
        enqueued_at__gte=django_timezone.now() - HOLD_NAME_FOR,
    )
    if any(row.args_kwargs.get("args", [None])[0] == src.name for row in waiting):
        raise TrainingError(f"{src.name} is being registered already: wait for it, or choose another name.")
    register_in_background.enqueue(src.name, str(src.path), kind, requested_by)
    return src


def recent_registrations(limit: int = 20) -> list[dict]:
    """The page's latest registrations, newest first: what was asked, by whom, and how it went."""
    rows = DBTaskResult.objects.filter(task_path=register_in_background.module_path).order_by("-enqueued_at")
    shown = []
    for row in rows[:limit]:
        args = (row.args_kwargs or {}).get("args") or []
        name, source, kind, by = (list(args) + ["", "", "", ""])[:4]
        result = row.return_value if isinstance(row.return_value, dict) else {}
        if row.status == TaskResultStatus.SUCCESSFUL and not result.get("error"):
            state, message = "registered", result.get("path", "")
        elif row.status == TaskResultStatus.SUCCESSFUL:
            state, message = "refused", result["error"]
        elif row.status == TaskResultStatus.FAILED:
            state, message = "failed", _last_line(row.traceback) or "see the worker's log"
        else:
            state, message = ("running" if row.status == TaskResultStatus.RUNNING else "queued"), ""
        shown.append(
            {
                "name": name,
                "source": source,
                "kind": kind,
                "requested_by": by,
                "state": state,
                "message": message,
                "enqueued_at": row.enqueued_at,
                "finished_at": row.finished_at,
            }
        )
    return shown


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
