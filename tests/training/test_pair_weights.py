"""Pairs weighted by the reliability of the annotators who voted for them (``weights`` in the export,
``pair_weights`` in reward-model and DPO runs): the weights of a hand-made crowd against Dawid-Skene's confusion
matrices worked out by hand, the weighted losses' gradients, a reward model that learns through an adversary's
flipped pairs only when weighted, and the refusals."""

from __future__ import annotations

import copy
import json
import random

import pandas as pd
import pytest
import torch

from annotate import actions
from annotate.exports import ExportError, ExportOptions, build_rows, build_splits
from annotate.imports import parse_items, parse_votes
from annotate.reliability import dawid_skene
from tests.conftest import jsonl
from tests.training.conftest import FAST, toy_pair, toy_rows, write_jsonl
from training import launching
from training.launching import TrainingError
from training.models import TrainingRun
from training.runners.base import ConfigError, RunnerError
from training.runners.dpo import DPORunConfig
from training.runners.dpo import run as run_dpo
from training.runners.reward import RewardRunConfig
from training.runners.reward import run as run_reward


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: a second intra-op thread only waits at OpenMP barriers, badly so on busy shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _crowd(make_project, slug, n_items, votes_of, seed=0):
    """A pairwise project of toy items (the good response at a random index); ``votes_of(good_index)`` gives each
    annotator's winner index on an item."""
    project = make_project(slug=slug, n_items=0, overlap=3)
    rng = random.Random(seed)
    items, votes = [], []
    for i in range(n_items):
        prompt, good, bad = toy_pair(i, rng)
        good_index = i % 2  # half the items have the good response first
        items.append({"id": f"q{i}", "prompt": prompt, "responses": [good, bad] if good_index == 0 else [bad, good]})
        votes += [
            {"item": f"q{i}", "annotator": name, "winner": winner, "strength": 1}
            for name, winner in votes_of(good_index).items()
        ]
    actions.import_items(project, parse_items(jsonl(items), "jsonl", "pairwise"))
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


def _clicker_crowd(make_project):
    """c1 and c2 always pick the good response; s1 always picks the response shown first (index 0), so they are
    right on half the items only."""
    return _crowd(make_project, "crowd", 12, lambda good: {"c1": good, "c2": good, "s1": 0})


def _is_good(text: str) -> bool:
    return any(word in text for word in ("correct", "helpful", "clear", "polite", "accurate", "kind"))


# --- the export's weights -----------------------------------------------------------------------------------


def test_weights_are_the_reliability_of_each_rows_voters_by_dawid_skene(make_project):
    """By hand: c1 and c2 agree on every item, so the truth is their answer; Dawid-Skene's classes are "the lower
    id wins" (0) and "the other wins" (1), each the truth on 6 of 12 items (priors ½, ½). c1 and c2: confusion
    matrix the identity, accuracy 1. s1 always says 0: P(0 | 0) = 1, P(1 | 1) = 0, accuracy ½·1 + ½·0 = ½."""
    project = _clicker_crowd(make_project)
    fitted = dawid_skene(
        pd.DataFrame(
            [(f"q{i}", name, (i % 2) if name != "s1" else 0) for i in range(12) for name in ("c1", "c2", "s1")],
            columns=["item", "annotator", "label"],
        )
    )
    assert fitted.accuracy.to_dict() == pytest.approx({"c1": 1.0, "c2": 1.0, "s1": 0.5}, abs=1e-6)
    assert fitted.errors.loc["s1"].to_numpy().ravel().tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-6)

    for aggregate in ("majority", "dawid-skene", "bradley-terry"):
        rows = build_rows(project, "trl", aggregate=aggregate, weights="dawid-skene")
        assert len(rows) == 12 and all(_is_good(r["chosen"]) for r in rows), aggregate
        # Where s1 clicked the good response its vote counts with the others': (1 + 1 + ½) / 3; elsewhere c1, c2.
        by_item = {r["id"]: r["weight"] for r in rows}
        assert by_item == pytest.approx({f"q{i}": 5 / 6 if i % 2 == 0 else 1.0 for i in range(12)}, abs=1e-5)

    every_vote = build_rows(project, "trl", aggregate="none", weights="dawid-skene")
    flipped = [r for r in every_vote if not _is_good(r["chosen"])]
    assert len(flipped) == 6 and [r["weight"] for r in flipped] == pytest.approx([0.5] * 6, abs=1e-5)
    assert "weight" not in build_rows(project, "trl")[0]  # off by default: the rows are as before


def test_bradley_terry_skill_weighs_the_clicker_below_the_careful(make_project):
    project = _clicker_crowd(make_project)
    rows = build_rows(project, "trl", aggregate="none", weights="bradley-terry")
    flipped = [r["weight"] for r in rows if not _is_good(r["chosen"])]  # s1's votes alone
    careful = [r["weight"] for r in rows if _is_good(r["chosen"]) and r["id"] in {f"q{i}" for i in range(1, 12, 2)}]
    assert len(flipped) == 6 and len(careful) == 12  # c1's and c2's votes (build_rows does not deduplicate)
    assert max(flipped) < min(careful) - 0.2
    assert all(0 < w <= 1 for w in flipped + careful)


def test_weights_are_refused_where_they_cannot_apply(make_project):
    project = _clicker_crowd(make_project)
    for fmt in ("hh", "kto", "openai-dpo", "raw"):
        with pytest.raises(ExportError, match="trl format only"):
            build_rows(project, fmt, weights="dawid-skene")
    with pytest.raises(ExportError, match="Unknown weights"):
        ExportOptions.from_dict({"weights": "majority"})


# --- the weighted losses ------------------------------------------------------------------------------------


def _gradient(trainer, examples) -> torch.Tensor:
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


def _rows(trainer, *weights):
    """The first training examples (tokenized), with these weights (None: without a weight, TRL's own loss)."""
    out = []
    for i, w in enumerate(weights):
        example = {k: v for k, v in trainer.train_dataset[i].items() if k != "weight"}
        out.append(example if w is None else {**example, "weight": w})
    return out


def test_a_weighted_reward_loss_is_trls_with_each_pairs_share_scaled(tmp_path, tiny_base):
    """A pair of weight 0 leaves the gradient as if it were not in the batch; equal weights of 1 give TRL's loss."""
    import datasets
    from trl import RewardConfig

    from training.runners import reward
    from training.runners.base import training_arguments

    config = RewardRunConfig.from_dict({**FAST, "base_model": str(tiny_base), "pair_weights": "dawid-skene"})
    model, tokenizer = reward._load_base(config, "fp32")
    model.eval()  # no dropout: the same batch gives the same gradient
    rows = [{**row, "weight": 1.0} for row in toy_rows(4)]
    trainer = reward._reward_trainer_class()(
        model=model,
        args=training_arguments(config, RewardConfig, str(tmp_path), "fp32", has_eval=False),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        weighted=True,
    )
    alone = _gradient(trainer, _rows(trainer, None))
    assert torch.allclose(_gradient(trainer, _rows(trainer, 2.0, 0.0)), alone, atol=1e-6)
    both = _gradient(trainer, _rows(trainer, None, None))
    assert torch.allclose(_gradient(trainer, _rows(trainer, 1.0, 1.0)), both, atol=1e-6)
    assert not torch.allclose(_gradient(trainer, _rows(trainer, 1.0, 0.0)), both, atol=1e-4)


def test_a_weighted_dpo_loss_is_trls_with_each_pairs_share_scaled(tmp_path, models_root):
    import datasets
    from trl import DPOConfig

    from training.runners import dpo
    from training.runners.base import load_tokenizer, training_arguments
    from training.runners.policy import ensure_policy_chat_template, load_policy_model

    base = models_root / "tiny-causal"
    config = DPORunConfig.from_dict({**FAST, "base_model": str(base), "pair_weights": "dawid-skene"})
    tokenizer = load_tokenizer(str(base))
    ensure_policy_chat_template(tokenizer)
    model = load_policy_model(str(base), config, "fp32").eval()
    pairs = [{**pair, "weight": 1.0} for pair in dpo.preference_rows(toy_rows(4), weighted=False)]
    trainer = dpo._trainer_class(False, weighted=True)(
        model=model,
        ref_model=copy.deepcopy(model).requires_grad_(False),
        args=training_arguments(config, DPOConfig, str(tmp_path), "fp32", has_eval=False, loss_weights=None),
        train_dataset=datasets.Dataset.from_list(pairs),
        processing_class=tokenizer,
    )
    # The policy starts as its reference: every gradient is the same, pair by pair. Move it first.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    alone = _gradient(trainer, _rows(trainer, None))
    assert torch.allclose(_gradient(trainer, _rows(trainer, 2.0, 0.0)), alone, atol=1e-6)
    both = _gradient(trainer, _rows(trainer, None, None))
    assert torch.allclose(_gradient(trainer, _rows(trainer, 1.0, 1.0)), both, atol=1e-6)
    assert not torch.allclose(_gradient(trainer, _rows(trainer, 1.0, 0.0)), both, atol=1e-4)


# --- runs ---------------------------------------------------------------------------------------------------


def test_weighting_learns_through_an_adversarys_flipped_pairs(make_project, tmp_path, tiny_base):
    """r1 and r2 pick the good response, x always the bad one: every item gives one pair each way (aggregate
    none), so half the training pairs are flipped. Unweighted, the reward model cannot tell good from bad; with
    Dawid-Skene weights (x's pairs weigh ~0) it ranks held-out pairs as r1 and r2 do. Same seed, same data."""
    project = _crowd(make_project, "flipped", 48, lambda good: {"r1": good, "r2": good, "x": 1 - good})
    splits = build_splits(project, ExportOptions(format="trl", aggregate="none", weights="dawid-skene"))
    train = splits["train"]
    assert len(train) == 96 and sum(not _is_good(r["chosen"]) for r in train) == 48
    assert max(r["weight"] for r in train if not _is_good(r["chosen"])) < 1e-3
    paths = {
        "train": write_jsonl(train, tmp_path / "train.jsonl"),
        "test": write_jsonl(toy_rows(24, seed=7), tmp_path / "test.jsonl"),
    }
    accuracy = {}
    for weights in ("none", "dawid-skene"):
        config = RewardRunConfig.from_dict(
            {**FAST, "max_steps": 24, "base_model": str(tiny_base), "pair_weights": weights, "use_margin": False}
        )
        metrics = run_reward(config, paths, tmp_path / weights, lambda event: None)
        accuracy[weights] = metrics["eval_accuracy"]
    assert accuracy["dawid-skene"] >= 0.9
    assert accuracy["dawid-skene"] >= accuracy["none"] + 0.25


@pytest.mark.parametrize(
    "values", [{}, {"method": "lora", "precompute_ref_log_probs": True, "learning_rate": 1e-2}, {"reference": "none"}]
)
def test_a_weighted_dpo_run_trains_and_saves(tmp_path, models_root, values):
    rows = [{**row, "weight": w} for row, w in zip(toy_rows(16), [1.0, 0.25] * 8)]
    paths = {"train": write_jsonl(rows, tmp_path / "train.jsonl")}
    config = DPORunConfig.from_dict(
        {
            **FAST,
            "max_steps": 4,
            "base_model": str(models_root / "tiny-causal"),
            "pair_weights": "bradley-terry",
            **values,
        }
    )
    metrics = run_dpo(config, paths, tmp_path / "out", lambda event: None)
    assert metrics["n_train"] == 16 and metrics["train_rewards/margins"] > 0
    assert json.loads((tmp_path / "out" / "arbiter.json").read_text())["config"]["pair_weights"] == "bradley-terry"


# --- refusals -----------------------------------------------------------------------------------------------


def test_options_that_cannot_apply_are_refused(tmp_path, tiny_base, models_root):
    with pytest.raises(ConfigError, match="needs objective=bradley_terry"):
        RewardRunConfig.from_dict({"objective": "regression", "pair_weights": "dawid-skene"})
    with pytest.raises(ConfigError, match="aot losses"):
        DPORunConfig.from_dict({"loss_type": ["aot"], "pair_weights": "dawid-skene"})
    with pytest.raises(ConfigError, match="pair_weights must be one of"):
        RewardRunConfig.from_dict({"pair_weights": "majority"})
    # A split without weights: named, and nothing written.
    paths = {"train": write_jsonl(toy_rows(8), tmp_path / "train.jsonl")}
    config = RewardRunConfig.from_dict({**FAST, "base_model": str(tiny_base), "pair_weights": "dawid-skene"})
    with pytest.raises(RunnerError, match="needs a weight column"):
        run_reward(config, paths, tmp_path / "rm", lambda event: None)
    assert not any((tmp_path / "rm").iterdir())
    dpo = DPORunConfig.from_dict(
        {**FAST, "base_model": str(models_root / "tiny-causal"), "pair_weights": "dawid-skene"}
    )
    with pytest.raises(RunnerError, match="row 1: pair_weights needs a weight"):
        run_dpo(dpo, paths, tmp_path / "policy", lambda event: None)
    assert not (tmp_path / "policy").exists() or not any((tmp_path / "policy").iterdir())


def test_a_launch_snapshots_with_weights_and_refuses_a_snapshot_without(make_project, settings):
    settings.TRAINING_DEFAULT_TEST_SIZE = 0.0
    project = _clicker_crowd(make_project)
    run = launching.launch_run(
        project=project, kind="reward", base_model="tiny-llama", enqueue=False, values={"pair_weights": "dawid-skene"}
    )
    assert run.snapshot.options["weights"] == "dawid-skene"
    rows = [json.loads(line) for line in (run.snapshot.folder / "train.jsonl").read_text().splitlines()]
    assert sorted({r["weight"] for r in rows}) == pytest.approx([5 / 6, 1.0], abs=1e-5)
    plain, _ = actions.create_snapshot(project, ExportOptions(format="trl", test_size=0.0, seed=0))
    runs = TrainingRun.objects.count()
    for kind, base in (("reward", "tiny-llama"), ("dpo", "tiny-causal")):
        with pytest.raises(TrainingError, match="exported with weights=none; this run asks for pair_weights=dawid"):
            launching.launch_run(
                project=project,
                kind=kind,
                base_model=base,
                snapshot=plain,
                enqueue=False,
                values={"pair_weights": "dawid-skene"},
            )
    assert TrainingRun.objects.count() == runs
    # An unweighted run takes a weighted snapshot: it ignores the column.
    unweighted = launching.launch_run(
        project=project, kind="reward", base_model="tiny-llama", snapshot=run.snapshot, enqueue=False
    )
    assert unweighted.snapshot == run.snapshot
