"""Fixtures of the fault tests: a real gunicorn serving the test database, as bench/soak.py serves its own."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
from django.conf import settings

from bench.serve import Gunicorn, gunicorn_specs
from tests.conftest import served_database_url


@pytest.fixture
def gunicorn_server(tmp_path):
    """``with gunicorn_server() as base:`` gunicorn (gthread, 2 workers x 4 threads) on a free loopback port."""

    @contextmanager
    def serve(spec: str = "gthread:2x4"):
        env = {
            **os.environ,
            "DATABASE_URL": served_database_url(),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DEBUG": "0",
            "LOG_LEVEL": "ERROR",
            "PYTHONUNBUFFERED": "1",
            "ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        }
        env.pop("CONN_MAX_AGE", None)  # the default: persistent connections with health checks, as in production
        server = Gunicorn(gunicorn_specs(spec)[0], env, tmp_path / "gunicorn.log")
        server.start(timeout=60)
        try:
            yield server
        finally:
            server.stop()

    return serve
