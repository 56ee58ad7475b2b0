"""Server-rendered SVG line charts of a run's metrics (no JavaScript, no CDN). Pure: points in, markup out.

    line_chart({"loss": [(5, 0.69), (10, 0.41)], "eval_loss": [(10, 0.52)]}, title="Loss")
"""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

COLOURS = ["#3559e0", "#e0623a", "#1f9d55", "#8e44ad"]


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high == low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


def _format(value: float) -> str:
    return f"{value:.3g}"


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, width: int = 460, height: int = 220,
               y_range: tuple[float, float] | None = None) -> SafeString:  # fmt: skip
    """An SVG with one polyline per series (a series of one point is a dot), axes with 5 ticks and a legend."""
    series = {name: sorted(points) for name, points in series.items() if points}
    left, right, top, bottom = 48, 12, 28, 34
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="16" font-size="13" font-weight="600">{escape(title)}</text>']  # fmt: skip
    if not series:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" fill="#667085">no data yet</text></svg>')
        return mark_safe("".join(parts))
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#e4e7ec"/>')
    for y in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#f2f4f7"/>')
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" font-size="10" text-anchor="end" fill="#667085">{_format(y)}</text>')
    for x in _ticks(x0, x1):
        parts.append(f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle" fill="#667085">{int(round(x))}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" font-size="10" text-anchor="middle" fill="#667085">step</text>')
    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(points) == 1:
            x, y = points[0]
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}"/>')
        else:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        lx = left + 8 + i * 120
        parts.append(f'<rect x="{lx}" y="{top + 6}" width="10" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{top + 11}" font-size="10">{escape(name)} {_format(points[-1][1])}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def run_charts(series: dict[str, list[tuple[int, float]]]) -> list[SafeString]:
    """The run page's charts: loss (train, eval, LM), accuracy (train, held out) when logged."""
    charts = [line_chart({k: series.get(k, []) for k in ("loss", "eval_loss", "lm_loss")}, title="Loss")]
    accuracy = {k: v for k, v in series.items() if k == "accuracy" or (k.startswith("eval_accuracy"))}
    if accuracy:
        charts.append(line_chart(accuracy, title="Pairwise accuracy", y_range=(0.0, 1.0)))
    return charts
