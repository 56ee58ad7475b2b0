"""Reads for pages and the API: progress and lists. Pure reads, no writes."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Case, Count, Exists, IntegerField, OuterRef, Prefetch, Q, Sum, Value, When
from django.utils import timezone

from . import judging
from .judgments import InvalidJudgment, vote_fields
from .models import Item, Judge, JudgeVote, Judgment, Membership, Project, Response, Task, make_pseudonym

ITEMS_PAGE_MAX = 1000


# --- whose votes: people's, AI judges' or both -----------------------------------------------------------------

# Which votes a statistic or an export reads: "human" (people's, whatever way they arrived: browser, API, import),
# "ai" (AI judges') or "all". Every human figure reads "human" unless asked, so judges' votes never move it.
SOURCES = ("human", "ai", "all")
HUMAN = "human"


def check_source(source: str) -> str:
    """``source`` if it is one of :data:`SOURCES`; else ValueError with a message that lists them."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}.")
    return source


def by_source(judgments, source: str = HUMAN):
    """``judgments`` (a Judgment queryset) narrowed to ``source``: people's votes (source other than ``ai``),
    AI judges' (``ai``) or all of them. A condition on the judgment row itself: no join, so it costs nothing on the
    million-vote reads."""
    check_source(source)
    if source == HUMAN:
        return judgments.exclude(source=Judgment.Source.AI)
    if source == "ai":
        return judgments.filter(source=Judgment.Source.AI)
    return judgments


def judge_label(name: str) -> str:
    """How reports and exports name a judge among annotators: ``judge:<name>`` (people get pseudonyms)."""
    return f"judge:{name}"


def project_progress(project: Project) -> dict:
    """Counts a researcher watches: items, how many are fully judged, judgments (people's), open leases."""
    items = Item.objects.filter(project=project, purpose=Item.Purpose.NORMAL).aggregate(
        n=Count("id"),
        complete=Count("id", filter=Q(n_judgments__gte=project.overlap)),
        judged=Sum("n_judgments"),
    )
    leased = Task.objects.filter(project=project, status=Task.Status.LEASED).count()
    n = items["n"] or 0
    needed = n * project.overlap
    judged = min(items["judged"] or 0, needed) if needed else 0
    return {
        "items": n,
        "items_complete": items["complete"] or 0,
        "judgments": by_source(Judgment.objects.filter(project=project, is_current=True)).count(),
        "leased": leased,
        "percent": round(100 * judged / needed, 1) if needed else 0.0,
    }


def annotator_progress(project: Project, user) -> dict:
    done = Task.objects.filter(project=project, annotator=user, status=Task.Status.DONE).count()
    return {"done": done}


def annotator_table(project: Project) -> list[dict]:
    """Per member: role, pseudonym and how many judgments they made."""
    members = Membership.objects.filter(project=project).select_related("user").order_by("role", "user__username")
    counts = dict(
        Judgment.objects.filter(project=project, is_current=True)
        .values("annotator_id")
        .annotate(n=Count("id"))
        .values_list("annotator_id", "n")
    )
    return [{"membership": m, "judgments": counts.get(m.user_id, 0)} for m in members]


GOLD_WINDOW = 20  # rolling gold accuracy: the last this many gold answers
# Review's normal-answer checks (majority agreement, speed, position bias) look at the annotator's newest this many
# answers: recent work is what review is about, and a review's cost must not grow with their history (it runs on
# one submit in ten).
REVIEW_WINDOW = 1000


def pseudonyms(project: Project, user_ids) -> dict[int, str]:
    """Membership pseudonyms of ``user_ids`` in ``project`` (never usernames): how exports, the agreement report
    and the dashboard name annotators. Former members get the same pseudonym they had, which
    :func:`make_pseudonym` recomputes. An AI judge's user is named ``judge:<name>`` (:func:`judge_label`): a judge
    is no person to protect, and its votes must be told apart."""
    ids = [int(u) for u in user_ids]
    judges = dict(Judge.objects.filter(user_id__in=ids).values_list("user_id", "name"))
    names = dict(Membership.objects.filter(project=project, user_id__in=ids).values_list("user_id", "pseudonym"))
    return {u: judge_label(judges[u]) if u in judges else names.get(u) or make_pseudonym(project.id, u) for u in ids}


def expected_fields(project: Project, item: Item, response_ids: list[int]) -> dict | None:
    """The researcher's answer of a gold or qualification item as judgment fields, or None without one."""
    if item.gold is None:
        return None
    try:
        return vote_fields(project, response_ids, item.gold, dict(item.responses.values_list("id", "text")))
    except InvalidJudgment:
        return None


def gold_expectations(project: Project) -> dict[int, dict]:
    """The researcher's answer of each gold item as judgment fields (``vote_fields`` of ``Item.gold``), from
    two queries; gold items whose answer is not a valid vote are left out."""
    items = dict(
        Item.objects.filter(project=project, purpose=Item.Purpose.GOLD, gold__isnull=False).values_list("id", "gold")
    )
    responses: dict[int, list[tuple[int, str]]] = {}
    for item, response, text in (
        Response.objects.filter(item__project=project, item__purpose=Item.Purpose.GOLD)
        .order_by("item_id", "index")
        .values_list("item_id", "id", "text")
    ):
        responses.setdefault(item, []).append((response, text))
    expected = {}
    for item, gold in items.items():  # a handful of gold items, not the votes
        ids = [r for r, _ in responses.get(item, [])]
        try:
            expected[item] = vote_fields(project, ids, gold, dict(responses.get(item, [])))
        except InvalidJudgment:
            continue
    return expected


def answer_fields(judgment: Judgment) -> dict:
    return {"outcome": judgment.outcome, "winner_id": judgment.winner_id, "data": judgment.data, "text": judgment.text}


def gold_results(
    project: Project, user, purpose: str = Item.Purpose.GOLD, limit: int | None = None, since=None
) -> list[tuple[Judgment, float | None]]:
    """The annotator's first answers on gold (or qualification) items with their scores, newest first.

    The first answer, not the current one: gold feedback tells an annotator the researchers' answer after they
    answer, and a revision ("previous") after that must not raise their accuracy."""
    from .vetting import gold_score

    judgments = (
        Judgment.objects.filter(project=project, annotator=user, supersedes__isnull=True, item__purpose=purpose)
        .select_related("item")
        .order_by("-id")
    )
    if since is not None:
        judgments = judgments.filter(created_at__gt=since)
    if limit:
        judgments = judgments[:limit]
    results = []
    for judgment in judgments:
        ids = list(judgment.item.responses.order_by("index").values_list("id", flat=True))
        expected = expected_fields(project, judgment.item, ids)
        results.append(
            (judgment, None if expected is None else gold_score(project.kind, expected, answer_fields(judgment)))
        )
    return results


def annotator_stats(project: Project, user, since=None):
    """Gold accuracy, agreement with the others' majority, speed and position bias of one annotator.

    ``since`` (the last change of their status, e.g. a reinstatement) leaves out the work judged before it,
    so a reinstated annotator starts with a clean record instead of being flagged again at once."""
    import numpy as np

    from .vetting import MIN_TIMED, AnnotatorStats

    stats = AnnotatorStats()
    scores = [s for _, s in gold_results(project, user, limit=GOLD_WINDOW, since=since) if s is not None]
    stats.n_gold = len(scores)
    stats.gold_accuracy = float(np.mean(scores)) if scores else None

    mine = Judgment.objects.filter(project=project, annotator=user, is_current=True, item__purpose=Item.Purpose.NORMAL)
    if since is not None:
        mine = mine.filter(created_at__gt=since)
    if project.kind == "pairwise":
        rows = list(
            mine.order_by("-id").values_list("item_id", "outcome", "winner_id", "task__display_order", "source")[
                :REVIEW_WINDOW
            ]
        )
        labels = {item: (winner if outcome == "win" else outcome) for item, outcome, winner, _, _ in rows}
        others: dict[int, list] = {}
        for item, outcome, winner in (
            by_source(Judgment.objects.filter(project=project, is_current=True, item_id__in=labels))
            .exclude(annotator=user)
            .values_list("item_id", "outcome", "winner_id")
        ):
            others.setdefault(item, []).append(winner if outcome == "win" else outcome)
        agree = []
        for item, votes in others.items():
            values, counts = np.unique(np.array(votes, dtype=object).astype(str), return_counts=True)
            if len(votes) >= 2 and (counts == counts.max()).sum() == 1:
                agree.append(str(labels[item]) == values[counts.argmax()])
        stats.n_shared = len(agree)
        stats.majority_agreement = float(np.mean(agree)) if agree else None
        # An imported vote's display order is unknown (stored as the item's order): it says nothing of position.
        wins = [
            (winner, order)
            for _, outcome, winner, order, source in rows
            if outcome == "win" and source != Judgment.Source.IMPORT
        ]
        stats.n_wins = len(wins)
        stats.n_first = sum(winner == order[0] for winner, order in wins)

    durations = list(
        mine.exclude(duration_ms=None).order_by("-id").values_list("duration_ms", flat=True)[:REVIEW_WINDOW]
    )
    if len(durations) >= MIN_TIMED:
        stats.median_ms = float(np.median(durations))
        # The project's recent pace: the last 2,000 timed judgments, so review stays cheap on big projects.
        everyone = list(
            by_source(Judgment.objects.filter(project=project, is_current=True))
            .exclude(duration_ms=None)
            .order_by("-id")
            .values_list("duration_ms", flat=True)[:2000]
        )
        stats.project_median_ms = float(np.median(everyone))
    return stats


def gold_feedback(task: Task, judgment: Judgment) -> str | None:
    """After a missed gold item, when the project asks for it: what the researcher's answer was.

    Only said after the answer is stored, so the annotator cannot use it on that item; it does tell them
    the item was a check, which is the point of feedback."""
    from .vetting import gold_score

    project, item = task.project, task.item
    if not project.gold_feedback or item.purpose != Item.Purpose.GOLD:
        return None
    ids = list(item.responses.order_by("index").values_list("id", flat=True))
    expected = expected_fields(project, item, ids)
    if expected is None or gold_score(project.kind, expected, answer_fields(judgment)) == 1.0:
        return None
    if project.kind == "pairwise":
        if expected["outcome"] != "win":
            said = "a tie" if expected["outcome"] == "tie" else "both responses bad"
        else:
            said = f"response {'A' if task.display_order[0] == expected['winner_id'] else 'B'} better"
        return f"This was a check item: the researchers judged {said}."
    return "This was a check item, and your answer differs from the researchers' answer."


def item_page(project: Project, page: int, size: int) -> tuple[list[Item], int]:
    """One page of the project's items by id, with their responses, and how many items there are."""
    start = (page - 1) * size
    items = list(
        Item.objects.filter(project=project)
        .select_related("round")
        .prefetch_related(Prefetch("responses", queryset=Response.objects.order_by("index")))
        .order_by("id")[start : start + size]
    )
    return items, Item.objects.filter(project=project).count()


# --- the annotation page: going back, and how much is left ------------------------------------------


def previous_task(project: Project, user, before: Task | None = None) -> Task | None:
    """The annotator's answered task just before ``before`` (without it: their last answered one), or None.

    "Before" is the order in which they first answered their tasks (``done_at``, then id): a revision leaves a task's
    ``done_at`` as it was, so walking back after changing an answer goes on to the next older task instead of
    coming back to the one just changed. Only their own tasks with an answer (status done): skipped and expired
    tasks have none to change."""
    tasks = Task.objects.filter(project=project, annotator=user, status=Task.Status.DONE)
    if before is not None:
        if before.done_at is None:  # not expected for a done task; the id alone still orders them
            tasks = tasks.filter(id__lt=before.id)
        else:
            tasks = tasks.filter(Q(done_at__lt=before.done_at) | Q(done_at=before.done_at, id__lt=before.id))
    return tasks.select_related("project", "item").order_by("-done_at", "-id").first()


# "N left" is counted exactly up to this many items; past it the page says "N+" (the count stops there, so its cost
# does not grow with the project). It is paid on every task the page renders (each submit's reply and each preload
# re-renders the progress line), so it is kept small: 500 made a task render cost 4.1 ms instead of 0.7 ms (issue
# 14's closing note); 100 is a probe of at most 101 entries of item_open_idx, which PostgreSQL walks in id order.
LEFT_COUNTED_UP_TO = 100


def annotator_workload(project: Project, user) -> dict:
    """What the annotation page's progress line says: ``done`` (tasks answered), ``left`` and ``more``.

    ``left`` is what this annotator can still be given: the tasks they hold now (leases not run out) plus the normal
    items above their pick mark that still need annotators and that they never had (every pick comes from those,
    ``actions._take_open_item``), counted up to :data:`LEFT_COUNTED_UP_TO`; ``more`` is True when there are more than
    that. A candidate's are the qualification items they have not answered yet. Not counted: hidden gold items (their
    number is not the annotator's to know) and items that came back to the pool below the mark (an expired lease, a
    skip), which the pick serves last; so ``left`` can fall short by those, never overshoot the normal work.

    Three indexed reads: the annotator's tasks (``task_annotator_idx``), their membership row, and at most
    ``LEFT_COUNTED_UP_TO + 1`` entries of ``item_open_idx`` with a probe of ``one_task_per_item_and_annotator`` each.
    """
    counts = Task.objects.filter(project=project, annotator=user).aggregate(
        done=Count("id", filter=Q(status=Task.Status.DONE)),
        held=Count("id", filter=Q(status=Task.Status.LEASED, lease_expires_at__gt=timezone.now())),
    )
    # order_by(): the model's ordering would join the project and the user for nothing.
    membership = (
        Membership.objects.filter(project=project, user=user).order_by().values_list("status", "pick_mark").first()
    )
    status, mark = membership or (Membership.Status.ACTIVE, 0)
    mine = Task.objects.filter(item=OuterRef("pk"), annotator=user)
    if status == Membership.Status.CANDIDATE:
        purpose, above = Item.Purpose.QUALIFICATION, {}
    else:
        purpose, above = Item.Purpose.NORMAL, {"open_slots__gt": 0, "id__gt": mark}
    unseen = Item.objects.filter(project=project, purpose=purpose, **above).filter(~Exists(mine))
    found = unseen.values("id")[: LEFT_COUNTED_UP_TO + 1].count()
    return {
        "done": counts["done"],
        "left": counts["held"] + min(found, LEFT_COUNTED_UP_TO),
        "more": found > LEFT_COUNTED_UP_TO,
    }


# --- the members page ----------------------------------------------------------------------------------

SUGGESTIONS_SHOWN = 10


def matching_users(query: str, limit: int = SUGGESTIONS_SHOWN) -> list:
    """Active users whose username or email contains ``query`` (any case), at most ``limit``: exact matches first,
    then those starting with it, then the rest, each by username. For project admins adding members only (the
    members page); the caller checks the role."""
    query = query.strip()
    if not query:
        return []
    users = (
        get_user_model().objects.filter(is_active=True).filter(Q(username__icontains=query) | Q(email__icontains=query))
    )
    closeness = Case(
        When(Q(username__iexact=query) | Q(email__iexact=query), then=Value(0)),
        When(Q(username__istartswith=query) | Q(email__istartswith=query), then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    return list(users.annotate(closeness=closeness).order_by("closeness", "username")[:limit])


QUEUE_MAX = 500  # entries of the flags-and-skips queue shown at once, newest first


def report_queue(project: Project, status: str = "open") -> list[dict]:
    """Flags and skip reasons, newest first (``status``: open, resolved, dismissed or all), annotators by pseudonym."""
    from .models import Flag

    flags = Flag.objects.filter(project=project).select_related("item", "resolved_by")
    skips = (
        Task.objects.filter(project=project, status=Task.Status.SKIPPED)
        .exclude(skip_reason="")
        .select_related("item", "skip_review", "skip_review__resolved_by")
    )
    if status == "open":
        flags, skips = flags.filter(status=Flag.Status.OPEN), skips.filter(skip_review__isnull=True)
    elif status != "all":
        flags, skips = flags.filter(status=status), skips.filter(skip_review__status=status)
    flags, skips = list(flags.order_by("-id")[:QUEUE_MAX]), list(skips.order_by("-done_at")[:QUEUE_MAX])
    names = pseudonyms(project, {f.annotator_id for f in flags} | {t.annotator_id for t in skips})
    entries = [
        {
            "type": "flag",
            "id": f.pk,
            "item": f.item_id,
            "external_id": f.item.external_id,
            "category": f.category,
            "category_label": f.get_category_display(),
            "note": f.note,
            "annotator": names[f.annotator_id],
            "status": f.status,
            "resolution": f.resolution,
            "resolved_by": f.resolved_by.username if f.resolved_by else None,
            "created_at": f.created_at,
        }
        for f in flags
    ]
    for t in skips:
        review = getattr(t, "skip_review", None)
        entries.append(
            {
                "type": "skip",
                "id": t.pk,
                "item": t.item_id,
                "external_id": t.item.external_id,
                "category": "skip",
                "category_label": "Skipped",
                "note": t.skip_reason,
                "annotator": names[t.annotator_id],
                "status": review.status if review else "open",
                "resolution": review.resolution if review else "",
                "resolved_by": review.resolved_by.username if review and review.resolved_by else None,
                "created_at": t.done_at,
            }
        )
    return sorted(entries, key=lambda e: e["created_at"] or project.created_at, reverse=True)[:QUEUE_MAX]


def judge_rows(project: Project) -> list[dict]:
    """The project's AI judges with their votes counted (the judges page and ``GET /api/projects/{slug}/judges/``):
    ``{"judge", "template_hash", "votes": {"ok", "unparseable", "error"}, "position_consistent", "position_checked"}``
    (pairwise votes whose two orders were compared, and how many of them agreed)."""
    counts: dict[int, dict] = {}
    for judge_id, status, consistent, n in (
        JudgeVote.objects.filter(judge__project=project)
        .values_list("judge_id", "status", "position_consistent")
        .annotate(n=Count("id"))
        .order_by()
    ):
        row = counts.setdefault(judge_id, {"votes": {s: 0 for s in JudgeVote.Status.values}, "checked": 0, "same": 0})
        row["votes"][status] += n
        if consistent is not None:
            row["checked"] += n
            row["same"] += n if consistent else 0
    rows = []
    for judge in project.judges.select_related("user", "created_by").order_by("name"):
        found = counts.get(judge.pk, {"votes": {s: 0 for s in JudgeVote.Status.values}, "checked": 0, "same": 0})
        generative = judge.backend != Judge.Backend.REWARD_MODEL
        rows.append(
            {
                "judge": judge,
                "template_hash": judging.template_hash(judging.judge_template(judge)) if generative else "",
                "votes": found["votes"],
                "position_checked": found["checked"],
                "position_consistent": found["same"],
            }
        )
    return rows
