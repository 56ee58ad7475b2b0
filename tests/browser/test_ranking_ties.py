"""Ties in a ranking by keyboard: ``=`` ties the response just placed with the one above it, and every key
after it still counts. Drag and the page without JavaScript give the same answer for the same ranking."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotate.models import Judgment, Kind

from .conftest import login
from .test_kinds import by_label, make_kind_project, open_annotate, rank_order, rank_values, rows_for, submitted

pytestmark = pytest.mark.browser


def press(page, keys: str) -> None:
    for key in keys.split():
        page.keyboard.press(key)


def groups(task, *labels) -> list[list[int]]:
    """The stored ranking for groups of display labels (inside a tie, display order, as the form stores it)."""
    return [[by_label(task, n) for n in sorted(group)] for group in labels]


@pytest.fixture
def ties_project(db):
    return make_kind_project("ties4", Kind.RANKING, rows_for(Kind.RANKING, 3, 4), allow_ties=True)


def test_keys_after_a_tie_still_count(page, ties_project):
    login(page, "alice")
    task = open_annotate(page, ties_project)
    expect(page.locator("#task .keys")).to_contain_text(
        "ties the response just placed with the one above it (3 1 = 2: 3 and 1 share first place, then 2)"
    )
    press(page, "4 2 =")
    # The tie ranks only the two tied responses: 3 and 1 are still open for the keys that follow.
    assert rank_values(page) == {"4": "1", "2": "1", "3": "", "1": ""}
    assert rank_order(page)[:2] == ["4", "2"]  # as pressed, not by label
    press(page, "3 1")
    assert rank_values(page) == {"4": "1", "2": "1", "3": "3", "1": "4"}
    assert rank_order(page) == ["4", "2", "3", "1"]
    page.keyboard.press("Enter")
    submitted(page, task)
    assert Judgment.objects.get(task=task).data == {"ranking": groups(task, [4, 2], [3], [1])}


def test_tie_with_the_last_response_placed_by_itself(page, ties_project):
    login(page, "alice")
    task = open_annotate(page, ties_project)
    # After 4 2 3 the last response (1) is placed by itself; pressing 1 then names it, so "=" ties 1 with 3.
    press(page, "4 2 3 1 =")
    assert rank_values(page) == {"4": "1", "2": "2", "3": "3", "1": "3"}
    page.keyboard.press("Enter")
    submitted(page, task)
    assert Judgment.objects.get(task=task).data == {"ranking": groups(task, [4], [2], [3, 1])}


def test_backspace_takes_back_the_response_just_tied(page, ties_project):
    login(page, "alice")
    open_annotate(page, ties_project)
    press(page, "4 2 = Backspace")
    assert rank_values(page) == {"4": "1", "2": "", "3": "", "1": ""}
    press(page, "3 = 2 1")
    assert rank_values(page) == {"4": "1", "3": "1", "2": "3", "1": "4"}


def test_drag_keeps_a_keyed_tie(page, ties_project):
    login(page, "alice")
    task = open_annotate(page, ties_project)
    press(page, "4 2 = 3 1")
    assert rank_order(page) == ["4", "2", "3", "1"]
    # Drag 1 above 3: the tie of 4 and 2 stays, 1 and 3 trade places.
    page.locator('#task .rank-item[data-label="1"] .handle').drag_to(
        page.locator('#task .rank-item[data-label="3"]'), target_position={"x": 40, "y": 5}
    )
    assert rank_order(page) == ["4", "2", "1", "3"]
    assert rank_values(page) == {"4": "1", "2": "1", "1": "3", "3": "4"}
    page.keyboard.press("Enter")
    submitted(page, task)
    assert Judgment.objects.get(task=task).data == {"ranking": groups(task, [4, 2], [1], [3])}


def test_without_javascript_a_shared_rank_is_a_tie(new_context, ties_project):
    page = new_context(java_script_enabled=False).new_page()
    login(page, "alice")
    task = open_annotate(page, ties_project)
    expect(page.locator("#task .keys")).to_contain_text("same rank")
    for label, rank in [("4", "1"), ("2", "1"), ("3", "3"), ("1", "4")]:
        page.locator(f'#task .rank-item[data-label="{label}"] select.rank').select_option(rank)
    with page.expect_navigation():
        page.locator("#task form.judge button[type=submit]").click()
    # The same answer as the keys 4 2 = 3 1.
    assert Judgment.objects.get(task=task).data == {"ranking": groups(task, [4, 2], [3], [1])}
