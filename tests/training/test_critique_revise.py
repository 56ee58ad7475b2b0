"""The constitution and the critique_revise kind (Constitutional AI's supervised stage, issue 15 part 5).

The policy is the tiny random causal Llama of conftest.py: its answers, critiques and revisions are noise, so the
tests check the structure (stages, principles, rounds, files, lineage), never the quality. Also: a project's
constitution through the settings page and the API (bad input changes nothing), the refusals at launch (nothing
written), and an sft run launched on the revisions (``train sft --from-run N``) that trains.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command
from django.urls import reverse
from hypothesis import strategies as st
from safetensors.torch import load_file

from annotate.constitution import constitution_hash, validate_constitution
from annotate.models import Kind, Project, Response, Role, Snapshot
from tests.training.conftest import write_jsonl
from training import launching, selectors
from training.models import ModelArtifact, RunStatus, TrainingRun
from training.runners.base import ConfigError, RunnerError
from training.runners.critique_revise import CritiqueReviseRunConfig, draw_principles, run
from training.runners.critique_revise_config import CRITIQUE_TEMPLATE, REVISION_TEMPLATE, fill_template, text_hash
from training.selectors import TrainingError

CONSTITUTION = [
    {"name": "harmless", "text": "Choose the response that is **least harmful**; refuse to help with violence."},
    {"name": "honest", "text": "Do not state as fact what you do not know.\n\n- no made-up numbers\n- no fake quotes"},
    {"name": "concise", "text": "Answer in as few words as the question allows."},
]
NAMES = {p["name"] for p in CONSTITUTION}
# Short turns and one batch: the tests check what is written, not how well a random model talks.
SAMPLING = {"max_new_tokens": 6, "generation_batch_size": 64, "temperature": 1.0, "seed": 4}
MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me about topic 9."}]


def _config(models_root, **values) -> CritiqueReviseRunConfig:
    return CritiqueReviseRunConfig.from_dict(
        {
            **SAMPLING,
            "base_model": str(models_root / "tiny-causal"),
            "principle_names": [p["name"] for p in CONSTITUTION],
            "principle_texts": [p["text"] for p in CONSTITUTION],
            **values,
        }
    )


def _prompts(folder: Path, n: int = 4) -> str:
    rows = [
        {"prompt": f"Question {i}: tell me about topic {i}.", "item": 100 + i, "external_id": f"q{i}"} for i in range(n)
    ]
    rows[-1] = {"prompt": MESSAGES, "item": None, "external_id": "chat"}
    return write_jsonl(rows, folder / "prompts.jsonl")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the runner, without Django ---------------------------------------------------------------------------------


def test_the_runner_answers_critiques_and_revises_with_principles_of_the_constitution(models_root, tmp_path):
    config = _config(models_root)
    events = []
    metrics = run(config, {"train": _prompts(tmp_path)}, tmp_path / "out", events.append)

    rows = _rows(tmp_path / "out" / "candidates.jsonl")
    assert [(r["item"], r["external_id"]) for r in rows] == [(100, "q0"), (101, "q1"), (102, "q2"), (None, "chat")]
    drawn = draw_principles(4, 1, 3, config.seed)
    for row, draw in zip(rows, drawn):
        answer, revision = row["responses"]
        principle = CONSTITUTION[draw[0]]["name"]  # the seeded draw, the same on every run
        assert answer["metadata"] == {
            "stage": "answer",
            "principle": principle,
            "critique": row["rounds"][0]["critique"],
        }
        assert revision["metadata"] == {
            "stage": "revision",
            "principle": principle,
            "critique": row["rounds"][0]["critique"],
            "round": 1,
        }
        assert (
            revision["text"] == row["rounds"][0]["revision"] and answer["model"] == revision["model"] == "tiny-causal"
        )
        for response in (answer, revision):
            assert 1 <= response["tokens"] <= 6 and response["finish_reason"] in ("eos", "length")
    assert rows[-1]["prompt"] == MESSAGES

    # The SFT set: one row per prompt, the prompt's turns then the last revision (the sft export's shape).
    sft = _rows(tmp_path / "out" / "sft.jsonl")
    assert [r["id"] for r in sft] == ["q0", "q1", "q2", "chat"]
    for row, example in zip(rows, sft):
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        assert example["messages"] == [*prompt, {"role": "assistant", "content": row["responses"][1]["text"]}]

    assert (metrics["prompts"], metrics["critiques"], metrics["sft_rows"], metrics["rounds"]) == (4, 4, 4, 1)
    changed = sum(r["responses"][0]["text"] != r["responses"][1]["text"] for r in rows)
    assert metrics["changed_fraction"] == changed / 4
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["principles_used"] == sorted({CONSTITUTION[d[0]]["name"] for d in drawn})
    assert info["templates"] == {"critique": text_hash(CRITIQUE_TEMPLATE), "revision": text_hash(REVISION_TEMPLATE)}
    # One progress bar over the three passes (answer, critique, revision), one batch each.
    progress = [e for e in events if e["event"] in ("start", "progress")]
    assert [(e["step"], e["total"], e["phase"]) for e in progress] == [
        (0, 3, "answer"),
        (1, 3, "answer"),
        (2, 3, "critique 1"),
        (3, 3, "revision 1"),
    ]


def test_two_rounds_make_two_critiques_and_critique_the_first_revision(models_root, tmp_path):
    config = _config(models_root, rounds=2, seed=11)
    metrics = run(config, {"train": _prompts(tmp_path, n=3)}, tmp_path / "out", lambda e: None)
    rows = _rows(tmp_path / "out" / "candidates.jsonl")
    drawn = draw_principles(3, 2, 3, 11)
    assert metrics["critiques"] == 6 and metrics["rounds"] == 2
    for row, draw in zip(rows, drawn):
        assert [step["principle"] for step in row["rounds"]] == [CONSTITUTION[i]["name"] for i in draw]
        answer, revision = row["responses"]
        # The answer carries the first round's critique, the pair's revision is the second round's.
        assert answer["metadata"]["critique"] == row["rounds"][0]["critique"]
        assert revision["metadata"]["critique"] == row["rounds"][1]["critique"]
        assert revision["metadata"]["principle"] == row["rounds"][1]["principle"] and revision["metadata"]["round"] == 2
        assert revision["text"] == row["rounds"][1]["revision"]
    assert [r["messages"][-1]["content"] for r in _rows(tmp_path / "out" / "sft.jsonl")] == [
        r["rounds"][1]["revision"] for r in rows
    ]


def test_the_templates_cite_the_principle_by_plain_replacement():
    assert fill_template("{name}: {principle} {other}", "honest", "Say {x}.") == "honest: Say {x}. {other}"
    filled = fill_template(CRITIQUE_TEMPLATE, "honest", CONSTITUTION[1]["text"])
    assert "Principle (honest):\nDo not state as fact" in filled and filled.startswith("Critique request:")
    with pytest.raises(ConfigError, match="critique_template must cite the principle"):
        CritiqueReviseRunConfig.from_dict({"critique_template": "Critique your answer."})
    with pytest.raises(ConfigError, match="rounds must be 1 to 8"):
        CritiqueReviseRunConfig.from_dict({"rounds": 0})
    with pytest.raises(ConfigError, match="one entry per principle"):
        CritiqueReviseRunConfig.from_dict({"principle_names": ["a"], "principle_texts": []})


def test_the_runner_refuses_no_constitution_and_a_reward_model_before_any_work(models_root, tmp_path):
    with pytest.raises(RunnerError, match="needs a constitution"):
        run(
            _config(models_root, principle_names=[], principle_texts=[]),
            {"train": _prompts(tmp_path)},
            tmp_path / "a",
            print,
        )
    config = _config(models_root, base_model=str(models_root / "tiny-llama"))
    with pytest.raises(RunnerError, match="is a sequence classifier"):
        run(config, {"train": _prompts(tmp_path)}, tmp_path / "b", print)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- the constitution: validation, the settings page, the API ---------------------------------------------------


BAD = [
    ([{"name": "Harm Less", "text": "x"}], "must be at most 64 lowercase letters"),
    ([{"name": "a", "text": "x"}, {"name": "a", "text": "y"}], "is already principle 1's"),
    ([{"name": "a", "text": "   "}], "Principle 1: its text is empty"),
    ([{"name": "", "text": "x"}], "Principle 1: it needs a name"),
    ([{"name": "a", "text": "x" * 4001}], "at most 4000"),
    ([{"name": f"p{i}", "text": "x"} for i in range(51)], "at most 50 principles"),
    ([{"name": "a", "text": "x", "weight": 2}], "nothing else"),
    ("harmless: be nice", "must be a list"),
]


@pytest.mark.parametrize("value, message", BAD)
def test_validation_names_each_bad_principle(value, message):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        validate_constitution(value)
    assert any(message in text for text in caught.value.messages), caught.value.messages


def test_the_hash_changes_with_any_principle_and_not_with_whitespace():
    digest = constitution_hash(CONSTITUTION)
    assert len(digest) == 64 and constitution_hash([]) == ""
    assert constitution_hash(validate_constitution([{**p, "text": f"  {p['text']}\n"} for p in CONSTITUTION])) == digest
    changed = [*CONSTITUTION[:2], {**CONSTITUTION[2], "text": "Answer briefly."}]
    assert constitution_hash(changed) != digest and constitution_hash(list(reversed(CONSTITUTION))) != digest


def _settings_post(project, **rows) -> dict:
    """The settings form's fields as the page posts them, with the constitution rows given."""
    from annotate.forms import ProjectSettingsForm

    form = ProjectSettingsForm(instance=project)
    data = {}
    for name in form.fields:
        if name == "constitution":
            continue
        value = form[name].value()
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else value
    return {**data, "constitution-rows": "1", **rows}


@pytest.mark.django_db
def test_the_settings_page_edits_the_constitution_row_by_row(client, make_project, make_member):
    project = make_project(slug="const", n_items=0)
    researcher = make_member(project, "res", Role.RESEARCHER)
    client.force_login(researcher)
    url = reverse("project-settings", args=[project.slug])
    page = client.get(url).content.decode()
    assert 'name="constitution-0-name"' in page and 'name="constitution-rows"' in page  # one empty row to fill

    body = _settings_post(
        project,
        **{
            "constitution-0-name": "harmless",
            "constitution-0-text": "No <script>alert(1)</script> **harm**.",
            "constitution-1-name": "",
            "constitution-1-text": "",
        },
    )
    assert client.post(url, body).status_code == 302
    project.refresh_from_db()
    assert project.constitution == [{"name": "harmless", "text": "No <script>alert(1)</script> **harm**."}]
    page = client.get(url).content.decode()
    # Shown as markdown, sanitised; the saved version's hash; its row plus one empty row to add another.
    assert "<strong>harm</strong>" in page and "<script>alert(1)" not in page
    assert constitution_hash(project.constitution)[:12] in page
    assert 'name="constitution-1-name"' in page and 'name="constitution-2-name"' not in page

    # Adding one and removing the first (both cleared) in one post.
    body = _settings_post(
        project,
        **{
            "constitution-0-name": "",
            "constitution-0-text": "",
            "constitution-1-name": "honest",
            "constitution-1-text": "Do not deceive.",
        },
    )
    assert client.post(url, body).status_code == 302
    project.refresh_from_db()
    assert project.constitution == [{"name": "honest", "text": "Do not deceive."}]

    # Bad rows: 200 with the messages, and nothing changes (the other settings neither).
    body = _settings_post(
        project,
        gold_rate="0.5",
        **{
            "constitution-0-name": "honest",
            "constitution-0-text": "One.",
            "constitution-1-name": "honest",
            "constitution-1-text": "Two.",
            "constitution-2-name": "Bad Name",
            "constitution-2-text": "",
        },
    )
    answer = client.post(url, body)
    html = answer.content.decode()
    assert answer.status_code == 200
    assert (
        "the name &#x27;honest&#x27; is already principle 1&#x27;s" in html and "Principle 3: its text is empty" in html
    )
    assert 'value="Bad Name"' in html  # what was typed stays on the page
    project.refresh_from_db()
    assert project.constitution == [{"name": "honest", "text": "Do not deceive."}] and project.gold_rate == 0.0

    # A post without the rows (an older page) keeps the constitution.
    body = _settings_post(project)
    del body["constitution-rows"]
    assert client.post(url, body).status_code == 302
    project.refresh_from_db()
    assert project.constitution == [{"name": "honest", "text": "Do not deceive."}]


@pytest.mark.django_db
def test_the_api_validates_the_constitution_and_bad_input_changes_nothing(make_project, make_member, api_client_for):
    project = make_project(slug="const", n_items=0)
    researcher = api_client_for(make_member(project, "res", Role.RESEARCHER))
    annotator = api_client_for(make_member(project, "ann", Role.ANNOTATOR))
    url = f"/api/projects/{project.slug}/"
    answer = researcher.patch(url, {"constitution": CONSTITUTION}, format="json")
    assert answer.status_code == 200 and answer.json()["constitution"] == CONSTITUTION
    api_bad = [
        *BAD[:2],
        (BAD[4][0], "no more than 4000 characters"),
        (BAD[5][0], "no more than 50 elements"),
        ("harmless: be nice", "Expected a list"),
        (None, "may not be null"),
        ([{"name": "a"}], "Principle 1: its text is empty"),  # partial: DRF leaves "text" optional; we do not
    ]
    for value, message in api_bad:
        answer = researcher.patch(url, {"constitution": value, "gold_rate": 0.5}, format="json")
        assert answer.status_code == 400 and message in json.dumps(answer.json()), answer.content
    assert annotator.patch(url, {"constitution": []}, format="json").status_code == 403
    project.refresh_from_db()
    assert project.constitution == CONSTITUTION and project.gold_rate == 0.0
    # Creating a project with a bad constitution is refused the same way.
    creator = api_client_for(make_member(project, "boss", Role.ADMIN))
    answer = creator.post("/api/projects/", {"slug": "other", "constitution": BAD[1][0]}, format="json")
    assert answer.status_code == 400 and "already principle 1" in json.dumps(answer.json())
    assert not Project.objects.filter(slug="other").exists()


# --- the kind through Django: launch, round, lineage, refusals, sft on the revisions ----------------------------


@pytest.fixture
def constitution_project(make_project):
    project = make_project(slug="cai", n_items=5, overlap=2)
    project.constitution = CONSTITUTION
    project.save(update_fields=["constitution"])
    return project


def _train(*args) -> list[str]:
    out = io.StringIO()
    call_command("train", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().splitlines()


@pytest.mark.django_db
def test_a_critique_run_makes_a_pairwise_round_and_an_sft_set_that_sft_learns_from(
    constitution_project, models_root, client, make_member
):
    lines = _train(
        "critique_revise",
        "--project", "cai",
        "--base-model", "tiny-causal",
        "--max-prompts", "4",
        "--foreground",
        *[f"--set={k}={v}" for k, v in {**SAMPLING, "rounds": 2}.items()],
    )  # fmt: skip
    result = json.loads(lines[-1])
    critique = TrainingRun.objects.get(pk=result["run"])
    assert result["status"] == "succeeded", critique.error
    round_ = selectors.generated_round(critique)
    assert result["round"] == {"project": "cai", "number": 2, "id": round_.pk}

    # The round: two responses per prompt, the answer and the revision, each with its stage and principle.
    items = list(round_.items.prefetch_related("responses"))
    assert len(items) == critique.metrics["candidate_items"] and 3 <= len(items) <= 4
    for item in items:
        responses = sorted(item.responses.all(), key=lambda r: r.index)
        assert [r.metadata["stage"] for r in responses] == ["answer", "revision"]
        assert all(r.metadata["principle"] in NAMES and r.metadata["run"] == critique.pk for r in responses)
        assert all(isinstance(r.metadata["critique"], str) for r in responses)
        assert {r.model_name for r in responses} == {"tiny-causal"}
        assert item.open_slots == 2  # ready for people (or judges) to check

    # Lineage: the policy, the constitution's hash and names, the principles drawn, the templates' hashes.
    recorded = critique.inputs["constitution"]
    assert recorded["hash"] == constitution_hash(CONSTITUTION) and recorded["principles"] == [
        p["name"] for p in CONSTITUTION
    ]
    assert recorded["templates"] == {"critique": text_hash(CRITIQUE_TEMPLATE), "revision": text_hash(REVISION_TEMPLATE)}
    candidates = _rows(critique.work_dir / "candidates.jsonl")
    assert recorded["principles_used"] == sorted({s["principle"] for row in candidates for s in row["rounds"]})
    assert round_.source["constitution"] == recorded and round_.source["model"]["path"] == critique.base_model
    assert critique.config["principle_texts"] == [p["text"] for p in CONSTITUTION]
    assert all(len(row["rounds"]) == 2 for row in candidates)
    client.force_login(make_member(constitution_project, "res", Role.RESEARCHER))
    page = client.get(reverse("training-run", args=[critique.pk])).content.decode()
    assert f"{len(items)} items" in page and "round 2 of cai" in page  # the run page links its round
    sft_file = critique.work_dir / "sft.jsonl"
    assert len(_rows(sft_file)) == critique.metrics["sft_rows"] == 4

    # sft on the revisions: `train sft --from-run N`, no snapshot; the weights change.
    snapshots = Snapshot.objects.count()
    lines = _train(
        "sft",
        "--project", "cai",
        "--base-model", "tiny-causal",
        "--from-run", str(critique.pk),
        "--foreground",
        "--set", "max_steps=3", "--set", "learning_rate=1e-2", "--set", "per_device_train_batch_size=2",
        "--set", "logging_steps=1",
    )  # fmt: skip
    result = json.loads(lines[-1])
    sft = TrainingRun.objects.get(pk=result["run"])
    assert result["status"] == "succeeded", sft.error
    assert sft.parent == critique and sft.snapshot is None and Snapshot.objects.count() == snapshots
    assert sft.config["source"] == "demonstrations" and sft.metrics["n_train"] == 4
    assert sft.inputs["from_run"]["run"] == critique.pk and sft.inputs["from_run"]["rows"] == 4
    assert sft.dataset_hash == sft.inputs["from_run"]["hash"] and sft.inputs["constitution"] == recorded
    artifact = ModelArtifact.objects.get(run=sft)
    before = load_file(models_root / "tiny-causal" / "model.safetensors")
    after = load_file(artifact.folder / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    lineage = json.loads((artifact.folder / "arbiter.json").read_text())["lineage"]
    assert lineage["parent_run"] == critique.pk and lineage["inputs"]["constitution"]["hash"] == recorded["hash"]


@pytest.mark.django_db
def test_refusals_at_launch_write_nothing(constitution_project, make_project, trained_reward, settings):
    from annotate.models import Round

    def nothing_written():
        runs_dir = Path(settings.ARTIFACT_ROOT) / "runs"
        return (
            not TrainingRun.objects.exists()
            and not Snapshot.objects.exists()
            and not (runs_dir.exists() and any(runs_dir.iterdir()))
            and Round.objects.count() == rounds_before
        )

    bare = make_project(slug="bare", n_items=3)
    ranking = make_project(slug="rank", kind=Kind.RANKING, n_items=0)
    rounds_before = Round.objects.count()
    registered = ModelArtifact.objects.create(
        project=constitution_project, name="cai-rm", kind="reward", path="models/cai/rm", base_model="tiny-llama"
    )
    Path(settings.ARTIFACT_ROOT, "models/cai/rm").mkdir(parents=True)
    cases = [
        (dict(project=bare, base_model="tiny-causal"), "Project bare has no constitution"),
        (
            dict(project=bare, base_model="tiny-causal", prompts=launching.Prompts(source="snapshot-train")),
            "no constitution",
        ),
        (dict(project=constitution_project, base_model="tiny-llama"), "is a reward model"),
        (dict(project=constitution_project, base_model=f"artifact:{registered.pk}"), "is a reward model"),
        (
            dict(project=constitution_project, base_model="tiny-causal", target_project=ranking),
            "Candidates go into a pairwise project; rank is a ranking project",
        ),
        (
            dict(project=constitution_project, base_model="tiny-causal", values={"principle_names": ["x"]}),
            "come from the project's constitution",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(TrainingError, match=message):
            launching.launch_run(kind="critique_revise", enqueue=False, **kwargs)
        assert nothing_written(), kwargs
    # sft --from-run takes only a succeeded critique_revise run of the same project.
    with pytest.raises(TrainingError, match="No run 999"):
        launching.launch_run(project=constitution_project, kind="sft", base_model="tiny-causal", from_run=999)
    with pytest.raises(CommandError, match="--from-run is for sft runs"):
        _train("dpo", "--project", "cai", "--base-model", "tiny-causal", "--from-run", "1")
    assert nothing_written()


@pytest.mark.django_db
def test_sft_from_a_run_that_is_not_a_finished_critique_run_is_refused(constitution_project, make_project):
    queued = launching.launch_run(
        project=constitution_project, kind="critique_revise", base_model="tiny-causal", enqueue=False
    )
    with pytest.raises(TrainingError, match=f"Run {queued.pk} is queued"):
        launching.launch_run(project=constitution_project, kind="sft", base_model="tiny-causal", from_run=queued.pk)
    generate = launching.launch_run(
        project=constitution_project, kind="generate", base_model="tiny-causal", enqueue=False
    )
    with pytest.raises(TrainingError, match="is a generate run; --from-run takes a critique_revise run"):
        launching.launch_run(project=constitution_project, kind="sft", base_model="tiny-causal", from_run=generate.pk)
    other = make_project(slug="other", n_items=0)
    with pytest.raises(TrainingError, match="belongs to project cai"):
        launching.launch_run(project=other, kind="sft", base_model="tiny-causal", from_run=queued.pk)
    assert TrainingRun.objects.count() == 2 and queued.status == RunStatus.QUEUED
    assert Response.objects.filter(item__project=constitution_project).count() == 10  # no round was added


@pytest.mark.django_db
def test_the_launch_form_offers_the_kinds_options_and_never_the_principles(
    client, constitution_project, make_member, make_project, models_root
):
    make_member(constitution_project, "boss", Role.ADMIN)
    for slug, kind in (("pairs", Kind.PAIRWISE), ("ranks", Kind.RANKING)):
        boss = make_member(make_project(slug=slug, kind=kind, n_items=0), "boss", Role.ADMIN)
    client.force_login(boss)  # the last one: each make_member sets the password again
    page = client.get(reverse("training-new"), {"kind": "critique_revise"}).content.decode()
    targets = re.search(r'<select name="target_project"[^>]*>(.*?)</select>', page, re.S).group(1)
    assert 'value="pairs"' in targets and 'value="ranks"' not in targets  # its round is pairwise
    options = set(re.findall(r'name="opt_([a-z_]+)"', page))
    assert {"rounds", "critique_template", "revision_template", "temperature", "max_new_tokens"} <= options
    assert not options & {"principle_names", "principle_texts", "learning_rate", "num_samples"}
    assert 'name="reward_models"' not in page and 'name="target_project"' in page
    response = client.post(
        reverse("training-new"),
        {
            "project": "cai",
            "kind": "critique_revise",
            "base_model": str(models_root / "tiny-causal"),
            "max_prompts": "2",
            "opt_rounds": "2",
        },
    )
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("training-run", args=[run.pk])
    assert run.config["rounds"] == 2 and run.config["principle_names"] == [p["name"] for p in CONSTITUTION]
    assert run.inputs["prompts"] == 2 and run.inputs["constitution"]["hash"] == constitution_hash(CONSTITUTION)
    assert client.get(response["Location"]).status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "text", "x"]), inner),
    max_leaves=6,
)
PRINCIPLES = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.text(max_size=6) | st.from_regex(r"[a-z][a-z0-9_-]{0,5}", fullmatch=True),
            "text": st.text(max_size=6),
        }
    ),
    max_size=3,
)  # shaped like principles: more of them get past DRF's checks to ours, some valid


@pytest.mark.django_db
def test_any_constitution_is_saved_valid_or_refused_whole(make_project, make_member, api_client_for):
    """Fuzzed through the API: every body is a 200 that stores a valid constitution or a 400 that changes nothing
    (a NUL character, which PostgreSQL's jsonb refuses, never gets in)."""
    from hypothesis import HealthCheck, given, settings

    project = make_project(slug="const", n_items=0)
    client = api_client_for(make_member(project, "res", Role.RESEARCHER))

    @given(value=JSON | PRINCIPLES)
    @settings(max_examples=80, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(value):
        before = Project.objects.get(pk=project.pk).constitution
        answer = client.patch(f"/api/projects/{project.slug}/", {"constitution": value}, format="json")
        stored = Project.objects.get(pk=project.pk).constitution
        assert answer.status_code in (200, 400), answer.content
        seen.add(answer.status_code)
        if answer.status_code == 400:
            assert stored == before and answer.json()["constitution"]
        else:
            assert stored == validate_constitution(stored) and not any("\x00" in p["text"] for p in stored)

    seen = set()
    check()
    assert seen == {200, 400}
