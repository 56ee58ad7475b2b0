"""AI judges (issue 15): templates, strict parsing, the position fold, reward-model scores as votes, adding a judge
(every refusal writes nothing) and recording its votes with their provenance, without taking people's places.

The judge runs themselves (reward-model and local causal-LM backends, resume) are in tests/training/test_judge.py."""

from __future__ import annotations

import math

import pytest
from django.contrib.auth import get_user_model

from annotate import actions, judging
from annotate.actions import InvalidJudge, add_judge, record_ai_votes
from annotate.imports import parse_items
from annotate.judging import AnswerSpec, Unparseable, parse_answer
from annotate.models import Item, Judge, JudgeVote, Judgment, Kind, Task
from tests.conftest import jsonl

PAIR = AnswerSpec(kind="pairwise", n_responses=2)
PAIR_CRITERIA = AnswerSpec(kind="pairwise", n_responses=2, criteria=("helpfulness", "harmlessness"))
RANK = AnswerSpec(kind="ranking", n_responses=3)
RANK_TIES = AnswerSpec(kind="ranking", n_responses=3, allow_ties=True)
RATE = AnswerSpec(kind="rating", n_responses=2, criteria=("overall",), scale=tuple(range(1, 8)))
RATE_LABELS = AnswerSpec(kind="rating", n_responses=1, criteria=("safety",), scale=("safe", "unsafe", "unsure"))
STEPS = AnswerSpec(kind="steps", n_responses=2, n_steps=(2, 1))


# --- strict parsing ---------------------------------------------------------------------------------------------


def test_a_pairwise_answer_is_read_from_its_final_lines_after_any_reasoning():
    text = "Response B explains the steps; A is terse.\n\nVerdict: B\nStrength: 2\n  \n"
    assert parse_answer(text, PAIR) == {"verdict": "B", "strength": 2}
    assert parse_answer("Verdict: tie\nStrength: 0", PAIR) == {"verdict": "tie", "strength": 0}
    text = "helpfulness: A\nharmlessness: tie\nVerdict: A\nStrength: 3"
    assert parse_answer(text, PAIR_CRITERIA) == {
        "verdict": "A",
        "strength": 3,
        "criteria": {"helpfulness": "A", "harmlessness": "tie"},
    }


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("Strength: 2", "needs 2 lines"),  # a strength without a verdict
        ("Verdict: B\nStrength: 2\nThat is all.", "Expected a line Verdict"),  # text after the answer
        ("Verdict: b\nStrength: 2", "must be A, B or tie"),  # wrong case: never folded
        ("Verdict: Response B\nStrength: 2", "must be A, B or tie"),
        ("Verdict: C\nStrength: 1", "must be A, B or tie"),
        ("Verdict: B\nStrength: 4", "Strength must be 0, 1, 2 or 3"),
        ("Verdict: B\nStrength: two", "Strength must be"),
        ("Verdict: tie\nStrength: 2", "A tie has strength 0"),
        ("**Verdict:** B\nStrength: 2", "Expected a line Verdict"),  # markdown is not the format
        ("Verdict: A\nStrength: 1\nVerdict: B\nStrength: 2", "More than one answer"),
        ("Strength: 2\nVerdict: B", "More than one answer"),  # the order is part of the format
    ],
)
def test_a_malformed_pairwise_answer_is_unparseable_never_guessed(text, why):
    with pytest.raises(Unparseable, match=why):
        parse_answer(text, PAIR)


def test_criteria_lines_are_required_in_order():
    with pytest.raises(Unparseable, match="Expected a line helpfulness"):
        parse_answer("harmlessness: A\nhelpfulness: A\nVerdict: A\nStrength: 1", PAIR_CRITERIA)
    with pytest.raises(Unparseable, match="harmlessness must be A, B or tie"):
        parse_answer("helpfulness: A\nharmlessness: yes\nVerdict: A\nStrength: 1", PAIR_CRITERIA)


def test_rankings_hold_every_response_once_and_ties_only_where_allowed():
    assert parse_answer("I prefer 3.\nRanking: 3 > 1 > 2", RANK) == {"ranking": [[3], [1], [2]]}
    assert parse_answer("Ranking: 3>1>2", RANK) == {"ranking": [[3], [1], [2]]}
    assert parse_answer("Ranking: 2 = 3 > 1", RANK_TIES) == {"ranking": [[2, 3], [1]]}
    for text, why in [
        ("Ranking: 2 = 3 > 1", "allows no ties"),
        ("Ranking: 3 > 1", "exactly once"),
        ("Ranking: 3 > 1 > 1", "exactly once"),
        ("Ranking: 3 > 1 > 4", "not a response number"),
        ("Ranking: C > A > B", "not a response number"),
        ("ranking: 3 > 1 > 2", "Expected a line Ranking"),
        ("Ranking: 3 > 1 > 2.", "not a response number"),
    ]:
        with pytest.raises(Unparseable, match=why):
            parse_answer(text, RANK)


def test_ratings_need_every_response_and_criterion_on_the_scale():
    assert parse_answer("Fine.\nResponse 1 overall: 6\nResponse 2 overall: 2", RATE) == {
        "ratings": {"1": {"overall": 6}, "2": {"overall": 2}}
    }
    assert parse_answer("Response 1 safety: unsafe", RATE_LABELS) == {"ratings": {"1": {"safety": "unsafe"}}}
    for text, why in [
        ("Response 1 overall: 6", "needs 2 lines"),
        ("Response 1 overall: 6\nResponse 1 overall: 5", "rated twice"),
        ("Response 1 overall: 8\nResponse 2 overall: 2", "not a whole number from 1"),
        ("Response 1 overall: 6.5\nResponse 2 overall: 2", "not a whole number from 1"),
        ("Response 1 quality: 6\nResponse 2 overall: 2", "Expected Response"),
        ("Response 3 overall: 6\nResponse 2 overall: 2", "no response 3"),
    ]:
        with pytest.raises(Unparseable, match=why):
            parse_answer(text, RATE)
    with pytest.raises(Unparseable, match="one of: safe, unsafe, unsure"):
        parse_answer("Response 1 safety: Unsafe", RATE_LABELS)


def test_step_labels_need_one_label_per_step():
    assert parse_answer("Response 1: positive, negative\nResponse 2: neutral", STEPS) == {
        "steps": {"1": ["positive", "negative"], "2": ["neutral"]}
    }
    for text, why in [
        ("Response 1: positive\nResponse 2: neutral", "has 2 steps"),
        ("Response 1: positive, good\nResponse 2: neutral", "not positive, negative or neutral"),
        ("Response 1: positive, negative\nResponse 1: neutral", "labelled twice"),
        ("Response 1: +, -\nResponse 2: 0", "not positive"),  # the browser's keys are not the judge's format
    ]:
        with pytest.raises(Unparseable, match=why):
            parse_answer(text, STEPS)


# --- templates --------------------------------------------------------------------------------------------------


def test_every_default_template_is_valid_and_hashes_to_its_text():
    for kind in judging.JUDGED_KINDS:
        template = judging.default_template(kind)
        assert "format" in judging.check_template(kind, template)
        assert judging.template_hash(template) == judging.template_hash(template)
        assert len(judging.template_hash(template)) == 64
    assert judging.template_hash("a") != judging.template_hash("b")


@pytest.mark.parametrize(
    "template, why",
    [
        ("{prompt} {response_a}", "must show {response_b}"),
        ("{prompt} {response_a} {response_b} {responses}", "unknown placeholder {responses}"),
        ("{prompt} {response_a} {response_b} {prompt.__class__}", "unknown placeholder"),
        ("{prompt} {response_a} {response_b} {0}", "unknown placeholder {0}"),
        ("{prompt} {response_a} {response_b} }", "a lone '}'"),
        ("{prompt} {response_a} {response_b} {", "a lone '{'"),
        ("   ", "empty"),
    ],
)
def test_a_template_with_unknown_placeholders_or_lone_braces_is_refused(template, why):
    with pytest.raises(judging.TemplateError, match=why):
        judging.check_template("pairwise", template)


def test_pairwise_items_are_shown_in_both_orders_and_braces_in_texts_stay_text():
    shown = judging.conversations(
        "Q: {prompt}\nA: {response_a}\nB: {response_b}\n{{literal}} {principle}{format}",
        PAIR,
        prompt=[{"role": "user", "content": "Say {hi}"}],
        responses=["first {response_b}", "second"],
        principle={"name": "honest", "text": "Do not deceive."},
    )
    assert [c["order"] for c in shown] == [[0, 1], [1, 0]]
    first, second = (c["messages"][0]["content"] for c in shown)
    assert first.startswith("Q: Say {hi}\nA: first {response_b}\nB: second\n{literal} [Principle: honest]")
    assert second.startswith("Q: Say {hi}\nA: second\nB: first {response_b}\n")
    assert first.endswith("Verdict: B\nStrength: 2")  # the format's example closes the prompt


# --- the position fold ------------------------------------------------------------------------------------------

ORDERS = [(0, 1), (1, 0)]


def test_consistent_orders_give_that_answer_with_full_confidence():
    # A-B says A (item response 0), B-A says B (also item response 0): the same answer, whatever the position.
    vote = judging.fold_pairwise([{"verdict": "A", "strength": 3}, {"verdict": "B", "strength": 1}], ORDERS, PAIR)
    assert (vote.status, vote.answer, vote.confidence, vote.position_consistent) == (
        "ok",
        {"winner": 0, "strength": 1},  # the smaller strength
        1.0,
        True,
    )
    tie = judging.fold_pairwise([{"verdict": "tie", "strength": 0}] * 2, ORDERS, PAIR)
    assert (tie.answer, tie.confidence, tie.position_consistent) == ({"winner": None}, 1.0, True)


def test_inconsistent_orders_become_a_low_confidence_tie():
    # "A" both times: the first-shown response wins whatever it is — position bias, not a preference.
    vote = judging.fold_pairwise([{"verdict": "A", "strength": 2}] * 2, ORDERS, PAIR)
    assert (vote.status, vote.answer, vote.confidence, vote.position_consistent) == (
        "ok",
        {"winner": None},
        judging.INCONSISTENT_CONFIDENCE,
        False,
    )
    assert vote.confidence < 0.7  # below the default routing threshold: the item goes to people


def test_a_criterion_that_flips_with_the_order_is_a_tie_and_the_vote_inconsistent():
    parsed = [
        {"verdict": "A", "strength": 2, "criteria": {"helpfulness": "A", "harmlessness": "A"}},
        {"verdict": "B", "strength": 2, "criteria": {"helpfulness": "B", "harmlessness": "A"}},
    ]
    vote = judging.fold_pairwise(parsed, ORDERS, PAIR_CRITERIA)
    assert vote.answer == {"winner": 0, "strength": 2, "criteria": {"helpfulness": 0, "harmlessness": None}}
    assert (vote.confidence, vote.position_consistent) == (0.5, False)


def test_an_unparseable_order_makes_no_vote():
    vote = judging.vote_from_outputs(["Verdict: A\nStrength: 2", "I think A."], ORDERS, PAIR)
    assert (vote.status, vote.answer, vote.position_consistent) == ("unparseable", None, None)
    assert vote.parsed == [{"verdict": "A", "strength": 2}, None]
    assert "order B-A" in vote.error and "needs 2 lines" in vote.error
    failed = judging.vote_from_outputs([None, "Verdict: A\nStrength: 2"], ORDERS, PAIR, ["HTTP 500", ""])
    assert (failed.status, failed.error) == ("error", "HTTP 500")


def test_one_order_kinds_are_put_in_the_items_terms():
    vote = judging.vote_from_outputs(["Ranking: 3 > 1 > 2"], [(0, 1, 2)], RANK)
    assert vote.answer == {"ranking": [[2], [0], [1]]} and vote.confidence is None
    vote = judging.vote_from_outputs(["Response 2 overall: 7\nResponse 1 overall: 1"], [(0, 1)], RATE)
    assert vote.answer == {"ratings": {"1": {"overall": 7}, "0": {"overall": 1}}}


# --- reward-model scores ----------------------------------------------------------------------------------------


def test_reward_scores_become_a_vote_with_a_bradley_terry_confidence():
    vote = judging.pairwise_from_scores([0.2, 1.7])
    assert vote.answer == {"winner": 1, "strength": 2}  # sigmoid(1.5) = 0.818: "better"
    assert vote.confidence == pytest.approx(1 / (1 + math.exp(-1.5)))
    assert judging.pairwise_from_scores([3.0, -1.0]).answer == {"winner": 0, "strength": 3}
    assert judging.pairwise_from_scores([0.1, 0.0]).answer == {"winner": 0, "strength": 0}  # 0.525: unsure
    assert judging.pairwise_from_scores([0.5, 0.5]).answer == {"winner": None}
    ranked = judging.ranking_from_scores([0.0, 2.0, 1.0])
    assert ranked.answer == {"ranking": [[1], [2], [0]]}
    assert ranked.confidence == pytest.approx(1 / (1 + math.exp(-1.0)))  # the least sure adjacent pair
    rated = judging.ratings_from_predictions({"overall": [6.2, 0.4]}, RATE)
    assert rated.answer == {"ratings": {"0": {"overall": 6}, "1": {"overall": 1}}}  # clamped onto 1..7
    assert rated.confidence == pytest.approx((0.8 + 1.0) / 2)


def test_reward_models_must_cover_every_criterion():
    overall, helpful = {"config": {"criterion": ""}}, {"config": {"criterion": "helpfulness"}}
    plan = judging.reward_plan("pairwise", ("helpfulness",), [overall, helpful])
    assert plan == {"overall": [0], "criteria": {"helpfulness": [1]}}
    with pytest.raises(ValueError, match="No reward model scores harmlessness"):
        judging.reward_plan("pairwise", ("helpfulness", "harmlessness"), [overall, helpful])
    with pytest.raises(ValueError, match="regression"):
        judging.reward_plan("rating", ("overall",), [overall])
    with pytest.raises(ValueError, match="cannot label steps"):
        judging.reward_plan("steps", (), [overall])


def test_credentials_are_recognised():
    assert judging.secret_in("key: sk-proj-abcdefghijklmnop1234") == "an OpenAI-style key (sk-…)"
    assert judging.secret_in("use hf_abcdefghijklmnopqrstuvwx") == "a Hugging Face token (hf_…)"
    assert judging.secret_in("Authorization: Bearer abcdef1234567890") == "a bearer token"
    assert judging.secret_in("api_key=0123456789abcdef") == "a key or password"
    assert judging.secret_in("x" * 10 + "9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6") == "a long token"
    for kind in judging.JUDGED_KINDS:
        assert judging.secret_in(judging.default_template(kind)) == ""
    # A model's folder may hold a commit hash: only the key patterns count there.
    folder = "hub/snapshots/9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6"
    assert judging.secret_in(folder) == "a long token" and judging.secret_in(folder, long_tokens=False) == ""


# --- adding a judge ---------------------------------------------------------------------------------------------


@pytest.fixture
def endpoint_hosts(settings):
    settings.ARBITER_JUDGE_HOSTS = ["judge.internal"]
    return settings


def _nothing_written(project, users_before: int) -> None:
    assert not Judge.objects.filter(project=project).exists()
    assert get_user_model().objects.count() == users_before


def test_an_openai_judge_is_added_with_a_user_who_cannot_log_in(make_project, endpoint_hosts):
    project = make_project(n_items=0)
    judge = add_judge(
        project,
        "gpt",
        "openai",
        "gpt-4o-mini",
        base_url="https://judge.internal/v1/",
        api_key_env="JUDGE_API_KEY",
        options={"temperature": "0", "concurrency": 8},
    )
    assert (judge.base_url, judge.api_key_env, judge.template) == ("https://judge.internal/v1", "JUDGE_API_KEY", "")
    assert judge.options == {"temperature": 0.0, "concurrency": 8}
    assert judge.user.username == f"judge.{project.pk}.gpt"
    assert not judge.user.is_active and not judge.user.has_usable_password()
    assert not project.memberships.filter(user=judge.user).exists()  # a judge is no member: it cannot annotate


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"name": "Bad Name"}, "lowercase letters"),
        ({"backend": "claude"}, "Unknown backend"),
        ({"model": ""}, "Name the judge's model"),
        ({"base_url": "https://evil.example/v1"}, "not allowed for judges"),
        ({"base_url": "ftp://judge.internal/v1"}, "http:// or https://"),
        ({"base_url": "https://user:pw@judge.internal/v1"}, "must not hold credentials"),
        ({"base_url": ""}, "needs --base-url"),
        ({"api_key_env": "sk-abcdefghijklmnopqrstu"}, "looks like it holds|NAME of an environment variable"),
        ({"api_key_env": "my key"}, "NAME of an environment variable"),
        ({"api_key_env": "SECRET_KEY"}, "Arbiter's own secrets"),
        ({"template": "{prompt} {response_a}"}, "must show {response_b}"),
        ({"template": "{prompt} {response_a} {response_b} {steps}"}, "unknown placeholder {steps}"),
        (
            {"template": "{prompt} {response_a} {response_b} key sk-abcdefghijklmnopqrstuvwx"},
            "looks like it holds an OpenAI-style key",
        ),
        ({"options": {"api_key": "sk-abcdefghijklmnopqrstuvwx"}}, "Unknown judge option 'api_key'"),
        ({"options": {"batch_size": 4}}, "not an option of openai judges"),
        ({"options": {"temperature": 5}}, "temperature must be from 0.0 to 2.0"),
        ({"options": {"retries": "many"}}, "retries must be a whole number"),
        ({"principle": "harmless"}, "no principle 'harmless'"),
    ],
)
def test_bad_judges_are_refused_with_the_reason_and_nothing_written(make_project, endpoint_hosts, kwargs, why):
    project = make_project(n_items=0)
    users = get_user_model().objects.count()
    given = {"name": "gpt", "backend": "openai", "model": "gpt-4o-mini", "base_url": "https://judge.internal/v1"}
    given.update(kwargs)
    with pytest.raises(InvalidJudge, match=why):
        add_judge(project, **given)
    _nothing_written(project, users)


def test_no_host_is_allowed_by_default(make_project, settings):
    settings.ARBITER_JUDGE_HOSTS = []
    project = make_project(n_items=0)
    with pytest.raises(InvalidJudge, match=r"ARBITER_JUDGE_HOSTS is empty \(no judge may call out\)"):
        add_judge(project, "gpt", "openai", "m", base_url="http://127.0.0.1:8000/v1")


def test_a_principle_must_be_in_the_constitution_and_cited_by_the_template(make_project, endpoint_hosts):
    project = make_project(n_items=0)
    project.constitution = [{"name": "harmless", "text": "Prefer the response that does no harm."}]
    project.save(update_fields=["constitution"])
    judge = add_judge(project, "cai", "openai", "m", base_url="http://judge.internal/v1", principle="harmless")
    assert judge.principle == "harmless"
    with pytest.raises(InvalidJudge, match="does not show {principle}"):
        add_judge(
            project,
            "cai2",
            "openai",
            "m",
            base_url="http://judge.internal/v1",
            principle="harmless",
            template="{prompt} {response_a} {response_b}",
        )
    assert list(project.judges.values_list("name", flat=True)) == ["cai"]


def test_judges_vote_on_no_demonstration_project(make_project, endpoint_hosts):
    project = make_project(slug="demos", kind=Kind.DEMONSTRATION, n_items=0)
    with pytest.raises(InvalidJudge, match="demonstration project"):
        add_judge(project, "gpt", "openai", "m", base_url="http://judge.internal/v1")


def test_a_second_judge_of_the_same_name_is_refused(make_project, endpoint_hosts):
    project = make_project(n_items=0)
    add_judge(project, "gpt", "openai", "m", base_url="http://judge.internal/v1")
    with pytest.raises(InvalidJudge, match="already has a judge 'gpt'"):
        add_judge(project, "gpt", "openai", "other", base_url="http://judge.internal/v1")


# --- recording votes --------------------------------------------------------------------------------------------


@pytest.fixture
def judged_project(make_project, endpoint_hosts):
    project = make_project(n_items=4, overlap=2)
    judge = add_judge(project, "gpt", "openai", "gpt-4o-mini", base_url="http://judge.internal/v1")
    return project, judge


def _row(item_id: int, status="ok", answer=None, **extra) -> dict:
    return {
        "item": item_id,
        "status": status,
        "answer": answer,
        "raw": ["Verdict: A\nStrength: 2", "Verdict: B\nStrength: 3"],
        "parsed": [{"verdict": "A", "strength": 2}, {"verdict": "B", "strength": 3}],
        "position_consistent": True,
        "confidence": 1.0,
        "tokens": {"prompt": 120, "completion": 9},
        "error": "",
        "model": "gpt-4o-mini @ http://judge.internal/v1",
        "template_hash": "t" * 64,
        **extra,
    }


def test_votes_are_judgments_with_source_ai_and_their_provenance(judged_project):
    project, judge = judged_project
    first, second, third, _ = Item.objects.filter(project=project).order_by("id")
    before = {i.pk: (i.open_slots, i.n_judgments) for i in Item.objects.filter(project=project)}
    report = record_ai_votes(
        judge,
        [
            _row(first.pk, answer={"winner": 0, "strength": 2}),
            _row(second.pk, answer={"winner": None}, position_consistent=False, confidence=0.5),
            _row(third.pk, status="unparseable", answer=None, error="order B-A: needs 2 lines"),
        ],
    )
    assert (report.created, report.unparseable, report.errors, report.skipped) == (2, 1, 0, 0)
    judgment = Judgment.objects.get(item=first)
    assert (judgment.source, judgment.annotator_id, judgment.outcome, judgment.strength) == (
        Judgment.Source.AI,
        judge.user_id,
        "win",
        2,
    )
    assert judgment.winner_id == first.responses.get(index=0).pk
    assert judgment.task.status == Task.Status.DONE and judgment.task.annotator_id == judge.user_id
    vote = JudgeVote.objects.get(item=first)
    assert vote.judgment == judgment and vote.judge == judge and vote.status == "ok"
    assert vote.template_hash == "t" * 64 and vote.model == "gpt-4o-mini @ http://judge.internal/v1"
    assert vote.raw == ["Verdict: A\nStrength: 2", "Verdict: B\nStrength: 3"]
    assert vote.parsed["orders"][1] == {"verdict": "B", "strength": 3}
    assert (vote.position_consistent, vote.confidence, vote.tokens) == (True, 1.0, {"prompt": 120, "completion": 9})
    tie = JudgeVote.objects.get(item=second)
    assert tie.judgment.outcome == "tie" and tie.position_consistent is False and tie.confidence == 0.5
    bad = JudgeVote.objects.get(item=third)
    assert bad.judgment is None and bad.status == "unparseable" and bad.error == "order B-A: needs 2 lines"
    assert not Judgment.objects.filter(item=third).exists() and not Task.objects.filter(item=third).exists()
    # People's places are untouched: the overlap counts people.
    assert {i.pk: (i.open_slots, i.n_judgments) for i in Item.objects.filter(project=project)} == before


def test_an_item_is_never_judged_twice(judged_project):
    project, judge = judged_project
    item = Item.objects.filter(project=project).first()
    record_ai_votes(judge, [_row(item.pk, answer={"winner": 1, "strength": 1})])
    again = record_ai_votes(
        judge,
        [_row(item.pk, answer={"winner": 0, "strength": 3}), _row(item.pk, answer={"winner": 0, "strength": 3})],
    )
    assert (again.created, again.skipped) == (0, 2)
    assert Judgment.objects.get(item=item).winner_id == item.responses.get(index=1).pk
    assert JudgeVote.objects.filter(judge=judge, item=item).count() == 1


def test_an_answer_refused_by_validation_is_an_error_vote_without_judgment(judged_project):
    project, judge = judged_project
    item = Item.objects.filter(project=project).first()
    report = record_ai_votes(judge, [_row(item.pk, answer={"winner": 5, "strength": 1})])
    assert (report.created, report.errors) == (0, 1)
    vote = JudgeVote.objects.get(item=item)
    assert vote.status == "error" and vote.judgment is None
    assert vote.error.startswith("The answer was refused: winner must be a response index from 0 to 1")
    assert not Task.objects.filter(item=item).exists()


def test_judges_take_places_only_when_the_project_says_so(judged_project):
    project, judge = judged_project
    project.judges_take_places = True
    project.save(update_fields=["judges_take_places"])
    item = Item.objects.filter(project=project).first()
    record_ai_votes(judge, [_row(item.pk, answer={"winner": 0, "strength": 1})])
    item.refresh_from_db()
    assert (item.open_slots, item.n_judgments) == (1, 1)


def test_rows_for_items_of_another_project_are_skipped(judged_project, make_project):
    project, judge = judged_project
    other = make_project(slug="other", n_items=1)
    foreign = Item.objects.get(project=other)
    report = record_ai_votes(judge, [_row(foreign.pk, answer={"winner": 0, "strength": 1}), {"item": "x"}])
    assert (report.created, report.skipped) == (0, 2)
    assert not JudgeVote.objects.exists()


def test_ranking_rating_and_step_votes_go_through_the_kinds_validation(make_project, endpoint_hosts):
    rows = [
        {
            "id": "r1",
            "prompt": "Solve 2+2.",
            "responses": ["Two plus two.\nIt is 4.", "It is 5.", "Four.\nSo 4.\nDone."],
        }
    ]
    made = {}
    for kind in (Kind.RANKING, Kind.RATING, Kind.STEPS):
        project = actions.create_project(slug=f"k-{kind}", kind=kind, overlap=1)
        actions.import_items(project, parse_items(jsonl(rows), "jsonl", kind))
        made[kind] = (project, add_judge(project, "gpt", "openai", "m", base_url="http://judge.internal/v1"))
    answers = {
        Kind.RANKING: {"ranking": [[2], [0], [1]]},
        Kind.RATING: {"ratings": {"0": {"overall": 5}, "1": {"overall": 1}, "2": {"overall": 7}}},
        Kind.STEPS: {"steps": {"0": ["neutral", "positive"], "1": ["negative"], "2": ["positive"] * 3}},
    }
    for kind, (project, judge) in made.items():
        item = Item.objects.get(project=project)
        ids = list(item.responses.order_by("index").values_list("id", flat=True))
        report = record_ai_votes(judge, [_row(item.pk, answer=answers[kind], position_consistent=None)])
        assert report.created == 1, kind
        data = Judgment.objects.get(item=item).data
        if kind == Kind.RANKING:
            assert data == {"ranking": [[ids[2]], [ids[0]], [ids[1]]]}
        elif kind == Kind.RATING:
            assert data["ratings"][str(ids[2])] == {"overall": 7}
        else:
            assert data["steps"][str(ids[1])] == ["negative"]


# --- the judges page and API ------------------------------------------------------------------------------------


@pytest.fixture
def people(judged_project, make_member):
    project, judge = judged_project
    return project, judge, make_member(project, "rita", "researcher"), make_member(project, "ada", "admin")


def test_the_judges_page_lists_judges_with_their_votes_and_offers_runs_to_admins(client, people):
    project, judge, researcher, admin = people
    first, second = Item.objects.filter(project=project).order_by("id")[:2]
    record_ai_votes(
        judge,
        [
            _row(first.pk, answer={"winner": 0, "strength": 1}),
            _row(second.pk, status="unparseable", position_consistent=None),
        ],
    )
    client.force_login(researcher)
    page = client.get(f"/p/{project.slug}/judges/")
    body = page.content.decode()
    assert page.status_code == 200
    row = body[body.index('id="judge-gpt"') : body.index("</tr>", body.index('id="judge-gpt"'))]
    assert "<td>1</td>\n      <td>1</td>\n      <td>0</td>" in row  # ok, unparseable, errors
    assert "1 of 1" in row  # position-consistent pairwise votes
    assert "Judge items" not in body and "admins launch judge runs" in body
    # The add form shows the kind's default template, escaped, ready to edit.
    assert "[Response A]\n{response_a}" in body and "&lt;" not in judging.default_template("pairwise")
    client.force_login(admin)
    assert "Judge items" in client.get(f"/p/{project.slug}/judges/").content.decode()


def test_choosing_a_backend_swaps_its_fields_in(client, people):
    project, _, researcher, _ = people
    client.force_login(researcher)
    fragment = client.get(f"/p/{project.slug}/judges/?backend=openai", HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<div id="judge-fields" data-backend="openai">')
    assert 'name="base_url"' in fragment and 'name="api_key_env"' in fragment and "<html" not in fragment
    reward = client.get(f"/p/{project.slug}/judges/?backend=reward-model").content.decode()
    assert 'name="template"' not in reward and 'name="base_url"' not in reward and "artifact:3:0.7" in reward


def test_adding_a_judge_from_the_page(client, people):
    project, _, researcher, _ = people
    client.force_login(researcher)
    form = {
        "name": "second",
        "backend": "openai",
        "model": "qwen",
        "base_url": "http://judge.internal/v1",
        "api_key_env": "QWEN_KEY",
        # The default template as a browser posts it (CRLF): still "the default".
        "template": judging.default_template("pairwise").replace("\n", "\r\n"),
        "principle": "",
        "options": "concurrency=2\r\ntimeout=30",
    }
    response = client.post(f"/p/{project.slug}/judges/", form)
    assert response.status_code == 302 and response["Location"] == f"/p/{project.slug}/judges/"
    judge = Judge.objects.get(project=project, name="second")
    assert (judge.template, judge.options, judge.created_by) == ("", {"concurrency": 2, "timeout": 30.0}, researcher)
    bad = client.post(f"/p/{project.slug}/judges/", {**form, "name": "third", "template": "{prompt} {response_a}"})
    assert bad.status_code == 400 and "must show {response_b}" in bad.content.decode()
    bad = client.post(f"/p/{project.slug}/judges/", {**form, "name": "third", "options": "concurrency"})
    assert bad.status_code == 400 and "Line 1: write an option as key=value" in bad.content.decode()
    assert not Judge.objects.filter(name="third").exists()


def test_a_judge_run_refused_at_launch_says_why_on_the_page(client, people):
    project, judge, _, admin = people
    client.force_login(admin)
    record_ai_votes(
        judge, [_row(i.pk, answer={"winner": 0, "strength": 1}) for i in Item.objects.filter(project=project)]
    )
    response = client.post(f"/p/{project.slug}/judges/gpt/run/", {"max_items": "5"}, follow=True)
    assert "Judge gpt: Judge gpt has voted on every item of demo: nothing left to judge." in response.content.decode()
    response = client.post(f"/p/{project.slug}/judges/gpt/run/", {"max_items": "-1"}, follow=True)
    assert "a whole number of at least 1" in response.content.decode()
    assert client.post(f"/p/{project.slug}/judges/nobody/run/").status_code == 404


def test_the_judges_api_never_shows_a_key(api_client_for, people, monkeypatch):
    project, judge, researcher, admin = people
    monkeypatch.setenv("JUDGE_KEY", "sk-live-abcdefghijklmnopqrstuvwxyz")
    api = api_client_for(researcher)
    created = api.post(
        f"/api/projects/{project.slug}/judges/",
        {
            "name": "keyed",
            "backend": "openai",
            "model": "m",
            "base_url": "http://judge.internal/v1",
            "api_key_env": "JUDGE_KEY",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["api_key_env"] == "JUDGE_KEY" and created.json()["annotator"] == f"judge.{project.pk}.keyed"
    listed = api.get(f"/api/projects/{project.slug}/judges/")
    assert [j["name"] for j in listed.json()] == ["gpt", "keyed"]
    gpt = listed.json()[0]
    assert gpt["template_is_default"] and gpt["template"] == judging.default_template("pairwise")
    assert gpt["template_hash"] == judging.template_hash(gpt["template"])
    assert gpt["votes"] == {"ok": 0, "unparseable": 0, "error": 0}
    assert "sk-live" not in listed.content.decode() and "sk-live" not in created.content.decode()
    refused = api.post(
        f"/api/projects/{project.slug}/judges/",
        {
            "name": "leaky",
            "backend": "openai",
            "model": "m",
            "base_url": "http://judge.internal/v1",
            "api_key_env": "sk-live-abcdefghijklmnopqrstuvwxyz",
        },
        format="json",
    )
    assert refused.status_code == 400 and "NAME of an environment variable" in refused.json()["detail"]
    assert "sk-live" not in refused.content.decode()
    assert not Judge.objects.filter(name="leaky").exists()
    launched = api_client_for(admin).post(
        f"/api/projects/{project.slug}/judges/keyed/runs/", {"max_items": 0}, format="json"
    )
    assert launched.status_code == 400  # max_items must be at least 1


def test_a_verdict_without_its_strength_line_parses_with_the_strength_unknown():
    """Small models stop after "Verdict: B": the verdict stands, the strength is unknown (None), never guessed."""
    from annotate.judging import AnswerSpec, fold_pairwise, parse_pairwise

    spec = AnswerSpec(kind="pairwise", n_responses=2)
    assert parse_pairwise("Response B is clearer.\nVerdict: B", spec) == {"verdict": "B", "strength": None}
    assert parse_pairwise("Verdict: tie", spec) == {"verdict": "tie", "strength": 0}
    with pytest.raises(Unparseable):
        parse_pairwise("Verdict: B\nStrength: 9", spec)
    with pytest.raises(Unparseable):
        parse_pairwise("Strength: 2", spec)
    # Both orders agree (B shown second, then first): the winner stands and only a stated strength counts.
    vote = fold_pairwise([{"verdict": "B", "strength": None}, {"verdict": "A", "strength": 2}], [(0, 1), (1, 0)], spec)
    assert vote.answer == {"winner": 1, "strength": 2} and vote.position_consistent is True
    vote = fold_pairwise(
        [{"verdict": "B", "strength": None}, {"verdict": "A", "strength": None}], [(0, 1), (1, 0)], spec
    )
    assert vote.answer == {"winner": 1}
