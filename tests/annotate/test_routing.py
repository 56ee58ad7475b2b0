"""Routing after AI judges (``Project.ai_routing``): people get the items judges disagree on, are
position-inconsistent or unsure about, and a reproducible spot-check share of the rest; the others leave the
people's queue. The next-task pick is unchanged and keeps its guarantees under concurrency."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections  # noqa: F401 - the skipif condition reads connection

from annotate import actions
from annotate.models import Item, Judgment, Task
from tests.judges import make_judge, stored_vote

pytestmark = pytest.mark.django_db


@pytest.fixture
def routed(make_project):
    """20 items, overlap 2, two judges: 0-3 they disagree, 4-5 one is position-inconsistent, 6-7 one is unsure,
    8 one could not answer, 9-19 they agree."""
    project = make_project(n_items=20, overlap=2, ai_routing=True, routing_confidence=0.7, spot_check_rate=0.25)
    first, second = make_judge(project, "first"), make_judge(project, "second")
    items = list(Item.objects.filter(project=project).order_by("id"))
    for i, item in enumerate(items):
        stored_vote(first, item, 0)
        if i < 4:
            stored_vote(second, item, 1)
        elif i < 6:
            stored_vote(second, item, None, confidence=0.5, consistent=False)
        elif i < 8:
            stored_vote(second, item, 0, confidence=0.55)
        elif i == 8:
            stored_vote(second, item, None, status="unparseable", consistent=None, confidence=None)
        else:
            stored_vote(second, item, 0)
    return project, items


def test_decisions_follow_the_judges(routed):
    project, items = routed
    decisions = actions.routing_decisions(project, [item.pk for item in items])
    assert [decisions[item.pk] for item in items[:9]] == ["people"] * 9
    agreed = [decisions[item.pk] for item in items[9:]]
    assert set(agreed) <= {"judges", "spot-check"} and "judges" in agreed
    # The sample is a hash: the same answer every time, and about the rate over many items.
    assert actions.routing_decisions(project, [item.pk for item in items]) == decisions
    share = sum(actions._sampled(project.pk, i, 0.25) for i in range(4000)) / 4000
    assert 0.22 < share < 0.28


def test_routing_takes_the_settled_items_out_of_the_queue(routed, make_member):
    project, items = routed
    decisions = actions.routing_decisions(project, [item.pk for item in items])
    settled = {pk for pk, decision in decisions.items() if decision == "judges"}
    # A person already holds one settled item: it stays with people.
    early = make_member(project, "early")
    held = actions.assign_next_task(early, project)  # item 0 (id order)
    assert held.item_id == items[0].pk
    moved = actions.route_after_judging(project, [item.pk for item in items])
    assert moved == len(settled)
    for item in Item.objects.filter(project=project):
        expected = 0 if item.pk in settled else (1 if item.pk == held.item_id else 2)
        assert item.open_slots == expected, (item.external_id, decisions[item.pk])
    # People are served only the items the judges left them, each by at most the overlap.
    served = []
    for name in ("p1", "p2"):
        user = make_member(project, name)
        while (task := actions.assign_next_task(user, project)) is not None:
            actions.record_judgment(task, {"choice": "A", "strength": 1}, f"{name}-{task.pk}")
            served.append(task.item_id)
    assert not set(served) & settled
    assert set(served) == set(decisions) - settled
    # Judges' votes took no human place: the counts are the people's.
    for item in Item.objects.filter(project=project).exclude(pk__in=settled):
        assert item.n_judgments == Judgment.objects.filter(item=item, source__in=["web", "api"]).count()


def test_without_routing_nothing_moves(routed):
    project, items = routed
    project.ai_routing = False
    assert actions.route_after_judging(project, [item.pk for item in items]) == 0
    assert set(Item.objects.filter(project=project).values_list("open_slots", flat=True)) == {2}


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_routing_under_concurrent_picks_keeps_overlap_and_uniqueness(make_project, make_member):
    """Annotators pick and answer while routing runs: no item gets more than its overlap of people, none twice by one
    person, and a settled item that a person took first stays theirs (its vote is kept)."""
    project = make_project(n_items=60, overlap=2, ai_routing=True, routing_confidence=0.7, spot_check_rate=0.0)
    first, second = make_judge(project, "first"), make_judge(project, "second")
    items = list(Item.objects.filter(project=project).order_by("id"))
    for item in items:
        stored_vote(first, item, 0)
        stored_vote(second, item, 0)
    users = [make_member(project, f"c{i}") for i in range(6)]
    start = threading.Barrier(len(users) + 1)
    errors = []

    def annotate(user):
        try:
            start.wait()
            for _ in range(15):
                task = actions.assign_next_task(user, project)
                if task is None:
                    break
                actions.record_judgment(task, {"choice": "B", "strength": 1}, f"{user.pk}-{task.pk}")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connections.close_all()

    def route():
        try:
            start.wait()
            actions.route_after_judging(project, [item.pk for item in items])
        except Exception as error:  # noqa: BLE001
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=annotate, args=(u,)) for u in users] + [threading.Thread(target=route)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    people = Task.objects.filter(project=project, annotator__judge__isnull=True)
    per_item: dict[int, int] = {}
    for item_id in people.values_list("item_id", flat=True):
        per_item[item_id] = per_item.get(item_id, 0) + 1
    assert max(per_item.values(), default=0) <= 2
    assert people.count() == len(set(people.values_list("item_id", "annotator_id")))
    for item in Item.objects.filter(project=project):
        human = Judgment.objects.filter(item=item, is_current=True).exclude(source="ai").count()
        assert item.n_judgments == human
        assert item.open_slots + people.filter(item=item).count() <= 2


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_after_routing_the_pick_is_still_one_statement_over_the_open_items_index(make_project, make_member):
    """Routing only changes open places: the next-task pick is the same statement, answered by item_open_idx (the
    partial index of the items that still need people), which the settled items have left."""
    from annotate import sql

    project = make_project(n_items=2000, overlap=2, ai_routing=True, spot_check_rate=0.0)
    judge = make_judge(project, "only")
    items = list(Item.objects.filter(project=project).order_by("id")[:300])
    for item in items:
        stored_vote(judge, item, 0)
    assert actions.route_after_judging(project, [item.pk for item in items]) == 300
    user = make_member(project, "picker")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotate_item")
        statement, params = sql.pick_statement(project.pk, user.pk, mark=0, skip_locked=True)
        cursor.execute("EXPLAIN " + statement, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "item_open_idx" in plan, plan
    assert (
        actions.assign_next_task(user, project).item_id == Item.objects.filter(project=project).order_by("id")[300].pk
    )
