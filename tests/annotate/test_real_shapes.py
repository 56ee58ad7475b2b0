"""Public datasets as they are: empty responses, repeated texts under other ids, panels of 150 raters, HH rows that
fork before the last turn, files with a bad row; and votes written in bulk, all or nothing.

The miniature fixtures in tests/annotate/data/ reproduce each shape; the real files in ../shared/data/ are
imported whole when they are there.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command, load_command_class

from annotate import actions, sql
from annotate.imports import ImportFailed, parse_items, parse_votes
from annotate.models import MAX_OVERLAP, Item, Judgment, Kind, Membership, Response, Task
from tests.conftest import jsonl, pairwise_rows

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def help_of(name: str) -> str:
    command = load_command_class("annotate", name)
    return " ".join(command.create_parser("manage.py", name).format_help().split())


def items_of(project) -> dict[str, list[str]]:
    return {
        item.external_id: [r.text for r in item.responses.order_by("index")]
        for item in Item.objects.filter(project=project).prefetch_related("responses")
    }


def test_messy_file_imports_whole_with_its_quirks_counted(make_project):
    project = make_project(slug="messy", n_items=0)
    output = run("import_items", "messy", str(DATA / "messy_items.jsonl"))
    stored = items_of(project)
    # Seven rows: the id-less repeat on line 6 is the same item as line 5; q2-retest is an item of its own.
    assert len(stored) == 6
    assert stored["q1"][1] == "" and stored["q3"] == ["", ""]
    assert stored["q2"] == stored["q2-retest"] == ["Canberra.", "Sydney."]
    assert stored["17"] == ["Yes.", "No."]
    assert "Imported 6 items. They form round 1 (each imported file is a round of its own)." in output
    assert "1 repeat the texts of another item under a different id" in output
    assert "3 responses are empty" in output
    assert "Skipped 1 duplicates (lines 6)" in output
    # The haiku keeps its lines.
    assert stored["q1"][0].count("\n") == 2


def test_votes_name_items_that_share_texts_and_a_panel_of_150_raters(make_project):
    project = make_project(slug="panel", n_items=0, overlap=150)
    run("import_items", "panel", str(DATA / "messy_items.jsonl"))
    assert "They form round 2" in run("import_items", "panel", str(DATA / "hh_forks.jsonl"))  # the next file
    output = run("import_judgments", "panel", str(DATA / "panel_votes.jsonl"))
    assert "Imported 300 judgments." in output
    expected = Counter()
    for line in (DATA / "panel_votes.jsonl").read_text().splitlines():
        vote = json.loads(line)
        expected[vote["item"], vote["winner"]] += 1
    for external_id in ("q1", "q2"):
        item = Item.objects.get(project=project, external_id=external_id)
        responses = list(item.responses.order_by("index").values_list("id", flat=True))
        judgments = Judgment.objects.filter(item=item)
        assert (item.n_judgments, item.open_slots) == (150, 0)
        assert judgments.filter(outcome="tie").count() == expected[external_id, None]
        assert judgments.filter(winner_id=responses[0]).count() == expected[external_id, 0]
        assert judgments.filter(winner_id=responses[1]).count() == expected[external_id, 1]
        assert Task.objects.filter(item=item, status=Task.Status.DONE).count() == 150
    assert Membership.objects.filter(project=project, role="annotator").count() == 150
    # The retest twin of q2 was not touched: votes name items by id, never by text.
    assert Item.objects.get(project=project, external_id="q2-retest").n_judgments == 0
    # The same file again adds nothing: each rater already judged each item.
    assert "Imported 0 judgments. Skipped 300 votes" in run(
        "import_judgments", "panel", str(DATA / "panel_votes.jsonl")
    )
    assert Judgment.objects.filter(project=project).count() == 300


def test_overlap_limit_is_stated_and_enforced():
    assert f"1 to {MAX_OVERLAP}" in help_of("create_project")
    assert f"overlap up to {MAX_OVERLAP}" in help_of("import_items")
    assert "2000000 votes" in help_of("import_judgments")
    run("create_project", "big", "--kind", "pairwise", "--overlap", str(MAX_OVERLAP))
    with pytest.raises(CommandError, match="1000"):
        run("create_project", "bigger", "--kind", "pairwise", "--overlap", str(MAX_OVERLAP + 1))


def test_non_text_responses_are_still_errors_with_line_numbers():
    lines = [
        {"prompt": "ok", "responses": ["a", ""]},
        {"prompt": "ok", "responses": ["a", True]},
        {"prompt": "ok", "chosen": "a", "rejected": None},
    ]
    with pytest.raises(ImportFailed) as caught:
        parse_items(jsonl(lines), "jsonl", Kind.PAIRWISE)
    errors = dict(caught.value.errors)
    assert sorted(errors) == [2, 3]
    assert "response 2 must be text" in errors[2]


def test_csv_empty_cells_are_empty_responses_and_trailing_ones_are_none():
    data = b"prompt,response_1,response_2,response_3,response_4\nfirst,a,,c,\nsecond,a,b,c,d\nthird,a,b,,\n"
    first, second, third = parse_items(data, "csv", Kind.RANKING)
    assert [r["text"] for r in first.responses] == ["a", "", "c"]
    assert [r["text"] for r in second.responses] == ["a", "b", "c", "d"]
    assert [r["text"] for r in third.responses] == ["a", "b", ""]  # a ranking needs three: the third is empty
    (pair,) = parse_items(b"prompt,chosen,rejected\nhi,hello,\n", "csv", Kind.PAIRWISE)
    assert [r["text"] for r in pair.responses] == ["hello", ""]


def test_hh_rows_that_fork_before_the_last_turn(make_project):
    parsed = parse_items((DATA / "hh_forks.jsonl").read_bytes(), "jsonl", Kind.PAIRWISE)
    usual, empty, forked, human_last = parsed
    assert usual.prompt == [{"role": "user", "content": "How do I boil an egg?"}]
    assert [r["text"] for r in empty.responses] == ["Hello! How can I help?", ""]
    # The shared prefix up to the last common Human turn is the prompt; the rest of each transcript the response.
    assert forked.prompt == [{"role": "user", "content": "Name a fruit."}]
    assert [r["text"] for r in forked.responses] == [
        "Apple.\n\nHuman: Another?\n\nAssistant: Pear.",
        "Carrot.\n\nHuman: Another?\n\nAssistant: Potato.",
    ]
    assert human_last.prompt == [{"role": "user", "content": "Plan a trip."}]
    assert [r["text"] for r in human_last.responses] == ["Go to Lisbon.", "Go to Lisbon.\n\nHuman: Thanks!"]
    assert all(p.preferred == 0 for p in parsed)
    with pytest.raises(ImportFailed, match="same Human turn"):
        parse_items(
            jsonl([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}]),
            "jsonl",
            Kind.PAIRWISE,
        )


def test_votes_as_records_the_files_own_labels(make_project):
    project = make_project(slug="pref", n_items=0)
    trl = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
    report = actions.import_items(project, parse_items(jsonl(trl), "jsonl", project.kind), votes_as="trl-labels")
    assert report.created == 4 and report.votes.created == 4
    for judgment in Judgment.objects.filter(project=project).select_related("winner", "annotator"):
        assert judgment.winner.text.startswith("good")
        assert (judgment.annotator.username, judgment.source) == ("trl-labels", Judgment.Source.IMPORT)
    assert "Recorded 4 of the file's preferences as votes" in report.summary()
    # Rows without a label cannot bring one: the option is an error there, and nothing is imported.
    other = make_project(slug="plain", n_items=0)
    with pytest.raises(ImportFailed, match="--votes-as needs rows that carry their label"):
        actions.import_items(other, parse_items(jsonl(pairwise_rows(2)), "jsonl", other.kind), votes_as="x")
    assert not Item.objects.filter(project=other).exists()
    rating = make_project(slug="rated", kind=Kind.RATING, n_items=0, scale={"min": 1, "max": 5})
    with pytest.raises(ImportFailed, match="pairwise or ranking votes"):
        actions.import_items(rating, parse_items(jsonl(trl), "jsonl", rating.kind), votes_as="x")


def test_skip_invalid_imports_the_rest_and_writes_the_report(make_project, tmp_path):
    project = make_project(slug="skip", n_items=0)
    good = pairwise_rows(3)
    lines = [
        json.dumps(good[0]),
        "{broken",
        json.dumps(good[1]),
        json.dumps({"prompt": "x", "responses": ["a", 5]}),
        json.dumps(good[2]),
    ]
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(CommandError, match="line 2"):
        run("import_items", "skip", str(source))
    assert not Item.objects.filter(project=project).exists()
    report = tmp_path / "skipped.jsonl"
    output = run("import_items", "skip", str(source), "--skip-invalid", "--report", str(report))
    assert "Imported 3 items." in output and "Skipped 2 invalid rows (lines 2, 4)" in output
    assert sorted(Item.objects.filter(project=project).values_list("external_id", flat=True)) == [
        "item-0",
        "item-1",
        "item-2",
    ]
    skipped = [json.loads(line) for line in report.read_text().splitlines()]
    assert [row["line"] for row in skipped] == [2, 4]
    assert "invalid JSON" in skipped[0]["reason"] and "must be text" in skipped[1]["reason"]
    with pytest.raises(CommandError, match="--report goes with --skip-invalid"):
        run("import_items", "skip", str(source), "--report", str(report))


def test_items_without_ids_can_be_listed_with_their_ids(make_project, make_member, api_client_for, tmp_path):
    project = make_project(slug="listed", n_items=0)
    run("import_items", "listed", str(DATA / "messy_items.jsonl"))
    prime = Item.objects.get(project=project, prompt=[{"role": "user", "content": "Name a prime number."}])
    tsv = run("list_items", "listed").splitlines()
    assert tsv[0] == "id\tround\tpurpose\tvotes\tprompt"
    assert f"{prime.external_id}\t1\tnormal\t0\tName a prime number." in tsv
    # The JSONL listing is an item file: a vote file made from it names the items, and re-importing it adds nothing.
    out = tmp_path / "items.jsonl"
    run("list_items", "listed", "--format", "jsonl", "--out", str(out))
    listed = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["id"] for row in listed} == set(
        Item.objects.filter(project=project).values_list("external_id", flat=True)
    )
    assert "Imported 0 items" in run("import_items", "listed", str(out))
    votes = tmp_path / "votes.jsonl"
    votes.write_text(json.dumps({"item": prime.external_id, "annotator": "elsewhere", "winner": 0}) + "\n")
    assert "Imported 1 judgment." in run("import_judgments", "listed", str(votes))
    # The API lists them too, paged, for researchers only.
    researcher = make_member(project, "res", role="researcher")
    body = api_client_for(researcher).get("/api/projects/listed/items/?page_size=4&page=2").json()
    assert (body["count"], body["page"], len(body["results"])) == (6, 2, 2)
    page1 = api_client_for(researcher).get("/api/projects/listed/items/?page_size=4").json()["results"]
    assert [r["id"] for r in page1] == sorted(r["id"] for r in page1)
    assert prime.external_id in {r["external_id"] for r in page1 + body["results"]}
    assert api_client_for(researcher).get("/api/projects/listed/items/?page=0").status_code == 400
    annotator = make_member(project, "ann")
    assert api_client_for(annotator).get("/api/projects/listed/items/").status_code == 403


def test_vote_import_is_all_or_nothing_and_bulk(make_project):
    project = make_project(slug="bulk", n_items=50, overlap=3)
    votes = [
        {"item": f"item-{i}", "annotator": f"r{j}", "winner": (i + j) % 2, "strength": j}
        for i in range(50)
        for j in range(3)
    ]
    bad = (
        votes[:70]
        + [{"item": "item-1", "annotator": "r9", "winner": 2}]
        + votes[70:]
        + [{"item": "nope", "annotator": "r1", "winner": 0}]
    )
    with pytest.raises(ImportFailed) as caught:
        actions.import_judgments(project, parse_votes(jsonl(bad), "jsonl"))
    assert [line for line, _ in caught.value.errors] == [71, 152]
    assert not Judgment.objects.filter(project=project).exists() and not Task.objects.filter(project=project).exists()
    report = actions.import_judgments(project, parse_votes(jsonl(votes + votes[:5]), "jsonl"))
    assert (report.created, report.duplicates) == (150, [151, 152, 153, 154, 155])
    judgments = Judgment.objects.filter(project=project).select_related("task", "winner", "item")
    assert judgments.count() == 150
    for judgment in judgments:
        i, j = int(judgment.item.external_id.split("-")[1]), int(judgment.annotator.username[1:])
        assert judgment.winner.index == (i + j) % 2 and judgment.strength == j
        assert judgment.task.status == Task.Status.DONE and judgment.task.annotator_id == judgment.annotator_id
        assert judgment.task.display_order == list(
            judgment.item.responses.order_by("index").values_list("id", flat=True)
        )
        assert (judgment.is_current, judgment.source, judgment.idempotency_key) == (
            True,
            "import",
            f"import:{judgment.item_id}",
        )
    assert set(Item.objects.filter(project=project).values_list("n_judgments", "open_slots")) == {(3, 0)}
    # --skip-invalid: the bad rows are left out and listed, the rest goes in.
    other = make_project(slug="bulk2", n_items=50, overlap=3)
    skipped = []
    report = actions.import_judgments(other, parse_votes(jsonl(bad), "jsonl", skipped), skipped=skipped)
    assert report.created == 150 and [line for line, _ in report.skipped] == [71, 152]


def test_bulk_insert_knows_every_field_of_the_model():
    """A field added to Task or Judgment without a default must be given by the bulk import, or it fails."""
    with pytest.raises(ValueError, match="Task.leased_at has no default"):
        sql.bulk_insert(Task, ["project_id", "item_id", "annotator_id", "display_order"], [])
    with pytest.raises(ValueError, match="no fields"):
        sql.bulk_insert(Task, ["nonsense"], [])
    with pytest.raises(ValueError, match="no fields"):
        sql.bulk_insert(Task, [], [], constants={"nonsense": 1})


def test_bulk_insert_reserves_ids_that_nothing_else_takes(make_project, make_member):
    from django.db import transaction
    from django.utils import timezone

    project = make_project(slug="ids", n_items=3)
    items = list(Item.objects.filter(project=project).order_by("id"))
    annotator = make_member(project, "a1")
    task = actions.assign_next_task(annotator, project)  # an ordinary insert takes an id first
    users = [make_member(project, f"u{i}") for i in range(3)]
    now = timezone.now()
    with transaction.atomic():
        ids = sql.bulk_insert(
            Task,
            ["item_id", "annotator_id", "display_order"],
            [(items[i].pk, users[i].pk, [i]) for i in range(3)],
            constants={
                "project_id": project.pk,
                "status": "done",
                "leased_at": now,
                "lease_expires_at": now,
                "done_at": now,
            },
            ids=True,
        )
    assert len(set(ids)) == 3 and task.pk not in ids
    stored = {t.pk: (t.item_id, t.annotator_id, t.display_order) for t in Task.objects.filter(pk__in=ids)}
    assert stored == {ids[i]: (items[i].pk, users[i].pk, [i]) for i in range(3)}
    # The next ordinary insert goes past them.
    assert actions.assign_next_task(make_member(project, "a2"), project).pk > max(ids)


@pytest.mark.skipif(not (SHARED / "hh_rlhf_test").is_dir(), reason="../shared/data/ is not there")
def test_the_real_hh_files_import_whole_with_their_votes(make_project, tmp_path):
    project = make_project(slug="hh", n_items=0, overlap=3)
    totals = {}
    for name in ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled"):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(gzip.decompress((SHARED / "hh_rlhf_test" / f"{name}.test.jsonl.gz").read_bytes()))
        output = run("import_items", "hh", str(path), "--votes-as", "hh-crowdworkers")
        rows_in_file = sum(1 for line in path.read_text().splitlines() if line.strip())
        created = int(output.split("Imported ")[1].split(" ")[0])
        duplicates = int(output.split("Skipped ")[1].split(" ")[0]) if "duplicates" in output else 0
        assert created + duplicates == rows_in_file, output
        totals[name] = created
    assert totals["helpful-base"] == 2354  # the file the old importer refused whole for 13 rows
    assert Judgment.objects.filter(project=project).count() == Item.objects.filter(project=project).count()
    # Each vote names the response the file chose.
    chosen = Judgment.objects.filter(project=project, winner__index=0).count()
    assert chosen == Item.objects.filter(project=project).count()
    assert Response.objects.filter(item__project=project, text="").count() >= 11


def test_the_import_page_skips_invalid_rows_and_records_votes(make_project, make_member, client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    project = make_project(slug="page", n_items=0)
    researcher = make_member(project, "res", role="researcher")
    client.force_login(researcher)
    rows = [{"prompt": "Q1", "chosen": "good", "rejected": "bad"}, {"prompt": "Q2", "chosen": 3, "rejected": "x"}]
    upload = SimpleUploadedFile("pairs.jsonl", jsonl(rows))
    page = client.post("/p/page/import/", {"file": upload, "skip_invalid": "on", "votes_as": "labels"}, follow=True)
    text = page.content.decode()
    assert (
        "Imported 1 item." in text
        and "Skipped 1 invalid rows (lines 2)" in text
        and "line 2: response 1 must be text" in text
    )
    assert Judgment.objects.get(project=project).annotator.username == "labels"
    # Without the box, the same file is refused whole; a bad annotator name is named, not taken for a missing file.
    refused = client.post("/p/page/import/", {"file": SimpleUploadedFile("pairs.jsonl", jsonl(rows))}, follow=True)
    assert "Import refused" in refused.content.decode() and Item.objects.filter(project=project).count() == 1
    bad_name = client.post(
        "/p/page/import/",
        {"file": SimpleUploadedFile("p.jsonl", jsonl(rows[:1])), "votes_as": "no spaces"},
        follow=True,
    )
    assert "votes_as" in bad_name.content.decode()


def test_openassistant_trees_become_ranked_groups(make_project):
    data = (DATA / "oasst_tree.jsonl").read_bytes()
    ranking = make_project(slug="oa", kind=Kind.RANKING, n_items=0)
    parsed = parse_items(data, "jsonl", Kind.RANKING)
    (group,) = parsed  # the pair under "Why Miso?" does not fit a ranking project: left out and said so
    assert group.external_id == "p1" and group.prompt == [{"role": "user", "content": "Suggest a name for a cat."}]
    assert [r["text"] for r in group.responses] == ["Whiskers.", "Miso.", "Cat."]  # deleted and unranked left out
    assert group.preferred_ranking == [1, 2, 0]
    report = actions.import_items(ranking, parsed, votes_as="oasst")
    assert "Left out OpenAssistant reply groups that a ranking project cannot hold (1 of 2 replies" in report.summary()
    judgment = Judgment.objects.get(project=ranking)
    texts = dict(Response.objects.filter(item__project=ranking).values_list("id", "text"))
    assert [[texts[r] for r in tied] for tied in judgment.data["ranking"]] == [["Miso."], ["Cat."], ["Whiskers."]]
    pairwise = make_project(slug="oap", n_items=0)
    (pair,) = parse_items(data, "jsonl", Kind.PAIRWISE)
    assert pair.prompt == [
        {"role": "user", "content": "Suggest a name for a cat."},
        {"role": "assistant", "content": "Miso."},
        {"role": "user", "content": "Why Miso?"},
    ]
    actions.import_items(pairwise, [pair], votes_as="oasst")
    assert Judgment.objects.get(project=pairwise).winner.text.startswith("Because miso soup")


@pytest.mark.skipif(not (SHARED / "oasst_en100").is_dir(), reason="../shared/data/ is not there")
def test_the_real_openassistant_sample_imports_whole(make_project):
    ranking = make_project(slug="oa", kind=Kind.RANKING, n_items=0)
    pairwise = make_project(slug="oap", n_items=0)
    out_ranking = run("import_items", "oa", str(SHARED / "oasst_en100" / "en_100_tree.jsonl"), "--votes-as", "oasst")
    out_pairwise = run("import_items", "oap", str(SHARED / "oasst_en100" / "en_100_tree.jsonl"), "--votes-as", "oasst")
    # The sample's card: 212 groups of 2 to 9 ranked replies, 57 of them pairs.
    assert Item.objects.filter(project=ranking).count() == 155 and "57 of 2 replies" in out_ranking
    assert Item.objects.filter(project=pairwise).count() == 57 and "Imported 57 items" in out_pairwise
    assert Judgment.objects.filter(project__in=[ranking, pairwise]).count() == 212
    # The messages file holds the same trees: every group is already there.
    again = run("import_items", "oa", str(SHARED / "oasst_en100" / "en_100_message.jsonl"))
    assert "Imported 0 items" in again and "Skipped 155 duplicates" in again


def test_the_api_import_reports_every_count(make_project, make_member, api_client_for):
    from django.core.files.uploadedfile import SimpleUploadedFile

    project = make_project(slug="apiimp", n_items=0)
    client = api_client_for(make_member(project, "res", role="researcher"))
    rows = [
        {"prompt": "Q1", "chosen": "good", "rejected": ""},
        {"prompt": "Q2", "chosen": 3, "rejected": "x"},
        {"prompt": "Q1", "chosen": "good", "rejected": ""},
    ]
    upload = SimpleUploadedFile("pairs.jsonl", jsonl(rows))
    response = client.post(
        "/api/projects/apiimp/items/?skip_invalid=1&votes_as=labels", {"file": upload}, format="multipart"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["created"], body["empty_responses"], body["repeated_texts"], body["votes"]) == (1, 1, 0, 1)
    assert body["skipped"] == [{"line": 2, "reason": 'response 1 must be text or an object with "text".'}]
    assert body["duplicates"] == [{"line": 3, "id": Item.objects.get(project=project).external_id}]
    refused = client.post(
        "/api/projects/apiimp/items/?skip_invalid=maybe",
        {"file": SimpleUploadedFile("p.jsonl", jsonl(rows))},
        format="multipart",
    )
    assert refused.status_code == 400 and "skip_invalid" in refused.json()["detail"]


def test_an_empty_response_says_so_on_the_annotation_page(make_project, make_member, client):
    project = make_project(slug="empty", n_items=0, overlap=1)
    run("import_items", "empty", str(DATA / "messy_items.jsonl"))
    annotator = make_member(project, "ann")
    client.force_login(annotator)
    page = client.get("/p/empty/annotate/").content.decode()  # the first item: the haiku against nothing
    assert "Write a haiku about rain." in page
    assert page.count("Empty: the model answered nothing.") == 1
    assert "Soft rain on the roof<br>" in page  # the haiku keeps its lines
