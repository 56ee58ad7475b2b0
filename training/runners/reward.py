"""Reward models from a snapshot, with TRL's RewardTrainer. No Django here: the worker runs this in a subprocess.

Two objectives:

- ``bradley_terry`` (pairwise and ranking projects; a ranking's K responses arrive as C(K, 2) pairs): TRL's loss
  ``-log σ(r_chosen − r_rejected − margin)`` with the margin from the annotators' strength (Llama 2), TRL's
  optional reward centering, and Arbiter's optional language-model loss on the chosen text as a regulariser
  (:class:`ArbiterRewardTrainer` adds it in the ``compute_loss`` hook).
- ``regression`` (rating projects, the ``ratings`` export): mean-squared error on each response's mean score for
  one criterion, standardised; the model predicts a rating, and pairwise accuracy is measured on the test items'
  responses whose mean scores differ.

With ``pair_weights`` (off by default) each training pair's Bradley-Terry loss is multiplied by its ``weight``
column, the reliability of the annotators who voted for it (the export's ``weights`` option), normalised to mean 1
over the training pairs (:func:`.data.normalised_weights`).

Both report held-out pairwise accuracy on every ``test*`` split (``test:<criterion>`` splits give per-criterion
accuracy) and write a folder of safetensors, tokenizer and ``arbiter.json``.

    config = RewardRunConfig.from_dict({"base_model": "/models/tiny", "max_steps": 20, "learning_rate": 1e-3})
    metrics = run(config, {"train": "train.jsonl", "test": "test.jsonl"}, "out/", print)
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from ..scoring import RewardScorer, encode
from .base import (
    RunnerError,
    check_artifact_folder,
    check_environment,
    emit_log,
    load_model,
    load_tokenizer,
    make_progress_callback,
    merged_for_saving,
    offline_environment,
    peft_config,
    quantization_config,
    resolve_precision,
    saves_adapter,
    train_to_end,
    training_arguments,
)
from .data import load_split, normalised_weights
from .reward_config import CONFIG_CLASS, RewardRunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS

# A conversation needs a chat template; models without one (encoders like MiniLM) get this plain one, which is
# saved with the tokenizer so that scoring later reads texts the same way.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


# --- data ---------------------------------------------------------------------------------------------


def is_conversational_rows(dataset) -> bool:
    first = dataset[0]
    return isinstance(first.get("prompt"), list) or isinstance(first.get("chosen"), list)


def ensure_chat_template(tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE


def rating_rows(dataset, criterion: str) -> tuple[list, list, list, list[int]]:
    """Ratings export rows → (prompts, texts, mean scores, item index) for one criterion."""
    prompts, texts, targets, groups = [], [], [], []
    for index, row in enumerate(dataset):
        for response in row["responses"]:
            mean = response.get("mean") or {}
            if criterion not in mean or mean[criterion] is None:
                continue
            prompts.append(row["prompt"])
            texts.append(response["text"])
            targets.append(float(mean[criterion]))
            groups.append(index)
    return prompts, texts, targets, groups


# --- the LM-loss regulariser, as a hook on TRL's trainer ------------------------------------------------


def _reward_trainer_class():
    import torch.nn.functional as F
    from trl import RewardTrainer

    class ArbiterRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer plus two optional terms of Arbiter's, both in the ``compute_loss`` hook:

        - a weight per pair (``weighted``: the train split's ``weight`` column reaches the batch): the loss is
          mean(w · −log σ(r_c − r_r − margin)) over the batch, w normalised to mean 1 over the training pairs, so
          a pair of weight 0 adds nothing to the gradient, and equal weights give TRL's loss; TRL's reward
          centering is added as TRL adds it;
        - a language-model loss on the chosen half of each batch: the backbone's last hidden state (captured by a
          forward hook, so any decoder architecture works) goes through the base model's LM head, frozen;
          ``lm_loss_coefficient`` × its next-token cross-entropy is added (unweighted: it regularises the
          backbone, it is not a preference).
        """

        def __init__(self, *args, lm_head=None, lm_loss_coefficient: float = 0.0, weighted: bool = False, **kwargs):
            self.weighted = weighted
            super().__init__(*args, **kwargs)
            self.lm_head = lm_head
            self.lm_loss_coefficient = lm_loss_coefficient
            self._hidden = None
            if weighted:
                self.data_collator = with_weights(self.data_collator)
            if lm_loss_coefficient:
                backbone = _backbone(self.accelerator.unwrap_model(self.model))
                backbone.register_forward_hook(self._capture)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if self.weighted and "weight" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "weight"]

        def _capture(self, module, args, output):
            self._hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight", None)  # only training batches of a weighted run carry it
            if not self.lm_loss_coefficient and weight is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            if weight is not None:
                loss = self._weighted_loss(outputs, inputs, weight)
            if self.lm_loss_coefficient:
                loss = loss + self.lm_loss_coefficient * self._lm_loss(inputs)
            return (loss, outputs) if return_outputs else loss

        def _weighted_loss(self, outputs, inputs, weight):
            """TRL's loss (kept for its metrics) recomputed with each pair's weight."""
            chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
            gap = chosen - rejected
            if "margin" in inputs:
                gap = gap - inputs["margin"]
            loss = (weight.to(gap.dtype) * -F.logsigmoid(gap)).mean()
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
            return loss

        def _lm_loss(self, inputs):
            half = inputs["input_ids"].shape[0] // 2
            hidden = self._hidden[:half, :-1]
            weight = self.lm_head.to(device=hidden.device, dtype=hidden.dtype)
            logits = hidden @ weight.T
            targets = inputs["input_ids"][:half, 1:]
            mask = inputs["attention_mask"][:half, 1:].float()
            token_loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
            )
            lm_loss = (token_loss * mask.reshape(-1)).sum() / mask.sum().clamp(min=1)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["lm_loss"].append(lm_loss.detach().item())
            return lm_loss

    return ArbiterRewardTrainer


def with_weights(collator):
    """``collator`` (TRL's preference collator) that also puts the examples' ``weight`` into the batch, when they
    have one (the precomputing and evaluation batches of the held-out pairs have none)."""
    import torch

    def collate(examples):
        batch = collator(examples)
        if "weight" in examples[0]:
            batch["weight"] = torch.tensor([float(example["weight"]) for example in examples], dtype=torch.float)
        return batch

    return collate


def _backbone(model):
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)


def lm_head_weight(folder: str, model):
    """The base model's LM head (``lm_head.weight`` in its safetensors), or its input embeddings when tied."""
    from safetensors import safe_open
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = model.config.model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise RunnerError(f"lm_loss_coefficient needs a decoder language model; {model_type} is not one.")
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            if "lm_head.weight" in handle.keys():
                return handle.get_tensor("lm_head.weight").detach().clone().requires_grad_(False)
    return _backbone(model).get_input_embeddings().weight


# --- the run ------------------------------------------------------------------------------------------


def run(config: RewardRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Train a reward model; write it to ``output_dir``; return its metrics (see the module docstring)."""
    check_environment(config)
    offline_environment()
    if not config.base_model or not Path(config.base_model).is_dir():
        raise RunnerError(f"The base model folder {config.base_model!r} does not exist.")
    if "train" not in dataset_paths:
        raise RunnerError("No train split to learn from.")
    precision = resolve_precision(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="arbiter-ckpt-") as scratch:
        checkpoints = str(checkpoint_dir or scratch)
        if config.objective == "regression":
            return _run_regression(config, dataset_paths, output_dir, progress_callback, checkpoints, precision)
        return _run_bradley_terry(config, dataset_paths, output_dir, progress_callback, checkpoints, precision)


def _load_base(config: RewardRunConfig, precision: str):
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    # Before loading: the new reward head is initialised at load time, and the seed makes it reproducible
    # (the same head as TRL's own loading path gets, which seeds at the same point).
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.base_model)
    kwargs = {"num_labels": 1, "dtype": torch.float32}
    if config.method == "qlora":
        kwargs["quantization_config"] = quantization_config(precision)
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float16
    model = load_model(AutoModelForSequenceClassification, config.base_model, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model, tokenizer


def _run_bradley_terry(config, dataset_paths, output_dir, progress_callback, checkpoints, precision) -> dict:
    from trl import RewardConfig

    train = load_split(dataset_paths["train"])
    evals = {name: load_split(path) for name, path in dataset_paths.items() if name.startswith("test")}
    evals = {name: data for name, data in evals.items() if len(data)}
    for name, data in [("train", train), *evals.items()]:
        missing = {"chosen", "rejected"} - set(data.column_names)
        if missing:
            raise RunnerError(
                f"The {name} split has no {', '.join(sorted(missing))} column: it is not a preference dataset."
            )
    if not len(train):
        raise RunnerError("The train split is empty: there are no preferences to learn from.")
    if "margin" in train.column_names:
        if not config.use_margin:
            train = train.remove_columns("margin")
        elif config.margin_scale != 1.0:
            train = train.map(lambda row: {"margin": row["margin"] * config.margin_scale})
    weighted = config.pair_weights != "none"
    if weighted and "weight" not in train.column_names:
        raise RunnerError(
            f"pair_weights={config.pair_weights} needs a weight column in the train split: export the snapshot "
            f"with weights={config.pair_weights}."
        )
    # Unweighted runs leave a weight column out, so that they are TRL's own path.
    columns = ("prompt", "chosen", "rejected", "margin") + (("weight",) if weighted else ())
    train = train.select_columns([c for c in columns if c in train.column_names])

    model, tokenizer = _load_base(config, precision)
    if is_conversational_rows(train):
        ensure_chat_template(tokenizer)
    lm_head = lm_head_weight(config.base_model, model) if config.lm_loss_coefficient else None
    eval_dataset = (
        evals.get("test").select_columns(
            [c for c in ("prompt", "chosen", "rejected") if c in evals["test"].column_names]
        )
        if "test" in evals and config.eval_steps
        else None
    )
    # center_rewards_coefficient: 0 and none both mean off; TRL's off is None.
    args = training_arguments(
        config,
        RewardConfig,
        checkpoints,
        precision,
        has_eval=eval_dataset is not None,
        center_rewards_coefficient=config.center_rewards_coefficient or None,
    )
    reporter = make_progress_callback(progress_callback, config)
    trainer = _reward_trainer_class()(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(config, "SEQ_CLS"),
        callbacks=[reporter],
        lm_head=lm_head,
        lm_loss_coefficient=config.lm_loss_coefficient,
        weighted=weighted,
    )
    if not len(trainer.train_dataset):
        raise RunnerError(f"Every training pair is longer than max_length={config.max_length} tokens; raise it.")
    if weighted:  # after TRL's max_length filter: the mean is over the pairs trained on
        trainer.train_dataset = normalised_weights(trainer.train_dataset)
    emit_log(
        progress_callback,
        f"{len(trainer.train_dataset)} training pairs (of {len(train)}), precision {precision}, method {config.method}",
    )
    metrics = train_to_end(trainer, reporter, checkpoints)
    metrics["n_train"] = len(trainer.train_dataset)
    if not trainer.accelerator.is_main_process:
        return metrics
    scorer = RewardScorer(trainer.accelerator.unwrap_model(trainer.model).eval(), tokenizer, {}, config.max_length)
    rewards = []
    for name, data in evals.items():
        suffix = "" if name == "test" else "_" + name.split(":", 1)[1]
        result = pairwise_metrics(scorer, data, config)
        rewards += result.pop("rewards")
        metrics.update({f"eval_{key}{suffix}": value for key, value in result.items()})
    if len(rewards) < 64:  # too few held-out texts to estimate the spread: score a sample of training texts
        sample = train.select(range(min(len(train), 128)))
        rewards += pairwise_metrics(scorer, sample, config)["rewards"]
    stats = mean_and_spread(rewards)
    metrics.update(reward_mean=stats["mean"], reward_std=stats["std"])
    info = _save(trainer, tokenizer, config, output_dir)
    _write_info(output_dir, config, metrics, info, reward_stats=stats)
    return metrics


def pairwise_metrics(scorer: RewardScorer, data, config) -> dict:
    """Accuracy (r_chosen > r_rejected; a tie counts as wrong), mean reward gap, and every reward (for the stats)."""
    prompts = list(data["prompt"]) if "prompt" in data.column_names else [""] * len(data)
    chosen = scorer.score(prompts, list(data["chosen"]), config.per_device_eval_batch_size)
    rejected = scorer.score(prompts, list(data["rejected"]), config.per_device_eval_batch_size)
    gaps = [c - r for c, r in zip(chosen, rejected)]
    return {
        "accuracy": sum(g > 0 for g in gaps) / len(gaps),
        "reward_gap": sum(gaps) / len(gaps),
        "pairs": len(gaps),
        "rewards": chosen + rejected,
    }


def mean_and_spread(values: list[float]) -> dict:
    """Mean and standard deviation of a model's rewards: the combined scorer standardises by them."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"mean": mean, "std": std or 1.0}


def _save(trainer, tokenizer, config, output_dir: Path) -> dict:
    """Full weights (merged for LoRA, AdaLoRA and IA3) or, for adapters that cannot merge, the adapter over its
    base model."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_adapter = saves_adapter(config)
    model = merged_for_saving(model, config)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    check_artifact_folder(output_dir)
    return {"is_adapter": is_adapter, "base_model_path": config.base_model}


def _write_info(output_dir: Path, config, metrics: dict, info: dict, **extra) -> None:
    """``arbiter.json``: what a tool needs to use the folder without Arbiter's database (the worker adds provenance)."""
    body = {
        "kind": "reward",
        "objective": config.objective,
        "criterion": config.criterion,
        "config": config.to_dict(),
        "metrics": metrics,
        **info,
        **extra,
    }
    (output_dir / "arbiter.json").write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")


# --- regression on ratings -------------------------------------------------------------------------------


def _run_regression(config, dataset_paths, output_dir, progress_callback, checkpoints, precision) -> dict:
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    train_rows = load_split(dataset_paths["train"])
    if "responses" not in train_rows.column_names:
        raise RunnerError("regression trains on a ratings snapshot (rows with responses and their scores).")
    criterion = config.criterion or _first_criterion(train_rows)
    prompts, texts, targets, _ = rating_rows(train_rows, criterion)
    if len(targets) < 2:
        raise RunnerError(f"Fewer than two rated responses for criterion {criterion!r}: nothing to regress on.")
    mean = sum(targets) / len(targets)
    std = math.sqrt(sum((t - mean) ** 2 for t in targets) / len(targets)) or 1.0

    model, tokenizer = _load_base(config, precision)
    model.config.problem_type = "regression"
    if any(isinstance(p, list) for p in prompts):
        ensure_chat_template(tokenizer)
    if config.method != "full":
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(config, "SEQ_CLS"))
    rows = [
        {"input_ids": encode(tokenizer, p, t), "labels": (y - mean) / std} for p, t, y in zip(prompts, texts, targets)
    ]
    if config.max_length:
        rows = [row for row in rows if len(row["input_ids"]) <= config.max_length]
    if not rows:
        raise RunnerError(f"Every rated response is longer than max_length={config.max_length} tokens; raise it.")
    train = datasets.Dataset.from_list(rows)
    args = training_arguments(
        config, TrainingArguments, checkpoints, precision, has_eval=False, remove_unused_columns=False
    )
    reporter = make_progress_callback(progress_callback, config)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[reporter],
    )
    emit_log(
        progress_callback, f"{len(rows)} rated responses ({criterion}), precision {precision}, method {config.method}"
    )
    metrics = train_to_end(trainer, reporter, checkpoints)
    metrics.update(n_train=len(rows), criterion=criterion)
    if not trainer.accelerator.is_main_process:
        return metrics
    scorer = RewardScorer(trainer.accelerator.unwrap_model(trainer.model).eval(), tokenizer, {}, config.max_length)
    for name, path in dataset_paths.items():
        if name.startswith("test"):
            suffix = "" if name == "test" else "_" + name.split(":", 1)[1]
            test_criterion = criterion if name == "test" else name.split(":", 1)[1]
            metrics.update(
                {
                    f"eval_{k}{suffix}": v
                    for k, v in regression_metrics(scorer, load_split(path), test_criterion, mean, std, config).items()
                }
            )
    stats = {"mean": 0.0, "std": 1.0}  # the model predicts standardised scores already
    metrics.update(reward_mean=0.0, reward_std=1.0)
    info = _save(trainer, tokenizer, config, output_dir)
    _write_info(
        output_dir,
        config,
        metrics,
        info,
        reward_stats=stats,
        score_stats={"mean": mean, "std": std, "criterion": criterion},
    )
    return metrics


def _first_criterion(rows) -> str:
    for row in rows:
        for response in row["responses"]:
            if response.get("mean"):
                return sorted(response["mean"])[0]
    return "overall"


def regression_metrics(scorer, rows, criterion, mean, std, config) -> dict:
    """RMSE in rating units, and pairwise accuracy over responses of an item whose mean scores differ."""
    prompts, texts, targets, groups = rating_rows(rows, criterion)
    if not targets:
        return {}
    predicted = [p * std + mean for p in scorer.score(prompts, texts, config.per_device_eval_batch_size)]
    rmse = math.sqrt(sum((p - t) ** 2 for p, t in zip(predicted, targets)) / len(targets))
    right = total = 0
    for i in range(len(targets)):
        for j in range(i + 1, len(targets)):
            if groups[i] == groups[j] and targets[i] != targets[j]:
                total += 1
                right += (predicted[i] - predicted[j]) * (targets[i] - targets[j]) > 0
    result = {"rmse": rmse, "responses": len(targets)}
    if total:
        result.update(accuracy=right / total, pairs=total)
    return result
