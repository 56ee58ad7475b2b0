"""Small server-rendered SVG charts: lines, horizontal bars (alone or grouped), heatmaps and scatter plots. Pure: numbers in, markup out.

No JavaScript and no CDN: each chart is one ``<svg role="img">`` string the template drops into the page. Every
chart carries a ``<title>`` and a ``<desc>`` (what a screen reader announces, and what the page's tables repeat),
every mark has its own ``<title>`` (the browser shows it as a tooltip on hover) and ``data-*`` attributes with the
exact value (tests and scripts read those instead of scraping pixels). Every label is escaped: names in a chart
(annotator pseudonyms, criteria, series) come from users.

    line_chart({"α": [(50, 0.61), (100, 0.58)]}, title="Agreement", y_range=(0, 1))
    bar_chart([Bar("ann-1", 0.92), Bar("ann-2", 0.55, tone="bad")], title="Gold accuracy",
              references=[Reference(0.7, "review below 0.70")], x_range=(0, 1))
    grouped_bar_chart([("judge:rm", [Bar("κ", 0.61), Bar("consistency", 0.9)])], series=["κ", "consistency"],
                      title="Judges", x_range=(-1, 1))
    heatmap([[8, 1], [2, 9]], row_labels=["A", "B"], column_labels=["A", "B"], title="Confusion")
    scatter([Point(3.2, 0.9, "ann-1")], title="Speed and accuracy", x_label="s", y_label="accuracy")

The functions share one look (fonts, colours, the plot frame); sizes are in SVG units and the page's CSS may
scale the whole chart (``width: 100%; height: auto``) since each has a ``viewBox``. A chart with nothing to draw
says why in its middle (``empty="agreement needs overlap ≥ 2"``); "no data yet" when the caller gives no reason.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Colour-blind-friendly series colours (Okabe-Ito), then tones for single marks.
COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"]
TONES = {
    "default": "#0072b2",
    "bad": "#c0392b",
    "muted": "#98a2b3",
    "good": "#009e73",
    "overall": "#475467",
    "warn": "#e69f00",
}
REFERENCE_COLOUR = "#b42318"
INK, MUTED_INK, GRID = "#1d2330", "#5d6675", "#eef0f4"
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'
# A white outline drawn under text that sits on the plot, so lines and bars never cross it unreadably.
HALO = 'stroke="#fff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'


_ids = itertools.count(1)


class Reference(NamedTuple):
    """A reference line across the plot at ``value`` (a threshold, a median, chance), named by ``label``."""

    value: float
    label: str
    colour: str = REFERENCE_COLOUR


class Bar(NamedTuple):
    """One bar: ``value`` None draws no bar but keeps the row (with ``note``, e.g. "too few answers")."""

    label: str
    value: float | None
    note: str = ""
    tone: str = "default"


class Point(NamedTuple):
    x: float
    y: float
    label: str = ""
    tone: str = "default"


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits; "—" for None or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 × 10^k) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _attr(value) -> str:
    return escape(str(value))


def _open(width: float, height: float, title: str, desc: str, css_class: str) -> list[str]:
    # The ids tie the <svg> to its own title and description (aria-labelledby); a counter keeps them unique.
    key = f"chart-{next(_ids)}"
    return [
        f'<svg class="chart {escape(css_class)}" role="img" aria-labelledby="{key}-t {key}-d" '
        f'viewBox="0 0 {width:g} {height:g}" width="{width:g}" height="{height:g}" {FONT} '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{key}-t">{escape(title)}</title>',
        f'<desc id="{key}-d">{escape(desc or title)}</desc>',
        f'<text x="8" y="17" font-size="13" font-weight="600" fill="{INK}">{escape(title)}</text>',
    ]


NO_DATA = "no data yet"


def _empty(parts: list[str], width: float, height: float, message: str = NO_DATA) -> SafeString:
    parts.append(
        f'<text class="empty" x="{width / 2:g}" y="{height / 2:g}" text-anchor="middle" font-size="12" '
        f'fill="{MUTED_INK}">{escape(message or NO_DATA)}</text></svg>'
    )
    return mark_safe("".join(parts))


class _Scale:
    """A linear map from data values in [low, high] to pixels in [start, end]."""

    def __init__(self, low: float, high: float, start: float, end: float):
        if high == low:
            low, high = low - 0.5, high + 0.5
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _range(values: Sequence[float], given: tuple[float, float] | None, pad: float = 0.05) -> tuple[float, float]:
    if given is not None:
        return given
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    span = (high - low) or abs(high) or 1.0
    return low - pad * span, high + pad * span


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    desc: str = "",
    x_label: str = "",
    y_label: str = "",
    y_range: tuple[float, float] | None = None,
    x_ticks: list[tuple[float, str]] | None = None,
    references: Sequence[Reference] = (),
    partial: Collection[float] = (),
    partial_label: str = "partial",
    empty: str = NO_DATA,
    width: int = 560,
    height: int = 250,
    value_format: Callable[[float], str] = fmt,
) -> SafeString:
    """One polyline with dots per series (points sorted by x; a series of one point is a dot), y ticks, a
    legend with each series' last value, and horizontal reference lines. ``x_ticks`` names the x positions
    (e.g. dates); by default round numbers are used.

    Points at the x values in ``partial`` rest on too little to be read like the others (a block still
    filling): hollow dots, joined by a dashed line when they come last, and the legend quotes the last point that
    is not partial (a series of partial points only is quoted with ``partial_label``)."""
    series = {
        name: sorted((x, y) for x, y in points if y is not None and math.isfinite(y)) for name, points in series.items()
    }
    partial = set(partial)
    parts = _open(width, height, title, desc, "line-chart")
    if not any(series.values()):
        return _empty(parts, width, height, empty)
    left, right, top, bottom = 52, 14, 44, 38
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points] + [r.value for r in references]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = _range(ys, y_range)
    sx = _Scale(x0, x1, left, width - right)
    sy = _Scale(y0, y1, height - bottom, top)
    parts.append(_frame(left, top, width - right, height - bottom))
    for y in nice_ticks(sy.low, sy.high):
        parts.append(_h_grid(left, width - right, sy(y), value_format(y)))
    for x, label in x_ticks if x_ticks is not None else [(x, fmt(x)) for x in nice_ticks(x0, x1, 6)]:
        if sx.contains(x):
            parts.append(
                f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle" '
                f'fill="{MUTED_INK}">{escape(label)}</text>'
            )
    parts += _axis_labels(width, height, left, top, bottom, x_label, y_label)
    for reference in references:
        if sy.contains(reference.value):
            parts.append(_h_reference(left, width - right, sy(reference.value), reference))
    legend_x = left
    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        # The trailing partial points hang off the line by a dashed stretch from the last full point.
        full = len(points)
        while full and points[full - 1][0] in partial:
            full -= 1
        solid, dashed = points[:full], points[max(full - 1, 0) :] if full < len(points) else []
        for stretch, dash in ((solid, ""), (dashed, ' stroke-dasharray="4 3"')):
            if len(stretch) > 1:
                coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in stretch)
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{coords}"/>')
        for x, y in points:
            hollow = x in partial
            fill = (
                f'fill="#fff" stroke="{colour}" stroke-width="1.5" data-partial="true"'
                if hollow
                else f'fill="{colour}"'
            )
            note = f" ({partial_label})" if hollow else ""
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" {fill} data-series="{_attr(name)}" '
                f'data-x="{x:g}" data-y="{y:.6g}">'
                f"<title>{escape(name)} at {fmt(x)}: {escape(value_format(y))}{escape(note)}</title></circle>"
            )
        if points:
            quoted = solid[-1][1] if solid else points[-1][1]
            text = f"{name}: {value_format(quoted)}" + ("" if solid else f" ({partial_label})")
            parts.append(f'<rect x="{legend_x}" y="{top - 14}" width="12" height="4" fill="{colour}"/>')
            parts.append(f'<text x="{legend_x + 16}" y="{top - 9}" font-size="11" fill="{INK}">{escape(text)}</text>')
            legend_x += 24 + 6.5 * len(text)
    parts.append("</svg>")
    return mark_safe("".join(parts))


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    desc: str = "",
    x_label: str = "",
    x_range: tuple[float, float] | None = None,
    references: Sequence[Reference] = (),
    width: int = 560,
    bar_height: int = 18,
    label_width: int = 120,
    value_format: Callable[[float], str] = fmt,
    empty: str = NO_DATA,
) -> SafeString:
    """Horizontal bars, one row per :class:`Bar` in the given order, the value (and note) printed after each
    bar, vertical reference lines labelled at the top. Horizontal, so long category names stay readable and
    the chart grows downwards with the number of bars."""
    top, bottom, right = 40 + (14 if references else 0), 30, 150
    row = bar_height + 6
    height = top + row * max(len(bars), 1) + bottom
    parts = _open(width, height, title, desc, "bar-chart")
    if not bars:
        return _empty(parts, width, height, empty)
    values = [b.value for b in bars if b.value is not None] + [r.value for r in references]
    low, high = (
        x_range
        if x_range is not None
        else (min(0.0, *values) if values else 0.0, max(values) * 1.05 if values else 1.0)
    )
    sx = _Scale(low, high, label_width, width - right)
    plot_bottom = top + row * len(bars)
    parts.append(_frame(label_width, top, width - right, plot_bottom))
    for x in nice_ticks(sx.low, sx.high):
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{plot_bottom}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{sx(x):.1f}" y="{plot_bottom + 13}" font-size="10" text-anchor="middle" fill="{MUTED_INK}">'
            f"{escape(value_format(x))}</text>"
        )
    if x_label:
        parts.append(
            f'<text x="{(label_width + width - right) / 2:.1f}" y="{height - 4}" font-size="11" text-anchor="middle" '
            f'fill="{MUTED_INK}">{escape(x_label)}</text>'
        )
    zero = sx(max(sx.low, min(0.0, sx.high)))
    for i, bar in enumerate(bars):
        y = top + i * row + 3
        middle = y + bar_height / 2 + 4
        parts.append(
            f'<text x="{label_width - 6}" y="{middle:.1f}" font-size="11" text-anchor="end" fill="{INK}">'
            f"{escape(_clip(bar.label, label_width))}<title>{escape(bar.label)}</title></text>"
        )
        shown = fmt(None) if bar.value is None else value_format(bar.value)
        note = f" {bar.note}" if bar.note else ""
        end = zero
        if bar.value is not None:
            clamped = min(max(bar.value, sx.low), sx.high)
            end = sx(clamped)
            x, w = min(zero, end), max(abs(end - zero), 1.0)
            colour = TONES.get(bar.tone, TONES["default"])
            parts.append(
                f'<rect class="bar {escape(bar.tone)}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_height}" '
                f'fill="{colour}" data-label="{_attr(bar.label)}" data-value="{bar.value:.6g}">'
                f"<title>{escape(bar.label)}: {escape(shown)}{escape(note)}</title></rect>"
            )
        parts.append(
            f'<text x="{max(end, zero) + 5:.1f}" y="{middle:.1f}" font-size="11" fill="{INK}" {HALO}>{escape(shown)}'
            f'<tspan fill="{MUTED_INK}">{escape(note)}</tspan></text>'
        )
    for n, reference in enumerate(references):
        if sx.contains(reference.value):
            x = sx(reference.value)
            parts.append(
                f'<line class="reference" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{plot_bottom}" stroke="{reference.colour}" '
                f'stroke-width="1.5" stroke-dasharray="5 3" data-value="{reference.value:.6g}"><title>{escape(reference.label)}</title></line>'
            )
            anchor = "end" if x > (label_width + width - right) / 2 else "start"
            parts.append(
                f'<text x="{x + (-4 if anchor == "end" else 4):.1f}" y="{top - 8 - 13 * (n % 2)}" font-size="10" text-anchor="{anchor}" '
                f'fill="{reference.colour}" {HALO}>{escape(reference.label)}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def grouped_bar_chart(
    groups: Sequence[tuple[str, Sequence[Bar]]],
    *,
    series: Sequence[str],
    title: str,
    desc: str = "",
    x_range: tuple[float, float] | None = None,
    references: Sequence[Reference] = (),
    width: int = 560,
    bar_height: int = 14,
    label_width: int = 120,
    value_format: Callable[[float], str] = fmt,
    empty: str = NO_DATA,
) -> SafeString:
    """Horizontal bars in groups: one group per row label (e.g. a judge), one bar per name in ``series`` within it
    (the i-th :class:`Bar` of a group is series i, coloured as the legend says; its ``label`` names the bar in
    tooltips and ``data-label``). A bar whose value is None keeps its place and prints "—" and its note, so a
    figure the data leave undefined reads as such. Reference lines as :func:`bar_chart`.

        grouped_bar_chart([("judge:rm", [Bar("κ", 0.61), Bar("consistency", 0.9)])],
                          series=["κ with the majority", "position consistency"], title="Judges")
    """
    top, bottom, right = 44 + (14 if references else 0), 30, 150
    group_height = bar_height * max(len(series), 1) + 10
    height = top + group_height * max(len(groups), 1) + bottom
    parts = _open(width, height, title, desc, "grouped-bar-chart")
    if not groups:
        return _empty(parts, width, height, empty)
    values = [b.value for _, bars in groups for b in bars if b.value is not None] + [r.value for r in references]
    low, high = (
        x_range
        if x_range is not None
        else (min(0.0, *values) if values else 0.0, max(values) * 1.05 if values else 1.0)
    )
    sx = _Scale(low, high, label_width, width - right)
    plot_bottom = top + group_height * len(groups)
    legend_x = label_width
    for i, name in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<rect x="{legend_x}" y="{top - 20}" width="12" height="8" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 16}" y="{top - 12}" font-size="11" fill="{INK}">{escape(name)}</text>')
        legend_x += 28 + 6.5 * len(name)
    parts.append(_frame(label_width, top, width - right, plot_bottom))
    for x in nice_ticks(sx.low, sx.high):
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{plot_bottom}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{sx(x):.1f}" y="{plot_bottom + 13}" font-size="10" text-anchor="middle" fill="{MUTED_INK}">'
            f"{escape(value_format(x))}</text>"
        )
    zero = sx(max(sx.low, min(0.0, sx.high)))
    for g, (label, bars) in enumerate(groups):
        y0 = top + g * group_height + 5
        middle = y0 + bar_height * len(series) / 2 + 4
        parts.append(
            f'<text x="{label_width - 6}" y="{middle:.1f}" font-size="11" text-anchor="end" fill="{INK}">'
            f"{escape(_clip(label, label_width))}<title>{escape(label)}</title></text>"
        )
        for i, bar in enumerate(bars[: len(series)]):
            y = y0 + i * bar_height
            shown = fmt(None) if bar.value is None else value_format(bar.value)
            note = f" {bar.note}" if bar.note else ""
            end = zero
            if bar.value is not None:
                end = sx(min(max(bar.value, sx.low), sx.high))
                x, w = min(zero, end), max(abs(end - zero), 1.0)
                parts.append(
                    f'<rect class="bar" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_height - 2}" '
                    f'fill="{COLOURS[i % len(COLOURS)]}" data-group="{_attr(label)}" data-series="{_attr(series[i])}" '
                    f'data-label="{_attr(bar.label)}" data-value="{bar.value:.6g}">'
                    f"<title>{escape(label)} · {escape(series[i])}: {escape(shown)}{escape(note)}</title></rect>"
                )
            parts.append(
                f'<text x="{max(end, zero) + 5:.1f}" y="{y + bar_height - 4:.1f}" font-size="10" fill="{INK}" {HALO}>'
                f'{escape(shown)}<tspan fill="{MUTED_INK}">{escape(note)}</tspan></text>'
            )
    for reference in references:
        if sx.contains(reference.value):
            x = sx(reference.value)
            parts.append(
                f'<line class="reference" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{plot_bottom}" stroke="{reference.colour}" '
                f'stroke-width="1.5" stroke-dasharray="5 3" data-value="{reference.value:.6g}"><title>{escape(reference.label)}</title></line>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def heatmap(
    values: Sequence[Sequence[float | None]],
    *,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str,
    desc: str = "",
    row_title: str = "",
    column_title: str = "",
    cell: int = 34,
    label_width: int = 84,
    value_format: Callable[[float], str] = lambda v: f"{v:g}",
    normalise: str = "row",
) -> SafeString:
    """A grid of shaded cells with their values printed (a confusion matrix, a correlation table).

    The shade is the value over its row's total (``normalise="row"``: for a confusion matrix, the share of each
    true class given each label) or over the largest value (``"max"``). Empty (None) cells stay blank.
    """
    n_rows, n_columns = len(row_labels), len(column_labels)
    top = 44 + (14 if column_title else 0)
    left = label_width + (16 if row_title else 0)
    width = max(left + cell * max(n_columns, 1) + 10, 16 + 8 * len(title))
    height = top + cell * max(n_rows, 1) + 10
    parts = _open(width, height, title, desc, "heatmap")
    if not n_rows or not n_columns:
        return _empty(parts, width, height)
    finite = [v for row in values for v in row if v is not None]
    largest = max(finite) if finite else 0
    if column_title:
        parts.append(
            f'<text x="{left + cell * n_columns / 2:.1f}" y="{top - 24}" font-size="10" text-anchor="middle" '
            f'fill="{MUTED_INK}">{escape(column_title)}</text>'
        )
    if row_title:
        middle = top + cell * n_rows / 2
        parts.append(
            f'<text x="10" y="{middle:.1f}" font-size="10" text-anchor="middle" fill="{MUTED_INK}" '
            f'transform="rotate(-90 10 {middle:.1f})">{escape(row_title)}</text>'
        )
    for j, label in enumerate(column_labels):
        parts.append(
            f'<text x="{left + cell * (j + 0.5):.1f}" y="{top - 6}" font-size="10" text-anchor="middle" fill="{INK}">'
            f"{escape(_clip(label, cell + 10))}<title>{escape(label)}</title></text>"
        )
    for i, label in enumerate(row_labels):
        row = list(values[i])
        total = sum(v for v in row if v is not None)
        parts.append(
            f'<text x="{left - 6}" y="{top + cell * (i + 0.5) + 4:.1f}" font-size="10" text-anchor="end" fill="{INK}">'
            f"{escape(_clip(label, label_width))}<title>{escape(label)}</title></text>"
        )
        for j, value in enumerate(row):
            x, y = left + cell * j, top + cell * i
            if value is None:
                parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="#fff" stroke="{GRID}"/>')
                continue
            scale = (total if normalise == "row" else largest) or 1
            share = max(0.0, min(1.0, value / scale))
            fill, ink = _shade(share), ("#fff" if share > 0.55 else INK)
            tip = f"{row_labels[i]} × {column_labels[j]}: {value_format(value)}"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff" '
                f'data-row="{_attr(row_labels[i])}" data-column="{_attr(column_labels[j])}" data-value="{value:g}">'
                f"<title>{escape(tip)}</title></rect>"
            )
            parts.append(
                f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" font-size="11" text-anchor="middle" '
                f'fill="{ink}" pointer-events="none">{escape(value_format(value))}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def scatter(
    points: Sequence[Point],
    *,
    title: str,
    desc: str = "",
    x_label: str = "",
    y_label: str = "",
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    x_references: Sequence[Reference] = (),
    y_references: Sequence[Reference] = (),
    labelled: Sequence[str] = ("bad",),
    width: int = 560,
    height: int = 280,
    value_format: Callable[[float], str] = fmt,
    empty: str = NO_DATA,
) -> SafeString:
    """Dots at (x, y), each with its label as a tooltip, vertical (``x_references``) and horizontal
    (``y_references``) reference lines. Dots whose tone is in ``labelled`` also print their label beside them
    (the ones a reader looks for; labelling every dot would bury them)."""
    parts = _open(width, height, title, desc, "scatter")
    points = [p for p in points if p.x is not None and p.y is not None and math.isfinite(p.x) and math.isfinite(p.y)]
    if not points:
        return _empty(parts, width, height, empty)
    left, right, top, bottom = 52, 14, 30, 40
    x0, x1 = _range([p.x for p in points] + [r.value for r in x_references], x_range)
    y0, y1 = _range([p.y for p in points] + [r.value for r in y_references], y_range)
    sx = _Scale(x0, x1, left, width - right)
    sy = _Scale(y0, y1, height - bottom, top)
    parts.append(_frame(left, top, width - right, height - bottom))
    for y in nice_ticks(sy.low, sy.high):
        parts.append(_h_grid(left, width - right, sy(y), value_format(y)))
    for x in nice_ticks(sx.low, sx.high, 6):
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle" fill="{MUTED_INK}">'
            f"{escape(value_format(x))}</text>"
        )
    parts += _axis_labels(width, height, left, top, bottom, x_label, y_label)
    for reference in y_references:
        if sy.contains(reference.value):
            parts.append(_h_reference(left, width - right, sy(reference.value), reference))
    for reference in x_references:
        if sx.contains(reference.value):
            x = sx(reference.value)
            parts.append(
                f'<line class="reference" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" stroke="{reference.colour}" '
                f'stroke-dasharray="5 3" data-value="{reference.value:.6g}"><title>{escape(reference.label)}</title></line>'
                f'<text x="{x + 4:.1f}" y="{top + 10}" font-size="10" fill="{reference.colour}" {HALO}>{escape(reference.label)}</text>'
            )
    for point in points:
        colour = TONES.get(point.tone, TONES["default"])
        tip = f"{point.label}: {x_label or 'x'} {value_format(point.x)}, {y_label or 'y'} {value_format(point.y)}"
        parts.append(
            f'<circle cx="{sx(point.x):.1f}" cy="{sy(point.y):.1f}" r="4.5" fill="{colour}" fill-opacity=".8" stroke="#fff" '
            f'data-label="{_attr(point.label)}" data-x="{point.x:.6g}" data-y="{point.y:.6g}"><title>{escape(tip)}</title></circle>'
        )
        if point.tone in labelled and point.label:
            right_half = sx(point.x) > (left + width - right) / 2
            parts.append(
                f'<text x="{sx(point.x) + (-7 if right_half else 7):.1f}" y="{sy(point.y) + 4:.1f}" font-size="10" '
                f'text-anchor="{"end" if right_half else "start"}" fill="{colour}" {HALO}>{escape(point.label)}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


# --- shared pieces --------------------------------------------------------------------------------------------


def _frame(x0: float, y0: float, x1: float, y1: float) -> str:
    return (
        f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" fill="none" stroke="#d0d5dd"/>'
    )


def _h_grid(x0: float, x1: float, y: float, label: str) -> str:
    return (
        f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
        f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="{MUTED_INK}">{escape(label)}</text>'
    )


def _h_reference(x0: float, x1: float, y: float, reference: Reference) -> str:
    return (
        f'<line class="reference" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{reference.colour}" stroke-width="1.5" '
        f'stroke-dasharray="5 3" data-value="{reference.value:.6g}"><title>{escape(reference.label)}</title></line>'
        f'<text x="{x1 - 4}" y="{y - 4:.1f}" font-size="10" text-anchor="end" fill="{reference.colour}" {HALO}>{escape(reference.label)}</text>'
    )


def _axis_labels(width, height, left, top, bottom, x_label: str, y_label: str) -> list[str]:
    parts = []
    if x_label:
        parts.append(
            f'<text x="{(left + width) / 2:.1f}" y="{height - 6}" font-size="11" text-anchor="middle" fill="{MUTED_INK}">'
            f"{escape(x_label)}</text>"
        )
    if y_label:
        middle = (top + height - bottom) / 2
        parts.append(
            f'<text x="12" y="{middle:.1f}" font-size="11" text-anchor="middle" fill="{MUTED_INK}" '
            f'transform="rotate(-90 12 {middle:.1f})">{escape(y_label)}</text>'
        )
    return parts


def _clip(text: str, pixels: float) -> str:
    """Shorten ``text`` to about what fits in ``pixels`` at 11px (the full text stays in the mark's title)."""
    fits = max(int(pixels / 6.2), 4)
    return text if len(text) <= fits else text[: fits - 1] + "…"


def _shade(share: float) -> str:
    """Near-white (so an empty cell still shows) to the series blue, by ``share`` in [0, 1]."""
    low, high = (246, 248, 251), (0, 84, 166)
    r, g, b = (round(lo + (hi - lo) * share) for lo, hi in zip(low, high))
    return f"#{r:02x}{g:02x}{b:02x}"
