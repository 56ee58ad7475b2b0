#!/usr/bin/env python
"""Export benchmark: a million pairwise judgments (overlap 3) in PostgreSQL → TRL Parquet, majority vote.

1. Loads the project with COPY (bench/agreement.py's loader, at overlap 3: 333,334 items × 3 = 1,000,002
   judgments from 1,000 annotators; ``--quick``: a tenth).
2. Times PostgreSQL's own ``COPY (SELECT …) TO STDOUT`` of the same judgment rows: the physical floor, read
   with psycopg's ``Copy`` iterator (the reference of the targets) and, beside it, with the plain libpq loop
   the export itself uses (``sql.copy_out``).
3. Runs the export (``annotate.exports.export_to``, container parquet) in a child process and reports its
   time, judgments per second and the child's peak RSS (VmHWM, its own: not the loader's).

Targets (issue 5): within 3× COPY's time, never under 100,000 judgments/s, peak RSS under 500 MB.

    .venv/bin/python bench/export.py [--quick] [--db-name NAME] [--reuse]   # --reuse: the database a run loaded
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import agreement as loader  # bench/agreement.py: the COPY loader of a synthetic pairwise project

ROOT = Path(__file__).resolve().parent.parent
OVERLAP = 3
TARGET_RATIO = 3.0
TARGET_RATE = 100_000
TARGET_RSS_MB = 500


def child(db_name: str, slug: str, out: str) -> None:
    """Runs in its own process, so its peak RSS is the export's alone (plus Django's)."""
    loader.setup_django(db_name)
    from annotate.exports import ExportOptions, export_to
    from annotate.models import Project

    project = Project.objects.get(slug=slug)
    t = time.perf_counter()
    result = export_to(
        project, ExportOptions(format="trl", aggregate="majority", container="parquet", dedupe=True), Path(out)
    )
    seconds = time.perf_counter() - t
    print(
        json.dumps(
            {"seconds": seconds, "rows": result.counts["train"], "rss_mb": peak_rss_mb(), "hash": result.content_hash}
        )
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ``ru_maxrss`` does not: a child
    started by a parent that once held a gigabyte (this script, after loading the database) reports the
    parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_sql(project_id: int) -> str:
    return (
        "COPY (SELECT item_id, annotator_id, outcome, winner_id, strength FROM annotate_judgment "
        f"WHERE project_id = {int(project_id)} AND is_current) TO STDOUT"
    )


def copy_reference(project_id: int) -> tuple[float, int, int]:
    """Seconds, bytes and rows of COPY (SELECT …) TO STDOUT of the project's current judgments, read with
    psycopg's ``Copy`` iterator (the reference the targets are stated against)."""
    from django.db import connection

    sql = copy_sql(project_id)
    t = time.perf_counter()
    size = rows = 0
    with connection.cursor() as wrapper, wrapper.cursor.copy(sql) as copy:
        for block in copy:
            size += len(block)
            rows += bytes(block).count(b"\n")
    return time.perf_counter() - t, size, rows


def copy_raw(project_id: int) -> float:
    """Seconds of the same COPY read by ``sql.copy_out`` (libpq's loop, no Python per row): the floor."""
    from django.db import connection, transaction

    from annotate.sql import copy_out

    t = time.perf_counter()
    with transaction.atomic():
        copy_out(connection, copy_sql(project_id))
    return time.perf_counter() - t


def main(quick: bool = False, db_name: str = "arbiter_bench_export", reuse: bool = False) -> int:
    n_items = 33_334 if quick else 333_334
    loader.OVERLAP = OVERLAP
    if reuse:  # the database of a previous run, as it was loaded
        loader.setup_django(db_name)
        from annotate.models import Project

        project = Project.objects.get(slug="bench-agreement")
    else:
        print(f"Loading {n_items:,} items × overlap {OVERLAP} into {db_name} ...", flush=True)
        loader.recreate_database(db_name)
        loader.setup_django(db_name)
        t = time.perf_counter()
        project, _ = loader.load(n_items)
        print(f"  loaded in {time.perf_counter() - t:.0f} s", flush=True)
    from annotate.models import Judgment

    n_judgments = Judgment.objects.filter(project=project).count()
    copy_times = [copy_reference(project.id) for _ in range(3)]
    copy_s = min(c[0] for c in copy_times)
    raw_s = min(copy_raw(project.id) for _ in range(3))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trl.parquet"
        runs = []
        for _ in range(1 if quick else 2):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", "--db-name", db_name, "--slug", project.slug, "--out", str(out)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if proc.returncode:
                print(proc.stdout, proc.stderr, file=sys.stderr)
                return proc.returncode
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        import pyarrow.parquet as pq

        parquet_rows = pq.read_metadata(out).num_rows
    best = min(runs, key=lambda r: r["seconds"])
    rate = n_judgments / best["seconds"]
    ratio = best["seconds"] / copy_s
    rss = max(r["rss_mb"] for r in runs)
    print()
    print(f"Export of {n_judgments:,} pairwise judgments (overlap {OVERLAP}) → TRL Parquet, majority vote")
    print(f"{'':34}{'seconds':>10}{'judgments/s':>14}{'peak RSS MB':>13}")
    print(f"{'PostgreSQL COPY (SELECT …) TO':34}{copy_s:>10.2f}{n_judgments / copy_s:>14,.0f}{'':>13}")
    print(f"{'  same, read by libpq loop':34}{raw_s:>10.2f}{n_judgments / raw_s:>14,.0f}{'':>13}")
    print(f"{'Arbiter export (best of runs)':34}{best['seconds']:>10.2f}{rate:>14,.0f}{rss:>13.0f}")
    print()
    print(
        f"rows written: {best['rows']:,} (Parquet file: {parquet_rows:,}); hash {best['hash'][:16]}; runs: "
        + ", ".join(f"{r['seconds']:.2f} s" for r in runs)
    )
    print(
        f"target ≤ {TARGET_RATIO:.0f}× COPY: {ratio:.2f}× {'MET' if ratio <= TARGET_RATIO else 'MISSED'} "
        f"({best['seconds'] / raw_s:.2f}× the libpq-loop read); "
        f"≥ {TARGET_RATE:,}/s: {'MET' if rate >= TARGET_RATE else 'MISSED'}; "
        f"RSS < {TARGET_RSS_MB} MB: {'MET' if rss < TARGET_RSS_MB else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--db-name", default="arbiter_bench_export")
    parser.add_argument("--reuse", action="store_true", help="export the database a previous run loaded")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slug", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    os.chdir(ROOT)
    if args.child:
        child(args.db_name, args.slug, args.out)
        sys.exit(0)
    sys.exit(main(args.quick, args.db_name, args.reuse))
