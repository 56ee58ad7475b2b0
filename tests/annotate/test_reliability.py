"""Reliability models against crowd-kit and against synthetic annotators whose skills are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, spearmanr

from annotate.reliability import (
    binomial_p_values,
    dawid_skene,
    length_bias,
    majority_vote,
    noisy_bradley_terry,
    position_bias,
)

# crowd-kit still uses pandas keywords that pandas 3 deprecates; its warnings are not ours.
pytestmark = pytest.mark.filterwarnings("ignore:::crowdkit")


def crowd_labels(seed: int, n_items=2000, n_annotators=30, k=3, per_item=5, confusion=False):
    """Labels from annotators with accuracy drawn from 0.55–0.95; returns (frame, truth, accuracy).

    With ``confusion``, a wrong annotator does not pick uniformly but prefers a class of their own, so the
    confusion matrices are not symmetric.
    """
    rng = np.random.default_rng(seed)
    accuracy = rng.uniform(0.55, 0.95, n_annotators)
    truth = rng.integers(0, k, n_items)
    item = np.repeat(np.arange(n_items), per_item)
    annotator = np.concatenate([rng.choice(n_annotators, per_item, replace=False) for _ in range(n_items)])
    correct = rng.random(len(item)) < accuracy[annotator]
    wrong = (truth[item] + rng.integers(1, k, len(item))) % k
    if confusion:
        favourite = rng.integers(0, k, n_annotators)[annotator]
        wrong = np.where((favourite != truth[item]) & (rng.random(len(item)) < 0.7), favourite, wrong)
    label = np.where(correct, truth[item], wrong)
    frame = pd.DataFrame({"item": item, "annotator": [f"w{a}" for a in annotator], "label": label})
    return frame, truth, accuracy


# --- Dawid-Skene ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, confusion", [(0, False), (1, True), (2, True)])
def test_dawid_skene_matches_crowd_kit(seed, confusion):
    from crowdkit.aggregation import DawidSkene

    labels, _, _ = crowd_labels(seed, n_items=400, n_annotators=12, k=3 + seed % 2, per_item=4, confusion=confusion)
    labels["label"] = labels["label"].map(lambda v: f"class-{v}")  # any hashable label works
    ours = dawid_skene(labels, max_iter=20, tol=None)
    theirs = DawidSkene(n_iter=20, tol=-np.inf).fit(labels.rename(columns={"item": "task", "annotator": "worker"}))

    assert ours.n_iter == 20 and not ours.converged
    assert (theirs.labels_.reindex(ours.labels.index) == ours.labels).all()
    posteriors = theirs.probas_.reindex(index=ours.posteriors.index, columns=ours.posteriors.columns)
    # crowd-kit floors its final posteriors at 1e-10; nothing else differs beyond float rounding.
    np.testing.assert_allclose(posteriors.to_numpy(), ours.posteriors.to_numpy(), atol=2e-10, rtol=0)
    errors = theirs.errors_.reindex(index=ours.errors.index, columns=ours.errors.columns)
    used = errors.notna().all(axis=1)  # crowd-kit has no rows for labels an annotator never gave
    np.testing.assert_allclose(errors[used].to_numpy(), ours.errors[used].to_numpy(), atol=1e-9, rtol=0)
    assert (ours.errors[~used].to_numpy() == 0).all()
    np.testing.assert_allclose(theirs.priors_.reindex(ours.priors.index).to_numpy(), ours.priors.to_numpy(), atol=1e-9)


def test_dawid_skene_beats_majority_vote_and_recovers_skills():
    labels, truth, accuracy = crowd_labels(7)
    result = dawid_skene(labels)
    majority = majority_vote(labels)
    ds_accuracy = np.mean(result.labels.to_numpy() == truth[result.labels.index])
    mv_accuracy = np.mean(majority.to_numpy() == truth[majority.index])
    assert ds_accuracy > mv_accuracy + 0.01
    true_skill = accuracy[[int(name[1:]) for name in result.accuracy.index]]
    assert np.corrcoef(true_skill, result.accuracy.to_numpy())[0, 1] > 0.9
    # Columns of each confusion matrix are distributions over the observed label.
    sums = result.errors.groupby(level="annotator").sum().to_numpy()
    np.testing.assert_allclose(sums, 1.0)


def test_dawid_skene_stops_at_tolerance_and_log_likelihood_never_falls():
    labels, _, _ = crowd_labels(3, n_items=300)
    result = dawid_skene(labels, max_iter=500, tol=1e-6)
    assert result.converged and 20 < result.n_iter < 500
    assert result.convergence() == {"iterations": result.n_iter, "converged": True}
    capped = dawid_skene(labels, max_iter=result.n_iter - 1, tol=1e-6)
    assert capped.convergence() == {"iterations": result.n_iter - 1, "converged": False}
    assert np.all(np.diff(result.log_likelihood) > -1e-12)  # EM never decreases the likelihood
    empty = dawid_skene(labels.iloc[:0])
    assert empty.labels.empty and empty.accuracy.empty


CROWD4 = Path(__file__).parent / "data" / "crowd4.csv"


def crowd_kit_converged(labels: pd.DataFrame):
    """crowd-kit's DawidSkene with its early stop disabled (it stops when the likelihood gain falls under tol,
    dips included), run to the cap of ours."""
    from crowdkit.aggregation import DawidSkene

    from annotate.reliability import DS_MAX_ITER

    return DawidSkene(n_iter=DS_MAX_ITER, tol=-np.inf).fit(
        labels.rename(columns={"item": "task", "annotator": "worker"})
    )


def assert_same_as_crowd_kit(ours, theirs, atol=1e-4):
    assert (theirs.labels_.reindex(ours.labels.index) == ours.labels).all()
    posteriors = theirs.probas_.reindex(index=ours.posteriors.index, columns=ours.posteriors.columns).to_numpy()
    # Ours stops once no posterior moves by 1e-6 in an iteration; crowd-kit ran on to 500.
    np.testing.assert_allclose(posteriors, ours.posteriors.to_numpy(), atol=atol, rtol=0)


def test_dawid_skene_on_the_committed_4_class_crowd_is_crowd_kits_converged_answer():
    """tests/annotate/data/crowd4.csv (make_crowd4.py): 480 labels of 4 classes by 10 skewed annotators. The old
    20-iteration cap left two labels unlike the converged answer, and so unlike crowd-kit's."""
    labels = pd.read_csv(CROWD4)[["item", "annotator", "label"]]
    ours = dawid_skene(labels)
    assert ours.converged and 20 < ours.n_iter < 200
    assert_same_as_crowd_kit(ours, crowd_kit_converged(labels))
    assert sorted(ours.posteriors.columns) == ["off-topic", "safe", "unsafe", "unsure"]
    assert (dawid_skene(labels, max_iter=20, tol=None).labels != ours.labels).sum() == 2


def skewed_crowd(seed: int, k: int, n_items=200, n_annotators=8, per_item=4) -> pd.DataFrame:
    """Labels from annotators with known confusion matrices: 50–90 % on the truth, the rest spread unevenly
    (Dirichlet(0.5) over the other classes: each annotator has favourite mistakes), over skewed class shares."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(k, n_items, p=rng.dirichlet(np.full(k, 2.0)))
    confusion = np.zeros((n_annotators, k, k))  # [annotator, true, given]
    for a in range(n_annotators):
        accuracy = rng.uniform(0.5, 0.9)
        for c in range(k):
            confusion[a, c] = np.insert(rng.dirichlet(np.full(k - 1, 0.5)) * (1 - accuracy), c, accuracy)
    item = np.repeat(np.arange(n_items), per_item)
    annotator = np.concatenate([rng.choice(n_annotators, per_item, replace=False) for _ in range(n_items)])
    given = (rng.random(len(item))[:, None] > np.cumsum(confusion[annotator, truth[item]], axis=1)).sum(axis=1)
    return pd.DataFrame({"item": item, "annotator": annotator, "label": given})


@pytest.mark.parametrize("k, seed", [(2, 2), (3, 3), (4, 1), (5, 3)])
def test_dawid_skene_on_simulated_skewed_crowds_equals_crowd_kit_without_its_early_stop(k, seed):
    # Crowds on which crowd-kit's default early stop ends with labels unlike its own converged answer.
    labels = skewed_crowd(seed, k)
    ours = dawid_skene(labels)
    assert ours.converged
    assert_same_as_crowd_kit(ours, crowd_kit_converged(labels))


def test_accelerated_dawid_skene_lands_on_plain_ems_fixed_point_in_a_fraction_of_the_steps():
    """A sparse 5-class crowd (bench/aggregation.py's: 5 labels per item from annotators right 30–80 % of the
    time) on which plain EM crawls: its steps fall under 1e-6 only after ~500 iterations, and 5,000 reach the
    fixed point. SQUAREM gets there in ~130 EM steps, the likelihood rising all the way."""
    rng = np.random.default_rng(0)
    k, n_items, n_annotators, per_item = 5, 1000, 20, 5
    truth = rng.choice(k, n_items, p=rng.dirichlet(np.full(k, 2.0)))
    confusion = np.zeros((n_annotators, k, k))
    for a in range(n_annotators):
        right = rng.uniform(0.3, 0.8)
        for c in range(k):
            confusion[a, c] = np.insert(rng.dirichlet(np.full(k - 1, 0.5)) * (1 - right), c, right)
    item = np.repeat(np.arange(n_items), per_item)
    annotator = np.concatenate([rng.choice(n_annotators, per_item, replace=False) for _ in range(n_items)])
    given = (rng.random(len(item))[:, None] > np.cumsum(confusion[annotator, truth[item]], axis=1)).sum(axis=1)
    labels = pd.DataFrame({"item": item, "annotator": annotator, "label": given})

    fixed_point = dawid_skene(labels, max_iter=5000, tol=None)
    fast = dawid_skene(labels)
    assert fast.converged and fast.n_iter < 200  # observed: 132
    assert (fast.labels == fixed_point.labels).all()
    np.testing.assert_allclose(fast.posteriors.to_numpy(), fixed_point.posteriors.to_numpy(), atol=5e-6, rtol=0)
    np.testing.assert_allclose(fast.errors.to_numpy(), fixed_point.errors.to_numpy(), atol=5e-6, rtol=0)
    assert np.all(np.diff(fast.log_likelihood) > -1e-12)  # never decreases (up to float rounding)
    # Plain EM given three times the steps is still further from the fixed point than the accelerated fit.
    plain = dawid_skene(labels, max_iter=3 * fast.n_iter, tol=None)
    distance = np.abs(plain.posteriors.to_numpy() - fixed_point.posteriors.to_numpy()).max()
    assert distance > 10 * np.abs(fast.posteriors.to_numpy() - fixed_point.posteriors.to_numpy()).max()
    # A cap cuts it short, and says so.
    capped = dawid_skene(labels, max_iter=30)
    assert capped.n_iter == 30 and not capped.converged


def test_reliability_that_cannot_be_estimated_is_nan_with_the_reason():
    alone = pd.DataFrame({"item": [1, 2, 3], "annotator": "a", "label": ["x", "y", "x"]})
    result = dawid_skene(alone)
    assert result.accuracy.isna().all()
    assert result.unestimated == {"a": "only one annotator: there is no one to compare with"}
    assert result.labels.tolist() == ["x", "y", "x"]  # the labels are still the one annotator's

    # c labels items nobody else labels: their accuracy would be measured against themselves.
    shared = pd.DataFrame(
        {
            "item": [1, 1, 2, 2, 3, 3, 4, 5],
            "annotator": ["a", "b", "a", "b", "a", "b", "c", "c"],
            "label": ["x", "x", "y", "y", "x", "y", "x", "y"],
        }
    )
    result = dawid_skene(shared)
    assert result.unestimated == {"c": "shares no item with another annotator"}
    assert np.isnan(result.accuracy["c"])
    assert 0 < result.accuracy["a"] < 1 and 0 < result.accuracy["b"] < 1

    same = pd.DataFrame({"item": [1, 1, 2, 2], "annotator": ["a", "b", "a", "b"], "label": "x"})
    assert set(dawid_skene(same).unestimated) == {"a", "b"}
    assert dawid_skene(same).accuracy.isna().all()


# --- Bradley-Terry with ties ---------------------------------------------------------------------------------


def simulate_comparisons(seed, n_objects=60, n_annotators=40, per_annotator=600, nu=0.6, bias=None, skill=None):
    """Votes from the model itself: Davidson merit votes with probability skill, else biased coin flips."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 1, n_objects)
    skill = rng.uniform(0.6, 1.0, n_annotators) if skill is None else np.asarray(skill)
    bias = np.full(n_annotators, 0.5) if bias is None else np.asarray(bias)
    n = n_annotators * per_annotator
    annotator = np.repeat(np.arange(n_annotators), per_annotator)
    first = rng.integers(0, n_objects, n)
    second = (first + rng.integers(1, n_objects, n)) % n_objects
    d = scores[first] - scores[second]
    denominator = np.exp(d / 2) + np.exp(-d / 2) + nu
    merit = np.stack([np.exp(d / 2), np.exp(-d / 2), np.full(n, nu)], axis=1) / denominator[:, None]
    theta = nu / (2 + nu)
    noise = np.stack([bias[annotator] * (1 - theta), (1 - bias[annotator]) * (1 - theta), np.full(n, theta)], axis=1)
    p = np.where((rng.random(n) < skill[annotator])[:, None], merit, noise)
    u = rng.random(n)
    outcome = np.where(u < p[:, 0], "first", np.where(u < p[:, 0] + p[:, 1], "second", "tie"))
    frame = pd.DataFrame({"annotator": annotator, "first": first, "second": second, "outcome": outcome})
    return frame, scores, skill, bias


def test_bradley_terry_recovers_scores_position_bias_and_the_tie_parameter():
    bias = np.where(np.arange(40) < 10, 0.9, 0.5)
    comparisons, scores, skill, bias = simulate_comparisons(0, bias=bias, nu=0.6)
    result = noisy_bradley_terry(comparisons)
    assert result.converged
    assert spearmanr(scores[result.scores.index], result.scores).statistic > 0.95
    assert result.tie == pytest.approx(0.6, rel=0.1)
    assert result.tie_probability == pytest.approx(0.6 / 2.6, rel=0.1)
    # Between equally good responses, ties aside, annotator a picks the first shown with γ/2 + (1 − γ)q.
    true_bias = skill / 2 + (1 - skill) * bias
    estimated = result.position_bias.reindex(range(40)).to_numpy()
    assert np.abs(estimated - true_bias).mean() < 0.03
    assert estimated[:10].mean() > 0.55 and abs(estimated[10:].mean() - 0.5) < 0.02
    assert result.first_when_guessing.reindex(range(10)).mean() > 0.75  # the planted q = 0.9
    assert np.corrcoef(skill[result.skill.index], result.skill)[0, 1] > 0.8


def test_bradley_terry_without_annotator_effects_is_plain_davidson():
    comparisons, scores, _, _ = simulate_comparisons(1, n_annotators=10, skill=np.ones(10), nu=1.5)
    result = noisy_bradley_terry(comparisons, annotator_effects=False)
    assert spearmanr(scores[result.scores.index], result.scores).statistic > 0.95
    assert result.tie == pytest.approx(1.5, rel=0.1)
    # Scores on the right scale: the fitted differences track the true ones.
    slope = np.polyfit(scores[result.scores.index], result.scores.to_numpy(), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.1)
    assert (result.skill == 1.0).all()


def test_bradley_terry_without_ties_and_bad_outcomes():
    comparisons, scores, _, _ = simulate_comparisons(2, n_annotators=20, nu=1e-9)
    assert (comparisons["outcome"] != "tie").all()
    result = noisy_bradley_terry(comparisons)
    assert spearmanr(scores[result.scores.index], result.scores).statistic > 0.9
    assert result.tie_probability < 0.01
    with pytest.raises(ValueError, match="outcome"):
        noisy_bradley_terry(comparisons.assign(outcome="A"))


# --- bias diagnostics -----------------------------------------------------------------------------------------


def test_binomial_p_values_equal_scipy_binomtest():
    cases = [(k, n) for n in (1, 2, 5, 10, 31, 100, 1001) for k in range(0, n + 1, max(1, n // 7))]
    ours = binomial_p_values([k for k, _ in cases], [n for _, n in cases])
    expected = [binomtest(k, n).pvalue for k, n in cases]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-15)


def test_position_and_length_bias_per_annotator_and_overall():
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "annotator": ["fair"] * 200 + ["biased"] * 100,
            "chose_first": np.concatenate([rng.random(200) < 0.5, rng.random(100) < 0.85]),
        }
    )
    report = position_bias(frame)
    biased = report.annotators.loc["biased"]
    assert biased["n"] == 100 and biased["rate"] == biased["k"] / 100
    assert biased["p_value"] == pytest.approx(binomtest(int(biased["k"]), 100).pvalue, rel=1e-9)
    assert biased["p_value"] < 1e-6 and report.annotators.loc["fair", "p_value"] > 0.01
    k = int(frame["chose_first"].sum())
    assert report.overall == {"n": 300, "k": k, "rate": k / 300, "p_value": pytest.approx(binomtest(k, 300).pvalue)}

    longer = length_bias(pd.DataFrame({"annotator": ["x", "x", "y"], "chose_longer": [True, True, False]}))
    assert longer.annotators.loc["x", "rate"] == 1.0 and longer.annotators.loc["x", "p_value"] == 0.5
    assert longer.overall["k"] == 2 and longer.overall["p_value"] == 1.0
    empty = position_bias(frame.iloc[:0])
    assert empty.overall["rate"] is None and empty.annotators.empty
