#!/usr/bin/env python
"""Serving benchmark: annotators hammering next-task / submit against gunicorn on PostgreSQL.

What it does, start to end (every step is timed, and the whole run is bounded by ``--budget``):

1. Drops and recreates its own database (``arbiter_bench``) and runs ``manage.py migrate`` on it.
2. Creates one pairwise project per size (1k, 20k, 100k items; 2 responses each; overlap 3) with
   ``actions.import_items``; above 5,000 items its two ``bulk_create`` calls are done by COPY (same rows, much
   faster), checked column by column against a reference import done by the ORM. Then a finished project
   (10,000 items, 30,000 tasks and judgments of 60 annotators), so the task and judgment tables are not empty
   to the query planner. The result is kept as a template database keyed by a hash of the migrations, the
   models and import code and the sizes: later runs clone it in a second or two (``--fresh`` rebuilds).
3. Creates, for every (configuration, size, C) cell, C fresh annotators, each with its own API token
   (``actions.add_member`` + ``actions.issue_token``).
4. Starts ``gunicorn config.wsgi`` on 127.0.0.1 on a free port (DEBUG off, persistent DB connections),
   gthread, 4 workers x 2 threads unless ``--gunicorn`` says otherwise (several configurations are run one
   after the other on the same data and printed side by side).
5. For every cell: C simulated annotators, each with its own keep-alive connection, loop with no think
   time: ``GET /api/projects/{slug}/next-task/`` (200, or 204 when nothing is left) then
   ``POST /api/tasks/{id}/judgments/`` (201). The first ``--warmup`` seconds are not measured; the next
   ``--duration`` seconds are. Every acknowledged judgment (id, idempotency key, annotator) is kept.
6. After each cell, checks in the database that every acknowledged judgment exists exactly once with its key
   and annotator, that no (annotator, idempotency_key) is duplicated, that no item has more than ``overlap``
   current judgments and that items' open_slots / n_judgments agree with their tasks; the project is reset
   (its tasks and judgments deleted, slots restored, VACUUM ANALYZE) before its next cell, so every cell
   starts from the same state with annotators who have no history.
7. Prints the table, the targets beside the figures, the CPU split (load generator, gunicorn, PostgreSQL,
   everything else on the machine) with CPU ms per loop, and the verification counts; writes everything as
   JSON under bench/results/ (git-ignored).

The load generator is one asyncio process with a minimal HTTP/1.1 keep-alive client (``--client aiohttp`` or
``httpx`` to cross-check): about 1 ms of CPU per loop, reported per cell. The machine is shared: a cell during
which other processes used more than a quarter of a core is flagged, and before each cell the run waits a
little (``--wait-quiet``) for the machine to calm down. ``bench/_serve_profile.py`` breaks one request down.

    .venv/bin/python bench/serve.py            # 15 s per cell: about 4 minutes (5-6 on a first run)
    .venv/bin/python bench/serve.py --quick    # 3 s per cell: under a minute once the template exists
    .venv/bin/python bench/serve.py --sizes 100000 --concurrency 10,50 --gunicorn gthread:2x4,sync:4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_SERVER = PG_ADMIN_URL.rsplit("/", 1)[0]

# The issue's targets and the reference figures (Label Studio 1.23 on this machine).
TARGET_LOOPS_C50 = 150.0
TARGET_P95_MS = 100.0
TARGET_SCALING = 0.20  # next-task p50 at the largest size within 20% of the smallest (C=1)
LABEL_STUDIO = {10: 8.0, 50: 5.8}

OVERLAP = 3
IMPORT_ITEMS_UP_TO = 5000  # projects up to this size go through actions.import_items, larger ones through COPY
PARITY_ITEMS = 200  # items of each project compared with a reference import
DEFAULT_GUNICORN = "gthread:4x2"
HISTORY_ITEMS = 10000  # a finished project, created after the measured ones: tasks and judgments in the tables
HISTORY_ANNOTATORS = 60
BUILD_ACTIONS = {"create_project", "add_member", "import_items", "_check_gold_answers"}  # see data_key
NOISY_PCT = 25  # other processes' CPU (% of one core) above which a cell's figures are flagged
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, flush=True)


# --- arguments --------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part.replace("_", "").replace("k", "000")) for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class GunicornSpec:
    worker_class: str
    workers: int
    threads: int

    def __str__(self) -> str:
        if self.worker_class == "sync":
            return f"sync:{self.workers}"
        return f"gthread:{self.workers}x{self.threads}"

    def describe(self) -> str:
        if self.worker_class == "sync":
            return f"sync, {self.workers} workers"
        return f"gthread, {self.workers} workers x {self.threads} threads"


def gunicorn_specs(text: str) -> list[GunicornSpec]:
    specs = []
    for part in text.split(","):
        kind, _, shape = part.strip().partition(":")
        try:
            if kind == "sync":
                specs.append(GunicornSpec("sync", int(shape), 1))
            elif kind == "gthread":
                workers, _, threads = shape.partition("x")
                specs.append(GunicornSpec("gthread", int(workers), int(threads or 1)))
            else:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: use gthread:WORKERSxTHREADS or sync:WORKERS") from None
    return specs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/serve.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="short cells (3 s), no waiting for quiet: a smoke run under 90 s"
    )
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 15, quick 3)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds at the start of each cell (default 1.5, quick 0.5)")
    p.add_argument("--sizes", type=int_list, default=[1000, 20000, 100000], help="items per project, e.g. 1k,20k,100k")
    p.add_argument("--concurrency", type=int_list, default=[1, 10, 50], help="annotators per cell, e.g. 1,10,50")
    p.add_argument(
        "--gunicorn",
        type=gunicorn_specs,
        default=gunicorn_specs(DEFAULT_GUNICORN),
        metavar="SPECS",
        help=f"worker configurations to run, comma-separated: gthread:WORKERSxTHREADS or sync:WORKERS "
        f"(default {DEFAULT_GUNICORN}); several are run one after the other on the same data",
    )
    p.add_argument("--fresh", action="store_true", help="build the projects even if a template of them is cached")
    p.add_argument("--db-name", default="arbiter_bench")
    p.add_argument(
        "--client",
        default="raw",
        choices=["raw", "aiohttp", "httpx"],
        help="HTTP client of the load generator (default raw: a minimal keep-alive HTTP/1.1 client, the "
        "cheapest in CPU; aiohttp and httpx to cross-check)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        metavar="S",
        help=f"before each cell, wait up to S seconds for other processes to use under {NOISY_PCT}%% of a core "
        "(default 8, quick 0)",
    )
    p.add_argument(
        "--setup-only", action="store_true", help="create the database and projects, then stop (for profiling)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--budget", type=float, help="hard wall-clock limit in seconds (default 360, quick 90)")
    p.add_argument("--json", type=Path, help="where to write the results (default bench/results/serve-<time>.json)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 15.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.5
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 8.0
    if args.budget is None:
        args.budget = 90.0 if args.quick else 360.0
    args.sizes = sorted(set(args.sizes))
    args.concurrency = sorted(set(args.concurrency))
    return args


# --- database -----------------------------------------------------------------------------------------


def recreate_database(name: str, template: str | None = None) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')


def database_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def save_template(db_name: str, template: str, stale_prefix: str) -> None:
    """Copy the freshly built database as ``template``; older templates named ``stale_prefix...`` are dropped."""
    import psycopg
    from django.db import connections

    connections.close_all()  # CREATE DATABASE ... TEMPLATE needs the source to have no sessions
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        pattern = stale_prefix.replace("_", "\\_") + "%"
        stale = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern]).fetchall()
        for (name,) in stale:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{template}" TEMPLATE "{db_name}" STRATEGY FILE_COPY')


def data_key(sizes: list[int]) -> str:
    """What the bench projects depend on: the schema (every migration), the models and import code, the
    synthetic items and the sizes. A change to any of them gives another key, so a stale template is never used."""
    import ast
    import hashlib
    import inspect

    import django

    digest = hashlib.sha256()
    sources = [ROOT / "annotate" / name for name in ("models.py", "imports.py")]
    for top in sorted(ROOT.iterdir()):  # every app's migrations, without walking .venv
        if top.is_dir() and not top.name.startswith(".") and (top / "__init__.py").exists():
            sources += sorted(top.glob("**/migrations/*.py"))
    for path in sources:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    for fn in (
        synthetic_item,
        import_with_actions,
        import_with_copy,
        copy_bulk_create,
        create_projects,
        create_history,
    ):
        digest.update(inspect.getsource(fn).encode())
    # Of actions.py only the functions that build the projects (read from the source: Django is not set up
    # yet), so that a change to the serving path (next-task, submit) does not force a rebuild of 100,000 items.
    actions_source = (ROOT / "annotate" / "actions.py").read_text()
    for node in ast.parse(actions_source).body:
        if isinstance(node, ast.FunctionDef) and node.name in BUILD_ACTIONS:
            digest.update(ast.get_source_segment(actions_source, node).encode())
    digest.update(
        repr((sorted(sizes), OVERLAP, PARITY_ITEMS, HISTORY_ITEMS, HISTORY_ANNOTATORS, django.__version__)).encode()
    )
    return digest.hexdigest()[:12]


def synthetic_item(i: int) -> tuple[str, list[dict], list[dict]]:
    """Item number ``i``: (external id, prompt, responses), the same whichever project it lands in."""
    prompt = [{"role": "user", "content": f"Question {i}: explain topic {i} in a short paragraph, with one example."}]
    responses = [
        {
            "text": f"Answer A to question {i}. " + "A careful, complete explanation with an example. " * 5,
            "model": "model-a",
            "metadata": {},
        },
        {
            "text": f"Answer B to question {i}. " + "A shorter and vaguer explanation of the topic. " * 5,
            "model": "model-b",
            "metadata": {},
        },
    ]
    return f"item-{i:06d}", prompt, responses


def import_with_actions(project, n: int, start: int = 0) -> None:
    """The app's own import path (``actions.import_items``)."""
    from annotate import actions
    from annotate.imports import ParsedItem

    parsed = []
    for i in range(start, start + n):
        ext, prompt, responses = synthetic_item(i)
        parsed.append(ParsedItem(line=i + 1, prompt=prompt, responses=responses, external_id=ext))
    report = actions.import_items(project, parsed, source={"file": "bench/serve.py (synthetic)"})
    assert report.created == n, report.summary()


def import_with_copy(project, n: int, start: int = 0) -> None:
    """``actions.import_items`` itself, with its two ``bulk_create`` calls (items, responses) done by COPY.

    The app builds every row as usual (ids, hashes, open_slots = overlap, a new round, any column added later);
    only the INSERTs are swapped for COPY, which is several times faster for 100,000 items.
    """
    from annotate.models import Item, Response

    with copy_bulk_create(Item, Response):
        import_with_actions(project, n, start)


def _copy_converter(field, conn):
    """obj -> the value COPY gets for ``field``: what Django would send, without its per-value overhead for the
    plain types (the parity check compares the result with rows the ORM wrote)."""
    from django.db import models
    from psycopg.types.json import Jsonb

    attname = field.attname
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return lambda obj: field.pre_save(obj, True)
    if isinstance(field, models.JSONField):
        encoder = field.encoder
        if encoder is None:
            return lambda obj: None if getattr(obj, attname) is None else Jsonb(getattr(obj, attname))
        return lambda obj: field.get_db_prep_save(getattr(obj, attname), conn)
    plain = (
        models.CharField,
        models.TextField,
        models.IntegerField,
        models.BooleanField,
        models.FloatField,
        models.ForeignKey,
        models.DateTimeField,
    )
    if type(field) in {models.DateField} or not isinstance(field, plain):
        return lambda obj: field.get_db_prep_save(field.pre_save(obj, True), conn)
    return lambda obj: getattr(obj, attname)


@contextmanager
def copy_bulk_create(*models):
    """While inside, ``Model.objects.bulk_create(objs)`` of these models writes with COPY (PostgreSQL only)."""
    from django.db import connection, connections
    from django.db.models.query import QuerySet

    original = QuerySet.bulk_create
    qn = connection.ops.quote_name

    def bulk_create(self, objs, batch_size=None, **kwargs):
        if self.model not in models or kwargs or connection.vendor != "postgresql":
            return original(self, objs, batch_size=batch_size, **kwargs)
        objs = list(objs)
        meta = self.model._meta
        fields = list(meta.concrete_fields)
        conn = connections[self.db]  # the object itself: the `connection` proxy costs a lookup per access
        convert = [_copy_converter(f, conn) for f in fields]
        with conn.cursor() as wrapper:
            cur = wrapper.cursor  # the psycopg cursor
            cur.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [meta.db_table, meta.pk.column, len(objs)],
            )
            for obj, (pk,) in zip(objs, cur.fetchall()):
                obj.pk = pk
            columns = ", ".join(qn(f.column) for f in fields)
            with cur.copy(f"COPY {qn(meta.db_table)} ({columns}) FROM STDIN") as copy:
                for obj in objs:
                    copy.write_row([conv(obj) for conv in convert])
        for obj in objs:
            obj._state.adding = False
            obj._state.db = self.db
        return objs

    QuerySet.bulk_create = bulk_create
    try:
        yield
    finally:
        QuerySet.bulk_create = original


def create_history(n_items: int, n_annotators: int) -> None:
    """A finished project: every item judged by OVERLAP of ``n_annotators`` annotators (API-style tasks and
    judgments, written with COPY). The benchmark's own projects start empty, so without it the task and
    judgment tables would look empty to PostgreSQL's planner, as on a fresh install, and it plans the
    next-task pick for that; a database in use has many rows there."""
    from django.db import connection
    from django.utils import timezone

    from annotate import actions
    from annotate.models import Item, Judgment, Kind, Response, Role, Task

    project = actions.create_project(slug="bench-history", kind=Kind.PAIRWISE, overlap=OVERLAP, name="Finished project")
    with copy_bulk_create(Item, Response, Task, Judgment):
        import_with_actions(project, n_items, start=10**6)
        users = [actions.add_member(project, f"history-{i:03d}", Role.ANNOTATOR).user for i in range(n_annotators)]
        now = timezone.now()
        responses: dict[int, list[int]] = {}
        for item_id, response_id in (
            Response.objects.filter(item__project=project).order_by("item", "index").values_list("item_id", "id")
        ):
            responses.setdefault(item_id, []).append(response_id)
        tasks, judged = [], []
        for k, (item_id, order) in enumerate(sorted(responses.items())):
            for j in range(OVERLAP):
                user = users[(k * OVERLAP + j) % n_annotators]
                shown = order if (k + j) % 2 else order[::-1]
                tasks.append(
                    Task(
                        project=project,
                        item_id=item_id,
                        annotator=user,
                        display_order=shown,
                        status=Task.Status.DONE,
                        leased_at=now,
                        lease_expires_at=now,
                        done_at=now,
                    )
                )
                judged.append((k, j, shown))
        Task.objects.bulk_create(tasks)
        Judgment.objects.bulk_create(
            [
                Judgment(
                    project=project,
                    item_id=task.item_id,
                    task=task,
                    annotator=task.annotator,
                    outcome=Judgment.Outcome.WIN,
                    winner_id=shown[(k + j) % 2],
                    strength=(k + j) % 4,
                    duration_ms=1000,
                    idempotency_key=f"history-{k}-{j}",
                    source=Judgment.Source.API,
                )
                for task, (k, j, shown) in zip(tasks, judged)
            ]
        )
    Item.objects.filter(project=project).update(open_slots=0, n_judgments=OVERLAP)
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")


def check_copy_parity(reference, copied) -> int:
    """Compare the COPY-made items with the ORM-made ones of the same index; returns the items compared."""
    from annotate.models import Item, Response

    # Every column but the ones that differ by construction; a column added to Item later is compared too.
    skip = {"id", "project", "round", "created_at"}
    fields = [f.attname for f in Item._meta.concrete_fields if f.name not in skip]
    ref = {row["external_id"]: row for row in Item.objects.filter(project=reference).values(*fields, "round__number")}
    got = {
        row["external_id"]: row
        for row in Item.objects.filter(project=copied, external_id__in=list(ref)).values(*fields, "round__number")
    }
    if ref != got:
        bad = next(k for k in ref if ref[k] != got.get(k))
        raise AssertionError(f"COPY rows differ from import_items rows: {ref[bad]} != {got.get(bad)}")
    rfields = ["item__external_id"] + [
        f.attname for f in Response._meta.concrete_fields if f.name not in ("id", "item")
    ]
    ref_r = sorted(Response.objects.filter(item__project=reference).values_list(*rfields))
    got_r = sorted(Response.objects.filter(item__project=copied, item__external_id__in=list(ref)).values_list(*rfields))
    if ref_r != got_r:
        raise AssertionError("COPY responses differ from import_items responses")
    return len(ref)


@dataclass
class Annotator:
    username: str
    user_id: int
    token: str


def make_annotators(project, prefix: str, count: int) -> list[Annotator]:
    from annotate import actions
    from annotate.models import Role

    out = []
    for i in range(count):
        membership = actions.add_member(project, f"{prefix}-{i:03d}", Role.ANNOTATOR)
        out.append(Annotator(membership.user.username, membership.user_id, actions.issue_token(membership.user)))
    return out


def reset_project(project) -> None:
    """Back to the state right after the import: no tasks, no judgments, every slot open."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("DELETE FROM annotate_judgment WHERE project_id = %s", [project.id])
        cur.execute("DELETE FROM annotate_task WHERE project_id = %s", [project.id])
        cur.execute(
            "UPDATE annotate_item SET open_slots = %s, n_judgments = 0"
            " WHERE project_id = %s AND (open_slots <> %s OR n_judgments <> 0)",
            [project.overlap, project.id, project.overlap],
        )
        cur.execute("VACUUM ANALYZE annotate_item, annotate_task, annotate_judgment")


def verify(project, annotators: list[Annotator], acked: list[tuple[int, str, int]]) -> dict:
    """Check the acknowledged judgments against the database. ``acked``: (judgment id, key, user id)."""
    from django.db import connection

    ids = [a[0] for a in acked]
    out = {"acknowledged": len(acked), "acknowledged_distinct_ids": len(set(ids))}
    with connection.cursor() as cur:
        cur.execute("SELECT id, idempotency_key, annotator_id FROM annotate_judgment WHERE id = ANY(%s)", [ids])
        rows = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
        out["acknowledged_found"] = len(rows)
        out["acknowledged_mismatched"] = sum(1 for jid, key, uid in acked if rows.get(jid) != (key, uid))
        cur.execute("SELECT count(*) FROM annotate_judgment WHERE project_id = %s", [project.id])
        out["judgments_in_project"] = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM (SELECT 1 FROM annotate_judgment WHERE project_id = %s"
            " GROUP BY annotator_id, idempotency_key HAVING count(*) > 1) d",
            [project.id],
        )
        out["duplicate_keys"] = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM (SELECT 1 FROM annotate_judgment WHERE project_id = %s AND is_current"
            " GROUP BY item_id HAVING count(*) > %s) o",
            [project.id, project.overlap],
        )
        out["items_over_overlap"] = cur.fetchone()[0]
        cur.execute(
            "SELECT max(c) FROM (SELECT count(*) c FROM annotate_judgment WHERE project_id = %s AND is_current"
            " GROUP BY item_id) m",
            [project.id],
        )
        out["max_current_per_item"] = cur.fetchone()[0] or 0
        # Bookkeeping: open_slots = overlap - (leased or done tasks); n_judgments = tasks with a judgment.
        cur.execute(
            """
            SELECT count(*) FROM annotate_item i
            LEFT JOIN (SELECT item_id, count(*) FILTER (WHERE status IN ('leased', 'done')) AS taken,
                              count(*) FILTER (WHERE status = 'done') AS done
                       FROM annotate_task WHERE project_id = %s GROUP BY item_id) t ON t.item_id = i.id
            WHERE i.project_id = %s
              AND (i.open_slots <> %s - coalesce(t.taken, 0) OR i.n_judgments <> coalesce(t.done, 0))
            """,
            [project.id, project.id, project.overlap],
        )
        out["items_bookkeeping_off"] = cur.fetchone()[0]
        cur.execute("SELECT status, count(*) FROM annotate_task WHERE project_id = %s GROUP BY status", [project.id])
        out["tasks"] = dict(cur.fetchall())
    out["ok"] = (
        out["acknowledged"] == out["acknowledged_distinct_ids"] == out["acknowledged_found"]
        and out["acknowledged_mismatched"] == 0
        and out["duplicate_keys"] == 0
        and out["items_over_overlap"] == 0
        and out["judgments_in_project"] == out["acknowledged"]
        and out["items_bookkeeping_off"] == 0
    )
    return out


# --- CPU accounting from /proc ----------------------------------------------------------------------


def _proc_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _postgres_backends(db_name: str) -> list[int]:
    """Backends connected to the benchmark database (their process title names it)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read()
            except OSError:
                continue
            if title.startswith(b"postgres: ") and f" {db_name} ".encode() in title:
                out.append(int(entry))
    return out


def _machine_ticks() -> tuple[int, int, int]:
    """All, idle and stolen ticks of the machine (steal: time the hypervisor gave this VM's CPUs to others)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts[:8]), idle, parts[7]


def machine_busy_pct(seconds: float = 1.0) -> float:
    """CPU used by the whole machine over ``seconds``, in % of one core."""
    t1, i1, _ = _machine_ticks()
    time.sleep(seconds)
    t2, i2, _ = _machine_ticks()
    total = t2 - t1
    return 100 * (os.cpu_count() or 1) * (total - (i2 - i1)) / total if total else 0.0


def wait_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) until the machine is quiet; returns the last background load seen."""
    deadline = time.perf_counter() + limit
    busy = machine_busy_pct(0.5)
    while busy > NOISY_PCT and time.perf_counter() < deadline:
        busy = machine_busy_pct(1.0)
    return busy


class CpuMeter:
    """CPU seconds used by the load generator, gunicorn (master + workers), our PostgreSQL backends."""

    def __init__(self, gunicorn_pid: int, db_name: str):
        self.gunicorn_pid = gunicorn_pid
        self.db_name = db_name

    def snapshot(self) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        workers = [self.gunicorn_pid, *_children(self.gunicorn_pid)]
        total, idle, steal = _machine_ticks()
        return {
            "t": time.perf_counter(),
            "loadgen": ru.ru_utime + ru.ru_stime,
            "gunicorn": {pid: _proc_ticks(pid) for pid in workers},
            "postgres": {pid: _proc_ticks(pid) for pid in _postgres_backends(self.db_name)},
            "machine_total": total,
            "machine_idle": idle,
            "machine_steal": steal,
        }

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        wall = b["t"] - a["t"]

        def ticks(kind):
            return sum(v - a[kind].get(pid, 0) for pid, v in b[kind].items()) / CLK_TCK

        total = b["machine_total"] - a["machine_total"]
        busy = total - (b["machine_idle"] - a["machine_idle"])
        ncpu = os.cpu_count() or 1
        return {
            "loadgen_pct": 100 * (b["loadgen"] - a["loadgen"]) / wall,
            "gunicorn_pct": 100 * ticks("gunicorn") / wall,
            "postgres_pct": 100 * ticks("postgres") / wall,
            "machine_busy_pct": 100 * ncpu * busy / total if total else 0.0,  # out of ncpu * 100
            "steal_pct": 100 * ncpu * (b["machine_steal"] - a["machine_steal"]) / total if total else 0.0,
        }

    @staticmethod
    def with_other(d: dict) -> dict:
        ours = d["loadgen_pct"] + d["gunicorn_pct"] + d["postgres_pct"]
        return {**d, "other_pct": max(0.0, d["machine_busy_pct"] - ours)}


# --- gunicorn -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    def __init__(self, spec: GunicornSpec, env: dict, log_path: Path):
        self.spec = spec
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        gunicorn = Path(sys.executable).parent / "gunicorn"
        if not gunicorn.exists():
            gunicorn = ROOT / ".venv" / "bin" / "gunicorn"
        self.cmd = [
            str(gunicorn),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            spec.worker_class,
            "--workers",
            str(spec.workers),
            "--threads",
            str(spec.threads),
            "--keep-alive",
            "5",
            "--backlog",
            "256",
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
            "--chdir",
            str(ROOT),
        ]
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> float:
        t0 = time.perf_counter()
        self.log_file = open(self.log_path, "wb")
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=self.env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        _RUNNING.add(self)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as r:
                    if r.status == 200 and len(_children(self.proc.pid)) >= 1:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer /healthz within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the group we created: the master and its workers
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if not self.log_file.closed:
            self.log_file.close()


_RUNNING: set[Gunicorn] = set()


try:  # looked up here, not in the forked child (which must not import or take locks)
    import ctypes

    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the gunicorn child, before exec: SIGTERM it if this process dies (even by SIGKILL)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --- load generator -------------------------------------------------------------------------------


class RawClient:
    """HTTP/1.1 on one keep-alive connection, written for this load (loopback, gunicorn, small JSON bodies).

    A few dozen lines instead of aiohttp's machinery: the load generator then takes a fraction of the CPU that
    aiohttp needs per request, CPU the server would otherwise lose on a 2-core machine (compare with
    ``--client aiohttp``). Reads Content-Length and chunked bodies; reconnects when the server closes the
    connection (sync workers answer ``Connection: close``).
    """

    def __init__(self, base: str, token: str, counters: dict):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port
        self.head = f"Host: {self.host}:{self.port}\r\nAuthorization: Token {token}\r\nAccept: application/json\r\n"
        self.counters = counters
        self.reader = self.writer = None
        self.reused = False

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self._request(f"GET {path} HTTP/1.1\r\n{self.head}\r\n".encode())

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\n{self.head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return await self._request(head.encode() + body)

    async def _request(self, data: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.counters["connections"] += 1
                self.reused = False
            reused, got_answer = self.reused, False
            try:
                self.writer.write(data)
                status = await self._read_status()
                got_answer = True
                result = await self._read_rest(status)
                self.reused = True
                return result
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                # A keep-alive connection the server had just closed: nothing was processed, send it again.
                if reused and not got_answer and attempt == 0:
                    continue
                raise
        raise AssertionError("unreachable")

    async def _read_status(self) -> int:
        line = await self.reader.readuntil(b"\r\n")
        return int(line.split(b" ", 2)[1])

    async def _read_rest(self, status: int) -> tuple[int, bytes]:
        reader = self.reader
        headers = {}
        for line in (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif status == 204 or status == 304 or status < 200:
            body = b""
        else:  # delimited by the end of the connection
            body = await reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, bytes(body)

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class AiohttpClient:
    def __init__(self, base: str, token: str, counters: dict):
        import aiohttp

        trace = aiohttp.TraceConfig()

        async def on_connect(session, ctx, params):
            counters["connections"] += 1

        trace.on_connection_create_end.append(on_connect)
        self.session = aiohttp.ClientSession(
            base_url=base,
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=30),
            headers={"Authorization": f"Token {token}", "Accept": "application/json"},
            trace_configs=[trace],
        )

    async def get(self, path: str) -> tuple[int, bytes]:
        async with self.session.get(path) as r:
            return r.status, await r.read()

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(path, data=body, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.read()

    async def close(self) -> None:
        await self.session.close()


class HttpxClient:
    def __init__(self, base: str, token: str, counters: dict):
        import httpx

        counters["connections"] = None  # not observable with httpx
        self.client = httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Token {token}", "Accept": "application/json"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=30,
        )

    async def get(self, path: str) -> tuple[int, bytes]:
        r = await self.client.get(path)
        return r.status_code, r.content

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        r = await self.client.post(path, content=body, headers={"Content-Type": "application/json"})
        return r.status_code, r.content

    async def close(self) -> None:
        await self.client.aclose()


def client_class(name: str):
    if name == "raw":
        return RawClient
    if name == "aiohttp":
        import aiohttp  # noqa: F401 - fail early when it is missing

        return AiohttpClient
    return HttpxClient


@dataclass
class CellRecord:
    next_ms: list = field(default_factory=list)  # (start offset s, latency ms) of measured calls
    submit_ms: list = field(default_factory=list)
    loops: int = 0  # measured loops: a 200 next-task followed by a 201 submit
    loops_total: int = 0
    statuses: dict = field(default_factory=dict)  # "next 200": n, ...
    errors: int = 0  # non-2xx answers and transport failures (measured window)
    errors_total: int = 0
    error_samples: list = field(default_factory=list)
    drained: int = 0  # annotators who got a 204 (nothing left for them)
    acked: list = field(default_factory=list)  # (judgment id, idempotency key, user id)
    counters: dict = field(default_factory=lambda: {"connections": 0})


async def annotator_loop(
    client, ann: Annotator, slug: str, rec: CellRecord, t_measure: float, t_end: float, rng, run_id: str
):
    n = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= t_end:
            return
        measured = t0 >= t_measure
        try:
            status, body = await client.get(f"/api/projects/{slug}/next-task/")
        except Exception as exc:  # noqa: BLE001 - a transport failure is a measured error
            status, body = 0, repr(exc).encode()
        t1 = time.perf_counter()
        key = f"next {status}"
        rec.statuses[key] = rec.statuses.get(key, 0) + 1
        if measured:
            rec.next_ms.append((t0 - t_measure, (t1 - t0) * 1000))
        if status == 204:
            rec.drained += 1
            return
        task = None
        if status == 200:
            try:
                task = json.loads(body)
                if not isinstance(task.get("id"), int) or len(task.get("responses", [])) != 2:
                    task = None
            except ValueError:
                task = None
        if task is None:
            _error(rec, measured, f"next-task {status}: {body[:200]!r}")
            await asyncio.sleep(0.01)
            continue

        n += 1
        idem = f"{run_id}:{ann.username}:{n}"
        payload = {
            "choice": rng.choice("AB"),
            "strength": rng.randint(0, 3),
            "idempotency_key": idem,
            "duration_ms": 1000,
        }
        t2 = time.perf_counter()
        try:
            status, body = await client.post_json(f"/api/tasks/{task['id']}/judgments/", json.dumps(payload).encode())
        except Exception as exc:  # noqa: BLE001
            status, body = 0, repr(exc).encode()
        t3 = time.perf_counter()
        key = f"submit {status}"
        rec.statuses[key] = rec.statuses.get(key, 0) + 1
        if measured:
            rec.submit_ms.append((t2 - t_measure, (t3 - t2) * 1000))
        if status == 201:
            judgment = json.loads(body)
            rec.acked.append((judgment["id"], idem, ann.user_id))
            if judgment.get("idempotency_key") != idem or judgment.get("task") != task["id"]:
                _error(rec, measured, f"submit answered with another judgment: {judgment}")
            rec.loops_total += 1
            if measured:
                rec.loops += 1
        else:
            _error(rec, measured, f"submit {status}: {body[:200]!r}")


def _error(rec: CellRecord, measured: bool, text: str) -> None:
    rec.errors_total += 1
    if measured:
        rec.errors += 1
    if len(rec.error_samples) < 5:
        rec.error_samples.append(text)


async def run_cell(
    base: str,
    slug: str,
    annotators: list[Annotator],
    warmup: float,
    duration: float,
    client_cls,
    meter: CpuMeter,
    seed: int,
    run_id: str,
):
    rec = CellRecord()
    clients = [client_cls(base, a.token, rec.counters) for a in annotators]
    try:
        start = time.perf_counter()
        t_measure, t_end = start + warmup, start + warmup + duration
        loops = [
            annotator_loop(c, a, slug, rec, t_measure, t_end, random.Random(seed * 1000 + i), run_id)
            for i, (c, a) in enumerate(zip(clients, annotators))
        ]

        async def cpu_window():
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            first = meter.snapshot()
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            return first, meter.snapshot()

        window = asyncio.ensure_future(cpu_window())
        await asyncio.gather(*loops)
        finished = time.perf_counter()
        cpu_a, cpu_b = await window
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    # Loops are counted in [t_measure, t_end); the few still in flight at t_end finish after it.
    rec_elapsed = min(duration, max(1e-9, finished - t_measure))
    return rec, rec_elapsed, CpuMeter.with_other(CpuMeter.delta(cpu_a, cpu_b))


# --- statistics and report -------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(size: int, c: int, rec: CellRecord, elapsed: float, cpu: dict, check: dict, duration: float) -> dict:
    nxt = [ms for _, ms in rec.next_ms]
    sub = [ms for _, ms in rec.submit_ms]
    third = duration / 3
    early = [ms for t, ms in rec.next_ms if t < third]
    late = [ms for t, ms in rec.next_ms if t >= 2 * third]
    return {
        "items": size,
        "concurrency": c,
        "loops_per_s": rec.loops / elapsed,
        "loops": rec.loops,
        "loops_total": rec.loops_total,
        "next_p50": pct(nxt, 50),
        "next_p95": pct(nxt, 95),
        "next_p99": pct(nxt, 99),
        "next_max": max(nxt, default=float("nan")),
        "submit_p50": pct(sub, 50),
        "submit_p95": pct(sub, 95),
        "submit_p99": pct(sub, 99),
        "submit_max": max(sub, default=float("nan")),
        "next_p50_first_third": pct(early, 50),
        "next_p50_last_third": pct(late, 50),
        "errors": rec.errors,
        "errors_total": rec.errors_total,
        "error_samples": rec.error_samples,
        "drained": rec.drained,
        "statuses": rec.statuses,
        "connections": rec.counters["connections"],
        "cpu": cpu,
        "cpu_ceiling": cpu_ceiling(cpu, rec.loops / elapsed),
        "verify": check,
    }


def cpu_ceiling(cpu: dict, loops_per_s: float) -> float:
    """Loops/s the machine could do if the server, PostgreSQL and the load generator had every core."""
    ours = cpu["loadgen_pct"] + cpu["gunicorn_pct"] + cpu["postgres_pct"]
    if not loops_per_s or not ours:
        return float("nan")
    return 100 * (os.cpu_count() or 1) * loops_per_s / ours


def fmt(v: float) -> str:
    return "   -  " if v != v else f"{v:6.1f}"


def print_report(results: list[dict], config: dict) -> list[str]:
    log("")
    log(
        f"Serving benchmark: {config['gunicorn']}; {config['duration']:.0f} s measured per cell "
        f"after {config['warmup']:.1f} s warm-up; client {config['client']}; overlap {OVERLAP}"
    )
    head = (
        f"{'items':>7} {'C':>3} {'loops/s':>8} | {'next-task ms p50':>16} {'p95':>6} {'p99':>6} | "
        f"{'submit ms p50':>13} {'p95':>6} {'p99':>6} | {'errors':>6} {'204':>4}"
    )
    log(head)
    log("-" * len(head))
    for r in results:
        log(
            f"{r['items']:>7} {r['concurrency']:>3} {r['loops_per_s']:>8.1f} | {fmt(r['next_p50']):>16} "
            f"{fmt(r['next_p95'])} {fmt(r['next_p99'])} | {fmt(r['submit_p50']):>13} {fmt(r['submit_p95'])} "
            f"{fmt(r['submit_p99'])} | {r['errors']:>6} {r['drained']:>4}"
        )

    log("")
    log(
        f"CPU in the measured window, % of one core (this machine: {os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%); "
        "'other' is everything else the machine's CPUs did (other processes, the kernel's network work, and "
        "'steal': time the hypervisor gave them to other VMs); then CPU ms per loop and the 'ceiling' they imply "
        "(loops/s if all cores did nothing else); next-task p50 in the first and last third of the cell (drift):"
    )
    head2 = (
        f"{'items':>7} {'C':>3} | {'loadgen':>7} {'gunicorn':>8} {'postgres':>8} {'other':>6} {'steal':>5} | "
        f"{'ms/loop: gunicorn':>17} {'postgres':>8} {'loadgen':>7} {'ceiling':>8} | {'conns':>5} | "
        f"{'p50 1st third':>13} {'last third':>10}"
    )
    log(head2)
    log("-" * len(head2))
    noisy = []
    for r in results:
        cpu = r["cpu"]
        per = lambda pct_, rate=r["loops_per_s"]: pct_ * 10 / rate if rate else float("nan")  # noqa: E731
        conns = "-" if r["connections"] is None else str(r["connections"])
        log(
            f"{r['items']:>7} {r['concurrency']:>3} | {cpu['loadgen_pct']:>6.1f}% {cpu['gunicorn_pct']:>7.1f}% "
            f"{cpu['postgres_pct']:>7.1f}% {cpu['other_pct']:>5.0f}% {cpu.get('steal_pct', 0):>4.0f}% | {per(cpu['gunicorn_pct']):>17.2f} "
            f"{per(cpu['postgres_pct']):>8.2f} {per(cpu['loadgen_pct']):>7.2f} {r['cpu_ceiling']:>8.0f} | {conns:>5} | "
            f"{fmt(r['next_p50_first_third']):>13} {fmt(r['next_p50_last_third']):>10}"
        )
        if cpu["other_pct"] > NOISY_PCT:
            noisy.append(f"{r['items']}/C={r['concurrency']}")
    if noisy:
        log(
            f"!! other processes used more than {NOISY_PCT}% of a core during {', '.join(noisy)}: those figures are "
            "understated (the server shared the CPU); rerun on a quiet machine"
        )

    log("")
    log("Targets (from the issue) beside the figures:")
    failures = []
    for r in results:
        if r["concurrency"] == 50:
            ok = (
                r["loops_per_s"] >= TARGET_LOOPS_C50
                and r["next_p95"] < TARGET_P95_MS
                and r["submit_p95"] < TARGET_P95_MS
            )
            line = (
                f"  {r['items']:>7} items, C=50: {r['loops_per_s']:.1f} loops/s (target >= {TARGET_LOOPS_C50:.0f}), "
                f"p95 next-task {r['next_p95']:.1f} ms, submit {r['submit_p95']:.1f} ms (target < {TARGET_P95_MS:.0f})"
                f"  -> {'MET' if ok else 'MISSED'}"
            )
            log(line)
            if not ok:
                failures.append(line.strip())
    if any(r["concurrency"] == 50 for r in results):
        log(
            f"  (closed loop, no think time: C=50 at {TARGET_LOOPS_C50:.0f} loops/s means {1000 * 50 / TARGET_LOOPS_C50:.0f} ms "
            f"per loop on average, so p95 under {TARGET_P95_MS:.0f} ms for both calls needs at least "
            f"{50 * 1000 / (2 * TARGET_P95_MS):.0f} loops/s)"
        )
    c1 = {r["items"]: r for r in results if r["concurrency"] == 1}
    if len(c1) >= 2:
        small, large = c1[min(c1)], c1[max(c1)]
        ratio = large["next_p50"] / small["next_p50"]
        ok = ratio <= 1 + TARGET_SCALING
        line = (
            f"  C=1 next-task p50: {large['next_p50']:.2f} ms at {large['items']} items vs {small['next_p50']:.2f} ms "
            f"at {small['items']} items = x{ratio:.2f} (target within {TARGET_SCALING:.0%}; p95 "
            f"{large['next_p95']:.2f} vs {small['next_p95']:.2f} ms)  -> {'MET' if ok else 'MISSED'}"
        )
        log(line)
        if not ok:
            failures.append(line.strip())
    for c, ls in LABEL_STUDIO.items():
        mine = [f"{r['loops_per_s']:.0f}" for r in results if r["concurrency"] == c]
        if mine:
            log(
                f"  reference: Label Studio 1.23 does {ls} loops/s at C={c} on this machine; Arbiter: {', '.join(mine)} loops/s"
            )

    log("")
    log("Verification (database, after each cell):")
    totals: dict[str, int] = {}
    for r in results:
        v = r["verify"]
        for k in (
            "acknowledged",
            "acknowledged_found",
            "judgments_in_project",
            "duplicate_keys",
            "items_over_overlap",
            "items_bookkeeping_off",
            "acknowledged_mismatched",
        ):
            totals[k] = totals.get(k, 0) + v[k]
        log(
            f"  {r['items']:>7} items, C={r['concurrency']:<3} acknowledged {v['acknowledged']:>6}, found once "
            f"{v['acknowledged_found']:>6}, rows in project {v['judgments_in_project']:>6}, duplicate keys "
            f"{v['duplicate_keys']}, items over overlap {v['items_over_overlap']} (max current/item "
            f"{v['max_current_per_item']}), bookkeeping off {v['items_bookkeeping_off']}  -> {'OK' if v['ok'] else 'FAILED'}"
        )
        if not v["ok"]:
            failures.append(f"verification failed for {r['items']} items, C={r['concurrency']}: {v}")
        if r["errors_total"]:
            log(f"      {r['errors_total']} errors, e.g. {r['error_samples'][:2]}")
    log(
        f"  total: acknowledged {totals.get('acknowledged', 0)}, found exactly once {totals.get('acknowledged_found', 0)}, "
        f"rows {totals.get('judgments_in_project', 0)}, duplicate (annotator, key) {totals.get('duplicate_keys', 0)}, "
        f"items over overlap {totals.get('items_over_overlap', 0)}, key/annotator mismatches "
        f"{totals.get('acknowledged_mismatched', 0)}"
    )
    return failures


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    hard_deadline = t_start + args.budget

    # A hard stop: past the budget (plus slack) interrupt the main thread, which cleans up; past more, exit.
    def watchdog():
        log(f"!! {args.budget + 30:.0f} s: past the time budget, stopping")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(20)
        for server in list(_RUNNING):
            server.stop()
        os._exit(3)

    timer = threading.Timer(args.budget + 30, watchdog)
    timer.daemon = True
    timer.start()

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and this run must always be stoppable.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    db_url = f"{PG_SERVER}/{args.db_name}"
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("CONN_MAX_AGE", None)  # the default (60 s) keeps connections open across requests
    os.environ.update(env)
    os.environ.pop("CONN_MAX_AGE", None)
    sys.path.insert(0, str(ROOT))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    client_cls = client_class(args.client)

    specs = args.gunicorn
    log(
        f"== serve: sizes {args.sizes}, C {args.concurrency}, {args.duration:.0f}+{args.warmup:.1f} s per cell, "
        f"gunicorn {', '.join(map(str, specs))}"
    )
    log(f"background load before start: {machine_busy_pct(1.0):.0f}% of one core (of {100 * (os.cpu_count() or 1)}%)")
    import django

    projects, setup_times = None, {}
    # One template per set of sizes (a run with other sizes does not evict the default one).
    sizes_tag = f"{zlib.crc32(repr(sorted(args.sizes)).encode()):08x}"
    template = f"{args.db_name}_tpl_{sizes_tag}_{data_key(args.sizes)}"
    if not args.fresh and database_exists(template):
        t = time.perf_counter()
        recreate_database(args.db_name, template=template)
        django.setup()
        projects = existing_projects(args.sizes)
        if projects is None:
            raise RuntimeError(f"template {template} lacks the projects: run with --fresh")
        log(
            f"database {args.db_name} recreated from {template} in {time.perf_counter() - t:.1f} s (the same "
            "projects a fresh build makes: its key hashes the migrations, models, import code and sizes; --fresh rebuilds)"
        )
    else:
        t = time.perf_counter()
        recreate_database(args.db_name)
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        log(f"database {args.db_name} recreated and migrated in {time.perf_counter() - t:.1f} s")
        projects, setup_times = create_projects(args.sizes)
        t = time.perf_counter()
        save_template(args.db_name, template, stale_prefix=f"{args.db_name}_tpl_{sizes_tag}_")
        log(f"saved as template {template} for the next runs in {time.perf_counter() - t:.1f} s")

    # The cells the targets are about first (C=1 at the smallest and largest size, then C=50), so that a run
    # cut short by its time budget still has them; the tables are printed in size order anyway.
    def priority(size: int, c: int) -> int:
        if c == min(args.concurrency) and size in (min(args.sizes), max(args.sizes)):
            return 0
        return 1 if c == max(args.concurrency) else 2

    cells = [
        (spec, size, c)
        for spec in specs
        for size, c in sorted(((s, c) for s in args.sizes for c in args.concurrency), key=lambda k: (priority(*k), k))
    ]
    t = time.perf_counter()
    annotators = {
        (spec, size, c): make_annotators(projects[size], f"{stamp}-g{k}-{size}-c{c}", c)
        for k, spec in enumerate(specs)
        for size in args.sizes
        for c in args.concurrency
    }
    log(f"{sum(len(a) for a in annotators.values())} annotators with tokens created in {time.perf_counter() - t:.1f} s")
    if args.setup_only:
        log(f"--setup-only: database {args.db_name} left as it is")
        timer.cancel()
        return 0

    results: list[dict] = []
    failures: list[str] = []
    run_id = f"{stamp}-{random.Random(args.seed).randrange(1 << 30):x}"
    per_cell = args.warmup + args.duration + 3  # + verification and reset
    dirty = set()
    gunicorn = None
    try:
        for i, (spec, size, c) in enumerate(cells):
            left = hard_deadline - time.perf_counter()
            if left < per_cell:
                log(f"!! budget of {args.budget:.0f} s nearly spent: skipping {len(cells) - i} cells")
                failures.append(f"{len(cells) - i} cells skipped (budget)")
                break
            if gunicorn is None or gunicorn.spec != spec:
                if gunicorn is not None:
                    gunicorn.stop()
                gunicorn = Gunicorn(spec, env, RESULTS / f"gunicorn-{stamp}-{str(spec).replace(':', '-')}.log")
                boot = gunicorn.start()
                meter = CpuMeter(gunicorn.proc.pid, args.db_name)
                log(f"gunicorn {spec.describe()} up on {gunicorn.base} in {boot:.1f} s")
            project = projects[size]
            if size in dirty:
                reset_project(project)
            dirty.add(size)
            if args.wait_quiet > 0:
                budget_left = hard_deadline - time.perf_counter() - (len(cells) - i) * per_cell
                busy = wait_quiet(min(args.wait_quiet, max(0.0, budget_left)))
                if busy > NOISY_PCT:
                    log(f"  (machine still busy before the cell: {busy:.0f}% of a core used by others)")
            cell_annotators = annotators[(spec, size, c)]
            rec, elapsed, cpu = asyncio.run(
                run_cell(
                    gunicorn.base,
                    project.slug,
                    cell_annotators,
                    args.warmup,
                    args.duration,
                    client_cls,
                    meter,
                    args.seed + i,
                    run_id,
                )
            )
            if gunicorn.proc.poll() is not None:
                raise RuntimeError(f"gunicorn died during the run:\n{gunicorn.log_tail()}")
            check = verify(project, cell_annotators, rec.acked)
            r = summarize(size, c, rec, elapsed, cpu, check, args.duration)
            r["gunicorn"] = str(spec)
            results.append(r)
            log(
                f"  {size:>7} items, C={c:<3} {r['loops_per_s']:7.1f} loops/s  next p50/p95 {r['next_p50']:.1f}/"
                f"{r['next_p95']:.1f} ms  submit p50/p95 {r['submit_p50']:.1f}/{r['submit_p95']:.1f} ms  "
                f"errors {r['errors_total']}  cpu loadgen {cpu['loadgen_pct']:.0f}% gunicorn {cpu['gunicorn_pct']:.0f}% "
                f"postgres {cpu['postgres_pct']:.0f}% other {cpu['other_pct']:.0f}%  verify {'OK' if check['ok'] else 'FAILED'}"
            )
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        timer.cancel()

    results.sort(
        key=lambda r: (specs.index(next(sp for sp in specs if str(sp) == r["gunicorn"])), r["items"], r["concurrency"])
    )
    for spec in specs:
        mine = [r for r in results if r["gunicorn"] == str(spec)]
        if mine:
            config = {
                "gunicorn": f"gunicorn {spec.describe()}, keep-alive 5 s",
                "duration": args.duration,
                "warmup": args.warmup,
                "client": client_cls.__name__,
            }
            failures += print_report(mine, config)
    if len(specs) > 1:
        print_comparison(results, specs)
    total = time.perf_counter() - t_start
    out = args.json or RESULTS / f"serve-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "client": client_cls.__name__,
                "setup_seconds": setup_times,
                "total_seconds": total,
                "results": results,
                "failures": failures,
            },
            indent=1,
            default=str,
        )
    )
    log(f"\nresults written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}; total {total:.0f} s")
    # Missed targets are findings and cells skipped to keep within the time budget are reported above;
    # only a failed verification (lost, duplicated or over-assigned judgments) makes the run fail.
    broken = [f for f in failures if f.startswith("verification")]
    return 1 if broken else 0


def existing_projects(sizes: list[int]) -> dict | None:
    from django.db.utils import OperationalError, ProgrammingError

    from annotate.models import Project

    try:
        projects = {p.slug: p for p in Project.objects.filter(slug__in=[f"bench-{s}" for s in sizes])}
        out = {s: projects.get(f"bench-{s}") for s in sizes}
        if all(p is not None and p.items.count() == s for s, p in out.items()):
            return out
    except (OperationalError, ProgrammingError):
        pass
    return None


def create_projects(sizes: list[int]) -> tuple[dict, dict]:

    from annotate import actions
    from annotate.models import Kind

    projects, setup_times = {}, {}
    # A small project through the app's own import path: the reference the COPY-made rows are checked against.
    reference = actions.create_project(slug="bench-reference", kind=Kind.PAIRWISE, overlap=OVERLAP)
    import_with_actions(reference, PARITY_ITEMS)
    for size in sizes:
        t = time.perf_counter()
        project = actions.create_project(
            slug=f"bench-{size}", kind=Kind.PAIRWISE, overlap=OVERLAP, name=f"Bench {size} items"
        )
        if size <= IMPORT_ITEMS_UP_TO:
            import_with_actions(project, size)
            how = "actions.import_items"
        else:
            import_with_copy(project, size)
            how = "COPY"
        setup_times[size] = time.perf_counter() - t
        projects[size] = project
        log(f"project {project.slug}: {size} items via {how} in {setup_times[size]:.1f} s")
    n = sum(check_copy_parity(reference, projects[s]) for s in sizes)
    log(
        f"every project's first {PARITY_ITEMS} items identical to actions.import_items rows ({n} items and their responses compared)"
    )
    t = time.perf_counter()
    create_history(HISTORY_ITEMS, HISTORY_ANNOTATORS)
    log(
        f"finished project bench-history: {HISTORY_ITEMS} items, {HISTORY_ITEMS * OVERLAP} tasks and judgments of "
        f"{HISTORY_ANNOTATORS} annotators, in {time.perf_counter() - t:.1f} s (a database in use, for the planner)"
    )
    return projects, setup_times


def print_comparison(results: list[dict], specs: list[GunicornSpec]) -> None:
    log("")
    log("Gunicorn configurations side by side (loops/s, next-task p95 / submit p95 ms, other load):")
    keys = sorted({(r["items"], r["concurrency"]) for r in results})
    log(f"{'config':>14} | " + " | ".join(f"{size:>6}/C={c:<3}{'':>14}" for size, c in keys))
    for spec in specs:
        row = {(r["items"], r["concurrency"]): r for r in results if r["gunicorn"] == str(spec)}
        cells = []
        for key in keys:
            r = row.get(key)
            cells.append(
                f"{r['loops_per_s']:6.1f} {r['next_p95']:6.0f}/{r['submit_p95']:<5.0f} {r['cpu']['other_pct']:3.0f}%"
                if r
                else f"{'-':>25}"
            )
        log(f"{str(spec):>14} | " + " | ".join(cells))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: gunicorn stopped", file=sys.stderr)
        sys.exit(130)
