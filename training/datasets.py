"""The files a run trains and evaluates on.

A run trains on its snapshot's ``train`` split and reports accuracy on its ``test`` split. A criterion reward model
(``criterion=helpfulness``) trains on a snapshot exported with that criterion (annotate.exports'
``ExportOptions.criterion``). When the project has criteria, a run also reports accuracy per criterion: the other
criteria's preferences on the snapshot's test prompts — only those, so nothing the model trained on is scored —
written under the run's work folder as ``test:<criterion>`` splits.
"""

from __future__ import annotations

import dataclasses

import orjson

from annotate.exports import ExportOptions, build_splits, canonical, snapshot_files
from annotate.models import Kind

from .runners.reward import load_split


def _write_jsonl(rows: list[dict], path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    tmp.replace(path)
    return str(path)


def criterion_test_rows(snapshot, criterion: str, test_prompts: set[bytes]) -> list[dict]:
    """The project's ``criterion`` preferences (the snapshot's other options) whose prompt is a test prompt."""
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    options = {k: v for k, v in snapshot.options.items() if k in fields}
    options.update(criterion=criterion, test_size=0.0, container="jsonl")
    rows = build_splits(snapshot.project, ExportOptions.from_dict(options))["train"]
    return [row for row in rows if canonical(row["prompt"]) in test_prompts]


def run_datasets(run) -> tuple[dict[str, str], str]:
    """``({"train": path, "test": path, "test:<criterion>": path, ...}, hash of the training rows)``."""
    snapshot = run.snapshot
    paths = dict(snapshot_files(snapshot))
    project = snapshot.project
    criterion = (run.config or {}).get("criterion") or ""
    criteria = [c for c in (project.criteria or []) if c != criterion]
    if "test" not in paths or not criteria:
        return paths, snapshot.content_hash
    if (run.config or {}).get("objective") == "regression":
        # Ratings rows carry every criterion's scores: the runner reads each from the same test file.
        paths.update({f"test:{c}": paths["test"] for c in criteria})
        return paths, snapshot.content_hash
    if project.kind not in (Kind.PAIRWISE, Kind.RATING):
        return paths, snapshot.content_hash
    test_prompts = {canonical(prompt) for prompt in load_split(paths["test"])["prompt"]}
    for other in criteria:
        rows = criterion_test_rows(snapshot, other, test_prompts)
        if rows:
            paths[f"test:{other}"] = _write_jsonl(rows, run.work_dir / "data" / f"test-{other}.jsonl")
    return paths, snapshot.content_hash
