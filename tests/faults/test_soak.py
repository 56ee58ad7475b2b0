"""Nothing lost, nothing twice: annotators with faults against a real gunicorn, checked from the database.

The short version of bench/soak.py (same load, same checks): on PostgreSQL 50 annotators for 20 s plus the
drain; on SQLite, which serialises every write, 20 annotators for 8 s. Each loops next-task → submit with double
submits of one key on two connections, replays, submits whose connection is dropped before the answer (then
retried with the same key) and annotators who vanish mid-task past the lease. Afterwards: every acknowledged
judgment stored exactly once, no unacknowledged row, no item over its overlap, every abandoned item finished,
no 5xx.
"""

import pytest
from django.db import connection, connections

from bench.soak import SoakConfig, create_soak_project, print_report, run_soak, summary, verify

pytestmark = pytest.mark.django_db(transaction=True)

SHAPES = {
    # annotators, items at the start (more are added as the open ones run low), main phase s, lease s (short:
    # vanished annotators' tasks expire during the run)
    "postgresql": {"annotators": 50, "items": 100, "seconds": 20.0, "lease": 4},
    "sqlite": {"annotators": 20, "items": 40, "seconds": 8.0, "lease": 3},
}
FAULTS = [
    "double submit (same key, two connections at once)",
    "connection dropped before the answer, then retried",
    "replay after the answer (same key)",
    "vanished mid-task",
]


def test_annotators_with_faults_lose_nothing_and_store_nothing_twice(gunicorn_server, capsys):
    shape = SHAPES[connection.vendor]
    project, annotators = create_soak_project("soak", shape["items"], shape["annotators"], shape["lease"])
    # More faults than the bench's defaults, and the first annotators start with one each: the run is short, and
    # every kind must happen, whatever the machine's speed.
    config = SoakConfig(
        seconds=shape["seconds"],
        drain_seconds=25.0,
        lease_seconds=shape["lease"],
        p_vanish=0.03,
        p_double=0.08,
        p_replay=0.05,
        p_drop=0.08,
        seed=7,
        forced_faults=True,
        top_up_below=1.0,
        top_up_until=0.75,
    )
    with gunicorn_server() as server:
        connections.close_all()
        rec = run_soak(server.base, project, annotators, config)
        assert server.proc.poll() is None, server.log_tail()
    check = verify(project, rec)
    with capsys.disabled():
        print_report(summary(rec, check, len(annotators)))

    assert check["failures"] == {}, (check["failures"], check["abandoned_unfinished_detail"], rec.errors, rec.timeline)
    assert check["acknowledged"] == check["acknowledged_found"] == check["judgments_in_project"] >= 100
    # The faults really happened, and the server saw the retries: replays and retried drops answered 200.
    assert all(rec.faults[kind] >= 1 for kind in FAULTS) and rec.faults["late submit after the lease expired"] >= 1, (
        rec.faults
    )
    assert sum(rec.faults.values()) >= 10, rec.faults
    assert rec.statuses["submit 200"] >= rec.faults["replay after the answer (same key)"]
    assert check["abandoned_items"] >= 1 and check["abandoned_items_unfinished"] == 0
    assert rec.project_complete and check["items_complete"] == check["items"] >= shape["items"]
    # Only late submits are refused (409: their item was completed by others), nothing else.
    assert all(reason.startswith("409 ") for reason in rec.refused), rec.refused
