"""Every write that matters on the human side, each in one transaction, named as a verb.

Views, API views and management commands call these; they never write models themselves.
"""

from __future__ import annotations

import copy
import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Exists, F, OuterRef, Value, When
from django.utils import timezone
from rest_framework.authtoken.models import Token

from . import rows
from .imports import ImportFailed, ParsedItem, ParsedVote, RowError
from .judgments import InvalidJudgment, judgment_fields, vote_fields
from .models import SETTINGS_FIELDS, Flag, Item, Judgment, Membership, Project, Response, Role, Round, Task, prompt_hash

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
    status = Membership.Status.CANDIDATE if project.qualification_required and role == Role.ANNOTATOR else Membership.Status.ACTIVE
    membership, created = Membership.objects.get_or_create(project=project, user=user, defaults={"role": role, "status": status})
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

    def summary(self) -> str:
        text = f"Imported {self.created} items."
        if self.duplicates:
            lines = ", ".join(str(line) for line, _ in self.duplicates[:20])
            more = "..." if len(self.duplicates) > 20 else ""
            text += f" Skipped {len(self.duplicates)} duplicates (lines {lines}{more})."
        return text


@transaction.atomic
def import_items(project: Project, parsed: list[ParsedItem], source: dict | None = None) -> ImportReport:
    """Add parsed items to ``project`` in one transaction.

    Rows whose content (prompt and responses) is already in the project, or earlier in the same file, are
    skipped and reported. An id that is taken by an item with different content refuses the whole import.
    """
    hashes = {p.content_hash for p in parsed}
    existing_hashes = set(
        Item.objects.filter(project=project, content_hash__in=hashes).values_list("content_hash", flat=True)
    )
    ids = {p.external_id for p in parsed if p.external_id}
    existing_ids = dict(
        Item.objects.filter(project=project, external_id__in=ids).values_list("external_id", "content_hash")
    )
    new, duplicates, errors = [], [], []
    seen = set()
    for p in parsed:
        digest = p.content_hash
        if digest in existing_hashes or digest in seen:
            duplicates.append((p.line, p.external_id or digest[:12]))
            continue
        if p.external_id in existing_ids:
            errors.append((p.line, f"id {p.external_id!r} is already used by another item in this project."))
            continue
        seen.add(digest)
        new.append(p)
    if errors:
        raise ImportFailed(errors)
    if not new:
        return ImportReport(0, duplicates)

    round_ = project.rounds.order_by("-number").first()
    if source is not None or round_ is None:
        number = (round_.number + 1) if round_ else 1
        round_ = Round.objects.create(project=project, number=number, source=source or {})
    items = Item.objects.bulk_create(
        [
            Item(
                project=project,
                round=round_,
                external_id=p.external_id or p.content_hash,
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
    return ImportReport(len(items), duplicates)


def _check_gold_answers(project: Project, items: list[Item], parsed: list[ParsedItem], responses: list[Response]) -> None:
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


@transaction.atomic
def import_judgments(project: Project, votes: list[ParsedVote]) -> VoteImportReport:
    """Record votes made elsewhere, all or nothing. Unknown annotators become members (annotator role).

    Imported votes count toward an item's overlap, so fewer live annotators are asked for it. The display
    order of an imported vote is unknown, so it is stored as the response order of the item.
    """
    items = {
        item.external_id: item
        for item in Item.objects.filter(project=project, external_id__in={v.item for v in votes})
    }
    response_ids: dict[int, list[int]] = {}
    texts: dict[int, dict[int, str]] = {}
    for item_id, response_id, text in (
        Response.objects.filter(item__in=items.values()).order_by("item", "index").values_list("item_id", "id", "text")
    ):
        response_ids.setdefault(item_id, []).append(response_id)
        texts.setdefault(item_id, {})[response_id] = text

    errors, fields = [], []
    for vote in votes:
        item = items.get(vote.item)
        if item is None:
            errors.append((vote.line, f"no item with id {vote.item!r} in project {project.slug}."))
            continue
        try:
            ids = response_ids.get(item.id, [])
            fields.append((vote, item, vote_fields(project, ids, vote.payload, texts.get(item.id, {}))))
        except (InvalidJudgment, RowError) as exc:
            errors.append((vote.line, str(exc)))
    if errors:
        raise ImportFailed(errors)

    users = {u.username: u for u in User.objects.filter(username__in={v.annotator for v in votes})}
    for name in {v.annotator for v in votes} - users.keys():
        user = User(username=name)
        user.set_unusable_password()
        user.save()
        users[name] = user
    members = set(Membership.objects.filter(project=project, user__in=users.values()).values_list("user_id", flat=True))
    for user in users.values():
        if user.id not in members:
            Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)

    taken = set(
        Task.objects.filter(item__in=items.values(), annotator__in=users.values()).values_list("item_id", "annotator_id")
    )
    now = timezone.now()
    created, duplicates = 0, []
    for vote, item, judgment in fields:
        user = users[vote.annotator]
        if (item.id, user.id) in taken:
            duplicates.append(vote.line)
            continue
        taken.add((item.id, user.id))
        task = Task.objects.create(
            project=project,
            item=item,
            annotator=user,
            display_order=response_ids.get(item.id, []),
            status=Task.Status.DONE,
            leased_at=now,
            lease_expires_at=now,
            done_at=now,
        )
        Judgment.objects.create(
            project=project,
            item=item,
            task=task,
            annotator=user,
            idempotency_key=f"import:{item.id}",
            source=Judgment.Source.IMPORT,
            **judgment,
        )
        Item.objects.filter(pk=item.pk).update(
            n_judgments=F("n_judgments") + 1, open_slots=_decrement_floor(F("open_slots"))
        )
        created += 1
    return VoteImportReport(created, duplicates)


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
    found = rows.fetch(
        "SELECT status, pick_mark FROM annotate_membership WHERE project_id = %s AND user_id = %s" + rows.for_update(),
        [project.pk, annotator.pk],
        [],
    )
    return _assign(annotator, project, *(found or (None, 0)), after)


@transaction.atomic
def assign_next_task_by_slug(annotator, slug: str, *, after: int | None = None) -> tuple[Project, Task | None] | None:
    """:func:`assign_next_task` in the project ``slug``, which is read with the membership's lock by one statement
    (the API's next-task: a round trip less). None, with nothing done, if the annotator is not a member of it."""
    found = rows.member_project(annotator.pk, slug, lock=True)
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
    task = rows.held_task(annotator.pk, project.pk, now, after)
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
    sql, params = pick_statement(project.pk, annotator.pk, mark=mark, skip_locked=skip_locked)
    if connection.vendor == "postgresql":
        # The pick, the mark's move, the task's insert and the item's responses in one round trip.
        task = rows.pick_and_lease(sql, params, _new_task(project, annotator, None, now), shuffle=project.randomize_order)
        if task is not None:
            task.project = project
        return task
    found = rows.fetch(sql, params, [Item])
    if not found:
        return None
    rows.execute(
        "UPDATE annotate_membership SET pick_mark = %s WHERE project_id = %s AND user_id = %s AND pick_mark < %s",
        [found[0].pk, project.pk, annotator.pk, found[0].pk],
    )
    return _lease(project, annotator, found[0], now)


def pick_statement(project_id: int, annotator_id: int, *, mark: int | None, skip_locked: bool) -> tuple[str, list]:
    """The SQL and parameters of the pick (``bench/_serve_profile.py`` shows its plan)."""
    postgres = connection.vendor == "postgresql"
    lock = ("FOR NO KEY UPDATE SKIP LOCKED" if skip_locked else "FOR NO KEY UPDATE") if postgres else ""
    # The plan must not depend on statistics (they lag behind a project that is being labelled), so the
    # statement is shaped to leave PostgreSQL's planner one good plan at every project size and history:
    # - ``project_id = ANY(...)`` with ORDER BY (project_id, id): only item_open_idx gives that order (with
    #   ``project_id = X`` the planner drops the project from the order and walks the primary key, through every
    #   item of older projects: 10-15 ms at 100k items instead of 0.3);
    # - the annotator's mark (None: from the start) is a parameter, read with the membership's lock;
    # - ``OFFSET 0`` keeps NOT EXISTS a probe of one index entry per candidate item, never a scan of the
    #   annotator's whole history.
    project = "i.project_id = ANY(%s)" if postgres else "i.project_id = %s"
    above = "AND i.id > %s" if mark is not None else ""
    probe = "OFFSET 0" if postgres else ""
    sql = f"""
        UPDATE annotate_item SET open_slots = open_slots - 1
        WHERE open_slots > 0 AND id = (
            SELECT i.id FROM annotate_item i
            WHERE {project} AND i.open_slots > 0 AND i.purpose = 'normal' {above}
              AND NOT EXISTS (SELECT 1 FROM annotate_task u WHERE u.item_id = i.id AND u.annotator_id = %s {probe})
            ORDER BY i.project_id, i.id LIMIT 1 {lock}
        )
        RETURNING {_ITEM_COLUMNS}
    """  # fmt: skip
    project_param = [project_id] if postgres else project_id
    return sql, [project_param] + ([mark] if mark is not None else []) + [annotator_id]


_ITEM_COLUMNS = ", ".join(f.column for f in Item._meta.concrete_fields)


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
    order = [r.id for r in rows.attach_responses(item)]
    if project.randomize_order:
        random.shuffle(order)
    task = _new_task(project, annotator, item, now, order)
    rows.insert(task)
    return task


def _new_task(project: Project, annotator, item: Item | None, now, display_order: list[int] | None = None) -> Task:
    lease = timedelta(seconds=project.effective_lease_seconds)
    return Task(
        project=project, item=item, annotator=annotator, display_order=display_order,
        leased_at=now, lease_expires_at=now + lease,
    )  # fmt: skip


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
                stored = rows.insert_first_judgment(judgment, [Task.Status.LEASED])
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
    # created_at is set here (rows.insert keeps a set auto_now_add) because a first answer's time is also the
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
    locked = rows.fetch("SELECT status FROM annotate_task WHERE id = %s" + rows.for_update(), [task.pk], [])
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
        rows.insert_first_judgment(judgment, [task.status])  # the task is locked, so its status is this one
        task.status, task.done_at = Task.Status.DONE, judgment.created_at  # task is this transaction's copy
    else:
        previous.is_current = False
        previous.save(update_fields=["is_current"])
        rows.insert(judgment)
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
        project_id=task.project_id, item_id=task.item_id, task=task, annotator_id=task.annotator_id, category=category, note=note
    )
