import copy
import json

import numpy as np
import pandas as pd
import pytest
from django.core.management import call_command

from annotate import actions
from annotate.exports import ExportOptions, build_rows, export_to
from annotate.exports.aggregation import all_pairs, majority_pairs, pair_votes
from annotate.exports.formats import ItemTables, trl_rows
from annotate.imports import parse_items, parse_votes
from annotate.models import Item, Kind
from tests.conftest import jsonl, pairwise_rows


def pair_frame(*rows):
    frame = pd.DataFrame(rows, columns=["item", "a", "b", "winner", "strength"])
    frame["winner"] = frame["winner"].astype("Int64")
    return frame


def test_majority_picks_the_most_voted_response_and_averages_its_strength():
    frame = pair_frame(
        (1, 10, 11, 10, 3),
        (1, 10, 11, 10, 1),
        (1, 10, 11, 11, 2),  # 10 wins 2-1, margin (3+1)/2
        (2, 20, 21, 20, 2),
        (2, 20, 21, 21, 2),  # split: no majority
        (3, 30, 31, None, None),
        (3, 30, 31, None, None),
        (3, 30, 31, 30, 1),  # tie wins: dropped
        (4, 40, 41, 41, None),  # single vote without strength: margin 0
    )
    result = majority_pairs(frame)
    assert result["item"].tolist() == [1, 4]
    assert result["chosen"].tolist() == [10, 41]
    assert result["rejected"].tolist() == [11, 40]
    assert result["margin"].tolist() == [2.0, 0.0]
    assert result["n_votes"].tolist() == [3, 1]
    assert result["agreement"].round(4).tolist() == [0.6667, 1.0]


def test_a_ranking_of_k_becomes_k_choose_2_consistent_pairs():
    votes = pd.DataFrame(
        {
            "item": [1],
            "annotator": [7],
            "outcome": [""],
            "winner": [None],
            "strength": [None],
            "data": [{"ranking": [[13], [11, 12], [10]]}],
            "text": [""],
        }
    )
    pairs = pair_votes(Kind.RANKING, votes, {1: [(10, "a"), (11, "b"), (12, "c"), (13, "d")]})
    assert len(pairs) == 6
    by_pair = {(row.a, row.b): (None if pd.isna(row.winner) else row.winner) for row in pairs.itertuples()}
    assert by_pair == {(10, 11): 11, (10, 12): 12, (10, 13): 13, (11, 12): None, (11, 13): 13, (12, 13): 13}
    preferences = all_pairs(pairs)
    assert len(preferences) == 5  # the tie is not a preference


def test_ratings_become_pairs_by_score():
    votes = pd.DataFrame(
        {
            "item": [1],
            "annotator": [7],
            "outcome": [""],
            "winner": [None],
            "strength": [None],
            "data": [{"ratings": {"10": {"overall": 6}, "11": {"overall": 2}, "12": {"overall": 6}}}],
            "text": [""],
        }
    )
    pairs = pair_votes(Kind.RATING, votes, {1: [(10, "a"), (11, "b"), (12, "c")]})
    result = majority_pairs(pairs)
    assert list(zip(result["chosen"], result["rejected"], result["margin"])) == [(10, 11, 4.0), (12, 11, 4.0)]


def test_trl_rows_are_standard_for_single_turn_and_conversational_otherwise():
    prefs = pd.DataFrame(
        {
            "item": [1],
            "chosen": [11],
            "rejected": [10],
            "margin": [2.0],
            "n_votes": [2],
            "agreement": [1.0],
            "tie": [False],
        }
    )
    responses = {1: [(10, "bad"), (11, "good")]}
    standard = trl_rows(prefs, ItemTables({1: [{"role": "user", "content": "Q"}]}, responses, {1: "x"}))
    assert standard == [{"prompt": "Q", "chosen": "good", "rejected": "bad", "margin": 2.0, "id": "x"}]
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    conversational = trl_rows(prefs, ItemTables({1: chat}, responses, {1: "x"}))
    assert conversational[0]["prompt"] == chat
    assert conversational[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    assert conversational[0]["rejected"] == [{"role": "assistant", "content": "bad"}]


@pytest.fixture
def voted_project(db, make_project):
    """8 items (two of them conversations), 3 external annotators who all prefer response 0 except one dissent."""
    project = make_project(n_items=0, overlap=3)
    actions.import_items(project, parse_items(jsonl(pairwise_rows(8, conversation_every=4)), "jsonl", "pairwise"))
    rows = []
    for i in range(8):
        for annotator in ("a1", "a2", "a3"):
            winner = 1 if (annotator == "a3" and i == 0) else 0
            rows.append({"item": f"item-{i}", "annotator": annotator, "winner": winner, "strength": 2})
    actions.import_judgments(project, parse_votes(jsonl(rows), "jsonl"))
    return project


def test_unanimous_winner_is_chosen(voted_project):
    rows = build_rows(voted_project)
    assert len(rows) == 8
    for row in rows:
        item = Item.objects.get(project=voted_project, external_id=row["id"])
        good = item.responses.get(index=0).text
        assert row["chosen"][0]["content"] == good  # conversational: two prompts are conversations
        assert row["margin"] == 2.0


def test_every_vote_rows(voted_project):
    rows = build_rows(voted_project, aggregate="none")
    assert len(rows) == 24
    dissent = [r for r in rows if r["id"] == "item-0" and r["chosen"][0]["content"] == "The answer is 1."]
    assert len(dissent) == 1


@pytest.mark.parametrize("container", ["jsonl", "parquet", "hf"])
def test_containers_load_with_datasets(voted_project, tmp_path, container):
    import datasets

    out = tmp_path / f"export.{container}"
    export_to(voted_project, ExportOptions(container=container), out)
    if container == "jsonl":
        loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    elif container == "parquet":
        loaded = datasets.load_dataset("parquet", data_files=str(out), split="train")
    else:
        loaded = datasets.load_from_disk(str(out))["train"]
    assert loaded.num_rows == 8
    assert set(loaded.column_names) == {"prompt", "chosen", "rejected", "margin", "id"}
    assert loaded[0]["chosen"][0]["role"] == "assistant"


def test_export_command_writes_atomically(voted_project, tmp_path):
    out = tmp_path / "trl.jsonl"
    call_command("export_dataset", "demo", "--format", "trl", "--out", str(out))
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["margin"] == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["trl.jsonl"]  # no temporary leftovers


def _trl_dataset(project, tmp_path):
    import datasets

    out = tmp_path / "trl.jsonl"
    export_to(project, ExportOptions(), out)
    return datasets.load_dataset("json", data_files=str(out), split="train")


def test_trl_reward_trainer_accepts_the_export_unchanged(voted_project, tmp_path):
    import torch
    from trl import RewardConfig, RewardTrainer

    from tests.tiny import tiny_reward_model, tiny_tokenizer

    dataset = _trl_dataset(voted_project, tmp_path)
    texts = [m["content"] for row in dataset for m in row["prompt"] + row["chosen"] + row["rejected"]]
    tokenizer = tiny_tokenizer(texts)
    model = tiny_reward_model(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-2,
        use_cpu=True,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert {"chosen_ids", "rejected_ids", "margin"} <= set(trainer.train_dataset.column_names)
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_trl_dpo_trainer_accepts_the_export_unchanged(voted_project, tmp_path):
    from trl import DPOConfig, DPOTrainer

    from tests.tiny import tiny_causal_lm, tiny_tokenizer

    dataset = _trl_dataset(voted_project, tmp_path)
    texts = [m["content"] for row in dataset for m in row["prompt"] + row["chosen"] + row["rejected"]]
    tokenizer = tiny_tokenizer(texts)
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    policy = tiny_causal_lm(tokenizer)
    reference = copy.deepcopy(policy)
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    columns = set(trainer.train_dataset.column_names)
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns
    metrics = trainer.train().metrics
    assert metrics["train_loss"] > 0


def _project(kind, rows, votes, **fields):
    project = actions.create_project(slug=kind, kind=kind, **{"overlap": 1, **fields})
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", kind))
    if votes:
        actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


def _load(rows, tmp_path):
    import datasets

    out = tmp_path / "rows.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return datasets.load_dataset("json", data_files=str(out), split="train")


@pytest.mark.django_db
def test_ranking_project_exports_k_choose_2_trl_rows_and_k_wise_rows(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Rank {i}", "responses": [f"r{i}-{j}" for j in range(5)]} for i in range(3)]
    votes = [{"item": f"q{i}", "annotator": "a", "ranking": [4, 2, 0, 1, 3]} for i in range(3)]
    project = _project(Kind.RANKING, rows, votes)
    trl = build_rows(project, "trl")
    assert len(trl) == 3 * 10
    order = ["4", "2", "0", "1", "3"]
    for row in trl:
        chosen, rejected = row["chosen"].split("-")[1], row["rejected"].split("-")[1]
        assert order.index(chosen) < order.index(rejected)
    kwise = build_rows(project, "ranking")
    assert kwise[0]["responses"] == ["r0-4", "r0-2", "r0-0", "r0-1", "r0-3"] and kwise[0]["ranks"] == [1, 2, 3, 4, 5]
    assert kwise[0]["annotators"][0].startswith("ann-")
    assert _load(kwise, tmp_path).num_rows == 3


@pytest.mark.django_db
def test_ranking_majority_orders_by_mean_rank_and_marks_ties(tmp_path):
    rows = [{"id": "q", "prompt": "Rank", "responses": ["x", "y", "z"]}]
    votes = [
        {"item": "q", "annotator": "a", "ranking": [0, 1, 2]},
        {"item": "q", "annotator": "b", "ranking": [1, 0, 2]},
    ]
    project = _project(Kind.RANKING, rows, votes, overlap=2)
    (row,) = build_rows(project, "ranking")
    assert row["responses"][2] == "z" and row["ranks"] == [1, 1, 2]
    assert len(build_rows(project, "ranking", aggregate="none")) == 2


@pytest.mark.django_db
def test_rating_project_exports_ratings_and_pairs(tmp_path):
    rows = [{"id": "q", "prompt": "Rate", "responses": ["x", "y"]}]
    votes = [
        {"item": "q", "annotator": "a", "ratings": {"0": {"overall": 6}, "1": {"overall": 3}}},
        {"item": "q", "annotator": "b", "ratings": {"0": {"overall": 4}, "1": {"overall": 3}}},
    ]
    project = _project(Kind.RATING, rows, votes, overlap=2)
    (row,) = build_rows(project, "ratings")
    x, y = row["responses"]
    assert (x["text"], x["scores"], x["mean"], len(x["annotators"])) == ("x", {"overall": [6, 4]}, {"overall": 5.0}, 2)
    assert y["mean"] == {"overall": 3.0}
    (pair,) = build_rows(project, "trl")
    assert (pair["chosen"], pair["rejected"], pair["margin"]) == ("x", "y", 2.0)
    assert _load([row], tmp_path).num_rows == 1


@pytest.mark.django_db
def test_steps_project_exports_trl_stepwise(tmp_path):
    rows = [{"id": "q", "prompt": "Solve 2+2", "responses": ["2+2 is 4\nso the answer is 5\nDone."]}]
    votes = [{"item": "q", "annotator": "a", "steps": ["positive", "negative", "neutral"]}]
    project = _project(Kind.STEPS, rows, votes)
    (row,) = build_rows(project, "steps")
    assert row == {
        "id": "q",
        "prompt": "Solve 2+2",
        "completions": ["2+2 is 4", "so the answer is 5", "Done."],
        "labels": [True, False, True],
    }
    (strict,) = build_rows(project, "steps", neutral_steps=False)
    assert strict["labels"] == [True, False, False]
    loaded = _load([row], tmp_path)
    assert loaded[0]["labels"] == [True, False, True]


@pytest.mark.django_db
def test_demonstrations_and_both_bad_rewrites_export_as_sft(tmp_path):
    demo = _project(
        Kind.DEMONSTRATION,
        [{"id": "d", "prompt": "Write a haiku", "responses": []}],
        [{"item": "d", "annotator": "a", "text": "Old pond"}],
    )
    assert build_rows(demo, "sft") == [
        {
            "id": "d",
            "messages": [{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "Old pond"}],
        }
    ]
    pairwise = _project(
        Kind.PAIRWISE,
        [{"id": "p", "prompt": "Q", "responses": ["a", "b"]}, {"id": "p2", "prompt": "Q2", "responses": ["a", "b"]}],
        [
            {"item": "p", "annotator": "a", "winner": "both_bad", "demonstration": "Better."},
            {"item": "p2", "annotator": "a", "winner": 0},
        ],
    )
    assert [r["messages"][-1]["content"] for r in build_rows(pairwise, "sft")] == ["Better."]


@pytest.mark.django_db
def test_a_format_the_kind_cannot_produce_is_refused():
    from annotate.exports import ExportError

    steps = actions.create_project(slug="s", kind=Kind.STEPS)
    with pytest.raises(ExportError, match="exports as raw, steps, not trl"):
        build_rows(steps, "trl")


@pytest.mark.django_db
def test_ties_keep_where_a_format_has_no_ties_to_keep_is_refused(make_project):
    from annotate.exports import ExportError

    pairwise = make_project(slug="tk", n_items=2)
    for fmt in ("kto", "sft"):
        with pytest.raises(ExportError, match=f"ties=keep does not apply to the {fmt} format"):
            build_rows(pairwise, fmt, ties="keep")
    rating = actions.create_project(slug="rt", kind=Kind.RATING, scale={"min": 1, "max": 5})
    with pytest.raises(ExportError, match="ties=keep does not apply to the ratings format"):
        build_rows(rating, "ratings", ties="keep")
    assert build_rows(pairwise, "trl", ties="keep") == []  # no votes yet, but the option applies
    assert build_rows(pairwise, "raw", ties="keep") == []
    # The same for min_agreement: only aggregated preferences and labels have an agreement to filter on.
    for fmt, aggregate in (("raw", ""), ("trl", "none"), ("sft", "")):
        with pytest.raises(ExportError, match="min_agreement does not apply"):
            build_rows(pairwise, fmt, aggregate=aggregate, min_agreement=0.6)
    assert build_rows(pairwise, "trl", min_agreement=0.6) == []


@pytest.fixture
def split_votes(db):
    """Two items: q0 won 2-1 by response 0, q1 a 1-1 split plus a tie vote... and one paused annotator."""
    rows = [
        {"id": "q0", "prompt": "Q0", "responses": ["good", "bad"]},
        {"id": "q1", "prompt": "Q1", "responses": ["x", "y"]},
    ]
    votes = [
        {"item": "q0", "annotator": "a", "winner": 0, "strength": 3},
        {"item": "q0", "annotator": "b", "winner": 0, "strength": 1},
        {"item": "q0", "annotator": "c", "winner": 1, "strength": 2},
        {"item": "q1", "annotator": "a", "winner": None},
        {"item": "q1", "annotator": "b", "winner": None},
        {"item": "q1", "annotator": "c", "winner": 0, "strength": 1},
    ]
    return _project(Kind.PAIRWISE, rows, votes, overlap=3)


def test_hh_openai_and_kto_formats(split_votes):
    (hh,) = build_rows(split_votes, "hh")
    assert hh == {
        "chosen": "\n\nHuman: Q0\n\nAssistant: good",
        "rejected": "\n\nHuman: Q0\n\nAssistant: bad",
        "id": "q0",
    }
    (openai,) = build_rows(split_votes, "openai-dpo")
    assert openai["input"]["messages"] == [{"role": "user", "content": "Q0"}]
    assert openai["preferred_output"] == [{"role": "assistant", "content": "good"}]
    assert openai["non_preferred_output"] == [{"role": "assistant", "content": "bad"}]
    kto = build_rows(split_votes, "kto")
    assert [(r["completion"], r["label"]) for r in kto] == [("good", True), ("bad", False)]


def test_tie_policy_min_agreement_and_paused_annotators(split_votes):
    kept = build_rows(split_votes, "trl", ties="keep")
    assert [(r["id"], r["tie"]) for r in kept] == [("q0", False), ("q1", True)]
    assert [r["id"] for r in build_rows(split_votes, "trl", min_agreement=0.7)] == []
    assert [r["id"] for r in build_rows(split_votes, "trl", min_agreement=0.6)] == ["q0"]
    (row,) = build_rows(split_votes, "trl")
    assert row["margin"] == 2.0  # mean strength of the two votes for "good"
    split_votes.memberships.filter(user__username="a").update(status="paused")
    # Without a: q0 is 1-1 (no majority); q1 is a tie vote against a win → no majority either.
    assert build_rows(split_votes, "trl") == []
    assert len(build_rows(split_votes, "trl", include_paused=True)) == 1
    assert len(build_rows(split_votes, "trl", aggregate="none")) == 3  # b and c on q0, c on q1; the tie is dropped
    assert build_rows(split_votes, "trl", max_chars=5) == []


def test_raw_export_has_every_vote_with_pseudonyms_only(split_votes, tmp_path):
    from annotate.models import Judgment

    first = Judgment.objects.filter(project=split_votes).first()
    rows = build_rows(split_votes, "raw")
    assert len(rows) == 6
    assert all(r["annotator"].startswith("ann-") for r in rows)
    text = json.dumps(rows)
    for name in ('"a"', '"b"', '"c"'):
        assert name not in text
    assert rows[0]["judgment"] == first.pk and rows[0]["winner"] == 0 and rows[0]["display_order"] == [0, 1]
    assert {r["superseded"] for r in rows} == {False} and {r["gold"] for r in rows} == {False}
    loaded = _load(rows, tmp_path)
    assert loaded.num_rows == 6


@pytest.mark.django_db
def test_a_former_members_votes_keep_the_pseudonym_they_had():
    """Removing a member keeps their votes (remove_member): the raw, ranking and ratings exports name those votes
    by the same stable pseudonym as before the removal, never by "" (the agreement report does the same)."""
    from annotate.models import Membership, make_pseudonym

    ranking = _project(
        Kind.RANKING,
        [{"id": "q", "prompt": "Rank", "responses": ["x", "y", "z"]}],
        [{"item": "q", "annotator": a, "ranking": order} for a, order in (("a", [0, 1, 2]), ("b", [1, 0, 2]))],
        overlap=2,
    )
    rating = _project(
        Kind.RATING,
        [{"id": "q", "prompt": "Rate", "responses": ["x", "y"]}],
        [
            {"item": "q", "annotator": a, "ratings": {"0": {"overall": s}, "1": {"overall": 3}}}
            for a, s in (("a", 6), ("b", 4))
        ],
        overlap=2,
    )

    def exported_names(project):
        names = {row["annotator"] for row in build_rows(project, "raw")}
        if project.kind == Kind.RANKING:
            names |= {name for row in build_rows(project, "ranking", aggregate="none") for name in row["annotators"]}
            (majority,) = build_rows(project, "ranking")
            names |= set(majority["annotators"])
        else:
            (row,) = build_rows(project, "ratings")
            names |= {name for response in row["responses"] for name in response["annotators"]}
        return names

    for project in (ranking, rating):
        members = {m.user.username: m for m in Membership.objects.filter(project=project).select_related("user")}
        before = {members["a"].pseudonym, members["b"].pseudonym}
        assert exported_names(project) == before
        former = members["b"]
        actions.remove_member(former)
        assert exported_names(project) == before  # not {"", a's}
        assert former.pseudonym == make_pseudonym(project.pk, former.user_id)
        (raw,) = [row for row in build_rows(project, "raw") if row["annotator"] == former.pseudonym]
        assert raw["annotator_status"] == ""  # no membership left to have a status


def test_per_criterion_preferences(db):
    rows = [{"id": "q", "prompt": "Q", "responses": ["x", "y"]}]
    votes = [{"item": "q", "annotator": "a", "winner": 0, "strength": 1, "criteria": {"helpful": 0, "harmless": 1}}]
    project = _project(Kind.PAIRWISE, rows, votes, criteria=["helpful", "harmless"])
    assert build_rows(project, "trl", criterion="helpful")[0]["chosen"] == "x"
    assert build_rows(project, "trl", criterion="harmless")[0]["chosen"] == "y"
    from annotate.exports import ExportError

    with pytest.raises(ExportError, match="Unknown criterion"):
        build_rows(project, "trl", criterion="funny")


@pytest.mark.django_db
def test_dawid_skene_and_bradley_terry_aggregations_follow_the_reliable_annotators(make_member):
    """On q1..q19 three careful annotators always pick the good response and three careless ones pick at random
    (by a fixed pattern). On q0 only one careful annotator votes (good) against the three careless ones (bad):
    majority says bad; models that weigh annotators by their track record say good. Votes go through the
    annotation flow, so each annotator saw the responses in a random order (Bradley-Terry separates merit from
    position only then)."""
    rows = [{"id": f"q{i}", "prompt": f"Q{i}", "responses": [f"good {i}", f"bad {i}"]} for i in range(20)]
    project = _project(Kind.PAIRWISE, rows, [], overlap=6)
    careful, careless = ["c1", "c2", "c3"], ["s1", "s2", "s3"]
    for name in careful + careless:
        user = make_member(project, name)
        while (task := actions.assign_next_task(user, project)) is not None:
            item = Item.objects.get(pk=task.item_id)
            i = int(item.external_id[1:])
            if i == 0 and name in ("c2", "c3"):
                actions.skip_task(task, "not mine")
                continue
            good = item.responses.get(index=0).pk
            wants_good = name in careful or (i > 0 and not (i >> careless.index(name)) & 1)
            picks_first = (task.display_order[0] == good) == wants_good
            actions.record_judgment(
                task, {"choice": "A" if picks_first else "B", "strength": 2 if name in careful else 1}, f"{name}-{i}"
            )
    majority = {r["id"]: r["chosen"] for r in build_rows(project, "trl")}
    assert majority["q0"] == "bad 0"
    for aggregate in ("dawid-skene", "bradley-terry"):
        result = {r["id"]: r for r in build_rows(project, "trl", aggregate=aggregate)}
        assert len(result) == 20, aggregate
        assert all(r["chosen"].startswith("good") for r in result.values()), aggregate
        assert result["q0"]["margin"] == 2.0  # the strength of the one vote for the chosen response


# --- the columnar path (pairwise → trl by majority) gives the row path's bytes --------------------------------

TRICKY = ['Say "hi",', "back\\slash\\", "line\nbreak\ttab", 'ünïcødé ✓ \u2028 "," ', "ctrl \x01 and \x7f"]


@pytest.fixture
def tricky_project(db):
    return _tricky_project()


def _tricky_project():
    """26 pairwise items (prompts sharing text, quotes, escapes, unicode), votes by 4 annotators with ties,
    "both bad", missing strengths and splits; a paused annotator, two gold items, and two items whose
    responses are another item's in swapped order, so two rows differ only by id."""
    import random

    rng = random.Random(5)
    items = [
        {
            "id": f"i{i}",
            "prompt": f"{TRICKY[i % 5]} {i % 7}",
            "responses": [f"A{i} {TRICKY[(i + 1) % 5]}", f"B{i} {TRICKY[(i + 2) % 5]}"],
        }
        for i in range(22)
    ]
    items += [{**items[i], "id": f"dup{i}", "responses": items[i]["responses"][::-1]} for i in (0, 1)]
    items += [
        {**items[i], "id": f"gold{i}", "prompt": f"gold {i}", "purpose": "gold", "gold": {"winner": 0}} for i in (2, 3)
    ]
    votes = []
    for item in items:
        for annotator in ("a", "b", "c", "d"):
            if item["id"] in ("i0", "i1", "dup0", "dup1"):  # unanimous for the same text: duplicate rows
                winner = 0 if item["id"].startswith("i") else 1
                votes.append({"item": item["id"], "annotator": annotator, "winner": winner, "strength": 2})
                continue
            winner = rng.choice([0, 0, 1, 1, None, "both_bad"])
            vote = {"item": item["id"], "annotator": annotator, "winner": winner}
            if winner in (0, 1) and rng.random() < 0.7:
                vote["strength"] = rng.randint(0, 3)
            votes.append(vote)
    project = _project(Kind.PAIRWISE, items, votes, overlap=4)
    project.memberships.filter(user__username="d").update(status="paused")
    return project


def _export_both_ways(project, options, tmp_path, monkeypatch):
    from annotate.exports import writing

    def no_rows(*args, **kwargs):
        raise AssertionError("the columnar path read rows one by one")

    (tmp_path / "columnar").mkdir()
    (tmp_path / "rows").mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(writing, "iter_rows", no_rows)
        columnar = writing.write_export(project, options, tmp_path / "columnar", columnar=True)
    rows = writing.write_export(project, options, tmp_path / "rows", columnar=False)
    return columnar, rows


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"container": "parquet", "test_size": 0.3, "seed": 3},
        {"container": "parquet", "dedupe": False, "min_agreement": 0.6, "include_paused": True, "include_gold": True},
        {"max_chars": 50, "test_size": 0.5, "seed": 1},
    ],
)
def test_columnar_export_writes_the_same_bytes_as_the_row_path(tricky_project, tmp_path, monkeypatch, fields):
    from annotate.exports import columnar, reading, writing

    # Chunks of 5 items and row groups of 4 rows: rows cross chunk and row-group boundaries.
    monkeypatch.setattr(reading, "CHUNK_ITEMS", 5)
    monkeypatch.setattr(writing._SplitWriter, "PARQUET_BATCH", 4)
    options = ExportOptions(**fields)
    assert columnar.fits_columns(tricky_project, options)
    columnar, rows = _export_both_ways(tricky_project, options, tmp_path, monkeypatch)
    assert columnar.counts == rows.counts and min(rows.counts.values()) > 0, rows.counts
    assert columnar.content_hash == rows.content_hash
    for name in rows.files:
        assert columnar.files[name].read_bytes() == rows.files[name].read_bytes()
    if not fields:
        texts = [json.loads(line) for line in rows.files["train"].read_bytes().splitlines()]
        assert {row["prompt"] for row in texts} & {f"{t} {i}" for i, t in enumerate(TRICKY)}  # the tricky texts are in
        assert len({row["id"] for row in texts} & {"i0", "dup0", "i1", "dup1"}) == 2  # duplicates dropped


def test_columnar_export_reads_ahead_in_a_thread_outside_transactions(transactional_db, tmp_path, monkeypatch):
    import threading

    from django.db import connection

    from annotate.exports import columnar, reading

    project = _tricky_project()
    monkeypatch.setattr(reading, "CHUNK_ITEMS", 4)
    readers = []
    read_chunk = columnar._read_chunk

    def recording(*args):
        readers.append(threading.current_thread().name)
        return read_chunk(*args)

    monkeypatch.setattr(columnar, "_read_chunk", recording)
    options = ExportOptions(container="parquet", test_size=0.4, seed=2)
    columnar, rows = _export_both_ways(project, options, tmp_path, monkeypatch)
    assert columnar.counts == rows.counts and columnar.content_hash == rows.content_hash
    for name in rows.files:
        assert columnar.files[name].read_bytes() == rows.files[name].read_bytes()
    assert len(readers) == 6  # 24 normal items, 4 per chunk
    if connection.vendor == "postgresql":  # the first chunk on the caller's connection, the others ahead
        assert readers[0] == threading.current_thread().name
        assert {name.split("_")[0] for name in readers[1:]} == {"export-read"}
    assert not any(t.name.startswith("export-read") for t in threading.enumerate())  # the reader is gone


@pytest.mark.django_db
def test_a_conversation_in_a_late_chunk_restarts_the_export_on_the_row_path(tmp_path, monkeypatch):
    from annotate.exports import columnar, reading, writing

    items = pairwise_rows(10)
    items[8]["prompt"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q8?"}]
    votes = [
        {"item": f"item-{i}", "annotator": a, "winner": i % 2, "strength": 1} for i in range(10) for a in ("a", "b")
    ]
    project = _project(Kind.PAIRWISE, items, votes, overlap=2)
    monkeypatch.setattr(reading, "CHUNK_ITEMS", 3)  # two chunks of standard rows are written before item-8's
    monkeypatch.setattr(writing._SplitWriter, "PARQUET_BATCH", 2)
    options = ExportOptions(container="parquet")
    (tmp_path / "columnar").mkdir()
    (tmp_path / "rows").mkdir()
    batches = []
    trl_batch = columnar._trl_batch
    monkeypatch.setattr(columnar, "_trl_batch", lambda *args: batches.append(1) or trl_batch(*args))
    restarted = writing.write_export(project, options, tmp_path / "columnar")
    assert len(batches) == 2  # then item-8's chunk sent the export to the row path
    rows = writing.write_export(project, options, tmp_path / "rows", columnar=False)
    assert restarted.counts == rows.counts == {"train": 10} and restarted.content_hash == rows.content_hash
    assert restarted.files["train"].read_bytes() == rows.files["train"].read_bytes()
    import pyarrow.parquet as pq

    assert pq.read_table(restarted.files["train"]).column("prompt")[0].as_py() == [
        {"role": "user", "content": items[0]["prompt"]}
    ]


def test_json_of_many_strings_at_once_is_orjson_of_each():
    import random

    import orjson

    from annotate.exports.columnar import _json_values, _text_column

    rng = random.Random(3)
    alphabet = ['"', "\\", ",", "\n", "\t", "\x00", "\x1f", "\x7f", "a", "é", "\u2028", "😀", "[", "]"]
    for _ in range(500):
        values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 10))]
        assert _json_values(values, _text_column(values)).to_pylist() == [orjson.dumps(v) for v in values]
    tricky = ['He said "hi",', "x", '","', "\\", '\\"', ""]  # a false '","' separator, escaped backslashes
    assert _json_values(tricky, _text_column(tricky)).to_pylist() == [orjson.dumps(v) for v in tricky]
    mixed = ["a", None]
    assert _json_values(mixed, _text_column(mixed)).to_pylist() == [b'"a"', b"null"]


def test_columnar_majority_matches_the_frame_majority():
    from annotate.exports.columnar import majority_columns
    from annotate.sql import NULL_INT

    rng = np.random.default_rng(0)
    n_items = 300
    pair_items = np.arange(n_items) * 10
    a, b = pair_items + 1, pair_items + 2
    item_index = rng.integers(0, n_items + 5, 2000)  # a few votes on items without a pair
    item = np.where(item_index < n_items, item_index * 10, item_index * 10 + 3)
    code = rng.choice([0, 1, 2, 3], 2000, p=[0.6, 0.2, 0.1, 0.1])
    side = rng.integers(0, 2, 2000)
    winner = np.where(code == 1, NULL_INT, np.where(side == 0, item + 1, item + 2))
    strength = np.where(rng.random(2000) < 0.3, NULL_INT, rng.integers(0, 4, 2000))
    votes = np.stack([item, code, winner, strength], axis=1)

    def by_frame(votes):
        kept = votes[(votes[:, 1] != 2) & np.isin(votes[:, 0], pair_items)]
        frame = pair_frame(
            *[
                (i, i + 1, i + 2, None if w == NULL_INT else w, None if s == NULL_INT else s)
                for i, _, w, s in kept.tolist()
            ]
        )
        return majority_pairs(frame)

    result, expected = majority_columns(votes, pair_items, a, b), by_frame(votes)
    assert len(expected) > 100
    for name in ("item", "chosen", "rejected", "margin", "agreement"):
        assert result[name].tolist() == expected[name].tolist(), name
    # A winner that is neither response of the pair (not possible through the app) takes the frame's way.
    votes[0, 2], votes[0, 1] = votes[0, 0] + 5, 0
    result = majority_columns(votes, pair_items, a, b)
    assert result["chosen"].tolist() == by_frame(votes)["chosen"].tolist()


@pytest.mark.django_db
def test_copy_out_reports_errors_and_leaves_the_connection_usable():
    from django.db import DataError, connection, transaction

    from annotate.sql import copy_out

    if connection.vendor != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    with transaction.atomic():
        assert copy_out(connection, "COPY (SELECT %s::int AS n UNION ALL SELECT 7) TO STDOUT", [6]) == b"6\n7\n"
    with pytest.raises(DataError, match="division by zero"), transaction.atomic():
        copy_out(connection, "COPY (SELECT 1 / (n - 3) FROM generate_series(1, 5) AS n) TO STDOUT")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
