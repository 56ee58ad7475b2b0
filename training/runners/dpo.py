"""Direct Preference Optimization of a policy with TRL's DPOTrainer. No Django here: the worker runs this in a
subprocess.

DPO (Rafailov et al. 2023) trains the policy directly on preference pairs, without a reward model: the implicit
reward of a response is ``β · (log π(y|x) − log π_ref(y|x))``, and the loss pushes the chosen response's reward
above the rejected one's. It reads a ``trl`` export (``prompt``, ``chosen``, ``rejected``; ties are left out), as
conversations (a text prompt becomes a user turn, a text response an assistant turn).

The reference model π_ref:

- ``base`` (TRL's default): a frozen copy of the starting policy; with LoRA, QLoRA and virtual tokens the same
  model with its adapter disabled, so no second copy is held in memory.
- ``model``: another policy folder (``ref_model``), e.g. the SFT model a DPO run starts from a later checkpoint of.
- ``none``: reference-free DPO (the reward is ``β · log π(y|x)``). TRL 1.16 dropped its ``reference_free`` flag;
  Arbiter gets it by handing TRL reference log-probabilities of 0 through its precomputed-reference path.

``precompute_ref_log_probs`` computes the reference's log-probabilities once before training, so the reference
does not sit in memory during it. Each logged step carries TRL's ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins`` and ``rewards/accuracies`` (the plots); the test split gives the same on held-out pairs.

    config = DPORunConfig.from_dict({"base_model": "/models/sft-policy", "beta": 0.1, "max_steps": 100})
    metrics = run(config, {"train": "train.jsonl", "test": "test.jsonl"}, "out/", print)
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from .base import (
    RunnerError,
    check_environment,
    emit_log,
    load_model,
    load_tokenizer,
    make_progress_callback,
    offline_environment,
    peft_config,
    resolve_precision,
    train_to_end,
    training_arguments,
)
from .data import as_messages, read_split
from .dpo_config import CONFIG_CLASS, DPORunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
from .policy import ensure_policy_chat_template, load_policy_model, save_policy
from .sft import check_trainable_base

REWARD_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


# --- data ---------------------------------------------------------------------------------------------


def preference_rows(rows: list[dict], split: str = "train") -> list[dict]:
    """``trl`` export rows → conversational ``prompt``/``chosen``/``rejected`` rows; ties (no preference) left out."""
    pairs = []
    for number, row in enumerate(rows, 1):
        missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
        if missing:
            raise RunnerError(f"The {split} split, row {number}: no {', '.join(missing)}; DPO reads a trl export.")
        if row.get("tie"):
            continue
        pairs.append(
            {
                "prompt": as_messages(row["prompt"], "user"),
                "chosen": as_messages(row["chosen"], "assistant"),
                "rejected": as_messages(row["rejected"], "assistant"),
            }
        )
    return pairs


# --- the trainer ----------------------------------------------------------------------------------------


def _trainer_class(reference_free: bool):
    from trl import DPOTrainer

    if not reference_free:
        return DPOTrainer

    class ReferenceFreeDPOTrainer(DPOTrainer):
        """Reference-free DPO through TRL's own hook: the "precomputed" reference log-probabilities are all 0."""

        def _precompute_ref_logps(self, dataset, name, batch_size):
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    return ReferenceFreeDPOTrainer


def _reference(config: DPORunConfig, model):
    """The reference model to hand TRL, or None where TRL needs none (adapters, precomputed or no reference)."""
    if config.reference == "none":
        return None
    if config.reference == "model":
        if not Path(config.ref_model).is_dir():
            raise RunnerError(f"The reference model folder {config.ref_model!r} does not exist.")
        import torch
        from transformers import AutoModelForCausalLM

        return load_model(AutoModelForCausalLM, config.ref_model, dtype=torch.float32).eval().requires_grad_(False)
    if config.method != "full" or config.precompute_ref_log_probs:
        return None  # the adapter disabled is the reference; or TRL precomputes from the untrained model
    # A copy of the loaded policy, not TRL's reload by name: the starting policy may be a merged adapter.
    return copy.deepcopy(model).eval().requires_grad_(False)


# --- the run ------------------------------------------------------------------------------------------


def run(config: DPORunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Train the policy with DPO on the train split; evaluate on the test split; write the policy to ``output_dir``."""
    import datasets
    from trl import DPOConfig

    check_environment(config)
    offline_environment()
    check_trainable_base(config)
    if "train" not in dataset_paths:
        raise RunnerError("No train split to learn from.")
    precision = resolve_precision(config)
    train = preference_rows(read_split(dataset_paths["train"]), "train")
    if not train:
        raise RunnerError("The train split has no preference pairs (ties are left out).")
    tests = preference_rows(read_split(dataset_paths["test"]), "test") if "test" in dataset_paths else []

    tokenizer = load_tokenizer(config.base_model)
    ensure_policy_chat_template(tokenizer)
    model = load_policy_model(config.base_model, config, precision)
    reference = _reference(config, model)
    reference_free = config.reference == "none"
    with tempfile.TemporaryDirectory(prefix="arbiter-ckpt-") as scratch:
        checkpoints = str(checkpoint_dir or scratch)
        # Our names are TRL's (beta, loss_type, label_smoothing, sync_ref_model...). An empty loss_weights is TRL's
        # None (1 each); reference-free DPO goes through TRL's precomputed-reference path (see _trainer_class).
        args = training_arguments(
            config,
            DPOConfig,
            checkpoints,
            precision,
            has_eval=bool(tests),
            loss_weights=list(config.loss_weights) or None,
            precompute_ref_log_probs=config.precompute_ref_log_probs or reference_free,
        )
        reporter = make_progress_callback(progress_callback, config)
        trainer = _trainer_class(reference_free)(
            model=model,
            ref_model=reference,
            args=args,
            train_dataset=datasets.Dataset.from_list(train),
            eval_dataset=datasets.Dataset.from_list(tests) if tests else None,
            processing_class=tokenizer,
            peft_config=peft_config(config, "CAUSAL_LM"),
            callbacks=[reporter],
        )
        if not len(trainer.train_dataset):
            raise RunnerError(f"Every training prompt fills max_length={config.max_length} tokens; raise it.")
        emit_log(
            progress_callback,
            f"{len(trainer.train_dataset)} preference pairs (of {len(train)}), reference "
            f"{config.reference}, precision {precision}, method {config.method}",
        )

        def collect() -> dict:
            metrics = {
                "n_train": len(trainer.train_dataset),
                **_last_logged(trainer, REWARD_METRICS[1:], prefix="train_"),
            }
            if tests:
                results = trainer.evaluate()
                metrics.update({k: float(v) for k, v in results.items() if k.removeprefix("eval_") in REWARD_METRICS})
                metrics["n_eval"] = len(trainer.eval_dataset)
            return metrics

        metrics = train_to_end(trainer, reporter, checkpoints, collect)
        if trainer.accelerator.is_main_process:
            policy = trainer.accelerator.unwrap_model(trainer.model)
            info = {"kind": "dpo", "reference": config.reference, "ref_model_path": config.ref_model or None}
            save_policy(policy, tokenizer, config, output_dir, metrics, info)
    return metrics


def _last_logged(trainer, names, prefix: str) -> dict:
    """The newest logged value of each of ``names`` (TRL averages them over the steps since the previous log)."""
    found = {}
    for entry in reversed(trainer.state.log_history):
        for name in names:
            if name in entry and prefix + name not in found:
                found[prefix + name] = float(entry[name])
    return found
