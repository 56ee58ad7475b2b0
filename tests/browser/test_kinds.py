"""Every task kind in a real browser: keyboard only, mouse, a reload mid-way that finds the draft, and the
judgments in the database afterwards, value by value. Plus criteria and "write a better one" for pairwise,
and every kind without JavaScript."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from annotate import actions
from annotate.models import Judgment, Kind, Response, Task

from .conftest import PASSWORD, current_task_id, import_rows, login, screenshot, wait_saved

pytestmark = pytest.mark.browser


def make_kind_project(slug, kind, rows, **fields):
    project = actions.create_project(slug=slug, kind=kind, overlap=1, **fields)
    import_rows(project, "".join(json.dumps(row) + "\n" for row in rows).encode())
    actions.add_member(project, "alice", "annotator", PASSWORD)
    return project


def rows_for(kind: str, n_items: int, n_responses: int) -> list[dict]:
    rows = []
    for i in range(n_items):
        if kind == Kind.STEPS:
            responses = [
                f"Item {i}, answer {r}: first, read the question.\nThen add {i} and {r}.\nSo the sum is {i + r}."
                for r in range(n_responses)
            ]
        else:
            responses = [f"Item {i}, answer {r}: the **sum** of {i} and {r} is `{i + r}`." for r in range(n_responses)]
        rows.append({"id": f"{kind}-{i}", "prompt": f"Question {i}: add {i} and each r.", "responses": responses})
    return rows


def open_annotate(page, project) -> Task:
    page.goto(f"/p/{project.slug}/annotate/")
    return Task.objects.get(pk=current_task_id(page))


def submitted(page, task: Task) -> Task | None:
    """After a submit: the page shows another task, the answer is saved; returns the task now shown."""
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(task.pk))
    wait_saved(page)
    value = page.locator("#task").get_attribute("data-task")
    return Task.objects.get(pk=int(value)) if value else None


def by_label(task: Task, label: int) -> int:
    """The response id shown as number ``label`` (1-based display position)."""
    return task.display_order[label - 1]


def reload_and_wait(page) -> None:
    page.reload()
    expect(page.locator("#task")).to_be_visible()


# --- ranking ------------------------------------------------------------------------------------------


def rank_order(page) -> list[str]:
    """The labels of the ranking list, top to bottom."""
    return page.locator("#task .rank-item").evaluate_all("els => els.map(el => el.dataset.label)")


def rank_values(page) -> dict[str, str]:
    return dict(
        page.locator("#task .rank-item").evaluate_all(
            "els => els.map(el => [el.dataset.label, el.querySelector('select.rank').value])"
        )
    )


def test_ranking_keyboard_mouse_drag_and_draft(page):
    project = make_kind_project("rank", Kind.RANKING, rows_for(Kind.RANKING, 3, 4))
    login(page, "alice")
    first = open_annotate(page, project)
    expect(page.locator("#task .keys")).to_contain_text("Backspace")
    screenshot(page, "annotate-ranking.png")

    # Keyboard only: 3, 1, Backspace (takes 1 back), 4, 1 (the last one, 2, is placed by itself),
    # then ArrowUp moves the highlighted response (1, placed last by a key) above 4.
    for key in ["3", "1"]:
        page.keyboard.press(key)
    assert rank_values(page) == {"3": "1", "1": "2", "2": "", "4": ""}
    page.keyboard.press("Backspace")
    assert rank_values(page) == {"3": "1", "1": "", "2": "", "4": ""}
    for key in ["4", "1"]:
        page.keyboard.press(key)
    assert rank_order(page) == ["3", "4", "1", "2"]
    page.keyboard.press("ArrowUp")
    assert rank_order(page) == ["3", "1", "4", "2"]
    assert rank_values(page) == {"3": "1", "1": "2", "4": "3", "2": "4"}
    page.keyboard.press("Enter")
    second = submitted(page, first)
    expected = {first.pk: [[by_label(first, n)] for n in (3, 1, 4, 2)]}

    # Mouse: drag response 3 to the top, then pick rank 2 for response 4 (it trades places with 1).
    handle = page.locator('#task .rank-item[data-label="3"] .handle')
    handle.drag_to(page.locator('#task .rank-item[data-label="1"]'), target_position={"x": 40, "y": 5})
    assert rank_order(page) == ["3", "1", "2", "4"]
    assert rank_values(page) == {"3": "1", "1": "2", "2": "3", "4": "4"}
    page.locator('#task .rank-item[data-label="4"] select.rank').select_option("2")
    assert rank_order(page) == ["3", "4", "2", "1"]
    page.locator("#task form.judge button[type=submit]").click()
    third = submitted(page, second)
    expected[second.pk] = [[by_label(second, n)] for n in (3, 4, 2, 1)]

    # Half a ranking, a reload: the same task with the same half ranking, in order.
    page.keyboard.press("2")
    page.keyboard.press("4")
    reload_and_wait(page)
    assert current_task_id(page) == third.pk
    expect(page.locator("#task .draft-notice")).to_contain_text("restored")
    assert rank_values(page) == {"2": "1", "4": "2", "1": "", "3": ""}
    assert rank_order(page) == ["2", "4", "1", "3"]
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    assert submitted(page, third) is None  # nothing left
    expected[third.pk] = [[by_label(third, n)] for n in (2, 4, 1, 3)]

    stored = {j.task_id: j.data["ranking"] for j in Judgment.objects.filter(annotator__username="alice")}
    assert stored == expected
    assert all(j.source == "web" and j.duration_ms is not None for j in Judgment.objects.all())
    # Acknowledged answers leave no drafts behind.
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('arbiter:draft:'))") == []


def test_ranking_ties_by_keyboard(page):
    project = make_kind_project("ties", Kind.RANKING, rows_for(Kind.RANKING, 1, 3), allow_ties=True)
    login(page, "alice")
    task = open_annotate(page, project)
    page.keyboard.press("2")
    page.keyboard.press("3")  # 1 is placed by itself
    page.keyboard.press("=")  # the highlighted response (3) ties with the one above (2)
    assert rank_values(page) == {"2": "1", "3": "1", "1": "3"}
    page.keyboard.press("Enter")
    submitted(page, task)
    assert Judgment.objects.get(task=task).data == {
        "ranking": [[by_label(task, 2), by_label(task, 3)], [by_label(task, 1)]]
    }


# --- rating -------------------------------------------------------------------------------------------


def test_rating_keyboard_mouse_and_draft(page):
    project = make_kind_project(
        "rate", Kind.RATING, rows_for(Kind.RATING, 3, 2), criteria=["helpful", "safe"], scale={"min": 1, "max": 5}
    )
    login(page, "alice")
    first = open_annotate(page, project)
    expect(page.locator("#task .keys")).to_contain_text("5")
    screenshot(page, "annotate-rating.png")

    def checked(task):
        return {
            (rid, c): page.locator(f'#task input[name="rating_{rid}_{i}"]:checked').get_attribute("value")
            if page.locator(f'#task input[name="rating_{rid}_{i}"]:checked').count()
            else None
            for rid in task.display_order
            for i, c in enumerate(["helpful", "safe"])
        }

    # Keyboard: the cells are response 1 helpful, safe, response 2 helpful, safe. "k" goes back up one.
    for key in ["5", "4", "2", "1", "k", "3"]:
        page.keyboard.press(key)
    a, b = first.display_order
    assert checked(first) == {(a, "helpful"): "5", (a, "safe"): "4", (b, "helpful"): "3", (b, "safe"): "1"}
    page.keyboard.press("Enter")
    second = submitted(page, first)
    expected = {first.pk: {str(a): {"helpful": 5, "safe": 4}, str(b): {"helpful": 3, "safe": 1}}}

    # Mouse: click the score labels.
    a, b = second.display_order
    for rid, i, value in [(a, 0, "2"), (a, 1, "5"), (b, 0, "4"), (b, 1, "4")]:
        page.locator(f'#task label.score:has(input[name="rating_{rid}_{i}"][value="{value}"])').click()
    page.locator("#task form.judge button[type=submit]").click()
    third = submitted(page, second)
    expected[second.pk] = {str(a): {"helpful": 2, "safe": 5}, str(b): {"helpful": 4, "safe": 4}}

    # Two scores, a reload, the two scores back; then the other two.
    page.keyboard.press("1")
    page.keyboard.press("2")
    reload_and_wait(page)
    assert current_task_id(page) == third.pk
    a, b = third.display_order
    assert checked(third) == {(a, "helpful"): "1", (a, "safe"): "2", (b, "helpful"): None, (b, "safe"): None}
    expect(page.locator("#task tr.cell.current")).to_have_count(1)
    page.keyboard.press("3")  # the highlighted cell is the first open one after a restore
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    submitted(page, third)
    expected[third.pk] = {str(a): {"helpful": 1, "safe": 2}, str(b): {"helpful": 3, "safe": 4}}

    assert {j.task_id: j.data["ratings"] for j in Judgment.objects.all()} == expected


# --- steps ----------------------------------------------------------------------------------------------


def test_steps_keyboard_mouse_and_draft(page):
    project = make_kind_project("steps", Kind.STEPS, rows_for(Kind.STEPS, 3, 2))
    login(page, "alice")
    first = open_annotate(page, project)
    expect(page.locator("#task li.step")).to_have_count(6)
    screenshot(page, "annotate-steps.png")

    # + 0 - for the first response, 1 2 3 for the second; then up twice (k, ArrowUp) and relabel with -.
    for key in ["+", "0", "-", "1", "2", "3", "k", "ArrowUp", "-"]:
        page.keyboard.press(key)
    expect(page.locator("#task li.step.current")).to_have_count(1)
    page.keyboard.press("Enter")
    second = submitted(page, first)
    a, b = first.display_order
    expected = {first.pk: {str(a): ["positive", "neutral", "negative"], str(b): ["negative", "neutral", "negative"]}}

    # Mouse.
    a, b = second.display_order
    plan = {a: ["neutral", "positive", "positive"], b: ["negative", "neutral", "positive"]}
    for rid, labels in plan.items():
        for j, label in enumerate(labels):
            page.locator(f'#task label.step-label:has(input[name="step_{rid}_{j}"][value="{label}"])').click()
    page.locator("#task form.judge button[type=submit]").click()
    third = submitted(page, second)
    expected[second.pk] = {str(rid): labels for rid, labels in plan.items()}

    # Draft: three labels, reload, they are back; then the rest, with "j" to move past a label.
    for key in ["1", "1", "3"]:
        page.keyboard.press(key)
    reload_and_wait(page)
    assert current_task_id(page) == third.pk
    a, b = third.display_order
    for j, label in enumerate(["positive", "positive", "negative"]):
        expect(page.locator(f'#task input[name="step_{a}_{j}"][value="{label}"]')).to_be_checked()
    expect(page.locator(f'#task input[name="step_{b}_0"]:checked')).to_have_count(0)
    for key in ["2", "2", "2"]:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    submitted(page, third)
    expected[third.pk] = {str(a): ["positive", "positive", "negative"], str(b): ["neutral"] * 3}

    assert {j.task_id: j.data["steps"] for j in Judgment.objects.all()} == expected


# --- demonstration --------------------------------------------------------------------------------------


def test_demonstration_keyboard_mouse_and_draft(page):
    rows = rows_for(Kind.DEMONSTRATION, 3, 2)
    # Raw text goes into the box as text: markdown stays markdown, markup stays visible characters.
    rows[0]["responses"][1] = "Use **bold** and <b>tags</b> &amp; entities.\n\n    indented code"
    project = make_kind_project("demo", Kind.DEMONSTRATION, rows, randomize_order=False)
    login(page, "alice")
    first = open_annotate(page, project)
    screenshot(page, "annotate-demonstration.png")
    box = page.locator("#task textarea[name=text]")

    # Keyboard: 2 starts from response 2 (the caret at its end), type more, Ctrl+Enter submits.
    page.keyboard.press("2")
    raw = Response.objects.get(pk=by_label(first, 2)).text
    expect(box).to_have_value(raw)
    expect(box).to_be_focused()
    page.keyboard.type(" Extra.")
    page.keyboard.press("Control+Enter")
    second = submitted(page, first)
    expected = {first.pk: (raw + " Extra.", {"based_on": by_label(first, 2)})}

    # Mouse: "Start from this" on response 1, then an edit in the box, then the Submit button.
    page.locator('#task article[data-position="1"] a.start-from').click()
    raw = Response.objects.get(pk=by_label(second, 1)).text
    expect(box).to_have_value(raw)
    box.click()
    box.press("End")
    box.type(" (checked)")
    page.locator("#task form.judge button[type=submit]").click()
    third = submitted(page, second)
    expected[second.pk] = (raw + " (checked)", {"based_on": by_label(second, 1)})

    # Written from scratch: "t" goes to the box; a reload keeps the half-written text.
    page.keyboard.press("t")
    page.keyboard.type("Half a thought")
    reload_and_wait(page)
    assert current_task_id(page) == third.pk
    expect(box).to_have_value("Half a thought")
    box.press("End")
    box.type(", finished.")
    box.press("Escape")
    page.keyboard.press("Enter")
    submitted(page, third)
    expected[third.pk] = ("Half a thought, finished.", {})

    assert {j.task_id: (j.text, j.data) for j in Judgment.objects.all()} == expected


# --- pairwise with criteria and "write a better one" -----------------------------------------------------


def test_pairwise_criteria_better_one_and_draft(page):
    project = make_kind_project(
        "crit",
        Kind.PAIRWISE,
        rows_for(Kind.PAIRWISE, 3, 2),
        criteria=["helpfulness", "harmlessness"],
        instructions="Judge **helpfulness** first.",
    )
    login(page, "alice")
    first = open_annotate(page, project)
    # Instructions one key away; differences on "d".
    expect(page.locator("#instructions")).not_to_have_attribute("open", "")
    page.keyboard.press("?")
    expect(page.locator("#instructions strong")).to_have_text("helpfulness")
    page.keyboard.press("i")
    expect(page.locator("#instructions strong")).to_be_hidden()
    page.keyboard.press("d")
    expect(page.locator('#task article[data-position="A"] .diffed')).to_be_visible()
    expect(page.locator("#task .diffed del, #task .diffed ins").first).to_be_visible()
    screenshot(page, "annotate-pairwise-criteria.png")
    page.keyboard.press("d")
    expect(page.locator('#task article[data-position="A"] .diffed')).to_be_hidden()

    # Overall B (slightly), then helpfulness A, harmlessness tie, each key moving on to the next row.
    for key in ["2", "w", "1", "3"]:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    second = submitted(page, first)
    judgment = Judgment.objects.get(task=first)
    assert (judgment.outcome, judgment.winner_id, judgment.strength) == ("win", first.display_order[1], 1)
    assert judgment.data == {
        "criteria": {
            "helpfulness": {"outcome": "win", "winner": first.display_order[0]},
            "harmlessness": {"outcome": "tie", "winner": None},
        }
    }

    # Both bad, and a better one written: "t" opens the box; a reload keeps choices and text.
    expect(page.locator("#task .better textarea")).to_be_hidden()
    page.keyboard.press("4")
    expect(page.locator("#task .better textarea")).to_be_visible()
    page.keyboard.press("4")
    page.keyboard.press("t")
    page.keyboard.type("A better answer, with the sum.")
    reload_and_wait(page)
    assert current_task_id(page) == second.pk
    expect(page.locator('#task input[name="choice"][value="both_bad"]')).to_be_checked()
    expect(page.locator('#task input[name="criterion_0"][value="both_bad"]')).to_be_checked()
    expect(page.locator("#task .better textarea")).to_have_value("A better answer, with the sum.")
    page.locator('#task label.criterion-choice:has(input[name="criterion_1"][value="B"])').click()
    page.locator("#task form.judge button[type=submit]").click()
    submitted(page, second)
    judgment = Judgment.objects.get(task=second)
    assert (judgment.outcome, judgment.winner_id, judgment.strength) == ("both_bad", None, None)
    assert judgment.data == {
        "criteria": {
            "helpfulness": {"outcome": "both_bad", "winner": None},
            "harmlessness": {"outcome": "win", "winner": second.display_order[1]},
        },
        "demonstration": "A better answer, with the sum.",
    }


# --- without JavaScript ---------------------------------------------------------------------------------


def test_every_kind_without_javascript(new_context, db):
    projects = {
        kind: make_kind_project(f"nojs-{kind}", kind, rows_for(kind, 2, n), **fields)
        for kind, n, fields in [
            (Kind.PAIRWISE, 2, {"criteria": ["honesty"]}),
            (Kind.RANKING, 3, {}),
            (Kind.RATING, 2, {"scale": {"labels": ["safe", "unsafe", "unsure"]}}),
            (Kind.STEPS, 1, {}),
            (Kind.DEMONSTRATION, 2, {}),
        ]
    }
    page = new_context(java_script_enabled=False).new_page()
    login(page, "alice")

    def post():
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            with page.expect_navigation():
                page.locator("#task form.judge button[type=submit]").click()
        assert posted.value.status == 302

    # Pairwise: the difference highlight toggles without JavaScript (a checkbox and CSS).
    task = open_annotate(page, projects[Kind.PAIRWISE])
    expect(page.locator("#task .diffed").first).to_be_hidden()
    page.locator("#task label.diff-label").click()
    expect(page.locator("#task .diffed").first).to_be_visible()
    page.locator('#task label.choice:has(input[name="choice"][value="A"])').click()
    page.locator('#task label.choice:has(input[name="strength"][value="3"])').click()
    page.locator('#task label.criterion-choice:has(input[name="criterion_0"][value="B"])').click()
    post()
    judgment = Judgment.objects.get(task=task)
    assert (judgment.winner_id, judgment.strength) == (task.display_order[0], 3)
    assert judgment.data == {"criteria": {"honesty": {"outcome": "win", "winner": task.display_order[1]}}}

    # Ranking: the rank selects.
    task = open_annotate(page, projects[Kind.RANKING])
    for label, rank in [("1", "2"), ("2", "3"), ("3", "1")]:
        page.locator(f'#task .rank-item[data-label="{label}"] select.rank').select_option(rank)
    post()
    assert Judgment.objects.get(task=task).data == {"ranking": [[by_label(task, n)] for n in (3, 1, 2)]}

    # Rating on a categorical scale.
    task = open_annotate(page, projects[Kind.RATING])
    a, b = task.display_order
    page.locator(f'#task label.score:has(input[name="rating_{a}_0"][value="unsafe"])').click()
    page.locator(f'#task label.score:has(input[name="rating_{b}_0"][value="unsure"])').click()
    post()
    assert Judgment.objects.get(task=task).data == {
        "ratings": {str(a): {"overall": "unsafe"}, str(b): {"overall": "unsure"}}
    }

    # Steps of a single response.
    task = open_annotate(page, projects[Kind.STEPS])
    (a,) = task.display_order
    for j, label in enumerate(["positive", "negative", "neutral"]):
        page.locator(f'#task label.step-label:has(input[name="step_{a}_{j}"][value="{label}"])').click()
    post()
    assert Judgment.objects.get(task=task).data == {"steps": {str(a): ["positive", "negative", "neutral"]}}

    # Demonstration: "Start from this" is a link the server answers with the text in the box.
    task = open_annotate(page, projects[Kind.DEMONSTRATION])
    with page.expect_navigation():
        page.locator('#task article[data-position="2"] a.start-from').click()
    raw = Response.objects.get(pk=by_label(task, 2)).text
    box = page.locator("#task textarea[name=text]")
    expect(box).to_have_value(raw)
    box.fill(raw + " Edited.")
    post()
    judgment = Judgment.objects.get(task=task)
    assert (judgment.text, judgment.data) == (raw + " Edited.", {"based_on": by_label(task, 2)})
    assert Judgment.objects.count() == 5
