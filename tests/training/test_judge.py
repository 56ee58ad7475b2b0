"""The judge run kind (issue 15): `train judge --project SLUG --judge NAME`, on real tiny models.

- a reward-model judge (the session's trained reward model of conftest.py) votes on the preference project: its
  votes agree with the known better response, with a Bradley-Terry confidence;
- a local causal-LM judge with random weights (tiny-causal) talks noise: the run completes and every vote is
  recorded as unparseable, never guessed;
- a tiny causal LM trained here for a few seconds to always answer "Verdict: A / Strength: 2" shows parsing end
  to end and the position swap at work: it prefers whatever is shown first, so both orders disagree on the
  response and every vote is a low-confidence tie, position-inconsistent;
- resume: a run judges only what no earlier run or attempt judged; refusals at add_judge and at launch write
  nothing.

The OpenAI-compatible backend is tested against a real server in test_judge_openai.py.
"""

from __future__ import annotations

import io
import json
import random

import orjson
import pytest
import torch
from django.core.management import CommandError, call_command
from tokenizers import decoders

from annotate import judging
from annotate.actions import InvalidJudge, add_judge
from annotate.models import Item, Judge, JudgeVote, Judgment, Kind
from tests.training.conftest import GOOD, toy_pair
from training import datasets, kinds, launching, supervisor
from training.models import RunStatus, TrainingRun
from training.runners import judge as runner
from training.selectors import TrainingError

from .test_judge_openai import KEY, Scripted, chat_reply

pytestmark = pytest.mark.django_db

# A local judge that answers in few tokens: the tests check what is recorded, not how well a random model judges.
QUICK = {"max_tokens": 8, "max_prompt_tokens": 256, "batch_size": 8}


def _judge_run(project, name, *extra):
    out = io.StringIO()
    call_command("train", "judge", "--project", project.slug, "--judge", name, "--foreground", *extra, stdout=out)
    lines = out.getvalue().splitlines()
    return json.loads(lines[-1]), lines


def _good_index(item: Item) -> int:
    """The response with the good words (conftest's preference project: the preferred one)."""
    texts = list(item.responses.order_by("index").values_list("text", flat=True))
    return 0 if any(word in texts[0] for word in GOOD) else 1


def _places(project) -> dict:
    return {i.pk: (i.open_slots, i.n_judgments) for i in Item.objects.filter(project=project)}


# --- the reward-model backend -----------------------------------------------------------------------------------


def test_a_reward_model_judge_votes_like_its_scores(preference_project, registered_reward):
    project = preference_project
    judge = add_judge(project, "rm", "reward-model", f"artifact:{registered_reward.pk}", options={"batch_size": 16})
    places = _places(project)
    result, lines = _judge_run(project, "rm")
    assert result["status"] == "succeeded", lines[-5:]
    run = TrainingRun.objects.get(pk=result["run"])
    assert run.kind == "judge" and list(run.reward_artifacts.all()) == [registered_reward]
    assert run.inputs["judge"] == "rm" and run.inputs["items"] == 50 and run.inputs["template_hash"] == ""
    votes = list(JudgeVote.objects.filter(judge=judge).select_related("judgment", "item"))
    assert len(votes) == 50 and {v.status for v in votes} == {"ok"} and {v.run_id for v in votes} == {run.pk}
    right = 0
    for vote in votes:
        scores = vote.raw[0]["scores"][0]
        assert vote.judgment.source == Judgment.Source.AI and vote.judgment.annotator_id == judge.user_id
        assert vote.position_consistent is None  # a reward model scores each response alone: no position to swap
        assert vote.confidence == pytest.approx(judging.sigmoid(abs(scores[0] - scores[1])))
        assert vote.judgment.strength == judging.strength_of(vote.confidence)
        winner = vote.item.responses.get(pk=vote.judgment.winner_id).index
        assert winner == (0 if scores[0] > scores[1] else 1)
        right += winner == _good_index(vote.item)
    assert right >= 45  # the reward model separates good words from bad ones
    assert run.metrics["recorded_votes"] == 50 and run.metrics["ok"] == 50
    assert _places(project) == places  # judges take no person's place


def test_a_second_run_has_nothing_left_to_judge(preference_project, registered_reward):
    add_judge(preference_project, "rm", "reward-model", f"artifact:{registered_reward.pk}")
    first, _ = _judge_run(preference_project, "rm", "--max-items", "20")
    second, _ = _judge_run(preference_project, "rm")
    assert TrainingRun.objects.get(pk=first["run"]).inputs["items"] == 20
    assert TrainingRun.objects.get(pk=second["run"]).inputs["items"] == 30
    assert JudgeVote.objects.count() == 50 and Judgment.objects.filter(source="ai").count() == 50
    with pytest.raises(CommandError, match="voted on every item of prefs: nothing left to judge"):
        _judge_run(preference_project, "rm")
    assert TrainingRun.objects.count() == 2


# --- the local causal-LM backend --------------------------------------------------------------------------------


def test_a_random_local_judge_completes_and_records_its_noise_as_unparseable(preference_project):
    judge = add_judge(preference_project, "noise", "local", "tiny-causal", options=QUICK)
    result, lines = _judge_run(preference_project, "noise", "--max-items", "6")
    assert result["status"] == "succeeded", lines[-5:]
    assert result["metrics"]["judged"] == 6 and result["metrics"]["unparseable"] == 6
    assert any(line.startswith("[step ") and "unparseable" in line for line in lines)  # progress: judged, failures
    votes = JudgeVote.objects.filter(judge=judge)
    assert votes.count() == 6 and not Judgment.objects.filter(source="ai").exists()
    for vote in votes:
        assert vote.status == "unparseable" and vote.judgment is None and len(vote.raw) == 2  # both orders kept
        assert vote.template_hash == judging.template_hash(judging.default_template("pairwise"))
        assert vote.tokens["completion"] >= 2 and vote.tokens["prompt"] > 0


VERDICT = "Verdict: A\nStrength: 2"
SHORT = "Q: {prompt}\nA: {response_a}\nB: {response_b}\n"


@pytest.fixture(scope="module")
def verdict_model(models_root):
    """A tiny causal Llama trained here (a few seconds) to answer every judge prompt with VERDICT: a judge with
    a pure position bias. Saved under MODEL_ROOTS as tiny-verdict."""
    from tests.tiny import tiny_causal_lm, tiny_tokenizer

    rng = random.Random(0)
    pairs = [toy_pair(1000 + i, rng) for i in range(64)]  # shaped like the preference project's items
    tokenizer = tiny_tokenizer(
        [text for pair in pairs for text in pair] + [VERDICT, SHORT, "Verdict: B tie Strength: 0 1 3"] * 3
    )
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()  # texts decode as written, not as byte pieces
    torch.manual_seed(0)
    model = tiny_causal_lm(tokenizer)
    spec = judging.AnswerSpec(kind="pairwise", n_responses=2)
    examples = []
    target = tokenizer(VERDICT)["input_ids"] + [tokenizer.eos_token_id]
    for prompt, good, bad in pairs:
        for conversation in judging.conversations(
            SHORT, spec, prompt=[{"role": "user", "content": prompt}], responses=[good, bad]
        ):
            ids = tokenizer.apply_chat_template(
                conversation["messages"], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            examples.append((list(ids), target))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(300):
        batch = [examples[(step * 8 + j) % len(examples)] for j in range(8)]
        width = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (p, t) in enumerate(batch):
            ids[row, : len(p) + len(t)] = torch.tensor(p + t)
            labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
            mask[row, : len(p) + len(t)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01
    folder = models_root / "tiny-verdict"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_local_judge_rigged_to_say_a_is_parsed_and_caught_by_the_position_swap(preference_project, verdict_model):
    judge = add_judge(
        preference_project,
        "first",
        "local",
        "tiny-verdict",
        template=SHORT,
        options={"max_tokens": 12, "batch_size": 4},
    )
    places = _places(preference_project)
    result, lines = _judge_run(preference_project, "first", "--max-items", "5")
    assert result["status"] == "succeeded", lines[-5:]
    votes = list(JudgeVote.objects.filter(judge=judge).select_related("judgment"))
    assert len(votes) == 5
    for vote in votes:
        assert vote.raw == [VERDICT, VERDICT]  # greedy: the same answer in both orders
        assert vote.parsed["orders"] == [{"verdict": "A", "strength": 2}] * 2
        # "A" is response 0 in the A-B order and response 1 in the B-A order: a position bias, not a preference.
        assert vote.status == "ok" and vote.position_consistent is False and vote.confidence == 0.5
        assert vote.judgment.outcome == "tie" and vote.judgment.source == "ai"
        assert vote.template_hash == judging.template_hash(SHORT)
    assert result["metrics"]["position_consistency"] == 0.0
    assert _places(preference_project) == places


def test_batched_and_one_by_one_generation_give_the_same_votes(preference_project, verdict_model):
    for name, batch in (("batched", 8), ("single", 1)):
        add_judge(
            preference_project,
            name,
            "local",
            "tiny-verdict",
            template=SHORT,
            options={"max_tokens": 12, "batch_size": batch},
        )
        assert _judge_run(preference_project, name, "--max-items", "4")[0]["status"] == "succeeded"
    batched = list(JudgeVote.objects.filter(judge__name="batched").order_by("item").values_list("item", "raw"))
    single = list(JudgeVote.objects.filter(judge__name="single").order_by("item").values_list("item", "raw"))
    assert batched == single


# --- the OpenAI-compatible backend -------------------------------------------------------------------------------


@pytest.fixture
def endpoint():
    """A real HTTP server (test_judge_openai.Scripted) that judges like a person would: the response with the good
    words wins, in whichever position it is shown; the item about topic 3 gets a 400."""
    server = Scripted()

    def respond(n, body):
        text = body["messages"][0]["content"]
        if "Question 3:" in text:
            return 400, {}, {"error": {"message": "this request was refused"}}, 0.0
        first = text.split("[Response A]")[1].split("[Response B]")[0]
        verdict = "A" if any(word in first for word in GOOD) else "B"
        return 200, {}, chat_reply(f"The {verdict} answer is right.\nVerdict: {verdict}\nStrength: 2", 50, 6), 0.0

    server.respond = respond
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_an_endpoint_judge_votes_through_a_real_http_server(preference_project, endpoint, settings, monkeypatch):
    settings.ARBITER_JUDGE_HOSTS = ["127.0.0.1"]
    monkeypatch.setenv("ARBITER_TEST_JUDGE_KEY", KEY)
    judge = add_judge(
        preference_project,
        "api",
        "openai",
        "judge-model",
        base_url=endpoint.url,
        api_key_env="ARBITER_TEST_JUDGE_KEY",
        options={"concurrency": 3, "retries": 0},
    )
    result, lines = _judge_run(preference_project, "api", "--max-items", "6")
    assert result["status"] == "succeeded", lines[-5:]
    assert len(endpoint.requests) == 12  # six items, both orders each
    assert {r["headers"]["authorization"] for r in endpoint.requests} == {f"Bearer {KEY}"}
    assert {r["body"]["model"] for r in endpoint.requests} == {"judge-model"}
    assert {r["body"]["temperature"] for r in endpoint.requests} == {0.0}
    votes = list(JudgeVote.objects.filter(judge=judge).select_related("item", "judgment"))
    assert sorted(v.status for v in votes) == ["error"] + ["ok"] * 5
    for vote in votes:
        if vote.status == "error":
            assert vote.item.external_id == "q3" and "400" in vote.error and vote.judgment is None
            continue
        assert vote.position_consistent is True and vote.confidence == 1.0
        assert vote.judgment.winner.index == _good_index(vote.item) and vote.judgment.strength == 2
        assert vote.tokens == {"prompt": 100, "completion": 12}
        assert vote.model == f"judge-model @ {endpoint.url}"
    run = TrainingRun.objects.get(pk=result["run"])
    shown = json.dumps(run.config) + json.dumps(run.inputs) + run.log_tail + "\n".join(lines)
    shown += json.dumps(list(JudgeVote.objects.values_list("raw", "error", "tokens", "model")))
    assert KEY not in shown and "ARBITER_TEST_JUDGE_KEY" in json.dumps(run.config)


# --- resume -----------------------------------------------------------------------------------------------------


def test_a_resumed_attempt_keeps_what_an_earlier_attempt_judged(preference_project, verdict_model):
    judge = add_judge(preference_project, "first", "local", "tiny-verdict", template=SHORT, options={"max_tokens": 12})
    run = launching.launch_judge_run(judge, max_items=3, enqueue=False)
    items = [json.loads(line) for line in datasets.judge_items_path(run).read_text().splitlines()]
    earlier = {
        "item": items[0]["item"],
        "status": "ok",
        "answer": {"winner": 1, "strength": 3},
        "raw": ["written by attempt 1", "written by attempt 1"],
        "parsed": [],
        "position_consistent": True,
        "confidence": 1.0,
        "tokens": {},
        "error": "",
        "model": "earlier",
        "template_hash": "x" * 64,
    }
    # Attempt 1 wrote one vote and was killed in the middle of the next line.
    datasets.judge_votes_path(run).write_bytes(
        orjson.dumps(earlier) + b"\n" + b'{"item": ' + str(items[1]["item"]).encode()
    )
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    votes = {v.item_id: v for v in JudgeVote.objects.filter(judge=judge)}
    assert sorted(votes) == sorted(row["item"] for row in items)
    assert votes[items[0]["item"]].raw == ["written by attempt 1"] * 2  # not judged again
    assert votes[items[1]["item"]].raw == [VERDICT, VERDICT]  # the cut-off line was judged anew
    assert "resumed at step 1 of 3" in run.log_tail
    lines = datasets.judge_votes_path(run).read_bytes().splitlines()
    assert len(lines) == 3 and all(orjson.loads(line) for line in lines)


def test_a_cancelled_run_retried_goes_on_where_it_stopped(preference_project, verdict_model, monkeypatch):
    judge = add_judge(
        preference_project,
        "first",
        "local",
        "tiny-verdict",
        template=SHORT,
        options={"max_tokens": 12, "batch_size": 2},
    )
    run = launching.launch_judge_run(judge, max_items=4, enqueue=False)
    real = runner._report

    def cancel_after_first_batch(callback, event):
        # What the worker does when an admin cancels: its progress callback answers "stop" (True).
        real(lambda e: callback(e) or e.get("event") == "metrics", event)

    monkeypatch.setattr(runner, "_report", cancel_after_first_batch)
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == RunStatus.CANCELLED and not JudgeVote.objects.exists(), run.error  # nothing published
    judged_before = len(datasets.judge_votes_path(run).read_bytes().splitlines())
    assert 1 <= judged_before < 4
    monkeypatch.setattr(runner, "_report", real)
    run = launching.retry_run(run)
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert JudgeVote.objects.filter(judge=judge).count() == 4
    assert f"resumed at step {judged_before} of 4" in run.log_tail


# --- refusals ---------------------------------------------------------------------------------------------------


def test_add_judge_checks_models_and_writes_nothing_on_refusal(preference_project, registered_reward, make_project):
    project = preference_project
    cases = [
        (("local", "tiny-llama"), "not a causal language model"),
        (("local", "/etc"), "outside MODEL_ROOTS"),
        (("local", f"artifact:{registered_reward.pk}"), "a local judge is a causal LM"),
        (("reward-model", "tiny-causal"), "is not a reward model"),
        (("reward-model", "artifact:999"), "No registered model artifact 999"),
        (("reward-model", f"artifact:{registered_reward.pk}:0.5,"), "without empty ones"),
    ]
    for (backend, model), why in cases:
        with pytest.raises(InvalidJudge, match=why):
            add_judge(project, "j", backend, model)
    rating = make_project(slug="rated", kind=Kind.RATING, n_items=0)
    with pytest.raises(InvalidJudge, match="regression reward models"):
        add_judge(rating, "j", "reward-model", f"artifact:{registered_reward.pk}")
    steps = make_project(slug="stepped", kind=Kind.STEPS, n_items=0)
    with pytest.raises(InvalidJudge, match="cannot label steps"):
        add_judge(steps, "j", "reward-model", f"artifact:{registered_reward.pk}")
    with pytest.raises(InvalidJudge, match="reads no prompt template"):
        add_judge(project, "j", "reward-model", f"artifact:{registered_reward.pk}", template=SHORT)
    with pytest.raises(InvalidJudge, match="not an option of local judges"):
        add_judge(project, "j", "local", "tiny-causal", options={"concurrency": 2})
    assert not Judge.objects.exists()


def test_the_add_judge_command(preference_project, tmp_path):
    template = tmp_path / "t.txt"
    template.write_text(SHORT + "{format}", encoding="utf-8")
    out = io.StringIO()
    call_command(
        "add_judge", "prefs", "quick", "--backend", "local", "--model", "tiny-causal", "--template", str(template),
        "--set", "batch_size=2", "--set", "max_tokens=16", stdout=out,
    )  # fmt: skip
    judge = Judge.objects.get(name="quick")
    assert judge.template == SHORT + "{format}" and judge.options == {"batch_size": 2, "max_tokens": 16}
    assert "train judge --project prefs --judge quick" in out.getvalue()
    with pytest.raises(CommandError, match="unknown placeholder {answer}"):
        template.write_text(SHORT + "{answer}", encoding="utf-8")
        call_command(
            "add_judge", "prefs", "other", "--backend", "local", "--model", "tiny-causal", "--template", str(template)
        )
    with pytest.raises(CommandError, match="Unknown judge option 'speed'"):
        call_command("add_judge", "prefs", "other", "--backend", "local", "--model", "tiny-causal", "--set", "speed=2")
    shown = io.StringIO()
    call_command("add_judge", "prefs", "x", "--backend", "local", "--model", "m", "--show-template", stdout=shown)
    assert shown.getvalue().strip() == judging.default_template("pairwise").strip()
    assert list(Judge.objects.values_list("name", flat=True)) == ["quick"]


def test_bad_launches_are_refused_with_the_reason_and_write_nothing(preference_project, settings, monkeypatch):
    project = preference_project
    settings.ARBITER_JUDGE_HOSTS = ["judge.internal"]
    monkeypatch.delenv("ARBITER_TEST_JUDGE_KEY", raising=False)
    keyed = add_judge(
        project, "keyed", "openai", "m", base_url="http://judge.internal/v1", api_key_env="ARBITER_TEST_JUDGE_KEY"
    )
    with pytest.raises(TrainingError, match="ARBITER_TEST_JUDGE_KEY, which holds judge keyed's API key, is not set"):
        launching.launch_judge_run(keyed, enqueue=False)
    monkeypatch.setenv("ARBITER_TEST_JUDGE_KEY", "sk-test-never-shown-0123456789")
    settings.ARBITER_JUDGE_HOSTS = []
    with pytest.raises(TrainingError, match="not allowed for judges"):
        launching.launch_judge_run(keyed, enqueue=False)
    settings.ARBITER_JUDGE_HOSTS = ["judge.internal"]
    with pytest.raises(TrainingError, match=r"backend, model come from the judge"):
        launching.launch_judge_run(keyed, values={"model": "other", "backend": "local"}, enqueue=False)
    with pytest.raises(TrainingError, match="max_items must be a whole number of at least 1"):
        launching.launch_judge_run(keyed, max_items=0, enqueue=False)
    with pytest.raises(TrainingError, match="launched from its judge"):
        launching.launch_run(project=project, kind="judge", base_model="tiny-causal", enqueue=False)
    project.constitution = [{"name": "harmless", "text": "Do no harm."}]
    project.save(update_fields=["constitution"])
    cited = add_judge(project, "cited", "local", "tiny-causal", principle="harmless")
    project.constitution = []
    project.save(update_fields=["constitution"])
    with pytest.raises(TrainingError, match="no principle 'harmless'"):
        launching.launch_judge_run(cited, enqueue=False)
    for args, why in [
        (["--judge", "missing"], "has no judge 'missing' \\(its judges: cited, keyed\\)"),
        (["--judge", "cited", "--base-model", "tiny-causal"], "--base-model: a judge run takes its model"),
        ([], "--judge is required"),
        (["--judge", "cited", "--max-items", "0"], "--max-items must be at least 1"),
    ]:
        with pytest.raises(CommandError, match=why):
            call_command("train", "judge", "--project", project.slug, *args, stdout=io.StringIO())
    with pytest.raises(CommandError, match="--judge and --max-items are for judge runs"):
        call_command("train", "reward", "--project", project.slug, "--base-model", "tiny-llama", "--judge", "cited")
    assert not TrainingRun.objects.exists()


def test_a_run_config_names_the_keys_variable_never_the_key(preference_project, settings, monkeypatch):
    settings.ARBITER_JUDGE_HOSTS = ["judge.internal"]
    monkeypatch.setenv("ARBITER_TEST_JUDGE_KEY", "sk-test-never-shown-0123456789")
    judge = add_judge(
        preference_project,
        "keyed",
        "openai",
        "m",
        base_url="http://judge.internal/v1",
        api_key_env="ARBITER_TEST_JUDGE_KEY",
    )
    run = launching.launch_judge_run(judge, max_items=2, enqueue=False)
    assert run.config["api_key_env"] == "ARBITER_TEST_JUDGE_KEY" and run.config["allowed_hosts"] == ["judge.internal"]
    stored = json.dumps(run.config) + json.dumps(run.inputs) + datasets.judge_items_path(run).read_text()
    assert "sk-test-never-shown" not in stored
    with pytest.raises(TrainingError, match=f"Run {run.pk} of judge keyed is queued"):
        launching.launch_judge_run(judge, enqueue=False)


def test_the_registry_keeps_judge_runs_off_the_launch_form():
    assert kinds.get("judge").reads == kinds.ITEMS and kinds.get("judge").publishes == kinds.VOTES
    assert "judge" in kinds.available() and "judge" not in kinds.launchable()


def test_judge_items_from_the_page_and_the_api_and_the_run_page(
    client, api_client_for, preference_project, registered_reward, make_member
):
    admin = make_member(preference_project, "ada", "admin")
    add_judge(preference_project, "rm", "reward-model", f"artifact:{registered_reward.pk}")
    client.force_login(admin)
    # The reward model is another project's: a launcher uses only the models of projects they research.
    refused = client.post("/p/prefs/judges/rm/run/", {"max_items": "3"}, follow=True)
    assert f"No registered model artifact {registered_reward.pk}." in refused.content.decode()
    assert not TrainingRun.objects.exists()
    admin = make_member(registered_reward.project, "ada", "researcher")
    client.force_login(admin)  # make_member set the password again, which ends the session
    response = client.post("/p/prefs/judges/rm/run/", {"max_items": "3"})
    run = TrainingRun.objects.get(kind="judge")
    assert response.status_code == 302 and response["Location"] == f"/training/runs/{run.pk}/"
    assert run.launched_by == admin and run.inputs["items"] == 3 and run.status == RunStatus.QUEUED
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    page = client.get(f"/training/runs/{run.pk}/")
    assert page.status_code == 200 and "AI judge votes" in page.content.decode()
    judges = client.get("/p/prefs/judges/").content.decode()
    assert f'href="/training/runs/{run.pk}/"' in judges
    api = api_client_for(admin)
    refused = api.post("/api/projects/prefs/judges/rm/runs/", {"config": {"model": "x"}}, format="json")
    assert refused.status_code == 400 and "come from the judge" in refused.json()["detail"]
    launched = api.post(
        "/api/projects/prefs/judges/rm/runs/", {"max_items": 2, "config": {"batch_size": 4}}, format="json"
    )
    assert launched.status_code == 201, launched.content
    second = TrainingRun.objects.get(pk=launched.json()["id"])
    assert second.config["batch_size"] == 4 and second.inputs["items"] == 2
    assert [row["item"] for row in datasets.judge_items(Judge.objects.get(name="rm"))][:2] == [
        row["item"] for row in (json.loads(line) for line in datasets.judge_items_path(second).read_text().splitlines())
    ]
