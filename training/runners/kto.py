"""Kahneman-Tversky Optimization of a policy with TRL's KTOTrainer. No Django here: the worker runs this in a
subprocess.

KTO (Ethayarajh et al. 2024) learns from unpaired feedback, a thumbs up or down on single responses: it raises the
implicit reward ``β · (log π(y|x) − log π_ref(y|x))`` of desirable responses above a reference point z₀ (an
estimate of the KL between the policy and the reference, from mismatched prompts and responses of the same batch)
and lowers that of undesirable ones below it. It reads a ``kto`` export (``prompt``, ``completion``, boolean
``label``: pairwise winners and losers, a ranking's top and bottom, or a rating's mean score against a threshold),
as conversations (a text prompt becomes a user turn, a text response an assistant turn).

Desirable and undesirable examples are weighted so that ``desirable_weight·n_D / (undesirable_weight·n_U)`` lies
in [1, 4/3] (the paper's rule, which TRL documents): weights left empty are computed from the train split's counts
(kto_config.balanced_weights), and the counts and weights are logged. The reference is the starting policy: a frozen
copy with full training, the model with its adapter disabled with LoRA, QLoRA and virtual tokens.

Each logged step carries TRL's ``rewards/chosen`` (desirable), ``rewards/rejected`` (undesirable),
``rewards/margins`` and ``kl``; the test split gives the same on held-out responses.

    config = KTORunConfig.from_dict({"base_model": "/models/sft-policy", "beta": 0.1, "max_steps": 100})
    metrics = run(config, {"train": "train.jsonl", "test": "test.jsonl"}, "out/", print)
"""

from __future__ import annotations

import copy
import random
import tempfile

from .base import (
    RunnerError,
    check_environment,
    emit_log,
    last_logged,
    load_tokenizer,
    make_progress_callback,
    offline_environment,
    peft_config,
    resolve_precision,
    train_to_end,
    training_arguments,
)
from .data import as_messages, read_split
from .kto_config import CONFIG_CLASS, KTORunConfig, balance_ratio  # noqa: F401 - the worker reads CONFIG_CLASS
from .policy import ensure_policy_chat_template, load_policy_model, save_policy
from .sft import check_trainable_base

REWARD_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "kl",
    "logps/chosen",
    "logps/rejected",
)


# --- data ---------------------------------------------------------------------------------------------


def unpaired_rows(rows: list[dict], split: str = "train") -> list[dict]:
    """``kto`` export rows → conversational ``prompt``/``completion``/``label`` rows; RunnerError naming the first
    row that is not a kto row (a trl export's pairs, a steps export...)."""
    unpaired = []
    for number, row in enumerate(rows, 1):
        missing = [key for key in ("prompt", "completion", "label") if key not in row]
        if missing:
            raise RunnerError(
                f"The {split} split, row {number}: no {', '.join(missing)}; KTO reads a kto export "
                "(prompt, completion, label)."
            )
        if not isinstance(row["label"], bool):
            raise RunnerError(
                f"The {split} split, row {number}: label must be true (desirable) or false, not {row['label']!r}."
            )
        unpaired.append(
            {
                "prompt": as_messages(row["prompt"], "user"),
                "completion": as_messages(row["completion"], "assistant"),
                "label": row["label"],
            }
        )
    return unpaired


def label_counts(rows: list[dict], split: str = "train") -> tuple[int, int]:
    """``(desirable, undesirable)`` of a split; RunnerError when it lacks either: KTO pushes desirable responses
    up and undesirable ones down against a common reference point, and one side alone moves nothing."""
    desirable = sum(1 for row in rows if row["label"])
    undesirable = len(rows) - desirable
    if not desirable or not undesirable:
        has, lacks = ("desirable", "undesirable") if desirable else ("undesirable", "desirable")
        raise RunnerError(
            f"The {split} split has only {has} examples ({len(rows)}) and no {lacks} one: KTO needs both, to push "
            "desirable responses up and undesirable ones down against the same reference point. Collect votes "
            "on both sides (or, for a rating project, choose another threshold)."
        )
    return desirable, undesirable


# --- the run ------------------------------------------------------------------------------------------


def _reference(config: KTORunConfig, model):
    """A frozen copy of the loaded policy for full training; None where TRL needs none (an adapter disabled is the
    reference; precomputed log-probabilities come from the untrained model)."""
    if config.method != "full" or config.precompute_ref_log_probs:
        return None
    # A copy, not TRL's reload by name: the starting policy may be a merged adapter.
    return copy.deepcopy(model).eval().requires_grad_(False)


def run(config: KTORunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Train the policy with KTO on the train split; evaluate on the test split; write the policy to ``output_dir``."""
    import datasets
    from trl import KTOConfig, KTOTrainer

    check_environment(config)
    offline_environment()
    check_trainable_base(config)
    if "train" not in dataset_paths:
        raise RunnerError("No train split to learn from.")
    precision = resolve_precision(config)
    train = unpaired_rows(read_split(dataset_paths["train"]), "train")
    n_desirable, n_undesirable = label_counts(train, "train")
    tests = unpaired_rows(read_split(dataset_paths["test"]), "test") if "test" in dataset_paths else []
    # TRL samples in order (its KL estimate pairs each response with its batch neighbours' prompts): one seeded
    # shuffle mixes items and labels across batches instead of the export's item order.
    random.Random(config.seed).shuffle(train)
    desirable_weight, undesirable_weight = config.weights(n_desirable, n_undesirable)

    tokenizer = load_tokenizer(config.base_model)
    ensure_policy_chat_template(tokenizer)
    model = load_policy_model(config.base_model, config, precision)
    reference = _reference(config, model)
    with tempfile.TemporaryDirectory(prefix="arbiter-ckpt-") as scratch:
        checkpoints = str(checkpoint_dir or scratch)
        # Our names are TRL's (beta, loss_type, precompute_ref_log_probs); the weights are the resolved ones.
        args = training_arguments(
            config,
            KTOConfig,
            checkpoints,
            precision,
            has_eval=bool(tests),
            desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight,
        )
        reporter = make_progress_callback(progress_callback, config)
        trainer = KTOTrainer(
            model=model,
            ref_model=reference,
            args=args,
            train_dataset=datasets.Dataset.from_list(train),
            eval_dataset=datasets.Dataset.from_list(tests) if tests else None,
            processing_class=tokenizer,
            peft_config=peft_config(config, "CAUSAL_LM"),
            callbacks=[reporter],
        )
        ratio = balance_ratio(n_desirable, n_undesirable, desirable_weight, undesirable_weight)
        emit_log(
            progress_callback,
            f"{n_desirable} desirable and {n_undesirable} undesirable responses; desirable_weight "
            f"{desirable_weight:.4g}, undesirable_weight {undesirable_weight:.4g} "
            f"({'given' if config.desirable_weight is not None and config.undesirable_weight is not None else 'balanced'}: "
            f"weighted ratio {ratio:.3f}, the KTO paper asks for 1 to 1.333); loss {config.loss_type}, "
            f"precision {precision}, method {config.method}",
        )

        def collect() -> dict:
            metrics = {
                "n_train": len(trainer.train_dataset),
                "n_desirable": n_desirable,
                "n_undesirable": n_undesirable,
                "desirable_weight": desirable_weight,
                "undesirable_weight": undesirable_weight,
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
            info = {
                "kind": "kto",
                "loss_type": config.loss_type,
                "desirable_weight": desirable_weight,
                "undesirable_weight": undesirable_weight,
            }
            save_policy(policy, tokenizer, config, output_dir, metrics, info)
    return metrics
