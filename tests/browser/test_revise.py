"""Going back to change an answer in a real browser, on a phone-sized screen: "Previous" (key p) walks back through
the annotator's answers with each one filled in, a changed answer supersedes the old one in the database, the page
returns to the current task, and the progress line says what is done and what is left. Also without JavaScript; and
the other two htmx swaps of the same issue at that size: member suggestions, and the new-project form's kind fields."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotate.models import Item, Judgment, Project, Role, Task

from .conftest import current_task_id, login, screenshot, wait_saved

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


def fits_the_screen(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px screen"
    # The progress line is whole (a class shared with the project page's bar once cut it to 10px).
    assert page.locator("#task .progress-line").bounding_box()["height"] >= 16


def press_answer(page, *keys: str) -> int:
    """Answer the task on screen with ``keys`` and Enter; returns its id once the next task is shown and saved."""
    task = current_task_id(page)
    for key in keys:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(task))
    wait_saved(page)
    return task


def test_previous_walks_back_and_a_changed_answer_supersedes_the_old_one(new_context, pairwise_project):
    project, alice = pairwise_project  # 5 items, overlap 2, alice the only annotator
    page = new_context(viewport=PHONE).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, "alice")
    page.goto(f"/p/{project.slug}/annotate/")
    expect(page.locator("#progress-count")).to_have_text("0 done")
    expect(page.locator("#progress-left")).to_have_text("· 5 left")
    expect(page.locator("#task a.previous")).to_have_count(0)  # nothing to go back to yet

    first = press_answer(page, "1", "w")  # A, slightly better
    second = press_answer(page, "3")  # tie
    current = current_task_id(page)  # the task on screen; the preload may hold the one after it too
    expect(page.locator("#progress-count")).to_have_text("2 done")
    expect(page.locator("#progress-left")).to_have_text("· 3 left")  # 2 of 5 done: the total is 5

    # p: the last answer, filled in; p again: the one before it.
    page.keyboard.press("p")
    expect(page.locator("#task")).to_have_attribute("data-task", str(second))
    expect(page.locator("#task")).to_have_attribute("data-revision", "1")
    expect(page.locator("#task input[name=choice][value=tie]")).to_be_checked()
    fits_the_screen(page)
    page.keyboard.press("p")
    expect(page.locator("#task")).to_have_attribute("data-task", str(first))
    expect(page.locator("#task input[name=choice][value=A]")).to_be_checked()
    expect(page.locator("#task input[name=strength][value='1']")).to_be_checked()
    # The responses in the order alice saw them when she answered.
    task = Task.objects.get(pk=first)
    shown = [page.locator(f'#task article.response[data-position="{p}"] .md').inner_text().strip() for p in "AB"]
    texts = dict(Item.objects.get(pk=task.item_id).responses.values_list("pk", "text"))
    assert shown == [texts[task.display_order[0]], texts[task.display_order[1]]]
    screenshot(page, "revise-390.png")
    fits_the_screen(page)

    # B, significantly better: back to the task she was on, and the answer is changed.
    page.keyboard.press("2")
    page.keyboard.press("r")
    page.keyboard.press("Enter")
    # The revision is saved and acknowledged, and the page is back on the task she was on (the race that once
    # showed another fragment here is the next test's).
    expect(page.locator("#task")).not_to_have_attribute("data-revision", "1")
    expect(page.locator("#task")).to_contain_text("Your earlier answer is changed")
    expect(page.locator("#task")).to_have_attribute("data-task", str(current))
    wait_saved(page)
    resumed = current
    expect(page.locator("#progress-count")).to_have_text("2 done")
    expect(page.locator("#progress-left")).to_have_text("· 3 left")

    old, new = Judgment.objects.filter(task=first).order_by("id")
    assert (old.is_current, old.winner_id, old.strength) == (False, task.display_order[0], 1)
    assert (new.is_current, new.winner_id, new.strength, new.supersedes_id) == (True, task.display_order[1], 3, old.pk)
    assert Judgment.objects.filter(task=second).count() == 1
    assert Item.objects.get(pk=task.item_id).n_judgments == 1  # a change is not a second vote

    # Work goes on from the current task as before.
    assert press_answer(page, "4") == resumed
    expect(page.locator("#progress-count")).to_have_text("3 done")
    expect(page.locator("#progress-left")).to_have_text("· 2 left")
    assert Judgment.objects.get(task=resumed).outcome == "both_bad"
    assert not errors, errors


def test_previous_without_javascript(new_context, pairwise_project):
    project, alice = pairwise_project
    page = new_context(java_script_enabled=False, viewport=PHONE).new_page()
    login(page, "alice")
    page.goto(f"/p/{project.slug}/annotate/")
    first = current_task_id(page)
    page.check("#task input[name=choice][value=tie]")
    with page.expect_navigation():
        page.locator("#task form.judge button[type=submit]").click()
    current = current_task_id(page)

    with page.expect_navigation():
        page.locator("#task a.previous").click()
    assert current_task_id(page) == first
    expect(page.locator("#task input[name=choice][value=tie]")).to_be_checked()
    fits_the_screen(page)
    page.check("#task input[name=choice][value=B]")
    page.check("#task input[name=strength][value='2']")
    with page.expect_navigation():
        page.locator("#task form.judge button[type=submit]").click()
    assert page.url.endswith(f"/p/{project.slug}/annotate/") and current_task_id(page) == current
    expect(page.locator("#messages")).to_contain_text("Your earlier answer is changed")
    task = Task.objects.get(pk=first)
    assert list(Judgment.objects.filter(task=first).order_by("id").values_list("outcome", "is_current")) == [
        ("tie", False),
        ("win", True),
    ]
    assert Judgment.objects.get(task=first, is_current=True).winner_id == task.display_order[1]


def test_a_preload_that_returns_while_its_task_is_posted_is_not_shown_after_a_revision(new_context, pairwise_project):
    """The race behind issue 14's flaky revision: the preload of the task on screen came back while that task's
    answer was being posted through htmx (no preload yet when Enter was pressed). Kept, it was used later when the
    same task was revised, and the page showed that stale fragment instead of the server's reply to the revision."""
    project, alice = pairwise_project
    page = new_context().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    preloads, posts = [], []
    page.route(re.compile(r"/annotate/\?after=\d+$"), lambda route: preloads.append(route))
    page.route("**/judge/", lambda route: posts.append(route))
    login(page, "alice")
    page.goto(f"/p/{project.slug}/annotate/")
    first = current_task_id(page)
    _wait_for(page, preloads)  # the preload of the first task, held
    page.keyboard.press("3")  # a tie
    page.keyboard.press("Enter")  # no preload yet: htmx posts the answer
    _wait_for(page, posts)
    preloads.pop().continue_()  # the preload comes back while the answer is on its way
    page.wait_for_timeout(300)
    posts.pop().continue_()
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(first))
    current = current_task_id(page)
    page.unroute("**/judge/")
    _wait_for(page, preloads)  # the second task's preload, held until the end

    page.keyboard.press("p")
    expect(page.locator("#task")).to_have_attribute("data-task", str(first))
    expect(page.locator("#task")).to_have_attribute("data-revision", "1")
    page.keyboard.press("2")
    page.keyboard.press("r")
    page.keyboard.press("Enter")
    # The server's reply to the revision: back to the task she was on, with its notice.
    expect(page.locator("#task")).to_contain_text("Your earlier answer is changed")
    expect(page.locator("#task")).to_have_attribute("data-task", str(current))
    expect(page.locator("#task")).not_to_have_attribute("data-revision", "1")
    wait_saved(page)
    assert Judgment.objects.get(task=first, is_current=True).outcome == "win"
    assert Task.objects.get(pk=current).status == Task.Status.LEASED
    assert not errors, errors


def _wait_for(page, held: list, timeout_ms: int = 10_000) -> None:
    """Wait until a request matched by a route that holds its requests arrived (the page keeps running)."""
    for _ in range(timeout_ms // 50):
        if held:
            return
        page.wait_for_timeout(50)
    raise AssertionError("the request never came")


def test_member_suggestions_and_the_kinds_fields_swap_in(new_context, make_project, make_member, django_user_model):
    project = make_project(n_items=0)
    make_member(project, "boss", Role.ADMIN)
    for name in ("alice", "alicia", "malik"):
        django_user_model.objects.create_user(name)
    page = new_context(viewport=PHONE).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, "boss")
    page.goto(f"/p/{project.slug}/members/")
    page.fill("#add-member input[name=username]", "ali")
    page.keyboard.type("c")  # "alic": the datalist is refilled as one types
    expect(page.locator("#member-suggestions option")).to_have_count(2)
    assert [o.get_attribute("value") for o in page.locator("#member-suggestions option").all()] == ["alice", "alicia"]

    page.goto("/projects/new/")
    page.select_option("select[name=kind]", "rating")
    expect(page.locator("#kind-fields input[name=scale_text]")).to_have_count(1)
    page.select_option("select[name=kind]", "steps")
    expect(page.locator("#kind-fields input[name=step_separator]")).to_have_count(1)
    expect(page.locator("input[name=scale_text], input[name=criteria_text]")).to_have_count(0)
    page.fill("input[name=slug]", "stepsy")
    page.fill("#kind-fields input[name=step_separator]", "##")
    fits_width = page.evaluate("document.documentElement.scrollWidth")
    with page.expect_navigation():
        page.click("button[type=submit].primary")
    created = Project.objects.get(slug="stepsy")
    assert (created.kind, created.step_separator, created.scale) == ("steps", "##", {})
    assert fits_width <= PHONE["width"] and not errors, (fits_width, errors)
