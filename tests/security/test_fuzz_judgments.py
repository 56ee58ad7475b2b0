"""Judgment bodies fuzzed with Hypothesis against the real API, for every task kind.

A body is drawn near the fields of docs/task-kinds.md (right names, wrong types, out-of-range numbers, unknown
response ids, NUL and other hostile text, missing or oversized idempotency keys) and posted by the task's annotator.
Each example runs in a savepoint that is rolled back, so every body meets the same open task. The answer is a
201 that stored exactly one judgment, or a 4xx whose ``detail`` says why and that stored nothing and left the task
as it was; never anything else.
"""

from __future__ import annotations

import json
import os

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate import actions
from annotate.imports import parse_items
from annotate.models import Judgment, Kind, Task

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("ARBITER_FUZZ_EXAMPLES", "3")) * 20
RESPONSES = {Kind.PAIRWISE: 2, Kind.RANKING: 3, Kind.RATING: 2, Kind.STEPS: 2, Kind.DEMONSTRATION: 2}

hostile = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", " ", "\x00", "A\x00", "\u2028", "<script>alert(1)</script>", "x" * 20_001]),
)
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False), hostile
)
junk = st.recursive(
    leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile, inner, max_size=2), max_leaves=5
)


@st.composite
def valid_body(draw, task) -> dict:
    """An answer the task's kind accepts (then maybe spoiled by ``body``)."""
    project, ids = task.project, list(task.display_order)
    key = {"idempotency_key": draw(st.text(min_size=1, max_size=8).filter(lambda k: "\x00" not in k))}
    if project.kind == Kind.PAIRWISE:
        choices = st.sampled_from(["A", "B", "tie", "both_bad"])
        return {
            "choice": draw(choices),
            "strength": draw(st.integers(0, 3)),
            "criteria": {c: draw(choices) for c in project.criteria},
            **key,
        }
    if project.kind == Kind.RANKING:
        return {"ranking": draw(st.permutations(ids)), **key}
    if project.kind == Kind.RATING:
        scores = st.sampled_from(list(project.scale_values))
        return {"ratings": {str(i): {c: draw(scores) for c in project.rating_criteria} for i in ids}, **key}
    if project.kind == Kind.STEPS:
        labels = st.sampled_from(["positive", "negative", "neutral", "+", "-", 0, 1])
        return {"steps": {str(i): draw(st.lists(labels, min_size=2, max_size=2)) for i in ids}, **key}
    return {"text": draw(st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and "\x00" not in t)), **key}


@st.composite
def body(draw, task):
    ids = list(task.display_order)
    response_id = st.one_of(st.sampled_from(ids), st.integers(-1, 10**12), st.sampled_from([str(i) for i in ids]), leaf)
    fields = {
        "choice": st.one_of(st.sampled_from(["A", "B", "tie", "both_bad", "C", "a"]), leaf),
        "strength": st.one_of(st.integers(-2, 5), leaf),
        "criteria": st.one_of(
            st.dictionaries(st.sampled_from(["helpful", "harmless", "x"]), st.sampled_from(["A", "B", "tie"])), junk
        ),
        "demonstration": hostile,
        "ranking": st.one_of(
            st.permutations(ids),
            st.lists(st.one_of(response_id, st.lists(response_id, max_size=2), junk), max_size=4),
            junk,
        ),
        "ratings": st.one_of(
            st.fixed_dictionaries(
                {str(i): st.fixed_dictionaries({"overall": st.one_of(st.integers(0, 8), junk)}) for i in ids}
            ),
            junk,
        ),
        "steps": st.one_of(
            st.fixed_dictionaries(
                {
                    str(i): st.lists(
                        st.one_of(st.sampled_from(["positive", "negative", "neutral", "meh"]), junk), max_size=3
                    )
                    for i in ids
                }
            ),
            junk,
        ),
        "text": hostile,
        "based_on": response_id,
        "rationale": st.one_of(hostile, leaf),
        "duration_ms": st.one_of(st.integers(-5, 2**40), leaf),
        "idempotency_key": st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["", "k" * 101, "a\x00b"]), leaf),
    }
    base = draw(st.one_of(valid_body(task), st.just({})))
    chosen = draw(st.sets(st.sampled_from(sorted(fields)), max_size=2 if base else 6))
    payload = {**base, **{name: draw(fields[name]) for name in chosen}}
    if draw(st.booleans()):  # most real clients send a key
        payload.setdefault("idempotency_key", draw(st.text(min_size=1, max_size=8)))
    return payload


def _open_task(kind: str, username: str):
    project = actions.create_project(
        slug=f"fz-{kind}", kind=kind, overlap=1, criteria=["helpful", "harmless"] if kind == Kind.PAIRWISE else []
    )
    rows = [
        {
            "id": "i",
            "prompt": "Add 2 and 2.",
            "responses": [f"It is {4 + r}.\nSo {4 + r}." for r in range(RESPONSES[kind])],
        }
    ]
    actions.import_items(project, parse_items("".join(json.dumps(r) + "\n" for r in rows).encode(), "jsonl", kind))
    user = actions.add_member(project, username, "annotator").user
    return actions.assign_next_task(user, project), user


@pytest.fixture
def open_tasks(api_client_for):
    tasks = {}
    for kind in RESPONSES:
        task, user = _open_task(kind, f"fz-{kind}")
        tasks[kind] = (task, api_client_for(user))
    return tasks


def test_a_judgment_body_is_stored_whole_or_refused_with_a_reason(open_tasks):
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(data=st.data(), kind=st.sampled_from(sorted(RESPONSES)))
    def check(data, kind):
        task, client = open_tasks[kind]
        payload = data.draw(body(task))
        with transaction.atomic():
            before = Judgment.objects.count()
            answer = client.post(f"/api/tasks/{task.pk}/judgments/", payload, format="json")
            after = Judgment.objects.count()
            status = Task.objects.get(pk=task.pk).status
            transaction.set_rollback(True)
        seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
        assert answer.status_code in (201, 400), (answer.status_code, payload, answer.content[:300])
        if answer.status_code == 201:
            assert after == before + 1 and status == Task.Status.DONE
            assert answer.json()["idempotency_key"] == payload["idempotency_key"]
        else:
            assert after == before and status == Task.Status.LEASED
            detail = answer.json()["detail"]
            assert isinstance(detail, str) and len(detail) > 10, detail

    check()
    # The property held over both outcomes, not vacuously over refusals only.
    assert seen.get(201, 0) >= 3 and seen.get(400, 0) >= 3, seen


@pytest.mark.parametrize(
    "kind, field, value",
    [
        (
            Kind.STEPS,
            "steps",
            "nested",
        ),  # lists and objects as step labels (once a 500: unhashable in the alias lookup)
        (Kind.STEPS, "steps", {"[1]": ["+"]}),
        (Kind.RANKING, "ranking", [{"a": 1}]),
        (Kind.RANKING, "ranking", [[[1]]]),
        (Kind.RATING, "ratings", {"1": {"overall": [1]}}),
        (Kind.DEMONSTRATION, "text", "A\x00B"),  # NUL cannot be stored by PostgreSQL
        (Kind.PAIRWISE, "rationale", "why\x00"),
    ],
)
def test_known_hostile_bodies_are_refused(open_tasks, kind, field, value):
    task, client = open_tasks[kind]
    if value == "nested":
        value = {str(task.display_order[0]): [[1], {}], str(task.display_order[1]): ["+", "-"]}
    payload = {"idempotency_key": "k", field: value}
    if kind == Kind.PAIRWISE:
        payload.update(choice="A", criteria={"helpful": "A", "harmless": "B"})
    answer = client.post(f"/api/tasks/{task.pk}/judgments/", payload, format="json")
    assert answer.status_code == 400 and answer.json()["detail"], answer.content
    assert not Judgment.objects.filter(task=task).exists()


def test_a_nul_in_the_idempotency_key_is_refused(open_tasks):
    task, client = open_tasks[Kind.DEMONSTRATION]
    answer = client.post(
        f"/api/tasks/{task.pk}/judgments/", {"idempotency_key": "a\x00b", "text": "Fine."}, format="json"
    )
    assert answer.status_code == 400 and "idempotency_key" in answer.json()["detail"]
