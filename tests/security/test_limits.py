"""Upload limits are enforced before parsing: size, rows, line length and nesting depth.

Each file below also holds a line that is not JSON at all. Were the file parsed before the limit check, that line
would be reported too; the refusal names only the limit, so nothing was parsed, and nothing was written.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.imports import ImportFailed, json_depth, parse_items, parse_votes, read_upload
from annotate.models import Item, Kind

pytestmark = pytest.mark.django_db

ROW = {"prompt": "Hi?", "responses": ["Hello.", "Hey."]}
BROKEN = "this line is not JSON"


def _lines(*lines: str) -> bytes:
    return "\n".join(lines).encode()


@pytest.fixture
def researcher_api(make_project, make_member, api_client_for):
    project = make_project(slug="limits", kind=Kind.PAIRWISE, n_items=0)
    return project, api_client_for(make_member(project, "rita", "researcher"))


def _post(client, project, data: bytes, name: str = "rows.jsonl"):
    return client.post(
        f"/api/projects/{project.slug}/items/", {"file": SimpleUploadedFile(name, data)}, format="multipart"
    )


def test_a_long_line_is_refused_before_parsing(settings, researcher_api):
    settings.ARBITER_IMPORT_MAX_LINE_BYTES = 200
    project, client = researcher_api
    data = _lines(BROKEN, json.dumps({**ROW, "metadata": {"note": "x" * 300}}), json.dumps(ROW))
    answer = _post(client, project, data)
    assert answer.status_code == 400
    length = len(data.splitlines()[1])
    assert answer.json()["errors"] == [
        {"line": 2, "message": f"the line is {length} bytes long, more than the limit of 200 bytes."}
    ]
    assert not Item.objects.filter(project=project).exists()


def test_deep_nesting_is_refused_before_parsing(settings, researcher_api):
    settings.ARBITER_IMPORT_MAX_DEPTH = 32
    project, client = researcher_api
    deep = json.dumps({**ROW, "metadata": {"a": "[[[[not brackets]]]]", "b": json.loads("[" * 40 + "]" * 40)}})
    hostile = "[" * 100_000  # would be a RecursionError in a JSON parser
    answer = _post(client, project, _lines(BROKEN, deep, hostile))
    assert answer.status_code == 400
    assert answer.json()["errors"] == [
        {"line": 2, "message": "invalid JSON (nested 42 levels deep, more than the limit of 32.)"},
        {"line": 3, "message": "invalid JSON (nested 100000 levels deep, more than the limit of 32.)"},
    ]
    assert not Item.objects.filter(project=project).exists()


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(json.dumps({"a": "[[[[{{{{", "b": ["]]]"]})) == 2
    assert json_depth(json.dumps(['\\"[[[', [[1]]])) == 3
    assert json_depth("[" * 10 + '"' + "]" * 10) == 10  # an unterminated string: still counted, linear time


def test_too_many_rows_are_refused_before_parsing(settings, researcher_api):
    settings.ARBITER_IMPORT_MAX_ROWS = 3
    project, client = researcher_api
    answer = _post(client, project, _lines(BROKEN, *[json.dumps(ROW)] * 4))
    assert answer.status_code == 400
    assert answer.json()["errors"] == [{"line": 0, "message": "The file has 5 rows, more than the limit of 3 rows."}]
    assert not Item.objects.filter(project=project).exists()


def test_an_oversized_upload_is_refused_by_its_size_unread(settings, researcher_api):
    settings.ARBITER_IMPORT_MAX_BYTES = 100
    project, client = researcher_api
    answer = _post(client, project, _lines(BROKEN, *[json.dumps(ROW)] * 3))
    assert answer.status_code == 400
    assert answer.json()["detail"].endswith("The file is larger than the limit of 100 bytes.")
    assert not Item.objects.filter(project=project).exists()

    class Unreadable(io.BytesIO):
        size = 101

        def read(self, *args):
            raise AssertionError("read before the size was checked")

    with pytest.raises(ImportFailed, match="larger than the limit of 100 bytes"):
        read_upload(Unreadable())


def test_the_import_page_shows_the_refusal(settings, make_project, make_member, client):
    settings.ARBITER_IMPORT_MAX_BYTES = 100
    project = make_project(slug="limits", kind=Kind.PAIRWISE, n_items=0)
    client.force_login(make_member(project, "rita", "researcher"))
    page = client.post(
        "/p/limits/import/", {"file": SimpleUploadedFile("rows.jsonl", _lines(*[json.dumps(ROW)] * 5))}, follow=True
    )
    assert "The file is larger than the limit of 100 bytes." in page.content.decode()
    assert not Item.objects.filter(project=project).exists()


def test_parquet_rows_and_depth_are_read_from_the_footer(settings):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(table) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()

    settings.ARBITER_IMPORT_MAX_ROWS = 3
    rows = parquet(pa.table({"prompt": ["Hi?"] * 5, "responses": [["a", "b"]] * 5}))
    with pytest.raises(ImportFailed) as refused:
        parse_items(rows, "parquet", Kind.PAIRWISE)
    assert refused.value.errors == [(0, "The file has 5 rows, more than the limit of 3 rows.")]

    settings.ARBITER_IMPORT_MAX_DEPTH = 3
    nested = parquet(pa.table({"prompt": ["Hi?"], "responses": [["a", "b"]], "metadata": [[[[["deep"]]]]]}))
    with pytest.raises(ImportFailed) as refused:
        parse_items(nested, "parquet", Kind.PAIRWISE)
    assert refused.value.errors == [(0, "Its columns nest 4 levels deep, more than the limit of 3.")]


def test_csv_json_cells_and_vote_files_have_the_same_limits(settings):
    settings.ARBITER_IMPORT_MAX_DEPTH = 4
    deep = json.dumps([[[[[["x"]]]]]])
    csv_data = f'prompt,responses\nHi?,"{json.dumps(["a", "b"]).replace(chr(34), chr(34) * 2)}"\nHi?,"{deep.replace(chr(34), chr(34) * 2)}"\n'
    with pytest.raises(ImportFailed) as refused:
        parse_items(csv_data.encode(), "csv", Kind.PAIRWISE)
    assert refused.value.errors == [
        (3, "responses is not valid JSON (nested 6 levels deep, more than the limit of 4.)")
    ]
    votes = _lines(json.dumps({"item": "a", "annotator": "ann", "winner": 0}), "[" * 50)
    with pytest.raises(ImportFailed) as refused:
        parse_votes(votes, "jsonl")
    assert refused.value.errors == [(2, "invalid JSON (nested 50 levels deep, more than the limit of 4.)")]


def test_line_separators_inside_json_strings_do_not_split_rows():
    """U+2028 and U+0085 are legal unescaped in JSON strings; only "\\n" ends a JSONL row (once split rows)."""
    data = "\n".join(
        json.dumps({"prompt": f"Hi\u2028there {i}\x85?", "responses": ["a", "b"]}, ensure_ascii=False) for i in range(2)
    )
    items = parse_items(data.encode(), "jsonl", Kind.PAIRWISE)
    assert [item.prompt[0]["content"] for item in items] == ["Hi\u2028there 0\x85?", "Hi\u2028there 1\x85?"]
    assert [item.line for item in items] == [1, 2]


def test_nul_characters_are_refused_with_the_line():
    data = _lines(
        json.dumps(ROW),
        json.dumps({**ROW, "prompt": "Hi\x00?"}),
        json.dumps({"prompt": "x", "responses": ["a", "b\x00"]}),
    )
    with pytest.raises(ImportFailed) as refused:
        parse_items(data, "jsonl", Kind.PAIRWISE)
    assert [line for line, _ in refused.value.errors] == [2, 3]
    assert "NUL" in refused.value.errors[0][1]
