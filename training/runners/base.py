"""What every runner shares, without Django: the config base class, progress events, device and precision,
safe model loading, PEFT methods and the artifact folder's rules.

A runner is a module with a config dataclass (a :class:`RunConfig` subclass) and one entry point::

    metrics = run(config, dataset_paths, output_dir, progress_callback, checkpoint_dir=None)

``dataset_paths`` maps split names (``train``, ``test``, ``test:<criterion>``) to files or folders;
``output_dir`` receives the finished model (the caller renames it into place); ``progress_callback(event)``
receives dicts (``{"event": "start"|"progress"|"metrics"|"checkpoint"|"log", ...}``) and returns True to ask the
run to stop, which then raises :class:`RunCancelled`; ``checkpoint_dir``, when given, holds resumable checkpoints
and a later call with the same folder resumes from the newest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import shutil
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ProgressCallback = Callable[[dict], "bool | None"]

METHODS = ("full", "lora", "qlora", "prompt_tuning", "prefix_tuning")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Suffixes a finished model folder may hold: weights only as safetensors, never pickles.
ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".md", ".jinja", ".tiktoken"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class ConfigError(ValueError):
    """A config that cannot run: unknown key, wrong type, value out of range."""


class RunnerError(RuntimeError):
    """A run that cannot proceed on this machine or with these inputs; the message says why."""


class RunCancelled(Exception):
    """The progress callback asked the run to stop."""


def option(default, help: str, choices: tuple | None = None, **kwargs):
    """A config field with its help text (shown by the launch form, the docs and ``train --help-config``)."""
    metadata = {"help": help}
    if choices:
        metadata["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class RunConfig:
    """Fields every training kind has. Subclasses add their own; ``from_dict`` validates any of them."""

    seed: int = option(0, "Random seed for the head initialisation, data order and dropout.")
    method: str = option(
        "full", "full: every weight; lora / qlora (4-bit base, CUDA only): low-rank adapters; prompt_tuning / "
        "prefix_tuning: learned virtual tokens (peft, where the architecture allows).", METHODS,
    )  # fmt: skip
    learning_rate: float = option(1e-5, "Peak learning rate (AdamW).")
    num_train_epochs: float = option(1.0, "Passes over the training split (ignored when max_steps > 0).")
    max_steps: int = option(-1, "Stop after this many optimizer steps; -1 trains for num_train_epochs.")
    per_device_train_batch_size: int = option(8, "Examples (pairs) per device per forward pass.")
    per_device_eval_batch_size: int = option(16, "Examples per device when evaluating.")
    gradient_accumulation_steps: int = option(1, "Forward passes per optimizer step (effective batch = batch × this × devices).")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass: less memory, ~20% slower.")
    max_length: int | None = option(512, "Longest sequence in tokens; longer examples are left out (none: no limit).")
    precision: str = option("auto", "auto: bf16 on GPUs that support it, fp32 otherwise.", PRECISIONS)
    warmup_steps: float = option(0.0, "Linear warm-up: steps, or a fraction of all steps when below 1.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    lr_scheduler_type: str = option("linear", "Learning-rate schedule (transformers' names: linear, cosine, constant...).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    logging_steps: int = option(5, "Log loss and accuracy every this many steps (the plots' resolution).")
    eval_steps: int = option(0, "Evaluate on the test split every this many steps; 0 only at the end.")
    save_steps: int = option(0, "Write a resumable checkpoint every this many steps; 0 relies on save_minutes.")
    save_minutes: float = option(10.0, "Also write a checkpoint when this many minutes passed since the last; 0 off.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA scaling (alpha).")
    lora_dropout: float = option(0.05, "LoRA dropout.")
    lora_target_modules: str = option("all-linear", "Modules that get adapters: all-linear, or comma-separated names.")
    num_virtual_tokens: int = option(16, "prompt_tuning / prefix_tuning: number of virtual tokens.")
    merge_adapter: bool = option(True, "lora: merge the adapter into the weights of the saved model (not for qlora).")

    # --- construction and validation ---------------------------------------------------------------

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """A validated config from a dict of values (JSON types). Unknown keys and wrong types raise ConfigError.

        >>> RewardRunConfig.from_dict({"learning_rate": 1e-4, "method": "lora"})  # doctest: +SKIP
        """
        if not isinstance(data, dict):
            raise ConfigError("The config must be an object of option names and values.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in data if key not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"Unknown option {', '.join(hints)}. Options: {', '.join(names)}.")
        types_ = cls.field_types()
        values = {key: _check_type(key, value, types_[key]) for key, value in data.items()}
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def parse_overrides(cls, pairs: list[str]) -> dict:
        """``["learning_rate=1e-4", "method=lora"]`` (the command's ``--set``) → typed values, by each field's type."""
        names = {f.name for f in dataclasses.fields(cls)}
        types_ = cls.field_types()
        values = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"{pair!r}: write options as key=value.")
            if key not in names:
                close = difflib.get_close_matches(key, list(names), n=1)
                raise ConfigError(f"Unknown option {key!r}" + (f" (did you mean {close[0]!r}?)." if close else "."))
            values[key] = _parse_text(key, text.strip(), types_[key])
        return values

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[dict]:
        """Every field: name, type, default, choices and help (for forms and docs)."""
        types_ = cls.field_types()
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(
                {"name": f.name, "type": _type_name(types_[f.name]), "default": default,
                 "choices": f.metadata.get("choices"), "help": f.metadata.get("help", "")}
            )  # fmt: skip
        return rows

    def validate(self) -> None:
        """Ranges and choices; subclasses call super().validate() and add their own."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, not {getattr(self, f.name)!r}.")
        positive = ["learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "logging_steps", "lora_r", "lora_alpha", "num_virtual_tokens"]  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be above 0.")
        for name in ("eval_steps", "save_steps", "save_minutes", "warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("max_steps must be -1 (use num_train_epochs) or above 0.")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ConfigError("num_train_epochs must be above 0.")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError("max_length must be at least 8 tokens (or none).")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout must be at least 0 and below 1.")


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if args and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or none"
    if typing.get_origin(tp) is list:
        return "list of " + _type_name(typing.get_args(tp)[0])
    return getattr(tp, "__name__", str(tp))


def _base_type(tp):
    """``int | None`` → (int, True)."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _check_type(key: str, value, tp):
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty (null).")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(base) is list:
        (element,) = typing.get_args(base)
        if isinstance(value, (list, tuple)):
            return [_check_type(f"{key}[{i}]", v, element) for i, v in enumerate(value)]
    else:  # pragma: no cover - every field uses the types above
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, not {type(value).__name__} {value!r}.")


def _parse_text(key: str, text: str, tp):
    base, optional = _base_type(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if typing.get_origin(base) is list:  # "a,b,c" (the command's --set reward_weights=0.7,0.3)
            (element,) = typing.get_args(base)
            parts = [part.strip() for part in text.strip("[]").split(",") if part.strip()]
            return [_parse_text(key, part, element) for part in parts]
    except ValueError:
        raise ConfigError(f"{key} must be {_type_name(tp)}, not {text!r}.") from None
    return text


# --- device, precision, environment ------------------------------------------------------------------


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_precision(config: RunConfig) -> str:
    """bf16 / fp16 / fp32 for this machine: ``auto`` is bf16 on a GPU that supports it, fp32 elsewhere."""
    import torch

    if config.precision == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if config.precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise RunnerError(f"precision={config.precision} needs a CUDA GPU; this machine has none (use auto or fp32).")
    return config.precision


def check_environment(config: RunConfig) -> None:
    """Refuse, before any work, what this machine cannot do."""
    if config.method == "qlora":
        if not cuda_available():
            raise RunnerError(
                "QLoRA needs a CUDA GPU (4-bit weights are a bitsandbytes GPU kernel) and this machine has none. "
                "Run it on a GPU worker, or use method=lora or method=full on the CPU."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RunnerError("QLoRA needs the bitsandbytes package on the GPU worker: pip install bitsandbytes.")


def offline_environment() -> None:
    """Models come from local folders only: never let a library reach for a hub."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


# --- model folders -----------------------------------------------------------------------------------


def read_arbiter_json(folder: str | Path) -> dict:
    path = Path(folder) / "arbiter.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token or tokenizer.unk_token
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        # Encoders (BERT and friends) end a text with [SEP]; TRL appends the eos token to every text.
        tokenizer.eos_token = tokenizer.sep_token
    return tokenizer


def load_model(model_class, folder: str | Path, **kwargs):
    """``model_class.from_pretrained`` from a local folder, safetensors only, never a hub.

    A registered adapter (an Arbiter artifact with ``adapter_config.json``) is loaded over the base model named in
    its ``arbiter.json``; LoRA adapters are merged so the caller gets plain weights.
    """
    folder = Path(folder)
    if is_adapter_folder(folder):
        from peft import PeftModel

        info = read_arbiter_json(folder)
        base = info.get("base_model_path")
        if not base:
            raise RunnerError(f"{folder} is an adapter without the base model's folder in its arbiter.json.")
        model = model_class.from_pretrained(base, local_files_only=True, use_safetensors=True, **kwargs)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        if info.get("config", {}).get("method") in ("lora", "qlora"):
            return model.merge_and_unload()
        return model
    if not has_safetensors(folder):
        raise RunnerError(f"{folder} has no .safetensors weights; Arbiter loads no other format (pickles can run code).")
    return model_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True, **kwargs)


def peft_config(config: RunConfig, task_type: str):
    """The peft config for ``config.method`` (None for full fine-tuning)."""
    if config.method == "full":
        return None
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if config.method in ("lora", "qlora"):
        targets = config.lora_target_modules.strip()
        return LoraConfig(
            task_type=task_type, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        )  # fmt: skip
    if config.method == "prompt_tuning":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=config.num_virtual_tokens)
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=config.num_virtual_tokens)


def quantization_config(precision: str):
    """QLoRA's 4-bit NF4 base weights with double quantisation (Dettmers et al. 2023)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
    )  # fmt: skip


def training_arguments(config: RunConfig, args_class, checkpoint_dir: str, precision: str, has_eval: bool, **extra):
    """``args_class`` (TRL's RewardConfig, transformers' TrainingArguments...) from the common fields."""
    eval_steps = config.eval_steps if has_eval and config.eval_steps else None
    return args_class(
        output_dir=checkpoint_dir,
        seed=config.seed,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_checkpointing=config.gradient_checkpointing,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler_type,
        max_grad_norm=config.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda_available(),
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        # Checkpoints only as often as asked (ProgressCallback adds time-based ones); one kept, for resuming.
        save_strategy="steps",
        save_steps=config.save_steps or 10**9,
        save_total_limit=1,
        report_to=[],
        disable_tqdm=True,
        **extra,
    )


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def checkpoint_is_complete(folder: Path) -> bool:
    """Trainer writes ``trainer_state.json`` last, after the weights, optimizer and RNG state."""
    return (folder / "trainer_state.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


def last_checkpoint(checkpoint_dir: str | None) -> str | None:
    """The newest complete ``checkpoint-N`` folder; newer, half-written ones (a worker killed mid-save) are removed."""
    if not checkpoint_dir or not Path(checkpoint_dir).is_dir():
        return None
    folders = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True):
        if checkpoint_is_complete(folder):
            return str(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return None


def remove_pickles(folder: str | Path) -> None:
    """Trainer writes its arguments as a pickle (``training_args.bin``) beside every save; Arbiter never reads it."""
    for path in Path(folder).rglob("training_args.bin"):
        path.unlink()


def check_artifact_folder(folder: str | Path) -> None:
    """A finished model folder holds safetensors and text only."""
    remove_pickles(folder)
    bad = [p.name for p in Path(folder).rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    if bad:
        raise RunnerError(f"Refusing to publish pickled files: {', '.join(sorted(bad))}.")


def make_progress_callback(progress_callback: ProgressCallback, config: RunConfig):
    """A transformers TrainerCallback that reports to ``progress_callback`` and stops when it returns True."""
    from transformers import TrainerCallback

    class ProgressReporter(TrainerCallback):
        def __init__(self):
            self.stopped = False
            self.last_save = time.monotonic()

        def _emit(self, state, event: dict) -> None:
            if not state.is_world_process_zero:
                return
            if progress_callback(event):
                self.stopped = True

        def on_train_begin(self, args, state, control, **kwargs):
            self._emit(state, {"event": "start", "step": state.global_step, "total": state.max_steps})

        def on_step_end(self, args, state, control, **kwargs):
            self._emit(state, {"event": "progress", "step": state.global_step, "total": state.max_steps})
            if config.save_minutes and time.monotonic() - self.last_save > 60 * config.save_minutes:
                control.should_save = True
            if state.global_step >= state.max_steps:
                control.should_save = False  # the finished model is saved as the artifact; a checkpoint is waste
            if self.stopped:
                control.should_training_stop = True
                control.should_save = False
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            values = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if values:
                self._emit(state, {"event": "metrics", "step": state.global_step, "total": state.max_steps, "metrics": values})

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            remove_pickles(checkpoint)
            self._emit(state, {"event": "checkpoint", "step": state.global_step, "path": str(checkpoint)})

    return ProgressReporter()


def quiet_trainer(trainer) -> None:
    """Progress reaches the worker as events; transformers' own printing of every log line would double it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def emit_log(progress_callback: ProgressCallback, message: str) -> None:
    progress_callback({"event": "log", "message": message})


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
