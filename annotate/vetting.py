"""Vetting annotators: scoring answers against researcher answers, and the thresholds of automatic review.

Pure functions: they take answers and numbers and return scores and findings. ``actions.py`` applies them
(admits or refuses a candidate, flags or pauses an annotator) and ``selectors.annotator_stats`` feeds them.

A researcher's answer (``Item.gold``) is written like an imported vote — ``{"winner": 0}``,
``{"ranking": [2, 0, 1]}``, ``{"ratings": {"0": {"overall": 5}}}``, ``{"steps": ["positive", ...]}`` — so it is
validated by the same code (``judgments.vote_fields``) and compared with a judgment field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from .agreement import cohen_kappa
from .models import Kind
from .reliability import binomial_p_values


def gold_score(kind: str, expected: dict, answer: dict) -> float | None:
    """How well ``answer`` matches ``expected`` (both judgment fields), from 0 to 1; None when not comparable.

    pairwise: 1 for the same outcome and winner; ranking: the share of response pairs ordered the same way
    (a tie counts only against a tie); rating: the share of exact scores; steps: the share of step labels.
    """
    if kind == Kind.PAIRWISE:
        return float((expected["outcome"], expected.get("winner_id")) == (answer["outcome"], answer.get("winner_id")))
    data, gold = answer.get("data") or {}, expected.get("data") or {}
    if kind == Kind.RANKING:
        rank = {rid: i for i, group in enumerate(data["ranking"]) for rid in group}
        truth = {rid: i for i, group in enumerate(gold["ranking"]) for rid in group}
        pairs = list(combinations(sorted(truth), 2))
        same = sum(
            (rank[a] > rank[b]) - (rank[a] < rank[b]) == (truth[a] > truth[b]) - (truth[a] < truth[b]) for a, b in pairs
        )
        return same / len(pairs) if pairs else None
    if kind == Kind.RATING:
        cells = [(rid, c) for rid, scores in gold["ratings"].items() for c in scores]
        same = sum(data["ratings"].get(rid, {}).get(c) == gold["ratings"][rid][c] for rid, c in cells)
        return same / len(cells) if cells else None
    if kind == Kind.STEPS:
        labels = [(rid, i, label) for rid, values in gold["steps"].items() for i, label in enumerate(values)]
        same = sum(data["steps"].get(rid, [None] * (i + 1))[i] == label for rid, i, label in labels)
        return same / len(labels) if labels else None
    return None


def label(kind: str, fields: dict):
    """A categorical label of an answer, for kappa: pairwise only (the winner, "tie" or "both_bad")."""
    return fields.get("winner_id") if fields["outcome"] == "win" else fields["outcome"]


@dataclass
class QualificationResult:
    admitted: bool
    score: float
    metric: str
    n_items: int

    @property
    def reason(self) -> str:
        verdict = "admitted" if self.admitted else "not admitted"
        return f"Qualification: {self.metric} {self.score:.3f} over {self.n_items} items ({verdict})."


def qualify(kind: str, metric: str, threshold: float, pairs: list[tuple[dict, dict]]) -> QualificationResult:
    """Admit a candidate whose answers (``(expected, answer)`` field pairs) reach ``threshold``."""
    if metric == "cohen_kappa" and kind == Kind.PAIRWISE:
        score = cohen_kappa([label(kind, e) for e, _ in pairs], [label(kind, a) for _, a in pairs])
        if score is None:  # κ is 0/0: no answers (never admitted), or the expected answer throughout (perfect)
            score = 1.0 if pairs else float("nan")
    else:
        metric = "accuracy"
        scores = [s for s in (gold_score(kind, e, a) for e, a in pairs) if s is not None]
        score = sum(scores) / len(scores) if scores else 0.0
    return QualificationResult(score >= threshold, float(score), metric, len(pairs))


@dataclass
class AnnotatorStats:
    """What review looks at for one annotator (``selectors.annotator_stats`` computes it)."""

    n_gold: int = 0
    gold_accuracy: float | None = None
    n_shared: int = 0
    majority_agreement: float | None = None
    median_ms: float | None = None
    project_median_ms: float | None = None
    n_wins: int = 0
    n_first: int = 0
    # The p-value below when it is already known: the dashboard computes all of them at once, by the same test.
    first_p_value: float | None = None

    @property
    def position_rate(self) -> float | None:
        return self.n_first / self.n_wins if self.n_wins else None

    @property
    def position_p_value(self) -> float | None:
        """Exact two-sided binomial test of choosing the first-shown response against 1/2
        (``reliability.binomial_p_values``, what the dashboard's position chart shows)."""
        if not self.n_wins:
            return None
        if self.first_p_value is not None:
            return self.first_p_value
        return float(binomial_p_values(self.n_first, self.n_wins))


MIN_SHARED = 10  # agreement with the majority is judged on at least this many shared items
MIN_TIMED = 10
MIN_POSITION = 30


# The thresholds that switch a check on (0 turns each off); review_min_gold only sizes the gold check.
REVIEW_THRESHOLDS = (
    "review_gold_accuracy",
    "review_majority_agreement",
    "review_speed_ratio",
    "review_position_bias_p",
)


def review_enabled(project) -> bool:
    """Whether automatic review checks anything in ``project`` (at least one threshold is on)."""
    return any(getattr(project, name) for name in REVIEW_THRESHOLDS)


def review_checks(stats: AnnotatorStats, project) -> dict[str, str]:
    """The thresholds an annotator falls below, by check: ``"gold"``, ``"agreement"``, ``"speed"`` and
    ``"position"``, each with its finding. The one rule of automatic review: :func:`review_findings` (what
    ``actions.review_annotator`` acts on) and the dashboard's red marks are both read from it.

    A check needs enough answers to judge: ``review_min_gold`` scored gold answers, :data:`MIN_SHARED` items
    with a unique majority of others, :data:`MIN_TIMED` timed answers (``median_ms`` is None with fewer),
    :data:`MIN_POSITION` wins."""
    checks = {}
    if project.review_gold_accuracy and stats.n_gold >= project.review_min_gold:
        if stats.gold_accuracy is not None and stats.gold_accuracy < project.review_gold_accuracy:
            checks["gold"] = (
                f"gold accuracy {stats.gold_accuracy:.2f} over the last {stats.n_gold} gold items is below {project.review_gold_accuracy:.2f}"
            )
    if project.review_majority_agreement and stats.n_shared >= MIN_SHARED and stats.majority_agreement is not None:
        if stats.majority_agreement < project.review_majority_agreement:
            checks["agreement"] = (
                f"agreement with the majority {stats.majority_agreement:.2f} over {stats.n_shared} items is below {project.review_majority_agreement:.2f}"
            )
    if project.review_speed_ratio and stats.median_ms and stats.project_median_ms:
        if stats.median_ms < project.review_speed_ratio * stats.project_median_ms:
            checks["speed"] = (
                f"median time on task {stats.median_ms / 1000:.1f} s is far below the project's {stats.project_median_ms / 1000:.1f} s"
            )
    if project.review_position_bias_p and stats.n_wins >= MIN_POSITION:
        p = stats.position_p_value
        if p is not None and p < project.review_position_bias_p:
            checks["position"] = (
                f"chose the first-shown response {stats.position_rate:.0%} of {stats.n_wins} times (binomial p = {p:.1e})"
            )
    return checks


def review_findings(stats: AnnotatorStats, project) -> list[str]:
    """The thresholds an annotator falls below (:func:`review_checks`); an empty list means nothing to review."""
    return list(review_checks(stats, project).values())
