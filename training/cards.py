"""Model cards: the README.md of every registered artifact, with YAML front matter the Hugging Face hub reads."""

from __future__ import annotations

import json


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(*, name: str, artifact_id: int, kind: str, project, run, base_model: str, snapshot, dataset_hash: str,
               config: dict, metrics: dict, info: dict) -> str:  # fmt: skip
    """A README.md: what the model is, the exact data it came from, how it was trained, how well, how to load it."""
    objective = info.get("objective", "")
    criterion = info.get("criterion") or "overall"
    lines = ["---", "library_name: transformers", "tags:", "- arbiter", f"- {kind}"]
    if kind == "reward":
        lines += ["- reward-model", "pipeline_tag: text-classification"]
    lines += ["---", "", f"# {name}", ""]
    what = f"A {objective.replace('_', '-')} reward model" if kind == "reward" else f"A {kind} model"
    lines += [
        f"{what} of project `{project.slug}` ({project.kind}), criterion **{criterion}**, trained by Arbiter run {run.pk}"
        + (f" for {run.launched_by.username}" if run.launched_by else "") + ".",
        "",
        "## Provenance",
        "",
        f"- registry: artifact {artifact_id} (use `--base-model artifact:{artifact_id}` to train on top of it)",
        f"- base model: `{base_model}`",
        f"- snapshot: {snapshot.pk if snapshot else '—'}, content hash `{run.snapshot_hash or '—'}`",
        f"- rows trained on: hash `{dataset_hash or '—'}`"
        + (f" (the snapshot's `{criterion}` preferences)" if dataset_hash and dataset_hash != run.snapshot_hash else ""),
        f"- weights: {'a PEFT adapter over the base model' if info.get('is_adapter') else 'full weights'}, safetensors only",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {_number(value)} |" for key, value in sorted(metrics.items())]
    lines += ["", "Accuracy is the share of held-out pairs (prompts never seen in training) whose chosen response gets "
              "the higher reward.", "", "## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]  # fmt: skip
    if kind == "reward":
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
            "Or `POST /api/models/{id}/score/` with `{\"pairs\": [{\"prompt\": ..., \"response\": ...}]}`. A text is read as "
            "TRL's RewardTrainer read it: a string prompt followed by the response and the eos token, or a conversation "
            "through the tokenizer's chat template.".replace("{id}", str(artifact_id)),
            "",
        ]
    return "\n".join(lines)
