"""Votes → pairwise votes → preferences, and ratings → labels: pure functions of DataFrames.

- :func:`pair_votes` turns every kind's votes into pairwise votes — a pairwise judgment is one, a ranking of K
  responses is C(K, 2) (a shared rank is a tie), a rating compares every two responses by score (equal is a tie);
- :func:`majority_pairs` aggregates them into one preference per (item, pair), :func:`all_pairs` keeps each vote,
  :func:`model_pairs` takes a fitted model's outcome per pair (``general.fit_preference_model``);
- :func:`rating_labels` and :func:`majority_labels` do the same for the labels format;
- :func:`annotator_reliability` and :func:`preference_weights`: the ``weights`` option, a weight per preference
  from the reliability of the annotators who voted for it.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from ..models import Judgment, Kind, Project
from ..reliability import dawid_skene, noisy_bradley_terry
from .options import CATEGORICAL_PREFERENCES, ExportError, ExportOptions

PAIR_COLUMNS = ["item", "annotator", "a", "b", "winner", "strength", "first"]


PREFERENCE_COLUMNS = ["item", "chosen", "rejected", "margin", "n_votes", "agreement", "tie"]


def pair_votes(
    kind: str, votes: pd.DataFrame, responses: dict[int, list[tuple[int, str]]], criterion: str | None = None
) -> pd.DataFrame:
    """Every kind's votes as pairwise votes: ``item``, ``annotator``, ``a``, ``b`` (a < b), ``winner`` (a, b or
    NA for a tie), ``strength``, and ``first`` (whichever of a and b was shown first, when ``votes`` has the
    display ``order``; for the Bradley-Terry aggregation)."""
    if kind == Kind.PAIRWISE and criterion is None:
        return _pairwise_pair_votes(votes, responses)
    has_order = "order" in votes.columns
    rows: list[tuple] = []

    def first_of(order, a, b):
        if not has_order or order is None:
            return None
        return a if order.index(a) < order.index(b) else b

    for vote in votes.itertuples(index=False):
        order = vote.order if has_order else None
        if kind == Kind.PAIRWISE:
            a, b = sorted(rid for rid, _ in responses[vote.item])
            answer = (vote.data or {}).get("criteria", {}).get(criterion)
            if answer is None:
                continue
            rows.append((vote.item, vote.annotator, a, b, answer["winner"], None, first_of(order, a, b)))
        elif kind == Kind.RANKING:
            rank = {rid: position for position, group in enumerate(vote.data["ranking"]) for rid in group}
            for a, b in combinations(sorted(rank), 2):
                winner = None if rank[a] == rank[b] else (a if rank[a] < rank[b] else b)
                rows.append((vote.item, vote.annotator, a, b, winner, None, first_of(order, a, b)))
        elif kind == Kind.RATING:
            ratings = vote.data["ratings"]
            name = criterion or next(iter(next(iter(ratings.values()))))
            scores = {int(rid): values[name] for rid, values in ratings.items()}
            if not all(isinstance(v, (int, float)) for v in scores.values()):
                raise ExportError(CATEGORICAL_PREFERENCES)
            for a, b in combinations(sorted(scores), 2):
                diff = scores[a] - scores[b]
                winner = None if diff == 0 else (a if diff > 0 else b)
                rows.append((vote.item, vote.annotator, a, b, winner, abs(diff), first_of(order, a, b)))
        else:
            raise ExportError(f"{kind} projects have no preferences.")
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    frame["winner"] = frame["winner"].astype("Int64")
    frame["first"] = frame["first"].astype("Int64")
    return frame


def _pairwise_pair_votes(votes: pd.DataFrame, responses: dict[int, list[tuple[int, str]]]) -> pd.DataFrame:
    """The pairwise case, vectorised (it is the million-vote path): "both bad" votes carry no preference."""
    votes = votes[votes["outcome"] != Judgment.Outcome.BOTH_BAD]
    pairs = pd.DataFrame(
        [(item, min(p[0][0], p[1][0]), max(p[0][0], p[1][0])) for item, p in responses.items() if len(p) == 2],
        columns=["item", "a", "b"],
    )
    has_order = "order" in votes.columns
    columns = ["item", "annotator", "winner", "strength"] + (["order"] if has_order else [])
    frame = votes[columns].merge(pairs, on="item", how="inner")
    frame["winner"] = frame["winner"].astype("Int64")
    firsts = [order[0] if order else None for order in frame["order"]] if has_order else [None] * len(frame)
    frame["first"] = pd.array(firsts, dtype="Int64")
    return frame[PAIR_COLUMNS]


def majority_pairs(pairs: pd.DataFrame, keep_ties: bool = False) -> pd.DataFrame:
    """One preference per (item, pair) whose most frequent outcome is a response.

    Where two outcomes share the top count there is no majority and the pair is dropped. Where the top
    outcome is a tie, the pair is dropped too, or kept as a row with ``tie`` true when ``keep_ties``.
    ``margin`` is the mean strength of the votes for the winner; ``agreement`` the top outcome's share.
    """
    if pairs.empty:
        return pd.DataFrame(columns=PREFERENCE_COLUMNS)
    keyed = pairs.assign(label=pairs["winner"].fillna(-1).astype(np.int64))
    counts = keyed.groupby(["item", "a", "b", "label"]).size().rename("count").reset_index()
    counts["n_votes"] = counts.groupby(["item", "a", "b"])["count"].transform("sum")
    counts["top"] = counts.groupby(["item", "a", "b"])["count"].transform("max")
    top = counts[counts["count"] == counts["top"]]
    top = top[top.groupby(["item", "a", "b"])["label"].transform("size") == 1]
    if not keep_ties:
        top = top[top["label"] >= 0]
    strengths = (
        keyed[keyed["label"] >= 0]
        .assign(strength=lambda f: f["strength"].astype(float).fillna(0.0))
        .groupby(["item", "a", "b", "label"])["strength"]
        .mean()
        .rename("margin")
        .reset_index()
    )
    top = top.merge(strengths, on=["item", "a", "b", "label"], how="left")
    tie = top["label"] < 0
    chosen = np.where(tie, top["a"], top["label"])
    return pd.DataFrame(
        {
            "item": top["item"].astype(np.int64),
            "chosen": chosen.astype(np.int64),
            "rejected": np.where(chosen == top["a"], top["b"], top["a"]).astype(np.int64),
            "margin": top["margin"].astype(float).fillna(0.0),
            "n_votes": top["n_votes"].astype(np.int64),
            "agreement": (top["count"] / top["n_votes"]).astype(float),
            "tie": tie.to_numpy(),
        }
    ).sort_values(["item", "chosen", "rejected"], ignore_index=True)


def all_pairs(pairs: pd.DataFrame, keep_ties: bool = False) -> pd.DataFrame:
    """``--aggregate none``: every pairwise vote is its own preference row; ties are dropped unless kept."""
    votes = pairs if keep_ties else pairs[pairs["winner"].notna()]
    tie = votes["winner"].isna().to_numpy()
    chosen = np.where(tie, votes["a"], votes["winner"].fillna(-1)).astype(np.int64)
    return pd.DataFrame(
        {
            "item": votes["item"].astype(np.int64),
            "chosen": chosen,
            "rejected": np.where(chosen == votes["a"], votes["b"], votes["a"]).astype(np.int64),
            "margin": np.where(tie, 0.0, votes["strength"].astype(float).fillna(0.0)),
            "n_votes": 1,
            "agreement": 1.0,
            "tie": tie,
        }
    ).reset_index(drop=True)


def model_pairs(pairs: pd.DataFrame, model: pd.DataFrame, keep_ties: bool = False) -> pd.DataFrame:
    """Preferences from a fitted model's outcome per pair; ``margin`` from the votes for the chosen response."""
    if pairs.empty:
        return pd.DataFrame(columns=PREFERENCE_COLUMNS)
    counts = pairs.groupby(["item", "a", "b"]).size().rename("n_votes").reset_index()
    chosen = counts.merge(model, on=["item", "a", "b"], how="inner")
    if not keep_ties:
        chosen = chosen[chosen["label"] >= 0]
    votes_for = pairs[pairs["winner"].notna()].assign(
        label=lambda f: f["winner"].astype(np.int64), strength=lambda f: f["strength"].astype(float).fillna(0.0)
    )
    margins = votes_for.groupby(["item", "a", "b", "label"])["strength"].mean().rename("margin").reset_index()
    chosen = chosen.merge(margins, on=["item", "a", "b", "label"], how="left")
    tie = (chosen["label"] < 0).to_numpy()
    winner = np.where(tie, chosen["a"], chosen["label"]).astype(np.int64)
    return pd.DataFrame(
        {
            "item": chosen["item"].astype(np.int64),
            "chosen": winner,
            "rejected": np.where(winner == chosen["a"], chosen["b"], chosen["a"]).astype(np.int64),
            "margin": chosen["margin"].astype(float).fillna(0.0),
            "n_votes": chosen["n_votes"].astype(np.int64),
            "agreement": chosen["confidence"].astype(float),
            "tie": tie,
        }
    ).sort_values(["item", "chosen", "rejected"], ignore_index=True)


def dawid_skene_labels(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairwise votes as Dawid-Skene's label frame: one unit per (item, a, b), classes shared by every pair as the
    model needs (0 the lower response id won, 1 the other, 2 a tie)."""
    unit = pairs["item"].astype(str) + ":" + pairs["a"].astype(str) + ":" + pairs["b"].astype(str)
    winner = pairs["winner"].fillna(-1).astype(np.int64)
    relative = np.where(winner == pairs["a"], 0, np.where(winner == pairs["b"], 1, 2))
    return pd.DataFrame({"item": unit, "annotator": pairs["annotator"], "label": relative})


def bradley_terry_comparisons(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairwise votes as :func:`noisy_bradley_terry`'s comparisons: the responses in the order shown (``first``;
    a when the order is unknown) and the outcome ``first``, ``second`` or ``tie``."""
    first = pairs["first"].fillna(pairs["a"]).astype(np.int64)
    second = np.where(first == pairs["a"], pairs["b"], pairs["a"])
    winner = pairs["winner"]
    outcome = np.where(winner.isna(), "tie", np.where(winner.fillna(-1) == first, "first", "second"))
    return pd.DataFrame({"annotator": pairs["annotator"], "first": first, "second": second, "outcome": outcome})


def annotator_reliability(pairs: pd.DataFrame, method: str) -> pd.Series:
    """Each annotator's reliability in (0, 1], indexed by annotator, from every pairwise vote of the project.

    - ``dawid-skene``: the annotator's probability of giving the true outcome (lower id wins, the other wins, or
      a tie), Σ_c prior_c · P(says c | truth c) — the diagonal of their confusion matrix weighted by the class
      priors (:attr:`DawidSkeneResult.accuracy`). Someone answering at random between two outcomes gets about
      1/2, someone always against the others near 0.
    - ``bradley-terry``: the skill γ of the noisy Bradley-Terry model, the probability that a vote follows merit
      rather than chance or position (:attr:`BradleyTerryResult.skill`).

    An annotator the model cannot estimate (alone on their items, or every label the same; see
    :func:`unestimable_annotators`) gets the mean of the others — no evidence either way — and all get 1 when
    none can be estimated. Floored at 1e-6 so a weight is never exactly 0."""
    if pairs.empty:
        return pd.Series(dtype=float, name="reliability")
    if method == "dawid-skene":
        values = dawid_skene(dawid_skene_labels(pairs)).accuracy
    elif method == "bradley-terry":
        values = noisy_bradley_terry(bradley_terry_comparisons(pairs)).skill
    else:
        raise ExportError(f"Unknown reliability model {method!r}.")
    known = values.dropna()
    values = values.fillna(known.mean() if len(known) else 1.0)
    return values.clip(lower=1e-6, upper=1.0).rename("reliability")


def preference_weights(preferences: pd.DataFrame, pairs: pd.DataFrame, reliability: pd.Series) -> np.ndarray:
    """The weight of each preference row: the mean reliability of the annotators who voted for its outcome
    (``chosen`` over ``rejected``, or a tie) on its pair, the same whatever the aggregate (majority, a model,
    or ``none``, where rows that differ only by their voter stay alike and deduplicate as before). A row whose
    outcome no vote gave (a model may overrule every voter) gets the mean over the pair's voters, and a voter
    ``reliability`` does not name counts 1 (the caller names a researcher's adjudication with 1). Rounded to 6
    digits, so the bytes written (and the content hash) do not depend on the last bits of a fit."""
    if preferences.empty:
        return np.zeros(0)
    known = reliability.reindex(pairs["annotator"]).to_numpy()
    voters = pairs[["item", "a", "b"]].assign(
        label=pairs["winner"].fillna(-1).astype(np.int64).to_numpy(), reliability=np.nan_to_num(known, nan=1.0)
    )
    by_outcome = voters.groupby(["item", "a", "b", "label"])["reliability"].mean()
    by_pair = voters.groupby(["item", "a", "b"])["reliability"].mean()
    chosen, rejected = preferences["chosen"].to_numpy(), preferences["rejected"].to_numpy()
    keys = pd.DataFrame(
        {
            "item": preferences["item"].to_numpy(),
            "a": np.minimum(chosen, rejected),
            "b": np.maximum(chosen, rejected),
            "label": np.where(preferences["tie"].to_numpy().astype(bool), -1, chosen),
        }
    )
    outcome = by_outcome.reindex(pd.MultiIndex.from_frame(keys)).to_numpy()
    pair = by_pair.reindex(pd.MultiIndex.from_frame(keys[["item", "a", "b"]])).to_numpy()
    return np.round(np.where(np.isnan(outcome), np.where(np.isnan(pair), 1.0, pair), outcome), 6)


LABEL_KEYS = ["item", "response", "criterion"]


def label_criteria(project: Project, options: "ExportOptions") -> list[str]:
    """The criteria a labels export covers: the one asked for, else every criterion of the project."""
    return [options.criterion] if options.criterion else project.rating_criteria


def rating_labels(votes: pd.DataFrame, criteria: list[str]) -> pd.DataFrame:
    """Every score of rating ``votes`` on ``criteria``, one row each: ``item``, ``response`` (id),
    ``criterion``, ``annotator``, ``label`` (a number on a numeric scale, else the scale's label)."""
    rows = [
        (vote.item, int(rid), criterion, vote.annotator, scores[criterion])
        for vote in votes.itertuples(index=False)
        for rid, scores in vote.data["ratings"].items()
        for criterion in criteria
        if criterion in scores
    ]
    return pd.DataFrame(rows, columns=LABEL_KEYS + ["annotator", "label"])


def majority_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """The most frequent label of each (item, response, criterion), indexed by them: ``label`` and
    ``confidence`` (its share of the votes). Where two labels share the top count there is no majority and
    the unit is left out, as preference formats leave out a pair without one."""
    counts = labels.groupby(LABEL_KEYS + ["label"]).size().rename("count").reset_index()
    counts = counts[counts["count"] == counts.groupby(LABEL_KEYS)["count"].transform("max")]
    counts = counts[counts.groupby(LABEL_KEYS)["label"].transform("size") == 1]
    votes = labels.groupby(LABEL_KEYS).size().reindex(pd.MultiIndex.from_frame(counts[LABEL_KEYS])).to_numpy()
    return counts.set_index(LABEL_KEYS).assign(confidence=lambda f: f["count"] / votes)[["label", "confidence"]]
