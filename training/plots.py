"""What the run page shows of a run's numbers: the headline (the held-out metrics first), what the run was trained on,
and its charts, each saying what it measures and on which split. The charts are drawn by the one chart module,
``annotate/charts.py`` (server-rendered SVG, no JavaScript).

    run_charts({"loss": [(5, 0.69), (10, 0.41)], "accuracy": [(5, 0.6), (10, 0.8)]}, RewardRunConfig)
    headline({"eval_accuracy": 0.667, "eval_pairs": 3}, RewardRunConfig)
    # → [Stat("Pairwise accuracy", "held-out", 0.667, "2 of 3 held-out pairs")]

Which metrics matter for a kind is the kind's config's (``KEY_METRICS``, ``HEADLINE_METRICS``, ``EXAMPLES``:
training/runners/config.py); what each metric measures is :data:`MEASURES` below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.utils.safestring import SafeString

from annotate.charts import line_chart, nice_ticks

# The run page's charts are a little smaller than the dashboard's: two sit side by side.
WIDTH, HEIGHT = 460, 220

# Where a number was measured.
TRAIN_BATCHES = "training batches"  # the mean over the steps since the previous log line (what TRL logs)
HELD_OUT = "held-out"  # the snapshot's test split: prompts never trained on
SAMPLES = "sampled responses"  # online training: the responses sampled from the training prompts at that step
WHOLE_RUN = "whole run"  # the mean over every training step
OUTPUT = "output"  # what a run wrote (candidates, kept samples)

SPLIT_HELP = {
    TRAIN_BATCHES: "the mean over the training batches since the previous point",
    HELD_OUT: "the snapshot's test split, prompts never trained on",
    SAMPLES: "responses sampled from the training prompts at that step",
    WHOLE_RUN: "the mean over every training step",
}


@dataclass(frozen=True)
class Measure:
    """What a metric measures: ``label``, the ``split`` it is measured on, whether it is a share in [0, 1], and the
    chart it is drawn on (metrics that share a scale share a chart: the losses)."""

    label: str
    split: str
    unit: bool = False
    chart: str = ""


MEASURES: dict[str, Measure] = {
    "loss": Measure("Loss", TRAIN_BATCHES, chart="loss"),
    "lm_loss": Measure("LM loss (regulariser)", TRAIN_BATCHES, chart="loss"),
    "train_loss": Measure("Mean loss", WHOLE_RUN, chart="loss"),
    "accuracy": Measure("Pairwise accuracy", TRAIN_BATCHES, unit=True),
    "margin": Measure("Reward margin (chosen − rejected)", TRAIN_BATCHES),
    "reward_gap": Measure("Mean reward gap (chosen − rejected)", HELD_OUT),
    "rmse": Measure("RMSE (rating units)", HELD_OUT),
    "rewards/accuracies": Measure("Implicit-reward accuracy", TRAIN_BATCHES, unit=True),
    "rewards/margins": Measure("Implicit-reward margin", TRAIN_BATCHES),
    "mean_token_accuracy": Measure("Token accuracy", TRAIN_BATCHES, unit=True),
    "reward": Measure("Reward", SAMPLES),
    "reward_first": Measure("Reward at the first step", SAMPLES),
    "kl": Measure("KL to the reference", SAMPLES),
    "policy_loss": Measure("Policy loss", SAMPLES),
    "value_loss": Measure("Value loss", SAMPLES),
    "candidates": Measure("Candidates", OUTPUT),
    "mean_score": Measure("Mean reward of the candidates", OUTPUT),
    "mean_best_score": Measure("Mean reward of each prompt's best", OUTPUT),
    "kept": Measure("Kept samples", OUTPUT),
    "kept_mean_score": Measure("Mean reward of the kept samples", OUTPUT),
    "sample_mean_score": Measure("Mean reward of all samples", OUTPUT),
    # An AI judge's run (the judge kind): items judged as it goes, with the answers that could not be used.
    "judged": Measure("Items judged", OUTPUT, chart="judged"),
    "unparseable": Measure("Unparseable answers", OUTPUT, chart="judged"),
    "errors": Measure("Backend errors", OUTPUT, chart="judged"),
    "position_consistency": Measure("Position consistency (both orders agree)", OUTPUT, unit=True),
    "items_per_second": Measure("Items judged per second", OUTPUT),
}

# Beside a held-out metric, how many examples it was measured on: eval_accuracy ← eval_pairs (per criterion
# eval_pairs_<criterion>), DPO and SFT ← n_eval, regression ← eval_responses.
COUNT_KEYS = ("eval_pairs", "n_eval", "eval_responses")
# Shares of examples, read as "k of n" (token accuracy is a share of tokens, not of examples).
COUNTED = frozenset({"accuracy", "rewards/accuracies"})


@dataclass(frozen=True)
class Stat:
    """One number of the headline: what it measures, on which split, its value and a note (its denominator)."""

    label: str
    split: str
    value: float
    note: str = ""


def describe(key: str) -> tuple[Measure, str] | None:
    """The measure behind a metric name and the criterion it is about (``""`` for the overall one); None for a name
    :data:`MEASURES` does not know. ``eval_`` names are held-out; ``eval_accuracy_helpful`` is the held-out pairwise
    accuracy on the criterion ``helpful``."""
    held_out = key.startswith("eval_")
    base = key.removeprefix("eval_")
    criterion = ""
    if base not in MEASURES:
        known = [name for name in MEASURES if base.startswith(name + "_")]
        if not held_out or not known:
            return None
        name = max(known, key=len)
        base, criterion = name, base[len(name) + 1 :]
    measure = MEASURES[base]
    if held_out:
        measure = Measure(measure.label, HELD_OUT, measure.unit, measure.chart)
    return measure, criterion


def _base(key: str) -> str:
    """The training-side name of a metric: ``eval_accuracy_helpful`` → ``accuracy``."""
    found = describe(key)
    if found is None:
        return key
    measure, criterion = found
    base = key.removeprefix("eval_")
    return base[: -len(criterion) - 1] if criterion else base


def _series_name(key: str, chart_label: str) -> str:
    measure, criterion = describe(key)
    where = measure.split + (f": {criterion}" if criterion else "")
    return where if measure.label == chart_label else f"{measure.label}, {where}"


def step_ticks(steps: list[float]) -> list[tuple[float, str]]:
    """x-axis ticks at whole steps only (round values, never "2 2 3 4 4" from labelled half steps)."""
    low, high = min(steps), max(steps)
    if low == high:
        return [(low, f"{low:.0f}")]
    ticks = [t for t in nice_ticks(low, high, 6) if float(t).is_integer()]
    return [(t, f"{t:.0f}") for t in ticks] or [(low, f"{low:.0f}"), (high, f"{high:.0f}")]


def run_charts(series: dict[str, list[tuple[int, float]]], config=None, active: bool = False) -> list[SafeString]:
    """One chart per key metric of the kind (``config.KEY_METRICS``; the loss without a config), each with the
    training-batch series and its held-out twin (and per-criterion held-out series), every series named by its
    split. A chart with nothing logged is left out, unless the run is ``active`` (it says "no data yet"). A run
    that logged no loss point (runs older than the last-step log) shows the run's mean loss at its last step."""
    keys = getattr(config, "KEY_METRICS", ("loss",))
    charts, drawn = [], set()
    for key in keys:
        chart = _chart(key)
        if chart in drawn:
            continue
        drawn.add(chart)
        members = {name: points for name, points in series.items() if points and _chart(name) == chart}
        if chart == "loss" and any(name != "train_loss" for name in members):
            members.pop("train_loss", None)  # the run's mean beside its own points says nothing new
        if not members and not active:
            continue
        title = MEASURES[chart].label if chart in MEASURES else chart
        unit = chart in MEASURES and MEASURES[chart].unit
        steps = [x for points in members.values() for x, _ in points]
        named = {_series_name(name, title): points for name, points in _ordered(members)}
        splits = sorted({describe(name)[0].split for name in members})
        desc = f"{title} by training step. " + "; ".join(f"{s}: {SPLIT_HELP[s]}" for s in splits if s in SPLIT_HELP)
        charts.append(
            line_chart(
                named,
                title=title,
                desc=desc,
                x_label="training step",
                y_range=(0.0, 1.0) if unit else None,
                x_ticks=step_ticks(steps) if steps else None,
                width=WIDTH,
                height=HEIGHT,
            )
        )
    return charts


def _chart(key: str) -> str:
    """The chart a metric is drawn on: its measure's shared chart (the losses), else its training-side name."""
    found = describe(key)
    if found is None:
        return ""
    measure, _ = found
    return measure.chart or _base(key)


def _ordered(members: dict) -> list:
    """Training batches first, then held-out (overall, then per criterion), then the rest."""
    order = {TRAIN_BATCHES: 0, SAMPLES: 0, HELD_OUT: 1, WHOLE_RUN: 2}
    return sorted(members.items(), key=lambda item: (order.get(describe(item[0])[0].split, 3), item[0]))


def headline(metrics: dict, config=None) -> list[Stat]:
    """The numbers a run page leads with: ``config.HEADLINE_METRICS`` that the run has (each name also brings its
    per-criterion ``<name>_<criterion>``), each with its split and, for held-out ones, how many examples it was
    measured on. A held-out accuracy of 0 reads "0 of 3 held-out pairs", not a bare 0."""
    names = getattr(config, "HEADLINE_METRICS", ("eval_loss",))
    stats = []
    for wanted in names:
        found = [wanted] if wanted in metrics else []
        found += sorted(k for k in metrics if k.startswith(wanted + "_") and describe(k) and _base(k) == _base(wanted))
        for key in found:
            value = metrics[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            measure, criterion = describe(key) or (Measure(key, ""), "")
            label = measure.label + (f": {criterion}" if criterion else "")
            note = _count_note(key, measure, criterion, metrics, getattr(config, "EXAMPLES", "examples"))
            stats.append(Stat(label, measure.split, value, note))
    return stats


def _count_note(key: str, measure: Measure, criterion: str, metrics: dict, examples: str) -> str:
    if measure.split != HELD_OUT:
        return ""
    suffix = f"_{criterion}" if criterion else ""
    for count_key in COUNT_KEYS:
        count = metrics.get(count_key + suffix)
        if isinstance(count, (int, float)) and count:
            count = int(count)
            noun = {"eval_pairs": "pairs", "eval_responses": "responses"}.get(count_key, examples)
            if _base(key) in COUNTED:
                return f"{round(metrics[key] * count)} of {count} held-out {noun}"
            return f"on {count} held-out {noun}"
    return ""


def trained_on(metrics: dict, config=None) -> str:
    """What a run was trained on, in words: "96 of 540 pairs seen, 12 steps (0.18 epochs)"; "" when it trained
    nothing. Runs recorded before ``n_train_examples_seen`` existed say only the dataset's size."""
    n_train = metrics.get("n_train")
    if not isinstance(n_train, (int, float)):
        return ""
    noun = getattr(config, "EXAMPLES", "examples")
    seen = metrics.get("n_train_examples_seen")
    text = f"{int(seen)} of {int(n_train)} {noun} seen" if isinstance(seen, (int, float)) else f"{int(n_train)} {noun}"
    steps, epochs = metrics.get("train_steps"), metrics.get("train_epochs")
    if isinstance(steps, (int, float)):
        text += f", {int(steps)} step{'s' if int(steps) != 1 else ''}"
        if isinstance(epochs, (int, float)) and epochs:
            text += f" ({epochs:.2g} epoch{'s' if epochs != 1 else ''})"
    return text
