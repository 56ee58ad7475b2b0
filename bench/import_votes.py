#!/usr/bin/env python
"""Vote import benchmark: ``import_judgments`` of pairwise votes, beside a bulk insert of the same rows.

What it does, for each database:

- **PostgreSQL** (its own database, ``arbiter_bench_import``, dropped and recreated): a pairwise project with
  100,000 items and 1,000,000 votes, 10 per item (``--quick``: 10,000 items, 100,000 votes). Target: under 60 s,
  within 5× of COPY.
- **SQLite** (a file under bench/results/): 10,000 items and 100,000 votes (``--quick``: 2,000 and 20,000).
  Target: under 30 s.

Each measurement runs in a fresh process, so its peak RSS is its own:

- **A, Arbiter**: what ``manage.py import_judgments`` does, from the file's bytes to the commit: parse every row,
  check it against its item, create the annotators, write the tasks and judgments, count the votes on the items.
- **B, the floor**: the same task and judgment rows, already built in memory, written with PostgreSQL ``COPY``
  (SQLite: ``executemany``) in one transaction, with the items' counts updated. It does no parsing and no checks:
  the bulk write alone.

A and B alternate (A, B, A, B), with the votes removed between runs, so a noisy machine hits both alike. The
ratio of the medians is the figure.

    .venv/bin/python bench/import_votes.py            # full size
    .venv/bin/python bench/import_votes.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/arbiter_bench_import"
SQLITE_URL = f"sqlite:///{RESULTS / 'import_votes.sqlite3'}"
OVERLAP = 10
N_ANNOTATORS = 1000
TARGETS = {"postgresql": 60.0, "sqlite": 30.0}
SLUG = "votes"


def log(msg: str = "") -> None:
    print(msg, flush=True)


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("ARBITER_IMPORT_MAX_ROWS", "1000000")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# --- the data ---------------------------------------------------------------------------------------------


def vote_file(path: Path, n_items: int, seed: int = 11) -> None:
    """OVERLAP distinct annotators per item, a winner (or a tie) and a strength, as JSONL."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(n_items):
            for annotator in rng.sample(range(N_ANNOTATORS), OVERLAP):
                winner = None if rng.random() < 0.1 else rng.randrange(2)
                row = {"item": f"item-{i}", "annotator": f"rater-{annotator}", "winner": winner}
                if winner is not None:
                    row["strength"] = rng.randrange(4)
                out.write(json.dumps(row) + "\n")


def prepare(url: str, n_items: int, votes: Path) -> None:
    """A fresh database with the project and its items (imported by Arbiter's own import), and the vote file."""
    if url.startswith("postgres"):
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "arbiter_bench_import" WITH (FORCE)')
            conn.execute('CREATE DATABASE "arbiter_bench_import"')
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(str(RESULTS / "import_votes.sqlite3") + suffix).unlink(missing_ok=True)
    setup_django(url)
    from django.core.management import call_command

    from annotate import actions
    from annotate.imports import ParsedItem

    call_command("migrate", verbosity=0, interactive=False)
    project = actions.create_project(slug=SLUG, kind="pairwise", overlap=OVERLAP)
    items = [
        ParsedItem(
            line=i + 1,
            prompt=[{"role": "user", "content": f"Question {i}?"}],
            external_id=f"item-{i}",
            responses=[
                {"text": f"Answer {i}a.", "model": "a", "metadata": {}},
                {"text": f"Answer {i}b.", "model": "b", "metadata": {}},
            ],
        )
        for i in range(n_items)
    ]
    t = time.perf_counter()
    actions.import_items(project, items)
    log(f"  {n_items:,} items imported in {time.perf_counter() - t:.1f} s")
    vote_file(votes, n_items)
    log(f"  {n_items * OVERLAP:,} votes written to {votes.name} ({votes.stat().st_size / 1e6:.0f} MB)")


# --- one measurement (a child process) ---------------------------------------------------------------------


def measure(url: str, mode: str, votes: Path) -> dict:
    setup_django(url)
    from django.db import connection, transaction

    from annotate.models import Judgment, Project, Task

    project = Project.objects.get(slug=SLUG)
    # Start from no votes: the previous run's are removed (outside the timing).
    with transaction.atomic():
        Judgment.objects.filter(project=project).delete()
        Task.objects.filter(project=project).delete()
        project.items.update(n_judgments=0, open_slots=OVERLAP)
    if mode == "arbiter":
        from annotate.actions import import_judgments
        from annotate.imports import parse_votes

        t = time.perf_counter()
        report = import_judgments(project, parse_votes(votes.read_bytes(), "jsonl"))
        seconds = time.perf_counter() - t
        created = report.created
    else:
        postgres = connection.vendor == "postgresql"
        rows = (_floor_rows if postgres else _sqlite_floor_rows)(project, votes)
        t = time.perf_counter()
        created = (_floor_write if postgres else _sqlite_floor_write)(connection, rows)
        seconds = time.perf_counter() - t
    stored = Judgment.objects.filter(project=project).count()
    return {
        "mode": mode,
        "seconds": seconds,
        "created": created,
        "stored": stored,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _floor_inputs(project, votes: Path) -> tuple[dict, dict, list, dict]:
    """What both floors start from: item ids by external id, response ids by item, the parsed votes, and the
    annotators' user ids (created as Arbiter creates them)."""
    from annotate.actions import _annotators
    from annotate.models import Item, Response

    items = dict(Item.objects.filter(project=project).values_list("external_id", "id"))
    responses: dict[int, list[int]] = {}
    for item_id, response_id in (
        Response.objects.filter(item__project=project).order_by("item", "index").values_list("item_id", "id")
    ):
        responses.setdefault(item_id, []).append(response_id)
    parsed = [json.loads(line) for line in votes.read_text().splitlines()]
    users = _annotators(project, {row["annotator"] for row in parsed})
    return items, responses, parsed, users


def _floor_rows(project, votes: Path) -> dict:
    """The task and judgment rows Arbiter writes for these votes, as COPY text with their ids taken from the
    tables' sequences, built before the clock starts."""
    from django.db import connection
    from django.utils import timezone

    from annotate.models import Judgment, Task
    from annotate.sql import _copy_text

    items, responses, parsed, users = _floor_inputs(project, votes)
    now = _copy_text(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('annotate_task', 'id')) FROM generate_series(1, %s)", [len(parsed)]
        )
        task_ids = [r[0] for r in cursor.fetchall()]
    tasks, judgments, counts = [], [], {}
    for row, task_id in zip(parsed, task_ids):
        item_id, user_id = items[row["item"]], users[row["annotator"]]
        winner = row["winner"]
        order = json.dumps(responses[item_id])
        tasks.append(f"{task_id}\t{project.pk}\t{item_id}\t{user_id}\t{order}\tdone\t{now}\t{now}\t{now}\t\n")
        outcome, winner_id = ("tie", "\\N") if winner is None else ("win", responses[item_id][winner])
        strength = row.get("strength", "\\N")
        judgments.append(
            f"{project.pk}\t{item_id}\t{task_id}\t{user_id}\t{outcome}\t{winner_id}\t{strength}\t{{}}\t\t\\N\timport:{item_id}\timport\t\\N\tt\t{now}\n"
        )
        counts[item_id] = counts.get(item_id, 0) + 1
    fields = {
        "task": [
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
        ],
        "judgment": [
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
        ],
    }
    # The floor must write every column Arbiter writes: a field added to either model fails here.
    for model, name in ((Task, "task"), (Judgment, "judgment")):
        missing = {f.column for f in model._meta.concrete_fields} - set(fields[name]) - {"id"}
        if missing:
            raise SystemExit(f"bench/import_votes.py does not know {model.__name__}.{', '.join(sorted(missing))}")
    return {"tasks": "".join(tasks), "judgments": "".join(judgments), "counts": counts, "fields": fields}


def _floor_write(connection, rows: dict) -> int:
    """COPY of the prepared rows, the items' counts, the commit (with its deferred foreign-key checks)."""
    from django.db import transaction

    from annotate import sql as bulk

    with transaction.atomic():
        with connection.cursor() as cursor:
            for table, name in (("annotate_task", "tasks"), ("annotate_judgment", "judgments")):
                columns = ", ".join(rows["fields"][table.removeprefix("annotate_")])
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    copy.write(rows[name])
        bulk.add_judgment_counts(rows["counts"])
    return sum(rows["counts"].values())


def _sqlite_floor_rows(project, votes: Path) -> dict:
    """SQLite has no COPY: the floor is one executemany of the same rows, built before the clock."""
    from django.utils import timezone

    items, responses, parsed, users = _floor_inputs(project, votes)
    now = timezone.now().isoformat(sep=" ")
    tasks, judgments, counts = [], [], {}
    for task_id, row in enumerate(parsed, start=1):
        item_id, user_id = items[row["item"]], users[row["annotator"]]
        winner = row["winner"]
        tasks.append((task_id, project.pk, item_id, user_id, json.dumps(responses[item_id]), "done", now, now, now, ""))
        outcome, winner_id = ("tie", None) if winner is None else ("win", responses[item_id][winner])
        judgments.append(
            (
                project.pk,
                item_id,
                task_id,
                user_id,
                outcome,
                winner_id,
                row.get("strength"),
                "{}",
                "",
                None,
                f"import:{item_id}",
                "import",
                None,
                True,
                now,
            )
        )
        counts[item_id] = counts.get(item_id, 0) + 1
    return {"tasks": tasks, "judgments": judgments, "counts": counts}


def _sqlite_floor_write(connection, rows: dict) -> int:
    from django.db import transaction

    from annotate import sql as bulk

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO annotate_task (id, project_id, item_id, annotator_id, display_order, status, leased_at, "
                "lease_expires_at, done_at, skip_reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows["tasks"],
            )
            cursor.executemany(
                "INSERT INTO annotate_judgment (project_id, item_id, task_id, annotator_id, outcome, winner_id, strength, "
                "data, text, duration_ms, idempotency_key, source, supersedes_id, is_current, created_at) VALUES "
                f"({', '.join(['%s'] * 15)})",
                rows["judgments"],
            )
        bulk.add_judgment_counts(rows["counts"])
    return sum(rows["counts"].values())


def _child(url: str, mode: str, votes: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--url", url, "--votes", str(votes)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- main --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each of A and B (interleaved)")
    parser.add_argument("--only", choices=["postgresql", "sqlite"])
    parser.add_argument("--child", choices=["arbiter", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--votes", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.url, args.child, args.votes)))
        return 0

    RESULTS.mkdir(parents=True, exist_ok=True)
    sizes = {"postgresql": 10_000 if args.quick else 100_000, "sqlite": 2_000 if args.quick else 10_000}
    urls = {"postgresql": PG_URL, "sqlite": SQLITE_URL}
    table = []
    for vendor in [args.only] if args.only else ["postgresql", "sqlite"]:
        votes = RESULTS / f"votes-{vendor}.jsonl"
        log(f"\n{vendor}: preparing")
        _prepare_in_child(urls[vendor], sizes[vendor], votes)
        runs = {"arbiter": [], "floor": []}
        for r in range(args.repeat):
            for mode in ("arbiter", "floor"):
                result = _child(urls[vendor], mode, votes)
                if result["created"] != sizes[vendor] * OVERLAP or result["stored"] != result["created"]:
                    raise SystemExit(f"{mode} stored {result['stored']} of {sizes[vendor] * OVERLAP} votes")
                runs[mode].append(result)
                log(
                    f"  run {r + 1} {mode:8} {result['seconds']:7.2f} s  {result['created'] / result['seconds']:>10,.0f} votes/s  peak RSS {result['rss_mb']:,.0f} MB"
                )
        a = statistics.median(x["seconds"] for x in runs["arbiter"])
        b = statistics.median(x["seconds"] for x in runs["floor"])
        n = sizes[vendor] * OVERLAP
        table.append((vendor, n, a, n / a, b, a / b, max(x["rss_mb"] for x in runs["arbiter"]), TARGETS[vendor]))
        votes.unlink(missing_ok=True)

    log(
        "\nimport_judgments of pairwise votes (median of the runs; B = the same rows' bulk write alone: COPY on PostgreSQL, executemany on SQLite)"
    )
    log(
        f"{'database':<11} {'votes':>10} {'A: Arbiter s':>13} {'votes/s':>10} {'B: bulk s':>10} {'A/B':>6} {'peak RSS MB':>12} {'target s':>9}  met"
    )
    for vendor, n, a, rate, b, ratio, rss, target in table:
        met = "yes" if a < target and (vendor != "postgresql" or ratio <= 5) else "no"
        log(
            f"{vendor:<11} {n:>10,} {a:>13.2f} {rate:>10,.0f} {b:>10.2f} {ratio:>6.2f} {rss:>12,.0f} {target:>9.0f}  {met}"
        )
    (RESULTS / "import_votes.json").write_text(json.dumps(table, indent=1))
    return 0


def _prepare_in_child(url: str, n_items: int, votes: Path) -> None:
    proc = subprocess.run(
        [sys.executable, __file__, "--prepare-child", url, str(n_items), str(votes)], cwd=ROOT, check=False
    )
    if proc.returncode:
        raise SystemExit("preparing the database failed")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--prepare-child"]:
        prepare(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
