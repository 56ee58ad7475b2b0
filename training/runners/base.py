"""What every runner shares, without Django: the errors, progress events, device and precision, safe model loading,
PEFT methods and the artifact folder's rules (the configs are in config.py and ``<kind>_config.py``).

torch, transformers and peft are imported inside the functions that need them: the web process imports this module
for the folder checks (``has_safetensors``, ``read_arbiter_json``, ``folder_size``) and the errors.

A runner is a module ``<kind>.py`` beside its config ``<kind>_config.py`` (a :class:`RunConfig` subclass) with one
entry point::

    metrics = run(config, dataset_paths, output_dir, progress_callback, checkpoint_dir=None)

``dataset_paths`` maps split names (``train``, ``test``, ``test:<criterion>``) to files or folders;
``output_dir`` receives the finished model (the caller renames it into place); ``progress_callback(event)``
receives dicts (``{"event": "start"|"progress"|"metrics"|"checkpoint"|"log", ...}``) and returns True to ask the
run to stop, which then raises :class:`RunCancelled`; ``checkpoint_dir``, when given, holds resumable checkpoints
and a later call with the same folder resumes from the newest one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # annotations only: config.py imports this module's ConfigError
    from .config import RunConfig

ProgressCallback = Callable[[dict], "bool | None"]

# Suffixes a finished model folder may hold: weights only as safetensors, never pickles.
ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".md", ".jinja", ".tiktoken"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class ConfigError(ValueError):
    """A config that cannot run: unknown key, wrong type, value out of range."""


class RunnerError(RuntimeError):
    """A run that cannot proceed on this machine or with these inputs; the message says why."""


class RunCancelled(Exception):
    """The progress callback asked the run to stop."""


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
    its ``arbiter.json``; adapters of the weights (LoRA, QLoRA, AdaLoRA, IA3) are merged so the caller gets plain
    weights.
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
        if info.get("config", {}).get("method") in WEIGHT_ADAPTER_METHODS:
            return model.merge_and_unload()
        return model
    if not has_safetensors(folder):
        raise RunnerError(
            f"{folder} has no .safetensors weights; Arbiter loads no other format (pickles can run code)."
        )
    return model_class.from_pretrained(str(folder), local_files_only=True, use_safetensors=True, **kwargs)


# Adapters of the base model's weights (merged on load, and into the saved model with merge_adapter) as opposed to
# virtual tokens; QLoRA's 4-bit base cannot take a merge at save time, but its adapter merges over the full base.
WEIGHT_ADAPTER_METHODS = ("lora", "qlora", "adalora", "ia3")
MERGEABLE_METHODS = ("lora", "adalora", "ia3")


def saves_adapter(config: RunConfig) -> bool:
    """Whether the saved model is an adapter over its base (else plain weights): every adapter method, unless
    ``merge_adapter`` merges it (LoRA, AdaLoRA, IA3)."""
    return config.method != "full" and not (config.method in MERGEABLE_METHODS and config.merge_adapter)


def merged_for_saving(model, config: RunConfig):
    """``model`` as it is saved: a mergeable adapter merged into plain weights when ``merge_adapter`` asks for it."""
    if config.method in MERGEABLE_METHODS and config.merge_adapter and hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def model_type_of(folder) -> str | None:
    """The ``model_type`` of a model folder (an adapter's base), or None where it cannot be read (a GGUF file)."""
    from transformers import AutoConfig

    folder = Path(folder)
    if is_adapter_folder(folder):
        folder = Path(read_arbiter_json(folder).get("base_model_path") or folder)
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True).model_type
    except (OSError, ValueError):
        return None


def peft_config(config: RunConfig, task_type: str, model_type: str | None = None):
    """The peft config for ``config.method`` (None for full fine-tuning).

    AdaLoRA's schedule (``total_step``, ``tinit``, ``tfinal``) is set when training starts, from the run's steps
    (:func:`schedule_adalora`). IA3 with ``lora_target_modules=all-linear`` takes peft's modules for the
    architecture (``model_type``, by default read from ``config.base_model``): keys, values and the feed-forward
    output for Llama; every linear layer of an architecture peft has no entry for.
    """
    if config.method == "full":
        return None
    from peft import AdaLoraConfig, IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    targets = config.lora_target_modules.strip()
    target_modules = targets if targets == "all-linear" else _names(targets)
    if config.method in ("lora", "qlora"):
        return LoraConfig(
            task_type=task_type,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=target_modules,
        )
    if config.method == "adalora":
        return AdaLoraConfig(
            task_type=task_type,
            init_r=config.adalora_init_r,
            target_r=config.adalora_target_r,
            deltaT=config.adalora_delta_t,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=target_modules,
            total_step=ADALORA_UNSCHEDULED_STEPS,  # the run's steps, once known (schedule_adalora)
        )
    if config.method == "ia3":
        return IA3Config(task_type=task_type, **_ia3_modules(config, model_type))
    if config.method == "prompt_tuning":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=config.num_virtual_tokens)
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=config.num_virtual_tokens)


# AdaLoraConfig wants a total step count when it is built; the Trainer knows the run's only when training starts.
ADALORA_UNSCHEDULED_STEPS = 10**9


def _ia3_modules(config: RunConfig, model_type: str | None) -> dict:
    """IA3's ``target_modules`` and ``feedforward_modules`` (the targets whose input is scaled, not their output)."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    targets = config.lora_target_modules.strip()
    feedforward = _names(config.ia3_feedforward_modules)
    if targets != "all-linear":
        return {"target_modules": _names(targets), "feedforward_modules": feedforward}
    if feedforward:
        return {"target_modules": "all-linear", "feedforward_modules": feedforward}
    if model_type is None and getattr(config, "base_model", ""):
        model_type = model_type_of(config.base_model)
    if model_type in TARGETS and model_type in FEEDFORWARD:
        return {"target_modules": list(TARGETS[model_type]), "feedforward_modules": list(FEEDFORWARD[model_type])}
    return {"target_modules": "all-linear", "feedforward_modules": []}


def adalora_model(model):
    """The AdaLoRA tuner inside ``model`` (a PeftModel, possibly wrapped) that trains an adapter, or None."""
    from peft.tuners.adalora import AdaLoraModel

    for module in model.modules():
        if isinstance(module, AdaLoraModel) and hasattr(module, "rankallocator"):
            return module
    return None


def adalora_steps(value: float, total_steps: int) -> int:
    """``adalora_tinit`` / ``adalora_tfinal`` in steps: a fraction of ``total_steps`` below 1, else steps.

    >>> adalora_steps(0.1, 30), adalora_steps(5, 30), adalora_steps(0, 30)
    (3, 5, 0)
    """
    return round(value * total_steps) if value < 1 else int(value)


def schedule_adalora(model, config: RunConfig, total_steps: int):
    """Set the AdaLoRA rank schedule of ``model`` from the run's ``total_steps`` (optimizer steps) and return its
    tuner, whose ``update_and_allocate(step)`` must then run after every optimizer step, before the gradients are
    zeroed; None for the other methods. Refuses a schedule that leaves no step to prune the ranks in."""
    if config.method != "adalora":
        return None
    tuner = adalora_model(model)
    if tuner is None:
        raise RunnerError("method=adalora, but the model has no trainable AdaLoRA adapter.")
    tinit, tfinal = adalora_steps(config.adalora_tinit, total_steps), adalora_steps(config.adalora_tfinal, total_steps)
    if tinit >= total_steps - tfinal:
        raise RunnerError(
            f"AdaLoRA prunes its ranks between adalora_tinit ({tinit} steps) and the last adalora_tfinal "
            f"({tfinal} steps) of the run's {total_steps} steps, which leaves none: lower them or train longer."
        )
    adapter = tuner.peft_config[tuner.trainable_adapter_name]
    adapter.total_step, adapter.tinit, adapter.tfinal = total_steps, tinit, tfinal
    return tuner


def restore_rank_pattern(tuner) -> None:
    """After a resumed run loaded its checkpoint: AdaLoRA's rank pattern (which singular values are kept) read back
    from the weights, since checkpoints are saved at full rank without it; the final phase applies it after every
    step. Call it before the first optimizer step, which would move the pruned values off 0."""
    name = f"lora_E.{tuner.trainable_adapter_name}"
    pattern = {n: (p != 0).view(-1).tolist() for n, p in tuner.model.named_parameters() if name in n}
    tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = pattern


def trained_parameters(model, config: RunConfig) -> dict:
    """What a run trained, for its metrics, model card and run page: ``n_trainable_params`` of ``n_params`` (peft's
    count for adapters: the base's weights and the adapter's, 4-bit weights counted unpacked) and, for AdaLoRA,
    ``adalora_mean_rank``, the mean rank its matrices kept."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    metrics = {"n_trainable_params": int(trainable), "n_params": int(total)}
    tuner = adalora_model(model) if getattr(config, "method", None) == "adalora" else None
    if tuner is not None:
        adapter = tuner.trainable_adapter_name
        ranks = [
            int((layer.lora_E[adapter] != 0).sum())
            for layer in tuner.model.modules()
            if hasattr(layer, "lora_E") and adapter in getattr(layer, "lora_E", {})
        ]
        if ranks:
            metrics["adalora_mean_rank"] = sum(ranks) / len(ranks)
    return metrics


def quantization_config(precision: str):
    """QLoRA's 4-bit NF4 base weights with double quantisation (Dettmers et al. 2023)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
    )


# Our fields that share a name with a field of TRL's configs but mean something else, so are never passed through:
# generation_batch_size is our sampling batch (GRPO's is its rollout batch); reward_weights weight the reward models
# inside our one combined reward function (TRL's weight several reward functions).
NOT_TRL_FIELDS = frozenset({"generation_batch_size", "reward_weights"})


def training_arguments(
    config: RunConfig,
    args_class,
    checkpoint_dir: str,
    precision: str,
    has_eval: bool,
    renames: dict[str, str] | None = None,
    **overrides,
):
    """``args_class`` (TRL's RewardConfig, DPOConfig..., transformers' TrainingArguments) from ``config``.

    Every field of ``config`` that ``args_class`` has by the same name is passed through as it is (except
    :data:`NOT_TRL_FIELDS`), so a TRL option added to a kind's config reaches TRL with nothing else to change;
    ``renames`` maps our name to TRL's where they differ (``{"max_new_tokens": "max_completion_length"}``);
    ``overrides`` are values the runner computes. Precision, device, logging, evaluation and checkpointing are set
    here from our fields.
    """
    accepted = {f.name for f in dataclasses.fields(args_class)}
    values = {
        name: value for name, value in config.to_dict().items() if name in accepted and name not in NOT_TRL_FIELDS
    }
    values.update({theirs: getattr(config, ours) for ours, theirs in (renames or {}).items()})
    eval_steps = config.eval_steps if has_eval and config.eval_steps else None
    values.update(
        output_dir=checkpoint_dir,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda_available(),
        logging_strategy="steps",
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        # Checkpoints only as often as asked (ProgressCallback adds time-based ones); one kept, for resuming.
        save_strategy="steps",
        save_steps=config.save_steps or 10**9,
        save_total_limit=1,
        report_to=[],
        disable_tqdm=True,
    )
    values.update(overrides)
    return args_class(**values)


def examples_seen(steps: int, per_step: float, n_train: int) -> int:
    """How many of the ``n_train`` training examples a run saw: ``steps`` × the examples per optimizer step,
    capped at the dataset (a run stopped by max_steps after 12 steps of 8 saw 96 of 540; one that made several
    passes saw all 540).

    >>> examples_seen(12, 8, 540), examples_seen(400, 8, 540)
    (96, 540)
    """
    return min(int(steps * per_step), n_train)


def train_to_end(
    trainer,
    reporter,
    checkpoint_dir: str,
    collect: Callable[[], dict] | None = None,
    examples_per_sample: int = 1,
) -> dict:
    """The block every Trainer-based runner shares, after building ``trainer`` with ``reporter`` (from
    :func:`make_progress_callback`) among its callbacks: train, resuming from the newest complete checkpoint in
    ``checkpoint_dir``; raise RunCancelled when the progress callback asked to stop; collect ``train_loss``,
    ``train_steps``, ``train_runtime``, what the run was trained on (``n_train``: the training examples after
    filtering; ``n_train_examples_seen``: how many of them the steps covered; ``train_epochs``), the weights it
    trained (:func:`trained_parameters`: ``n_trainable_params`` of ``n_params``) and what
    ``collect()`` adds (every process runs it: evaluation is collective); then wait for every process of a
    multi-GPU launch. The caller saves where ``trainer.accelerator.is_main_process``.

    ``examples_per_sample``: the batch rows one training example becomes (GRPO and RLOO: ``num_generations``
    responses per prompt, each used ``num_iterations`` times).
    """
    quiet_trainer(trainer)
    result = trainer.train(resume_from_checkpoint=last_checkpoint(checkpoint_dir))
    if reporter.stopped:
        raise RunCancelled()
    args = trainer.args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    n_train = len(trainer.train_dataset)
    metrics = {
        "train_loss": float(result.training_loss),
        "train_steps": int(result.global_step),
        "train_runtime": float(result.metrics.get("train_runtime", 0.0)),
        "train_epochs": float(trainer.state.epoch or 0.0),
        "n_train": n_train,
        "n_train_examples_seen": examples_seen(result.global_step, per_step / examples_per_sample, n_train),
    }
    if getattr(trainer, "model", None) is not None:
        metrics.update(trained_parameters(trainer.model, getattr(reporter, "config", None)))
    if collect is not None:
        metrics.update(collect())
    trainer.accelerator.wait_for_everyone()
    return metrics


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
        """Also the one place every Trainer-based run steps AdaLoRA's rank allocation (method=adalora)."""

        def __init__(self):
            self.stopped = False
            self.last_save = time.monotonic()
            self.config = config
            self.adalora = None
            self.adalora_updates = 0
            self.rank_pattern = None

        def _emit(self, state, event: dict) -> None:
            if not state.is_world_process_zero:
                return
            if progress_callback(event):
                self.stopped = True

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.adalora = schedule_adalora(model, config, state.max_steps) if model is not None else None
            if self.adalora is not None and state.global_step > 0:  # resumed: the checkpoint is loaded by now
                restore_rank_pattern(self.adalora)
            self._emit(state, {"event": "start", "step": state.global_step, "total": state.max_steps})

        def on_optimizer_step(self, args, state, control, **kwargs):
            # After optimizer.step() and before the gradients are zeroed (transformers' Trainer), as AdaLoRA's
            # sensitivity scores read them; global_step is still the 0-based index of this step.
            if self.adalora is not None:
                self.adalora.update_and_allocate(state.global_step)
                self.adalora_updates += 1

        def on_step_end(self, args, state, control, **kwargs):
            self._emit(state, {"event": "progress", "step": state.global_step, "total": state.max_steps})
            if config.save_minutes and time.monotonic() - self.last_save > 60 * config.save_minutes:
                control.should_save = True
            if state.global_step >= state.max_steps:
                control.should_save = False  # the finished model is saved as the artifact; a checkpoint is waste
                # The last step is always logged, so a run whose logging_steps exceeds its steps (or does not
                # divide them) still ends with a loss point: Trainer skips it when that step was logged already.
                control.should_log = True
            if self.stopped:
                control.should_training_stop = True
                control.should_save = False
            if self.adalora is not None and control.should_save:
                # A checkpoint keeps AdaLoRA's matrices at full rank (pruned values are 0), so that it loads back
                # into the model it resumes; peft would cut them to the ranks kept. Restored in on_save.
                self.rank_pattern = self.adalora.peft_config[self.adalora.trainable_adapter_name].rank_pattern
                self.adalora.peft_config[self.adalora.trainable_adapter_name].rank_pattern = None
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            values = {
                k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            if values:
                self._emit(
                    state, {"event": "metrics", "step": state.global_step, "total": state.max_steps, "metrics": values}
                )

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()
            if self.adalora is not None:
                self.adalora.peft_config[self.adalora.trainable_adapter_name].rank_pattern = self.rank_pattern
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


def last_logged(trainer, names, prefix: str = "") -> dict:
    """The newest logged value of each of ``names``, as ``prefix + name`` (TRL averages a logged metric over the
    steps since the previous log): the training side of a run's final metrics."""
    found = {}
    for entry in reversed(trainer.state.log_history):
        for name in names:
            if name in entry and prefix + name not in found:
                found[prefix + name] = float(entry[name])
    return found


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
