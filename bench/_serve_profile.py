#!/usr/bin/env python
"""Where a next-task / submit request spends its time, in-process (no HTTP, no gunicorn): a helper of serve.py.

Not a benchmark of its own (``bench/run.py`` skips files starting with ``_``). It needs the database that
``bench/serve.py`` builds; ``--setup`` builds it first (``serve.py --setup-only``).

For one project size it prints:

1. CPU and wall time per request (the WSGI application called directly, one thread), next-task and submit apart.
2. Every SQL statement of one next-task and one submit, with its time.
3. A cProfile (CPU time, not wall time) of the same requests, folded into the layers of the stack.
4. EXPLAIN ANALYZE of the next-task pick as the app runs it (``sql.pick_statement``: above the annotator's
   mark, and the fallback from the start) and of the shape it had before (``ORDER BY id``), for comparison.
5. Which rows stay locked while a next-task or a submit transaction is open: a second connection tries
   ``FOR KEY SHARE NOWAIT`` on the project row (what every other annotator's next-task and submit needs).

    .venv/bin/python bench/_serve_profile.py --setup --size 100000
    .venv/bin/python bench/_serve_profile.py --size 1000 --loops 300
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]

LAYERS = [  # (label, [(file path ending, function name), ...]): inclusive CPU of those functions, which do not nest
    ("whole request (WSGI handler)", [("django/core/handlers/wsgi.py", "__call__")]),
    ("  DRF token authentication (1 query)", [("rest_framework/authentication.py", "authenticate")]),
    ("  views: next_task total", [("annotate/api/views.py", "next_task")]),
    ("    actions.assign_next_task_by_slug", [("annotate/actions.py", "assign_next_task_by_slug")]),
    ("    serializers.task_payload", [("annotate/api/serializers.py", "task_payload")]),
    ("  views: task_judgments total", [("annotate/api/views.py", "task_judgments")]),
    ("    _own_task (task + require_role)", [("annotate/api/views.py", "_own_task")]),
    ("    actions.record_judgment", [("annotate/actions.py", "record_judgment")]),
    ("ORM: compiling SQL (SQLCompiler.as_sql, all calls)", [("django/db/models/sql/compiler.py", "as_sql")]),
    ("psycopg: Cursor.execute (send, wait, receive)", [("psycopg/cursor.py", "execute")]),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/_serve_profile.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100000, help="which bench project (items)")
    p.add_argument("--loops", type=int, default=200, help="measured loops (next-task + submit)")
    p.add_argument("--db-name", default="arbiter_bench")
    p.add_argument("--setup", action="store_true", help="build the database first (serve.py --setup-only)")
    args = p.parse_args(argv)
    if args.setup:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "serve.py"),
                "--setup-only",
                "--db-name",
                args.db_name,
                "--sizes",
                str(args.size),
                "--concurrency",
                "1",
            ],
            check=True,
        )

    os.environ.update(
        {
            "DATABASE_URL": f"{PG_SERVER}/{args.db_name}",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DEBUG": "0",
        }
    )
    sys.path.insert(0, str(ROOT))
    warnings.simplefilter("ignore")
    import django

    django.setup()
    from django.core.wsgi import get_wsgi_application
    from django.db import connection, reset_queries, transaction

    from annotate import actions, sql
    from annotate.models import Membership, Project, Role, Task

    app = get_wsgi_application()
    project = Project.objects.get(slug=f"bench-{args.size}")
    user = actions.add_member(project, f"profile-{time.time_ns()}", Role.ANNOTATOR).user
    token = actions.issue_token(user)
    counter = iter(range(10**9))

    def call(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Token {token}",
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/json",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        status = {}
        body_out = b"".join(app(environ, lambda s, h, e=None: status.setdefault("s", s)))
        return int(status["s"][:3]), body_out

    def next_task() -> int:
        status, body = call("GET", f"/api/projects/{project.slug}/next-task/")
        assert status == 200, (status, body[:300])
        return json.loads(body)["id"]

    def submit(task_id: int) -> None:
        payload = {"choice": "A", "strength": 2, "idempotency_key": f"profile-{next(counter)}", "duration_ms": 1000}
        status, body = call("POST", f"/api/tasks/{task_id}/judgments/", json.dumps(payload).encode())
        assert status == 201, (status, body[:300])

    for _ in range(20):  # warm caches, connections, URL resolvers
        submit(next_task())

    # 1. CPU and wall per request.
    t_next = t_submit = c_next = c_submit = 0.0
    for _ in range(args.loops):
        w, c = time.perf_counter(), time.process_time()
        task_id = next_task()
        w2, c2 = time.perf_counter(), time.process_time()
        submit(task_id)
        w3, c3 = time.perf_counter(), time.process_time()
        t_next += w2 - w
        c_next += c2 - c
        t_submit += w3 - w2
        c_submit += c3 - c2
    n = args.loops
    print(f"== {project.slug}: {n} loops in-process, one thread (this process's CPU: Python + libpq, not PostgreSQL)")
    print(f"  next-task: wall {1000 * t_next / n:6.2f} ms, CPU {1000 * c_next / n:6.2f} ms")
    print(f"  submit:    wall {1000 * t_submit / n:6.2f} ms, CPU {1000 * c_submit / n:6.2f} ms")

    # 2. The SQL of one loop. Django's query log has no text for a prepared statement (psycopg keeps none), so the
    # texts come from an execute wrapper, in order (BEGIN and COMMIT do not pass through it).
    texts = []

    def record(execute, sql, params, many, context):
        texts.append(sql)
        return execute(sql, params, many, context)

    def with_texts(queries):
        for q in queries:
            if q["sql"] not in ("BEGIN", "COMMIT"):
                q["sql"] = texts.pop(0)
        return queries

    connection.force_debug_cursor = True
    with connection.execute_wrapper(record):
        reset_queries()
        task_id = next_task()
        q_next = with_texts(list(connection.queries))
        reset_queries()
        submit(task_id)
        q_submit = with_texts(list(connection.queries))
    connection.force_debug_cursor = False
    for name, queries in (("next-task", q_next), ("submit", q_submit)):
        total = sum(float(q["time"]) for q in queries) * 1000
        print(
            f"\n== SQL of one {name}: {len(queries)} statements, {total:.1f} ms (Django's timer, 1 ms resolution; "
            "the health check polls the socket and sends nothing)"
        )
        for q in queries:
            text = q["sql"]
            print(f"  {float(q['time']) * 1000:5.1f} ms  {text[:160]}{' ...' if len(text) > 160 else ''}")
            if "FOR UPDATE" in text:
                print(f"           ... {text[-200:]}")

    # 3. cProfile by CPU time, folded into layers.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(max(50, n // 2)):
        submit(next_task())
    profiler.disable()
    stats = pstats.Stats(profiler)
    total_cpu = stats.total_tt  # all CPU time profiled
    print("\n== CPU by layer (cProfile with a CPU clock; its overhead inflates pure-Python code about 3-4x):")
    per_loop = 1000 * total_cpu / max(50, n // 2)
    for label, where in LAYERS:
        cum = sum(
            v[3]
            for (fname, _, fn), v in stats.stats.items()
            if any(fname.endswith(f) and fn == name for f, name in where)
        )
        print(f"  {100 * cum / total_cpu:5.1f}%  {label}")
    print(f"  (profiled CPU per loop: {per_loop:.1f} ms)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    print("\n== top 15 functions by own CPU time")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-2500:])

    # 4. EXPLAIN ANALYZE of the pick: the app's statement (sql.pick_statement: above the annotator's mark,
    # then the fallback from the start) and, for comparison, the shape it had before (ORDER BY id).
    before = (
        "SELECT id FROM annotate_item WHERE open_slots > 0 AND project_id = %s AND purpose = 'normal' "
        "AND NOT EXISTS (SELECT 1 FROM annotate_task u0 WHERE u0.annotator_id = %s AND u0.item_id = annotate_item.id) "
        "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    variants = [
        (
            "the app's pick, above the mark (UPDATE ... RETURNING)",
            *sql.pick_statement(
                project.id, user.id, mark=Membership.objects.get(project=project, user=user).pick_mark, skip_locked=True
            ),
        ),
        (
            "the app's fallback, from the start, waiting on locks",
            *sql.pick_statement(project.id, user.id, mark=None, skip_locked=False),
        ),
        ("the pick before (project_id = X ORDER BY id, SELECT)", before, [project.id, user.id]),
    ]
    history = Task.objects.filter(annotator=user, project=project).count()
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM annotate_item WHERE id < (SELECT min(id) FROM annotate_item WHERE project_id = %s)",
            [project.id],
        )
        lower = cur.fetchone()[0]
        print(
            f"\n== EXPLAIN ANALYZE of the next-task pick ({lower} items of other projects have lower ids; "
            f"this annotator has {history} tasks in the project)"
        )
        for label, sql, params in variants:
            with transaction.atomic():
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
                plan = [row[0] for row in cur.fetchall()]
                transaction.set_rollback(True)
            print(f"  -- {label}")
            for line in plan:
                if any(k in line for k in ("Scan", "Removed", "Execution", "Anti", "Join Filter", "Limit", "Update")):
                    print(f"     {line.strip()}")

    # 5. Locks held by an open next-task / submit transaction.
    import psycopg

    other = psycopg.connect(f"{PG_SERVER}/{args.db_name}", autocommit=True)

    def project_row_blocked() -> bool:
        try:
            other.execute("SELECT 1 FROM annotate_project WHERE id = %s FOR KEY SHARE NOWAIT", [project.id])
            return False
        except psycopg.errors.LockNotAvailable:
            return True

    print(
        "\n== Is the project row locked while a transaction is open? (blocks every other annotator's next-task and submit)"
    )
    with transaction.atomic():
        task = actions.assign_next_task(user, project)
        print(f"  inside assign_next_task's transaction: {'LOCKED' if project_row_blocked() else 'free'}")
        transaction.set_rollback(True)
    task = actions.assign_next_task(user, project)
    task = Task.objects.get(pk=task.pk)
    with transaction.atomic():
        actions.record_judgment(task, {"choice": "B", "strength": 1}, f"profile-lock-{time.time_ns()}")
        print(f"  inside record_judgment's transaction:  {'LOCKED' if project_row_blocked() else 'free'}")
        transaction.set_rollback(True)
    other.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
