"""Production settings, CSRF and login throttling, checked against the real settings module and views.

- ``manage.py check --deploy`` runs as a subprocess with the environment production uses (DEBUG off, HTTPS on, a
  real SECRET_KEY) and must report no issue at all; without HTTPS it must complain (so the check can fail).
- CSRF: every form POST of the pages (taken from the access matrix) is refused without the token and accepted with
  it; API writes with a session cookie need the token, API writes with a token header do not.
- django-axes: after ``AXES_FAILURE_LIMIT`` wrong passwords through the real login view, the right one is refused too.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from .conftest import PASSWORD, ROLE_USERS
from .test_matrix import BODIES, MATRIX, ROLES, _url

REPO = Path(__file__).resolve().parents[2]


def _python(*args: str, **env: str) -> subprocess.CompletedProcess:
    # The production environment: none of the switches this test run may have (the browser tests set the last one).
    unset = ("DEBUG", "HTTPS", "SECRET_KEY", "ALLOWED_HOSTS", "DJANGO_ALLOW_ASYNC_UNSAFE")
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update(env, DJANGO_SETTINGS_MODULE="config.settings")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return _python("manage.py", *args, **env)


PRODUCTION = {
    "DEBUG": "0",
    "HTTPS": "1",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "arbiter.example.org",
}


def test_check_deploy_is_clean_with_the_production_switches():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_complains_without_https():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **{**PRODUCTION, "HTTPS": "0"})
    assert result.returncode == 1
    for code in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert code in result.stderr


def test_debug_is_off_unless_asked_for_and_cookies_follow_https():
    probe = "import django; django.setup(); from django.conf import settings as s; print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_HTTPONLY, s.X_FRAME_OPTIONS)"
    default = _python("-c", probe)
    assert default.stdout.split() == ["False", "False", "False", "False", "True", "DENY"], default.stderr
    production = _python("-c", probe, **PRODUCTION)
    assert production.stdout.split() == ["False", "True", "True", "True", "True", "DENY"], production.stderr
    assert settings.DEBUG is False  # and the test run itself


# --- CSRF ------------------------------------------------------------------------------------------------------

# Form posts of the pages, as the first role the MATRIX lets make them (read-only pages: an admin).
FORM_POSTS = sorted(p for p, methods in MATRIX.items() if "POST" in methods and not p.startswith("api/"))


def _allowed_role(pattern: str) -> str:
    statuses = dict(zip(ROLES, MATRIX[pattern]["POST"]))
    # Read-only pages answer POST with 405 for everyone; the CSRF check comes first there too.
    return next((role for role in ROLES[1:] if statuses[role] not in (401, 403, 404, 405)), "admin")


def _csrf_token(client: Client) -> str:
    client.get("/accounts/login/")  # sets the csrftoken cookie
    return client.cookies["csrftoken"].value


@pytest.mark.django_db
def test_every_form_post_needs_the_csrf_token(world):
    assert len(FORM_POSTS) >= 15
    refused = []
    for pattern in FORM_POSTS:
        role = _allowed_role(pattern)
        client = Client(enforce_csrf_checks=True)
        if pattern != "accounts/login/":
            client.force_login(world.users[role])
        url = _url(pattern, world)
        maker = BODIES.get((pattern, "POST"))
        data = maker(world)[1] if maker else {}
        answer = client.post(url, data)
        if answer.status_code != 403 or b"CSRF" not in answer.content:
            refused.append(f"POST {url} as {role} without a CSRF token: {answer.status_code}")
    assert not refused, "Form posts that do not check the CSRF token:\n" + "\n".join(refused)


@pytest.mark.django_db
def test_a_form_post_with_the_token_passes(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["annotator"])
    token = _csrf_token(client)
    url = f"/p/main/tasks/{world.task.pk}/skip/"
    assert client.post(url, {"reason": "I need more context"}).status_code == 403
    answer = client.post(url, {"reason": "I need more context", "csrfmiddlewaretoken": token})
    assert answer.status_code == 302
    world.task.refresh_from_db()
    assert world.task.status == "skipped"


API_WRITES = sorted((p, m) for p, methods in MATRIX.items() if p.startswith("api/") for m in methods if m != "GET")


@pytest.mark.django_db
def test_cookie_authenticated_api_writes_need_the_csrf_token(world, api_client_for):
    from annotate.models import Flag

    assert len(API_WRITES) >= 12
    missing = []
    for pattern, method in API_WRITES:
        role = next(
            r for r, s in zip(ROLES, MATRIX[pattern][method]) if r != "anonymous" and s not in (401, 403, 404, 405)
        )
        client = Client(enforce_csrf_checks=True)
        client.force_login(world.users[role])
        answer = client.generic(method, _url(pattern, world), "{}", content_type="application/json")
        if answer.status_code != 403 or "CSRF" not in answer.json().get("detail", ""):
            missing.append(f"{method} {pattern} as {role} with a session and no token: {answer.status_code}")
    assert not missing, "Session-authenticated API writes that skip the CSRF check:\n" + "\n".join(missing)

    # The same write with the token, or with a token header instead of a cookie, goes through.
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["annotator"])
    token = _csrf_token(client)
    url = f"/api/tasks/{world.task.pk}/flags/"
    answer = client.post(url, {"category": "broken"}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert answer.status_code == 201
    scripted = api_client_for(world.users["annotator"])
    scripted.handler.enforce_csrf_checks = True
    assert scripted.post(url, {"category": "unsafe"}, format="json").status_code == 201
    assert sorted(Flag.objects.filter(task=world.task).values_list("category", flat=True)) == ["broken", "unsafe"]


# --- login throttling -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_login_locks_out_after_repeated_failures(world):
    username = ROLE_USERS["annotator"]
    client = Client()
    assert client.post("/accounts/login/", {"username": username, "password": PASSWORD}).status_code == 302
    client.post("/accounts/logout/")
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5
    for attempt in range(limit):
        answer = client.post("/accounts/login/", {"username": username, "password": f"wrong-{attempt}"})
        if attempt < limit - 1:
            assert (
                answer.status_code == 200
                and b"didn&#x27;t match" in answer.content
                or b"didn't match" in answer.content
            )
    locked = client.post("/accounts/login/", {"username": username, "password": PASSWORD})
    assert locked.status_code == 429, locked.status_code
    assert "_auth_user_id" not in client.session
    # Another account from the same address is not locked (lockout is per username and address).
    other = Client().post("/accounts/login/", {"username": ROLE_USERS["researcher"], "password": PASSWORD})
    assert other.status_code == 302
    # The lock ends when an admin resets it (or after AXES_COOLOFF_MINUTES).
    from axes.utils import reset

    reset(username=username)
    assert Client().post("/accounts/login/", {"username": username, "password": PASSWORD}).status_code == 302
