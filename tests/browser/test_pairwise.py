"""The pairwise annotation page in a real browser: keyboard, mouse, double submits, no JavaScript, hostile
content and chat rendering. Every test checks what reached the database, not only what the page shows."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from annotate.models import Judgment, Response, Task

from .conftest import current_task_id, import_rows, login, screenshot, wait_saved

pytestmark = pytest.mark.browser

# The keys arbiter.js handles, as the page shows them (annotate/views.py CHOICE_KEYS, STRENGTH_KEYS).
CHOICE_BY_KEY = {"1": "A", "2": "B", "3": "tie", "4": "both_bad"}
STRENGTH_BY_KEY = {"q": 0, "w": 1, "e": 2, "r": 3}
OUTCOME_BY_CHOICE = {"A": "win", "B": "win", "tie": "tie", "both_bad": "both_bad"}


def annotate_url(project) -> str:
    return f"/p/{project.slug}/annotate/"


def expect_swapped_away_from(page, task_id: int) -> None:
    """Wait until #task shows another task (or the "nothing left" card) and the answer is saved.

    With a preloaded next task the swap comes first and the answer is posted in the background
    (static/arbiter/sync.js), so the wait for the acknowledgement matters before reading the database."""
    expect(page.locator("#task")).not_to_have_attribute("data-task", str(task_id))
    wait_saved(page)


def shown_texts(page) -> dict[str, str]:
    return {
        position: page.locator(f'#task article.response[data-position="{position}"] .md').inner_text().strip()
        for position in "AB"
    }


def assert_page_shows_task(page, task: Task) -> None:
    """Response A on screen is display_order[0] of the stored task, B is display_order[1]."""
    texts = shown_texts(page)
    assert texts["A"] == Response.objects.get(pk=task.display_order[0]).text
    assert texts["B"] == Response.objects.get(pk=task.display_order[1]).text


def assert_judgment(judgment: Judgment, task: Task, choice: str, strength: int | None) -> None:
    assert judgment.task_id == task.pk
    assert judgment.item_id == task.item_id
    assert judgment.outcome == OUTCOME_BY_CHOICE[choice]
    if choice == "A":
        assert judgment.winner_id == task.display_order[0]
    elif choice == "B":
        assert judgment.winner_id == task.display_order[1]
    else:
        assert judgment.winner_id is None
    # A tie or "both bad" has no direction: a strength sent with it is dropped.
    assert judgment.strength == (strength if choice in ("A", "B") else None)
    assert judgment.source == Judgment.Source.WEB
    assert judgment.is_current


def click_label(page, name: str, value) -> None:
    """Click the visible label (not the radio itself) of the ``name`` radio with ``value``, as a mouse user does."""
    label = page.locator("#task label.choice").filter(has=page.locator(f'input[name="{name}"][value="{value}"]'))
    expect(label).to_have_count(1)
    label.click()


def done_count(page) -> int:
    text = page.locator("#progress-count").inner_text()
    match = re.fullmatch(r"(\d+) done", text.strip())
    assert match, f"unexpected progress text {text!r}"
    return int(match.group(1))


# --- 1. keyboard only -------------------------------------------------------------------------------


def test_keyboard_only_three_comparisons_swap_in_place(page, pairwise_project):
    project, alice = pairwise_project
    login(page, "alice")
    page.goto(annotate_url(project))
    expect(page.locator("#task form.judge")).to_be_visible()
    screenshot(page, "annotate-pairwise.png")

    # A full page load would reset window state and request a new document; htmx swaps #task over XHR.
    page.evaluate("window.__marker = 1")
    documents = []
    page.on("request", lambda request: documents.append(request.url) if request.resource_type == "document" else None)

    plan = [("1", "w"), ("2", "r"), ("3", "e")]
    tasks = []
    assert done_count(page) == 0
    for n, (choice_key, strength_key) in enumerate(plan, start=1):
        task_id = current_task_id(page)
        task = Task.objects.get(pk=task_id)
        assert task.annotator_id == alice.pk and task.status == Task.Status.LEASED
        assert_page_shows_task(page, task)

        page.keyboard.press(choice_key)
        page.keyboard.press(strength_key)
        expect(page.locator(f'#task input[name="choice"][value="{CHOICE_BY_KEY[choice_key]}"]')).to_be_checked()
        expect(page.locator(f'#task input[name="strength"][value="{STRENGTH_BY_KEY[strength_key]}"]')).to_be_checked()
        page.keyboard.press("Enter")

        expect_swapped_away_from(page, task_id)
        expect(page.locator("#progress-count")).to_have_text(f"{n} done")
        assert page.evaluate("window.__marker") == 1, "the submit reloaded the whole page"
        tasks.append(task)

    assert documents == [], f"submits loaded whole documents: {documents}"
    assert current_task_id(page) not in {t.pk for t in tasks}

    judgments = list(Judgment.objects.filter(annotator=alice).order_by("id"))
    assert len(judgments) == 3
    for judgment, task, (choice_key, strength_key) in zip(judgments, tasks, plan):
        assert_judgment(judgment, task, CHOICE_BY_KEY[choice_key], STRENGTH_BY_KEY[strength_key])
        assert judgment.duration_ms is not None and judgment.duration_ms >= 0  # timed by arbiter.js
        task.refresh_from_db()
        assert task.status == Task.Status.DONE
    assert Task.objects.filter(annotator=alice, status=Task.Status.DONE).count() == 3


# --- 2. mouse -------------------------------------------------------------------------------------


def test_mouse_labels_and_submit_button(page, pairwise_project):
    project, alice = pairwise_project
    login(page, "alice")
    page.goto(annotate_url(project))

    task = Task.objects.get(pk=current_task_id(page))
    assert_page_shows_task(page, task)
    b_label = page.locator("#task label.choice").filter(has=page.locator('input[value="B"]'))
    expect(b_label).to_contain_text("B is better")
    click_label(page, "choice", "B")
    click_label(page, "strength", 2)
    # Typing in the rationale must not trigger the shortcuts ("1" would pick A, "q" strength 0).
    page.locator('#task textarea[name="rationale"]').click()
    page.keyboard.type("B is right: 1q")
    expect(page.locator('#task input[name="choice"][value="B"]')).to_be_checked()
    expect(page.locator('#task input[name="strength"][value="2"]')).to_be_checked()
    page.locator("#task form.judge button[type=submit]").click()
    expect_swapped_away_from(page, task.pk)
    expect(page.locator("#progress-count")).to_have_text("1 done")

    judgment = Judgment.objects.get(annotator=alice)
    assert_judgment(judgment, task, "B", 2)
    assert judgment.text == "B is right: 1q"

    # A second one with "Both bad": no winner, no strength.
    task2 = Task.objects.get(pk=current_task_id(page))
    click_label(page, "choice", "both_bad")
    page.locator("#task form.judge button[type=submit]").click()
    expect_swapped_away_from(page, task2.pk)
    expect(page.locator("#progress-count")).to_have_text("2 done")
    assert Judgment.objects.filter(annotator=alice).count() == 2
    assert_judgment(Judgment.objects.get(task=task2), task2, "both_bad", None)


# --- 3. double submits ------------------------------------------------------------------------------


def test_double_submit_records_one_judgment(page, pairwise_project):
    project, alice = pairwise_project
    login(page, "alice")
    page.goto(annotate_url(project))

    # (a) A double click on the submit button.
    first = Task.objects.get(pk=current_task_id(page))
    click_label(page, "choice", "A")
    click_label(page, "strength", 3)
    page.locator("#task form.judge button[type=submit]").dblclick()
    expect_swapped_away_from(page, first.pk)
    page.wait_for_load_state("networkidle")
    assert Judgment.objects.filter(task=first).count() == 1
    assert_judgment(Judgment.objects.get(task=first), first, "A", 3)

    # (b) Two submits dispatched in the same tick, as a bouncing key or a script might.
    second = Task.objects.get(pk=current_task_id(page))
    assert second.pk != first.pk
    page.keyboard.press("2")
    page.keyboard.press("q")
    page.evaluate(
        """() => { const form = document.querySelector('#task form.judge');
                   form.requestSubmit(); form.requestSubmit(); }"""
    )
    expect_swapped_away_from(page, second.pk)
    page.wait_for_load_state("networkidle")
    assert Judgment.objects.filter(task=second).count() == 1
    assert_judgment(Judgment.objects.get(task=second), second, "B", 0)

    # (c) The same form posted twice without htmx's guards (a retry after a lost answer): the
    # idempotency key makes the server return the first judgment instead of storing a second one.
    third = Task.objects.get(pk=current_task_id(page))
    page.keyboard.press("3")
    statuses = page.evaluate(
        """async () => {
             const form = document.querySelector('#task form.judge');
             const body = () => new URLSearchParams(new FormData(form));
             const post = () => fetch(form.action, {method: 'POST', body: body(), redirect: 'manual'})
                                  .then(r => r.type === 'opaqueredirect' ? 302 : r.status);
             const one = await post();
             const two = await post();
             return [one, two];
           }"""
    )
    assert statuses == [302, 302]
    assert Judgment.objects.filter(task=third).count() == 1
    assert_judgment(Judgment.objects.get(task=third), third, "tie", None)

    # (d) The same two posts at once, racing each other on the server.
    page.reload()
    fourth = Task.objects.get(pk=current_task_id(page))
    assert fourth.pk not in (first.pk, second.pk, third.pk)
    page.keyboard.press("4")
    statuses = page.evaluate(
        """async () => {
             const form = document.querySelector('#task form.judge');
             const post = () => fetch(form.action, {method: 'POST', body: new URLSearchParams(new FormData(form)),
                                                    redirect: 'manual'})
                                  .then(r => r.type === 'opaqueredirect' ? 302 : r.status);
             return await Promise.all([post(), post()]);
           }"""
    )
    assert statuses == [302, 302]
    assert Judgment.objects.filter(task=fourth).count() == 1
    assert_judgment(Judgment.objects.get(task=fourth), fourth, "both_bad", None)

    assert Judgment.objects.filter(annotator=alice).count() == 4
    assert Task.objects.filter(annotator=alice, status=Task.Status.DONE).count() == 4
    fourth.item.refresh_from_db()
    assert fourth.item.n_judgments == 1


# --- 4. JavaScript off ------------------------------------------------------------------------------


def test_works_without_javascript(new_context, pairwise_project):
    project, alice = pairwise_project
    page = new_context(java_script_enabled=False).new_page()
    login(page, "alice")
    page.goto(annotate_url(project))

    tasks = []
    for n, (choice, strength) in enumerate([("A", 1), ("tie", None)], start=1):
        task = Task.objects.get(pk=current_task_id(page))
        assert_page_shows_task(page, task)
        click_label(page, "choice", choice)
        if strength is not None:
            click_label(page, "strength", strength)
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            with page.expect_navigation():
                page.locator("#task form.judge button[type=submit]").click()
        assert posted.value.status == 302
        assert posted.value.headers["location"] == annotate_url(project)
        assert page.url.endswith(annotate_url(project))
        assert current_task_id(page) != task.pk
        assert done_count(page) == n
        tasks.append((task, choice, strength))

    judgments = list(Judgment.objects.filter(annotator=alice).order_by("id"))
    assert len(judgments) == 2
    for judgment, (task, choice, strength) in zip(judgments, tasks):
        assert_judgment(judgment, task, choice, strength)
        # Without JavaScript the page cannot time itself: the server uses the lease start instead.
        assert judgment.duration_ms is not None

    # "A is better" without saying by how much: a 400 page with the reason, and nothing stored.
    task = Task.objects.get(pk=current_task_id(page))
    click_label(page, "choice", "A")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        with page.expect_navigation():
            page.locator("#task form.judge button[type=submit]").click()
    assert posted.value.status == 400
    expect(page.locator("#task .field-error")).to_have_text("Say how much better the response is.")
    assert current_task_id(page) == task.pk
    expect(page.locator('#task input[name="choice"][value="A"]')).to_be_checked()
    assert not Judgment.objects.filter(task=task).exists()
    assert Judgment.objects.filter(annotator=alice).count() == 2
    task.refresh_from_db()
    assert task.status == Task.Status.LEASED


# --- 5. hostile content -------------------------------------------------------------------------------

PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    "[click me](javascript:window.__pwned=3)",
    '<svg onload="window.__pwned=4"></svg>',
    '<a href="javascript:window.__pwned=5">x</a>',
]
CODE_BLOCK = '```html\n<script>window.__pwned=6</script>\n<img src=x onerror="window.__pwned=7">\n```'


def test_hostile_markdown_is_inert(page, make_project, make_member):
    project = make_project(slug="xss", n_items=0, randomize_order=False)
    alice = make_member(project, "alice")
    row = {
        "id": "xss-1",
        "prompt": "\n\n".join(PAYLOADS) + "\n\n" + CODE_BLOCK,
        "responses": [
            {"text": "\n\n".join(PAYLOADS[:3]) + "\n\n" + CODE_BLOCK, "model": "evil-a"},
            {"text": "\n\n".join(PAYLOADS[2:]) + "\n\n[a safe link](https://example.com/docs)", "model": "evil-b"},
        ],
    }
    assert import_rows(project, (json.dumps(row) + "\n").encode()).created == 1

    login(page, "alice")
    page.goto(annotate_url(project))
    task = Task.objects.get(pk=current_task_id(page))
    assert task.annotator_id == alice.pk and task.item.external_id == "xss-1"
    screenshot(page, "annotate-xss.png")

    # Every link in #task, clicked; the ones that navigate (the project link) are followed back.
    links = page.locator("#task a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert hrefs, "expected at least the project link"
    for i in range(len(hrefs)):
        links.nth(i).click()
        if not page.url.endswith(annotate_url(project)):
            page.goto(annotate_url(project))
        else:
            assert page.evaluate("typeof window.__pwned") == "undefined", f"clicking link {hrefs[i]!r} ran script"
    assert current_task_id(page) == task.pk
    assert page.evaluate("typeof window.__pwned") == "undefined"

    report = page.evaluate(
        """() => {
             const task = document.querySelector('#task');
             const all = [...task.querySelectorAll('*')];
             return {
               on: all.flatMap(el => [...el.attributes].filter(a => a.name.toLowerCase().startsWith('on'))
                                                   .map(a => el.tagName + '[' + a.name + ']')),
               tags: [...task.querySelectorAll('script, img, svg, iframe, object, embed')].map(el => el.tagName),
               hrefs: [...task.querySelectorAll('[href], [src], [action], [formaction]')]
                        .flatMap(el => ['href', 'src', 'action', 'formaction'].map(n => el.getAttribute(n)))
                        .filter(v => v !== null),
               code: [...task.querySelectorAll('pre > code')].map(el => el.textContent),
             };
           }"""
    )
    assert report["on"] == []
    assert report["tags"] == []
    assert not [v for v in report["hrefs"] if re.match(r"\s*(javascript|data|vbscript):", v, re.I)], report["hrefs"]
    assert "https://example.com/docs" in report["hrefs"]

    text = page.locator("#task").inner_text()
    for payload in PAYLOADS:
        assert text.count(payload) >= 2, f"payload not shown as text: {payload!r}"
    assert len(report["code"]) == 2
    for code in report["code"]:
        assert '<script>window.__pwned=6</script>\n<img src=x onerror="window.__pwned=7">' in code

    # The hostile item is still judged like any other.
    page.keyboard.press("1")
    page.keyboard.press("e")
    page.keyboard.press("Enter")
    expect_swapped_away_from(page, task.pk)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert_judgment(Judgment.objects.get(annotator=alice), task, "A", 2)


# --- 6. chat rendering --------------------------------------------------------------------------------


def test_multi_turn_prompt_renders_as_chat(page, make_project, make_member):
    project = make_project(slug="chat", n_items=0)
    make_member(project, "alice")
    conversation = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "How do I reverse a list?"},
        {"role": "assistant", "content": "In which language?"},
        {"role": "user", "content": "Python, **please**."},
    ]
    code = "def reverse(xs):\n    return xs[::-1]"
    row = {
        "id": "chat-1",
        "prompt": conversation,
        "responses": [f"Use slicing:\n\n```python\n{code}\n```", "Call `xs.reverse()` to reverse in place."],
    }
    assert import_rows(project, (json.dumps(row) + "\n").encode()).created == 1
    assert project.items.get().is_conversation

    login(page, "alice")
    page.goto(annotate_url(project))
    task = Task.objects.get(pk=current_task_id(page))
    assert task.item.prompt == conversation

    messages = page.locator("#task .conversation .msg")
    expect(messages).to_have_count(4)
    for i, message in enumerate(conversation):
        msg = messages.nth(i)
        expect(msg).to_have_class(re.compile(rf"\bmsg\b.*\b{message['role']}\b"))
        assert msg.locator(".role").text_content() == message["role"].capitalize()
    expect(messages.nth(3).locator(".md strong")).to_have_text("please")
    # Bubbles are laid out as a chat: user messages on the right, the assistant's on the left.
    boxes = [messages.nth(i).bounding_box() for i in range(4)]
    assert boxes[1]["x"] > boxes[2]["x"]
    assert boxes[1]["x"] + boxes[1]["width"] > boxes[2]["x"] + boxes[2]["width"]

    pre_code = page.locator("#task article.response pre > code")
    expect(pre_code).to_have_count(1)
    expect(pre_code).to_have_class(re.compile(r"\blanguage-python\b"))
    assert pre_code.text_content().rstrip("\n") == code
    inline = page.locator("#task article.response :not(pre) > code")
    expect(inline).to_have_text("xs.reverse()")
    # The fenced block is in whichever position the shuffled order put the first response.
    position = "A" if task.display_order[0] == project.items.get().responses.get(index=0).pk else "B"
    expect(page.locator(f'#task article.response[data-position="{position}"] pre > code')).to_have_count(1)
    screenshot(page, "annotate-chat.png")


# --- 7. keyboard shortcuts leave other controls alone -------------------------------------------------


def test_enter_on_a_focused_link_follows_the_link(page, pairwise_project):
    """Enter on a focused link (or button) must activate it, not submit the judgment behind it."""
    project, alice = pairwise_project
    login(page, "alice")
    page.goto(annotate_url(project))
    task = Task.objects.get(pk=current_task_id(page))
    page.keyboard.press("3")  # a complete answer is selected, so a stray submit would be accepted
    page.locator("#task .task-head a").focus()  # the project link, reached with Tab in real use
    page.keyboard.press("Enter")
    page.wait_for_load_state("networkidle")
    # arbiter.js leaves Enter alone on links, buttons and summaries (it once submitted the answer instead).
    assert not Judgment.objects.filter(task=task).exists()
    assert page.url.endswith(f"/p/{project.slug}/")
    assert not Judgment.objects.filter(annotator=alice).exists()
