"""Rounds of items made from a run's output: generate's candidates (a new round of the target project),
rejection sampling's kept samples sent for review, and evaluate's comparisons as a human-evaluation round.

Each round is imported with annotate.actions.import_items and linked to its run by a RunRound (its ``purpose``),
which makes the lineage chain round → snapshot → reward model → policy → next round (selectors.round_chain).
:func:`create_candidate_round` runs on the worker, in the transaction that publishes the run; the other two are
actions a researcher takes on a finished run.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson
from django.db import transaction

from annotate.actions import import_items
from annotate.imports import ImportFailed, ParsedItem, RowError, normalize_messages
from annotate.models import Project, Round

from . import kinds
from .lifecycle import PublishFailed, lock_running, succeed
from .models import ModelArtifact, RoundPurpose, RunRound, RunStatus, TrainingRun
from .selectors import TrainingError

# Field names a generate config may use for K, the samples per prompt (first found wins).
SAMPLES_FIELDS = ("num_samples", "samples_per_prompt", "num_return_sequences", "k", "num_generations")


def samples_field(kind: kinds.TrainingKind) -> str | None:
    names = {row["name"] for row in kind.config.describe()}
    return next((name for name in SAMPLES_FIELDS if name in names), None)


def model_label(path: str, artifact: ModelArtifact | None) -> str:
    """The name a response's ``model_name`` gets: the registered artifact's name, else the folder's."""
    return (artifact.name if artifact else Path(path).name)[:200]


def lineage_snapshot(run: TrainingRun) -> dict:
    """The votes behind a policy: its artifact's snapshot (or the run's own, for prompts from a snapshot)."""
    artifact = run.base_artifact
    if artifact is not None and artifact.snapshot_id:
        return {"id": artifact.snapshot_id, "hash": artifact.snapshot_hash}
    if artifact is not None and artifact.run_id:
        rewards = list(artifact.run.reward_artifacts.exclude(snapshot=None).values_list("snapshot_id", "snapshot_hash"))
        if rewards:
            return {"id": rewards[0][0], "hash": rewards[0][1]}
    return {"id": run.snapshot_id, "hash": run.snapshot_hash} if run.snapshot_id else {}


def candidate_items(run: TrainingRun, rows: list[dict], target: Project) -> tuple[list, int]:
    """Candidates rows → items for ``target`` (ParsedItem), each response labelled with the model that wrote it.
    Identical samples of a prompt count once; a prompt left with too few distinct samples for the target's kind
    is skipped (returned as the count)."""
    low, high = kinds.TARGET_RESPONSES[target.kind]
    label = model_label(run.base_model, run.base_artifact)
    parsed, skipped = [], 0
    for number, row in enumerate(rows, 1):
        try:
            prompt = normalize_messages(row["prompt"])
        except RowError as exc:
            raise PublishFailed(f"candidates.jsonl, line {number}: {exc}") from None
        responses, seen = [], set()
        for index, sample in enumerate(row.get("responses") or []):
            text = sample.get("text") if isinstance(sample, dict) else None
            if not isinstance(text, str) or not text.strip() or text in seen:
                continue
            seen.add(text)
            metadata = {
                "run": run.pk,
                "artifact": run.base_artifact_id,
                "sample": index,
                "finish_reason": sample.get("finish_reason", ""),
            }
            if sample.get("score") is not None:
                metadata["score"] = sample["score"]
            if isinstance(sample.get("metadata"), dict):  # critique_revise: stage, principle, critique
                metadata.update(sample["metadata"])
            responses.append({"text": text, "model": label, "metadata": metadata})
        if len(responses) < low:
            skipped += 1
            continue
        source_id = str(row.get("external_id") or row.get("item") or number)
        parsed.append(
            ParsedItem(
                line=number,
                prompt=prompt,
                responses=responses[:high],
                external_id=f"run{run.pk}-{number}-{source_id}"[:200],
                metadata={
                    "generated_by_run": run.pk,
                    "source_item": row.get("item"),
                    "source_external_id": row.get("external_id") or "",
                },
            )
        )
    return parsed, skipped


def create_candidate_round(run: TrainingRun, path: Path, metrics: dict, dataset_hash: str):
    """generate's candidates become a NEW round of the target project, whose ``source`` records the model, the run
    and the snapshot behind the model; the run succeeds in the same transaction. A failure leaves no half round."""
    target = run.target_project or run.project
    if target.kind not in kinds.TARGET_RESPONSES:
        raise PublishFailed(f"Candidates go into a pairwise or ranking project; {target.slug} is {target.kind}.")
    rows = read_output_rows(path)
    parsed, skipped = candidate_items(run, rows, target)
    if not parsed:
        raise PublishFailed(
            f"No prompt got enough distinct samples for a {target.kind} item ({skipped} skipped); nothing was added to {target.slug}."
        )
    source = {
        "kind": "generated",
        "run": run.pk,
        "source_project": run.project.slug,
        "model": {
            "path": run.base_model,
            "artifact": run.base_artifact_id,
            "name": model_label(run.base_model, run.base_artifact),
        },
        "snapshot": lineage_snapshot(run),
        "prompts": run.inputs.get("prompts_from", ""),
        "sampling": {
            k: run.config.get(k)
            for k in ("temperature", "top_p", "max_new_tokens", samples_field(kinds.get(run.kind)))
            if k
        },
    }
    constitution = _constitution_lineage(run, rows)
    if constitution:
        source["constitution"] = constitution
    with transaction.atomic():
        locked = lock_running(run)
        Project.objects.select_for_update().filter(pk=target.pk).first()  # one new round at a time per project
        round_, report = _add_round(
            locked, target, parsed, source, RoundPurpose.CANDIDATES, f"Candidates of run {run.pk}", PublishFailed
        )
        if constitution:
            locked.inputs = {**locked.inputs, "constitution": constitution}
            locked.save(update_fields=["inputs"])
        metrics = {
            **metrics,
            "candidate_items": float(report.created),
            "skipped_prompts": float(skipped + len(report.duplicates)),
            "round": float(round_.number),
        }
        succeed(locked, metrics, dataset_hash)
    return round_


def _constitution_lineage(run: TrainingRun, rows: list[dict]) -> dict:
    """critique_revise: the constitution recorded at launch (sha256, names, templates' hashes) and the principles
    the run drew (every round of every prompt)."""
    recorded = (run.inputs or {}).get("constitution")
    if not recorded:
        return {}
    used = {
        step.get("principle")
        for row in rows
        for step in row.get("rounds") or []
        if isinstance(step, dict) and isinstance(step.get("principle"), str)
    }
    return {**recorded, "principles_used": sorted(used)}


def comparison_outcome(row: dict) -> str | None:
    """``policy``, ``baseline`` or ``tie`` for one comparisons.jsonl row (training/runners/evaluate.py)."""
    winner = row.get("winner")
    return winner if winner in ("policy", "baseline", "tie") else None


def comparison_texts(row: dict) -> tuple[str, str] | None:
    """(new policy's response, baseline's response) of a comparisons.jsonl row."""
    new, old = row.get("policy"), row.get("baseline")
    return (new, old) if isinstance(new, str) and isinstance(old, str) else None


def read_output_rows(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise PublishFailed(f"{path.name}, line {number}: not JSON.") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise PublishFailed(f'{path.name}, line {number}: a row needs a "prompt".')
        rows.append(row)
    return rows


def _run_round(run: TrainingRun, purpose: str):
    return RunRound.objects.filter(run=run, purpose=purpose).select_related("round").first()


def _import_round(run: TrainingRun, target: Project, parsed: list, source: dict, purpose: str, name: str):
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=target.pk).first()  # one new round at a time per project
        made = _run_round(run, purpose)
        if made is not None:
            raise TrainingError(f"Run {run.pk} already made round {made.round.number} of {made.round.project.slug}.")
        return _add_round(run, target, parsed, source, purpose, name, TrainingError)[0]


def _add_round(run: TrainingRun, target: Project, parsed: list, source: dict, purpose: str, name: str, error: type):
    """In the caller's transaction, which holds ``target``'s row lock: ``parsed`` imported into ``target`` as a new
    round named ``name``, linked to ``run`` for ``purpose``; returns (round, import report). A refused import, or one
    that adds nothing, raises ``error`` (the caller's exception)."""
    try:
        report = import_items(target, parsed, source=source)
    except ImportFailed as exc:
        raise error(exc.message) from None
    if not report.created:
        raise error(f"Every one of these items is already in {target.slug}; no round was added.")
    round_ = Round.objects.filter(project=target).order_by("-number").first()
    round_.name = name
    round_.save(update_fields=["name"])
    RunRound.objects.create(run=run, round=round_, purpose=purpose)
    return round_, report


def send_kept_for_review(run: TrainingRun, target: Project, created_by=None):
    """rejection_sampling's kept samples as a new round of ``target`` (a rating, demonstration or steps project:
    one response per item), for annotators to rate, correct or label."""
    kind = run.training_kind
    if kind is None or not kind.review_file or run.status != RunStatus.SUCCEEDED:
        reviewed = " or ".join(k.name for k in kinds.KINDS.values() if k.review_file)
        raise TrainingError(f"Only a succeeded {reviewed} run has kept samples to review.")
    kept = run.work_dir / kind.review_file
    if not kept.is_file():
        raise TrainingError(f"The kept samples of run {run.pk} are missing from {kept}.")
    if target.kind not in kinds.REVIEW_TARGETS:
        raise TrainingError(
            f"Kept samples are one response per prompt: send them to a rating, demonstration or steps project, not a {target.kind} one."
        )
    label = model_label(run.base_model, run.base_artifact)
    parsed = []
    for number, row in enumerate(read_output_rows(kept), 1):
        try:
            prompt = normalize_messages(row["prompt"])
        except RowError as exc:
            raise TrainingError(f"{kind.review_file}, line {number}: {exc}") from None
        metadata = {"run": run.pk, "score": row.get("score"), "mean_score": row.get("mean_score")}
        parsed.append(
            ParsedItem(
                line=number,
                prompt=prompt,
                external_id=f"run{run.pk}-kept-{number}",
                responses=[{"text": str(row.get("response", "")), "model": label, "metadata": metadata}],
                metadata={"kept_by_run": run.pk, "source_item": row.get("item")},
            )
        )
    source = {
        "kind": "review",
        "run": run.pk,
        "model": {"path": run.base_model, "artifact": run.base_artifact_id, "name": label},
        "sent_by": getattr(created_by, "username", None),
    }
    return _import_round(run, target, parsed, source, RoundPurpose.REVIEW, f"Kept samples of run {run.pk} for review")


def create_human_eval_round(run: TrainingRun, target: Project, created_by=None, seed: int | None = None):
    """An evaluate run's comparisons as a pairwise round of ``target``: each item holds the new policy's and the
    baseline's responses in a random order; each response records its arm (``metadata["arm"]``) and the item the
    new one's index, so :func:`training.selectors.human_eval_results` decodes the votes whatever was shown where."""
    kind = run.training_kind
    if kind is None or kind.publishes != kinds.COMPARISONS or run.status != RunStatus.SUCCEEDED:
        evaluating = " or ".join(kinds.names(publishes=kinds.COMPARISONS))
        raise TrainingError(f"Only a succeeded {evaluating} run has comparisons for a human evaluation.")
    if target.kind not in kinds.HUMAN_EVAL_TARGETS:
        raise TrainingError(f"A human evaluation is a pairwise comparison: {target.slug} is a {target.kind} project.")
    path = run.work_dir / "comparisons.jsonl"
    if not path.is_file():
        raise TrainingError(f"The comparisons of run {run.pk} are missing from {path}.")
    baseline = run.inputs.get("baseline", {})
    new_label = model_label(run.base_model, run.base_artifact)
    old_label = (baseline.get("label") or Path(baseline.get("path", "baseline")).name)[:200]
    rng = random.Random(run.pk if seed is None else seed)
    parsed, identical = [], 0
    for number, row in enumerate(read_output_rows(path), 1):
        texts = comparison_texts(row)
        if texts is None:
            raise TrainingError(f"comparisons.jsonl, line {number}: no pair of responses (new and baseline).")
        if texts[0] == texts[1]:
            identical += 1
            continue
        try:
            prompt = normalize_messages(row["prompt"])
        except RowError as exc:
            raise TrainingError(f"comparisons.jsonl, line {number}: {exc}") from None
        arms = [("new", texts[0], new_label), ("baseline", texts[1], old_label)]
        rng.shuffle(arms)
        responses = [
            {"text": text, "model": label, "metadata": {"arm": arm, "run": run.pk}} for arm, text, label in arms
        ]
        new_index = next(i for i, (arm, _, _) in enumerate(arms) if arm == "new")
        parsed.append(
            ParsedItem(
                line=number,
                prompt=prompt,
                responses=responses,
                external_id=f"run{run.pk}-eval-{number}",
                metadata={"human_eval_run": run.pk, "new_index": new_index},
            )
        )
    if not parsed:
        raise TrainingError("Every comparison has identical responses: there is nothing for people to judge.")
    source = {
        "kind": "human_eval",
        "run": run.pk,
        "new": {"path": run.base_model, "artifact": run.base_artifact_id, "name": new_label},
        "baseline": baseline,
        "identical_left_out": identical,
        "sent_by": getattr(created_by, "username", None),
    }
    return _import_round(run, target, parsed, source, RoundPurpose.HUMAN_EVAL, f"Human evaluation of run {run.pk}")
