"""Defaults that fit the method, what a run was trained on, the progress lines and the run page's headline: the
learning rate by method (an explicit value wins), n_train beside n_train_examples_seen, a loss point at the end of
every run, the held-out accuracy equal to TRL's own evaluation, and the kind's key metrics in the log."""

import re
from types import SimpleNamespace

import pytest
from django.urls import reverse

from annotate.models import Role
from tests.training.conftest import FAST, toy_rows, write_jsonl
from training import cards, kinds, launching
from training.models import MetricPoint, TrainingRun
from training.runners.config import ADAPTER_LEARNING_RATE_FACTOR
from training.runners.dpo_config import DPORunConfig
from training.runners.reward import RewardRunConfig, run
from training.supervisor import Monitor

# --- learning rate by method --------------------------------------------------------------------------


def test_dpo_learning_rate_depends_on_the_method_and_an_explicit_value_wins():
    assert DPORunConfig.from_dict({}).learning_rate == 1e-6  # TRL's DPOConfig default, for full training
    assert DPORunConfig.from_dict({"method": "lora"}).learning_rate == 1e-5  # ten times: too small for LoRA otherwise
    assert DPORunConfig.from_dict({"method": "qlora"}).learning_rate == 1e-5
    assert DPORunConfig.from_dict({"method": "lora", "learning_rate": 3e-6}).learning_rate == 3e-6
    assert DPORunConfig.parse_overrides(["learning_rate=none"]) == {"learning_rate": None}
    assert DPORunConfig.from_dict({"method": "lora", "learning_rate": None}).learning_rate == 1e-5
    (row,) = [r for r in DPORunConfig.describe() if r["name"] == "learning_rate"]
    assert "Default: 1e-06 for method=full, 1e-05 (ten times more) for the adapter methods." in row["help"]


# The kinds whose ``method`` is the PEFT method (synthesize_prompts' is its synthesis method).
PEFT_KINDS = [
    n for n, k in kinds.KINDS.items() if "lora" in {r["name"]: r["choices"] for r in k.config.describe()}["method"]
]


@pytest.mark.parametrize("name", PEFT_KINDS)
def test_every_kind_defaults_to_ten_times_its_full_rate_for_adapters(name):
    config = kinds.get(name).config
    full = config.from_dict({}).learning_rate
    assert full == config.FULL_LEARNING_RATE
    for method in ("lora", "qlora"):
        assert config.from_dict({"method": method}).learning_rate == pytest.approx(full * ADAPTER_LEARNING_RATE_FACTOR)
    assert {"sft": 2e-5, "reward": 1e-5, "ppo": 3e-6, "dpo": 1e-6}.get(name, full) == full


@pytest.mark.django_db
def test_a_launched_run_stores_the_resolved_rate(preference_snapshot, models_root):
    dpo = launching.launch_run(
        project=preference_snapshot.project,
        kind="dpo",
        base_model="tiny-causal",
        snapshot=preference_snapshot,
        values={"method": "lora"},
        enqueue=False,
    )
    assert dpo.config["learning_rate"] == 1e-5 and dpo.config["method"] == "lora"


# --- what a run was trained on, the last step's loss, the held-out accuracy ----------------------------


def test_a_run_stopped_by_max_steps_records_what_it_saw_and_logs_its_last_step(tmp_path, tiny_base):
    rows = toy_rows(80)
    paths = {
        "train": write_jsonl(rows[:64], tmp_path / "train.jsonl"),
        "test": write_jsonl(rows[64:], tmp_path / "test.jsonl"),
    }
    events = []
    # logging_steps above max_steps: before the fix nothing but the run's mean loss was logged (an empty chart).
    config = RewardRunConfig.from_dict(
        {
            **FAST,
            "base_model": str(tiny_base),
            "max_steps": 3,
            "logging_steps": 5,
            "eval_steps": 3,
            "learning_rate": 1e-5,
        }
    )
    metrics = run(config, paths, tmp_path / "out", events.append)
    assert metrics["n_train"] == 64 and metrics["n_train_examples_seen"] == 3 * 8
    assert metrics["train_steps"] == 3 and metrics["train_epochs"] == pytest.approx(24 / 64)
    logged = [(e["step"], e["metrics"]) for e in events if e["event"] == "metrics"]
    assert any(step == 3 and "loss" in values and "accuracy" in values for step, values in logged)
    # The held-out accuracy the runner reports is the number TRL's own evaluation gives on the same 16 pairs (one
    # batch of 16: TRL's mean of batch means is the plain mean), not a value read from another key or log line.
    (trl_eval,) = [values["eval_accuracy"] for step, values in logged if "eval_accuracy" in values]
    assert metrics["eval_pairs"] == 16 and metrics["eval_accuracy"] == pytest.approx(trl_eval)
    assert 0 < trl_eval < 1, trl_eval  # a barely trained model, so that the two could disagree


def test_the_card_says_how_much_of_the_data_was_seen():
    project = SimpleNamespace(slug="prefs", kind="pairwise")
    card = cards.model_card(
        name="prefs-run-1-dpo",
        artifact_id=7,
        kind="dpo",
        project=project,
        run=SimpleNamespace(pk=1, launched_by=None, snapshot_hash="abc"),
        base_model="/models/p",
        snapshot=None,
        dataset_hash="abc",
        config={},
        metrics={
            "n_train": 540,
            "n_train_examples_seen": 96,
            "train_steps": 12,
            "train_epochs": 0.1778,
            "eval_rewards/accuracies": 0.5,
        },
        info={},
    )
    assert "- trained on: 96 of 540 pairs seen, 12 steps (0.18 epochs)" in card
    assert "| eval_rewards/accuracies | 0.5 | held-out |" in card
    assert "share of held-out pairs" not in card  # the reward model's accuracy sentence is for reward models


# --- progress lines ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_progress_lines_show_the_kinds_key_metrics(preference_snapshot, models_root, tmp_path):
    def line_for(kind: str, base: str, values: dict) -> str:
        launched = launching.launch_run(
            project=preference_snapshot.project,
            kind=kind,
            base_model=base,
            snapshot=preference_snapshot,
            values={"max_steps": 30},
            enqueue=False,
        )
        monitor = Monitor(launched, tmp_path / f"{kind}.log")
        monitor.handle(("event", {"event": "metrics", "step": 5, "total": 30, "metrics": values}))
        monitor.close()
        return monitor.tail[-1]

    noise = {"learning_rate": 1e-5, "grad_norm": 1.2, "epoch": 0.5}
    assert line_for("reward", "tiny-llama", {"loss": 0.5, "accuracy": 0.75, **noise}) == (
        "[step 5/30] loss 0.5, accuracy 0.75"
    )
    dpo = {"loss": 0.69, "rewards/accuracies": 0.625, "rewards/margins": 0.0123, "rewards/chosen": 0.1, **noise}
    assert (
        line_for("dpo", "tiny-causal", dpo) == "[step 5/30] loss 0.69, rewards/accuracies 0.625, rewards/margins 0.0123"
    )
    assert line_for("reward", "tiny-llama", {"eval_accuracy": 0.9, "eval_loss": 0.3}) == (
        "[step 5/30] eval_loss 0.3, eval_accuracy 0.9"
    )


# --- the run page --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_run_page_leads_with_the_held_out_accuracy_and_says_what_was_seen(
    client, preference_snapshot, make_member, tiny_base
):
    admin = make_member(preference_snapshot.project, "boss", Role.ADMIN)
    launched = launching.launch_run(
        project=preference_snapshot.project,
        kind="reward",
        base_model="tiny-llama",
        snapshot=preference_snapshot,
        values={"max_steps": 4, "logging_steps": 5},
        enqueue=False,
    )
    metrics = {
        "accuracy": 0.667,
        "eval_accuracy": 0.0,
        "eval_pairs": 3,
        "n_train": 540,
        "n_train_examples_seen": 32,
        "train_steps": 4,
        "train_epochs": 0.06,
        "train_loss": 0.69,
    }
    TrainingRun.objects.filter(pk=launched.pk).update(status="succeeded", metrics=metrics, progress_total=4)
    # A run of the old kind: logging_steps above max_steps left only the trainer's mean loss at the last step.
    MetricPoint.objects.create(run=launched, step=4, values={"train_loss": 0.69, "train_runtime": 1.0})
    client.force_login(admin)
    html = client.get(reverse("training-run", args=[launched.pk])).content.decode()
    headline = re.search(r'<dl class="headline">(.*?)</dl>', html, re.S)[1]
    assert "Pairwise accuracy" in headline and "held-out" in headline and "0 of 3 held-out pairs" in headline
    assert "0.667" not in headline  # the training batches' accuracy is not the headline
    assert "Trained on: 32 of 540 examples seen, 4 steps (0.06 epochs)" in html
    assert "no data yet" not in html and 'data-series="Mean loss, whole run" data-x="4"' in html
