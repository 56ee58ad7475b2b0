"""The whole API fuzzed from its own OpenAPI schema: no input, from no role, gets a 5xx.

Schemathesis reads ``/api/schema/`` and generates requests for every operation; each generated case is sent, in
process through the WSGI app, as every role of the access matrix (token auth) and anonymously. Path parameters are
either the world's real ids (so the body reaches validation) or generated ones; bodies are valid by the schema
(positive) or deliberately not (negative). Hypothesis runs derandomized, so a failure reproduces.

``ARBITER_FUZZ_EXAMPLES`` raises the examples per operation and mode for a longer run (default 3).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from annotate import actions

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("ARBITER_FUZZ_EXAMPLES", "3"))


@contextmanager
def in_process_app():
    """Django's WSGI app, minus the end-of-request connection close that would end the test's transaction
    (Django's test client does the same; so no test client may run inside this block: it reconnects them)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _real_parameters(world) -> dict:
    return {
        "slug": world.main.slug,
        "task_id": world.task.pk,
        "snapshot_id": world.snapshot.pk,
        "split": "train",
        "username": "bob_annotator",
        "run_id": world.run.pk,
        "artifact_id": world.artifact.pk,
    }


def test_no_request_to_any_operation_gets_a_5xx(world, client):
    import schemathesis

    raw = client.get("/api/schema/", {"format": "json"}).json()
    schema = schemathesis.openapi.from_dict(raw)
    headers = {"anonymous": {}}
    headers.update(
        {role: {"Authorization": f"Token {actions.issue_token(user)}"} for role, user in world.users.items()}
    )
    real = _real_parameters(world)
    failures, silent, stats = [], [], {"operations": 0, "examples": 0, "requests": 0}
    with in_process_app() as app:
        _fuzz_every_operation(schema, app, headers, real, failures, silent, stats)
    print(
        f"\nschemathesis: {stats['operations']} operations, {stats['examples']} examples, {stats['requests']} requests, "
        f"{len(failures)} answers >= 500"
    )
    assert stats["operations"] >= 25
    assert not failures, f"{len(failures)} answers >= 500:\n" + "\n".join(failures[:20])
    assert not silent, "Refusals without a reason:\n" + "\n".join(silent[:20])


def _fuzz_every_operation(schema, app, headers, real, failures, silent, stats):
    from schemathesis import GenerationMode

    for result in schema.get_all_operations():
        operation = result.ok()
        stats["operations"] += 1
        names = [p.name for p in operation.path_parameters]
        fixed = {name: real[name] for name in names if name in real}
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed),
            operation.as_strategy(GenerationMode.POSITIVE),
        )

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES * 3,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            stats["examples"] += 1
            for role, auth in headers.items():
                response = case.call(app=app, headers=auth)
                stats["requests"] += 1
                if response.status_code >= 500:
                    failures.append(f"{role}: {response.status_code} for {case.as_curl_command(headers=auth)}")
                elif response.status_code >= 400 and not response.content:
                    silent.append(
                        f"{role}: {response.status_code} without a reason for {case.as_curl_command(headers=auth)}"
                    )

        fuzz()
