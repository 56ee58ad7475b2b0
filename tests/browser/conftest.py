"""Real-browser fixtures: Playwright (sync API) driving Debian's Chromium against pytest-django's live server.

- One browser per session (``browser``), a fresh context and page per test (``context``, ``page``), so
  cookies and storage never leak between tests and the suite stays fast.
- Never downloads a browser: without /usr/bin/chromium the tests are skipped, or fail when ``CI`` is set.
- Playwright's sync API keeps an asyncio event loop registered as running in the test thread, and Django
  refuses ORM calls from a thread with a running loop (``SynchronousOnlyOperation``). The test thread only
  touches the ORM between browser steps, never concurrently with the loop's own work, so
  ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set while the browser is alive (and restored afterwards, so the rest of
  the suite keeps Django's guard).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from annotate import actions
from annotate.imports import parse_items
from annotate.models import Kind

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"
PASSWORD = "a-long-test-password"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
def _chromium():
    """Skip (or, with ``CI`` set, fail) before any database work when the browser cannot run here."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        reason = f"{CHROMIUM} is missing: install Debian's chromium (`make browser`) to run the browser tests"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this is an error).", pytrace=False)
        pytest.skip(reason)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:  # pragma: no cover - requirements-dev.txt installs it
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (CI is set, so this is an error).", pytrace=False)
        pytest.skip("playwright is not installed: pip install -r requirements-dev.txt")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(_chromium, django_db_setup):
    """One headless Chromium for the whole session.

    Depends on ``django_db_setup`` so the test database is torn down only after Playwright has stopped
    (the teardown runs ORM calls, which must not see Playwright's event loop).
    """
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(_chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _keep_local(live_server_url: str):
    """A route handler that aborts every request that does not go to the live server (no network)."""
    origin = urlsplit(live_server_url)

    def handle(route):
        url = urlsplit(route.request.url)
        if (url.scheme, url.hostname, url.port) == (origin.scheme, origin.hostname, origin.port):
            route.continue_()
        else:
            route.abort()

    return handle


@pytest.fixture
def new_context(browser, live_server):
    """Factory for browser contexts on the live server; ``new_context(java_script_enabled=False)`` etc."""
    contexts = []

    def make(**options):
        options.setdefault("base_url", live_server.url)
        options.setdefault("viewport", {"width": 1280, "height": 900})
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        context.route("**/*", _keep_local(live_server.url))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    if contexts:
        # Closing a context drops its connections, but the live server may still be answering a request the page
        # made (a preload, a save) inside a transaction. The flush that ends the test then TRUNCATEs the tables under
        # it, and PostgreSQL stops one of the two as a deadlock (seen once in CI, on a loaded machine): give such a
        # request a moment to finish first.
        time.sleep(0.3)


@pytest.fixture
def page(new_context):
    """A page in a fresh JavaScript-enabled context. Uncaught page errors fail the test at teardown."""
    p = new_context().new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    assert not errors, f"uncaught JavaScript errors on the page: {errors}"


@pytest.fixture
def pairwise_project(make_project, make_member):
    """A pairwise project with 5 items (responses shuffled per annotator) and one annotator, alice."""
    project = make_project(slug="demo", kind=Kind.PAIRWISE, overlap=2, n_items=5)
    alice = make_member(project, "alice", password=PASSWORD)
    return project, alice


def import_rows(project, rows_jsonl: bytes):
    """Import JSONL item rows into ``project`` the way the import page does."""
    return actions.import_items(project, parse_items(rows_jsonl, "jsonl", project.kind))


def login(page, username: str, password: str = PASSWORD) -> None:
    """Log in through the real login form: fill both fields, press Enter, land on the projects page."""
    page.goto("/accounts/login/")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', password)
    with page.expect_navigation():
        page.press('input[name="password"]', "Enter")
    assert urlsplit(page.url).path == "/", f"login did not reach the projects page: {page.url}"
    assert page.locator("header .who").text_content() == username


def current_task_id(page) -> int:
    value = page.locator("#task").get_attribute("data-task")
    assert value and re.fullmatch(r"\d+", value), f"no task on the page (data-task={value!r})"
    return int(value)


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_saved(page) -> None:
    """Wait until every answer the page sent is acknowledged by the server (sync.js sets ``data-sync``)."""
    from playwright.sync_api import expect

    expect(page.locator("html")).not_to_have_attribute("data-sync", "busy")
