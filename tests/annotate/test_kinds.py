"""Every kind's answers through the API and import_judgments: accepted values stored, malformed ones refused."""

import pytest

from annotate import actions
from annotate.imports import ImportFailed, parse_items, parse_votes
from annotate.models import Flag, Item, Judgment, Kind, Task
from tests.conftest import jsonl

pytestmark = pytest.mark.django_db


def project_with(kind, rows, **fields):
    project = actions.create_project(slug=kind, kind=kind, **{"overlap": 1, **fields})
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", kind))
    return project


def ranking_rows(k=4, n=2):
    return [
        {"id": f"r{i}", "prompt": f"Rank these {i}", "responses": [f"resp {i}-{j}" for j in range(k)]} for i in range(n)
    ]


@pytest.fixture
def client_for(make_member, api_client_for):
    def make(project, name="ann"):
        return api_client_for(make_member(project, name))

    return make


def post(client, task, body, key="k"):
    return client.post(f"/api/tasks/{task['id']}/judgments/", {**body, "idempotency_key": key}, format="json")


def test_pairwise_with_criteria(client_for):
    project = project_with(Kind.PAIRWISE, [{"prompt": "Q", "responses": ["a", "b"]}], criteria=["helpful", "harmless"])
    client = client_for(project)
    task = client.get("/api/projects/pairwise/next-task/").json()
    missing = post(client, task, {"choice": "A", "strength": 1, "criteria": {"helpful": "A"}})
    assert missing.status_code == 400 and "harmless" in missing.json()["detail"]
    unknown = post(
        client, task, {"choice": "A", "strength": 1, "criteria": {"helpful": "A", "harmless": "B", "funny": "A"}}
    )
    assert unknown.status_code == 400 and "funny" in unknown.json()["detail"]
    ok = post(client, task, {"choice": "A", "strength": 1, "criteria": {"helpful": "A", "harmless": "tie"}})
    assert ok.status_code == 201
    a = task["responses"][0]["id"]
    assert Judgment.objects.get().data == {
        "criteria": {"helpful": {"outcome": "win", "winner": a}, "harmless": {"outcome": "tie", "winner": None}}
    }


def test_both_bad_with_a_better_response(client_for):
    project = project_with(Kind.PAIRWISE, [{"prompt": "Q", "responses": ["a", "b"]}])
    client = client_for(project)
    task = client.get("/api/projects/pairwise/next-task/").json()
    assert post(client, task, {"choice": "A", "strength": 1, "demonstration": "better"}).status_code == 400
    assert post(client, task, {"choice": "both_bad", "demonstration": "A better answer."}).status_code == 201
    assert Judgment.objects.get().data == {"demonstration": "A better answer."}


def test_ranking_answers(client_for):
    project = project_with(Kind.RANKING, ranking_rows())
    client = client_for(project)
    task = client.get("/api/projects/ranking/next-task/").json()
    ids = [r["id"] for r in task["responses"]]
    for bad, message in [
        (ids[:3], "exactly once"),
        (ids + [ids[0]], "exactly once"),
        ([ids[0], ids[1], ids[2], 999999], "not one of this task's responses"),
        ([[ids[0], ids[1]], ids[2], ids[3]], "does not allow ties"),
        ("not a list", "must be a list"),
    ]:
        answer = post(client, task, {"ranking": bad})
        assert answer.status_code == 400 and message in answer.json()["detail"], (bad, answer.json())
    best_first = [ids[2], ids[0], ids[3], ids[1]]
    assert post(client, task, {"ranking": best_first}).status_code == 201
    assert Judgment.objects.get().data == {"ranking": [[rid] for rid in best_first]}


def test_ranking_with_ties_allowed(client_for):
    project = project_with(Kind.RANKING, ranking_rows(k=3), allow_ties=True)
    client = client_for(project)
    task = client.get("/api/projects/ranking/next-task/").json()
    ids = [r["id"] for r in task["responses"]]
    assert post(client, task, {"ranking": [[ids[1], ids[2]], ids[0]]}).status_code == 201
    assert Judgment.objects.get().data["ranking"] == [[ids[1], ids[2]], [ids[0]]]


def test_rating_answers_numeric_and_categorical(client_for):
    rows = [{"prompt": "Rate", "responses": ["x", "y"]}]
    numeric = project_with(Kind.RATING, rows, criteria=["helpful", "honest"], scale={"min": 1, "max": 5})
    client = client_for(numeric)
    task = client.get("/api/projects/rating/next-task/").json()
    x, y = (r["id"] for r in task["responses"])
    full = {str(x): {"helpful": 5, "honest": 1}, str(y): {"helpful": 3, "honest": 2}}
    for bad, message in [
        ({str(x): {"helpful": 6, "honest": 1}, str(y): full[str(y)]}, "off the scale 1..5"),
        ({str(x): {"helpful": 5}, str(y): full[str(y)]}, "no score for honest"),
        ({str(x): full[str(x)]}, "missing for 1 of the 2"),
        ({str(x): {"helpful": 2.5, "honest": 1}, str(y): full[str(y)]}, "off the scale"),
        ({"123456": full[str(x)], str(y): full[str(y)]}, "not one of this task's responses"),
    ]:
        answer = post(client, task, {"ratings": bad})
        assert answer.status_code == 400 and message in answer.json()["detail"], (bad, answer.json())
    assert post(client, task, {"ratings": full}).status_code == 201
    assert Judgment.objects.get().data == {"ratings": full}

    safety = actions.create_project(slug="safety", kind=Kind.RATING, scale={"labels": ["safe", "unsafe", "unsure"]})
    actions.import_items(safety, parse_items(jsonl(rows), "jsonl", Kind.RATING))
    client = client_for(safety, "ann2")
    task = client.get("/api/projects/safety/next-task/").json()
    x, y = (r["id"] for r in task["responses"])
    bad = post(client, task, {"ratings": {str(x): {"overall": "maybe"}, str(y): {"overall": "safe"}}}, key="s1")
    assert bad.status_code == 400 and "not one of safe, unsafe, unsure" in bad.json()["detail"]
    good = post(client, task, {"ratings": {str(x): {"overall": "unsafe"}, str(y): {"overall": "safe"}}}, key="s2")
    assert good.status_code == 201


def test_steps_answers(client_for):
    project = project_with(Kind.STEPS, [{"prompt": "Solve", "responses": ["Step one\nStep two\n\nStep three"]}])
    client = client_for(project)
    task = client.get("/api/projects/steps/next-task/").json()
    assert task["responses"][0]["steps"] == ["Step one", "Step two", "Step three"]
    rid = str(task["responses"][0]["id"])
    too_few = post(client, task, {"steps": {rid: ["positive", "negative"]}})
    assert too_few.status_code == 400 and "has 3 steps; got 2 labels" in too_few.json()["detail"]
    wrong = post(client, task, {"steps": {rid: ["positive", "great", "neutral"]}})
    assert wrong.status_code == 400 and "step 2" in wrong.json()["detail"]
    assert post(client, task, {"steps": ["positive", "negative", "neutral"]}).status_code == 201
    assert Judgment.objects.get().data == {"steps": {rid: ["positive", "negative", "neutral"]}}


def test_demonstration_answers(client_for):
    project = project_with(
        Kind.DEMONSTRATION, [{"prompt": "Write a haiku", "responses": []}, {"prompt": "Fix", "responses": ["draft"]}]
    )
    client = client_for(project)
    task = client.get("/api/projects/demonstration/next-task/").json()
    assert task["responses"] == []
    empty = post(client, task, {"text": "   "})
    assert empty.status_code == 400 and "cannot be empty" in empty.json()["detail"]
    assert post(client, task, {"text": "Old pond / frog jumps in / sound of water"}).status_code == 201
    second = client.get("/api/projects/demonstration/next-task/").json()
    draft = second["responses"][0]["id"]
    assert post(client, second, {"text": "fixed", "based_on": 424242}, key="k2").status_code == 400
    assert post(client, second, {"text": "fixed", "based_on": draft}, key="k3").status_code == 201
    assert list(Judgment.objects.order_by("id").values_list("text", "data")) == [
        ("Old pond / frog jumps in / sound of water", {}),
        ("fixed", {"based_on": draft}),
    ]


def test_skip_and_flag(client_for):
    project = project_with(Kind.PAIRWISE, [{"prompt": f"Q{i}", "responses": ["a", "b"]} for i in range(2)], overlap=1)
    client = client_for(project)
    task = client.get("/api/projects/pairwise/next-task/").json()
    flag = client.post(
        f"/api/tasks/{task['id']}/flags/", {"category": "personal_data", "note": "a phone number"}, format="json"
    )
    assert flag.status_code == 201
    assert client.post(f"/api/tasks/{task['id']}/flags/", {"category": "boring"}, format="json").status_code == 400
    assert client.post(f"/api/tasks/{task['id']}/skip/", {"reason": ""}, format="json").status_code == 400
    skipped = client.post(f"/api/tasks/{task['id']}/skip/", {"reason": "I can't read code"}, format="json")
    assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
    assert Flag.objects.get().category == "personal_data"
    stored = Task.objects.get(pk=task["id"])
    assert (stored.status, stored.skip_reason, stored.item.open_slots) == ("skipped", "I can't read code", 1)
    # The skipped item is never offered to this annotator again but goes to the next one.
    nxt = client.get("/api/projects/pairwise/next-task/").json()
    assert nxt["id"] != task["id"] and Task.objects.get(pk=nxt["id"]).item_id != stored.item_id
    other = client_for(project, "other")
    assert Task.objects.get(pk=other.get("/api/projects/pairwise/next-task/").json()["id"]).item_id == stored.item_id
    answered = post(client, task, {"choice": "A", "strength": 1})
    assert answered.status_code == 409


def test_import_judgments_of_every_kind(make_project):
    ranking = project_with(Kind.RANKING, ranking_rows(k=3, n=1), allow_ties=True)
    votes = [
        {"item": "r0", "annotator": "x", "ranking": [2, [0, 1]]},
        {"item": "r0", "annotator": "y", "ranking": [0, 1]},
    ]
    with pytest.raises(ImportFailed) as caught:
        actions.import_judgments(ranking, parse_votes(jsonl(votes), "jsonl"))
    assert caught.value.errors[0][0] == 2 and "exactly once" in caught.value.errors[0][1]
    actions.import_judgments(ranking, parse_votes(jsonl(votes[:1]), "jsonl"))
    ids = list(Item.objects.get(external_id="r0").responses.order_by("index").values_list("id", flat=True))
    assert Judgment.objects.get(project=ranking).data == {"ranking": [[ids[2]], [ids[0], ids[1]]]}

    rating = project_with(Kind.RATING, [{"id": "t", "prompt": "Q", "responses": ["a", "b"]}])
    actions.import_judgments(
        rating,
        parse_votes(
            jsonl([{"item": "t", "annotator": "x", "ratings": {"0": {"overall": 7}, "1": {"overall": 2}}}]), "jsonl"
        ),
    )
    a, b = Item.objects.get(project=rating).responses.order_by("index").values_list("id", flat=True)
    assert Judgment.objects.get(project=rating).data == {"ratings": {str(a): {"overall": 7}, str(b): {"overall": 2}}}

    steps = project_with(Kind.STEPS, [{"id": "s", "prompt": "Q", "responses": ["one\ntwo"]}])
    actions.import_judgments(steps, parse_votes(jsonl([{"item": "s", "annotator": "x", "steps": [1, -1]}]), "jsonl"))
    (only,) = Item.objects.get(project=steps).responses.values_list("id", flat=True)
    assert Judgment.objects.get(project=steps).data == {"steps": {str(only): ["positive", "negative"]}}

    demo = project_with(Kind.DEMONSTRATION, [{"id": "d", "prompt": "Q", "responses": []}])
    actions.import_judgments(demo, parse_votes(jsonl([{"item": "d", "annotator": "x", "text": "ideal"}]), "jsonl"))
    assert Judgment.objects.get(project=demo).text == "ideal"


def test_response_count_limits_per_kind():
    with pytest.raises(ImportFailed, match="3 to 9 responses"):
        parse_items(jsonl([{"prompt": "Q", "responses": ["a", "b"]}]), "jsonl", Kind.RANKING)
    with pytest.raises(ImportFailed, match="0 to 9 responses"):
        parse_items(jsonl([{"prompt": "Q", "responses": [str(i) for i in range(10)]}]), "jsonl", Kind.DEMONSTRATION)
    assert (
        len(
            parse_items(jsonl([{"prompt": "Q", "responses": [str(i) for i in range(9)]}]), "jsonl", Kind.RANKING)[
                0
            ].responses
        )
        == 9
    )
