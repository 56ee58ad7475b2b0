"""Import files fuzzed with Hypothesis: every file is imported whole or refused whole, with a message.

The rows are drawn near the accepted shapes (Arbiter rows, TRL ``prompt/chosen/rejected``, Anthropic HH transcripts)
with every part allowed to go wrong: odd types, empty or control-character text, NUL, line separators inside
strings, unknown roles, bad gold answers, duplicate ids, deep nesting, garbage lines and raw bytes. Each file is
written as JSONL, CSV or Parquet and goes through ``parse_items`` and ``actions.import_items`` as the import page
does. Afterwards either exactly the parsed items were written, or ``ImportFailed`` was raised with line-numbered
messages and no row changed. Any other exception fails the test.

Runs derandomized with a fixed number of examples (``ARBITER_FUZZ_EXAMPLES`` × 10 per format, default 3 → 30).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate import actions
from annotate.imports import ImportFailed, parse_items
from annotate.models import Item, Kind, Response, Round

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("ARBITER_FUZZ_EXAMPLES", "3")) * 10
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)

# Text with what breaks naive code: NUL and control characters, line and paragraph separators, RTL marks, quotes.
SPECIALS = ["\x00", "\r", "\n", "\u2028", "\u2029", "\x85", "\ufeff", "\u202e", '"', ",", "\\", "[", "{", "\t"]
text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from(SPECIALS + list("ab ")), max_size=8),
    st.sampled_from(["", " ", "Hi", "What is 2+2?", "4", "**bold** `code`"]),
)
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), text
)
json_value = st.recursive(
    leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "bot", ""]), "content": st.one_of(text, leaf)}
)
prompt = st.one_of(text, st.lists(message, max_size=3), json_value)
response = st.one_of(
    text,
    st.fixed_dictionaries({"text": text}, optional={"model": st.one_of(text, leaf), "metadata": json_value}),
    st.lists(message, min_size=1, max_size=2),
    leaf,
)
gold = st.one_of(
    st.none(), st.fixed_dictionaries({"winner": st.one_of(st.sampled_from([0, 1, 2, None, "0"]), leaf)}), json_value
)
arbiter_row = st.fixed_dictionaries(
    {"prompt": prompt, "responses": st.lists(response, max_size=4)},
    optional={
        "id": st.one_of(st.sampled_from(["a", "b", "a"]), text, leaf),
        "metadata": json_value,
        "gold": gold,
        "purpose": st.sampled_from(["normal", "gold", "qualification", "other"]),
    },
)
trl_row = st.fixed_dictionaries({"prompt": prompt, "chosen": response, "rejected": response}, optional={"id": text})


@st.composite
def hh_row(draw):
    turns = draw(st.lists(st.tuples(st.sampled_from(["Human", "Assistant", "Robot"]), text), min_size=1, max_size=4))
    shared = "".join(f"\n\n{who}: {said}" for who, said in turns)
    return {
        "chosen": shared + "\n\nAssistant: " + draw(text),
        "rejected": draw(st.sampled_from([shared, ""])) + "\n\nAssistant: " + draw(text),
    }


row = st.one_of(arbiter_row, trl_row, hh_row(), json_value)
# Rows that a pairwise project accepts, with the same hostile text inside (so accepted files get through too).
valid_row = st.one_of(
    st.fixed_dictionaries(
        {
            "prompt": st.text(min_size=1, max_size=12).filter(str.strip),
            "responses": st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=2, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {
            "prompt": st.sampled_from(["Hi", "Why?"]),
            "chosen": text.filter(str.strip),
            "rejected": text.filter(str.strip),
        }
    ),
)
rows = st.one_of(
    st.lists(valid_row, min_size=1, max_size=4),
    st.lists(row, min_size=0, max_size=5),
    st.lists(st.one_of(valid_row, row), max_size=4),
)


def to_jsonl(values: list, ascii_only: bool, garbage: str | None) -> bytes:
    lines = [json.dumps(v, ensure_ascii=ascii_only) for v in values]
    if garbage is not None:
        lines.insert(len(lines) // 2, garbage)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def to_csv(values: list) -> bytes:
    dicts = [v for v in values if isinstance(v, dict)]
    columns = sorted({str(k) for d in dicts for k in d})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for d in dicts:
        cells = {str(k): v for k, v in d.items()}
        writer.writerow(
            ["" if c not in cells else cells[c] if isinstance(cells[c], str) else json.dumps(cells[c]) for c in columns]
        )
    return out.getvalue().encode("utf-8", "surrogatepass")


def counts(project) -> tuple[int, int, int]:
    return (
        Item.objects.filter(project=project).count(),
        Response.objects.filter(item__project=project).count(),
        Round.objects.filter(project=project).count(),
    )


@pytest.fixture
def target():
    return actions.create_project(slug="fuzz", kind=Kind.PAIRWISE, overlap=1)


def check_whole_or_nothing(project, data: bytes, fmt: str, n_lines: int) -> str:
    """Import ``data``; assert the all-or-nothing property. Returns "accepted" or "refused"."""
    before = counts(project)
    try:
        parsed = parse_items(data, fmt, project.kind)
        report = actions.import_items(project, parsed, source={"file": f"fuzz.{fmt}"})
    except ImportFailed as exc:
        assert counts(project) == before, "a refused import wrote rows"
        assert exc.errors and exc.message.startswith("Import refused, nothing was imported.")
        for line, message in exc.errors:
            assert isinstance(message, str) and message.strip()
            assert 0 <= line <= max(n_lines, 1) + 1, (line, n_lines, message)
        return "refused"
    after = counts(project)
    assert after[0] - before[0] == report.created == len(parsed) - len(report.duplicates)
    assert after[1] - before[1] == sum(
        len(p.responses) for p in parsed if p.line not in {d for d, _ in report.duplicates}
    )
    for item in Item.objects.filter(project=project).order_by("-id")[: report.created]:
        assert item.prompt and all(isinstance(m["content"], str) for m in item.prompt)
    return "accepted"


# Each property test below also asserts that its examples reached both outcomes: a generator that only ever made
# refused files would let "imported whole or refused whole" hold vacuously.
BOTH = {"accepted", "refused"}


def test_jsonl_files_are_imported_whole_or_refused_whole(target):
    seen = set()

    @FUZZ
    @given(
        values=rows,
        ascii_only=st.booleans(),
        garbage=st.one_of(st.none(), st.none(), st.none(), text, st.just("[" * 5000), st.just('{"a":' * 3000)),
    )
    def check(values, ascii_only, garbage):
        data = to_jsonl(values, ascii_only, garbage)
        seen.add(check_whole_or_nothing(target, data, "jsonl", data.count(b"\n") + 1))

    check()
    assert seen == BOTH


def test_csv_files_are_imported_whole_or_refused_whole(target):
    seen = set()

    @FUZZ
    @given(values=rows)
    def check(values):
        data = to_csv(values)
        # The csv module counts a lone "\r" as a line end too, as editors do.
        seen.add(check_whole_or_nothing(target, data, "csv", len(re.split(rb"\r\n|\r|\n", data))))

    check()
    assert seen == BOTH


parquet_row = st.one_of(
    st.fixed_dictionaries(
        {"prompt": text, "responses": st.lists(text, max_size=3)},
        optional={"id": text, "chosen": text, "rejected": text},
    ),
    st.fixed_dictionaries(
        {"prompt": text.filter(str.strip), "responses": st.lists(text.filter(str.strip), min_size=2, max_size=2)}
    ),
)


def test_parquet_files_are_imported_whole_or_refused_whole(target):
    seen = set()

    @FUZZ
    @given(values=st.lists(parquet_row, max_size=4), corrupt=st.one_of(st.none(), st.none(), st.integers(0, 400)))
    def check(values, corrupt):
        buffer = io.BytesIO()
        columns = sorted({k for v in values for k in v}) or ["prompt"]
        pq.write_table(pa.table({c: [v.get(c) for v in values] for c in columns}), buffer)
        data = buffer.getvalue()
        if corrupt is not None:  # flip a byte somewhere: a damaged file must be refused, not crash
            position = corrupt % len(data)
            data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
        seen.add(check_whole_or_nothing(target, data, "parquet", len(values)))

    check()
    assert seen == BOTH


@FUZZ
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["jsonl", "csv", "parquet"]))
def test_raw_bytes_never_crash_the_parsers(target, data, fmt):
    check_whole_or_nothing(target, data, fmt, data.count(b"\n") + 1)
