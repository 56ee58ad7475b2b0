"""Going back to change an answer ("Previous"), the progress line with what is left, the members page's user search
and the new-project form per kind: the pages without JavaScript (plain GET and POST) and their htmx fragments."""

from __future__ import annotations

import json
import re

import pytest

from annotate import actions, selectors
from annotate.forms import judgment_form
from annotate.imports import parse_items
from annotate.judgments import judgment_fields
from annotate.models import Item, Judgment, Kind, Membership, Project, Role, Task
from tests.conftest import jsonl, pairwise_rows

pytestmark = pytest.mark.django_db


def shown_task(response) -> int | None:
    match = re.search(r'<section id="task"[^>]*\sdata-task="(\d*)"', response.content.decode())
    assert match, response.content[:300]
    return int(match.group(1)) if match.group(1) else None


def answer(client, slug: str, task: Task, choice: str, key: str, **fields):
    """Post an answer to ``task`` as the page's form does without JavaScript (strength 2 for A or B)."""
    body = {"choice": choice, "idempotency_key": key, **fields}
    if choice in ("A", "B"):
        body.setdefault("strength", "2")
    return client.post(f"/p/{slug}/tasks/{task.pk}/judge/", body)


def answer_next(client, slug: str, user, choice: str = "A", key: str | None = None) -> Task:
    """Open the annotation page, answer the task it shows; returns that task."""
    task = Task.objects.get(pk=shown_task(client.get(f"/p/{slug}/annotate/")))
    assert task.annotator == user and task.status == Task.Status.LEASED
    assert answer(client, slug, task, choice, key or f"k-{task.pk}").status_code == 302
    return task


@pytest.fixture
def three_answered(client, make_project, make_member):
    """An annotator who answered three items (A, tie, B) and holds a fourth: (client, project, user, tasks)."""
    project = make_project(n_items=6, overlap=2)
    user = make_member(project, "ann")
    client.force_login(user)
    tasks = [answer_next(client, "demo", user, choice) for choice in ("A", "tie", "B")]
    client.get("/p/demo/annotate/")  # the fourth, leased
    return client, project, user, tasks


def checked(html: str, name: str) -> list[str]:
    return re.findall(rf'<input type="radio" name="{name}" value="([^"]+)"[^>]*\schecked', html)


# --- Previous: walking back ----------------------------------------------------------------------------------


def test_previous_walks_back_one_answer_at_a_time_with_the_answer_filled_in(three_answered):
    client, project, user, (first, second, third) = three_answered
    current = client.get("/p/demo/annotate/")
    assert (
        'href="/p/demo/annotate/previous/"' in current.content.decode() and "<kbd>p</kbd>" in current.content.decode()
    )

    page = client.get("/p/demo/annotate/previous/")
    html = page.content.decode()
    assert page.status_code == 200 and shown_task(page) == third.pk
    assert 'data-revision="1"' in html and "You answered this item before" in html
    assert checked(html, "choice") == ["B"] and checked(html, "strength") == ["2"]
    # The responses in the order this annotator saw them (display_order), as when they answered.
    texts = dict(Item.objects.get(pk=third.item_id).responses.values_list("pk", "text"))
    assert html.index(texts[third.display_order[0]]) < html.index(texts[third.display_order[1]])
    assert html.index("Response A") < html.index(texts[third.display_order[0]]) < html.index("Response B")
    # No skipping an answered item; the way on is "Previous" again, from this one.
    assert "Skip this item" not in html
    assert f'href="/p/demo/annotate/previous/?before={third.pk}"' in html

    page = client.get(f"/p/demo/annotate/previous/?before={third.pk}")
    assert shown_task(page) == second.pk and checked(page.content.decode(), "choice") == ["tie"]
    page = client.get(f"/p/demo/annotate/previous/?before={second.pk}")
    assert shown_task(page) == first.pk and checked(page.content.decode(), "choice") == ["A"]
    # Past the first answer there is nothing older: the first one stays, and the page says so.
    page = client.get(f"/p/demo/annotate/previous/?before={first.pk}")
    assert shown_task(page) == first.pk and "the first item you answered" in page.content.decode()


def test_previous_order_is_the_order_of_first_answers_so_a_revision_does_not_loop(three_answered):
    client, project, user, (first, second, third) = three_answered
    answer(client, "demo", second, "A", "change-second")  # second now has the newest judgment
    assert shown_task(client.get("/p/demo/annotate/previous/")) == third.pk
    assert shown_task(client.get(f"/p/demo/annotate/previous/?before={third.pk}")) == second.pk
    assert shown_task(client.get(f"/p/demo/annotate/previous/?before={second.pk}")) == first.pk


def test_previous_before_anything_is_answered_shows_the_current_task(client, make_project, make_member):
    make_project(n_items=2)
    user = make_member(Project.objects.get(slug="demo"), "ann")
    client.force_login(user)
    page = client.get("/p/demo/annotate/previous/")
    held = Task.objects.get(annotator=user)
    assert page.status_code == 200 and shown_task(page) == held.pk and held.status == Task.Status.LEASED
    html = page.content.decode()
    assert "You have not answered anything" in html and 'class="previous"' not in html


def test_previous_with_htmx_is_the_task_fragment(three_answered):
    client, project, user, (_, _, third) = three_answered
    page = client.get("/p/demo/annotate/previous/", HTTP_HX_REQUEST="true")
    html = page.content.decode()
    assert shown_task(page) == third.pk and "<html" not in html and 'data-revision="1"' in html


# --- Previous: the revision itself -------------------------------------------------------------------------------


def test_a_revision_supersedes_the_answer_changes_no_counts_and_returns_to_the_current_task(three_answered):
    client, project, user, (first, second, third) = three_answered
    held = Task.objects.get(annotator=user, status=Task.Status.LEASED)
    item_before = Item.objects.values("open_slots", "n_judgments").get(pk=second.item_id)
    counts_before = (Task.objects.count(), Judgment.objects.filter(is_current=True).count())
    old = Judgment.objects.get(task=second)

    back = answer(client, "demo", second, "B", "revise-1", rationale="read it again")
    assert back.status_code == 302 and back["Location"] == "/p/demo/annotate/"
    page = client.get("/p/demo/annotate/")
    assert shown_task(page) == held.pk  # the leased task, not a new one
    assert "Your earlier answer is changed" in page.content.decode()

    old.refresh_from_db()
    new = Judgment.objects.get(task=second, is_current=True)
    assert (old.is_current, new.supersedes_id, new.source) == (False, old.pk, "web")
    assert (new.outcome, new.winner_id, new.strength, new.text) == ("win", second.display_order[1], 2, "read it again")
    assert Judgment.objects.filter(task=second).count() == 2
    # Superseding is not a second vote: the item's counters, the tasks and the current judgments are as they were.
    assert Item.objects.values("open_slots", "n_judgments").get(pk=second.item_id) == item_before
    assert (Task.objects.count(), Judgment.objects.filter(is_current=True).count()) == counts_before
    assert selectors.annotator_workload(project, user)["done"] == 3


def test_a_revision_over_htmx_answers_with_the_current_task_and_the_saved_event(three_answered):
    client, project, user, (_, second, _) = three_answered
    held = Task.objects.get(annotator=user, status=Task.Status.LEASED)
    response = client.post(
        f"/p/demo/tasks/{second.pk}/judge/",
        {"choice": "tie", "idempotency_key": "revise-htmx", "duration_ms": "900"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200 and shown_task(response) == held.pk
    saved = json.loads(response["HX-Trigger"])["arbiter:saved"]
    new = Judgment.objects.get(task=second, is_current=True)
    assert saved == {"task": second.pk, "judgment": new.pk, "done": 3}
    assert new.outcome == "tie" and new.supersedes is not None
    assert "Your earlier answer is changed" in response.content.decode()


def test_a_revision_is_idempotent_and_a_reused_key_with_another_answer_is_refused(three_answered):
    client, project, user, (first, _, _) = three_answered
    for _ in range(2):  # a double click without JavaScript
        assert answer(client, "demo", first, "B", "revise-same").status_code == 302
    assert Judgment.objects.filter(task=first).count() == 2
    refused = client.post(
        f"/p/demo/tasks/{first.pk}/judge/", {"choice": "tie", "idempotency_key": "revise-same"}, follow=True
    )
    assert "already used for a different answer" in refused.content.decode()
    assert Judgment.objects.get(task=first, is_current=True).winner_id == first.display_order[1]


def test_an_invalid_revision_keeps_the_revision_on_screen(three_answered):
    client, project, user, (first, _, _) = three_answered
    response = client.post(f"/p/demo/tasks/{first.pk}/judge/", {"choice": "A", "idempotency_key": "no-strength"})
    html = response.content.decode()
    assert response.status_code == 400 and shown_task(response) == first.pk and 'data-revision="1"' in html
    assert "Say how much better" in html and Judgment.objects.filter(task=first).count() == 1


def test_time_on_task_of_a_revision_adds_the_time_spent_changing_it(three_answered):
    client, project, user, (first, second, _) = three_answered
    earlier = Judgment.objects.get(task=first).duration_ms
    answer(client, "demo", first, "B", "timed", duration_ms="700")
    assert Judgment.objects.get(task=first, is_current=True).duration_ms == earlier + 700
    # Without JavaScript the change is not timed: the earlier time stands (not the hours since the lease).
    earlier = Judgment.objects.get(task=second).duration_ms
    answer(client, "demo", second, "B", "untimed")
    assert Judgment.objects.get(task=second, is_current=True).duration_ms == earlier


def test_only_ones_own_answered_tasks_can_be_opened_or_revised(three_answered, make_member):
    client, project, user, (first, _, _) = three_answered
    held = Task.objects.get(annotator=user, status=Task.Status.LEASED)
    other = make_member(project, "other")
    client.force_login(other)
    theirs = answer_next(client, "demo", other, "A")
    client.force_login(user)
    for before in (theirs.pk, held.pk, 999999, "x", ""):  # another's, not answered, missing, not a number
        assert client.get(f"/p/demo/annotate/previous/?before={before}").status_code == 404, before
    assert answer(client, "demo", theirs, "B", "intrude").status_code == 404
    assert Judgment.objects.filter(task=theirs).count() == 1


def test_paused_annotators_cannot_change_answers(three_answered):
    client, project, user, (first, _, _) = three_answered
    Membership.objects.filter(project=project, user=user).update(status=Membership.Status.PAUSED)
    page = client.get("/p/demo/annotate/previous/")
    assert page.status_code == 403 and "cannot be changed" in page.content.decode()
    htmx = client.get("/p/demo/annotate/previous/", HTTP_HX_REQUEST="true")  # swapped in, so the message shows
    assert htmx.status_code == 200 and "cannot be changed" in htmx.content.decode() and shown_task(htmx) is None
    assert answer(client, "demo", first, "B", "while-paused").status_code == 403
    assert Judgment.objects.filter(task=first).count() == 1
    # The same form sent again (its key already stored) is a replay, not a change: it goes through as before.
    assert answer(client, "demo", first, "A", f"k-{first.pk}").status_code == 302


def test_changing_a_gold_answer_tells_nothing_about_the_gold_answer(client, make_project, make_member):
    project = make_project(n_items=2, overlap=1, gold_rate=1.0, gold_feedback=True)
    gold = pairwise_rows(1, start=50)
    gold[0].update(purpose="gold", gold={"winner": 0, "rationale": "GOLDSECRETRATIONALE"})
    actions.import_items(project, parse_items(jsonl(gold), "jsonl", Kind.PAIRWISE))
    user = make_member(project, "ann")
    client.force_login(user)
    task = Task.objects.get(pk=shown_task(client.get("/p/demo/annotate/")))
    assert task.item.purpose == "gold"
    right = "A" if task.display_order[0] == task.item.responses.get(index=0).pk else "B"
    wrong = "B" if right == "A" else "A"
    answer(client, "demo", task, right, "gold-1")

    page = client.get("/p/demo/annotate/previous/").content.decode()
    assert "GOLDSECRETRATIONALE" not in page and "check item" not in page
    assert checked(page, "choice") == [right]  # the annotator's own answer, nothing else
    # A wrong change gets no feedback (the first answer was the checked one): nothing says what the answer was.
    followed = client.post(
        f"/p/demo/tasks/{task.pk}/judge/", {"choice": wrong, "strength": "1", "idempotency_key": "gold-2"}, follow=True
    )
    htmx = client.post(
        f"/p/demo/tasks/{task.pk}/judge/",
        {"choice": "tie", "idempotency_key": "gold-3"},
        HTTP_HX_REQUEST="true",
    )
    for html in (followed.content.decode(), htmx.content.decode()):
        assert "check item" not in html and "researchers judged" not in html and "GOLDSECRETRATIONALE" not in html
    assert Judgment.objects.filter(task=task).count() == 3


# --- the form starts from the answer: every kind, round trip ---------------------------------------------------


def _kind_rows(n_responses: int, steps: bool = False) -> list[dict]:
    texts = [
        f"Response {r} first step.\nSecond step {r}.\nThird {r}." if steps else f"Response number {r}."
        for r in range(n_responses)
    ]
    return [{"id": "only", "prompt": "Prompt", "responses": texts}]


@pytest.mark.parametrize(
    "kind, fields, n_responses, payload",
    [
        (
            Kind.PAIRWISE,
            {"criteria": ["helpful", "safe"]},
            2,
            lambda t: {
                "choice": "both_bad",
                "criteria": {"helpful": "B", "safe": "tie"},
                "demonstration": "A better one.",
                "rationale": "both wrong",
            },
        ),
        (Kind.PAIRWISE, {}, 2, lambda t: {"choice": "B", "strength": 3}),
        (
            Kind.RANKING,
            {"allow_ties": True},
            4,
            lambda t: {"ranking": [t.display_order[2], [t.display_order[0], t.display_order[3]], t.display_order[1]]},
        ),
        (
            Kind.RATING,
            {"criteria": ["a", "b"], "scale": {"labels": ["bad", "ok", "good"]}},
            2,
            lambda t: {"ratings": {str(rid): {"a": "good", "b": "bad"} for rid in t.display_order}},
        ),
        (
            Kind.RATING,
            {},
            3,
            lambda t: {"ratings": {str(rid): {"overall": i + 2} for i, rid in enumerate(t.display_order)}},
        ),
        (
            Kind.STEPS,
            {},
            2,
            lambda t: {
                "steps": {
                    str(t.display_order[0]): ["positive", "negative", "neutral"],
                    str(t.display_order[1]): ["neutral", "neutral", "positive"],
                }
            },
        ),
        (Kind.DEMONSTRATION, {}, 2, lambda t: {"text": "Edited ideal.", "based_on": t.display_order[1]}),
    ],
)
def test_the_revision_form_starts_from_the_stored_answer(kind, fields, n_responses, payload, db):
    """Posting the revision form untouched gives back exactly the stored answer, for every kind."""
    project = actions.create_project(slug="k", kind=kind, overlap=1, **fields)
    rows = _kind_rows(n_responses, steps=kind == Kind.STEPS)
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", kind))
    user = actions.add_member(project, "ann", Role.ANNOTATOR).user
    task = actions.assign_next_task(user, project)
    stored, _ = actions.record_judgment(task, payload(task), "first")
    task.refresh_from_db()

    form = judgment_form(task)
    initial = form.answer_initial(stored)
    posted = judgment_form(task, {name: str(value) for name, value in initial.items()} | {"idempotency_key": "again"})
    assert posted.is_valid(), posted.errors
    again = judgment_fields(task, posted.payload())
    for name in ("outcome", "winner_id", "strength", "data", "text"):
        assert json.loads(json.dumps(again.get(name, getattr(Judgment(), name)))) == getattr(stored, name), name


def test_the_revision_page_of_a_ranking_shows_the_stored_ranks(kind_client_revise):
    client, project, user = kind_client_revise
    task = actions.assign_next_task(user, project)
    ids = task.display_order
    actions.record_judgment(task, {"ranking": [ids[2], ids[0], ids[1]]}, "r1", source="web")
    html = client.get(f"/p/{project.slug}/annotate/previous/").content.decode()
    ranks = {
        int(rid): int(rank)
        for rid, rank in re.findall(r'name="rank_(\d+)"[^>]*>.*?<option value="(\d)" selected>', html, flags=re.S)
    }
    assert ranks == {ids[2]: 1, ids[0]: 2, ids[1]: 3}


@pytest.fixture
def kind_client_revise(client, db):
    project = actions.create_project(slug="rank", kind=Kind.RANKING, overlap=1)
    actions.import_items(project, parse_items(jsonl(_kind_rows(3)), "jsonl", Kind.RANKING))
    user = actions.add_member(project, "ann", Role.ANNOTATOR).user
    client.force_login(user)
    return client, project, user


# --- progress: done and left ----------------------------------------------------------------------------------


def progress(client, slug="demo") -> tuple[str, str]:
    html = client.get(f"/p/{slug}/annotate/").content.decode()
    done = re.search(r'id="progress-count">([^<]*)<', html).group(1)
    left = re.search(r'id="progress-left"[^>]*>([^<]*)<', html).group(1)
    return done, left


def test_progress_says_what_is_done_and_what_is_left(client, make_project, make_member):
    project = make_project(n_items=5, overlap=1)
    user, other = make_member(project, "ann"), make_member(project, "other")
    client.force_login(user)
    assert progress(client) == ("0 done", "· 5 left")  # the leased item and the 4 still open
    answer_next(client, "demo", user)
    answer_next(client, "demo", user)
    assert progress(client) == ("2 done", "· 3 left")
    # Overlap 1: an item another annotator takes is no longer this annotator's to do.
    actions.assign_next_task(other, project)
    assert progress(client) == ("2 done", "· 2 left")
    assert selectors.annotator_workload(project, user) == {"done": 2, "left": 2, "more": False}


def test_left_with_overlap_counts_only_items_not_yet_had(make_project, make_member):
    project = make_project(n_items=4, overlap=2)
    user, other = make_member(project, "ann"), make_member(project, "other")
    for who in (user, other):
        task = actions.assign_next_task(who, project)
        actions.record_judgment(task, {"choice": "A", "strength": 1}, f"{who.username}-1")
    # Both judged item 1; its slots are gone, and the other 3 items each need both of them.
    assert selectors.annotator_workload(project, user) == {"done": 1, "left": 3, "more": False}
    task = actions.assign_next_task(user, project)
    actions.skip_task(task, "I cannot judge this topic")  # a skipped item never comes back to them
    assert selectors.annotator_workload(project, user) == {"done": 1, "left": 2, "more": False}


def test_left_is_counted_up_to_a_cap_and_hides_gold_items(make_project, make_member, monkeypatch, client):
    project = make_project(n_items=6, overlap=1, gold_rate=0.0)
    gold = pairwise_rows(3, start=90)
    for row in gold:
        row.update(purpose="gold", gold={"winner": 0})
    actions.import_items(project, parse_items(jsonl(gold), "jsonl", Kind.PAIRWISE))
    user = make_member(project, "ann")
    assert selectors.annotator_workload(project, user) == {"done": 0, "left": 6, "more": False}
    monkeypatch.setattr(selectors, "LEFT_COUNTED_UP_TO", 4)
    assert selectors.annotator_workload(project, user) == {"done": 0, "left": 4, "more": True}
    client.force_login(user)
    assert progress(client) == ("0 done", "· 5+ left")  # the page leased one: held 1 + more than 4 open


def test_a_candidates_left_is_the_qualification_set(make_project, make_member):
    project = make_project(n_items=5, overlap=1, qualification_required=True)
    rows = pairwise_rows(2, start=70)
    for row in rows:
        row.update(purpose="qualification", gold={"winner": 0})
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", Kind.PAIRWISE))
    user = make_member(project, "cand")
    assert selectors.annotator_workload(project, user) == {"done": 0, "left": 2, "more": False}
    actions.assign_next_task(user, project)  # leases one: held 1 + unseen 1
    assert selectors.annotator_workload(project, user) == {"done": 0, "left": 2, "more": False}


def test_workload_is_three_queries_whatever_the_project_size(make_project, make_member, django_assert_num_queries):
    project = make_project(n_items=50, overlap=3)
    user = make_member(project, "ann")
    with django_assert_num_queries(3):
        assert selectors.annotator_workload(project, user)["left"] == 50


# --- members: search and partial names ---------------------------------------------------------------------------


@pytest.fixture
def members_page(client, make_project, make_member, django_user_model):
    project = make_project(n_items=0)
    admin = make_member(project, "boss", Role.ADMIN)
    for name, email in [
        ("alice", "alice@example.org"),
        ("alicia", "ally@example.org"),
        ("malik", "mk@corp.example"),
        ("zed", "zed@corp.example"),
    ]:
        django_user_model.objects.create_user(name, email=email)
    django_user_model.objects.create_user("alina", email="alina@example.org", is_active=False)
    client.force_login(admin)
    return client, project


def suggestions(client, text: str, **headers) -> list[str]:
    response = client.get("/p/demo/members/search/", {"username": text}, **headers)
    assert response.status_code == 200
    return re.findall(r'<option value="([^"]*)">', response.content.decode())


def test_member_search_suggests_active_users_by_part_of_the_name_or_email(members_page, django_user_model):
    client, project = members_page
    assert suggestions(client, "ali", HTTP_HX_REQUEST="true") == ["alice", "alicia", "malik"]  # not alina: inactive
    assert suggestions(client, "corp.ex") == ["malik", "zed"]  # by email, shown by username only
    assert suggestions(client, "ALICE") == ["alice"]
    assert suggestions(client, "a") == []  # one letter would list everybody
    response = client.get("/p/demo/members/search/", {"q": "corp"}).content.decode()
    assert "@" not in response and "mk@corp" not in response  # emails are not shown
    for i in range(12):
        django_user_model.objects.create_user(f"bulk{i:02d}")
    assert len(suggestions(client, "bulk")) == 10
    assert client.post("/p/demo/members/search/", {"username": "ali"}).status_code == 405


def test_member_search_is_for_project_admins_only(client, make_project, make_member, django_user_model):
    project = make_project(n_items=0)
    django_user_model.objects.create_user("alice")
    other = make_project(slug="other", n_items=0)
    for user, status in [
        (make_member(project, "res", Role.RESEARCHER), 403),
        (make_member(project, "ann"), 403),
        (make_member(other, "stranger", Role.ADMIN), 404),
    ]:
        client.force_login(user)
        response = client.get("/p/demo/members/search/", {"username": "ali"})
        assert response.status_code == status and b"alice" not in response.content
    client.logout()
    assert client.get("/p/demo/members/search/", {"username": "ali"}).status_code == 302


def test_adding_a_member_by_part_of_a_name_or_by_email(members_page):
    client, project = members_page
    added = client.post("/p/demo/members/", {"username": "mali", "role": "annotator"}, follow=True)
    assert project.memberships.get(user__username="malik").role == "annotator"
    assert "malik (the only active user matching “mali”) is now annotator" in added.content.decode()
    client.post("/p/demo/members/", {"username": "ZED@corp.example", "role": "researcher"})
    assert project.memberships.get(user__username="zed").role == "researcher"

    several = client.post("/p/demo/members/", {"username": "ali", "role": "researcher"})
    html = several.content.decode()
    assert several.status_code == 400 and "“ali” matches 3 users" in html
    # Each match is a button that adds exactly that user, with the role chosen (works without JavaScript).
    assert re.findall(
        r'name="username" value="([^"]+)"><input type="hidden" name="role" value="researcher">', html
    ) == [
        "alice",
        "alicia",
        "malik",
    ]
    none = client.post("/p/demo/members/", {"username": "nobody-here", "role": "annotator"})
    assert none.status_code == 400 and "No such user" in none.content.decode()
    inactive = client.post("/p/demo/members/", {"username": "alina@example.org", "role": "annotator"})
    assert inactive.status_code == 400
    assert set(project.memberships.values_list("user__username", flat=True)) == {"boss", "malik", "zed"}


def test_the_add_form_asks_for_suggestions_as_one_types(members_page):
    client, project = members_page
    html = client.get("/p/demo/members/").content.decode()
    assert 'hx-get="/p/demo/members/search/"' in html and 'list="member-suggestions"' in html
    assert '<datalist id="member-suggestions"></datalist>' in html


# --- the new-project form shows the chosen kind's settings only ----------------------------------------------------


def field_names(html: str) -> set[str]:
    return set(re.findall(r'<(?:input|select|textarea)[^>]*\sname="([^"]+)"', html)) - {"csrfmiddlewaretoken"}


COMMON = {"slug", "name", "kind", "overlap", "instructions", "randomize_order"}


@pytest.fixture
def researcher(client, make_project, make_member):
    client.force_login(make_member(make_project(slug="seed", n_items=0), "res", Role.RESEARCHER))
    return client


@pytest.mark.parametrize(
    "kind, own",
    [
        (None, {"criteria_text"}),
        ("pairwise", {"criteria_text"}),
        ("ranking", {"allow_ties"}),
        ("rating", {"criteria_text", "scale_text"}),
        ("steps", {"step_separator"}),
        ("demonstration", set()),
        ("no-such-kind", {"criteria_text"}),
    ],
)
def test_the_new_project_form_has_only_the_kinds_settings(researcher, kind, own):
    page = researcher.get("/projects/new/", {"kind": kind} if kind else {})
    html = page.content.decode()
    assert page.status_code == 200 and field_names(html) == COMMON | own
    # The kind's links reload the page without JavaScript; the select swaps the fields with it.
    assert 'href="/projects/new/?kind=ranking"' in html or kind == "ranking"
    assert 'hx-get="/projects/new/"' in html and 'hx-target="#kind-fields"' in html


def test_changing_the_kind_with_htmx_swaps_only_the_kinds_fields_and_keeps_what_was_typed(researcher):
    fragment = researcher.get(
        "/projects/new/", {"kind": "rating", "criteria_text": "helpful, safe"}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert fragment.strip().startswith('<div id="kind-fields"') and "<html" not in fragment
    assert field_names(fragment) == {"criteria_text", "scale_text"}
    assert 'value="helpful, safe"' in fragment


def test_a_project_gets_its_kinds_settings_and_no_others(researcher):
    answer = researcher.post(
        "/projects/new/",
        {
            "slug": "st",
            "kind": "steps",
            "overlap": 1,
            "step_separator": "---",
            "criteria_text": "x",
            "allow_ties": "on",
        },
    )
    assert answer.status_code == 302
    project = Project.objects.get(slug="st")
    assert (project.step_separator, project.criteria, project.allow_ties) == ("---", [], False)
    bad = researcher.post("/projects/new/", {"slug": "r", "kind": "rating", "overlap": 1, "scale_text": "9-2"})
    html = bad.content.decode()
    assert (
        bad.status_code == 200
        and "lower to a higher" in html
        and field_names(html)
        == COMMON
        | {
            "criteria_text",
            "scale_text",
        }
    )
    assert not Project.objects.filter(slug="r").exists()
