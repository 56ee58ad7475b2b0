"""Fixtures of the training tests: a tiny Llama reward backbone saved as safetensors under MODEL_ROOTS, a pairwise
project whose preferences are separable (good words beat bad words), and fast runner settings."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from annotate import actions as annotate_actions
from annotate.imports import parse_items, parse_votes
from tests.conftest import jsonl

GOOD = ["correct", "helpful", "clear", "polite", "accurate", "kind"]
BAD = ["wrong", "rude", "vague", "sloppy", "false", "harsh"]
# Few steps at a high learning rate: a 1-layer model separates the toy set in seconds on a CPU.
FAST = {"learning_rate": 3e-3, "max_steps": 30, "per_device_train_batch_size": 8, "logging_steps": 5}


def toy_pair(i: int, rng: random.Random) -> tuple[str, str, str]:
    good, bad = " ".join(rng.sample(GOOD, 3)), " ".join(rng.sample(BAD, 3))
    return f"Question {i}: tell me about topic {i}.", f"This answer is {good}.", f"This answer is {bad}."


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt, chosen, rejected = toy_pair(i, rng)
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected, "margin": 1.0})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _vocabulary_texts() -> list[str]:
    rng = random.Random(1)
    texts = []
    for i in range(200):
        prompt, chosen, rejected = toy_pair(i, rng)
        texts += [prompt, chosen, rejected]
    return texts + [" ".join(GOOD + BAD)] * 5


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """MODEL_ROOTS for the tests: tiny-llama (a sequence classifier) and tiny-causal (a language model)."""
    import torch

    from tests.tiny import tiny_causal_lm, tiny_reward_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)  # the same random base model in every session: the tests' thresholds hold for it
    tokenizer = tiny_tokenizer(_vocabulary_texts())
    for name, model in (("tiny-llama", tiny_reward_model(tokenizer)), ("tiny-causal", tiny_causal_lm(tokenizer))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.fixture
def tiny_base(models_root) -> Path:
    return models_root / "tiny-llama"


@pytest.fixture(autouse=True)
def training_settings(settings, tmp_path, models_root):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.MODEL_ROOTS = [models_root]
    settings.TRAINING_HEARTBEAT_SECONDS = 1
    settings.TRAINING_CANCEL_GRACE_SECONDS = 2
    return settings


@pytest.fixture(scope="session")
def trained_reward(tmp_path_factory, models_root) -> Path:
    """A reward model trained once per session by the runner itself (no Django), for scoring tests."""
    from training.runners.reward import RewardRunConfig, run

    folder = tmp_path_factory.mktemp("trained")
    data = toy_rows(80)
    paths = {
        "train": write_jsonl(data[:64], folder / "train.jsonl"),
        "test": write_jsonl(data[64:], folder / "test.jsonl"),
    }
    config = RewardRunConfig.from_dict({**FAST, "base_model": str(models_root / "tiny-llama")})
    metrics = run(config, paths, folder / "model", lambda event: None)
    assert metrics["eval_accuracy"] >= 0.9
    return folder / "model"


@pytest.fixture
def registered_reward(trained_reward, settings, make_project):
    """``trained_reward`` copied under this test's ARTIFACT_ROOT and registered for a project."""
    from training.models import ModelArtifact

    project = make_project(slug="scored", n_items=0)
    relative = Path("models") / "scored" / "rm"
    shutil.copytree(trained_reward, Path(settings.ARTIFACT_ROOT) / relative)
    info = json.loads((trained_reward / "arbiter.json").read_text())
    return ModelArtifact.objects.create(
        project=project,
        name="scored-rm",
        kind="reward",
        path=str(relative),
        base_model=info["base_model_path"],
        config=info["config"],
        metrics=info["metrics"],
    )


@pytest.fixture
def preference_project(make_project):
    """A pairwise project of 50 items whose preferred response is always the one with good words (at a random
    index), each voted by two annotators with strength 1–3."""
    project = make_project(slug="prefs", n_items=0, overlap=2)
    rng = random.Random(3)
    items, votes = [], []
    for i in range(50):
        prompt, good, bad = toy_pair(i, rng)
        good_first = rng.random() < 0.5
        items.append({"id": f"q{i}", "prompt": prompt, "responses": [good, bad] if good_first else [bad, good]})
        for annotator in ("ann-a", "ann-b"):
            votes.append(
                {
                    "item": f"q{i}",
                    "annotator": annotator,
                    "winner": 0 if good_first else 1,
                    "strength": rng.randint(1, 3),
                }
            )
    annotate_actions.import_items(project, parse_items(jsonl(items), "jsonl", "pairwise"))
    annotate_actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


@pytest.fixture
def preference_snapshot(preference_project):
    from annotate.actions import create_snapshot
    from annotate.exports import ExportOptions

    snapshot, _ = create_snapshot(preference_project, ExportOptions(test_size=0.2, seed=1))
    return snapshot
