"""Shared fixtures: users with roles, projects with items, API clients with tokens."""

from __future__ import annotations

import json
import os

# The tests' models are tiny: one thread per process is faster than two, and steady when the CPU is shared
# (torch reads this when it is first imported; the worker subprocesses the tests start inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from annotate import actions  # noqa: E402
from annotate.imports import parse_items  # noqa: E402
from annotate.models import Kind, Role  # noqa: E402

# Fixtures that give a test the database (directly or through other fixtures: pytest lists the whole closure).
DATABASE_FIXTURES = {
    "db",
    "transactional_db",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
    "live_server",
}


def pytest_collection_modifyitems(config, items):
    """``ARBITER_DATABASE_TESTS_ONLY=1`` (make test-postgres): run only the tests that touch the database. The others
    (runners, statistics, parsers) cannot see which database is configured, and pytest-django refuses them any
    access, so the SQLite pass has already run them as they would run here; running them twice cost CI minutes."""
    if os.environ.get("ARBITER_DATABASE_TESTS_ONLY") != "1":
        return
    kept, left_out = [], []
    for item in items:
        needs_database = item.get_closest_marker("django_db") or DATABASE_FIXTURES & set(
            getattr(item, "fixturenames", ())
        )
        (kept if needs_database else left_out).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pairwise_rows(n: int, *, start: int = 0, conversation_every: int = 0) -> list[dict]:
    """``n`` pairwise item rows with distinct prompts; every ``conversation_every``-th prompt is multi-turn."""
    rows = []
    for i in range(start, start + n):
        prompt: object = f"Question {i}: what is {i} plus {i}?"
        if conversation_every and i % conversation_every == 0:
            prompt = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Hi, question {i}."},
                {"role": "assistant", "content": "Hello! Ask away."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
            ]
        rows.append(
            {
                "id": f"item-{i}",
                "prompt": prompt,
                "responses": [
                    {"text": f"The answer is {2 * i}.", "model": "good-model"},
                    {"text": f"The answer is {2 * i + 1}.", "model": "bad-model"},
                ],
            }
        )
    return rows


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def make_project(db):
    def make(slug="demo", kind=Kind.PAIRWISE, overlap=2, n_items=10, **fields):
        project = actions.create_project(slug=slug, kind=kind, overlap=overlap, **fields)
        if n_items:
            actions.import_items(project, parse_items(jsonl(pairwise_rows(n_items)), "jsonl", kind))
        return project

    return make


@pytest.fixture
def make_member(db):
    def make(project, username, role=Role.ANNOTATOR, password="a-long-test-password"):
        return actions.add_member(project, username, role, password).user

    return make


@pytest.fixture
def api_client_for():
    """An API client authenticated with the user's token, as a script would be."""

    def make(user):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {actions.issue_token(user)}")
        return client

    return make


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):
    """SQLite tests use a file, not the shared in-memory database: in-memory SQLite fails concurrent
    writers with "table is locked" at once, while a file in WAL mode makes them wait for the lock as
    production does. The concurrency and browser tests need that."""
    from django.db import connections

    database = connections["default"].settings_dict
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database["TEST"]["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test.sqlite3")


def served_database_url() -> str:
    """The test database as a DATABASE_URL, for a server or worker started in another process."""
    from urllib.parse import quote

    from django.db import connections

    connection = connections["default"]
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "") + (":" + quote(db["PASSWORD"]) if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
