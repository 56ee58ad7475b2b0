"""A new policy against the previous one on held-out prompts, judged by the reward model(s) (issue 7, "Rounds and
evaluation"). No weights: ``comparisons.jsonl`` and ``arbiter.json``.

Each prompt gets one response from the policy (``base_model``) and one from ``baseline_model``, sampled with the
same settings and the same seed (so a policy compared with itself writes the same texts and ties everywhere), and
the combined reward of both. The policy wins a prompt when its reward is higher; identical texts, or rewards within
``TIE_TOLERANCE``, are a tie and count half. ``win_rate`` = (wins + ties / 2) / prompts with a 95% **Wilson score
interval** (``win_rate_lo``, ``win_rate_hi``) over the prompts; counting a tie as half a success makes the interval
conservative (a tie varies less than a coin flip), and it stays inside [0, 1] even at 0 or 1 wins, where the
normal approximation breaks.

``comparisons.jsonl`` has one row per prompt, ``{"prompt", "item", "external_id", "policy", "baseline",
"policy_score", "baseline_score", "winner"}``; the Django side turns it into a pairwise human-evaluation round
(positions randomised there).

    config = EvaluateRunConfig.from_dict({"base_model": "/models/policy-2", "baseline_model": "/models/policy-1",
                                          "reward_models": ["/models/rm"]})
    run(config, {"test": "prompts.jsonl"}, "out/", print)   # → {"win_rate": 0.62, "win_rate_lo": 0.52, ...}
"""

from __future__ import annotations

import math
from pathlib import Path

from .base import RunnerError, emit_log, offline_environment
from .data import read_prompt_rows, write_jsonl
from .evaluate_config import CONFIG_CLASS, EvaluateRunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
from .policy import (
    check_model_path,
    check_policy_environment,
    free_memory,
    load_scorer,
    sample_prompts,
    timed,
    write_info,
)

TIE_TOLERANCE = 1e-6  # the same text scored in differently padded batches can differ in the last float bits
Z_95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (``successes`` may be fractional: ties count half).

    >>> [round(x, 4) for x in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def outcome(policy_text: str, baseline_text: str, policy_score: float, baseline_score: float) -> str:
    """``policy``, ``baseline`` or ``tie`` for one prompt."""
    if policy_text == baseline_text or abs(policy_score - baseline_score) <= TIE_TOLERANCE:
        return "tie"
    return "policy" if policy_score > baseline_score else "baseline"


def win_rate_metrics(winners: list[str], policy_scores: list[float], baseline_scores: list[float]) -> dict:
    n = len(winners)
    wins, ties = winners.count("policy"), winners.count("tie")
    lo, hi = wilson_interval(wins + ties / 2, n)
    return {
        "prompts": n,
        "wins": wins,
        "ties": ties,
        "losses": winners.count("baseline"),
        "win_rate": (wins + ties / 2) / n,
        "win_rate_lo": lo,
        "win_rate_hi": hi,
        "policy_mean_score": sum(policy_scores) / n,
        "baseline_mean_score": sum(baseline_scores) / n,
    }


def run(config: EvaluateRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Sample one response per prompt from each model, score both, write ``comparisons.jsonl``; see the docstring."""
    if not config.reward_models:
        raise RunnerError("evaluate needs at least one reward model to judge the responses (reward_models).")
    check_policy_environment(config)
    check_model_path(config.baseline_model, "baseline_model")
    offline_environment()
    split = "test" if "test" in dataset_paths else "train"
    if split not in dataset_paths:
        raise RunnerError("No prompt file (the test or train split) to evaluate on.")
    rows = read_prompt_rows(dataset_paths[split])
    prompts = [row["prompt"] for row in rows]
    policy, seconds = timed(sample_prompts, config, prompts, 1, progress_callback, seed=config.seed)
    free_memory()
    baseline, baseline_seconds = timed(
        sample_prompts, config, prompts, 1, progress_callback, model_path=config.baseline_model, seed=config.seed
    )
    free_memory()
    policy_texts, baseline_texts = [s[0].text for s in policy], [s[0].text for s in baseline]
    emit_log(progress_callback, f"Scoring {2 * len(rows)} responses with {len(config.reward_models)} reward model(s)")
    scores = load_scorer(config).score(prompts * 2, policy_texts + baseline_texts, config.per_device_eval_batch_size)
    policy_scores, baseline_scores = scores[: len(rows)], scores[len(rows) :]
    winners = [outcome(*values) for values in zip(policy_texts, baseline_texts, policy_scores, baseline_scores)]
    metrics = win_rate_metrics(winners, policy_scores, baseline_scores)
    metrics["sampling_seconds"] = seconds + baseline_seconds
    comparisons = [
        {
            "prompt": row["prompt"],
            "item": row["item"],
            "external_id": row["external_id"],
            "policy": p,
            "baseline": b,
            "policy_score": ps,
            "baseline_score": bs,
            "winner": w,
        }
        for row, p, b, ps, bs, w in zip(rows, policy_texts, baseline_texts, policy_scores, baseline_scores, winners)
    ]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(comparisons, output_dir / "comparisons.jsonl")
    write_info(
        output_dir,
        {
            "kind": "evaluate",
            "model": config.base_model,
            "baseline_model": config.baseline_model,
            "reward_models": config.reward_models,
            "config": config.to_dict(),
            "metrics": metrics,
            "interval": "wilson-95",
            "files": ["comparisons.jsonl"],
        },
    )
    emit_log(
        progress_callback,
        f"win rate {metrics['win_rate']:.3f} [{metrics['win_rate_lo']:.3f}, {metrics['win_rate_hi']:.3f}] "
        f"over {len(rows)} prompts",
    )
    return metrics
