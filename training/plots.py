"""The run page's charts, drawn by the one chart module, ``annotate/charts.py`` (server-rendered SVG, no JavaScript).

run_charts({"loss": [(5, 0.69), (10, 0.41)], "eval_loss": [(10, 0.52)], "accuracy": [(5, 0.6), (10, 0.8)]})
"""

from __future__ import annotations

from django.utils.safestring import SafeString

from annotate.charts import line_chart

# The run page's charts are a little smaller than the dashboard's: two sit side by side.
WIDTH, HEIGHT = 460, 220


def run_charts(series: dict[str, list[tuple[int, float]]]) -> list[SafeString]:
    """The run page's charts: loss (train, eval, LM), accuracy (train, held out) when logged."""
    loss = {k: series[k] for k in ("loss", "eval_loss", "lm_loss") if series.get(k)}
    charts = [line_chart(loss, title="Loss", x_label="step", width=WIDTH, height=HEIGHT)]
    accuracy = {k: v for k, v in series.items() if k == "accuracy" or k.startswith("eval_accuracy")}
    if accuracy:
        charts.append(
            line_chart(
                accuracy, title="Pairwise accuracy", x_label="step", y_range=(0.0, 1.0), width=WIDTH, height=HEIGHT
            )
        )
    return charts
