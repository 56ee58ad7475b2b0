"""A small world for the access and fuzz tests: two projects, people in every role, and one row of every kind
a route can name (items, gold items, tasks, judgments by two annotators, a flag, a snapshot, a training run and a
model artifact). Rows are made through ``annotate.actions`` where that is cheap, directly otherwise; nothing is
trained. Distinctive markers in the data let the tests look for leaks in every answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from annotate import actions
from annotate.actions import create_snapshot
from annotate.exports import ExportOptions
from annotate.imports import parse_items
from annotate.models import Kind, Membership, Role
from training.models import ModelArtifact, TrainingRun

PASSWORD = "a-long-test-password"
# Markers that must appear only where the matrix allows them.
OTHER_MARK = "OTHERPROJECTSECRET"  # text of the other project's items and its name
GOLD_MARK = "GOLDANSWERSECRET"  # inside the gold answers of the main project
BOB_MARK = "BOBRATIONALESECRET"  # the rationale of bob's judgment (another annotator's label)
OUT_MARK = "OLGARATIONALESECRET"  # the rationale of the other project's annotator

# Usernames are distinctive so an export that names people by username is caught by a substring test.
ROLE_USERS = {
    "other": "olga_outsider",  # annotator of the other project only
    "annotator": "alice_annotator",
    "researcher": "rita_researcher",
    "admin": "adam_projectadmin",
    "staff": "sam_staffer",  # is_staff (Django admin), no project membership
}
BOB = "bob_annotator"  # the second annotator of the main project
CARL = "carl_paused"  # a paused annotator, for the reinstate routes


@dataclass
class World:
    main: object
    other: object
    users: dict  # role name -> user (no "anonymous")
    bob: object
    carl: object
    carl_membership: object
    task: object  # alice's open task in main
    bob_task: object
    snapshot: object
    run: object
    artifact: object
    other_run: object
    other_artifact: object
    usernames: list = field(default_factory=list)


def _rows(n: int, prefix: str, text: str = "") -> list[dict]:
    return [
        {
            "id": f"{prefix}-{i}",
            "prompt": f"{text} Question {i} of {prefix}?",
            "responses": [
                {"text": f"{text} Answer {2 * i}.", "model": "m1"},
                {"text": f"{text} Answer {2 * i + 1}.", "model": "m2"},
            ],
        }
        for i in range(n)
    ]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _judge(user, project, rationale: str, winner: str = "A"):
    task = actions.assign_next_task(user, project)
    body = {"choice": winner, "strength": 2, "rationale": rationale, "duration_ms": 1500}
    actions.record_judgment(task, body, f"{user.username}-{task.pk}")
    return task


@pytest.fixture
def world(db, settings, tmp_path, django_user_model) -> World:
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.MODEL_ROOTS = [tmp_path / "models"]
    # Every first task is a gold item (gold_rate 1): gold answers are in play, and must never reach an annotator.
    main = actions.create_project(slug="main", name="Main project", kind=Kind.PAIRWISE, overlap=2, gold_rate=1.0)
    gold_rows = [
        {
            "id": f"gold-{i}",
            "purpose": "gold",
            "gold": {"winner": 0, "rationale": GOLD_MARK},
            "prompt": f"Gold question {i}?",
            "responses": [f"Gold right {i}.", f"Gold wrong {i}."],
        }
        for i in range(2)
    ]
    actions.import_items(main, parse_items(_jsonl(_rows(6, "main") + gold_rows), "jsonl", main.kind))
    other = actions.create_project(slug="otherproj", name=f"Other {OTHER_MARK}", kind=Kind.PAIRWISE, overlap=1)
    actions.import_items(other, parse_items(_jsonl(_rows(3, "other", OTHER_MARK)), "jsonl", other.kind))

    users = {
        "other": actions.add_member(other, ROLE_USERS["other"], Role.ANNOTATOR, PASSWORD).user,
        "annotator": actions.add_member(main, ROLE_USERS["annotator"], Role.ANNOTATOR, PASSWORD).user,
        "researcher": actions.add_member(main, ROLE_USERS["researcher"], Role.RESEARCHER, PASSWORD).user,
        "admin": actions.add_member(main, ROLE_USERS["admin"], Role.ADMIN, PASSWORD).user,
        "staff": django_user_model.objects.create_user(ROLE_USERS["staff"], password=PASSWORD, is_staff=True),
    }
    bob = actions.add_member(main, BOB, Role.ANNOTATOR, PASSWORD).user
    carl_membership = actions.add_member(main, CARL, Role.ANNOTATOR, PASSWORD)
    Membership.objects.filter(pk=carl_membership.pk).update(status=Membership.Status.PAUSED, status_reason="test")
    carl_membership.refresh_from_db()

    # Judgments by two annotators in main (and one in the other project), then an open task for alice.
    for _ in range(2):
        _judge(users["annotator"], main, "alice's own reasons")
    bob_task = _judge(bob, main, BOB_MARK, "B")
    _judge(bob, main, BOB_MARK)
    _judge(users["other"], other, OUT_MARK)
    task = actions.assign_next_task(users["annotator"], main)
    actions.flag_task(bob_task, "broken", "bob's flag note")

    snapshot, _ = create_snapshot(
        main, ExportOptions(format="raw", aggregate="none", test_size=0.0), created_by=users["researcher"]
    )
    run = TrainingRun.objects.create(
        project=main,
        kind="reward",
        status="succeeded",
        config={"learning_rate": 1e-3},
        snapshot=snapshot,
        snapshot_hash=snapshot.content_hash,
        base_model="tiny-llama",
        launched_by=users["admin"],
        metrics={"accuracy": 0.75},
        log_tail="step 30 loss 0.1",
    )
    artifact = ModelArtifact.objects.create(
        project=main,
        run=run,
        name="main-reward",
        kind="reward",
        path="models/main-reward",
        base_model="tiny-llama",
        snapshot=snapshot,
        snapshot_hash=snapshot.content_hash,
        config={},
        metrics={"accuracy": 0.75},
    )
    other_snapshot, _ = create_snapshot(other, ExportOptions(format="raw", aggregate="none", test_size=0.0))
    other_run = TrainingRun.objects.create(
        project=other,
        kind="reward",
        status="failed",
        config={},
        snapshot=other_snapshot,
        snapshot_hash=other_snapshot.content_hash,
        base_model=f"{OTHER_MARK}-base",
        error=OTHER_MARK,
    )
    other_artifact = ModelArtifact.objects.create(
        project=other,
        run=other_run,
        name=f"{OTHER_MARK}-model",
        kind="reward",
        path="models/other-reward",
        base_model=f"{OTHER_MARK}-base",
        snapshot=other_snapshot,
        config={},
        metrics={},
    )
    usernames = [*ROLE_USERS.values(), BOB, CARL]
    return World(
        main,
        other,
        users,
        bob,
        carl_membership.user,
        carl_membership,
        task,
        bob_task,
        snapshot,
        run,
        artifact,
        other_run,
        other_artifact,
        usernames,
    )
