"""The researcher dashboard (``/p/<slug>/dashboard/``): its reads, its numbers, its charts and its cache.

- **Reads**, one query per concern: :func:`judgment_frame` (every current judgment as numbers: ids, purpose,
  time on task, the shown order and the pairwise outcome), :func:`answer_data` (the JSON answers of the other
  kinds), :func:`response_lengths`, :func:`gold_expectations` (the researchers' answers), :func:`day_starts`,
  and the status table (:func:`status_rows`, never cached: it is what a researcher acts on).
- **Numbers**, pure functions over DataFrames that a test can call with ten hand-made rows:
  :func:`agreement_over_time`, :func:`rolling_gold_accuracy`, :func:`speed`, :func:`position_frame` and
  :func:`length_frame` (fed to ``reliability.position_bias`` / ``length_bias``), :func:`confusion_matrices`
  (against the Dawid-Skene labels of ``reliability.dawid_skene``), :func:`page_summary`.
- **Judges**: the AI judges against people (``judge_agreement.judges_data``), a section of its own; every read
  above is of people's votes only (``selectors.by_source``), so a judge's vote never moves a figure of theirs.
- **Charts**: :func:`dashboard_charts` turns the numbers and the project's review thresholds into SVG
  (``annotate/charts.py``); a chart with nothing to draw says why (:func:`empty_reasons`).
- **Review**: red on the page means what automatic review means. The per-annotator figures are those review
  judges (:func:`review_window`), the red/grey decision is ``vetting.review_checks`` (review's own rule), and
  :func:`dashboard_data` runs ``actions.review_project`` on the active annotators it finds below a threshold,
  so an annotator drawn red is always in the table of annotators under review.

Caching. The page never recomputes on a plain reload: :func:`cached_summary` (``agreement.summary``, also used by
the project page) and :func:`dashboard_data` are kept in Django's cache under a key made of the project, its newest
judgment id and its newest membership status change (:func:`data_version`, one small query). A new or
superseding judgment, a flag, a pause or a reinstatement changes the key, so the next view computes afresh and
every later view reads the cache; entries under old keys are never read again and expire after
``CACHE_SECONDS``. The default cache is local memory, one per process: with several web workers (``gunicorn
--workers N``) each computes at most once per new judgment; set ``CACHES`` to a shared cache (Redis, Memcached,
the database cache) to compute once for all of them. The review thresholds drawn on the charts are read from the
project at every view, so changing them shows at once.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter

import numpy as np
import pandas as pd
from django.core.cache import cache
from django.db.models import Case, IntegerField, Max, Min, OuterRef, Q, Subquery, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Length, TruncDate

from . import actions, agreement, charts, judge_agreement, sql, tasks
from .charts import Bar, Point, Reference
from .models import Item, Judge, JudgeVote, Judgment, Kind, Membership, Project, Response, Role
from .reliability import dawid_skene, length_bias, position_bias
from .selectors import GOLD_WINDOW, REVIEW_WINDOW, by_source, gold_expectations, pseudonyms
from .vetting import MIN_POSITION, MIN_TIMED, REVIEW_THRESHOLDS, AnnotatorStats, gold_score, review_checks

CACHE_SECONDS = 24 * 3600
CACHE_FORMAT = 3  # bump when the shape of a cached value changes, so a shared cache never serves the old shape
KAPPA_SHOWN = 20  # the page lists this many of the lowest pairwise κ (or τ)...
KAPPA_MIN_SHARED = 5  # ...among pairs sharing at least this many items
MAX_BARS = 40  # per-annotator bar charts show the most worrying this many
MAX_MATRICES = 12  # confusion matrices of the this many least reliable annotators
RECENT_TIMED = 2000  # the project's pace: its last this many timed judgments (as selectors.annotator_stats)
BLOCKS = 20  # agreement over time: about this many blocks of judgments...
MIN_BLOCK = 20  # ...of at least this many judgments each

NORMAL, GOLD, QUALIFICATION = 0, 1, 2  # judgment_frame's purpose codes
OUTCOMES = {0: Judgment.Outcome.WIN, 1: Judgment.Outcome.TIE, 2: Judgment.Outcome.BOTH_BAD}
# The order of classes in a confusion matrix: pairwise names, then step labels (rating scales keep their own order).
CLASS_ORDER = ["response 0", "response 1", "tie", "both bad", "positive", "neutral", "negative"]
REINSTATABLE = (Membership.Status.FLAGGED, Membership.Status.PAUSED, Membership.Status.REFUSED)
# The statuses the table of annotators under review lists: an annotator drawn red always has one of them.
UNDER_REVIEW = (
    Membership.Status.CANDIDATE,
    Membership.Status.FLAGGED,
    Membership.Status.PAUSED,
    Membership.Status.REFUSED,
)

# How often each cached value was computed in this process: tests read it to check that a view hit the cache.
computations: Counter = Counter()


# --- the cache ---------------------------------------------------------------------------------------------------


def data_version(project: Project) -> str:
    """What the cached numbers depend on, from one query: the newest judgment id, the newest status change, and
    the newest judge and judge's vote (an unparseable answer is a JudgeVote without a judgment).

    Judgments are immutable and an edit is a new row, so any change of the votes raises the newest id. The
    project's creation time is part of the key too, so a database reset that reuses ids never meets old entries.
    """
    newest = Judgment.objects.filter(project=OuterRef("pk")).order_by("-id").values("id")[:1]
    newest_judge = Judge.objects.filter(project=OuterRef("pk")).order_by("-id").values("id")[:1]
    # Through the project's judges (a handful) and the (judge, item) index: never a walk of every project's votes.
    newest_vote = (
        JudgeVote.objects.filter(judge__project=OuterRef("pk"))
        .order_by()
        .values("judge__project")
        .annotate(newest=Max("id"))
        .values("newest")
    )
    changed = (
        Membership.objects.filter(project=OuterRef("pk"), status_changed_at__isnull=False)
        .order_by("-status_changed_at")
        .values("status_changed_at")[:1]
    )
    last_judgment, last_change, last_judge, last_vote = (
        Project.objects.filter(pk=project.pk)
        .annotate(
            last_judgment=Subquery(newest),
            last_change=Subquery(changed),
            last_judge=Subquery(newest_judge),
            last_vote=Subquery(newest_vote),
        )
        .values_list("last_judgment", "last_change", "last_judge", "last_vote")
        .get()
    )
    stamp = last_change.timestamp() if last_change else 0
    judges = f".{last_judge}.{last_vote or 0}" if last_judge else ""  # the key of a project without judges is as before
    return f"{project.pk}.{project.created_at.timestamp():.6f}.{last_judgment or 0}.{stamp:.6f}{judges}"


def _cached(project: Project, name: str, compute, version: str | None = None):
    key = f"arbiter:dashboard:{CACHE_FORMAT}:{name}:{version or data_version(project)}"
    value = cache.get(key)
    if value is None:
        computations[name] += 1
        value = compute()
        cache.set(key, value, CACHE_SECONDS)
    return value


def _summary(project: Project) -> dict:
    return page_summary(agreement.summary(project))


def cached_summary(project: Project) -> dict:
    """``agreement.summary(project)`` for pages, cached by :func:`data_version`, with the pairwise lists capped.

    ``cohen_kappa`` (and ``kendall_tau``) hold only the :data:`KAPPA_SHOWN` lowest values among pairs sharing at
    least :data:`KAPPA_MIN_SHARED` items (see :func:`page_summary`): a project of 1,000 annotators has 435,000
    pairs, which no page can show and no cache should hold. The full lists are in ``agreement SLUG --json`` and
    ``GET /api/projects/{slug}/agreement/``.
    """
    return _cached(project, "summary", lambda: _summary(project))


def dashboard_data(project: Project, over: str = "block") -> dict:
    """Every number of the dashboard (see :func:`compute_dashboard`), cached by :func:`data_version`; its
    ``summary`` is the same cached value :func:`cached_summary` returns. ``over``: "block" or "day".

    Automatic review runs here too, so that the page never draws an active annotator red: the annotators whose
    figures fall below a threshold of the project as it is now (:func:`review_candidates`) go through
    ``actions.review_project`` — the review a submit runs — once per version of the data and of the thresholds.
    Whoever it flags or pauses changes the version, and the numbers are read again with their new status.
    It also keeps the periodic review on the queue (``tasks.keep_review_scheduled``)."""
    over = "day" if over == "day" else "block"
    tasks.keep_review_scheduled()
    version, data = _dashboard_data(project, over)
    candidates = review_candidates(data, project)
    if candidates:
        who = hashlib.sha1(",".join(map(str, candidates)).encode()).hexdigest()  # cache keys allow no spaces
        key = f"arbiter:dashboard:{CACHE_FORMAT}:reviewed:{version}:{review_settings(project)}:{who}"
        if cache.get(key) is None:
            flagged = actions.review_project(project, user_ids=candidates)
            cache.set(key, sorted(flagged), CACHE_SECONDS)
            if flagged:
                version, data = _dashboard_data(project, over)
    return data


def _dashboard_data(project: Project, over: str) -> tuple[str, dict]:
    version = data_version(project)

    def compute() -> dict:
        summary = _cached(project, "summary", lambda: _summary(project), version)
        return compute_dashboard(project, summary, over)

    return version, _cached(project, f"dashboard-{over}", compute, version)


def review_settings(project: Project) -> str:
    """The project's review thresholds as a key: the dashboard reviews again when one changes."""
    return ",".join(f"{getattr(project, name):g}" for name in (*REVIEW_THRESHOLDS, "review_min_gold"))


def review_stats(row: dict, project_median_s: float | None) -> AnnotatorStats:
    """An annotator row of :func:`compute_dashboard` as the figures review checks (``vetting.review_checks``):
    the same windows, so the same verdicts. Agreement with the majority is left out (no chart draws it)."""
    position = row.get("position") or {}
    timed = row["n_timed"] >= MIN_TIMED and row["median_s"] is not None
    return AnnotatorStats(
        n_gold=row["gold_n"],
        gold_accuracy=row["gold_accuracy"],
        median_ms=row["median_s"] * 1000 if timed else None,
        project_median_ms=project_median_s * 1000 if project_median_s else None,
        n_wins=position.get("n", 0),
        n_first=position.get("k", 0),
        first_p_value=position.get("p_value"),
    )


def row_checks(row: dict, data: dict, project: Project) -> dict[str, str]:
    """The review thresholds an annotator row of :func:`dashboard_data` falls below, as things are now."""
    return review_checks(review_stats(row, data["project_median_s"]), project)


def review_candidates(data: dict, project: Project) -> list[int]:
    """User ids of the active annotators that review acts on whose figures fall below a threshold: the ones the
    dashboard would draw red if review flagged them. Pure: reads :func:`dashboard_data` and the project."""
    return sorted(
        row["user"]
        for row in data["annotators"]
        if row["status"] == Membership.Status.ACTIVE and row["reviewed"] and row_checks(row, data, project)
    )


def page_summary(summary: dict, shown: int = KAPPA_SHOWN, min_shared: int = KAPPA_MIN_SHARED) -> dict:
    """``summary`` with ``cohen_kappa`` and ``kendall_tau`` cut to the ``shown`` lowest (sorted ascending) among
    pairs with ``n >= min_shared`` and a defined value; ``n_cohen_pairs`` and ``n_kendall_pairs`` count all."""
    result = dict(summary)
    for key, value, count in (("cohen_kappa", "kappa", "n_cohen_pairs"), ("kendall_tau", "tau", "n_kendall_pairs")):
        pairs = summary.get(key) or []
        result[count] = len(pairs)
        eligible = (p for p in pairs if p["n"] >= min_shared and p[value] is not None)
        result[key] = heapq.nsmallest(shown, eligible, key=lambda p: (p[value], p["a"], p["b"]))
    return result


# --- reads -------------------------------------------------------------------------------------------------------

FRAME_COLUMNS = [
    "judgment",
    "item",
    "annotator",
    "purpose",
    "duration_ms",
    "imported",
    "outcome_code",
    "winner",
    "first",
    "second",
]


def judgment_frame(project: Project) -> pd.DataFrame:
    """One row per current judgment of ``project``, from one query, every column a number.

    ``judgment`` (id, in the order judgments arrived), ``item``, ``annotator``, ``purpose`` (0 normal, 1 gold,
    2 qualification), ``duration_ms`` (NaN when not timed), ``imported`` (1 for votes made elsewhere: their shown
    order is unknown), and for pairwise projects ``outcome_code`` (0 win, 1 tie, 2 both bad), ``winner`` (the
    response id, 0 when none), ``first`` and ``second`` (the response ids in the order this annotator saw them);
    -1 and 0 for other kinds.
    """
    gold = Item.objects.filter(project=project, purpose=Item.Purpose.GOLD).values("id")
    qualification = Item.objects.filter(project=project, purpose=Item.Purpose.QUALIFICATION).values("id")
    annotations = {
        "purpose_": Case(
            When(item_id__in=gold, then=Value(GOLD)),
            When(item_id__in=qualification, then=Value(QUALIFICATION)),
            default=Value(NORMAL),
            output_field=IntegerField(),
        ),
        "imported_": Case(
            When(source=Judgment.Source.IMPORT, then=Value(1)), default=Value(0), output_field=IntegerField()
        ),
    }
    fields = ["id", "item_id", "annotator_id", "purpose_", "duration_ms", "imported_"]
    pairwise = project.kind == Kind.PAIRWISE
    if pairwise:
        outcome_codes = {name: code for code, name in OUTCOMES.items()}
        annotations["outcome_code_"] = Case(
            *[When(outcome=name, then=Value(code)) for name, code in outcome_codes.items()],
            default=Value(-1),
            output_field=IntegerField(),
        )
        annotations["first_"] = Cast(KeyTextTransform("0", "task__display_order"), IntegerField())
        annotations["second_"] = Cast(KeyTextTransform("1", "task__display_order"), IntegerField())
        fields += ["outcome_code_", "winner_id", "first_", "second_"]
    # Gold items count by the first answer, as review scores them (selectors.gold_results): a revision after gold
    # feedback must not raise an annotator's accuracy.
    gold = Q(item__purpose=Item.Purpose.GOLD)
    # People's votes only: the dashboard's figures are people's; the judges have their own section (judges_data).
    queryset = (
        by_source(Judgment.objects.filter(project=project))
        .filter((Q(is_current=True) & ~gold) | (gold & Q(supersedes__isnull=True)))
        .annotate(**annotations)
        .order_by()
        .values_list(*fields)
    )
    table = np.asarray(sql.numeric_rows(queryset, fields), dtype=float).reshape(-1, len(fields))
    # numeric_rows marks NULL with the smallest int64 (or NaN): either way NaN here.
    table[table == float(np.iinfo(np.int64).min)] = np.nan
    frame = pd.DataFrame(table, columns=FRAME_COLUMNS[: len(fields)])
    if not pairwise:
        frame = frame.assign(outcome_code=-1.0, winner=0.0, first=0.0, second=0.0)
    for column in FRAME_COLUMNS:
        if column != "duration_ms":
            fill = -1 if column == "outcome_code" else 0
            frame[column] = frame[column].fillna(fill).astype(np.int64)
    return frame.sort_values("judgment", kind="stable").reset_index(drop=True)


def answer_data(project: Project) -> dict[int, dict]:
    """``{judgment id: data}`` of people's current judgments on normal and gold items (rankings, ratings, steps)."""
    return dict(
        by_source(Judgment.objects.filter(project=project, is_current=True))
        .exclude(item__purpose=Item.Purpose.QUALIFICATION)
        .order_by()
        .values_list("id", "data")
    )


def response_lengths(project: Project) -> pd.DataFrame:
    """Every response of the project: ``response`` id, ``index`` (position in the imported row) and ``length``
    (characters)."""
    rows = (
        Response.objects.filter(item__project=project)
        .annotate(n=Length("text"))
        .order_by()
        .values_list("id", "index", "n")
    )
    return pd.DataFrame(list(rows), columns=["response", "index", "length"])


def day_starts(project: Project) -> list[tuple]:
    """``[(day, first judgment id of that day)]`` in order, from one aggregate query.

    Judgment ids grow with time, so a judgment's day is the last day that starts at or before its id (a few
    judgments written in the same instant by concurrent requests may land on a neighbouring day: harmless here).
    """
    return list(
        by_source(Judgment.objects.filter(project=project))
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(first=Min("id"))
        .order_by("day")
        .values_list("day", "first")
    )


def review_since(project: Project) -> dict[int, float]:
    """``{annotator: first judgment id after their last status change}`` for active members whose status changed
    (admitted, reinstated), from one query: review judges only that work (``selectors.annotator_stats``'s
    ``since``), and so do the dashboard's per-annotator figures. Infinity when nothing came after."""
    first_after = (
        Judgment.objects.filter(
            project=project, annotator_id=OuterRef("user_id"), created_at__gt=OuterRef("status_changed_at")
        )
        .order_by("id")
        .values("id")[:1]
    )
    rows = (
        Membership.objects.filter(project=project, status=Membership.Status.ACTIVE, status_changed_at__isnull=False)
        .annotate(first_after=Subquery(first_after))
        .values_list("user_id", "first_after")
    )
    return {user: float("inf") if first is None else float(first) for user, first in rows}


def status_rows(project: Project) -> list[Membership]:
    """Members who are not active (candidates, flagged, paused, refused), with their user, for the status table."""
    return list(
        Membership.objects.filter(project=project)
        .exclude(status=Membership.Status.ACTIVE)
        .select_related("user")
        .order_by("status", "user__username")
    )


# --- numbers (pure) ------------------------------------------------------------------------------------------------


def block_periods(judgments: np.ndarray, block_size: int) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Period of each judgment (ids sorted ascending) in blocks of ``block_size`` judgments, and per period
    its x value and label: the number of judgments up to the end of the block."""
    n = len(judgments)
    period = np.arange(n) // max(block_size, 1)
    ends = [min((p + 1) * block_size, n) for p in range(int(period.max()) + 1)] if n else []
    return period, [(float(end), str(end)) for end in ends]


def day_periods(judgments: np.ndarray, starts: list[tuple]) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Period of each judgment by day (``starts`` from :func:`day_starts`), and per period its x value (the
    day's index) and label (the date)."""
    if not starts or not len(judgments):
        return np.zeros(len(judgments), dtype=np.int64), []
    first_ids = np.array([first for _, first in starts])
    period = np.maximum(np.searchsorted(first_ids, judgments, side="right") - 1, 0)
    return period, [(float(i), day.isoformat()) for i, (day, _) in enumerate(starts)]


def review_window(frame: pd.DataFrame, since: dict[int, float], window: int) -> pd.DataFrame:
    """Each annotator's newest ``window`` rows of ``frame`` from their ``since`` judgment id on (annotators
    not in ``since``: all their rows): the work automatic review looks at. Newest first."""
    if since:
        frame = frame[frame["judgment"] >= frame["annotator"].map(since).fillna(0)]
    return frame.sort_values("judgment", ascending=False, kind="stable").groupby("annotator").head(window)


def item_periods(judgments: pd.DataFrame, period: np.ndarray) -> pd.Series:
    """Each item's period: the period of its newest judgment (when its last label arrived)."""
    return pd.Series(period, index=judgments["item"].to_numpy()).groupby(level=0).max()


def agreement_over_time(
    percent_labels: pd.DataFrame, alpha_labels: pd.DataFrame, item_period: pd.Series, level: str
) -> pd.DataFrame:
    """Percent agreement and Krippendorff's α per period.

    Both label frames have ``item`` (the item, which places the row in a period), ``unit`` (what is labelled:
    the item itself, or one response's score on one criterion...), ``annotator`` and ``label``. An item counts in
    the period of its newest judgment (``item_period``), with all its labels, so each period shows the
    agreement on the items completed in it. Returns a frame indexed by period with ``n_items`` (items with two
    or more labels), ``percent_agreement`` and ``alpha`` (NaN when undefined).
    """

    def units(labels: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "item": labels["unit"],
                "annotator": labels["annotator"],
                "label": labels["label"],
                "origin": labels["item"],
                "period": labels["item"].map(item_period),
            }
        )

    # One pass over each frame (grouped by period) rather than a filter per period.
    percent_groups = dict(tuple(units(percent_labels).groupby("period", sort=True)))
    alpha_groups = dict(tuple(units(alpha_labels).groupby("period", sort=True)))
    rows = []
    for period in sorted(pd.unique(item_period)):
        part = percent_groups.get(period)
        alpha_part = alpha_groups.get(period)
        n_items = int((part.groupby("origin")["annotator"].nunique() >= 2).sum()) if part is not None else 0
        rows.append(
            {
                "period": int(period),
                "n_items": n_items,
                "percent_agreement": agreement.percent_agreement(part) if part is not None and len(part) else None,
                "alpha": agreement.krippendorff_alpha(alpha_part, level)
                if alpha_part is not None and len(alpha_part)
                else None,
            }
        )
    frame = pd.DataFrame(rows, columns=["period", "n_items", "percent_agreement", "alpha"]).set_index("period")
    return frame.astype({"percent_agreement": float, "alpha": float})


def rolling_gold_accuracy(scores: pd.DataFrame, window: int = GOLD_WINDOW) -> pd.DataFrame:
    """Per annotator, the mean score of their last ``window`` gold answers, as automatic review computes it.

    ``scores`` has ``judgment``, ``annotator`` and ``score`` (0..1, NaN when the gold item has no usable answer:
    it takes a place in the window but no part in the mean). Returns a frame indexed by annotator with ``n``
    (scored answers in the window) and ``accuracy`` (NaN without any).
    """
    if scores.empty:
        return pd.DataFrame(columns=["n", "accuracy"], dtype=float)
    newest = scores.sort_values("judgment", ascending=False, kind="stable").groupby("annotator").head(window)
    grouped = newest.groupby("annotator")["score"].agg(["count", "mean"])
    grouped.columns = ["n", "accuracy"]
    return grouped


def speed(
    frame: pd.DataFrame, recent: int = RECENT_TIMED, since: dict[int, float] | None = None, window: int = REVIEW_WINDOW
) -> tuple[pd.DataFrame, float | None]:
    """Median time on task per annotator and the project's median: the two numbers automatic review compares
    (``vetting.review_checks``), as it computes them.

    ``frame`` is a :func:`judgment_frame`. Returns a frame indexed by annotator with ``n_timed`` and
    ``median_ms`` over their newest ``window`` timed judgments on normal items (from their ``since`` judgment id
    on, see :func:`review_window`), and the project's median over its last ``recent`` timed judgments of any
    purpose and annotator.
    """
    timed = frame[frame["duration_ms"].notna()]
    normal = review_window(timed[timed["purpose"] == NORMAL], since or {}, window)
    per_annotator = normal.groupby("annotator")["duration_ms"].agg(["count", "median"])
    per_annotator.columns = ["n_timed", "median_ms"]
    latest = timed.nlargest(recent, "judgment")
    project_median = float(latest["duration_ms"].median()) if len(latest) else None
    return per_annotator, project_median


def position_frame(votes: pd.DataFrame) -> pd.DataFrame:
    """``annotator`` and ``chose_first`` for every pairwise win on a normal item whose shown order is known
    (imported votes are left out: they were shown elsewhere, in an order nobody recorded)."""
    wins = votes[(votes["purpose"] == NORMAL) & (votes["outcome_code"] == 0) & (votes["imported"] == 0)]
    return pd.DataFrame({"annotator": wins["annotator"], "chose_first": wins["winner"] == wins["first"]})


def length_frame(votes: pd.DataFrame, lengths: pd.Series) -> pd.DataFrame:
    """``annotator`` and ``chose_longer`` for every pairwise win on a normal item between responses of
    different lengths (``lengths``: characters by response id). Imported votes count: lengths need no order."""
    wins = votes[(votes["purpose"] == NORMAL) & (votes["outcome_code"] == 0)]
    loser = wins["first"] + wins["second"] - wins["winner"]
    winner_length = wins["winner"].map(lengths)
    loser_length = loser.map(lengths)
    differ = winner_length.notna() & loser_length.notna() & (winner_length != loser_length)
    return pd.DataFrame(
        {"annotator": wins["annotator"][differ], "chose_longer": (winner_length > loser_length)[differ]}
    )


def confusion_matrices(labels: pd.DataFrame, reference: pd.Series, classes: list, annotators) -> dict:
    """For each of ``annotators``: counts of (reference label, their label) over the units they labelled, as a
    ``len(classes)`` × ``len(classes)`` list of lists (rows: the reference label, columns: theirs).

    ``labels`` has ``item`` (the unit), ``annotator`` and ``label``; ``reference`` maps each unit to its
    reference label (e.g. the Dawid-Skene posterior label).
    """
    position = {c: i for i, c in enumerate(classes)}
    result = {}
    for annotator in annotators:
        mine = labels[labels["annotator"] == annotator]
        truth = mine["item"].map(reference)
        counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
        for true_label, label in zip(truth, mine["label"]):
            if true_label in position and label in position:
                counts[position[true_label], position[label]] += 1
        result[annotator] = counts.tolist()
    return result


def _number(value):
    """A JSON-safe float (None for NaN, missing and infinities)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


# --- label frames per kind -------------------------------------------------------------------------------------------


PAIRWISE_LABELS = ["response 0", "response 1", "tie", "both bad"]


def pairwise_labels(votes: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """Label frame of pairwise votes on normal items: ``item``, ``unit`` (the item), ``annotator`` and ``label``,
    the winner named by its position in the imported row ("response 0", "response 1"), "tie" or "both bad".

    Named by import position, not by the order shown, so the labels are shared across items and two annotators
    who saw the pair swapped and picked the same response agree. The labels are a pandas Categorical: a million
    votes need no million strings."""
    normal = votes[votes["purpose"] == NORMAL]
    index = responses.set_index("response")["index"]
    outcome = normal["outcome_code"].to_numpy()
    winner_index = normal["winner"].map(index).fillna(0).to_numpy(dtype=np.int64).clip(0, 1)
    codes = np.where(outcome == 0, winner_index, np.where(outcome == 1, 2, 3))
    label = pd.Categorical.from_codes(codes, categories=PAIRWISE_LABELS)
    return pd.DataFrame(
        {
            "item": normal["item"].to_numpy(),
            "unit": normal["item"].to_numpy(),
            "annotator": normal["annotator"].to_numpy(),
            "label": label,
        }
    )


def unit_label_frame(flat: pd.DataFrame, unit_columns: list[str], label: str = "label") -> pd.DataFrame:
    """``item``, ``unit`` (a code per distinct ``unit_columns``), ``annotator`` and ``label`` from a flat frame
    of ``agreement.rating_frame`` / ``steps_frame`` / ``ranking_frame``."""
    if flat.empty:
        return pd.DataFrame(columns=["item", "unit", "annotator", "label"])
    unit = pd.MultiIndex.from_frame(flat[unit_columns]).factorize()[0]
    return pd.DataFrame(
        {
            "item": flat["item"].to_numpy(),
            "unit": unit,
            "annotator": flat["annotator"].to_numpy(),
            "label": flat[label].to_numpy(),
        }
    )


def kind_labels(project: Project, frame: pd.DataFrame, data: dict[int, dict], responses: pd.DataFrame | None) -> dict:
    """The label frames of the project's kind: ``percent`` (for percent agreement), ``alpha`` (for α, at
    ``level``) and, for categorical labels, ``categorical`` (for Dawid-Skene and the confusion matrices)."""
    if project.kind == Kind.PAIRWISE:
        labels = pairwise_labels(frame, responses)
        return {"percent": labels, "alpha": labels, "level": "nominal", "categorical": labels}
    normal = frame[frame["purpose"] == NORMAL]
    rows = [
        (item, annotator, data.get(judgment) or {})
        for judgment, item, annotator in zip(normal["judgment"], normal["item"], normal["annotator"])
    ]
    empty = pd.DataFrame(columns=["item", "unit", "annotator", "label"])
    if project.kind == Kind.RATING:
        labels = unit_label_frame(agreement.rating_frame(rows), ["item", "response", "criterion"])
        numeric = "labels" not in project.rating_scale
        return {
            "percent": labels,
            "alpha": labels,
            "level": "ordinal" if numeric else "nominal",
            "categorical": None if numeric else labels,
        }
    if project.kind == Kind.STEPS:
        labels = unit_label_frame(agreement.steps_frame(rows), ["item", "response", "step"])
        return {"percent": labels, "alpha": labels, "level": "nominal", "categorical": labels}
    if project.kind == Kind.RANKING:
        ranks = unit_label_frame(agreement.ranking_frame(rows), ["item", "response"], label="rank")
        whole = pd.DataFrame(
            [
                (
                    item,
                    item,
                    annotator,
                    repr([sorted(g) if isinstance(g, list) else [g] for g in d.get("ranking") or []]),
                )
                for item, annotator, d in rows
            ],
            columns=["item", "unit", "annotator", "label"],
        )
        return {"percent": whole, "alpha": ranks, "level": "ordinal", "categorical": None}
    return {"percent": empty, "alpha": empty, "level": None, "categorical": None}


# --- putting it together -------------------------------------------------------------------------------------------


def compute_dashboard(project: Project, summary: dict, over: str = "block") -> dict:
    """Every number the dashboard shows, JSON-safe, annotators named by pseudonym (see the module docstring).

    Keys: ``summary`` (:func:`page_summary`), ``over_time`` (``by``, ``block_size``, ``partial_below``, ``level``,
    ``points``: ``x``, ``label``, ``n_items``, ``n_judgments``, ``partial`` (fewer than ``partial_below``
    judgments), ``percent_agreement``, ``alpha``), ``annotators`` (per annotator: ``user`` (id, for review on
    view, never rendered), ``name``, ``status``, ``role``, ``reviewed`` (whether automatic review acts on them),
    ``n``, ``gold_n``, ``gold_accuracy`` (rolling), ``n_timed``, ``median_s``, ``position`` and ``length`` (``n``,
    ``k``, ``rate``, ``p_value``), ``agreement_with_majority``, ``reliability`` and ``reliability_note``, the
    reason it is None), ``project_median_s``, ``position_overall``, ``length_overall``, ``confusion``
    (``reference``, ``classes``, ``matrices``: ``name``, ``accuracy``, ``accuracy_note``, ``counts``;
    ``n_annotators``, ``iterations``, ``converged``), ``counts`` (what :func:`empty_reasons` needs: ``normal``,
    ``timed``, ``gold_items``, ``gold_answers``, ``wins``, ``wins_shown``, ``wins_different_lengths``), ``judges``
    (``judge_agreement.judges_data``: each AI judge against people, and ``judges_note``).

    The per-annotator gold accuracy, speed and biases are over the work automatic review judges
    (:func:`review_window`): for an active annotator, what came after their last status change; the newest 20
    gold answers and 1,000 normal answers. The "everyone" biases are over all the project's votes.
    """
    frame = judgment_frame(project)
    pairwise = project.kind == Kind.PAIRWISE
    data = {} if pairwise else answer_data(project)
    responses = response_lengths(project) if pairwise else None
    worked = frame[frame["purpose"] != QUALIFICATION]
    ids = sorted(set(worked["annotator"].tolist()))
    names = pseudonyms(project, ids)
    members = {
        user: (status, role)
        for user, status, role in Membership.objects.filter(project=project).values_list("user_id", "status", "role")
    }
    # Review judges an active annotator's work since their last status change, and only annotators who judged
    # here (actions.review_project): the per-annotator figures below are those, so red means what review means.
    since = review_since(project)
    judged_here = set(worked.loc[worked["imported"] == 0, "annotator"].tolist())

    # Agreement over time, on normal items, in the order judgments arrived.
    normal = frame[frame["purpose"] == NORMAL]
    labels = kind_labels(project, frame, data, responses)
    block_size = max(MIN_BLOCK, -(-len(normal) // BLOCKS))
    if over == "day":
        period, ticks = day_periods(normal["judgment"].to_numpy(), day_starts(project))
    else:
        period, ticks = block_periods(normal["judgment"].to_numpy(), block_size)
    partial_below = MIN_BLOCK if over == "day" else block_size
    per_period = np.bincount(period, minlength=len(ticks)) if len(normal) else np.zeros(len(ticks), dtype=np.int64)
    points = []
    if labels["level"] and len(normal):
        timeline = agreement_over_time(
            labels["percent"], labels["alpha"], item_periods(normal, period), labels["level"]
        )
        for p, row in timeline.iterrows():
            x, label = ticks[p]
            n_judgments = int(per_period[p])
            points.append(
                {
                    "x": x,
                    "label": label,
                    "n_items": int(row.n_items),
                    "n_judgments": n_judgments,
                    # Fewer judgments than a full block (the block still filling, or a quiet day): drawn hollow,
                    # never quoted as the current value.
                    "partial": n_judgments < partial_below,
                    "percent_agreement": _number(row.percent_agreement),
                    "alpha": _number(row.alpha),
                }
            )

    # Rolling gold accuracy: the newest GOLD_WINDOW gold answers per annotator, scored as review scores them.
    expected = gold_expectations(project) if (frame["purpose"] == GOLD).any() else {}
    gold_votes = review_window(frame[frame["purpose"] == GOLD], since, GOLD_WINDOW)
    scores = []
    for judgment, item, annotator, code, winner in zip(
        gold_votes["judgment"],
        gold_votes["item"],
        gold_votes["annotator"],
        gold_votes["outcome_code"],
        gold_votes["winner"],
    ):
        answer = {"outcome": OUTCOMES.get(code, ""), "winner_id": int(winner) or None, "data": data.get(judgment) or {}}
        score = gold_score(project.kind, expected[item], answer) if item in expected else None
        scores.append((judgment, annotator, np.nan if score is None else score))
    gold = rolling_gold_accuracy(pd.DataFrame(scores, columns=["judgment", "annotator", "score"]))

    per_speed, project_median_ms = speed(frame, since=since)

    # Biases per annotator over the newest answers review looks at; "everyone" over all the project's votes.
    position = length = None
    position_all = length_all = None
    wins = {"all": 0, "shown": 0, "different_lengths": 0}
    if pairwise:
        recent = review_window(normal, since, REVIEW_WINDOW)
        lengths = responses.set_index("response")["length"]
        position = position_bias(position_frame(recent))
        length = length_bias(length_frame(recent, lengths))
        shown_order, by_length = position_frame(frame), length_frame(frame, lengths)
        position_all, length_all = position_bias(shown_order), length_bias(by_length)
        wins = {
            "all": int((normal["outcome_code"] == 0).sum()),
            "shown": len(shown_order),
            "different_lengths": len(by_length),
        }

    # Dawid-Skene on categorical labels: its accuracy per annotator and its posterior labels, the reference of
    # the confusion matrices.
    confusion = None
    categorical = labels.get("categorical")
    if categorical is not None and len(categorical):
        units = pd.DataFrame(
            {"item": categorical["unit"], "annotator": categorical["annotator"], "label": categorical["label"]}
        )
        model = dawid_skene(units)
        known = [str(v) for v in project.scale_values] if project.kind == Kind.RATING else CLASS_ORDER
        classes = sorted(
            pd.unique(units["label"]).tolist(),
            key=lambda c: (known.index(c), "") if c in known else (len(known), str(c)),
        )
        shown = model.accuracy.sort_values(kind="stable").index[:MAX_MATRICES].tolist()
        matrices = confusion_matrices(units, model.labels, classes, shown)
        confusion = {
            "reference": "Dawid-Skene",
            "classes": [str(c) for c in classes],
            "n_annotators": int(model.accuracy.size),
            **model.convergence(),
            "matrices": [
                {
                    "name": names[int(a)],
                    "accuracy": _number(model.accuracy[a]),
                    "accuracy_note": model.unestimated.get(a),
                    "counts": matrices[a],
                }
                for a in shown
            ],
        }

    from_summary = {row["name"]: row for row in summary.get("annotators", [])}
    annotators = []
    for a in ids:
        name = names[a]
        row = from_summary.get(name, {})
        status, role = members.get(a, ("", ""))
        entry = {
            "user": int(a),  # for review on view; never rendered (the page names annotators by pseudonym)
            "name": name,
            "status": status,
            "role": role,
            # Whether automatic review acts on them (actions.review_project): annotators who judged here.
            "reviewed": role == Role.ANNOTATOR and a in judged_here,
            "n": int((normal["annotator"] == a).sum()),
            "gold_n": int(gold["n"].get(a, 0)) if len(gold) else 0,
            "gold_accuracy": _number(gold["accuracy"].get(a)) if len(gold) else None,
            "n_timed": int(per_speed["n_timed"].get(a, 0)) if len(per_speed) else 0,
            "median_s": _number(per_speed["median_ms"].get(a) / 1000) if a in per_speed.index else None,
            "agreement_with_majority": _number(row.get("agreement_with_majority")),
            "reliability": _number(row.get("reliability")),
            "reliability_note": row.get("reliability_note"),
            "position": _bias_row(position, a),
            "length": _bias_row(length, a),
        }
        annotators.append(entry)
    annotators.sort(key=lambda r: r["name"])
    return {
        "summary": summary,
        "over_time": {
            "by": over,
            "block_size": block_size,
            "partial_below": partial_below,
            "level": labels["level"],
            "points": points,
        },
        "annotators": annotators,
        "project_median_s": None if project_median_ms is None else project_median_ms / 1000,
        "position_overall": _bias_overall(position_all),
        "length_overall": _bias_overall(length_all),
        "confusion": confusion,
        # The AI judges against people (judge_agreement): its own reads, never part of the people's figures above.
        "judges": judge_agreement.judges_data(project),
        "counts": {
            "normal": int(len(normal)),
            "timed": int(normal["duration_ms"].notna().sum()),
            "gold_items": Item.objects.filter(project=project, purpose=Item.Purpose.GOLD).count(),
            "gold_answers": int((frame["purpose"] == GOLD).sum()),
            "wins": wins["all"],
            "wins_shown": wins["shown"],
            "wins_different_lengths": wins["different_lengths"],
        },
    }


def _bias_row(report, annotator) -> dict | None:
    if report is None or annotator not in report.annotators.index:
        return None
    row = report.annotators.loc[annotator]
    p = _number(row["p_value"])
    return {"n": int(row["n"]), "k": int(row["k"]), "rate": _number(row["rate"]), "p_value": p, "p_text": _p(p)}


def _bias_overall(report) -> dict | None:
    if report is None or not report.overall["n"]:
        return None
    overall = {
        key: _number(value) if key in ("rate", "p_value") else int(value) for key, value in report.overall.items()
    }
    return {**overall, "p_text": _p(overall["p_value"])}


# --- charts ----------------------------------------------------------------------------------------------------------


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def empty_reasons(data: dict, project: Project) -> dict[str, str]:
    """Why each chart or table of :func:`dashboard_data` is empty when it is, in words a researcher can act on:
    ``agreement`` (the headline, agreement over time, the lowest pairs), ``pairs``, ``gold``, ``speed``,
    ``position``, ``length``, ``scatter``, ``annotators`` and ``judges``. Pure: reads the data and the project."""
    counts = data["counts"]
    no_work = "no judgments on normal items yet"
    overlapping = data["summary"].get("n_items_with_overlap") or 0
    if data["over_time"]["level"] is None:
        agreement_reason = f"agreement is not measured for {project.get_kind_display().lower()} projects"
    elif project.overlap < 2:
        agreement_reason = f"agreement needs overlap ≥ 2 (this project's overlap is {project.overlap})"
    elif not counts["normal"]:
        agreement_reason = no_work
    else:
        agreement_reason = "no item has labels from 2 annotators yet"
    if not counts["gold_items"]:
        gold = 'no gold items (import items with "purpose": "gold" to measure accuracy)'
    elif not counts["gold_answers"]:
        gold = f"no gold answers yet ({counts['gold_items']} gold items)"
    else:
        gold = "no gold answer can be scored (the gold items' answers are not valid votes)"
    if not counts["normal"]:
        speed_reason = no_work
    elif not counts["timed"]:
        speed_reason = "no timed judgments (imported votes carry no time on task)"
    else:
        speed_reason = "no annotator has a timed judgment in the work review looks at"
    no_wins = "no wins yet (ties and “both bad” have no winner)"
    if not counts["normal"]:
        position_reason = length_reason = no_work
    elif not counts["wins"]:
        position_reason = length_reason = no_wins
    else:
        position_reason = (
            "only imported wins: the order they were shown in is unknown"
            if not counts["wins_shown"]
            else "no win in the work review looks at"
        )
        length_reason = (
            "no win between responses of different lengths"
            if not counts["wins_different_lengths"]
            else "no win in the work review looks at"
        )
    _, y_name = _scatter_axis(data["annotators"])
    return {
        "agreement": agreement_reason,
        "pairs": f"no two annotators share {KAPPA_MIN_SHARED} items yet" if overlapping else agreement_reason,
        "gold": gold,
        "speed": speed_reason,
        "position": position_reason,
        "length": length_reason,
        "scatter": speed_reason if not counts["timed"] else f"no annotator has both a median time and {y_name}",
        "annotators": "no judgments yet",
        "judges": (data.get("judges") or {}).get("judges_note") or "no judge shares an item with people",
    }


def _scatter_axis(annotators: list[dict]) -> tuple[str, str]:
    """The scatter's y: gold accuracy where anyone has one, else agreement with the majority."""
    if any(a["gold_accuracy"] is not None for a in annotators):
        return "gold_accuracy", "gold accuracy"
    return "agreement_with_majority", "agreement with majority"


def _not_reviewed(row: dict) -> str:
    """Why an annotator below a threshold is not red: review does not act on them (or found nothing)."""
    if not row["status"]:
        return "former member, not reviewed"
    if row["role"] != Role.ANNOTATOR:
        return f"{row['role']}, not reviewed"
    if not row["reviewed"]:
        return "imported votes only, not reviewed"
    return "not flagged by review"


def _tone(row: dict, check: str, checks: dict, enough: bool) -> tuple[str, str]:
    """A per-annotator mark's tone and the words added to its note.

    Red only when review's own rule (``vetting.review_checks``) finds the annotator below this threshold *and*
    the table of annotators under review lists them, so the page never draws red beside "Everyone is active".
    Below a threshold without being listed (review does not act on them, see :func:`_not_reviewed`): grey, with
    the reason. Grey too with fewer answers than review needs to judge."""
    if not enough:
        return "muted", ""
    if check not in checks:
        return "default", ""
    if row["status"] in UNDER_REVIEW:
        return "bad", ""
    return "muted", f" · {_not_reviewed(row)}"


def dashboard_charts(data: dict, project: Project) -> dict:
    """The dashboard's SVG charts from :func:`dashboard_data` and the project's current review thresholds.

    Per-annotator charts show at most :data:`MAX_BARS` annotators, the most worrying first (lowest gold
    accuracy, fastest, smallest bias p-value); a bar is red where automatic review acts on it (:func:`_tone`),
    grey with too few answers for review to judge or for an annotator review does not act on. An empty chart
    says why (:func:`empty_reasons`).
    """
    result = {}
    reasons = empty_reasons(data, project)
    annotators = data["annotators"]
    checks = {a["name"]: row_checks(a, data, project) for a in annotators}
    over = data["over_time"]
    level = over["level"] or "nominal"
    series = {
        "percent agreement": [
            (p["x"], p["percent_agreement"]) for p in over["points"] if p["percent_agreement"] is not None
        ],
        f"Krippendorff's α ({level})": [(p["x"], p["alpha"]) for p in over["points"] if p["alpha"] is not None],
    }
    lows = [y for points in series.values() for _, y in points]
    y0 = min([0.0] + lows)
    by_day = over["by"] == "day"
    unit = "day" if by_day else "block"
    ticks = [(p["x"], p["label"]) for p in over["points"]]
    if len(ticks) > 8:
        ticks = ticks[:: -(-len(ticks) // 8)]
    partial = [p for p in over["points"] if p.get("partial")]
    result["over_time"] = charts.line_chart(
        series,
        title="Percent agreement and Krippendorff's α "
        + ("per day" if by_day else f"per block of {over['block_size']} judgments"),
        desc=(
            "Percent agreement and Krippendorff's alpha on the items completed in each "
            + ("day" if by_day else f"block of {over['block_size']} judgments")
            + ": "
            + "; ".join(
                f"{p['label']}: {charts.fmt(p['percent_agreement'])}, α {charts.fmt(p['alpha'])} over {p['n_items']} items"
                + (f" (partial {unit}: {p['n_judgments']} judgments)" if p.get("partial") else "")
                for p in over["points"]
            )
        ),
        x_label="day" if by_day else "judgments so far",
        y_range=(y0, 1.0),
        x_ticks=ticks,
        references=[Reference(0.0, "chance (α = 0)", "#98a2b3")] if y0 < 0 else [],
        partial=[p["x"] for p in partial],
        partial_label=f"partial {unit}",
        empty=reasons["agreement"],
    )

    # Gold accuracy, rolling: the lowest first.
    judged = [a for a in annotators if a["gold_accuracy"] is not None]
    judged.sort(key=lambda a: (a["gold_accuracy"], a["name"]))
    threshold, needed = project.review_gold_accuracy, project.review_min_gold
    bars = []
    for a in judged[:MAX_BARS]:
        tone, why = _tone(a, "gold", checks[a["name"]], a["gold_n"] >= needed)
        bars.append(Bar(a["name"], a["gold_accuracy"], f"n={a['gold_n']}{why}", tone))
    result["gold"] = charts.bar_chart(
        bars,
        title=f"Gold accuracy (last {GOLD_WINDOW} gold answers)" + _shown(len(bars), len(judged), "lowest"),
        desc="Rolling gold accuracy per annotator: " + "; ".join(f"{b.label} {b.value:.2f} ({b.note})" for b in bars),
        x_range=(0.0, 1.0),
        references=[Reference(threshold, f"review below {threshold:.2f}")] if threshold else [],
        value_format=lambda v: f"{v:.2f}",
        empty=reasons["gold"],
    )

    # Speed: the fastest first, against the project's median and the review threshold.
    timed = [a for a in annotators if a["median_s"] is not None]
    timed.sort(key=lambda a: (a["median_s"], a["name"]))
    median, ratio = data["project_median_s"], project.review_speed_ratio
    floor = ratio * median if (ratio and median) else None
    bars = []
    for a in timed[:MAX_BARS]:
        tone, why = _tone(a, "speed", checks[a["name"]], a["n_timed"] >= MIN_TIMED)
        bars.append(Bar(a["name"], a["median_s"], f"n={a['n_timed']}{why}", tone))
    references = []
    if median:
        references.append(Reference(median, f"project median {median:.1f} s", "#5d6675"))
    if floor is not None:
        references.append(Reference(floor, f"review below {floor:.1f} s"))
    result["speed"] = charts.bar_chart(
        bars,
        title="Median time on task" + _shown(len(bars), len(timed), "fastest"),
        desc="Median seconds per judgment: " + "; ".join(f"{b.label} {b.value:.1f} s ({b.note})" for b in bars),
        x_label="seconds",
        references=references,
        value_format=lambda v: f"{v:.1f} s" if v < 100 else f"{v:.0f} s",
        empty=reasons["speed"],
    )

    if project.kind == Kind.PAIRWISE:
        p_review = project.review_position_bias_p
        for key, title, what in (
            ("position", "Position bias: rate of choosing the response shown first", "first-shown"),
            ("length", "Length bias: rate of choosing the longer response", "longer"),
        ):
            rows = [a for a in annotators if a[key] is not None]
            rows.sort(key=lambda a: (a[key]["p_value"], a["name"]))
            overall = data[f"{key}_overall"]
            bars = []
            if overall:
                # The project as a whole: no one to review, so never red; the note says the p-value.
                bars.append(Bar("everyone", overall["rate"], f"p={_p(overall['p_value'])} n={overall['n']}", "overall"))
            for a in rows[:MAX_BARS]:
                enough = a[key]["n"] >= MIN_POSITION
                if key == "position":
                    tone, why = _tone(a, "position", checks[a["name"]], enough)
                else:  # review does not act on length: amber, never red
                    low = bool(p_review) and a[key]["p_value"] is not None and a[key]["p_value"] < p_review
                    tone, why = ("muted" if not enough else "warn" if low else "default"), ""
                bars.append(Bar(a["name"], a[key]["rate"], f"p={_p(a[key]['p_value'])} n={a[key]['n']}{why}", tone))
            result[key] = charts.bar_chart(
                bars,
                title=title + _shown(len(rows[:MAX_BARS]), len(rows), "smallest p"),
                desc=f"Share of wins given to the {what} response, with the exact two-sided binomial test against 1/2: "
                + "; ".join(f"{b.label} {b.value:.2f} ({b.note})" for b in bars),
                x_range=(0.0, 1.0),
                references=[Reference(0.5, "no bias (0.5)", "#5d6675")],
                value_format=lambda v: f"{v:.2f}",
                empty=reasons[key],
            )

    # Accuracy against speed: one dot per annotator, flagged and paused ones in red.
    y_key, y_name = _scatter_axis(annotators)
    dots = [
        Point(
            a["median_s"],
            a[y_key],
            a["name"],
            "bad" if a["status"] in (Membership.Status.FLAGGED, Membership.Status.PAUSED) else "default",
        )
        for a in annotators
        if a["median_s"] is not None and a[y_key] is not None
    ]
    result["scatter"] = charts.scatter(
        dots,
        title=f"{y_name.capitalize()} against median time on task",
        desc=f"One dot per annotator: median seconds per judgment and {y_name}; flagged or paused annotators in red.",
        x_label="median seconds per judgment",
        y_label=y_name,
        y_range=(0.0, 1.0),
        x_references=[Reference(floor, "review below")] if floor else [],
        y_references=[Reference(project.review_gold_accuracy, "review below")]
        if y_key == "gold_accuracy" and project.review_gold_accuracy
        else [],
        empty=reasons["scatter"],
    )

    criteria = data["summary"].get("by_criterion") or {}
    if criteria:
        bars = [
            Bar(name, m.get("krippendorff_alpha"), f"agreement {charts.fmt(m.get('percent_agreement'))}")
            for name, m in criteria.items()
        ]
        values = [b.value for b in bars if b.value is not None]
        result["criteria"] = charts.bar_chart(
            bars,
            title="Krippendorff's α per criterion",
            desc="; ".join(f"{b.label}: α {charts.fmt(b.value)}, {b.note}" for b in bars),
            x_range=(min([0.0] + values), 1.0),
            label_width=150,
        )

    confusion = data.get("confusion")
    if confusion:
        result["confusion"] = [
            charts.heatmap(
                m["counts"],
                row_labels=confusion["classes"],
                column_labels=confusion["classes"],
                title=f"{m['name']} · DS accuracy {charts.fmt(m['accuracy'], 2)}",
                desc=f"Confusion matrix of {m['name']}: rows the Dawid-Skene label of the unit, columns their label; "
                + "; ".join(
                    f"{r}: " + ", ".join(str(v) for v in row) for r, row in zip(confusion["classes"], m["counts"])
                ),
                row_title="Dawid-Skene label",
                column_title="their label",
                cell=max(34, min(76, 7 * max(len(c) for c in confusion["classes"]))),
            )
            for m in confusion["matrices"]
        ]
    result["judges"] = judges_chart((data.get("judges") or {}).get("judges", []), reasons["judges"])
    result["empty"] = reasons
    return result


def _shown(shown: int, total: int, which: str) -> str:
    return f" — the {which} {shown} of {total}" if total > shown else ""


def judges_chart(judges: list[dict], empty: str):
    """Per judge, κ with the people's majority and position consistency, side by side (``judge_agreement``); a
    judge that shares no item with people is left out of the chart (the table says why)."""
    shown = [j for j in judges if j["n_shared_items"] or j["position_consistency"] is not None]
    groups = [
        (
            j["annotator"],
            [
                Bar(
                    "κ with the majority",
                    j["kappa_with_majority"],
                    f"n={j['n_majority']}" if j["n_majority"] else "no item with a people's majority",
                ),
                Bar(
                    "position consistency",
                    j["position_consistency"],
                    f"{j['n_position_inconsistent']} of {j['n_position_checked']} inconsistent"
                    if j["n_position_checked"]
                    else "no two-order reading",
                ),
            ],
        )
        for j in shown
    ]
    return charts.grouped_bar_chart(
        groups,
        series=["κ with the people's majority", "position consistency"],
        title="AI judges against people",
        desc="Per judge: Cohen's κ with the people's majority label on the items both labelled, and the share of its "
        "pairwise votes whose two readings (A-B and B-A) agreed: "
        + "; ".join(
            f"{label}: κ {charts.fmt(bars[0].value)} ({bars[0].note}), consistency {charts.fmt(bars[1].value)} "
            f"({bars[1].note})"
            for label, bars in groups
        ),
        x_range=(min([0.0] + [b.value for _, bars in groups for b in bars if b.value is not None]), 1.0),
        references=[Reference(0.0, "chance (κ = 0)", "#98a2b3")],
        value_format=lambda v: f"{v:.2f}",
        empty=empty,
    )
