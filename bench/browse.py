#!/usr/bin/env python
"""Data browser benchmark: the researcher's list, filters and search at 100,000 items on PostgreSQL.

A fresh database gets 100,000 pairwise items (the HH-RLHF test splits of ../shared/data/, cycled under new ids,
when the folder is there; else generated text), 3 votes each (a third of the items split), and a flag on one item
in a hundred. Then each query is answered as a researcher's browser asks it: A, the items page's table as htmx
fetches it on each filter change (``/p/<slug>/items/``, 50 rows: the view, the statistics refresh, the query, the
count and the template), and the same through the API (``GET /api/projects/<slug>/items/?page_size=50``, full texts
as JSON), both with Django's test client in-process (no HTTP server); interleaved with a baseline B that answers the
same question without the browser's indexes and denormalised share (the search as ILIKE over the prompt and
response texts; agreement as a GROUP BY over the votes), so the figures are measured side by side on this noisy
machine.

The table: per query, A's median and p95 in ms, the API's p95, B's, and whether A's p95 is under the 100 ms target. Also the cost
a read pays after 1,000 new votes (the refresh of their items' shares).

    .venv/bin/python bench/browse.py            # 100,000 items, 30 rounds per query
    .venv/bin/python bench/browse.py --quick    # 20,000 items, 10 rounds
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data" / "hh_rlhf_test"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DB = "arbiter_bench_browse"
PG_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + DB
TARGET_MS = 100.0
SLUG = "browse"


def log(msg: str = "") -> None:
    print(msg, flush=True)


def setup() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    os.environ["DATABASE_URL"] = PG_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("ARBITER_IMPORT_MAX_ROWS", "1000000")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def texts(n: int) -> tuple[list[tuple[str, str, str]], str]:
    """``n`` (prompt, response a, response b) and where they come from."""
    rows = []
    if DATA.is_dir():
        for path in sorted(DATA.glob("*.jsonl.gz")):
            with gzip.open(path, "rt") as lines:
                for line in lines:
                    row = json.loads(line)
                    chosen, rejected = row["chosen"], row["rejected"]
                    cut = chosen.rfind("\n\nAssistant:")
                    prompt = chosen[:cut].replace("\n\nHuman:", "\n").strip()
                    rows.append(
                        (prompt, chosen[cut + 12 :].strip(), rejected[rejected.rfind("\n\nAssistant:") + 12 :].strip())
                    )
        source = f"HH-RLHF test splits ({len(rows):,} rows, cycled)"
    else:
        rng = random.Random(3)
        words = [f"w{i}" for i in range(20000)]
        for _ in range(n):
            rows.append(tuple(" ".join(rng.choices(words, k=40)) for _ in range(3)))
        source = "generated text (../shared/data is absent)"
    return [rows[i % len(rows)] for i in range(n)], source


def populate(n: int) -> tuple[object, object, str]:

    from annotate import actions
    from annotate.imports import ParsedItem, ParsedVote
    from annotate.models import Flag, Role, Task

    project = actions.create_project(slug=SLUG, kind="pairwise", overlap=3)
    researcher = actions.add_member(project, "researcher", Role.RESEARCHER, "a-long-bench-password").user
    rows, source = texts(n)
    t = time.perf_counter()
    actions.import_items(
        project,
        [
            ParsedItem(
                line=i + 1,
                prompt=[{"role": "user", "content": p}],
                external_id=f"item-{i}",
                responses=[{"text": a, "model": "a", "metadata": {}}, {"text": b, "model": "b", "metadata": {}}],
            )
            for i, (p, a, b) in enumerate(rows)
        ],
    )
    log(f"  {n:,} items imported in {time.perf_counter() - t:.1f} s ({source})")
    rng = random.Random(7)
    votes = []
    for i in range(n):
        split = i % 3 == 0
        for k, name in enumerate(rng.sample(range(50), 3)):
            winner = (1 if k == 2 else 0) if split else 0
            votes.append(
                ParsedVote(line=len(votes) + 1, item=f"item-{i}", annotator=f"rater-{name}", payload={"winner": winner})
            )
    t = time.perf_counter()
    actions.import_judgments(project, votes)
    log(f"  {len(votes):,} votes imported in {time.perf_counter() - t:.1f} s")
    tasks = list(
        Task.objects.filter(project=project).order_by("id").values_list("id", "item_id", "annotator_id")[::300]
    )
    Flag.objects.bulk_create(
        Flag(project=project, item_id=item, task_id=task, annotator_id=user, category="broken", note="garbled")
        for task, item, user in tasks
    )
    t = time.perf_counter()
    actions.refresh_item_stats(project)
    log(f"  first refresh of every item's share: {time.perf_counter() - t:.2f} s")
    # What autovacuum does after a bulk import (statistics and the visibility map), done now rather than awaited.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return project, researcher, source


def baseline(project, params: dict):
    """The same question without the browser's indexes and denormalised share."""
    from django.db import connection

    with connection.cursor() as cursor:
        if "q" in params:
            like = f"%{params['q']}%"
            cursor.execute(
                "SELECT count(*) FROM annotate_item i WHERE i.project_id = %s AND (i.prompt::text ILIKE %s OR EXISTS "
                "(SELECT 1 FROM annotate_response r WHERE r.item_id = i.id AND r.text ILIKE %s))",
                [project.pk, like, like],
            )
            cursor.execute(
                "SELECT i.id FROM annotate_item i WHERE i.project_id = %s AND (i.prompt::text ILIKE %s OR EXISTS "
                "(SELECT 1 FROM annotate_response r WHERE r.item_id = i.id AND r.text ILIKE %s)) ORDER BY i.id LIMIT 100",
                [project.pk, like, like],
            )
        else:
            share = (
                "SELECT item_id, max(c)::float / sum(c) AS share FROM (SELECT item_id, count(*) c FROM annotate_judgment "
                "WHERE project_id = %s AND is_current GROUP BY item_id, outcome, winner_id) x GROUP BY item_id"
            )
            order = "share, item_id" if params.get("sort") == "disagreement" else "item_id"
            where = "WHERE share < 1" if params.get("agreement") == "split" else ""
            cursor.execute(f"SELECT count(*) FROM ({share}) s {where}", [project.pk])
            cursor.execute(f"SELECT item_id FROM ({share}) s {where} ORDER BY {order} LIMIT 100", [project.pk])
        return cursor.fetchall()


QUERIES = [
    ("first page", {}),
    ("split items", {"agreement": "split"}),
    ("most disagreement first", {"sort": "disagreement"}),
    ("flagged", {"flagged": "1"}),
    ("search: rare word", {"q": "SEARCH_RARE"}),
    ("search: common word", {"q": "SEARCH_COMMON"}),
    ("search + split", {"q": "SEARCH_RARE", "agreement": "split"}),
    ("page 500", {"page": "500"}),
]
BASELINED = {"split items", "most disagreement first", "search: rare word", "search: common word"}


def words_to_search(source: str) -> tuple[str, str]:
    return ("volcano", "help") if source.startswith("HH") else ("w19000", "w1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--items", type=int)
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    n = args.items or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (10 if args.quick else 30)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log(f"PostgreSQL: preparing {n:,} items")
    setup()
    from django.test import Client
    from django.urls import reverse

    project, researcher, source = populate(n)
    rare, common = words_to_search(source)
    client = Client()
    client.force_login(researcher)
    page_url, api_url = reverse("items", args=[SLUG]), reverse("api-items", args=[SLUG])
    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "items"}
    table = []
    for name, params in QUERIES:
        params = {k: {"SEARCH_RARE": rare, "SEARCH_COMMON": common}.get(v, v) for k, v in params.items()}
        a_times, api_times, b_times, count = [], [], [], None
        for _ in range(rounds):
            t = time.perf_counter()
            response = client.get(page_url, params, **htmx)
            a_times.append((time.perf_counter() - t) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{name}: {response.status_code} {response.content[:300]!r}")
            t = time.perf_counter()
            response = client.get(api_url, {**params, "page_size": "50"})
            api_times.append((time.perf_counter() - t) * 1000)
            count = response.json()["count"]
            if name in BASELINED:
                t = time.perf_counter()
                baseline(project, params)
                b_times.append((time.perf_counter() - t) * 1000)
        row = (name, count, statistics.median(a_times), _p95(a_times), _p95(api_times))
        row += (statistics.median(b_times), _p95(b_times)) if b_times else (None, None)
        table.append(row)
        log(f"  {name:<26} {count:>8,} items  A p95 {row[3]:7.1f} ms  API p95 {row[4]:7.1f} ms")
    item = project.items.order_by("id")[n // 2]
    detail = []
    for _ in range(rounds):
        t = time.perf_counter()
        assert client.get(reverse("api-item", args=[item.pk])).status_code == 200
        detail.append((time.perf_counter() - t) * 1000)
    table.append(("one item with its votes", 1, statistics.median(detail), _p95(detail), _p95(detail), None, None))
    refresh = _refresh_cost(project)

    log(f"\nData browser on PostgreSQL, {n:,} items, {3 * n:,} votes, {source}; {rounds} rounds per query")
    log("A: the items page as htmx asks for it on each filter change (the table of 50: view, share refresh, query,")
    log("   count, template); API: GET /api/projects/<slug>/items/?page_size=50 (full prompt and response texts, JSON)")
    log("B: the same question without the browser's indexes: ILIKE search, agreement by GROUP BY over the votes")
    log(
        f"{'query':<26} {'matches':>9} {'A p50 ms':>9} {'A p95 ms':>9} {'API p95':>8} {'B p50 ms':>9} {'B p95 ms':>9}"
        f"  A p95 < {TARGET_MS:.0f} ms"
    )
    for name, count, a50, a95, api95, b50, b95 in table:
        b = f"{b50:>9.1f} {b95:>9.1f}" if b50 is not None else f"{'—':>9} {'—':>9}"
        log(f"{name:<26} {count:>9,} {a50:>9.1f} {a95:>9.1f} {api95:>8.1f} {b}  {'yes' if a95 < TARGET_MS else 'no'}")
    log(f"\nafter 1,000 new votes the next read refreshes their items' shares in {refresh:.1f} ms")
    (RESULTS / "browse.json").write_text(
        json.dumps({"items": n, "source": source, "table": table, "refresh_ms": refresh})
    )
    return 0


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def _refresh_cost(project) -> float:
    """1,000 new votes by a new annotator, then the time of the refresh the next read does."""
    from annotate import actions
    from annotate.imports import ParsedVote

    votes = [
        ParsedVote(line=i + 1, item=f"item-{i * 7}", annotator="late-rater", payload={"winner": 1}) for i in range(1000)
    ]
    actions.import_judgments(project, votes)
    t = time.perf_counter()
    actions.refresh_item_stats(project)
    return (time.perf_counter() - t) * 1000


if __name__ == "__main__":
    sys.exit(main())
