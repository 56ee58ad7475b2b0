"""AI judges beside people (issue 15, parts 2 and 3): exports, snapshots and agreement by source (human, ai, all),
people's figures untouched by judges' votes, and each judge measured against people (agreement and Cohen's κ with
every person and with the majority, gold accuracy, position consistency, length bias), compared with sklearn and
scipy on hand-built votes; the data browser's judge filters.

Judges' votes are stored as ``actions.record_ai_votes`` leaves them (a done task of the judge's user, a Judgment
with source "ai", its JudgeVote), made here row by row so that each test says exactly what a judge answered."""

from __future__ import annotations

import json
from collections import Counter
from io import StringIO
from pathlib import Path

import numpy as np
import orjson
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from annotate import actions, agreement, browsing, dashboard, selectors
from annotate.exports import ExportOptions, build_rows
from annotate.exports.writing import write_export
from annotate.imports import parse_items, parse_votes
from annotate.judge_agreement import (
    NO_JUDGES,
    NO_VOTES,
    NOTHING_SHARED,
    agreement_by_group,
    compare_with_people,
    judge_report,
    majority_labels,
)
from annotate.models import Item, Kind, Membership, Role
from tests.conftest import jsonl
from tests.judges import make_judge, stored_vote

pytestmark = pytest.mark.django_db

N_ITEMS, N_GOLD = 12, 4
PEOPLE = ("h1", "h2", "h3")


# --- hand-built votes ------------------------------------------------------------------------------------------


def item_rows(n: int = N_ITEMS, n_gold: int = N_GOLD) -> list[dict]:
    """Pairwise items whose two responses differ in length, the longer one first on odd items (so that length and
    position are not the same thing), and gold items whose answer is response 0."""
    short, long = "Yes.", "Yes: the sum of the two numbers is exactly what the question asks for."
    rows = []
    for i in range(n + n_gold):
        responses = [long, short] if i % 2 else [short, long]
        row = {"id": f"item-{i}", "prompt": f"Question {i}?", "responses": [f"{r} ({i})" for r in responses]}
        if i >= n:
            row.update(purpose="gold", gold={"winner": 0})
        rows.append(row)
    return rows


def longer(i: int) -> int:
    return 0 if i % 2 else 1


# People's answers on the normal items: a response index, "tie" or "both_bad".
HUMAN_PLAN = {
    "h1": [1, 0, 1, 0, 1, 1, "tie", 0, 1, 0, 1, 0],
    "h2": [1, 0, 0, 0, 1, "tie", "tie", 0, 1, 1, 1, "both_bad"],
    "h3": [0, 0, 1, 1, 1, 1, 0, 0, "both_bad", 0, 1, 0],
}
# Judge alpha: items 0-9, mostly the longer response; three readings position-inconsistent; two gold items (one
# right, one wrong); an unparseable answer on item 10. Judge beta: items 0-5, differing from alpha on 1, 3 and 5.
ALPHA = [1, 0, 1, 0, 1, 0, 1, 1, "tie", 0]
ALPHA_INCONSISTENT = {2, 5, 8}
BETA = [1, 1, 1, 1, 1, 1]


def label(answer) -> str:
    return answer if isinstance(answer, str) else f"r{answer}"


def import_people(project, plan=HUMAN_PLAN):
    votes = [
        {"item": f"item-{i}", "annotator": name, "winner": None if answer == "tie" else answer}
        for name, answers in plan.items()
        for i, answer in enumerate(answers)
    ]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))


def vote_judges(project):
    items = list(Item.objects.filter(project=project).order_by("id"))
    normal = [i for i in items if i.purpose == Item.Purpose.NORMAL]
    gold = [i for i in items if i.purpose == Item.Purpose.GOLD]
    alpha, beta, idle = make_judge(project, "alpha"), make_judge(project, "beta"), make_judge(project, "idle")
    for i, answer in enumerate(ALPHA):
        stored_vote(alpha, normal[i], answer, consistent=i not in ALPHA_INCONSISTENT)
    stored_vote(alpha, gold[0], 0)  # right: the gold answer is response 0
    stored_vote(alpha, gold[1], 1)  # wrong
    stored_vote(alpha, normal[10], None, status="unparseable")
    for i, answer in enumerate(BETA):
        stored_vote(beta, normal[i], answer)
    return alpha, beta, idle


@pytest.fixture
def people_project(make_project):
    project = make_project(slug="judged", overlap=3, n_items=0)
    actions.import_items(project, parse_items(jsonl(item_rows()), "jsonl", Kind.PAIRWISE))
    import_people(project)
    return project


@pytest.fixture
def judged(people_project):
    vote_judges(people_project)
    return people_project


@pytest.fixture
def researcher(people_project, make_member):
    return make_member(people_project, "res", Role.RESEARCHER)


# --- the pure figures against sklearn ------------------------------------------------------------------------------


def test_agreement_by_group_is_sklearns_kappa_and_accuracy_on_random_labels():
    rng = np.random.default_rng(7)
    group = rng.integers(0, 5, 400)
    a = rng.choice(["x", "y", "z", "w"], 400, p=[0.4, 0.3, 0.2, 0.1])
    b = np.where(rng.random(400) < 0.6, a, rng.choice(["x", "y", "z", "w"], 400))
    result = agreement_by_group(group, a, b)
    for g in range(5):
        mine = group == g
        assert result.loc[g, "n"] == mine.sum()
        assert result.loc[g, "agreement"] == pytest.approx(np.mean(a[mine] == b[mine]))
        assert result.loc[g, "kappa"] == pytest.approx(cohen_kappa_score(a[mine], b[mine]))


def test_kappa_of_a_textbook_table():
    # 50 items: both say yes on 20, both no on 15, 5 yes/no, 10 no/yes: p_o 0.7, p_e 0.5, κ 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    result = agreement_by_group([0] * 50, a, b)
    assert result.loc[0, "agreement"] == pytest.approx(0.7)
    assert result.loc[0, "kappa"] == pytest.approx(0.4)
    # One and the same label throughout from both: κ is 0/0, as sklearn's NaN.
    assert np.isnan(agreement_by_group([0, 0], ["a", "a"], ["a", "a"]).loc[0, "kappa"])


def test_majority_leaves_out_even_splits():
    import pandas as pd

    labels = pd.DataFrame({"unit": [1, 1, 1, 2, 2, 3], "label": ["a", "a", "b", "a", "b", "c"]})
    assert majority_labels(labels).to_dict() == {1: "a", 3: "c"}


def test_compare_with_people_names_judges_apart_from_people():
    import pandas as pd

    labels = pd.DataFrame(
        {
            "item": [1, 1, 1, 2, 2, 2],
            "unit": [1, 1, 1, 2, 2, 2],
            "annotator": [10, 11, 99, 10, 11, 99],
            "label": ["a", "a", "a", "b", "a", "b"],
        }
    )
    result = compare_with_people(labels, [99])[99]
    assert result["n_shared_items"] == 2
    assert result["n_majority"] == 1  # item 2: the people split
    assert result["agreement_with_majority"] == 1.0
    assert {p["annotator"]: p["agreement"] for p in result["with_annotators"]} == {10: 1.0, 11: 0.5}


# --- judges against people, from the database -------------------------------------------------------------------------


def expected_against(judge_plan: list, person_answers: list) -> tuple[int, float, float]:
    shared = [(label(j), label(person_answers[i])) for i, j in enumerate(judge_plan)]
    a, b = zip(*shared)
    return len(shared), float(np.mean(np.array(a) == np.array(b))), float(cohen_kappa_score(a, b))


def people_majority(i: int) -> str | None:
    counts = Counter(label(HUMAN_PLAN[p][i]) for p in PEOPLE).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None


def test_each_judge_against_every_person_and_the_majority_equals_sklearn(judged):
    report = judge_report(judged)
    json.dumps(report, allow_nan=False)
    judges = {j["name"]: j for j in report["judges"]}
    assert list(judges) == ["alpha", "beta", "idle"]
    pseudonym = {m.user.username: m.pseudonym for m in Membership.objects.filter(project=judged).select_related("user")}
    for name, plan in (("alpha", ALPHA), ("beta", BETA)):
        figures = judges[name]
        assert figures["annotator"] == f"judge:{name}"
        assert figures["n_items"] == figures["n_shared_items"] == len(plan)
        rows = {p["annotator"]: p for p in figures["with_annotators"]}
        assert set(rows) == {pseudonym[p] for p in PEOPLE}
        for person in PEOPLE:
            n, accuracy, kappa = expected_against(plan, HUMAN_PLAN[person])
            row = rows[pseudonym[person]]
            assert (row["n"], row["n_units"]) == (n, n)
            assert row["agreement"] == pytest.approx(accuracy)
            assert row["kappa"] == pytest.approx(kappa)
        compared = [(label(a), people_majority(i)) for i, a in enumerate(plan) if people_majority(i) is not None]
        a, b = zip(*compared)
        assert figures["n_majority"] == len(compared)
        assert figures["agreement_with_majority"] == pytest.approx(np.mean(np.array(a) == np.array(b)))
        assert figures["kappa_with_majority"] == pytest.approx(cohen_kappa_score(a, b))
    assert judges["idle"]["note"] == "it has not voted" and judges["idle"]["with_annotators"] == []
    assert report["judges_note"] is None


def test_position_consistency_gold_accuracy_length_bias_and_unparseable_answers(judged):
    alpha, beta, _ = judge_report(judged)["judges"]
    # Alpha: 12 readings in both orders (10 normal, 2 gold), 3 of them inconsistent; the unparseable answer has none.
    assert (alpha["n_votes"], alpha["n_unparseable"], alpha["n_errors"]) == (13, 1, 0)
    assert (alpha["n_position_checked"], alpha["n_position_inconsistent"]) == (12, 3)
    assert alpha["position_consistency"] == pytest.approx(9 / 12)
    assert (beta["position_consistency"], beta["n_position_inconsistent"]) == (1.0, 0)
    assert (alpha["gold_accuracy"], alpha["n_gold"]) == (0.5, 2)
    assert beta["gold_accuracy"] is None and beta["n_gold"] == 0
    # Length: each win between responses of different lengths, against the exact binomial test.
    wins = [(i, a) for i, a in enumerate(ALPHA) if isinstance(a, int)]
    k = sum(a == longer(i) for i, a in wins)
    bias = alpha["length_bias"]
    assert (bias["n"], bias["k"]) == (len(wins), k)
    assert bias["rate"] == pytest.approx(k / len(wins))
    assert bias["p_value"] == pytest.approx(binomtest(k, len(wins)).pvalue)


def test_a_position_inconsistent_judge_reads_as_such(people_project):
    """A judge whose every reading flipped with the order: consistency 0, every vote counted inconsistent."""
    flipper = make_judge(people_project, "flipper")
    for item in Item.objects.filter(project=people_project, purpose=Item.Purpose.NORMAL).order_by("id")[:6]:
        stored_vote(flipper, item, "tie", consistent=False)
    (figures,) = judge_report(people_project)["judges"]
    assert (figures["position_consistency"], figures["n_position_inconsistent"], figures["n_position_checked"]) == (
        0.0,
        6,
        6,
    )


def test_empty_states_say_why(make_project, people_project):
    assert judge_report(people_project)["judges_note"] == NO_JUDGES
    make_judge(people_project, "quiet")
    assert judge_report(people_project)["judges_note"] == NO_VOTES
    # A judge that voted only where no person did.
    lonely = make_project(slug="lonely", overlap=2, n_items=0)
    actions.import_items(lonely, parse_items(jsonl(item_rows(4, 0)), "jsonl", Kind.PAIRWISE))
    import_people(lonely, {"h1": [0, 1]})
    judge = make_judge(lonely, "solo")
    for item in Item.objects.filter(project=lonely, external_id__in=["item-2", "item-3"]):
        stored_vote(judge, item, 0)
    report = judge_report(lonely)
    assert report["judges_note"] == NOTHING_SHARED
    assert report["judges"][0]["note"] == "it shares no item with people"
    assert report["judges"][0]["n_items"] == 2 and report["judges"][0]["kappa_with_majority"] is None


def test_rating_judges_are_compared_score_by_score(make_project):
    project = make_project(slug="rated", kind=Kind.RATING, overlap=2, n_items=3)
    votes = [
        {"item": f"item-{i}", "annotator": name, "ratings": {"0": {"overall": s0}, "1": {"overall": s1}}}
        for name, scores in {"h1": [(5, 2), (4, 4), (1, 7)], "h2": [(5, 3), (4, 4), (2, 7)]}.items()
        for i, (s0, s1) in enumerate(scores)
    ]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    judge = make_judge(project, "rater")
    judge_scores = [(5, 2), (4, 5), (1, 7)]
    for item, (s0, s1) in zip(Item.objects.filter(project=project).order_by("id"), judge_scores):
        r0, r1 = item.responses.order_by("index")
        stored_vote(judge, item, None, data={"ratings": {str(r0.pk): {"overall": s0}, str(r1.pk): {"overall": s1}}})
    (figures,) = judge_report(project)["judges"]
    h1 = next(
        p
        for p in figures["with_annotators"]
        if p["annotator"]
        == selectors.pseudonyms(project, [get_user_model().objects.get(username="h1").pk])[
            get_user_model().objects.get(username="h1").pk
        ]
    )
    mine = [s for pair in judge_scores for s in pair]
    theirs = [s for pair in [(5, 2), (4, 4), (1, 7)] for s in pair]
    assert (h1["n"], h1["n_units"]) == (3, 6)
    assert h1["agreement"] == pytest.approx(np.mean(np.array(mine) == np.array(theirs)))
    assert h1["kappa"] == pytest.approx(cohen_kappa_score(mine, theirs))
    assert figures["length_bias"] is None and figures["position_consistency"] == 1.0


# --- people's figures do not move -----------------------------------------------------------------------------------


def human_figures(project, tmp_path: Path, tag: str) -> dict:
    """Every figure and default export of people's votes that judges' votes could reach."""
    folder = tmp_path / tag
    exports = {}
    for name, options, columnar in (
        ("trl-columnar", ExportOptions(format="trl"), True),
        ("trl-general", ExportOptions(format="trl"), False),
        ("hh-dawid-skene", ExportOptions(format="hh", aggregate="dawid-skene"), True),
        ("trl-bradley-terry", ExportOptions(format="trl", aggregate="bradley-terry", ties="keep"), True),
        ("raw", ExportOptions(format="raw", test_size=0.25, seed=3), True),
    ):
        (folder / name).mkdir(parents=True)
        result = write_export(project, options, folder / name, columnar=columnar)
        exports[name] = (result.content_hash, {k: Path(p).read_bytes() for k, p in result.files.items()})
    actions.refresh_item_stats(project)
    users = get_user_model().objects.filter(username__in=PEOPLE).order_by("username")
    item = Item.objects.filter(project=project, purpose=Item.Purpose.NORMAL).order_by("id").first()
    summary = agreement.summary(project)
    board = dashboard.compute_dashboard(project, dashboard.page_summary(summary))
    board.pop("judges")
    return {
        "summary": summary,
        "dashboard": json.dumps(board, sort_keys=True, default=str),
        "exports": exports,
        "shares": list(Item.objects.filter(project=project).order_by("id").values_list("winner_share", flat=True)),
        "slots": list(Item.objects.filter(project=project).order_by("id").values_list("open_slots", "n_judgments")),
        "stats": [vars(selectors.annotator_stats(project, user)) for user in users],
        "progress": selectors.project_progress(project),
        "labels": browsing.item_labels(project, item, browsing.letters([r.pk for r in item.responses.all()]), True),
        "split": browsing.item_page(project, browsing.ItemQuery(agreement="split")).count,
    }


def test_peoples_figures_and_default_exports_are_unchanged_by_judges_votes(people_project, tmp_path, settings):
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    before = human_figures(people_project, tmp_path, "before")
    snapshot, _ = actions.create_snapshot(people_project, ExportOptions(format="trl", test_size=0.25))
    # Judges that disagree with everyone, on every item: any leak would move the figures above.
    contrary = make_judge(people_project, "contrary")
    second = make_judge(people_project, "second")
    for item in Item.objects.filter(project=people_project).order_by("id"):
        stored_vote(contrary, item, "both_bad", consistent=False)
        stored_vote(second, item, 1)
    after = human_figures(people_project, tmp_path, "after")
    for key in before:
        assert after[key] == before[key], key
    again, created = actions.create_snapshot(people_project, ExportOptions(format="trl", test_size=0.25))
    assert not created and again.pk == snapshot.pk  # the same bytes: the same snapshot
    # ... while the judges' own votes are there for whoever asks.
    assert agreement.summary(people_project, "ai")["n_judgments"] == 2 * N_ITEMS
    assert agreement.summary(people_project, "all")["n_judgments"] == 3 * N_ITEMS + 2 * N_ITEMS


# --- exports and snapshots by source ----------------------------------------------------------------------------


def test_raw_rows_carry_source_and_the_judge(judged):
    rows = build_rows(judged, "raw", source="ai")
    assert {row["source"] for row in rows} == {"ai"}
    assert {row["annotator"] for row in rows} == {"judge:alpha", "judge:beta"}
    alpha = [row for row in rows if row["judge"] == "alpha"]
    assert len(alpha) == len(ALPHA) + 2  # the normal items and the two gold ones (raw keeps gold, marked)
    assert {(row["judge_model"], row["template_hash"]) for row in alpha} == {("model-alpha", "hash-alpha")}
    everyone = build_rows(judged, "raw", source="all")
    assert len(everyone) == 3 * N_ITEMS + len(rows)
    assert {row["judge"] for row in everyone if row["source"] != "ai"} == {""}
    people = build_rows(judged, "raw")
    assert "judge" not in people[0] and {row["source"] for row in people} == {"import"}
    assert len(people) == 3 * N_ITEMS


def test_preferences_by_source(judged):
    alpha_only = build_rows(judged, "trl", source="ai", aggregate="none")
    assert len(alpha_only) == sum(isinstance(a, int) for a in ALPHA + BETA)
    people = build_rows(judged, "trl", aggregate="none")
    assert len(people) == sum(isinstance(a, int) for plan in HUMAN_PLAN.values() for a in plan)
    assert len(build_rows(judged, "trl", source="all", aggregate="none")) == len(people) + len(alpha_only)


def test_the_ratings_format_names_judges_apart_from_people(make_project):
    project = make_project(slug="rated", kind=Kind.RATING, overlap=1, n_items=1)
    scores = {"0": {"overall": 6}, "1": {"overall": 2}}
    actions.import_judgments(
        project, parse_votes(jsonl([{"item": "item-0", "annotator": "h1", "ratings": scores}]), "jsonl")
    )
    judge = make_judge(project, "rater")
    item = Item.objects.get(project=project)
    r0, r1 = item.responses.order_by("index")
    stored_vote(judge, item, None, data={"ratings": {str(r0.pk): {"overall": 3}, str(r1.pk): {"overall": 5}}})
    (row,) = build_rows(project, "ratings", source="all")
    names = row["responses"][0]["annotators"]
    assert names[1] == "judge:rater" and names[0].startswith("ann-")
    assert row["responses"][0]["scores"] == {"overall": [6, 3]}
    (people_only,) = build_rows(project, "ratings")
    assert people_only["responses"][0]["annotators"] == names[:1]


def test_source_is_validated_everywhere(judged, researcher, api_client_for):
    with pytest.raises(ValueError, match="source"):
        ExportOptions.from_dict({"format": "trl", "source": "robots"})
    with pytest.raises(CommandError):
        call_command("export_dataset", judged.slug, "--format", "trl", "--out", "/tmp/x.jsonl", "--source", "robots")
    client = api_client_for(researcher)
    bad = client.post(reverse("api-exports", args=[judged.slug]), {"format": "trl", "source": "robots"}, format="json")
    assert bad.status_code == 400 and "source" in str(bad.json())
    assert client.get(reverse("api-agreement", args=[judged.slug]), {"source": "robots"}).status_code == 400
    with pytest.raises(ValueError):
        agreement.summary(judged, "robots")


def test_snapshot_counts_and_card_by_source(judged, researcher, api_client_for, tmp_path, settings):
    settings.ARTIFACT_ROOT = str(tmp_path)
    client = api_client_for(researcher)
    made = client.post(reverse("api-exports", args=[judged.slug]), {"format": "raw", "source": "all"}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["options"]["source"] == "all"
    assert body["counts"]["n_human_votes"] == 3 * (N_ITEMS) and body["counts"]["judges"] == [
        "judge:alpha",
        "judge:beta",
    ]
    assert body["counts"]["n_ai_votes"] == len(ALPHA) + 2 + len(BETA)
    card = client.get(reverse("api-export-card", args=[body["id"]])).content.decode()
    assert "source all" in card and "judge:alpha, judge:beta" in card
    people = client.post(reverse("api-exports", args=[judged.slug]), {"format": "trl"}, format="json").json()
    assert (people["options"]["source"], people["counts"]["n_ai_votes"], people["counts"]["judges"]) == ("human", 0, [])
    assert people["agreement"]["source"] == "human" and people["agreement"]["n_judgments"] == 3 * N_ITEMS


def test_commands_take_source(judged, tmp_path):
    out = tmp_path / "ai.jsonl"
    call_command(
        "export_dataset", judged.slug, "--format", "raw", "--out", str(out), "--source", "ai", stdout=StringIO()
    )
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {row["judge"] for row in rows} == {"alpha", "beta"}
    printed = StringIO()
    call_command("agreement", judged.slug, "--json", "--source", "ai", stdout=printed)
    result = json.loads(printed.getvalue())
    assert result["source"] == "ai" and result["n_judgments"] == len(ALPHA) + len(BETA)
    assert {p["a"] for p in result["cohen_kappa"]} | {p["b"] for p in result["cohen_kappa"]} == {
        "judge:alpha",
        "judge:beta",
    }
    assert [j["name"] for j in result["judges"]] == ["alpha", "beta", "idle"]
    assert {"name", "n_items", "agreement_with_majority", "kappa_with_majority", "position_consistency"} <= set(
        result["judges"][0]
    )
    people = StringIO()
    call_command("agreement", judged.slug, "--json", stdout=people)
    assert json.loads(people.getvalue())["n_annotators"] == len(PEOPLE)


def test_export_form_and_agreement_api_take_source(judged, researcher, api_client_for):
    client = Client()
    client.force_login(researcher)
    page = client.get(reverse("export", args=[judged.slug]), {"format": "raw", "source": "ai"})
    rows = [orjson.loads(line) for line in b"".join(page.streaming_content).splitlines()]
    assert {row["source"] for row in rows} == {"ai"}
    assert 'name="source"' in client.get(reverse("project", args=[judged.slug])).content.decode()
    api = api_client_for(researcher)
    body = api.get(reverse("api-agreement", args=[judged.slug]), {"source": "all"}).json()
    assert body["source"] == "all" and body["n_judgments"] == 3 * N_ITEMS + len(ALPHA) + len(BETA)
    assert [j["name"] for j in body["judges"]] == ["alpha", "beta", "idle"]


# --- the dashboard and the data browser -------------------------------------------------------------------------------


def test_dashboard_judges_section(judged, researcher):
    client = Client()
    client.force_login(researcher)
    page = client.get(reverse("dashboard", args=[judged.slug])).content.decode()
    assert 'id="judges"' in page and "AI judges against people" in page
    assert 'data-group="judge:alpha"' in page and 'data-series="position consistency"' in page
    assert "judge:idle" in page and "it has not voted" in page


def test_dashboard_says_why_there_is_no_judge_figure(people_project, researcher):
    client = Client()
    client.force_login(researcher)
    page = client.get(reverse("dashboard", args=[people_project.slug])).content.decode()
    assert NO_JUDGES in page
    make_judge(people_project, "quiet")  # a new judge changes the cache key
    page = client.get(reverse("dashboard", args=[people_project.slug])).content.decode()
    assert NO_VOTES in page


def test_browser_filters_by_judge_and_by_judges_disagreeing(judged, researcher, api_client_for):
    normal = list(Item.objects.filter(project=judged, purpose=Item.Purpose.NORMAL).order_by("id"))

    def ids(**params):
        query = browsing.ItemQuery.parse(params, judged)
        return [item.external_id for item in browsing.filtered_items(judged, query)]

    # Alpha answered items 0-9, two gold items, and item 10 (unparseable): every answer, parsed or not.
    assert ids(judge="alpha") == [f"item-{i}" for i in range(11)] + ["item-12", "item-13"]
    assert ids(judge="judge:beta") == [f"item-{i}" for i in range(6)]
    differ = {i for i in range(6) if label(ALPHA[i]) != label(BETA[i])}
    expected = sorted(differ | ALPHA_INCONSISTENT)
    assert ids(judges="disagree") == [normal[i].external_id for i in expected]
    assert ids(annotator="judge:beta") == [f"item-{i}" for i in range(6)]
    with pytest.raises(browsing.InvalidQuery, match="its judges are alpha, beta, idle"):
        ids(judge="gamma")
    with pytest.raises(browsing.InvalidQuery):
        ids(judges="agree")
    client = api_client_for(researcher)
    body = client.get(reverse("api-items", args=[judged.slug]), {"judges": "disagree"}).json()
    assert body["count"] == len(expected)
    assert client.get(reverse("api-items", args=[judged.slug]), {"judge": "gamma"}).status_code == 400
    page = Client()
    page.force_login(researcher)
    html = page.get(reverse("items", args=[judged.slug]), {"judge": "beta"}).content.decode()
    assert 'name="judges"' in html and '<option value="beta" selected>' in html
