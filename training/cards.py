"""Model cards: the README.md of every registered artifact, with YAML front matter the Hugging Face hub reads."""

from __future__ import annotations

import json

from . import kinds, plots

METHOD_NAMES = {
    "full": "full fine-tuning",
    "lora": "LoRA",
    "qlora": "QLoRA",
    "adalora": "AdaLoRA",
    "ia3": "(IA)³",
    "prompt_tuning": "prompt tuning",
    "prefix_tuning": "prefix tuning",
}


def training_method(config: dict, metrics: dict) -> str:
    """How a run trained its weights, in words, for the model card and the run page: the method, and how many
    weights it trained of the model's (recorded by the runner as ``n_trainable_params`` of ``n_params``);
    "" for a config without a method.

    >>> training_method({"method": "ia3"}, {"n_trainable_params": 1536, "n_params": 102400})
    '(IA)³ (ia3): 1,536 of 102,400 weights trained (1.5%)'
    """
    method = (config or {}).get("method")
    if not method:
        return ""
    text = f"{METHOD_NAMES.get(method, method)} ({method})"
    rank = metrics.get("adalora_mean_rank")
    if method == "adalora" and isinstance(rank, (int, float)):
        text += f", ranks pruned from {config.get('adalora_init_r', '?')} to a mean of {rank:.3g}"
    trained, total = metrics.get("n_trainable_params"), metrics.get("n_params")
    if isinstance(trained, (int, float)) and isinstance(total, (int, float)) and total:
        text += f": {int(trained):,} of {int(total):,} weights trained ({100 * trained / total:.3g}%)"
    return text


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(
    *,
    name: str,
    artifact_id: int,
    kind: str,
    project,
    run,
    base_model: str,
    snapshot,
    dataset_hash: str,
    config: dict,
    metrics: dict,
    info: dict,
    lineage: dict | None = None,
) -> str:
    """A README.md: what the model is, the exact data it came from, how it was trained, how well, how to load it."""
    objective = info.get("objective", "")
    criterion = info.get("criterion") or "overall"
    reward_model = kinds.get(kind).publishes == kinds.REWARD_MODEL
    lines = ["---", "library_name: transformers", "tags:", "- arbiter", f"- {kind}"]
    if reward_model:
        lines += ["- reward-model", "pipeline_tag: text-classification"]
    lines += ["---", "", f"# {name}", ""]
    what = f"A {objective.replace('_', '-')} reward model" if reward_model else f"A {kind} model"
    lines += [
        f"{what} of project `{project.slug}` ({project.kind}), criterion **{criterion}**, trained by Arbiter run {run.pk}"
        + (f" for {run.launched_by.username}" if run.launched_by else "")
        + ".",
        "",
        "## Provenance",
        "",
        f"- registry: artifact {artifact_id} (use `--base-model artifact:{artifact_id}` to train on top of it)",
        f"- base model: `{base_model}`",
        f"- snapshot: {snapshot.pk if snapshot else '—'}, content hash `{run.snapshot_hash or '—'}`",
        f"- rows trained on: hash `{dataset_hash or '—'}`"
        + (
            f" (the snapshot's `{criterion}` preferences)" if dataset_hash and dataset_hash != run.snapshot_hash else ""
        ),
        f"- weights: {'a PEFT adapter over the base model' if info.get('is_adapter') else 'full weights'}, safetensors only",
    ]
    method = training_method(config, metrics)
    if method:
        lines.append(f"- method: {method}")
    config_class = kinds.get(kind).config
    trained = plots.trained_on(metrics, config_class)
    if trained:
        # Both the dataset's size and what the steps covered: max_steps can stop a run long before one epoch.
        lines.append(f"- trained on: {trained}")
    lines.append("")
    lines += _lineage_lines(lineage or {})
    lines += [
        "## Metrics",
        "",
        "| metric | value | measured on |",
        "|---|---|---|",
    ]
    lines += [f"| {key} | {_number(value)} | {_measured_on(key)} |" for key, value in sorted(metrics.items())]
    lines += [""]
    if reward_model:
        lines += [
            "Accuracy is the share of held-out pairs (prompts never seen in training) whose chosen response gets "
            "the higher reward.",
            "",
        ]
    lines += [
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
    ]
    if reward_model:
        lines += [
            "## Use",
            "",
            "```python",
            "from training.scoring import RewardScorer",
            "",
            f'scorer = RewardScorer.load("{name}")  # this folder',
            'scorer.score(["What is 2 + 2?"], ["4."])  # one reward per (prompt, response)',
            "```",
            "",
            'Or `POST /api/models/{id}/score/` with `{"pairs": [{"prompt": ..., "response": ...}]}`. A text is read as '
            "TRL's RewardTrainer read it: a string prompt followed by the response and the eos token, or a conversation "
            "through the tokenizer's chat template.".replace("{id}", str(artifact_id)),
            "",
        ]
    return "\n".join(lines)


def _measured_on(key: str) -> str:
    """The split a metric was measured on (held-out, training batches...), or "" where the name does not say."""
    found = plots.describe(key)
    return found[0].split if found else ""


def _lineage_lines(lineage: dict) -> list[str]:
    """The chain behind a policy: what it started from, what scored it, which run it continues, which prompts."""
    if not lineage:
        return []
    lines = ["## Lineage", ""]
    if lineage.get("base_artifact"):
        lines.append(f"- started from: artifact {lineage['base_artifact']} (`{lineage.get('base_model', '')}`)")
    else:
        lines.append(f"- started from: `{lineage.get('base_model', '')}`")
    for reward in lineage.get("reward_models") or []:
        if reward.get("artifact"):
            snap = (
                f", trained on snapshot {reward['snapshot']} (`{reward.get('snapshot_hash') or '—'}`)"
                if reward.get("snapshot")
                else ""
            )
            lines.append(f"- reward model: artifact {reward['artifact']} {reward.get('name', '')}{snap}")
        else:
            lines.append(f"- reward model: `{reward.get('path', '')}`")
    if lineage.get("snapshot"):
        lines.append(f"- snapshot: {lineage['snapshot']} (`{lineage.get('snapshot_hash') or '—'}`)")
    if lineage.get("parent_run"):
        lines.append(f"- continues run {lineage['parent_run']}")
    inputs = lineage.get("inputs") or {}
    if inputs.get("prompts_from"):
        lines.append(
            f"- prompts: {inputs.get('prompts', '?')} from {inputs['prompts_from']}"
            + (f" ({inputs['prompts_file']})" if inputs.get("prompts_file") else "")
        )
    return lines + [""]
