"""Writing an export: the rows of either path split into train, test and per-criterion test files (by
prompt, with a seed), deduplicated, written as JSONL, Parquet or a Hugging Face DatasetDict, and hashed over
their canonical bytes; and where a snapshot's files are.

pyarrow and datasets are imported where they are used: the web process imports this package, and only writing
an export needs them.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import operator
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson
from django.db.models import Exists, OuterRef

from ..models import Judgment, Kind, Project, Snapshot, prompt_hash
from ..selectors import HUMAN, by_source
from .columnar import RowBatch, _Conversational, fits_columns, iter_trl_batches
from .formats import ItemTables, canonical
from .general import iter_rows
from .options import PREFERENCE_FORMATS, ExportError, ExportOptions, check_options
from .reading import items_in_scope


def test_prompts(project: Project, options: "ExportOptions") -> set[str]:
    """The prompt hashes of the test split: the judged prompts, shuffled with the seed, the first share of them.

    Rows are assigned by their item's prompt, so rows sharing a prompt (K-wise pairs, several votes, the same
    prompt with other responses) are always in the same split.
    """
    if not options.test_size:
        return set()
    items = items_in_scope(project, options.include_gold)
    if options.source == HUMAN and not project.judges_take_places:
        items = items.filter(n_judgments__gt=0)  # n_judgments counts people's votes only
    else:  # judges' votes are not in n_judgments, or people's are not all it counts
        votes = by_source(Judgment.objects.filter(item=OuterRef("pk")), options.source)
        items = items.filter(Exists(votes))
    groups = sorted(set(items.values_list("prompt_hash", flat=True)))
    n_test = int(round(options.test_size * len(groups)))
    if len(groups) >= 2:
        n_test = min(max(n_test, 1), len(groups) - 1)
    order = np.random.default_rng(options.seed).permutation(len(groups))
    return {groups[i] for i in order[:n_test]}


def criterion_tests(project: Project, options: "ExportOptions") -> list[str]:
    """The criteria whose preferences on the test prompts an export also holds, as ``test:<criterion>`` splits.

    A reward model trained on one criterion (or the overall judgment) reports its accuracy on each other one;
    these splits are written and hashed with the export, so what a run is scored on is as fixed as what it
    trains on. Preference formats of pairwise and rating projects with criteria, when there is a test split.
    """
    if (
        not options.test_size
        or options.format not in PREFERENCE_FORMATS
        or project.kind not in (Kind.PAIRWISE, Kind.RATING)
    ):
        return []
    return [criterion for criterion in project.criteria or [] if criterion != options.criterion]


def criterion_file(criterion: str) -> str:
    """The file name (less its extension) of a criterion's test split: the name itself when it is safe in a
    path, else a slug of it and a hash, so that any criterion name gets a file of its own."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", criterion).strip("-")[:40]
    if slug == criterion:
        return f"test-{slug}"
    return f"test-{slug or 'criterion'}-{hashlib.sha256(criterion.encode()).hexdigest()[:8]}"


def _dedupe_key(row: dict) -> bytes:
    return hashlib.blake2b(canonical({k: v for k, v in row.items() if k != "id"}), digest_size=16).digest()


def _write_criterion_tests(
    project: Project, options: "ExportOptions", writers: dict[str, "_SplitWriter"], test_groups: set[str]
) -> None:
    """Each ``test:<criterion>`` split: the export's rows with that criterion, of the test prompts only (the
    same prompts as the ``test`` split, so nothing a model trained on is scored)."""
    for name, writer in writers.items():
        seen: set[bytes] = set()
        for rows, tables in iter_rows(project, replace(options, criterion=name.split(":", 1)[1])):
            for row in rows:
                if _row_prompt_hash(row, tables) not in test_groups:
                    continue
                if options.dedupe:
                    key = _dedupe_key(row)
                    if key in seen:
                        continue
                    seen.add(key)
                writer.write(row, canonical(row))


def _row_prompt_hash(row: dict, tables: ItemTables) -> str:
    if "id" in row:
        return tables.prompt_hashes[row["id"]]
    return prompt_hash(row["input"]["messages"])  # openai-dpo rows have no id field


class _SplitWriter:
    """Writes one split as it streams: canonical JSONL, or Parquet in row groups (also the source of ``hf``).

    Rows come one at a time (:meth:`write`) or as Arrow tables with their canonical lines (:meth:`write_batch`,
    the columnar path); either way every row group but the last holds ``PARQUET_BATCH`` rows, so both give the
    same file."""

    PARQUET_BATCH = 50_000

    def __init__(self, folder: Path, name: str, container: str):
        self.container, self.count = container, 0
        self.digest = hashlib.sha256()
        self.path = folder / f"{name}.{'jsonl' if container == 'jsonl' else 'parquet'}"
        self.file = open(self.path, "wb") if container == "jsonl" else None
        self.buffer: list[dict] = []
        self.tables: list = []  # pyarrow tables of the columnar path, not yet written
        self.buffered = 0
        self.writer = None

    def write(self, row: dict, data: bytes) -> None:
        self.digest.update(data + b"\n")
        self.count += 1
        if self.file is not None:
            self.file.write(data + b"\n")
            return
        self.buffer.append(row)
        if len(self.buffer) >= self.PARQUET_BATCH:
            self._flush()

    def write_batch(self, table, lines) -> None:
        """Rows as a pyarrow table, with ``lines`` (a binary array) the canonical bytes of each plus a newline."""
        data = _joined(lines)
        self.digest.update(data)
        self.count += table.num_rows
        if self.file is not None:
            self.file.write(data)
            return
        self.tables.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.PARQUET_BATCH:
            self._flush_tables(self.PARQUET_BATCH)

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.buffer:
            return
        if self.writer is None:
            table = pa.Table.from_pylist(self.buffer)
        else:
            try:
                table = pa.Table.from_pylist(self.buffer, schema=self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ExportError(f"Rows of this export change column types midway ({exc}); use jsonl.") from None
        self._write_table(table)
        self.buffer = []

    def _flush_tables(self, size: int | None = None) -> None:
        import pyarrow as pa

        if not self.tables:
            return
        # One contiguous array per column, as from_pylist makes: the Parquet writer's pages then fall where the
        # row path's do, and the files are byte for byte the same.
        table = pa.concat_tables(self.tables).combine_chunks()
        size = table.num_rows if size is None else size
        self._write_table(table.slice(0, size))
        rest = table.slice(size)
        self.tables, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def _write_table(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            # As from_pylist infers it: a column with no value at all has the null type.
            for i, column in enumerate(table.columns):
                if column.null_count == len(column) and column.type != pa.null():
                    table = table.set_column(i, table.field(i).name, pa.nulls(len(column)))
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            for i, (field_, wanted) in enumerate(zip(table.schema, self.writer.schema)):
                column = table.column(i)
                if field_.type == wanted.type:
                    continue
                if wanted.type != pa.null() or column.null_count != len(column):
                    raise ExportError(
                        f"Rows of this export change column types midway ({field_.name}: {wanted.type} then {field_.type}); use jsonl."
                    )
                table = table.set_column(i, wanted, pa.nulls(len(column)))
        self.writer.write_table(table)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            return
        self._flush()
        self._flush_tables()
        if self.writer is None:  # an empty split still gets a readable file
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({}), self.path)
        else:
            self.writer.close()


def _joined(array) -> memoryview:
    """The values of a binary array end to end (its rows in order), without copying."""
    if len(array) == 0:
        return memoryview(b"")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    return memoryview(array.buffers()[2])[offsets[0] : offsets[-1]]


@dataclass
class ExportResult:
    """``aggregation``: ``method`` and, for a model, its fit's ``iterations`` and ``converged`` (the card's)."""

    counts: dict[str, int]
    content_hash: str
    files: dict[str, Path]
    aggregation: dict = field(default_factory=dict)


def write_export(project: Project, options: "ExportOptions", folder: Path, columnar: bool = True) -> ExportResult:
    """Stream the export into ``folder``: ``train.<jsonl|parquet>`` and, with a test size, ``test.…`` and the
    :func:`criterion_tests` splits (``test:<criterion>``, in :func:`criterion_file` files); ``hf`` adds a
    ``dataset`` folder (``datasets.DatasetDict.save_to_disk``) built from the Parquet files, the criterion
    splits as datasets of their own under ``dataset/criteria/``.

    Deduplicates rows (identical but for their id) when ``options.dedupe``, and hashes the canonical bytes of
    every row split by split: the content hash does not depend on the container.

    The exports :func:`fits_columns` names take the columnar path (:func:`iter_trl_batches`); ``columnar=False``
    sends them through the general row by row path instead, the reference the tests compare it with.
    """
    check_options(project, options)
    folder = Path(folder)
    test_groups = test_prompts(project, options)
    names = ["train", "test"] if options.test_size else ["train"]
    writers = {name: _SplitWriter(folder, name, options.container) for name in names}
    criteria = {
        f"test:{c}": _SplitWriter(folder, criterion_file(c), options.container)
        for c in criterion_tests(project, options)
    }
    seen: set[bytes] = set()
    fit: dict = {}  # what a model aggregation found, for the card
    # An export allocates millions of small acyclic dicts and lists; the cyclic garbage collector would scan
    # them again and again (a third of the run time), while reference counting frees them anyway. What exists
    # before the export (Django, pandas, pyarrow: a million objects) is frozen, so that the one collection
    # per chunk of the general path scans only the export's own objects. (The columnar path makes a few
    # hundred objects per chunk, not millions; the odd cycle among them waits for the end of the export.)
    collecting, freezing = gc.isenabled(), gc.get_freeze_count() == 0
    gc.disable()
    if freezing:
        gc.freeze()
    try:
        written = False
        if columnar and fits_columns(project, options):
            try:
                for batch in iter_trl_batches(project, options, with_hashes=bool(test_groups)):
                    _write_batch(batch, writers, seen, test_groups, options.dedupe)
                written = True
            except _Conversational:  # start again on the general path, from empty files
                for writer in writers.values():
                    writer.close()
                writers = {name: _SplitWriter(folder, name, options.container) for name in names}
                seen.clear()
        if not written:
            for rows, tables in iter_rows(project, options, fit):
                gc.collect()  # once per chunk: frees the previous chunk's cycles (pandas has some)
                for row in rows:
                    data = canonical(row)
                    if options.dedupe:
                        key = _dedupe_key(row)
                        if key in seen:
                            continue
                        seen.add(key)
                    split = "test" if test_groups and _row_prompt_hash(row, tables) in test_groups else "train"
                    writers[split].write(row, data)
        _write_criterion_tests(project, options, criteria, test_groups)
    finally:
        for writer in (*writers.values(), *criteria.values()):
            writer.close()
        if freezing:
            gc.unfreeze()
        if collecting:
            gc.enable()
    digest = hashlib.sha256()
    every = {**writers, **criteria}
    for name in sorted(every):
        digest.update(f"{name}:{every[name].digest.hexdigest()}\n".encode())
    files = {name: writer.path for name, writer in every.items()}
    if options.container == "hf":
        import datasets

        def dataset(name):
            return (
                datasets.Dataset.from_parquet(str(files[name])) if every[name].count else datasets.Dataset.from_list([])
            )

        datasets.DatasetDict({name: dataset(name) for name in writers}).save_to_disk(str(folder / "dataset"))
        # A DatasetDict split name cannot hold a ":", so each criterion split is a dataset of its own.
        for name in criteria:
            dataset(name).save_to_disk(str(folder / "dataset" / "criteria" / criteria[name].path.stem))
        for path in files.values():
            path.unlink()
        files = {name: folder / "dataset" / name for name in writers} | {
            name: folder / "dataset" / "criteria" / w.path.stem for name, w in criteria.items()
        }
    aggregation = {"method": options.aggregate, **fit}
    return ExportResult({name: w.count for name, w in every.items()}, digest.hexdigest(), files, aggregation)


_BLAKE2B_16 = functools.partial(hashlib.blake2b, digest_size=16)  # the deduplication key of a row's bytes


_DIGEST = operator.methodcaller("digest")


def _write_batch(
    batch: "RowBatch", writers: dict[str, _SplitWriter], seen: set[bytes], test_groups: set[str], dedupe: bool
) -> None:
    """The columnar path's half of write_export's loop: deduplicate, split and write one batch of rows."""
    n = batch.table.num_rows
    if not n:
        return
    keep = np.ones(n, dtype=bool)
    if dedupe:
        digests = list(map(_DIGEST, map(_BLAKE2B_16, batch.keys.to_pylist())))
        fresh = set(digests)
        if len(fresh) == n and seen.isdisjoint(fresh):  # the usual case: every row is new, no loop in Python
            seen |= fresh
        else:
            add = seen.add
            keep = np.fromiter((d not in seen and not add(d) for d in digests), dtype=bool, count=n)
    test = np.zeros(n, dtype=bool)
    if test_groups:
        test = np.fromiter((h in test_groups for h in batch.prompt_hashes), dtype=bool, count=n)
    for name, writer in writers.items():
        mask = keep & (test if name == "test" else ~test)
        if mask.all():
            writer.write_batch(batch.table, batch.lines)
        elif mask.any():
            writer.write_batch(batch.table.filter(mask), batch.lines.filter(mask))


def build_splits(project: Project, options: "ExportOptions") -> dict[str, list[dict]]:
    """The export's rows by split, in memory (for small projects and tests)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = write_export(project, ExportOptions.from_dict({**options.to_dict(), "container": "jsonl"}), Path(tmp))
        return {
            name: [orjson.loads(line) for line in path.read_bytes().splitlines()] for name, path in result.files.items()
        }


def export_to(project: Project, options: "ExportOptions", out: Path) -> ExportResult:
    """``export_dataset``: write to ``out`` atomically — a file for one jsonl or parquet split, else a folder
    (``<split>.<container>`` files, or the DatasetDict folder for hf)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result = write_export(project, options, tmp)
        if options.container == "hf":
            target = tmp / "dataset"
        elif list(result.files) == ["train"]:
            target = result.files["train"]
        else:
            target = tmp
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def snapshot_files(snapshot: Snapshot) -> dict[str, str]:
    """Split name → path of its data (a file, or a folder for hf): ``train``, ``test`` and ``test:<criterion>``."""
    container = snapshot.options["container"]
    files = {}
    for name in snapshot.split_counts:
        stem = criterion_file(name.split(":", 1)[1]) if name.startswith("test:") else name
        if container == "hf":
            files[name] = str(snapshot.folder / "dataset" / ("criteria/" + stem if name.startswith("test:") else name))
        else:
            files[name] = str(snapshot.folder / f"{stem}.{container}")
    return files
