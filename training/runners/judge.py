"""An AI judge's votes on a project's items (issue 15; docs/ai-feedback.md). No Django here: the worker runs this in
a subprocess and Arbiter records the votes when it finishes (training.publishing → annotate.actions.record_ai_votes).

Reads ``dataset_paths["items"]``, written at launch, one JSON row per item the judge has not voted on::

    {"item": 12, "prompt": [messages], "responses": ["text", ...], "spec": {...annotate.judging.AnswerSpec...},
     "conversations": [{"order": [0, 1], "messages": [...]}, {"order": [1, 0], "messages": [...]}]}

(``conversations`` for the generative backends: pairwise items twice, A-B then B-A). Appends one JSON row per item
to ``dataset_paths["votes"]`` as it goes, flushed after every batch: a resumed attempt (after a lost worker, a
failure or a cancel) reads what is there and judges only the rest, so no item is judged twice. Each vote row::

    {"item", "status": "ok" | "unparseable" | "error", "answer", "raw": [outputs], "parsed": [per order],
     "position_consistent", "confidence", "tokens": {"prompt", "completion"}, "error", "model", "template_hash"}

Backends:

- ``local``: a causal LM from a folder of safetensors, batched ``model.generate`` (greedy at temperature 0),
  ``batch_size`` conversations at a time, on the GPU when there is one;
- ``openai``: an OpenAI-compatible endpoint through judge_openai.OpenAIBackend (bounded concurrency, retries); the
  key is read from the environment variable ``api_key_env`` names, here and nowhere else;
- ``reward-model``: the registered reward models score each response (training.scoring), combined by weight on
  standardised scores; the score gap gives the vote and its confidence (annotate.judging).

Progress: one ``metrics`` event per batch with ``judged`` (of the total, resumed ones included), ``unparseable``
and ``errors``; the returned metrics add ``position_consistency`` (pairwise) and ``items_per_second``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from annotate import judging  # plain Python: no Django, no torch

from ..scoring import RewardScorer
from .base import RunCancelled, RunnerError, emit_log, offline_environment, read_arbiter_json, resolve_precision
from .data import read_split
from .judge_config import CONFIG_CLASS, JudgeRunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
from .policy import (
    TransformersSampler,
    check_model_path,
    encode_prompt,
    ensure_policy_chat_template,
    free_memory,
    length_batches,
    load_policy_tokenizer,
    model_label,
)

OPENAI_CHUNK = 64  # items sent to an endpoint between two flushes of the votes file
REWARD_CHUNK = 64  # items scored by reward models between two flushes


def run(config: JudgeRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Judge every item of the items file that the votes file does not hold yet; return the run's metrics."""
    if "items" not in dataset_paths or "votes" not in dataset_paths:
        raise RunnerError("A judge run reads an items file and appends to a votes file (dataset_paths items, votes).")
    items = read_split(dataset_paths["items"])
    votes_path = Path(dataset_paths["votes"])
    done = read_votes(votes_path)
    todo = [row for row in items if row["item"] not in done]
    total = len(items)
    counts = {status: sum(1 for v in done.values() if v["status"] == status) for status in ("unparseable", "error")}
    emit_log(
        progress_callback,
        f"Judge {config.judge or '?'} ({config.backend}): {total} items, {len(done)} judged by an earlier attempt",
    )
    _report(progress_callback, {"event": "start", "step": len(done), "total": total})
    backend = open_backend(config, items[0]["spec"] if items else None, progress_callback) if todo else None
    started, judged_now = time.perf_counter(), 0
    try:
        with open(votes_path, "ab") as out:
            for chunk in _chunks(todo, backend.chunk_size if backend else 1):
                votes = backend.judge(chunk)
                for vote in votes:
                    out.write(orjson.dumps(vote) + b"\n")
                    done[vote["item"]] = vote
                    if vote["status"] in counts:
                        counts[vote["status"]] += 1
                out.flush()
                os.fsync(out.fileno())  # what is acknowledged to the log is on disk: a resumed attempt skips it
                judged_now += len(votes)
                _report(
                    progress_callback,
                    {
                        "event": "metrics",
                        "step": len(done),
                        "total": total,
                        "metrics": {
                            "judged": float(len(done)),
                            "unparseable": float(counts["unparseable"]),
                            "errors": float(counts["error"]),
                        },
                    },
                )
    finally:
        if backend is not None:
            backend.close()
    seconds = time.perf_counter() - started
    return vote_metrics(list(done.values()), total, judged_now, seconds)


def _report(progress_callback, event: dict) -> None:
    if progress_callback(event):
        raise RunCancelled()


def _chunks(rows: list, size: int):
    for start in range(0, len(rows), max(1, size)):
        yield rows[start : start + size]


def read_votes(path: Path) -> dict[int, dict]:
    """The votes an earlier attempt wrote, by item. A last line cut short (the process was killed mid-write) is
    dropped and the file rewritten without it, so that appending goes on from a clean line."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return {}
    votes, clean = {}, True
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            vote = orjson.loads(line)
        except orjson.JSONDecodeError:
            clean = False
            continue
        votes.setdefault(vote["item"], vote)
    if not clean or (path.stat().st_size and not path.read_bytes().endswith(b"\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in votes.values()))
        tmp.replace(path)
    return votes


def vote_metrics(votes: list[dict], total: int, judged_now: int, seconds: float) -> dict:
    """Counts over every vote of the run (earlier attempts' too), and this attempt's speed."""
    pairwise = [v for v in votes if v.get("position_consistent") is not None]
    metrics = {
        "items": float(total),
        "judged": float(len(votes)),
        "ok": float(sum(v["status"] == "ok" for v in votes)),
        "unparseable": float(sum(v["status"] == "unparseable" for v in votes)),
        "errors": float(sum(v["status"] == "error" for v in votes)),
        "judging_seconds": seconds,
        "items_per_second": judged_now / seconds if seconds > 0 and judged_now else 0.0,
        "prompt_tokens": float(sum((v.get("tokens") or {}).get("prompt") or 0 for v in votes)),
        "completion_tokens": float(sum((v.get("tokens") or {}).get("completion") or 0 for v in votes)),
    }
    if pairwise:
        metrics["position_consistency"] = sum(v["position_consistent"] for v in pairwise) / len(pairwise)
    return metrics


def vote_row(item: dict, vote: judging.Vote, raw: list, tokens: dict, model: str, template_hash: str) -> dict:
    return {
        "item": item["item"],
        "status": vote.status,
        "answer": vote.answer,
        "raw": raw,
        "parsed": vote.parsed,
        "position_consistent": vote.position_consistent,
        "confidence": vote.confidence,
        "tokens": tokens,
        "error": vote.error,
        "model": model,
        "template_hash": template_hash,
    }


def open_backend(config: JudgeRunConfig, spec: dict | None, progress_callback):
    if config.backend == "local":
        return LocalBackend(config, progress_callback)
    if config.backend == "openai":
        return EndpointBackend(config, progress_callback)
    if config.backend == "reward-model":
        return RewardBackend(config, judging.AnswerSpec.from_dict(spec), progress_callback)
    raise RunnerError(f"Unknown judge backend {config.backend!r}.")


# --- generative judges ------------------------------------------------------------------------------------------


class GenerativeBackend:
    """What the local and endpoint judges share: each item's conversations out, outputs in, parsed and folded."""

    chunk_size = 1

    def outputs(self, conversations: list[list[dict]]) -> list[tuple[str | None, str, dict]]:
        """``(text or None, error, {"prompt", "completion"} tokens)`` per conversation, in order."""
        raise NotImplementedError

    def judge(self, items: list[dict]) -> list[dict]:
        flat = [conversation["messages"] for item in items for conversation in item["conversations"]]
        results = iter(self.outputs(flat))
        rows = []
        for item in items:
            spec = judging.AnswerSpec.from_dict(item["spec"])
            shown = [tuple(c["order"]) for c in item["conversations"]]
            answers = [next(results) for _ in shown]
            texts = [text for text, _, _ in answers]
            vote = judging.vote_from_outputs(texts, shown, spec, [error for _, error, _ in answers])
            tokens = {
                key: sum(t.get(key) or 0 for _, _, t in answers)
                if any(t.get(key) is not None for _, _, t in answers)
                else None
                for key in ("prompt", "completion")
            }
            rows.append(vote_row(item, vote, texts, tokens, self.model_label, self.config.template_hash))
        return rows

    def close(self) -> None:
        pass


class LocalBackend(GenerativeBackend):
    """A causal LM from its folder: prompts through its chat template, greedy (temperature 0) batched generation."""

    def __init__(self, config: JudgeRunConfig, progress_callback):
        from transformers import set_seed

        check_model_path(config.model, "judge model")
        offline_environment()
        self.config = config
        precision = resolve_precision(config)
        self.tokenizer = load_policy_tokenizer(config.model)
        ensure_policy_chat_template(self.tokenizer)
        self.sampler = TransformersSampler.load(config.model, config, self.tokenizer, precision)
        set_seed(config.seed)
        self.model_label = config.model
        self.chunk_size = max(1, config.batch_size // 2)  # pairwise items are two conversations
        emit_log(
            progress_callback,
            f"Local judge {model_label(config.model)}: precision {precision}, batches of {config.batch_size}, "
            f"temperature {config.temperature}",
        )

    def outputs(self, conversations):
        ids = [encode_prompt(self.tokenizer, messages, self.config.max_prompt_length) for messages in conversations]
        results: list = [None] * len(ids)
        for batch in length_batches([len(i) for i in ids], self.config.batch_size):
            samples = self.sampler.generate([ids[i] for i in batch], 1, _Sampling(self.config))
            for index, (sample,) in zip(batch, samples):
                results[index] = (sample.text, "", {"prompt": len(ids[index]), "completion": sample.tokens})
        return results

    def close(self) -> None:
        self.sampler.close()


class _Sampling:
    """The generation settings TransformersSampler reads (policy.generation_config), from a judge's config."""

    def __init__(self, config: JudgeRunConfig):
        self.temperature = config.temperature
        self.max_new_tokens = config.max_new_tokens
        self.top_p = 1.0


class EndpointBackend(GenerativeBackend):
    """An OpenAI-compatible endpoint; the key comes from the environment variable the judge names."""

    def __init__(self, config: JudgeRunConfig, progress_callback):
        from .judge_openai import OpenAIBackend

        api_key = None
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env)
            if not api_key:
                raise RunnerError(
                    f"The environment variable {config.api_key_env} (the judge's API key) is not set on the worker."
                )
        self.config = config
        try:
            self.client = OpenAIBackend(
                config.base_url,
                config.model,
                api_key,
                concurrency=config.concurrency,
                timeout=config.timeout,
                retries=config.retries,
                temperature=config.temperature,
                max_tokens=config.max_new_tokens,
                allowed_hosts=list(config.allowed_hosts),
            )
        except ValueError as exc:
            raise RunnerError(str(exc)) from None
        self.model_label = f"{config.model} @ {config.base_url}"
        self.chunk_size = max(OPENAI_CHUNK, 2 * config.concurrency)
        emit_log(progress_callback, f"Endpoint judge {self.model_label}: {config.concurrency} requests in flight")

    def outputs(self, conversations):
        return [
            (c.text, c.error or "", {"prompt": c.prompt_tokens, "completion": c.completion_tokens})
            for c in self.client.complete(conversations)
        ]

    def close(self) -> None:
        self.client.close()


# --- reward models ----------------------------------------------------------------------------------------------


def _prompt_text(messages):
    """What a reward model reads as the prompt: a single user message's text, else the conversation
    (training.scoring.encode applies the chat template to it)."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return messages


class RewardBackend:
    """Registered reward models score each response; their standardised scores, weighted, decide the vote."""

    def __init__(self, config: JudgeRunConfig, spec: judging.AnswerSpec, progress_callback):
        if not config.reward_models:
            raise RunnerError("A reward-model judge needs at least one reward model (reward_models).")
        for folder in config.reward_models:
            check_model_path(folder, "reward model")
        offline_environment()
        self.config, self.spec = config, spec
        self.infos = [read_arbiter_json(folder) for folder in config.reward_models]
        try:
            self.plan = judging.reward_plan(spec.kind, spec.criteria, self.infos)
        except ValueError as exc:
            raise RunnerError(str(exc)) from None
        self.weights = list(config.reward_weights) or [1.0 / len(config.reward_models)] * len(config.reward_models)
        self.scorers = [RewardScorer.load(folder) for folder in config.reward_models]
        self.model_label = config.model
        self.chunk_size = REWARD_CHUNK
        emit_log(progress_callback, f"Reward-model judge: {len(self.scorers)} reward model(s), {spec.kind} votes")

    def judge(self, items: list[dict]) -> list[dict]:
        if self.spec.kind == judging.STEPS:
            return self._judge_steps(items)
        prompts = [_prompt_text(item["prompt"]) for item in items for _ in item["responses"]]
        texts = [text for item in items for text in item["responses"]]
        # Each model's scores of every response, standardised by its training statistics (as CombinedScorer does).
        standard, predicted = [], []
        for scorer, info in zip(self.scorers, self.infos):
            raw = scorer.score(prompts, texts, self.config.batch_size)
            stats = scorer.reward_stats
            spread = stats.get("std") or 1.0
            standard.append([(value - stats.get("mean", 0.0)) / spread for value in raw])
            rating = info.get("score_stats") or {}
            predicted.append([value * (rating.get("std") or 1.0) + rating.get("mean", 0.0) for value in raw])
        rows, start = [], 0
        for item in items:
            n = len(item["responses"])
            span = range(start, start + n)
            start += n
            vote = self._vote(item, standard, predicted, span)
            raw = [{"scores": [[standard[m][i] for i in span] for m in range(len(self.scorers))]}]
            rows.append(vote_row(item, vote, raw, {}, self.model_label, ""))
        return rows

    def _judge_steps(self, items: list[dict]) -> list[dict]:
        """Process reward models label each step: their class probabilities, weighted, pick the likeliest label."""
        rows = []
        for item in items:
            n_steps = judging.AnswerSpec.from_dict(item["spec"]).n_steps
            prompt = _prompt_text(item["prompt"])
            combined = [[{} for _ in range(n)] for n in n_steps]
            problem = ""
            for scorer, weight in zip(self.scorers, self.weights):
                steps = [scorer.split(text) for text in item["responses"]]
                counts = [len(s) for s in steps]
                if counts != list(n_steps):
                    problem = (
                        f"The process reward model splits the responses on {scorer.separator!r} into {counts} steps; "
                        f"the project has {list(n_steps)}: train it with the project's step_separator."
                    )
                    break
                found = scorer.step_probabilities([prompt] * len(steps), steps, self.config.batch_size)
                if [len(f) for f in found] != counts:
                    problem = f"A response is longer than the process reward model's max_length={scorer.max_length}."
                    break
                for response, probabilities in zip(combined, found):
                    for step, classes in zip(response, probabilities):
                        for name, p in zip(scorer.label_names, classes):
                            step[name] = step.get(name, 0.0) + weight * p
            if problem:
                vote = judging.Vote("error", error=problem)
            else:
                total = sum(self.weights) or 1.0
                vote = judging.steps_from_probabilities(
                    [[{k: v / total for k, v in step.items()} for step in response] for response in combined]
                )
            rows.append(vote_row(item, vote, vote.parsed, {}, self.model_label, ""))
        return rows

    def _combined(self, scores: list[list[float]], models: list[int], span) -> list[float]:
        return [sum(self.weights[m] * scores[m][i] for m in models) for i in span]

    def _vote(self, item: dict, standard, predicted, span) -> judging.Vote:
        kind = self.spec.kind
        if kind == judging.PAIRWISE:
            criteria = {c: self._combined(standard, models, span) for c, models in self.plan["criteria"].items()}
            return judging.pairwise_from_scores(self._combined(standard, self.plan["overall"], span), criteria or None)
        if kind == judging.RANKING:
            return judging.ranking_from_scores(self._combined(standard, self.plan["overall"], span))
        # rating: the weighted mean of the predicted ratings of the models of each criterion
        predictions = {}
        for criterion, models in self.plan["criteria"].items():
            total = sum(self.weights[m] for m in models) or 1.0
            predictions[criterion] = [sum(self.weights[m] * predicted[m][i] for m in models) / total for i in span]
        return judging.ratings_from_predictions(predictions, judging.AnswerSpec.from_dict(item["spec"]))

    def close(self) -> None:
        self.scorers = []
        free_memory()
