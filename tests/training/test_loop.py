"""Closing the loop on the Django side: launching every kind (and refusing bad input with nothing written), the
files each kind reads, generate's candidates becoming a new round, the rounds chain, the next-round action, and the
human-evaluation round with its confidence interval."""

import io
import shutil
from pathlib import Path

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotate import actions as annotate_actions
from annotate.imports import parse_votes
from annotate.models import Item, Kind, Response, Round
from tests.conftest import jsonl
from training import datasets, kinds, launching, lifecycle, rounds, selectors, supervisor
from training.models import ModelArtifact, RunRound, RunStatus, TrainingRun

pytestmark = pytest.mark.django_db


def _train(*args):
    out = io.StringIO()
    call_command("train", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().splitlines()


@pytest.fixture
def reward_artifact(trained_reward, preference_snapshot, settings):
    """The session's trained reward model registered in ``prefs`` as the artifact of a succeeded reward run on
    ``preference_snapshot`` (the first link of the chain)."""
    project = preference_snapshot.project
    run = TrainingRun.objects.create(
        project=project,
        kind="reward",
        status=RunStatus.SUCCEEDED,
        config={},
        snapshot=preference_snapshot,
        snapshot_hash=preference_snapshot.content_hash,
        base_model="tiny-llama",
    )
    relative = Path("models") / project.slug / "run-rm"
    shutil.copytree(trained_reward, Path(settings.ARTIFACT_ROOT) / relative)
    return ModelArtifact.objects.create(
        project=project,
        run=run,
        name="prefs-rm",
        kind="reward",
        path=str(relative),
        base_model="tiny-llama",
        snapshot=preference_snapshot,
        snapshot_hash=preference_snapshot.content_hash,
    )


@pytest.fixture
def policy_artifact(reward_artifact, models_root, settings):
    """A succeeded dpo run scored by ``reward_artifact`` whose policy is registered (the tiny causal LM's weights)."""
    project = reward_artifact.project
    run = TrainingRun.objects.create(
        project=project,
        kind="dpo",
        status=RunStatus.SUCCEEDED,
        config={},
        base_model=str(models_root / "tiny-causal"),
        snapshot=reward_artifact.snapshot,
        snapshot_hash=reward_artifact.snapshot_hash,
    )
    run.reward_artifacts.set([reward_artifact])
    relative = Path("models") / project.slug / "run-policy"
    shutil.copytree(models_root / "tiny-causal", Path(settings.ARTIFACT_ROOT) / relative)
    return ModelArtifact.objects.create(
        project=project,
        run=run,
        name="prefs-policy-1",
        kind="policy",
        path=str(relative),
        base_model=str(models_root / "tiny-causal"),
        snapshot=run.snapshot,
        snapshot_hash=run.snapshot_hash,
    )


def _nothing_written(settings):
    runs = Path(settings.ARTIFACT_ROOT) / "runs"
    return not TrainingRun.objects.exclude(status=RunStatus.SUCCEEDED).exists() and (
        not runs.exists() or not any(runs.iterdir())
    )


# --- launching: bad input is refused with its reason, and nothing is written ------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["generate", "--target-project", "rated"],
            "Candidates go into a pairwise or ranking project; rated is a rating project",
        ),
        (
            ["generate", "--set", "num_samples=3"],
            "its items hold exactly 2 responses, so set num_samples to that, not 3",
        ),
        (["generate", "--target-project", "ranked", "--set", "num_samples=12"], "3 to 9 responses"),
        (["generate", "--prompts-from", "file"], "needs a prompts file"),
        (["generate", "--prompts-file", "BADFILE"], "line 2: prompt is empty; line 3: not JSON"),
        (["generate", "--prompts-from", "snapshot-test", "--snapshot", "999"], "No snapshot 999 in project prefs"),
        (["generate", "--prompts-from", "low-confidence"], "needs a reward model to measure confidence"),
        (["generate", "--baseline", "tiny-causal"], "--baseline is for evaluate runs"),
        (["generate", "--parent", "999"], "No run 999 to continue from"),
        (["generate", "--max-prompts", "0"], "--max-prompts must be at least 1"),
        (["rejection_sampling"], "scores samples with a reward model: give one or more"),
        (["rejection_sampling", "--reward-model", "artifact:999"], "No registered model artifact 999"),
        (["rejection_sampling", "--reward-model", "tiny-causal"], "is not a reward model"),
        (
            ["rejection_sampling", "--reward-model", "RM:0.5", "--reward-model", "tiny-llama"],
            "Give a weight to every reward model",
        ),
        (["evaluate", "--reward-model", "RM"], "give --baseline PATH_OR_ARTIFACT"),
        (["dpo", "--prompts-from", "items"], "learns from a snapshot's votes, not from prompts"),
        (["dpo", "--target-project", "ranked"], "--target-project is for generate, critique_revise runs"),
        (["sft", "--reward-model", "RM"], "a sft run uses none"),
    ],
)
def test_launch_refuses_bad_input_and_writes_nothing(args, message, trained_reward, make_project, tmp_path, settings):
    project = make_project(slug="prefs", n_items=4)  # items, no votes: enough for every refusal below
    relative = Path("models") / "prefs" / "rm"
    shutil.copytree(trained_reward, Path(settings.ARTIFACT_ROOT) / relative)
    reward_artifact = ModelArtifact.objects.create(
        project=project, name="rm", kind="reward", path=str(relative), base_model="tiny-llama"
    )
    make_project(slug="rated", kind=Kind.RATING, n_items=0)
    make_project(slug="ranked", kind=Kind.RANKING, n_items=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "  "}\nnot json\n')
    args = [
        {
            "BADFILE": str(bad),
            "RM": f"artifact:{reward_artifact.pk}",
            "RM:0.5": f"artifact:{reward_artifact.pk}:0.5",
        }.get(a, a)
        for a in args
    ]
    with pytest.raises(CommandError) as error:
        _train(args[0], "--project", "prefs", "--base-model", "tiny-causal", *args[1:])
    assert message in str(error.value)
    assert _nothing_written(settings)


def test_disagreement_refused_when_everyone_agrees(preference_project, settings):
    # Both annotators of the fixture always pick the good response.
    with pytest.raises(selectors.TrainingError, match="No item of prefs has annotators who disagree"):
        launching.launch_run(
            project=preference_project,
            kind="generate",
            base_model="tiny-causal",
            enqueue=False,
            prompts=launching.Prompts(source="disagreement"),
        )
    assert _nothing_written(settings)


# --- the files each kind reads ----------------------------------------------------------------------------------


def test_generate_writes_the_prompts_of_the_items_at_launch(preference_project):
    run = launching.launch_run(
        project=preference_project,
        kind="generate",
        base_model="tiny-causal",
        enqueue=False,
        values={"max_new_tokens": 4},
    )
    rows = [orjson.loads(line) for line in run.prompts_path.read_bytes().splitlines()]
    items = list(Item.objects.filter(project=preference_project).order_by("id"))
    assert len(rows) == len(items) == 50
    assert rows[0] == {"prompt": items[0].prompt, "item": items[0].pk, "external_id": "q0"}
    assert run.inputs["prompts_from"] == "items" and run.inputs["prompts"] == 50 and run.snapshot is None
    assert run.target_project == preference_project and run.config["model_label"] == "tiny-causal"
    paths, digest = datasets.run_datasets(run)
    assert paths == {"train": str(run.prompts_path)} and digest == run.inputs["prompts_hash"] == datasets.prompts_hash(
        rows
    )


def test_disagreement_keeps_only_the_items_annotators_split_on(make_project):
    project = make_project(slug="split", n_items=6)
    votes = [
        {"item": f"item-{i}", "annotator": name, "winner": winner}
        for i, pattern in enumerate([(0, 0), (0, 1), (1, 1), (None, 0), (1, None), (0,)])
        for name, winner in zip(("a", "b"), pattern)
    ]
    annotate_actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    rows = datasets.select_prompts(project, "disagreement")
    assert [row["external_id"] for row in rows] == ["item-1", "item-3", "item-4"]


def test_low_confidence_keeps_the_items_the_reward_model_separates_least(reward_artifact, preference_project):
    from training.scoring import RewardScorer

    scorer = RewardScorer.load(reward_artifact.folder)
    rows = datasets.select_prompts(preference_project, "low-confidence", scorer=scorer)
    assert len(rows) == 25  # the lower half by default
    items = Item.objects.filter(project=preference_project).order_by("id")
    prompts = [item.prompt[0]["content"] for item in items for _ in range(2)]
    scores = scorer.score(prompts, [r.text for item in items for r in item.responses.order_by("index")])
    gaps = {item.pk: abs(scores[2 * i] - scores[2 * i + 1]) for i, item in enumerate(items)}
    chosen = {row["item"] for row in rows}
    assert max(gaps[i] for i in chosen) <= min(gaps[i] for i in gaps if i not in chosen) + 1e-4
    assert [row["confidence_gap"] for row in rows] == pytest.approx([gaps[row["item"]] for row in rows], abs=1e-4)
    assert len(datasets.select_prompts(preference_project, "low-confidence", scorer=scorer, max_prompts=3)) == 3


def test_snapshot_test_prompts_and_the_model_kinds_snapshots(preference_snapshot, reward_artifact):
    project = preference_snapshot.project
    run = launching.launch_run(
        project=project,
        kind="evaluate",
        base_model="tiny-causal",
        snapshot=preference_snapshot,
        reward_models=[f"artifact:{reward_artifact.pk}"],
        baseline="tiny-causal",
        enqueue=False,
    )
    rows = [orjson.loads(line) for line in run.prompts_path.read_bytes().splitlines()]
    test_ids = {
        row["id"] for row in map(orjson.loads, (preference_snapshot.folder / "test.jsonl").read_bytes().splitlines())
    }
    assert (
        run.inputs["prompts_from"] == "snapshot-test"
        and {r["external_id"] for r in rows} == test_ids
        and len(rows) == 10
    )
    assert all(Item.objects.get(pk=r["item"]).external_id == r["external_id"] for r in rows)
    assert run.config["baseline_model"].endswith("tiny-causal") and list(run.reward_artifacts.all()) == [
        reward_artifact
    ]
    assert run.config["reward_models"] == [str(reward_artifact.folder.resolve())]
    dpo = launching.launch_run(
        project=project, kind="dpo", base_model="tiny-causal", snapshot=preference_snapshot, enqueue=False
    )
    assert datasets.run_datasets(dpo)[0]["train"].endswith("train.jsonl") and dpo.snapshot.options["format"] == "trl"
    sft = launching.launch_run(project=project, kind="sft", base_model="tiny-causal", enqueue=False)
    assert sft.config["source"] == "chosen" and sft.snapshot.options["format"] == "trl"
    with pytest.raises(selectors.TrainingError, match="goes with source=chosen"):
        launching.launch_run(
            project=project,
            kind="sft",
            base_model="tiny-causal",
            snapshot=preference_snapshot,
            values={"source": "demonstrations"},
            enqueue=False,
        )


def test_prompts_given_through_the_api_are_validated_by_position(
    preference_project, make_member, api_client_for, settings
):
    client = api_client_for(make_member(preference_project, "boss", "admin"))
    body = {
        "project": "prefs",
        "kind": "generate",
        "base_model": "tiny-causal",
        "prompts": [{"prompt": "Hi"}, {"text": "no prompt"}],
    }
    response = client.post("/api/training-runs/", body, format="json")
    assert response.status_code == 400 and "line 2" in response.json()["detail"]
    assert _nothing_written(settings)
    body["prompts"] = [{"prompt": "Hi"}, {"prompt": [{"role": "user", "content": "Hello?"}]}]
    response = client.post("/api/training-runs/", {**body, "config": {"max_new_tokens": 4}}, format="json")
    assert (
        response.status_code == 201
        and response.json()["inputs"]["prompts"] == 2
        and response.json()["target_project"] == "prefs"
    )


def test_every_available_policy_kind_launches_with_its_data(reward_artifact, preference_snapshot):
    """Each kind validates, resolves its reward models and writes what its runner reads (nothing runs here)."""
    project = preference_snapshot.project
    rm = [f"artifact:{reward_artifact.pk}"]
    launched = {}
    policy_kinds = ("generate", "rejection_sampling", "ppo", "grpo", "rloo", "evaluate", "sft", "dpo")
    for kind in policy_kinds:
        extra = {"baseline": "tiny-causal"} if kind == "evaluate" else {}
        run = launching.launch_run(
            project=project,
            kind=kind,
            base_model="tiny-causal",
            enqueue=False,
            reward_models=rm if kinds.get(kind).reward_models == kinds.REWARD_MODEL_NEEDED else (),
            **extra,
        )
        paths, digest = datasets.run_datasets(run)
        assert Path(paths["train"]).is_file() and len(digest) == 64
        if kinds.get(kind).reward_models == kinds.REWARD_MODEL_NEEDED:
            assert list(run.reward_artifacts.all()) == [reward_artifact] and run.config["reward_models"] == [
                str(reward_artifact.folder.resolve())
            ]
        launched[kind] = run
    assert set(launched) == set(policy_kinds)
    assert (
        launched["generate"].inputs["prompts"] == 50 and launched["evaluate"].inputs["prompts_from"] == "snapshot-test"
    )
    assert launched["dpo"].snapshot.options["format"] == "trl" and launched["sft"].snapshot.options["format"] == "trl"
    if "dpo" in launched:
        ref = (
            launching.launch_run(
                project=project,
                kind="dpo",
                base_model="tiny-causal",
                values={"reference": "model", "ref_model": "tiny-causal"},
                snapshot=preference_snapshot,
                enqueue=False,
            )
            if "reference" in launched["dpo"].config
            else None
        )
        if ref is not None:
            assert ref.config["ref_model"].startswith("/") and ref.inputs["ref_model"]["artifact"] is None


# --- generate: the candidates become a new round ----------------------------------------------------------------


def test_next_round_generates_candidates_into_a_new_round_with_lineage(
    policy_artifact, reward_artifact, client, make_member
):
    project = policy_artifact.project
    policy_run = policy_artifact.run
    admin = make_member(project, "boss", "admin")
    before = Item.objects.filter(project=project).count()
    client.force_login(admin)
    response = client.post(
        reverse("training-next-round", args=[policy_run.pk]),
        {"max_prompts": 6, "extra": "max_new_tokens=6\ntemperature=1.0"},
    )
    run = TrainingRun.objects.get(kind="generate")
    assert response.status_code == 302 and response.url == reverse("training-run", args=[run.pk])
    assert run.kind == "generate" and run.parent == policy_run and run.base_artifact == policy_artifact
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == "succeeded", run.error
    round_ = selectors.generated_round(run)
    assert round_.number == 2 and RunRound.objects.get(round=round_).run == run
    assert round_.source["run"] == run.pk and round_.source["model"]["artifact"] == policy_artifact.pk
    assert round_.source["model"]["path"] == str(policy_artifact.folder.resolve())
    assert round_.source["snapshot"] == {"id": policy_artifact.snapshot_id, "hash": policy_artifact.snapshot_hash}
    items = list(round_.items.all())
    assert 1 <= len(items) <= 6 and Item.objects.filter(project=project).count() == before + len(items)
    assert run.metrics["candidate_items"] == len(items) and run.metrics["round"] == 2
    responses = Response.objects.filter(item__round=round_)
    assert responses.count() == 2 * len(items)
    assert set(responses.values_list("model_name", flat=True)) == {"prefs-policy-1"}
    assert all(r.metadata["run"] == run.pk and r.metadata["artifact"] == policy_artifact.pk for r in responses)
    assert all(item.open_slots == project.overlap for item in items)  # ready for annotators
    assert (run.work_dir / "candidates.jsonl").is_file() and not ModelArtifact.objects.filter(run=run).exists()

    # The chain page links round 1's snapshot → reward model → policy → generate run → round 2.
    html = client.get(reverse("training-rounds", args=["prefs"])).content.decode()
    for url in (
        reverse("training-model", args=[reward_artifact.pk]),
        reverse("training-model", args=[policy_artifact.pk]),
        reverse("training-run", args=[run.pk]),
        reverse("api-export-file", args=[reward_artifact.snapshot_id, "train"]),
    ):
        assert f'href="{url}"' in html
    assert 'id="round-2"' in html and f'candidates from <a href="{reverse("training-run", args=[run.pk])}"' in html
    page = client.get(reverse("training-run", args=[run.pk])).content.decode()
    assert f"{len(items)} items" in page and "round 2 of prefs" in page
    chain = client.get(reverse("api-training-rounds", args=["prefs"])).json()
    assert [step["round"]["number"] for step in chain] == [1, 2] and chain[0]["next_runs"][0]["run"] == run.pk
    assert chain[0]["policy_runs"][0]["artifact"] == policy_artifact.pk and chain[1]["made_by"] == run.pk


def test_generate_that_yields_no_distinct_pairs_fails_and_adds_no_round(preference_project, settings):
    lines = None
    with pytest.raises(SystemExit):
        lines = _train(
            "generate",
            "--project",
            "prefs",
            "--base-model",
            "tiny-causal",
            "--max-prompts",
            "3",
            "--foreground",
            "--set",
            "max_new_tokens=4",
            "--set",
            "temperature=0",
        )
    assert lines is None
    run = TrainingRun.objects.get()
    assert run.status == "failed" and "No prompt got enough distinct samples" in run.error
    assert Round.objects.filter(project=preference_project).count() == 1 and Item.objects.count() == 50


def test_a_malformed_candidates_file_leaves_no_half_round(preference_project, settings):
    run = launching.launch_run(project=preference_project, kind="generate", base_model="tiny-causal", enqueue=False)
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    run.refresh_from_db()
    path = run.work_dir / "candidates.jsonl"
    good = {"prompt": "New question?", "item": None, "external_id": "n1", "responses": [{"text": "A"}, {"text": "B"}]}
    path.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps({**good, "prompt": ""}) + b"\n")
    with pytest.raises(lifecycle.PublishFailed, match="line 2: prompt is empty"):
        rounds.create_candidate_round(run, path, {}, "")
    assert Round.objects.count() == 1 and Item.objects.count() == 50 and TrainingRun.objects.get().status == "running"


def test_rejection_sampling_keeps_its_samples_for_review(reward_artifact, make_project, make_member, client):
    project = reward_artifact.project
    run = launching.launch_run(
        project=project,
        kind="rejection_sampling",
        base_model="tiny-causal",
        reward_models=[f"artifact:{reward_artifact.pk}"],
        prompts=launching.Prompts(max_prompts=4),
        enqueue=False,
        values={"num_samples": 2, "max_new_tokens": 6, "temperature": 1.0, "max_steps": 2, "learning_rate": 1e-3},
    )
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == "succeeded", run.error
    kept = [orjson.loads(line) for line in (run.work_dir / "kept.jsonl").read_bytes().splitlines()]
    assert len(kept) == 4 == run.metrics["kept_samples"] and all(row["score"] >= row["mean_score"] for row in kept)
    artifact = ModelArtifact.objects.get(run=run)
    assert artifact.kind == "policy" and not (artifact.folder / "kept.jsonl").exists()
    assert f"reward model: artifact {reward_artifact.pk}" in artifact.card and "prompts: 4 from items" in artifact.card
    review = make_project(slug="review", kind=Kind.RATING, n_items=0)
    make_member(review, "boss", "admin")
    client.force_login(make_member(project, "boss", "admin"))
    page = client.get(reverse("training-run", args=[run.pk])).content.decode()
    assert "Kept samples: 4" in page and "Send kept samples for review" in page and "Start the next round" in page
    with pytest.raises(selectors.TrainingError, match="not a pairwise one"):
        rounds.send_kept_for_review(run, project)
    round_ = rounds.send_kept_for_review(run, review)
    responses = list(Response.objects.filter(item__round=round_).order_by("item"))
    assert [r.text for r in responses] == [row["response"] for row in kept]
    assert all(r.model_name == "tiny-causal" and r.metadata["run"] == run.pk for r in responses)
    assert round_.source["kind"] == "review" and RunRound.objects.get(round=round_).purpose == "review"


def test_evaluate_against_itself_ties_everywhere(
    reward_artifact, preference_snapshot, make_project, make_member, client
):
    project = preference_snapshot.project
    run = launching.launch_run(
        project=project,
        kind="evaluate",
        base_model="tiny-causal",
        baseline="tiny-causal",
        snapshot=preference_snapshot,
        reward_models=[f"artifact:{reward_artifact.pk}"],
        enqueue=False,
        values={"max_new_tokens": 6},
    )
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == "succeeded", run.error
    assert run.metrics["win_rate"] == 0.5 and run.metrics["comparisons"] == 10
    assert run.metrics["win_rate_lo"] < 0.5 < run.metrics["win_rate_hi"]
    assert not ModelArtifact.objects.filter(run=run).exists() and (run.work_dir / "comparisons.jsonl").is_file()
    client.force_login(make_member(project, "boss", "admin"))
    page = client.get(reverse("training-run", args=[run.pk])).content.decode()
    assert (
        "Win rate against the baseline (reward model): <strong>0.500</strong>" in page
        and "Create a human evaluation round" in page
    )
    with pytest.raises(selectors.TrainingError, match="identical responses"):
        rounds.create_human_eval_round(run, make_project(slug="eval", n_items=0))
    assert not Round.objects.filter(project__slug="eval").exists()


# --- evaluation: the human round and its interval ----------------------------------------------------------------


def test_wilson_interval_matches_statsmodels_and_a_hand_computed_value():
    from statsmodels.stats.proportion import proportion_confint

    assert [round(x, 3) for x in selectors.wilson_interval(8, 10)] == [0.49, 0.943]
    for successes, n in ((0, 5), (7.5, 10), (30, 30), (12, 40)):
        assert selectors.wilson_interval(successes, n) == pytest.approx(
            proportion_confint(successes, n, method="wilson")
        )
    assert selectors.win_rate(7, 2, 1)["win_rate"] == 0.75


def test_human_evaluation_round_randomises_positions_and_decodes_the_votes(
    preference_project, make_project, make_member, client
):
    evaluation = make_project(slug="eval", n_items=0, overlap=1)
    make_member(evaluation, "boss", "admin")
    admin = make_member(preference_project, "boss", "admin")
    run = TrainingRun.objects.create(
        project=preference_project,
        kind="evaluate",
        status="succeeded",
        config={},
        base_model="/m/new",
        inputs={"baseline": {"path": "/m/old", "artifact": None, "label": "old-policy"}},
        metrics={"win_rate": 0.6, "win_rate_lo": 0.3, "win_rate_hi": 0.85},
    )
    rows = [
        {
            "prompt": f"Prompt {i}?",
            "item": None,
            "external_id": f"p{i}",
            "policy": f"new answer {i}",
            "baseline": f"old answer {i}",
            "policy_score": 1.0,
            "baseline_score": 0.0,
            "winner": "policy",
        }
        for i in range(10)
    ]
    rows.append({**rows[0], "prompt": "Same?", "policy": "same", "baseline": "same", "winner": "tie"})
    run.work_dir.mkdir(parents=True)
    (run.work_dir / "comparisons.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    client.force_login(admin)
    response = client.post(reverse("training-human-eval-create", args=[run.pk]), {"project": "eval"})
    assert response.status_code == 302 and response.url == reverse("training-human-eval", args=[run.pk])
    round_ = Round.objects.get(project=evaluation)
    assert round_.source["kind"] == "human_eval" and round_.source["identical_left_out"] == 1
    items = list(round_.items.order_by("id"))
    assert len(items) == 10
    positions = []
    for item in items:
        responses = list(item.responses.order_by("index"))
        new = responses[item.metadata["new_index"]]
        assert new.metadata["arm"] == "new" and new.text.startswith("new answer") and new.model_name == "new"
        assert responses[1 - item.metadata["new_index"]].model_name == "old-policy"
        positions.append(item.metadata["new_index"])
    assert 0 < sum(positions) < 10  # both positions used
    # Annotators' votes: new wins 6, baseline 3, one tie.
    votes = []
    for i, item in enumerate(items):
        index = item.metadata["new_index"]
        winner = index if i < 6 else (1 - index if i < 9 else None)
        votes.append({"item": item.external_id, "annotator": "judge", "winner": winner})
    annotate_actions.import_judgments(evaluation, parse_votes(jsonl(votes), "jsonl"))
    result = selectors.human_eval_results(round_)
    assert (result["wins"], result["losses"], result["ties"], result["win_rate"]) == (6, 3, 1, 0.65)
    assert (round(result["ci_low"], 3), round(result["ci_high"], 3)) == (
        0.354,
        0.863,
    )  # p = 0.65, n = 10, z = 1.96: (0.6084 ± 0.2547)
    page = client.get(reverse("training-human-eval", args=[run.pk])).content.decode()
    assert "0.650" in page and "0.354 – 0.863" in page
    api = client.get(reverse("api-training-human-eval", args=[run.pk])).json()
    assert api["wins"] == 6 and api["round"]["number"] == 1
    again = client.post(reverse("training-human-eval-create", args=[run.pk]), {"project": "eval"}, follow=True)
    assert "already made round 1" in again.content.decode() and Round.objects.filter(project=evaluation).count() == 1


# --- who sees the loop pages -------------------------------------------------------------------------------------


def test_rounds_page_is_forbidden_to_annotators_and_hidden_from_outsiders(
    preference_project, make_member, client, django_user_model
):
    annotator = make_member(preference_project, "ann", "annotator")
    researcher = make_member(preference_project, "res", "researcher")
    url = reverse("training-rounds", args=["prefs"])
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    assert "Rounds and lineage" not in client.get(reverse("project", args=["prefs"])).content.decode()
    client.force_login(django_user_model.objects.create_user("outsider", password="a-long-test-password"))
    assert (
        client.get(url).status_code == 404
        and client.get(reverse("api-training-rounds", args=["prefs"])).status_code == 404
    )
    client.force_login(researcher)
    assert client.get(url).status_code == 200 and 'id="round-1"' in client.get(url).content.decode()
    assert "Rounds and lineage" in client.get(reverse("project", args=["prefs"])).content.decode()
    # Researchers read but do not launch the next round.
    run = TrainingRun.objects.create(
        project=preference_project, kind="dpo", status="succeeded", config={}, base_model="x"
    )
    assert client.post(reverse("training-next-round", args=[run.pk])).status_code == 403
    assert TrainingRun.objects.count() == 1


def test_launch_form_takes_an_uploaded_prompts_file(preference_project, make_member, client, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(make_member(preference_project, "boss", "admin"))
    form = {
        "project": "prefs",
        "kind": "generate",
        "base_model": str(Path(settings.MODEL_ROOTS[0]) / "tiny-causal"),
        "prompts_from": "file",
    }
    bad = client.post(
        reverse("training-new"),
        {**form, "prompts_file": SimpleUploadedFile("p.jsonl", b'{"prompt": "Hi"}\n{"prompt": 3}\n')},
    )
    assert (
        bad.status_code == 400
        and "line 2: prompt must be text" in bad.content.decode()
        and not TrainingRun.objects.exists()
    )
    good = client.post(
        reverse("training-new"),
        {**form, "opt_max_new_tokens": "4", "prompts_file": SimpleUploadedFile("p.jsonl", b'{"prompt": "Hi"}\n')},
    )
    run = TrainingRun.objects.get()
    assert good.status_code == 302 and good.url == reverse("training-run", args=[run.pk])
    assert run.inputs["prompts_file"] == "p.jsonl" and run.inputs["prompts"] == 1 and run.config["max_new_tokens"] == 4
