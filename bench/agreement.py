#!/usr/bin/env python
"""Agreement benchmark: every agreement number of a pairwise project with a million judgments.

What it does:

1. Drops and recreates its own PostgreSQL database (``arbiter_bench_agreement``) and migrates it.
2. Bulk-loads, with COPY, one pairwise project: 100,000 items (2 responses each), 1,000 annotators (users and
   memberships), and 10 tasks with one current judgment each per item — 1,000,000 judgments (``--quick``:
   10,000 items, 100,000 judgments). The rows are what the app writes: tasks done with a random display order,
   judgments referring to responses by id, outcome win / tie / both_bad with a strength for wins. Votes come
   from annotators of known accuracy (0.55–0.95), some with a planted preference for the first-shown response.
3. Times, on that database: the read of the vote frame (``agreement.pairwise_vote_frame``, one ORM query),
   percent agreement, Fleiss' κ, Krippendorff's α (nominal), Dawid-Skene as the product runs it (the default
   ``dawid_skene`` call: SQUAREM-accelerated EM to its fixed point or the cap; the row says how many EM steps
   and whether it converged) and their total
   (target: under 5 s); then, for reference, Krippendorff's α on the signed strength scale, Cohen's κ for
   every pair of annotators and ``agreement.summary`` end to end; and crowd-kit's ``DawidSkene`` and the
   ``krippendorff`` package's ``alpha`` on the same in-memory data.
4. Prints a table, checks the fast numbers against the reference libraries, and writes the results as JSON
   under bench/results/ (git-ignored).

    .venv/bin/python bench/agreement.py            # 1,000,000 judgments
    .venv/bin/python bench/agreement.py --quick    # 100,000 judgments
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_SERVER = PG_ADMIN_URL.rsplit("/", 1)[0]
DB_NAME = "arbiter_bench_agreement"

TARGET_TOTAL_S = 5.0
N_ANNOTATORS = 1000
OVERLAP = 10


def log(msg: str = "") -> None:
    print(msg, flush=True)


def recreate_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(name: str) -> None:
    # DATABASE_URL must be set before django.setup(): settings read it once.
    os.environ["DATABASE_URL"] = f"{PG_SERVER}/{name}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


# --- synthetic votes ---------------------------------------------------------------------------------------


def synthetic_votes(n_items: int, seed: int = 7):
    """Votes on ``n_items`` items by OVERLAP distinct annotators each, as numpy arrays (positions, not ids).

    Each item has a better response (0 or 1, index in the item). An annotator with accuracy a picks the better
    one with probability a among their wins; 10% of votes are ties and 4% "both bad"; strength 0–3. A fifth
    of the annotators, when wrong, always pick the response shown first (a planted position bias).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    accuracy = rng.uniform(0.55, 0.95, N_ANNOTATORS)
    biased = rng.random(N_ANNOTATORS) < 0.2
    n = n_items * OVERLAP
    item = np.repeat(np.arange(n_items), OVERLAP)
    # OVERLAP distinct annotators per item: start + stride·j mod N with the stride coprime to N.
    strides = np.array([s for s in range(1, N_ANNOTATORS) if np.gcd(s, N_ANNOTATORS) == 1])
    start = rng.integers(0, N_ANNOTATORS, n_items)
    stride = rng.choice(strides, n_items)
    annotator = (
        np.repeat(start, OVERLAP) + np.repeat(stride, OVERLAP) * np.tile(np.arange(OVERLAP), n_items)
    ) % N_ANNOTATORS
    better = rng.integers(0, 2, n_items)[item]
    first = rng.integers(0, 2, n)  # index (0/1) of the response shown first
    u = rng.random(n)
    outcome = np.where(u < 0.10, 1, np.where(u < 0.14, 2, 0))  # 0 win, 1 tie, 2 both bad
    correct = rng.random(n) < accuracy[annotator]
    wrong_pick = np.where(biased[annotator], first, 1 - better)
    winner = np.where(correct, better, wrong_pick)
    strength = rng.integers(0, 4, n)
    return {
        "item": item,
        "annotator": annotator,
        "first": first,
        "outcome": outcome,
        "winner": winner,
        "strength": strength,
        "accuracy": accuracy,
    }


# --- COPY loading ------------------------------------------------------------------------------------------


def _copy_frame(cur, table: str, frame) -> None:
    """COPY a DataFrame into ``table`` (its columns named as the table's) through CSV."""
    t = time.perf_counter()
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
    t_csv = time.perf_counter() - t
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as copy:
        copy.write(buffer.getvalue())
    log(f"  {table}: {len(frame):,} rows (CSV {t_csv:.1f} s, COPY {time.perf_counter() - t - t_csv:.1f} s)")


def _fill_defaults(model, frame, connection) -> None:
    """Give every column the frame lacks its model default, so the rows stay valid if fields are added."""
    for field in model._meta.concrete_fields:
        if field.column in frame.columns or field.primary_key:
            continue
        value = field.get_default()  # the declared default, "" for text fields without one, else None
        if value is None and not field.null:
            raise RuntimeError(f"{model.__name__}.{field.name} has no default: teach bench/agreement.py about it")
        frame[field.column] = json.dumps(value) if isinstance(value, (dict, list)) else value


def _ids(cur, table: str, n: int):
    import numpy as np

    cur.execute(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, %s)", [n])
    return np.array([row[0] for row in cur.fetchall()], dtype=np.int64)


def load(n_items: int):
    """Create the project and COPY items, responses, users, memberships, tasks and judgments."""
    import numpy as np
    import pandas as pd
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotate import actions
    from annotate.models import Item, Judgment, Kind, Membership, Response, Role, Round, Task, make_pseudonym

    User = get_user_model()
    votes = synthetic_votes(n_items)
    now = timezone.now().isoformat()
    project = actions.create_project(
        slug="bench-agreement", kind=Kind.PAIRWISE, overlap=OVERLAP, name="Agreement bench"
    )
    with transaction.atomic(), connection.cursor() as wrapper:
        cur = wrapper.cursor
        # The rows are consistent by construction; checking each foreign key row by row would take most of
        # the load time (replica mode skips those triggers; it needs the superuser the admin URL names).
        cur.execute("SET LOCAL session_replication_role = replica")
        round_ = Round.objects.create(project=project, number=1, source={"file": "bench/agreement.py (synthetic)"})

        user_ids = _ids(cur, User._meta.db_table, N_ANNOTATORS)
        users = pd.DataFrame(
            {
                "id": user_ids,
                "username": [f"bench-ann-{i:04d}" for i in range(N_ANNOTATORS)],
                "password": "!unusable",
                "is_superuser": False,
                "first_name": "",
                "last_name": "",
                "email": "",
                "is_staff": False,
                "is_active": True,
                "date_joined": now,
            }
        )
        _fill_defaults(User, users, connection)
        _copy_frame(cur, User._meta.db_table, users)
        members = pd.DataFrame(
            {
                "project_id": project.id,
                "user_id": user_ids,
                "role": Role.ANNOTATOR,
                "status": Membership.Status.ACTIVE,
                "pseudonym": [make_pseudonym(project.id, int(u)) for u in user_ids],
                "created_at": now,
            }
        )
        _fill_defaults(Membership, members, connection)
        _copy_frame(cur, Membership._meta.db_table, members)

        item_ids = _ids(cur, Item._meta.db_table, n_items)
        index = np.arange(n_items)
        items = pd.DataFrame(
            {
                "id": item_ids,
                "project_id": project.id,
                "round_id": round_.id,
                "external_id": [f"item-{i:06d}" for i in index],
                "prompt": [json.dumps([{"role": "user", "content": f"Question {i}"}]) for i in index],
                "metadata": "{}",
                "content_hash": [f"{i:064x}" for i in index],
                "purpose": Item.Purpose.NORMAL,
                "gold": None,
                "open_slots": 0,
                "n_judgments": OVERLAP,
                "created_at": now,
            }
        )
        _fill_defaults(Item, items, connection)
        _copy_frame(cur, Item._meta.db_table, items)

        response_ids = _ids(cur, Response._meta.db_table, 2 * n_items).reshape(n_items, 2)
        responses = pd.DataFrame(
            {
                "id": response_ids.ravel(),
                "item_id": np.repeat(item_ids, 2),
                "index": np.tile([0, 1], n_items),
                "text": [f"Answer {k} to question {i}." for i in index for k in (0, 1)],
                "model_name": np.tile(["model-a", "model-b"], n_items),
                "metadata": "{}",
            }
        )
        _fill_defaults(Response, responses, connection)
        _copy_frame(cur, Response._meta.db_table, responses)

        n = len(votes["item"])
        item_of = item_ids[votes["item"]]
        shown_first = response_ids[votes["item"], votes["first"]]
        shown_second = response_ids[votes["item"], 1 - votes["first"]]
        task_ids = _ids(cur, Task._meta.db_table, n)
        tasks = pd.DataFrame(
            {
                "id": task_ids,
                "project_id": project.id,
                "item_id": item_of,
                "annotator_id": user_ids[votes["annotator"]],
                "display_order": "["
                + pd.Series(shown_first).astype(str)
                + ", "
                + pd.Series(shown_second).astype(str)
                + "]",
                "status": Task.Status.DONE,
                "leased_at": now,
                "lease_expires_at": now,
                "done_at": now,
                "skip_reason": "",
            }
        )
        _fill_defaults(Task, tasks, connection)
        _copy_frame(cur, Task._meta.db_table, tasks)

        outcome_names = np.array([Judgment.Outcome.WIN, Judgment.Outcome.TIE, Judgment.Outcome.BOTH_BAD], dtype=object)
        win = votes["outcome"] == 0
        winner = pd.array(np.where(win, response_ids[votes["item"], votes["winner"]], 0), dtype="Int64")
        winner[~win] = pd.NA
        strength = pd.array(votes["strength"], dtype="Int64")
        strength[~win] = pd.NA
        judgments = pd.DataFrame(
            {
                "project_id": project.id,
                "item_id": item_of,
                "task_id": task_ids,
                "annotator_id": user_ids[votes["annotator"]],
                "outcome": outcome_names[votes["outcome"]],
                "winner_id": winner,
                "strength": strength,
                "data": "{}",
                "text": "",
                "duration_ms": 5000,
                "idempotency_key": "bench-" + pd.Series(task_ids).astype(str),
                "source": Judgment.Source.API,
                "supersedes_id": None,
                "is_current": True,
                "created_at": now,
            }
        )
        _fill_defaults(Judgment, judgments, connection)
        _copy_frame(cur, Judgment._meta.db_table, judgments)
    t = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    log(f"  VACUUM ANALYZE {time.perf_counter() - t:.1f} s")
    return project, votes


# --- timing ------------------------------------------------------------------------------------------------


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(best seconds over ``repeat`` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best, result


def main(quick: bool = False, *, skip_references: bool = False, repeat: int = 3, db_name: str = DB_NAME) -> int:
    n_items = 10_000 if quick else 100_000
    t0 = time.perf_counter()
    recreate_database(db_name)
    setup_django(db_name)
    log(f"database {db_name} recreated and migrated in {time.perf_counter() - t0:.1f} s")

    import numpy as np
    import pandas as pd

    from annotate import agreement, reliability

    t = time.perf_counter()
    project, votes = load(n_items)
    n_judgments = len(votes["item"])
    log(
        f"loaded {n_items:,} items, {2 * n_items:,} responses, {N_ANNOTATORS:,} annotators, {n_judgments:,} tasks and "
        f"judgments with COPY in {time.perf_counter() - t:.1f} s"
    )

    rows: list[tuple[str, float, str]] = []
    load_before = os.getloadavg()[0]
    read_s, frame = timed(agreement.pairwise_vote_frame, project, repeat=repeat)
    assert len(frame) == n_judgments, (len(frame), n_judgments)
    normal = frame[frame["is_gold"] == 0]
    labels = pd.DataFrame(
        {"item": normal["item"], "annotator": normal["annotator"], "label": agreement.pairwise_categories(normal)}
    )
    strength = pd.DataFrame(
        {"item": normal["item"], "annotator": normal["annotator"], "label": agreement.signed_strength(normal)}
    )
    strength = strength[strength["label"].notna()]
    prep_s, _ = timed(
        lambda: pd.DataFrame(
            {"item": normal["item"], "annotator": normal["annotator"], "label": agreement.pairwise_categories(normal)}
        ),
        repeat=repeat,
    )
    pa_s, pa = timed(agreement.percent_agreement, labels, repeat=repeat)
    fk_s, fk = timed(agreement.fleiss_kappa, labels, repeat=repeat)
    ka_s, ka = timed(agreement.krippendorff_alpha, labels, "nominal", repeat=repeat)
    ds_s, ds = timed(reliability.dawid_skene, labels, repeat=repeat)  # the default call, as every page makes it
    total = read_s + prep_s + pa_s + fk_s + ka_s + ds_s
    rows += [
        ("database read (vote frame, 1 query)", read_s, f"{len(frame):,} rows"),
        ("labels from votes", prep_s, "reference/other/tie/both_bad"),
        ("percent agreement", pa_s, f"{pa:.4f}"),
        ("Fleiss' kappa", fk_s, f"{fk:.4f}"),
        ("Krippendorff's alpha (nominal)", ka_s, f"{ka:.4f}"),
        (
            f"Dawid-Skene ({ds.n_iter} EM steps, {'converged' if ds.converged else 'NOT converged: cap'})",
            ds_s,
            f"accuracy corr {np.corrcoef(votes['accuracy'][_bench_positions(ds.accuracy.index)], ds.accuracy)[0, 1]:.3f}",
        ),
        ("TOTAL", total, f"target < {TARGET_TOTAL_S:.0f} s: {'MET' if total < TARGET_TOTAL_S else 'MISSED'}"),
    ]
    extra: list[tuple[str, float, str]] = []
    ks_s, ks = timed(agreement.krippendorff_alpha, strength, "ordinal", repeat=repeat)
    extra.append(("Krippendorff's alpha (ordinal, signed strength)", ks_s, f"{ks:.4f}"))
    ck_s, ck = timed(agreement.cohen_kappa_pairs, labels, repeat=1)
    extra.append(("Cohen's kappa, every annotator pair", ck_s, f"{len(ck):,} pairs"))
    sm_s, sm = timed(agreement.summary, project, repeat=1)
    json.dumps(sm, allow_nan=False)
    extra.append(("summary() end to end (all of the above + more)", sm_s, f"{len(sm['annotators'])} annotators"))

    references: list[tuple[str, float, str]] = []
    checks: list[str] = []
    if not skip_references:
        import krippendorff
        from crowdkit.aggregation import DawidSkene

        item_code, _ = pd.factorize(labels["item"])
        value_counts = np.zeros((item_code.max() + 1, 4))
        np.add.at(value_counts, (item_code, labels["label"].to_numpy()), 1)
        kp_s, kp = timed(krippendorff.alpha, value_counts=value_counts, level_of_measurement="nominal")
        references.append(("krippendorff.alpha (nominal, from value counts)", kp_s, f"{kp:.4f}; ours {ka_s:.3f} s"))
        checks.append(f"Krippendorff nominal |ours - package| = {abs(kp - ka):.1e}")
        crowd = labels.rename(columns={"item": "task", "annotator": "worker"})
        # crowd-kit with its early stop disabled, for as many plain EM iterations as our fit took EM steps.
        cds_s, cds = timed(lambda: DawidSkene(n_iter=ds.n_iter, tol=-np.inf).fit(crowd))
        references.append(
            (
                f"crowd-kit DawidSkene ({ds.n_iter} plain iterations)",
                cds_s,
                f"ours {ds_s:.3f} s, x{cds_s / ds_s:.0f} faster",
            )
        )
        same = (cds.labels_.reindex(ds.labels.index).to_numpy() == ds.labels.to_numpy()).mean()
        diff = np.abs(
            cds.probas_.reindex(index=ds.posteriors.index, columns=ds.posteriors.columns).to_numpy()
            - ds.posteriors.to_numpy()
        ).max()
        checks.append(
            f"Dawid-Skene: same labels as crowd-kit ({ds.n_iter} plain iterations) on {same:.2%} of items, max |posterior difference| {diff:.1e}"
        )

    log("")
    log(
        f"Agreement benchmark: {n_judgments:,} pairwise judgments, {N_ANNOTATORS:,} annotators, {n_items:,} items "
        f"(overlap {OVERLAP}); PostgreSQL; {os.cpu_count()} cores; best of {repeat} runs; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes share these cores)"
    )
    width = max(len(r[0]) for r in rows + extra + references) + 2
    head = f"{'step':<{width}} {'seconds':>8}  result"
    log(head)
    log("-" * (len(head) + 40))
    for name, seconds, note in rows:
        if name == "TOTAL":
            log("-" * (len(head) + 40))
        log(f"{name:<{width}} {seconds:>8.3f}  {note}")
    log("")
    log("Also measured (not in the total):")
    for name, seconds, note in extra + references:
        log(f"{name:<{width}} {seconds:>8.3f}  {note}")
    for line in checks:
        log(f"check: {line}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"agreement-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps(
            {
                "judgments": n_judgments,
                "dawid_skene": ds.convergence(),
                "rows": rows,
                "extra": extra,
                "references": references,
                "checks": checks,
            },
            indent=1,
        )
    )
    log(f"results written to {out.relative_to(ROOT)}")
    return 0


def _bench_positions(user_ids):
    """Positions (0..N-1) of bench annotators from their user ids, to line estimates up with the true accuracy."""
    import numpy as np
    from django.contrib.auth import get_user_model

    names = dict(get_user_model().objects.filter(id__in=list(user_ids)).values_list("id", "username"))
    return np.array([int(names[u].rsplit("-", 1)[1]) for u in user_ids])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/agreement.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 judgments instead of 1,000,000")
    parser.add_argument("--skip-references", action="store_true", help="do not time crowd-kit and krippendorff")
    parser.add_argument("--repeat", type=int, default=3, help="time each step this many times, keep the best")
    parser.add_argument(
        "--db-name", default=DB_NAME, help="the database to (re)create, on the server of BENCH_PG_ADMIN_URL"
    )
    args, _unknown = parser.parse_known_args()
    sys.exit(main(args.quick, skip_references=args.skip_references, repeat=args.repeat, db_name=args.db_name))
