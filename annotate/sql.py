"""Every statement written by hand, in one place; the schema comes from the models' ``_meta``.

Three kinds, each because the ORM costs too much there:

- **The annotation loop's statements** (next-task and submit). On a small server the CPU of a request, not the
  database, is the limit, and a third of it went into Django compiling the same few queries again on every request.
  These are built once per process, their rows go through the converters the ORM uses (JSON, dates, booleans), so
  the instances are what the ORM would have returned; on PostgreSQL they are prepared (``_cursor``).
- **Bulk writes** (:func:`bulk_insert`): a million imported votes with ``COPY`` (PostgreSQL) or one
  ``executemany`` (SQLite).
- **Bulk reads** (:func:`numeric_rows`, :func:`copy_out`): integer columns of a million judgments through binary
  ``COPY``, for agreement, dashboards and exports.

Table and column names are never literals: :func:`with_schema` fills ``{Task}`` and ``{Task.status}`` from ``_meta``,
:func:`columns` lists a model's concrete fields, and ``RAW_FIELDS`` records the fields these statements were
written for, so that a test fails when a model gains a field nobody checked here. Everything else stays on the ORM.
"""

from __future__ import annotations

import select
from datetime import datetime
from functools import cache

import numpy as np
import orjson
import psycopg
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import DateTimeField, JSONField
from rest_framework.authtoken.models import Token

from .models import Item, Judgment, Membership, Project, Response, Task


def columns(model, alias: str) -> str:
    return ", ".join(f"{alias}.{connection.ops.quote_name(f.column)}" for f in model._meta.concrete_fields)


class _Table:
    """A model in a statement template: ``{Task}`` is its table, ``{Task.status}`` a field's column, quoted."""

    def __init__(self, model):
        self._model = model

    def __format__(self, spec) -> str:
        return connection.ops.quote_name(self._model._meta.db_table)

    def __getattr__(self, name: str) -> str:
        return connection.ops.quote_name(self._model._meta.get_field(name).column)


def with_schema(template: str, **parts) -> str:
    """``template`` with the schema filled in from the models' ``_meta`` (STYLE.md §11): ``{Task}``, ``{Task.status}``,
    and ``parts`` for the pieces a caller varies. A renamed table or column changes the statements with it, and a
    field that does not exist fails here, not in the database.

        >>> with_schema("SELECT {Task.status} FROM {Task} WHERE {Task.id} = %s")
        'SELECT "status" FROM "annotate_task" WHERE "id" = %s'
    """
    return template.format_map({**_schema(), **parts})


# The concrete fields of the models these statements read and write, as they were when the statements were last
# checked against them. Rows are read with every column (:func:`columns`) and inserted with every field
# (``_insert_sql``, and :func:`bulk_insert`, which gives unnamed fields their defaults and refuses a field without
# one), so a new field mostly just works; what needs a person is whether a hand-written statement must set it
# (the next-task pick, the one-statement submit, the vote import) and whether bench/ loaders fill it.
# tests/annotate/test_sql.py fails until a new field has been checked and added here.
RAW_FIELDS = {
    Item: {
        "id",
        "project_id",
        "round_id",
        "external_id",
        "prompt",
        "metadata",
        "content_hash",
        "prompt_hash",
        "purpose",
        "gold",
        "open_slots",
        "n_judgments",
        "winner_share",
        "created_at",
    },
    Response: {"id", "item_id", "index", "text", "model_name", "metadata"},
    Task: {
        "id",
        "project_id",
        "item_id",
        "annotator_id",
        "display_order",
        "status",
        "leased_at",
        "lease_expires_at",
        "done_at",
        "skip_reason",
    },
    Judgment: {
        "id",
        "project_id",
        "item_id",
        "task_id",
        "annotator_id",
        "outcome",
        "winner_id",
        "strength",
        "data",
        "text",
        "duration_ms",
        "idempotency_key",
        "source",
        "supersedes_id",
        "is_current",
        "created_at",
    },
}


@cache
def _schema() -> dict:
    models = [Project, Membership, Item, Response, Task, Judgment, Token]
    return {model.__name__: _Table(model) for model in models} | {"User": _Table(get_user_model())}


@cache
def _converters(vendor: str, model) -> list[tuple[int, list, object]]:
    """(column index, converters, column expression) of the fields whose database values need converting."""
    out = []
    for i, field in enumerate(model._meta.concrete_fields):
        col = field.get_col(model._meta.db_table)
        converters = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if converters:
            out.append((i, converters, col))
    return out


def _db():
    """The default connection itself: ``django.db.connection`` is a proxy that looks it up again (in a
    thread-local) on every attribute, a cost worth saving on the hot path."""
    return connections[DEFAULT_DB_ALIAS]


def _cursor(db):
    """These statements' cursor: on PostgreSQL one whose statements are prepared (config/postgresql/base.py)."""
    prepared = getattr(db, "prepared_cursor", None)
    return prepared() if prepared else db.cursor()


# Ids come from URLs and bodies: one past a 64-bit integer matches no row (and the ORM would say so; raw SQL on
# SQLite raises OverflowError instead).
BIGINT_MAX = 2**63 - 1


def _matchable(params: list) -> bool:
    return all(not isinstance(p, int) or -BIGINT_MAX - 1 <= p <= BIGINT_MAX for p in params)


def fetch(statement: str, params: list, models: list) -> list | None:
    """The first row of ``sql`` as instances of ``models`` (their columns in order, as :func:`columns` lists
    them), followed by any further columns as they are; None without a row."""
    if not _matchable(params):
        return None
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    return None if row is None else _instances(row, models, db)


def fetch_all(statement: str, params: list, models: list) -> list[list]:
    """Every row of ``sql``, each as :func:`fetch` returns one."""
    if not _matchable(params):
        return []
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(statement, params)
        return [_instances(row, models, db) for row in cursor.fetchall()]


def execute(statement: str, params: list) -> int:
    """Run a write; returns the number of rows it changed."""
    if not _matchable(params):
        return 0
    with _cursor(_db()) as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


def insert(obj) -> None:
    """``obj.save()`` of a new row, as the ORM would write it (``pre_save`` fills ``auto_now_add`` fields that are
    not set yet, values are prepared by their fields), with a statement built once per model; sets ``obj.pk``.
    No save() override or signal runs: for the hot-path models (Task, Judgment), which have none that matter on
    insert."""
    db = _db()
    statement, fields = _insert_sql(db.vendor, type(obj))
    with _cursor(db) as cursor:
        cursor.execute(statement, _insert_params(obj, fields, db))
        obj.pk = cursor.fetchone()[0]
    obj._state.adding, obj._state.db = False, db.alias


def _insert_params(obj, fields, db) -> list:
    return [f.get_db_prep_save(f.pre_save(obj, getattr(obj, f.attname) is None), db) for f in fields]


def insert_first_judgment(judgment, statuses: list[str]) -> bool:
    """Record ``judgment`` as the first answer to its task: mark the task done at ``judgment.created_at`` if its
    status is one of ``statuses``, count the judgment on the item and insert it (sets its pk). False, with nothing
    written, when the task's status is none of them.

    On PostgreSQL this is one statement (data-modifying ``WITH``). Its UPDATE of the task takes the task's row
    lock, so it waits for a concurrent submit of the same task and then sees that task's new status: on its own
    (autocommit) it is a whole, safe submit, in one round trip. Elsewhere (SQLite runs in-process, so a
    statement costs no round trip) three statements, in the caller's transaction."""
    db = _db()
    done_at = db.ops.adapt_datetimefield_value(judgment.created_at)
    task = [Task.Status.DONE, done_at, judgment.task_id, list(statuses)]
    if db.vendor != "postgresql":
        marked = execute(
            _mark_done_sql(len(statuses)),
            task[:3] + task[3],
        )
        if not marked:
            return False
        execute(_count_judgment_sql(), [judgment.item_id])
        insert(judgment)
        return True
    statement, fields = _first_judgment_sql()
    with _cursor(db) as cursor:
        cursor.execute(statement, task + _insert_params(judgment, fields, db))
        row = cursor.fetchone()
    if row is None:
        return False
    judgment.pk = row[0]
    judgment._state.adding, judgment._state.db = False, db.alias
    return True


@cache
def _mark_done_sql(n_statuses: int) -> str:
    return with_schema(
        "UPDATE {Task} SET {Task.status} = %s, {Task.done_at} = %s WHERE {Task.id} = %s AND {Task.status} IN ({any})",
        any=", ".join(["%s"] * n_statuses),
    )


@cache
def _count_judgment_sql() -> str:
    return with_schema("UPDATE {Item} SET {Item.n_judgments} = {Item.n_judgments} + 1 WHERE {Item.id} = %s")


@cache
def _first_judgment_sql() -> tuple[str, list]:
    _, fields = _insert_sql("postgresql", Judgment)
    quote = connection.ops.quote_name
    # Typed placeholders: in INSERT ... SELECT an untyped literal (a NULL) would be taken for text.
    values = ", ".join(f"%s::{f.cast_db_type(connection)}" for f in fields)
    statement = with_schema(
        "WITH t AS (UPDATE {Task} SET {Task.status} = %s, {Task.done_at} = %s WHERE {Task.id} = %s AND {Task.status} = ANY(%s) "
        "RETURNING {Task.item}), "
        "i AS (UPDATE {Item} SET {Item.n_judgments} = {Item.n_judgments} + 1 WHERE {Item.id} IN (SELECT {Task.item} FROM t)) "
        "INSERT INTO {Judgment} ({columns}) SELECT {values} FROM t RETURNING {Judgment.id}",
        columns=", ".join(quote(f.column) for f in fields),
        values=values,
    )
    return statement, fields


@cache
def _insert_sql(vendor: str, model) -> tuple[str, list]:
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(model._meta.pk.column)}",
        fields,
    )


def pick_and_lease(pick_sql: str, pick_params: list, task: Task, *, shuffle: bool) -> Task | None:
    """PostgreSQL: the pick (``pick_sql``, an UPDATE of one item RETURNING its columns), the move of the
    annotator's pick mark up to that item, the insert of ``task`` for it, and its responses, in one statement (one
    round trip instead of four); None if the pick took nothing. ``task`` holds every field but its item and display
    order, which the statement fills in: the item's response ids in import order, or shuffled (``random()``)."""
    statement, fields = _lease_sql(pick_sql, shuffle)
    db = _db()
    values = [p for f, p in zip(fields, _insert_params(task, fields, db)) if f.name not in _LEASE_FILLED]
    params = [*pick_params, task.project_id, task.annotator_id, *values]  # the pick, the mark's move, the insert
    with _cursor(db) as cursor:
        cursor.execute(statement, params)
        found = cursor.fetchall()
    if not found:
        return None
    task, item = _instances(found[0], [Task, Item], db)[:2]  # the same task and item on every row
    task.item = item
    offset = len(Task._meta.concrete_fields) + len(Item._meta.concrete_fields)
    # A demonstration's item has no responses: one row, with NULLs in their columns.
    responses = [_instances(row[offset:], [Response], db)[0] for row in found if row[offset] is not None]
    _cache_responses(item, responses)
    return task


_LEASE_FILLED = {"item", "display_order"}


@cache
def _lease_sql(pick_sql: str, shuffle: bool) -> tuple[str, list]:
    _, fields = _insert_sql("postgresql", Task)
    quote = connection.ops.quote_name
    order = "random()" if shuffle else with_schema("r.{Response.index}")
    filled = {
        "item": with_schema("p.{Item.id}"),
        "display_order": with_schema(
            "COALESCE((SELECT jsonb_agg(r.{Response.id} ORDER BY {order}) FROM {Response} r WHERE r.{Response.item} = p.{Item.id}), '[]')",
            order=order,
        ),
    }
    values = ", ".join(filled.get(f.name, f"%s::{f.cast_db_type(connection)}") for f in fields)
    statement = with_schema(
        "WITH p AS ({pick}), "
        "m AS (UPDATE {Membership} SET {Membership.pick_mark} = p.{Item.id} FROM p WHERE {Membership}.{Membership.project} = %s "
        "AND {Membership}.{Membership.user} = %s AND {Membership}.{Membership.pick_mark} < p.{Item.id}), "
        "t AS (INSERT INTO {Task} ({insert}) SELECT {values} FROM p RETURNING {returning}) "
        "SELECT {task}, {item}, {response} "
        "FROM t JOIN p ON p.{Item.id} = t.{Task.item} LEFT JOIN {Response} r ON r.{Response.item} = p.{Item.id} ORDER BY r.{Response.index}",
        pick=pick_sql,
        insert=", ".join(quote(f.column) for f in fields),
        values=values,
        returning=", ".join(quote(f.column) for f in Task._meta.concrete_fields),
        task=columns(Task, "t"),
        item=columns(Item, "p"),
        response=columns(Response, "r"),
    )
    return statement, fields


def pick_statement(project_id: int, annotator_id: int, *, mark: int | None, skip_locked: bool) -> tuple[str, list]:
    """The SQL and parameters of the next-task pick (``bench/_serve_profile.py`` shows its plan): one overlap
    slot of the first open item above the annotator's ``mark`` (None: from the start) that they have not seen,
    ``RETURNING`` the item's columns."""
    postgres = connection.vendor == "postgresql"
    project_param = [project_id] if postgres else project_id
    return _pick_sql(postgres, mark is not None, skip_locked), [project_param] + (
        [mark] if mark is not None else []
    ) + [annotator_id]


@cache
def _pick_sql(postgres: bool, above_mark: bool, skip_locked: bool) -> str:
    # The plan must not depend on statistics (they lag behind a project that is being labelled), so the
    # statement is shaped to leave PostgreSQL's planner one good plan at every project size and history:
    # - ``project_id = ANY(...)`` with ORDER BY (project_id, id): only item_open_idx gives that order (with
    #   ``project_id = X`` the planner drops the project from the order and walks the primary key, through every
    #   item of older projects: 10-15 ms at 100k items instead of 0.3);
    # - the annotator's mark (None: from the start) is a parameter, read with the membership's lock;
    # - ``OFFSET 0`` keeps NOT EXISTS a probe of one index entry per candidate item, never a scan of the
    #   annotator's whole history.
    lock = ("FOR NO KEY UPDATE SKIP LOCKED" if skip_locked else "FOR NO KEY UPDATE") if postgres else ""
    return with_schema(
        """
        UPDATE {Item} SET {Item.open_slots} = {Item.open_slots} - 1
        WHERE {Item.open_slots} > 0 AND {Item.id} = (
            SELECT i.{Item.id} FROM {Item} i
            WHERE i.{Item.project} {project} AND i.{Item.open_slots} > 0 AND i.{Item.purpose} = '{normal}' {above}
              AND NOT EXISTS (SELECT 1 FROM {Task} u WHERE u.{Task.item} = i.{Item.id} AND u.{Task.annotator} = %s {probe})
            ORDER BY i.{Item.project}, i.{Item.id} LIMIT 1 {lock}
        )
        RETURNING {returning}
        """,
        project="= ANY(%s)" if postgres else "= %s",
        above=with_schema("AND i.{Item.id} > %s") if above_mark else "",
        probe="OFFSET 0" if postgres else "",
        lock=lock,
        normal=Item.Purpose.NORMAL,
        returning=", ".join(connection.ops.quote_name(f.column) for f in Item._meta.concrete_fields),
    )


@cache
def membership_mark(*, lock: bool) -> str:
    """The status and pick mark of a membership (project, user), optionally with its row lock."""
    return with_schema(
        "SELECT {Membership.status}, {Membership.pick_mark} FROM {Membership} "
        "WHERE {Membership.project} = %s AND {Membership.user} = %s"
    ) + (for_update() if lock else "")


@cache
def move_mark() -> str:
    """Move a membership's pick mark up to an item (parameters: item, project, user, item)."""
    return with_schema(
        "UPDATE {Membership} SET {Membership.pick_mark} = %s "
        "WHERE {Membership.project} = %s AND {Membership.user} = %s AND {Membership.pick_mark} < %s"
    )


@cache
def refresh_shares(kind: str) -> str | None:
    """Set ``winner_share`` of the project's items that have a judgment above a mark: the most common answer's share
    of the item's current votes by people (parameters: project, project, mark), in one set-based statement: AI
    judges' votes are left out, so the browser's agreement is the people's. Pairwise answers are the outcome and
    winner; a ranking's is its first place. None for kinds without one answer per vote."""
    if kind == "pairwise":
        answer = "j.{Judgment.outcome}, j.{Judgment.winner}"
    elif kind == "ranking":
        answer = (
            "j.{Judgment.data} -> 'ranking' -> 0"
            if _db().vendor == "postgresql"
            else "json_extract(j.{Judgment.data}, '$.ranking[0]')"
        )
    else:
        return None
    return with_schema(
        "UPDATE {Item} SET {Item.winner_share} = s.share FROM (SELECT c.item, MAX(c.n) * 1.0 / SUM(c.n) AS share "
        "FROM (SELECT j.{Judgment.item} AS item, COUNT(*) AS n FROM {Judgment} j "
        "WHERE j.{Judgment.project} = %s AND j.{Judgment.is_current} AND j.{Judgment.source} <> '{ai}' "
        "AND j.{Judgment.item} IN "
        "(SELECT {Judgment.item} FROM {Judgment} WHERE {Judgment.project} = %s AND {Judgment.id} > %s) "
        f"GROUP BY j.{{Judgment.item}}, {answer}) c GROUP BY c.item) s "
        "WHERE {Item}.{Item.id} = s.item",
        ai=Judgment.Source.AI,
    )


@cache
def task_status(*, lock: bool) -> str:
    return with_schema("SELECT {Task.status} FROM {Task} WHERE {Task.id} = %s") + (for_update() if lock else "")


def for_update(of: str = "") -> str:
    """The row lock clause (of the rows of table alias ``of`` only, if given): PostgreSQL's lightest exclusive
    lock (foreign-key checks of other inserts, which take KEY SHARE, do not wait for it); SQLite has none and needs
    none (its transactions take the write lock)."""
    if connection.vendor != "postgresql":
        return ""
    return f" FOR NO KEY UPDATE OF {of}" if of else " FOR NO KEY UPDATE"


@cache
def _attnames(model) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields]


def _instances(row, models: list, db) -> list:
    out, pos = [], 0
    for model in models:
        fields = model._meta.concrete_fields
        values = list(row[pos : pos + len(fields)])
        for i, converters, col in _converters(db.vendor, model):
            for convert in converters:
                values[i] = convert(values[i], col, db)
        out.append(model.from_db(db.alias, _attnames(model), values))
        pos += len(fields)
    return out + list(row[pos:])


@cache
def _sql(name: str) -> str:
    if name == "token":
        return with_schema(
            "SELECT {token}, {user} FROM {Token} t JOIN {User} u ON u.{User.id} = t.{Token.user} WHERE t.{Token.key} = %s",
            token=columns(Token, "t"),
            user=columns(get_user_model(), "u"),
        )
    if name == "member_project":
        return with_schema(
            "SELECT {project}, m.{Membership.status}, m.{Membership.pick_mark} FROM {Project} p "
            "JOIN {Membership} m ON m.{Membership.project} = p.{Project.id} AND m.{Membership.user} = %s WHERE p.{Project.slug} = %s",
            project=columns(Project, "p"),
        )
    if name == "held":
        return with_schema(
            "SELECT {task}, {item} FROM {Task} t JOIN {Item} i ON i.{Item.id} = t.{Task.item} "
            "WHERE t.{Task.annotator} = %s AND t.{Task.project} = %s AND t.{Task.status} = '{leased}' "
            "AND t.{Task.lease_expires_at} > %s AND t.{Task.id} <> %s ORDER BY t.{Task.id} LIMIT 1",
            task=columns(Task, "t"),
            item=columns(Item, "i"),
            leased=Task.Status.LEASED,
        )
    if name == "responses":
        return with_schema(
            "SELECT {response} FROM {Response} r WHERE r.{Response.item} = %s ORDER BY r.{Response.index}",
            response=columns(Response, "r"),
        )
    if name == "task":
        return with_schema(
            "SELECT {task}, {project}, {item}, "
            "EXISTS (SELECT 1 FROM {Membership} m WHERE m.{Membership.project} = t.{Task.project} AND m.{Membership.user} = %s) "
            "FROM {Task} t JOIN {Project} p ON p.{Project.id} = t.{Task.project} "
            "JOIN {Item} i ON i.{Item.id} = t.{Task.item} WHERE t.{Task.id} = %s",
            task=columns(Task, "t"),
            project=columns(Project, "p"),
            item=columns(Item, "i"),
        )
    raise KeyError(name)


def token_with_user(key: str) -> Token | None:
    """The token with its user loaded, as ``Token.objects.select_related("user").get(key=key)``."""
    found = fetch(_sql("token"), [key], [Token, get_user_model()])
    if found is None:
        return None
    token, user = found
    token.user = user
    return token


def member_project(user_id: int, slug: str, *, lock: bool = False) -> tuple[Project, str, int] | None:
    """The project ``slug`` and the user's membership status and pick mark in it, if they are a member (any
    role); ``lock`` takes the membership row's lock (as :func:`for_update`) for the rest of the transaction."""
    return fetch(_sql("member_project") + (for_update("m") if lock else ""), [user_id, slug], [Project])


def task_with_project_and_item(task_id: int, user_id: int) -> tuple[Task, bool] | None:
    """The task with its project and item loaded, and whether the user is a member of its project."""
    found = fetch(_sql("task"), [user_id, task_id], [Task, Project, Item])
    if found is None:
        return None
    task, project, item, is_member = found
    task.project, task.item = project, item
    return task, bool(is_member)


def held_task(annotator_id: int, project_id: int, now, exclude_id: int | None) -> Task | None:
    """The annotator's oldest unexpired lease in the project other than ``exclude_id``, with its item."""
    now = connection.ops.adapt_datetimefield_value(now)
    found = fetch(_sql("held"), [annotator_id, project_id, now, exclude_id or 0], [Task, Item])
    if found is None:
        return None
    task, item = found
    task.item = item
    return task


def attach_responses(item: Item) -> list[Response]:
    """The item's responses in import order, also cached as ``item.responses.all()`` (as a prefetch does)."""
    responses = [row[0] for row in fetch_all(_sql("responses"), [item.pk], [Response])]
    _cache_responses(item, responses)
    return responses


def _cache_responses(item: Item, responses: list[Response]) -> None:
    cached = Response.objects.filter(item=item).order_by("index")  # its result is set; a query built on it runs
    cached._result_cache, cached._prefetch_done = responses, True
    item._prefetched_objects_cache = {"responses": cached}


# --- bulk writes ----------------------------------------------------------------------------------


def bulk_insert(
    model, names: list[str], rows: list[tuple], *, constants: dict | None = None, ids: bool = False
) -> list[int] | None:
    """Insert ``rows`` into ``model``'s table in one statement's worth of round trips.

    Each row is a tuple of Python values for the fields named (by attname) in ``names``; ``constants`` gives fields
    whose value is the same on every row; every other concrete field but the primary key gets its default, and one
    without a default is an error, so a field added to the model cannot be forgotten here (a test checks it). JSON
    values are written as text, datetimes as the backend stores them. On PostgreSQL the rows go in with ``COPY``;
    elsewhere with one ``executemany``. With ``ids``, primary keys are reserved first (the table's sequence on
    PostgreSQL; on SQLite the next ones, which the transaction's write lock keeps ours) and returned in row order,
    so the caller needs no read back. Call it inside a transaction.

    No ``save()``, signal or ``auto_now`` runs: the caller gives every value that matters."""
    constants = constants or {}
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    by_name = {f.attname: f for f in fields}
    if unknown := (set(names) | set(constants)) - by_name.keys():
        raise ValueError(f"{model.__name__} has no fields {sorted(unknown)}.")
    db = _db()
    fixed = {}
    for f in fields:
        if f.attname in names:
            continue
        if f.attname in constants:
            fixed[f.attname] = _db_value(f, constants[f.attname], db)
            continue
        if not (f.has_default() or f.null or f.empty_strings_allowed):
            raise ValueError(f"{model.__name__}.{f.attname} has no default: give its value.")
        fixed[f.attname] = _db_value(f, f.get_default(), db)
    pk = model._meta.pk
    reserved = _reserve_ids(model, len(rows), db) if ids else None
    columns = ([pk] if ids else []) + [by_name[n] for n in names] + [by_name[n] for n in fixed]
    quote = db.ops.quote_name
    column_list = ", ".join(quote(f.column) for f in columns)
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            # COPY's text format, written here: psycopg's write_row adapts every value of every row by its type,
            # which costs more than the server's whole COPY. The constants are one tail.
            text = [_copy_formatter(by_name[n], db) for n in names]
            tail = "".join("\t" + _copy_text(v) for v in fixed.values()) + "\n"
            with cursor.cursor.copy(f"COPY {quote(model._meta.db_table)} ({column_list}) FROM STDIN") as copy:
                for start in range(0, len(rows), 10_000):
                    lines = []
                    for n, row in enumerate(rows[start : start + 10_000], start):
                        values = [f(v) for f, v in zip(text, row)]
                        if reserved:
                            values.insert(0, str(reserved[n]))
                        lines.append("\t".join(values) + tail)
                    copy.write("".join(lines))
        else:
            prepare = [_db_formatter(by_name[n], db) for n in names]
            tail = tuple(fixed.values())
            params = [tuple(f(v) for f, v in zip(prepare, row)) + tail for row in rows]
            if reserved:
                params = [(i, *row) for i, row in zip(reserved, params)]
            statement = (
                f"INSERT INTO {quote(model._meta.db_table)} ({column_list}) VALUES ({', '.join(['%s'] * len(columns))})"
            )
            cursor.executemany(statement, params)
    return reserved


def _reserve_ids(model, n: int, db) -> list[int]:
    if not db.in_atomic_block:
        raise RuntimeError("bulk_insert(ids=True) reserves ids for its transaction: call it inside one.")
    table, column = model._meta.db_table, model._meta.pk.column
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)", [table, column, n]
            )
            return [row[0] for row in cursor.fetchall()]
        # SQLite: transactions here are IMMEDIATE (config/settings.py), so from BEGIN on no one else writes; an
        # AUTOINCREMENT table never reuses an id, so start past both the largest id and the largest ever given.
        quote = db.ops.quote_name
        cursor.execute(f"SELECT COALESCE(MAX({quote(column)}), 0) FROM {quote(table)}")
        start = cursor.fetchone()[0]
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
        row = cursor.fetchone()
        start = max(start, row[0] if row else 0) + 1
        return list(range(start, start + n))


def _memo(convert):
    """``convert`` that remembers its last argument: bulk rows repeat the very same object (one timestamp for all
    rows, an item's response order for each of its votes), and converting it again costs more than the compare."""
    last: list = [object(), None]

    def converted(value):
        if value is not last[0]:
            last[0], last[1] = value, convert(value)
        return last[1]

    return converted


def _db_formatter(field, db):
    """The executemany parameter of a value of ``field``."""
    if isinstance(field, (JSONField, DateTimeField)):
        return _memo(lambda value: _db_value(field, value, db))
    return lambda value: value


_INTEGERS = {
    "AutoField",
    "BigAutoField",
    "ForeignKey",
    "OneToOneField",
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveSmallIntegerField",
    "PositiveBigIntegerField",
}


def _copy_formatter(field, db):
    """The COPY text of a value of ``field``."""
    if isinstance(field, (JSONField, DateTimeField)):
        return _memo(lambda value: _copy_text(_db_value(field, value, db)))
    if field.get_internal_type() in _INTEGERS:
        return lambda value: "\\N" if value is None else str(value)
    return _copy_text


def _copy_text(value) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if value is True or value is False:
        return "t" if value else "f"
    if isinstance(value, str):
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _db_value(field, value, db):
    if value is None:
        return None
    if isinstance(field, JSONField):
        if not value and isinstance(value, dict):
            return "{}"  # most judgments' data: no need to serialise a fresh empty dict each time
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(field, DateTimeField):
        return db.ops.adapt_datetimefield_value(value)
    return value


def add_judgment_counts(counts: dict[int, int]) -> None:
    """Count ``counts[item_id]`` more judgments on each item, and take as many of its open slots (never below 0)."""
    db = _db()
    table, quote = Item._meta.db_table, db.ops.quote_name
    n, slots = quote(Item._meta.get_field("n_judgments").column), quote(Item._meta.get_field("open_slots").column)
    pk = quote(Item._meta.pk.column)
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            cursor.execute(
                f"UPDATE {table} SET {n} = {n} + c.n, {slots} = GREATEST({slots} - c.n, 0) "
                f"FROM unnest(%s::bigint[], %s::int[]) AS c(id, n) WHERE {table}.{pk} = c.id",
                [list(counts), list(counts.values())],
            )
        else:
            cursor.executemany(
                f"UPDATE {table} SET {n} = {n} + %s, {slots} = MAX({slots} - %s, 0) WHERE {pk} = %s",
                [(c, c, item_id) for item_id, c in counts.items()],
            )


# --- bulk reads: binary COPY ------------------------------------------------------------------------


# NULL on the wire: no id, code or strength is ever this value.
NULL_INT = np.iinfo(np.int64).min


def numeric_rows(queryset, fields: list[str]) -> np.ndarray:
    """The rows of ``queryset.values_list(*fields)``, whose columns are all integers (or NULL), as an int64
    array with ``NULL_INT`` for NULL, one column per field.

    The ORM builds the query; only the transfer differs. On PostgreSQL the compiled SELECT runs inside
    ``COPY (...) TO STDOUT (FORMAT binary)`` with every column cast to bigint and NULL replaced by a sentinel,
    so every row has the same layout and numpy decodes the whole stream in one call (read by :func:`copy_out`):
    well under 1 s of client CPU per million rows on the benchmark machine, where iterating the queryset (a
    Python tuple per row, then an array) took about 4 s. (Having the server pack each column into one array instead saves the client that
    second but costs the server as much again, and the two no longer overlap.) Other databases fetch the
    tuples through the cursor: every column is a plain integer, so no per-row ORM conversion is needed.
    """
    width = len(fields)
    sql, params = queryset.query.sql_with_params()
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        if not rows:
            return np.zeros((0, width), dtype=np.int64)
        table = np.array(rows, dtype=object).reshape(-1, width)
        table[table == None] = NULL_INT  # noqa: E711 (elementwise comparison)
        return table.astype(np.int64)
    quote = connection.ops.quote_name
    outer = ", ".join(f"COALESCE(q.{quote(name)}::bigint, {NULL_INT})" for name in fields)
    statement = f"COPY (SELECT {outer} FROM ({sql}) AS q) TO STDOUT (FORMAT binary)"
    with transaction.atomic(using=queryset.db), connection.cursor() as wrapper:
        # Enough memory for the hash join of a million judgments with their tasks not to spill to disk.
        wrapper.execute("SET LOCAL work_mem = '256MB'")
        data = copy_out(connection, statement, params)
    # Binary COPY: an 11-byte signature, flags and header-extension length (int32 each), the extension, then per
    # row an int16 field count and, per field, an int32 length (8) and a big-endian int64; an int16 -1 at the end.
    header = 19 + int.from_bytes(data[15:19], "big")
    row = np.dtype(
        [("n", ">i2")]
        + [(f"{part}{i}", ">i4" if part == "len" else ">i8") for i in range(width) for part in ("len", "val")]
    )
    count = (len(data) - header - 2) // row.itemsize
    records = np.frombuffer(data, dtype=row, count=count, offset=header)
    table = np.empty((count, width), dtype=np.int64)
    for i in range(width):
        table[:, i] = records[f"val{i}"]
    return table


def copy_out(connection, statement: str, params=None) -> bytes:
    """Everything ``statement`` (a ``COPY … TO STDOUT``) sends, in one bytes object; PostgreSQL only.

    PostgreSQL sends a COPY one message per row, and psycopg's ``Copy`` iterator spends a few microseconds of
    Python on each (a generator and a wait per message): a third of a second per million rows, as much as
    decoding them. Here libpq's ``PQgetCopyData`` is called in a plain loop instead, through psycopg's libpq
    wrapper; while nothing has arrived it waits in ``select``, which lets other threads run (an export reads
    its next chunk in a thread while it writes the current one). The parameters are merged into the statement
    on the client, as psycopg's ``copy`` does."""
    raw = connection.connection  # the psycopg connection under Django's
    query = psycopg.ClientCursor(raw).mogrify(statement, params)
    pgconn = raw.pgconn

    def wait() -> None:
        select.select([pgconn.socket], [], [])
        pgconn.consume_input()

    with connection.wrap_database_errors:
        pgconn.send_query(query.encode(raw.info.encoding))  # raises if it cannot be sent
        while pgconn.flush():  # psycopg's connections are non-blocking: the query may not be out yet
            select.select([], [pgconn.socket], [])
        while pgconn.is_busy():
            wait()
        result = pgconn.get_result()
        if result.status != psycopg.pq.ExecStatus.COPY_OUT:
            _finish_results(pgconn)
            raise psycopg.errors.error_from_result(result, encoding=raw.info.encoding)
        parts = []
        try:
            while True:
                nbytes, block = pgconn.get_copy_data(1)  # a row if one is buffered, 0 if none, < 0 at the end
                if nbytes > 0:
                    parts.append(bytes(block))
                elif nbytes == 0:
                    wait()
                else:
                    break
        except BaseException:  # interrupted: stop the server and leave the connection usable
            raw.cancel_safe()
            while pgconn.get_copy_data(0)[0] >= 0:
                pass
            _finish_results(pgconn)
            raise
        if nbytes == -2:
            raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
        failed = _finish_results(pgconn)
        if failed is not None:
            raise psycopg.errors.error_from_result(failed, encoding=raw.info.encoding)
    return b"".join(parts)


def _finish_results(pgconn):
    """Read the results left after a COPY; return the first that is an error, if any."""
    failed = None
    while (result := pgconn.get_result()) is not None:
        if failed is None and result.status not in (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.COPY_OUT):
            failed = result
    return failed
