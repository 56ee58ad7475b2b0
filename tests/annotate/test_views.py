import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.models import Item, Judgment, Project, Role, Task
from tests.conftest import jsonl, pairwise_rows

pytestmark = pytest.mark.django_db


@pytest.fixture
def annotator_client(client, make_project, make_member):
    project = make_project(n_items=3, overlap=1)
    user = make_member(project, "ann")
    client.force_login(user)
    return client, project, user


def test_login_page_and_redirect_for_anonymous(client):
    assert client.get("/").status_code == 302
    assert client.get("/p/demo/annotate/")["Location"].startswith("/accounts/login/")
    assert b"Log in" in client.get("/accounts/login/").content


def test_annotate_page_renders_the_task_with_keys(annotator_client):
    client, project, user = annotator_client
    page = client.get("/p/demo/annotate/")
    assert page.status_code == 200
    html = page.content.decode()
    task = Task.objects.get(annotator=user)
    assert f'data-task="{task.pk}"' in html
    assert "<kbd>1</kbd> A is better" in html and "<kbd>r</kbd> Significantly better" in html
    assert "<html" in html  # a whole page without htmx
    assert html.index("Response A") < html.index("Response B")


def test_plain_post_records_and_redirects(annotator_client):
    client, project, user = annotator_client
    client.get("/p/demo/annotate/")
    task = Task.objects.get(annotator=user)
    data = {"choice": "A", "strength": "2", "idempotency_key": "form-1", "rationale": "clearer"}
    answer = client.post(f"/p/demo/tasks/{task.pk}/judge/", data)
    assert answer.status_code == 302 and answer["Location"] == "/p/demo/annotate/"
    # The same form posted twice (a double click without JavaScript) is stored once.
    assert client.post(f"/p/demo/tasks/{task.pk}/judge/", data).status_code == 302
    judgment = Judgment.objects.get()
    assert (judgment.winner_id, judgment.strength, judgment.text, judgment.source) == (
        task.display_order[0],
        2,
        "clearer",
        "web",
    )
    assert judgment.duration_ms is not None  # measured from the lease without JavaScript


def test_a_form_posted_again_with_another_answer_is_refused_with_the_reason(annotator_client):
    client, project, user = annotator_client
    client.get("/p/demo/annotate/")
    task = Task.objects.get(annotator=user)
    data = {"choice": "A", "strength": "2", "idempotency_key": "form-1"}
    client.post(f"/p/demo/tasks/{task.pk}/judge/", data)
    plain = client.post(f"/p/demo/tasks/{task.pk}/judge/", {**data, "choice": "B"}, follow=True)
    reason = "idempotency_key &#x27;form-1&#x27; was already used for a different answer"
    assert plain.redirect_chain == [("/p/demo/annotate/", 302)] and reason in plain.content.decode()
    htmx = client.post(f"/p/demo/tasks/{task.pk}/judge/", {**data, "strength": "3"}, HTTP_HX_REQUEST="true")
    event = json.loads(htmx["HX-Trigger"])["arbiter:conflict"]
    assert event["task"] == task.pk and "'form-1' was already used for a different answer" in event["message"]
    judgment = Judgment.objects.get()
    assert (judgment.winner_id, judgment.strength) == (task.display_order[0], 2)


def test_htmx_post_returns_only_the_next_task_fragment(annotator_client):
    client, project, user = annotator_client
    client.get("/p/demo/annotate/")
    task = Task.objects.get(annotator=user)
    answer = client.post(
        f"/p/demo/tasks/{task.pk}/judge/",
        {"choice": "tie", "idempotency_key": "h-1", "duration_ms": "1234"},
        HTTP_HX_REQUEST="true",
    )
    html = answer.content.decode()
    assert answer.status_code == 200
    assert "<html" not in html and html.lstrip().startswith('<section id="task"')
    next_task = Task.objects.filter(annotator=user, status="leased").get()
    assert f'data-task="{next_task.pk}"' in html and "1 done" in html
    judgment = Judgment.objects.get()
    assert (judgment.outcome, judgment.duration_ms) == ("tie", 1234)


def test_missing_strength_is_an_error_that_keeps_the_task(annotator_client):
    client, project, user = annotator_client
    client.get("/p/demo/annotate/")
    task = Task.objects.get(annotator=user)
    plain = client.post(f"/p/demo/tasks/{task.pk}/judge/", {"choice": "A", "idempotency_key": "k"})
    assert plain.status_code == 400 and "Say how much better" in plain.content.decode()
    htmx = client.post(
        f"/p/demo/tasks/{task.pk}/judge/", {"choice": "A", "idempotency_key": "k"}, HTTP_HX_REQUEST="true"
    )
    assert htmx.status_code == 200 and f'data-task="{task.pk}"' in htmx.content.decode()
    assert not Judgment.objects.exists()


def test_done_page_when_nothing_is_left(client, make_project, make_member):
    project = make_project(n_items=0)
    client.force_login(make_member(project, "ann"))
    assert "Nothing left for you here" in client.get("/p/demo/annotate/").content.decode()


def test_someone_elses_task_cannot_be_answered(client, make_project, make_member):
    project = make_project(n_items=2)
    owner, intruder = make_member(project, "owner"), make_member(project, "intruder")
    client.force_login(owner)
    client.get("/p/demo/annotate/")
    task = Task.objects.get(annotator=owner)
    client.force_login(intruder)
    answer = client.post(f"/p/demo/tasks/{task.pk}/judge/", {"choice": "A", "strength": "1", "idempotency_key": "x"})
    assert answer.status_code == 404 and not Judgment.objects.exists()


def test_non_members_get_404_and_annotators_403_on_researcher_pages(client, make_project, make_member):
    project = make_project(n_items=1)
    outsider_project = make_project(slug="other", n_items=0)
    client.force_login(make_member(outsider_project, "outsider"))
    assert client.get("/p/demo/").status_code == 404
    assert client.get("/p/demo/annotate/").status_code == 404
    client.force_login(make_member(project, "ann"))
    assert client.get("/p/demo/export/").status_code == 403
    assert client.get("/p/demo/members/").status_code == 403
    assert client.post("/p/demo/import/", {}).status_code == 403
    assert client.get("/projects/new/").status_code == 403
    page = client.get("/p/demo/").content.decode()
    assert "Import items" not in page and "Percent agreement" not in page


def test_researcher_creates_imports_and_downloads(client, make_project, make_member):
    seed = make_project(slug="seed", n_items=0)
    researcher = make_member(seed, "res", Role.RESEARCHER)
    client.force_login(researcher)
    answer = client.post(
        "/projects/new/", {"slug": "fresh", "kind": "pairwise", "overlap": 2, "instructions": "Be careful."}
    )
    assert answer.status_code == 302
    project = Project.objects.get(slug="fresh")
    assert (project.overlap, project.created_by, project.memberships.get(user=researcher).role) == (
        2,
        researcher,
        "admin",
    )
    upload = SimpleUploadedFile("items.jsonl", jsonl(pairwise_rows(4)))
    client.post("/p/fresh/import/", {"file": upload})
    assert Item.objects.filter(project=project).count() == 4
    bad = SimpleUploadedFile("items.jsonl", b'{"prompt": "x", "responses": ["a", "b"]}\n{broken\n')
    page = client.post("/p/fresh/import/", {"file": bad}, follow=True).content.decode()
    assert "line 2: invalid JSON" in page
    assert Item.objects.filter(project=project).count() == 4
    detail = client.get("/p/fresh/").content.decode()
    assert 'id="n-items">4<' in detail
    download = client.get("/p/fresh/export/")
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment")


def test_admin_changes_roles_in_the_app(client, make_project, make_member):
    project = make_project(n_items=0)
    admin = make_member(project, "boss", Role.ADMIN)
    make_member(project, "worker")
    client.force_login(admin)
    page = client.get("/p/demo/members/").content.decode()
    assert "worker" in page and "ann-" in page
    client.post("/p/demo/members/", {"username": "worker", "role": "researcher"})
    assert project.memberships.get(user__username="worker").role == "researcher"
    form = client.post("/p/demo/members/", {"username": "nobody", "role": "annotator"}).content.decode()
    assert "No such user" in form
    membership = project.memberships.get(user__username="worker")
    client.post("/p/demo/members/", {"remove": membership.pk})
    assert not project.memberships.filter(user__username="worker").exists()


def test_django_admin_pages(client, admin_user):
    client.force_login(admin_user)
    assert client.get("/admin/annotate/project/").status_code == 200
    assert client.get("/admin/annotate/membership/").status_code == 200


def test_every_asset_a_page_links_is_served_as_in_production(settings, tmp_path, admin_user):
    """What `make run` does with DEBUG off: collectstatic, then whitenoise serves STATIC_ROOT. Every stylesheet and
    script the pages name must come back, with its real bytes."""
    import re

    from django.core.management import call_command
    from django.test import Client

    settings.STATIC_ROOT = tmp_path
    settings.WHITENOISE_USE_FINDERS = False
    call_command("collectstatic", interactive=False, verbosity=0)
    client = Client()  # a new client builds the middleware, which reads STATIC_ROOT now
    client.force_login(admin_user)
    project = actions.create_project(slug="assets", kind="pairwise", created_by=admin_user)
    assets = set()
    for url in ("/", f"/p/{project.slug}/", f"/p/{project.slug}/annotate/", "/admin/"):
        page = client.get(url).content.decode()
        assets |= set(re.findall(r'(?:href|src)="(/static/[^"]+)"', page))
    assert {"/static/arbiter/arbiter.css", "/static/arbiter/arbiter.js", "/static/arbiter/favicon.svg"} <= assets
    for asset in sorted(assets):
        response = client.get(asset)
        assert response.status_code == 200, asset
        served = b"".join(response.streaming_content) if response.streaming else response.content
        assert served == (tmp_path / asset.removeprefix("/static/")).read_bytes(), asset


# --- every kind: the form's fields become exactly the payload of docs/task-kinds.md ---------------------

from annotate import actions  # noqa: E402
from annotate.forms import judgment_form  # noqa: E402
from annotate.imports import parse_items  # noqa: E402
from annotate.models import Flag, Kind  # noqa: E402


def kind_rows(n_items: int, n_responses: int, *, steps: bool = False) -> list[dict]:
    rows = []
    for i in range(n_items):
        if steps:
            responses = [
                f"Item {i} response {r} step one.\nStep two of {r}.\n\nStep three of {r}." for r in range(n_responses)
            ]
        else:
            responses = [f"Item {i}: response number {r}." for r in range(n_responses)]
        rows.append({"id": f"it-{i}", "prompt": f"Prompt {i}", "responses": responses})
    return rows


@pytest.fixture
def kind_client(client, db):
    """``kind_client(kind, n_responses=3, **project fields)`` → (client, project, user), logged in as annotator."""

    def make(kind, n_responses=3, n_items=3, steps=False, **fields):
        project = actions.create_project(slug=f"{kind}-p", kind=kind, overlap=1, randomize_order=True, **fields)
        if n_items:
            actions.import_items(
                project, parse_items(jsonl(kind_rows(n_items, n_responses, steps=steps)), "jsonl", kind)
            )
        user = actions.add_member(project, "ann", Role.ANNOTATOR).user
        client.force_login(user)
        return client, project, user

    return make


def current_task(client, project, user) -> Task:
    page = client.get(f"/p/{project.slug}/annotate/")
    assert page.status_code == 200
    return Task.objects.get(
        annotator=user, status="leased", pk=int(page.content.decode().split('data-task="')[1].split('"')[0])
    )


def test_payload_of_each_kind_form(kind_client, db):
    client, project, user = kind_client(Kind.RANKING, n_responses=4, allow_ties=True)
    task = current_task(client, project, user)
    a, b, c, d = task.display_order
    form = judgment_form(
        task,
        {
            f"rank_{a}": "2",
            f"rank_{b}": "1",
            f"rank_{c}": "2",
            f"rank_{d}": "4",
            "idempotency_key": "k",
            "duration_ms": "5",
        },
    )
    assert form.is_valid(), form.errors
    assert form.payload() == {"ranking": [b, [a, c], d], "rationale": "", "duration_ms": 5}


def test_ranking_plain_post_and_htmx(kind_client):
    client, project, user = kind_client(Kind.RANKING, n_responses=4)
    page = client.get("/p/ranking-p/annotate/").content.decode()
    task = Task.objects.get(annotator=user)
    assert page.count('<select name="rank_') == 4 and 'class="rank-list"' in page
    assert "<kbd>Backspace</kbd> undo" in page
    a, b, c, d = task.display_order
    ranks = {f"rank_{a}": "3", f"rank_{b}": "1", f"rank_{c}": "4", f"rank_{d}": "2"}
    answer = client.post(
        f"/p/ranking-p/tasks/{task.pk}/judge/", {**ranks, "idempotency_key": "r1", "rationale": "b first"}
    )
    assert answer.status_code == 302 and answer["Location"] == "/p/ranking-p/annotate/"
    judgment = Judgment.objects.get(task=task)
    assert (
        judgment.data == {"ranking": [[b], [d], [a], [c]]} and judgment.text == "b first" and judgment.source == "web"
    )

    # Equal ranks without allow_ties: a 400 page that says so, nothing stored, the choices kept.
    task2 = current_task(client, project, user)
    a, b, c, d = task2.display_order
    tied = {f"rank_{a}": "1", f"rank_{b}": "1", f"rank_{c}": "2", f"rank_{d}": "3", "idempotency_key": "r2"}
    plain = client.post(f"/p/ranking-p/tasks/{task2.pk}/judge/", tied)
    assert plain.status_code == 400 and "does not allow ties" in plain.content.decode()
    assert '<option value="1" selected>1</option>' in plain.content.decode()
    htmx = client.post(f"/p/ranking-p/tasks/{task2.pk}/judge/", tied, HTTP_HX_REQUEST="true")
    assert htmx.status_code == 200 and "<html" not in htmx.content.decode()
    assert '"arbiter:invalid"' in htmx["HX-Trigger"] and f'"task": {task2.pk}' in htmx["HX-Trigger"]
    assert not Judgment.objects.filter(task=task2).exists()

    # The htmx answer is the next task's fragment and an acknowledgement event.
    ok = client.post(
        f"/p/ranking-p/tasks/{task2.pk}/judge/",
        {
            f"rank_{a}": "1",
            f"rank_{b}": "2",
            f"rank_{c}": "3",
            f"rank_{d}": "4",
            "idempotency_key": "r3",
            "duration_ms": "700",
        },
        HTTP_HX_REQUEST="true",
    )
    judgment = Judgment.objects.get(task=task2)
    assert judgment.data == {"ranking": [[a], [b], [c], [d]]} and judgment.duration_ms == 700
    trigger = json.loads(ok["HX-Trigger"])["arbiter:saved"]
    assert trigger == {"task": task2.pk, "judgment": judgment.pk, "done": 2}
    assert ok.content.decode().lstrip().startswith('<section id="task"') and "2 done" in ok.content.decode()


def test_ranking_with_ties(kind_client):
    client, project, user = kind_client(Kind.RANKING, n_responses=3, allow_ties=True)
    task = current_task(client, project, user)
    a, b, c = task.display_order
    client.post(
        f"/p/ranking-p/tasks/{task.pk}/judge/",
        {f"rank_{a}": "2", f"rank_{b}": "1", f"rank_{c}": "2", "idempotency_key": "t"},
    )
    assert Judgment.objects.get(task=task).data == {"ranking": [[b], [a, c]]}


def test_rating_numeric_with_criteria(kind_client):
    client, project, user = kind_client(
        Kind.RATING, n_responses=2, criteria=["helpful", "safe"], scale={"min": 1, "max": 5}
    )
    page = client.get("/p/rating-p/annotate/").content.decode()
    task = Task.objects.get(annotator=user)
    a, b = task.display_order
    assert page.count('type="radio" name="rating_') == 2 * 2 * 5
    assert "Highlight differences between 1 and 2" in page
    data = {
        f"rating_{a}_0": "5",
        f"rating_{a}_1": "4",
        f"rating_{b}_0": "2",
        f"rating_{b}_1": "5",
        "idempotency_key": "x",
    }
    missing = client.post(
        f"/p/rating-p/tasks/{task.pk}/judge/", {k: v for k, v in data.items() if k != f"rating_{b}_1"}
    )
    assert missing.status_code == 400 and "Rate safe." in missing.content.decode()
    assert client.post(f"/p/rating-p/tasks/{task.pk}/judge/", data).status_code == 302
    judgment = Judgment.objects.get(task=task)
    assert judgment.data == {"ratings": {str(a): {"helpful": 5, "safe": 4}, str(b): {"helpful": 2, "safe": 5}}}


def test_rating_categorical_scale(kind_client):
    client, project, user = kind_client(Kind.RATING, n_responses=1, scale={"labels": ["safe", "unsafe", "unsure"]})
    task = current_task(client, project, user)
    (a,) = task.display_order
    off_scale = client.post(f"/p/rating-p/tasks/{task.pk}/judge/", {f"rating_{a}_0": "maybe", "idempotency_key": "c0"})
    assert off_scale.status_code == 400
    client.post(f"/p/rating-p/tasks/{task.pk}/judge/", {f"rating_{a}_0": "unsure", "idempotency_key": "c1"})
    assert Judgment.objects.get(task=task).data == {"ratings": {str(a): {"overall": "unsure"}}}


def test_steps_several_and_one_response(kind_client):
    client, project, user = kind_client(Kind.STEPS, n_responses=2, steps=True)
    page = client.get("/p/steps-p/annotate/").content.decode()
    task = Task.objects.get(annotator=user)
    a, b = task.display_order
    assert page.count('class="step cell"') == 6 and "<kbd>+</kbd> positive" in page
    labels = {a: ["positive", "neutral", "negative"], b: ["negative", "negative", "positive"]}
    data = {f"step_{rid}_{j}": label for rid, ls in labels.items() for j, label in enumerate(ls)}
    answer = client.post(f"/p/steps-p/tasks/{task.pk}/judge/", {**data, "idempotency_key": "s"}, HTTP_HX_REQUEST="true")
    assert "arbiter:saved" in answer["HX-Trigger"]
    assert Judgment.objects.get(task=task).data == {"steps": {str(a): labels[a], str(b): labels[b]}}


def test_steps_one_response_sends_a_plain_list(kind_client):
    client, project, user = kind_client(Kind.STEPS, n_responses=1, steps=True)
    task = current_task(client, project, user)
    (a,) = task.display_order
    form = judgment_form(
        task, {f"step_{a}_0": "positive", f"step_{a}_1": "neutral", f"step_{a}_2": "negative", "idempotency_key": "k"}
    )
    assert form.is_valid() and form.payload()["steps"] == ["positive", "neutral", "negative"]
    client.post(f"/p/steps-p/tasks/{task.pk}/judge/", {**form.data})
    assert Judgment.objects.get(task=task).data == {"steps": {str(a): ["positive", "neutral", "negative"]}}


def test_demonstration_start_from_and_submit(kind_client):
    client, project, user = kind_client(Kind.DEMONSTRATION, n_responses=2)
    task = current_task(client, project, user)
    a, b = task.display_order
    text_b = project.items.get(pk=task.item_id).responses.get(pk=b).text
    # Without JavaScript, "start from this" is a link that fills the text box on the server.
    started = client.get(f"/p/demonstration-p/annotate/?start_from={b}").content.decode()
    assert f">\n{text_b}</textarea>" in started and f'<option value="{b}" selected>' in started
    assert f'data-raw="{text_b}"' in started
    empty = client.post(f"/p/demonstration-p/tasks/{task.pk}/judge/", {"text": "  ", "idempotency_key": "d0"})
    assert empty.status_code == 400 and "Write the response" in empty.content.decode()
    client.post(
        f"/p/demonstration-p/tasks/{task.pk}/judge/",
        {"text": text_b + " Better.", "based_on": str(b), "idempotency_key": "d1"},
    )
    judgment = Judgment.objects.get(task=task)
    assert (judgment.text, judgment.data) == (text_b + " Better.", {"based_on": b})


def test_demonstration_without_responses(client, db):
    project = actions.create_project(slug="demo0", kind=Kind.DEMONSTRATION, overlap=1)
    actions.import_items(
        project, parse_items(jsonl([{"prompt": "Write a haiku.", "responses": []}]), "jsonl", Kind.DEMONSTRATION)
    )
    user = actions.add_member(project, "ann", Role.ANNOTATOR).user
    client.force_login(user)
    task = current_task(client, project, user)
    assert "start-from" not in client.get("/p/demo0/annotate/").content.decode()
    client.post(f"/p/demo0/tasks/{task.pk}/judge/", {"text": "Old pond, frog.", "idempotency_key": "h"})
    judgment = Judgment.objects.get(task=task)
    assert (judgment.text, judgment.data) == ("Old pond, frog.", {})


def test_pairwise_criteria_and_a_better_one(kind_client):
    client, project, user = kind_client(Kind.PAIRWISE, n_responses=2, criteria=["helpfulness", "harmlessness"])
    page = client.get("/p/pairwise-p/annotate/").content.decode()
    task = Task.objects.get(annotator=user)
    assert 'name="criterion_0"' in page and 'name="criterion_1"' in page and "Helpfulness" in page
    missing = client.post(
        f"/p/pairwise-p/tasks/{task.pk}/judge/", {"choice": "tie", "criterion_0": "A", "idempotency_key": "p0"}
    )
    assert missing.status_code == 400 and "Choose for harmlessness too." in missing.content.decode()
    data = {
        "choice": "both_bad",
        "criterion_0": "B",
        "criterion_1": "tie",
        "demonstration": "A far better answer.",
        "idempotency_key": "p1",
    }
    client.post(f"/p/pairwise-p/tasks/{task.pk}/judge/", data)
    judgment = Judgment.objects.get(task=task)
    assert (judgment.outcome, judgment.winner_id, judgment.strength) == ("both_bad", None, None)
    assert judgment.data == {
        "criteria": {
            "helpfulness": {"outcome": "win", "winner": task.display_order[1]},
            "harmlessness": {"outcome": "tie", "winner": None},
        },
        "demonstration": "A far better answer.",
    }
    # A "better one" typed before switching to another choice is not sent.
    task2 = current_task(client, project, user)
    form = judgment_form(
        task2,
        {
            "choice": "A",
            "strength": "1",
            "criterion_0": "A",
            "criterion_1": "A",
            "demonstration": "x",
            "idempotency_key": "k",
        },
    )
    assert form.is_valid() and "demonstration" not in form.payload()


def test_diff_is_escaped_and_marked(kind_client):
    client, project, user = kind_client(Kind.PAIRWISE, n_responses=0, n_items=0)
    rows = [{"prompt": "p", "responses": ["keep <b>this</b> old", "keep <i>this</i> new"]}]
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", Kind.PAIRWISE))
    page = client.get("/p/pairwise-p/annotate/").content.decode()
    assert 'class="diff-toggle"' in page and "<kbd>d</kbd>" in page
    assert "<del>old</del>" in page or "<ins>old</ins>" in page
    assert "&lt;<del>b</del>&gt;" in page or "&lt;<ins>b</ins>&gt;" in page
    assert "<b>this</b>" not in page and "<i>this</i>" not in page


def test_preload_after_gives_the_next_task(kind_client):
    client, project, user = kind_client(Kind.RATING, n_responses=1)
    first = current_task(client, project, user)
    preload = client.get(f"/p/rating-p/annotate/?after={first.pk}", HTTP_HX_REQUEST="true")
    html = preload.content.decode()
    second = Task.objects.exclude(pk=first.pk).get(annotator=user)
    assert html.lstrip().startswith('<section id="task"') and f'data-task="{second.pk}"' in html
    # The same question again holds no third lease, and a reload still shows the first task.
    client.get(f"/p/rating-p/annotate/?after={first.pk}", HTTP_HX_REQUEST="true")
    assert Task.objects.filter(annotator=user).count() == 2
    assert f'data-task="{first.pk}"' in client.get("/p/rating-p/annotate/").content.decode()
    assert f'data-task="{first.pk}"' in client.get("/p/rating-p/annotate/?after=nonsense").content.decode()


def test_skip_plain_and_htmx(kind_client):
    client, project, user = kind_client(Kind.STEPS, n_responses=1, steps=True)
    task = current_task(client, project, user)
    nothing = client.post(f"/p/steps-p/tasks/{task.pk}/skip/", {"reason": ""})
    assert nothing.status_code == 400 and "Say why you skip" in nothing.content.decode()
    answer = client.post(f"/p/steps-p/tasks/{task.pk}/skip/", {"reason": "I cannot judge this topic"})
    assert answer.status_code == 302 and answer["Location"] == "/p/steps-p/annotate/"
    task.refresh_from_db()
    assert (task.status, task.skip_reason) == ("skipped", "I cannot judge this topic")
    second = current_task(client, project, user)
    assert second.pk != task.pk
    htmx = client.post(f"/p/steps-p/tasks/{second.pk}/skip/", {"reason": "too long"}, HTTP_HX_REQUEST="true")
    assert json.loads(htmx["HX-Trigger"]) == {"arbiter:skipped": {"task": second.pk}}
    html = htmx.content.decode()
    assert "Skipped." in html and f'data-task="{second.pk}"' not in html
    # A skipped task cannot be answered any more: the page moves on with the reason.
    late = client.post(
        f"/p/steps-p/tasks/{task.pk}/judge/",
        {"step_1_0": "positive", "idempotency_key": "late"},
        HTTP_HX_REQUEST="true",
    )
    assert not Judgment.objects.filter(task=task).exists() and late.status_code == 200


def test_answer_to_a_skipped_task_is_a_conflict_that_moves_on(kind_client):
    client, project, user = kind_client(Kind.DEMONSTRATION, n_responses=1)
    task = current_task(client, project, user)
    actions.skip_task(task, "no")
    plain = client.post(f"/p/demonstration-p/tasks/{task.pk}/judge/", {"text": "hi", "idempotency_key": "c"})
    assert plain.status_code == 302
    assert "This task was skipped." in client.get("/p/demonstration-p/annotate/").content.decode()
    htmx = client.post(
        f"/p/demonstration-p/tasks/{task.pk}/judge/", {"text": "hi", "idempotency_key": "c2"}, HTTP_HX_REQUEST="true"
    )
    assert json.loads(htmx["HX-Trigger"])["arbiter:conflict"]["task"] == task.pk
    assert f'data-task="{task.pk}"' not in htmx.content.decode()
    assert not Judgment.objects.exists()


def test_flag_plain_and_htmx(kind_client):
    client, project, user = kind_client(Kind.RANKING, n_responses=3)
    task = current_task(client, project, user)
    bad = client.post(f"/p/ranking-p/tasks/{task.pk}/flag/", {"note": "?"})
    assert bad.status_code == 400 and not Flag.objects.exists()
    answer = client.post(f"/p/ranking-p/tasks/{task.pk}/flag/", {"category": "personal_data", "note": "a phone number"})
    assert answer.status_code == 302
    assert "flagged (personal data)" in client.get("/p/ranking-p/annotate/").content.decode()
    htmx = client.post(f"/p/ranking-p/tasks/{task.pk}/flag/", {"category": "unsafe"}, HTTP_HX_REQUEST="true")
    html = htmx.content.decode()
    assert html.lstrip().startswith('<details class="panel flag" open>') and "flagged (unsafe content)" in html
    flags = list(Flag.objects.order_by("id").values_list("task_id", "category", "note"))
    assert flags == [(task.pk, "personal_data", "a phone number"), (task.pk, "unsafe", "")]
    task.refresh_from_db()
    assert task.status == "leased"  # a flag does not end the task


def test_researcher_creates_projects_of_every_kind(client, make_project, make_member):
    seed = make_project(slug="seed", n_items=0)
    client.force_login(make_member(seed, "res", Role.RESEARCHER))
    answer = client.post(
        "/projects/new/",
        {
            "slug": "rate",
            "kind": "rating",
            "overlap": 1,
            "criteria_text": "helpful, safe",
            "scale_text": "safe,unsafe,unsure",
        },
    )
    assert answer.status_code == 302
    project = Project.objects.get(slug="rate")
    assert (project.kind, project.criteria, project.scale) == (
        "rating",
        ["helpful", "safe"],
        {"labels": ["safe", "unsafe", "unsure"]},
    )
    client.post(
        "/projects/new/", {"slug": "rank", "kind": "ranking", "overlap": 1, "allow_ties": "on", "scale_text": "1-5"}
    )
    project = Project.objects.get(slug="rank")
    # A scale is a rating project's setting: the ranking form has no such field, so a posted one is not stored.
    assert (project.kind, project.allow_ties, project.scale, project.step_separator) == ("ranking", True, {}, "\n")
    bad = client.post("/projects/new/", {"slug": "bad", "kind": "rating", "overlap": 1, "scale_text": "7-1"})
    assert bad.status_code == 200 and "lower to a higher" in bad.content.decode()


def test_researcher_downloads_each_format_and_creates_a_snapshot(client, make_project, make_member, settings, tmp_path):
    import json as jsonlib

    from annotate import actions
    from annotate.imports import parse_votes
    from annotate.models import Snapshot

    settings.ARTIFACT_ROOT = tmp_path
    project = make_project(n_items=4, overlap=1)
    actions.import_judgments(
        project, parse_votes(jsonl([{"item": f"item-{i}", "annotator": "x", "winner": 0} for i in range(4)]), "jsonl")
    )
    client.force_login(make_member(project, "res", Role.RESEARCHER))
    page = client.get("/p/demo/").content.decode()
    assert '<option value="openai-dpo">' in page and '<option value="steps">' not in page
    body = b"".join(client.get("/p/demo/export/").streaming_content)
    rows = [jsonlib.loads(line) for line in body.splitlines()]
    assert len(rows) == 4 and rows[0]["chosen"] == "The answer is 0."
    hh = b"".join(client.post("/p/demo/export/", {"format": "hh"}).streaming_content).decode()
    assert "\\n\\nHuman: Question 0" in hh
    assert client.get("/p/demo/export/", {"format": "steps"}).status_code == 400
    assert client.get("/p/demo/export/", {"format": "trl", "min_agreement": "7"}).status_code == 400
    answer = client.post("/p/demo/snapshots/", {"format": "trl", "test_size": "0.25", "seed": "1"}, follow=True)
    snapshot = Snapshot.objects.get()
    assert f"Created snapshot {snapshot.pk}" in answer.content.decode()
    assert (snapshot.counts["train"], snapshot.counts["test"]) == (3, 1)
    assert snapshot.content_hash[:12] in client.get("/p/demo/").content.decode()
    again = client.post("/p/demo/snapshots/", {"format": "trl", "test_size": "0.25", "seed": "1"}, follow=True)
    assert "Nothing changed since" in again.content.decode() and Snapshot.objects.count() == 1


def test_the_export_form_starts_on_the_format_training_reads(client, make_project, make_member):
    """It used to start on the alphabetically first format (hh)."""
    from annotate.exports.options import default_format

    project = make_project(slug="fmt", n_items=1)
    client.force_login(make_member(project, "res", role=Role.RESEARCHER))
    page = client.get("/p/fmt/").content.decode()
    assert re.search(r'<option value="trl" selected>', page), page[page.find('name="format"') :][:400]
    assert default_format(Kind.STEPS) == "steps" and default_format(Kind.RANKING) == "trl"
