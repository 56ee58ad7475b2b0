"""The researcher's seat in a real browser: filter the items to the split ones, open one, adjudicate it, resolve
a flag from the queue, export and find the adjudicated label in the file; an annotator is kept out. Leaves
screenshots of the items page at 1400 and 390 px."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from annotate import actions
from annotate.imports import parse_votes
from annotate.models import Item, Role
from tests.conftest import jsonl, pairwise_rows

from .conftest import PASSWORD, import_rows, login, screenshot

pytestmark = pytest.mark.browser


@pytest.fixture
def split_project(make_project, make_member):
    """12 items, overlap 3, three imported annotators: items 0-2 split 2:1 for response 0, the rest unanimous."""
    project = make_project(slug="research", n_items=0, overlap=3)
    rows = pairwise_rows(12)
    rows[1]["prompt"] = "Which volcano erupted in 1815?"
    import_rows(project, jsonl(rows))
    votes = [
        {"item": f"item-{i}", "annotator": name, "winner": 1 if (i < 3 and name == "r3") else 0, "strength": 2}
        for i in range(12)
        for name in ("r1", "r2", "r3")
    ]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    make_member(project, "rhea", Role.RESEARCHER, password=PASSWORD)
    annotator = make_member(project, "ann", password=PASSWORD)
    item = Item.objects.get(project=project, external_id="item-7")
    actions.request_more_votes(project, [item.pk], 1)
    task = actions.assign_next_task(annotator, project)
    actions.flag_task(task, "personal_data", "a phone number in response B")
    return project


def test_researcher_filters_adjudicates_resolves_and_exports(page, split_project, tmp_path):
    project = split_project
    login(page, "rhea")
    page.goto(f"/p/{project.slug}/")
    page.get_by_role("link", name="Items", exact=True).click()
    expect(page.locator("#item-count")).to_have_text("12")
    # htmx binds the filter form once the page has loaded: a change before that is a plain change (on a cold
    # machine the test was quicker than the page).
    page.wait_for_load_state("load")
    page.wait_for_function("() => window.htmx !== undefined")

    # Filter to the split items: htmx swaps the table and the address keeps the filter.
    page.select_option('select[name="agreement"]', "split")
    expect(page.locator("#item-count")).to_have_text("3")
    assert "agreement=split" in page.url
    expect(page.locator("table.items tbody tr")).to_have_count(3)
    page.set_viewport_size({"width": 1400, "height": 900})
    screenshot(page, "items-split-1400.png")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "items-split-390.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1, "the items page overflows at 390 px"
    page.set_viewport_size({"width": 1400, "height": 900})

    # Search within them.
    page.fill('input[name="q"]', "volcano")
    expect(page.locator("#item-count")).to_have_text("1")
    page.locator("a.item-link").first.click()
    expect(page.locator("table.votes tbody tr")).to_have_count(3)
    expect(page.locator("#labels")).to_contain_text("A better than B")

    # Adjudicate: B, against the majority.
    page.get_by_label("B is better").check()
    page.fill('input[name="reason"]', "B names Tambora; A is wrong")
    page.get_by_role("button", name="Record the final label").click()
    expect(page.locator("#current-adjudication")).to_contain_text("Adjudicated: B better")
    expect(page.locator("#current-adjudication")).to_contain_text("B names Tambora")

    # The queue: the annotator's flag, resolved with a note.
    page.goto(f"/p/{project.slug}/queue/")
    row = page.locator("table.queue tbody tr", has_text="a phone number in response B")
    row.locator('input[name="resolution"]').fill("number removed from the item")
    row.get_by_role("button", name="Resolve").click()
    expect(page.locator(".message.success")).to_contain_text("resolved")
    expect(page.locator("table.queue")).to_have_count(0)  # nothing open is left
    page.goto(f"/p/{project.slug}/queue/?status=resolved")
    expect(page.locator("table.queue")).to_contain_text("number removed from the item")

    # Export (TRL, majority): the adjudicated item's chosen response is B.
    page.goto(f"/p/{project.slug}/")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download JSONL").click()
    path = tmp_path / "export.jsonl"
    download.value.save_as(path)
    rows = {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}
    adjudicated = Item.objects.get(project=project, external_id="item-1")
    assert rows["item-1"]["chosen"] == adjudicated.responses.get(index=1).text
    assert (
        rows["item-0"]["chosen"] == Item.objects.get(project=project, external_id="item-0").responses.get(index=0).text
    )


def test_an_annotator_cannot_open_the_browser(page, split_project):
    login(page, "ann")
    response = page.goto(f"/p/{split_project.slug}/items/")
    assert response.status == 403
    page.goto(f"/p/{split_project.slug}/")
    expect(page.get_by_role("link", name="Items", exact=True)).to_have_count(0)
