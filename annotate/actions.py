"""Every write that matters on the human side, each in one transaction, named as a verb.

Views, API views and management commands call these; they never write models themselves.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Exists, F, OuterRef, Value, When
from django.utils import timezone
from rest_framework.authtoken.models import Token

from training.runners.base import read_arbiter_json
from training.selectors import TrainingError, resolve_base_model, resolve_reward_models

from . import agreement, judging, sql
from .exports.card import dataset_card
from .exports.options import ExportOptions
from .exports.reading import source_counts
from .exports.writing import write_export
from .imports import ANNOTATOR_NAME, ANNOTATOR_NAME_RULE, ImportFailed, ParsedItem, ParsedItems, ParsedVote, RowError
from .judgments import InvalidJudgment, judgment_fields, vote_fields
from .models import (
    MAX_OVERLAP,
    SETTINGS_FIELDS,
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
    Role,
    Round,
    SkipReview,
    Snapshot,
    Task,
    make_pseudonym,
    prompt_hash,
)

User = get_user_model()


class Conflict(Exception):
    """The request is well formed but the state does not allow it (HTTP 409)."""


# --- projects and members -------------------------------------------------------------------------


@transaction.atomic
def create_project(*, slug: str, kind: str, created_by=None, **fields) -> Project:
    """Create a project; its creator becomes its admin."""
    project = Project(slug=slug, kind=kind, name=fields.pop("name", None) or slug, created_by=created_by, **fields)
    project.full_clean()
    project.save()
    if created_by is not None:
        Membership.objects.create(project=project, user=created_by, role=Role.ADMIN)
    return project


@transaction.atomic
def update_project_settings(project: Project, **fields) -> Project:
    """Change the settings of ``SETTINGS_FIELDS``; anything else is refused."""
    unknown = set(fields) - set(SETTINGS_FIELDS)
    if unknown:
        raise ValueError(f"These settings cannot be changed here: {', '.join(sorted(unknown))}.")
    for name, value in fields.items():
        setattr(project, name, value)
    project.full_clean()
    project.save(update_fields=list(fields))
    return project


@transaction.atomic
def add_member(project: Project, username: str, role: str, password: str | None = None) -> Membership:
    """Give ``username`` a role in ``project``, creating the user if needed (with ``password`` if given)."""
    if role not in Role.values:
        raise ValueError(f"Unknown role {role!r}: use one of {', '.join(Role.values)}.")
    user, created = User.objects.get_or_create(username=username)
    if password:
        user.set_password(password)
        user.save(update_fields=["password"])
    elif created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    # In a project that requires qualification, a new annotator starts as a candidate.
    status = (
        Membership.Status.CANDIDATE
        if project.qualification_required and role == Role.ANNOTATOR
        else Membership.Status.ACTIVE
    )
    membership, created = Membership.objects.get_or_create(
        project=project, user=user, defaults={"role": role, "status": status}
    )
    if not created and membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def remove_member(membership: Membership) -> None:
    """Remove a member; their judgments stay, and their leased tasks go back to the pool."""
    leased = Task.objects.select_for_update().filter(
        project=membership.project, annotator=membership.user, status=Task.Status.LEASED
    )
    _expire(list(leased))
    membership.delete()


def issue_token(user) -> str:
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


# --- items ----------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    created: int
    duplicates: list[tuple[int, str]]  # (line, external id) of rows already in the project or the file
    repeated_texts: int = 0  # new items whose texts equal another item's (under another id: a test-retest pair)
    empty_responses: int = 0  # empty responses among the new items
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason) of invalid rows (--skip-invalid)
    votes: VoteImportReport | None = None  # the file's own preferences, recorded as votes (--votes-as)
    left_out: str = ""  # OpenAssistant reply groups of a size the project's kind cannot hold
    round: int | None = None  # the round the new items form (each import from a file is a round of its own)

    def summary(self) -> str:
        text = f"Imported {self.created} {'item' if self.created == 1 else 'items'}."
        if self.created and self.round is not None:
            text += f" They form round {self.round} (each imported file is a round of its own)."
        if self.repeated_texts:
            text += f" {self.repeated_texts} repeat the texts of another item under a different id (kept as separate items)."
        if self.empty_responses:
            text += f" {self.empty_responses} {'response is' if self.empty_responses == 1 else 'responses are'} empty."
        if self.duplicates:
            text += (
                f" Skipped {len(self.duplicates)} duplicates (lines {_line_list(line for line, _ in self.duplicates)})."
            )
        if self.skipped:
            text += f" Skipped {len(self.skipped)} invalid rows (lines {_line_list(line for line, _ in self.skipped)})."
        if self.votes is not None:
            text += f" Recorded {self.votes.created} of the file's preferences as votes."
        if self.left_out:
            text += f" {self.left_out}"
        return text


def import_items(
    project: Project,
    parsed: list[ParsedItem],
    source: dict | None = None,
    *,
    votes_as: str | None = None,
    skipped: list[tuple[int, str]] | None = None,
) -> ImportReport:
    """Add parsed items to ``project`` in one transaction.

    An external id identifies an item: a row whose id is already in the project (or earlier in the file) with
    the same content is a duplicate, skipped and reported; with other content it is an error. Rows without an id
    are deduplicated by content. ``votes_as`` records each row's own label (TRL and HH "chosen", OpenAssistant's
    consensus ranking) as a vote of that annotator. Errors refuse the whole import, unless ``skipped`` (the rows the
    parser already set aside, ``--skip-invalid``) is given: then the rows in error join it and the rest is imported.
    """
    if votes_as is not None:
        if project.kind not in (Kind.PAIRWISE, Kind.RANKING):
            raise ImportFailed(
                [(0, f"--votes-as records pairwise or ranking votes; {project.slug} is a {project.kind} project.")]
            )
        if not isinstance(votes_as, str) or not ANNOTATOR_NAME.fullmatch(votes_as):
            raise ImportFailed([(0, f"--votes-as: {ANNOTATOR_NAME_RULE}")])
        label = "preferred" if project.kind == Kind.PAIRWISE else "preferred_ranking"
        if missing := [p.line for p in parsed if getattr(p, label) is None]:
            raise ImportFailed(
                [
                    (
                        line,
                        "--votes-as needs rows that carry their label (TRL prompt/chosen/rejected, HH chosen/rejected, "
                        "OpenAssistant trees); this row has none.",
                    )
                    for line in missing
                ]
            )
    with transaction.atomic():
        report, resolved = _import_items(project, parsed, source, skipped)
        report.left_out = parsed.left_out_summary() if isinstance(parsed, ParsedItems) else ""
        if votes_as is not None:

            def vote(p: ParsedItem) -> dict:
                return {"winner": p.preferred} if project.kind == Kind.PAIRWISE else {"ranking": p.preferred_ranking}

            votes = [ParsedVote(p.line, item.external_id, votes_as, vote(p)) for p, item in resolved]
            report.votes = import_judgments(project, votes) if votes else VoteImportReport(0, [])
    return report


def _import_items(project, parsed, source, skipped) -> tuple[ImportReport, list[tuple[ParsedItem, Item]]]:
    hashes = {p.content_hash for p in parsed}
    ids = {p.external_id for p in parsed if p.external_id}
    by_hash: dict[str, Item] = {}
    for item in _among(Item.objects.filter(project=project), "content_hash", hashes).only(
        "id", "external_id", "content_hash"
    ):
        if item.content_hash in hashes:
            by_hash.setdefault(item.content_hash, item)
    by_id = {
        item.external_id: item
        for item in _among(Item.objects.filter(project=project), "external_id", ids).only(
            "id", "external_id", "content_hash"
        )
        if item.external_id in ids
    }

    new, duplicates, errors, repeated = [], [], [], 0
    file_ids: dict[str, ParsedItem] = {}
    file_hashes: dict[str, ParsedItem] = {}
    resolved: list[tuple[ParsedItem, Item | ParsedItem]] = []  # each row and the item it names
    for p in parsed:
        digest = p.content_hash
        if p.external_id is None:
            same = by_hash.get(digest) or file_hashes.get(digest)
            if same is not None:
                duplicates.append((p.line, same.external_id or digest[:12]))
                resolved.append((p, same))
                continue
            p.external_id = digest
            if digest in by_id or digest in file_ids:  # another row chose this hash as its id: then it is the same item
                errors.append((p.line, f"id {digest!r} is already used by another item in this project."))
                continue
        else:
            same = by_id.get(p.external_id) or file_ids.get(p.external_id)
            if same is not None:
                if same.content_hash != digest:
                    errors.append((p.line, f"id {p.external_id!r} is already used by another item in this project."))
                    continue
                duplicates.append((p.line, p.external_id))
                resolved.append((p, same))
                continue
            if digest in by_hash or digest in file_hashes:
                repeated += 1
        file_ids[p.external_id] = p
        file_hashes.setdefault(digest, p)
        new.append(p)
        resolved.append((p, p))
    if errors:
        if skipped is None:
            raise ImportFailed(errors)
        skipped.extend(errors)
        bad = {line for line, _ in errors}
        resolved = [(p, item) for p, item in resolved if p.line not in bad]
    skipped_rows = sorted(skipped or [])
    if not new:
        return ImportReport(0, duplicates, skipped=skipped_rows), _items_of(resolved, {})

    round_ = project.rounds.order_by("-number").first()
    if source is not None or round_ is None:
        number = (round_.number + 1) if round_ else 1
        round_ = Round.objects.create(project=project, number=number, source=source or {})
    items = Item.objects.bulk_create(
        [
            Item(
                project=project,
                round=round_,
                external_id=p.external_id,
                prompt=p.prompt,
                metadata=p.metadata,
                content_hash=p.content_hash,
                prompt_hash=prompt_hash(p.prompt),
                purpose=p.purpose,
                gold=p.gold,
                # Gold and qualification items go to every annotator and take no overlap slots.
                open_slots=project.overlap if p.purpose == Item.Purpose.NORMAL else 0,
            )
            for p in new
        ],
        batch_size=1000,
    )
    responses = Response.objects.bulk_create(
        [
            Response(item=item, index=i, text=r["text"], model_name=r["model"], metadata=r["metadata"])
            for item, p in zip(items, new)
            for i, r in enumerate(p.responses)
        ],
        batch_size=2000,
    )
    _check_gold_answers(project, items, new, responses)
    report = ImportReport(
        len(items), duplicates, repeated, sum(p.empty_responses for p in new), skipped=skipped_rows, round=round_.number
    )
    return report, _items_of(resolved, {id(p): item for p, item in zip(new, items)})


def _items_of(resolved, created: dict) -> list[tuple[ParsedItem, Item]]:
    """Each resolved row with its item: a new one, or one already in the project (a duplicate)."""
    out = []
    for p, target in resolved:
        if isinstance(target, Item):
            out.append((p, target))
        elif id(target) in created:
            out.append((p, created[id(target)]))
    return out


def _check_gold_answers(
    project: Project, items: list[Item], parsed: list[ParsedItem], responses: list[Response]
) -> None:
    """A researcher's answer must be a valid vote on its item; otherwise the whole import is refused."""
    by_item: dict[int, list[Response]] = {}
    for response in responses:
        by_item.setdefault(response.item_id, []).append(response)
    errors = []
    for item, p in zip(items, parsed):
        if p.gold is None:
            continue
        rows = sorted(by_item.get(item.pk, []), key=lambda r: r.index)
        try:
            vote_fields(project, [r.pk for r in rows], p.gold, {r.pk: r.text for r in rows})
        except InvalidJudgment as exc:
            errors.append((p.line, f"gold: {exc}"))
    if errors:
        raise ImportFailed(errors)


@dataclass
class VoteImportReport:
    created: int
    duplicates: list[int]  # lines whose annotator already judged that item
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason) of invalid rows (--skip-invalid)

    def summary(self) -> str:
        text = f"Imported {self.created} {'judgment' if self.created == 1 else 'judgments'}."
        if self.duplicates:
            lines = _line_list(self.duplicates)
            text += f" Skipped {len(self.duplicates)} votes of annotators who already judged the item (lines {lines})."
        if self.skipped:
            text += f" Skipped {len(self.skipped)} invalid rows (lines {_line_list(line for line, _ in self.skipped)})."
        return text


def _line_list(lines, shown: int = 20) -> str:
    """Line numbers for a summary, each once (a tree row can hold several items), the first ``shown`` of them."""
    numbers = sorted(set(lines))
    return ", ".join(map(str, numbers[:shown])) + ("..." if len(numbers) > shown else "")


def import_judgments(
    project: Project, votes: list[ParsedVote], *, skipped: list[tuple[int, str]] | None = None
) -> VoteImportReport:
    """Record votes made elsewhere, all or nothing. Unknown annotators become members (annotator role).

    Imported votes count toward an item's overlap, so fewer live annotators are asked for it. The display
    order of an imported vote is unknown, so it is stored as the response order of the item. With ``skipped``
    (``--skip-invalid``), votes in error join that list and the rest is imported.

    The rows are written in bulk (``COPY`` on PostgreSQL): a million votes take seconds, not hours.
    """
    with transaction.atomic():
        return _import_judgments(project, votes, skipped)


def _import_judgments(project, votes, skipped) -> VoteImportReport:
    items = dict(
        _among(Item.objects.filter(project=project), "external_id", {v.item for v in votes}).values_list(
            "external_id", "id"
        )
    )
    response_ids: dict[int, list[int]] = {}
    texts: dict[int, dict[int, str]] = {}
    columns = ("item_id", "id", "text") if project.kind == Kind.STEPS else ("item_id", "id")
    responses = _among(Response.objects.filter(item__project=project), "item_id", set(items.values()))
    for row in responses.order_by("item", "index").values_list(*columns):
        response_ids.setdefault(row[0], []).append(row[1])
        if len(row) == 3:
            texts.setdefault(row[0], {})[row[1]] = row[2]

    errors, fields = [], []
    for vote in votes:
        item_id = items.get(vote.item)
        if item_id is None:
            errors.append((vote.line, f"no item with id {vote.item!r} in project {project.slug}."))
            continue
        try:
            fields.append(
                (vote, item_id, vote_fields(project, response_ids.get(item_id, []), vote.payload, texts.get(item_id)))
            )
        except (InvalidJudgment, RowError) as exc:
            errors.append((vote.line, str(exc)))
    if errors:
        if skipped is None:
            raise ImportFailed(errors)
        skipped.extend(errors)
        if not fields:
            raise ImportFailed(errors)
    users = _annotators(project, {vote.annotator for vote, _, _ in fields})

    taken = set(
        Task.objects.filter(project=project, annotator__in=users.values()).values_list("item_id", "annotator_id")
    )
    now = timezone.now()
    new, duplicates = [], []
    for vote, item_id, judgment in fields:
        user_id = users[vote.annotator]
        if (item_id, user_id) in taken:
            duplicates.append(vote.line)
            continue
        taken.add((item_id, user_id))
        new.append((item_id, user_id, judgment))
    report = VoteImportReport(len(new), duplicates, sorted(skipped or []))
    if not new:
        return report

    task_ids = sql.bulk_insert(
        Task,
        ["item_id", "annotator_id", "display_order"],
        [(item_id, user_id, response_ids.get(item_id, [])) for item_id, user_id, _ in new],
        constants={
            "project_id": project.pk,
            "status": Task.Status.DONE,
            "leased_at": now,
            "lease_expires_at": now,
            "done_at": now,
        },
        ids=True,
    )
    names = sorted({name for _, _, judgment in new for name in judgment})
    defaults = [_default(Judgment, name) for name in names]
    last = Judgment.objects.filter(project=project).order_by("-id").values_list("id", flat=True).first() or 0
    _stale_stats_from(project, last)
    sql.bulk_insert(
        Judgment,
        ["item_id", "task_id", "annotator_id", "idempotency_key", *names],
        [
            (
                item_id,
                task_id,
                user_id,
                f"import:{item_id}",
                *[judgment.get(name, default) for name, default in zip(names, defaults)],
            )
            for (item_id, user_id, judgment), task_id in zip(new, task_ids)
        ],
        constants={"project_id": project.pk, "source": Judgment.Source.IMPORT, "created_at": now},
    )
    counts: dict[int, int] = {}
    for item_id, _, _ in new:
        counts[item_id] = counts.get(item_id, 0) + 1
    sql.add_judgment_counts(counts)
    return report


def _among(queryset, name: str, values: set):
    """``queryset`` narrowed to rows whose ``name`` is in ``values``; past a few thousand values, the whole
    queryset (the caller looks rows up by that name anyway): one IN list per value would pass SQLite's limit on
    parameters, and reading a project's ids is cheaper than sending a hundred thousand of them."""
    return queryset.filter(**{f"{name}__in": values}) if len(values) <= 5000 else queryset


def _default(model, attname: str):
    field = model._meta.get_field(attname.removesuffix("_id"))
    return field.get_default() if field.has_default() else None


def _annotators(project: Project, names: set[str]) -> dict[str, int]:
    """User ids by name; unknown names become users (without a usable password) and annotators of ``project``."""
    users = dict(User.objects.filter(username__in=names).values_list("username", "id"))
    missing = []
    for name in sorted(names - users.keys()):
        user = User(username=name)
        user.set_unusable_password()
        missing.append(user)
    for user in User.objects.bulk_create(missing, batch_size=1000):
        users[user.username] = user.pk
    if any(u.pk is None for u in missing):  # a backend that does not return ids from bulk inserts
        users.update(User.objects.filter(username__in=names).values_list("username", "id"))
    members = set(
        Membership.objects.filter(project=project, user_id__in=users.values()).values_list("user_id", flat=True)
    )
    Membership.objects.bulk_create(
        [
            Membership(
                project=project, user_id=user_id, role=Role.ANNOTATOR, pseudonym=make_pseudonym(project.pk, user_id)
            )
            for user_id in users.values()
            if user_id not in members
        ],
        batch_size=1000,
    )
    return users


def _decrement_floor(expression):
    return Case(When(open_slots__gt=0, then=expression - 1), default=Value(0))


# --- annotation -----------------------------------------------------------------------------------


def reclaim_expired_leases(project: Project) -> int:
    """Return items whose lease ran out to the pool; returns how many leases expired.

    ``assign_next_task`` calls it at most every ``RECLAIM_EVERY_SECONDS`` per process and project, and always
    before it answers "nothing left", so an abandoned item is back in the pool at most that long after its
    lease ends, without a query on every request.
    """
    expired = list(
        Task.objects.select_for_update(skip_locked=True)
        .filter(project=project, status=Task.Status.LEASED, lease_expires_at__lte=timezone.now())
        .only("id", "item_id")
    )
    _expire(expired)
    _last_reclaim[project.pk] = time.monotonic()
    return len(expired)


# When this process last reclaimed each project's expired leases (time.monotonic()).
_last_reclaim: dict[int, float] = {}
RECLAIM_EVERY_SECONDS = 10.0


def _reclaim_due(project: Project) -> bool:
    return time.monotonic() - _last_reclaim.get(project.pk, float("-inf")) >= RECLAIM_EVERY_SECONDS


def _expire(tasks: list[Task]) -> None:
    if not tasks:
        return
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(status=Task.Status.EXPIRED)
    for task in tasks:
        _release_slot(task.item_id)


def _release_slot(item_id: int) -> None:
    """Give a normal item its slot back (gold and qualification items have none to give)."""
    Item.objects.filter(pk=item_id, purpose=Item.Purpose.NORMAL).update(open_slots=F("open_slots") + 1)


@transaction.atomic
def assign_next_task(annotator, project: Project, *, after: int | None = None) -> Task | None:
    """The annotator's next task: one they already hold, else a newly leased item; None when nothing is left.

    ``after`` is the id of the task on screen: the caller wants the one after it (to preload it), so that
    task is not returned. An annotator therefore holds at most two leases at once.
    """
    # Serialises concurrent requests of the same annotator, so a double click cannot lease two items. Only
    # this membership row is locked: annotators do not wait for each other here (no project-wide lock).
    found = sql.fetch(sql.membership_mark(lock=True), [project.pk, annotator.pk], [])
    return _assign(annotator, project, *(found or (None, 0)), after)


@transaction.atomic
def assign_next_task_by_slug(annotator, slug: str, *, after: int | None = None) -> tuple[Project, Task | None] | None:
    """:func:`assign_next_task` in the project ``slug``, which is read with the membership's lock by one statement
    (the API's next-task: a round trip less). None, with nothing done, if the annotator is not a member of it."""
    found = sql.member_project(annotator.pk, slug, lock=True)
    if found is None:
        return None
    project, status, mark = found
    return project, _assign(annotator, project, status, mark, after)


def _assign(annotator, project: Project, status: str | None, mark: int, after: int | None) -> Task | None:
    """The rest of :func:`assign_next_task`, the membership (``status`` and ``pick_mark``; None and 0 for a
    non-member) being locked."""
    if status in (Membership.Status.PAUSED, Membership.Status.REFUSED):
        raise NotAdmitted(_NOT_ADMITTED[status])
    if _reclaim_due(project):
        reclaim_expired_leases(project)
    now = timezone.now()
    task = sql.held_task(annotator.pk, project.pk, now, after)
    if task is not None:
        task.project = project
        return task

    if status == Membership.Status.CANDIDATE:
        # Candidates label the qualification set first, and nothing else until they are admitted.
        item = _unseen(project, annotator, Item.Purpose.QUALIFICATION).first()
        if item is None:
            raise NotAdmitted("Your qualification answers are being checked; reload the page.")
        return _lease(project, annotator, item, now)
    if project.gold_rate and random.random() < project.gold_rate:
        # Hidden checks: a gold item looks like any other and takes no overlap slot.
        item = _unseen(project, annotator, Item.Purpose.GOLD).first()
        if item is not None:
            return _lease(project, annotator, item, now)

    return _take_open_item(project, annotator, now, mark)


def _take_open_item(project: Project, annotator, now, mark: int) -> Task | None:
    """Take one overlap slot of the next item this annotator has not seen, and lease it: one statement.

    The pick walks item_open_idx (project, id) over the items that still need annotators, from just above
    the highest item this annotator was ever given (their mark, ``Membership.pick_mark``, which the pick moves up:
    picks go in id order, so below it are the items they have seen, a few that were locked when they passed, and
    items that came back to the pool later), hence its cost grows neither with the project nor with their
    history. On PostgreSQL, ``SKIP LOCKED`` lets concurrent annotators each take a different item instead of
    queueing on one; SQLite's write lock serialises.

    Nothing found above the mark is not yet "nothing left": an item may be open below it (back from an expired
    lease or a skip, or passed while locked), or the only open items may be locked for a moment by other
    transactions (a pick, or a submit counting its judgment). So the fallback reclaims expired leases and scans
    from the start, waiting for locked rows instead of skipping them.
    """
    task = _pick(project, annotator, now, mark=mark, skip_locked=True)
    if task is None:
        reclaim_expired_leases(project)
        task = _pick(project, annotator, now, mark=None, skip_locked=False)
    return task


def _pick(project: Project, annotator, now, *, mark: int | None, skip_locked: bool) -> Task | None:
    pick, params = sql.pick_statement(project.pk, annotator.pk, mark=mark, skip_locked=skip_locked)
    if connection.vendor == "postgresql":
        # The pick, the mark's move, the task's insert and the item's responses in one round trip.
        task = sql.pick_and_lease(
            pick, params, _new_task(project, annotator, None, now), shuffle=project.randomize_order
        )
        if task is not None:
            task.project = project
        return task
    found = sql.fetch(pick, params, [Item])
    if not found:
        return None
    sql.execute(sql.move_mark(), [found[0].pk, project.pk, annotator.pk, found[0].pk])
    return _lease(project, annotator, found[0], now)


_NOT_ADMITTED = {
    Membership.Status.PAUSED: "Your work in this project is paused while a researcher reviews it.",
    Membership.Status.REFUSED: "You were not admitted to this project after the qualification.",
}


class NotAdmitted(Exception):
    """The annotator may not take tasks now (paused, not admitted, qualification being checked): HTTP 403."""


def _unseen(project: Project, annotator, purpose: str):
    return (
        Item.objects.filter(project=project, purpose=purpose)
        .filter(~Exists(Task.objects.filter(item=OuterRef("pk"), annotator=annotator)))
        .order_by("id")
    )


def _lease(project: Project, annotator, item: Item, now) -> Task:
    # The responses are fetched once, for the display order and for the caller's payload (item.responses).
    order = [r.id for r in sql.attach_responses(item)]
    if project.randomize_order:
        random.shuffle(order)
    task = _new_task(project, annotator, item, now, order)
    sql.insert(task)
    return task


def _new_task(project: Project, annotator, item: Item | None, now, display_order: list[int] | None = None) -> Task:
    lease = timedelta(seconds=project.effective_lease_seconds)
    return Task(
        project=project,
        item=item,
        annotator=annotator,
        display_order=display_order,
        leased_at=now,
        lease_expires_at=now + lease,
    )


def record_judgment(
    task: Task, payload: dict, idempotency_key: str, source: str = Judgment.Source.API
) -> tuple[Judgment, bool]:
    """Store an annotator's answer to ``task``; returns ``(judgment, created)``.

    The same ``idempotency_key`` with the same answer (``duration_ms`` aside) returns the first judgment with
    ``created=False``: a retried or double-clicked submit is never stored twice. The same key with a different
    answer is refused (:class:`Conflict`), never dropped silently. A new answer to a task that already has one
    (with a new key) supersedes it. Raises :class:`InvalidJudgment` (bad answer) or :class:`Conflict` (the task
    can no longer be answered, or the key was used for another task or answer).
    """
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 100 or "\x00" in idempotency_key:
        raise InvalidJudgment("idempotency_key must be a string of 1 to 100 characters (no NUL).")
    try:
        if connection.vendor == "postgresql" and task.item.purpose == Item.Purpose.NORMAL:
            # The common case, the first answer to a task still leased, in one statement and no transaction
            # around it: a round trip instead of four (BEGIN, lock, write, COMMIT). Anything else (a replay, an
            # edit, an expired lease, a skipped task) changes nothing here and takes the path below.
            judgment = _new_judgment(task, judgment_fields(task, payload), idempotency_key, source)
            with transaction.atomic() if connection.in_atomic_block else nullcontext():  # a savepoint if nested
                stored = sql.insert_first_judgment(judgment, [Task.Status.LEASED])
            if stored:
                judgment.task = _done(task, judgment)
                _vet_after(judgment.task, judgment)  # after the statement's commit: see _vet_after
                return judgment, True
        with transaction.atomic():
            return _record_judgment(task, payload, idempotency_key, source)
    except IntegrityError:
        # The key is taken (unique per annotator): by another of their tasks, or by a submit of this task that
        # raced past the check below on a database that let them both in. The loser reads the winner's row.
        existing = Judgment.objects.filter(annotator_id=task.annotator_id, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return _replay(existing, task, payload, idempotency_key)


# What "the same answer" is for a key sent again. duration_ms is not in it: a retry may time itself again (the page
# without JavaScript measures from the lease start on every post), and a retry is still the same answer.
REPLAY_FIELDS = ("outcome", "winner_id", "strength", "data", "text")


def _replay(existing: Judgment, task: Task, payload: dict, idempotency_key: str) -> tuple[Judgment, bool]:
    """A key already stored: the first judgment again if ``payload`` is the same answer, else :class:`Conflict`.

    As payment APIs treat a reused key: answering 200 with the first judgment to a different answer would drop
    the new one silently. Only a replay pays for the comparison; a first answer never gets here."""
    if existing.task_id != task.pk:
        raise Conflict("This idempotency_key was already used for another task.")
    answer = Judgment(**judgment_fields(task, payload))
    if any(_json_value(getattr(answer, name)) != _json_value(getattr(existing, name)) for name in REPLAY_FIELDS):
        raise Conflict(
            f"idempotency_key {idempotency_key!r} was already used for a different answer to this task; the first "
            "answer stands. Send a new idempotency_key to change it."
        )
    return existing, False


def _json_value(value):
    # data as the database gives it back (lists, string keys), so a fresh answer compares with a stored one.
    return json.loads(json.dumps(value)) if isinstance(value, (dict, list, tuple)) else value


def _new_judgment(task: Task, fields: dict, idempotency_key: str, source: str, previous=None) -> Judgment:
    # created_at is set here (sql.insert keeps a set auto_now_add) because a first answer's time is also the
    # task's done_at.
    return Judgment(
        project_id=task.project_id,
        item_id=task.item_id,
        task=task,
        annotator_id=task.annotator_id,
        idempotency_key=idempotency_key,
        source=source,
        supersedes=previous,
        created_at=timezone.now(),
        **fields,
    )


def _done(task: Task, judgment: Judgment) -> Task:
    """A copy of ``task`` as its first judgment left it (the caller's instance stays as it was)."""
    task = copy.copy(task)
    task.status, task.done_at = Task.Status.DONE, judgment.created_at
    return task


def _record_judgment(task: Task, payload: dict, idempotency_key: str, source: str) -> tuple[Judgment, bool]:
    # The task row lock serialises every submit for this task (double clicks, retries, edits). Only this row:
    # NO KEY UPDATE, which the foreign-key checks of other inserts (KEY SHARE) do not wait for. The project and
    # the item never change for a task, so the caller's loaded ones are kept.
    locked = sql.fetch(sql.task_status(lock=True), [task.pk], [])
    if locked is None:
        raise Task.DoesNotExist("No such task.")
    task = copy.copy(task)  # the caller's instance stays as it was if this transaction rolls back
    task.status = locked[0]
    if task.status == Task.Status.DONE:
        # Only a task that has a judgment can have this key already (a replay); a key of another task, or of a
        # submit of this one racing in, makes the insert below fail on unique_idempotency_key instead, so the
        # first answer to a task costs no lookup.
        existing = Judgment.objects.filter(annotator_id=task.annotator_id, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replay(existing, task, payload, idempotency_key)
    fields = judgment_fields(task, payload)

    if task.status == Task.Status.SKIPPED:
        raise Conflict("This task was skipped.")
    if task.status == Task.Status.EXPIRED and task.item.purpose == Item.Purpose.NORMAL:
        # The lease ran out and the item went back to the pool: take it back if nobody filled the slot.
        if not Item.objects.filter(pk=task.item_id, open_slots__gt=0).update(open_slots=F("open_slots") - 1):
            raise Conflict("The lease on this task expired and other annotators have completed the item.")

    # A task gets its status "done" with its first judgment: before that it has none to supersede.
    previous = task.judgments.filter(is_current=True).first() if task.status == Task.Status.DONE else None
    judgment = _new_judgment(task, fields, idempotency_key, source, previous)
    if previous is None:
        sql.insert_first_judgment(judgment, [task.status])  # the task is locked, so its status is this one
        task.status, task.done_at = Task.Status.DONE, judgment.created_at  # task is this transaction's copy
    else:
        previous.is_current = False
        previous.save(update_fields=["is_current"])
        sql.insert(judgment)
    _vet_after(task, judgment)
    return judgment, True


REVIEW_EVERY = 10


def _vet_after(task: Task, judgment: Judgment) -> None:
    """Qualification and automatic review, in the submit's transaction so the status is never stale.

    The sampled review of normal answers is the exception on PostgreSQL, where a first answer is stored by one
    statement of its own (``record_judgment``): it runs just after it, in its own transaction. If it is lost (the
    process dies in between), the next sample reviews the same history."""
    project, purpose = task.project, task.item.purpose
    if purpose == Item.Purpose.QUALIFICATION:
        if not _unseen(project, task.annotator_id, Item.Purpose.QUALIFICATION).exists():
            evaluate_qualification(project, task.annotator_id)
        return
    # Every gold answer, and about one normal answer in REVIEW_EVERY (by id: no count query on the hot path).
    if purpose == Item.Purpose.GOLD or judgment.pk % REVIEW_EVERY == 0:
        review_annotator(project, task.annotator_id)


def _set_status(membership: Membership, status: str, reason: str) -> None:
    membership.status, membership.status_reason, membership.status_changed_at = status, reason, timezone.now()
    membership.save(update_fields=["status", "status_reason", "status_changed_at"])


def evaluate_qualification(project: Project, user_id: int):
    """Admit a candidate who answered every qualification item well enough, or refuse them; returns the result."""
    from .selectors import answer_fields, expected_fields
    from .vetting import qualify

    membership = Membership.objects.select_for_update().get(project=project, user_id=user_id)
    if membership.status != Membership.Status.CANDIDATE:
        return None
    pairs = []
    for judgment in Judgment.objects.filter(
        project=project, annotator_id=user_id, is_current=True, item__purpose=Item.Purpose.QUALIFICATION
    ).select_related("item"):
        ids = list(judgment.item.responses.order_by("index").values_list("id", flat=True))
        expected = expected_fields(project, judgment.item, ids)
        if expected is not None:
            pairs.append((expected, answer_fields(judgment)))
    result = qualify(project.kind, project.qualification_metric, project.qualification_threshold, pairs)
    status = Membership.Status.ACTIVE if result.admitted else Membership.Status.REFUSED
    _set_status(membership, status, result.reason)
    return result


def review_annotator(project: Project, user_id: int) -> list[str]:
    """Flag or pause an active annotator who falls below the project's thresholds; returns the findings."""
    from .selectors import annotator_stats
    from .vetting import review_findings

    membership = Membership.objects.filter(project=project, user_id=user_id).first()
    if membership is None or membership.status != Membership.Status.ACTIVE or membership.role != Role.ANNOTATOR:
        return []
    findings = review_findings(annotator_stats(project, user_id, since=membership.status_changed_at), project)
    if findings:
        status = Membership.Status.PAUSED if project.review_action == "pause" else Membership.Status.FLAGGED
        _set_status(membership, status, "Automatic review: " + "; ".join(findings) + ".")
    return findings


def review_project(project: Project, user_ids=None) -> dict[int, list[str]]:
    """Automatic review of a whole project: the scheduled pass (``annotate.tasks.review_projects``) and the
    dashboard's. Each annotator goes through :func:`review_annotator`, the review a submit runs, so the outcome
    is the same wherever it runs; returns the findings of those it flagged or paused, by user id.

    It reviews whom a submit would: active annotators who have judged in Arbiter (members made by
    ``import_judgments`` alone never submit, and the shown order of their votes is unknown); ``user_ids``
    narrows it. One transaction per annotator, their membership row locked: two passes never review one at once."""
    from .vetting import review_enabled

    if not review_enabled(project):
        return {}
    judged_here = Judgment.objects.filter(project=project, annotator_id=OuterRef("user_id")).exclude(
        source=Judgment.Source.IMPORT
    )
    members = Membership.objects.filter(project=project, role=Role.ANNOTATOR, status=Membership.Status.ACTIVE).filter(
        Exists(judged_here)
    )
    if user_ids is not None:
        members = members.filter(user_id__in=list(user_ids))
    flagged = {}
    for user_id in members.order_by("user_id").values_list("user_id", flat=True):
        with transaction.atomic():
            list(Membership.objects.select_for_update().filter(project=project, user_id=user_id).values_list("pk"))
            findings = review_annotator(project, user_id)
        if findings:
            flagged[user_id] = findings
    return flagged


@transaction.atomic
def reinstate_annotator(membership: Membership, by) -> Membership:
    """A researcher lets a flagged, paused or refused annotator work again. Their past votes stay as they are."""
    _set_status(membership, Membership.Status.ACTIVE, f"Reinstated by {by.username}.")
    return membership


@transaction.atomic
def skip_task(task: Task, reason: str) -> Task:
    """The annotator passes on this item: it goes back to the pool for others, never to them again."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidJudgment("Say why you skip this item.")
    if len(reason) > 500:
        raise InvalidJudgment("A skip reason has at most 500 characters.")
    task = Task.objects.select_for_update().get(pk=task.pk)
    if task.status == Task.Status.SKIPPED:
        return task
    if task.status == Task.Status.DONE:
        raise Conflict("This task is already answered.")
    if task.status == Task.Status.LEASED:
        _release_slot(task.item_id)
    task.status = Task.Status.SKIPPED
    task.skip_reason = reason
    task.done_at = timezone.now()
    task.save(update_fields=["status", "skip_reason", "done_at"])
    return task


def flag_task(task: Task, category: str, note: str = "") -> Flag:
    """Report the task's item as unsafe, broken or holding personal data; the task itself goes on."""
    if category not in Flag.Category.values:
        raise InvalidJudgment(f"category must be one of {', '.join(Flag.Category.values)}.")
    if not isinstance(note, str) or len(note) > 2000:
        raise InvalidJudgment("A note is text of at most 2000 characters.")
    return Flag.objects.create(
        project_id=task.project_id,
        item_id=task.item_id,
        task=task,
        annotator_id=task.annotator_id,
        category=category,
        note=note,
    )


# --- snapshots ------------------------------------------------------------------------------------


def create_snapshot(project: Project, options: "ExportOptions", created_by=None) -> tuple[Snapshot, bool]:
    """Export ``project`` with ``options`` into an immutable snapshot; returns ``(snapshot, created)``.

    If a snapshot of this project with the same options and the same content hash exists, it is returned
    instead of a second copy. Files are written to a temporary folder and renamed into place only when
    complete, so a failed export leaves nothing behind.
    """
    options.validate()
    last_judgment = Judgment.objects.filter(project=project).order_by("-id").values_list("id", flat=True).first()
    root = Path(settings.ARTIFACT_ROOT) / "snapshots" / project.slug
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        result = write_export(project, options, tmp)
        existing = Snapshot.objects.filter(
            project=project, content_hash=result.content_hash, options=options.to_dict()
        ).first()
        if existing is not None and existing.folder.is_dir():
            return existing, False
        summary = _json_safe({**agreement.summary(project, options.source), "aggregation": result.aggregation})
        counts = dict(result.counts)
        counts.update({key: summary.get(key, 0) for key in ("n_judgments", "n_items", "n_annotators")})
        counts.update(source_counts(project, options))  # people's and judges' votes read, and the judges
        counts["n_adjudicated"] = Adjudication.objects.filter(project=project, is_current=True).count()
        relative = Path("snapshots") / project.slug / f"{result.content_hash[:16]}-{uuid.uuid4().hex[:8]}"
        with transaction.atomic():
            snapshot = Snapshot.objects.create(
                project=project,
                options=options.to_dict(),
                content_hash=result.content_hash,
                path=str(relative),
                counts=counts,
                agreement=summary,
                license=options.license,
                last_judgment_id=last_judgment,
                created_by=created_by,
            )
            (tmp / "README.md").write_text(dataset_card(snapshot), encoding="utf-8")
            os.replace(tmp, Path(settings.ARTIFACT_ROOT) / relative)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return snapshot, True


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


# --- the data browser: item statistics, adjudication, flags and skips, more votes --------------------------

# A submit's transaction is milliseconds long, but its judgment id is drawn before it commits: a read may see a
# newer judgment before an older one commits. So the mark stays below the judgments of the last few seconds, whose
# items are refreshed again on the next read. (A bulk import, whose transaction is long, lowers the mark itself:
# _stale_stats_from, in the same transaction as its votes.)
STATS_SETTLE = timedelta(seconds=5)


def refresh_item_stats(project: Project) -> int:
    """Bring ``Item.winner_share`` up to date for the items that got a vote since the project's ``stats_mark``; returns
    how many items were refreshed. The browser calls it before each read: the annotation path pays nothing, and a
    read pays for the votes since the last one (one set-based statement over the items they touch)."""
    statement = sql.refresh_shares(project.kind)
    mark = Project.objects.filter(pk=project.pk).values_list("stats_mark", flat=True).first() or 0
    newer = Judgment.objects.filter(project=project, id__gt=mark)
    if statement is None or not newer.exists():
        return 0
    settled = (
        newer.filter(created_at__lt=timezone.now() - STATS_SETTLE).order_by("-id").values_list("id", flat=True).first()
    )
    refreshed = sql.execute(statement, [project.pk, project.pk, mark])
    if settled is not None:
        Project.objects.filter(pk=project.pk, stats_mark__lt=settled).update(stats_mark=settled)
    return refreshed


def _stale_stats_from(project: Project, last_id: int) -> None:
    """Votes were just written with ids above ``last_id`` (in this transaction): their items' statistics are stale."""
    Project.objects.filter(pk=project.pk, stats_mark__gt=last_id).update(stats_mark=last_id)


MAX_REASON = 2000


@transaction.atomic
def adjudicate(item: Item, author, payload: dict) -> Adjudication:
    """Record a researcher's final label on ``item``; it supersedes the item's current adjudication, if any.

    ``payload`` is a judgment of the project's kind as the API takes it, with responses named as stored ("A" is the
    item's first response), and ``reason``. Validated by the same code as an annotator's answer."""
    if not isinstance(payload, dict):
        raise InvalidJudgment("the body must be a JSON object.")
    reason = payload.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON or "\x00" in reason:
        raise InvalidJudgment(f"reason must be text of at most {MAX_REASON} characters.")
    project = item.project
    response_ids = list(item.responses.order_by("index").values_list("id", flat=True))
    as_stored = Task(project=project, item=item, display_order=response_ids)
    fields = judgment_fields(as_stored, {k: v for k, v in payload.items() if k != "reason"})
    fields.pop("duration_ms", None)
    if project.kind != Kind.DEMONSTRATION:
        # A comparison's rationale is the adjudication's reason.
        rationale = fields.pop("text", "")
        reason = reason or rationale
    current = Adjudication.objects.select_for_update().filter(item=item, is_current=True).first()
    if current is not None:
        current.is_current = False
        current.save(update_fields=["is_current"])
    return Adjudication.objects.create(
        project=project, item=item, author=author, reason=reason.strip(), supersedes=current, **fields
    )


@transaction.atomic
def resolve_flag(flag: Flag, by, status: str, resolution: str = "") -> Flag:
    """A researcher closes a flag: ``resolved`` (acted on) or ``dismissed`` (not a problem)."""
    _check_resolution(status, resolution)
    flag = Flag.objects.select_for_update().get(pk=flag.pk)
    if flag.status != Flag.Status.OPEN:
        raise Conflict(f"This flag was already {flag.status}.")
    flag.status, flag.resolved_by, flag.resolved_at, flag.resolution = status, by, timezone.now(), resolution.strip()
    flag.save(update_fields=["status", "resolved_by", "resolved_at", "resolution"])
    return flag


@transaction.atomic
def review_skip(task: Task, by, status: str, resolution: str = "") -> SkipReview:
    """A researcher closes a skipped task's reason in the queue: ``resolved`` or ``dismissed``."""
    _check_resolution(status, resolution)
    task = Task.objects.get(pk=task.pk)
    if task.status != Task.Status.SKIPPED:
        raise Conflict("This task was not skipped.")
    review, created = SkipReview.objects.get_or_create(
        task=task,
        defaults={"status": status, "resolved_by": by, "resolved_at": timezone.now(), "resolution": resolution.strip()},
    )
    if not created:
        raise Conflict(f"This skip was already {review.status}.")
    return review


def _check_resolution(status: str, resolution) -> None:
    if status not in (Flag.Status.RESOLVED, Flag.Status.DISMISSED):
        raise InvalidJudgment("status must be resolved or dismissed.")
    if not isinstance(resolution, str) or len(resolution) > MAX_REASON or "\x00" in resolution:
        raise InvalidJudgment(f"resolution must be text of at most {MAX_REASON} characters.")


MAX_EXTRA_VOTES = 100


@transaction.atomic
def request_more_votes(project: Project, item_ids: list[int], extra: int) -> int:
    """Send items back for ``extra`` more votes each (their open slots grow); returns how many items.

    All or nothing: every id must be a normal item of ``project`` and stay within ``MAX_OVERLAP`` votes. Annotators'
    pick marks move back below the first of them, so the next picks find them (in id order, as ever) instead of
    after every newer item."""
    if isinstance(extra, bool) or not isinstance(extra, int) or not 1 <= extra <= MAX_EXTRA_VOTES:
        raise InvalidJudgment(f"extra votes must be a whole number from 1 to {MAX_EXTRA_VOTES}.")
    ids = sorted(set(item_ids))
    if not ids:
        raise InvalidJudgment("choose at least one item.")
    items = list(Item.objects.select_for_update().filter(project=project, id__in=ids).order_by("id"))
    found = {item.pk: item for item in items}
    if missing := [pk for pk in ids if pk not in found]:
        raise InvalidJudgment(f"not items of this project: {_line_list(missing)}.")
    if checks := [item.pk for item in items if item.purpose != Item.Purpose.NORMAL]:
        raise InvalidJudgment(f"gold and qualification items take no overlap: {_line_list(checks)}.")
    if full := [item.pk for item in items if item.n_judgments + item.open_slots + extra > MAX_OVERLAP]:
        raise InvalidJudgment(f"more than {MAX_OVERLAP} votes on items {_line_list(full)}.")
    Item.objects.filter(pk__in=ids).update(open_slots=F("open_slots") + extra)
    Membership.objects.filter(project=project, pick_mark__gte=ids[0]).update(pick_mark=ids[0] - 1)
    return len(ids)


# --- routing: people where the judges are unsure ----------------------------------------------------------------


def routing_decisions(project: Project, item_ids) -> dict[int, str]:
    """Where each item goes after the judges voted (``ai_routing``): ``people`` (judges disagree with each other, a
    judge was position-inconsistent, unsure below ``routing_confidence``, or could not answer), ``spot-check`` (the
    judges agree, and the item fell in the ``spot_check_rate`` sample) or ``judges`` (they agree: no person needed).

    The sample is drawn from a hash of the project and the item, so it is the same whenever it is asked."""
    from .models import JudgeVote

    votes: dict[int, list] = {}
    for item_id, status, consistent, confidence, outcome, winner, data in JudgeVote.objects.filter(
        judge__project=project, item_id__in=list(item_ids)
    ).values_list(
        "item_id",
        "status",
        "position_consistent",
        "confidence",
        "judgment__outcome",
        "judgment__winner_id",
        "judgment__data",
    ):
        votes.setdefault(item_id, []).append((status, consistent, confidence, (outcome, winner, _answer_key(data))))
    decisions = {}
    for item_id in item_ids:
        found = votes.get(item_id, [])
        unsure = (
            not found
            or any(status != "ok" or consistent is False for status, consistent, _, _ in found)
            or any(confidence is None or confidence < project.routing_confidence for _, _, confidence, _ in found)
            or len({answer for _, _, _, answer in found}) > 1
        )
        if unsure:
            decisions[item_id] = "people"
        elif _sampled(project.pk, item_id, project.spot_check_rate):
            decisions[item_id] = "spot-check"
        else:
            decisions[item_id] = "judges"
    return decisions


def _answer_key(data) -> str:
    """A judgment's answer beyond outcome and winner (rankings, ratings, steps), comparable across judges."""
    return json.dumps({k: v for k, v in (data or {}).items() if k in ("ranking", "ratings", "steps")}, sort_keys=True)


def _sampled(project_id: int, item_id: int, rate: float) -> bool:
    import hashlib

    digest = hashlib.sha256(f"spot-check:{project_id}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def route_after_judging(project: Project, item_ids) -> int:
    """With ``project.ai_routing``, take the items the judges agree on (and that are not spot-checked) out of the
    people's queue: their open places go to 0. Returns how many items left the queue.

    Only items no person has taken yet change (no leased or answered task of a person): one conditional UPDATE, so a
    pick that took a place first keeps it and the item stays with people. Nothing else
    changes: the next-task pick is the same statement over the same partial index, which no longer holds them."""
    if not project.ai_routing or not item_ids:
        return 0
    decisions = routing_decisions(project, item_ids)
    settled = [item_id for item_id, decision in decisions.items() if decision == "judges"]
    if not settled:
        return 0
    people = Task.objects.filter(
        item=OuterRef("pk"), status__in=[Task.Status.LEASED, Task.Status.DONE], annotator__judge__isnull=True
    )
    items = Item.objects.filter(project=project, pk__in=settled, purpose=Item.Purpose.NORMAL).filter(~Exists(people))
    # Every open place intact: a pick that committed while this statement waited for the row has taken one, and
    # PostgreSQL re-checks this condition (not the subquery) on the row as that pick left it.
    untouched = {"open_slots__gt": 0} if project.judges_take_places else {"open_slots": project.overlap}
    return items.filter(**untouched).update(open_slots=0)


# --- AI judges: adding one, recording its votes (docs/ai-feedback.md) -------------------------------------------


class InvalidJudge(ValueError):
    """A judge that cannot be added as described, or a judge run that cannot start; the message says why."""


JUDGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# An environment variable's name, never its value; Arbiter's own secrets are not a judge's to send anywhere.
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,99}")
PROTECTED_ENV = {"SECRET_KEY", "DATABASE_URL", "TEST_DATABASE_URL", "PGPASSWORD"}
# Options each backend reads (judging.OPTIONS); any other is refused rather than silently ignored.
JUDGE_BACKEND_OPTIONS = {
    Judge.Backend.LOCAL: ("temperature", "max_tokens", "max_prompt_tokens", "batch_size"),
    Judge.Backend.OPENAI: ("temperature", "max_tokens", "concurrency", "timeout", "retries"),
    Judge.Backend.REWARD_MODEL: ("batch_size",),
}


def judge_principle(project: Project, name: str) -> dict | None:
    """The constitution's principle ``name`` (``{"name", "text"}``); None for no name; InvalidJudge if absent."""
    try:
        return judging.principle_in(project.constitution, name)
    except ValueError as exc:
        raise InvalidJudge(str(exc)) from None


def check_judge_endpoint(base_url: str) -> str:
    """An OpenAI-compatible base URL a judge may call: http(s), no credentials in it, its host allowed by
    ARBITER_JUDGE_HOSTS (empty: none). Returns the URL without a trailing slash."""
    url = (base_url or "").strip()
    if not url:
        raise InvalidJudge(
            "An openai judge needs --base-url, the endpoint's base URL (e.g. http://vllm.internal:8000/v1)."
        )
    if len(url) > 500 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidJudge("The base URL must be one URL of at most 500 characters, without spaces.")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise InvalidJudge(f"The base URL is not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidJudge("The base URL must be an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise InvalidJudge("The base URL must not hold credentials: name the API key's environment variable instead.")
    if parts.query or parts.fragment:
        raise InvalidJudge("The base URL must not have a query or a fragment.")
    allowed = settings.ARBITER_JUDGE_HOSTS
    if host not in allowed:
        raise InvalidJudge(
            f"The host {host} is not allowed for judges: ARBITER_JUDGE_HOSTS is "
            + (", ".join(allowed) if allowed else "empty (no judge may call out)")
            + "; the site's operator sets it (docs/settings.md)."
        )
    return url.rstrip("/")


def _reward_judge(project: Project, model: str) -> None:
    """A reward-model judge's models: registered reward models or sequence classifiers under MODEL_ROOTS, weighted
    as everywhere (``artifact:3:0.7,artifact:4:0.3``), that cover what the project's kind asks."""
    values = [part.strip() for part in model.split(",")]
    if not all(values):
        raise InvalidJudge("Name the reward models as artifact:ID[:WEIGHT], separated by commas, without empty ones.")
    try:
        chosen = resolve_reward_models(values)
    except TrainingError as exc:
        raise InvalidJudge(str(exc)) from None
    spec = judging.answer_spec(project, 2)
    try:
        judging.reward_plan(project.kind, spec.criteria, [read_arbiter_json(c.path) for c in chosen])
    except ValueError as exc:
        raise InvalidJudge(str(exc)) from None
    if project.kind == Kind.RATING and not spec.numeric_scale:
        raise InvalidJudge("A reward model predicts numbers: it cannot rate on a scale of labels.")


def _local_judge(model: str) -> None:
    """A local judge's model: a causal language model under MODEL_ROOTS or in the registry, safetensors only."""
    try:
        chosen = resolve_base_model(model)
    except TrainingError as exc:
        raise InvalidJudge(str(exc)) from None
    if chosen.artifact is not None:
        if chosen.artifact.kind != "policy":
            raise InvalidJudge(
                f"Artifact {chosen.artifact.pk} is a {chosen.artifact.kind}: a local judge is a causal LM."
            )
        return
    try:
        architectures = json.loads((chosen.path / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError):
        architectures = None
    if not architectures or not any(a.endswith("ForCausalLM") for a in architectures):
        raise InvalidJudge(f"{chosen.path} is not a causal language model (architectures: {architectures or 'none'}).")


@transaction.atomic
def add_judge(
    project: Project,
    name: str,
    backend: str,
    model: str,
    base_url: str = "",
    api_key_env: str = "",
    template: str = "",
    principle: str = "",
    options: dict | None = None,
    created_by=None,
) -> Judge:
    """Add an AI judge to ``project``, with its own user (who cannot log in) as the annotator of its votes.

    Everything is checked before anything is written (InvalidJudge says what is wrong): the backend; its model (a
    reward model's ``artifact:ID[:WEIGHT],...`` resolved as for training runs, a causal LM under MODEL_ROOTS or in
    the registry as safetensors, or an endpoint's model name); an openai endpoint's host against
    ARBITER_JUDGE_HOSTS and its key as the *name* of an environment variable (never a key); the template's
    placeholders; the constitution principle; the options. A template or option that looks like a credential is
    refused. ``template`` "" uses the default of the project's kind."""
    name = (name or "").strip()
    model = (model or "").strip()
    base_url, api_key_env = (base_url or "").strip(), (api_key_env or "").strip()
    template, principle = template or "", (principle or "").strip()
    if project.kind not in judging.JUDGED_KINDS:
        raise InvalidJudge(
            f"Judges vote on {', '.join(judging.JUDGED_KINDS)} projects; {project.slug} is a {project.kind} project."
        )
    if not JUDGE_NAME.fullmatch(name):
        raise InvalidJudge(
            "A judge's name is 1 to 64 lowercase letters, digits, '-' or '_' (it starts with a letter or digit)."
        )
    if Judge.objects.filter(project=project, name=name).exists():
        raise InvalidJudge(f"Project {project.slug} already has a judge {name!r}.")
    if backend not in Judge.Backend.values:
        raise InvalidJudge(f"Unknown backend {backend!r}: use one of {', '.join(Judge.Backend.values)}.")
    if not model or len(model) > 500:
        raise InvalidJudge("Name the judge's model (at most 500 characters).")
    for label, text, long_tokens in (
        ("model", model, False),
        ("base URL", base_url, False),
        ("template", template, True),
    ):
        if what := judging.secret_in(text, long_tokens):
            raise InvalidJudge(
                f"The {label} looks like it holds {what}: keys are never stored; name the environment variable that "
                "holds it (--api-key-env)."
            )
    if backend != Judge.Backend.OPENAI and (base_url or api_key_env):
        raise InvalidJudge("--base-url and --api-key-env are for openai judges (an OpenAI-compatible endpoint).")
    if backend == Judge.Backend.OPENAI:
        base_url = check_judge_endpoint(base_url)
        if any(ch.isspace() or ord(ch) < 32 for ch in model):
            raise InvalidJudge("An endpoint's model name has no spaces or control characters.")
        if api_key_env and (not ENV_NAME.fullmatch(api_key_env) or api_key_env in PROTECTED_ENV):
            raise InvalidJudge(
                "--api-key-env is the NAME of an environment variable (capital letters, digits and _, e.g. "
                "OPENAI_API_KEY), not the key itself"
                + (f"; {api_key_env} holds one of Arbiter's own secrets." if api_key_env in PROTECTED_ENV else ".")
            )
    elif backend == Judge.Backend.LOCAL:
        _local_judge(model)
    else:
        if template or principle:
            raise InvalidJudge(
                "A reward-model judge reads no prompt template and cites no principle: it scores responses."
            )
        _reward_judge(project, model)
    if backend != Judge.Backend.REWARD_MODEL:
        try:
            used = judging.check_template(project.kind, template or judging.default_template(project.kind))
        except judging.TemplateError as exc:
            raise InvalidJudge(f"Template: {exc}") from None
        if principle and "principle" not in used:
            raise InvalidJudge("The judge cites a principle but its template does not show {principle}.")
    judge_principle(project, principle)
    try:
        options = judging.clean_options(options)
    except ValueError as exc:
        raise InvalidJudge(str(exc)) from None
    if stray := [key for key in options if key not in JUDGE_BACKEND_OPTIONS[backend]]:
        raise InvalidJudge(
            f"{', '.join(stray)}: not an option of {backend} judges (theirs: {', '.join(JUDGE_BACKEND_OPTIONS[backend])})."
        )
    username = f"judge.{project.pk}.{name}"
    if User.objects.filter(username=username).exists():
        raise InvalidJudge(f"A user {username!r} exists already: choose another name.")
    user = User(username=username, is_active=False)
    user.set_unusable_password()
    user.save()
    judge = Judge(
        project=project,
        name=name,
        backend=backend,
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        template="" if template == judging.DEFAULT_TEMPLATES.get(project.kind) else template,
        principle=principle,
        options=options,
        user=user,
        created_by=created_by,
    )
    judge.full_clean()
    judge.save()
    return judge


@dataclass
class AIVotesReport:
    created: int  # judgments written
    unparseable: int  # votes kept without a judgment: the output did not hold an answer
    errors: int  # votes kept without a judgment: the backend failed, or the answer was refused by validation
    skipped: int  # items the judge had voted on already (or that are gone): never judged twice
    routed: int = 0  # items that left the people's queue (project.ai_routing)

    @property
    def votes(self) -> int:
        return self.created + self.unparseable + self.errors


def record_ai_votes(judge: Judge, rows: list[dict], run=None) -> AIVotesReport:
    """Store a judge's votes, one transaction, in bulk: per item a Task (done) of the judge's user, a Judgment with
    source "ai" validated by annotate.judgments exactly as an imported person's vote, and a JudgeVote with the
    provenance (raw outputs, parsed answers, position consistency, confidence, tokens, template hash, model, run).
    A row whose status is not ok, or whose answer validation refuses, becomes a JudgeVote without a judgment.

    Each row: ``{"item", "status", "answer", "raw", "parsed", "position_consistent", "confidence", "tokens", "error",
    "template_hash", "model"}`` (training/runners/judge.py writes them; ``answer`` names responses by index).
    Items the judge already has a vote on are skipped (never judged twice). Judges do not take people's places:
    ``open_slots`` and ``n_judgments`` change only when ``project.judges_take_places``. Then the project's routing
    decides who else sees the items (:func:`route_after_judging`)."""
    with transaction.atomic():
        # The judge's row is the lock: two runs of one judge publishing at once write one after the other.
        judge = Judge.objects.select_for_update().select_related("project", "user").get(pk=judge.pk)
        project = judge.project
        wanted = {}
        for row in rows:
            item_id = row.get("item") if isinstance(row, dict) else None
            if isinstance(item_id, int) and not isinstance(item_id, bool) and item_id not in wanted:
                wanted[item_id] = row
        ids = set(wanted)
        present = set(_among(Item.objects.filter(project=project), "id", ids).values_list("id", flat=True)) & ids
        done = set(
            _among(JudgeVote.objects.filter(judge=judge), "item_id", present).values_list("item_id", flat=True)
        ) | set(_among(Task.objects.filter(annotator=judge.user), "item_id", present).values_list("item_id", flat=True))
        todo = sorted(present - done)
        skipped = len(rows) - len(todo)
        if not todo:
            return AIVotesReport(0, 0, 0, skipped)
        response_ids: dict[int, list[int]] = {}
        texts: dict[int, dict[int, str]] = {}
        columns = ("item_id", "id", "text") if project.kind == Kind.STEPS else ("item_id", "id")
        for row in (
            _among(Response.objects.filter(item__project=project), "item_id", set(todo))
            .order_by("item", "index")
            .values_list(*columns)
        ):
            response_ids.setdefault(row[0], []).append(row[1])
            if len(row) == 3:
                texts.setdefault(row[0], {})[row[1]] = row[2]
        votes, judged = [], []
        for item_id in todo:
            row = wanted[item_id]
            status = row.get("status") if row.get("status") in JudgeVote.Status.values else JudgeVote.Status.ERROR
            error = str(row.get("error") or "")[:4000]
            fields = None
            if status == JudgeVote.Status.OK:
                try:
                    answer = row.get("answer")
                    if not isinstance(answer, dict):
                        raise InvalidJudgment("the vote has no answer.")
                    fields = vote_fields(project, response_ids.get(item_id, []), answer, texts.get(item_id))
                except InvalidJudgment as exc:
                    status, error = JudgeVote.Status.ERROR, f"The answer was refused: {exc}"
            votes.append((item_id, row, status, error))
            if fields is not None:
                judged.append((item_id, fields))
        now = timezone.now()
        judgment_of: dict[int, int] = {}
        if judged:
            task_ids = sql.bulk_insert(
                Task,
                ["item_id", "display_order"],
                [(item_id, response_ids.get(item_id, [])) for item_id, _ in judged],
                constants={
                    "project_id": project.pk,
                    "annotator_id": judge.user_id,
                    "status": Task.Status.DONE,
                    "leased_at": now,
                    "lease_expires_at": now,
                    "done_at": now,
                },
                ids=True,
            )
            names = sorted({name for _, fields in judged for name in fields})
            defaults = [_default(Judgment, name) for name in names]
            last = Judgment.objects.filter(project=project).order_by("-id").values_list("id", flat=True).first() or 0
            _stale_stats_from(project, last)
            judgment_ids = sql.bulk_insert(
                Judgment,
                ["item_id", "task_id", "idempotency_key", *names],
                [
                    (
                        item_id,
                        task_id,
                        f"judge:{judge.pk}:{item_id}",
                        *[fields.get(name, default) for name, default in zip(names, defaults)],
                    )
                    for (item_id, fields), task_id in zip(judged, task_ids)
                ],
                constants={
                    "project_id": project.pk,
                    "annotator_id": judge.user_id,
                    "source": Judgment.Source.AI,
                    "created_at": now,
                },
                ids=True,
            )
            judgment_of = {item_id: jid for (item_id, _), jid in zip(judged, judgment_ids)}
            if project.judges_take_places:
                sql.add_judgment_counts({item_id: 1 for item_id, _ in judged})
        default_hash = (
            judging.template_hash(judging.judge_template(judge)) if judge.backend != Judge.Backend.REWARD_MODEL else ""
        )
        sql.bulk_insert(
            JudgeVote,
            [
                "item_id",
                "judgment_id",
                "status",
                "template_hash",
                "model",
                "raw",
                "parsed",
                "position_consistent",
                "confidence",
                "tokens",
                "error",
            ],
            [
                (
                    item_id,
                    judgment_of.get(item_id),
                    status,
                    str(row.get("template_hash") or default_hash)[:64],
                    str(row.get("model") or judge.model)[:500],
                    row.get("raw") if isinstance(row.get("raw"), list) else [],
                    {"orders": row.get("parsed") or [], "answer": row.get("answer") if status == "ok" else None},
                    row.get("position_consistent") if isinstance(row.get("position_consistent"), bool) else None,
                    _confidence(row.get("confidence")),
                    row.get("tokens") if isinstance(row.get("tokens"), dict) else {},
                    error,
                )
                for item_id, row, status, error in votes
            ],
            constants={"judge_id": judge.pk, "run_id": getattr(run, "pk", run), "created_at": now},
        )
        counts = {status: sum(1 for _, _, s, _ in votes if s == status) for status in JudgeVote.Status.values}
        report = AIVotesReport(
            len(judged), counts[JudgeVote.Status.UNPARSEABLE], counts[JudgeVote.Status.ERROR], skipped
        )
        # Routing (the lead's hook): who else sees these items now that the judge voted.
        report.routed = route_after_judging(project, todo) or 0
    return report


def _confidence(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        return None
    return float(value)
