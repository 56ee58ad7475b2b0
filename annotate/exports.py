"""Datasets out of Arbiter, in the formats training reads.

The ORM reads (:func:`vote_frame`, :func:`item_tables`) are separate from the transforms, which are pure
functions of DataFrames and dicts:

- :func:`pair_votes` turns every kind's votes into pairwise votes — a pairwise judgment is one, a ranking of K
  responses is C(K, 2) (a shared rank is a tie), a rating compares every two responses by score (equal is a tie);
- :func:`majority_pairs` aggregates them into one preference per (item, pair), :func:`all_pairs` keeps each vote;
- ``*_rows`` functions turn preferences, rankings, ratings, steps and demonstrations into rows.

TRL preference rows are *standard* (``prompt``, ``chosen``, ``rejected`` as strings) when every prompt is one
user message and *conversational* (lists of ``{"role", "content"}``) when any prompt is a conversation: one
dataset cannot mix the two. ``margin`` is the mean strength (0–3) of the votes for the winner, the margin of
Llama 2's reward-model loss; a vote without a strength counts 0; ranking votes have none, rating votes use the
score difference.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import operator
import os
import re
import shutil
import tempfile
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path

from typing import Iterator

import numpy as np
import orjson
import pandas as pd
import yaml
from django.conf import settings
from django.db import connections, transaction
from django.db.models import Case, Q, Value, When
from django.db.models.fields.json import KT

from .models import Item, Judgment, Kind, Membership, Project, Response, Snapshot, prompt_hash

FORMATS = ("trl", "hh", "openai-dpo", "kto", "ranking", "ratings", "labels", "steps", "sft", "raw")
PREFERENCE_FORMATS = {"trl", "hh", "openai-dpo", "kto"}
CONTAINERS = ("jsonl", "parquet", "hf")
AGGREGATES = ("majority", "dawid-skene", "bradley-terry", "none")
# Aggregations that fit a model of the annotators over the whole project before rows are written.
MODEL_AGGREGATES = ("dawid-skene", "bradley-terry")
# The aggregations each format can use, its default first; a (format, kind) key overrides the format's entry
# for projects of that kind. Anything else is refused, never ignored (docs/exports.md has this table).
FORMAT_AGGREGATES = {
    "trl": AGGREGATES,
    "hh": AGGREGATES,
    "openai-dpo": AGGREGATES,
    "kto": AGGREGATES,
    ("kto", Kind.RATING): ("majority",),  # the mean score of each response against the scale's middle
    "ranking": ("majority", "none"),  # majority: responses by mean rank
    "ratings": ("none",),  # every annotator's scores, and their mean
    "labels": ("majority", "dawid-skene"),
    "steps": ("majority", "none"),
    "sft": ("none",),
    "raw": ("none",),
}


def format_aggregates(fmt: str, kind: str | None = None) -> tuple[str, ...]:
    """The aggregations ``fmt`` can use (for a project of ``kind``), its default first."""
    return FORMAT_AGGREGATES.get((fmt, kind), FORMAT_AGGREGATES[fmt])


# Which formats each kind can produce.
KIND_FORMATS = {
    Kind.PAIRWISE: PREFERENCE_FORMATS | {"sft", "raw"},
    Kind.RANKING: PREFERENCE_FORMATS | {"ranking", "raw"},
    Kind.RATING: PREFERENCE_FORMATS | {"ratings", "labels", "raw"},
    Kind.STEPS: {"steps", "raw"},
    Kind.DEMONSTRATION: {"sft", "raw"},
}
PAIR_COLUMNS = ["item", "annotator", "a", "b", "winner", "strength", "first"]
# Votes of annotators in these states are left out of exports unless asked for.
EXCLUDED_STATUSES = [Membership.Status.PAUSED, Membership.Status.FLAGGED]
PREFERENCE_COLUMNS = ["item", "chosen", "rejected", "margin", "n_votes", "agreement", "tie"]


class ExportError(ValueError):
    pass


CATEGORICAL_PREFERENCES = (
    "A categorical rating scale has no order to turn into preferences; the labels format gives one label per "
    "response and criterion."
)


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


# --- reads ----------------------------------------------------------------------------------------
# Exports stream: items are taken in ranges of CHUNK_ITEMS ids, and each range's votes, prompts and texts are
# read, turned into rows and written before the next, so memory does not grow with the project.
CHUNK_ITEMS = 20_000


def items_in_scope(project: Project, include_gold: bool = False):
    items = Item.objects.filter(project=project)
    return items if include_gold else items.filter(purpose=Item.Purpose.NORMAL)


def item_ranges(items, size: int | None = None) -> list[tuple[int, int]]:
    """Inclusive (first id, last id) ranges of ``size`` items each (default ``CHUNK_ITEMS``)."""
    from .agreement import numeric_rows

    size = size or CHUNK_ITEMS
    ids = np.sort(numeric_rows(items.values_list("id"), ["id"])[:, 0])  # binary COPY: a million ids in a blink
    return [(int(ids[i]), int(ids[min(i + size, len(ids)) - 1])) for i in range(0, len(ids), size)]


def _conversational_prompt() -> Q:
    return Q(prompt__1__isnull=False) | ~Q(prompt__0__role="user")


def is_conversational(items) -> bool:
    """Whether any prompt is more than one user message (then every row of the export is conversational)."""
    return items.filter(_conversational_prompt()).exists()


def current_judgments(project: Project, include_paused: bool = False, include_gold: bool = False, items: tuple[int, int] | None = None):
    """The judgments an export reads: current ones, by default on normal items only and without paused or
    flagged annotators; ``items`` an inclusive range of item ids."""
    judgments = Judgment.objects.filter(project=project, is_current=True)
    if items is not None:
        judgments = judgments.filter(item_id__gte=items[0], item_id__lte=items[1])
    # Each filter costs a join or a subquery on the million-vote path: added only when it can exclude anything.
    if not include_gold and Item.objects.filter(project=project).exclude(purpose=Item.Purpose.NORMAL).exists():
        judgments = judgments.filter(item__purpose=Item.Purpose.NORMAL)
    if not include_paused:
        excluded = Membership.objects.filter(project=project, status__in=EXCLUDED_STATUSES).values("user_id")
        if excluded.exists():
            judgments = judgments.exclude(annotator_id__in=excluded)
    return judgments


def vote_frame(project: Project, include_paused: bool = False, include_gold: bool = False, items: tuple[int, int] | None = None, with_data: bool = True, with_order: bool = False, judgments=None) -> pd.DataFrame:
    """Current judgments of the project: by default on normal items only, without paused or flagged annotators.

    ``with_order`` adds ``order``, the response ids in the order the annotator saw them. A caller reading many
    ranges passes ``judgments``, :func:`current_judgments` of the whole project, to build it once."""
    if judgments is None:
        judgments = current_judgments(project, include_paused, include_gold)
    if items is not None:
        judgments = judgments.filter(item_id__gte=items[0], item_id__lte=items[1])
    columns = ["item", "annotator", "outcome", "winner", "strength"]
    fields = ["item_id", "annotator_id", "outcome", "winner_id", "strength"]
    if not with_data and not with_order:
        return _numeric_vote_frame(judgments)
    if with_data:  # a plain pairwise export needs no JSON: skipping it is most of the read time
        columns, fields = columns + ["data", "text"], fields + ["data", "text"]
    if with_order:
        columns, fields = columns + ["order"], fields + ["task__display_order"]
    frame = pd.DataFrame(list(judgments.values_list(*fields)), columns=columns)
    if not with_data:
        frame = frame.assign(data=None, text="")
    return frame


OUTCOMES = np.array([Judgment.Outcome.WIN, Judgment.Outcome.TIE, Judgment.Outcome.BOTH_BAD, ""], dtype=object)
BOTH_BAD_CODE = 2  # the index of "both bad" in OUTCOMES


def vote_table(judgments, fields: list[str]) -> np.ndarray:
    """Integer columns of ``judgments`` through ``agreement.numeric_rows`` (binary COPY on PostgreSQL), NULL as
    ``agreement._NULL``; the field ``outcome_code`` is the outcome's index in ``OUTCOMES``."""
    from .agreement import numeric_rows

    code = Case(
        *(When(outcome=outcome, then=Value(i)) for i, outcome in enumerate(OUTCOMES[:3])), default=Value(3)
    )
    return numeric_rows(judgments.annotate(outcome_code=code).values_list(*fields), fields)


def _numeric_vote_frame(judgments) -> pd.DataFrame:
    """The plain pairwise columns, all integers, through :func:`vote_table`: the million-vote export path,
    several times faster than a Python tuple per row."""
    from .agreement import _NULL

    fields = ["item_id", "annotator_id", "outcome_code", "winner_id", "strength"]
    table = vote_table(judgments, fields)
    winner = pd.array(table[:, 3], dtype="Int64")
    winner[table[:, 3] == _NULL] = pd.NA
    strength = pd.array(table[:, 4], dtype="Int64")
    strength[table[:, 4] == _NULL] = pd.NA
    return pd.DataFrame(
        {"item": table[:, 0], "annotator": table[:, 1], "outcome": OUTCOMES[table[:, 2]], "winner": winner, "strength": strength}
    ).assign(data=None, text="")


def item_tables(project: Project, items: tuple[int, int], conversational: bool) -> ItemTables:
    """Prompts, responses and ids of the project's items with ids in the inclusive range ``items``."""
    selected = Item.objects.filter(project=project, id__range=items)
    # Plain dict(zip(...)) over whole columns: this runs for every item of an export.
    prompt_column = "prompt" if conversational else KT("prompt__0__content")  # one user message: just its text
    rows = list(selected.values_list("id", prompt_column, "external_id", "prompt_hash"))
    ids, prompt_values, external_ids, hashes = zip(*rows) if rows else ((), (), (), ())
    if not conversational:
        prompt_values = [[{"role": "user", "content": text}] for text in prompt_values]
    responses: dict[int, list[tuple[int, str]]] = defaultdict(list)
    texts = {}
    for item_id, rid, text in _responses_of(project, items).order_by("item", "index").values_list("item_id", "id", "text"):
        responses[item_id].append((rid, text))
        texts[rid] = text
    return ItemTables(
        dict(zip(ids, prompt_values)), dict(responses), dict(zip(ids, external_ids)), dict(zip(external_ids, hashes)),
        conversational, texts,
    )  # fmt: skip


def _responses_of(project: Project, items: tuple[int, int]):
    """Responses of the project's items with ids in the inclusive range ``items``. (Filtering on
    ``item__project`` instead makes PostgreSQL join every item of the project, for each range.)"""
    selected = Item.objects.filter(project=project, id__range=items)
    return Response.objects.filter(item__in=selected, item_id__gte=items[0], item_id__lte=items[1])


def pseudonyms(project: Project) -> dict[int, str]:
    return dict(Membership.objects.filter(project=project).values_list("user_id", "pseudonym"))


# --- votes → pairwise votes -----------------------------------------------------------------------


def pair_votes(kind: str, votes: pd.DataFrame, responses: dict[int, list[tuple[int, str]]], criterion: str | None = None) -> pd.DataFrame:
    """Every kind's votes as pairwise votes: ``item``, ``annotator``, ``a``, ``b`` (a < b), ``winner`` (a, b or
    NA for a tie), ``strength``, and ``first`` (whichever of a and b was shown first, when ``votes`` has the
    display ``order``; for the Bradley-Terry aggregation)."""
    if kind == Kind.PAIRWISE and criterion is None:
        return _pairwise_pair_votes(votes, responses)
    has_order = "order" in votes.columns
    rows: list[tuple] = []

    def first_of(order, a, b):
        if not has_order or order is None:
            return None
        return a if order.index(a) < order.index(b) else b

    for vote in votes.itertuples(index=False):
        order = vote.order if has_order else None
        if kind == Kind.PAIRWISE:
            a, b = sorted(rid for rid, _ in responses[vote.item])
            answer = (vote.data or {}).get("criteria", {}).get(criterion)
            if answer is None:
                continue
            rows.append((vote.item, vote.annotator, a, b, answer["winner"], None, first_of(order, a, b)))
        elif kind == Kind.RANKING:
            rank = {rid: position for position, group in enumerate(vote.data["ranking"]) for rid in group}
            for a, b in combinations(sorted(rank), 2):
                winner = None if rank[a] == rank[b] else (a if rank[a] < rank[b] else b)
                rows.append((vote.item, vote.annotator, a, b, winner, None, first_of(order, a, b)))
        elif kind == Kind.RATING:
            ratings = vote.data["ratings"]
            name = criterion or next(iter(next(iter(ratings.values()))))
            scores = {int(rid): values[name] for rid, values in ratings.items()}
            if not all(isinstance(v, (int, float)) for v in scores.values()):
                raise ExportError(CATEGORICAL_PREFERENCES)
            for a, b in combinations(sorted(scores), 2):
                diff = scores[a] - scores[b]
                winner = None if diff == 0 else (a if diff > 0 else b)
                rows.append((vote.item, vote.annotator, a, b, winner, abs(diff), first_of(order, a, b)))
        else:
            raise ExportError(f"{kind} projects have no preferences.")
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    frame["winner"] = frame["winner"].astype("Int64")
    frame["first"] = frame["first"].astype("Int64")
    return frame


def _pairwise_pair_votes(votes: pd.DataFrame, responses: dict[int, list[tuple[int, str]]]) -> pd.DataFrame:
    """The pairwise case, vectorised (it is the million-vote path): "both bad" votes carry no preference."""
    votes = votes[votes["outcome"] != Judgment.Outcome.BOTH_BAD]
    pairs = pd.DataFrame(
        [(item, min(p[0][0], p[1][0]), max(p[0][0], p[1][0])) for item, p in responses.items() if len(p) == 2],
        columns=["item", "a", "b"],
    )
    has_order = "order" in votes.columns
    columns = ["item", "annotator", "winner", "strength"] + (["order"] if has_order else [])
    frame = votes[columns].merge(pairs, on="item", how="inner")
    frame["winner"] = frame["winner"].astype("Int64")
    firsts = [order[0] if order else None for order in frame["order"]] if has_order else [None] * len(frame)
    frame["first"] = pd.array(firsts, dtype="Int64")
    return frame[PAIR_COLUMNS]


def majority_pairs(pairs: pd.DataFrame, keep_ties: bool = False) -> pd.DataFrame:
    """One preference per (item, pair) whose most frequent outcome is a response.

    Where two outcomes share the top count there is no majority and the pair is dropped. Where the top
    outcome is a tie, the pair is dropped too, or kept as a row with ``tie`` true when ``keep_ties``.
    ``margin`` is the mean strength of the votes for the winner; ``agreement`` the top outcome's share.
    """
    if pairs.empty:
        return pd.DataFrame(columns=PREFERENCE_COLUMNS)
    keyed = pairs.assign(label=pairs["winner"].fillna(-1).astype(np.int64))
    counts = keyed.groupby(["item", "a", "b", "label"]).size().rename("count").reset_index()
    counts["n_votes"] = counts.groupby(["item", "a", "b"])["count"].transform("sum")
    counts["top"] = counts.groupby(["item", "a", "b"])["count"].transform("max")
    top = counts[counts["count"] == counts["top"]]
    top = top[top.groupby(["item", "a", "b"])["label"].transform("size") == 1]
    if not keep_ties:
        top = top[top["label"] >= 0]
    strengths = (
        keyed[keyed["label"] >= 0]
        .assign(strength=lambda f: f["strength"].astype(float).fillna(0.0))
        .groupby(["item", "a", "b", "label"])["strength"]
        .mean()
        .rename("margin")
        .reset_index()
    )
    top = top.merge(strengths, on=["item", "a", "b", "label"], how="left")
    tie = top["label"] < 0
    chosen = np.where(tie, top["a"], top["label"])
    return pd.DataFrame(
        {
            "item": top["item"].astype(np.int64),
            "chosen": chosen.astype(np.int64),
            "rejected": np.where(chosen == top["a"], top["b"], top["a"]).astype(np.int64),
            "margin": top["margin"].astype(float).fillna(0.0),
            "n_votes": top["n_votes"].astype(np.int64),
            "agreement": (top["count"] / top["n_votes"]).astype(float),
            "tie": tie.to_numpy(),
        }
    ).sort_values(["item", "chosen", "rejected"], ignore_index=True)


def all_pairs(pairs: pd.DataFrame, keep_ties: bool = False) -> pd.DataFrame:
    """``--aggregate none``: every pairwise vote is its own preference row; ties are dropped unless kept."""
    votes = pairs if keep_ties else pairs[pairs["winner"].notna()]
    tie = votes["winner"].isna().to_numpy()
    chosen = np.where(tie, votes["a"], votes["winner"].fillna(-1)).astype(np.int64)
    return pd.DataFrame(
        {
            "item": votes["item"].astype(np.int64),
            "chosen": chosen,
            "rejected": np.where(chosen == votes["a"], votes["b"], votes["a"]).astype(np.int64),
            "margin": np.where(tie, 0.0, votes["strength"].astype(float).fillna(0.0)),
            "n_votes": 1,
            "agreement": 1.0,
            "tie": tie,
        }
    ).reset_index(drop=True)


# --- rows -----------------------------------------------------------------------------------------


def _prompt_and_completion(tables: ItemTables, item: int, text: str, conversational: bool):
    prompt = tables.prompts[item]
    if conversational:
        return prompt, [{"role": "assistant", "content": text}]
    return prompt[-1]["content"], text


def trl_rows(preferences: pd.DataFrame, tables: ItemTables) -> list[dict]:
    """TRL preference rows (``prompt``, ``chosen``, ``rejected``, ``margin``, ``id``; ``tie`` when ties are kept)."""
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
            "rejected": hh_transcript(prompt + [{"role": "assistant", "content": tables.text(pref.item, pref.rejected)}]),
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


def ratings_kto_rows(votes: pd.DataFrame, tables: ItemTables, project: Project, criterion: str) -> list[dict]:
    """KTO rows from ratings: a mean score above the middle of the scale is desirable, below undesirable."""
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
        if mean == middle:
            continue
        prompt, completion = _prompt_and_completion(tables, item, tables.text(item, response), conversational)
        rows.append({"prompt": prompt, "completion": completion, "label": mean > middle, "id": tables.external_ids[item]})
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
            rows.append(_ranking_row(tables, vote.item, ordered, ranks, [names.get(vote.annotator, "")]))
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
        annotators = sorted(names.get(a, "") for a in group["annotator"])
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
        per_response = {rid: {"text": text, "scores": defaultdict(list), "annotators": []} for rid, text in tables.responses[item]}
        for vote in group.itertuples(index=False):
            for rid, scores in vote.data["ratings"].items():
                entry = per_response[int(rid)]
                entry["annotators"].append(names.get(vote.annotator, ""))
                for criterion, score in scores.items():
                    entry["scores"][criterion].append(score)
        responses = []
        for entry in per_response.values():
            scores = dict(entry["scores"])
            mean = {c: float(np.mean(s)) for c, s in scores.items() if all(isinstance(v, (int, float)) for v in s)}
            responses.append({"text": entry["text"], "scores": scores, "mean": mean, "annotators": entry["annotators"]})
        rows.append({"id": tables.external_ids[item], "prompt": tables.prompts[item], "responses": responses})
    return rows


LABEL_KEYS = ["item", "response", "criterion"]


def label_criteria(project: Project, options: "ExportOptions") -> list[str]:
    """The criteria a labels export covers: the one asked for, else every criterion of the project."""
    return [options.criterion] if options.criterion else project.rating_criteria


def rating_labels(votes: pd.DataFrame, criteria: list[str]) -> pd.DataFrame:
    """Every score of rating ``votes`` on ``criteria``, one row each: ``item``, ``response`` (id),
    ``criterion``, ``annotator``, ``label`` (a number on a numeric scale, else the scale's label)."""
    rows = [
        (vote.item, int(rid), criterion, vote.annotator, scores[criterion])
        for vote in votes.itertuples(index=False)
        for rid, scores in vote.data["ratings"].items()
        for criterion in criteria
        if criterion in scores
    ]
    return pd.DataFrame(rows, columns=LABEL_KEYS + ["annotator", "label"])


def majority_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """The most frequent label of each (item, response, criterion), indexed by them: ``label`` and
    ``confidence`` (its share of the votes). Where two labels share the top count there is no majority and
    the unit is left out, as preference formats leave out a pair without one."""
    counts = labels.groupby(LABEL_KEYS + ["label"]).size().rename("count").reset_index()
    counts = counts[counts["count"] == counts.groupby(LABEL_KEYS)["count"].transform("max")]
    counts = counts[counts.groupby(LABEL_KEYS)["label"].transform("size") == 1]
    votes = labels.groupby(LABEL_KEYS).size().reindex(pd.MultiIndex.from_frame(counts[LABEL_KEYS])).to_numpy()
    return counts.set_index(LABEL_KEYS).assign(confidence=lambda f: f["count"] / votes)[["label", "confidence"]]


def label_rows(labels: pd.DataFrame, tables: ItemTables, criteria: list[str], numeric: bool, model: pd.DataFrame | None = None, min_agreement: float = 0.0) -> list[dict]:
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


def fit_label_model(project: Project, options: "ExportOptions", ranges) -> tuple[pd.DataFrame, dict]:
    """Dawid-Skene over every score of the project, one fit per criterion (an annotator careful about one
    criterion may not be about another): a first pass over the votes. Returns the ``label`` and
    ``confidence`` (posterior) of each (item, response, criterion), and the fits' ``iterations`` (the most
    any criterion took), ``converged`` (all of them) and ``by_criterion``."""
    from .reliability import dawid_skene

    criteria = label_criteria(project, options)
    frames = [rating_labels(vote_frame(project, options.include_paused, options.include_gold, item_range), criteria) for item_range in ranges]
    labels = pd.concat(frames, ignore_index=True) if frames else rating_labels(pd.DataFrame(columns=["item", "annotator", "data"]), criteria)
    parts, fits = [], {}
    for criterion in criteria:
        part = labels[labels["criterion"] == criterion]
        # A response id names its item too, so it is the unit of a criterion's fit.
        fitted = dawid_skene(pd.DataFrame({"item": part["response"], "annotator": part["annotator"], "label": part["label"]}))
        fits[criterion] = fitted.convergence()
        units = part[LABEL_KEYS].drop_duplicates()
        parts.append(
            units.assign(
                label=fitted.labels.reindex(units["response"]).to_numpy(),
                confidence=fitted.posteriors.max(axis=1).reindex(units["response"]).to_numpy().astype(float),
            )
        )
    model = pd.concat(parts, ignore_index=True).set_index(LABEL_KEYS)
    found = {
        "iterations": max((f["iterations"] for f in fits.values()), default=0),
        "converged": all(f["converged"] for f in fits.values()),
        "by_criterion": fits,
    }
    return model, found


def steps_rows(project: Project, votes: pd.DataFrame, tables: ItemTables, aggregate: str, neutral: bool = True) -> list[dict]:
    """TRL stepwise supervision: ``prompt``, ``completions`` (the steps), ``labels`` (one bool per step).

    A negative step is False and a positive one True; ``neutral`` says what a neutral step counts as. With
    ``majority`` each step takes its most frequent label (a tie between labels counts as negative).
    """
    conversational = tables.conversational
    value = {"positive": True, "negative": False, "neutral": neutral}
    rows = []
    grouped = [(vote.item, [vote]) for vote in votes.itertuples(index=False)] if aggregate == "none" else [
        (item, list(group.itertuples(index=False))) for item, group in votes.groupby("item")
    ]
    for item, group in grouped:
        item = int(item)
        for rid, text in tables.responses[item]:
            steps = project.split_steps(text)
            per_step = [[value[v.data["steps"][str(rid)][i]] for v in group if str(rid) in v.data["steps"]] for i in range(len(steps))]
            if not per_step or not per_step[0]:
                continue
            labels = [sum(labels) * 2 > len(labels) for labels in per_step]
            prompt = tables.prompts[item] if conversational else tables.prompts[item][-1]["content"]
            rows.append({"id": tables.external_ids[item], "prompt": prompt, "completions": steps, "labels": labels})
    return rows


def sft_rows(votes: pd.DataFrame, tables: ItemTables) -> list[dict]:
    """SFT ``messages``: the prompt then the demonstration (a demonstration answer, or a pairwise rewrite)."""
    rows = []
    for vote in votes.itertuples(index=False):
        text = vote.text if vote.data is None or "demonstration" not in (vote.data or {}) else vote.data["demonstration"]
        if not text or not text.strip():
            continue
        messages = tables.prompts[vote.item] + [{"role": "assistant", "content": text}]
        rows.append({"id": tables.external_ids[vote.item], "messages": messages})
    return rows


# --- one call -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    """What an export is made of; stored with a snapshot. The same options over the same votes give the same hash.

    - ``aggregate``: ``majority`` (one row per item or pair), ``dawid-skene`` or ``bradley-terry`` (a model of
      the annotators fitted on the whole project) or ``none`` (every vote its own row); each format takes the
      ones :data:`FORMAT_AGGREGATES` lists, and empty means the format's default.
    - ``ties``: ``drop`` ties from preference formats, or ``keep`` them as rows with ``"tie": true`` (trl, hh,
      openai-dpo); ranking and raw always keep them.
    - ``min_agreement``: leave out preferences whose winner got less than this share of the votes.
    - ``include_paused``: keep votes of paused or flagged annotators (left out by default);
      ``include_gold``: keep gold and qualification items (left out by default; ``raw`` always has them, marked).
    - ``max_chars``: leave out rows whose prompt and completions together are longer.
    - ``criterion``: the criterion preferences come from (pairwise with criteria, rating); empty = overall.
    """

    format: str = "trl"
    aggregate: str = ""
    container: str = "jsonl"
    test_size: float = 0.0
    seed: int = 0
    dedupe: bool = True
    ties: str = "drop"
    min_agreement: float = 0.0
    include_paused: bool = False
    include_gold: bool = False
    max_chars: int | None = None
    criterion: str = ""
    neutral_steps: bool = True
    license: str = ""

    def __post_init__(self):
        if self.aggregate == "" and self.format in FORMATS:
            object.__setattr__(self, "aggregate", format_aggregates(self.format)[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExportOptions":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExportError(f"Unknown export options: {', '.join(sorted(unknown))}.")
        options = cls(**data)
        options.validate()
        return options

    def validate(self) -> None:
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if self.format not in FORMATS:
            raise ExportError(f"Unknown format {self.format!r}: use one of {', '.join(FORMATS)}.")
        if self.aggregate not in AGGREGATES:
            raise ExportError(f"Unknown aggregation {self.aggregate!r}: use one of {', '.join(AGGREGATES)}.")
        check_aggregate(self.format, self.aggregate)
        if self.container not in CONTAINERS:
            raise ExportError(f"Unknown container {self.container!r}: use one of {', '.join(CONTAINERS)}.")
        if self.ties not in ("drop", "keep"):
            raise ExportError('ties must be "drop" or "keep".')
        if not number(self.test_size) or not 0 <= self.test_size < 1:
            raise ExportError("test_size must be a number at least 0 and below 1.")
        if not number(self.min_agreement) or not 0 <= self.min_agreement <= 1:
            raise ExportError("min_agreement must be a number from 0 to 1.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ExportError("seed must be an integer.")
        if self.max_chars is not None and (isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int) or self.max_chars < 1):
            raise ExportError("max_chars must be a positive integer.")
        for name in ("dedupe", "include_paused", "include_gold", "neutral_steps"):
            if not isinstance(getattr(self, name), bool):
                raise ExportError(f"{name} must be true or false.")
        if not isinstance(self.criterion, str) or not isinstance(self.license, str):
            raise ExportError("criterion and license must be text.")




# Formats that can keep a tie as a row ("tie": true); ranking and raw always have ties, the others none to keep
# (kto rows are single completions, so a tie has no label to give).
KEEPS_TIES = {"trl", "hh", "openai-dpo", "ranking", "raw"}


def check_aggregate(fmt: str, aggregate: str, kind: str | None = None) -> None:
    """Refuse an aggregation that ``fmt`` cannot use (:data:`FORMAT_AGGREGATES`), saying which it can."""
    allowed = format_aggregates(fmt, kind)
    if aggregate in allowed:
        return
    of = f"the {fmt} format of a {kind} project" if (fmt, kind) in FORMAT_AGGREGATES else f"the {fmt} format"
    hint = " For one aggregated label per response and criterion, use the labels format." if fmt == "ratings" else ""
    raise ExportError(f"Aggregation {aggregate!r} does not apply to {of}: it takes {' or '.join(allowed)}.{hint}")


def check_options(project: Project, options: "ExportOptions") -> None:
    """Raise :class:`ExportError` unless ``options`` are valid and fit the project's kind and criteria."""
    options.validate()
    fmt = options.format
    if fmt not in KIND_FORMATS[project.kind]:
        allowed = ", ".join(sorted(KIND_FORMATS[project.kind]))
        raise ExportError(f"A {project.kind} project exports as {allowed}, not {fmt}.")
    check_aggregate(fmt, options.aggregate, project.kind)
    if fmt in PREFERENCE_FORMATS and project.kind == Kind.RATING and "labels" in project.rating_scale:
        raise ExportError(CATEGORICAL_PREFERENCES)
    agreement_applies = fmt == "labels" or (
        fmt in PREFERENCE_FORMATS and options.aggregate != "none" and not (fmt == "kto" and project.kind == Kind.RATING)
    )
    if options.min_agreement and not agreement_applies:
        raise ExportError(
            f"min_agreement does not apply to the {fmt} format with aggregate {options.aggregate!r}: only aggregated "
            "preference rows and labels have an agreement to filter on."
        )
    if options.ties == "keep" and fmt not in KEEPS_TIES:
        raise ExportError(
            f"ties=keep does not apply to the {fmt} format: only {', '.join(sorted(KEEPS_TIES))} can keep ties as rows "
            "(ranking and raw always have them)."
        )
    criterion = options.criterion or None
    if criterion and criterion not in (project.criteria or project.rating_criteria):
        raise ExportError(f"Unknown criterion {criterion!r} in project {project.slug}.")


def iter_rows(project: Project, options: "ExportOptions", fit: dict | None = None) -> Iterator[tuple[list[dict], ItemTables]]:
    """The export's rows, a chunk of items at a time, each with the tables it was built from.

    ``fit``, a dict, receives what a model aggregation found (``iterations``, ``converged``; see
    :func:`fit_preference_model` and :func:`fit_label_model`) before the first chunk is yielded."""
    check_options(project, options)
    fmt = options.format
    criterion = options.criterion or None
    include_gold = options.include_gold or fmt == "raw"
    items = items_in_scope(project, include_gold)
    conversational = is_conversational(items)
    names = pseudonyms(project) if fmt in ("ranking", "ratings", "raw") else {}
    with_data = project.kind != Kind.PAIRWISE or bool(criterion) or fmt == "sft"
    ranges = item_ranges(items)
    judgments = current_judgments(project, options.include_paused, include_gold)
    model = None
    if options.aggregate in MODEL_AGGREGATES:
        if fmt == "labels":
            model, found = fit_label_model(project, options, ranges)
        else:
            model, found = fit_preference_model(project, options, ranges, conversational, with_data)
        if fit is not None:
            fit.update(found)
    for item_range in ranges:
        tables = item_tables(project, item_range, conversational)
        if fmt == "raw":
            rows = raw_rows(project, item_range, names, tables)
        else:
            votes = vote_frame(project, options.include_paused, include_gold, item_range, with_data, judgments=judgments)
            rows = _rows(project, votes, tables, options, names, model)
        if options.max_chars:
            rows = [row for row in rows if _chars(row) <= options.max_chars]
        yield rows, tables


def _rows(project: Project, votes: pd.DataFrame, tables: ItemTables, options: "ExportOptions", names: dict[int, str], model=None) -> list[dict]:
    fmt = options.format
    if fmt in PREFERENCE_FORMATS:
        if fmt == "kto" and project.kind == Kind.RATING:
            return ratings_kto_rows(votes, tables, project, options.criterion)
        return _preference_rows(project, votes, tables, options, model)
    if fmt == "ranking":
        return ranking_rows(votes, tables, options.aggregate, names)
    if fmt == "ratings":
        return ratings_rows(votes, tables, names)
    if fmt == "labels":
        criteria = label_criteria(project, options)
        labels = rating_labels(votes, criteria)
        return label_rows(labels, tables, criteria, "labels" not in project.rating_scale, model, options.min_agreement)
    if fmt == "steps":
        return steps_rows(project, votes, tables, options.aggregate, options.neutral_steps)
    if project.kind == Kind.PAIRWISE:  # sft from pairwise: the rewrites of "both bad" answers
        votes = votes[votes["outcome"] == Judgment.Outcome.BOTH_BAD]
    return sft_rows(votes, tables)


def build_rows(project: Project, options: "ExportOptions | str" = "trl", **fields) -> list[dict]:
    """Every row of an export, before deduplication and splitting, in one list (small projects, tests).

    ``build_rows(project, "trl", aggregate="none")`` is short for ``build_rows(project, ExportOptions(...))``.
    """
    if isinstance(options, str):
        options = ExportOptions(format=options, **fields)
    return [row for rows, _ in iter_rows(project, options) for row in rows]


def _preference_rows(project: Project, votes: pd.DataFrame, tables: ItemTables, options: "ExportOptions", model=None) -> list[dict]:
    pairs = pair_votes(project.kind, votes, tables.responses, options.criterion or None)
    keep_ties = options.ties == "keep"
    if options.aggregate == "majority":
        preferences = majority_pairs(pairs, keep_ties)
        preferences = preferences[preferences["agreement"] >= options.min_agreement]
    elif options.aggregate in MODEL_AGGREGATES:
        preferences = model_pairs(pairs, model, keep_ties)
        preferences = preferences[preferences["agreement"] >= options.min_agreement]
    else:
        preferences = all_pairs(pairs, keep_ties)
    if options.format == "hh":
        return hh_rows(preferences, tables)
    if options.format == "openai-dpo":
        return openai_dpo_rows(preferences, tables)
    if options.format == "kto":
        return kto_rows(preferences, tables)
    return trl_rows(preferences, tables)


def fit_preference_model(project: Project, options: "ExportOptions", ranges, conversational: bool, with_data: bool) -> tuple[pd.DataFrame, dict]:
    """Fit Dawid-Skene or Bradley-Terry on every pairwise vote of the project (a first pass over the votes,
    integers only); returns the aggregated outcome of each (item, a, b): ``label`` (a response id, or -1 for a
    tie) and ``confidence`` (the posterior of that label, or the model's probability of that outcome), and
    the fit's ``{"iterations", "converged"}``."""
    from .reliability import dawid_skene, noisy_bradley_terry

    include_gold = options.include_gold
    frames = []
    for item_range in ranges:
        tables = item_tables(project, item_range, conversational)
        votes = vote_frame(project, options.include_paused, include_gold, item_range, with_data, with_order=options.aggregate == "bradley-terry")
        frames.append(pair_votes(project.kind, votes, tables.responses, options.criterion or None))
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)
    units = pairs[["item", "a", "b"]].drop_duplicates().reset_index(drop=True)
    if pairs.empty:
        return units.assign(label=pd.Series(dtype=np.int64), confidence=pd.Series(dtype=float)), {"iterations": 0, "converged": True}
    if options.aggregate == "dawid-skene":
        # Classes shared by every pair, as Dawid-Skene needs: 0 the lower response id won, 1 the other, 2 a tie.
        unit = pairs["item"].astype(str) + ":" + pairs["a"].astype(str) + ":" + pairs["b"].astype(str)
        winner = pairs["winner"].fillna(-1).astype(np.int64)
        relative = np.where(winner == pairs["a"], 0, np.where(winner == pairs["b"], 1, 2))
        fitted = dawid_skene(pd.DataFrame({"item": unit, "annotator": pairs["annotator"], "label": relative}))
        keys = units["item"].astype(str) + ":" + units["a"].astype(str) + ":" + units["b"].astype(str)
        best = fitted.labels.reindex(keys).to_numpy().astype(np.int64)
        confidence = fitted.posteriors.max(axis=1).reindex(keys).to_numpy()
        label = np.where(best == 0, units["a"], np.where(best == 1, units["b"], -1))
        return units.assign(label=label.astype(np.int64), confidence=confidence.astype(float)), fitted.convergence()
    first = pairs["first"].fillna(pairs["a"]).astype(np.int64)
    second = np.where(first == pairs["a"], pairs["b"], pairs["a"])
    winner = pairs["winner"]
    outcome = np.where(winner.isna(), "tie", np.where(winner.fillna(-1) == first, "first", "second"))
    fitted = noisy_bradley_terry(pd.DataFrame({"annotator": pairs["annotator"], "first": first, "second": second, "outcome": outcome}))
    d = fitted.scores.reindex(units["a"]).to_numpy() - fitted.scores.reindex(units["b"]).to_numpy()
    # Davidson's probabilities, position aside: a wins ∝ e^{d/2}, b ∝ e^{-d/2}, a tie ∝ ν.
    weights = np.stack([np.exp(d / 2), np.exp(-d / 2), np.full(len(d), fitted.tie)], axis=1)
    probabilities = weights / weights.sum(axis=1, keepdims=True)
    best = probabilities.argmax(axis=1)
    label = np.where(best == 0, units["a"], np.where(best == 1, units["b"], -1))
    found = {"iterations": fitted.n_iter, "converged": fitted.converged}
    return units.assign(label=label.astype(np.int64), confidence=probabilities.max(axis=1)), found


def model_pairs(pairs: pd.DataFrame, model: pd.DataFrame, keep_ties: bool = False) -> pd.DataFrame:
    """Preferences from a fitted model's outcome per pair; ``margin`` from the votes for the chosen response."""
    if pairs.empty:
        return pd.DataFrame(columns=PREFERENCE_COLUMNS)
    counts = pairs.groupby(["item", "a", "b"]).size().rename("n_votes").reset_index()
    chosen = counts.merge(model, on=["item", "a", "b"], how="inner")
    if not keep_ties:
        chosen = chosen[chosen["label"] >= 0]
    votes_for = pairs[pairs["winner"].notna()].assign(label=lambda f: f["winner"].astype(np.int64), strength=lambda f: f["strength"].astype(float).fillna(0.0))
    margins = votes_for.groupby(["item", "a", "b", "label"])["strength"].mean().rename("margin").reset_index()
    chosen = chosen.merge(margins, on=["item", "a", "b", "label"], how="left")
    tie = (chosen["label"] < 0).to_numpy()
    winner = np.where(tie, chosen["a"], chosen["label"]).astype(np.int64)
    return pd.DataFrame(
        {
            "item": chosen["item"].astype(np.int64),
            "chosen": winner,
            "rejected": np.where(winner == chosen["a"], chosen["b"], chosen["a"]).astype(np.int64),
            "margin": chosen["margin"].astype(float).fillna(0.0),
            "n_votes": chosen["n_votes"].astype(np.int64),
            "agreement": chosen["confidence"].astype(float),
            "tie": tie,
        }
    ).sort_values(["item", "chosen", "rejected"], ignore_index=True)


def _chars(value) -> int:
    """Characters of text in a row (prompt and completions), not counting ids and numbers."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for k, v in value.items() if k not in ("id", "role"))
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0


def raw_rows(project: Project, items: tuple[int, int], names: dict[int, str], tables: ItemTables) -> list[dict]:
    """Every vote, one row each: superseded ones, gold and qualification items and paused annotators included
    and marked, annotators by pseudonym only. Responses are named by their index in the item."""
    statuses = dict(Membership.objects.filter(project=project).values_list("user_id", "status"))
    index = {rid: position for pairs in tables.responses.values() for position, (rid, _) in enumerate(pairs)}
    judgments = Judgment.objects.filter(project=project, item_id__gte=items[0], item_id__lte=items[1]).order_by("item_id", "id").values_list(
        "id", "item__external_id", "item__purpose", "annotator_id", "outcome", "winner_id", "strength", "data", "text",
        "duration_ms", "source", "is_current", "supersedes_id", "created_at", "task__display_order", "task__leased_at",
    )  # fmt: skip
    rows = []
    for (pk, item, purpose, annotator, outcome, winner, strength, data, text, duration, source, current, supersedes,
         created, order, leased) in judgments:  # fmt: skip
        rows.append(
            {
                "judgment": pk,
                "id": item,
                "annotator": names.get(annotator, ""),
                "annotator_status": statuses.get(annotator, ""),
                "kind": project.kind,
                "outcome": outcome or None,
                "winner": index.get(winner),
                "strength": strength,
                "data": _indices(data, index),
                "text": text,
                "display_order": [index[rid] for rid in order],
                "duration_ms": duration,
                "source": source,
                "gold": purpose == Item.Purpose.GOLD,
                "qualification": purpose == Item.Purpose.QUALIFICATION,
                "superseded": not current,
                "supersedes": supersedes,
                "shown_at": leased.isoformat(),
                "created_at": created.isoformat(),
            }
        )
    return rows


def _indices(data: dict, index: dict[int, int]) -> str:
    """A judgment's data with response ids replaced by item indices, as JSON text (its shape varies by kind)."""

    def convert(value, key=None):
        if key in ("ranking",):
            return [[index.get(rid, rid) for rid in group] for group in value]
        if key in ("ratings", "steps"):
            return {str(index.get(int(rid), rid)): v for rid, v in value.items()}
        if key == "criteria":
            return {c: {**a, "winner": index.get(a.get("winner"))} for c, a in value.items()}
        if key == "based_on":
            return index.get(value, value)
        return value

    return canonical({key: convert(value, key) for key, value in (data or {}).items()}).decode()


# --- the columnar path ----------------------------------------------------------------------------
# The export that gets large — pairwise votes → TRL rows by majority, prompts of one user message, ties dropped —
# is computed on whole columns: the votes as integers (binary COPY), the majority as counts per (pair, outcome)
# with numpy, the texts read by the cursor into Arrow arrays and the canonical JSON of every row joined by Arrow,
# while a thread reads the next chunk. The general path builds a DataFrame, then a dict per row, and takes
# about four times as long on the million-vote benchmark (bench/export.py). Both give the same rows, files and
# hash: tests export the same project both ways and compare.


def fits_columns(project: Project, options: "ExportOptions") -> bool:
    """Whether the columnar path can write this export (single-message prompts are checked on the items)."""
    return (
        project.kind == Kind.PAIRWISE and options.format == "trl" and options.aggregate == "majority"
        and options.ties == "drop" and not options.criterion
    )  # fmt: skip


@dataclass
class RowBatch:
    """A chunk of rows as columns: ``table`` (the columns written to Parquet, in row order), ``lines`` (each
    row's canonical bytes and a newline), ``keys`` (each row's canonical bytes without its id, for deduplication;
    None without it) and ``prompt_hashes`` (each row's, for splits; None when there is no test split)."""

    table: object  # pyarrow.Table
    lines: object  # pyarrow.BinaryArray
    keys: object
    prompt_hashes: list[str] | None


def _fetch(queryset) -> list[tuple]:
    """The rows of a ``values_list`` queryset straight from the cursor. Only for int and text columns, which the
    ORM would return unconverted anyway: it saves the ORM's work per row."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _columns(rows: list[tuple], width: int) -> list[tuple]:
    return list(zip(*rows)) if rows else [()] * width


def response_pairs(response_ids: np.ndarray, response_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(items, a, b)`` for the items with exactly two responses, ``a`` < ``b`` their ids, items ascending."""
    order = np.lexsort((response_ids, response_items))
    items, ids = response_items[order], response_ids[order]
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]]) if len(items) else np.zeros(0, dtype=np.int64)
    two = starts[np.diff(np.r_[starts, len(items)]) == 2]
    return items[two], ids[two], ids[two + 1]


def majority_columns(votes: np.ndarray, pair_items: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`majority_pairs` with ties dropped, on integer columns: ``votes`` has item, outcome code (index in
    ``OUTCOMES``), winner and strength (NULL as ``agreement._NULL``); ``pair_items``, ``a``, ``b`` as
    :func:`response_pairs` gives them. Returns ``item``, ``chosen``, ``rejected``, ``margin`` and ``agreement``
    arrays, one entry per preference, by item."""
    from .agreement import _NULL

    votes = votes[votes[:, 1] != BOTH_BAD_CODE]
    item, winner, strength = votes[:, 0], votes[:, 2], votes[:, 3]
    n = len(pair_items)
    pos = np.minimum(np.searchsorted(pair_items, item), max(n - 1, 0))
    paired = (pair_items[pos] == item) if n else np.zeros(len(item), dtype=bool)
    pos, winner, strength = pos[paired], winner[paired], strength[paired]
    # Each vote's outcome as 0 (a won), 1 (b won) or 2 (a tie).
    outcome = np.where(winner == _NULL, 2, np.where(winner == a[pos], 0, 1))
    if ((winner != _NULL) & (winner != a[pos]) & (winner != b[pos])).any():
        return _majority_by_frame(item[paired], a[pos], b[pos], winner, strength)
    counts = np.bincount(pos * 3 + outcome, minlength=3 * n).reshape(n, 3)
    strengths = np.where(strength == _NULL, 0.0, strength.astype(float))
    sums = np.bincount(pos * 3 + outcome, weights=strengths, minlength=3 * n).reshape(n, 3)
    n_votes, top = counts.sum(axis=1), counts.max(axis=1)
    best = counts.argmax(axis=1)
    # A majority: one outcome alone at the top, and a response rather than a tie.
    keep = (n_votes > 0) & ((counts == top[:, None]).sum(axis=1) == 1) & (best < 2)
    rows = np.flatnonzero(keep)
    best, won = best[rows], top[rows]
    chosen = np.where(best == 0, a[rows], b[rows])
    return {
        "item": pair_items[rows],
        "chosen": chosen,
        "rejected": np.where(best == 0, b[rows], a[rows]),
        "margin": sums[rows, best] / won,
        "agreement": won / n_votes[rows],
    }


def _majority_by_frame(item, a, b, winner, strength) -> dict[str, np.ndarray]:
    """The general :func:`majority_pairs`, for votes whose winner is neither response of the pair."""
    from .agreement import _NULL

    frame = pd.DataFrame({"item": item, "a": a, "b": b, "winner": pd.array(winner, dtype="Int64"), "strength": pd.array(strength, dtype="Int64")})
    frame.loc[winner == _NULL, "winner"] = pd.NA
    frame.loc[strength == _NULL, "strength"] = pd.NA
    preferences = majority_pairs(frame)
    return {name: preferences[name].to_numpy() for name in ("item", "chosen", "rejected", "margin", "agreement")}


def _text_column(values):
    """A string array of ``values`` (text, or None); other values typed as ``Table.from_pylist`` would."""
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array(values)


def _lengths(column) -> np.ndarray:
    """Characters of each value, as :func:`_chars` counts them (0 for None or a number)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_string(column.type):
        return np.array([_chars(value) for value in column.to_pylist()], dtype=np.int64)
    return pc.utf8_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _json_values(values, column):
    """:func:`canonical` of each of ``values`` (``column``: their :func:`_text_column`), as a binary array.

    orjson spends microseconds on each call but little on each string of a list, so strings are encoded in one
    call and the output cut at the quotes that delimit them (a quote with an even number of backslashes
    before it; splitting at ``","`` would be wrong: a string ending in ``",`` makes a false separator).
    Anything else (a None, a number) is encoded value by value."""
    import pyarrow as pa

    if len(values) and pa.types.is_string(column.type) and column.null_count == 0:
        cut = _cut_json_strings(orjson.dumps(values), len(values))
        if cut is not None:
            return cut
    return pa.array([orjson.dumps(value) for value in values], type=pa.binary())


def _cut_json_strings(data: bytes, n: int):
    """The ``n`` JSON strings of ``data``, a JSON list of them, as a binary array (None if it is not that)."""
    import pyarrow as pa

    buffer = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buffer == ord('"'))
    escaped = np.zeros(len(quotes), dtype=bool)
    behind = quotes - 1
    run = buffer[behind] == ord("\\")
    while run.any():  # count the backslashes before each quote (rarely more than two rounds)
        escaped ^= run
        behind -= 1
        run &= buffer[behind] == ord("\\")
    delimiters = quotes[~escaped]
    if len(delimiters) != 2 * n:
        return None
    opens, closes = delimiters[0::2], delimiters[1::2]
    if opens[0] != 1 or closes[-1] != len(buffer) - 2 or (opens[1:] != closes[:-1] + 2).any():
        return None
    between = np.ones(len(buffer), dtype=bool)  # all but the brackets and the commas between the strings
    between[[0, -1]] = False
    between[closes[:-1] + 1] = False
    values = buffer[between]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(closes - opens + 1, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(values)])


class _Conversational(Exception):
    """The columnar path met a prompt that is a conversation: every row of the export must then be
    conversational, which only the general path writes."""


def iter_trl_batches(project: Project, options: "ExportOptions", with_hashes: bool = False) -> Iterator[RowBatch]:
    """The rows of a :func:`fits_columns` export as :class:`RowBatch` es, ``CHUNK_ITEMS`` items at a time: the
    same rows in the same order as :func:`iter_rows`. Raises :class:`_Conversational` (before the rows of its
    chunk) on meeting a prompt that is more than one user message.

    Chunks are read by keyset (the next ``CHUNK_ITEMS`` items after the last id read), so nothing scans the
    items beforehand; whether a prompt is a conversation comes with each item."""
    flagged = items_in_scope(project, options.include_gold).annotate(
        conversational=Case(When(_conversational_prompt(), then=Value(1)), default=Value(0))
    )  # fmt: skip
    fields = ["id", KT("prompt__0__content"), "external_id", "conversational"] + (["prompt_hash"] if with_hashes else [])
    judgments = current_judgments(project, options.include_paused, options.include_gold).order_by()
    after = [0]  # the last item id read (ids are positive)

    def read_next() -> _Chunk | None:
        rows = _fetch(flagged.filter(id__gt=after[0]).order_by("id").values_list(*fields)[:CHUNK_ITEMS])
        if not rows:
            return None
        after[0] = rows[-1][0]
        return _read_chunk(project, judgments, rows, with_hashes)

    for chunk in _read_ahead(read_next, judgments.db):
        if chunk.conversational:
            raise _Conversational
        batch = _trl_batch(chunk, options)
        if batch is not None:
            yield batch


def _read_ahead(read_next, using: str) -> Iterator:
    """``read_next()`` until it returns None; on PostgreSQL, after a first full chunk, the next one is read in a
    thread, on a connection of its own, while the caller works on the current one.

    Half of an export's time is PostgreSQL's (running the queries, sending the rows) and half Python's; one
    after the other they add up, side by side (the server is another process) the slower one sets the pace.
    Only outside a transaction: a second connection would not see what the open transaction wrote."""
    connection = connections[using]
    first = read_next()
    if first is None:
        return
    if connection.vendor != "postgresql" or connection.in_atomic_block or len(first.item_ids) < CHUNK_ITEMS:
        yield first
        while (chunk := read_next()) is not None:
            yield chunk
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read")
    pending = pool.submit(read_next)
    try:
        yield first
        while (current := pending.result()) is not None:
            pending = pool.submit(read_next)
            yield current
    finally:
        pending.cancel()
        pool.submit(connections.close_all).result()  # the thread's own connection, after its last read
        pool.shutdown()


@dataclass
class _Chunk:
    """What the rows of a range of items are made of, as read from the database."""

    item_ids: np.ndarray  # ascending
    prompts: tuple  # the text of each item's one message
    external_ids: tuple
    prompt_hashes: tuple | None
    conversational: bool  # whether any prompt is more than one user message
    response_ids: np.ndarray  # in no particular order
    response_items: np.ndarray
    texts: tuple
    votes: np.ndarray  # item, outcome code, winner, strength


def _read_chunk(project: Project, judgments, item_rows: list[tuple], with_hashes: bool) -> _Chunk:
    """The chunk of the items ``item_rows`` (id, prompt text, external id, conversational, prompt hash), by id."""
    item_columns = _columns(item_rows, 5 if with_hashes else 4)
    item_ids = np.array(item_columns[0], dtype=np.int64)
    first, last = int(item_ids[0]), int(item_ids[-1])
    if len(item_ids) == last - first + 1:  # no other item in the range: no join to the project's items needed
        responses = Response.objects.filter(item_id__gte=first, item_id__lte=last)
    else:
        responses = _responses_of(project, (first, last))
    # In no particular order (sorting them is numpy's job).
    response_ids, response_items, texts = _columns(_fetch(responses.order_by().values_list("id", "item_id", "text")), 3)
    return _Chunk(
        item_ids, item_columns[1], item_columns[2], item_columns[4] if with_hashes else None, any(item_columns[3]),
        np.array(response_ids, dtype=np.int64), np.array(response_items, dtype=np.int64), texts,
        vote_table(judgments.filter(item_id__gte=first, item_id__lte=last), ["item_id", "outcome_code", "winner_id", "strength"]),
    )  # fmt: skip


def _trl_batch(chunk: _Chunk, options: "ExportOptions") -> RowBatch | None:
    """The rows of one chunk (:func:`iter_rows` would give them as dicts)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    item_ids, prompts, external_ids, texts = chunk.item_ids, chunk.prompts, chunk.external_ids, chunk.texts
    response_ids, response_items, votes = chunk.response_ids, chunk.response_items, chunk.votes
    preferences = majority_columns(votes, *response_pairs(response_ids, response_items))
    keep = preferences["agreement"] >= options.min_agreement
    at_item = np.searchsorted(item_ids, preferences["item"][keep])
    by_id = np.argsort(response_ids)
    at_chosen = by_id[np.searchsorted(response_ids, preferences["chosen"][keep], sorter=by_id)]
    at_rejected = by_id[np.searchsorted(response_ids, preferences["rejected"][keep], sorter=by_id)]
    margin = preferences["margin"][keep]

    text_array, prompt_array = _text_column(texts), _text_column(prompts)
    chosen, rejected = text_array.take(at_chosen), text_array.take(at_rejected)
    prompt_column = prompt_array.take(at_item)
    if options.max_chars:  # as _chars counts a row: the characters of prompt, chosen and rejected
        length = sum(_lengths(column) for column in (prompt_column, chosen, rejected))
        short = length <= options.max_chars
        at_item, at_chosen, at_rejected, margin = at_item[short], at_chosen[short], at_rejected[short], margin[short]
        prompt_column, chosen, rejected = prompt_column.filter(short), chosen.filter(short), rejected.filter(short)
    if not len(at_item):
        return None
    id_array = pa.array(external_ids, type=pa.string())
    table = pa.table({"prompt": prompt_column, "chosen": chosen, "rejected": rejected, "margin": pa.array(margin, type=pa.float64()), "id": id_array.take(at_item)})

    # Canonical JSON (sorted keys, orjson's spelling of each value), joined column by column.
    json_texts = _json_values(texts, text_array)
    json_margin = pa.array(orjson.dumps(margin.tolist())[1:-1].split(b","), type=pa.binary())
    nothing = pa.scalar(b"", type=pa.binary())
    head = (b'{"chosen":', json_texts.take(at_chosen))
    tail = (b',"margin":', json_margin, b',"prompt":', _json_values(prompts, prompt_array).take(at_item), b',"rejected":', json_texts.take(at_rejected))
    lines = pc.binary_join_element_wise(*head, b',"id":', _json_values(external_ids, id_array).take(at_item), *tail, b"}\n", nothing)
    keys = pc.binary_join_element_wise(*head, *tail, b"}", nothing) if options.dedupe else None
    at_item_list = at_item.tolist()
    hashes = [chunk.prompt_hashes[i] for i in at_item_list] if chunk.prompt_hashes is not None else None
    return RowBatch(table, lines, keys, hashes)


# --- writing: splits, deduplication, hashing -----------------------------------------------------


def canonical(value) -> bytes:
    """The canonical bytes of a row: JSON with sorted keys, no spaces, UTF-8. Hashes and JSONL files use them."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_prompts(project: Project, options: "ExportOptions") -> set[str]:
    """The prompt hashes of the test split: the judged prompts, shuffled with the seed, the first share of them.

    Rows are assigned by their item's prompt, so rows sharing a prompt (K-wise pairs, several votes, the same
    prompt with other responses) are always in the same split.
    """
    if not options.test_size:
        return set()
    items = items_in_scope(project, options.include_gold).filter(n_judgments__gt=0)
    groups = sorted(set(items.values_list("prompt_hash", flat=True)))
    n_test = int(round(options.test_size * len(groups)))
    if len(groups) >= 2:
        n_test = min(max(n_test, 1), len(groups) - 1)
    order = np.random.default_rng(options.seed).permutation(len(groups))
    return {groups[i] for i in order[:n_test]}


def criterion_tests(project: Project, options: "ExportOptions") -> list[str]:
    """The criteria whose preferences on the test prompts an export also holds, as ``test:<criterion>`` splits.

    A reward model trained on one criterion (or the overall judgment) reports its accuracy on each other one;
    these splits are written and hashed with the export, so what a run is scored on is as fixed as what it
    trains on. Preference formats of pairwise and rating projects with criteria, when there is a test split.
    """
    if not options.test_size or options.format not in PREFERENCE_FORMATS or project.kind not in (Kind.PAIRWISE, Kind.RATING):
        return []
    return [criterion for criterion in project.criteria or [] if criterion != options.criterion]


def criterion_file(criterion: str) -> str:
    """The file name (less its extension) of a criterion's test split: the name itself when it is safe in a
    path, else a slug of it and a hash, so that any criterion name gets a file of its own."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", criterion).strip("-")[:40]
    if slug == criterion:
        return f"test-{slug}"
    return f"test-{slug or 'criterion'}-{hashlib.sha256(criterion.encode()).hexdigest()[:8]}"


def _dedupe_key(row: dict) -> bytes:
    return hashlib.blake2b(canonical({k: v for k, v in row.items() if k != "id"}), digest_size=16).digest()


def _write_criterion_tests(project: Project, options: "ExportOptions", writers: dict[str, "_SplitWriter"], test_groups: set[str]) -> None:
    """Each ``test:<criterion>`` split: the export's rows with that criterion, of the test prompts only (the
    same prompts as the ``test`` split, so nothing a model trained on is scored)."""
    for name, writer in writers.items():
        seen: set[bytes] = set()
        for rows, tables in iter_rows(project, replace(options, criterion=name.split(":", 1)[1])):
            for row in rows:
                if _row_prompt_hash(row, tables) not in test_groups:
                    continue
                if options.dedupe:
                    key = _dedupe_key(row)
                    if key in seen:
                        continue
                    seen.add(key)
                writer.write(row, canonical(row))


def _row_prompt_hash(row: dict, tables: ItemTables) -> str:
    if "id" in row:
        return tables.prompt_hashes[row["id"]]
    return prompt_hash(row["input"]["messages"])  # openai-dpo rows have no id field


class _SplitWriter:
    """Writes one split as it streams: canonical JSONL, or Parquet in row groups (also the source of ``hf``).

    Rows come one at a time (:meth:`write`) or as Arrow tables with their canonical lines (:meth:`write_batch`,
    the columnar path); either way every row group but the last holds ``PARQUET_BATCH`` rows, so both give the
    same file."""

    PARQUET_BATCH = 50_000

    def __init__(self, folder: Path, name: str, container: str):
        self.container, self.count = container, 0
        self.digest = hashlib.sha256()
        self.path = folder / f"{name}.{'jsonl' if container == 'jsonl' else 'parquet'}"
        self.file = open(self.path, "wb") if container == "jsonl" else None
        self.buffer: list[dict] = []
        self.tables: list = []  # pyarrow tables of the columnar path, not yet written
        self.buffered = 0
        self.writer = None

    def write(self, row: dict, data: bytes) -> None:
        self.digest.update(data + b"\n")
        self.count += 1
        if self.file is not None:
            self.file.write(data + b"\n")
            return
        self.buffer.append(row)
        if len(self.buffer) >= self.PARQUET_BATCH:
            self._flush()

    def write_batch(self, table, lines) -> None:
        """Rows as a pyarrow table, with ``lines`` (a binary array) the canonical bytes of each plus a newline."""
        data = _joined(lines)
        self.digest.update(data)
        self.count += table.num_rows
        if self.file is not None:
            self.file.write(data)
            return
        self.tables.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.PARQUET_BATCH:
            self._flush_tables(self.PARQUET_BATCH)

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.buffer:
            return
        if self.writer is None:
            table = pa.Table.from_pylist(self.buffer)
        else:
            try:
                table = pa.Table.from_pylist(self.buffer, schema=self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ExportError(f"Rows of this export change column types midway ({exc}); use jsonl.") from None
        self._write_table(table)
        self.buffer = []

    def _flush_tables(self, size: int | None = None) -> None:
        import pyarrow as pa

        if not self.tables:
            return
        # One contiguous array per column, as from_pylist makes: the Parquet writer's pages then fall where the
        # row path's do, and the files are byte for byte the same.
        table = pa.concat_tables(self.tables).combine_chunks()
        size = table.num_rows if size is None else size
        self._write_table(table.slice(0, size))
        rest = table.slice(size)
        self.tables, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def _write_table(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            # As from_pylist infers it: a column with no value at all has the null type.
            for i, column in enumerate(table.columns):
                if column.null_count == len(column) and column.type != pa.null():
                    table = table.set_column(i, table.field(i).name, pa.nulls(len(column)))
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            for i, (field_, wanted) in enumerate(zip(table.schema, self.writer.schema)):
                column = table.column(i)
                if field_.type == wanted.type:
                    continue
                if wanted.type != pa.null() or column.null_count != len(column):
                    raise ExportError(f"Rows of this export change column types midway ({field_.name}: {wanted.type} then {field_.type}); use jsonl.")
                table = table.set_column(i, wanted, pa.nulls(len(column)))
        self.writer.write_table(table)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            return
        self._flush()
        self._flush_tables()
        if self.writer is None:  # an empty split still gets a readable file
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({}), self.path)
        else:
            self.writer.close()


def _joined(array) -> memoryview:
    """The values of a binary array end to end (its rows in order), without copying."""
    if len(array) == 0:
        return memoryview(b"")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    return memoryview(array.buffers()[2])[offsets[0] : offsets[-1]]


@dataclass
class ExportResult:
    """``aggregation``: ``method`` and, for a model, its fit's ``iterations`` and ``converged`` (the card's)."""

    counts: dict[str, int]
    content_hash: str
    files: dict[str, Path]
    aggregation: dict = field(default_factory=dict)


def write_export(project: Project, options: "ExportOptions", folder: Path, columnar: bool = True) -> ExportResult:
    """Stream the export into ``folder``: ``train.<jsonl|parquet>`` and, with a test size, ``test.…`` and the
    :func:`criterion_tests` splits (``test:<criterion>``, in :func:`criterion_file` files); ``hf`` adds a
    ``dataset`` folder (``datasets.DatasetDict.save_to_disk``) built from the Parquet files, the criterion
    splits as datasets of their own under ``dataset/criteria/``.

    Deduplicates rows (identical but for their id) when ``options.dedupe``, and hashes the canonical bytes of
    every row split by split: the content hash does not depend on the container.

    The exports :func:`fits_columns` names take the columnar path (:func:`iter_trl_batches`); ``columnar=False``
    sends them through the general row by row path instead, the reference the tests compare it with.
    """
    check_options(project, options)
    folder = Path(folder)
    test_groups = test_prompts(project, options)
    names = ["train", "test"] if options.test_size else ["train"]
    writers = {name: _SplitWriter(folder, name, options.container) for name in names}
    criteria = {f"test:{c}": _SplitWriter(folder, criterion_file(c), options.container) for c in criterion_tests(project, options)}
    seen: set[bytes] = set()
    fit: dict = {}  # what a model aggregation found, for the card
    # An export allocates millions of small acyclic dicts and lists; the cyclic garbage collector would scan
    # them again and again (a third of the run time), while reference counting frees them anyway. What exists
    # before the export (Django, pandas, pyarrow: a million objects) is frozen, so that the one collection
    # per chunk of the general path scans only the export's own objects. (The columnar path makes a few
    # hundred objects per chunk, not millions; the odd cycle among them waits for the end of the export.)
    collecting, freezing = gc.isenabled(), gc.get_freeze_count() == 0
    gc.disable()
    if freezing:
        gc.freeze()
    try:
        written = False
        if columnar and fits_columns(project, options):
            try:
                for batch in iter_trl_batches(project, options, with_hashes=bool(test_groups)):
                    _write_batch(batch, writers, seen, test_groups, options.dedupe)
                written = True
            except _Conversational:  # start again on the general path, from empty files
                for writer in writers.values():
                    writer.close()
                writers = {name: _SplitWriter(folder, name, options.container) for name in names}
                seen.clear()
        if not written:
            for rows, tables in iter_rows(project, options, fit):
                gc.collect()  # once per chunk: frees the previous chunk's cycles (pandas has some)
                for row in rows:
                    data = canonical(row)
                    if options.dedupe:
                        key = _dedupe_key(row)
                        if key in seen:
                            continue
                        seen.add(key)
                    split = "test" if test_groups and _row_prompt_hash(row, tables) in test_groups else "train"
                    writers[split].write(row, data)
        _write_criterion_tests(project, options, criteria, test_groups)
    finally:
        for writer in (*writers.values(), *criteria.values()):
            writer.close()
        if freezing:
            gc.unfreeze()
        if collecting:
            gc.enable()
    digest = hashlib.sha256()
    every = {**writers, **criteria}
    for name in sorted(every):
        digest.update(f"{name}:{every[name].digest.hexdigest()}\n".encode())
    files = {name: writer.path for name, writer in every.items()}
    if options.container == "hf":
        import datasets

        def dataset(name):
            return datasets.Dataset.from_parquet(str(files[name])) if every[name].count else datasets.Dataset.from_list([])

        datasets.DatasetDict({name: dataset(name) for name in writers}).save_to_disk(str(folder / "dataset"))
        # A DatasetDict split name cannot hold a ":", so each criterion split is a dataset of its own.
        for name in criteria:
            dataset(name).save_to_disk(str(folder / "dataset" / "criteria" / criteria[name].path.stem))
        for path in files.values():
            path.unlink()
        files = {name: folder / "dataset" / name for name in writers} | {name: folder / "dataset" / "criteria" / w.path.stem for name, w in criteria.items()}
    aggregation = {"method": options.aggregate, **fit}
    return ExportResult({name: w.count for name, w in every.items()}, digest.hexdigest(), files, aggregation)


_BLAKE2B_16 = functools.partial(hashlib.blake2b, digest_size=16)  # the deduplication key of a row's bytes
_DIGEST = operator.methodcaller("digest")


def _write_batch(batch: "RowBatch", writers: dict[str, _SplitWriter], seen: set[bytes], test_groups: set[str], dedupe: bool) -> None:
    """The columnar path's half of write_export's loop: deduplicate, split and write one batch of rows."""
    n = batch.table.num_rows
    if not n:
        return
    keep = np.ones(n, dtype=bool)
    if dedupe:
        digests = list(map(_DIGEST, map(_BLAKE2B_16, batch.keys.to_pylist())))
        fresh = set(digests)
        if len(fresh) == n and seen.isdisjoint(fresh):  # the usual case: every row is new, no loop in Python
            seen |= fresh
        else:
            add = seen.add
            keep = np.fromiter((d not in seen and not add(d) for d in digests), dtype=bool, count=n)
    test = np.zeros(n, dtype=bool)
    if test_groups:
        test = np.fromiter((h in test_groups for h in batch.prompt_hashes), dtype=bool, count=n)
    for name, writer in writers.items():
        mask = keep & (test if name == "test" else ~test)
        if mask.all():
            writer.write_batch(batch.table, batch.lines)
        elif mask.any():
            writer.write_batch(batch.table.filter(mask), batch.lines.filter(mask))


def build_splits(project: Project, options: "ExportOptions") -> dict[str, list[dict]]:
    """The export's rows by split, in memory (for small projects and tests)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = write_export(project, ExportOptions.from_dict({**options.to_dict(), "container": "jsonl"}), Path(tmp))
        return {name: [orjson.loads(line) for line in path.read_bytes().splitlines()] for name, path in result.files.items()}


def export_to(project: Project, options: "ExportOptions", out: Path) -> ExportResult:
    """``export_dataset``: write to ``out`` atomically — a file for one jsonl or parquet split, else a folder
    (``<split>.<container>`` files, or the DatasetDict folder for hf)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result = write_export(project, options, tmp)
        if options.container == "hf":
            target = tmp / "dataset"
        elif list(result.files) == ["train"]:
            target = result.files["train"]
        else:
            target = tmp
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def create_snapshot(project: Project, options: "ExportOptions", created_by=None) -> tuple[Snapshot, bool]:
    """Export ``project`` with ``options`` into an immutable snapshot; returns ``(snapshot, created)``.

    If a snapshot of this project with the same options and the same content hash exists, it is returned
    instead of a second copy. Files are written to a temporary folder and renamed into place only when
    complete, so a failed export leaves nothing behind.
    """
    options.validate()
    from . import agreement

    last_judgment = Judgment.objects.filter(project=project).order_by("-id").values_list("id", flat=True).first()
    root = Path(settings.ARTIFACT_ROOT) / "snapshots" / project.slug
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        result = write_export(project, options, tmp)
        existing = Snapshot.objects.filter(project=project, content_hash=result.content_hash, options=options.to_dict()).first()
        if existing is not None and existing.folder.is_dir():
            return existing, False
        summary = _json_safe({**agreement.summary(project), "aggregation": result.aggregation})
        counts = dict(result.counts)
        counts.update({key: summary.get(key, 0) for key in ("n_judgments", "n_items", "n_annotators")})
        relative = Path("snapshots") / project.slug / f"{result.content_hash[:16]}-{uuid.uuid4().hex[:8]}"
        with transaction.atomic():
            snapshot = Snapshot.objects.create(
                project=project, options=options.to_dict(), content_hash=result.content_hash, path=str(relative),
                counts=counts, agreement=summary, license=options.license, last_judgment_id=last_judgment,
                created_by=created_by,
            )  # fmt: skip
            (tmp / "README.md").write_text(dataset_card(snapshot), encoding="utf-8")
            os.replace(tmp, Path(settings.ARTIFACT_ROOT) / relative)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return snapshot, True


def _aggregation_text(fit: dict) -> str:
    """``dawid-skene, 57 iterations, converged`` (a model's fit) or just the method."""
    if "iterations" not in fit:
        return fit["method"]
    return f"{fit['method']}, {fit['iterations']} iterations, {'converged' if fit['converged'] else 'stopped at the cap before converging'}"


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


def snapshot_files(snapshot: Snapshot) -> dict[str, str]:
    """Split name → path of its data (a file, or a folder for hf): ``train``, ``test`` and ``test:<criterion>``."""
    container = snapshot.options["container"]
    files = {}
    for name in snapshot.split_counts:
        stem = criterion_file(name.split(":", 1)[1]) if name.startswith("test:") else name
        if container == "hf":
            files[name] = str(snapshot.folder / "dataset" / ("criteria/" + stem if name.startswith("test:") else name))
        else:
            files[name] = str(snapshot.folder / f"{stem}.{container}")
    return files


def dataset_card(snapshot: Snapshot) -> str:
    """A README.md whose YAML front matter the Hugging Face hub reads, with the snapshot's provenance.

    The front matter is written by a YAML emitter, never by pasting names into text: a project called
    "Demo: helpful and harmless" (or with a ``#``, quotes, a newline) stays one quoted string."""
    project, options = snapshot.project, snapshot.options
    files = snapshot_files(snapshot)
    front: dict = {
        "license": snapshot.license or "other",
        "pretty_name": f"{project.name} ({options['format']})",
        "tags": ["arbiter", "preference", "rlhf", options["format"]],
    }

    def data_files(names):
        return [{"split": name.split(":", 1)[0], "path": Path(files[name]).name} for name in names]

    if options["container"] != "hf":
        # A hub split name cannot hold a ":": each criterion's test split is a config of its own.
        plain = [name for name in files if ":" not in name]
        front["configs"] = [{"config_name": "default", "data_files": data_files(plain)}]
        front["configs"] += [{"config_name": name.replace(":", ": ", 1), "data_files": data_files([name])} for name in files if ":" in name]
    title = " ".join(project.name.split())  # one line, whatever the name holds
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000).rstrip("\n")]
    lines += ["---", "", f"# {title}: {options['format']} snapshot {snapshot.pk}", ""]
    lines += [
        f"Exported by Arbiter from project `{project.slug}` ({project.kind}, overlap {project.overlap}) on "
        f"{snapshot.created_at:%Y-%m-%d %H:%M} UTC.",
        "",
        f"- content hash (sha256 over the canonical rows, split by split): `{snapshot.content_hash}`",
        "- rows: " + ", ".join(f"{name} {n}" for name, n in snapshot.split_counts.items()),
        f"- judgments: {snapshot.counts.get('n_judgments')}, items: {snapshot.counts.get('n_items')}, "
        f"annotators: {snapshot.counts.get('n_annotators')} (pseudonymous)",
        f"- percent agreement: {snapshot.agreement.get('percent_agreement')}",
        f"- aggregation: {_aggregation_text(snapshot.agreement.get('aggregation') or {'method': options['aggregate']})}",
        f"- newest judgment included: {snapshot.last_judgment_id}",
        "",
        "## Options",
        "",
        "```json",
        json.dumps(options, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)
