"""PostgreSQL stopped and started again under load: 503 with a reason while it is down, recovery on its own, nothing
acknowledged lost.

The load of bench/soak.py (20 annotators, double submits, dropped connections, replays) against a real gunicorn;
2 s in, the cluster is stopped for 2 s (``pg_ctlcluster ... stop``, then ``start``). Every answer while it is down
must be a 503 with a reason (a 500 fails the test), clients retry with the same idempotency key, and once it is back
the persistent connections must heal by themselves (conn_health_checks): no 503 later than 5 s after the start,
and submits acknowledged again within 5 s.

This stops the shared PostgreSQL server for about two seconds (other sessions' connections break); the cluster is
started again in a ``finally`` whatever happens. PostgreSQL only: SQLite has no server to restart. On both
databases, a cheaper in-process test points the connection at nothing and checks the 503 answers themselves.
"""

import time

import pytest
from django.db import connection, connections
from django.test import Client

from bench.serve import free_port
from bench.soak import (
    SoakConfig,
    can_control_pg,
    create_soak_project,
    ensure_pg_running,
    print_report,
    run_soak,
    summary,
    verify,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_database_restart_answers_503_then_recovers_and_loses_nothing(gunicorn_server, capsys):
    if connection.vendor != "postgresql":
        pytest.skip("restarts the PostgreSQL server: runs on PostgreSQL only (SQLite has no server to restart)")
    if connection.settings_dict["HOST"] not in ("127.0.0.1", "localhost", "::1", ""):
        pytest.skip("the test database is not on this machine's PostgreSQL cluster, which is the one it can restart")
    if why := can_control_pg():
        pytest.skip(f"cannot restart PostgreSQL here: {why}")
    project, annotators = create_soak_project("restart", 400, 20, lease_seconds=60)
    # No vanishing annotators (a long lease), so no drain is needed: the load stops 12 s in, after the restart.
    config = SoakConfig(
        seconds=12.0,
        drain_seconds=0.0,
        lease_seconds=60,
        p_vanish=0.0,
        p_double=0.05,
        p_replay=0.03,
        p_drop=0.05,
        restart_at=2.0,
        down_seconds=2.0,
        recovery_grace=5.0,
        seed=11,
        top_up=False,
    )
    try:
        with gunicorn_server() as server:
            connections.close_all()  # this process's own connection is not to break mid-use
            rec = run_soak(server.base, project, annotators, config)
            assert server.proc.poll() is None, server.log_tail()
    finally:
        ensure_pg_running()
        connections.close_all()
    check = verify(project, rec)
    s = summary(rec, check, len(annotators))
    with capsys.disabled():
        print_report(s)

    # While it was down: 503s that say why (and /healthz said so too); no 500, no 503 after the grace period.
    assert check["expected_503"] >= 5 and check["unexpected_5xx"] == 0, (rec.statuses, rec.errors)
    assert all("database is unavailable" in reason for reason in rec.unavailable_reasons), rec.unavailable_reasons
    assert rec.timeline["healthz_while_down"].startswith("503 "), rec.timeline
    # It recovered on its own, within seconds, and went on serving.
    assert rec.timeline["first_ack_after_start"] < 5.0 and rec.acked_after_restart >= 20, rec.timeline
    # Nothing acknowledged lost, nothing twice, no row nobody was told about.
    assert check["failures"] == {}, (check["failures"], rec.errors)
    assert check["acknowledged"] == check["acknowledged_found"] == check["judgments_in_project"] >= 50


def test_an_unreachable_database_answers_503_with_a_reason_never_500():
    """In process, on either database: the connection pointed at nothing (a closed port; a file in a missing
    folder), then back. The API says why in JSON, pages in HTML, both with Retry-After."""
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "postgresql":
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    else:
        connection.settings_dict["NAME"] = "/nonexistent-arbiter-folder/db.sqlite3"
    client = Client(raise_request_exception=False)
    try:
        api = client.get("/api/projects/", HTTP_AUTHORIZATION="Token 0123456789abcdef")
        submit = client.post(
            "/api/tasks/1/judgments/", {"choice": "A"}, content_type="application/json", HTTP_AUTHORIZATION="Token x"
        )
        login = client.post("/accounts/login/", {"username": "ann", "password": "whatever-it-is"})
        health = client.get("/healthz")
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
    for response in (api, submit):
        assert response.status_code == 503 and response["Retry-After"] == "2"
        assert response.json()["detail"].startswith("The database is unavailable (restarting or unreachable)")
    assert login.status_code == 503 and b"The database is unavailable" in login.content and login["Retry-After"] == "2"
    assert health.status_code == 503
    # And back: the same client is served again with the real settings.
    assert client.get("/healthz").status_code == 200


def test_the_health_check_asks_the_socket_not_the_server_and_sees_a_terminated_connection(monkeypatch):
    """config/postgresql: a healthy idle connection is usable without a ``SELECT 1``; one the server ended
    (``pg_terminate_backend``, as a restart does) is not, and the next query is served on a new connection."""
    if connection.vendor != "postgresql":
        pytest.skip("the PostgreSQL backend's health check")
    from django.db.backends.postgresql import base as django_postgresql

    asked = []
    real_is_usable = django_postgresql.DatabaseWrapper.is_usable
    monkeypatch.setattr(
        django_postgresql.DatabaseWrapper, "is_usable", lambda self: asked.append(1) or real_is_usable(self)
    )
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    assert connection.is_usable() is True
    assert asked == []  # no round trip

    import psycopg

    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while connection.is_usable() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connection.is_usable() is False
    assert asked  # the readable socket was confirmed with the server

    connection.health_check_done = False
    connection.close_if_health_check_failed()  # what Django does before a request's first query
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid
