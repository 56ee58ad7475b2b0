"""The database reads of an export: which items and votes it covers, the votes of a range of items as a
DataFrame (or integer columns through binary COPY), the prompts and texts rows need, and the raw format's votes
as stored."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
from django.db.models import Case, Count, Q, Value, When
from django.db.models.fields.json import KT

from ..models import Adjudication, Item, Judgment, Membership, Project, Response
from ..selectors import HUMAN, by_source, judge_label, pseudonyms
from ..sql import NULL_INT, numeric_rows
from .formats import ItemTables, canonical

# Exports stream: items are taken in ranges of CHUNK_ITEMS ids, and each range's votes, prompts and texts are
# read, turned into rows and written before the next, so memory does not grow with the project. Both paths
# take this size (the columnar one reads it as ``reading.CHUNK_ITEMS`` at each call).
CHUNK_ITEMS = 20_000


# Votes of annotators in these states are left out of exports unless asked for.
EXCLUDED_STATUSES = [Membership.Status.PAUSED, Membership.Status.FLAGGED]


def items_in_scope(project: Project, include_gold: bool = False):
    items = Item.objects.filter(project=project)
    return items if include_gold else items.filter(purpose=Item.Purpose.NORMAL)


def item_ranges(items, size: int | None = None) -> list[tuple[int, int]]:
    """Inclusive (first id, last id) ranges of ``size`` items each (default ``CHUNK_ITEMS``)."""
    size = size or CHUNK_ITEMS
    ids = np.sort(numeric_rows(items.values_list("id"), ["id"])[:, 0])  # binary COPY: a million ids in a blink
    return [(int(ids[i]), int(ids[min(i + size, len(ids)) - 1])) for i in range(0, len(ids), size)]


def _conversational_prompt() -> Q:
    return Q(prompt__1__isnull=False) | ~Q(prompt__0__role="user")


def is_conversational(items) -> bool:
    """Whether any prompt is more than one user message (then every row of the export is conversational)."""
    return items.filter(_conversational_prompt()).exists()


def current_judgments(
    project: Project,
    include_paused: bool = False,
    include_gold: bool = False,
    items: tuple[int, int] | None = None,
    source: str = HUMAN,
):
    """The judgments an export reads: current ones, by default people's only (``source``: human, ai or all), on
    normal items only and without paused or flagged annotators; ``items`` an inclusive range of item ids."""
    judgments = by_source(Judgment.objects.filter(project=project, is_current=True), source)
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


def source_counts(project: Project, options) -> dict:
    """What a snapshot's card says of whose votes it read: ``n_human_votes`` and ``n_ai_votes`` (current votes the
    export's options take: its ``source``, gold and paused annotators as asked) and ``judges`` (the AI judges among
    them, as ``judge:<name>``, sorted)."""
    include_gold = options.include_gold or options.format == "raw"
    judgments = current_judgments(project, options.include_paused, include_gold, source=options.source)
    counts = judgments.aggregate(
        n_ai_votes=Count("id", filter=Q(source=Judgment.Source.AI)),
        n_human_votes=Count("id", filter=~Q(source=Judgment.Source.AI)),
    )
    judges = []
    if counts["n_ai_votes"]:
        names = judgments.filter(source=Judgment.Source.AI).values_list("annotator__judge__name", flat=True)
        judges = sorted(judge_label(name) for name in set(names.order_by().distinct()) if name)
    return {"n_human_votes": counts["n_human_votes"], "n_ai_votes": counts["n_ai_votes"], "judges": judges}


def vote_frame(
    project: Project,
    include_paused: bool = False,
    include_gold: bool = False,
    items: tuple[int, int] | None = None,
    with_data: bool = True,
    with_order: bool = False,
    judgments=None,
    source: str = HUMAN,
) -> pd.DataFrame:
    """Current judgments of the project: by default people's (``source``), on normal items only, without paused or
    flagged annotators.

    ``with_order`` adds ``order``, the response ids in the order the annotator saw them. A caller reading many
    ranges passes ``judgments``, :func:`current_judgments` of the whole project, to build it once."""
    if judgments is None:
        judgments = current_judgments(project, include_paused, include_gold, source=source)
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


# The annotator id adjudications carry in a vote frame (no user has it), and the name exports give it.
ADJUDICATOR = 0
ADJUDICATOR_NAME = "adjudication"


def has_adjudications(project: Project) -> bool:
    return Adjudication.objects.filter(project=project, is_current=True).exists()


def prefer_adjudications(project: Project, votes: pd.DataFrame, items: tuple[int, int]) -> tuple[pd.DataFrame, set]:
    """``votes`` with every adjudicated item's votes replaced by its adjudication (one vote by ``ADJUDICATOR``), and
    the adjudicated item ids: exports take a researcher's final label over the annotators'."""
    rows = list(
        Adjudication.objects.filter(project=project, is_current=True, item_id__gte=items[0], item_id__lte=items[1])
        .order_by("item_id")
        .values_list("item_id", "outcome", "winner_id", "strength", "data", "text")
    )
    if not rows:
        return votes, set()
    decided = {row[0] for row in rows}
    frame = pd.DataFrame(rows, columns=["item", "outcome", "winner", "strength", "data", "text"]).assign(
        annotator=ADJUDICATOR
    )
    frame["winner"] = frame["winner"].astype("Int64")
    frame["strength"] = frame["strength"].astype("Int64")
    if "order" in votes.columns:
        frame["order"] = None
    kept = votes[~votes["item"].isin(decided)]
    combined = pd.concat([kept, frame[votes.columns]], ignore_index=True) if len(kept) else frame[votes.columns]
    return combined.sort_values("item", kind="stable", ignore_index=True), decided


OUTCOMES = np.array([Judgment.Outcome.WIN, Judgment.Outcome.TIE, Judgment.Outcome.BOTH_BAD, ""], dtype=object)


BOTH_BAD_CODE = 2  # the index of "both bad" in OUTCOMES


def vote_table(judgments, fields: list[str]) -> np.ndarray:
    """Integer columns of ``judgments`` through ``sql.numeric_rows`` (binary COPY on PostgreSQL), NULL as
    ``sql.NULL_INT``; the field ``outcome_code`` is the outcome's index in ``OUTCOMES``."""
    code = Case(*(When(outcome=outcome, then=Value(i)) for i, outcome in enumerate(OUTCOMES[:3])), default=Value(3))
    return numeric_rows(judgments.annotate(outcome_code=code).values_list(*fields), fields)


def _numeric_vote_frame(judgments) -> pd.DataFrame:
    """The plain pairwise columns, all integers, through :func:`vote_table`: the million-vote export path,
    several times faster than a Python tuple per row."""
    fields = ["item_id", "annotator_id", "outcome_code", "winner_id", "strength"]
    table = vote_table(judgments, fields)
    winner = pd.array(table[:, 3], dtype="Int64")
    winner[table[:, 3] == NULL_INT] = pd.NA
    strength = pd.array(table[:, 4], dtype="Int64")
    strength[table[:, 4] == NULL_INT] = pd.NA
    return pd.DataFrame(
        {
            "item": table[:, 0],
            "annotator": table[:, 1],
            "outcome": OUTCOMES[table[:, 2]],
            "winner": winner,
            "strength": strength,
        }
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
    for item_id, rid, text in (
        _responses_of(project, items).order_by("item", "index").values_list("item_id", "id", "text")
    ):
        responses[item_id].append((rid, text))
        texts[rid] = text
    return ItemTables(
        dict(zip(ids, prompt_values)),
        dict(responses),
        dict(zip(ids, external_ids)),
        dict(zip(external_ids, hashes)),
        conversational,
        texts,
    )


def _responses_of(project: Project, items: tuple[int, int]):
    """Responses of the project's items with ids in the inclusive range ``items``. (Filtering on
    ``item__project`` instead makes PostgreSQL join every item of the project, for each range.)"""
    selected = Item.objects.filter(project=project, id__range=items)
    return Response.objects.filter(item__in=selected, item_id__gte=items[0], item_id__lte=items[1])


def raw_rows(project: Project, items: tuple[int, int], tables: ItemTables, source: str = HUMAN) -> list[dict]:
    """Every vote of ``source``, one row each: superseded ones, gold and qualification items and paused annotators
    included and marked, annotators by pseudonym only (a former member's too: the one they had), AI judges as
    ``judge:<name>``. Responses are named by their index in the item.

    Rows of an ``ai`` or ``all`` export also carry the judge's provenance: ``judge`` (its name), ``judge_model``
    (the model as its backend named it) and ``template_hash`` (of the prompt template it was shown), empty
    strings on people's votes (never null: a Parquet column must keep one type). A ``human`` export's rows are
    as they always were."""
    statuses = dict(Membership.objects.filter(project=project).values_list("user_id", "status"))
    index = {rid: position for pairs in tables.responses.values() for position, (rid, _) in enumerate(pairs)}
    judgments = by_source(
        Judgment.objects.filter(project=project, item_id__gte=items[0], item_id__lte=items[1]), source
    )
    fields = [
        "id",
        "item__external_id",
        "item__purpose",
        "annotator_id",
        "outcome",
        "winner_id",
        "strength",
        "data",
        "text",
        "duration_ms",
        "source",
        "is_current",
        "supersedes_id",
        "created_at",
        "task__display_order",
        "task__leased_at",
    ]
    with_judges = source != HUMAN
    if with_judges:  # people's votes have no judge: these come back None for them
        fields += ["annotator__judge__name", "judge_vote__model", "judge_vote__template_hash"]
    judgments = list(judgments.order_by("item_id", "id").values_list(*fields))
    names = pseudonyms(project, {vote[3] for vote in judgments})
    rows = []
    for (
        pk,
        item,
        purpose,
        annotator,
        outcome,
        winner,
        strength,
        data,
        text,
        duration,
        vote_source,
        current,
        supersedes,
        created,
        order,
        leased,
        *judge,
    ) in judgments:
        row = {
            "judgment": pk,
            "id": item,
            "annotator": names[annotator],
            "annotator_status": statuses.get(annotator, ""),
            "kind": project.kind,
            "outcome": outcome or None,
            "winner": index.get(winner),
            "strength": strength,
            "data": _indices(data, index),
            "text": text,
            "display_order": [index[rid] for rid in order],
            "duration_ms": duration,
            "source": vote_source,
            "gold": purpose == Item.Purpose.GOLD,
            "qualification": purpose == Item.Purpose.QUALIFICATION,
            "superseded": not current,
            "supersedes": supersedes,
            "shown_at": leased.isoformat(),
            "created_at": created.isoformat(),
        }
        if with_judges:
            row["judge"], row["judge_model"], row["template_hash"] = (value or "" for value in judge)
        rows.append(row)
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
