"""Process reward models (PRM800K-style) from a ``steps`` snapshot. No Django here: the worker runs this in a
subprocess.

The snapshot is TRL's stepwise format: rows of ``prompt``, ``completions`` (the steps of one response) and
``labels`` (one per step: booleans, or the names ``positive`` / ``negative`` / ``neutral``). TRL 1.16 has no
PRMTrainer any more, so this is its recipe on transformers: an ``AutoModelForTokenClassification`` reads the prompt's
tokens and then each step followed by ``step_separator``; only the step's last token (the separator) carries its
label, every other token is -100, and a plain ``Trainer`` minimises the cross-entropy there. Booleans give two
classes (negative, positive); a snapshot with ``neutral`` steps gives three (negative, neutral, positive).

Metrics on the ``test`` split:

- ``eval_step_accuracy``: the share of labelled steps whose predicted class (argmax) is the annotated one;
  ``eval_majority_step_accuracy`` is the same for always predicting the training split's commonest label.
- ``eval_first_error_f1``: ProcessBench's F1 (Zheng et al. 2024). Per response, the first wrong step is the index
  of the first ``negative`` step, or none (a neutral step is no mistake); the prediction is the first step whose
  predicted class is negative. ``eval_first_error_accuracy_erroneous`` is the share of responses with a mistake
  whose first wrong step is found exactly, ``eval_first_error_accuracy_correct`` the share of error-free responses
  predicted error-free, and the F1 is their harmonic mean (absent when the test split lacks either kind).
  Steps cut off by ``max_length`` are left out of both sides.

The folder holds safetensors, the tokenizer and ``arbiter.json`` with ``"kind": "prm"``, the separator, the label
names and the ``aggregate`` (min or prod), so training.scoring loads it as a reward model that scores a response by
its steps (:class:`training.scoring.PRMScorer`).

    config = PRMRunConfig.from_dict({"base_model": "/models/tiny", "max_steps": 20, "learning_rate": 1e-3})
    metrics = run(config, {"train": "train.jsonl", "test": "test.jsonl"}, "out/", print)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..scoring import PRMScorer, aggregate_steps, encode_steps
from .base import (
    RunnerError,
    check_artifact_folder,
    check_environment,
    emit_log,
    load_model,
    load_tokenizer,
    make_progress_callback,
    offline_environment,
    peft_config,
    quantization_config,
    resolve_precision,
    train_to_end,
    training_arguments,
)
from .data import read_split
from .prm_config import CONFIG_CLASS, PRMRunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
from .reward import PLAIN_CHAT_TEMPLATE, mean_and_spread

TWO_LABELS = ["negative", "positive"]
THREE_LABELS = ["negative", "neutral", "positive"]
IGNORE = -100  # the label of every token that is not the end of a step (cross-entropy skips it)


# --- data ---------------------------------------------------------------------------------------------


def label_names(rows: list[dict]) -> list[str]:
    """Two classes for boolean labels (and names without ``neutral``), three when some step is neutral."""
    if any(label == "neutral" for row in rows for label in row["labels"]):
        return list(THREE_LABELS)
    return list(TWO_LABELS)


def label_index(label, names: list[str]) -> int:
    if isinstance(label, bool) or label in (0, 1):
        return names.index("positive" if label else "negative")
    if label in names:
        return names.index(label)
    raise RunnerError(f"Unknown step label {label!r}: use true/false or {', '.join(names)}.")


def check_rows(rows: list[dict], split: str) -> None:
    for number, row in enumerate(rows, 1):
        missing = {"prompt", "completions", "labels"} - set(row)
        if missing:
            raise RunnerError(
                f"The {split} split has no {', '.join(sorted(missing))} (row {number}): it is not a steps snapshot "
                "(TRL's stepwise format: prompt, completions, labels)."
            )
        if len(row["completions"]) != len(row["labels"]):
            raise RunnerError(
                f"Row {number} of the {split} split has {len(row['completions'])} steps but "
                f"{len(row['labels'])} labels."
            )


def tokenize_row(tokenizer, row: dict, config: PRMRunConfig, names: list[str], last_step_only: bool) -> dict | None:
    """``{"input_ids", "labels"}`` of one response: the class of each step on its last token, -100 elsewhere
    (None when no step fits the length limits)."""
    ids, positions = encode_steps(
        tokenizer,
        row["prompt"],
        list(row["completions"]),
        config.step_separator,
        config.max_length,
        config.max_prompt_length,
        config.max_completion_length,
    )
    if not positions:
        return None
    labels = [IGNORE] * len(ids)
    targets = [label_index(label, names) for label in row["labels"][: len(positions)]]
    if last_step_only:
        if len(positions) < len(row["labels"]):
            return None  # the last step was cut off: nothing to learn from
        positions, targets = positions[-1:], targets[-1:]
    for position, target in zip(positions, targets):
        labels[position] = target
    return {"input_ids": ids, "labels": labels}


# --- metrics (pure) -----------------------------------------------------------------------------------------


def first_error(classes: list[int], negative: int) -> int:
    """The index of the first negative step, or -1 when there is none."""
    return next((i for i, c in enumerate(classes) if c == negative), -1)


def step_metrics(true: list[list[int]], predicted: list[list[int]], negative: int) -> dict:
    """Step accuracy and ProcessBench's first-error F1 (see the module docstring) of per-response class lists.

    >>> step_metrics([[1, 0], [1, 1]], [[1, 0], [1, 0]], negative=0)["first_error_f1"]
    0.0
    """
    pairs = [(t, p) for ts, ps in zip(true, predicted) for t, p in zip(ts, ps)]
    result = {
        "step_accuracy": sum(t == p for t, p in pairs) / len(pairs) if pairs else float("nan"),
        "steps": len(pairs),
        "responses": len(true),
    }
    erroneous = [(first_error(t, negative), first_error(p, negative)) for t, p in zip(true, predicted)]
    wrong = [p == t for t, p in erroneous if t >= 0]
    right = [p == -1 for t, p in erroneous if t < 0]
    if wrong:
        result["first_error_accuracy_erroneous"] = sum(wrong) / len(wrong)
    if right:
        result["first_error_accuracy_correct"] = sum(right) / len(right)
    if wrong and right:
        a, b = result["first_error_accuracy_erroneous"], result["first_error_accuracy_correct"]
        result["first_error_f1"] = 2 * a * b / (a + b) if a + b else 0.0
    return result


def evaluate(scorer: PRMScorer, rows: list[dict], names: list[str], majority: int, batch_size: int) -> tuple:
    """Metrics of ``scorer`` on labelled rows, and each response's aggregate score (for the reward statistics)."""
    probabilities = scorer.step_probabilities(
        [row["prompt"] for row in rows], [list(row["completions"]) for row in rows], batch_size
    )
    negative = names.index("negative")
    true, predicted, scores = [], [], []
    for row, steps in zip(rows, probabilities):
        seen = row["labels"][: len(steps)]
        true.append([label_index(label, names) for label in seen])
        predicted.append([max(range(len(p)), key=p.__getitem__) for p in steps])
        scores.append(aggregate_steps([1.0 - p[negative] for p in steps], scorer.aggregate))
    metrics = step_metrics(true, predicted, negative)
    baseline = step_metrics(true, [[majority] * len(t) for t in true], negative)
    metrics["majority_step_accuracy"] = baseline["step_accuracy"]
    return metrics, scores


# --- the run ------------------------------------------------------------------------------------------


def run(config: PRMRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Train a process reward model; write it to ``output_dir``; return its metrics (see the module docstring)."""
    check_environment(config)
    offline_environment()
    if not config.base_model or not Path(config.base_model).is_dir():
        raise RunnerError(f"The base model folder {config.base_model!r} does not exist.")
    if "train" not in dataset_paths:
        raise RunnerError("No train split to learn from.")
    train_rows = read_split(dataset_paths["train"])
    test_rows = read_split(dataset_paths["test"]) if "test" in dataset_paths else []
    check_rows(train_rows, "train")
    check_rows(test_rows, "test")
    train_rows = [row for row in train_rows if row["completions"]]
    if not train_rows:
        raise RunnerError("The train split is empty: there are no labelled steps to learn from.")
    precision = resolve_precision(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="arbiter-ckpt-") as scratch:
        return _train(
            config, train_rows, test_rows, output_dir, progress_callback, str(checkpoint_dir or scratch), precision
        )


def _load_base(config: PRMRunConfig, names: list[str], precision: str):
    import torch
    from transformers import AutoModelForTokenClassification, set_seed

    set_seed(config.seed)  # before loading: the new classification head is initialised then
    tokenizer = load_tokenizer(config.base_model)
    kwargs = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
        "dtype": torch.float32,
        # A reward model's one-output head (or another classifier's) is replaced by a fresh head of len(names).
        "ignore_mismatched_sizes": True,
    }
    if config.method == "qlora":
        kwargs["quantization_config"] = quantization_config(precision)
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float16
    model = load_model(AutoModelForTokenClassification, config.base_model, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if config.method != "full":
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(config, "TOKEN_CLS"))
    return model, tokenizer


def _train(config, train_rows, test_rows, output_dir, progress_callback, checkpoints, precision) -> dict:
    import datasets
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    names = label_names(train_rows + test_rows)
    model, tokenizer = _load_base(config, names, precision)
    if any(isinstance(row["prompt"], list) for row in train_rows + test_rows):
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE  # saved with the tokenizer: scoring reads prompts alike
    encoded = [tokenize_row(tokenizer, row, config, names, config.train_on_last_step_only) for row in train_rows]
    encoded = [row for row in encoded if row is not None]
    if not encoded:
        raise RunnerError(f"No training response has a step within max_length={config.max_length} tokens; raise it.")
    counts = [0] * len(names)
    for row in encoded:
        for label in row["labels"]:
            if label != IGNORE:
                counts[label] += 1
    majority = max(range(len(names)), key=counts.__getitem__)
    args = training_arguments(
        config, TrainingArguments, checkpoints, precision, has_eval=False, remove_unused_columns=False
    )
    reporter = make_progress_callback(progress_callback, config)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(encoded),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
        callbacks=[reporter],
    )
    emit_log(
        progress_callback,
        f"{len(encoded)} training responses ({sum(counts)} labelled steps; classes {', '.join(names)}: "
        f"{', '.join(map(str, counts))}), precision {precision}, method {config.method}",
    )
    metrics = train_to_end(trainer, reporter, checkpoints)
    metrics["n_train_steps_labelled"] = sum(counts)
    if not trainer.accelerator.is_main_process:
        return metrics
    unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()
    info = {
        "step_separator": config.step_separator,
        "label_names": names,
        "aggregate": config.aggregate,
        "config": config.to_dict(),
    }
    scorer = PRMScorer(unwrapped, tokenizer, info, config.max_length, config.aggregate)
    evaluated = [row for row in test_rows if row["completions"]]
    scores = []
    if evaluated:
        result, scores = evaluate(scorer, evaluated, names, majority, config.per_device_eval_batch_size)
        metrics.update({f"eval_{key}": value for key, value in result.items()})
    if len(scores) < 64:  # too few held-out responses to estimate the spread: score training responses too
        sample = train_rows[:128]
        scores += evaluate(scorer, sample, names, majority, config.per_device_eval_batch_size)[1]
    stats = mean_and_spread(scores)
    metrics.update(reward_mean=stats["mean"], reward_std=stats["std"])
    saved = _save(unwrapped, tokenizer, config, output_dir)
    body = {"kind": "prm", "objective": "process", **info, "metrics": metrics, "reward_stats": stats, **saved}
    (output_dir / "arbiter.json").write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")
    return metrics


def _save(model, tokenizer, config, output_dir: Path) -> dict:
    """Full weights (merged for LoRA) or, for adapters that cannot merge, the adapter over its base model."""
    is_adapter = config.method != "full" and not (config.method == "lora" and config.merge_adapter)
    if config.method == "lora" and config.merge_adapter:
        model = model.merge_and_unload()
    model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    check_artifact_folder(output_dir)
    return {"is_adapter": is_adapter, "base_model_path": config.base_model}
