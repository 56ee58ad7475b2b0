"""Reward models and DPO from AI judges' votes (the RLAIF stage of Constitutional AI): ``votes=ai|all`` makes the
run's snapshot from those votes, and a snapshot made from other votes is refused."""

from __future__ import annotations

import pytest

from annotate import actions
from annotate.exports import ExportOptions
from annotate.imports import parse_votes
from annotate.models import Item
from tests.conftest import jsonl
from tests.judges import make_judge, stored_vote
from training import launching
from training.launching import TrainingError

pytestmark = pytest.mark.django_db


@pytest.fixture
def judged(make_project):
    """8 items: people prefer response 0 on every item; a judge prefers response 1 on the first 6."""
    project = make_project(slug="rlaif", n_items=8, overlap=1)
    votes = [{"item": f"item-{i}", "annotator": "person", "winner": 0} for i in range(8)]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    critic = make_judge(project, "critic")
    for item in Item.objects.filter(project=project).order_by("id")[:6]:
        stored_vote(critic, item, 1)
    return project


def _chosen_indexes(snapshot) -> list[int]:
    import json

    rows = [json.loads(line) for line in (snapshot.folder / "train.jsonl").read_text().splitlines()]
    rows += [
        json.loads(line) for p in [snapshot.folder / "test.jsonl"] if p.exists() for line in p.read_text().splitlines()
    ]
    texts = {r.text: r.index for item in Item.objects.filter(project=snapshot.project) for r in item.responses.all()}
    return sorted(texts[row["chosen"]] for row in rows)


def test_reward_runs_take_the_votes_they_ask_for(judged, settings):
    settings.TRAINING_DEFAULT_TEST_SIZE = 0.0
    human = launching.launch_run(project=judged, kind="reward", base_model="tiny-llama", enqueue=False)
    assert human.snapshot.options["source"] == "human" and _chosen_indexes(human.snapshot) == [0] * 8
    ai = launching.launch_run(
        project=judged, kind="reward", base_model="tiny-llama", enqueue=False, values={"votes": "ai"}
    )
    assert ai.snapshot.options["source"] == "ai" and _chosen_indexes(ai.snapshot) == [1] * 6
    assert ai.snapshot.counts["n_ai_votes"] == 6
    dpo = launching.launch_run(
        project=judged, kind="dpo", base_model="tiny-causal", enqueue=False, values={"votes": "ai"}
    )
    assert dpo.snapshot == ai.snapshot  # the same export: one snapshot


def test_a_snapshot_of_other_votes_is_refused(judged, settings):
    settings.TRAINING_DEFAULT_TEST_SIZE = 0.0
    snapshot, _ = actions.create_snapshot(judged, ExportOptions(format="trl", test_size=0.0, seed=0))
    with pytest.raises(TrainingError, match="made from human votes; this run asks for votes=ai"):
        launching.launch_run(
            project=judged,
            kind="reward",
            base_model="tiny-llama",
            snapshot=snapshot,
            enqueue=False,
            values={"votes": "ai"},
        )
    with pytest.raises(Exception, match="votes"):
        launching.launch_run(
            project=judged, kind="reward", base_model="tiny-llama", enqueue=False, values={"votes": "robots"}
        )
