"""Every write on the model side, each in one transaction, named as a verb.

The life of a run: :func:`launch_run` (queued, enqueued once committed) → the worker's :func:`claim_run` (running)
→ :func:`record_progress` every second or so (heartbeat, progress, metrics, log tail) → :func:`publish_run`
(succeeded: per kind, :func:`register_artifact` renames the model into place, :func:`create_candidate_round` turns
generate's candidates into a new round, :func:`complete_evaluation` records evaluate's win rate) or
:func:`finish_run` (failed / cancelled).

After a run, one action each: :func:`start_next_round` (a policy run → a generate run into the next round),
:func:`send_kept_for_review` (rejection sampling's kept samples → a round to review), and
:func:`create_human_eval_round` (evaluate's comparisons → a pairwise round, old against new). :func:`cancel_run` asks a
running run to stop; :func:`reap_stale_runs` re-queues or fails runs whose worker stopped beating.

The worker's writes are compare-and-set updates on ``(pk, status=running, attempt)``: once a run was re-queued
or failed by the reaper, the worker that lost it cannot overwrite it any more, and it learns so (``False``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotate.exports import ExportError, ExportOptions, create_snapshot
from annotate.models import Kind, Project, Snapshot

from . import cards, datasets
from .models import PROMPT_KINDS, ArtifactKind, MetricPoint, ModelArtifact, RunKind, RunStatus, TrainingRun
from .runners import available_kinds, config_class
from .runners.base import ConfigError, folder_size, read_arbiter_json
from .selectors import TrainingError, check_launch_access, resolve_base_model, resolve_reward_models

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 120


# --- launching ------------------------------------------------------------------------------------


def default_objective(project: Project) -> str:
    return "regression" if project.kind == Kind.RATING else "bradley_terry"


# Reward models score samples in these kinds; sft and dpo learn from the votes directly.
REWARD_KINDS = ("rejection_sampling", "ppo", "grpo", "rloo", "evaluate")
NEEDS_REWARD = ("rejection_sampling", "ppo", "grpo", "rloo", "evaluate")
# How many responses a generated item of each target kind holds.
TARGET_RESPONSES = {Kind.PAIRWISE: (2, 2), Kind.RANKING: (3, 9)}
# Field names a generate config may use for K, the samples per prompt (first found wins).
SAMPLES_FIELDS = ("num_samples", "samples_per_prompt", "num_return_sequences", "k", "num_generations")
BASELINE_FIELDS = ("baseline_model", "baseline", "reference_model")


def samples_field(kind: str) -> str | None:
    names = {row["name"] for row in config_class(kind).describe()}
    return next((name for name in SAMPLES_FIELDS if name in names), None)


def resolve_config(kind: str, project: Project, values: dict, base_model_path: str):
    """The runner config of a run: the kind's defaults, the project's (objective), then ``values``."""
    if kind not in RunKind.values:
        raise TrainingError(f"Unknown kind {kind!r}: use one of {', '.join(RunKind.values)}.")
    if kind not in available_kinds():
        raise TrainingError(f"{kind} runs are not available yet; available: {', '.join(available_kinds())}.")
    if "base_model" in values:
        raise TrainingError("Give the base model as --base-model (or the base_model field), not as a config option.")
    data = {**values, "base_model": base_model_path}
    if kind == RunKind.REWARD:
        data.setdefault("objective", default_objective(project))
    try:
        config = config_class(kind).from_dict(data)
    except ConfigError as exc:
        raise TrainingError(str(exc)) from None
    if kind == RunKind.REWARD:
        _check_reward_project(project, config)
    return config


def _check_reward_project(project: Project, config) -> None:
    if project.kind in (Kind.STEPS, Kind.DEMONSTRATION):
        raise TrainingError(f"A {project.kind} project has no preferences or scores to train a reward model on.")
    if config.objective == "regression" and project.kind != Kind.RATING:
        raise TrainingError("objective=regression trains on rating scores: it needs a rating project.")
    criteria = list(project.rating_criteria if project.kind == Kind.RATING else project.criteria or [])
    if config.criterion and config.criterion not in criteria:
        known = ", ".join(criteria) if criteria else "none"
        raise TrainingError(f"Project {project.slug} has no criterion {config.criterion!r} (its criteria: {known}).")


def snapshot_options(config, kind: str = RunKind.REWARD) -> ExportOptions:
    """The export a run makes when it is given no snapshot: TRL pairs (of its criterion), ratings for a regression
    reward model, the ``sft`` export for sft on demonstrations; TRAINING_DEFAULT_TEST_SIZE of the prompts held out."""
    test_size = settings.TRAINING_DEFAULT_TEST_SIZE
    if getattr(config, "objective", "") == "regression":
        return ExportOptions(format="ratings", test_size=test_size, seed=0)
    if kind == RunKind.SFT and getattr(config, "source", "") == "demonstrations":
        return ExportOptions(format="sft", test_size=test_size, seed=0)
    return ExportOptions(format="trl", criterion=getattr(config, "criterion", ""), test_size=test_size, seed=0)


def _snapshot_for(project: Project, snapshot: Snapshot | None, config, created_by, kind: str = RunKind.REWARD) -> Snapshot:
    wanted = snapshot_options(config, kind)
    if snapshot is None:
        try:
            snapshot, _ = create_snapshot(project, wanted, created_by=created_by)
        except ExportError as exc:
            raise TrainingError(f"Could not snapshot {project.slug}: {exc}") from None
    if snapshot.project_id != project.pk:
        raise TrainingError(f"Snapshot {snapshot.pk} belongs to another project.")
    if snapshot.options.get("format") != wanted.format:
        raise TrainingError(f"This run trains on a {wanted.format} snapshot; snapshot {snapshot.pk} is {snapshot.options.get('format')}.")
    if wanted.format == "trl" and snapshot.options.get("criterion", "") != wanted.criterion:
        theirs = snapshot.options.get("criterion") or "overall"
        raise TrainingError(f"Snapshot {snapshot.pk} holds the {theirs} preferences; set criterion={snapshot.options.get('criterion', '')} or pick another.")
    if not snapshot.folder.is_dir():
        raise TrainingError(f"The files of snapshot {snapshot.pk} are missing from {snapshot.folder}.")
    if not snapshot.counts.get("train"):
        raise TrainingError(f"Snapshot {snapshot.pk} has no training rows: the project needs judgments first.")
    return snapshot


def _sft_source(project: Project, snapshot: Snapshot | None, values: dict) -> str:
    """sft learns from demonstrations (an ``sft`` snapshot) or from chosen responses (a ``trl`` one): the snapshot
    given decides, else the ``source`` option, else the project (demonstration projects have demonstrations)."""
    if snapshot is not None:
        fmt = snapshot.options.get("format")
        source = {"sft": "demonstrations", "trl": "chosen"}.get(fmt)
        if source is None:
            raise TrainingError(f"sft trains on an sft snapshot (demonstrations) or a trl one (chosen responses); snapshot {snapshot.pk} is {fmt}.")
        if values.get("source", source) != source:
            raise TrainingError(f"Snapshot {snapshot.pk} is a {fmt} export: it goes with source={source}, not {values['source']}.")
        return source
    return values.get("source") or ("demonstrations" if project.kind == Kind.DEMONSTRATION else "chosen")


@dataclass
class Prompts:
    """How a prompt-driven run chooses its prompts (``train --prompts-from``, the form, the API)."""

    source: str = ""
    data: bytes | None = None
    file_name: str = ""
    max_prompts: int | None = None


def _project(value) -> Project | None:
    if value is None or value == "" or isinstance(value, Project):
        return value or None
    project = Project.objects.filter(slug=str(value)).first()
    if project is None:
        raise TrainingError(f"No project {value!r}.")
    return project


def _parent(project: Project, parent) -> TrainingRun | None:
    if parent is None or parent == "":
        return None
    run = parent if isinstance(parent, TrainingRun) else TrainingRun.objects.filter(pk=int(parent)).first()
    if run is None:
        raise TrainingError(f"No run {parent} to continue from (--parent).")
    if run.project_id != project.pk:
        raise TrainingError(f"Run {run.pk} belongs to project {run.project.slug}, not {project.slug}.")
    return run


def _check_target(kind: str, target: Project | None, config) -> None:
    if kind != RunKind.GENERATE:
        if target is not None:
            raise TrainingError("--target-project is for generate runs (they write candidates into it).")
        return
    if target.kind not in TARGET_RESPONSES:
        raise TrainingError(
            f"Candidates go into a pairwise or ranking project; {target.slug} is a {target.kind} project."
        )
    field = samples_field(kind)
    if field is None:
        return
    k = getattr(config, field)
    low, high = TARGET_RESPONSES[target.kind]
    if not low <= k <= high:
        fits = "exactly 2" if low == high else f"{low} to {high}"
        hint = " (for more samples per prompt, target a ranking project)" if target.kind == Kind.PAIRWISE else ""
        raise TrainingError(f"{target.slug} is a {target.kind} project: its items hold {fits} responses, so set {field} to that, not {k}{hint}.")


def _reward_values(kind: str, rewards: list, values: dict) -> dict:
    if not rewards:
        if kind in NEEDS_REWARD:
            raise TrainingError(f"A {kind} run scores samples with a reward model: give one or more (--reward-model artifact:ID).")
        return values
    if kind not in REWARD_KINDS and kind != RunKind.GENERATE:
        raise TrainingError(f"--reward-model is for the policy kinds that score samples ({', '.join(REWARD_KINDS)}, generate); a {kind} run uses none.")
    if "reward_models" in values or "reward_weights" in values:
        raise TrainingError("Give reward models as --reward-model ARTIFACT[:WEIGHT] (or reward_models in the API), not as config options.")
    values = {**values, "reward_models": [str(r.path) for r in rewards]}
    if rewards[0].weight is not None:
        values["reward_weights"] = [r.weight for r in rewards]
    return values


def _baseline_values(kind: str, baseline, values: dict) -> tuple[dict, object]:
    if kind != RunKind.EVALUATE:
        if baseline:
            raise TrainingError("--baseline is for evaluate runs (the policy the new one is compared with).")
        return values, None
    if not baseline:
        raise TrainingError("An evaluate run compares the policy (--base-model) with a baseline: give --baseline PATH_OR_ARTIFACT.")
    chosen = resolve_base_model(baseline)
    names = {row["name"] for row in config_class(kind).describe()}
    field = next((name for name in BASELINE_FIELDS if name in names), None)
    if field is None:
        raise TrainingError("The evaluate runner has no baseline option.")
    if field in values:
        raise TrainingError("Give the baseline as --baseline (or the baseline field), not as a config option.")
    return {**values, field: str(chosen.path)}, chosen


def _scorer(rewards: list):
    """The reward model (or weighted combination) that measures confidence for prompts_from=low-confidence."""
    from .scoring import CombinedScorer
    from .selectors import _load_scorer

    loaded = [_load_scorer(str(r.path), r.path.stat().st_mtime) for r in rewards]  # kept loaded, as the scoring API does
    if len(loaded) == 1:
        return loaded[0]
    return CombinedScorer([(scorer, r.weight if r.weight is not None else 1.0) for scorer, r in zip(loaded, rewards)])


def _prompt_rows(kind: str, project: Project, snapshot: Snapshot | None, prompts: Prompts, rewards: list, created_by):
    """``(rows, test rows, snapshot, inputs)`` of a prompt-driven run; TrainingError when none can be chosen."""
    source = prompts.source or ("snapshot-test" if kind == RunKind.EVALUATE else "file" if prompts.data is not None else "items")
    if source.startswith("snapshot-") and snapshot is None:
        try:
            snapshot, _ = create_snapshot(project, ExportOptions(format="trl", test_size=settings.TRAINING_DEFAULT_TEST_SIZE, seed=0), created_by=created_by)
        except ExportError as exc:
            raise TrainingError(f"Could not snapshot {project.slug} for its {source[9:]} prompts: {exc} (or choose --prompts-from items).") from None
    if snapshot is not None and snapshot.project_id != project.pk:
        raise TrainingError(f"Snapshot {snapshot.pk} belongs to another project.")
    scorer = None
    if source == "low-confidence":
        if not rewards:
            raise TrainingError("prompts_from=low-confidence needs a reward model to measure confidence with (--reward-model).")
        scorer = _scorer(rewards)
    try:
        rows = datasets.select_prompts(project, source, snapshot=snapshot if source.startswith("snapshot-") else None, scorer=scorer,
                                       data=prompts.data, file_name=prompts.file_name, max_prompts=prompts.max_prompts)  # fmt: skip
    except datasets.PromptsError as exc:
        raise TrainingError(str(exc)) from None
    inputs = {"prompts_from": source, "prompts": len(rows), "prompts_hash": datasets.prompts_hash(rows)}
    if prompts.file_name:
        inputs["prompts_file"] = prompts.file_name
    if prompts.max_prompts:
        inputs["max_prompts"] = prompts.max_prompts
    return rows, snapshot if source.startswith("snapshot-") else None, inputs


def launch_run(*, project: Project, kind: str, base_model: str, snapshot: Snapshot | None = None, values: dict | None = None,
               launched_by=None, parent: TrainingRun | int | None = None, enqueue: bool = True, reward_models=(),
               target_project: Project | str | None = None, prompts: Prompts | None = None, baseline: str | None = None) -> TrainingRun:  # fmt: skip
    """Validate, snapshot or choose prompts as the kind needs, and queue a run. Bad input raises TrainingError and
    writes nothing (except a fresh snapshot, which is a valid export in its own right).

    - reward, dpo: a ``trl`` snapshot (``ratings`` for a regression reward model); sft: ``sft`` or ``trl``.
    - generate, rejection_sampling, ppo, grpo, rloo, evaluate: a prompts file written into the run's work folder
      (``prompts``: from the project's items, its disagreements, a reward model's low-confidence items, a
      snapshot's train or test prompts, or a file).
    - ``reward_models`` (``artifact:ID[:WEIGHT]``, a registered name or a folder under MODEL_ROOTS) are resolved to
      folders in the config and recorded in ``run.reward_artifacts``; generate writes into ``target_project``
      (default: this project); evaluate compares with ``baseline``.
    """
    prompts = prompts or Prompts()
    values = dict(values or {})
    base = resolve_base_model(base_model)
    parent = _parent(project, parent)
    target = _project(target_project)
    if kind == RunKind.GENERATE and target is None:
        target = project
    rewards = resolve_reward_models(reward_models)
    values = _reward_values(kind, rewards, values)
    values, baseline_model = _baseline_values(kind, baseline, values)
    if kind == RunKind.SFT:
        values["source"] = _sft_source(project, snapshot, values)
    reference = None
    if values.get("ref_model"):  # dpo's reference policy: only from MODEL_ROOTS or the registry, like the base model
        reference = resolve_base_model(str(values["ref_model"]))
        values["ref_model"] = str(reference.path)
    if kind == RunKind.GENERATE and not values.get("model_label"):
        values["model_label"] = model_label(str(base.path), base.artifact)
    config = resolve_config(kind, project, values, str(base.path))
    _check_target(kind, target, config)
    models_used = [base.artifact, *(r.artifact for r in rewards), baseline_model.artifact if baseline_model else None,
                   reference.artifact if reference else None]
    check_launch_access(launched_by, project, models_used, target)
    rows, inputs = None, {}
    if kind in PROMPT_KINDS:
        rows, snapshot, inputs = _prompt_rows(kind, project, snapshot, prompts, rewards, launched_by)
    else:
        if prompts.source or prompts.data is not None:
            raise TrainingError(f"A {kind} run learns from a snapshot's votes, not from prompts (--prompts-from is for {', '.join(PROMPT_KINDS)}).")
        snapshot = _snapshot_for(project, snapshot, config, launched_by, kind)
    if reference is not None:
        inputs["ref_model"] = {"path": str(reference.path), "artifact": reference.artifact.pk if reference.artifact else None}
    if baseline_model is not None:
        inputs["baseline"] = {"path": str(baseline_model.path), "artifact": baseline_model.artifact.pk if baseline_model.artifact else None,
                              "label": baseline_model.label}  # fmt: skip
    with transaction.atomic():
        run = TrainingRun.objects.create(
            project=project, kind=kind, config=config.to_dict(), snapshot=snapshot, snapshot_hash=snapshot.content_hash if snapshot else "",
            base_model=str(base.path), base_artifact=base.artifact, parent=parent, launched_by=launched_by, target_project=target,
            inputs=inputs,
        )  # fmt: skip
        run.reward_artifacts.set([r.artifact for r in rewards if r.artifact is not None])
        if rows is not None:
            try:
                datasets.write_prompts(run, rows)
            except OSError as exc:
                shutil.rmtree(run.work_dir, ignore_errors=True)
                raise TrainingError(f"Cannot write the prompts under ARTIFACT_ROOT: {exc}") from None
        if enqueue:
            transaction.on_commit(partial(enqueue_run, run.pk))
    return run


def enqueue_run(run_id: int) -> None:
    """Put the run's current attempt on the queue (after the commit that made it queued)."""
    from .tasks import run_training

    run = TrainingRun.objects.get(pk=run_id)
    result = run_training.using(queue_name=settings.TRAINING_QUEUE).enqueue(run.pk, run.attempt)
    TrainingRun.objects.filter(pk=run.pk, attempt=run.attempt).update(task_id=str(result.id))


# --- the worker's side ----------------------------------------------------------------------------


def claim_run(run_id: int, attempt: int, worker: str) -> TrainingRun | None:
    """queued → running for the worker that picked the task; None when the task is stale (the run was cancelled,
    re-queued as a later attempt, or is already running elsewhere)."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.attempt != attempt or run.status != RunStatus.QUEUED:
            return None
        now = timezone.now()
        if run.cancel_requested:
            run.status, run.finished_at = RunStatus.CANCELLED, now
            run.save(update_fields=["status", "finished_at"])
            return None
        run.status, run.heartbeat_at, run.worker = RunStatus.RUNNING, now, worker
        run.started_at = run.started_at or now
        run.save(update_fields=["status", "heartbeat_at", "worker", "started_at"])
        transaction.on_commit(partial(schedule_watch, run.pk, run.attempt))
    return run


def schedule_watch(run_id: int, attempt: int) -> None:
    """Queue the watchdog that notices this attempt's worker dying, where the backend can run tasks later."""
    from .tasks import watch_run

    task = watch_run.using(queue_name=settings.TRAINING_QUEUE)
    if not task.get_backend().supports_defer:
        return
    when = timezone.now() + timedelta(seconds=settings.TRAINING_STALE_SECONDS)
    try:
        task.using(run_after=when).enqueue(run_id, attempt)
    except Exception:  # noqa: BLE001 - pages and other workers reap too; a missing watchdog must not fail the run
        logger.warning("Could not queue the watchdog of run %s", run_id, exc_info=True)


def record_progress(run: TrainingRun, *, step: int | None, total: int | None, metrics: dict, points: list[tuple[int, dict]],
                    log_tail: str, checkpoint: str = "") -> tuple[bool, bool]:  # fmt: skip
    """Heartbeat plus whatever changed; returns ``(still_ours, cancel_requested)``."""
    fields = {"heartbeat_at": timezone.now(), "log_tail": log_tail, "metrics": metrics}
    if step is not None:
        fields["progress_step"] = step
    if total:
        fields["progress_total"] = total
    if checkpoint:
        fields["checkpoint"] = checkpoint
    with transaction.atomic():
        mine = TrainingRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt)
        if not mine.update(**fields):
            return False, False
        if points:
            MetricPoint.objects.bulk_create([MetricPoint(run_id=run.pk, step=s, values=v) for s, v in points])
        cancel = TrainingRun.objects.filter(pk=run.pk).values_list("cancel_requested", flat=True).first()
    return True, bool(cancel)


def finish_run(run: TrainingRun, status: str, *, error: str = "", metrics: dict | None = None, log_tail: str | None = None) -> bool:
    """running → failed / cancelled (or succeeded without an artifact); False if the run was no longer ours."""
    fields = {"status": status, "finished_at": timezone.now(), "heartbeat_at": timezone.now(), "error": error[-4000:]}
    if metrics is not None:
        fields["metrics"] = metrics
    if log_tail is not None:
        fields["log_tail"] = log_tail
    return bool(TrainingRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt).update(**fields))


def artifact_folder_name(run: TrainingRun) -> str:
    criterion = run.criterion
    return f"run-{run.pk}-{run.kind}" + (f"-{criterion}" if criterion else "")


class RunLost(Exception):
    """The run was re-queued or failed by the reaper while this worker still ran it."""


def register_artifact(run: TrainingRun, output_dir: Path, metrics: dict, dataset_hash: str) -> ModelArtifact:
    """The finished model into the registry: card and provenance written, folder renamed into place, run succeeded —
    all or nothing."""
    output_dir = Path(output_dir)
    relative = Path("models") / run.project.slug / artifact_folder_name(run)
    final = Path(settings.ARTIFACT_ROOT) / relative
    info = read_arbiter_json(output_dir)
    with transaction.atomic():
        locked = TrainingRun.objects.select_for_update().filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt).first()
        if locked is None:
            raise RunLost()
        if final.exists() and not ModelArtifact.objects.filter(path=str(relative)).exists():
            shutil.rmtree(final)  # left by an attempt that died between the rename and its commit
        artifact = ModelArtifact.objects.create(
            project=run.project, run=run, name=f"{run.project.slug}-{artifact_folder_name(run)}",
            kind=ArtifactKind.REWARD if run.kind == RunKind.REWARD else ArtifactKind.POLICY, path=str(relative),
            base_model=run.base_model, base_artifact=run.base_artifact, snapshot=run.snapshot, snapshot_hash=run.snapshot_hash,
            criterion=run.criterion, is_adapter=bool(info.get("is_adapter")), config=run.config, metrics=metrics,
            created_by=run.launched_by,
        )  # fmt: skip
        info.update(
            artifact=artifact.pk, name=artifact.name, project=run.project.slug, run=run.pk, snapshot=run.snapshot_id,
            snapshot_hash=run.snapshot_hash, dataset_hash=dataset_hash, base_model=run.base_model, metrics=metrics,
        )  # fmt: skip
        lineage = run_lineage(run)
        info["lineage"] = lineage
        (output_dir / "arbiter.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str), encoding="utf-8")
        card = cards.model_card(
            name=artifact.name, artifact_id=artifact.pk, kind=run.kind, project=run.project, run=run, base_model=run.base_model,
            snapshot=run.snapshot, dataset_hash=dataset_hash, config=run.config, metrics=metrics, info=info, lineage=lineage,
        )  # fmt: skip
        (output_dir / "README.md").write_text(card, encoding="utf-8")
        artifact.size_bytes = folder_size(output_dir)
        artifact.save(update_fields=["size_bytes"])
        locked.status, locked.finished_at, locked.heartbeat_at = RunStatus.SUCCEEDED, timezone.now(), timezone.now()
        locked.metrics, locked.dataset_hash = metrics, dataset_hash
        locked.progress_step = max(locked.progress_step, locked.progress_total)
        locked.save(update_fields=["status", "finished_at", "heartbeat_at", "metrics", "dataset_hash", "progress_step"])
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(output_dir, final)  # last: if anything above failed, nothing is in place
    return artifact


def run_lineage(run: TrainingRun) -> dict:
    """Where a run's model comes from: base model (and artifact), reward models, snapshot, parent run, prompts."""
    rewards = [{"artifact": a.pk, "name": a.name, "snapshot": a.snapshot_id, "snapshot_hash": a.snapshot_hash}
               for a in run.reward_artifacts.all()]  # fmt: skip
    lineage = {
        "base_model": run.base_model,
        "base_artifact": run.base_artifact_id,
        "reward_models": rewards or [{"path": path} for path in (run.config or {}).get("reward_models", [])],
        "snapshot": run.snapshot_id,
        "snapshot_hash": run.snapshot_hash,
        "parent_run": run.parent_id,
    }
    if run.inputs:
        lineage["inputs"] = run.inputs
    return lineage


class PublishFailed(Exception):
    """A finished runner's output cannot be published (no candidates, a malformed file): the run fails with this."""


def publish_run(run: TrainingRun, output_dir: Path, metrics: dict, dataset_hash: str):
    """What a succeeded runner leaves becomes Arbiter's, per kind: a registered model (the model kinds;
    rejection_sampling's kept samples are kept in the run's folder), a new round of the target project
    (generate), or the comparisons and the win rate (evaluate). All or nothing, like :func:`register_artifact`."""
    output_dir = Path(output_dir)
    if run.kind == RunKind.GENERATE:
        return create_candidate_round(run, _keep_output(run, output_dir, "candidates.jsonl"), metrics, dataset_hash)
    if run.kind == RunKind.EVALUATE:
        return complete_evaluation(run, _keep_output(run, output_dir, "comparisons.jsonl"), metrics, dataset_hash)
    if run.kind == RunKind.REJECTION_SAMPLING and (output_dir / "kept.jsonl").is_file():
        kept = _keep_output(run, output_dir, "kept.jsonl")
        metrics = {**metrics, "kept_samples": float(sum(1 for line in kept.read_bytes().splitlines() if line.strip()))}
        os.remove(output_dir / "kept.jsonl")
    return register_artifact(run, output_dir, metrics, dataset_hash)


def _keep_output(run: TrainingRun, output_dir: Path, name: str) -> Path:
    """A data file the runner wrote, copied into the run's own folder (it outlives the temporary output folder)."""
    source = output_dir / name
    if not source.is_file():
        raise PublishFailed(f"The {run.kind} runner finished without writing {name}.")
    target = run.work_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


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
            raise PublishFailed(f"{path.name}, line {number}: a row needs a \"prompt\".")
        rows.append(row)
    return rows


def _lock_running(run: TrainingRun) -> TrainingRun:
    locked = TrainingRun.objects.select_for_update().filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt).first()
    if locked is None:
        raise RunLost()
    return locked


def _succeed(locked: TrainingRun, metrics: dict, dataset_hash: str) -> None:
    now = timezone.now()
    locked.status, locked.finished_at, locked.heartbeat_at = RunStatus.SUCCEEDED, now, now
    locked.metrics, locked.dataset_hash = metrics, dataset_hash
    locked.progress_step = max(locked.progress_step, locked.progress_total)
    locked.save(update_fields=["status", "finished_at", "heartbeat_at", "metrics", "dataset_hash", "progress_step"])


def model_label(path: str, artifact: ModelArtifact | None) -> str:
    """The name a response's ``model_name`` gets: the registered artifact's name, else the folder's."""
    return (artifact.name if artifact else Path(path).name)[:200]


def _lineage_snapshot(run: TrainingRun) -> dict:
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
    from annotate.imports import ParsedItem, RowError, normalize_messages

    low, high = TARGET_RESPONSES[target.kind]
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
            metadata = {"run": run.pk, "artifact": run.base_artifact_id, "sample": index,
                        "finish_reason": sample.get("finish_reason", "")}  # fmt: skip
            if sample.get("score") is not None:
                metadata["score"] = sample["score"]
            responses.append({"text": text, "model": label, "metadata": metadata})
        if len(responses) < low:
            skipped += 1
            continue
        source_id = str(row.get("external_id") or row.get("item") or number)
        parsed.append(ParsedItem(
            line=number, prompt=prompt, responses=responses[:high], external_id=f"run{run.pk}-{number}-{source_id}"[:200],
            metadata={"generated_by_run": run.pk, "source_item": row.get("item"), "source_external_id": row.get("external_id") or ""},
        ))  # fmt: skip
    return parsed, skipped


def create_candidate_round(run: TrainingRun, path: Path, metrics: dict, dataset_hash: str):
    """generate's candidates become a NEW round of the target project, whose ``source`` records the model, the run
    and the snapshot behind the model; the run succeeds in the same transaction. A failure leaves no half round."""
    from .models import RoundPurpose

    target = run.target_project or run.project
    if target.kind not in TARGET_RESPONSES:
        raise PublishFailed(f"Candidates go into a pairwise or ranking project; {target.slug} is {target.kind}.")
    parsed, skipped = candidate_items(run, read_output_rows(path), target)
    if not parsed:
        raise PublishFailed(f"No prompt got enough distinct samples for a {target.kind} item ({skipped} skipped); nothing was added to {target.slug}.")
    source = {
        "kind": "generated", "run": run.pk, "source_project": run.project.slug,
        "model": {"path": run.base_model, "artifact": run.base_artifact_id, "name": model_label(run.base_model, run.base_artifact)},
        "snapshot": _lineage_snapshot(run), "prompts": run.inputs.get("prompts_from", ""),
        "sampling": {k: run.config.get(k) for k in ("temperature", "top_p", "max_new_tokens", samples_field(run.kind)) if k},
    }  # fmt: skip
    with transaction.atomic():
        locked = _lock_running(run)
        Project.objects.select_for_update().filter(pk=target.pk).first()  # one new round at a time per project
        round_, report = _add_round(locked, target, parsed, source, RoundPurpose.CANDIDATES, f"Candidates of run {run.pk}", PublishFailed)
        metrics = {**metrics, "candidate_items": float(report.created), "skipped_prompts": float(skipped + len(report.duplicates)),
                   "round": float(round_.number)}  # fmt: skip
        _succeed(locked, metrics, dataset_hash)
    return round_


def comparison_outcome(row: dict) -> str | None:
    """``policy``, ``baseline`` or ``tie`` for one comparisons.jsonl row (training/runners/evaluate.py)."""
    winner = row.get("winner")
    return winner if winner in ("policy", "baseline", "tie") else None


def comparison_texts(row: dict) -> tuple[str, str] | None:
    """(new policy's response, baseline's response) of a comparisons.jsonl row."""
    new, old = row.get("policy"), row.get("baseline")
    return (new, old) if isinstance(new, str) and isinstance(old, str) else None


def complete_evaluation(run: TrainingRun, path: Path, metrics: dict, dataset_hash: str) -> TrainingRun:
    """evaluate: the reward-model win rate of the new policy over the baseline with its 95% interval (the runner's
    ``win_rate``, ``win_rate_lo``, ``win_rate_hi``; recomputed from the comparisons if it left them out) into the
    run's metrics. No weights are registered."""
    from .selectors import win_rate

    outcomes = [comparison_outcome(row) for row in read_output_rows(path)]
    if not outcomes or None in outcomes:
        raise PublishFailed("comparisons.jsonl has no comparisons, or rows without a winner (policy, baseline or tie).")
    result = win_rate(outcomes.count("policy"), outcomes.count("baseline"), outcomes.count("tie"))
    metrics = {"win_rate": result["win_rate"], "win_rate_lo": result["ci_low"], "win_rate_hi": result["ci_high"], **metrics,
               "comparisons": float(result["n"])}  # fmt: skip
    with transaction.atomic():
        locked = _lock_running(run)
        _succeed(locked, metrics, dataset_hash)
    return locked


# --- what comes after a run: the next round, review, human evaluation ----------------------------------------


def _run_round(run: TrainingRun, purpose: str):
    from .models import RunRound

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
    from annotate.actions import import_items
    from annotate.imports import ImportFailed
    from annotate.models import Round

    from .models import RunRound

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
    from annotate.imports import ParsedItem, RowError, normalize_messages

    from .models import RoundPurpose

    if run.kind != RunKind.REJECTION_SAMPLING or run.status != RunStatus.SUCCEEDED:
        raise TrainingError("Only a succeeded rejection_sampling run has kept samples to review.")
    kept = run.work_dir / "kept.jsonl"
    if not kept.is_file():
        raise TrainingError(f"The kept samples of run {run.pk} are missing from {kept}.")
    if target.kind not in (Kind.RATING, Kind.DEMONSTRATION, Kind.STEPS):
        raise TrainingError(f"Kept samples are one response per prompt: send them to a rating, demonstration or steps project, not a {target.kind} one.")
    label = model_label(run.base_model, run.base_artifact)
    parsed = []
    for number, row in enumerate(read_output_rows(kept), 1):
        try:
            prompt = normalize_messages(row["prompt"])
        except RowError as exc:
            raise TrainingError(f"kept.jsonl, line {number}: {exc}") from None
        metadata = {"run": run.pk, "score": row.get("score"), "mean_score": row.get("mean_score")}
        parsed.append(ParsedItem(line=number, prompt=prompt, external_id=f"run{run.pk}-kept-{number}",
                                 responses=[{"text": str(row.get("response", "")), "model": label, "metadata": metadata}],
                                 metadata={"kept_by_run": run.pk, "source_item": row.get("item")}))  # fmt: skip
    source = {"kind": "review", "run": run.pk, "model": {"path": run.base_model, "artifact": run.base_artifact_id, "name": label},
              "sent_by": getattr(created_by, "username", None)}  # fmt: skip
    return _import_round(run, target, parsed, source, RoundPurpose.REVIEW, f"Kept samples of run {run.pk} for review")


def create_human_eval_round(run: TrainingRun, target: Project, created_by=None, seed: int | None = None):
    """An evaluate run's comparisons as a pairwise round of ``target``: each item holds the new policy's and the
    baseline's responses in a random order; each response records its arm (``metadata["arm"]``) and the item the
    new one's index, so :func:`training.selectors.human_eval_results` decodes the votes whatever was shown where."""
    import random

    from annotate.imports import ParsedItem, RowError, normalize_messages

    from .models import RoundPurpose

    if run.kind != RunKind.EVALUATE or run.status != RunStatus.SUCCEEDED:
        raise TrainingError("Only a succeeded evaluate run has comparisons for a human evaluation.")
    if target.kind != Kind.PAIRWISE:
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
        responses = [{"text": text, "model": label, "metadata": {"arm": arm, "run": run.pk}} for arm, text, label in arms]
        new_index = next(i for i, (arm, _, _) in enumerate(arms) if arm == "new")
        parsed.append(ParsedItem(line=number, prompt=prompt, responses=responses, external_id=f"run{run.pk}-eval-{number}",
                                 metadata={"human_eval_run": run.pk, "new_index": new_index}))  # fmt: skip
    if not parsed:
        raise TrainingError("Every comparison has identical responses: there is nothing for people to judge.")
    source = {"kind": "human_eval", "run": run.pk, "new": {"path": run.base_model, "artifact": run.base_artifact_id, "name": new_label},
              "baseline": baseline, "identical_left_out": identical, "sent_by": getattr(created_by, "username", None)}  # fmt: skip
    return _import_round(run, target, parsed, source, RoundPurpose.HUMAN_EVAL, f"Human evaluation of run {run.pk}")


def start_next_round(policy_run: TrainingRun, *, launched_by=None, target_project=None, values: dict | None = None,
                     prompts: Prompts | None = None, reward_models=(), enqueue: bool = True) -> TrainingRun:  # fmt: skip
    """One action from a finished policy run to the next round: a generate run with its model, into the project
    (or ``target_project``), its parent the policy run."""
    artifact = ModelArtifact.objects.filter(run=policy_run).first()
    if policy_run.status != RunStatus.SUCCEEDED or artifact is None or artifact.kind != ArtifactKind.POLICY:
        raise TrainingError(f"Run {policy_run.pk} has no finished policy to write the next round with.")
    return launch_run(
        project=policy_run.project, kind=RunKind.GENERATE, base_model=f"artifact:{artifact.pk}", values=values,
        launched_by=launched_by, parent=policy_run, enqueue=enqueue, reward_models=reward_models,
        target_project=target_project or policy_run.target_project or policy_run.project, prompts=prompts,
    )  # fmt: skip


# --- cancel, retry, the reaper --------------------------------------------------------------------


def cancel_run(run: TrainingRun) -> TrainingRun:
    """A queued run is cancelled at once; a running one is asked to stop (its worker kills it within seconds).
    A finished run is left as it is."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status == RunStatus.QUEUED:
            run.status, run.finished_at, run.cancel_requested = RunStatus.CANCELLED, timezone.now(), True
            run.save(update_fields=["status", "finished_at", "cancel_requested"])
        elif run.status == RunStatus.RUNNING and not run.cancel_requested:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested"])
    return run


def retry_run(run: TrainingRun) -> TrainingRun:
    """A failed or cancelled run again, as its next attempt; it resumes from its last checkpoint if one is left."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise TrainingError(f"Only failed or cancelled runs can be retried; run {run.pk} is {run.status}.")
        run.status, run.attempt, run.cancel_requested = RunStatus.QUEUED, run.attempt + 1, False
        run.error, run.finished_at, run.worker = "", None, ""
        run.save(update_fields=["status", "attempt", "cancel_requested", "error", "finished_at", "worker"])
        transaction.on_commit(partial(enqueue_run, run.pk))
    return run


def _stale_filter(now):
    limit = now - timedelta(seconds=settings.TRAINING_STALE_SECONDS)
    return Q(status=RunStatus.RUNNING) & (Q(heartbeat_at__lt=limit) | Q(heartbeat_at__isnull=True, started_at__lt=limit))


def reap_stale_runs(now=None) -> list[TrainingRun]:
    """Runs whose worker stopped beating for TRAINING_STALE_SECONDS: re-queued as the next attempt (resuming from
    their last checkpoint) while attempts are left and TRAINING_ON_STALE is "requeue", failed otherwise.

    Cheap when nothing is stale (one indexed query), so pages and workers call it freely.
    """
    now = now or timezone.now()
    stale = _stale_filter(now)
    if not TrainingRun.objects.filter(stale).exists():
        return []
    reaped = []
    with transaction.atomic():
        # SKIP LOCKED: two reapers (two workers, a page view) never handle the same run twice.
        for run in TrainingRun.objects.select_for_update(skip_locked=True).filter(stale):
            seen = run.heartbeat_at or run.started_at
            lost = f"The worker {run.worker or '?'} stopped sending heartbeats at {seen:%Y-%m-%d %H:%M:%S} UTC (killed, or its host went down)"
            old_task = run.task_id
            if settings.TRAINING_ON_STALE == "requeue" and run.attempt < settings.TRAINING_MAX_ATTEMPTS:
                resume = f", resuming from {run.checkpoint}" if run.checkpoint else ""
                run.log_tail = _tail(run.log_tail + f"\n[arbiter] {lost}; re-queued as attempt {run.attempt + 1}{resume}.")
                run.status, run.attempt, run.worker, run.heartbeat_at = RunStatus.QUEUED, run.attempt + 1, "", None
                run.save(update_fields=["status", "attempt", "worker", "heartbeat_at", "log_tail"])
                transaction.on_commit(partial(enqueue_run, run.pk))
            else:
                tries = f" after {run.attempt} attempts" if run.attempt > 1 else ""
                run.status, run.finished_at, run.error = RunStatus.FAILED, now, f"{lost}{tries}."
                run.save(update_fields=["status", "finished_at", "error"])
            transaction.on_commit(partial(_fail_lost_task, old_task))
            reaped.append(run)
    return reaped


def _fail_lost_task(task_id: str) -> None:
    """The dead worker's Django Tasks row stays RUNNING forever otherwise; mark it failed (database backend only)."""
    if not task_id:
        return
    try:
        from django_tasks_db.models import DBTaskResult
        from django_tasks.base import TaskResultStatus

        result = DBTaskResult.objects.filter(pk=task_id, status=TaskResultStatus.RUNNING).first()
        if result is not None:
            result.set_failed(RunLost(f"worker lost while running task {task_id}"))
    except Exception:  # noqa: BLE001 - bookkeeping of another app's table must never break the reaper
        logger.warning("Could not mark task %s failed", task_id, exc_info=True)


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])
