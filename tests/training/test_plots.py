"""The run page's numbers (training/plots.py): which charts a kind gets, series named by their split, whole-step ticks,
the headline's held-out metrics with their denominators, and what a run was trained on."""

import re

from training.plots import HELD_OUT, TRAIN_BATCHES, headline, run_charts, step_ticks, trained_on
from training.runners.dpo_config import DPORunConfig
from training.runners.grpo_config import GRPORunConfig
from training.runners.reward_config import RewardRunConfig


def _points(svg: str) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {}
    for name, x, y in re.findall(r'data-series="([^"]+)" data-x="([^"]+)" data-y="([^"]+)"', svg):
        found.setdefault(name, []).append((float(x), float(y)))
    return found


def _x_ticks(svg: str) -> list[str]:
    """The labels under the x axis (font-size 10, centred, on the line below the plot)."""
    return re.findall(
        r'<text x="[\d.]+" y="196" font-size="10" text-anchor="middle" fill="#5d6675">([^<]+)</text>', svg
    )


def test_reward_charts_name_what_they_measure_and_on_which_split():
    loss, accuracy = run_charts(
        {
            "loss": [(10, 0.41), (5, 0.69)],
            "eval_loss": [(10, 0.52)],
            "accuracy": [(5, 0.6), (10, 0.8)],
            "eval_accuracy": [(10, 0.7)],
            "eval_accuracy_helpful": [(10, 0.75)],
            "learning_rate": [(5, 1e-5)],
        },
        RewardRunConfig,
    )
    assert ">Loss</title>" in loss and ">training step</text>" in loss
    assert _points(loss) == {"training batches": [(5, 0.69), (10, 0.41)], "held-out": [(10, 0.52)]}
    assert ">Pairwise accuracy</title>" in accuracy
    assert _points(accuracy) == {
        "training batches": [(5, 0.6), (10, 0.8)],
        "held-out": [(10, 0.7)],
        "held-out: helpful": [(10, 0.75)],
    }
    # The description says what each split is (a screen reader announces it; the chart's legend names the split).
    assert "training batches: the mean over the training batches since the previous point" in accuracy
    assert "held-out: the snapshot&#x27;s test split" in accuracy
    assert 'viewBox="0 0 460 220"' in loss and loss.count("<polyline") == 1 and accuracy.count("<polyline") == 1


def test_each_kind_charts_its_own_key_metrics():
    dpo = run_charts(
        {"loss": [(1, 0.7), (2, 0.6)], "rewards/accuracies": [(1, 0.5), (2, 0.75)], "rewards/margins": [(2, 0.1)]},
        DPORunConfig,
    )
    assert [re.search(r"<title id=[^>]+>([^<]+)</title>", c)[1] for c in dpo] == [
        "Loss",
        "Implicit-reward accuracy",
        "Implicit-reward margin",
    ]
    grpo = run_charts({"reward": [(1, 0.1), (2, 0.3)], "kl": [(1, 0.0), (2, 0.02)]}, GRPORunConfig)
    assert [_points(c) for c in grpo] == [
        {"sampled responses": [(1, 0.1), (2, 0.3)]},
        {"sampled responses": [(1, 0.0), (2, 0.02)]},
    ]


def test_steps_are_whole_numbers_on_the_x_axis():
    assert step_ticks([2, 3, 4]) == [(2, "2"), (3, "3"), (4, "4")]  # not "2 2 3 4 4" from half steps
    assert step_ticks([1, 2]) == [(1, "1"), (2, "2")]
    assert step_ticks([4]) == [(4, "4")]
    assert [label for _, label in step_ticks([0, 1000])] == ["0", "200", "400", "600", "800", "1000"]
    (loss,) = run_charts({"loss": [(2, 0.7), (3, 0.6), (4, 0.5)]}, RewardRunConfig)[:1]
    assert _x_ticks(loss) == ["2", "3", "4"]


def test_a_run_that_logged_only_its_mean_loss_still_has_a_loss_point():
    """Runs recorded before the last step was always logged: the mean loss of the run stands in, named so."""
    (loss,) = run_charts({"train_loss": [(4, 0.66)]}, RewardRunConfig)
    assert _points(loss) == {"Mean loss, whole run": [(4, 0.66)]}
    (loss,) = run_charts({"loss": [(4, 0.7)], "train_loss": [(4, 0.66)]}, RewardRunConfig)
    assert _points(loss) == {"training batches": [(4, 0.7)]}  # the run's own points are enough


def test_an_active_run_without_points_says_so_and_a_finished_one_draws_no_empty_chart():
    assert run_charts({}, RewardRunConfig) == []
    active = run_charts({}, RewardRunConfig, active=True)
    assert len(active) == 2 and all("no data yet" in c and "<circle" not in c for c in active)


def test_the_headline_is_the_held_out_metric_with_its_denominator():
    metrics = {
        "train_loss": 0.6,
        "accuracy": 0.667,  # a training batch's: not the headline
        "eval_accuracy": 0.0,
        "eval_pairs": 3,
        "eval_accuracy_helpful": 0.5,
        "eval_pairs_helpful": 2,
        "reward_mean": 0.1,
    }
    stats = headline(metrics, RewardRunConfig)
    assert [(s.label, s.split, s.value, s.note) for s in stats] == [
        ("Pairwise accuracy", HELD_OUT, 0.0, "0 of 3 held-out pairs"),
        ("Pairwise accuracy: helpful", HELD_OUT, 0.5, "1 of 2 held-out pairs"),
    ]
    dpo = headline({"eval_rewards/accuracies": 0.75, "eval_loss": 0.6, "n_eval": 8, "loss": 0.5}, DPORunConfig)
    assert [(s.label, s.note) for s in dpo] == [
        ("Implicit-reward accuracy", "6 of 8 held-out pairs"),
        ("Loss", "on 8 held-out pairs"),
    ]
    online = headline({"reward": 0.4, "kl": 0.02, "reward_std": 1.0}, GRPORunConfig)
    assert [(s.label, s.split) for s in online] == [
        ("Reward", "sampled responses"),
        ("KL to the reference", "sampled responses"),
    ]
    assert TRAIN_BATCHES != HELD_OUT


def test_trained_on_says_how_much_of_the_data_the_steps_covered():
    metrics = {"n_train": 540, "n_train_examples_seen": 96, "train_steps": 12, "train_epochs": 0.1778}
    assert trained_on(metrics, DPORunConfig) == "96 of 540 pairs seen, 12 steps (0.18 epochs)"
    assert trained_on({"n_train": 540}, RewardRunConfig) == "540 examples"
    assert trained_on({"win_rate": 0.5}, RewardRunConfig) == ""
