"""A single line break in a prompt or a response is shown as a line break: a poem or an address keeps its lines,
on the first task of the page and on the next one, which the page preloads and swaps in."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotate.models import Kind

from .conftest import current_task_id, login, wait_saved
from .test_kinds import make_kind_project

pytestmark = pytest.mark.browser

POEM = "Roses are red,\nViolets are blue,\nSugar is sweet."
ADDRESS = "12 High Street\nLondon\nW1A 1AA"
CODE = "```\nx = 1\ny = 2\n```"
LIST = "- first\n  still first\n- second"


def rows() -> list[dict]:
    return [
        {
            "id": f"lines-{i}",
            "prompt": f"Item {i}: write a poem,\nthen an address.",
            "responses": [POEM, f"{ADDRESS}\n\n{CODE}\n\n{LIST}"],
        }
        for i in range(2)
    ]


def shown_lines(page, selector: str) -> list[str]:
    """The lines the reader sees (innerText follows the layout: a <br> is a newline, a source newline is a space)."""
    text = page.locator(selector).evaluate("el => el.innerText")
    return [line for line in text.split("\n") if line]


def assert_lines_kept(page, item: int) -> None:
    assert shown_lines(page, "#task .conversation .msg .md") == [f"Item {item}: write a poem,", "then an address."]
    responses = page.locator("#task article.response .md")
    expect(responses).to_have_count(2)
    texts = responses.evaluate_all("els => els.map(el => el.innerText)")
    seen = sorted(tuple(line for line in text.split("\n") if line) for text in texts)
    assert seen == sorted(
        [
            ("Roses are red,", "Violets are blue,", "Sugar is sweet."),
            ("12 High Street", "London", "W1A 1AA", "x = 1", "y = 2", "first", "still first", "second"),
        ]
    )
    # The code block keeps its own lines and gains no <br>; the list keeps its two items.
    code = page.locator("#task article.response pre > code")
    assert code.text_content() == "x = 1\ny = 2\n"
    expect(page.locator("#task article.response pre br")).to_have_count(0)
    expect(page.locator("#task article.response li")).to_have_count(2)


def test_single_line_breaks_are_kept_on_the_page_and_the_preloaded_task(page, db):
    project = make_kind_project("lines", Kind.PAIRWISE, rows())
    login(page, "alice")
    page.goto(f"/p/{project.slug}/annotate/")
    first = current_task_id(page)
    item = int(page.locator("#task .conversation .msg .md").inner_text().split(":")[0].split()[1])
    assert_lines_kept(page, item)

    # The next task comes from the preload, swapped in without a page load.
    expect(page.locator("html")).to_have_attribute("data-preloaded", re.compile(r"^\d+$"))
    preloaded = int(page.locator("html").get_attribute("data-preloaded"))
    page.evaluate("window.__marker = 1")
    page.keyboard.press("1")
    page.keyboard.press("q")
    page.keyboard.press("Enter")
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(first))
    wait_saved(page)
    assert page.evaluate("window.__marker") == 1, "the next task came from a page load, not the preload"
    assert current_task_id(page) == preloaded
    assert_lines_kept(page, 1 - item)
