"""Candidate generation (PRODUCT.md D2): sample K responses per prompt from a policy, for the next annotation round.

Reads the prompt rows of ``dataset_paths["train"]`` (see policy.py's contract), samples ``num_samples`` responses to
each with the policy's chat template, in batches of similar length, and writes ``candidates.jsonl`` (one row per
prompt, each response with its text, finish reason, length in tokens and the label of the model that wrote it)
and ``arbiter.json`` into ``output_dir``; no weights. With ``reward_models`` each response also gets the combined
reward-model ``score`` (best-of-K at a glance, or the candidates an annotator should see first).

    config = GenerateRunConfig.from_dict({"base_model": "/models/policy", "num_samples": 4, "temperature": 0.8})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)   # → out/candidates.jsonl
"""

from __future__ import annotations

from pathlib import Path

from .base import emit_log
from .data import write_jsonl
from .generate_config import CONFIG_CLASS, GenerateRunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
from .policy import (
    free_memory,
    load_scorer,
    model_label,
    sample_prompts,
    sampling_metrics,
    score_samples,
    start_prompt_run,
    timed,
    write_info,
)


def run(config: GenerateRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Sample, optionally score, write ``candidates.jsonl``; return the metrics (see the module docstring).
    ``checkpoint_dir`` is unused: a generation pass is short and its samples are written whole or not at all."""
    rows = start_prompt_run(config, dataset_paths, "generate", needs_reward=False)
    prompts = [row["prompt"] for row in rows]
    samples, seconds = timed(sample_prompts, config, prompts, config.num_samples, progress_callback)
    metrics = sampling_metrics(samples, seconds)
    free_memory()
    scores = None
    scorer = load_scorer(config)
    if scorer is not None:
        emit_log(
            progress_callback,
            f"Scoring {metrics['candidates']} candidates with {len(config.reward_models)} reward model(s)",
        )
        scores = score_samples(scorer, prompts, samples, config.per_device_eval_batch_size)
        flat = [score for row in scores for score in row]
        metrics["mean_score"] = sum(flat) / len(flat)
        metrics["mean_best_score"] = sum(max(row) for row in scores) / len(scores)
    label = config.model_label or model_label(config.base_model)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(candidate_rows(rows, samples, scores, label), output_dir / "candidates.jsonl")
    write_info(
        output_dir,
        {
            "kind": "generate",
            "model": config.base_model,
            "model_label": label,
            "config": config.to_dict(),
            "metrics": metrics,
            "files": ["candidates.jsonl"],
        },
    )
    emit_log(progress_callback, f"{metrics['candidates']} candidates, {metrics['candidates_per_second']:.2f}/s")
    return metrics


def candidate_rows(rows: list[dict], samples: list, scores: list | None, label: str) -> list[dict]:
    """One ``candidates.jsonl`` row per prompt: the prompt row's fields and its responses, in sampling order."""
    out = []
    for index, (row, row_samples) in enumerate(zip(rows, samples)):
        responses = []
        for j, sample in enumerate(row_samples):
            response = {**sample.to_dict(), "model": label}
            if scores is not None:
                response["score"] = scores[index][j]
            responses.append(response)
        out.append(
            {"prompt": row["prompt"], "item": row["item"], "external_id": row["external_id"], "responses": responses}
        )
    return out
