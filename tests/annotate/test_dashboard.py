"""The researcher dashboard: who may see it, the numbers in its plots, its cache, reinstating, escaping."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from django_tasks.base import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from annotate import actions, agreement, charts, dashboard, selectors, tasks
from annotate.imports import parse_items, parse_votes
from annotate.models import Judgment, Kind, Membership, Role
from tests.conftest import jsonl, pairwise_rows

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture(autouse=True)
def _empty_cache():
    # The test database reuses ids from test to test; the cache key has the project's creation time too, but a
    # clean cache keeps each test's counts of computations exact.
    cache.clear()
    yield
    cache.clear()


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def work(project, user, choose, durations=(4000,), limit=1000):
    """Let ``user`` answer tasks until none is left: ``choose(task, good_id)`` returns "A", "B", "tie" or
    "both_bad" (``good_id`` is the response imported first); the durations are used in turn."""
    for n in range(limit):
        try:
            task = actions.assign_next_task(user, project)
        except actions.NotAdmitted:
            return
        if task is None:
            return
        good = task.item.responses.get(index=0).pk
        payload = {"choice": choose(task, good), "strength": 1, "duration_ms": durations[n % len(durations)]}
        actions.record_judgment(task, payload, f"{user.pk}-{task.pk}")


def first(task, good):
    return "A"


def right(task, good):
    return "A" if task.display_order[0] == good else "B"


def wrong(task, good):
    return "B" if task.display_order[0] == good else "A"


def import_votes(project, votes):
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))


def svg_value(html: str, label: str, chart_id: str) -> float:
    """The ``data-value`` of the bar named ``label`` inside the figure ``chart_id`` of the page."""
    figure = re.search(rf'<figure id="{chart_id}">(.*?)</figure>', html, re.S).group(1)
    match = re.search(rf'<rect class="bar [a-z]+" [^>]*data-label="{re.escape(label)}" data-value="([^"]+)"', figure)
    assert match, f"no bar {label!r} in {chart_id}"
    return float(match.group(1))


def pseudonym(project, user) -> str:
    return Membership.objects.get(project=project, user=user).pseudonym


# --- permissions ------------------------------------------------------------------------------------------------


def test_only_researchers_and_admins_see_the_dashboard(make_project, make_member):
    project = make_project(n_items=3)
    annotator = make_member(project, "ann")
    researcher = make_member(project, "res", Role.RESEARCHER)
    admin = make_member(project, "adm", Role.ADMIN)
    outsider = User.objects.create_user("outsider", password="a-long-test-password")
    url = "/p/demo/dashboard/"

    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/?next=/p/demo/dashboard/")
    assert client_for(annotator).get(url).status_code == 403
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(researcher).get(url).status_code == 200
    assert client_for(admin).get(url).status_code == 200
    assert client_for(researcher).get("/p/nope/dashboard/").status_code == 404
    # The project page links to it.
    assert b'href="/p/demo/dashboard/"' in client_for(researcher).get("/p/demo/").content


# --- the numbers in the plots ---------------------------------------------------------------------------------------


def test_an_annotator_who_always_picks_the_first_response_shows_position_rate_1_and_a_tiny_p(make_project, make_member):
    project = make_project(n_items=12, overlap=2, review_speed_ratio=0)
    clicker, careful = make_member(project, "clicker"), make_member(project, "careful")
    work(project, clicker, first, durations=(1000, 2000, 3000))
    work(project, careful, right, durations=(6000,))
    researcher = make_member(project, "res", Role.RESEARCHER)

    data = dashboard.dashboard_data(project)
    rows = {row["name"]: row for row in data["annotators"]}
    position = rows[pseudonym(project, clicker)]["position"]
    assert position["n"] == 12 and position["k"] == 12 and position["rate"] == 1.0
    assert position["p_value"] == pytest.approx(2 * 0.5**12) and position["p_value"] < 0.001
    assert rows[pseudonym(project, clicker)]["median_s"] == 2.0  # median of 1, 2 and 3 s
    assert rows[pseudonym(project, careful)]["median_s"] == 6.0

    html = client_for(researcher).get("/p/demo/dashboard/").content.decode()
    assert svg_value(html, pseudonym(project, clicker), "position-chart") == 1.0
    # p is below the project's review p-value, but review judges position only from 30 wins: the bar is grey, not
    # red beside "Everyone is active" (it was red, and review never flagged them). The chart says its p-value.
    assert re.search(rf'class="bar muted" [^>]*data-label="{pseudonym(project, clicker)}"', html)
    assert 'class="bar bad"' not in html and "Everyone is active." in html
    assert "p=4.9e-04 n=12" in html
    assert svg_value(html, pseudonym(project, careful), "speed-chart") == 6.0
    assert svg_value(html, pseudonym(project, clicker), "speed-chart") == 2.0
    # The reference line of "no bias" sits at 0.5.
    assert 'class="reference"' in html and 'data-value="0.5"' in html


def test_length_bias_counts_wins_of_the_longer_response(make_project, make_member):
    project = make_project(n_items=0, overlap=1)
    rows = [
        {"id": f"i{i}", "prompt": f"Q{i}", "responses": [f"Short {i}.", f"A much, much longer answer {i}."]}
        for i in range(10)
    ]
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", Kind.PAIRWISE))
    import_votes(project, [{"item": f"i{i}", "annotator": "verbose", "winner": 1} for i in range(10)])
    data = dashboard.dashboard_data(project)
    length = data["annotators"][0]["length"]
    assert (length["n"], length["k"], length["rate"]) == (10, 10, 1.0)
    assert length["p_value"] == pytest.approx(2 * 0.5**10)
    assert data["length_overall"]["rate"] == 1.0
    # Imported votes were shown elsewhere: no position bias for them.
    assert data["annotators"][0]["position"] is None and data["position_overall"] is None


def test_gold_accuracy_is_rolling_over_the_last_20_gold_answers_with_the_threshold_drawn(make_project, make_member):
    project = make_project(n_items=2, overlap=1, gold_rate=1.0, review_gold_accuracy=0.7, review_min_gold=10)
    gold_rows = pairwise_rows(25, start=100)
    for row in gold_rows:
        row["purpose"], row["gold"] = "gold", {"winner": 0}
    actions.import_items(project, parse_items(jsonl(gold_rows), "jsonl", Kind.PAIRWISE))
    user = make_member(project, "learner")
    answers = iter([wrong] * 5 + [right] * 100)
    work(project, user, lambda task, good: next(answers)(task, good))
    assert Judgment.objects.filter(annotator=user, item__purpose="gold").count() == 25

    data = dashboard.dashboard_data(project)
    row = data["annotators"][0]
    # The first five misses fell out of the window of the newest 20; over all 25 it is 0.8.
    assert (row["gold_n"], row["gold_accuracy"]) == (20, 1.0)
    assert data["summary"]["annotators"][0]["gold_accuracy"] == pytest.approx(0.8)
    researcher = make_member(project, "res", Role.RESEARCHER)
    html = client_for(researcher).get("/p/demo/dashboard/").content.decode()
    assert svg_value(html, row["name"], "gold-chart") == 1.0
    gold_figure = re.search(r'<figure id="gold-chart">(.*?)</figure>', html, re.S).group(1)
    assert (
        'class="reference"' in gold_figure and 'data-value="0.7"' in gold_figure and "review below 0.70" in gold_figure
    )
    # Review flagged them after ten gold answers (5 of 10 right); the table says why, by username.
    member = Membership.objects.get(user=user)
    assert member.status == "flagged"
    assert "learner" in html and "gold accuracy 0.50 over the last 10 gold items" in html


def test_known_gold_accuracy_below_the_threshold_is_a_red_bar(make_project, make_member):
    project = make_project(n_items=0, overlap=1, gold_rate=1.0, review_gold_accuracy=0.9, review_min_gold=4)
    gold_rows = pairwise_rows(8, start=100)
    for row in gold_rows:
        row["purpose"], row["gold"] = "gold", {"winner": 0}
    actions.import_items(project, parse_items(jsonl(gold_rows), "jsonl", Kind.PAIRWISE))
    user = make_member(project, "sixofeight")
    answers = iter([right] * 6 + [wrong] * 2)
    work(project, user, lambda task, good: next(answers)(task, good))
    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    name = pseudonym(project, user)
    assert svg_value(html, name, "gold-chart") == 0.75
    assert re.search(rf'class="bar bad" [^>]*data-label="{name}"', html)


def agreeing_then_disagreeing(project, n_items=40):
    """Items 0-19: both annotators pick the same response (alternating); items 20-39: they disagree."""
    votes = []
    for i in range(n_items):
        a = i % 2
        b = a if i < n_items // 2 else 1 - a
        votes += [
            {"item": f"item-{i}", "annotator": "ana", "winner": a},
            {"item": f"item-{i}", "annotator": "ben", "winner": b},
        ]
    import_votes(project, votes)


def test_agreement_over_time_per_block_of_judgments(make_project, make_member):
    project = make_project(n_items=40, overlap=2)
    agreeing_then_disagreeing(project)
    data = dashboard.dashboard_data(project)
    over = data["over_time"]
    assert over["block_size"] == 20 and over["level"] == "nominal"
    points = over["points"]
    assert [p["x"] for p in points] == [20, 40, 60, 80]
    assert [p["n_items"] for p in points] == [10, 10, 10, 10]
    assert [p["percent_agreement"] for p in points] == [1.0, 1.0, 0.0, 0.0]
    assert points[0]["alpha"] == pytest.approx(1.0)
    # Every pair disagrees, labels split 10/10: α = 1 − (n − 1)·n / (n² − Σ n_c²) = 1 − 19·20/200.
    assert points[3]["alpha"] == pytest.approx(-0.9)
    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    assert html.count('data-series="percent agreement"') == 4
    assert 'data-series="percent agreement" data-x="60" data-y="0"' in html
    # Per day: everything was imported today, so one point over all 40 items.
    day = dashboard.dashboard_data(project, "day")["over_time"]["points"]
    assert len(day) == 1 and day[0]["n_items"] == 40 and day[0]["percent_agreement"] == 0.5
    assert day[0]["label"] == timezone.now().date().isoformat()
    assert client_for(User.objects.get(username="res")).get("/p/demo/dashboard/?over=day").status_code == 200


def test_confusion_matrix_against_the_dawid_skene_labels(make_project, make_member):
    project = make_project(n_items=6, overlap=3)
    votes = []
    for i in range(6):
        truth = i % 2
        votes += [
            {"item": f"item-{i}", "annotator": "ana", "winner": truth},
            {"item": f"item-{i}", "annotator": "ben", "winner": truth},
            {"item": f"item-{i}", "annotator": "contrarian", "winner": 1 - truth},
        ]
    import_votes(project, votes)
    data = dashboard.dashboard_data(project)
    confusion = data["confusion"]
    assert confusion["reference"] == "Dawid-Skene" and confusion["classes"] == ["response 0", "response 1"]
    matrices = {m["name"]: m["counts"] for m in confusion["matrices"]}
    contrarian = pseudonym(project, User.objects.get(username="contrarian"))
    ana = pseudonym(project, User.objects.get(username="ana"))
    assert matrices[contrarian] == [[0, 3], [3, 0]]
    assert matrices[ana] == [[3, 0], [0, 3]]
    # The least reliable come first.
    assert confusion["matrices"][0]["name"] == contrarian
    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    assert 'data-row="response 0" data-column="response 1" data-value="3"' in html
    assert "Dawid-Skene label" in html


def test_headline_metrics_and_lowest_kappas_are_shown_capped(make_project, make_member):
    project = make_project(n_items=40, overlap=2)
    agreeing_then_disagreeing(project)
    summary = dashboard.cached_summary(project)
    assert summary["percent_agreement"] == 0.5
    assert summary["n_cohen_pairs"] == 1 and len(summary["cohen_kappa"]) == 1
    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    assert '<dd id="percent-agreement">0.500</dd>' in html
    assert f'<dd id="krippendorff-alpha">{summary["krippendorff_alpha"]:.3f}</dd>' in html
    assert "nominal level" in html and "Lowest Cohen" in html


def test_page_summary_keeps_the_lowest_kappas_among_pairs_with_enough_shared_items():
    pairs = [{"a": f"a{i}", "b": f"b{i}", "kappa": 1 - i / 100, "n": 5 + i % 3} for i in range(100)]
    pairs += [{"a": "x", "b": "y", "kappa": -1.0, "n": 4}, {"a": "x", "b": "z", "kappa": None, "n": 50}]
    result = dashboard.page_summary({"cohen_kappa": pairs, "kendall_tau": []}, shown=20, min_shared=5)
    assert result["n_cohen_pairs"] == 102 and len(result["cohen_kappa"]) == 20
    assert [p["kappa"] for p in result["cohen_kappa"]] == sorted(1 - i / 100 for i in range(80, 100))


def test_pure_numbers_from_hand_made_frames():
    labels = pd.DataFrame(
        {
            "item": [1, 1, 2, 2, 3, 3],
            "unit": [1, 1, 2, 2, 3, 3],
            "annotator": [1, 2, 1, 2, 1, 2],
            "label": list("aaabbb"),
        }
    )
    over = dashboard.agreement_over_time(labels, labels, pd.Series([0, 0, 1], index=[1, 2, 3]), "nominal")
    assert over["n_items"].tolist() == [2, 1] and over["percent_agreement"].tolist() == [0.5, 1.0]
    scores = pd.DataFrame({"judgment": range(30), "annotator": [7] * 30, "score": [0.0] * 10 + [1.0] * 20})
    assert dashboard.rolling_gold_accuracy(scores).loc[7].tolist() == [20, 1.0]
    frame = pd.DataFrame(
        {
            "judgment": range(4),
            "annotator": [1, 1, 2, 2],
            "purpose": [0, 0, 0, 1],
            "duration_ms": [1000.0, 3000.0, None, 9000.0],
        }
    )
    per_annotator, project_median = dashboard.speed(frame)
    assert per_annotator.loc[1].tolist() == [2, 2000.0] and 2 not in per_annotator.index and project_median == 3000.0
    matrices = dashboard.confusion_matrices(
        pd.DataFrame({"item": [1, 2, 3], "annotator": [5, 5, 5], "label": ["x", "y", "y"]}),
        pd.Series({1: "x", 2: "x", 3: "y"}),
        ["x", "y"],
        [5],
    )
    assert matrices[5] == [[1, 1], [0, 1]]


# --- the cache --------------------------------------------------------------------------------------------------------


def test_a_second_view_reads_the_cache_and_a_new_judgment_invalidates_it(
    make_project, make_member, django_assert_max_num_queries
):
    project = make_project(n_items=6, overlap=2)
    ana, ben = make_member(project, "ana"), make_member(project, "ben")
    work(project, ana, right)
    work(project, ben, first, limit=5)
    client = client_for(make_member(project, "res", Role.RESEARCHER))
    before = dict(dashboard.computations)
    assert client.get("/p/demo/dashboard/").status_code == 200
    assert dashboard.computations["dashboard-block"] == before.get("dashboard-block", 0) + 1
    assert dashboard.computations["summary"] == before.get("summary", 0) + 1

    # Again: session, user, project, membership, the version, the status table and the page header's training
    # link — nothing recomputed.
    with django_assert_max_num_queries(7):
        assert client.get("/p/demo/dashboard/").status_code == 200
    # The project page shares the cached summary.
    assert client.get("/p/demo/").status_code == 200
    assert dashboard.computations["dashboard-block"] == before.get("dashboard-block", 0) + 1
    assert dashboard.computations["summary"] == before.get("summary", 0) + 1

    work(project, ben, first)  # ben's last item: a new judgment
    html = client.get("/p/demo/dashboard/").content.decode()
    assert dashboard.computations["dashboard-block"] == before.get("dashboard-block", 0) + 2
    assert dashboard.computations["summary"] == before.get("summary", 0) + 2
    rows = {row["name"]: row for row in dashboard.dashboard_data(project)["annotators"]}
    assert rows[pseudonym(project, ben)]["n"] == 6 and "12 judgments on normal items" in html


def test_a_status_change_invalidates_the_cache(make_project, make_member):
    project = make_project(n_items=4, overlap=1)
    ana = make_member(project, "ana")
    work(project, ana, right)
    dashboard.dashboard_data(project)
    count = dashboard.computations["dashboard-block"]
    dashboard.dashboard_data(project)
    assert dashboard.computations["dashboard-block"] == count
    member = Membership.objects.get(user=ana)
    actions._set_status(member, Membership.Status.FLAGGED, "looked odd")
    assert dashboard.dashboard_data(project)["annotators"][0]["status"] == "flagged"
    assert dashboard.computations["dashboard-block"] == count + 1


# --- review and the dashboard agree ---------------------------------------------------------------------------------


def red_labels(html: str) -> set[str]:
    """The annotators drawn red anywhere on the page (bars and dots)."""
    bars = re.findall(r'class="bar bad" [^>]*data-label="([^"]+)"', html)
    dots = re.findall(r'<circle [^>]*fill="#c0392b"[^>]*data-label="([^"]+)"', html)
    return set(bars) | set(dots)


def review_table(html: str) -> str:
    return re.search(r'<section class="card" id="review">(.*?)</section>', html, re.S).group(1)


def hasty_and_steady(make_project, make_member, overlap=2, **fields):
    """Two annotators of twelve items each, 2 s and 6 s per judgment: the project's median pace is 4 s, and at
    the default review_speed_ratio (0.2) nobody is below it."""
    project = make_project(n_items=12, overlap=overlap, review_position_bias_p=0, **fields)
    hasty, steady = make_member(project, "hasty"), make_member(project, "steady")
    work(project, hasty, right, durations=(2000,))
    work(project, steady, right, durations=(6000,))
    assert set(Membership.objects.filter(project=project).values_list("status", flat=True)) == {"active"}
    return project, hasty, steady


SPEED_REASON = "Automatic review: median time on task 2.0 s is far below the project's 4.0 s."


def test_an_annotator_below_a_tightened_speed_threshold_is_flagged_on_the_next_dashboard_view(
    make_project, make_member
):
    """The issue: hasty drawn red below the speed line while the page said "Everyone is active", since review
    ran only when hasty submitted again."""
    project, hasty, steady = hasty_and_steady(make_project, make_member)
    client = client_for(make_member(project, "res", Role.RESEARCHER))
    html = client.get("/p/demo/dashboard/").content.decode()
    assert "Everyone is active." in review_table(html) and red_labels(html) == set()

    actions.update_project_settings(project, review_speed_ratio=0.6)  # the line moves to 2.4 s; hasty does nothing
    html = client.get("/p/demo/dashboard/").content.decode()
    member = Membership.objects.get(project=project, user=hasty)
    assert (member.status, member.status_reason) == ("flagged", SPEED_REASON)
    assert Membership.objects.get(project=project, user=steady).status == "active"
    table = review_table(html)
    assert "Everyone is active." not in table and "hasty" in table and "steady" not in table
    assert red_labels(html) == {pseudonym(project, hasty)}
    assert svg_value(html, pseudonym(project, hasty), "speed-chart") == 2.0


def test_the_scheduled_review_flags_the_same_way_and_puts_itself_back(make_project, make_member):
    project, hasty, steady = hasty_and_steady(make_project, make_member, review_action="pause")
    actions.update_project_settings(project, review_speed_ratio=0.6)
    DBTaskResult.objects.all().delete()

    before = timezone.now()
    assert tasks.review_projects.call() == {"flagged": {"demo": [hasty.pk]}}
    member = Membership.objects.get(project=project, user=hasty)
    assert (member.status, member.status_reason) == ("paused", SPEED_REASON)  # the dashboard's words exactly
    (waiting,) = DBTaskResult.objects.filter(task_path=tasks.review_projects.module_path)
    assert waiting.status == TaskResultStatus.READY
    assert (waiting.run_after - before).total_seconds() == pytest.approx(tasks.REVIEW_SECONDS, abs=30)
    # Never two passes waiting: the page's check and a second pass leave the one there is.
    assert tasks.schedule_review() is False
    assert tasks.review_projects.call() == {"flagged": {}}
    assert DBTaskResult.objects.filter(task_path=tasks.review_projects.module_path).count() == 1

    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    assert red_labels(html) == {pseudonym(project, hasty)} and "hasty" in review_table(html)


def test_a_dashboard_view_queues_the_periodic_review_once(make_project, make_member, monkeypatch):
    project = make_project(n_items=2)
    client = client_for(make_member(project, "res", Role.RESEARCHER))
    DBTaskResult.objects.all().delete()
    monkeypatch.setattr(tasks, "_checked_at", -1e9)
    assert client.get("/p/demo/dashboard/").status_code == 200
    monkeypatch.setattr(tasks, "_checked_at", -1e9)
    assert client.get("/p/demo/dashboard/").status_code == 200
    (waiting,) = DBTaskResult.objects.filter(task_path=tasks.review_projects.module_path)
    assert waiting.status == TaskResultStatus.READY and waiting.run_after > timezone.now()


def test_nobody_is_red_whom_review_does_not_list(make_project, make_member):
    """Below the speed line but never red: a researcher who annotates (review acts on annotators), and an
    annotator reinstated since (review judges the work after it)."""
    project, hasty, steady = hasty_and_steady(make_project, make_member, overlap=3, review_speed_ratio=0.6)
    researcher = make_member(project, "res", Role.RESEARCHER)
    client = client_for(researcher)
    client.get("/p/demo/dashboard/")
    member = Membership.objects.get(project=project, user=hasty)
    assert member.status == "flagged"
    actions.reinstate_annotator(member, researcher)
    work(project, researcher, right, durations=(1000,))  # 1 s: the project's median is now 2 s, the line 1.2 s
    html = client.get("/p/demo/dashboard/").content.decode()

    assert Membership.objects.get(project=project, user=hasty).status == "active"  # not flagged again
    assert "Everyone is active." in review_table(html) and red_labels(html) == set()
    rows = {row["name"]: row for row in dashboard.dashboard_data(project)["annotators"]}
    assert rows[pseudonym(project, hasty)]["median_s"] is None  # no work since the reinstatement
    mine = rows[pseudonym(project, researcher)]
    assert mine["median_s"] == 1.0 and not mine["reviewed"]
    assert re.search(rf'class="bar muted" [^>]*data-label="{mine["name"]}"', html)
    assert "n=12 · researcher, not reviewed" in html


def test_the_dashboards_figures_are_the_figures_review_judges(make_project, make_member):
    """Gold accuracy, speed and position per annotator: equal to selectors.annotator_stats (what review reads),
    for a reinstated annotator too."""
    project = make_project(
        n_items=14, overlap=2, gold_rate=0.3, review_gold_accuracy=0, review_speed_ratio=0, review_position_bias_p=0
    )
    gold_rows = pairwise_rows(8, start=100)
    for row in gold_rows:
        row["purpose"], row["gold"] = "gold", {"winner": 0}
    actions.import_items(project, parse_items(jsonl(gold_rows), "jsonl", Kind.PAIRWISE))
    ana, ben = make_member(project, "ana"), make_member(project, "ben")
    researcher = make_member(project, "res", Role.RESEARCHER)
    work(project, ana, wrong, durations=(1500, 2500, 4000), limit=6)
    member = Membership.objects.get(project=project, user=ana)
    actions._set_status(member, "flagged", "by hand")
    actions.reinstate_annotator(member, researcher)
    work(project, ana, first, durations=(3000, 5000))
    work(project, ben, right, durations=(7000, 8000, 12000))

    data = dashboard.dashboard_data(project)
    rows = {row["name"]: row for row in data["annotators"]}
    for user in (ana, ben):
        membership = Membership.objects.get(project=project, user=user)
        since = membership.status_changed_at if membership.status == "active" else None
        stats = selectors.annotator_stats(project, user, since=since)
        row = rows[membership.pseudonym]
        assert (row["gold_n"], row["gold_accuracy"]) == (stats.n_gold, stats.gold_accuracy)
        assert (row["position"]["n"], row["position"]["k"]) == (stats.n_wins, stats.n_first)
        if stats.median_ms is not None:
            assert row["median_s"] * 1000 == stats.median_ms
            assert data["project_median_s"] * 1000 == stats.project_median_ms
    assert rows[pseudonym(project, ana)]["n"] > rows[pseudonym(project, ana)]["position"]["n"]  # the window


def test_a_partial_last_block_is_drawn_hollow_and_never_quoted_as_the_current_value(make_project, make_member):
    """Eighty votes agreeing, then one item that two annotators split: a block of 2 judgments at the end."""
    project = make_project(n_items=41, overlap=2)
    votes = []
    for i in range(40):
        votes += [{"item": f"item-{i}", "annotator": name, "winner": i % 2} for name in ("ana", "ben")]
    votes += [
        {"item": "item-40", "annotator": "ana", "winner": 0},
        {"item": "item-40", "annotator": "ben", "winner": 1},
    ]
    import_votes(project, votes)
    over = dashboard.dashboard_data(project)["over_time"]
    assert over["block_size"] == 20 and over["partial_below"] == 20
    points = over["points"]
    assert [(p["x"], p["n_judgments"], p["partial"]) for p in points] == [
        (20, 20, False),
        (40, 20, False),
        (60, 20, False),
        (80, 20, False),
        (82, 2, True),
    ]
    assert [p["percent_agreement"] for p in points] == [1.0, 1.0, 1.0, 1.0, 0.0]

    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    chart = re.search(r'<section class="card" id="over-time">(.*?)</section>', html, re.S).group(1)
    assert ">percent agreement: 1</text>" in chart and ">percent agreement: 0</text>" not in chart
    assert 'data-partial="true" data-series="percent agreement" data-x="82" data-y="0"' in chart
    assert 'stroke-dasharray="4 3"' in chart and "(partial block: 2 judgments)" in chart


def test_a_line_chart_of_partial_points_only_says_so_in_its_legend():
    svg = str(charts.line_chart({"α": [(10, 0.4)]}, title="t", partial=[10], partial_label="partial block"))
    assert "α: 0.4 (partial block)" in svg and 'data-partial="true"' in svg
    svg = str(charts.line_chart({"α": [(20, 0.9), (40, 0.8), (42, -0.5)]}, title="t", partial=[42]))
    assert "α: 0.8</text>" in svg and svg.count("<polyline") == 2


def test_empty_charts_say_why(make_project, make_member):
    # Overlap 1: no item can have two labels; imported votes carry no time and there are no gold items.
    project = make_project(n_items=6, overlap=1)
    import_votes(project, [{"item": f"item-{i}", "annotator": "solo", "winner": i % 2} for i in range(6)])
    client = client_for(make_member(project, "res", Role.RESEARCHER))
    html = client.get("/p/demo/dashboard/").content.decode()
    overlap = "agreement needs overlap ≥ 2 (this project&#x27;s overlap is 1)"
    over_time = re.search(r'<section class="card" id="over-time">(.*?)</section>', html, re.S).group(1)
    assert 'class="empty"' in over_time and overlap in over_time and "no data yet" not in html
    assert f"No agreement to show: {overlap}." in html and f"No pair to show: {overlap}." in html
    gold = re.search(r'<figure id="gold-chart">(.*?)</figure>', html, re.S).group(1)
    assert "no gold items (import items with &quot;purpose&quot;: &quot;gold&quot; to measure accuracy)" in gold
    speed = re.search(r'<figure id="speed-chart">(.*?)</figure>', html, re.S).group(1)
    assert "no timed judgments (imported votes carry no time on task)" in speed
    position = re.search(r'<figure id="position-chart">(.*?)</figure>', html, re.S).group(1)
    assert "only imported wins: the order they were shown in is unknown" in position

    # Overlap 2 and nothing judged yet: the reason is that, not the overlap.
    other = make_project(slug="fresh", n_items=4, overlap=2)
    researcher = make_member(other, "res-fresh", Role.RESEARCHER)
    reasons = dashboard.empty_reasons(dashboard.dashboard_data(other), other)
    assert reasons["agreement"] == "no judgments on normal items yet" and reasons["speed"] == reasons["agreement"]
    html = client_for(researcher).get("/p/fresh/dashboard/").content.decode()
    assert "No judgments yet." in html and "no judgments on normal items yet" in html


# --- reinstating ------------------------------------------------------------------------------------------------------


def test_researchers_reinstate_from_the_status_table(make_project, make_member):
    project = make_project(n_items=2)
    paused = make_member(project, "paused-one")
    member = Membership.objects.get(user=paused)
    actions._set_status(member, Membership.Status.PAUSED, "Automatic review: too fast.")
    researcher = make_member(project, "res", Role.RESEARCHER)
    client = client_for(researcher)
    page = client.get("/p/demo/dashboard/").content.decode()
    assert "paused-one" in page and "Automatic review: too fast." in page
    assert f'name="membership" value="{member.pk}"' in page and 'name="csrfmiddlewaretoken"' in page

    annotator = make_member(project, "nosy")
    assert client_for(annotator).post("/p/demo/dashboard/reinstate/", {"membership": member.pk}).status_code == 403
    assert Membership.objects.get(pk=member.pk).status == "paused"

    response = client.post("/p/demo/dashboard/reinstate/", {"membership": member.pk})
    assert response.status_code == 302 and response["Location"] == "/p/demo/dashboard/"
    member.refresh_from_db()
    assert member.status == "active" and member.status_reason == "Reinstated by res."
    assert client.get("/p/demo/dashboard/").content.decode().count('name="membership"') == 0
    # Only flagged, paused or refused members, only of this project.
    assert client.post("/p/demo/dashboard/reinstate/", {"membership": member.pk}).status_code == 404
    assert client.post("/p/demo/dashboard/reinstate/", {"membership": "x"}).status_code == 404
    # CSRF is enforced on the form.
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(researcher)
    assert strict.post("/p/demo/dashboard/reinstate/", {"membership": member.pk}).status_code == 403


# --- escaping --------------------------------------------------------------------------------------------------------


def test_user_names_criteria_and_reasons_are_escaped_in_svg_and_tables(make_project, make_member):
    evil = '<script>alert("c")</script>'
    project = make_project(n_items=4, overlap=2, criteria=[evil, 'x"><img src=x onerror=alert(1)>'])
    votes = []
    for i in range(4):
        for name, winner in (("ana", 0), ("ben", i % 2)):
            votes.append(
                {
                    "item": f"item-{i}",
                    "annotator": name,
                    "winner": winner,
                    "criteria": {evil: winner, 'x"><img src=x onerror=alert(1)>': 1},
                }
            )
    import_votes(project, votes)
    bad = User.objects.create(username="<img src=y onerror=alert(2)>")
    Membership.objects.create(
        project=project,
        user=bad,
        role=Role.ANNOTATOR,
        status=Membership.Status.FLAGGED,
        status_reason="<b>bold</b>",
        status_changed_at=timezone.now(),
    )
    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    assert "<script>alert" not in html and "<img src=" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(&quot;c&quot;)&lt;/script&gt;" in html  # the criterion, in the chart and the table
    assert "&lt;img src=y onerror=alert(2)&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    criteria_chart = re.search(r'<svg class="chart bar-chart".*?</svg>', html, re.S).group(0)
    assert "Krippendorff" in criteria_chart and "&lt;script&gt;" in criteria_chart


def test_chart_helpers_escape_labels_and_describe_themselves():
    label = "</title><script>alert(1)</script>"
    svg = str(
        charts.bar_chart([charts.Bar(label, 0.5)], title=label, desc=label, references=[charts.Reference(0.2, label)])
    )
    svg += str(charts.line_chart({label: [(1, 0.1), (2, 0.2)]}, title=label))
    svg += str(charts.heatmap([[1, 2], [3, 4]], row_labels=[label, "b"], column_labels=["a", label], title=label))
    svg += str(charts.scatter([charts.Point(1, 2, label)], title=label, x_references=[charts.Reference(1, label)]))
    assert "<script>" not in svg and "</title><script" not in svg
    assert svg.count('role="img"') == 4 and svg.count("<desc id=") == 4
    empty = str(charts.line_chart({}, title="Nothing"))
    assert "no data yet" in empty and "<title" in empty


# --- every kind renders -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, fields, row, vote",
    [
        (
            Kind.RATING,
            {"scale": {"min": 1, "max": 5}},
            {"responses": ["a", "b"]},
            lambda i, who: {"ratings": {"0": {"overall": 1 + (i + who) % 5}, "1": {"overall": 3}}},
        ),
        (
            Kind.RATING,
            {"scale": {"labels": ["safe", "unsafe"]}},
            {"responses": ["a"]},
            lambda i, who: {"ratings": {"0": {"overall": ["safe", "unsafe"][(i * who) % 2]}}},
        ),
        (Kind.RANKING, {}, {"responses": ["a", "b", "c"]}, lambda i, who: {"ranking": [0, 1, 2] if who else [2, 1, 0]}),
        (
            Kind.STEPS,
            {},
            {"responses": ["one\ntwo"]},
            lambda i, who: {"steps": ["positive", "negative" if who and i % 2 else "positive"]},
        ),
        (Kind.DEMONSTRATION, {}, {"responses": ["a"]}, lambda i, who: {"text": f"better {i} {who}"}),
    ],
)
def test_every_kind_renders(make_project, make_member, kind, fields, row, vote):
    project = make_project(kind=kind, n_items=0, overlap=2, **fields)
    rows = [{"id": f"i{i}", "prompt": f"Q{i}", **row} for i in range(6)]
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", kind))
    import_votes(
        project,
        [
            {"item": f"i{i}", "annotator": name, **vote(i, who)}
            for i in range(6)
            for who, name in enumerate(["ana", "ben"])
        ],
    )
    response = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/")
    assert response.status_code == 200
    data = dashboard.dashboard_data(project)
    assert len(data["annotators"]) == 2 and all(a["n"] == 6 for a in data["annotators"])
    if kind == Kind.RATING and "labels" in fields["scale"]:
        assert data["confusion"]["classes"] == ["safe", "unsafe"]
    if kind == Kind.STEPS:
        assert data["confusion"]["classes"] == ["positive", "negative"]
    if kind == Kind.RANKING:
        assert data["over_time"]["points"][0]["percent_agreement"] == 0.0
    json.dumps(data)  # cacheable anywhere: plain JSON values only


def test_a_reliability_nothing_can_estimate_is_null_with_the_reason(make_project, make_member):
    """One annotator alone used to read 0.9999999; an annotator who shares no item with anyone likewise."""
    project = make_project(n_items=7, overlap=2)
    import_votes(project, [{"item": f"item-{i}", "annotator": "solo", "winner": i % 2} for i in range(6)])
    summary = agreement.summary(project)
    (row,) = summary["annotators"]
    assert (
        row["reliability"] is None and row["reliability_note"] == "only one annotator: there is no one to compare with"
    )
    data = dashboard.dashboard_data(project)
    (entry,) = data["annotators"]
    assert entry["reliability"] is None and entry["reliability_note"] == row["reliability_note"]
    assert data["confusion"]["matrices"][0]["accuracy"] is None and data["confusion"]["converged"] is True
    html = client_for(make_member(project, "res", Role.RESEARCHER)).get("/p/demo/dashboard/").content.decode()
    assert "<small>only one annotator: there is no one to compare with</small>" in html

    votes = [
        {"item": f"item-{i}", "annotator": "pair", "winner": (i + 1) % 2} for i in range(3)
    ]  # shares items 0–2 with solo
    votes += [{"item": "item-6", "annotator": "loner", "winner": 0}]
    import_votes(project, votes)
    cache.clear()
    rows = {r["name"]: r for r in agreement.summary(project)["annotators"]}
    names = selectors.pseudonyms(
        project, list(User.objects.filter(username__in=["solo", "pair", "loner"]).values_list("pk", flat=True))
    )
    by_user = {u.username: rows[names[u.pk]] for u in User.objects.filter(username__in=["solo", "pair", "loner"])}
    assert (
        by_user["loner"]["reliability"] is None
        and by_user["loner"]["reliability_note"] == "shares no item with another annotator"
    )
    assert 0 < by_user["pair"]["reliability"] < 1 and by_user["pair"]["reliability_note"] is None


@pytest.mark.django_db
def test_kinds_without_a_reliability_model_say_so():
    project = actions.create_project(slug="rated", kind=Kind.RATING, overlap=2)
    actions.import_items(
        project, parse_items(jsonl([{"id": "q", "prompt": "Rate", "responses": ["x"]}]), "jsonl", Kind.RATING)
    )
    import_votes(
        project, [{"item": "q", "annotator": n, "ratings": {"0": {"overall": s}}} for n, s in (("a", 3), ("b", 4))]
    )
    rows = agreement.summary(project)["annotators"]
    assert [r["reliability"] for r in rows] == [None, None]
    assert {r["reliability_note"] for r in rows} == {agreement.NO_RELIABILITY_MODEL}
