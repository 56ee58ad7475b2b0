"""Process reward models: a tiny token-classifying Llama learns which steps are good on a separable toy set, serves
as a reward model (min / prod of its steps) that rejection sampling ranks by, and is refused on a project without
step labels."""

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch

from annotate import actions as annotate_actions
from annotate.actions import InvalidJudge, add_judge
from annotate.exports import ExportError, build_rows
from annotate.imports import parse_items, parse_votes
from annotate.models import JudgeVote, Kind
from tests.conftest import jsonl
from tests.training.conftest import BAD, GOOD, write_jsonl
from training import datasets, launching, supervisor
from training.models import TrainingRun
from training.runners.base import ConfigError, RunnerError
from training.runners.policy import Sample, load_scorer, score_samples
from training.runners.prm import PRMRunConfig, first_error, step_metrics
from training.runners.prm import run as run_prm
from training.runners.rejection_sampling import select_best
from training.runners.rejection_sampling_config import RejectionSamplingRunConfig
from training.scoring import PRMScorer, RewardScorer, aggregate_steps, encode_steps
from training.selectors import TrainingError

FAST = {"learning_rate": 3e-3, "max_steps": 40, "per_device_train_batch_size": 8, "logging_steps": 5}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: a second intra-op thread only waits at OpenMP barriers, badly so on busy shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def step_text(words: list[str], rng: random.Random) -> str:
    return "This step is " + " ".join(rng.sample(words, 2)) + "."


def toy_steps(n: int, seed: int = 0) -> list[dict]:
    """Three steps per response; half the responses go wrong at a random step, and stay wrong after it (as a
    solution does once it has made a mistake). A step with good words is positive, one with bad words negative."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        wrong_from = rng.randrange(3) if rng.random() < 0.5 else 3
        labels = [k < wrong_from for k in range(3)]
        steps = [step_text(GOOD if good else BAD, rng) for good in labels]
        rows.append({"prompt": f"Question {i}: tell me about topic {i}.", "completions": steps, "labels": labels})
    return rows


@pytest.fixture(scope="module")
def trained_prm(tmp_path_factory, models_root):
    folder = tmp_path_factory.mktemp("prm")
    rows = toy_steps(128)
    paths = {
        "train": write_jsonl(rows[:96], folder / "train.jsonl"),
        "test": write_jsonl(rows[96:], folder / "test.jsonl"),
    }
    config = PRMRunConfig.from_dict({**FAST, "base_model": str(models_root / "tiny-causal")})
    metrics = run_prm(config, paths, folder / "model", lambda event: None)
    return folder / "model", metrics


def test_the_prm_learns_which_steps_are_wrong(trained_prm):
    folder, metrics = trained_prm
    # The toy set is two-thirds positive steps: the majority class is a real baseline, not 0.5.
    assert metrics["eval_steps"] == 96
    assert metrics["eval_step_accuracy"] > 0.8
    assert metrics["eval_step_accuracy"] > metrics["eval_majority_step_accuracy"] + 0.1
    assert metrics["eval_first_error_f1"] > 0.5
    info = json.loads((folder / "arbiter.json").read_text())
    assert info["kind"] == "prm" and info["label_names"] == ["negative", "positive"]
    assert info["step_separator"] == "\n" and info["aggregate"] == "min"
    assert not list(folder.glob("*.bin"))


def test_first_error_f1_is_processbench_harmonic_mean():
    # Responses 1-2 have a mistake (found exactly in 1; in 2 predicted a step too early); 3-5 are error-free and
    # 3 and 5 are predicted so. Accuracy on erroneous 1/2, on correct 2/3, F1 = 2·(1/2)(2/3)/(1/2 + 2/3).
    true = [[1, 0, 0], [1, 1, 0], [1, 1], [1, 1], [1]]
    predicted = [[1, 0, 1], [0, 1, 0], [1, 1], [1, 0], [1]]
    result = step_metrics(true, predicted, negative=0)
    assert result["first_error_accuracy_erroneous"] == 0.5
    assert result["first_error_accuracy_correct"] == pytest.approx(2 / 3)
    assert result["first_error_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert result["step_accuracy"] == pytest.approx(8 / 11)
    assert first_error([1, 1, 0, 0], 0) == 2 and first_error([1, 1], 0) == -1
    assert "first_error_f1" not in step_metrics([[1, 1]], [[1, 1]], negative=0)  # no erroneous response: undefined


def test_the_scorer_aggregates_its_steps_by_min_or_prod(trained_prm):
    folder, _ = trained_prm
    scorer = RewardScorer.load(folder)  # the reward models' loader gives a PRM scorer for a PRM's folder
    assert isinstance(scorer, PRMScorer)
    prompt = "Question 7: tell me about topic 7."
    response = "This step is clear kind.\nThis step is correct polite.\nThis step is rude vague."
    (steps,) = scorer.right_probabilities([prompt], [scorer.split(response)])
    assert len(steps) == 3 and steps[2] < 0.5 < min(steps[0], steps[1])
    # Each step's probability is read at its own separator: the prefix ending there gives the same one.
    ids, positions = encode_steps(scorer.tokenizer, prompt, scorer.split(response), "\n")
    with torch.no_grad():
        prefix = scorer.model(input_ids=torch.tensor([ids[: positions[1] + 1]])).logits[0, -1].softmax(-1)
    assert 1 - float(prefix[0]) == pytest.approx(steps[1], abs=1e-5)
    assert scorer.score([prompt], [response], aggregate="min") == [pytest.approx(min(steps))]
    assert scorer.score([prompt], [response], aggregate="prod") == [pytest.approx(math.prod(steps))]
    assert scorer.score([prompt], [response]) == scorer.score([prompt], [response], aggregate="min")  # the artifact's
    assert aggregate_steps([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate_steps([0.9, 0.5, 0.8], "prod") == pytest.approx(0.36)
    assert aggregate_steps([], "prod") == 0.0


def test_rejection_sampling_keeps_the_candidate_whose_steps_are_all_good(trained_prm, models_root):
    folder, _ = trained_prm
    config = RejectionSamplingRunConfig.from_dict(
        {"base_model": str(models_root / "tiny-causal"), "reward_models": [str(folder)]}
    )
    rows = [{"prompt": f"Question {i}: tell me about topic {i}.", "item": i, "external_id": str(i)} for i in (3, 4)]
    flawed = "This step is clear kind.\nThis step is wrong sloppy.\nThis step is accurate helpful."
    clean = "This step is helpful clear.\nThis step is correct kind.\nThis step is polite accurate."
    samples = [[Sample(flawed, "eos", 9), Sample(clean, "eos", 9)], [Sample(clean, "eos", 9), Sample(flawed, "eos", 9)]]
    scores = score_samples(load_scorer(config), [row["prompt"] for row in rows], samples, 4)
    kept = select_best(rows, samples, scores, None)
    assert [row["response"] for row in kept] == [clean, clean]


def test_bad_settings_and_inputs_are_refused(tmp_path, models_root):
    with pytest.raises(ConfigError, match="virtual tokens"):
        PRMRunConfig.from_dict({"method": "prompt_tuning"})
    with pytest.raises(ConfigError, match="step_separator"):
        PRMRunConfig.from_dict({"step_separator": ""})
    with pytest.raises(ConfigError, match="aggregate"):
        PRMRunConfig.from_dict({"aggregate": "mean"})
    pairs = [{"prompt": "Q", "chosen": "good", "rejected": "bad"}]
    config = PRMRunConfig.from_dict({**FAST, "base_model": str(models_root / "tiny-causal")})
    with pytest.raises(RunnerError, match="not a steps snapshot"):
        run_prm(config, {"train": write_jsonl(pairs, tmp_path / "train.jsonl")}, tmp_path / "out", lambda e: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.django_db
def test_a_prm_on_a_pairwise_project_is_refused_at_launch_and_writes_nothing(preference_project, settings):
    from annotate.models import Snapshot
    from training.models import TrainingRun

    with pytest.raises(TrainingError, match="needs a steps project"):
        launching.launch_run(project=preference_project, kind="prm", base_model="tiny-causal", enqueue=False)
    assert not Snapshot.objects.exists() and not TrainingRun.objects.exists()
    assert not settings.ARTIFACT_ROOT.exists() or not any(settings.ARTIFACT_ROOT.rglob("*"))


# --- on a steps project: launch, train, judge -------------------------------------------------------------------


def steps_project(make_project, slug: str, separator: str, n: int, voted: int):
    """A steps project of ``n`` one-response items (toy_steps joined by ``separator``); the first ``voted`` have an
    annotator's step labels."""
    project = make_project(slug=slug, kind=Kind.STEPS, n_items=0, overlap=1, step_separator=separator)
    rows = toy_steps(n, seed=5)
    items = [
        {"id": f"s{i}", "prompt": r["prompt"], "responses": [separator.join(r["completions"])]}
        for i, r in enumerate(rows)
    ]
    votes = [
        {
            "item": f"s{i}",
            "annotator": "ann-a",
            "steps": {"0": ["positive" if good else "negative" for good in r["labels"]]},
        }
        for i, r in enumerate(rows[:voted])
    ]
    annotate_actions.import_items(project, parse_items(jsonl(items), "jsonl", Kind.STEPS))
    if votes:
        annotate_actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project, rows


@pytest.mark.django_db
def test_a_prm_launched_on_a_steps_project_learns_its_step_labels(make_project):
    project, rows = steps_project(make_project, "stepped", " || ", 100, 100)
    run = launching.launch_run(project=project, kind="prm", base_model="tiny-causal", values=FAST, enqueue=False)
    assert run.config["step_separator"] == " || "  # the project's, so the PRM splits responses as it does
    assert run.snapshot.options["format"] == "steps"
    paths, _ = datasets.run_datasets(run)
    config = PRMRunConfig.from_dict(run.config)
    metrics = run_prm(config, paths, run.work_dir / "model", lambda event: None)
    assert metrics["eval_step_accuracy"] > 0.8 and metrics["eval_steps"] >= 30


@pytest.mark.django_db
def test_neutral_steps_class_keeps_a_third_class_from_the_export_to_the_model(make_project):
    """neutral_steps=class: the snapshot keeps the label names (a tie goes to the lower label) and the PRM has three
    classes; a snapshot of booleans given to such a run is refused with the reason."""
    project, rows = steps_project(make_project, "neutral", "\n", 40, 0)
    items = [f"s{i}" for i in range(3)]
    votes = [
        {"item": items[0], "annotator": "ann-a", "steps": {"0": ["positive", "neutral", "negative"]}},
        {"item": items[0], "annotator": "ann-b", "steps": {"0": ["positive", "neutral", "neutral"]}},
        {"item": items[1], "annotator": "ann-a", "steps": {"0": ["neutral", "positive", "negative"]}},
        {"item": items[1], "annotator": "ann-b", "steps": {"0": ["positive", "neutral", "negative"]}},
    ]
    annotate_actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    labels = {row["id"]: row["labels"] for row in build_rows(project, "steps", step_labels="three")}
    # Item 0, step 3: negative against neutral, a tie: the lower label. Item 1, steps 1 and 2: ties of neutral and
    # positive: neutral.
    assert labels == {"s0": ["positive", "neutral", "negative"], "s1": ["neutral", "neutral", "negative"]}
    assert {row["id"]: row["labels"] for row in build_rows(project, "steps")} == {
        "s0": [True, True, False],
        "s1": [True, True, False],
    }
    with pytest.raises(ExportError, match="step_labels=three applies to the steps format only"):
        build_rows(project, "trl", step_labels="three")

    more = [
        {
            "item": f"s{i}",
            "annotator": "ann-a",
            "steps": {"0": ["positive" if good else "neutral" for good in r["labels"]]},
        }
        for i, r in enumerate(rows)
        if i >= 2
    ]
    annotate_actions.import_judgments(project, parse_votes(jsonl(more), "jsonl"))
    values = {**FAST, "neutral_steps": "class", "max_steps": 2}
    run = launching.launch_run(project=project, kind="prm", base_model="tiny-causal", values=values, enqueue=False)
    assert (run.snapshot.options["step_labels"], run.snapshot.options["neutral_steps"]) == ("three", True)
    paths, _ = datasets.run_datasets(run)
    run_prm(PRMRunConfig.from_dict(run.config), paths, run.work_dir / "model", lambda event: None)
    saved = json.loads((run.work_dir / "model" / "config.json").read_text())
    assert sorted(saved["id2label"].values()) == ["negative", "neutral", "positive"]

    booleans = launching.launch_run(project=project, kind="prm", base_model="tiny-causal", values=FAST, enqueue=False)
    runs = TrainingRun.objects.count()
    with pytest.raises(TrainingError, match=f"Snapshot {booleans.snapshot.pk} counts a neutral step as positive"):
        launching.launch_run(
            project=project,
            kind="prm",
            base_model="tiny-causal",
            values=values,
            snapshot=booleans.snapshot,
            enqueue=False,
        )
    assert TrainingRun.objects.count() == runs


@pytest.fixture
def registered_prm(trained_prm, settings, make_project):
    from training.models import ModelArtifact

    folder, _ = trained_prm
    owner = make_project(slug="prm-owner", n_items=0)
    relative = Path("models") / owner.slug / "prm"
    shutil.copytree(folder, Path(settings.ARTIFACT_ROOT) / relative)
    info = json.loads((folder / "arbiter.json").read_text())
    return ModelArtifact.objects.create(
        project=owner,
        name="prm",
        kind="reward",
        path=str(relative),
        base_model=info["base_model_path"],
        config=info["config"],
        metrics=info["metrics"],
    )


@pytest.mark.django_db
def test_a_prm_judge_labels_each_step_of_a_steps_project(make_project, registered_prm):
    project, rows = steps_project(make_project, "judged", "\n", 12, 0)
    judge = add_judge(project, "prm", "reward-model", f"artifact:{registered_prm.pk}")
    run = launching.launch_judge_run(judge, enqueue=False)
    run = supervisor.execute(run.pk, run.attempt, in_process=True, echo=lambda line: None)
    assert run.status == "succeeded", run.error
    votes = {v.item.external_id: v for v in JudgeVote.objects.filter(judge=judge).select_related("item", "judgment")}
    assert len(votes) == 12 and {v.status for v in votes.values()} == {"ok"}
    for i, row in enumerate(rows):
        expected = ["positive" if good else "negative" for good in row["labels"]]
        vote = votes[f"s{i}"]
        assert vote.judgment.data["steps"] == {str(vote.item.responses.get().pk): expected}
        assert 0.5 < votes[f"s{i}"].confidence <= 1


@pytest.mark.django_db
def test_prm_and_reward_model_judges_are_refused_on_the_wrong_kind_of_project(
    make_project, preference_project, registered_prm, registered_reward
):
    from annotate.models import Judge

    with pytest.raises(InvalidJudge, match="judges steps projects only"):
        add_judge(preference_project, "j", "reward-model", f"artifact:{registered_prm.pk}")
    project, _ = steps_project(make_project, "steps-rm", "\n", 2, 0)
    with pytest.raises(InvalidJudge, match="needs process reward models"):
        add_judge(project, "j", "reward-model", f"artifact:{registered_reward.pk}")
    assert not Judge.objects.exists()
