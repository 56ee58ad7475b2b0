"""Datasets out of Arbiter, in the formats training reads, one module per role:

- :mod:`.options`: :class:`ExportOptions`, the formats, containers and aggregations, and the checks that refuse
  what does not apply;
- :mod:`.reading`: the database reads (items, votes as a DataFrame or as integer columns by binary COPY, prompts
  and texts, the raw format's votes);
- :mod:`.aggregation`: votes → pairwise votes → preferences (majority, every vote, a fitted model) and labels;
- :mod:`.formats`: preferences, rankings, ratings, labels, steps and demonstrations → rows, and the canonical
  bytes of a row;
- :mod:`.general`: the general path, every export's rows a chunk of items at a time (:func:`iter_rows`);
- :mod:`.columnar`: the columnar path, the same rows on whole columns for the export that gets large (pairwise
  votes → TRL rows by majority);
- :mod:`.writing`: splits, deduplication, files (JSONL, Parquet, a Hugging Face DatasetDict) and the content hash;
- :mod:`.card`: a snapshot's dataset card.

The ORM reads are separate from the transforms, which are pure functions of DataFrames and dicts. Creating a
snapshot (a database write) is ``annotate.actions.create_snapshot``. The names below are the package's interface
to the rest of Arbiter; the others are imported from the module that owns them.
"""

from .card import dataset_card
from .formats import canonical
from .general import build_rows, iter_rows
from .options import AGGREGATES, CONTAINERS, FORMAT_AGGREGATES, FORMATS, KIND_FORMATS, ExportError, ExportOptions
from .writing import ExportResult, build_splits, export_to, snapshot_files, write_export

__all__ = [
    "AGGREGATES",
    "CONTAINERS",
    "FORMATS",
    "FORMAT_AGGREGATES",
    "KIND_FORMATS",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "build_rows",
    "build_splits",
    "canonical",
    "dataset_card",
    "export_to",
    "iter_rows",
    "snapshot_files",
    "write_export",
]
