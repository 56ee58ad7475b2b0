"""The run page's charts (training/plots.py), drawn by annotate/charts.py: which charts, which series, exact values."""

import re

from training.plots import run_charts


def _points(svg: str) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {}
    for name, x, y in re.findall(r'data-series="([^"]+)" data-x="([^"]+)" data-y="([^"]+)"', svg):
        found.setdefault(name, []).append((float(x), float(y)))
    return found


def test_loss_and_accuracy_charts_carry_the_logged_values():
    loss, accuracy = run_charts(
        {
            "loss": [(10, 0.41), (5, 0.69)],
            "eval_loss": [(10, 0.52)],
            "accuracy": [(5, 0.6), (10, 0.8)],
            "eval_accuracy_helpful": [(10, 0.75)],
            "learning_rate": [(5, 1e-5)],
        }
    )
    assert "<title" in loss and ">Loss</title>" in loss and ">step</text>" in loss
    assert _points(loss) == {"loss": [(5, 0.69), (10, 0.41)], "eval_loss": [(10, 0.52)]}
    assert ">Pairwise accuracy</title>" in accuracy
    assert _points(accuracy) == {"accuracy": [(5, 0.6), (10, 0.8)], "eval_accuracy_helpful": [(10, 0.75)]}
    assert 'viewBox="0 0 460 220"' in loss and loss.count("<polyline") == 1 and accuracy.count("<polyline") == 1


def test_a_run_without_accuracy_has_one_chart_and_an_empty_run_says_so():
    (only,) = run_charts({"loss": [(1, 0.5), (2, 0.4)]})
    assert _points(only) == {"loss": [(1, 0.5), (2, 0.4)]}
    (empty,) = run_charts({})
    assert "no data yet" in empty and "<circle" not in empty
