"""The columnar path.

The export that gets large — pairwise votes → TRL rows by majority, prompts of one user message, ties dropped —
is computed on whole columns: the votes as integers (binary COPY), the majority as counts per (pair, outcome)
with numpy, the texts read by the cursor into Arrow arrays and the canonical JSON of every row joined by Arrow,
while a thread reads the next chunk. The general path (:mod:`.general`) builds a DataFrame, then a dict per row,
and takes about four times as long on the million-vote benchmark (bench/export.py). Both give the same rows,
files and hash: tests export the same project both ways and compare.

pyarrow is imported where it is used: the web process imports this package for every page that links an export,
and only writing one needs it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import orjson
import pandas as pd
from django.db import connections
from django.db.models import Case, Value, When
from django.db.models.fields.json import KT

from ..models import Kind, Project, Response
from ..sql import NULL_INT
from . import reading
from .aggregation import majority_pairs
from .formats import _chars
from .options import ExportOptions
from .reading import (
    BOTH_BAD_CODE,
    _conversational_prompt,
    _responses_of,
    current_judgments,
    has_adjudications,
    items_in_scope,
    vote_table,
)


def fits_columns(project: Project, options: "ExportOptions") -> bool:
    """Whether the columnar path can write this export (single-message prompts are checked on the items)."""
    return (
        project.kind == Kind.PAIRWISE
        and options.format == "trl"
        and options.aggregate == "majority"
        and options.ties == "drop"
        and not options.criterion
        and options.weights == "none"  # a weight needs the fit of the annotators: the general path has it
        # Adjudicated items take their adjudication: the general path applies it.
        and not has_adjudications(project)
    )


@dataclass
class RowBatch:
    """A chunk of rows as columns: ``table`` (the columns written to Parquet, in row order), ``lines`` (each
    row's canonical bytes and a newline), ``keys`` (each row's canonical bytes without its id, for deduplication;
    None without it) and ``prompt_hashes`` (each row's, for splits; None when there is no test split)."""

    table: object  # pyarrow.Table
    lines: object  # pyarrow.BinaryArray
    keys: object
    prompt_hashes: list[str] | None


def _fetch(queryset) -> list[tuple]:
    """The rows of a ``values_list`` queryset straight from the cursor. Only for int and text columns, which the
    ORM would return unconverted anyway: it saves the ORM's work per row."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _columns(rows: list[tuple], width: int) -> list[tuple]:
    return list(zip(*rows)) if rows else [()] * width


def response_pairs(response_ids: np.ndarray, response_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(items, a, b)`` for the items with exactly two responses, ``a`` < ``b`` their ids, items ascending."""
    order = np.lexsort((response_ids, response_items))
    items, ids = response_items[order], response_ids[order]
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]]) if len(items) else np.zeros(0, dtype=np.int64)
    two = starts[np.diff(np.r_[starts, len(items)]) == 2]
    return items[two], ids[two], ids[two + 1]


def majority_columns(votes: np.ndarray, pair_items: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`majority_pairs` with ties dropped, on integer columns: ``votes`` has item, outcome code (index in
    ``OUTCOMES``), winner and strength (NULL as ``sql.NULL_INT``); ``pair_items``, ``a``, ``b`` as
    :func:`response_pairs` gives them. Returns ``item``, ``chosen``, ``rejected``, ``margin`` and ``agreement``
    arrays, one entry per preference, by item."""
    votes = votes[votes[:, 1] != BOTH_BAD_CODE]
    item, winner, strength = votes[:, 0], votes[:, 2], votes[:, 3]
    n = len(pair_items)
    pos = np.minimum(np.searchsorted(pair_items, item), max(n - 1, 0))
    paired = (pair_items[pos] == item) if n else np.zeros(len(item), dtype=bool)
    pos, winner, strength = pos[paired], winner[paired], strength[paired]
    # Each vote's outcome as 0 (a won), 1 (b won) or 2 (a tie).
    outcome = np.where(winner == NULL_INT, 2, np.where(winner == a[pos], 0, 1))
    if ((winner != NULL_INT) & (winner != a[pos]) & (winner != b[pos])).any():
        return _majority_by_frame(item[paired], a[pos], b[pos], winner, strength)
    counts = np.bincount(pos * 3 + outcome, minlength=3 * n).reshape(n, 3)
    strengths = np.where(strength == NULL_INT, 0.0, strength.astype(float))
    sums = np.bincount(pos * 3 + outcome, weights=strengths, minlength=3 * n).reshape(n, 3)
    n_votes, top = counts.sum(axis=1), counts.max(axis=1)
    best = counts.argmax(axis=1)
    # A majority: one outcome alone at the top, and a response rather than a tie.
    keep = (n_votes > 0) & ((counts == top[:, None]).sum(axis=1) == 1) & (best < 2)
    rows = np.flatnonzero(keep)
    best, won = best[rows], top[rows]
    chosen = np.where(best == 0, a[rows], b[rows])
    return {
        "item": pair_items[rows],
        "chosen": chosen,
        "rejected": np.where(best == 0, b[rows], a[rows]),
        "margin": sums[rows, best] / won,
        "agreement": won / n_votes[rows],
    }


def _majority_by_frame(item, a, b, winner, strength) -> dict[str, np.ndarray]:
    """The general :func:`majority_pairs`, for votes whose winner is neither response of the pair."""
    frame = pd.DataFrame(
        {
            "item": item,
            "a": a,
            "b": b,
            "winner": pd.array(winner, dtype="Int64"),
            "strength": pd.array(strength, dtype="Int64"),
        }
    )
    frame.loc[winner == NULL_INT, "winner"] = pd.NA
    frame.loc[strength == NULL_INT, "strength"] = pd.NA
    preferences = majority_pairs(frame)
    return {name: preferences[name].to_numpy() for name in ("item", "chosen", "rejected", "margin", "agreement")}


def _text_column(values):
    """A string array of ``values`` (text, or None); other values typed as ``Table.from_pylist`` would."""
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array(values)


def _lengths(column) -> np.ndarray:
    """Characters of each value, as :func:`_chars` counts them (0 for None or a number)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_string(column.type):
        return np.array([_chars(value) for value in column.to_pylist()], dtype=np.int64)
    return pc.utf8_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _json_values(values, column):
    """:func:`canonical` of each of ``values`` (``column``: their :func:`_text_column`), as a binary array.

    orjson spends microseconds on each call but little on each string of a list, so strings are encoded in one
    call and the output cut at the quotes that delimit them (a quote with an even number of backslashes
    before it; splitting at ``","`` would be wrong: a string ending in ``",`` makes a false separator).
    Anything else (a None, a number) is encoded value by value."""
    import pyarrow as pa

    if len(values) and pa.types.is_string(column.type) and column.null_count == 0:
        cut = _cut_json_strings(orjson.dumps(values), len(values))
        if cut is not None:
            return cut
    return pa.array([orjson.dumps(value) for value in values], type=pa.binary())


def _cut_json_strings(data: bytes, n: int):
    """The ``n`` JSON strings of ``data``, a JSON list of them, as a binary array (None if it is not that)."""
    import pyarrow as pa

    buffer = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buffer == ord('"'))
    escaped = np.zeros(len(quotes), dtype=bool)
    behind = quotes - 1
    run = buffer[behind] == ord("\\")
    while run.any():  # count the backslashes before each quote (rarely more than two rounds)
        escaped ^= run
        behind -= 1
        run &= buffer[behind] == ord("\\")
    delimiters = quotes[~escaped]
    if len(delimiters) != 2 * n:
        return None
    opens, closes = delimiters[0::2], delimiters[1::2]
    if opens[0] != 1 or closes[-1] != len(buffer) - 2 or (opens[1:] != closes[:-1] + 2).any():
        return None
    between = np.ones(len(buffer), dtype=bool)  # all but the brackets and the commas between the strings
    between[[0, -1]] = False
    between[closes[:-1] + 1] = False
    values = buffer[between]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(closes - opens + 1, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(values)])


class _Conversational(Exception):
    """The columnar path met a prompt that is a conversation: every row of the export must then be
    conversational, which only the general path writes."""


def iter_trl_batches(project: Project, options: "ExportOptions", with_hashes: bool = False) -> Iterator[RowBatch]:
    """The rows of a :func:`fits_columns` export as :class:`RowBatch` es, ``CHUNK_ITEMS`` items at a time: the
    same rows in the same order as :func:`iter_rows`. Raises :class:`_Conversational` (before the rows of its
    chunk) on meeting a prompt that is more than one user message.

    Chunks are read by keyset (the next ``CHUNK_ITEMS`` items after the last id read), so nothing scans the
    items beforehand; whether a prompt is a conversation comes with each item."""
    flagged = items_in_scope(project, options.include_gold).annotate(
        conversational=Case(When(_conversational_prompt(), then=Value(1)), default=Value(0))
    )
    fields = ["id", KT("prompt__0__content"), "external_id", "conversational"] + (
        ["prompt_hash"] if with_hashes else []
    )
    judgments = current_judgments(
        project, options.include_paused, options.include_gold, source=options.source
    ).order_by()
    after = [0]  # the last item id read (ids are positive)

    def read_next() -> _Chunk | None:
        rows = _fetch(flagged.filter(id__gt=after[0]).order_by("id").values_list(*fields)[: reading.CHUNK_ITEMS])
        if not rows:
            return None
        after[0] = rows[-1][0]
        return _read_chunk(project, judgments, rows, with_hashes)

    for chunk in _read_ahead(read_next, judgments.db):
        if chunk.conversational:
            raise _Conversational
        batch = _trl_batch(chunk, options)
        if batch is not None:
            yield batch


def _read_ahead(read_next, using: str) -> Iterator:
    """``read_next()`` until it returns None; on PostgreSQL, after a first full chunk, the next one is read in a
    thread, on a connection of its own, while the caller works on the current one.

    Half of an export's time is PostgreSQL's (running the queries, sending the rows) and half Python's; one
    after the other they add up, side by side (the server is another process) the slower one sets the pace.
    Only outside a transaction: a second connection would not see what the open transaction wrote."""
    connection = connections[using]
    first = read_next()
    if first is None:
        return
    if connection.vendor != "postgresql" or connection.in_atomic_block or len(first.item_ids) < reading.CHUNK_ITEMS:
        yield first
        while (chunk := read_next()) is not None:
            yield chunk
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read")
    pending = pool.submit(read_next)
    try:
        yield first
        while (current := pending.result()) is not None:
            pending = pool.submit(read_next)
            yield current
    finally:
        pending.cancel()
        pool.submit(connections.close_all).result()  # the thread's own connection, after its last read
        pool.shutdown()


@dataclass
class _Chunk:
    """What the rows of a range of items are made of, as read from the database."""

    item_ids: np.ndarray  # ascending
    prompts: tuple  # the text of each item's one message
    external_ids: tuple
    prompt_hashes: tuple | None
    conversational: bool  # whether any prompt is more than one user message
    response_ids: np.ndarray  # in no particular order
    response_items: np.ndarray
    texts: tuple
    votes: np.ndarray  # item, outcome code, winner, strength


def _read_chunk(project: Project, judgments, item_rows: list[tuple], with_hashes: bool) -> _Chunk:
    """The chunk of the items ``item_rows`` (id, prompt text, external id, conversational, prompt hash), by id."""
    item_columns = _columns(item_rows, 5 if with_hashes else 4)
    item_ids = np.array(item_columns[0], dtype=np.int64)
    first, last = int(item_ids[0]), int(item_ids[-1])
    if len(item_ids) == last - first + 1:  # no other item in the range: no join to the project's items needed
        responses = Response.objects.filter(item_id__gte=first, item_id__lte=last)
    else:
        responses = _responses_of(project, (first, last))
    # In no particular order (sorting them is numpy's job).
    response_ids, response_items, texts = _columns(_fetch(responses.order_by().values_list("id", "item_id", "text")), 3)
    return _Chunk(
        item_ids,
        item_columns[1],
        item_columns[2],
        item_columns[4] if with_hashes else None,
        any(item_columns[3]),
        np.array(response_ids, dtype=np.int64),
        np.array(response_items, dtype=np.int64),
        texts,
        vote_table(
            judgments.filter(item_id__gte=first, item_id__lte=last),
            ["item_id", "outcome_code", "winner_id", "strength"],
        ),
    )


def _trl_batch(chunk: _Chunk, options: "ExportOptions") -> RowBatch | None:
    """The rows of one chunk (:func:`iter_rows` would give them as dicts)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    item_ids, prompts, external_ids, texts = chunk.item_ids, chunk.prompts, chunk.external_ids, chunk.texts
    response_ids, response_items, votes = chunk.response_ids, chunk.response_items, chunk.votes
    preferences = majority_columns(votes, *response_pairs(response_ids, response_items))
    keep = preferences["agreement"] >= options.min_agreement
    at_item = np.searchsorted(item_ids, preferences["item"][keep])
    by_id = np.argsort(response_ids)
    at_chosen = by_id[np.searchsorted(response_ids, preferences["chosen"][keep], sorter=by_id)]
    at_rejected = by_id[np.searchsorted(response_ids, preferences["rejected"][keep], sorter=by_id)]
    margin = preferences["margin"][keep]

    text_array, prompt_array = _text_column(texts), _text_column(prompts)
    chosen, rejected = text_array.take(at_chosen), text_array.take(at_rejected)
    prompt_column = prompt_array.take(at_item)
    if options.max_chars:  # as _chars counts a row: the characters of prompt, chosen and rejected
        length = sum(_lengths(column) for column in (prompt_column, chosen, rejected))
        short = length <= options.max_chars
        at_item, at_chosen, at_rejected, margin = at_item[short], at_chosen[short], at_rejected[short], margin[short]
        prompt_column, chosen, rejected = prompt_column.filter(short), chosen.filter(short), rejected.filter(short)
    if not len(at_item):
        return None
    id_array = pa.array(external_ids, type=pa.string())
    table = pa.table(
        {
            "prompt": prompt_column,
            "chosen": chosen,
            "rejected": rejected,
            "margin": pa.array(margin, type=pa.float64()),
            "id": id_array.take(at_item),
        }
    )

    # Canonical JSON (sorted keys, orjson's spelling of each value), joined column by column.
    json_texts = _json_values(texts, text_array)
    json_margin = pa.array(orjson.dumps(margin.tolist())[1:-1].split(b","), type=pa.binary())
    nothing = pa.scalar(b"", type=pa.binary())
    head = (b'{"chosen":', json_texts.take(at_chosen))
    tail = (
        b',"margin":',
        json_margin,
        b',"prompt":',
        _json_values(prompts, prompt_array).take(at_item),
        b',"rejected":',
        json_texts.take(at_rejected),
    )
    lines = pc.binary_join_element_wise(
        *head, b',"id":', _json_values(external_ids, id_array).take(at_item), *tail, b"}\n", nothing
    )
    keys = pc.binary_join_element_wise(*head, *tail, b"}", nothing) if options.dedupe else None
    at_item_list = at_item.tolist()
    hashes = [chunk.prompt_hashes[i] for i in at_item_list] if chunk.prompt_hashes is not None else None
    return RowBatch(table, lines, keys, hashes)
