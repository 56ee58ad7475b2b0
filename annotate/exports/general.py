"""The general path: an export's rows as dicts, a chunk of items at a time, for every format and option —
read (:mod:`.reading`), aggregated (:mod:`.aggregation`, after fitting a model of the annotators over the whole
project when asked) and formatted (:mod:`.formats`). The columnar path (:mod:`.columnar`) gives the same rows
faster for the one export that gets large."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from ..models import Judgment, Kind, Project
from ..reliability import dawid_skene, noisy_bradley_terry
from ..selectors import pseudonyms
from .aggregation import (
    LABEL_KEYS,
    PAIR_COLUMNS,
    all_pairs,
    annotator_reliability,
    bradley_terry_comparisons,
    dawid_skene_labels,
    label_criteria,
    majority_pairs,
    model_pairs,
    pair_votes,
    preference_weights,
    rating_labels,
)
from .formats import (
    ItemTables,
    _chars,
    hh_rows,
    kto_rows,
    label_rows,
    openai_dpo_rows,
    ranking_rows,
    ratings_kto_rows,
    ratings_rows,
    sft_rows,
    steps_rows,
    trl_rows,
)
from .options import MODEL_AGGREGATES, PREFERENCE_FORMATS, ExportOptions, check_options
from .reading import (
    ADJUDICATOR,
    ADJUDICATOR_NAME,
    current_judgments,
    is_conversational,
    item_ranges,
    item_tables,
    items_in_scope,
    prefer_adjudications,
    raw_rows,
    vote_frame,
)


def iter_rows(
    project: Project, options: "ExportOptions", fit: dict | None = None
) -> Iterator[tuple[list[dict], ItemTables]]:
    """The export's rows, a chunk of items at a time, each with the tables it was built from.

    ``fit``, a dict, receives what a model aggregation found (``iterations``, ``converged``; see
    :func:`fit_preference_model` and :func:`fit_label_model`) before the first chunk is yielded."""
    check_options(project, options)
    fmt = options.format
    criterion = options.criterion or None
    include_gold = options.include_gold or fmt == "raw"
    items = items_in_scope(project, include_gold)
    conversational = is_conversational(items)
    with_data = project.kind != Kind.PAIRWISE or bool(criterion) or fmt == "sft"
    ranges = item_ranges(items)
    judgments = current_judgments(project, options.include_paused, include_gold, source=options.source)
    model = None
    if options.aggregate in MODEL_AGGREGATES:
        if fmt == "labels":
            model, found = fit_label_model(project, options, ranges)
        else:
            model, found = fit_preference_model(project, options, ranges, conversational, with_data)
        if fit is not None:
            fit.update(found)
    reliability = None
    if options.weights != "none":
        reliability = fit_reliability(project, options, ranges, conversational, with_data)
    for item_range in ranges:
        tables = item_tables(project, item_range, conversational)
        if fmt == "raw":
            rows = raw_rows(project, item_range, tables, options.source)
        else:
            votes = vote_frame(
                project, options.include_paused, include_gold, item_range, with_data, judgments=judgments
            )
            votes, decided = prefer_adjudications(project, votes, item_range)
            # Votes of former members stay, and keep the pseudonym they had (make_pseudonym recomputes it).
            names = pseudonyms(project, votes["annotator"].unique().tolist()) if fmt in ("ranking", "ratings") else {}
            names[ADJUDICATOR] = ADJUDICATOR_NAME
            rows = _rows(project, votes, tables, options, names, model, decided, reliability)
        if options.max_chars:
            rows = [row for row in rows if _chars(row) <= options.max_chars]
        yield rows, tables


def _rows(
    project: Project,
    votes: pd.DataFrame,
    tables: ItemTables,
    options: "ExportOptions",
    names: dict[int, str],
    model=None,
    decided: set | frozenset = frozenset(),
    reliability: pd.Series | None = None,
) -> list[dict]:
    fmt = options.format
    if fmt in PREFERENCE_FORMATS:
        if fmt == "kto" and project.kind == Kind.RATING:
            return ratings_kto_rows(votes, tables, project, options.criterion, options.threshold)
        return _preference_rows(project, votes, tables, options, model, decided, reliability)
    if fmt == "ranking":
        return ranking_rows(votes, tables, options.aggregate, names)
    if fmt == "ratings":
        return ratings_rows(votes, tables, names)
    if fmt == "labels":
        criteria = label_criteria(project, options)
        labels = rating_labels(votes, criteria)
        if model is not None and decided:
            # An adjudicated item's labels are the adjudication's, whatever the model found.
            model = pd.concat([model.drop(index=list(decided), level="item", errors="ignore"), _adjudicated(labels)])
        return label_rows(labels, tables, criteria, "labels" not in project.rating_scale, model, options.min_agreement)
    if fmt == "steps":
        return steps_rows(
            project, votes, tables, options.aggregate, options.neutral_steps, options.step_labels == "three"
        )
    if project.kind == Kind.PAIRWISE:  # sft from pairwise: the rewrites of "both bad" answers
        votes = votes[votes["outcome"] == Judgment.Outcome.BOTH_BAD]
    return sft_rows(votes, tables)


def build_rows(project: Project, options: "ExportOptions | str" = "trl", **fields) -> list[dict]:
    """Every row of an export, before deduplication and splitting, in one list (small projects, tests).

    ``build_rows(project, "trl", aggregate="none")`` is short for ``build_rows(project, ExportOptions(...))``.
    """
    if isinstance(options, str):
        options = ExportOptions(format=options, **fields)
    return [row for rows, _ in iter_rows(project, options) for row in rows]


def _adjudicated(labels: pd.DataFrame) -> pd.DataFrame:
    """The adjudications' labels (one vote each, by ``ADJUDICATOR``) in a fitted label model's shape."""
    own = labels[labels["annotator"] == ADJUDICATOR]
    return own.set_index(LABEL_KEYS).assign(confidence=1.0)[["label", "confidence"]]


def _preference_rows(
    project: Project,
    votes: pd.DataFrame,
    tables: ItemTables,
    options: "ExportOptions",
    model=None,
    decided: set | frozenset = frozenset(),
    reliability: pd.Series | None = None,
) -> list[dict]:
    pairs = pair_votes(project.kind, votes, tables.responses, options.criterion or None)
    keep_ties = options.ties == "keep"
    if options.aggregate == "majority":
        preferences = majority_pairs(pairs, keep_ties)
        preferences = preferences[preferences["agreement"] >= options.min_agreement]
    elif options.aggregate in MODEL_AGGREGATES:
        # The model's outcome where annotators decide; an adjudicated item's one vote is its outcome.
        adjudicated = pairs["item"].isin(decided)
        preferences = pd.concat(
            [model_pairs(pairs[~adjudicated], model, keep_ties), majority_pairs(pairs[adjudicated], keep_ties)],
            ignore_index=True,
        ).sort_values(["item", "chosen", "rejected"], ignore_index=True)
        preferences = preferences[preferences["agreement"] >= options.min_agreement]
    else:
        preferences = all_pairs(pairs, keep_ties)
    if options.format == "hh":
        return hh_rows(preferences, tables)
    if options.format == "openai-dpo":
        return openai_dpo_rows(preferences, tables)
    if options.format == "kto":
        return kto_rows(preferences, tables)
    if reliability is not None:  # weights: trl rows only (ExportOptions.validate)
        preferences = preferences.assign(weight=preference_weights(preferences, pairs, reliability))
    return trl_rows(preferences, tables)


def project_pair_votes(
    project: Project, options: "ExportOptions", ranges, conversational: bool, with_data: bool, with_order: bool
) -> pd.DataFrame:
    """Every pairwise vote of the project (:func:`pair_votes`), a first pass over the votes before rows are
    written: what a model of the annotators is fitted on."""
    frames = []
    for item_range in ranges:
        tables = item_tables(project, item_range, conversational)
        votes = vote_frame(
            project,
            options.include_paused,
            options.include_gold,
            item_range,
            with_data,
            with_order=with_order,
            source=options.source,
        )
        frames.append(pair_votes(project.kind, votes, tables.responses, options.criterion or None))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)


def fit_preference_model(
    project: Project, options: "ExportOptions", ranges, conversational: bool, with_data: bool
) -> tuple[pd.DataFrame, dict]:
    """Fit Dawid-Skene or Bradley-Terry on every pairwise vote of the project (a first pass over the votes,
    integers only); returns the aggregated outcome of each (item, a, b): ``label`` (a response id, or -1 for a
    tie) and ``confidence`` (the posterior of that label, or the model's probability of that outcome), and
    the fit's ``{"iterations", "converged"}``."""
    pairs = project_pair_votes(
        project, options, ranges, conversational, with_data, with_order=options.aggregate == "bradley-terry"
    )
    units = pairs[["item", "a", "b"]].drop_duplicates().reset_index(drop=True)
    if pairs.empty:
        return units.assign(label=pd.Series(dtype=np.int64), confidence=pd.Series(dtype=float)), {
            "iterations": 0,
            "converged": True,
        }
    if options.aggregate == "dawid-skene":
        fitted = dawid_skene(dawid_skene_labels(pairs))
        keys = units["item"].astype(str) + ":" + units["a"].astype(str) + ":" + units["b"].astype(str)
        best = fitted.labels.reindex(keys).to_numpy().astype(np.int64)
        confidence = fitted.posteriors.max(axis=1).reindex(keys).to_numpy()
        label = np.where(best == 0, units["a"], np.where(best == 1, units["b"], -1))
        return units.assign(label=label.astype(np.int64), confidence=confidence.astype(float)), fitted.convergence()
    fitted = noisy_bradley_terry(bradley_terry_comparisons(pairs))
    d = fitted.scores.reindex(units["a"]).to_numpy() - fitted.scores.reindex(units["b"]).to_numpy()
    # Davidson's probabilities, position aside: a wins ∝ e^{d/2}, b ∝ e^{-d/2}, a tie ∝ ν.
    weights = np.stack([np.exp(d / 2), np.exp(-d / 2), np.full(len(d), fitted.tie)], axis=1)
    probabilities = weights / weights.sum(axis=1, keepdims=True)
    best = probabilities.argmax(axis=1)
    label = np.where(best == 0, units["a"], np.where(best == 1, units["b"], -1))
    found = {"iterations": fitted.n_iter, "converged": fitted.converged}
    return units.assign(label=label.astype(np.int64), confidence=probabilities.max(axis=1)), found


def fit_reliability(
    project: Project, options: "ExportOptions", ranges, conversational: bool, with_data: bool
) -> pd.Series:
    """The ``weights`` option's first pass: each annotator's reliability (:func:`annotator_reliability`) from
    every pairwise vote of the project, and a researcher's adjudication as a voter of reliability 1."""
    pairs = project_pair_votes(
        project, options, ranges, conversational, with_data, with_order=options.weights == "bradley-terry"
    )
    reliability = annotator_reliability(pairs, options.weights)
    return pd.concat([reliability, pd.Series({ADJUDICATOR: 1.0})])


def fit_label_model(project: Project, options: "ExportOptions", ranges) -> tuple[pd.DataFrame, dict]:
    """Dawid-Skene over every score of the project, one fit per criterion (an annotator careful about one
    criterion may not be about another): a first pass over the votes. Returns the ``label`` and
    ``confidence`` (posterior) of each (item, response, criterion), and the fits' ``iterations`` (the most
    any criterion took), ``converged`` (all of them) and ``by_criterion``."""
    criteria = label_criteria(project, options)
    frames = [
        rating_labels(
            vote_frame(project, options.include_paused, options.include_gold, item_range, source=options.source),
            criteria,
        )
        for item_range in ranges
    ]
    labels = (
        pd.concat(frames, ignore_index=True)
        if frames
        else rating_labels(pd.DataFrame(columns=["item", "annotator", "data"]), criteria)
    )
    parts, fits = [], {}
    for criterion in criteria:
        part = labels[labels["criterion"] == criterion]
        # A response id names its item too, so it is the unit of a criterion's fit.
        fitted = dawid_skene(
            pd.DataFrame({"item": part["response"], "annotator": part["annotator"], "label": part["label"]})
        )
        fits[criterion] = fitted.convergence()
        units = part[LABEL_KEYS].drop_duplicates()
        parts.append(
            units.assign(
                label=fitted.labels.reindex(units["response"]).to_numpy(),
                confidence=fitted.posteriors.max(axis=1).reindex(units["response"]).to_numpy().astype(float),
            )
        )
    model = pd.concat(parts, ignore_index=True).set_index(LABEL_KEYS)
    found = {
        "iterations": max((f["iterations"] for f in fits.values()), default=0),
        "converged": all(f["converged"] for f in fits.values()),
        "by_criterion": fits,
    }
    return model, found
