"""Preferences, rankings, ratings, labels, steps and demonstrations → the rows of each format: pure functions
of DataFrames and :class:`ItemTables`, and :func:`canonical`, the bytes a row is written and hashed as.

TRL preference rows are *standard* (``prompt``, ``chosen``, ``rejected`` as strings) when every prompt is one
user message and *conversational* (lists of ``{"role", "content"}``) when any prompt is a conversation: one
dataset cannot mix the two. ``margin`` is the mean strength (0–3) of the votes for the winner, the margin of
Llama 2's reward-model loss; a vote without a strength counts 0; ranking votes have none, rating votes use the
score difference.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd

from ..models import Project
from .aggregation import LABEL_KEYS, majority_labels
from .options import ExportError


@dataclass
class ItemTables:
    """What rows need besides the votes: prompts, response texts (in import order), external ids, prompt hashes."""

    prompts: dict[int, list[dict]]
    responses: dict[int, list[tuple[int, str]]]
    external_ids: dict[int, str]
    prompt_hashes: dict[str, str] = field(default_factory=dict)  # external id → prompt hash
    conversational: bool | None = None
    texts: dict[int, str] = field(default_factory=dict)  # response id → text

    def __post_init__(self):
        if self.conversational is None:
            self.conversational = any(len(p) != 1 or p[0]["role"] != "user" for p in self.prompts.values())
        if not self.texts:
            self.texts = {rid: text for pairs in self.responses.values() for rid, text in pairs}

    def text(self, item: int, response: int) -> str:
        return self.texts[response]


def canonical(value) -> bytes:
    """The canonical bytes of a row: JSON with sorted keys, no spaces, UTF-8. Hashes and JSONL files use them."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _prompt_and_completion(tables: ItemTables, item: int, text: str, conversational: bool):
    prompt = tables.prompts[item]
    if conversational:
        return prompt, [{"role": "assistant", "content": text}]
    return prompt[-1]["content"], text


def trl_rows(preferences: pd.DataFrame, tables: ItemTables) -> list[dict]:
    """TRL preference rows (``prompt``, ``chosen``, ``rejected``, ``margin``, ``id``; ``tie`` when ties are kept;
    ``weight`` when the preferences have one, the ``weights`` option)."""
    items = preferences["item"].tolist()
    texts, external = tables.texts, tables.external_ids
    chosen = [texts[r] for r in preferences["chosen"].tolist()]
    rejected = [texts[r] for r in preferences["rejected"].tolist()]
    margins = preferences["margin"].astype(float).tolist()
    if tables.conversational:
        prompts = [tables.prompts[i] for i in items]
        chosen = [[{"role": "assistant", "content": t}] for t in chosen]
        rejected = [[{"role": "assistant", "content": t}] for t in rejected]
    else:
        prompts = [tables.prompts[i][-1]["content"] for i in items]
    rows = [
        {"prompt": p, "chosen": c, "rejected": r, "margin": m, "id": external[i]}
        for p, c, r, m, i in zip(prompts, chosen, rejected, margins, items)
    ]
    if len(preferences) and preferences["tie"].any():
        for row, tie in zip(rows, preferences["tie"].tolist()):
            row["tie"] = bool(tie)
    if "weight" in preferences.columns:  # the weights option: the reliability of the row's voters
        for row, weight in zip(rows, preferences["weight"].astype(float).tolist()):
            row["weight"] = weight
    return rows


def hh_transcript(messages: list[dict]) -> str:
    """Chat messages as an Anthropic HH transcript; a system message becomes the first Human turn's preamble."""
    parts, preamble = [], ""
    for message in messages:
        if message["role"] == "system":
            preamble += message["content"] + "\n\n"
            continue
        speaker = "Human" if message["role"] == "user" else "Assistant"
        parts.append(f"\n\n{speaker}: {preamble if speaker == 'Human' else ''}{message['content']}")
        if speaker == "Human":
            preamble = ""
    return "".join(parts)


def hh_rows(preferences: pd.DataFrame, tables: ItemTables) -> list[dict]:
    """Anthropic HH rows: ``chosen`` and ``rejected`` are whole transcripts ending in the two responses."""
    rows = []
    for pref in preferences.itertuples(index=False):
        prompt = tables.prompts[pref.item]
        row = {
            "chosen": hh_transcript(prompt + [{"role": "assistant", "content": tables.text(pref.item, pref.chosen)}]),
            "rejected": hh_transcript(
                prompt + [{"role": "assistant", "content": tables.text(pref.item, pref.rejected)}]
            ),
            "id": tables.external_ids[pref.item],
        }
        if pref.tie:
            row["tie"] = True
        rows.append(row)
    return rows


def openai_dpo_rows(preferences: pd.DataFrame, tables: ItemTables) -> list[dict]:
    """OpenAI preference fine-tuning rows: ``input.messages``, ``preferred_output``, ``non_preferred_output``."""
    return [
        {
            "input": {"messages": tables.prompts[pref.item], "tools": [], "parallel_tool_calls": True},
            "preferred_output": [{"role": "assistant", "content": tables.text(pref.item, pref.chosen)}],
            "non_preferred_output": [{"role": "assistant", "content": tables.text(pref.item, pref.rejected)}],
        }
        for pref in preferences.itertuples(index=False)
        if not pref.tie
    ]


def kto_rows(preferences: pd.DataFrame, tables: ItemTables) -> list[dict]:
    """TRL unpaired rows (``prompt``, ``completion``, boolean ``label``).

    A response that wins more than half of its preferences is desirable, one that loses more than half is
    undesirable, an even one is left out: a pairwise preference gives one of each, a ranking its top and bottom.
    """
    wins: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for pref in preferences.itertuples(index=False):
        if pref.tie:
            continue
        wins[(pref.item, pref.chosen)][0] += 1
        wins[(pref.item, pref.rejected)][1] += 1
    conversational = tables.conversational
    rows = []
    for (item, response), (won, lost) in sorted(wins.items()):
        if won == lost:
            continue
        prompt, completion = _prompt_and_completion(tables, item, tables.text(item, response), conversational)
        rows.append({"prompt": prompt, "completion": completion, "label": won > lost, "id": tables.external_ids[item]})
    return rows


def ratings_kto_rows(
    votes: pd.DataFrame, tables: ItemTables, project: Project, criterion: str, threshold: float | None = None
) -> list[dict]:
    """KTO rows from ratings: a mean score of at least ``threshold`` is desirable, below it undesirable; without
    one, above the middle of the scale is desirable, below undesirable and on it left out. On a binary scale (two
    values) a response is desirable when its votes lean to the top value (unanimously, with ``threshold`` = the top)."""
    scale = project.rating_scale
    if "labels" in scale:
        raise ExportError("A categorical rating scale has no middle to split desirable from undesirable.")
    middle = (scale["min"] + scale["max"]) / 2
    name = criterion or project.rating_criteria[0]
    scores: dict[tuple[int, int], list[float]] = defaultdict(list)
    for vote in votes.itertuples(index=False):
        for rid, values in vote.data["ratings"].items():
            scores[(vote.item, int(rid))].append(values[name])
    conversational = tables.conversational
    rows = []
    for (item, response), values in sorted(scores.items()):
        mean = float(np.mean(values))
        if threshold is None and mean == middle:
            continue
        label = mean > middle if threshold is None else mean >= threshold
        prompt, completion = _prompt_and_completion(tables, item, tables.text(item, response), conversational)
        rows.append({"prompt": prompt, "completion": completion, "label": label, "id": tables.external_ids[item]})
    return rows


def ranking_rows(votes: pd.DataFrame, tables: ItemTables, aggregate: str, names: dict[int, str]) -> list[dict]:
    """K-wise rows: ``responses`` best first and ``ranks`` (1 = best; equal ranks mark ties).

    With ``majority`` the responses of an item are ordered by their mean rank over annotators.
    """
    rows = []
    if aggregate == "none":
        for vote in votes.itertuples(index=False):
            ordered, ranks = [], []
            for position, group in enumerate(vote.data["ranking"], start=1):
                for rid in group:
                    ordered.append(rid)
                    ranks.append(position)
            rows.append(_ranking_row(tables, vote.item, ordered, ranks, [names[vote.annotator]]))
        return rows
    for item, group in votes.groupby("item"):
        positions: dict[int, list[int]] = defaultdict(list)
        for ranking in group["data"]:
            for position, members in enumerate(ranking["ranking"], start=1):
                for rid in members:
                    positions[rid].append(position)
        means = {rid: float(np.mean(p)) for rid, p in positions.items()}
        ordered = sorted(means, key=lambda rid: (means[rid], rid))
        distinct = sorted(set(means.values()))
        ranks = [distinct.index(means[rid]) + 1 for rid in ordered]
        annotators = sorted(names[a] for a in group["annotator"])
        rows.append(_ranking_row(tables, int(item), ordered, ranks, annotators))
    return rows


def _ranking_row(tables, item, ordered, ranks, annotators) -> dict:
    return {
        "id": tables.external_ids[item],
        "prompt": tables.prompts[item],
        "responses": [tables.text(item, rid) for rid in ordered],
        "ranks": ranks,
        "annotators": annotators,
    }


def ratings_rows(votes: pd.DataFrame, tables: ItemTables, names: dict[int, str]) -> list[dict]:
    """One row per prompt: every response with each criterion's scores, their annotators, and the mean."""
    rows = []
    for item, group in votes.groupby("item"):
        item = int(item)
        per_response = {
            rid: {"text": text, "scores": defaultdict(list), "annotators": []} for rid, text in tables.responses[item]
        }
        for vote in group.itertuples(index=False):
            for rid, scores in vote.data["ratings"].items():
                entry = per_response[int(rid)]
                entry["annotators"].append(names[vote.annotator])
                for criterion, score in scores.items():
                    entry["scores"][criterion].append(score)
        responses = []
        for entry in per_response.values():
            scores = dict(entry["scores"])
            mean = {c: float(np.mean(s)) for c, s in scores.items() if all(isinstance(v, (int, float)) for v in s)}
            responses.append({"text": entry["text"], "scores": scores, "mean": mean, "annotators": entry["annotators"]})
        rows.append({"id": tables.external_ids[item], "prompt": tables.prompts[item], "responses": responses})
    return rows


def label_rows(
    labels: pd.DataFrame,
    tables: ItemTables,
    criteria: list[str],
    numeric: bool,
    model: pd.DataFrame | None = None,
    min_agreement: float = 0.0,
) -> list[dict]:
    """The ``labels`` format: one row per item × response × criterion with votes, in item, response and
    criterion order: ``id``, ``response`` (its index in the item), ``criterion``, ``label``, ``confidence``
    (0–1) and ``votes`` (how many scores it had); on a numeric scale also ``mean`` and ``median``.

    ``labels`` comes from :func:`rating_labels`. Without ``model`` the label is the majority
    (:func:`majority_labels`); with one (:func:`fit_label_model`) it is the model's label and ``confidence``
    its posterior probability. Rows below ``min_agreement`` confidence are left out.
    """
    if labels.empty:
        return []
    grouped = labels.groupby(LABEL_KEYS)["label"]
    units = grouped.size().rename("votes").to_frame()
    if numeric:
        units = units.join(grouped.mean().rename("mean")).join(grouped.median().rename("median"))
    chosen = model if model is not None else majority_labels(labels)
    units = units.join(chosen, how="inner").reset_index()
    units = units[units["confidence"] >= min_agreement]
    position = {rid: i for pairs in tables.responses.values() for i, (rid, _) in enumerate(pairs)}
    order = {criterion: i for i, criterion in enumerate(criteria)}
    units = units.assign(position=units["response"].map(position), order=units["criterion"].map(order))
    units = units.sort_values(["item", "position", "order"], kind="stable")
    rows = []
    for unit in units.itertuples(index=False):
        row = {
            "id": tables.external_ids[unit.item],
            "response": int(unit.position),
            "criterion": unit.criterion,
            "label": unit.label.item() if isinstance(unit.label, np.generic) else unit.label,
            "confidence": float(unit.confidence),
            "votes": int(unit.votes),
        }
        if numeric:
            row.update(mean=float(unit.mean), median=float(unit.median))
        rows.append(row)
    return rows


STEP_NAMES = ("negative", "neutral", "positive")  # with step_labels=three a tie goes to the first of them here


def steps_rows(
    project: Project,
    votes: pd.DataFrame,
    tables: ItemTables,
    aggregate: str,
    neutral: bool = True,
    three: bool = False,
) -> list[dict]:
    """TRL stepwise supervision: ``prompt``, ``completions`` (the steps), ``labels`` (one bool per step).

    A negative step is False and a positive one True; ``neutral`` says what a neutral step counts as. With
    ``majority`` each step takes its most frequent label (a tie between labels counts as negative). ``three``: the
    labels are the names ``positive`` / ``neutral`` / ``negative`` instead, for a process reward model with a
    neutral class (a tie goes to the lower one: negative, then neutral).
    """
    value = {"positive": True, "negative": False, "neutral": neutral}

    def label(names: list[str]):
        if three:
            return max(STEP_NAMES, key=lambda name: (names.count(name), -STEP_NAMES.index(name)))
        return sum(value[name] for name in names) * 2 > len(names)

    conversational = tables.conversational
    rows = []
    grouped = (
        [(vote.item, [vote]) for vote in votes.itertuples(index=False)]
        if aggregate == "none"
        else [(item, list(group.itertuples(index=False))) for item, group in votes.groupby("item")]
    )
    for item, group in grouped:
        item = int(item)
        for rid, text in tables.responses[item]:
            steps = project.split_steps(text)
            per_step = [
                [v.data["steps"][str(rid)][i] for v in group if str(rid) in v.data["steps"]] for i in range(len(steps))
            ]
            if not per_step or not per_step[0]:
                continue
            prompt = tables.prompts[item] if conversational else tables.prompts[item][-1]["content"]
            labels = [label(names) for names in per_step]
            rows.append({"id": tables.external_ids[item], "prompt": prompt, "completions": steps, "labels": labels})
    return rows


def sft_rows(votes: pd.DataFrame, tables: ItemTables) -> list[dict]:
    """SFT ``messages``: the prompt then the demonstration (a demonstration answer, or a pairwise rewrite)."""
    rows = []
    for vote in votes.itertuples(index=False):
        text = (
            vote.text if vote.data is None or "demonstration" not in (vote.data or {}) else vote.data["demonstration"]
        )
        if not text or not text.strip():
            continue
        messages = tables.prompts[vote.item] + [{"role": "assistant", "content": text}]
        rows.append({"id": tables.external_ids[vote.item], "messages": messages})
    return rows


def _chars(value) -> int:
    """Characters of text in a row (prompt and completions), not counting ids and numbers."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for k, v in value.items() if k not in ("id", "role"))
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0
