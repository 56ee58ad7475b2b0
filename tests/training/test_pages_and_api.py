"""Training pages and API: who sees what, the launch form, the run page's htmx fragment, scoring."""

import json

import pytest
from django.urls import reverse

from annotate.models import Role
from tests.training.conftest import FAST
from training import launching
from training.models import MetricPoint, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(preference_project, make_member):
    return {role: make_member(preference_project, role, role) for role in ("annotator", "researcher", "admin")}


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("outsider", password="a-long-test-password")


@pytest.fixture
def queued_run(preference_snapshot, tiny_base, people):
    run = launching.launch_run(
        project=preference_snapshot.project,
        kind="reward",
        base_model="tiny-llama",
        snapshot=preference_snapshot,
        values=FAST,
        launched_by=people["admin"],
        enqueue=False,
    )
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, step=s, values={"loss": 1 / s, "accuracy": 0.5 + s / 100}) for s in (5, 10, 15)]
    )
    return run


def _client(client, user):
    client.force_login(user)
    return client


# --- pages -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["training", "training-models", "training-new"])
def test_annotators_and_outsiders_cannot_see_training_at_all(client, people, outsider, name):
    for user in (people["annotator"], outsider):
        response = _client(client, user).get(reverse(name))
        assert response.status_code == 404
        home = client.get(reverse("home"))
        assert b">Training<" not in home.content


def test_run_pages_answer_403_to_annotators_and_404_to_outsiders(client, people, outsider, queued_run):
    url = reverse("training-run", args=[queued_run.pk])
    assert _client(client, people["annotator"]).get(url).status_code == 403
    assert _client(client, outsider).get(url).status_code == 404
    assert client.post(reverse("training-cancel", args=[queued_run.pk])).status_code == 404


def test_researchers_read_runs_but_cannot_launch_or_cancel(client, people, queued_run):
    _client(client, people["researcher"])
    assert b">Training<" in client.get(reverse("home")).content
    listing = client.get(reverse("training"))
    assert listing.status_code == 200 and f"#{queued_run.pk}".encode() in listing.content
    page = client.get(reverse("training-run", args=[queued_run.pk]))
    assert page.status_code == 200 and b"<svg" in page.content and b"Cancel run" not in page.content
    assert client.get(reverse("training-new")).status_code == 403
    assert client.post(reverse("training-cancel", args=[queued_run.pk])).status_code == 403
    queued_run.refresh_from_db()
    assert queued_run.status == "queued"


def test_run_page_polls_its_status_fragment_while_active(client, people, queued_run):
    _client(client, people["admin"])
    page = client.get(reverse("training-run", args=[queued_run.pk]))
    html = page.content.decode()
    assert 'hx-trigger="every 2s"' in html and "Cancel run" in html and "Provenance" in html
    assert html.count("<polyline") == 2  # loss and accuracy
    fragment = client.get(reverse("training-run", args=[queued_run.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<section id="status"') and "Provenance" not in fragment
    TrainingRun.objects.filter(pk=queued_run.pk).update(status="succeeded", progress_step=30, progress_total=30)
    done = client.get(reverse("training-run", args=[queued_run.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "every 2s" not in done and 'aria-valuenow="100"' in done  # polling stops when the run is over


def test_cancel_button_works_with_and_without_htmx(client, people, queued_run, preference_snapshot, tiny_base):
    _client(client, people["admin"])
    response = client.post(reverse("training-cancel", args=[queued_run.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("training-run", args=[queued_run.pk])
    queued_run.refresh_from_db()
    assert queued_run.status == "cancelled"
    other = launching.launch_run(
        project=preference_snapshot.project,
        kind="reward",
        base_model="tiny-llama",
        snapshot=preference_snapshot,
        values=FAST,
        enqueue=False,
    )
    TrainingRun.objects.filter(pk=other.pk).update(status="running")
    fragment = client.post(reverse("training-cancel", args=[other.pk]), HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "stopping" in fragment.content.decode()
    other.refresh_from_db()
    assert other.cancel_requested and other.status == "running"


def test_admin_launches_from_the_form_and_bad_options_come_back_with_the_reason(
    client, people, preference_snapshot, tiny_base, django_capture_on_commit_callbacks
):
    _client(client, people["admin"])
    form = client.get(reverse("training-new"))
    assert form.status_code == 200 and str(tiny_base).encode() in form.content and b"opt_learning_rate" in form.content
    base = {"project": "prefs", "kind": "reward", "base_model": str(tiny_base), "snapshot": str(preference_snapshot.pk)}
    bad = client.post(reverse("training-new"), {**base, "opt_max_steps": "many"})
    assert bad.status_code == 400 and b"max_steps must be int, not &#x27;many&#x27;" in bad.content
    bad = client.post(reverse("training-new"), {**base, "extra": "lerning_rate=1"})
    assert bad.status_code == 400 and b"did you mean" in bad.content
    assert not TrainingRun.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("training-new"), {**base, "opt_learning_rate": "0.003", "opt_method": "lora", "extra": "lora_r=4"}
        )
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("training-run", args=[run.pk])
    assert run.config["method"] == "lora" and run.config["lora_r"] == 4 and run.config["learning_rate"] == 0.003
    assert run.launched_by == people["admin"] and run.task_id  # enqueued


def test_model_pages_show_the_card(client, people, registered_reward, make_member):
    _client(client, make_member(registered_reward.project, "researcher", Role.RESEARCHER))
    listing = client.get(reverse("training-models"))
    assert listing.status_code == 200 and b"scored-rm" in listing.content
    page = client.get(reverse("training-model", args=[registered_reward.pk]))
    assert page.status_code == 200 and b"scored-rm" in page.content and b"eval_accuracy" in page.content


# --- API ---------------------------------------------------------------------------------------------


def test_api_roles(api_client_for, people, outsider, queued_run):
    url = reverse("api-training-run", args=[queued_run.pk])
    assert api_client_for(people["annotator"]).get(url).status_code == 403
    assert api_client_for(outsider).get(url).status_code == 404
    assert api_client_for(people["annotator"]).get(reverse("api-training-runs")).json() == []
    body = api_client_for(people["researcher"]).get(url).json()
    assert (
        body["status"] == "queued"
        and [h["step"] for h in body["history"]] == [5, 10, 15]
        and body["config"]["max_steps"] == 30
    )
    assert (
        api_client_for(people["researcher"]).post(reverse("api-training-cancel", args=[queued_run.pk])).status_code
        == 403
    )
    launch = {"project": "prefs", "kind": "reward", "base_model": "tiny-llama"}
    assert (
        api_client_for(people["researcher"]).post(reverse("api-training-runs"), launch, format="json").status_code
        == 403
    )


def test_api_launch_validates_and_cancels(api_client_for, people, preference_snapshot, tiny_base, tmp_path):
    admin = api_client_for(people["admin"])
    url = reverse("api-training-runs")
    base = {"project": "prefs", "kind": "reward", "base_model": "tiny-llama", "snapshot": preference_snapshot.pk}
    for config, message in [
        ({"max_steps": "ten"}, "max_steps must be int, not str 'ten'"),
        ({"learning_rte": 1}, "Unknown option 'learning_rte'"),
        ({"method": "qlora", "precision": "fp64"}, "precision must be one of"),
    ]:
        response = admin.post(url, {**base, "config": config}, format="json")
        assert response.status_code == 400 and message in response.json()["detail"]
    response = admin.post(url, {**base, "base_model": str(tmp_path)}, format="json")
    assert response.status_code == 400 and "outside MODEL_ROOTS" in response.json()["detail"]
    assert not TrainingRun.objects.exists()
    created = admin.post(url, {**base, "config": {"max_steps": 5}}, format="json")
    assert (
        created.status_code == 201
        and created.json()["status"] == "queued"
        and created.json()["config"]["max_steps"] == 5
    )
    run_id = created.json()["id"]
    assert [r["id"] for r in admin.get(url, {"project": "prefs"}).json()] == [run_id]
    cancelled = admin.post(reverse("api-training-cancel", args=[run_id]))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_api_scores_pairs_with_a_registered_reward_model_and_combines_models(
    api_client_for, registered_reward, make_member, people
):
    researcher = make_member(registered_reward.project, "researcher", Role.RESEARCHER)
    annotator = make_member(registered_reward.project, "annotator", Role.ANNOTATOR)
    client = api_client_for(researcher)
    detail = client.get(reverse("api-model", args=[registered_reward.pk])).json()
    assert detail["name"] == "scored-rm" and detail["metrics"]["eval_accuracy"] >= 0.9
    pairs = [
        {"prompt": "Question 7: tell me about topic 7.", "response": "This answer is polite clear accurate."},
        {"prompt": "Question 7: tell me about topic 7.", "response": "This answer is rude false vague."},
    ]
    url = reverse("api-model-score", args=[registered_reward.pk])
    scores = client.post(url, {"pairs": pairs}, format="json").json()["scores"]
    assert len(scores) == 2 and scores[0] > scores[1]
    assert api_client_for(annotator).post(url, {"pairs": pairs}, format="json").status_code == 403
    bad = client.post(url, {"pairs": [{"prompt": {"role": "user"}, "response": "x"}]}, format="json")
    assert bad.status_code == 400 and "prompt must be a string" in bad.json()["detail"]
    combined = client.post(
        reverse("api-models-score"),
        {
            "pairs": pairs,
            "models": [{"id": registered_reward.pk, "weight": 0.7}, {"id": registered_reward.pk, "weight": 0.3}],
        },
        format="json",
    )
    assert combined.status_code == 200
    stats = json.loads((registered_reward.folder / "arbiter.json").read_text())["reward_stats"]
    assert combined.json()["scores"] == pytest.approx([(s - stats["mean"]) / stats["std"] for s in scores], rel=1e-4)
    assert client.get(reverse("api-models")).json()[0]["id"] == registered_reward.pk
