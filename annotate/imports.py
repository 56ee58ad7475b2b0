"""Parsing import files into items and votes, all-or-nothing, with line-numbered errors.

Nothing here writes to the database: :func:`parse_items` and :func:`parse_votes` read a whole file and
either return every row or raise :class:`ImportFailed` listing the bad rows. ``actions.import_items`` and
``actions.import_judgments`` then write the rows in one transaction.

Accepted item rows (JSONL objects, Parquet rows, CSV rows):

- Arbiter rows: ``{"prompt": "text" or [{"role", "content"}, ...], "responses": ["text", ...] or
  [{"text", "model", "metadata"?}, ...], "id"?: external id, "metadata"?: {}, "gold"?: {...}}``
- TRL preference rows: ``{"prompt", "chosen", "rejected"}`` (strings or message lists).
- Anthropic HH rows: ``{"chosen", "rejected"}``, each a whole ``\\n\\nHuman: ...\\n\\nAssistant: ...`` transcript.

CSV columns: ``prompt`` (text, or a JSON message list), then either ``responses`` (a JSON list) or
``response_1``, ``response_2``, ... (``response_a``/``response_b`` also work), optional ``model_1``, ...,
``id``, ``metadata`` (JSON) and ``gold`` (JSON); TRL (``prompt,chosen,rejected``) and HH (``chosen,rejected``)
columns work too.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Iterator

import orjson
from django.conf import settings

from .models import RESPONSES_PER_KIND, content_hash

ROLES = {"system", "user", "assistant"}
MAX_ERRORS_REPORTED = 50
FORMATS = ("jsonl", "csv", "parquet")


class ImportFailed(ValueError):
    """The whole file is refused. ``errors`` is a list of ``(line, message)``; line 0 is the file itself."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        super().__init__(self.message)

    @property
    def message(self) -> str:
        shown = [f"line {line}: {msg}" if line else msg for line, msg in self.errors[:MAX_ERRORS_REPORTED]]
        more = len(self.errors) - MAX_ERRORS_REPORTED
        if more > 0:
            shown.append(f"... and {more} more errors")
        return "Import refused, nothing was imported.\n" + "\n".join(shown)


class RowError(ValueError):
    pass


@dataclass
class ParsedItem:
    line: int
    prompt: list[dict]
    responses: list[dict]  # {"text", "model", "metadata"}
    external_id: str | None = None
    metadata: dict = field(default_factory=dict)
    gold: Any = None
    purpose: str = "normal"
    # The index of the response the file itself prefers (TRL and HH rows: "chosen"), for --votes-as.
    preferred: int | None = None
    # The file's own ranking, response indices best first (OpenAssistant's consensus ranks), for --votes-as.
    preferred_ranking: list[int] | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.prompt, [r["text"] for r in self.responses])

    @property
    def empty_responses(self) -> int:
        return sum(1 for r in self.responses if not r["text"].strip())


@dataclass
class ParsedVote:
    line: int
    item: str
    annotator: str
    payload: dict


def detect_format(filename: str, explicit: str | None = None) -> str:
    if explicit:
        fmt = explicit.lower().lstrip(".")
    else:
        name = filename.lower()
        fmt = name.rsplit(".", 1)[-1] if "." in name else ""
        fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ImportFailed([(0, f"Unknown file format {fmt!r}: use .jsonl, .csv or .parquet.")])
    return fmt


# --- reading rows ---------------------------------------------------------------------------------


def read_upload(upload) -> bytes:
    """The bytes of an uploaded file, refused by its size before a byte of it is read."""
    if upload.size is not None and upload.size > settings.ARBITER_IMPORT_MAX_BYTES:
        raise ImportFailed([(0, f"The file is larger than the limit of {settings.ARBITER_IMPORT_MAX_BYTES} bytes.")])
    return upload.read()


def iter_rows(data: bytes, fmt: str, max_rows: int | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, row)``; a row that cannot be read at all is yielded as a RowError.

    The limits are checked before anything is parsed: the size, then each line's length and (JSONL) nesting depth,
    then the number of rows (``max_rows``, by default ``ARBITER_IMPORT_MAX_ROWS``). A file over any of them is
    refused whole, naming the lines.
    """
    max_rows = max_rows or settings.ARBITER_IMPORT_MAX_ROWS
    if len(data) > settings.ARBITER_IMPORT_MAX_BYTES:
        raise ImportFailed([(0, f"The file is larger than the limit of {settings.ARBITER_IMPORT_MAX_BYTES} bytes.")])
    if fmt == "parquet":
        yield from _parquet_rows(data, max_rows)
        return
    _check_line_lengths(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFailed([(line, "the file is not valid UTF-8.")]) from None
    if fmt == "jsonl":
        yield from _jsonl_rows(text, max_rows)
    else:
        yield from _csv_rows(text, max_rows)


def _check_line_lengths(data: bytes) -> None:
    limit = settings.ARBITER_IMPORT_MAX_LINE_BYTES
    if len(data) <= limit:
        return
    errors = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if len(line) > limit:
            errors.append((number, f"the line is {len(line)} bytes long, more than the limit of {limit} bytes."))
    if errors:
        raise ImportFailed(errors)


_ESCAPED = re.compile(r"\\.", re.S)
_STRING = re.compile(r'"[^"]*"')  # after escapes are removed, quotes pair up: linear, no backtracking
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest, found without parsing it (brackets inside strings
    do not count). Linear in the text, so a hostile line cannot make it slow."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPED.sub("", text)))
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def _too_deep(text: str) -> str | None:
    limit = settings.ARBITER_IMPORT_MAX_DEPTH
    if text.count("[") + text.count("{") <= limit:  # the usual row: fewer openers than the limit, nothing to scan
        return None
    depth = json_depth(text)
    return f"nested {depth} levels deep, more than the limit of {limit}." if depth > limit else None


def _jsonl_rows(text: str, max_rows: int) -> Iterator[tuple[int, Any]]:
    # Only "\n" ends a line: str.splitlines() would also split at U+2028, U+0085 and others that JSON strings
    # may hold as they are, cutting a valid row in two.
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    deep = [
        (number, f"invalid JSON ({reason})")
        for number, line in enumerate(lines, start=1)
        if (reason := _too_deep(line))
    ]
    if deep:
        raise ImportFailed(deep)
    rows = sum(1 for line in lines if line.strip())
    if rows > max_rows:
        raise ImportFailed([(0, f"The file has {rows} rows, more than the limit of {max_rows} rows.")])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            # orjson is several times faster; on anything it refuses (its rules are stricter: NaN, lone
            # surrogates, integers past 64 bits), the standard parser decides, as it always has.
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        else:
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, RowError(f"invalid JSON ({exc.msg} at column {exc.colno}).")
        except RecursionError:  # pragma: no cover - json_depth refuses these first
            yield number, RowError("invalid JSON (nested too deeply).")


def _csv_rows(text: str, max_rows: int) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        return
    try:
        for count, row in enumerate(reader, start=1):
            if count > max_rows:
                raise ImportFailed([(reader.line_num, f"more than the limit of {max_rows} rows.")])
            if None in row:
                yield reader.line_num, RowError("more fields than the header has.")
                continue
            yield reader.line_num, {k.strip(): v for k, v in row.items() if k is not None}
    except csv.Error as exc:
        raise ImportFailed([(reader.line_num, f"CSV error: {exc}")]) from None


def _parquet_rows(data: bytes, max_rows: int) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(io.BytesIO(data))
        rows, depth = metadata.metadata.num_rows, max((_arrow_depth(f.type) for f in metadata.schema_arrow), default=0)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ImportFailed([(0, f"Not a readable Parquet file: {exc}")]) from None
    if rows > max_rows:
        raise ImportFailed([(0, f"The file has {rows} rows, more than the limit of {max_rows} rows.")])
    if depth > settings.ARBITER_IMPORT_MAX_DEPTH:
        raise ImportFailed(
            [(0, f"Its columns nest {depth} levels deep, more than the limit of {settings.ARBITER_IMPORT_MAX_DEPTH}.")]
        )
    try:
        # A damaged page can pass the footer checks and fail only when its values are decoded (to_pylist).
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ImportFailed([(0, f"Not a readable Parquet file: {exc}")]) from None
    for number, row in enumerate(rows, start=1):
        yield number, row


def _arrow_depth(kind) -> int:
    """Nesting of an Arrow type: a list or struct of scalars is 1."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return 1 + max((_arrow_depth(kind.field(i).type) for i in range(kind.num_fields)), default=0)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return 1 + _arrow_depth(kind.value_type)
    if pa.types.is_map(kind):
        return 1 + max(_arrow_depth(kind.key_type), _arrow_depth(kind.item_type))
    return 0


def has_nul(value: Any) -> bool:
    """Whether any text in a parsed row holds NUL, which PostgreSQL cannot store (in text or in JSON)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_nul(v) for v in value)
    return False


NUL_MESSAGE = "the row contains a NUL character (\\u0000), which cannot be stored."


def may_hold_nul(data: bytes, fmt: str) -> bool:
    """Whether any row of the file can hold NUL: in JSON text it can only be written as an escape, and CSV could
    hold the byte itself. A file without either needs no walk through every parsed row."""
    return fmt == "parquet" or b"\x00" in data or b"\\u0000" in data or b"\\U0000" in data


# --- item rows ------------------------------------------------------------------------------------

# CSV columns that may hold JSON (a message list, a list of responses, an object); others are plain text.
CSV_JSON_COLUMNS = {"prompt", "responses", "chosen", "rejected", "metadata", "gold"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):(?: |$)")


def parse_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` → chat messages."""
    if not isinstance(text, str):
        raise RowError("an HH transcript must be text.")
    parts = HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if parts[0].strip() or len(parts) < 3:
        raise RowError('an HH transcript must consist of "\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns.')
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content})
    return messages


def _maybe_json(value: Any, name: str) -> Any:
    """CSV cells hold JSON for structured columns; a cell that does not look like JSON stays text."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        if reason := _too_deep(value):
            raise RowError(f"{name} is not valid JSON ({reason})")
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"{name} is not valid JSON ({exc.msg}).") from None
    return value


def normalize_messages(value: Any, name: str = "prompt") -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{name} is empty.")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError(f"{name} must be text or a non-empty list of messages.")
    messages = []
    for position, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowError(f'{name} message {position} must be an object with "role" and text "content".')
        if message.get("role") not in ROLES:
            raise RowError(
                f"{name} message {position} has role {message.get('role')!r}; use system, user or assistant."
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _response(value: Any, position: int) -> dict:
    if isinstance(value, str):
        return {"text": value, "model": "", "metadata": {}}
    if isinstance(value, list):  # TRL conversational completion: the assistant's message(s)
        messages = normalize_messages(value, f"response {position}")
        return {"text": "\n\n".join(m["content"] for m in messages), "model": "", "metadata": {}}
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        model = value.get("model") or ""
        metadata = value.get("metadata") or {}
        if not isinstance(model, str) or not isinstance(metadata, dict):
            raise RowError(f'response {position}: "model" must be text and "metadata" an object.')
        return {"text": value["text"], "model": model, "metadata": metadata}
    raise RowError(f'response {position} must be text or an object with "text".')


def _split_hh_pair(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """The prompt and the two responses of an HH row.

    Most rows repeat the conversation in both transcripts and differ in the last Assistant turn. Some differ
    earlier (the crowdworker's conversation forked), or one transcript ends on a Human turn. Then the prompt is
    the longest shared prefix that ends with a Human turn, and each response is the rest of its transcript,
    later turns written as in HH (``"...\\n\\nHuman: ...\\n\\nAssistant: ..."``), so nothing of either side is lost.
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) == len(rejected) and chosen[-1]["role"] == "assistant":
        shared -= 1  # the two transcripts are equal (HH has such rows): both responses are the last turn
    while shared and chosen[shared - 1]["role"] != "user":
        shared -= 1
    if not shared:
        raise RowError("the chosen and rejected HH transcripts must start with the same Human turn.")
    return chosen[:shared], _hh_continuation(chosen[shared:]), _hh_continuation(rejected[shared:])


def _hh_continuation(messages: list[dict]) -> str:
    if not messages:
        return ""
    parts = [messages[0]["content"]]
    parts += [f"{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages[1:]]
    return "\n\n".join(parts)


# Columns whose empty text is an empty response (a model that answered nothing), not a missing value.
RESPONSE_COLUMNS = {"chosen", "rejected"}


def _is_response_column(key: str) -> bool:
    return key in RESPONSE_COLUMNS or key.startswith("response_")


def parse_item_row(row: Any, line: int, from_csv: bool = False, min_responses: int = 2) -> ParsedItem:
    """One item row. CSV cells are text, so structured CSV columns (a message list, metadata) hold JSON;
    in JSONL and Parquet a string is always just text, even one that starts with "[" or "{".

    An empty response is a real output (a model that answered nothing) and is kept. In a wide CSV, empty cells
    after the last filled response column are no responses (rows with fewer responses), down to
    ``min_responses``."""
    if not isinstance(row, dict):
        raise RowError("each row must be a JSON object.")
    row = {k: v for k, v in row.items() if v is not None and (v != "" or _is_response_column(k))}
    if from_csv:
        row = {k: _maybe_json(v, k) if k in CSV_JSON_COLUMNS else v for k, v in row.items()}
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict):
        raise RowError("metadata must be an object.")
    gold = row.get("gold")
    preferred = None

    if "responses" in row or any(k.startswith("response_") for k in row):
        if "prompt" not in row:
            raise RowError('"prompt" is missing or empty.')
        prompt = normalize_messages(row["prompt"])
        if "responses" in row:
            raw = row["responses"]
            if not isinstance(raw, list):
                raise RowError("responses must be a list.")
            responses = [_response(value, i + 1) for i, value in enumerate(raw)]
        else:
            responses = _csv_responses(row, min_responses)
    elif "chosen" in row and "rejected" in row:
        chosen, rejected = row["chosen"], row["rejected"]
        if "prompt" in row:  # TRL preference row
            prompt = normalize_messages(row["prompt"])
            responses = [_response(chosen, 1), _response(rejected, 2)]
        else:  # Anthropic HH row
            prompt, chosen_text, rejected_text = _split_hh_pair(
                parse_hh_transcript(chosen), parse_hh_transcript(rejected)
            )
            if not prompt:
                raise RowError("an HH transcript must start with a Human turn.")
            responses = [_response(chosen_text, 1), _response(rejected_text, 2)]
        # The preference given in the file is kept out of sight of annotators, for comparison later, and becomes
        # a vote only when the import names whose it is (--votes-as).
        metadata = {**metadata, "source_preference": {"chosen": 0, "rejected": 1}}
        preferred = 0
    else:
        raise RowError(
            'a row needs "prompt" and "responses" (or TRL "prompt"/"chosen"/"rejected", or HH "chosen"/"rejected").'
        )

    purpose = row.get("purpose", "normal")
    if purpose not in ("normal", "gold", "qualification"):
        raise RowError('purpose must be "normal", "gold" or "qualification".')
    if purpose != "normal" and gold is None:
        raise RowError(f'a {purpose} item needs "gold": the researcher\'s answer.')
    if gold is not None and not isinstance(gold, dict):
        raise RowError('gold must be an object written like a vote, e.g. {"winner": 0}.')
    external_id = row.get("id")
    if external_id is not None:
        if isinstance(external_id, bool) or not isinstance(external_id, (str, int)):
            raise RowError("id must be text or an integer.")
        external_id = str(external_id)
        if not external_id.strip() or len(external_id) > 200:
            raise RowError("id must be 1 to 200 characters.")
    return ParsedItem(line, prompt, responses, external_id, metadata, gold, purpose, preferred)


def _csv_responses(row: dict, min_responses: int) -> list[dict]:
    keys = [k for k in row if k.startswith("response_")]

    def order(key: str) -> int:
        suffix = key[len("response_") :]
        if suffix.isdigit():
            return int(suffix)
        if len(suffix) == 1 and suffix.isalpha():
            return ord(suffix.lower()) - ord("a") + 1
        raise RowError(f"unknown column {key!r}: use response_1, response_2, ... or response_a, response_b.")

    responses = []
    for key in sorted(keys, key=order):
        suffix = key[len("response_") :]
        model = row.get(f"model_{suffix}", "")
        responses.append({"text": str(row[key]), "model": str(model), "metadata": {}})
    while len(responses) > min_responses and not responses[-1]["text"]:
        responses.pop()
    return responses


class ParsedItems(list):
    """The parsed items of a file, and the groups an OpenAssistant tree held that the project's kind cannot take
    (``left_out``: number of replies → how many groups), which the import summary reports."""

    def __init__(self, items=(), left_out: dict[int, int] | None = None, kind: str = ""):
        super().__init__(items)
        self.left_out = left_out or {}
        self.kind = kind

    def left_out_summary(self) -> str:
        if not self.left_out:
            return ""
        low, high = RESPONSES_PER_KIND[self.kind]
        groups = ", ".join(f"{n} of {k} replies" for k, n in sorted(self.left_out.items()))
        takes = f"exactly {low}" if low == high else f"{low} to {high}"
        return f"Left out OpenAssistant reply groups that a {self.kind} project cannot hold ({groups}; it takes {takes} responses)."


def parse_items(data: bytes, fmt: str, kind: str, skipped: list[tuple[int, str]] | None = None) -> ParsedItems:
    """Read every row of an item file, or raise :class:`ImportFailed` naming each bad line.

    With a ``skipped`` list, bad rows are appended to it as ``(line, reason)`` instead (``--skip-invalid``);
    a file that cannot be read at all, or is over a limit, is still refused whole, and so is one without a single
    good row. A row whose id an earlier row of the file took is a duplicate when the two are equal (it is skipped
    at import and reported) and an error when they differ."""
    low, high = RESPONSES_PER_KIND[kind]
    items: list[ParsedItem] = []
    errors: list[tuple[int, str]] = []
    seen_ids: dict[str, ParsedItem] = {}
    left_out: dict[int, int] = {}
    nul = may_hold_nul(data, fmt)
    for line, row in iter_rows(data, fmt):
        if len(items) + len(errors) >= settings.ARBITER_IMPORT_MAX_ROWS:
            raise ImportFailed([(line, f"more than the limit of {settings.ARBITER_IMPORT_MAX_ROWS} rows.")])
        try:
            if isinstance(row, RowError):
                raise row
            if is_oasst_tree(row):
                found = []
                for item in parse_oasst_tree(row, line):
                    if low <= len(item.responses) <= high:
                        found.append(item)
                    else:
                        left_out[len(item.responses)] = left_out.get(len(item.responses), 0) + 1
            else:
                found = [parse_item_row(row, line, from_csv=fmt == "csv", min_responses=low)]
            for item in found:
                if nul and has_nul([item.prompt, item.responses, item.metadata, item.gold, item.external_id]):
                    raise RowError(NUL_MESSAGE)
                if not low <= len(item.responses) <= high:
                    wanted = f"exactly {low}" if low == high else f"{low} to {high}"
                    raise RowError(
                        f"{kind} projects need {wanted} responses per item; this row has {len(item.responses)}."
                    )
                if item.external_id is not None:
                    first = seen_ids.get(item.external_id)
                    if first is not None and first.content_hash != item.content_hash:
                        raise RowError(
                            f"id {item.external_id!r} is already used on line {first.line} for a different item."
                        )
                    seen_ids.setdefault(item.external_id, item)
            items.extend(found)
        except RowError as exc:
            errors.append((line, str(exc)))
    if errors and skipped is None:
        raise ImportFailed(errors)
    if not items:
        if left_out:
            raise ImportFailed(
                [(0, ParsedItems([], left_out, kind).left_out_summary() + " Nothing else was in the file.")]
            )
        raise ImportFailed(errors if errors else [(0, "The file has no rows.")])
    if skipped is not None:
        skipped.extend(errors)
    return ParsedItems(items, left_out, kind)


# --- OpenAssistant message trees ---------------------------------------------------------------------------


def is_oasst_tree(row: Any) -> bool:
    """An OpenAssistant export row: ``{"message_tree_id", "prompt": message}`` (trees file) or a root message
    ``{"message_id", "role": "prompter", "replies": [...]}`` (messages file)."""
    if not isinstance(row, dict):
        return False
    if "message_tree_id" in row and isinstance(row.get("prompt"), dict):
        return True
    return "message_id" in row and row.get("role") == "prompter" and isinstance(row.get("replies"), list)


def parse_oasst_tree(row: dict, line: int) -> list[ParsedItem]:
    """Every group of two or more ranked assistant replies in an OpenAssistant tree, as an item: the conversation
    down to their parent is the prompt, the replies the responses, their parent's message id the item's id. The
    consensus ``rank`` (0 = best) is the group's ranking, kept out of annotators' sight and recorded as a vote only
    with ``--votes-as``. Deleted and unranked replies are left out, as OpenAssistant's own exports leave them."""
    root = row["prompt"] if "message_tree_id" in row else row
    items: list[ParsedItem] = []

    def walk(message: Any, path: list[dict]) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("text"), str):
            raise RowError("an OpenAssistant message needs a text.")
        role = {"prompter": "user", "assistant": "assistant"}.get(message.get("role"))
        if role is None:
            raise RowError(
                f"an OpenAssistant message has role {message.get('role')!r}; expected prompter or assistant."
            )
        path = path + [{"role": role, "content": message["text"]}]
        replies = message.get("replies") or []
        if not isinstance(replies, list):
            raise RowError("an OpenAssistant message's replies must be a list.")
        ranked = [r for r in replies if isinstance(r, dict) and isinstance(r.get("rank"), int) and not r.get("deleted")]
        if role == "user" and len(ranked) >= 2 and all(r.get("role") == "assistant" for r in ranked):
            for reply in ranked:
                if not isinstance(reply.get("text"), str):
                    raise RowError("an OpenAssistant message needs a text.")
            ranking = sorted(range(len(ranked)), key=lambda i: ranked[i]["rank"])
            items.append(
                ParsedItem(
                    line,
                    path,
                    [
                        {
                            "text": r["text"],
                            "model": r.get("model_name") or "",
                            "metadata": {"message_id": r.get("message_id"), "rank": r["rank"]},
                        }
                        for r in ranked
                    ],
                    external_id=str(message.get("message_id") or "") or None,
                    metadata={
                        "source": "openassistant",
                        "message_tree_id": row.get("message_tree_id") or root.get("message_id"),
                        "source_ranking": ranking,
                    },
                    preferred=ranking[0],
                    preferred_ranking=ranking,
                )
            )
        for reply in replies:
            if isinstance(reply, dict) and not reply.get("deleted"):
                walk(reply, path)

    walk(root, [])
    return items


# --- vote rows ------------------------------------------------------------------------------------


ANNOTATOR_NAME = re.compile(r"[\w.@+-]{1,150}")
ANNOTATOR_NAME_RULE = '"annotator" must be a user name (1 to 150 letters, digits and @.+-_).'


def parse_votes(data: bytes, fmt: str, skipped: list[tuple[int, str]] | None = None) -> list[ParsedVote]:
    """Read every vote row: ``{"item": external id, "annotator": name, ...kind-specific fields}``.

    Vote files have their own row limit, ``ARBITER_IMPORT_MAX_VOTES`` (a vote is a short row, and a public set
    has millions). With a ``skipped`` list, bad rows are appended to it instead of refusing the file."""
    votes: list[ParsedVote] = []
    errors: list[tuple[int, str]] = []
    nul = may_hold_nul(data, fmt)
    for line, row in iter_rows(data, fmt, settings.ARBITER_IMPORT_MAX_VOTES):
        if isinstance(row, RowError):
            errors.append((line, str(row)))
            continue
        if not isinstance(row, dict):
            errors.append((line, "each row must be a JSON object."))
            continue
        if fmt == "csv":
            try:
                row = {k: _maybe_json(v, k) for k, v in row.items()}
            except RowError as exc:
                errors.append((line, str(exc)))
                continue
        if nul and has_nul(row):
            errors.append((line, NUL_MESSAGE))
            continue
        item, annotator = row.get("item"), row.get("annotator")
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item:
            errors.append((line, 'missing "item" (the external id of an imported item).'))
            continue
        if not isinstance(annotator, str) or not ANNOTATOR_NAME.fullmatch(annotator):
            errors.append((line, ANNOTATOR_NAME_RULE))
            continue
        if fmt == "csv" and row.get("winner") in ("", "null", "tie"):
            row["winner"] = None
        elif fmt == "csv" and isinstance(row.get("winner"), str) and row["winner"].isdigit():
            row["winner"] = int(row["winner"])
        del row["item"], row["annotator"]
        votes.append(ParsedVote(line, item, annotator, row))
    if errors and skipped is None:
        raise ImportFailed(errors)
    if not votes:
        raise ImportFailed(errors if errors else [(0, "The file has no rows.")])
    if skipped is not None:
        skipped.extend(errors)
    return votes
