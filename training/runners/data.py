"""The files the runners read and write, in one place: snapshot splits (what ``annotate`` exports: JSONL, Parquet
or a ``save_to_disk`` folder), prompt files (the policy kinds' contract, see policy.py) and JSONL outputs.

    rows = read_split("train.jsonl")                 # → [{"prompt": ..., "chosen": ..., "rejected": ...}, ...]
    prompts = read_prompt_rows("prompts.jsonl")      # → [{"prompt", "item", "external_id"}, ...]
    as_messages("Hi?", "user")                       # → [{"role": "user", "content": "Hi?"}]
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from .base import RunnerError


def load_split(path: str):
    """A ``datasets.Dataset`` from a snapshot split: a .jsonl or .parquet file, or a ``save_to_disk`` folder."""
    import datasets  # here, not at the top: the web process imports this module (training.datasets reads splits)

    path = str(path)
    if Path(path).is_dir():
        return datasets.load_from_disk(path)
    builder = "parquet" if path.endswith(".parquet") else "json"
    return datasets.load_dataset(builder, data_files=path, split="train")


def read_split(path: str) -> list[dict]:
    """The rows of a snapshot split: a .jsonl or .parquet file, or a ``save_to_disk`` folder."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".jsonl"):
        return load_split(str(path)).to_list()
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise RunnerError(f"{path}, line {number}: not JSON ({exc}).") from None
    return rows


def as_messages(value, role: str) -> list[dict]:
    """A prompt or a response, as text or as messages, as a list of ``{"role", "content"}`` messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_prompt_rows(path: str | Path) -> list[dict]:
    """The rows of a prompt file (JSONL); RunnerError names the line of a malformed one."""
    rows = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise RunnerError(f"{path}, line {number}: not JSON ({exc}).") from None
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
                raise RunnerError(f'{path}, line {number}: a row needs a non-empty "prompt" (text or messages).')
            if isinstance(prompt, list):
                _check_messages(prompt, path, number)
            rows.append({"prompt": prompt, "item": row.get("item"), "external_id": row.get("external_id", "")})
    if not rows:
        raise RunnerError(f"{path} holds no prompts.")
    return rows


def write_jsonl(rows, path: str | Path) -> str:
    """Rows to a JSONL file, written whole or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    tmp.replace(path)
    return str(path)


def _check_messages(messages: list, path, number: int) -> None:
    for message in messages:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise RunnerError(f'{path}, line {number}: each prompt message needs a "role" and a "content" (text).')


def normalised_weights(dataset):
    """A training split's ``weight`` column (``pair_weights``) divided by its mean, so that the training pairs' mean
    weight is 1: the weighted loss keeps the unweighted loss's scale (and learning rate), and only the pairs'
    shares change. Weights must be finite and at least 0, and not all 0."""
    weights = [float(w) if w is not None else math.nan for w in dataset["weight"]]
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise RunnerError("The train split's weight column must hold numbers of at least 0 in every row.")
    mean = sum(weights) / len(weights)
    if mean <= 0:
        raise RunnerError("Every training pair has weight 0: there is nothing to learn from.")
    return dataset.remove_columns("weight").add_column("weight", [w / mean for w in weights])
