"""Critique and revision against a constitution: the supervised stage of Constitutional AI (Bai et al. 2022).

For each prompt row of ``dataset_paths["train"]`` (policy.py's contract) the policy answers; then, ``rounds`` times,
a principle drawn at random (seeded: ``random.Random(config.seed)``, one draw per prompt and round) from the
constitution in the config (``principle_names`` / ``principle_texts``, filled in by Arbiter from the project), the
policy critiques its latest response against it (``critique_template``) and revises it (``revision_template``).
Each turn goes through the tokenizer's chat template (``policy.PLAIN_POLICY_CHAT_TEMPLATE`` when it has none); each
round starts from the prompt and the latest response, so the context does not grow with the rounds.

Writes into ``output_dir``, no weights:

- ``candidates.jsonl``: one row per prompt, generate's shape (``{"prompt", "item", "external_id", "responses"}``)
  with two responses, the answer and the last revision, each with ``"metadata": {"stage": "answer" | "revision",
  "principle", "critique"}`` (the answer's critique is the first round's, the revision's the last round's), and
  ``"rounds": [{"principle", "critique", "revision"}, ...]``: the pairwise round people or judges check;
- ``sft.jsonl``: rows of the ``sft`` export, ``{"id", "messages"}`` (the prompt's turns, then the last revision as
  the assistant's turn), for ``train sft --from-run N``; an empty revision is left out;
- ``arbiter.json`` with the principles drawn and the templates' hashes.

    config = CritiqueReviseRunConfig.from_dict({"base_model": "/models/policy", "principle_names": ["honest"],
                                                "principle_texts": ["Do not deceive."], "rounds": 2})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)   # → out/candidates.jsonl, out/sft.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .base import RunCancelled, RunnerError, emit_log, resolve_precision
from .critique_revise_config import (  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
    CONFIG_CLASS,
    CritiqueReviseRunConfig,
    fill_template,
)
from .data import as_messages, write_jsonl
from .policy import (
    Sample,
    encode_prompt,
    ensure_policy_chat_template,
    is_gguf,
    length_batches,
    load_policy_tokenizer,
    model_label,
    open_sampler,
    start_prompt_run,
    timed,
    write_info,
)


def check_causal_lm(path: str) -> None:
    """A policy must be a language model: a sequence classifier (a reward model) would load with a random
    language-model head and write noise, so it is refused."""
    if is_gguf(path):
        return
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # an adapter folder, say: loading it says what it is
    if any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        raise RunnerError(
            f"{path} is a sequence classifier (a reward model), not a causal language model: it cannot answer, "
            "critique or revise."
        )


def draw_principles(n_prompts: int, rounds: int, n_principles: int, seed: int) -> list[list[int]]:
    """The principle (its index) of each prompt's each round, drawn uniformly with ``random.Random(seed)``.

    >>> draw_principles(2, 3, 1, 0)
    [[0, 0, 0], [0, 0, 0]]
    """
    rng = random.Random(seed)
    return [[rng.randrange(n_principles) for _ in range(rounds)] for _ in range(n_prompts)]


def critique_conversation(prompt, response: str, request: str) -> list[dict]:
    """The prompt's turns, the response as the assistant's turn, then the critique request."""
    return [
        *as_messages(prompt, "user"),
        {"role": "assistant", "content": response},
        {"role": "user", "content": request},
    ]


def revision_conversation(critique_messages: list[dict], critique: str, request: str) -> list[dict]:
    """The critique conversation, the critique as the assistant's turn, then the revision request."""
    return [*critique_messages, {"role": "assistant", "content": critique}, {"role": "user", "content": request}]


class Passes:
    """One loaded sampler answering whole lists of conversations, a pass at a time, with one progress bar over
    every pass of the run (each pass has as many batches as the first)."""

    def __init__(self, config, sampler, tokenizer, n_conversations: int, n_passes: int, progress_callback):
        self.config, self.sampler, self.tokenizer = config, sampler, tokenizer
        self.batch_size = max(1, config.generation_batch_size)
        self.per_pass = -(-n_conversations // self.batch_size)
        self.total = self.per_pass * n_passes
        self.step = 0
        self.progress_callback = progress_callback
        self._report({"event": "start", "step": 0, "total": self.total, "phase": "answer"})

    def _report(self, event: dict) -> None:
        if self.progress_callback(event):
            raise RunCancelled()

    def sample(self, conversations: list[list[dict]], phase: str) -> list[Sample]:
        ids = [encode_prompt(self.tokenizer, messages, self.config.max_prompt_length) for messages in conversations]
        results: list = [None] * len(ids)
        for batch in length_batches([len(i) for i in ids], self.batch_size):
            for index, samples in zip(batch, self.sampler.generate([ids[i] for i in batch], 1, self.config)):
                results[index] = samples[0]
            self.step += 1
            self._report({"event": "progress", "step": self.step, "total": self.total, "phase": phase})
        return results


def critique_and_revise(config: CritiqueReviseRunConfig, prompts: list, progress_callback) -> list[dict]:
    """For each prompt: ``{"answer": Sample, "rounds": [{"principle", "critique": Sample, "revision": Sample}]}``."""
    from transformers import set_seed

    principles = config.principles
    drawn = draw_principles(len(prompts), config.rounds, len(principles), config.seed)
    precision = resolve_precision(config)
    tokenizer = load_policy_tokenizer(config.base_model)
    ensure_policy_chat_template(tokenizer)
    sampler = open_sampler(config, config.base_model, tokenizer, precision)
    set_seed(config.seed)  # after loading: the draws start from the seed, whatever loading did
    emit_log(
        progress_callback,
        f"Answering {len(prompts)} prompts, then {config.rounds} round(s) of critique and revision against "
        f"{len(principles)} principle(s), with {model_label(config.base_model)} ({config.generation_backend}, "
        f"precision {precision})",
    )
    try:
        passes = Passes(config, sampler, tokenizer, len(prompts), 1 + 2 * config.rounds, progress_callback)
        answers = passes.sample([as_messages(prompt, "user") for prompt in prompts], "answer")
        results = [{"answer": answer, "rounds": []} for answer in answers]
        latest = [answer.text for answer in answers]
        for number in range(config.rounds):
            chosen = [principles[drawn[i][number]] for i in range(len(prompts))]
            critique_messages = [
                critique_conversation(prompt, latest[i], fill_template(config.critique_template, *chosen[i]))
                for i, prompt in enumerate(prompts)
            ]
            critiques = passes.sample(critique_messages, f"critique {number + 1}")
            revision_messages = [
                revision_conversation(
                    critique_messages[i], critiques[i].text, fill_template(config.revision_template, *chosen[i])
                )
                for i in range(len(prompts))
            ]
            revisions = passes.sample(revision_messages, f"revision {number + 1}")
            for i, result in enumerate(results):
                result["rounds"].append({"principle": chosen[i][0], "critique": critiques[i], "revision": revisions[i]})
            latest = [revision.text for revision in revisions]
    finally:
        sampler.close()
    return results


def run(
    config: CritiqueReviseRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None
) -> dict:
    """Answer, critique, revise; write ``candidates.jsonl``, ``sft.jsonl`` and ``arbiter.json``; return the metrics
    (see the module docstring). ``checkpoint_dir`` is unused: a pass is short and written whole or not at all."""
    if not config.principles:
        raise RunnerError(
            "critique_revise needs a constitution to draw principles from (principle_names and principle_texts; "
            "Arbiter fills them in from the project's constitution)."
        )
    rows = start_prompt_run(config, dataset_paths, "critique_revise", needs_reward=False)
    check_causal_lm(config.base_model)
    prompts = [row["prompt"] for row in rows]
    results, seconds = timed(critique_and_revise, config, prompts, progress_callback)
    label = config.model_label or model_label(config.base_model)
    candidates = candidate_rows(rows, results, label)
    sft = sft_rows(rows, results)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(candidates, output_dir / "candidates.jsonl")
    write_jsonl(sft, output_dir / "sft.jsonl")
    metrics = critique_metrics(results, len(sft), seconds)
    used = sorted({r["principle"] for result in results for r in result["rounds"]})
    write_info(
        output_dir,
        {
            "kind": "critique_revise",
            "model": config.base_model,
            "model_label": label,
            "config": config.to_dict(),
            "metrics": metrics,
            "principles_used": used,
            "templates": config.template_hashes(),
            "files": ["candidates.jsonl", "sft.jsonl"],
        },
    )
    emit_log(
        progress_callback,
        f"{metrics['prompts']:.0f} prompts, {metrics['critiques']:.0f} critiques, {metrics['sft_rows']:.0f} "
        f"revisions for SFT ({metrics['changed_fraction']:.0%} differ from the answer)",
    )
    return metrics


def candidate_rows(rows: list[dict], results: list[dict], label: str) -> list[dict]:
    """One ``candidates.jsonl`` row per prompt: the answer and the last revision, with their stage metadata."""
    out = []
    for row, result in zip(rows, results):
        first, last = result["rounds"][0], result["rounds"][-1]
        answer = {
            **result["answer"].to_dict(),
            "model": label,
            "metadata": {"stage": "answer", "principle": first["principle"], "critique": first["critique"].text},
        }
        revision = {
            **last["revision"].to_dict(),
            "model": label,
            "metadata": {
                "stage": "revision",
                "principle": last["principle"],
                "critique": last["critique"].text,
                "round": len(result["rounds"]),
            },
        }
        out.append(
            {
                "prompt": row["prompt"],
                "item": row["item"],
                "external_id": row["external_id"],
                "responses": [answer, revision],
                "rounds": [
                    {"principle": r["principle"], "critique": r["critique"].text, "revision": r["revision"].text}
                    for r in result["rounds"]
                ],
            }
        )
    return out


def sft_rows(rows: list[dict], results: list[dict]) -> list[dict]:
    """Rows of the ``sft`` export (what ``sft`` with source=demonstrations reads): the prompt's turns, then the last
    revision as the assistant's answer. A prompt whose revision is empty teaches nothing and is left out."""
    out = []
    for number, (row, result) in enumerate(zip(rows, results), 1):
        revision = result["rounds"][-1]["revision"].text
        if not revision.strip():
            continue
        messages = [*as_messages(row["prompt"], "user"), {"role": "assistant", "content": revision}]
        out.append({"id": str(row["external_id"] or row["item"] or number), "messages": messages})
    return out


def critique_metrics(results: list[dict], sft_count: int, seconds: float) -> dict:
    """Counts of the run (floats, as every run's metrics)."""
    n = len(results)
    answers = [result["answer"] for result in results]
    revisions = [result["rounds"][-1]["revision"] for result in results]
    critiques = [r["critique"] for result in results for r in result["rounds"]]
    changed = sum(a.text != r.text for a, r in zip(answers, revisions))
    return {
        "prompts": float(n),
        "rounds": float(len(results[0]["rounds"]) if results else 0),
        "critiques": float(len(critiques)),
        "sft_rows": float(sft_count),
        "changed_fraction": changed / n if n else 0.0,
        "mean_answer_tokens": sum(a.tokens for a in answers) / max(n, 1),
        "mean_critique_tokens": sum(c.tokens for c in critiques) / max(len(critiques), 1),
        "mean_revision_tokens": sum(r.tokens for r in revisions) / max(n, 1),
        "sampling_seconds": seconds,
    }
