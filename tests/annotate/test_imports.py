import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate import actions
from annotate.imports import ImportFailed, detect_format, parse_hh_transcript, parse_items, parse_votes
from annotate.models import Item, Kind, Response
from tests.conftest import jsonl, pairwise_rows


def test_jsonl_rows_with_strings_objects_and_conversations():
    rows = [
        {"prompt": "Hi?", "responses": ["Hello.", "Go away."], "id": 7, "metadata": {"topic": "greeting"}},
        {
            "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
            "responses": [{"text": "Hello!", "model": "m1", "metadata": {"t": 0.7}}, {"text": "Hey.", "model": "m2"}],
        },
    ]
    items = parse_items(jsonl(rows), "jsonl", Kind.PAIRWISE)
    assert [i.line for i in items] == [1, 2]
    assert items[0].prompt == [{"role": "user", "content": "Hi?"}]
    assert items[0].external_id == "7"
    assert items[0].metadata == {"topic": "greeting"}
    assert items[1].prompt[0] == {"role": "system", "content": "Be kind."}
    assert items[1].responses[0] == {"text": "Hello!", "model": "m1", "metadata": {"t": 0.7}}


def test_trl_and_hh_rows_become_two_responses_and_keep_the_given_preference_hidden():
    trl = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    hh = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant: 4",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant: 5",
    }
    trl_conv = {
        "prompt": [{"role": "user", "content": "3+3?"}],
        "chosen": [{"role": "assistant", "content": "6"}],
        "rejected": [{"role": "assistant", "content": "7"}],
    }
    first, second, third = parse_items(jsonl([trl, hh, trl_conv]), "jsonl", Kind.PAIRWISE)
    assert [r["text"] for r in first.responses] == ["4", "5"]
    assert second.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
    ]
    assert [r["text"] for r in second.responses] == ["4", "5"]
    assert second.metadata["source_preference"] == {"chosen": 0, "rejected": 1}
    assert [r["text"] for r in third.responses] == ["6", "7"]


def test_hh_transcript_parsing():
    assert parse_hh_transcript("\n\nHuman: a\n\nAssistant: b") == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]
    with pytest.raises(ValueError):
        parse_hh_transcript("just text")


def test_csv_with_numbered_and_lettered_columns():
    data = (
        "id,prompt,response_1,response_2,model_1,model_2,metadata\n"
        'a,"Say hi","Hi","Hello","m1","m2","{""k"": 1}"\n'
        'b,"[{""role"": ""user"", ""content"": ""Yo""}]","Yo","Hey",,,\n'
    ).encode()
    first, second = parse_items(data, "csv", Kind.PAIRWISE)
    assert (first.line, second.line) == (2, 3)
    assert first.responses[0] == {"text": "Hi", "model": "m1", "metadata": {}}
    assert first.metadata == {"k": 1}
    assert second.prompt == [{"role": "user", "content": "Yo"}]
    lettered = parse_items(b"prompt,response_b,response_a\nQ,second,first\n", "csv", Kind.PAIRWISE)
    assert [r["text"] for r in lettered[0].responses] == ["first", "second"]


def test_parquet_rows():
    table = pa.Table.from_pylist(
        [
            {"id": "p1", "prompt": "Q1", "responses": ["a", "b"]},
            {"id": "p2", "prompt": "Q2", "responses": ["c", "d"]},
        ]
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    items = parse_items(buffer.getvalue(), "parquet", Kind.PAIRWISE)
    assert [i.external_id for i in items] == ["p1", "p2"]
    assert [r["text"] for r in items[1].responses] == ["c", "d"]


def test_every_bad_row_is_named_with_its_line():
    good = json.dumps({"prompt": "ok", "responses": ["a", "b"]})
    lines = [
        good,
        "{not json",
        json.dumps({"prompt": "only one", "responses": ["a"]}),
        json.dumps({"prompt": "", "responses": ["a", "b"]}),
        json.dumps({"responses": ["a", "b"]}),
        json.dumps({"prompt": [{"role": "robot", "content": "x"}], "responses": ["a", "b"]}),
        json.dumps({"prompt": "ok2", "responses": ["a", True]}),
        json.dumps([1, 2]),
    ]
    with pytest.raises(ImportFailed) as caught:
        parse_items("\n".join(lines).encode(), "jsonl", Kind.PAIRWISE)
    errors = dict(caught.value.errors)
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8]
    assert "invalid JSON" in errors[2]
    assert "exactly 2 responses" in errors[3]
    assert '"prompt" is missing or empty' in errors[4]
    assert '"prompt" is missing or empty' in errors[5]
    assert "robot" in errors[6]
    assert "response 2 must be text" in errors[7]
    assert "line 2:" in caught.value.message


def test_repeated_id_in_one_file_is_an_error_when_the_rows_differ():
    rows = pairwise_rows(2)
    rows[1]["id"] = rows[0]["id"]
    with pytest.raises(ImportFailed) as caught:
        parse_items(jsonl(rows), "jsonl", Kind.PAIRWISE)
    assert caught.value.errors == [(2, "id 'item-0' is already used on line 1 for a different item.")]
    # The same row twice under its id is a duplicate: parsed, and skipped at import.
    assert [p.line for p in parse_items(jsonl([rows[0], rows[0]]), "jsonl", Kind.PAIRWISE)] == [1, 2]


def test_limits_are_enforced_before_parsing(settings):
    settings.ARBITER_IMPORT_MAX_BYTES = 100
    with pytest.raises(ImportFailed, match="larger than the limit"):
        parse_items(jsonl(pairwise_rows(5)), "jsonl", Kind.PAIRWISE)
    settings.ARBITER_IMPORT_MAX_BYTES = 10**6
    settings.ARBITER_IMPORT_MAX_ROWS = 3
    with pytest.raises(ImportFailed, match="limit of 3 rows"):
        parse_items(jsonl(pairwise_rows(5)), "jsonl", Kind.PAIRWISE)


def test_bad_encoding_empty_file_and_unknown_format():
    with pytest.raises(ImportFailed, match="not valid UTF-8"):
        parse_items(b'{"prompt": "\xff"}', "jsonl", Kind.PAIRWISE)
    with pytest.raises(ImportFailed, match="no rows"):
        parse_items(b"\n\n", "jsonl", Kind.PAIRWISE)
    with pytest.raises(ImportFailed, match="Unknown file format"):
        detect_format("items.xlsx")
    with pytest.raises(ImportFailed, match="Parquet"):
        parse_items(b"not parquet", "parquet", Kind.PAIRWISE)


@pytest.mark.django_db
def test_import_writes_items_and_responses(make_project):
    project = make_project(n_items=0, overlap=3)
    report = actions.import_items(project, parse_items(jsonl(pairwise_rows(4)), "jsonl", project.kind))
    assert report.created == 4
    item = Item.objects.get(project=project, external_id="item-2")
    assert item.open_slots == 3
    assert item.prompt == [{"role": "user", "content": "Question 2: what is 2 plus 2?"}]
    assert list(item.responses.values_list("index", "text", "model_name")) == [
        (0, "The answer is 4.", "good-model"),
        (1, "The answer is 5.", "bad-model"),
    ]
    assert item.round.number == 1


@pytest.mark.django_db
def test_duplicates_are_reported_not_imported_twice(make_project):
    project = make_project(n_items=3)
    rows = pairwise_rows(5)  # items 0-2 exist already
    rows.append(dict(rows[4]))  # line 6: line 5 again, same id and content
    rows.append(dict(rows[4], id="copy-of-4"))  # line 7: same content as line 5 under another id: another item
    without_id = {k: v for k, v in pairwise_rows(1, start=20)[0].items() if k != "id"}
    rows += [without_id, without_id]  # lines 8 and 9: no id, so deduplicated by content
    report = actions.import_items(project, parse_items(jsonl(rows), "jsonl", project.kind))
    assert report.created == 4
    assert report.repeated_texts == 1
    assert [line for line, _ in report.duplicates] == [1, 2, 3, 6, 9]
    assert "1 repeat the texts of another item under a different id" in report.summary()
    assert set(Item.objects.filter(project=project).values_list("external_id", flat=True)) == {
        "item-0",
        "item-1",
        "item-2",
        "item-3",
        "item-4",
        "copy-of-4",
        parse_items(jsonl([without_id]), "jsonl", project.kind)[0].content_hash,
    }
    assert Response.objects.filter(item__project=project).count() == 14
    # Importing the file again adds nothing: every row names an item that is there.
    again = actions.import_items(project, parse_items(jsonl(rows), "jsonl", project.kind))
    assert (again.created, len(again.duplicates)) == (0, 9)


@pytest.mark.django_db
def test_an_id_taken_by_other_content_refuses_the_whole_file(make_project):
    project = make_project(n_items=2)
    rows = pairwise_rows(1, start=10) + [{"id": "item-0", "prompt": "different", "responses": ["x", "y"]}]
    with pytest.raises(ImportFailed) as caught:
        actions.import_items(project, parse_items(jsonl(rows), "jsonl", project.kind))
    assert caught.value.errors[0][0] == 2
    assert Item.objects.filter(project=project).count() == 2


def test_vote_rows():
    data = jsonl(
        [
            {"item": "a", "annotator": "ann1", "winner": 0, "strength": 2},
            {"item": "a", "annotator": "ann2", "winner": None},
        ]
    )
    first, second = parse_votes(data, "jsonl")
    assert (first.item, first.annotator, first.payload) == ("a", "ann1", {"winner": 0, "strength": 2})
    assert second.payload == {"winner": None}
    with pytest.raises(ImportFailed) as caught:
        parse_votes(jsonl([{"item": "a"}, {"annotator": "x y", "item": "b"}]), "jsonl")
    assert [line for line, _ in caught.value.errors] == [1, 2]


def test_a_jsonl_prompt_that_looks_like_json_stays_text():
    (item,) = parse_items(
        jsonl([{"prompt": "[1, 2] + [3]: what is it in Python?", "responses": ["{a}", "[b]"]}]), "jsonl", Kind.PAIRWISE
    )
    assert item.prompt == [{"role": "user", "content": "[1, 2] + [3]: what is it in Python?"}]
    assert [r["text"] for r in item.responses] == ["{a}", "[b]"]
