import json

import pytest
from rest_framework.test import APIClient

from annotate.models import Item, Judgment, Role, Task
from tests.conftest import jsonl, pairwise_rows

pytestmark = pytest.mark.django_db


@pytest.fixture
def round_of_three(make_project, make_member, api_client_for):
    """3 annotators, overlap 2, 30 items: exactly 60 judgments to collect."""
    project = make_project(overlap=2, n_items=30)
    clients = [api_client_for(make_member(project, f"ann{i}")) for i in range(3)]
    return project, clients


def test_a_round_collects_exactly_overlap_times_items(round_of_three):
    project, clients = round_of_three
    acknowledged = []
    active = list(clients)
    while active:
        for client in list(active):
            answer = client.get(f"/api/projects/{project.slug}/next-task/")
            if answer.status_code == 204:
                active.remove(client)
                continue
            assert answer.status_code == 200
            task = answer.json()
            assert task["kind"] == "pairwise" and len(task["responses"]) == 2
            assert set(task) == {"id", "kind", "project", "prompt", "responses", "status", "lease_expires_at"}
            # The good response (index 0, "The answer is 2i.") always wins.
            good = Item.objects.get(tasks__id=task["id"]).responses.get(index=0).pk
            choice = "A" if task["responses"][0]["id"] == good else "B"
            body = {"choice": choice, "strength": 3, "idempotency_key": f"t{task['id']}", "duration_ms": 900}
            posted = client.post(f"/api/tasks/{task['id']}/judgments/", body, format="json")
            assert posted.status_code == 201, posted.content
            acknowledged.append(posted.json()["id"])
            replay = client.post(f"/api/tasks/{task['id']}/judgments/", body, format="json")
            assert replay.status_code == 200 and replay.json()["id"] == posted.json()["id"]
    assert len(acknowledged) == len(set(acknowledged)) == 60
    assert Judgment.objects.filter(project=project).count() == 60
    assert set(Item.objects.filter(project=project).values_list("n_judgments", flat=True)) == {2}
    # Each annotator judged each item at most once.
    assert Task.objects.filter(project=project).values("item", "annotator").distinct().count() == 60


def test_judgment_answer_reports_the_choice_in_display_terms(make_project, make_member, api_client_for):
    project = make_project(n_items=1)
    client = api_client_for(make_member(project, "ann"))
    task = client.get("/api/projects/demo/next-task/").json()
    posted = client.post(
        f"/api/tasks/{task['id']}/judgments/", {"choice": "B", "strength": 1, "idempotency_key": "x"}, format="json"
    ).json()
    assert posted["choice"] == "B" and posted["winner"] == task["responses"][1]["id"] and posted["strength"] == 1


def test_a_reused_key_with_another_answer_is_409_and_the_same_answer_200(make_project, make_member, api_client_for):
    project = make_project(n_items=1)
    client = api_client_for(make_member(project, "ann"))
    task = client.get("/api/projects/demo/next-task/").json()
    url = f"/api/tasks/{task['id']}/judgments/"
    body = {"choice": "A", "strength": 2, "idempotency_key": "pay-1", "duration_ms": 800}
    first = client.post(url, body, format="json")
    assert first.status_code == 201
    changed = client.post(url, {**body, "choice": "B"}, format="json")
    assert changed.status_code == 409
    assert "idempotency_key 'pay-1' was already used for a different answer" in changed.json()["detail"]
    replay = client.post(url, {**body, "duration_ms": 1500}, format="json")
    assert replay.status_code == 200 and replay.json() == first.json()
    stored = Judgment.objects.get()
    assert (stored.pk, stored.winner_id, stored.strength, stored.duration_ms) == (
        first.json()["id"],
        task["responses"][0]["id"],
        2,
        800,
    )


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"choice": "A", "strength": 2}, 400, "idempotency_key"),
        ({"choice": "Z", "idempotency_key": "k"}, 400, "choice must be one of"),
        ({"choice": "A", "strength": 9, "idempotency_key": "k"}, 400, "strength"),
        ({"choice": "A", "strength": "two", "idempotency_key": "k"}, 400, "strength"),
        ({"choice": "A", "idempotency_key": "k" * 101}, 400, "idempotency_key"),
    ],
)
def test_bad_bodies_get_400_with_a_reason(make_project, make_member, api_client_for, body, status, message):
    project = make_project(n_items=1)
    client = api_client_for(make_member(project, "ann"))
    task = client.get("/api/projects/demo/next-task/").json()
    answer = client.post(f"/api/tasks/{task['id']}/judgments/", body, format="json")
    assert answer.status_code == status
    assert message in answer.json()["detail"]
    assert not Judgment.objects.exists()


def test_malformed_json_and_wrong_content_type(make_project, make_member, api_client_for):
    project = make_project(n_items=1)
    client = api_client_for(make_member(project, "ann"))
    task = client.get("/api/projects/demo/next-task/").json()
    url = f"/api/tasks/{task['id']}/judgments/"
    assert client.post(url, "{nope", content_type="application/json").status_code == 400
    assert client.post(url, "[1, 2]", content_type="application/json").status_code == 400
    assert client.post(url, "choice=A", content_type="application/x-www-form-urlencoded").status_code == 415
    assert not Judgment.objects.exists()


def test_ids_beyond_64_bits_are_not_found(make_project, make_member, api_client_for):
    """Found by schemathesis: a task id past a 64-bit integer reached SQLite through raw SQL (OverflowError, 500)."""
    project = make_project(n_items=1)
    client = api_client_for(make_member(project, "ann"))
    huge = 2**64 + 7
    body = {"choice": "A", "strength": 1, "idempotency_key": "k"}
    assert client.post(f"/api/tasks/{huge}/judgments/", body, format="json").status_code == 404
    assert client.get(f"/api/tasks/{huge}/").status_code == 404
    assert client.get(f"/api/projects/demo/next-task/?after={huge}").status_code in (200, 400)
    assert not Judgment.objects.exists()


def test_anonymous_calls_are_refused(make_project):
    make_project(n_items=1)
    client = APIClient()
    assert client.get("/api/projects/").status_code == 401
    assert client.get("/api/projects/demo/next-task/").status_code == 401
    assert client.post("/api/tasks/1/judgments/", {}, format="json").status_code == 401
    assert client.get("/api/projects/demo/agreement/").status_code == 401


def test_members_only_see_their_projects_and_tasks(make_project, make_member, api_client_for):
    demo = make_project(slug="demo", n_items=2)
    other = make_project(slug="other", n_items=2)
    mine = api_client_for(make_member(demo, "mine"))
    stranger = api_client_for(make_member(other, "stranger"))
    assert [p["slug"] for p in mine.get("/api/projects/").json()] == ["demo"]
    assert stranger.get("/api/projects/demo/next-task/").status_code == 404
    assert stranger.get("/api/projects/demo/").status_code == 404
    task = mine.get("/api/projects/demo/next-task/").json()
    # Another annotator's task does not exist for you.
    colleague = api_client_for(make_member(demo, "colleague"))
    assert colleague.get(f"/api/tasks/{task['id']}/").status_code == 404
    answer = colleague.post(
        f"/api/tasks/{task['id']}/judgments/", {"choice": "A", "idempotency_key": "k"}, format="json"
    )
    assert answer.status_code == 404
    assert not Judgment.objects.exists()


def test_annotators_cannot_import_read_agreement_or_manage_members(make_project, make_member, api_client_for):
    project = make_project(n_items=1)
    client = api_client_for(make_member(project, "ann"))
    upload = client.post("/api/projects/demo/items/", {"file": _upload(pairwise_rows(1, start=5))}, format="multipart")
    assert upload.status_code == 403
    assert client.get("/api/projects/demo/agreement/").status_code == 403
    assert client.get("/api/projects/demo/members/").status_code == 403
    assert client.post("/api/projects/", {"slug": "mine", "kind": "pairwise"}, format="json").status_code == 403
    assert Item.objects.count() == 1


def test_task_answers_never_show_model_names_gold_or_metadata(make_project, make_member, api_client_for):
    project = make_project(n_items=0)
    row = {
        "prompt": "Q",
        "responses": [{"text": "a", "model": "secret-model"}, "b"],
        "gold": {"winner": 0},
        "metadata": {"m": 1},
    }
    from annotate import actions
    from annotate.imports import parse_items

    actions.import_items(project, parse_items(jsonl([row]), "jsonl", "pairwise"))
    client = api_client_for(make_member(project, "ann"))
    text = json.dumps(client.get("/api/projects/demo/next-task/").json())
    assert "secret-model" not in text and "winner" not in text and '"m"' not in text


def _upload(rows, name="items.jsonl"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, jsonl(rows), content_type="application/octet-stream")


def test_researcher_imports_and_a_bad_file_changes_nothing(make_project, make_member, api_client_for):
    project = make_project(n_items=0)
    client = api_client_for(make_member(project, "res", Role.RESEARCHER))
    ok = client.post("/api/projects/demo/items/", {"file": _upload(pairwise_rows(3))}, format="multipart")
    assert ok.status_code == 201 and ok.json()["created"] == 3
    again = client.post("/api/projects/demo/items/", {"file": _upload(pairwise_rows(4))}, format="multipart")
    assert again.json()["created"] == 1 and [d["line"] for d in again.json()["duplicates"]] == [1, 2, 3]
    rows = pairwise_rows(3, start=10)
    rows[1]["responses"] = ["only one"]
    bad = client.post("/api/projects/demo/items/", {"file": _upload(rows)}, format="multipart")
    assert bad.status_code == 400
    assert bad.json()["errors"] == [
        {"line": 2, "message": "pairwise projects need exactly 2 responses per item; this row has 1."}
    ]
    assert Item.objects.filter(project=project).count() == 4
    missing = client.post("/api/projects/demo/items/", {}, format="multipart")
    assert missing.status_code == 400


def test_researcher_reads_agreement(make_project, make_member, api_client_for):
    project = make_project(n_items=2, overlap=2)
    a, b = (make_member(project, n) for n in ("a", "b"))
    for user, choices in ((a, ["good", "good"]), (b, ["good", "bad"])):
        client = api_client_for(user)
        for choice in choices:
            task = client.get("/api/projects/demo/next-task/").json()
            good = Item.objects.get(tasks__id=task["id"]).responses.get(index=0).pk
            pick = "A" if (task["responses"][0]["id"] == good) == (choice == "good") else "B"
            client.post(
                f"/api/tasks/{task['id']}/judgments/",
                {"choice": pick, "strength": 1, "idempotency_key": str(task["id"])},
                format="json",
            )
    researcher = api_client_for(make_member(project, "res", Role.RESEARCHER))
    result = researcher.get("/api/projects/demo/agreement/").json()
    assert (result["n_items"], result["n_judgments"], result["percent_agreement"]) == (2, 4, 0.5)


def test_admin_manages_members_and_projects_are_created_by_researchers(make_project, make_member, api_client_for):
    project = make_project(n_items=0)
    admin = api_client_for(make_member(project, "boss", Role.ADMIN))
    make_member(project, "newbie")
    assert (
        admin.post(
            "/api/projects/demo/members/", {"username": "newbie", "role": "researcher"}, format="json"
        ).status_code
        == 201
    )
    assert project.memberships.get(user__username="newbie").role == "researcher"
    assert (
        admin.post("/api/projects/demo/members/", {"username": "ghost", "role": "annotator"}, format="json").status_code
        == 404
    )
    assert (
        admin.post("/api/projects/demo/members/", {"username": "newbie", "role": "king"}, format="json").status_code
        == 400
    )
    listed = admin.get("/api/projects/demo/members/").json()
    assert {m["username"]: m["role"] for m in listed} == {"boss": "admin", "newbie": "researcher"}
    assert admin.delete("/api/projects/demo/members/newbie/").status_code == 204
    assert not project.memberships.filter(user__username="newbie").exists()
    created = admin.post("/api/projects/", {"slug": "round-2", "kind": "pairwise", "overlap": 3}, format="json")
    assert created.status_code == 201 and created.json()["overlap"] == 3
    bad = admin.post("/api/projects/", {"slug": "bad slug!", "kind": "pairwise"}, format="json")
    assert bad.status_code == 400


def test_healthz_and_schema(client, db):
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for route in ("/api/projects/{slug}/next-task/", "/api/tasks/{task_id}/judgments/", "/api/projects/{slug}/items/"):
        assert route in text
    assert client.get("/api/docs/").status_code == 200


def test_healthz_answers_503_when_the_database_does_not(client, db, monkeypatch):
    from django.db import OperationalError, connection

    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", broken)
    answer = client.get("/healthz")
    assert answer.status_code == 503 and answer.json()["status"] == "unavailable"


@pytest.mark.django_db
def test_a_lease_longer_than_a_week_is_refused_and_next_task_keeps_working(make_project, make_member, api_client_for):
    """Found by the schema fuzzer: a huge lease_seconds was stored, and every next-task then failed with a 500 (the
    lease's end overflowed)."""
    from annotate.models import MAX_LEASE_SECONDS

    project = make_project(n_items=2)
    admin = api_client_for(make_member(project, "boss", role=Role.ADMIN))
    for value in (MAX_LEASE_SECONDS + 1, 2**62, 0):
        answer = admin.patch(f"/api/projects/{project.slug}/", {"lease_seconds": value}, format="json")
        assert answer.status_code == 400 and "lease_seconds" in answer.json(), answer.content
    assert (
        admin.patch(f"/api/projects/{project.slug}/", {"lease_seconds": MAX_LEASE_SECONDS}, format="json").status_code
        == 200
    )
    assert admin.get(f"/api/projects/{project.slug}/next-task/").status_code == 200
