"""The labels format (one aggregated label per item × response × criterion) and which aggregation each format
takes."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from annotate import actions
from annotate.actions import create_snapshot
from annotate.exports import AGGREGATES, FORMAT_AGGREGATES, KIND_FORMATS, ExportError, ExportOptions, build_rows
from annotate.imports import parse_items, parse_votes
from annotate.models import Kind, Role
from tests.conftest import jsonl

pytestmark = pytest.mark.filterwarnings("ignore:::crowdkit")

CROWD4 = Path(__file__).parent / "data" / "crowd4.csv"
CLASSES = ["safe", "unsafe", "unsure", "off-topic"]


def rating_project(slug, rows, votes, **fields):
    project = actions.create_project(slug=slug, kind=Kind.RATING, **fields)
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", Kind.RATING))
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


@pytest.fixture
def crowd4(db):
    """crowd4.csv as a rating project on a categorical scale: each item one response, rated on "overall"."""
    labels = pd.read_csv(CROWD4)
    items = [
        {"id": item, "prompt": f"Is {item} safe?", "responses": [f"answer {item}"]} for item in labels["item"].unique()
    ]
    votes = [
        {"item": r.item, "annotator": r.annotator, "ratings": {"0": {"overall": r.label}}} for r in labels.itertuples()
    ]
    return rating_project("crowd4", items, votes, overlap=4, scale={"labels": CLASSES}), labels[
        ["item", "annotator", "label"]
    ]


def test_labels_by_dawid_skene_are_crowd_kits_converged_labels(crowd4):
    from crowdkit.aggregation import DawidSkene

    project, labels = crowd4
    theirs = DawidSkene(n_iter=500, tol=-np.inf).fit(labels.rename(columns={"item": "task", "annotator": "worker"}))
    rows = build_rows(project, "labels", aggregate="dawid-skene")
    assert len(rows) == 120
    assert {(r["response"], r["criterion"], r["votes"]) for r in rows} == {(0, "overall", 4)}
    got = pd.Series({r["id"]: r["label"] for r in rows})
    assert (got == theirs.labels_.reindex(got.index)).all()
    confidence = pd.Series({r["id"]: r["confidence"] for r in rows})
    np.testing.assert_allclose(confidence, theirs.probas_.max(axis=1).reindex(confidence.index), atol=1e-4)
    assert all("mean" not in r for r in rows)  # a categorical scale has no mean


def test_labels_by_majority_are_the_top_share_and_leave_out_ties(crowd4):
    project, labels = crowd4
    rows = {r["id"]: r for r in build_rows(project, "labels")}
    counts = labels.groupby(["item", "label"]).size().unstack(fill_value=0)
    top = counts.max(axis=1)
    unique = counts.eq(top, axis=0).sum(axis=1) == 1
    assert sorted(rows) == sorted(counts.index[unique])
    for item, row in rows.items():
        assert row["label"] == counts.loc[item].idxmax()
        assert row["confidence"] == top[item] / 4 and row["votes"] == 4
    assert len(build_rows(project, "labels", min_agreement=0.75)) == int((top[unique] >= 3).sum())


@pytest.mark.django_db
def test_labels_on_a_numeric_scale_with_criteria_give_mean_and_median():
    rows = [{"id": "q", "prompt": "Rate", "responses": ["x", "y"]}]
    scores = {
        "a": ((5, 2), (1, 7)),
        "b": ((5, 4), (2, 7)),
        "c": ((3, 4), (2, 1)),
    }  # annotator: ((x help, x harm), (y …))
    votes = [
        {
            "item": "q",
            "annotator": name,
            "ratings": {"0": {"helpful": x[0], "harmless": x[1]}, "1": {"helpful": y[0], "harmless": y[1]}},
        }
        for name, (x, y) in scores.items()
    ]
    project = rating_project("numeric", rows, votes, overlap=3, criteria=["helpful", "harmless"])
    got = build_rows(project, "labels")
    third = 1 / 3
    assert got == [
        {
            "id": "q",
            "response": 0,
            "criterion": "helpful",
            "label": 5,
            "confidence": 2 * third,
            "votes": 3,
            "mean": 13 / 3,
            "median": 5.0,
        },
        {
            "id": "q",
            "response": 0,
            "criterion": "harmless",
            "label": 4,
            "confidence": 2 * third,
            "votes": 3,
            "mean": 10 / 3,
            "median": 4.0,
        },
        {
            "id": "q",
            "response": 1,
            "criterion": "helpful",
            "label": 2,
            "confidence": 2 * third,
            "votes": 3,
            "mean": 5 / 3,
            "median": 2.0,
        },
        {
            "id": "q",
            "response": 1,
            "criterion": "harmless",
            "label": 7,
            "confidence": 2 * third,
            "votes": 3,
            "mean": 5.0,
            "median": 7.0,
        },
    ]
    assert [r["criterion"] for r in build_rows(project, "labels", criterion="harmless")] == ["harmless", "harmless"]
    by_model = build_rows(project, "labels", aggregate="dawid-skene")
    assert [(r["response"], r["criterion"], r["votes"], r["mean"]) for r in by_model] == [
        (r["response"], r["criterion"], r["votes"], r["mean"]) for r in got
    ]
    assert all(0 <= r["confidence"] <= 1 and isinstance(r["label"], int) for r in by_model)


def test_a_labels_snapshot_card_records_the_aggregation_and_its_convergence(crowd4):
    project, _ = crowd4
    snapshot, _ = create_snapshot(project, ExportOptions(format="labels", aggregate="dawid-skene"))
    fit = snapshot.agreement["aggregation"]
    assert fit["method"] == "dawid-skene" and fit["converged"] is True and 20 < fit["iterations"] < 200
    assert fit["by_criterion"] == {"overall": {"iterations": fit["iterations"], "converged": True}}
    card = (snapshot.folder / "README.md").read_text()
    assert f"aggregation: dawid-skene, {fit['iterations']} iterations, converged" in card
    majority, _ = create_snapshot(project, ExportOptions(format="labels"))
    assert majority.agreement["aggregation"] == {"method": "majority"}
    assert "aggregation: majority\n" in (majority.folder / "README.md").read_text()


def test_preference_formats_refuse_a_categorical_scale(crowd4):
    project, _ = crowd4
    for fmt in ("trl", "hh", "openai-dpo", "kto"):
        with pytest.raises(
            ExportError, match="A categorical rating scale has no order to turn into preferences; the labels format"
        ):
            build_rows(project, fmt)


def test_every_format_and_aggregate_is_used_or_refused():
    """The table is total: every format has an entry, and an aggregation outside it is an error, never ignored."""
    assert {f for formats in KIND_FORMATS.values() for f in formats} == {
        k for k in FORMAT_AGGREGATES if isinstance(k, str)
    }
    for fmt in (k for k in FORMAT_AGGREGATES if isinstance(k, str)):
        assert ExportOptions(format=fmt).aggregate == FORMAT_AGGREGATES[fmt][0]  # the default
        for aggregate in AGGREGATES:
            if aggregate in FORMAT_AGGREGATES[fmt]:
                ExportOptions(format=fmt, aggregate=aggregate).validate()
            else:
                with pytest.raises(
                    ExportError, match=f"Aggregation '{aggregate}' does not apply to the {fmt} format: it takes"
                ):
                    ExportOptions(format=fmt, aggregate=aggregate).validate()


@pytest.mark.django_db
def test_an_aggregate_the_format_cannot_use_is_an_error_in_command_and_api(tmp_path, api_client_for, make_member):
    rows = [{"id": "q", "prompt": "Rate", "responses": ["x", "y"]}]
    votes = [{"item": "q", "annotator": "a", "ratings": {"0": {"overall": 6}, "1": {"overall": 3}}}]
    project = rating_project("rated", rows, votes, overlap=1)
    out = tmp_path / "ratings.jsonl"
    with pytest.raises(
        CommandError,
        match="Aggregation 'dawid-skene' does not apply to the ratings format: it takes none. For one aggregated label",
    ):
        call_command("export_dataset", "rated", "--format", "ratings", "--aggregate", "dawid-skene", "--out", str(out))
    assert not out.exists()
    with pytest.raises(CommandError, match="does not apply to the kto format of a rating project: it takes majority"):
        call_command("export_dataset", "rated", "--format", "kto", "--aggregate", "bradley-terry", "--out", str(out))
    call_command("export_dataset", "rated", "--format", "ratings", "--out", str(out))  # the format's default
    assert json.loads(out.read_text())["responses"][0]["mean"] == {"overall": 6.0}

    client = api_client_for(make_member(project, "res", Role.RESEARCHER))
    answer = client.post(
        f"/api/projects/{project.slug}/exports/", {"format": "raw", "aggregate": "majority"}, format="json"
    )
    assert answer.status_code == 400
    assert answer.json()["detail"] == "Aggregation 'majority' does not apply to the raw format: it takes none."
    assert not project.snapshots.exists()
    answer = client.post(
        f"/api/projects/{project.slug}/exports/", {"format": "labels", "aggregate": "dawid-skene"}, format="json"
    )
    assert answer.status_code == 201, answer.content
    assert answer.json()["agreement"]["aggregation"]["method"] == "dawid-skene"


@pytest.mark.django_db
def test_bradley_terry_under_ties_keep_is_the_documented_example():
    """docs/exports.md: two ties and a win for x between the same pair."""
    project = actions.create_project(slug="bt", kind=Kind.PAIRWISE, overlap=3)
    actions.import_items(
        project, parse_items(jsonl([{"id": "q", "prompt": "Q", "responses": ["x", "y"]}]), "jsonl", Kind.PAIRWISE)
    )
    votes = [
        {"item": "q", "annotator": "a", "winner": None},
        {"item": "q", "annotator": "b", "winner": None},
        {"item": "q", "annotator": "c", "winner": 0},
    ]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    for aggregate in ("majority", "dawid-skene"):
        (row,) = build_rows(project, "trl", aggregate=aggregate, ties="keep")
        assert row["tie"] is True, aggregate
    (row,) = build_rows(project, "trl", aggregate="bradley-terry", ties="keep")
    assert (row["chosen"], row["rejected"], "tie" in row) == ("x", "y", False)
    from annotate.reliability import noisy_bradley_terry

    comparisons = pd.DataFrame(
        {"annotator": ["a", "b", "c"], "first": 1, "second": 2, "outcome": ["tie", "tie", "first"]}
    )
    fit = noisy_bradley_terry(comparisons)
    d = fit.scores[1] - fit.scores[2]
    assert round(d, 1) == 11.0 and round(fit.tie, 1) == 33.7
    assert round(np.exp(d / 2) / (np.exp(d / 2) + np.exp(-d / 2) + fit.tie), 2) == 0.88
    assert round(fit.skill["a"], 2) == 0.04 and round(fit.skill["c"], 2) == 0.97
    plain = noisy_bradley_terry(comparisons, annotator_effects=False)
    d = plain.scores[1] - plain.scores[2]
    assert (round(d, 1), round(plain.tie, 1)) == (3.9, 14.4)
    assert round(plain.tie / (np.exp(d / 2) + np.exp(-d / 2) + plain.tie), 2) == 0.67
