import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotate import actions, sql
from annotate.actions import Conflict
from annotate.judgments import InvalidJudgment
from annotate.models import Item, Judgment, Task

pytestmark = pytest.mark.django_db


def answer(task, choice="A", strength=2, key=None):
    return actions.record_judgment(task, {"choice": choice, "strength": strength}, key or f"key-{task.pk}")


def test_each_item_gets_exactly_overlap_distinct_annotators(make_project, make_member):
    project = make_project(overlap=2, n_items=5)
    annotators = [make_member(project, f"ann{i}") for i in range(4)]
    seen = {a.pk: set() for a in annotators}
    for _ in range(10):
        for annotator in annotators:
            task = actions.assign_next_task(annotator, project)
            if task is None:
                continue
            assert task.item_id not in seen[annotator.pk], "an annotator got the same item twice"
            seen[annotator.pk].add(task.item_id)
            answer(task)
    assert Judgment.objects.filter(project=project).count() == 10
    per_item = {item.pk: item.n_judgments for item in Item.objects.filter(project=project)}
    assert set(per_item.values()) == {2}
    assert all(actions.assign_next_task(a, project) is None for a in annotators)


def test_the_same_task_comes_back_until_answered(make_project, make_member):
    project = make_project(n_items=3)
    annotator = make_member(project, "ann")
    first = actions.assign_next_task(annotator, project)
    assert actions.assign_next_task(annotator, project).pk == first.pk
    preload = actions.assign_next_task(annotator, project, after=first.pk)
    assert preload.pk != first.pk
    # Two leases at most: asking again after the preloaded one returns the first.
    assert actions.assign_next_task(annotator, project, after=preload.pk).pk == first.pk
    answer(first)
    assert actions.assign_next_task(annotator, project).pk == preload.pk


def test_display_order_is_a_permutation_and_choice_maps_to_identity(make_project, make_member):
    project = make_project(n_items=40, overlap=1)
    annotator = make_member(project, "ann")
    flipped = 0
    for _ in range(40):
        task = actions.assign_next_task(annotator, project)
        ids = sorted(task.item.responses.values_list("id", flat=True))
        assert sorted(task.display_order) == ids
        flipped += task.display_order != ids
        judgment, created = answer(task, choice="B", strength=3)
        assert created
        assert judgment.winner_id == task.display_order[1]
        assert (judgment.outcome, judgment.strength) == ("win", 3)
    # Random order: 40 fair coin flips all landing the same way has probability 2^-39.
    assert 0 < flipped < 40


def test_same_idempotency_key_returns_the_first_judgment(make_project, make_member):
    project = make_project(n_items=2)
    annotator = make_member(project, "ann")
    task = actions.assign_next_task(annotator, project)
    first, created = actions.record_judgment(task, {"choice": "A", "strength": 1, "duration_ms": 900}, "k1")
    # A retry may time itself again: duration_ms is not part of the answer.
    again, created_again = actions.record_judgment(task, {"choice": "A", "strength": 1, "duration_ms": 4000}, "k1")
    assert created and not created_again
    assert again.pk == first.pk and again.outcome == "win" and again.strength == 1 and again.duration_ms == 900
    assert Judgment.objects.count() == 1
    other = actions.assign_next_task(annotator, project)
    with pytest.raises(Conflict, match="another task"):
        answer(other, key="k1")


@pytest.mark.parametrize(
    "changed",
    [{"choice": "B"}, {"strength": 3}, {"rationale": "on second thoughts"}, {"choice": "tie", "strength": None}],
)
def test_the_same_key_with_another_answer_is_refused_and_changes_nothing(make_project, make_member, changed):
    project = make_project(n_items=1)
    task = actions.assign_next_task(make_member(project, "ann"), project)
    body = {"choice": "A", "strength": 1, "rationale": "clearer"}
    first, _ = actions.record_judgment(task, body, "k1")
    with pytest.raises(Conflict, match="idempotency_key 'k1' was already used for a different answer"):
        actions.record_judgment(task, {**body, **changed}, "k1")
    stored = Judgment.objects.get()
    assert (stored.pk, stored.outcome, stored.strength, stored.text, stored.is_current) == (
        first.pk,
        "win",
        1,
        "clearer",
        True,
    )
    # After an edit (a new key), the first key still names the first answer.
    edit, _ = actions.record_judgment(task, {"choice": "B", "strength": 2}, "k2")
    assert actions.record_judgment(task, body, "k1") == (first, False)
    with pytest.raises(Conflict, match="'k1'"):
        actions.record_judgment(task, {"choice": "B", "strength": 2}, "k1")
    assert Judgment.objects.count() == 2 and Judgment.objects.get(is_current=True).pk == edit.pk


def test_a_new_answer_supersedes_without_overwriting(make_project, make_member):
    project = make_project(n_items=1)
    annotator = make_member(project, "ann")
    task = actions.assign_next_task(annotator, project)
    first, _ = answer(task, "A", 1, key="k1")
    second, created = answer(task, "tie", None, key="k2")
    assert created and second.supersedes_id == first.pk
    first.refresh_from_db()
    assert (first.outcome, first.is_current) == ("win", False)
    assert second.is_current and second.outcome == "tie" and second.strength is None
    item = Item.objects.get()
    assert item.n_judgments == 1  # an edit is not a second vote


def test_judgments_are_immutable(make_project, make_member):
    project = make_project(n_items=1)
    task = actions.assign_next_task(make_member(project, "ann"), project)
    judgment, _ = answer(task)
    judgment.strength = 0
    with pytest.raises(ValueError, match="immutable"):
        judgment.save()


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"choice": "C"}, "choice must be one of"),
        ({"choice": "A", "strength": 4}, "strength must be an integer from 0 to 3"),
        ({"choice": "A", "strength": 1.5}, "strength must be an integer"),
        ({"choice": "A", "strength": True}, "strength must be an integer"),
        ({"choice": "A", "duration_ms": -1}, "duration_ms"),
        ({"choice": "A", "rationale": 5}, "rationale must be text"),
    ],
)
def test_bad_answers_are_refused_and_change_nothing(make_project, make_member, payload, message):
    project = make_project(n_items=1)
    task = actions.assign_next_task(make_member(project, "ann"), project)
    with pytest.raises(InvalidJudgment, match=message):
        actions.record_judgment(task, payload, "k")
    task.refresh_from_db()
    assert task.status == Task.Status.LEASED and not Judgment.objects.exists()


def test_an_abandoned_lease_returns_the_item_to_the_pool(make_project, make_member):
    project = make_project(n_items=1, overlap=1, lease_seconds=60)
    slow, fast = make_member(project, "slow"), make_member(project, "fast")
    task = actions.assign_next_task(slow, project)
    assert actions.assign_next_task(fast, project) is None
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    taken = actions.assign_next_task(fast, project)
    assert taken is not None and taken.item_id == task.item_id
    task.refresh_from_db()
    assert task.status == Task.Status.EXPIRED
    answer(taken)
    # The slow annotator comes back after someone else completed the item: refused, nothing stored.
    with pytest.raises(Conflict, match="expired"):
        answer(task)
    assert Judgment.objects.count() == 1
    assert Item.objects.get().n_judgments == 1


def test_a_late_answer_is_accepted_while_the_slot_is_still_free(make_project, make_member):
    project = make_project(n_items=1, overlap=1)
    annotator = make_member(project, "late")
    task = actions.assign_next_task(annotator, project)
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert actions.reclaim_expired_leases(project) == 1
    assert Item.objects.get().open_slots == 1
    judgment, created = answer(task)
    assert created
    item = Item.objects.get()
    assert (item.open_slots, item.n_judgments) == (0, 1)


def test_removing_a_member_releases_their_leases(make_project, make_member):
    project = make_project(n_items=1, overlap=1)
    annotator = make_member(project, "gone")
    actions.assign_next_task(annotator, project)
    actions.remove_member(project.memberships.get(user=annotator))
    assert Item.objects.get().open_slots == 1


def test_import_judgments_counts_toward_overlap(make_project):
    from annotate.imports import parse_votes
    from tests.conftest import jsonl

    project = make_project(n_items=2, overlap=2)
    votes = parse_votes(
        jsonl(
            [
                {"item": "item-0", "annotator": "ext1", "winner": 0, "strength": 3},
                {"item": "item-0", "annotator": "ext2", "winner": None},
                {"item": "item-1", "annotator": "ext1", "winner": 1},
                {"item": "item-1", "annotator": "ext1", "winner": 0},
            ]
        ),
        "jsonl",
    )
    report = actions.import_judgments(project, votes)
    assert (report.created, report.duplicates) == (3, [4])
    item0 = Item.objects.get(external_id="item-0")
    assert (item0.open_slots, item0.n_judgments) == (0, 2)
    winners = Judgment.objects.filter(item=item0).order_by("annotator__username")
    assert [(j.outcome, j.winner_id, j.strength, j.source) for j in winners] == [
        ("win", item0.responses.get(index=0).pk, 3, "import"),
        ("tie", None, None, "import"),
    ]
    assert project.memberships.filter(user__username="ext1", role="annotator").exists()


def test_import_judgments_is_all_or_nothing(make_project):
    from annotate.imports import ImportFailed, parse_votes
    from tests.conftest import jsonl

    project = make_project(n_items=1)
    votes = parse_votes(
        jsonl([{"item": "item-0", "annotator": "a", "winner": 0}, {"item": "nope", "annotator": "b", "winner": 5}]),
        "jsonl",
    )
    with pytest.raises(ImportFailed) as caught:
        actions.import_judgments(project, votes)
    assert caught.value.errors == [(2, "no item with id 'nope' in project demo.")]
    assert not Judgment.objects.exists()


def test_an_item_back_in_the_pool_below_an_annotators_mark_still_reaches_them(make_project, make_member):
    # The pick starts above the highest item an annotator was given; an item that comes back below it (here a
    # skip) is found by the fallback scan from the start once nothing is left above.
    project = make_project(n_items=3, overlap=1)
    first, second = make_member(project, "first"), make_member(project, "second")
    items = list(Item.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    skipped = actions.assign_next_task(first, project)
    assert skipped.item_id == items[0]
    got = []
    for _ in range(2):
        task = actions.assign_next_task(second, project)
        got.append(task.item_id)
        answer(task)
    actions.skip_task(skipped, "Not my language.")
    task = actions.assign_next_task(second, project)
    assert got + [task.item_id] == [items[1], items[2], items[0]]
    answer(task)
    assert actions.assign_next_task(first, project) is None  # never the skipped item again
    assert Item.objects.filter(project=project, open_slots=0).count() == 3


def test_expired_leases_are_reclaimed_every_few_seconds_while_other_items_remain(make_project, make_member):
    project = make_project(n_items=5, overlap=1, lease_seconds=60)
    slow, fast = make_member(project, "slow"), make_member(project, "fast")
    abandoned = actions.assign_next_task(slow, project)
    Task.objects.filter(pk=abandoned.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    # Reclaimed just now: other items are open, so this request does not look for expired leases.
    actions._last_reclaim[project.pk] = time.monotonic()
    answer(actions.assign_next_task(fast, project))
    abandoned.refresh_from_db()
    assert abandoned.status == Task.Status.LEASED
    # RECLAIM_EVERY_SECONDS later the next request reclaims it, and the item is open again.
    actions._last_reclaim[project.pk] = time.monotonic() - actions.RECLAIM_EVERY_SECONDS
    task = actions.assign_next_task(fast, project)
    abandoned.refresh_from_db()
    assert abandoned.status == Task.Status.EXPIRED
    assert Item.objects.get(pk=abandoned.item_id).open_slots == 1
    assert task.item_id != abandoned.item_id  # the pick stays in id order above fast's mark
    taken = {answer(t)[0].item_id for t in iter(lambda: actions.assign_next_task(fast, project), None)}
    assert abandoned.item_id in taken and Item.objects.filter(project=project, open_slots__gt=0).count() == 0


def test_the_api_loop_costs_a_fixed_number_of_statements(make_project, make_member, api_client_for):
    # next-task: token; savepoint, project with the membership's lock and pick mark, held lease, then on PostgreSQL
    # one statement for the pick, the mark's move, the task insert and the responses (elsewhere four); release.
    # submit: token, task with project, item and membership, then on PostgreSQL one statement marks the task done,
    # counts the judgment on the item and inserts it (elsewhere: savepoint, task lock, three writes, release).
    # Tests run inside a transaction, so BEGIN/COMMIT show as SAVEPOINT/RELEASE, and PostgreSQL's one-statement
    # submit gets a savepoint it does not have in production (3 statements there). The counts depend neither on
    # the project size nor on history.
    project = make_project(n_items=30, overlap=2)
    client = api_client_for(make_member(project, "ann"))
    actions._last_reclaim[project.pk] = time.monotonic()
    counts = []
    for i in range(12):
        with CaptureQueriesContext(connection) as next_queries:
            got = client.get(f"/api/projects/{project.slug}/next-task/")
        assert got.status_code == 200
        body = {"choice": "A", "strength": 1, "idempotency_key": f"k{i}"}
        with CaptureQueriesContext(connection) as submit_queries:
            # judgment ids ending in 0 also run the automatic review (about one submit in ten): not counted here.
            posted = client.post(f"/api/tasks/{got.json()['id']}/judgments/", body, format="json")
        assert posted.status_code == 201
        if posted.json()["id"] % actions.REVIEW_EVERY:
            counts.append((len(next_queries), len(submit_queries)))
    assert set(counts) == ({(6, 5)} if connection.vendor == "postgresql" else {(9, 8)})


def test_the_fast_judgment_payload_is_the_serializers(make_project, make_member):
    from annotate.api.serializers import JudgmentSerializer, judgment_payload

    project = make_project(n_items=2, overlap=1)
    annotator = make_member(project, "ann")
    task = actions.assign_next_task(annotator, project)
    first, _ = actions.record_judgment(
        task, {"choice": "B", "strength": 3, "rationale": "B is right.", "duration_ms": 1200}, "k1"
    )
    edit, _ = actions.record_judgment(task, {"choice": "tie"}, "k2")
    for judgment in (first, edit, Judgment.objects.get(pk=edit.pk)):
        assert judgment_payload(judgment) == JudgmentSerializer(judgment).data
    assert judgment_payload(first)["choice"] == "B" and judgment_payload(edit)["supersedes"] == first.pk


def test_the_pick_mark_follows_the_highest_normal_item_given(make_project, make_member):
    from annotate.models import Membership

    project = make_project(n_items=6, overlap=2)
    first, second = make_member(project, "first"), make_member(project, "second")
    ids = list(Item.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    for _ in range(3):
        answer(actions.assign_next_task(first, project))
    mark = lambda user: Membership.objects.get(project=project, user=user).pick_mark  # noqa: E731
    assert mark(first) == ids[2] and mark(second) == 0
    # An item that comes back below the mark (an expired lease) is still served, and does not move the mark down.
    task = actions.assign_next_task(second, project)
    assert task.item_id == ids[0] and mark(second) == ids[0]
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    actions.reclaim_expired_leases(project)
    for _ in range(3):
        answer(actions.assign_next_task(first, project))
    assert mark(first) == ids[5] and actions.assign_next_task(first, project) is None
    third = make_member(project, "third")
    assert actions.assign_next_task(third, project).item_id == ids[0]  # the slot the expired lease gave back
    assert mark(third) == ids[0]


def test_on_postgresql_the_loop_statements_are_prepared_and_the_orm_keeps_unlimited_parameters(
    make_project, make_member, api_client_for
):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements and server-side binding are PostgreSQL's")
    project = make_project(n_items=10, overlap=1)
    client = api_client_for(make_member(project, "ann"))
    for i in range(4):
        task = client.get(f"/api/projects/{project.slug}/next-task/").json()
        body = {"choice": "A", "strength": 1, "idempotency_key": f"k{i}"}
        assert client.post(f"/api/tasks/{task['id']}/judgments/", body, format="json").status_code == 201
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    pick, submit = sql.with_schema("UPDATE {Item} SET {Item.open_slots}"), sql.with_schema("INSERT INTO {Judgment}")
    assert any(pick in statement for statement in prepared)  # the pick
    assert any(submit in statement for statement in prepared)  # the submit
    # A server-bound statement takes at most 65,535 parameters; the ORM binds on the client and has no such limit.
    assert Item.objects.filter(pk__in=range(1, 70_001)).count() == 10
