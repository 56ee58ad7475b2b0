"""Agreement statistics: each one against its reference library on random data, a textbook example, and the
whole ``summary()`` through the database."""

from __future__ import annotations

import json
from itertools import combinations

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

from annotate import actions, agreement, selectors
from annotate.agreement import (
    cohen_kappa_pairs,
    fleiss_kappa,
    kendall_tau_pairs,
    krippendorff_alpha,
    percent_agreement,
)
from annotate.imports import parse_items, parse_votes
from annotate.models import Item, Judgment, Kind, Task
from tests.conftest import jsonl

# crowd-kit still uses pandas keywords that pandas 3 deprecates; its warnings are not ours.
pytestmark = pytest.mark.filterwarnings("ignore:::crowdkit")

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders × 12 units, "." missing.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def frame_from_matrix(matrix) -> pd.DataFrame:
    """A label frame from a coders × units matrix with None/NaN for missing values."""
    rows = [
        (unit, coder, value)
        for coder, values in enumerate(matrix)
        for unit, value in enumerate(values)
        if value is not None and not (isinstance(value, float) and np.isnan(value))
    ]
    return pd.DataFrame(rows, columns=["item", "annotator", "label"])


def random_matrix(seed: int, coders=6, units=60, values=5, missing=0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Correlated coders, so α is far from 0 and the comparison means something.
    truth = rng.integers(1, values + 1, units)
    noise = rng.integers(-1, 2, (coders, units)) * (rng.random((coders, units)) < 0.4)
    matrix = np.clip(truth + noise, 1, values).astype(float)
    matrix[rng.random(matrix.shape) < missing] = np.nan
    return matrix


# --- percent agreement ------------------------------------------------------------------------------------


def test_percent_agreement_by_hand():
    labels = pd.DataFrame(
        {
            "item": [1, 1, 1, 2, 2, 3],
            "annotator": ["a", "b", "c", "a", "b", "a"],
            "label": ["x", "x", "y", "x", "y", "x"],
        }
    )
    # item 1: 1 agreeing pair of 3; item 2: 0 of 1; item 3 has one label and does not count.
    assert percent_agreement(labels) == pytest.approx((1 / 3 + 0) / 2)
    assert percent_agreement(labels[labels["item"] == 3]) is None
    assert percent_agreement(labels.iloc[:0]) is None


# --- Krippendorff's alpha --------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_textbook_example(level):
    expected = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849}[level]
    labels = frame_from_matrix(KRIPPENDORFF_2011)
    ours = krippendorff_alpha(labels, level)
    assert round(ours, 3) == expected
    matrix = np.array([[np.nan if v is None else v for v in row] for row in KRIPPENDORFF_2011])
    assert ours == pytest.approx(krippendorff.alpha(matrix, level_of_measurement=level), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_matches_the_package_on_random_data_with_missing_values(seed, level):
    matrix = random_matrix(seed, coders=3 + seed, units=40 + 10 * seed)
    ours = krippendorff_alpha(frame_from_matrix(matrix), level)
    assert ours == pytest.approx(krippendorff.alpha(matrix, level_of_measurement=level), abs=1e-9)


def test_krippendorff_interval_on_real_valued_labels_and_ordinal_with_an_order():
    matrix = random_matrix(11) * 1.37 + 1000.0  # uneven spacing, far from zero
    ours = krippendorff_alpha(frame_from_matrix(matrix), "interval")
    assert ours == pytest.approx(krippendorff.alpha(matrix, level_of_measurement="interval"), abs=1e-9)

    names = ["very low", "low", "mid", "high", "very high"]
    words = [[None if v is None else names[v - 1] for v in row] for row in KRIPPENDORFF_2011]
    assert round(krippendorff_alpha(frame_from_matrix(words), "ordinal", order=names), 3) == 0.815
    assert round(krippendorff_alpha(frame_from_matrix(words), "nominal"), 3) == 0.743
    with pytest.raises(ValueError, match="numbers"):
        krippendorff_alpha(frame_from_matrix(words), "interval")
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(frame_from_matrix(words), "ratio")


def test_krippendorff_is_none_when_undefined():
    one_value = pd.DataFrame({"item": [1, 1, 2, 2], "annotator": [1, 2, 1, 2], "label": [3, 3, 3, 3]})
    assert krippendorff_alpha(one_value) is None
    nothing_pairable = pd.DataFrame({"item": [1, 2], "annotator": [1, 2], "label": [1, 2]})
    assert krippendorff_alpha(nothing_pairable, "interval") is None


# --- Fleiss' kappa ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_fleiss_matches_statsmodels_with_equal_raters(seed):
    rng = np.random.default_rng(seed)
    n_items, n_raters, k = 30 + 10 * seed, 3 + seed, 3 + seed % 2
    truth = rng.integers(0, k, n_items)
    ratings = np.where(rng.random((n_items, n_raters)) < 0.6, truth[:, None], rng.integers(0, k, (n_items, n_raters)))
    labels = pd.DataFrame(
        [(i, r, ratings[i, r]) for i in range(n_items) for r in range(n_raters)], columns=["item", "annotator", "label"]
    )
    expected = statsmodels_fleiss(aggregate_raters(ratings)[0])
    assert fleiss_kappa(labels) == pytest.approx(expected, abs=1e-9)


def test_fleiss_with_uneven_raters_uses_the_generalisation():
    # item 1: a a b; item 2: a b; item 3: b b b b; item 4 (one label) is ignored.
    labels = pd.DataFrame(
        {"item": [1, 1, 1, 2, 2, 3, 3, 3, 3, 4], "annotator": list("abcabdefgh"), "label": list("aababbbbba")}
    )
    p_i = [2 / 6, 0 / 2, 12 / 12]
    p_bar = sum(p_i) / 3
    shares = {"a": 3 / 9, "b": 6 / 9}
    p_e = sum(v * v for v in shares.values())
    assert fleiss_kappa(labels) == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-12)
    assert fleiss_kappa(labels[labels["label"] == "b"]) is None  # one category only


# --- Cohen's kappa ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_cohen_pairs_match_sklearn_on_every_pair(seed):
    rng = np.random.default_rng(seed)
    n_items, annotators = 50, [f"ann-{i}" for i in range(6)]
    truth = rng.integers(0, 3, n_items)
    rows = []
    for item in range(n_items):
        for name in rng.choice(annotators, size=rng.integers(1, 5), replace=False):
            label = truth[item] if rng.random() < 0.7 else rng.integers(0, 3)
            rows.append((item, name, ["tie", "r1", "r2"][label]))
    labels = pd.DataFrame(rows, columns=["item", "annotator", "label"])
    wide = labels.pivot(index="item", columns="annotator", values="label")
    result = cohen_kappa_pairs(labels)
    expected = []
    for a, b in combinations(sorted(annotators), 2):
        shared = wide[[a, b]].dropna()
        if len(shared) >= 2:
            expected.append((a, b, cohen_kappa_score(shared[a], shared[b]), len(shared)))
    assert [(r["a"], r["b"], r["n"]) for r in result] == [(a, b, n) for a, b, _, n in expected]
    for row, (_, _, kappa, _) in zip(result, expected):
        assert row["kappa"] == pytest.approx(kappa, abs=1e-9)


def test_cohen_pairs_with_many_annotators_and_few_shared_items():
    # Hundreds of annotators, each pair sharing a few items: the pairs are counted sparsely.
    rng = np.random.default_rng(9)
    rows = [(item, f"w{a:03d}", rng.integers(0, 3)) for item in range(150) for a in rng.choice(300, 4, replace=False)]
    labels = pd.DataFrame(rows, columns=["item", "annotator", "label"])
    result = cohen_kappa_pairs(labels, min_shared=1)
    shared = labels.merge(labels, on="item")
    shared = shared[shared["annotator_x"] < shared["annotator_y"]]
    expected = shared.groupby(["annotator_x", "annotator_y"])
    assert [(r["a"], r["b"]) for r in result] == list(expected.groups)
    for row in result[:50]:
        group = expected.get_group((row["a"], row["b"]))
        assert row["n"] == len(group)
        if len(set(group["label_x"]) | set(group["label_y"])) > 1:
            assert row["kappa"] == pytest.approx(cohen_kappa_score(group["label_x"], group["label_y"]), abs=1e-9)
        else:
            assert row["kappa"] is None


def test_cohen_pairs_skip_thin_pairs_and_give_none_when_undefined():
    labels = pd.DataFrame(
        {
            "item": [1, 1, 2, 2, 3, 3],
            "annotator": ["a", "b", "a", "b", "a", "c"],
            "label": ["x", "x", "x", "x", "x", "y"],
        }
    )
    # a-b share two items and both always said x: κ is 0/0. a-c share one item: skipped.
    assert cohen_kappa_pairs(labels) == [{"a": "a", "b": "b", "kappa": None, "n": 2}]
    assert cohen_kappa_pairs(labels, min_shared=1)[1] == {"a": "a", "b": "c", "kappa": 0.0, "n": 1}


# --- Kendall's tau -------------------------------------------------------------------------------------------


def test_kendall_tau_pairs_match_scipy():
    rng = np.random.default_rng(3)
    rows = []
    for item in range(12):
        responses = list(range(item * 10, item * 10 + rng.integers(3, 7)))
        base = rng.permutation(len(responses))
        for annotator in ("x", "y", "z"):
            if rng.random() < 0.2:
                continue
            noisy = base + rng.normal(0, 1.0, len(responses))
            ranks = pd.Series(noisy).rank(method="first").to_numpy()
            if annotator == "z":
                ranks = np.ceil(ranks / 2)  # ties in pairs
            rows += [(item, annotator, r, rank) for r, rank in zip(responses, ranks)]
    rankings = pd.DataFrame(rows, columns=["item", "annotator", "response", "rank"])
    result = {(r["a"], r["b"]): r for r in kendall_tau_pairs(rankings)}
    for a, b in combinations("xyz", 2):
        taus = []
        for _item, group in rankings.groupby("item"):
            wide = group.pivot(index="response", columns="annotator", values="rank")
            if a in wide and b in wide:
                taus.append(kendalltau(wide[a], wide[b]).statistic)
        assert result[(a, b)]["n"] == len(taus)
        assert result[(a, b)]["tau"] == pytest.approx(np.mean(taus), abs=1e-9)


# --- majority and pairwise coding ----------------------------------------------------------------------------------


def test_agreement_with_majority_leaves_the_annotator_out():
    labels = pd.DataFrame(
        {
            "item": [1, 1, 1, 2, 2, 3, 3, 3],
            "annotator": ["a", "b", "c", "a", "b", "a", "b", "c"],
            "label": ["x", "x", "y", "x", "y", "x", "y", "z"],
        }
    )
    result = agreement.agreement_with_majority(labels)
    # a: item 1 others {x, y} tie -> agrees; item 2 others {y} -> no; item 3 others {y, z} -> no.
    assert result.loc["a", "n"] == 3 and result.loc["a", "agreement"] == pytest.approx(1 / 3)
    # b: item 1 others {x, y} -> agrees; item 2 others {x} -> no; item 3 others {x, z} -> no.
    assert result.loc["b", "agreement"] == pytest.approx(1 / 3)
    # c: item 1 others {x, x} -> no; item 3 others {x, y} -> no.
    assert result.loc["c", "n"] == 2 and result.loc["c", "agreement"] == 0.0


def test_pairwise_coding_and_signed_strength():
    votes = pd.DataFrame(
        {
            "outcome_code": [0, 0, 0, 1, 2, 0],
            "winner": [10, 11, 11, 0, 0, 10],
            "strength": [3, 0, np.nan, np.nan, np.nan, 1],
            "reference": [10, 10, 10, 10, 10, 10],
        }
    )
    assert agreement.pairwise_categories(votes).tolist() == [0, 1, 1, 2, 3, 0]
    signed = agreement.signed_strength(votes).tolist()
    assert signed[:4] == [4.0, -1.0, -1.0, 0.0] and np.isnan(signed[4]) and signed[5] == 2.0
    assert agreement.identity_labels(votes).tolist() == ["r10", "r11", "r11", "tie", "both_bad", "r10"]


# --- summary() through the database ----------------------------------------------------------------------------

N_ITEMS, ANNOTATORS = 24, ["ann0", "ann1", "ann2"]


def synthetic_votes(seed=5):
    """Every annotator votes on every item: winner index 0/1, a tie or both bad, with strengths."""
    rng = np.random.default_rng(seed)
    votes = []
    better = rng.integers(0, 2, N_ITEMS)
    for i in range(N_ITEMS):
        for skill, name in zip((0.9, 0.75, 0.6), ANNOTATORS):
            u = rng.random()
            if u < 0.1:
                winner = None
            elif u < 0.15:
                winner = "both_bad"
            else:
                winner = int(better[i]) if rng.random() < skill else int(1 - better[i])
            vote = {"item": f"item-{i}", "annotator": name, "winner": winner}
            if isinstance(winner, int):
                vote["strength"] = int(rng.integers(0, 4))
            votes.append(vote)
    return votes


def reference_frames(project):
    """The same votes read model by model, independently of agreement.py, as a coders × items matrix of
    categories and of signed strengths."""
    items = list(Item.objects.filter(project=project, purpose=Item.Purpose.NORMAL).order_by("id"))
    annotators = sorted({j.annotator_id for j in Judgment.objects.filter(project=project)})
    nominal = np.full((len(annotators), len(items)), np.nan)
    signed = np.full_like(nominal, np.nan)
    for col, item in enumerate(items):
        ref = min(item.responses.values_list("id", flat=True))
        for judgment in Judgment.objects.filter(item=item, is_current=True):
            row = annotators.index(judgment.annotator_id)
            if judgment.outcome == "win":
                nominal[row, col] = 0 if judgment.winner_id == ref else 1
                s = (judgment.strength or 0) + 1
                signed[row, col] = s if judgment.winner_id == ref else -s
            else:
                nominal[row, col] = 2 if judgment.outcome == "tie" else 3
                if judgment.outcome == "tie":
                    signed[row, col] = 0
    return annotators, nominal, signed


@pytest.mark.django_db
def test_summary_equals_the_reference_libraries(make_project):
    from crowdkit.aggregation import DawidSkene

    project = make_project(n_items=N_ITEMS, overlap=3)
    actions.import_judgments(project, parse_votes(jsonl(synthetic_votes()), "jsonl"))
    result = agreement.summary(project)
    json.dumps(result, allow_nan=False)

    annotators, nominal, signed = reference_frames(project)
    assert (result["n_items"], result["n_items_with_overlap"], result["n_judgments"], result["n_annotators"]) == (
        N_ITEMS,
        N_ITEMS,
        3 * N_ITEMS,
        3,
    )
    assert result["level"] == "nominal"
    assert round(result["krippendorff_alpha"], 3) == round(
        krippendorff.alpha(nominal, level_of_measurement="nominal"), 3
    )
    assert round(result["krippendorff_alpha_strength"], 3) == round(
        krippendorff.alpha(signed, level_of_measurement="ordinal"), 3
    )
    assert round(result["fleiss_kappa"], 3) == round(statsmodels_fleiss(aggregate_raters(nominal.T.astype(int))[0]), 3)
    agree = np.mean([np.mean([a == b for a, b in combinations(col, 2)]) for col in nominal.T])
    assert round(result["percent_agreement"], 3) == round(agree, 3)

    names = selectors.pseudonyms(project, annotators)
    expected_pairs = {
        (names[annotators[a]], names[annotators[b]]): cohen_kappa_score(nominal[a], nominal[b])
        for a, b in combinations(range(3), 2)
    }
    got_pairs = {tuple(sorted((p["a"], p["b"]))): p["kappa"] for p in result["cohen_kappa"]}
    assert {tuple(sorted(k)): round(v, 3) for k, v in expected_pairs.items()} == {
        k: round(v, 3) for k, v in got_pairs.items()
    }
    assert all(p["n"] == N_ITEMS for p in result["cohen_kappa"])

    crowd = pd.DataFrame(
        [(col, annotators[row], int(nominal[row, col])) for row in range(3) for col in range(N_ITEMS)],
        columns=["task", "worker", "label"],
    )
    ds = DawidSkene(n_iter=500, tol=-np.inf).fit(crowd)  # run to convergence, as the summary's is
    errors = ds.errors_
    by_name = {row["name"]: row for row in result["annotators"]}
    assert sorted(by_name) == sorted(names.values())
    assert not any(name in json.dumps(result) for name in ANNOTATORS)  # usernames never appear
    for user_id in annotators:
        row = by_name[names[user_id]]
        assert row["n"] == N_ITEMS
        accuracy = sum(
            ds.priors_[c] * errors.loc[(user_id, c), c] for c in ds.priors_.index if (user_id, c) in errors.index
        )
        assert round(row["reliability"], 3) == round(accuracy, 3)
        assert row["gold_accuracy"] is None
        assert row["position_bias"] is None  # imported votes: the order shown is unknown
        own = nominal[annotators.index(user_id)]
        others = np.delete(nominal, annotators.index(user_id), axis=0)
        matches = []
        for col in range(N_ITEMS):
            values, counts = np.unique(others[:, col], return_counts=True)
            matches.append(own[col] in values[counts == counts.max()])
        assert round(row["agreement_with_majority"], 3) == round(float(np.mean(matches)), 3)


@pytest.mark.django_db
def test_summary_measures_position_bias_and_gold_accuracy(make_project, make_member):
    project = make_project(n_items=12, overlap=2)
    gold_items = list(Item.objects.filter(project=project).order_by("id")[:2])
    Item.objects.filter(pk=gold_items[0].pk).update(purpose=Item.Purpose.GOLD, gold={"winner": 0})
    Item.objects.filter(pk=gold_items[1].pk).update(purpose=Item.Purpose.GOLD, gold={"winner": None})
    first_picker, second_picker = make_member(project, "first"), make_member(project, "second")
    chose = {first_picker.pk: [], second_picker.pk: []}
    for annotator, choice in ((first_picker, "A"), (second_picker, "B")):
        while (task := actions.assign_next_task(annotator, project)) is not None:
            actions.record_judgment(task, {"choice": choice, "strength": 1}, f"k{task.pk}")
            chose[annotator.pk].append(task)
    # Gold votes come by import (gold items are not served as normal tasks).
    votes = [
        {"item": gold_items[0].external_id, "annotator": "first", "winner": 0, "strength": 2},
        {"item": gold_items[1].external_id, "annotator": "first", "winner": 1, "strength": 2},
        {"item": gold_items[0].external_id, "annotator": "second", "winner": 1, "strength": 2},
    ]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))

    result = agreement.summary(project)
    json.dumps(result, allow_nan=False)
    assert result["n_items"] == 10 and result["n_judgments"] == 20
    names = selectors.pseudonyms(project, [first_picker.pk, second_picker.pk])
    rows = {row["name"]: row for row in result["annotators"]}
    first_row, second_row = rows[names[first_picker.pk]], rows[names[second_picker.pk]]
    assert first_row["position_bias"] == 1.0 and second_row["position_bias"] == 0.0
    assert first_row["gold_accuracy"] == 0.5 and second_row["gold_accuracy"] == 0.0
    assert first_row["n"] == second_row["n"] == 10
    # Their agreement is whatever the random display order made of "always A" against "always B".
    same = sum(
        Judgment.objects.get(task=a).winner_id
        == Judgment.objects.get(task__item=a.item, task__annotator=second_picker).winner_id
        for a in chose[first_picker.pk]
    )
    assert result["percent_agreement"] == pytest.approx(same / 10)


@pytest.mark.django_db
def test_summary_by_criterion(make_project, make_member):
    project = make_project(n_items=6, overlap=2, criteria=["helpfulness", "harmlessness"])
    users = [make_member(project, name) for name in ("a", "b")]
    rng = np.random.default_rng(2)
    expected = {"helpfulness": [], "harmlessness": []}
    for item in Item.objects.filter(project=project).order_by("id"):
        ref, other = sorted(item.responses.values_list("id", flat=True))
        for user in users:
            answers = {}
            for criterion in expected:
                pick = rng.choice(["ref", "other", "tie"])
                winner = {"ref": ref, "other": other, "tie": None}[pick]
                answers[criterion] = {"winner": winner, "outcome": "tie" if winner is None else "win"}
                expected[criterion].append((item.pk, user.pk, pick))
            task = Task.objects.create(
                project=project,
                item=item,
                annotator=user,
                display_order=[ref, other],
                status=Task.Status.DONE,
                leased_at=item.created_at,
                lease_expires_at=item.created_at,
            )
            Judgment.objects.create(
                project=project,
                item=item,
                task=task,
                annotator=user,
                outcome="win",
                winner_id=ref,
                strength=1,
                data={"criteria": answers},
                idempotency_key=f"k{task.pk}",
            )
    result = agreement.summary(project)
    json.dumps(result, allow_nan=False)
    assert set(result["by_criterion"]) == {"helpfulness", "harmlessness"}
    for criterion, rows in expected.items():
        labels = pd.DataFrame(rows, columns=["item", "annotator", "label"])
        got = result["by_criterion"][criterion]
        assert got["n_judgments"] == 12 and got["n_items_with_overlap"] == 6
        assert got["percent_agreement"] == pytest.approx(percent_agreement(labels))
        assert got["fleiss_kappa"] == pytest.approx(fleiss_kappa(labels))
        assert got["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(labels))
    assert result["percent_agreement"] == 1.0  # the overall answers all picked the reference


def project_with_votes(kind, n_responses, votes, **fields):
    project = actions.create_project(slug=kind, kind=kind, overlap=3, **fields)
    rows = [
        {
            "id": f"q{i}",
            "prompt": f"Question {i}",
            "responses": [f"step one of {i}-{j}\nstep two" for j in range(n_responses)],
        }
        for i in range(N_ITEMS)
    ]
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", kind))
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


@pytest.mark.django_db
def test_summary_of_a_rating_project_is_ordinal_on_a_numeric_scale():
    rng = np.random.default_rng(6)
    criteria = ["helpfulness", "honesty"]
    truth = rng.integers(1, 6, (N_ITEMS, 2, 2))
    votes, matrix = [], np.full((3, N_ITEMS * 2 * 2), np.nan)
    for i in range(N_ITEMS):
        for a, name in enumerate(ANNOTATORS):
            scores = np.clip(truth[i] + rng.integers(-1, 2, (2, 2)) * (rng.random((2, 2)) < 0.5), 1, 5)
            votes.append(
                {
                    "item": f"q{i}",
                    "annotator": name,
                    "ratings": {str(r): {c: int(scores[r, ci]) for ci, c in enumerate(criteria)} for r in range(2)},
                }
            )
            matrix[a, i * 4 : i * 4 + 4] = scores.ravel()
    project = project_with_votes(Kind.RATING, 2, votes, criteria=criteria, scale={"min": 1, "max": 5})
    result = agreement.summary(project)
    json.dumps(result, allow_nan=False)
    assert (result["level"], result["n_judgments"], result["n_items_with_overlap"]) == ("ordinal", 3 * N_ITEMS, N_ITEMS)
    assert round(result["krippendorff_alpha"], 3) == round(
        krippendorff.alpha(matrix, level_of_measurement="ordinal"), 3
    )
    assert round(result["fleiss_kappa"], 3) == round(statsmodels_fleiss(aggregate_raters(matrix.T.astype(int))[0]), 3)
    assert set(result["by_criterion"]) == set(criteria)
    helpfulness = matrix.reshape(3, N_ITEMS, 2, 2)[:, :, :, 0].reshape(3, -1)
    assert round(result["by_criterion"]["helpfulness"]["krippendorff_alpha"], 3) == round(
        krippendorff.alpha(helpfulness, level_of_measurement="ordinal"), 3
    )
    kappas = sorted(round(p["kappa"], 3) for p in result["cohen_kappa"])
    assert kappas == sorted(round(cohen_kappa_score(matrix[a], matrix[b]), 3) for a, b in combinations(range(3), 2))
    assert len(result["annotators"]) == 3 and all(row["n"] == N_ITEMS for row in result["annotators"])


@pytest.mark.django_db
def test_summary_of_a_ranking_project_has_kendall_tau_and_ordinal_alpha():
    rng = np.random.default_rng(8)
    votes, ranks = [], np.full((3, N_ITEMS * 4), np.nan)
    for i in range(N_ITEMS):
        base = rng.permutation(4)
        for a, name in enumerate(ANNOTATORS):
            order = list(np.argsort(base + rng.normal(0, 1.2, 4)))  # response indices, best first
            votes.append({"item": f"q{i}", "annotator": name, "ranking": [int(r) for r in order]})
            for position, response in enumerate(order, start=1):
                ranks[a, i * 4 + response] = position
    project = project_with_votes(Kind.RANKING, 4, votes)
    result = agreement.summary(project)
    json.dumps(result, allow_nan=False)
    assert result["level"] == "ordinal" and result["n_judgments"] == 3 * N_ITEMS
    assert round(result["krippendorff_alpha"], 3) == round(krippendorff.alpha(ranks, level_of_measurement="ordinal"), 3)
    taus = sorted(round(p["tau"], 3) for p in result["kendall_tau"])
    expected = []
    for a, b in combinations(range(3), 2):
        per_item = [
            kendalltau(ranks[a, i * 4 : i * 4 + 4], ranks[b, i * 4 : i * 4 + 4]).statistic for i in range(N_ITEMS)
        ]
        expected.append(round(float(np.mean(per_item)), 3))
    assert taus == sorted(expected)
    assert all(p["n"] == N_ITEMS for p in result["kendall_tau"])


@pytest.mark.django_db
def test_summary_of_a_steps_project_is_nominal():
    rng = np.random.default_rng(10)
    labels = ["positive", "negative", "neutral"]
    votes, matrix = [], np.full((3, N_ITEMS * 2), np.nan)
    for i in range(N_ITEMS):
        truth = rng.integers(0, 3, 2)
        for a, name in enumerate(ANNOTATORS):
            chosen = np.where(rng.random(2) < 0.7, truth, rng.integers(0, 3, 2))
            votes.append({"item": f"q{i}", "annotator": name, "steps": {"0": [labels[c] for c in chosen]}})
            matrix[a, i * 2 : i * 2 + 2] = chosen
    project = project_with_votes(Kind.STEPS, 1, votes)
    result = agreement.summary(project)
    json.dumps(result, allow_nan=False)
    assert result["level"] == "nominal"
    assert round(result["krippendorff_alpha"], 3) == round(
        krippendorff.alpha(matrix, level_of_measurement="nominal"), 3
    )


@pytest.mark.django_db
@pytest.mark.parametrize("kind", [Kind.RATING, Kind.RANKING, Kind.STEPS, Kind.DEMONSTRATION])
def test_summary_of_other_kinds_without_judgments_has_none_metrics(make_project, kind):
    project = make_project(slug=f"p-{kind}", kind=kind, n_items=0)
    result = agreement.summary(project)
    json.dumps(result, allow_nan=False)
    assert result["n_judgments"] == 0 and result["percent_agreement"] is None
    assert result["fleiss_kappa"] is None and result["krippendorff_alpha"] is None
    assert result["cohen_kappa"] == [] and result["annotators"] == [] and result["by_criterion"] == {}


@pytest.mark.django_db
def test_summary_of_an_empty_pairwise_project(make_project):
    result = agreement.summary(make_project(n_items=3))
    json.dumps(result, allow_nan=False)
    assert (result["n_items"], result["n_judgments"], result["percent_agreement"], result["annotators"]) == (
        0,
        0,
        None,
        [],
    )
