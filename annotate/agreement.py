"""Agreement between annotators: pure functions over DataFrames of labels, fed by one query.

A **label frame** has one row per current judgment: ``item``, ``annotator``, ``label``. Every function below takes
such a frame (or arrays) and returns numbers; none of them touches the database. :func:`pairwise_vote_frame` is the
one ORM query that feeds them, and :func:`summary` puts the two together for the ``agreement`` command, the API and
the project page.

Pairwise projects are measured on the identity of the winning response, never on the display position, so two
annotators who saw A and B swapped and picked the same response agree. The label of a vote is ``"r<id>"`` (the
winning response), ``"tie"`` or ``"both_bad"``. For the chance-corrected statistics (Cohen's κ, Fleiss' κ,
Krippendorff's α) the winning response is named relative to the item's **reference response**, the one with the
lower id: ``reference`` / ``other`` / ``tie`` / ``both_bad``. That is the same partition of every item's votes
(two votes agree under one naming exactly when they agree under the other), but the categories are shared across
items, so chance agreement is computed over a meaningful distribution: with item-specific ``"r<id>"`` categories
every label would look rare and κ and α would collapse into raw agreement.

Pairwise votes also have a **signed strength scale** for an ordinal α: a win for the reference response with
strength s (0–3) is +(s + 1), a win for the other response −(s + 1), a tie 0. "Both bad" has no place on that scale
and is left out; a win without a strength (imported votes may lack one) counts as strength 0, "negligibly better
or unsure".

Levels of measurement follow the data: nominal for choices and categories, ordinal for numeric scales and for the
signed strength, interval when distances between scale points are meaningful.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from django.db.models import Case, F, IntegerField, Value, When
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast
from django.db.models.lookups import Exact

from . import sql
from .models import Item, Judgment, Kind, Project, Response
from .selectors import HUMAN, by_source, check_source, pseudonyms

LEVELS = ("nominal", "ordinal", "interval")

# Pairwise categories relative to the item's reference response (the one with the lower id).
REFERENCE, OTHER, TIE, BOTH_BAD = 0, 1, 2, 3
PAIRWISE_CATEGORIES = ("reference", "other", "tie", "both_bad")
OUTCOME_CODES = {Judgment.Outcome.WIN: 0, Judgment.Outcome.TIE: 1, Judgment.Outcome.BOTH_BAD: 2}


# --- helpers ----------------------------------------------------------------------------------------------


def _float(value) -> float | None:
    """A JSON-safe number: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..k-1 of ``values`` and the k distinct values (in order of first appearance)."""
    codes, uniques = pd.factorize(np.asarray(values) if not isinstance(values, pd.Series) else values, sort=False)
    return codes.astype(np.int64, copy=False), np.asarray(uniques)


def _unit_value_counts(items, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every distinct (unit, value) pair: its unit code, value code and count, as three aligned arrays.

    Units and values are factorized first, so labels of any hashable type work.
    """
    unit, units = _codes(items)
    value, uniques = _codes(values)
    size = len(units) * len(uniques)
    key = unit * len(uniques) + value
    if size <= 8 * len(key) + 1024:
        # Few categories: one counting pass over a dense table beats sorting a million keys.
        counts = np.bincount(key, minlength=size)
        keys = np.flatnonzero(counts)
        count = counts[keys]
    else:
        keys, count = np.unique(key, return_counts=True)
    return keys // len(uniques), keys % len(uniques), count


def _pairs_within_groups(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j, of rows that share a group, for rows already sorted by group."""
    n = len(group)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    boundary = np.flatnonzero(np.diff(group)) + 1
    starts = np.concatenate(([0], boundary))
    ends = np.concatenate((boundary, [n]))
    sizes = ends - starts
    end_of_row = np.repeat(ends, sizes)
    partners = end_of_row - np.arange(n) - 1  # rows after this one in its group
    left = np.repeat(np.arange(n), partners)
    run_start = np.repeat(np.cumsum(partners) - partners, partners)
    right = left + 1 + (np.arange(len(left)) - run_start)
    return left, right


# --- agreement statistics (pure) ---------------------------------------------------------------------------


def percent_agreement(labels: pd.DataFrame) -> float | None:
    """Mean over items with two or more labels of the share of agreeing annotator pairs.

    For an item with n labels of which n_k have category k, that share is Σ n_k(n_k − 1) / (n(n − 1)).
    None when no item has two labels.

    >>> percent_agreement(pd.DataFrame({"item": [1, 1, 2, 2], "annotator": [1, 2, 1, 2], "label": list("aaab")}))
    0.5
    """
    if labels.empty:
        return None
    unit, _, count = _unit_value_counts(labels["item"], labels["label"])
    n = np.bincount(unit, weights=count)
    agreeing = np.bincount(unit, weights=count * (count - 1.0))
    multi = n >= 2
    if not multi.any():
        return None
    return float(np.mean(agreeing[multi] / (n[multi] * (n[multi] - 1))))


def fleiss_kappa(labels: pd.DataFrame) -> float | None:
    """Fleiss' κ over the items that have two or more labels.

    Items may have different numbers of raters: this uses the standard generalisation (Fleiss 1971's formulas
    with per-item rater counts), P_i = Σ_k n_ik(n_ik − 1) / (n_i(n_i − 1)), P̄ the mean of P_i, category shares
    p_k = Σ_i n_ik / Σ_i n_i, P_e = Σ_k p_k², κ = (P̄ − P_e) / (1 − P_e). With the same number of raters on every
    item this is exactly ``statsmodels.stats.inter_rater.fleiss_kappa``. Items with a single label carry no
    information about agreement and are left out of both P̄ and p_k. None when no item has two labels or when
    every label is the same category (P_e = 1).
    """
    if labels.empty:
        return None
    unit, value, count = _unit_value_counts(labels["item"], labels["label"])
    n = np.bincount(unit, weights=count)
    multi = n >= 2
    if not multi.any():
        return None
    agreeing = np.bincount(unit, weights=count * (count - 1.0))
    p_bar = np.mean(agreeing[multi] / (n[multi] * (n[multi] - 1)))
    keep = multi[unit]
    shares = np.bincount(value[keep], weights=count[keep]) / n[multi].sum()
    p_e = float(np.sum(shares**2))
    if p_e >= 1.0:
        return None
    return _float((p_bar - p_e) / (1.0 - p_e))


def krippendorff_alpha(labels: pd.DataFrame, level: str = "nominal", order=None) -> float | None:
    """Krippendorff's α for any number of annotators per item, with missing data.

    ``level`` is ``"nominal"``, ``"ordinal"`` or ``"interval"``. Ordinal and interval labels must be numbers,
    unless ``order`` lists the ordinal categories from lowest to highest. Only items with two or more labels
    (pairable values) count. None when α is undefined (fewer than two pairable values, or a single value).

    Computed without a coincidence matrix: for the nominal metric α = 1 − (n − 1)(n − Σ_c o_cc) / (n² − Σ_c n_c²);
    for the interval metric the disagreements are sums of squared differences, which per unit are
    2(m_u Σx² − (Σx)²); the ordinal metric δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)² equals the interval metric on
    the values' mid-ranks M_v = Σ_{g≤v} n_g − n_v/2 (n_g counted over pairable values), so ordinal α is interval α
    on mid-ranks. Matches the ``krippendorff`` package; Krippendorff's (2011) example gives 0.743, 0.815, 0.849.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}.")
    if labels.empty:
        return None
    values = labels["label"]
    if order is not None:
        ranks = {v: i for i, v in enumerate(order)}
        unknown = set(pd.unique(values)) - ranks.keys()
        if unknown:
            raise ValueError(f"labels not in order: {sorted(map(str, unknown))[:5]}")
        values = values.map(ranks)
    unit, _ = _codes(labels["item"])
    m = np.bincount(unit)
    pairable = m[unit] >= 2
    if pairable.sum() < 2:
        return None
    unit = unit[pairable]

    if level == "nominal":
        units, value_code, count = _unit_value_counts(unit, np.asarray(values)[pairable])
        m_units = np.bincount(units, weights=count)
        n = float(count.sum())
        n_c = np.bincount(value_code, weights=count)
        o_cc = float(np.sum(count * (count - 1.0) / (m_units[units] - 1.0)))
        expected = n * n - float(np.sum(n_c**2))
        if expected <= 0:
            return None
        return _float(1.0 - (n - 1.0) * (n - o_cc) / expected)

    x = pd.to_numeric(pd.Series(np.asarray(values)[pairable]), errors="coerce").to_numpy(dtype=float)
    if np.isnan(x).any():
        raise ValueError(f"{level} labels must be numbers (or give the ordinal categories an order).")
    if level == "ordinal":
        distinct, inverse, n_v = np.unique(x, return_inverse=True, return_counts=True)
        mid_ranks = np.cumsum(n_v) - n_v / 2.0
        x = mid_ranks[inverse]
    # Centre first: the sums of squares below then lose no precision to a large mean.
    x = x - x.mean()
    n = float(len(x))
    s1 = np.bincount(unit, weights=x)
    s2 = np.bincount(unit, weights=x * x)
    m_units = np.bincount(unit).astype(float)
    has = m_units >= 2
    observed = np.sum(2.0 * (m_units[has] * s2[has] - s1[has] ** 2) / (m_units[has] - 1.0))
    expected = 2.0 * (n * float(np.sum(x * x)) - float(np.sum(x)) ** 2)
    if expected <= 0:
        return None
    return _float(1.0 - (n - 1.0) * observed / expected)


def cohen_kappa_pairs(labels: pd.DataFrame, min_shared: int = 2) -> list[dict]:
    """Cohen's κ for every pair of annotators over the items both labelled.

    Returns ``[{"a", "b", "kappa", "n"}, ...]`` sorted by (a, b), with ``a < b`` in the order of the annotator
    values, ``n`` the number of shared items; pairs sharing fewer than ``min_shared`` items are skipped. κ is
    computed as ``sklearn.metrics.cohen_kappa_score`` does on the shared items (marginals from those items only);
    it is None when both annotators used one and the same category throughout (κ is 0/0 then). Each (item,
    annotator) is expected once, as current judgments are.
    """
    if labels.empty:
        return []
    item, _ = _codes(labels["item"])
    annotator, annotators = _codes(labels["annotator"])
    value, uniques = _codes(labels["label"])
    # Sort annotators by value so that "a < b" follows their natural order.
    rank = np.argsort(np.argsort(annotators, kind="stable"), kind="stable") if len(annotators) else annotators
    annotator = rank[annotator]
    annotators = np.sort(annotators, kind="stable")
    order = np.lexsort((annotator, item))
    item, annotator, value = item[order], annotator[order], value[order]
    left, right = _pairs_within_groups(item)
    if not len(left):
        return []
    n_annotators, k = len(annotators), len(uniques)
    pair_key = annotator[left] * n_annotators + annotator[right]
    n_keys = n_annotators * n_annotators
    if n_keys * k <= 8 * len(pair_key) + 4096:
        # Up to a few thousand annotators: count straight into a dense (a, b) table; its non-empty cells
        # come out already sorted by (a, b).
        pair = pair_key
    else:
        pair_keys, pair = np.unique(pair_key, return_inverse=True)
        n_keys = len(pair_keys)
    eq = (value[left] == value[right]).astype(float)
    n = np.bincount(pair, minlength=n_keys).astype(float)
    agree = np.bincount(pair, weights=eq, minlength=n_keys)
    marg_a = np.bincount(pair * k + value[left], minlength=n_keys * k).reshape(n_keys, k)
    marg_b = np.bincount(pair * k + value[right], minlength=n_keys * k).reshape(n_keys, k)
    keep = np.flatnonzero(n >= max(min_shared, 1))
    n, agree = n[keep], agree[keep]
    p_o = agree / n
    p_e = np.einsum("ij,ij->i", marg_a[keep], marg_b[keep]) / (n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(p_e < 1.0, (p_o - p_e) / (1.0 - p_e), np.nan)
    keys = keep if pair is pair_key else pair_keys[keep]
    a = annotators[keys // n_annotators].tolist()
    b = annotators[keys % n_annotators].tolist()
    kappas = np.where(np.isnan(kappa), None, kappa).tolist()
    return [{"a": x, "b": y, "kappa": kp, "n": nn} for x, y, kp, nn in zip(a, b, kappas, n.astype(int).tolist())]


def cohen_kappa(a: list, b: list) -> float | None:
    """Cohen's κ of two equally long label lists, ``a[i]`` and ``b[i]`` labels of the same unit: the one pair of
    :func:`cohen_kappa_pairs`. None when there is no label, or when both used one and the same category
    throughout (κ is 0/0)."""
    n = len(a)
    labels = pd.DataFrame({"item": [*range(n), *range(n)], "annotator": [0] * n + [1] * n, "label": [*a, *b]})
    pairs = cohen_kappa_pairs(labels, min_shared=1)
    return pairs[0]["kappa"] if pairs else None


def _plain(value):
    """numpy scalars to Python ones, so results serialise as JSON."""
    return value.item() if isinstance(value, np.generic) else value


def kendall_tau_pairs(rankings: pd.DataFrame, min_shared: int = 1) -> list[dict]:
    """Kendall's τ-b between every pair of annotators who ranked the same items, averaged over shared items.

    ``rankings`` has one row per ranked response: ``item``, ``annotator``, ``response``, ``rank`` (1 = best;
    tied responses share a rank). Per shared item τ-b is computed over the responses both ranked, as
    ``scipy.stats.kendalltau`` does; items where either annotator tied everything (τ undefined) are skipped.
    Returns ``[{"a", "b", "tau", "n"}, ...]`` sorted by (a, b), ``n`` the number of items averaged, keeping
    pairs with at least ``min_shared`` of them.
    """
    if rankings.empty:
        return []
    item, _ = _codes(rankings["item"])
    annotator, annotators = _codes(rankings["annotator"])
    response, _ = _codes(rankings["response"])
    rank_of = np.argsort(np.argsort(annotators, kind="stable"), kind="stable")
    annotator = rank_of[annotator]
    annotators = np.sort(annotators, kind="stable")
    rank = rankings["rank"].to_numpy(dtype=float)

    # Every pair of responses one annotator ranked on one item, with the sign of their order.
    order = np.lexsort((response, annotator, item))
    item, annotator, response, rank = item[order], annotator[order], response[order], rank[order]
    group = item * len(annotators) + annotator
    i, j = _pairs_within_groups(group)
    pairs = pd.DataFrame(
        {
            "item": item[i],
            "annotator": annotator[i],
            "lo": response[i],
            "hi": response[j],
            "sign": np.sign(rank[i] - rank[j]),
        }
    ).sort_values(["item", "lo", "hi", "annotator"], kind="stable")
    # The same response pair ranked by two annotators: one term of each one's τ.
    key = pd.factorize(pd.MultiIndex.from_frame(pairs[["item", "lo", "hi"]]))[0]
    left, right = _pairs_within_groups(key)
    if not len(left):
        return []
    sign = pairs["sign"].to_numpy()
    a = pairs["annotator"].to_numpy()[left]
    b = pairs["annotator"].to_numpy()[right]
    per_item = (
        pd.DataFrame(
            {
                "item": pairs["item"].to_numpy()[left],
                "a": a,
                "b": b,
                "sab": sign[left] * sign[right],
                "saa": sign[left] ** 2,
                "sbb": sign[right] ** 2,
            }
        )
        .groupby(["a", "b", "item"], sort=False)[["sab", "saa", "sbb"]]
        .sum()
    )
    denominator = np.sqrt(per_item["saa"] * per_item["sbb"])
    tau = (per_item["sab"] / denominator.where(denominator > 0)).dropna()
    grouped = tau.groupby(level=["a", "b"]).agg(["mean", "size"]).reset_index()
    grouped = grouped[grouped["size"] >= min_shared].sort_values(["a", "b"])
    return [
        {"a": _plain(annotators[ai]), "b": _plain(annotators[bi]), "tau": float(t), "n": int(nn)}
        for ai, bi, t, nn in zip(grouped["a"], grouped["b"], grouped["mean"], grouped["size"])
    ]


def agreement_with_majority(labels: pd.DataFrame) -> pd.DataFrame:
    """Per annotator: how often their label is a most frequent label among the *other* annotators of the item.

    Leave-one-out, so an annotator does not vote for themselves; when the others split evenly, agreeing with any
    of the top labels counts. Only items with at least one other label count. Returns a frame indexed by
    annotator with ``n`` (items compared) and ``agreement`` (share).
    """
    columns = ["n", "agreement"]
    if labels.empty:
        return pd.DataFrame(columns=columns)
    item, _ = _codes(labels["item"])
    value, uniques = _codes(labels["label"])
    k = len(uniques)
    n_items = int(item.max()) + 1
    counts = np.bincount(item * k + value, minlength=n_items * k).reshape(n_items, k)
    own = counts[item, value] - 1
    # The others' best count: the item's top count, unless that is the annotator's own label, whose count is one
    # less without them — then the larger of that and the runner-up.
    top = np.sort(counts, axis=1)[:, ::-1] if k > 1 else np.hstack([counts, np.zeros_like(counts)])
    top1, top2 = top[item, 0], top[item, 1]
    others_best = np.where(counts[item, value] == top1, np.maximum(own, top2), top1)
    others = counts.sum(axis=1)[item] - 1
    compared = others >= 1
    frame = pd.DataFrame(
        {
            "annotator": labels["annotator"].to_numpy()[compared],
            "agree": (own >= others_best)[compared] & (own >= 1)[compared],
        }
    )
    grouped = frame.groupby("annotator")["agree"].agg(["size", "mean"])
    grouped.columns = columns
    return grouped


# --- pairwise votes -----------------------------------------------------------------------------------------


def pairwise_categories(votes: pd.DataFrame) -> np.ndarray:
    """REFERENCE / OTHER / TIE / BOTH_BAD codes of pairwise votes (columns ``outcome_code``, ``winner``,
    ``reference``), ``outcome_code`` being 0 win, 1 tie, 2 both bad."""
    outcome = votes["outcome_code"].to_numpy()
    is_reference = votes["winner"].to_numpy() == votes["reference"].to_numpy()
    return np.where(outcome == 0, np.where(is_reference, REFERENCE, OTHER), np.where(outcome == 1, TIE, BOTH_BAD))


def signed_strength(votes: pd.DataFrame) -> pd.Series:
    """The signed strength of each pairwise vote (see the module docstring); NaN for "both bad"."""
    outcome = votes["outcome_code"].to_numpy()
    strength = votes["strength"].to_numpy(dtype=float)
    magnitude = np.where(np.isnan(strength), 0.0, strength) + 1.0
    sign = np.where(votes["winner"].to_numpy() == votes["reference"].to_numpy(), 1.0, -1.0)
    value = np.where(outcome == 0, sign * magnitude, np.where(outcome == 1, 0.0, np.nan))
    return pd.Series(value, index=votes.index)


def identity_labels(votes: pd.DataFrame) -> pd.Series:
    """``"r<id>"`` / ``"tie"`` / ``"both_bad"`` labels of pairwise votes (for display and exports)."""
    names = np.array(["", "tie", "both_bad"], dtype=object)
    outcome = votes["outcome_code"].to_numpy()
    winner = votes["winner"].to_numpy()
    text = np.where(outcome == 0, "r" + pd.Series(winner).astype(str).to_numpy(dtype=object), names[outcome])
    return pd.Series(text, index=votes.index)


# --- the project summary (pure) -----------------------------------------------------------------------------


def pairwise_summary(votes: pd.DataFrame, gold: pd.DataFrame | None = None, criteria=()) -> dict:
    """Every agreement number of a pairwise project from its vote frame (see :func:`pairwise_vote_frame`).

    ``gold`` has one row per gold item: ``item``, ``outcome_code`` and ``winner`` (the researcher's answer).
    Annotators are named by their ids here; :func:`summary` swaps in pseudonyms. Metrics are computed on normal
    items; gold accuracy on gold items.
    """
    from .reliability import dawid_skene

    normal = votes[votes["is_gold"] == 0]
    labels = pd.DataFrame(
        {"item": normal["item"], "annotator": normal["annotator"], "label": pairwise_categories(normal)}
    )
    strength = pd.DataFrame(
        {"item": normal["item"], "annotator": normal["annotator"], "label": signed_strength(normal)}
    )
    strength = strength[strength["label"].notna()]
    result = label_summary(labels)
    result["krippendorff_alpha"] = krippendorff_alpha(labels, "nominal")
    result["level"] = "nominal"
    result["krippendorff_alpha_strength"] = krippendorff_alpha(strength, "ordinal")
    result["by_criterion"] = {}
    for name in criteria:
        answered = normal[normal[f"{name}:outcome_code"] >= 0]
        renamed = pd.DataFrame(
            {
                "outcome_code": answered[f"{name}:outcome_code"],
                "winner": answered[f"{name}:winner"],
                "reference": answered["reference"],
            }
        )
        criterion = pd.DataFrame(
            {"item": answered["item"], "annotator": answered["annotator"], "label": pairwise_categories(renamed)}
        )
        summary_ = label_summary(criterion)
        del summary_["cohen_kappa"]
        summary_["krippendorff_alpha"] = krippendorff_alpha(criterion, "nominal")
        summary_["level"] = "nominal"
        result["by_criterion"][name] = summary_

    annotators = pd.DataFrame(index=pd.Index(sorted(votes["annotator"].unique().tolist()), name="annotator"))
    annotators["n"] = normal.groupby("annotator").size().reindex(annotators.index, fill_value=0)
    annotators["agreement_with_majority"] = agreement_with_majority(labels)["agreement"].reindex(annotators.index)
    annotators["gold_accuracy"] = gold_accuracy(votes[votes["is_gold"] == 1], gold).reindex(annotators.index)
    notes = {}
    if len(labels):
        model = dawid_skene(labels)
        annotators["reliability"] = model.accuracy.reindex(annotators.index)
        notes = model.unestimated
    else:
        annotators["reliability"] = np.nan
    seen = normal[(normal["imported"] == 0) & (normal["outcome_code"] == 0)]
    chose_first = seen["winner"] == seen["first"]
    annotators["position_bias"] = chose_first.groupby(seen["annotator"]).mean().reindex(annotators.index)
    result["annotators"] = [
        {
            "annotator": int(row.Index),
            "n": int(row.n),
            "agreement_with_majority": _float(row.agreement_with_majority),
            "gold_accuracy": _float(row.gold_accuracy),
            "reliability": _float(row.reliability),
            "reliability_note": notes.get(row.Index, "no votes on normal items") if pd.isna(row.reliability) else None,
            "position_bias": _float(row.position_bias),
        }
        for row in annotators.itertuples()
    ]
    return result


def label_summary(labels: pd.DataFrame) -> dict:
    """Counts, raw agreement and the κ statistics of a label frame."""
    per_item = labels.groupby("item").size() if len(labels) else pd.Series(dtype=int)
    return {
        "n_items": int(len(per_item)),
        "n_items_with_overlap": int((per_item >= 2).sum()),
        "n_judgments": int(len(labels)),
        "n_annotators": int(labels["annotator"].nunique()),
        "percent_agreement": percent_agreement(labels),
        "cohen_kappa": cohen_kappa_pairs(labels),
        "fleiss_kappa": fleiss_kappa(labels),
    }


def gold_accuracy(votes: pd.DataFrame, gold: pd.DataFrame | None) -> pd.Series:
    """Per annotator, the share of their votes on gold items that match the researcher's answer.

    A gold answer is a winning response, a tie or "both bad" (``outcome_code`` and ``winner`` columns); a vote
    matches when its outcome is the same and, for a win, so is the winner. Gold items without an answer are
    left out. Empty when there are no gold votes.
    """
    if gold is None or gold.empty or votes.empty:
        return pd.Series(dtype=float)
    merged = votes[["item", "annotator", "outcome_code", "winner"]].merge(
        gold[["item", "outcome_code", "winner"]], on="item", suffixes=("", "_gold")
    )
    match = (merged["outcome_code"] == merged["outcome_code_gold"]) & (
        (merged["outcome_code"] != 0) | (merged["winner"] == merged["winner_gold"])
    )
    return match.groupby(merged["annotator"]).mean()


# --- the query ----------------------------------------------------------------------------------------------

VOTE_COLUMNS = ["item", "annotator", "is_gold", "outcome_code", "winner", "strength", "first", "second", "imported"]


def pairwise_vote_frame(project: Project, criteria=(), source: str = HUMAN, items=None) -> pd.DataFrame:
    """One row per current judgment of ``project`` on its normal and gold items, from one query: people's votes
    unless ``source`` says ``ai`` (AI judges') or ``all``; ``items``, a queryset of item ids, narrows it.

    Columns: ``item``, ``annotator``, ``is_gold`` (0/1), ``outcome_code`` (0 win, 1 tie, 2 both bad), ``winner``
    (response id, 0 when none), ``strength`` (NaN when none), ``first`` and ``second`` (the response ids in the
    order this annotator saw them), ``imported`` (0/1: votes made elsewhere, whose display order is unknown)
    and ``reference`` (the lower response id). For each name in ``criteria``: ``<name>:outcome_code`` (-1 when
    the judgment has no answer for it) and ``<name>:winner`` from ``data["criteria"]``.

    The outcome is coded and the display order read out of its JSON in SQL, so every row comes back as a tuple
    of numbers and the frame is built by numpy in one call rather than by Python per row.
    """
    display = "task__display_order"
    # Item purposes are tested with "item_id IN (few ids)" rather than a join with the items: gold and
    # qualification items are a handful, so each test is a probe of a tiny hash.
    gold = Item.objects.filter(project=project, purpose=Item.Purpose.GOLD).values("id")
    other = (
        Item.objects.filter(project=project).exclude(purpose__in=[Item.Purpose.NORMAL, Item.Purpose.GOLD]).values("id")
    )
    annotations = {
        "is_gold_": Case(When(item_id__in=gold, then=Value(1)), default=Value(0), output_field=IntegerField()),
        "outcome_code_": _code_case(F("outcome"), OUTCOME_CODES),
        "first_": Cast(KeyTextTransform("0", display), IntegerField()),
        "second_": Cast(KeyTextTransform("1", display), IntegerField()),
        "imported_": _code_case(F("source"), {Judgment.Source.IMPORT: 1}),
    }
    columns = list(VOTE_COLUMNS)
    for index, name in enumerate(criteria):
        answer = KeyTransform(name, KeyTransform("criteria", "data"))
        annotations[f"criterion{index}_outcome"] = _code_case(KeyTextTransform("outcome", answer), OUTCOME_CODES, -1)
        annotations[f"criterion{index}_winner"] = Cast(KeyTextTransform("winner", answer), IntegerField())
        columns += [f"{name}:outcome_code", f"{name}:winner"]
    fields = ["item_id", "annotator_id", "is_gold_", "outcome_code_", "winner_id", "strength", "first_", "second_"]
    fields += ["imported_"] + [key for key in annotations if key.startswith("criterion")]
    judgments = by_source(Judgment.objects.filter(project=project, is_current=True), source)
    if items is not None:
        judgments = judgments.filter(item_id__in=items)
    queryset = judgments.exclude(item_id__in=other).annotate(**annotations).order_by().values_list(*fields)
    table = sql.numeric_rows(queryset, fields)
    frame = {}
    for column, values in zip(columns, table.T):
        missing = values == sql.NULL_INT
        if column == "strength":
            frame[column] = np.where(missing, np.nan, values)
        else:
            frame[column] = np.where(missing, -1 if column.endswith("outcome_code") else 0, values)
    frame["reference"] = np.minimum(frame["first"], frame["second"])
    return pd.DataFrame(frame, columns=[*columns, "reference"])


def _code_case(expression, codes: dict, default: int = 0):
    """SQL ``CASE expression WHEN value THEN code ... ELSE default END``."""
    whens = [When(Exact(expression, Value(str(value))), then=Value(code)) for value, code in codes.items()]
    return Case(*whens, default=Value(default), output_field=IntegerField())


def gold_answer_frame(project: Project) -> pd.DataFrame:
    """The researcher's answers to the project's gold items: ``item``, ``outcome_code``, ``winner``.

    ``Item.gold`` is ``{"winner": response index}``, ``{"winner": null}`` for a tie or ``{"winner": "both_bad"}``
    (the import format of votes); items without a usable answer are left out.
    """
    gold = dict(
        Item.objects.filter(project=project, purpose=Item.Purpose.GOLD, gold__isnull=False).values_list("id", "gold")
    )
    responses = {
        (item, index): response
        for item, index, response in Response.objects.filter(item_id__in=list(gold)).values_list(
            "item_id", "index", "id"
        )
    }
    rows = []
    for item, answer in gold.items():  # one row per gold item: a handful, not the votes
        if not isinstance(answer, dict) or "winner" not in answer:
            continue
        winner = answer["winner"]
        if winner is None:
            rows.append((item, OUTCOME_CODES[Judgment.Outcome.TIE], 0))
        elif winner == Judgment.Outcome.BOTH_BAD:
            rows.append((item, OUTCOME_CODES[Judgment.Outcome.BOTH_BAD], 0))
        elif isinstance(winner, int) and (item, winner) in responses:
            rows.append((item, OUTCOME_CODES[Judgment.Outcome.WIN], responses[(item, winner)]))
    return pd.DataFrame(rows, columns=["item", "outcome_code", "winner"])


def pairwise_label_frame(project: Project, source: str = HUMAN) -> pd.DataFrame:
    """The label frame of a pairwise project's normal items: item, annotator and ``"r<id>"``/tie/both_bad."""
    votes = pairwise_vote_frame(project, source=source)
    votes = votes[votes["is_gold"] == 0]
    return pd.DataFrame({"item": votes["item"], "annotator": votes["annotator"], "label": identity_labels(votes)})


# --- other kinds: answers kept in Judgment.data ---------------------------------------------------------------


def answer_rows(project: Project, source: str = HUMAN, items=None) -> list[tuple[int, int, dict]]:
    """(item, annotator, data) of the current judgments on the project's normal items, from one query: people's
    unless ``source`` says ``ai`` or ``all``; ``items``, a queryset of item ids, narrows it."""
    judgments = by_source(
        Judgment.objects.filter(project=project, is_current=True, item__purpose=Item.Purpose.NORMAL), source
    )
    if items is not None:
        judgments = judgments.filter(item_id__in=items)
    return list(judgments.order_by().values_list("item_id", "annotator_id", "data"))


def rating_frame(rows) -> pd.DataFrame:
    """One row per score: ``item``, ``annotator``, ``response``, ``criterion``, ``label``, from
    ``data["ratings"] = {"<response id>": {criterion: score}}``."""
    # The scores are nested JSON, so they are unpacked here in Python; pairwise projects, which have no such
    # nesting, are read entirely in SQL (see pairwise_vote_frame).
    flat = [
        (item, annotator, int(response), criterion, score)
        for item, annotator, data in rows
        for response, scores in ((data or {}).get("ratings") or {}).items()
        for criterion, score in scores.items()
    ]
    return pd.DataFrame(flat, columns=["item", "annotator", "response", "criterion", "label"])


def ranking_frame(rows) -> pd.DataFrame:
    """One row per ranked response: ``item``, ``annotator``, ``response``, ``rank`` (1 = best; tied responses
    share a rank), from ``data["ranking"] = [[id], [id, id], ...]`` (groups, best first)."""
    flat = [
        (item, annotator, int(response), position)
        for item, annotator, data in rows
        for position, group in enumerate((data or {}).get("ranking") or [], start=1)
        for response in (group if isinstance(group, list) else [group])
    ]
    return pd.DataFrame(flat, columns=["item", "annotator", "response", "rank"])


def steps_frame(rows) -> pd.DataFrame:
    """One row per labelled step: ``item``, ``annotator``, ``response``, ``step``, ``label``, from
    ``data["steps"] = {"<response id>": [label per step]}``."""
    flat = [
        (item, annotator, int(response), step, label)
        for item, annotator, data in rows
        for response, labels in ((data or {}).get("steps") or {}).items()
        for step, label in enumerate(labels)
    ]
    return pd.DataFrame(flat, columns=["item", "annotator", "response", "step", "label"])


def unit_labels(frame: pd.DataFrame, unit_columns: list[str]) -> pd.DataFrame:
    """A label frame whose ``item`` is the unit that is labelled (e.g. one response's score on one criterion)."""
    if frame.empty:
        return pd.DataFrame(columns=["item", "annotator", "label"])
    unit = pd.MultiIndex.from_frame(frame[unit_columns]).factorize()[0]
    return pd.DataFrame({"item": unit, "annotator": frame["annotator"].to_numpy(), "label": frame["label"].to_numpy()})


def judgment_counts(rows) -> dict:
    """Counts over judgments (not over the units they label)."""
    frame = pd.DataFrame([(item, annotator) for item, annotator, _ in rows], columns=["item", "annotator"])
    per_item = frame.groupby("item").size()
    return {
        "n_items": int(len(per_item)),
        "n_items_with_overlap": int((per_item >= 2).sum()),
        "n_judgments": int(len(frame)),
        "n_annotators": int(frame["annotator"].nunique()),
    }


def unit_summary(labels: pd.DataFrame, level: str) -> dict:
    """Raw agreement, Cohen's and Fleiss' κ (on the labels as categories) and Krippendorff's α at ``level``."""
    return {
        "percent_agreement": percent_agreement(labels) if len(labels) else None,
        "cohen_kappa": cohen_kappa_pairs(labels),
        "fleiss_kappa": fleiss_kappa(labels),
        "krippendorff_alpha": krippendorff_alpha(labels, level),
        "level": level,
    }


NO_RELIABILITY_MODEL = "estimated for pairwise projects only (Dawid-Skene over their votes)"


def annotator_rows(labels: pd.DataFrame, n_judgments: pd.Series) -> list[dict]:
    """The ``annotators`` entries of kinds without gold answers, reliability model or display order."""
    majority = agreement_with_majority(labels)["agreement"] if len(labels) else pd.Series(dtype=float)
    return [
        {
            "annotator": int(a),
            "n": int(n),
            "agreement_with_majority": _float(majority.get(a)),
            "gold_accuracy": None,
            "reliability": None,
            "reliability_note": NO_RELIABILITY_MODEL,
            "position_bias": None,
        }
        for a, n in n_judgments.items()
    ]


def rating_summary(rows, scale_is_numeric: bool, criteria: list[str]) -> dict:
    """Rating projects: a unit is one response's score on one criterion; ordinal α on a numeric scale,
    nominal on a scale of labels."""
    level = "ordinal" if scale_is_numeric else "nominal"
    scores = rating_frame(rows)
    result = unit_summary(unit_labels(scores, ["item", "response", "criterion"]), level)
    result["by_criterion"] = {}
    if len(criteria) > 1:
        for criterion in criteria:
            part = unit_summary(unit_labels(scores[scores["criterion"] == criterion], ["item", "response"]), level)
            del part["cohen_kappa"]
            result["by_criterion"][criterion] = part
    counts = pd.Series([a for _, a, _ in rows]).value_counts().sort_index()
    result["annotators"] = annotator_rows(unit_labels(scores, ["item", "response", "criterion"]), counts)
    return result


def ranking_summary(rows) -> dict:
    """Ranking projects: Kendall's τ-b per pair of annotators, ordinal α on each response's rank, and raw
    agreement on the whole ranking (two annotators agree on an item when their rankings are identical)."""
    ranks = ranking_frame(rows)
    per_response = ranks.rename(columns={"rank": "label"})
    whole = pd.DataFrame(
        [
            (item, annotator, repr([sorted(g) for g in (data or {}).get("ranking") or []]))
            for item, annotator, data in rows
        ],
        columns=["item", "annotator", "label"],
    )
    counts = pd.Series([a for _, a, _ in rows]).value_counts().sort_index()
    return {
        "percent_agreement": percent_agreement(whole) if len(whole) else None,
        "kendall_tau": kendall_tau_pairs(ranks),
        "krippendorff_alpha": krippendorff_alpha(unit_labels(per_response, ["item", "response"]), "ordinal"),
        "level": "ordinal",
        "annotators": annotator_rows(unit_labels(per_response, ["item", "response"]), counts),
    }


def steps_summary(rows) -> dict:
    """Steps projects: a unit is one step of one response, its label nominal."""
    labels = unit_labels(steps_frame(rows), ["item", "response", "step"])
    result = unit_summary(labels, "nominal")
    counts = pd.Series([a for _, a, _ in rows]).value_counts().sort_index()
    result["annotators"] = annotator_rows(labels, counts)
    return result


# --- the summary ------------------------------------------------------------------------------------------------

EMPTY_METRICS = {
    "percent_agreement": None,
    "cohen_kappa": [],
    "fleiss_kappa": None,
    "krippendorff_alpha": None,
    "krippendorff_alpha_strength": None,
    "level": None,
    "kendall_tau": [],
    "by_criterion": {},
    "annotators": [],
}


def summary(project: Project, source: str = HUMAN) -> dict:
    """What ``agreement SLUG --json``, the API and the project page show; every value is JSON-safe.

    ``source`` says whose votes: ``human`` (people's, the default: AI judges' votes never move these figures),
    ``ai`` (the judges among themselves) or ``all``. The judges measured against people are
    ``judge_agreement.judge_report`` (the command and the API add it as ``judges``).

    Keys: ``project``, ``kind``, ``source``, ``n_items`` (normal items with a judgment), ``n_items_with_overlap``,
    ``n_judgments``, ``n_annotators``, ``percent_agreement``, ``cohen_kappa`` (``[{"a", "b", "kappa", "n"}]``),
    ``fleiss_kappa``, ``krippendorff_alpha`` at ``level``, ``krippendorff_alpha_strength`` (pairwise: ordinal α
    on the signed strength scale), ``kendall_tau`` (ranking: ``[{"a", "b", "tau", "n"}]``), ``by_criterion``
    (per criterion: the same counts and statistics but Cohen's pairs) and ``annotators`` (``name``, ``n``,
    ``agreement_with_majority``, ``gold_accuracy``, ``reliability`` = Dawid-Skene accuracy (None where it
    cannot be estimated, with the reason in ``reliability_note``), ``position_bias`` =
    share of wins given to the response shown first). Annotators are named by their membership pseudonym,
    never their username; AI judges by ``judge:<name>``. Metrics that do not apply to the project's kind, or that the data leave undefined,
    are None (or empty).

    What each kind measures: pairwise — the winning response (nominal), the signed strength (ordinal), per
    criterion; rating — each response's score per criterion (ordinal on a numeric scale, nominal on labels);
    ranking — Kendall's τ between annotators and each response's rank (ordinal); steps — each step's label
    (nominal). Demonstrations have no agreement statistic.
    """
    check_source(source)
    result = {
        "project": project.slug,
        "kind": project.kind,
        "source": source,
        "n_items": 0,
        "n_items_with_overlap": 0,
        "n_judgments": 0,
        "n_annotators": 0,
        **EMPTY_METRICS,
    }
    if project.kind == Kind.PAIRWISE:
        criteria = [c for c in (project.criteria or []) if isinstance(c, str)]
        votes = pairwise_vote_frame(project, criteria, source)
        gold = gold_answer_frame(project) if votes["is_gold"].any() else None
        result.update(pairwise_summary(votes, gold, criteria))
    elif project.kind in (Kind.RATING, Kind.RANKING, Kind.STEPS):
        rows = answer_rows(project, source)
        if rows:
            result.update(judgment_counts(rows))
            if project.kind == Kind.RATING:
                numeric = "labels" not in project.rating_scale
                result.update(rating_summary(rows, numeric, project.rating_criteria))
            elif project.kind == Kind.RANKING:
                result.update(ranking_summary(rows))
            else:
                result.update(steps_summary(rows))
    return _with_pseudonyms(project, result)


def _with_pseudonyms(project: Project, result: dict) -> dict:
    """Swap annotator ids for membership pseudonyms everywhere in ``result``."""
    ids = {row["annotator"] for row in result["annotators"]}
    ids |= {p[k] for key in ("cohen_kappa", "kendall_tau") for p in result[key] for k in ("a", "b")}
    names = pseudonyms(project, ids)
    for key in ("cohen_kappa", "kendall_tau"):
        for pair in result[key]:
            pair["a"], pair["b"] = names[pair["a"]], names[pair["b"]]
    result["annotators"] = sorted(
        ({"name": names[row.pop("annotator")], **row} for row in result["annotators"]), key=lambda row: row["name"]
    )
    return result
