"""Preloading, the outbox, skip and flag, and hostile content on every kind's page, in a real browser.

static/arbiter/sync.js fetches the next task while the annotator works, swaps it in at the submit and posts
the answer in the background; an answer that does not arrive is kept and retried with the same idempotency
key. Each test checks the database, not only the page."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotate.models import Flag, Judgment, Kind, Response, Task

from .conftest import current_task_id, login, screenshot, wait_saved
from .test_kinds import make_kind_project, open_annotate, rows_for

pytestmark = pytest.mark.browser


def preloaded_task(page) -> int:
    """Wait for the preload of the next task and return its id (sync.js marks it on <html>)."""
    expect(page.locator("html")).to_have_attribute("data-preloaded", re.compile(r"^\d+$"))
    return int(page.locator("html").get_attribute("data-preloaded"))


def rated(task: Task, score: int) -> dict:
    return {"ratings": {str(task.display_order[0]): {"overall": score}}}


def test_preloaded_task_appears_before_the_answer_is_saved(page):
    project = make_kind_project("pre", Kind.RATING, rows_for(Kind.RATING, 4, 1))
    login(page, "alice")
    first = open_annotate(page, project)
    following = preloaded_task(page)
    assert following != first.pk
    assert Task.objects.get(pk=following).status == Task.Status.LEASED  # leased ahead: at most two

    # Hold the answer on its way to the server: the next task must be on screen anyway.
    held = []
    page.route("**/judge/", lambda route: held.append(route))
    gets = []
    page.on("request", lambda request: gets.append(request.url) if request.method == "GET" else None)
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    expect(page.locator("#task")).to_have_attribute("data-task", str(following))
    expect(page.locator("#progress-count")).to_have_text("1 done")
    assert gets == [], f"the next task was fetched at the submit: {gets}"
    page.wait_for_timeout(50)
    assert len(held) == 1 and not Judgment.objects.exists()

    held[0].fallback()
    wait_saved(page)
    assert Judgment.objects.get(task=first).data == rated(first, 3)
    # Once the answer is saved, the task after this one is preloaded in turn.
    third = preloaded_task(page)
    assert third not in (first.pk, following)
    page.unroute("**/judge/")
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    expect(page.locator("#task")).to_have_attribute("data-task", str(third))
    wait_saved(page)
    assert Judgment.objects.get(task_id=following).data == rated(Task.objects.get(pk=following), 4)
    assert Judgment.objects.count() == 2
    # A reload shows the task on screen, not the one preloaded after it.
    preloaded_task(page)
    page.reload()
    assert current_task_id(page) == third


def test_outbox_retries_with_the_same_key_until_saved(page):
    project = make_kind_project("outbox", Kind.RATING, rows_for(Kind.RATING, 4, 1))
    login(page, "alice")
    first = open_annotate(page, project)
    second = preloaded_task(page)

    # The first post is lost on the network; the retry goes through.
    bodies = []

    def flaky(route):
        bodies.append(route.request.post_data)
        if len(bodies) == 1:
            route.abort("internetdisconnected")
        else:
            route.fallback()

    page.route("**/judge/", flaky)
    page.keyboard.press("6")
    page.keyboard.press("Enter")
    expect(page.locator("#task")).to_have_attribute("data-task", str(second))
    expect(page.locator("#outbox-status")).to_have_text(re.compile(r"^1 answer waiting to be saved"))
    wait_saved(page)
    expect(page.locator("#outbox-status")).to_be_hidden()
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same idempotency key, the same answer
    assert Judgment.objects.filter(task=first).count() == 1
    assert Judgment.objects.get(task=first).data == rated(first, 6)

    # Offline for a while, and the page reloaded meanwhile: the answer waits in localStorage.
    page.unroute("**/judge/")
    third = preloaded_task(page)
    page.route("**/judge/", lambda route: route.abort("internetdisconnected"))
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    expect(page.locator("#task")).to_have_attribute("data-task", str(third))
    page.reload()
    # The server still leases the unanswered task, so the reload shows it, with the answer restored
    # and marked as waiting; it cannot be answered twice.
    assert current_task_id(page) == second
    expect(page.locator("#outbox-status")).to_have_text(re.compile(r"^1 answer waiting to be saved"))
    expect(page.locator("#task .draft-notice")).to_contain_text("waiting to be saved")
    expect(page.locator('#task input[type=radio][value="2"]')).to_be_checked()
    assert not Judgment.objects.filter(task_id=second).exists()

    page.unroute("**/judge/")
    page.evaluate("window.dispatchEvent(new Event('online'))")
    expect(page.locator("#task")).to_have_attribute("data-task", str(third))
    wait_saved(page)
    expect(page.locator("#outbox-status")).to_be_hidden()
    assert Judgment.objects.filter(task_id=second).count() == 1
    assert Judgment.objects.get(task_id=second).data == rated(Task.objects.get(pk=second), 2)
    assert page.evaluate("localStorage.getItem('arbiter:outbox')") == "[]"
    assert page.evaluate(f"localStorage.getItem('arbiter:draft:{second}')") is None
    assert Judgment.objects.count() == 2


def test_invalid_answer_brings_its_task_back_with_the_message(page):
    project = make_kind_project("invalid", Kind.DEMONSTRATION, rows_for(Kind.DEMONSTRATION, 3, 1))
    login(page, "alice")
    first = open_annotate(page, project)
    second = preloaded_task(page)
    # Only whitespace: the browser lets it through ("required" is satisfied), the server refuses it.
    page.keyboard.press("t")
    page.keyboard.type("   ")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#task")).to_have_attribute("data-task", str(first.pk))
    expect(page.locator("#task .field-error")).to_contain_text("Write the response")
    assert not Judgment.objects.exists()
    page.locator("#task textarea[name=text]").fill("A real answer.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#task")).to_have_attribute("data-task", str(second))
    wait_saved(page)
    assert Judgment.objects.get(task=first).text == "A real answer."


def test_skip_and_flag_by_keyboard_and_mouse(page):
    project = make_kind_project("skipflag", Kind.STEPS, rows_for(Kind.STEPS, 4, 1))
    login(page, "alice")
    first = open_annotate(page, project)
    page.keyboard.press("1")  # half an answer, which a flag must leave alone

    # Flag by keyboard: f opens the panel at the categories, arrows choose, Tab to the note and the button.
    page.keyboard.press("f")
    flag_panel = page.locator("#task details.flag")
    expect(flag_panel).to_have_attribute("open", "")
    expect(page.locator('#task input[name="category"]').first).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(page.locator('#task input[name="category"][value="broken"]')).to_be_checked()
    page.keyboard.press("Tab")
    page.keyboard.type("Step 2 is garbled")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(flag_panel.locator(".message.success")).to_contain_text("broken")
    # Flag by mouse, the same task.
    flag_panel.locator("label.flag-choice", has_text="Personal data").click()
    flag_panel.locator("button[type=submit]").click()
    expect(flag_panel.locator(".message.success")).to_contain_text("personal data")
    flags = list(Flag.objects.order_by("id").values_list("task_id", "category", "note"))
    assert flags == [(first.pk, "broken", "Step 2 is garbled"), (first.pk, "personal_data", "")]
    expect(page.locator(f'#task input[name="step_{first.display_order[0]}_0"][value="positive"]')).to_be_checked()
    screenshot(page, "annotate-flagged.png")

    # Skip by keyboard: s opens the panel at the reason, Enter sends it.
    page.keyboard.press("Escape")
    page.keyboard.press("s")
    expect(page.locator("#task input[name=reason]")).to_be_focused()
    page.keyboard.type("I cannot judge this topic")
    page.keyboard.press("Enter")
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(first.pk))
    expect(page.locator("#task .message").first).to_have_text("Skipped.")
    first.refresh_from_db()
    assert (first.status, first.skip_reason) == (Task.Status.SKIPPED, "I cannot judge this topic")
    assert page.evaluate(f"localStorage.getItem('arbiter:draft:{first.pk}')") is None

    # Skip by mouse.
    second = Task.objects.get(pk=current_task_id(page))
    page.locator("#task details.skip summary").click()
    page.locator("#task input[name=reason]").fill("Too long for me")
    page.locator("#task details.skip button[type=submit]").click()
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(second.pk))
    second.refresh_from_db()
    assert (second.status, second.skip_reason) == (Task.Status.SKIPPED, "Too long for me")
    assert not Judgment.objects.exists()
    # Skipped items never come back to this annotator.
    shown = {current_task_id(page)}
    page.reload()
    shown.add(current_task_id(page))
    assert not shown & {first.pk, second.pk}


# --- hostile content on every kind's page -------------------------------------------------------------

PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    "[click me](javascript:window.__pwned=3)",
    '<svg onload="window.__pwned=4"></svg>',
    '"><img src=x onerror=window.__pwned=5>',
    "</textarea><script>window.__pwned=6</script>",
    '<iframe srcdoc="<script>parent.__pwned=7</script>"></iframe>',
]
CODE = "```html\n<script>window.__pwned=8</script>\n```"


def hostile_rows(kind: str, n_responses: int) -> list[dict]:
    # One payload per line: for steps every line is a step, so every step is hostile too.
    text = "\n".join(PAYLOADS)
    return [
        {
            "id": f"{kind}-xss-{i}",
            "prompt": [
                {"role": "system", "content": text},
                {"role": "user", "content": text + f"\n\n{CODE}\n\nitem {i}"},
            ],
            "responses": [f"{text}\nresponse {r} of item {i}\n{CODE}" for r in range(n_responses)],
        }
        for i in range(2)
    ]


INERT = """() => {
  const all = [...document.querySelectorAll('*')];
  return {
    pwned: typeof window.__pwned,
    on: all.flatMap(el => [...el.attributes].filter(a => a.name.toLowerCase().startsWith('on'))
                                              .map(a => el.tagName + '[' + a.name + ']')),
    scripts: [...document.scripts].map(s => s.getAttribute('src') || 'inline:' + s.textContent.slice(0, 40)),
    frames: document.querySelectorAll('iframe, object, embed, svg, img').length,
    badLinks: [...document.querySelectorAll('[href]')].map(a => a.getAttribute('href'))
                 .filter(h => /^\\s*(javascript|data|vbscript):/i.test(h)),
  };
}"""


def assert_inert(page, where: str) -> None:
    report = page.evaluate(INERT)
    assert report["pwned"] == "undefined", f"script ran on {where}"
    assert report["on"] == [], f"event handler attributes on {where}: {report['on']}"
    assert all(s.startswith("/static/") for s in report["scripts"]), (
        f"unexpected scripts on {where}: {report['scripts']}"
    )
    assert report["frames"] == 0 and report["badLinks"] == [], f"{where}: {report}"


@pytest.mark.parametrize(
    "kind,n_responses",
    [(Kind.PAIRWISE, 2), (Kind.RANKING, 3), (Kind.RATING, 2), (Kind.STEPS, 2), (Kind.DEMONSTRATION, 2)],
)
def test_hostile_content_is_inert_on_every_kind(page, kind, n_responses):
    project = make_kind_project(f"xss-{kind}", kind, hostile_rows(kind, n_responses), randomize_order=False)
    login(page, "alice")
    first = open_annotate(page, project)
    assert first.item.external_id == f"{kind}-xss-0"
    page.keyboard.press("?")  # instructions open
    page.keyboard.press("d")  # the word diff of the raw texts shown
    expect(page.locator("#task .diffed").first).to_be_visible()
    for payload in PAYLOADS[:2]:
        expect(page.locator("#task .conversation")).to_contain_text(payload)
        expect(page.locator("#task .diffed").first).to_contain_text(payload)
    assert_inert(page, f"{kind} page")
    if kind in (Kind.STEPS, Kind.DEMONSTRATION):
        screenshot(page, f"annotate-xss-{kind}.png")

    if kind == Kind.DEMONSTRATION:
        # The raw text goes into the box as text, and is stored as such; the preloaded next task is
        # swapped in from a fragment and must be just as inert.
        preloaded = preloaded_task(page)
        page.keyboard.press("1")
        raw = Response.objects.get(pk=first.display_order[0]).text
        expect(page.locator("#task textarea[name=text]")).to_have_value(raw)
        assert_inert(page, "demonstration editor")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#task")).to_have_attribute("data-task", str(preloaded))
        wait_saved(page)
        assert Judgment.objects.get(task=first).text == raw
        page.keyboard.press("d")
        assert_inert(page, "preloaded demonstration task")


def test_without_a_preload_htmx_posts_and_a_lost_answer_still_gets_saved(page):
    project = make_kind_project("nopre", Kind.RATING, rows_for(Kind.RATING, 3, 1))
    # No preload ever arrives, so submits go through htmx; the first one is lost on the network.
    preloads = []
    page.route(
        re.compile(r"/annotate/\?after=\d+$"), lambda route: preloads.append(1) or route.abort("internetdisconnected")
    )
    posts = []

    def flaky(route):
        posts.append(route.request.post_data)
        route.abort("internetdisconnected") if len(posts) == 1 else route.fallback()

    page.route("**/judge/", flaky)
    login(page, "alice")
    first = open_annotate(page, project)
    page.keyboard.press("5")
    page.keyboard.press("Enter")
    # The task stays on screen, marked as waiting, until the retry is acknowledged; then the next one.
    expect(page.locator("#task .draft-notice")).to_contain_text("waiting to be saved")
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(first.pk))
    wait_saved(page)
    assert len(posts) == 2 and posts[0] == posts[1]
    assert Judgment.objects.get(task=first).data == rated(first, 5)
    assert "data-preloaded" not in page.evaluate("Object.keys(document.documentElement.dataset).join(' ')")
    second = Task.objects.get(pk=current_task_id(page))
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(second.pk))
    wait_saved(page)
    assert Judgment.objects.get(task=second).data == rated(second, 1)
    assert Judgment.objects.count() == 2
    assert len(preloads) >= 2  # it was asked for, and never arrived
