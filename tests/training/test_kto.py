"""KTO: the runner without Django (a tiny causal Llama learns thumbs up for good words and down for bad ones), the
balancing of desirable and undesirable weights, the threshold of rating projects, and the launch through Django.

The implicit reward is measured here from the saved model's and the base model's own log-probabilities, not read
from the trainer's log.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from annotate import actions as annotate_actions
from annotate.exports import ExportError, ExportOptions, build_rows
from annotate.imports import parse_items, parse_votes
from annotate.models import Kind, Role, Snapshot
from tests.conftest import jsonl
from tests.training.conftest import toy_rows, write_jsonl
from tests.training.test_sft_dpo import _changed, completion_logps
from training import kinds, launching
from training.launching import TrainingError
from training.models import TrainingRun
from training.runners import load_runner
from training.runners.base import ConfigError, RunnerError
from training.runners.kto import KTORunConfig
from training.runners.kto import run as run_kto
from training.runners.kto_config import BALANCE_RANGE, balance_ratio, balanced_weights

FAST = {"learning_rate": 3e-3, "max_steps": 20, "per_device_train_batch_size": 8, "logging_steps": 5}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: a second intra-op thread only waits at OpenMP barriers, badly so on busy shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_causal(models_root):
    return models_root / "tiny-causal"


def kto_rows(pairs: list[dict], undesirable_every: int = 1) -> list[dict]:
    """Toy pairs → unpaired rows: every good answer desirable, the bad answer of every ``undesirable_every``-th
    pair undesirable (1: balanced)."""
    rows = []
    for i, pair in enumerate(pairs):
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        if i % undesirable_every == 0:
            rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


def log_ratios(policy, reference, rows) -> torch.Tensor:
    """log π(y|x) − log π_ref(y|x) of each row's completion (KTO's implicit reward, before β)."""
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    completions = [[{"role": "assistant", "content": r["completion"]}] for r in rows]
    return completion_logps(policy, prompts, completions)[0] - completion_logps(reference, prompts, completions)[0]


def reward_margin(policy, reference, rows) -> float:
    """Mean log-ratio of the desirable rows minus that of the undesirable ones."""
    ratios = log_ratios(policy, reference, rows)
    labels = torch.tensor([r["label"] for r in rows])
    return (ratios[labels].mean() - ratios[~labels].mean()).item()


# --- the runner -----------------------------------------------------------------------------------------


def test_kto_raises_the_implicit_reward_of_held_out_desirable_responses(tmp_path, tiny_causal):
    pairs = toy_rows(56)
    train = kto_rows(pairs[:48], undesirable_every=2)  # 48 desirable, 24 undesirable: the weights must balance
    held_out = kto_rows(pairs[48:])
    paths = {
        "train": write_jsonl(train, tmp_path / "train.jsonl"),
        "test": write_jsonl(held_out, tmp_path / "test.jsonl"),
    }
    before = reward_margin(tiny_causal, tiny_causal, held_out)
    events = []
    config = KTORunConfig.from_dict({**FAST, "base_model": str(tiny_causal), "beta": 0.1})
    metrics = run_kto(config, paths, tmp_path / "out", events.append)

    after = reward_margin(tmp_path / "out", tiny_causal, held_out)
    ratios = log_ratios(tmp_path / "out", tiny_causal, held_out)
    labels = torch.tensor([r["label"] for r in held_out])
    assert before == 0  # the policy starts as its reference
    assert after > 1.0 and after > before
    assert ratios[labels].mean() > 0 > ratios[~labels].mean()  # up for desirable, down for undesirable
    assert _changed(tiny_causal, tmp_path / "out") > 1e-3
    # The weights came from the counts and satisfy the KTO paper's rule; the log says so.
    assert (metrics["n_desirable"], metrics["n_undesirable"]) == (48, 24)
    assert metrics["desirable_weight"] == 1.0 and metrics["undesirable_weight"] > 1.0
    ratio = balance_ratio(48, 24, metrics["desirable_weight"], metrics["undesirable_weight"])
    assert BALANCE_RANGE[0] <= ratio <= BALANCE_RANGE[1]
    (line,) = [e["message"] for e in events if e["event"] == "log" and "desirable_weight" in e["message"]]
    assert "48 desirable and 24 undesirable" in line and "balanced" in line
    # TRL's own view of held-out responses agrees, and each logged step carries the KTO metrics.
    assert metrics["eval_rewards/margins"] > 0 and metrics["eval_rewards/chosen"] > metrics["eval_rewards/rejected"]
    assert metrics["n_eval"] == 16 and metrics["train_steps"] == 20
    steps = [e["metrics"] for e in events if e["event"] == "metrics" and "rewards/margins" in e["metrics"]]
    assert len(steps) == 4 and {"rewards/chosen", "rewards/rejected", "kl"} <= set(steps[0])
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["kind"] == "kto" and info["undesirable_weight"] == metrics["undesirable_weight"]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.safetensors", "tokenizer.json"}


def test_a_split_that_is_not_kto_rows_or_has_one_side_only_is_refused_with_the_reason(tmp_path, tiny_causal):
    config = KTORunConfig.from_dict({**FAST, "base_model": str(tiny_causal)})
    pairs = toy_rows(4)
    trl = write_jsonl(pairs, tmp_path / "trl.jsonl")
    with pytest.raises(RunnerError, match=r"train split, row 1: no completion, label; KTO reads a kto export"):
        run_kto(config, {"train": trl}, tmp_path / "out", lambda e: None)
    only_up = write_jsonl([r for r in kto_rows(pairs) if r["label"]], tmp_path / "up.jsonl")
    with pytest.raises(RunnerError, match=r"only desirable examples \(4\) and no undesirable one: KTO needs both"):
        run_kto(config, {"train": only_up}, tmp_path / "out", lambda e: None)
    only_down = write_jsonl([r for r in kto_rows(pairs) if not r["label"]], tmp_path / "down.jsonl")
    with pytest.raises(RunnerError, match=r"only undesirable examples \(4\) and no desirable one"):
        run_kto(config, {"train": only_down}, tmp_path / "out", lambda e: None)
    text_label = write_jsonl([{**kto_rows(pairs)[0], "label": "yes"}], tmp_path / "text.jsonl")
    with pytest.raises(RunnerError, match=r"row 1: label must be true \(desirable\) or false, not 'yes'"):
        run_kto(config, {"train": text_label}, tmp_path / "out", lambda e: None)
    assert not (tmp_path / "out").exists()


# --- the weights and the options --------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [(10, 10), (13, 10), (14, 10), (1, 100), (100, 1), (7, 9), (300, 17), (3, 1000)])
def test_auto_weights_put_any_split_inside_the_kto_papers_range(counts):
    low, high = BALANCE_RANGE
    desirable, undesirable = balanced_weights(*counts)
    assert low <= balance_ratio(*counts, desirable, undesirable) <= high
    assert min(desirable, undesirable) == 1.0  # only the minority is weighted up
    # One weight given: the other is balanced against it; both given: kept as they are.
    config = KTORunConfig.from_dict({"undesirable_weight": 2.0})
    assert low <= balance_ratio(*counts, *config.weights(*counts)) <= high and config.weights(*counts)[1] == 2.0
    config = KTORunConfig.from_dict({"desirable_weight": 0.5})
    assert low <= balance_ratio(*counts, *config.weights(*counts)) <= high and config.weights(*counts)[0] == 0.5
    assert KTORunConfig.from_dict({"desirable_weight": 3.0, "undesirable_weight": 1.0}).weights(*counts) == (3.0, 1.0)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"beta": 0.0}, "beta must be above 0"),
        ({"loss_type": "sigmoid"}, "loss_type must be one of kto, apo_zero_unpaired"),
        ({"desirable_weight": 0.0}, "desirable_weight must be above 0"),
        ({"undesirable_weight": -1.0}, "undesirable_weight must be above 0"),
        ({"per_device_train_batch_size": 1}, "needs per_device_train_batch_size of at least 2"),
        ({"votes": "robots"}, "votes must be one of human, ai, all"),
        ({"threshold": "high"}, "threshold must be float or none"),
    ],
)
def test_bad_kto_options_are_refused_with_the_reason(values, message):
    with pytest.raises(ConfigError, match=message):
        KTORunConfig.from_dict(values)


def test_kto_options_parse_and_the_registry_knows_the_kind():
    assert KTORunConfig.parse_overrides(["threshold=4", "desirable_weight=none", "loss_type=apo_zero_unpaired"]) == {
        "threshold": 4.0,
        "desirable_weight": None,
        "loss_type": "apo_zero_unpaired",
    }
    assert KTORunConfig.from_dict({"loss_type": "apo_zero_unpaired", "per_device_train_batch_size": 1})
    kind = kinds.get("kto")
    assert (kind.reads, kind.publishes, kind.base_models) == (kinds.SNAPSHOT, kinds.MODEL, (kinds.CAUSAL_LM,))
    assert kind.snapshot_format(KTORunConfig()) == "kto" and kind.available
    assert load_runner("kto").CONFIG_CLASS is KTORunConfig


# --- the threshold of rating exports ----------------------------------------------------------------------


def _rating_project(slug, scale, scores: dict[str, list[int]]):
    """One item per entry of ``scores`` with one response, rated by one annotator per score."""
    project = annotate_actions.create_project(slug=slug, kind=Kind.RATING, overlap=3, scale=scale)
    items = [{"id": name, "prompt": f"Prompt {name}", "responses": [f"Answer {name}"]} for name in scores]
    annotate_actions.import_items(project, parse_items(jsonl(items), "jsonl", Kind.RATING))
    votes = [
        {"item": name, "annotator": f"rater-{n}", "ratings": {"0": {"overall": score}}}
        for name, values in scores.items()
        for n, score in enumerate(values)
    ]
    annotate_actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


def _labels(project, **options) -> dict[str, bool]:
    return {row["id"]: row["label"] for row in build_rows(project, "kto", **options)}


@pytest.mark.django_db
def test_a_threshold_splits_mean_scores_and_a_binary_scale_labels_its_top_value():
    # Means on 1–7: a 6, b 4 (the middle), c 3.5, d 2.
    rated = _rating_project("rated", {"min": 1, "max": 7}, {"a": [6, 6], "b": [4], "c": [3, 4], "d": [2]})
    assert _labels(rated) == {"a": True, "c": False, "d": False}  # unset: the middle, b left out
    assert _labels(rated, threshold=3.5) == {"a": True, "b": True, "c": True, "d": False}
    assert _labels(rated, threshold=6) == {"a": True, "b": False, "c": False, "d": False}
    thumbs = _rating_project(
        "thumbs", {"min": 0, "max": 1}, {"up": [1], "down": [0], "split": [1, 0], "most": [1, 1, 0]}
    )
    assert _labels(thumbs) == {"up": True, "down": False, "most": True}
    assert _labels(thumbs, threshold=1) == {"up": True, "down": False, "split": False, "most": False}
    for threshold, reason in ((1, "every response would be desirable"), (7.5, "no response could be desirable")):
        with pytest.raises(ExportError, match=f"threshold {threshold} is outside the scale 1–7: {reason}"):
            build_rows(rated, "kto", threshold=threshold)
    pairwise = annotate_actions.create_project(slug="pairs", kind=Kind.PAIRWISE)
    with pytest.raises(ExportError, match="threshold cannot apply to a pairwise project"):
        build_rows(pairwise, "kto", threshold=4)
    with pytest.raises(ExportError, match="threshold cannot apply to the trl format"):
        build_rows(rated, "trl", threshold=4)
    # Unset, the threshold is not part of the options (the hashes of existing exports stay as they were).
    assert "threshold" not in ExportOptions(format="kto").to_dict()
    assert ExportOptions.from_dict({"format": "kto", "threshold": 4}).to_dict()["threshold"] == 4


# --- the launch ----------------------------------------------------------------------------------------------


def _snapshot_labels(snapshot) -> dict[str, bool]:
    rows = []
    for name in ("train.jsonl", "test.jsonl"):
        path = snapshot.folder / name
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines()]
    return {row["id"]: row["label"] for row in rows}


@pytest.mark.django_db
def test_launching_kto_on_a_pairwise_project_snapshots_its_winners_and_losers(preference_project, settings):
    settings.TRAINING_DEFAULT_TEST_SIZE = 0.2
    run = launching.launch_run(project=preference_project, kind="kto", base_model="tiny-causal", enqueue=False)
    snapshot = run.snapshot
    assert run.kind == "kto" and snapshot.options["format"] == "kto" and "threshold" not in snapshot.options
    rows = [json.loads(line) for line in (snapshot.folder / "train.jsonl").read_text().splitlines()]
    assert rows and {row["label"] for row in rows} == {True, False}
    good = {"correct", "helpful", "clear", "polite", "accurate", "kind"}
    assert all(row["label"] == bool(good & set(row["completion"].strip(".").split())) for row in rows)
    assert run.config["threshold"] is None and run.config["votes"] == "human"
    with pytest.raises(TrainingError, match="threshold cannot apply to a pairwise project"):
        launching.launch_run(
            project=preference_project, kind="kto", base_model="tiny-causal", enqueue=False, values={"threshold": 4}
        )
    trl, _ = annotate_actions.create_snapshot(preference_project, ExportOptions(test_size=0.2, seed=0))
    with pytest.raises(TrainingError, match=f"This run trains on a kto snapshot; snapshot {trl.pk} is trl"):
        launching.launch_run(
            project=preference_project, kind="kto", base_model="tiny-causal", snapshot=trl, enqueue=False
        )


@pytest.mark.django_db
def test_launching_kto_on_a_steps_project_is_refused_and_writes_nothing(make_project, settings):
    steps = make_project(slug="proofs", kind=Kind.STEPS, n_items=0)
    items = [{"id": "q", "prompt": "Solve 2+2", "responses": ["2+2 is 4\nso 5"]}]
    annotate_actions.import_items(steps, parse_items(jsonl(items), "jsonl", Kind.STEPS))
    annotate_actions.import_judgments(
        steps, parse_votes(jsonl([{"item": "q", "annotator": "a", "steps": ["positive", "negative"]}]), "jsonl")
    )
    counts = Snapshot.objects.count(), TrainingRun.objects.count()
    message = "KTO learns from thumbs up/down: pairwise, ranking or rating votes; project proofs collects step labels"
    with pytest.raises(TrainingError, match=message):
        launching.launch_run(project=steps, kind="kto", base_model="tiny-causal", enqueue=False)
    assert (Snapshot.objects.count(), TrainingRun.objects.count()) == counts
    assert not (settings.ARTIFACT_ROOT / "snapshots").exists()


@pytest.mark.django_db
def test_launching_kto_on_a_rating_project_takes_the_threshold(settings):
    settings.TRAINING_DEFAULT_TEST_SIZE = 0.0
    rated = _rating_project("rated", {"min": 1, "max": 7}, {"a": [6, 6], "b": [4], "c": [3, 4], "d": [2]})
    default = launching.launch_run(project=rated, kind="kto", base_model="tiny-causal", enqueue=False)
    assert _snapshot_labels(default.snapshot) == {"a": True, "c": False, "d": False}
    strict = launching.launch_run(
        project=rated, kind="kto", base_model="tiny-causal", enqueue=False, values={"threshold": 3.5}
    )
    assert strict.snapshot.options["threshold"] == 3.5 and strict.config["threshold"] == 3.5
    assert _snapshot_labels(strict.snapshot) == {"a": True, "b": True, "c": True, "d": False}
    # A snapshot given must hold the labels this threshold makes.
    with pytest.raises(TrainingError, match=f"Snapshot {default.snapshot.pk} splits the scores at the scale's middle"):
        launching.launch_run(
            project=rated,
            kind="kto",
            base_model="tiny-causal",
            snapshot=default.snapshot,
            enqueue=False,
            values={"threshold": 3.5},
        )
    runs = TrainingRun.objects.count()
    with pytest.raises(TrainingError, match="threshold 9.0 is outside the scale 1–7"):
        launching.launch_run(
            project=rated, kind="kto", base_model="tiny-causal", enqueue=False, values={"threshold": 9}
        )
    assert TrainingRun.objects.count() == runs


def test_kto_with_lora_and_precomputed_reference_moves_the_reward_the_right_way(tmp_path, tiny_causal):
    pairs = toy_rows(24)
    train = kto_rows(pairs)
    paths = {"train": write_jsonl(train, tmp_path / "train.jsonl")}
    values = {"method": "lora", "precompute_ref_log_probs": True, "learning_rate": 1e-2, "max_steps": 10}
    config = KTORunConfig.from_dict({**FAST, "base_model": str(tiny_causal), **values})
    metrics = run_kto(config, paths, tmp_path / "out", lambda e: None)
    assert reward_margin(tmp_path / "out", tiny_causal, train) > 0.5
    assert (metrics["desirable_weight"], metrics["undesirable_weight"]) == (1.0, 1.0) and "eval_loss" not in metrics
    assert "adapter_config.json" not in {p.name for p in (tmp_path / "out").iterdir()}  # merged into plain weights


@pytest.mark.django_db
def test_the_launch_form_offers_kto_options_and_launches_a_kto_run(
    client, preference_project, make_member, tiny_causal
):
    from django.urls import reverse

    client.force_login(make_member(preference_project, "boss", "admin"))
    fragment = client.get(reverse("training-new"), {"kind": "kto"}, HTTP_HX_REQUEST="true").content.decode()
    options = set(re.findall(r'name="opt_([a-z_]+)"', fragment))
    assert {"beta", "loss_type", "desirable_weight", "undesirable_weight", "threshold", "votes"} <= options
    assert not options & {"temperature", "max_new_tokens", "reference", "objective"}
    form = {"project": "prefs", "kind": "kto", "base_model": str(tiny_causal), "opt_max_steps": "3", "opt_beta": "0.2"}
    response = client.post(reverse("training-new"), form)
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and run.kind == "kto" and run.config["beta"] == 0.2
    assert run.snapshot.options["format"] == "kto" and run.config["desirable_weight"] is None


@pytest.mark.django_db
def test_train_kto_in_the_foreground_publishes_a_policy(preference_project):
    import io

    from django.core.management import call_command

    from training.models import ModelArtifact

    out = io.StringIO()
    sets = ["max_steps=6", "learning_rate=0.003", "logging_steps=2", "method=lora"]
    args = ["kto", "--project", "prefs", "--base-model", "tiny-causal", "--foreground"]
    call_command("train", *args, *[a for s in sets for a in ("--set", s)], stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue().splitlines()[-1])
    assert result["status"] == "succeeded", result
    run = TrainingRun.objects.get(pk=result["run"])
    artifact = ModelArtifact.objects.get(run=run)
    assert run.kind == "kto" and run.snapshot.options["format"] == "kto" and artifact.folder.is_dir()
    metrics = result["metrics"]
    assert metrics["n_desirable"] == metrics["n_undesirable"] and metrics["eval_rewards/margins"] > 0
    info = json.loads((artifact.folder / "arbiter.json").read_text())
    assert info["kind"] == "kto" and info["is_adapter"] is False


@pytest.mark.django_db
def test_the_threshold_reaches_export_dataset_and_the_api(tmp_path, make_member):
    rated = _rating_project("rated-cli", {"min": 1, "max": 7}, {"a": [6, 6], "b": [4], "c": [3, 4], "d": [2]})
    out = tmp_path / "kto.jsonl"
    call_command("export_dataset", "rated-cli", "--format", "kto", "--threshold", "3.5", "--out", str(out))
    labels = {row["id"]: row["label"] for row in map(json.loads, out.read_text().splitlines())}
    assert labels == {"a": True, "b": True, "c": True, "d": False}
    with pytest.raises(CommandError, match="threshold 7.5 is outside the scale"):
        call_command("export_dataset", "rated-cli", "--format", "kto", "--threshold", "7.5", "--out", str(out))

    client = APIClient()
    client.force_authenticate(make_member(rated, "res", Role.RESEARCHER))
    made = client.post(f"/api/projects/{rated.slug}/exports/", {"format": "kto", "threshold": 6}, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["options"]["threshold"] == 6
    refused = client.post(f"/api/projects/{rated.slug}/exports/", {"format": "kto", "threshold": 9}, format="json")
    assert refused.status_code == 400 and "outside the scale" in refused.content.decode()
