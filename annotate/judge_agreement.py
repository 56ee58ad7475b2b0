"""AI judges measured against people, with the statistics people are measured by.

For each judge of a project, on the items both it and people labelled:

- **agreement with every person**: percent agreement and Cohen's κ (as ``sklearn.metrics.cohen_kappa_score``
  computes it on the shared labels), with how many items they share;
- **agreement with the people's majority**: the most common label among the people of each item (items where
  people split evenly have no majority and are left out), percent agreement and κ;
- **gold accuracy**: the judge's answers on gold items scored against ``Item.gold`` as review scores people
  (``vetting.gold_score``);
- **position consistency** (pairwise): the share of its votes whose two readings (A-B, then B-A) agreed, and how
  many did not (``JudgeVote.position_consistent``; votes without a two-order reading are left out);
- **length bias** (pairwise): how often it prefers the longer response, with the exact two-sided binomial test
  (``reliability.length_bias``, as for people);
- counts: ``n_votes`` (what it answered, parsed or not), ``n_items`` (items it has a vote on), ``n_shared_items``,
  ``n_unparseable``, ``n_errors``.

What is compared, by kind (the same units as ``agreement.summary``): pairwise — the winning response, a tie or both
bad (named relative to the item's reference response, so categories are shared across items); ranking — the whole
ranking of an item; rating — each response's score on each criterion; steps — each step's label. ``n`` counts the
shared items, ``n_units`` the labels compared (the same for pairwise and ranking). People's votes are all their
current votes on normal items, as in the agreement report; the judges' figures never enter the people's.

Pure functions (:func:`compare_with_people`, :func:`agreement_by_group`, :func:`majority_labels`) take DataFrames
and return numbers; :func:`judges_data` reads the database and puts them together, and :func:`judge_report` adds
them to the agreement report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from django.db.models import Count, Q
from django.db.models.functions import Length

from .agreement import (
    _float,
    answer_rows,
    pairwise_categories,
    pairwise_vote_frame,
    rating_frame,
    steps_frame,
    summary,
)
from .models import Item, Judge, JudgeVote, Judgment, Kind, Project, Response
from .reliability import length_bias
from .selectors import HUMAN, gold_expectations, judge_label, pseudonyms
from .vetting import gold_score

NO_JUDGES = "no judges in this project (add one on the judges page or with manage.py add_judge)"
NO_VOTES = "no judge has voted"
NOTHING_SHARED = "judges and people share no item"
NOT_MEASURED = "demonstrations have no agreement statistic"
LABEL_COLUMNS = ["item", "unit", "annotator", "label"]


# --- pure ---------------------------------------------------------------------------------------------------------


def agreement_by_group(group, a, b) -> pd.DataFrame:
    """For each value of ``group``: ``n`` (pairs of labels), ``agreement`` (share of pairs where ``a == b``) and
    ``kappa``, Cohen's κ of ``a`` against ``b`` over that group's pairs as ``sklearn.metrics.cohen_kappa_score``
    computes it (chance agreement from the two raters' marginals over those pairs); κ is NaN when both raters used
    one and the same label throughout (0/0). Indexed by group, sorted.

    >>> agreement_by_group([1, 1, 1, 1], ["x", "x", "y", "y"], ["x", "y", "y", "y"]).loc[1, "kappa"]
    0.5
    """
    group = np.asarray(group)
    if not len(group):
        return pd.DataFrame(columns=["n", "agreement", "kappa"], dtype=float)
    groups, g = np.unique(group, return_inverse=True)
    # One coding of both raters' labels, so that equal labels get equal codes whatever their type.
    codes, uniques = pd.factorize(pd.Series([*a, *b], dtype=object))
    a_codes, b_codes = codes[: len(group)], codes[len(group) :]
    k, n_groups = max(len(uniques), 1), len(groups)
    n = np.bincount(g, minlength=n_groups).astype(float)
    agree = np.bincount(g, weights=(a_codes == b_codes).astype(float), minlength=n_groups)
    marg_a = np.bincount(g * k + a_codes, minlength=n_groups * k).reshape(n_groups, k)
    marg_b = np.bincount(g * k + b_codes, minlength=n_groups * k).reshape(n_groups, k)
    p_o = agree / n
    p_e = np.einsum("ij,ij->i", marg_a, marg_b) / (n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(p_e < 1.0, (p_o - p_e) / (1.0 - p_e), np.nan)
    return pd.DataFrame({"n": n.astype(int), "agreement": p_o, "kappa": kappa}, index=pd.Index(groups, name="group"))


def majority_labels(labels: pd.DataFrame) -> pd.Series:
    """The most common label of each ``unit`` among ``labels`` (``unit``, ``label``); units whose top label is
    shared by two or more labels (an even split) have none and are left out."""
    if labels.empty:
        return pd.Series(dtype=object)
    counts = labels.groupby(["unit", "label"], sort=False, observed=True).size().rename("n").reset_index()
    top = counts.groupby("unit")["n"].transform("max")
    best = counts[counts["n"] == top]
    single = best.groupby("unit")["label"].transform("size") == 1
    return best[single].set_index("unit")["label"]


def compare_with_people(labels: pd.DataFrame, judges) -> dict:
    """Each judge against people, from a label frame of ``item``, ``unit``, ``annotator`` and ``label`` (one label
    per unit and annotator; ``judges`` the annotator ids that are judges, every other annotator a person).

    Returns ``{judge: {"n_items", "n_shared_items", "n_units_shared", "agreement_with_majority",
    "kappa_with_majority", "n_majority", "with_annotators": [{"annotator", "n", "n_units", "agreement",
    "kappa"}]}}``; a person is named by their annotator id here, sorted. A figure the data leave undefined is None.
    """
    judges = list(judges)
    is_judge = labels["annotator"].isin(judges)
    people = labels[~is_judge]
    majority = majority_labels(people)
    result = {}
    for judge in judges:
        mine = labels[labels["annotator"] == judge][["item", "unit", "label"]]
        shared = mine.merge(people[["unit", "annotator", "label"]], on="unit", suffixes=("_judge", ""))
        by_person = agreement_by_group(shared["annotator"], shared["label_judge"], shared["label"])
        items_by_person = shared.groupby("annotator")["item"].nunique() if len(shared) else pd.Series(dtype=int)
        with_majority = mine.assign(majority=mine["unit"].map(majority)).dropna(subset=["majority"])
        vs_majority = agreement_by_group(
            np.zeros(len(with_majority)), with_majority["label"], with_majority["majority"]
        )
        row = vs_majority.iloc[0] if len(vs_majority) else None
        result[judge] = {
            "n_items": int(mine["item"].nunique()),
            "n_shared_items": int(shared["item"].nunique()),
            "n_units_shared": int(mine["unit"].isin(people["unit"]).sum()),
            "agreement_with_majority": _float(row["agreement"]) if row is not None else None,
            "kappa_with_majority": _float(row["kappa"]) if row is not None else None,
            "n_majority": int(len(with_majority)),
            "with_annotators": [
                {
                    "annotator": _plain(person),
                    "n": int(items_by_person.get(person, 0)),
                    "n_units": int(figures.n),
                    "agreement": _float(figures.agreement),
                    "kappa": _float(figures.kappa),
                }
                for person, figures in by_person.iterrows()
            ],
        }
    return result


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def position_consistency(n_checked: int, n_inconsistent: int) -> float | None:
    """The share of a judge's two-order readings that agreed; None without any."""
    return (n_checked - n_inconsistent) / n_checked if n_checked else None


# --- reads --------------------------------------------------------------------------------------------------------


def judged_items(project: Project):
    """The ids of the items any judge of ``project`` has a current vote on (a subquery)."""
    return (
        Judgment.objects.filter(project=project, is_current=True, source=Judgment.Source.AI)
        .order_by()
        .values("item_id")
    )


def label_frame(project: Project, items=None) -> pd.DataFrame:
    """People's and judges' current labels on normal items as ``item``, ``unit``, ``annotator``, ``label`` (see
    the module docstring for what a unit and a label are per kind); ``items`` a subquery of item ids to read."""
    if project.kind == Kind.PAIRWISE:
        votes = pairwise_vote_frame(project, source="all", items=items)
        normal = votes[votes["is_gold"] == 0]
        return pd.DataFrame(
            {
                "item": normal["item"],
                "unit": normal["item"],
                "annotator": normal["annotator"],
                "label": pairwise_categories(normal),
            },
            columns=LABEL_COLUMNS,
        )
    if project.kind not in (Kind.RANKING, Kind.RATING, Kind.STEPS):
        return pd.DataFrame(columns=LABEL_COLUMNS)
    rows = answer_rows(project, source="all", items=items)
    if project.kind == Kind.RANKING:  # the whole ranking, as the agreement report's percent agreement compares it
        whole = [
            (item, item, annotator, repr([sorted(g) if isinstance(g, list) else [g] for g in ranking]))
            for item, annotator, ranking in ((i, a, (d or {}).get("ranking") or []) for i, a, d in rows)
        ]
        return pd.DataFrame(whole, columns=LABEL_COLUMNS)
    if project.kind == Kind.RATING:
        flat, keys = rating_frame(rows), ["item", "response", "criterion"]
    else:
        flat, keys = steps_frame(rows), ["item", "response", "step"]
    if flat.empty:
        return pd.DataFrame(columns=LABEL_COLUMNS)
    unit = pd.MultiIndex.from_frame(flat[keys]).factorize()[0]
    return pd.DataFrame(
        {"item": flat["item"], "unit": unit, "annotator": flat["annotator"], "label": flat["label"]},
        columns=LABEL_COLUMNS,
    )


def gold_figures(project: Project, judge_users: dict[int, str]) -> dict[int, dict]:
    """Per judge user: ``gold_accuracy`` (mean score of its current answers on gold items against ``Item.gold``,
    as review scores people) and ``n_gold`` (answers scored)."""
    votes = list(
        Judgment.objects.filter(
            project=project,
            is_current=True,
            source=Judgment.Source.AI,
            annotator_id__in=list(judge_users),
            item__purpose=Item.Purpose.GOLD,
        ).values_list("annotator_id", "item_id", "outcome", "winner_id", "data")
    )
    expected = gold_expectations(project) if votes else {}
    scores: dict[int, list[float]] = {}
    for user, item, outcome, winner, data in votes:
        if item not in expected:
            continue
        score = gold_score(project.kind, expected[item], {"outcome": outcome, "winner_id": winner, "data": data or {}})
        if score is not None:
            scores.setdefault(user, []).append(score)
    return {user: {"gold_accuracy": float(np.mean(s)), "n_gold": len(s)} for user, s in scores.items()}


def length_figures(project: Project, judge_users: dict[int, str], items) -> dict[int, dict]:
    """Pairwise: per judge user, how often its wins on normal items went to the longer response (``n`` wins between
    responses of different lengths, ``k`` of them to the longer, ``rate``, ``p_value``: the exact two-sided
    binomial test of rate = 1/2)."""
    if project.kind != Kind.PAIRWISE:
        return {}
    votes = pairwise_vote_frame(project, source="ai", items=items)
    wins = votes[(votes["is_gold"] == 0) & (votes["outcome_code"] == 0) & votes["annotator"].isin(list(judge_users))]
    if wins.empty:
        return {}
    lengths = pd.Series(
        dict(Response.objects.filter(item_id__in=items).annotate(n=Length("text")).order_by().values_list("id", "n")),
        dtype=float,
    )
    loser = wins["first"] + wins["second"] - wins["winner"]
    winner_length, loser_length = wins["winner"].map(lengths), loser.map(lengths)
    differ = winner_length.notna() & loser_length.notna() & (winner_length != loser_length)
    frame = pd.DataFrame(
        {"annotator": wins["annotator"][differ], "chose_longer": (winner_length > loser_length)[differ]}
    )
    if frame.empty:
        return {}
    report = length_bias(frame)
    return {
        int(user): {
            "n": int(row["n"]),
            "k": int(row["k"]),
            "rate": _float(row["rate"]),
            "p_value": _float(row["p_value"]),
        }
        for user, row in report.annotators.iterrows()
    }


def judges_data(project: Project) -> dict:
    """``{"judges": [...], "judges_note": why there is nothing to compare, or None}``: each judge of the project
    (by name) with the figures of the module docstring; people in ``with_annotators`` by pseudonym.

    ``judges_note`` is :data:`NO_JUDGES`, :data:`NO_VOTES`, :data:`NOTHING_SHARED` (or :data:`NOT_MEASURED`) when
    the judges' figures are all empty for that reason; each judge's own ``note`` says the same of it alone."""
    judges = list(
        Judge.objects.filter(project=project).order_by("name").values_list("id", "name", "user_id", "backend", "model")
    )
    if not judges:
        return {"judges": [], "judges_note": NO_JUDGES}
    users = {user: name for _, name, user, _, _ in judges}
    # One aggregate over the judges' votes (the (judge, item) index), counted in SQL.
    counts = {
        row.pop("judge_id"): row
        for row in JudgeVote.objects.filter(judge__project=project)
        .order_by()
        .values("judge_id")
        .annotate(
            n_votes=Count("id"),
            n_unparseable=Count("id", filter=Q(status=JudgeVote.Status.UNPARSEABLE)),
            n_errors=Count("id", filter=Q(status=JudgeVote.Status.ERROR)),
            n_position_checked=Count("id", filter=Q(position_consistent__isnull=False)),
            n_position_inconsistent=Count("id", filter=Q(position_consistent=False)),
        )
    }
    items = judged_items(project)
    has_ai_votes = items.exists()
    labels = label_frame(project, items) if has_ai_votes else pd.DataFrame(columns=LABEL_COLUMNS)
    compared = compare_with_people(labels, list(users)) if len(labels) else {}
    gold = gold_figures(project, users) if has_ai_votes else {}
    lengths = length_figures(project, users, items) if has_ai_votes else {}
    people = {p["annotator"] for c in compared.values() for p in c["with_annotators"]}
    names = pseudonyms(project, people)
    empty = {"n_votes": 0, "n_unparseable": 0, "n_errors": 0, "n_position_checked": 0, "n_position_inconsistent": 0}
    rows = []
    for judge_id, name, user, backend, model in judges:
        figures = compared.get(user) or {}
        c = {**empty, **counts.get(judge_id, {})}
        c["position_consistency"] = position_consistency(c["n_position_checked"], c["n_position_inconsistent"])
        n_items = figures.get("n_items", 0)
        if project.kind not in (Kind.PAIRWISE, Kind.RANKING, Kind.RATING, Kind.STEPS):
            note = NOT_MEASURED
        elif not c["n_votes"] and not n_items:
            note = "it has not voted"
        elif not figures.get("n_shared_items"):
            note = "it shares no item with people"
        else:
            note = None
        rows.append(
            {
                "name": name,
                "annotator": judge_label(name),
                "backend": backend,
                "model": model,
                "n_items": n_items,
                "n_shared_items": figures.get("n_shared_items", 0),
                "n_units_shared": figures.get("n_units_shared", 0),
                **c,
                "agreement_with_majority": figures.get("agreement_with_majority"),
                "kappa_with_majority": figures.get("kappa_with_majority"),
                "n_majority": figures.get("n_majority", 0),
                "gold_accuracy": gold.get(user, {}).get("gold_accuracy"),
                "n_gold": gold.get(user, {}).get("n_gold", 0),
                "length_bias": lengths.get(user),
                "with_annotators": sorted(
                    ({**p, "annotator": names[p["annotator"]]} for p in figures.get("with_annotators", [])),
                    key=lambda p: p["annotator"],
                ),
                "note": note,
            }
        )
    if project.kind not in (Kind.PAIRWISE, Kind.RANKING, Kind.RATING, Kind.STEPS):
        reason = NOT_MEASURED
    elif not any(r["n_votes"] or r["n_items"] for r in rows):
        reason = NO_VOTES
    elif not any(r["n_shared_items"] for r in rows):
        reason = NOTHING_SHARED
    else:
        reason = None
    return {"judges": rows, "judges_note": reason}


def judge_report(project: Project, source: str = HUMAN) -> dict:
    """``agreement SLUG --json`` and ``GET /api/projects/{slug}/agreement/``: :func:`agreement.summary` of the votes
    of ``source`` (people's by default), with ``judges`` and ``judges_note`` (:func:`judges_data`)."""
    return {**summary(project, source), **judges_data(project)}
