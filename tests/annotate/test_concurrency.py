"""Overlap and idempotency under real concurrency: threads, each with its own database connection.

On PostgreSQL the next-task pick takes rows with SKIP LOCKED; on SQLite the write lock serialises. Either
way no item may get more than ``overlap`` annotators and no submit may be stored twice.
"""

import threading
import time
from collections import Counter

import pytest
from django.db import connection, connections, transaction

from annotate import actions
from annotate.models import Item, Judgment, Task

pytestmark = pytest.mark.django_db(transaction=True)


def in_threads(count, work):
    errors, barrier = [], threading.Barrier(count)

    def run(index):
        try:
            barrier.wait()
            work(index)
        except Exception as exc:  # reported below, so a failure in a thread fails the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def test_many_annotators_at_once_never_exceed_overlap(make_project, make_member):
    project = make_project(n_items=30, overlap=3)
    annotators = [make_member(project, f"ann{i}") for i in range(8)]
    acknowledged = Counter()

    def work(index):
        annotator = annotators[index]
        while True:
            task = actions.assign_next_task(annotator, project)
            if task is None:
                return
            judgment, created = actions.record_judgment(task, {"choice": "A", "strength": 1}, f"k{task.pk}")
            assert created
            acknowledged[judgment.pk] += 1

    in_threads(len(annotators), work)
    assert sum(acknowledged.values()) == len(acknowledged) == 90
    assert Judgment.objects.filter(project=project).count() == 90
    assert Counter(Item.objects.filter(project=project).values_list("n_judgments", flat=True)) == {3: 30}
    per_item = Counter(Judgment.objects.values_list("item_id", flat=True))
    assert max(per_item.values()) == 3
    assert Task.objects.values("item", "annotator").distinct().count() == 90


def test_concurrent_double_submits_store_one_judgment(make_project, make_member):
    project = make_project(n_items=1)
    annotator = make_member(project, "ann")
    task = actions.assign_next_task(annotator, project)
    results = []

    def work(index):
        judgment, created = actions.record_judgment(task, {"choice": "B", "strength": 2}, "same-key")
        results.append((judgment.pk, created))

    in_threads(6, work)
    assert len({pk for pk, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert Judgment.objects.count() == 1


def test_concurrent_submits_of_one_key_with_two_answers_keep_the_first_and_refuse_the_other(make_project, make_member):
    project = make_project(n_items=1)
    task = actions.assign_next_task(make_member(project, "ann"), project)
    bodies = [{"choice": "A", "strength": 1}, {"choice": "B", "strength": 1}]
    results = []

    def work(index):
        try:
            judgment, created = actions.record_judgment(task, bodies[index % 2], "same-key")
            results.append((index % 2, judgment.pk, created))
        except actions.Conflict as exc:
            results.append((index % 2, str(exc), None))

    in_threads(6, work)
    judgment = Judgment.objects.get()
    winner = 0 if judgment.winner_id == task.display_order[0] else 1
    assert sorted(r for r in results if r[0] == winner) == sorted(
        [(winner, judgment.pk, True)] + [(winner, judgment.pk, False)] * 2
    )
    refused = [r for r in results if r[0] != winner]
    assert len(refused) == 3 and all("'same-key' was already used for a different answer" in r[1] for r in refused)


def test_one_annotator_asking_twice_at_once_gets_one_lease(make_project, make_member):
    project = make_project(n_items=5)
    annotator = make_member(project, "ann")
    tasks = []
    in_threads(4, lambda index: tasks.append(actions.assign_next_task(annotator, project).pk))
    assert len(set(tasks)) == 1
    assert Task.objects.filter(annotator=annotator).count() == 1


def test_a_pick_waits_for_an_item_a_submit_has_locked_instead_of_answering_nothing_left(make_project, make_member):
    # A submit counts its judgment on the item row (n_judgments), which locks it until the submit commits. The
    # pick skips locked rows to spread annotators over items; when the only item left for this annotator is
    # locked, it must wait for it rather than answer "nothing left" (PostgreSQL; SQLite's write lock waits anyway).
    project = make_project(n_items=1, overlap=2)
    first, second = make_member(project, "first"), make_member(project, "second")
    task = actions.assign_next_task(first, project)
    submitting = threading.Event()
    picked = []

    def work(index):
        if index == 0:
            with transaction.atomic():
                actions.record_judgment(task, {"choice": "A", "strength": 1}, "k")
                submitting.set()
                time.sleep(0.5)  # the item row stays locked meanwhile
        else:
            assert submitting.wait(timeout=30)
            picked.append(actions.assign_next_task(second, project))

    in_threads(2, work)
    assert picked[0] is not None and picked[0].item_id == task.item_id
    item = Item.objects.get()
    assert (item.open_slots, item.n_judgments) == (0, 1)


def test_database_vendor_is_reported(capsys):
    # Which backend ran these tests shows in the output of `make test`.
    print(f"concurrency tests ran on {connection.vendor}")
    assert connection.vendor in {"sqlite", "postgresql"}
