"""The files a run trains and evaluates on.

Per kind (:func:`run_datasets`): ``reward`` and ``dpo`` read the snapshot's ``trl`` splits (or ``ratings`` for a
regression reward model); ``sft`` reads an ``sft`` snapshot (demonstrations) or a ``trl`` one (its chosen
responses); the prompt-driven kinds (generate, rejection_sampling, ppo, grpo, rloo, evaluate) read a **prompts
file** written into the run's work folder at launch (:func:`select_prompts`, :func:`write_prompts`), rows of
``{"prompt", "item", "external_id"}`` (training/runners/policy.py). Prompts come from the project's items (all, or
only those annotators disagreed on, or those a reward model is least sure about), from a snapshot's train or test
prompts, or from a file; the choice is recorded in ``run.inputs``. Written at launch, so the prompts are those
the launcher saw, a retry reads the same ones, and bad input is refused before anything exists.

A run trains on its snapshot's ``train`` split and reports accuracy on its ``test`` split. A criterion reward model
(``criterion=helpfulness``) trains on a snapshot exported with that criterion (annotate.exports'
``ExportOptions.criterion``). When the project has criteria, a run also reports accuracy per criterion: the other
criteria's preferences on the snapshot's test prompts — only those, so nothing the model trained on is scored —
the snapshot's own ``test:<criterion>`` splits (``annotate.exports.writing.criterion_tests``), written and hashed with it.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import orjson
import pandas as pd

from annotate import judging
from annotate.exports import ExportError, canonical, snapshot_files
from annotate.exports.aggregation import pair_votes
from annotate.exports.reading import vote_frame
from annotate.imports import RowError, normalize_messages
from annotate.models import Item, JudgeVote, Kind, Response, Task

from . import kinds
from .runners.data import load_split


def _write_jsonl(rows: list[dict], path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    tmp.replace(path)
    return str(path)


def run_datasets(run) -> tuple[dict[str, str], str]:
    """``({"train": path, "test": path, "test:<criterion>": path, ...}, hash of the training rows)``.

    A snapshot-driven run reads the snapshot's own files and nothing else (no votes are read again here), so
    every split it trains or is scored on is covered by the snapshot's content hash. A snapshot made before
    per-criterion test splits existed has none, and its runs report no per-criterion accuracy."""
    kind = kinds.get(run.kind)
    if kind.reads == kinds.PROMPTS:
        return prompt_datasets(run)
    if kind.reads == kinds.ITEMS:
        return judge_datasets(run)
    if run.inputs.get("from_run"):  # sft on another run's demonstrations (train sft --from-run N)
        return demonstration_datasets(run)
    snapshot = run.snapshot
    paths = dict(snapshot_files(snapshot))
    if kind.publishes != kinds.REWARD_MODEL:  # a policy (sft, dpo) reads the train and test splits as they are
        return {name: path for name, path in paths.items() if name in ("train", "test")}, snapshot.content_hash
    criterion = (run.config or {}).get("criterion") or ""
    criteria = [c for c in (snapshot.project.criteria or []) if c != criterion]
    if "test" in paths and criteria and (run.config or {}).get("objective") == "regression":
        # Ratings rows carry every criterion's scores: the runner reads each from the same test file.
        paths.update({f"test:{c}": paths["test"] for c in criteria})
    # The run's own criterion is its test split; an empty split (every test preference a tie, say) has nothing to score.
    empty = {name for name, n in snapshot.split_counts.items() if name.startswith("test:") and not n}
    return {
        name: path for name, path in paths.items() if name != f"test:{criterion}" and name not in empty
    }, snapshot.content_hash


# --- prompts of the policy kinds ------------------------------------------------------------------------

PROMPT_SOURCES = ("items", "disagreement", "low-confidence", "snapshot-train", "snapshot-test", "file")
MAX_PROMPT_FILE_BYTES = 50 * 1024 * 1024


class PromptsError(ValueError):
    """The prompts cannot be chosen as asked; the message says why (training.launching turns it into TrainingError)."""


def prompt_row(prompt, item=None, external_id="") -> dict:
    return {"prompt": prompt, "item": item, "external_id": external_id or ""}


def item_prompt_rows(items) -> list[dict]:
    """One row per distinct prompt of ``items`` (an Item queryset), in id order."""
    rows, seen = [], set()
    for pk, prompt, external_id, digest in items.order_by("id").values_list(
        "id", "prompt", "external_id", "prompt_hash"
    ):
        if digest in seen:
            continue
        seen.add(digest)
        rows.append(prompt_row(prompt, pk, external_id))
    return rows


def disagreed_items(pairs: pd.DataFrame) -> set[int]:
    """Items on which annotators disagree: some pair of responses got different answers (a winner, the other
    winner, or a tie) from two or more votes. ``pairs`` are :func:`annotate.exports.aggregation.pair_votes` rows.

    >>> disagreed_items(pd.DataFrame({"item": [1, 1, 2, 2], "a": [5, 5, 7, 7], "b": [6, 6, 8, 8],
    ...                               "winner": pd.array([5, 6, 7, 7], dtype="Int64")}))
    {1}
    """
    if pairs.empty:
        return set()
    answers = pairs.assign(answer=pairs["winner"].fillna(-1).astype("int64"))
    distinct = answers.groupby(["item", "a", "b"])["answer"].nunique()
    return {int(item) for (item, _, _), n in distinct.items() if n > 1}


def project_pair_votes(project) -> pd.DataFrame:
    """Every current vote of the project as pairwise votes (pairwise, ranking and numeric rating projects)."""
    if project.kind not in (Kind.PAIRWISE, Kind.RANKING, Kind.RATING):
        raise PromptsError(f"A {project.kind} project has no preferences to disagree on.")
    votes = vote_frame(project, with_data=project.kind != Kind.PAIRWISE)
    responses: dict[int, list[tuple[int, str]]] = {}
    for item_id, rid in (
        Response.objects.filter(item__project=project).order_by("item", "index").values_list("item_id", "id")
    ):
        responses.setdefault(item_id, []).append((rid, ""))
    try:
        return pair_votes(project.kind, votes, responses)
    except ExportError as exc:
        raise PromptsError(str(exc)) from None


def confidence_gaps(scores: list[list[float]]) -> list[float]:
    """How sure a reward model is about an item: the gap between its two best-scored responses (small = unsure).

    >>> confidence_gaps([[0.1, 0.9], [2.0, -1.0, 1.5]])
    [0.8, 0.5]
    """
    gaps = []
    for values in scores:
        top = sorted(values, reverse=True)
        gaps.append(round(top[0] - top[1], 12))
    return gaps


def low_confidence_rows(project, scorer, max_prompts: int | None) -> list[dict]:
    """The items whose responses ``scorer`` (a RewardScorer or CombinedScorer) separates least: the lower half
    by confidence gap, or the ``max_prompts`` least confident."""
    items = list(
        Item.objects.filter(project=project, purpose=Item.Purpose.NORMAL)
        .order_by("id")
        .values_list("id", "prompt", "external_id")
    )
    texts: dict[int, list[str]] = {}
    for item_id, text in (
        Response.objects.filter(item__project=project, item__purpose=Item.Purpose.NORMAL)
        .order_by("item", "index")
        .values_list("item_id", "text")
    ):
        texts.setdefault(item_id, []).append(text)
    items = [row for row in items if len(texts.get(row[0], [])) >= 2]
    if not items:
        raise PromptsError(
            f"Project {project.slug} has no items with two or more responses for a reward model to compare."
        )
    flat_prompts, flat_texts, sizes = [], [], []
    for item_id, prompt, _ in items:
        flat_prompts += [_prompt_text(prompt)] * len(texts[item_id])
        flat_texts += texts[item_id]
        sizes.append(len(texts[item_id]))
    flat_scores = scorer.score(flat_prompts, flat_texts)
    grouped, start = [], 0
    for size in sizes:
        grouped.append(list(flat_scores[start : start + size]))
        start += size
    gaps = confidence_gaps(grouped)
    keep = max_prompts or math.ceil(len(items) / 2)
    order = sorted(range(len(items)), key=lambda i: (gaps[i], items[i][0]))[:keep]
    return [dict(prompt_row(items[i][1], items[i][0], items[i][2]), confidence_gap=gaps[i]) for i in sorted(order)]


def _prompt_text(messages):
    """What a reward model reads as the prompt: the text of a single user message, else the conversation."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return messages


def snapshot_prompt_rows(snapshot, split: str) -> list[dict]:
    """The distinct prompts of a snapshot's split (trl rows' ``prompt``, sft rows' ``messages`` minus the answer)."""
    files = snapshot_files(snapshot)
    if split not in files:
        raise PromptsError(
            f"Snapshot {snapshot.pk} has no {split} split (make one with a test share, e.g. test_size=0.1)."
        )
    path = Path(files[split])
    if path.is_file() and not path.stat().st_size:
        raise PromptsError(f"The {split} split of snapshot {snapshot.pk} is empty.")
    rows, seen = [], set()
    for row in load_split(str(path)).to_list():
        if "prompt" in row:
            prompt = row["prompt"]
        elif "messages" in row:
            prompt = row["messages"][:-1]
        else:
            raise PromptsError(f"Snapshot {snapshot.pk} ({snapshot.options.get('format')}) has no prompts to read.")
        messages = (
            normalize_messages(prompt)
            if isinstance(prompt, str)
            else [dict(role=m["role"], content=m["content"]) for m in prompt]
        )
        key = canonical(messages)
        if key in seen:
            continue
        seen.add(key)
        rows.append(prompt_row(messages, None, str(row.get("id") or "")))
    ids = {r["external_id"] for r in rows if r["external_id"]}
    external = dict(Item.objects.filter(project=snapshot.project, external_id__in=ids).values_list("external_id", "id"))
    for row in rows:
        row["item"] = external.get(row["external_id"])
    if not rows:
        raise PromptsError(f"The {split} split of snapshot {snapshot.pk} holds no prompts.")
    return rows


def parse_prompt_file(data: bytes, name: str = "the prompts file") -> list[dict]:
    """Prompts from a JSONL file: ``{"prompt": text or messages, "id"?: ...}`` per line (an import row's
    ``responses`` are ignored). Every bad line is reported by number; nothing is accepted from a bad file."""
    if len(data) > MAX_PROMPT_FILE_BYTES:
        raise PromptsError(f"{name} is larger than {MAX_PROMPT_FILE_BYTES // (1024 * 1024)} MiB.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptsError(f"{name}, line {line}: not valid UTF-8.") from None
    rows, errors = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            errors.append(f"line {number}: not JSON")
            continue
        if not isinstance(row, dict) or "prompt" not in row:
            errors.append(f'line {number}: a row needs a "prompt" (text or a list of {{"role", "content"}} messages)')
            continue
        try:
            messages = normalize_messages(row["prompt"])
        except RowError as exc:
            errors.append(f"line {number}: {str(exc).rstrip('.')}")
            continue
        external = row.get("id", row.get("external_id", ""))
        rows.append(prompt_row(messages, None, "" if external is None else str(external)))
    if errors:
        shown = "; ".join(errors[:20]) + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise PromptsError(f"{name} was refused: {shown}.")
    if not rows:
        raise PromptsError(f"{name} holds no prompts.")
    return rows


def select_prompts(
    project,
    source: str,
    *,
    snapshot=None,
    scorer=None,
    data: bytes | None = None,
    file_name: str = "",
    max_prompts: int | None = None,
) -> list[dict]:
    """The prompts a run reads, by ``source`` (PROMPT_SOURCES); PromptsError says why none can be chosen."""
    if source not in PROMPT_SOURCES:
        raise PromptsError(f"Unknown prompts source {source!r}: use one of {', '.join(PROMPT_SOURCES)}.")
    if max_prompts is not None and max_prompts < 1:
        raise PromptsError("max_prompts must be at least 1.")
    if source == "file":
        if data is None:
            raise PromptsError("prompts_from=file needs a prompts file (--prompts-file, or the upload).")
        rows = parse_prompt_file(data, file_name or "the prompts file")
    elif data is not None:
        raise PromptsError(f"A prompts file was given but the prompts come from {source}; use prompts_from=file.")
    elif source == "items":
        rows = item_prompt_rows(Item.objects.filter(project=project, purpose=Item.Purpose.NORMAL))
        if not rows:
            raise PromptsError(f"Project {project.slug} has no items to take prompts from.")
    elif source == "disagreement":
        ids = disagreed_items(project_pair_votes(project))
        rows = item_prompt_rows(Item.objects.filter(project=project, purpose=Item.Purpose.NORMAL, pk__in=ids))
        if not rows:
            raise PromptsError(
                f"No item of {project.slug} has annotators who disagree (it takes two or more votes on an item)."
            )
    elif source == "low-confidence":
        if scorer is None:
            raise PromptsError(
                "prompts_from=low-confidence needs a reward model to measure confidence with (--reward-model)."
            )
        return low_confidence_rows(project, scorer, max_prompts)
    else:
        if snapshot is None:
            raise PromptsError(f"prompts_from={source} needs a snapshot (--snapshot).")
        rows = snapshot_prompt_rows(snapshot, source.split("-")[1])
    return rows[:max_prompts] if max_prompts else rows


def prompts_hash(rows: list[dict]) -> str:
    return hashlib.sha256(b"".join(canonical(row) + b"\n" for row in rows)).hexdigest()


def write_prompts(run, rows: list[dict], test_rows: list[dict] | None = None) -> dict[str, str]:
    """The prompts file (and a test one) into the run's work folder, each written whole or not at all."""
    folder = run.prompts_path.parent
    paths = {"train": _write_jsonl(rows, run.prompts_path)}
    if test_rows:
        paths["test"] = _write_jsonl(test_rows, folder / "prompts-test.jsonl")
    return paths


def prompt_datasets(run) -> tuple[dict[str, str], str]:
    """A prompt-driven run's files: the prompts written at launch (the hash recorded then, or of the file now)."""
    if not run.prompts_path.is_file():
        raise PromptsError(f"The prompts file of run {run.pk} is missing from {run.prompts_path}.")
    paths = {"train": str(run.prompts_path)}
    test = run.prompts_path.with_name("prompts-test.jsonl")
    if test.is_file():
        paths["test"] = str(test)
    digest = (run.inputs or {}).get("prompts_hash") or hashlib.sha256(run.prompts_path.read_bytes()).hexdigest()
    return paths, digest


# --- demonstrations written by another run (critique_revise's revisions) ---------------------------------


def demonstrations_path(run):
    return run.work_dir / "data" / "demonstrations.jsonl"


def write_demonstrations(run, data: bytes) -> str:
    """The demonstrations file of another run (rows of the ``sft`` export), copied into this run's folder at launch."""
    path = demonstrations_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return str(path)


def demonstration_datasets(run) -> tuple[dict[str, str], str]:
    """An sft run on another run's demonstrations: the copy made at launch, and its sha256 recorded then."""
    path = demonstrations_path(run)
    if not path.is_file():
        raise PromptsError(f"The demonstrations of run {run.pk} are missing from {path}.")
    return {"train": str(path)}, run.inputs["from_run"]["hash"]


# --- the items an AI judge votes on (the judge kind) --------------------------------------------------------


def judge_items_path(run) -> Path:
    return run.work_dir / "data" / "items.jsonl"


def judge_votes_path(run) -> Path:
    """Where a judge run's runner appends its votes as it goes (kept across attempts: a retry skips them)."""
    return run.work_dir / "data" / "votes.jsonl"


def judge_items(judge, *, max_items: int | None = None, principle: dict | None = None) -> list[dict]:
    """The rows a judge run reads: the project's normal and gold items (gold: so that a judge's accuracy can be
    measured) that ``judge`` has no vote on, in id order, at most ``max_items``. Each row holds the prompt, the
    responses, the answer's spec and, for the generative backends, the conversations the judge is shown
    (annotate.judging.conversations: pairwise items in both orders)."""
    project = judge.project
    voted = JudgeVote.objects.filter(judge=judge).values("item_id")
    tasked = Task.objects.filter(annotator=judge.user).values("item_id")
    items = (
        Item.objects.filter(project=project, purpose__in=[Item.Purpose.NORMAL, Item.Purpose.GOLD])
        .exclude(pk__in=voted)
        .exclude(pk__in=tasked)
        .order_by("id")
        .values_list("id", "prompt")
    )
    items = list(items[:max_items] if max_items else items)
    texts: dict[int, list[str]] = {}
    for item_id, text in (
        Response.objects.filter(item_id__in=[pk for pk, _ in items])
        .order_by("item", "index")
        .values_list("item_id", "text")
        if len(items) <= 5000
        else Response.objects.filter(item__project=project).order_by("item", "index").values_list("item_id", "text")
    ):
        texts.setdefault(item_id, []).append(text)
    generative = judge.backend != "reward-model"
    template = judging.judge_template(judge) if generative else ""
    rows = []
    for item_id, prompt in items:
        responses = texts.get(item_id, [])
        spec = judging.answer_spec(project, len(responses), responses)
        row = {"item": item_id, "prompt": prompt, "responses": responses, "spec": spec.to_dict()}
        if generative:
            row["conversations"] = judging.conversations(
                template,
                spec,
                prompt=prompt,
                responses=responses,
                instructions=project.instructions,
                principle=principle,
                steps=[project.split_steps(text) for text in responses] if project.kind == Kind.STEPS else None,
            )
        rows.append(row)
    return rows


def write_judge_items(run, rows: list[dict]) -> str:
    """The items file, written whole or not at all, and an empty votes file beside it."""
    path = _write_jsonl(rows, judge_items_path(run))
    judge_votes_path(run).touch()
    return path


def judge_datasets(run) -> tuple[dict[str, str], str]:
    """A judge run's files: the items written at launch (their hash recorded then) and the votes file it appends to."""
    items = judge_items_path(run)
    if not items.is_file():
        raise PromptsError(f"The items file of run {run.pk} is missing from {items}.")
    digest = (run.inputs or {}).get("items_hash") or hashlib.sha256(items.read_bytes()).hexdigest()
    return {"items": str(items), "votes": str(judge_votes_path(run))}, digest
