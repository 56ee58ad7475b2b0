"""New prompts from a seed pool: Self-Instruct and Evol-Instruct (the methods and their settings:
synthesize_prompts_config.py; the filters' sources: docs/synthetic-prompts.md).

Reads the seed pool from ``dataset_paths["train"]`` (policy.py's prompt rows), writes ``num_candidates``
instructions in batches of ``generation_batch_size`` with the policy (``base_model``), and keeps those that pass
every filter, in this order (a dropped instruction is counted under the first filter it fails):

1. its text: ``too_short`` / ``too_long`` (words), ``malformed`` (starts with punctuation or another non-word
   character, or copies a template phrase such as "#Rewritten Prompt#"), ``unchanged`` (evol_instruct: the same
   words as the prompt it rewrote), ``off_prompt`` (evol_instruct in depth: the rewrite keeps less than
   ``min_kept_from_prompt`` of its prompt's words, in order: it answered or replaced the prompt), ``keyword`` (a task a language model cannot do: image, draw, plot...);
2. ``near_duplicate``: ROUGE-L F above ``rouge_threshold`` against a pool prompt or an instruction kept before;
3. its answer (``check_answers``): the model answers it; ``no_answer`` (fewer than ``min_answer_words`` words) or
   ``refusal`` (a refusal phrase in fewer than ``refusal_max_words`` words).

Self-Instruct bootstraps: each batch's requests show examples from the pool and, once some are kept, from the
instructions kept in earlier batches. Writes into ``output_dir``, no weights:

- ``prompts.jsonl``: the kept instructions, rows of a prompts file (``{"prompt", "item": null, "external_id"}``)
  plus ``"seed"`` (the examples or the pool prompt it came from: ``{"index", "item", "external_id"}`` of the
  pool, or ``{"generated": external_id}`` of an instruction kept earlier), ``"method"`` and ``"operation"``;
  ``train generate --from-run N`` fills candidates for them into a new round;
- ``synthesis.jsonl``: every instruction written, with its request's seed, the answer and why it was dropped;
- ``arbiter.json`` with the templates' hashes.

    config = SynthesizePromptsRunConfig.from_dict({"base_model": "/models/policy", "method": "evol_instruct"})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)   # → out/prompts.jsonl
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from .base import RunCancelled, emit_log, resolve_precision
from .critique_revise import check_causal_lm
from .data import write_jsonl
from .policy import (
    encode_prompt,
    ensure_policy_chat_template,
    length_batches,
    load_policy_tokenizer,
    model_label,
    open_sampler,
    start_prompt_run,
    timed,
    write_info,
)
from .rouge import RougeIndex, lcs_length, tokens
from .synthesize_prompts_config import (  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
    BREADTH,
    CONFIG_CLASS,
    DEPTH_OPERATIONS,
    SynthesizePromptsRunConfig,
)

# Why an instruction was dropped, in the order the filters run (the metrics are ``dropped_<reason>``).
DROP_REASONS = (
    "too_short",
    "too_long",
    "malformed",
    "unchanged",
    "off_prompt",
    "keyword",
    "near_duplicate",
    "no_answer",
    "refusal",
)
_TASK_LABEL = re.compile(r"^\s*(?:task\s*\d*\s*[:.)-]\s*)", re.IGNORECASE)
_NEXT_TASK = re.compile(r"\n\s*task\s*\d+\s*[:.)-]", re.IGNORECASE)


@dataclass
class Candidate:
    """One instruction the model wrote: where it came from, the text parsed from its output, and its fate."""

    seed: list[dict]
    operation: str = ""
    origin: str = ""  # evol_instruct: the pool prompt it rewrites
    raw: str = ""
    text: str = ""
    answer: str = ""
    reason: str = ""  # one of DROP_REASONS, or "" when kept
    request: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        body = {k: v for k, v in dataclasses.asdict(self).items() if k != "request"}
        body["kept"] = not self.reason
        return body


def prompt_text(prompt) -> str:
    """The instruction of a pool prompt: its text, or the last user turn of a conversation (the whole conversation's
    text when no turn is the user's)."""
    if isinstance(prompt, str):
        return prompt.strip()
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return (users[-1] if users else "\n\n".join(m["content"] for m in prompt)).strip()


def parse_instruction(output: str, method: str) -> str:
    """The instruction in a sampled output: Self-Instruct's output loses a leading "Task 9:" and stops where the
    model starts the next task; an evolved prompt is taken whole.

    >>> parse_instruction("Task 9: Name three rivers.\\nTask 10: Sing.", "self_instruct")
    'Name three rivers.'
    """
    text = output.strip()
    if method == "self_instruct":
        text = _TASK_LABEL.sub("", text, count=1)
        text = _NEXT_TASK.split(text, maxsplit=1)[0]
    return text.strip()


def _words_pattern(phrases: list[str]) -> re.Pattern | None:
    phrases = [p.strip().lower() for p in phrases if p.strip()]
    if not phrases:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in phrases) + r")(?!\w)")


class Filters:
    """The filters of a config, compiled once: :meth:`text_reason` (before the answer) and :meth:`answer_reason`."""

    def __init__(self, config: SynthesizePromptsRunConfig):
        self.config = config
        self.keywords = _words_pattern(config.unanswerable_keywords)
        self.refusals = _words_pattern(config.refusal_phrases)
        self.template_phrases = [p.lower() for p in config.template_phrases if p.strip()]

    def text_reason(self, text: str, origin: str = "", depth: bool = False) -> str:
        """Why an instruction fails on its text alone ("" when it passes); ``origin``: the prompt an evolution
        rewrote, ``depth``: an in-depth rewrite (which must keep its prompt)."""
        words = tokens(text)
        if len(words) < self.config.min_words:
            return "too_short"
        if len(words) > self.config.max_words:
            return "too_long"
        lowered = text.lower()
        if not text[0].isalnum() or any(phrase in lowered for phrase in self.template_phrases):
            return "malformed"
        if origin and words == tokens(origin):
            return "unchanged"
        if depth and origin:
            kept = tokens(origin)
            if kept and lcs_length(kept, words) < self.config.min_kept_from_prompt * len(kept):
                return "off_prompt"
        if self.keywords is not None and self.keywords.search(lowered):
            return "keyword"
        return ""

    def answer_reason(self, answer: str) -> str:
        """Why the model's answer shows it cannot answer the instruction ("" when it can)."""
        words = tokens(answer)
        if not words or len(words) < self.config.min_answer_words:
            return "no_answer"
        if self.refusals is not None and len(words) < self.config.refusal_max_words:
            if self.refusals.search(answer.lower()):
                return "refusal"
        return ""


def self_instruct_request(
    config: SynthesizePromptsRunConfig, pool: list[str], rows: list[dict], kept: list[tuple[str, str]], rng
) -> Candidate:
    """A Self-Instruct request: ``num_examples`` examples, up to ``num_generated_examples`` of them from the kept
    instructions (``(external_id, text)``), the rest from the pool, in a random order."""
    n_generated = min(config.num_generated_examples, len(kept))
    n_pool = min(config.num_examples - n_generated, len(pool))
    examples = [(pool[i], {"index": i, "item": rows[i]["item"], "external_id": rows[i]["external_id"]}) for i in
                rng.sample(range(len(pool)), n_pool)]  # fmt: skip
    examples += [(kept[i][1], {"generated": kept[i][0]}) for i in rng.sample(range(len(kept)), n_generated)]
    rng.shuffle(examples)
    listed = "".join(f"Task {number}: {text}\n" for number, (text, _) in enumerate(examples, 1))
    request = config.self_instruct_template.replace("{examples}", listed).replace("{next}", str(len(examples) + 1))
    return Candidate(seed=[ref for _, ref in examples], request=[{"role": "user", "content": request}])


def evol_request(config: SynthesizePromptsRunConfig, pool: list[str], rows: list[dict], index: int, rng) -> Candidate:
    """An Evol-Instruct request: pool prompt ``index`` with an operation drawn uniformly from ``operations``."""
    operation = rng.choice(config.operations)
    prompt = pool[index]
    if operation == BREADTH:
        request = config.breadth_template.replace("{prompt}", prompt)
    else:
        request = config.depth_template.replace("{operation}", DEPTH_OPERATIONS[operation]).replace("{prompt}", prompt)
    seed = [{"index": index, "item": rows[index]["item"], "external_id": rows[index]["external_id"]}]
    return Candidate(seed=seed, operation=operation, origin=prompt, request=[{"role": "user", "content": request}])


def synthesize(config: SynthesizePromptsRunConfig, rows: list[dict], sample, progress_callback) -> list[Candidate]:
    """Every candidate written, each with its ``reason`` ("" for the kept ones, in the order kept).

    ``sample(conversations, max_new_tokens) -> list[str]`` answers a list of conversations (the policy's
    sampler; tests may pass a stand-in). Each batch is one request pass and one answer pass (two progress steps).
    """
    rng = random.Random(config.seed)
    pool = [prompt_text(row["prompt"]) for row in rows]
    filters = Filters(config)
    threshold = config.rouge_threshold
    pool_index, kept_index = RougeIndex(pool), RougeIndex()
    kept: list[tuple[str, str]] = []  # (external_id, text) of the kept instructions, in order
    total = config.num_candidates or len(pool)
    size = max(1, config.generation_batch_size)
    n_batches = -(-total // size)
    candidates: list[Candidate] = []
    _report(progress_callback, {"event": "start", "step": 0, "total": 2 * n_batches, "phase": "write"})
    for number in range(n_batches):
        start = number * size
        batch = [
            self_instruct_request(config, pool, rows, kept, rng)
            if config.method == "self_instruct"
            else evol_request(config, pool, rows, position % len(pool), rng)
            for position in range(start, min(start + size, total))
        ]
        outputs = sample([c.request for c in batch], config.max_new_tokens)
        _report(
            progress_callback, {"event": "progress", "step": 2 * number + 1, "total": 2 * n_batches, "phase": "write"}
        )
        survivors = []
        for candidate, output in zip(batch, outputs):
            candidate.raw = output
            candidate.text = parse_instruction(output, config.method)
            candidate.reason = filters.text_reason(
                candidate.text, candidate.origin, depth=bool(candidate.operation) and candidate.operation != BREADTH
            )
            if not candidate.reason and (
                pool_index.near_duplicate(candidate.text, threshold)
                or kept_index.near_duplicate(candidate.text, threshold)
            ):
                candidate.reason = "near_duplicate"
            if not candidate.reason:
                survivors.append(candidate)
        if config.check_answers and survivors:
            answers = sample([[{"role": "user", "content": c.text}] for c in survivors], config.answer_max_new_tokens)
            for candidate, answer in zip(survivors, answers):
                candidate.answer = answer
                candidate.reason = filters.answer_reason(answer)
        _report(
            progress_callback, {"event": "progress", "step": 2 * number + 2, "total": 2 * n_batches, "phase": "answer"}
        )
        for candidate in survivors:  # against each other too, now that the batch's answers are known
            if candidate.reason:
                continue
            if kept_index.near_duplicate(candidate.text, threshold):
                candidate.reason = "near_duplicate"
                continue
            kept_index.add(candidate.text)
            kept.append((f"synth-{len(kept) + 1}", candidate.text))
        candidates += batch
    return candidates


def _report(progress_callback, event: dict) -> None:
    if progress_callback(event):
        raise RunCancelled()


class PolicySampler:
    """The policy answering lists of conversations, one sample each, in batches of similar length."""

    def __init__(self, config: SynthesizePromptsRunConfig, sampler, tokenizer):
        self.config, self.sampler, self.tokenizer = config, sampler, tokenizer

    def __call__(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        settings = dataclasses.replace(self.config, max_new_tokens=max_new_tokens)
        ids = [encode_prompt(self.tokenizer, messages, self.config.max_prompt_length) for messages in conversations]
        texts: list = [None] * len(ids)
        for batch in length_batches([len(i) for i in ids], max(1, self.config.generation_batch_size)):
            for index, samples in zip(batch, self.sampler.generate([ids[i] for i in batch], 1, settings)):
                texts[index] = samples[0].text
        return texts


def write_with_policy(config: SynthesizePromptsRunConfig, rows: list[dict], progress_callback) -> list[Candidate]:
    """:func:`synthesize` with the policy of ``config.base_model`` loaded once for every pass."""
    from transformers import set_seed

    precision = resolve_precision(config)
    tokenizer = load_policy_tokenizer(config.base_model)
    ensure_policy_chat_template(tokenizer)
    # One engine for both passes: vLLM sizes its context for the longer of the two.
    longest = dataclasses.replace(config, max_new_tokens=max(config.max_new_tokens, config.answer_max_new_tokens))
    sampler = open_sampler(longest, config.base_model, tokenizer, precision)
    set_seed(config.seed)  # after loading: the draws start from the seed, whatever loading did
    emit_log(
        progress_callback,
        f"Writing {config.num_candidates or len(rows)} instructions ({config.method}) from a pool of {len(rows)} "
        f"with {model_label(config.base_model)} ({config.generation_backend}, precision {precision})",
    )
    try:
        return synthesize(config, rows, PolicySampler(config, sampler, tokenizer), progress_callback)
    finally:
        sampler.close()


def run(
    config: SynthesizePromptsRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None
) -> dict:
    """Write, filter, keep; write ``prompts.jsonl``, ``synthesis.jsonl`` and ``arbiter.json``; return the metrics
    (see the module docstring). ``checkpoint_dir`` is unused: the kept prompts are written whole or not at all."""
    rows = start_prompt_run(config, dataset_paths, "synthesize_prompts", needs_reward=False)
    check_causal_lm(config.base_model)
    candidates, seconds = timed(write_with_policy, config, rows, progress_callback)
    kept = prompt_rows(config, candidates)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(kept, output_dir / "prompts.jsonl")
    write_jsonl([c.to_dict() for c in candidates], output_dir / "synthesis.jsonl")
    metrics = synthesis_metrics(len(rows), candidates, seconds)
    write_info(
        output_dir,
        {
            "kind": "synthesize_prompts",
            "model": config.base_model,
            "model_label": model_label(config.base_model),
            "config": config.to_dict(),
            "metrics": metrics,
            "templates": config.template_hashes(),
            "files": ["prompts.jsonl", "synthesis.jsonl"],
        },
    )
    dropped = ", ".join(f"{metrics[f'dropped_{r}']:.0f} {r}" for r in DROP_REASONS if metrics[f"dropped_{r}"])
    emit_log(
        progress_callback,
        f"Kept {metrics['n_kept']:.0f} of {metrics['n_generated']:.0f} instructions"
        + (f"; dropped: {dropped}" if dropped else ""),
    )
    return metrics


def prompt_rows(config: SynthesizePromptsRunConfig, candidates: list[Candidate]) -> list[dict]:
    """The kept instructions as rows of a prompts file, with their seed, method and operation."""
    kept = [c for c in candidates if not c.reason]
    return [
        {
            "prompt": c.text,
            "item": None,
            "external_id": f"synth-{number}",
            "seed": c.seed,
            "method": config.method,
            "operation": c.operation,
        }
        for number, c in enumerate(kept, 1)
    ]


def synthesis_metrics(pool_size: int, candidates: list[Candidate], seconds: float) -> dict:
    """Counts of the run (floats, as every run's metrics): written = kept + the drops of every filter."""
    kept = [c for c in candidates if not c.reason]
    metrics = {
        "n_pool": float(pool_size),
        "n_generated": float(len(candidates)),
        "n_kept": float(len(kept)),
        "kept_fraction": len(kept) / len(candidates) if candidates else 0.0,
        "mean_kept_words": sum(len(tokens(c.text)) for c in kept) / max(len(kept), 1),
        "sampling_seconds": seconds,
    }
    for reason in DROP_REASONS:
        metrics[f"dropped_{reason}"] = float(sum(c.reason == reason for c in candidates))
    return metrics
