"""The researcher dashboard in a real browser: a project with careful, random, position-biased, verbose-loving
and hurried annotators; the plots render, fit the page, name the right annotators, and Reinstate works without
JavaScript. Leaves a screenshot in test-output/screenshots/dashboard.png."""

from __future__ import annotations

import random

import pytest
from django.core.cache import cache
from playwright.sync_api import expect

from annotate import actions
from annotate.models import Kind, Membership, Role
from tests.conftest import jsonl

from .conftest import PASSWORD, SCREENSHOTS, import_rows, login, screenshot

pytestmark = pytest.mark.browser


def rows(n: int, start: int = 0, gold: bool = False) -> list[dict]:
    """Pairwise rows whose right answer (``metadata["right"]``, index 0 or 1) is sometimes the longer response."""
    result = []
    for i in range(start, start + n):
        right, wrong = f"{i} + {i} = {2 * i}.", f"{i} + {i} is {2 * i + 1}, since adding a number to itself doubles it."
        if i % 3 == 0:
            right, wrong = f"Adding {i} to itself gives {2 * i}: twice {i}.", f"{2 * i + 1}."
        index = i % 2
        responses = [right, wrong] if index == 0 else [wrong, right]
        row = {
            "id": f"{'gold' if gold else 'item'}-{i}",
            "prompt": f"What is {i} + {i}?",
            "responses": responses,
            "metadata": {"right": index},
        }
        if gold:
            row["purpose"], row["gold"] = "gold", {"winner": index}
        result.append(row)
    return result


def populate(project, make_member):
    """Seven annotators of different habits, answering in turns so that agreement moves over time."""
    rng = random.Random(7)
    habits = {
        "alice": lambda task, good, lengths: "A" if (task.display_order[0] == good) ^ (rng.random() < 0.08) else "B",
        "bruno": lambda task, good, lengths: "A" if (task.display_order[0] == good) ^ (rng.random() < 0.12) else "B",
        "chen": lambda task, good, lengths: "A" if (task.display_order[0] == good) ^ (rng.random() < 0.1) else "B",
        "dana": lambda task, good, lengths: "A" if (task.display_order[0] == good) ^ (rng.random() < 0.15) else "B",
        "random-rita": lambda task, good, lengths: rng.choice("AB"),
        "first-fred": lambda task, good, lengths: "A",
        "long-lena": lambda task, good, lengths: (
            "A" if lengths[task.display_order[0]] > lengths[task.display_order[1]] else "B"
        ),
    }
    pace = {
        "alice": 9000,
        "bruno": 7000,
        "chen": 11000,
        "dana": 8000,
        "random-rita": 900,
        "first-fred": 2500,
        "long-lena": 6000,
    }
    users = {name: make_member(project, name, password=PASSWORD) for name in habits}
    active = set(habits)
    while active:
        for name in sorted(active):
            user = users[name]
            try:
                task = actions.assign_next_task(user, project)
            except actions.NotAdmitted:
                task = None
            if task is None:
                active.discard(name)
                continue
            responses = {r.pk: r for r in task.item.responses.all()}
            good = next(r.pk for r in responses.values() if r.index == task.item.metadata["right"])
            lengths = {pk: len(r.text) for pk, r in responses.items()}
            choice = habits[name](task, good, lengths)
            duration = int(pace[name] * rng.uniform(0.6, 1.6))
            actions.record_judgment(
                task, {"choice": choice, "strength": rng.randint(0, 3), "duration_ms": duration}, f"{name}-{task.pk}"
            )
    return users


def test_dashboard_shows_who_to_review_and_reinstates(make_project, make_member, new_context):
    cache.clear()
    project = make_project(
        slug="demo",
        kind=Kind.PAIRWISE,
        overlap=4,
        n_items=0,
        gold_rate=0.25,
        review_min_gold=8,
        review_gold_accuracy=0.7,
        review_speed_ratio=0.2,
        name="Arithmetic preferences",
    )
    import_rows(project, jsonl(rows(60)))
    import_rows(project, jsonl(rows(20, start=500, gold=True)))
    users = populate(project, make_member)
    make_member(project, "newcomer", password=PASSWORD)
    Membership.objects.filter(user__username="newcomer").update(status=Membership.Status.CANDIDATE)
    make_member(project, "rhea", Role.RESEARCHER, password=PASSWORD)
    flagged = Membership.objects.get(user=users["random-rita"])
    assert flagged.status in ("flagged", "paused"), flagged.status_reason

    page = new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900}).new_page()
    login(page, "rhea")
    page.goto("/p/demo/dashboard/")
    expect(page.locator("h1")).to_contain_text("Arithmetic preferences")
    assert page.locator("svg.chart").count() >= 6
    # Every chart fits the page: nothing wider than the main column.
    widths = page.evaluate(
        "Array.from(document.querySelectorAll('svg.chart')).map(s => s.getBoundingClientRect().right)"
    )
    assert max(widths) <= page.evaluate("document.querySelector('main').getBoundingClientRect().right") + 1
    fred = Membership.objects.get(user=users["first-fred"]).pseudonym
    expect(page.locator(f'#position-chart rect[data-label="{fred}"]')).to_have_attribute("data-value", "1")
    expect(page.locator("#review")).to_contain_text("random-rita")
    screenshot(page, "dashboard.png")
    for section in ("headline", "review", "over-time", "annotators", "confusion"):
        page.locator(f"#{section}").screenshot(path=str(SCREENSHOTS / f"dashboard-{section}.png"))

    # Reinstate with a plain form (JavaScript is off in this context).
    page.locator('#review button[aria-label="Reinstate random-rita"]').click()
    expect(page.locator(".message.success")).to_contain_text("random-rita is active again")
    flagged.refresh_from_db()
    assert flagged.status == "active" and flagged.status_reason == "Reinstated by rhea."


def test_the_annotators_drawn_red_are_the_ones_listed_under_review(make_project, make_member, new_context):
    """Issue 14: an annotator drawn red below the speed line while the page said "Everyone is active". Here the
    line moves (a researcher tightens review_speed_ratio) and hasty never submits again: the dashboard reviews
    on view, and every red mark on the page names someone in the table of annotators under review."""
    cache.clear()
    project = make_project(slug="demo", kind=Kind.PAIRWISE, overlap=3, n_items=0, review_position_bias_p=0)
    import_rows(project, jsonl(rows(12)))
    pace = {"hasty": 2000, "steady": 6000, "calm": 7000}  # the project's median: 6 s
    for name, ms in pace.items():
        user = make_member(project, name, password=PASSWORD)
        while (task := actions.assign_next_task(user, project)) is not None:
            actions.record_judgment(task, {"choice": "A", "strength": 1, "duration_ms": ms}, f"{name}-{task.pk}")
    assert not Membership.objects.filter(project=project).exclude(status=Membership.Status.ACTIVE).exists()
    actions.update_project_settings(project, review_speed_ratio=0.5)  # the line: 3 s; hasty's median is 2 s
    make_member(project, "rhea", Role.RESEARCHER, password=PASSWORD)
    hasty = Membership.objects.get(project=project, user__username="hasty").pseudonym

    page = new_context(java_script_enabled=False).new_page()
    login(page, "rhea")
    page.goto("/p/demo/dashboard/")
    red = page.locator('svg rect.bar.bad, svg circle[fill="#c0392b"]').evaluate_all(
        "marks => marks.map(m => m.dataset.label)"
    )
    listed = page.locator("#review tbody tr td:nth-child(2) code").all_inner_texts()
    assert hasty in red and set(red) <= set(listed), (red, listed)
    expect(page.locator("#review")).to_contain_text("hasty")
    expect(page.locator("#review")).not_to_contain_text("Everyone is active")
    expect(page.locator("#review")).to_contain_text("median time on task 2.0 s is far below the project's 6.0 s")
    expect(page.locator(f'#speed-chart rect[data-label="{hasty}"]')).to_have_attribute("data-value", "2")
    page.locator("#review").screenshot(path=str(SCREENSHOTS / "dashboard-review-agrees.png"))
