"""Rejection sampling, as in Llama 2's RLHF rounds 1–4 (PRODUCT.md T4): sample K responses per prompt from the
policy, score them with the reward model (or a weighted combination of reward models), keep the best response of
each prompt (optionally only when it scores at least ``min_score``), and fine-tune the policy on the kept
(prompt, response) pairs with TRL's SFTTrainer (``sft.fine_tune``: full, LoRA or QLoRA).

Writes, into ``output_dir``: the fine-tuned policy (safetensors, tokenizer, ``arbiter.json``) and ``kept.jsonl``
(``{"prompt", "item", "external_id", "response", "score", "mean_score"}``, the kept sample and the mean score of
its prompt's K samples) — a dataset that can be sent to annotators for review. The metrics compare the kept
samples with all of them (``kept_mean_score`` ≥ ``sample_mean_score`` by construction when every prompt keeps
its best) next to the fine-tuning's own.

With a ``checkpoint_dir`` the scored samples are saved there before training starts, so a resumed run picks the
training up from its newest checkpoint without sampling again (sampling is the expensive, random half).

    config = RejectionSamplingRunConfig.from_dict({"base_model": "/models/policy", "reward_models": ["/models/rm"],
                                                   "num_samples": 4, "max_steps": 50})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import RunnerError, emit_log
from .data import write_jsonl
from .policy import (
    free_memory,
    load_scorer,
    sample_prompts,
    sampling_metrics,
    score_samples,
    start_prompt_run,
    timed,
    write_info,
)
from .rejection_sampling_config import CONFIG_CLASS, RejectionSamplingRunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS

SAMPLES_FILE = "rejection_samples.json"


def run(
    config: RejectionSamplingRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None
) -> dict:
    """Sample, score, keep the best, fine-tune; see the module docstring."""
    rows = start_prompt_run(config, dataset_paths, "rejection_sampling")
    saved = Path(checkpoint_dir) / SAMPLES_FILE if checkpoint_dir else None
    if saved is not None and saved.is_file():
        state = json.loads(saved.read_text(encoding="utf-8"))
        emit_log(progress_callback, f"Resuming: {len(state['kept'])} kept samples from {saved}")
    else:
        state = sample_and_select(config, rows, progress_callback)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            tmp = saved.with_name(saved.name + ".tmp")
            tmp.write_text(json.dumps(state), encoding="utf-8")
            tmp.replace(saved)
    kept, metrics = state["kept"], state["metrics"]
    emit_log(
        progress_callback,
        f"Kept {len(kept)} of {metrics['prompts']:.0f} prompts' best samples "
        f"(mean score {metrics['kept_mean_score']:.3f} vs {metrics['sample_mean_score']:.3f} over all samples)",
    )

    from .sft import fine_tune

    examples = [{"prompt": row["prompt"], "completion": row["response"]} for row in kept]
    info = {
        "kind": "rejection_sampling",
        "reward_models": config.reward_models,
        "reward_weights": config.reward_weights,
    }
    metrics.update(fine_tune(config, examples, None, output_dir, progress_callback, checkpoint_dir, info=info))
    output_dir = Path(output_dir)
    write_jsonl(kept, output_dir / "kept.jsonl")
    info_path = output_dir / "arbiter.json"
    body = (
        json.loads(info_path.read_text(encoding="utf-8"))
        if info_path.is_file()
        else {**info, "config": config.to_dict()}
    )
    write_info(output_dir, {**body, "metrics": metrics, "files": ["kept.jsonl"]})
    return metrics


def sample_and_select(config, rows: list[dict], progress_callback) -> dict:
    """K scored samples per prompt → the kept rows (best per prompt, above ``min_score``) and the sampling metrics."""
    prompts = [row["prompt"] for row in rows]
    samples, seconds = timed(sample_prompts, config, prompts, config.num_samples, progress_callback)
    metrics = sampling_metrics(samples, seconds)
    free_memory()  # the policy's memory, before the reward models load
    scorer = load_scorer(config)
    emit_log(
        progress_callback, f"Scoring {metrics['candidates']} samples with {len(config.reward_models)} reward model(s)"
    )
    scores = score_samples(scorer, prompts, samples, config.per_device_eval_batch_size)
    del scorer
    free_memory()
    kept = select_best(rows, samples, scores, config.min_score)
    if not kept:
        best = max((s for row in scores for s in row), default=float("nan"))
        raise RunnerError(
            f"No sample reached min_score={config.min_score} (the best scored {best:.3f}); lower it or sample more."
        )
    flat = [score for row in scores for score in row]
    metrics.update(
        sample_mean_score=sum(flat) / len(flat),
        kept=len(kept),
        kept_fraction=len(kept) / len(rows),
        kept_mean_score=sum(row["score"] for row in kept) / len(kept),
        kept_prompts_mean_score=sum(row["mean_score"] for row in kept) / len(kept),
    )
    return {"kept": kept, "metrics": metrics}


def select_best(rows: list[dict], samples: list, scores: list, min_score: float | None) -> list[dict]:
    """The best-scoring non-empty sample of each prompt (the first on a tie), when it reaches ``min_score``.

    >>> from training.runners.policy import Sample
    >>> rows = [{"prompt": "p", "item": 1, "external_id": "a"}]
    >>> select_best(rows, [[Sample("x", "eos", 2), Sample("y", "eos", 2)]], [[0.5, 1.5]], None)[0]["response"]
    'y'
    """
    kept = []
    for row, row_samples, row_scores in zip(rows, samples, scores):
        candidates = [(score, j) for j, (sample, score) in enumerate(zip(row_samples, row_scores)) if sample.text]
        if not candidates:
            continue
        best_score, best = max(candidates, key=lambda pair: (pair[0], -pair[1]))
        if min_score is not None and best_score < min_score:
            continue
        kept.append(
            {
                "prompt": row["prompt"],
                "item": row["item"],
                "external_id": row["external_id"],
                "response": row_samples[best].text,
                "score": best_score,
                "mean_score": sum(row_scores) / len(row_scores),
            }
        )
    return kept
