"""The data browser's reads: items filtered, searched and sorted, and one item with every vote on it.

The page (``/p/<slug>/items/``) and the API (``GET /api/projects/<slug>/items/``, ``GET /api/items/<id>/``) read
through :class:`ItemQuery`, so a filter means the same thing in both and is refused the same way. Every filter is
answered by an index at 100,000 items (bench/browse.py, and the plans are checked in tests/annotate/
test_browsing.py): agreement and "sort by disagreement" by ``item_share_idx`` on the per-item ``winner_share``
(refreshed by ``actions.refresh_item_stats`` before each read), the text search by SQLite's FTS5 tables or
PostgreSQL's GIN indexes (migration 0013), flags, skips and votes by their item indexes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from django.db import connection
from django.db.models import Case, CharField, Count, Exists, F, OuterRef, Prefetch, Q, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Concat
from django.http import QueryDict

from .judgments import STRENGTH_LABELS
from .models import (
    Adjudication,
    Flag,
    Item,
    Judge,
    JudgeVote,
    Judgment,
    Kind,
    Membership,
    Project,
    Response,
    Round,
    Task,
)
from .selectors import ITEMS_PAGE_MAX, pseudonyms

# Kinds whose votes have one answer each (pairwise: the winner, a tie or both bad; ranking: the first place), so an
# item has a winner share; the agreement filters and the disagreement sort apply to these.
SHARE_KINDS = (Kind.PAIRWISE, Kind.RANKING)
STATUSES = ("open", "complete")
JUDGE_FILTERS = ("disagree",)
AGREEMENTS = ("unanimous", "split")
PURPOSES = tuple(Item.Purpose.values)
SORTS = {
    "id": ("id",),
    "-id": ("-id",),
    "disagreement": (F("winner_share").asc(nulls_last=True), "id"),
    "votes": ("-n_judgments", "id"),
}
MAX_QUERY = 200  # characters of a search
MAX_TERMS = 16


class InvalidQuery(ValueError):
    """A filter that cannot apply, or a malformed value: HTTP 400 with this message."""


@dataclass(frozen=True)
class ItemQuery:
    """What the browser lists. Empty values mean "any"."""

    round: int | None = None
    status: str = ""  # open | complete
    agreement: str = ""  # unanimous | split
    min_share: float | None = None  # the winner's share of the votes is at least this
    max_share: float | None = None  # ... at most this
    flagged: bool | None = None  # has an open flag
    skipped: bool | None = None  # someone skipped it with a reason
    adjudicated: bool | None = None
    purpose: str = ""  # normal | gold | qualification
    annotator: str = ""  # a pseudonym (or judge:<name>): items they voted on
    judge: str = ""  # an AI judge's name: items it voted on (parsed or not)
    judges: str = ""  # disagree: two judges' current answers differ, or a judge was position-inconsistent
    q: str = ""  # full-text search over the prompt and the responses
    sort: str = "id"
    page: int = 1
    page_size: int = 50

    @classmethod
    def parse(cls, params: QueryDict | dict, project: Project) -> "ItemQuery":
        """From query parameters; raises :class:`InvalidQuery` for unknown values and for filters the project's kind
        cannot answer (never ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidQuery(f"unknown filter {', '.join(unknown)}; the filters are {', '.join(sorted(known))}.")
        get = params.get
        values = {
            "round": _integer(get("round"), "round"),
            "status": _choice(get("status"), STATUSES, "status"),
            "agreement": _choice(get("agreement"), AGREEMENTS, "agreement"),
            "min_share": _share(get("min_share"), "min_share"),
            "max_share": _share(get("max_share"), "max_share"),
            "flagged": _boolean(get("flagged"), "flagged"),
            "skipped": _boolean(get("skipped"), "skipped"),
            "adjudicated": _boolean(get("adjudicated"), "adjudicated"),
            "purpose": _choice(get("purpose"), PURPOSES, "purpose"),
            "annotator": (get("annotator") or "").strip(),
            "judge": (get("judge") or "").strip(),
            "judges": _choice(get("judges"), JUDGE_FILTERS, "judges"),
            "q": (get("q") or "").strip(),
            "sort": _choice(get("sort"), tuple(SORTS), "sort") or "id",
            "page": _integer(get("page"), "page") or 1,
            "page_size": min(_integer(get("page_size"), "page_size") or 50, ITEMS_PAGE_MAX),
        }
        query = cls(**values)
        if project.kind not in SHARE_KINDS and (
            query.agreement
            or query.min_share is not None
            or query.max_share is not None
            or query.sort == "disagreement"
        ):
            raise InvalidQuery(
                f"agreement filters and the disagreement sort apply to pairwise and ranking projects; this is a "
                f"{project.kind} project (its agreement is on the dashboard)."
            )
        if len(query.q) > MAX_QUERY:
            raise InvalidQuery(f"a search has at most {MAX_QUERY} characters.")
        if query.q and not _terms(query.q):
            raise InvalidQuery("a search needs at least one word.")
        return query

    def as_params(self, **changes) -> dict:
        """The non-default values as query parameters (for the page's links), with ``changes``."""
        default = ItemQuery()
        values = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        out = {}
        for name, value in values.items():
            if value == getattr(default, name) or value is None or value == "":
                continue
            out[name] = int(value) if isinstance(value, bool) else value
        return out


def _integer(value, name: str) -> int | None:
    if value in (None, ""):
        return None
    if not str(value).isdigit() or len(str(value)) > 9 or int(value) < 1:
        raise InvalidQuery(f"{name} must be a positive integer.")
    return int(value)


def _choice(value, choices: tuple, name: str) -> str:
    if value in (None, ""):
        return ""
    if value not in choices:
        raise InvalidQuery(f"{name} must be one of {', '.join(choices)}.")
    return value


def _boolean(value, name: str) -> bool | None:
    if value in (None, ""):
        return None
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise InvalidQuery(f"{name} must be 1 or 0.")


def _share(value, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        share = float(value)
    except ValueError:
        raise InvalidQuery(f"{name} must be a number from 0 to 1.") from None
    if not 0.0 <= share <= 1.0:
        raise InvalidQuery(f"{name} must be a number from 0 to 1.")
    return share


def _terms(text: str) -> list[str]:
    """The words of a search (letters and digits in any script), at most ``MAX_TERMS``: every one must be found."""
    return re.findall(r"\w+", text.lower())[:MAX_TERMS]


# PostgreSQL: the indexed expression of migration 0013 over the responses, repeated exactly so that the planner uses
# the index (the prompts' words are in annotate_item_search, kept by triggers).
RESPONSE_SEARCH = "to_tsvector('simple'::regconfig, left(text, 100000))"


def search(items, text: str):
    """``items`` narrowed to those whose prompt or one of whose responses holds every word of ``text``."""
    terms = _terms(text)
    if connection.vendor == "postgresql":
        query = " & ".join(terms)  # words only (\w+): nothing to escape
        # The matches are gathered once (an array) and looked up by key: the planner misjudges how many items a word
        # matches and, given IN (subquery), walks every item in id order to merge with them (54 ms for a rare word
        # at 100,000 items; 2 ms this way).
        statement = (
            "SELECT item_id FROM annotate_item_search WHERE document @@ to_tsquery('simple', %s) "
            f"UNION SELECT item_id FROM annotate_response WHERE {RESPONSE_SEARCH} @@ to_tsquery('simple', %s)"
        )
        return items.extra(where=[f"annotate_item.id = ANY(ARRAY({statement}))"], params=[query, query])
    match = " ".join(f'"{term}"' for term in terms)  # each word a quoted FTS5 string: no operator can slip in
    statement = (
        "SELECT rowid FROM annotate_item_fts WHERE annotate_item_fts MATCH %s "
        "UNION SELECT item_id FROM annotate_response_fts WHERE annotate_response_fts MATCH %s"
    )
    return items.filter(id__in=RawSQL(statement, [match, match]))


def filtered_items(project: Project, query: ItemQuery):
    """The queryset of the items ``query`` selects, sorted (not yet paged)."""
    items = Item.objects.filter(project=project)
    if query.round is not None:
        items = items.filter(round__number=query.round)
    if query.status == "complete":
        items = items.filter(open_slots=0, n_judgments__gte=project.overlap)
    elif query.status == "open":
        items = items.filter(Q(open_slots__gt=0) | Q(n_judgments__lt=project.overlap))
    if query.agreement:
        if query.agreement == "unanimous":
            items = items.filter(winner_share=1.0, n_judgments__gte=2)
        else:  # a share below 1 needs two different answers: no vote count to check (the count is index-only)
            items = items.filter(winner_share__lt=1.0)
    if query.min_share is not None:
        items = items.filter(winner_share__gte=query.min_share)
    if query.max_share is not None:
        items = items.filter(winner_share__lte=query.max_share)
    if query.flagged is not None:
        open_flags = Exists(Flag.objects.filter(item=OuterRef("pk"), status=Flag.Status.OPEN))
        items = items.filter(open_flags if query.flagged else ~open_flags)
    if query.skipped is not None:
        skips = Exists(Task.objects.filter(item=OuterRef("pk"), status=Task.Status.SKIPPED))
        items = items.filter(skips if query.skipped else ~skips)
    if query.adjudicated is not None:
        decided = Exists(Adjudication.objects.filter(item=OuterRef("pk"), is_current=True))
        items = items.filter(decided if query.adjudicated else ~decided)
    if query.purpose:
        items = items.filter(purpose=query.purpose)
    if query.annotator:
        if query.annotator.startswith("judge:"):  # how the item page and reports name a judge
            user_id = _judge_of(project, query.annotator).user_id
        else:
            user_id = (
                Membership.objects.filter(project=project, pseudonym=query.annotator)
                .values_list("user_id", flat=True)
                .first()
            )
        if user_id is None:
            raise InvalidQuery(f"no annotator of this project is called {query.annotator!r} (give their pseudonym).")
        voted = Judgment.objects.filter(project=project, annotator_id=user_id, is_current=True).values("item_id")
        items = items.filter(id__in=voted)
    if query.judge:
        # Every answer it gave, parsed or not: through the (judge, item) index of its votes.
        items = items.filter(id__in=JudgeVote.objects.filter(judge=_judge_of(project, query.judge)).values("item_id"))
    if query.judges == "disagree":
        items = items.filter(id__in=judges_disagree(project))
    if query.q:
        items = search(items, query.q)
    return items.order_by(*SORTS[query.sort])


def _judge_of(project: Project, name: str) -> Judge:
    """The project's judge called ``name`` (``judge:<name>`` too, as reports name it); InvalidQuery without one."""
    bare = name.removeprefix("judge:")
    judge = Judge.objects.filter(project=project, name=bare).first()
    if judge is None:
        known = list(Judge.objects.filter(project=project).order_by("name").values_list("name", flat=True)[:20])
        raise InvalidQuery(
            f"no judge of this project is called {bare!r}"
            + (f"; its judges are {', '.join(known)}." if known else "; it has no judges.")
        )
    return judge


def judges_disagree(project: Project):
    """The ids of the items (a subquery) where two judges' current answers differ, or a judge's two readings
    (A-B, B-A) did not agree. Read from the judges' votes alone (one row per judge and item, through the judges of
    the project), never from the people's: its cost follows the number of judges' votes.

    An answer is the outcome and winner (pairwise) and the ranking, ratings or steps (other kinds): what routing
    compares (``actions.routing_decisions``). An unparseable vote has no answer and differs from nothing."""
    answer = Concat(
        Coalesce(F("judgment__outcome"), Value(""), output_field=CharField()),
        Value("|"),
        Coalesce(Cast("judgment__winner_id", CharField()), Value(""), output_field=CharField()),
        Value("|"),
        Coalesce(KeyTextTransform("ranking", "judgment__data"), Value(""), output_field=CharField()),
        Value("|"),
        Coalesce(KeyTextTransform("ratings", "judgment__data"), Value(""), output_field=CharField()),
        Value("|"),
        Coalesce(KeyTextTransform("steps", "judgment__data"), Value(""), output_field=CharField()),
        output_field=CharField(),
    )
    answered = Q(judgment__isnull=False, judgment__is_current=True)
    return (
        JudgeVote.objects.filter(judge__project=project)
        .order_by()
        .values("item_id")
        .annotate(
            answers=Count(Case(When(answered, then=answer)), distinct=True),
            inconsistent=Count("id", filter=Q(position_consistent=False)),
        )
        .filter(Q(answers__gt=1) | Q(inconsistent__gt=0))
        .values("item_id")
    )


@dataclass
class ItemPage:
    items: list[Item]
    count: int
    query: ItemQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.count // self.query.page_size))


def item_page(project: Project, query: ItemQuery, with_responses: bool = True) -> ItemPage:
    """One page of the items ``query`` selects, each with ``open_flags`` and ``adjudicated`` and, ``with_responses``,
    its responses (by stored index), and how many items match."""
    items = filtered_items(project, query)
    start = (query.page - 1) * query.page_size
    selected = items.select_related("round")
    if with_responses:
        selected = selected.prefetch_related(Prefetch("responses", queryset=Response.objects.order_by("index")))
    page = list(
        selected.annotate(
            open_flags=Exists(Flag.objects.filter(item=OuterRef("pk"), status=Flag.Status.OPEN)),
            adjudicated=Exists(Adjudication.objects.filter(item=OuterRef("pk"), is_current=True)),
        )[start : start + query.page_size]
    )
    return ItemPage(page, items.count(), query)


def rounds_of(project: Project) -> list[int]:
    return list(Round.objects.filter(project=project).order_by("number").values_list("number", flat=True))


# --- one item -----------------------------------------------------------------------------------------------


def letters(response_ids: list[int]) -> dict[int, str]:
    """Response id → its letter by stored order (A the first response as imported), as the browser names them."""
    return {rid: chr(ord("A") + position) for position, rid in enumerate(response_ids)}


def describe_answer(kind: str, fields: dict, names: dict[int, str]) -> str:
    """A vote or an adjudication in words, responses by their letters: "A", "tie", "B > A = C", "A: 5 · B: 3"."""
    outcome, winner, data = fields.get("outcome"), fields.get("winner_id"), fields.get("data") or {}
    if kind == Kind.PAIRWISE:
        if outcome == Judgment.Outcome.WIN:
            return f"{names.get(winner, '?')} better"
        return {"tie": "tie", "both_bad": "both bad"}.get(outcome, "—")
    if kind == Kind.RANKING:
        return " > ".join(" = ".join(names.get(int(r), "?") for r in group) for group in data.get("ranking", []))
    if kind == Kind.RATING:
        parts = []
        for rid, scores in sorted(data.get("ratings", {}).items(), key=lambda kv: names.get(int(kv[0]), "?")):
            score = ", ".join(f"{c} {v}" for c, v in scores.items())
            parts.append(f"{names.get(int(rid), '?')}: {score}")
        return " · ".join(parts)
    if kind == Kind.STEPS:
        return " · ".join(
            f"{names.get(int(rid), '?')}: {' '.join(label[0] for label in labels)}"
            for rid, labels in sorted(data.get("steps", {}).items(), key=lambda kv: names.get(int(kv[0]), "?"))
        )
    return (fields.get("text") or "")[:200]


def item_votes(project: Project, item: Item, names: dict[int, str]) -> list[dict]:
    """Every vote on ``item``, superseded ones included and marked, oldest first, annotators by pseudonym."""
    judgments = list(Judgment.objects.filter(item=item).select_related("task").order_by("id"))
    people = pseudonyms(project, {j.annotator_id for j in judgments})
    votes = []
    for j in judgments:
        fields_ = {"outcome": j.outcome, "winner_id": j.winner_id, "data": j.data, "text": j.text}
        votes.append(
            {
                "id": j.pk,
                "annotator": people[j.annotator_id],
                "display_order": [names.get(rid, "?") for rid in j.task.display_order],
                "outcome": j.outcome or None,
                "winner": names.get(j.winner_id) if j.winner_id else None,
                "answer": describe_answer(project.kind, fields_, names),
                "strength": j.strength,
                "strength_label": STRENGTH_LABELS.get(j.strength, "") if j.strength is not None else "",
                "data": j.data,
                "rationale": j.text,
                "duration_ms": j.duration_ms,
                "source": j.source,
                "current": j.is_current,
                "supersedes": j.supersedes_id,
                "created_at": j.created_at,
            }
        )
    return votes


def adjudication_history(project: Project, item: Item, names: dict[int, str]) -> list[dict]:
    """The item's adjudications, newest first (the current one first): who, when, what and why."""
    rows = Adjudication.objects.filter(item=item).select_related("author").order_by("-id")
    people = pseudonyms(project, {a.author_id for a in rows})
    return [
        {
            "id": a.pk,
            "by": a.author.username,
            "pseudonym": people[a.author_id],
            "answer": describe_answer(
                project.kind, {"outcome": a.outcome, "winner_id": a.winner_id, "data": a.data, "text": a.text}, names
            ),
            "outcome": a.outcome or None,
            "winner": names.get(a.winner_id) if a.winner_id else None,
            "strength": a.strength,
            "data": a.data,
            "text": a.text,
            "reason": a.reason,
            "current": a.is_current,
            "created_at": a.created_at,
        }
        for a in rows
    ]


def item_labels(project: Project, item: Item, names: dict[int, str], models: bool = False) -> list[dict]:
    """The item's label under each aggregation an export can use: ``majority`` always, ``dawid-skene`` and
    ``bradley-terry`` with ``models`` (they fit every vote of the project, as an export does). Each is a list of
    pair outcomes ``{"aggregation", "pair", "label", "confidence", "n_votes"}``; empty where the kind has no
    preferences or no pair has a label. Adjudications are not applied here: they are shown beside."""
    from .exports import ExportError, ExportOptions
    from .exports.aggregation import majority_pairs, model_pairs, pair_votes
    from .exports.general import fit_preference_model
    from .exports.reading import is_conversational, item_ranges, item_tables, items_in_scope, vote_frame

    if project.kind not in (Kind.PAIRWISE, Kind.RANKING, Kind.RATING):
        return []
    include_gold = item.purpose != Item.Purpose.NORMAL
    scope = items_in_scope(project, include_gold)
    with_data = project.kind != Kind.PAIRWISE
    # Labels do not depend on how texts are shaped: this item's own shape, not a scan of the project's prompts.
    tables = item_tables(project, (item.pk, item.pk), item.is_conversation)
    # include_gold=True: this one item's purpose is known, so no scan of the project for gold items.
    votes = vote_frame(project, False, True, (item.pk, item.pk), with_data)
    try:
        pairs = pair_votes(project.kind, votes, tables.responses)
    except ExportError:
        return []
    found = [("majority", majority_pairs(pairs, keep_ties=True))]
    if models:
        ranges, conversational = item_ranges(scope), is_conversational(scope)
        for aggregate in ("dawid-skene", "bradley-terry"):
            options = ExportOptions(format="trl", aggregate=aggregate, include_gold=include_gold)
            model, _ = fit_preference_model(project, options, ranges, conversational, with_data)
            found.append((aggregate, model_pairs(pairs, model, keep_ties=True)))
    rows = []
    for aggregate, preferences in found:
        for pref in preferences.itertuples(index=False):
            a, b = names.get(int(pref.chosen), "?"), names.get(int(pref.rejected), "?")
            rows.append(
                {
                    "aggregation": aggregate,
                    "pair": "–".join(sorted((a, b))),
                    "label": "tie" if pref.tie else f"{a} better than {b}",
                    "confidence": round(float(pref.agreement), 3),
                    "n_votes": int(pref.n_votes),
                }
            )
    return rows


def item_detail(item: Item, models: bool = False) -> dict:
    """An item as the browser shows it: responses by stored order (A first), every vote, the labels of each
    aggregation, adjudications and flags."""
    project = item.project
    responses = list(item.responses.order_by("index"))
    names = letters([r.id for r in responses])
    history = adjudication_history(project, item, names)
    flags = Flag.objects.filter(item=item).order_by("id")
    people = pseudonyms(project, {f.annotator_id for f in flags})
    return {
        "id": item.pk,
        "external_id": item.external_id,
        "round": item.round.number if item.round else None,
        "purpose": item.purpose,
        "n_votes": item.n_judgments,
        "open_slots": item.open_slots,
        "winner_share": item.winner_share,
        "prompt": item.prompt,
        "metadata": item.metadata,
        "gold": item.gold,
        "responses": [
            {"letter": names[r.id], "id": r.id, "index": r.index, "text": r.text, "model": r.model_name}
            for r in responses
        ],
        "votes": item_votes(project, item, names),
        "labels": item_labels(project, item, names, models=models),
        "adjudication": next((a for a in history if a["current"]), None),
        "adjudications": history,
        "flags": [
            {
                "id": f.pk,
                "category": f.category,
                "note": f.note,
                "annotator": people[f.annotator_id],
                "status": f.status,
                "resolution": f.resolution,
                "created_at": f.created_at,
            }
            for f in flags
        ],
    }
