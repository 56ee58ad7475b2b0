"""Qualification, hidden gold items and automatic review, through the API as annotators would meet them."""

import random

import pytest
from django.utils import timezone

from annotate import actions, vetting
from annotate.agreement import cohen_kappa
from annotate.imports import ImportFailed, parse_items
from annotate.models import Item, Judgment, Kind, Membership, Role
from annotate.vetting import AnnotatorStats, gold_score, qualify, review_checks, review_enabled, review_findings
from tests.conftest import jsonl, pairwise_rows

pytestmark = pytest.mark.django_db


def rows_with(purpose, n, start=100):
    rows = pairwise_rows(n, start=start)
    for row in rows:
        row["purpose"], row["gold"] = purpose, {"winner": 0}  # the first response ("2i") is right
    return rows


def answer(client, project, pick):
    """Answer the next task; ``pick(task, good_id)`` returns "A" or "B". Returns the task or None."""
    got = client.get(f"/api/projects/{project.slug}/next-task/")
    if got.status_code != 200:
        return got
    task = got.json()
    good = Item.objects.get(tasks__id=task["id"]).responses.get(index=0).pk
    choice = pick(task, good)
    posted = client.post(
        f"/api/tasks/{task['id']}/judgments/",
        {"choice": choice, "strength": 1, "idempotency_key": f"k{task['id']}"},
        format="json",
    )
    assert posted.status_code == 201
    return got


def right(task, good):
    return "A" if task["responses"][0]["id"] == good else "B"


def wrong(task, good):
    return "B" if task["responses"][0]["id"] == good else "A"


def test_candidates_qualify_first_and_are_admitted_or_refused(make_project, make_member, api_client_for):
    project = make_project(n_items=5, qualification_required=True, qualification_threshold=0.75)
    actions.import_items(project, parse_items(jsonl(rows_with("qualification", 4)), "jsonl", Kind.PAIRWISE))
    good_user, bad_user = make_member(project, "good"), make_member(project, "bad")
    assert Membership.objects.get(user=good_user).status == "candidate"
    good, bad = api_client_for(good_user), api_client_for(bad_user)
    for i in range(4):
        task = answer(good, project, right).json()
        assert Item.objects.get(tasks__id=task["id"]).purpose == "qualification"
        answer(bad, project, right if i == 0 else wrong)  # 1 of 4 right: accuracy 0.25, under the 0.75 bar
    good_member = Membership.objects.get(user=good_user)
    assert good_member.status == "active" and "accuracy 1.000 over 4 items (admitted)" in good_member.status_reason
    bad_member = Membership.objects.get(user=bad_user)
    assert bad_member.status == "refused" and "not admitted" in bad_member.status_reason
    # The admitted annotator now gets normal work; the refused one is told why.
    assert Item.objects.get(tasks__id=answer(good, project, right).json()["id"]).purpose == "normal"
    refused = bad.get(f"/api/projects/{project.slug}/next-task/")
    assert refused.status_code == 403 and "not admitted" in refused.json()["detail"]


def test_a_random_annotator_is_flagged_within_20_gold_items_and_a_careful_one_is_not(
    make_project, make_member, api_client_for
):
    project = make_project(n_items=60, overlap=2, gold_rate=0.5, review_min_gold=10, review_gold_accuracy=0.7)
    actions.import_items(project, parse_items(jsonl(rows_with("gold", 40)), "jsonl", Kind.PAIRWISE))
    careful_user, random_user = make_member(project, "careful"), make_member(project, "sloppy")
    careful, sloppy = api_client_for(careful_user), api_client_for(random_user)
    rng = random.Random(4)
    for _ in range(60):
        answer(careful, project, right)
        if Membership.objects.get(user=random_user).status == "active":
            answer(sloppy, project, lambda t, g: rng.choice("AB"))
    gold_answered = Judgment.objects.filter(annotator=random_user, item__purpose="gold").count()
    sloppy_member = Membership.objects.get(user=random_user)
    assert sloppy_member.status == "flagged" and gold_answered <= 20
    assert "gold accuracy" in sloppy_member.status_reason
    assert Membership.objects.get(user=careful_user).status == "active"
    assert Judgment.objects.filter(annotator=careful_user, item__purpose="gold").count() >= 10
    # Flagged annotators keep working (review_action flag) and their votes stay, marked, out of exports.
    from annotate.exports import build_rows

    assert all(r["annotator_status"] in ("active", "flagged") for r in build_rows(project, "raw"))
    researcher = api_client_for(make_member(project, "res", Role.RESEARCHER))
    reinstated = researcher.post("/api/projects/demo/members/sloppy/reinstate/")
    assert reinstated.status_code == 200 and reinstated.json()["status"] == "active"
    assert "Reinstated by res" in Membership.objects.get(user=random_user).status_reason


def test_pause_stops_work_and_position_bias_is_caught(make_project, make_member, api_client_for):
    project = make_project(n_items=45, overlap=1, review_action="pause", review_gold_accuracy=0)
    user = make_member(project, "clicker")
    client = api_client_for(user)
    for _ in range(45):
        got = answer(client, project, lambda t, g: "A")
        if got.status_code == 403:
            break
    member = Membership.objects.get(user=user)
    assert member.status == "paused" and "first-shown response 100%" in member.status_reason
    paused = client.get("/api/projects/demo/next-task/")
    assert paused.status_code == 403 and "paused" in paused.json()["detail"]


def test_gold_answers_are_validated_at_import(make_project):
    project = make_project(n_items=0)
    rows = rows_with("gold", 2)
    rows[1]["gold"] = {"winner": 7}
    with pytest.raises(ImportFailed) as caught:
        actions.import_items(project, parse_items(jsonl(rows), "jsonl", Kind.PAIRWISE))
    assert caught.value.errors[0][0] == 2 and "gold: winner must be a response index" in caught.value.errors[0][1]
    missing = pairwise_rows(1)
    missing[0]["purpose"] = "gold"
    with pytest.raises(ImportFailed, match='needs "gold"'):
        parse_items(jsonl(missing), "jsonl", Kind.PAIRWISE)
    assert not Item.objects.filter(project=project).exists()


def test_gold_items_take_no_overlap_slot_and_look_like_any_task(make_project, make_member, api_client_for):
    project = make_project(n_items=1, overlap=1, gold_rate=1.0)
    actions.import_items(project, parse_items(jsonl(rows_with("gold", 1)), "jsonl", Kind.PAIRWISE))
    gold = Item.objects.get(purpose="gold")
    assert gold.open_slots == 0
    clients = [api_client_for(make_member(project, f"a{i}")) for i in range(3)]
    shapes = set()
    for client in clients:
        task = client.get("/api/projects/demo/next-task/").json()
        shapes.add(tuple(sorted(task)))
        assert Item.objects.get(tasks__id=task["id"]).pk == gold.pk  # every annotator gets the gold item
    normal = clients[0].get("/api/projects/demo/next-task/").json()  # held gold task comes back first
    assert tuple(sorted(normal)) in shapes and len(shapes) == 1


def test_scores_and_findings_are_pure_functions():
    win = {"outcome": "win", "winner_id": 1, "data": {}}
    assert gold_score(Kind.PAIRWISE, win, win) == 1.0
    assert gold_score(Kind.PAIRWISE, win, {"outcome": "tie", "winner_id": None}) == 0.0
    ranking = {"data": {"ranking": [[1], [2], [3]]}}
    assert gold_score(Kind.RANKING, ranking, {"data": {"ranking": [[1], [3], [2]]}}) == pytest.approx(2 / 3)
    steps = {"data": {"steps": {"5": ["positive", "negative"]}}}
    assert gold_score(Kind.STEPS, steps, {"data": {"steps": {"5": ["positive", "positive"]}}}) == 0.5
    # Cohen's kappa: the textbook 2x2 example (agree 20+15 of 50, marginals 25/25 and 30/20): 0.4.
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    result = qualify(
        Kind.PAIRWISE,
        "cohen_kappa",
        0.3,
        [({"outcome": "win", "winner_id": x}, {"outcome": "win", "winner_id": y}) for x, y in zip(a, b)],
    )
    assert result.admitted and result.metric == "cohen_kappa" and result.score == pytest.approx(0.4)

    class Settings:
        review_gold_accuracy, review_min_gold, review_majority_agreement = 0.7, 10, 0.6
        review_speed_ratio, review_position_bias_p = 0.2, 0.001

    fine = AnnotatorStats(
        n_gold=12,
        gold_accuracy=0.9,
        n_shared=20,
        majority_agreement=0.8,
        median_ms=5000,
        project_median_ms=6000,
        n_wins=40,
        n_first=22,
    )
    assert review_findings(fine, Settings) == []
    bad = AnnotatorStats(
        n_gold=12,
        gold_accuracy=0.5,
        n_shared=20,
        majority_agreement=0.4,
        median_ms=500,
        project_median_ms=6000,
        n_wins=40,
        n_first=38,
    )
    assert len(review_findings(bad, Settings)) == 4
    # One rule, by check: what review acts on and what the dashboard draws red.
    checks = review_checks(bad, Settings)
    assert list(checks) == ["gold", "agreement", "speed", "position"] and list(checks.values()) == review_findings(
        bad, Settings
    )
    assert checks["speed"] == "median time on task 0.5 s is far below the project's 6.0 s"
    # Too few answers to judge: nothing, however far below.
    few = AnnotatorStats(n_gold=9, gold_accuracy=0.0, n_shared=9, majority_agreement=0.0, n_wins=29, n_first=29)
    assert review_checks(few, Settings) == {}
    assert review_enabled(Settings)

    class Off(Settings):
        review_gold_accuracy = review_majority_agreement = review_speed_ratio = review_position_bias_p = 0

    assert not review_enabled(Off) and review_checks(bad, Off) == {}


def test_qualification_kappa_is_the_agreement_kappa_with_its_edge_cases():
    from sklearn.metrics import cohen_kappa_score

    # One Cohen's κ (annotate.agreement) for the agreement report and qualification, whose labels mix winner ids
    # with "tie" and "both_bad".
    rng = random.Random(5)
    compared = 0
    for _ in range(200):
        n = rng.randint(2, 30)
        a = [rng.choice([3, 4, "tie", "both_bad"]) for _ in range(n)]
        b = [rng.choice([3, 4, "tie", "both_bad"]) for _ in range(n)]
        if len(set(a) | set(b)) == 1:
            continue
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score([str(x) for x in a], [str(x) for x in b]))
        compared += 1
    assert compared > 150
    assert cohen_kappa([3, 3], [3, 3]) is None and cohen_kappa([], []) is None  # κ is 0/0
    win = {"outcome": "win", "winner_id": 3}
    perfect = qualify(Kind.PAIRWISE, "cohen_kappa", 0.9, [(win, win)] * 4)  # the expected answer throughout
    assert perfect.admitted and perfect.score == 1.0
    nothing = qualify(Kind.PAIRWISE, "cohen_kappa", 0.0, [])
    assert not nothing.admitted and nothing.score != nothing.score and nothing.n_items == 0  # NaN: never admitted


def test_gold_feedback_after_a_miss_and_settings_by_researchers(make_project, make_member, api_client_for):
    project = make_project(n_items=0, gold_rate=1.0)
    actions.import_items(project, parse_items(jsonl(rows_with("gold", 2)), "jsonl", Kind.PAIRWISE))
    researcher = api_client_for(make_member(project, "res", Role.RESEARCHER))
    annotator = api_client_for(make_member(project, "ann"))
    assert annotator.patch("/api/projects/demo/", {"gold_feedback": True}, format="json").status_code == 403
    changed = researcher.patch(
        "/api/projects/demo/", {"gold_feedback": True, "review_gold_accuracy": 0.8}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["gold_feedback"] is True
    assert researcher.patch("/api/projects/demo/", {"gold_rate": 3}, format="json").status_code == 400
    assert (
        researcher.patch("/api/projects/demo/", {"overlap": 9}, format="json").json()["overlap"] == 2
    )  # not a setting
    task = annotator.get("/api/projects/demo/next-task/").json()
    good = Item.objects.get(tasks__id=task["id"]).responses.get(index=0).pk
    bad_choice = "B" if task["responses"][0]["id"] == good else "A"
    missed = annotator.post(
        f"/api/tasks/{task['id']}/judgments/",
        {"choice": bad_choice, "strength": 1, "idempotency_key": "x"},
        format="json",
    ).json()
    right_choice = "A" if bad_choice == "B" else "B"
    assert missed["feedback"] == f"This was a check item: the researchers judged response {right_choice} better."
    task = annotator.get("/api/projects/demo/next-task/").json()
    good = Item.objects.get(tasks__id=task["id"]).responses.get(index=0).pk
    hit = annotator.post(
        f"/api/tasks/{task['id']}/judgments/",
        {"choice": "A" if task["responses"][0]["id"] == good else "B", "strength": 1, "idempotency_key": "y"},
        format="json",
    ).json()
    assert "feedback" not in hit


def test_a_reinstated_annotator_starts_with_a_clean_record(make_project, make_member):
    project = make_project(n_items=0, gold_rate=1.0, review_min_gold=3, review_gold_accuracy=0.7)
    actions.import_items(project, parse_items(jsonl(rows_with("gold", 8)), "jsonl", Kind.PAIRWISE))
    user = make_member(project, "ann")
    for i in range(3):  # three misses: flagged
        task = actions.assign_next_task(user, project)
        good = Item.objects.get(pk=task.item_id).responses.get(index=0).pk
        actions.record_judgment(task, {"choice": "B" if task.display_order[0] == good else "A", "strength": 1}, f"m{i}")
    membership = Membership.objects.get(user=user)
    assert membership.status == "flagged"
    actions.reinstate_annotator(membership, user)
    task = actions.assign_next_task(user, project)
    good = Item.objects.get(pk=task.item_id).responses.get(index=0).pk
    actions.record_judgment(task, {"choice": "A" if task.display_order[0] == good else "B", "strength": 1}, "ok")
    assert Membership.objects.get(user=user).status == "active"


def test_review_looks_at_the_newest_answers_only(make_project, make_member, monkeypatch):
    from annotate import selectors

    project = make_project(n_items=12, overlap=1)
    user = make_member(project, "ann")
    for i in range(12):
        task = actions.assign_next_task(user, project)
        # The first 8 answers pick the response shown first, the last 4 the one shown second.
        choice = "A" if i < 8 else "B"
        actions.record_judgment(task, {"choice": choice, "strength": 1, "duration_ms": 1000 + i}, f"k{i}")
    whole = selectors.annotator_stats(project, user)
    assert (whole.n_wins, whole.n_first, whole.median_ms) == (12, 8, 1005.5)
    monkeypatch.setattr(selectors, "REVIEW_WINDOW", 4)
    recent = selectors.annotator_stats(project, user)
    assert (recent.n_wins, recent.n_first) == (4, 0)
    assert recent.median_ms is None  # fewer timed answers in the window than review needs (MIN_TIMED)


def test_review_project_reviews_whom_a_submit_would_through_the_same_review(make_project, make_member, monkeypatch):
    """``actions.review_project`` (the scheduled pass, the dashboard's review): active annotators who judged here,
    each through ``review_annotator``; not researchers, not members made by import_judgments, not the flagged."""
    from annotate.imports import parse_votes

    project = make_project(n_items=12, overlap=4, review_speed_ratio=0, review_position_bias_p=0.01)
    clickers = {name: make_member(project, name) for name in ("clicker", "other")}
    researcher = make_member(project, "res", Role.RESEARCHER)
    for user in (*clickers.values(), researcher):
        for i in range(12):
            task = actions.assign_next_task(user, project)
            actions.record_judgment(task, {"choice": "A", "strength": 1}, f"{user.pk}-{i}")
    # Imported votes for response 0 every time: their shown order is unknown, so no position finding for them.
    actions.import_judgments(
        project,
        parse_votes(jsonl([{"item": f"item-{i}", "annotator": "imported", "winner": 0} for i in range(12)]), "jsonl"),
    )
    Membership.objects.filter(project=project, user=clickers["other"]).update(status=Membership.Status.FLAGGED)
    assert set(Membership.objects.filter(project=project).values_list("status", flat=True)) <= {"active", "flagged"}

    # 12 wins: below MIN_POSITION (30), so nothing yet; with the threshold's minimum met, the clicker alone.
    assert actions.review_project(project) == {}
    monkeypatch.setattr(vetting, "MIN_POSITION", 10)
    flagged = actions.review_project(project)
    clicker = clickers["clicker"]
    assert list(flagged) == [clicker.pk] and flagged[clicker.pk] == [
        "chose the first-shown response 100% of 12 times (binomial p = 4.9e-04)"
    ]
    member = Membership.objects.get(project=project, user=clicker)
    assert member.status == "flagged" and member.status_reason == (
        "Automatic review: chose the first-shown response 100% of 12 times (binomial p = 4.9e-04)."
    )
    assert Membership.objects.get(project=project, user=researcher).status == "active"
    assert Membership.objects.get(project=project, user__username="imported").status == "active"
    # Review switched off: nothing to do, nothing read.
    project.review_gold_accuracy = project.review_position_bias_p = 0
    assert actions.review_project(project) == {}


def test_the_review_command_reviews_now_or_queues_the_periodic_pass(make_project, make_member):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django_tasks_db.models import DBTaskResult

    from annotate import tasks

    project = make_project(n_items=0, gold_rate=1.0, review_min_gold=3, review_gold_accuracy=0.7)
    actions.import_items(project, parse_items(jsonl(rows_with("gold", 4)), "jsonl", Kind.PAIRWISE))
    user = make_member(project, "ann")
    for i in range(3):  # three misses, but with review off they stay unnoticed
        if i == 0:
            actions.update_project_settings(project, review_gold_accuracy=0)
        task = actions.assign_next_task(user, project)
        good = Item.objects.get(pk=task.item_id).responses.get(index=0).pk
        actions.record_judgment(task, {"choice": "B" if task.display_order[0] == good else "A", "strength": 1}, f"m{i}")
    assert Membership.objects.get(user=user).status == "active"
    out = StringIO()
    call_command("review", "demo", stdout=out)
    assert out.getvalue() == "Nobody below a threshold.\n"
    actions.update_project_settings(project, review_gold_accuracy=0.7)
    out = StringIO()
    call_command("review", stdout=out)  # every project whose review is on
    assert out.getvalue() == (
        "demo: ann flagged: Automatic review: gold accuracy 0.00 over the last 3 gold items is below 0.70.\n"
    )
    with pytest.raises(CommandError, match="No project 'nope'"):
        call_command("review", "nope")

    DBTaskResult.objects.all().delete()
    out = StringIO()
    call_command("review", "--schedule", stdout=out)
    call_command("review", "--schedule", stdout=out)
    assert out.getvalue() == "Periodic review queued.\nPeriodic review already queued.\n"
    (waiting,) = DBTaskResult.objects.filter(task_path=tasks.review_projects.module_path)
    assert waiting.run_after <= timezone.now()  # the first pass runs as soon as a worker is free


def test_imported_wins_say_nothing_of_position(make_project, make_member):
    """An annotator with imported votes (order unknown, stored as the item's) and a few browser votes: only the
    browser votes count as wins for the position check."""
    from annotate.imports import parse_votes
    from annotate.selectors import annotator_stats

    project = make_project(n_items=12, overlap=2, randomize_order=False)
    user = make_member(project, "mixed")
    actions.import_judgments(
        project,
        parse_votes(jsonl([{"item": f"item-{i}", "annotator": "mixed", "winner": 0} for i in range(8)]), "jsonl"),
    )
    for i in range(3):
        task = actions.assign_next_task(user, project)
        actions.record_judgment(task, {"choice": "B", "strength": 1}, f"web-{i}")
    stats = annotator_stats(project, user)
    assert (stats.n_wins, stats.n_first) == (3, 0)


def test_a_revised_gold_answer_keeps_its_first_score(make_project, make_member):
    """Gold feedback tells the annotator the researchers' answer; revising it afterwards must not raise their
    accuracy, in review or on the dashboard."""
    from annotate import dashboard
    from annotate.imports import parse_items
    from annotate.selectors import annotator_stats

    project = make_project(n_items=0, overlap=1, gold_rate=1.0, gold_feedback=True, randomize_order=False)
    rows = [{"id": "g", "purpose": "gold", "gold": {"winner": 0}, "prompt": "Q?", "responses": ["right", "wrong"]}]
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", "pairwise"))
    user = make_member(project, "gina")
    task = actions.assign_next_task(user, project)
    first, _ = actions.record_judgment(task, {"choice": "B", "strength": 1}, "first")  # wrong
    actions.record_judgment(task, {"choice": "A", "strength": 1}, "revised")  # right, after the feedback
    assert annotator_stats(project, user).gold_accuracy == 0.0
    assert dashboard.judgment_frame(project)["judgment"].tolist() == [first.pk]
