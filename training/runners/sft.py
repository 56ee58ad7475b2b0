"""Supervised fine-tuning of a policy with TRL's SFTTrainer. No Django here: the worker runs this in a subprocess.

Two sources of examples:

- ``demonstrations``: the ``sft`` export, rows of ``messages`` (the prompt's turns, then the demonstration as the
  assistant's turn): demonstration projects, and the rewrites annotators wrote for "both bad" pairs.
- ``chosen``: the chosen responses of a ``trl`` export (rows of ``prompt``, ``chosen``, ``rejected``), ties left out:
  supervised fine-tuning on the preferred answers before (or instead of) DPO.

Either way every row becomes a conversational prompt/completion pair, the format whose loss TRL computes on the
completion only (``completion_only_loss``, on by default): the policy learns to answer, not to write prompts. A
model without a chat template gets ``policy.PLAIN_POLICY_CHAT_TEMPLATE``, saved with its tokenizer.

:func:`fine_tune` is the reusable core (rejection sampling fine-tunes on its kept samples with it);
:func:`run` reads the snapshot splits and calls it.

    config = SFTRunConfig.from_dict({"base_model": "/models/tiny-causal", "max_steps": 20, "learning_rate": 1e-3})
    metrics = run(config, {"train": "train.jsonl", "test": "test.jsonl"}, "out/", print)
"""

from __future__ import annotations

import tempfile

from .base import (
    RunnerError,
    check_environment,
    emit_log,
    is_adapter_folder,
    last_logged,
    load_tokenizer,
    make_progress_callback,
    offline_environment,
    peft_config,
    resolve_precision,
    saves_adapter,
    train_to_end,
    training_arguments,
)
from .data import as_messages, read_split
from .policy import check_policy_base, ensure_policy_chat_template, load_policy_model, save_policy
from .sft_config import CONFIG_CLASS, SFTRunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS

# --- data ---------------------------------------------------------------------------------------------


def demonstration_rows(rows: list[dict], split: str = "train") -> list[dict]:
    """``sft`` export rows (``messages`` ending with the assistant's demonstration) → prompt/completion rows."""
    examples = []
    for number, row in enumerate(rows, 1):
        messages = row.get("messages")
        if not isinstance(messages, list):
            raise RunnerError(
                f'The {split} split, row {number}: no "messages"; source=demonstrations reads an sft export '
                "(use source=chosen for a trl export)."
            )
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise RunnerError(
                f"The {split} split, row {number}: the messages must be a prompt then the assistant's answer."
            )
        examples.append(
            {"prompt": as_messages(messages[:-1], "user"), "completion": as_messages(messages[-1:], "assistant")}
        )
    return examples


def chosen_rows(rows: list[dict], split: str = "train") -> list[dict]:
    """``trl`` export rows → prompt/completion rows of their chosen responses (ties are no one's choice: left out)."""
    examples = []
    for number, row in enumerate(rows, 1):
        if "prompt" not in row or "chosen" not in row:
            raise RunnerError(
                f'The {split} split, row {number}: no "prompt" and "chosen"; source=chosen reads a trl export '
                "(use source=demonstrations for an sft export)."
            )
        if row.get("tie"):
            continue
        examples.append(
            {"prompt": as_messages(row["prompt"], "user"), "completion": as_messages(row["chosen"], "assistant")}
        )
    return examples


# --- training -----------------------------------------------------------------------------------------


def check_trainable_base(config) -> None:
    """The starting policy can be loaded, and what training writes over it can be loaded again: an adapter
    saved over an adapter or a GGUF file would name a base that ``base.load_model`` cannot open."""
    check_policy_base(config)
    if saves_adapter(config) and (
        is_adapter_folder(config.base_model) or str(config.base_model).lower().endswith(".gguf")
    ):
        raise RunnerError(
            f"{config.base_model} is itself an adapter (or a GGUF file); train over it with method=full, or "
            "method lora, adalora or ia3 with merge_adapter on, so that the result is a plain model."
        )


def fine_tune(
    config,
    train_rows: list[dict],
    eval_rows: list[dict] | None,
    output_dir,
    progress_callback,
    checkpoint_dir=None,
    info: dict | None = None,
) -> dict:
    """Fine-tune ``config.base_model`` on prompt/completion rows with TRL's SFTTrainer; save the policy; return metrics.

    ``train_rows`` and ``eval_rows`` are ``{"prompt": text or messages, "completion": text or messages}``; texts
    become a user turn and an assistant turn. ``config`` is any :class:`PolicyRunConfig` (the common fields are
    used; ``completion_only_loss`` and ``loss_type`` when it has them). ``info`` goes into ``arbiter.json``
    (default ``{"kind": "sft"}``). Checkpoints go to ``checkpoint_dir`` (a later call resumes from the newest one).

        fine_tune(config, [{"prompt": "Hi?", "completion": "Hello."}], None, "out/", print, info={"kind": "rejection_sampling"})
    """
    import datasets
    from trl import SFTConfig, SFTTrainer

    check_environment(config)
    offline_environment()
    check_trainable_base(config)
    if not train_rows:
        raise RunnerError("There are no examples to fine-tune on.")
    precision = resolve_precision(config)
    train = datasets.Dataset.from_list([_conversation(row) for row in train_rows])
    evals = datasets.Dataset.from_list([_conversation(row) for row in eval_rows]) if eval_rows else None

    tokenizer = load_tokenizer(config.base_model)
    ensure_policy_chat_template(tokenizer)
    model = load_policy_model(config.base_model, config, precision)
    with tempfile.TemporaryDirectory(prefix="arbiter-ckpt-") as scratch:
        checkpoints = str(checkpoint_dir or scratch)
        # completion_only_loss and loss_type pass through by name from an SFT config; rejection sampling's config
        # has neither, and TRL's defaults (the completion only, for prompt/completion rows; nll) are the same.
        args = training_arguments(config, SFTConfig, checkpoints, precision, has_eval=evals is not None, packing=False)
        reporter = make_progress_callback(progress_callback, config)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evals,
            processing_class=tokenizer,
            peft_config=peft_config(config, "CAUSAL_LM"),
            callbacks=[reporter],
        )
        if not len(trainer.train_dataset):
            raise RunnerError(
                f"No example keeps a response token within max_length={config.max_length} tokens; raise it."
            )
        emit_log(
            progress_callback, f"{len(trainer.train_dataset)} examples, precision {precision}, method {config.method}"
        )

        def collect() -> dict:
            metrics = {"n_train": len(trainer.train_dataset)}
            # TRL logs token accuracy; not every setup does.
            metrics.update(last_logged(trainer, ["mean_token_accuracy"], prefix="train_"))
            if evals is not None:
                results = trainer.evaluate()
                metrics.update(
                    {
                        k: float(v)
                        for k, v in results.items()
                        if k in ("eval_loss", "eval_mean_token_accuracy", "eval_entropy")
                    }
                )
                metrics["n_eval"] = len(trainer.eval_dataset)
            return metrics

        metrics = train_to_end(trainer, reporter, checkpoints, collect)
        if trainer.accelerator.is_main_process:
            model = trainer.accelerator.unwrap_model(trainer.model)
            save_policy(model, tokenizer, config, output_dir, metrics, info or {"kind": "sft"})
    return metrics


def _conversation(row: dict) -> dict:
    return {"prompt": as_messages(row["prompt"], "user"), "completion": as_messages(row["completion"], "assistant")}


def run(config: SFTRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Fine-tune on the train split (the test split, when there is one, gives the eval loss); see the module docstring."""
    if "train" not in dataset_paths:
        raise RunnerError("No train split to learn from.")
    convert = demonstration_rows if config.source == "demonstrations" else chosen_rows
    train = convert(read_split(dataset_paths["train"]), "train")
    if not train:
        raise RunnerError("The train split is empty: there are no demonstrations to learn from.")
    evals = convert(read_split(dataset_paths["test"]), "test") if "test" in dataset_paths else None
    return fine_tune(
        config,
        train,
        evals,
        output_dir,
        progress_callback,
        checkpoint_dir,
        info={"kind": "sft", "source": config.source},
    )
