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

With ``pair_weights`` (off by default) each pair's loss is multiplied by its ``weight`` column, the reliability of
the annotators who voted for it (the export's ``weights`` option), normalised to mean 1 over the training pairs
(:class:`WeightedDPOTrainer`).

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
    last_logged,
    load_model,
    load_tokenizer,
    make_progress_callback,
    offline_environment,
    peft_config,
    resolve_precision,
    train_to_end,
    training_arguments,
)
from .data import as_messages, normalised_weights, read_split
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


def preference_rows(rows: list[dict], split: str = "train", weighted: bool = False) -> list[dict]:
    """``trl`` export rows → conversational ``prompt``/``chosen``/``rejected`` rows (and ``weight`` when
    ``weighted``); ties (no preference) left out."""
    pairs = []
    for number, row in enumerate(rows, 1):
        missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
        if missing:
            raise RunnerError(f"The {split} split, row {number}: no {', '.join(missing)}; DPO reads a trl export.")
        if row.get("tie"):
            continue
        pair = {
            "prompt": as_messages(row["prompt"], "user"),
            "chosen": as_messages(row["chosen"], "assistant"),
            "rejected": as_messages(row["rejected"], "assistant"),
        }
        if weighted:
            weight = row.get("weight")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise RunnerError(
                    f"The {split} split, row {number}: pair_weights needs a weight of at least 0 in every row "
                    "(export the snapshot with weights=dawid-skene or bradley-terry)."
                )
            pair["weight"] = float(weight)
        pairs.append(pair)
    return pairs


# --- the trainer ----------------------------------------------------------------------------------------


def _trainer_class(reference_free: bool, weighted: bool = False):
    from trl import DPOTrainer

    base = _weighted_trainer_class(DPOTrainer) if weighted else DPOTrainer
    if not reference_free:
        return base

    class ReferenceFreeDPOTrainer(base):
        """Reference-free DPO through TRL's own hook: the "precomputed" reference log-probabilities are all 0."""

        def _precompute_ref_logps(self, dataset, name, batch_size):
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    return ReferenceFreeDPOTrainer


def _weighted_trainer_class(base):
    class WeightedDPOTrainer(base):
        """DPO with a weight per pair: the gradient of mean(w · loss) over the batch, w normalised to mean 1 over
        the training pairs.

        TRL computes each pair's loss from the policy's per-token log-probabilities of that pair's two sequences
        and averages over the batch inside one method, with no per-pair hook. So the weight is applied where the
        pair's sequences enter the loss: a gradient hook on the policy's ``log_probs`` multiplies the gradient of
        each pair's two rows by its weight, which is exactly the gradient of the weighted mean (each pair's loss
        depends on its own rows only; the aot losses, which sort the batch, are refused by the config). The
        logged loss stays TRL's unweighted mean; WPO's ``use_weighting`` (computed without gradient) composes
        with it. The reference model's forward passes carry no gradient and are untouched.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.data_collator = _with_weights(self.data_collator)
            self._pair_weight = None
            self.accelerator.unwrap_model(self.model).register_forward_hook(self._weigh_log_probs)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "weight" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "weight"]

        def _weigh_log_probs(self, module, args, output):
            log_probs = getattr(output, "log_probs", None)
            if self._pair_weight is None or log_probs is None or not log_probs.requires_grad:
                return output
            weight = self._pair_weight.to(device=log_probs.device, dtype=log_probs.dtype)
            rows = weight.repeat(2).view(-1, *([1] * (log_probs.dim() - 1)))  # the batch is [chosen, rejected]
            log_probs.register_hook(lambda grad: grad * rows)
            return output

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self._pair_weight = inputs.pop("weight", None)  # training batches only: held-out pairs have none
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self._pair_weight = None

        def compute_ref_log_probs(self, model, inputs):
            return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "weight"})

    return WeightedDPOTrainer


def _with_weights(collator):
    """``collator`` that also puts the examples' ``weight`` into the batch, when they have one."""
    import torch

    def collate(examples):
        batch = collator(examples)
        if "weight" in examples[0]:
            batch["weight"] = torch.tensor([float(example["weight"]) for example in examples], dtype=torch.float)
        return batch

    return collate


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
    weighted = config.pair_weights != "none"
    train = preference_rows(read_split(dataset_paths["train"]), "train", weighted)
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
        trainer = _trainer_class(reference_free, weighted)(
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
        if weighted:  # after TRL's max_length filter: the mean is over the pairs trained on
            trainer.train_dataset = normalised_weights(trainer.train_dataset)
        emit_log(
            progress_callback,
            f"{len(trainer.train_dataset)} preference pairs (of {len(train)}), reference "
            f"{config.reference}, precision {precision}, method {config.method}",
        )

        def collect() -> dict:
            metrics = {
                "n_train": len(trainer.train_dataset),
                **last_logged(trainer, REWARD_METRICS[1:], prefix="train_"),
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
