"""Who may call what: every route of the URL conf (and every operation of the OpenAPI schema) against every role.

The table ``MATRIX`` below is the access model written out: for each route pattern and method, the status each
role gets. It is checked three ways:

- completeness: the routes are found by walking ``django.urls.get_resolver()`` and the operations by reading
  ``/api/schema/``; a route or method that is not in the table fails the test, with the row to add;
- the statuses: each request runs inside a savepoint that is rolled back, so every role meets the same data;
  writes carry a valid body (``BODIES``), so a refusal can only come from the role check;
- leaks: every answer a role gets is searched for markers it must not see (the other project's items, another
  annotator's rationale, gold answers), and exports for usernames (annotators appear there by pseudonym only).

Set ``ARBITER_MATRIX_DUMP=1`` to print the observed table (to fill in a new row after checking it is right).
"""

from __future__ import annotations

import json
import os
import re
from http.cookies import SimpleCookie

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from .conftest import BOB, BOB_MARK, CARL, GOLD_MARK, OTHER_MARK, OUT_MARK, World, _jsonl, _rows

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "other", "annotator", "researcher", "admin", "staff")
# anonymous: not logged in · other: annotator of another project only · annotator, researcher, admin: roles in the
# project the route names · staff: Django admin access (is_staff) but no membership anywhere.

# Pages answer anonymous users with a redirect to the login page; the API with 401. Members whose role is too low
# get 403, non-members 404 (a project's existence is not theirs to know), and another annotator's task is a 404.
MATRIX: dict[str, dict[str, tuple[int, ...]]] = {
    # route pattern:                          {method: (anonymous, other, annotator, researcher, admin, staff)}
    "healthz": {"GET": (200, 200, 200, 200, 200, 200)},
    "accounts/login/": {"GET": (200, 200, 200, 200, 200, 200), "POST": (200, 200, 200, 200, 200, 200)},
    "accounts/logout/": {"GET": (405, 405, 405, 405, 405, 405), "POST": (302, 302, 302, 302, 302, 302)},
    # The schema and its viewer are public (drf-spectacular's default): they describe, they hold no data.
    "api/schema/": {"GET": (200, 200, 200, 200, 200, 200)},
    "api/docs/": {"GET": (200, 200, 200, 200, 200, 200)},
    # --- pages ---
    "": {"GET": (302, 200, 200, 200, 200, 200), "POST": (302, 405, 405, 405, 405, 405)},
    "projects/new/": {"GET": (302, 403, 403, 200, 200, 403), "POST": (302, 403, 403, 302, 302, 403)},
    "p/<slug:slug>/": {"GET": (302, 404, 200, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    "p/<slug:slug>/annotate/": {"GET": (302, 404, 200, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    # Going back to one's own last answer (alice's is a gold item: the leak check looks for its gold answer).
    "p/<slug:slug>/annotate/previous/": {
        "GET": (302, 404, 200, 200, 200, 404),
        "POST": (302, 405, 405, 405, 405, 405),
    },
    # The task is alice's (the annotator's): for everyone else it does not exist.
    "p/<slug:slug>/tasks/<int:task_id>/judge/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 302, 404, 404, 404),
    },
    "p/<slug:slug>/tasks/<int:task_id>/skip/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 302, 404, 404, 404),
    },
    "p/<slug:slug>/tasks/<int:task_id>/flag/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 302, 404, 404, 404),
    },
    "p/<slug:slug>/import/": {"GET": (302, 405, 405, 405, 405, 405), "POST": (302, 404, 403, 302, 302, 404)},
    "p/<slug:slug>/export/": {"GET": (302, 404, 403, 200, 200, 404), "POST": (302, 404, 403, 200, 200, 404)},
    "p/<slug:slug>/snapshots/": {"GET": (302, 405, 405, 405, 405, 405), "POST": (302, 404, 403, 302, 302, 404)},
    "p/<slug:slug>/members/": {"GET": (302, 404, 403, 403, 200, 404), "POST": (302, 404, 403, 403, 302, 404)},
    # The add-member suggestions list users: project admins only.
    "p/<slug:slug>/members/search/": {
        "GET": (302, 404, 403, 403, 200, 404),
        "POST": (302, 405, 405, 405, 405, 405),
    },
    "p/<slug:slug>/settings/": {"GET": (302, 404, 403, 200, 200, 404), "POST": (302, 404, 403, 302, 302, 404)},
    "p/<slug:slug>/dashboard/": {"GET": (302, 404, 403, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    "p/<slug:slug>/dashboard/reinstate/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 302, 302, 404),
    },
    # The data browser and the queue: researchers and admins.
    "p/<slug:slug>/items/": {"GET": (302, 404, 403, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    "p/<slug:slug>/items/more-votes/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 302, 302, 404),
    },
    "p/<slug:slug>/items/<int:item_id>/": {
        "GET": (302, 404, 403, 200, 200, 404),
        "POST": (302, 405, 405, 405, 405, 405),
    },
    "p/<slug:slug>/items/<int:item_id>/adjudicate/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 302, 302, 404),
    },
    "p/<slug:slug>/queue/": {"GET": (302, 404, 403, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    "p/<slug:slug>/queue/<str:kind>/<int:report_id>/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 302, 302, 404),
    },
    # AI judges: researchers list and add them; only admins launch a judge run (every run is an admin's). The body
    # names an endpoint whose host ARBITER_JUDGE_HOSTS does not allow (it is empty by default: no judge calls out),
    # so past the role check adding answers 400 and launching is refused with a message (302 back to the page).
    "p/<slug:slug>/judges/": {"GET": (302, 404, 403, 200, 200, 404), "POST": (302, 404, 403, 400, 400, 404)},
    "p/<slug:slug>/judges/<slug:name>/run/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 403, 302, 404),
    },
    # Training pages: who researches no project sees no training at all (404); the launch form is for admins.
    "training/": {"GET": (302, 404, 404, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    "training/new/": {"GET": (302, 404, 404, 403, 200, 404), "POST": (302, 404, 404, 403, 400, 404)},
    "training/runs/<int:run_id>/": {"GET": (302, 404, 403, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    "training/runs/<int:run_id>/cancel/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 403, 302, 404),
    },
    "training/runs/<int:run_id>/retry/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 403, 302, 404),
    },
    # The run is a reward run: "next round", "send kept" and a human evaluation are refused (400) past the role
    # check, and it has no human-evaluation results to show (404 for those who may read them).
    "training/runs/<int:run_id>/next-round/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 403, 302, 404),
    },
    "training/runs/<int:run_id>/send-kept/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 403, 302, 404),
    },
    "training/runs/<int:run_id>/human-eval/": {
        "GET": (302, 405, 405, 405, 405, 405),
        "POST": (302, 404, 403, 403, 302, 404),
    },
    "training/runs/<int:run_id>/human-eval/results/": {
        "GET": (302, 404, 403, 404, 404, 404),
        "POST": (302, 405, 405, 405, 405, 405),
    },
    "training/projects/<slug:slug>/rounds/": {
        "GET": (302, 404, 403, 200, 200, 404),
        "POST": (302, 405, 405, 405, 405, 405),
    },
    "training/models/": {"GET": (302, 404, 404, 200, 200, 404), "POST": (302, 405, 405, 405, 405, 405)},
    # Registering a base model is for project admins; the body names a file that is not under MODEL_ROOTS, so past
    # the role check the admin's answer is a 400 and nothing is queued.
    "training/models/register/": {
        "GET": (302, 404, 404, 403, 200, 404),
        "POST": (302, 404, 404, 403, 400, 404),
    },
    "training/models/<int:artifact_id>/": {
        "GET": (302, 404, 403, 200, 200, 404),
        "POST": (302, 405, 405, 405, 405, 405),
    },
    # --- API --- (list endpoints answer everyone logged in, with only their own projects' rows: see the leak tests)
    "api/projects/": {"GET": (401, 200, 200, 200, 200, 200), "POST": (401, 403, 403, 201, 201, 403)},
    "api/projects/<slug:slug>/": {"GET": (401, 404, 200, 200, 200, 404), "PATCH": (401, 404, 403, 200, 200, 404)},
    "api/projects/<slug:slug>/next-task/": {"GET": (401, 404, 200, 200, 200, 404)},
    "api/projects/<slug:slug>/items/": {"GET": (401, 404, 403, 200, 200, 404), "POST": (401, 404, 403, 201, 201, 404)},
    "api/projects/<slug:slug>/agreement/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/projects/<slug:slug>/members/": {
        "GET": (401, 404, 403, 403, 200, 404),
        "POST": (401, 404, 403, 403, 201, 404),
    },
    "api/projects/<slug:slug>/members/<str:username>/": {"DELETE": (401, 404, 403, 403, 204, 404)},
    "api/projects/<slug:slug>/members/<str:username>/reinstate/": {"POST": (401, 404, 403, 200, 200, 404)},
    "api/projects/<slug:slug>/exports/": {
        "GET": (401, 404, 403, 200, 200, 404),
        "POST": (401, 404, 403, 201, 201, 404),
    },
    "api/exports/<int:snapshot_id>/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/exports/<int:snapshot_id>/files/<str:split>/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/exports/<int:snapshot_id>/card/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/projects/<slug:slug>/items/more-votes/": {"POST": (401, 404, 403, 200, 200, 404)},
    "api/projects/<slug:slug>/flags/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/flags/<int:flag_id>/resolution/": {"POST": (401, 404, 403, 200, 200, 404)},
    "api/items/<int:item_id>/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/items/<int:item_id>/adjudication/": {"POST": (401, 404, 403, 201, 201, 404)},
    "api/tasks/<int:task_id>/": {"GET": (401, 404, 200, 404, 404, 404)},
    "api/tasks/<int:task_id>/judgments/": {"POST": (401, 404, 201, 404, 404, 404)},
    "api/tasks/<int:task_id>/skip/": {"POST": (401, 404, 200, 404, 404, 404)},
    "api/tasks/<int:task_id>/flags/": {"POST": (401, 404, 201, 404, 404, 404)},
    "api/projects/<slug:slug>/judges/": {
        "GET": (401, 404, 403, 200, 200, 404),
        "POST": (401, 404, 403, 400, 400, 404),
    },
    "api/projects/<slug:slug>/judges/<slug:name>/runs/": {"POST": (401, 404, 403, 403, 400, 404)},
    # Launching: admins only; the body names a base model that is not there, so the admin's answer is a 400.
    "api/training-runs/": {"GET": (401, 200, 200, 200, 200, 200), "POST": (401, 404, 403, 403, 400, 404)},
    "api/training-runs/<int:run_id>/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/training-runs/<int:run_id>/cancel/": {"POST": (401, 404, 403, 403, 200, 404)},
    "api/training-runs/<int:run_id>/next-round/": {"POST": (401, 404, 403, 403, 400, 404)},
    "api/training-runs/<int:run_id>/send-kept/": {"POST": (401, 404, 403, 403, 400, 404)},
    "api/training-runs/<int:run_id>/human-eval/": {
        "GET": (401, 404, 403, 404, 404, 404),
        "POST": (401, 404, 403, 403, 400, 404),
    },
    "api/training-rounds/<slug:slug>/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/models/": {"GET": (401, 200, 200, 200, 200, 200)},
    # Scoring: researchers; the artifact row has no weights on disk, so past the role check the answer is a 400.
    "api/models/score/": {"POST": (401, 404, 403, 400, 400, 404)},
    "api/models/<int:artifact_id>/": {"GET": (401, 404, 403, 200, 200, 404)},
    "api/models/<int:artifact_id>/score/": {"POST": (401, 404, 403, 400, 400, 404)},
}

# How to fill each path parameter (by name); a pattern may override one (see PARAM_OVERRIDES).
PARAMS = {
    "slug": lambda w: w.main.slug,
    "task_id": lambda w: w.task.pk,  # alice's (the annotator's) open task
    "snapshot_id": lambda w: w.snapshot.pk,
    "split": lambda w: "train",
    "username": lambda w: BOB,
    "run_id": lambda w: w.run.pk,
    "artifact_id": lambda w: w.artifact.pk,
    "item_id": lambda w: w.bob_task.item_id,  # a normal item of main with votes and bob's flag
    "flag_id": lambda w: w.main.flags.get().pk,
    "kind": lambda w: "flag",
    "report_id": lambda w: w.main.flags.get().pk,
    "name": lambda w: _judge(w),
}
PARAM_OVERRIDES = {
    ("api/projects/<slug:slug>/members/<str:username>/reinstate/", "username"): lambda w: CARL,
}


def _upload(name: str = "more.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, _jsonl(_rows(2, "fresh")), content_type="application/octet-stream")


# A valid body for every write: (encoding, body). "form" and "multipart" go as form posts, "json" as JSON.
BODIES = {
    ("accounts/login/", "POST"): lambda w: ("form", {"username": "nobody", "password": "wrong-password"}),
    ("projects/new/", "POST"): lambda w: (
        "form",
        {"slug": "fresh", "name": "Fresh", "kind": "pairwise", "overlap": 1, "step_separator": "\n"},
    ),
    ("p/<slug:slug>/tasks/<int:task_id>/judge/", "POST"): lambda w: (
        "form",
        {"choice": "A", "strength": "2", "idempotency_key": "matrix-key"},
    ),
    ("p/<slug:slug>/tasks/<int:task_id>/skip/", "POST"): lambda w: ("form", {"reason": "I need more context"}),
    ("p/<slug:slug>/tasks/<int:task_id>/flag/", "POST"): lambda w: ("form", {"category": "broken", "note": "garbled"}),
    ("p/<slug:slug>/import/", "POST"): lambda w: ("multipart", {"file": _upload()}),
    ("p/<slug:slug>/export/", "POST"): lambda w: ("form", {"format": "trl"}),
    ("p/<slug:slug>/snapshots/", "POST"): lambda w: ("form", {"format": "trl", "test_size": "0"}),
    ("p/<slug:slug>/members/", "POST"): lambda w: ("form", {"username": BOB, "role": "researcher"}),
    ("p/<slug:slug>/settings/", "POST"): lambda w: ("form", _settings_form(w)),
    ("p/<slug:slug>/dashboard/reinstate/", "POST"): lambda w: ("form", {"membership": w.carl_membership.pk}),
    ("p/<slug:slug>/items/more-votes/", "POST"): lambda w: ("form", {"items": _normal_item(w), "extra": "1"}),
    ("p/<slug:slug>/items/<int:item_id>/adjudicate/", "POST"): lambda w: ("form", {"choice": "B", "reason": "r"}),
    ("p/<slug:slug>/queue/<str:kind>/<int:report_id>/", "POST"): lambda w: ("form", {"status": "dismissed"}),
    ("api/projects/<slug:slug>/items/more-votes/", "POST"): lambda w: (
        "json",
        {"items": [_normal_item(w)], "extra": 1},
    ),
    ("api/flags/<int:flag_id>/resolution/", "POST"): lambda w: ("json", {"status": "resolved"}),
    ("api/items/<int:item_id>/adjudication/", "POST"): lambda w: ("json", {"choice": "A", "reason": "r"}),
    ("training/new/", "POST"): lambda w: ("form", {"project": "main", "kind": "reward", "base_model": "tiny-llama"}),
    ("training/models/register/", "POST"): lambda w: (
        "form",
        {"name": "byo", "source": "missing.gguf", "kind": "causal-lm"},
    ),
    ("p/<slug:slug>/judges/", "POST"): lambda w: ("form", JUDGE_BODY),
    ("p/<slug:slug>/judges/<slug:name>/run/", "POST"): lambda w: ("form", {"max_items": "2"}),
    ("api/projects/<slug:slug>/judges/", "POST"): lambda w: ("json", JUDGE_BODY),
    ("api/projects/<slug:slug>/judges/<slug:name>/runs/", "POST"): lambda w: ("json", {"max_items": 2}),
    ("api/projects/", "POST"): lambda w: ("json", {"slug": "fresh-api", "kind": "pairwise"}),
    ("api/projects/<slug:slug>/", "PATCH"): lambda w: ("json", {"instructions": "Be kind."}),
    ("api/projects/<slug:slug>/items/", "POST"): lambda w: ("multipart", {"file": _upload()}),
    ("api/projects/<slug:slug>/members/", "POST"): lambda w: ("json", {"username": BOB, "role": "researcher"}),
    ("api/projects/<slug:slug>/exports/", "POST"): lambda w: ("json", {"format": "trl"}),
    ("api/tasks/<int:task_id>/judgments/", "POST"): lambda w: (
        "json",
        {"choice": "A", "strength": 1, "idempotency_key": "matrix-key"},
    ),
    ("api/tasks/<int:task_id>/skip/", "POST"): lambda w: ("json", {"reason": "I need more context"}),
    ("api/tasks/<int:task_id>/flags/", "POST"): lambda w: ("json", {"category": "broken", "note": "garbled"}),
    ("api/training-runs/", "POST"): lambda w: (
        "json",
        {"project": "main", "kind": "reward", "base_model": "tiny-llama"},
    ),
    ("api/models/score/", "POST"): lambda w: (
        "json",
        {"models": [{"id": w.artifact.pk, "weight": 1.0}], "pairs": [{"prompt": "Hi?", "response": "Hello."}]},
    ),
    ("api/models/<int:artifact_id>/score/", "POST"): lambda w: (
        "json",
        {"pairs": [{"prompt": "Hi?", "response": "Hello."}]},
    ),
}


JUDGE_BODY = {"name": "fresh-judge", "backend": "openai", "model": "m", "base_url": "http://judge.internal/v1"}


def _judge(w: World) -> str:
    """A judge of main (an openai one: its run is refused past the role check, its host not being allowed)."""
    from django.contrib.auth import get_user_model

    from annotate.models import Judge

    if not Judge.objects.filter(project=w.main, name="matrix").exists():
        user = get_user_model().objects.create(username=f"judge.{w.main.pk}.matrix", is_active=False)
        Judge.objects.create(
            project=w.main, name="matrix", backend="openai", model="m", base_url="http://judge.internal/v1", user=user
        )
    return "matrix"


def _normal_item(w: World) -> int:
    return w.main.items.filter(purpose="normal").order_by("id").first().pk


def _settings_form(w: World) -> dict:
    from annotate.forms import ProjectSettingsForm

    form = ProjectSettingsForm(instance=w.main)
    data = {name: form[name].value() for name in form.fields}
    return {name: value for name, value in data.items() if value is not None and value is not False}


# --- discovering the routes --------------------------------------------------------------------------------


def discovered_routes() -> dict[str, object]:
    """Every route pattern of the URL conf → its view; the Django admin is one entry ("admin/")."""
    found: dict[str, object] = {}

    def walk(resolver, prefix: str) -> None:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                if entry.namespace == "admin":
                    found[prefix + str(entry.pattern)] = None
                    continue
                walk(entry, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                found[prefix + str(entry.pattern)] = entry.callback

    walk(get_resolver(), "")
    return found


def drf_methods(view) -> set[str] | None:
    """The methods a DRF view answers (None for a plain Django view, whose methods the table alone states)."""
    cls = getattr(view, "cls", None)
    if cls is None:
        return None
    return {m.upper() for m in cls.http_method_names if hasattr(cls, m) and m not in ("options", "head")}


def schema_operations(client) -> set[tuple[str, str]]:
    """``(route pattern, METHOD)`` of every operation in the OpenAPI schema."""
    schema = client.get("/api/schema/", {"format": "json"}).json()
    operations = set()
    for path, item in schema["paths"].items():
        pattern = path.lstrip("/")
        for method in item:
            if method in ("get", "post", "put", "patch", "delete"):
                operations.add((pattern, method.upper()))
    return operations


def _schema_path(pattern: str) -> str:
    """``api/tasks/<int:task_id>/`` → ``api/tasks/{task_id}/`` as drf-spectacular writes it."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", pattern)


def test_every_route_has_a_row_in_the_matrix():
    routes = discovered_routes()
    missing = sorted(set(routes) - set(MATRIX) - {"admin/"})
    stale = sorted(set(MATRIX) - set(routes))
    assert not missing, (
        f"Routes without an entry in MATRIX (tests/security/test_matrix.py): {missing}. Add a row per method with the "
        f"expected status for {ROLES}, and a body in BODIES for writes; ARBITER_MATRIX_DUMP=1 prints what they answer now."
    )
    assert not stale, f"MATRIX has rows for routes that no longer exist: {stale}; remove them."
    for pattern, view in routes.items():
        methods = drf_methods(view)
        if methods is not None:
            assert methods == set(MATRIX[pattern]), (
                f"{pattern} answers {sorted(methods)} but MATRIX lists {sorted(MATRIX[pattern])}: add the missing methods."
            )


def test_every_schema_operation_has_a_row_in_the_matrix(client):
    operations = schema_operations(client)
    assert len(operations) >= 20
    listed = {(_schema_path(pattern), method) for pattern, methods in MATRIX.items() for method in methods}
    missing = sorted(operations - listed)
    assert not missing, f"OpenAPI operations without a MATRIX row (tests/security/test_matrix.py): {missing}"
    api_rows = {(p, m) for p, m in listed if p.startswith("api/") and p not in ("api/schema/", "api/docs/")}
    assert not api_rows - operations, f"API routes missing from /api/schema/: {sorted(api_rows - operations)}"


# --- the matrix itself ---------------------------------------------------------------------------------------


def _url(pattern: str, w: World) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(1)
        maker = PARAM_OVERRIDES.get((pattern, name)) or PARAMS.get(name)
        assert maker, f"No value for the path parameter {name!r} of {pattern}: add it to PARAMS in test_matrix.py."
        return str(maker(w))

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", fill, pattern)


def _clients(w: World) -> dict[str, Client]:
    clients = {"anonymous": Client()}
    for role, user in w.users.items():
        clients[role] = Client()
        clients[role].force_login(user)
    return clients


def _call(client: Client, method: str, url: str, body) -> tuple[int, bytes]:
    """One request whose writes are rolled back afterwards (and whose cookies are restored: logout, login)."""
    saved = {key: morsel.value for key, morsel in client.cookies.items()}
    with transaction.atomic():
        if body is None:
            response = client.generic(method, url)
        else:
            encoding, data = body
            if encoding == "json":
                response = client.generic(method, url, json.dumps(data), content_type="application/json")
            else:  # form and multipart posts
                response = client.post(url, data)
        content = b"".join(response.streaming_content) if response.streaming else response.content
        transaction.set_rollback(True)
    client.cookies = SimpleCookie()
    for key, value in saved.items():
        client.cookies[key] = value
    return response.status_code, content


def _forbidden_markers(role: str) -> list[str]:
    """What each role must never read anywhere."""
    if role == "other":
        return [BOB_MARK, GOLD_MARK]
    if role in ("anonymous", "annotator", "staff"):
        return [OTHER_MARK, OUT_MARK, BOB_MARK, GOLD_MARK]
    return [OTHER_MARK, OUT_MARK]  # researchers and admins of main see its votes, not the other project


EXPORT_ROUTES = ("p/<slug:slug>/export/", "api/exports/", "api/projects/<slug:slug>/exports/")


def test_role_matrix(world):
    clients = _clients(world)
    observed: dict[str, dict[str, tuple[int, ...]]] = {}
    wrong, leaks = [], []
    for pattern, view in sorted(discovered_routes().items()):
        if pattern == "admin/":
            continue
        url = _url(pattern, world)
        rows = MATRIX.get(pattern) or {m: (None,) * len(ROLES) for m in sorted(drf_methods(view) or {"GET", "POST"})}
        for method, expected in rows.items():
            row = []
            for role, want in zip(ROLES, expected):
                maker = BODIES.get((pattern, method))
                body = maker(world) if maker and method != "GET" else None
                status, content = _call(clients[role], method, url, body)
                row.append(status)
                if status != want:
                    wrong.append(f"{method} {url} as {role}: {status}, expected {want} ({content[:200]!r})")
                text = content.decode("utf-8", "replace")
                for marker in _forbidden_markers(role):
                    if marker in text:
                        leaks.append(f"{method} {url} as {role} shows {marker}")
                if pattern.startswith(EXPORT_ROUTES):
                    for name in world.usernames:
                        if name in text:
                            leaks.append(f"{method} {url} as {role} names the user {name} (pseudonyms only)")
            observed.setdefault(pattern, {})[method] = tuple(row)
    if os.environ.get("ARBITER_MATRIX_DUMP"):
        for pattern, methods in observed.items():
            print(f'    "{pattern}": {{' + ", ".join(f'"{m}": {s}' for m, s in methods.items()) + "},")
    assert not wrong, "Statuses differ from MATRIX:\n" + "\n".join(wrong)
    assert not leaks, "Answers show what the role must not see:\n" + "\n".join(leaks)
    checked = sum(len(methods) for methods in observed.values()) * len(ROLES)
    assert checked >= 60 * len(ROLES)


# --- list endpoints, exports, the Django admin -----------------------------------------------------------------


def _json(client: Client, url: str):
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.content[:300])
    return response.json()


def test_lists_hold_only_the_callers_projects(world):
    clients = _clients(world)
    slugs = {role: sorted(p["slug"] for p in _json(clients[role], "/api/projects/")) for role in ROLES[1:]}
    assert slugs == {
        "other": ["otherproj"],
        "annotator": ["main"],
        "researcher": ["main"],
        "admin": ["main"],
        "staff": [],
    }
    runs = {role: [r["id"] for r in _json(clients[role], "/api/training-runs/")] for role in ROLES[1:]}
    assert runs == {"other": [], "annotator": [], "researcher": [world.run.pk], "admin": [world.run.pk], "staff": []}
    models = {role: [m["id"] for m in _json(clients[role], "/api/models/")] for role in ROLES[1:]}
    assert models == {
        "other": [],
        "annotator": [],
        "researcher": [world.artifact.pk],
        "admin": [world.artifact.pk],
        "staff": [],
    }
    # Asking for the other project's runs by name is a 404, not an empty list that confirms it exists.
    assert clients["researcher"].get("/api/training-runs/", {"project": "otherproj"}).status_code == 404
    assert clients["researcher"].get("/api/models/", {"project": "otherproj"}).status_code == 404
    page = clients["admin"].get("/training/new/").content.decode()
    assert f"artifact:{world.artifact.pk}" in page and f"artifact:{world.other_artifact.pk}" not in page


def test_an_annotator_sees_only_their_own_task_without_answers(world):
    alice = _clients(world)["annotator"]
    task = _json(alice, f"/api/tasks/{world.task.pk}/")
    assert set(task) == {"id", "kind", "project", "prompt", "responses", "status", "lease_expires_at"}
    assert all(set(r) == {"id", "text"} for r in task["responses"])  # no model names, no gold
    assert alice.get(f"/api/tasks/{world.bob_task.pk}/").status_code == 404
    progress = _json(alice, "/api/projects/main/")["progress"]
    assert BOB not in json.dumps(progress) and "judgments" not in progress or progress["judgments"] <= 3
    page = alice.get("/p/main/").content.decode()
    assert BOB not in page and BOB_MARK not in page and GOLD_MARK not in page


def test_exports_name_annotators_by_pseudonym_only(world):
    from annotate.models import Membership

    researcher = _clients(world)["researcher"]
    pseudonyms = dict(Membership.objects.filter(project=world.main).values_list("user__username", "pseudonym"))
    response = researcher.get("/p/main/export/", {"format": "raw", "aggregate": "none"})
    raw = b"".join(response.streaming_content).decode()
    snapshot = researcher.get(f"/api/exports/{world.snapshot.pk}/files/train/")
    stored = b"".join(snapshot.streaming_content).decode()
    agreement = json.dumps(_json(researcher, "/api/projects/main/agreement/"))
    for text in (raw, stored):
        assert len(text.splitlines()) == 4  # alice's 2 and bob's 2 votes
        assert pseudonyms["alice_annotator"] in text and pseudonyms[BOB] in text
    for text in (raw, stored, agreement, json.dumps(_json(researcher, f"/api/exports/{world.snapshot.pk}/"))):
        assert not [name for name in world.usernames if name in text]


def test_the_django_admin_needs_staff(world):
    clients = _clients(world)
    for role in ("anonymous", "other", "annotator", "researcher", "admin"):
        response = clients[role].get("/admin/")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), role
    assert clients["staff"].get("/admin/").status_code == 200
    # Staff without model permissions see no data in it.
    assert clients["staff"].get("/admin/annotate/judgment/").status_code == 403


def test_a_launch_cannot_use_another_projects_model(world, settings):
    folder = settings.ARTIFACT_ROOT / world.other_artifact.path
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForSequenceClassification"]}')
    admin = _clients(world)["admin"]
    body = {"project": "main", "kind": "reward", "base_model": f"artifact:{world.other_artifact.pk}"}
    answer = admin.post("/api/training-runs/", body, content_type="application/json")
    assert (
        answer.status_code == 400
        and answer.json()["detail"] == f"No registered model artifact {world.other_artifact.pk}."
    )
    assert not world.main.training_runs.exclude(pk=world.run.pk).exists()
