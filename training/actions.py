"""Every write on the model side, each in one transaction, named as a verb.

The life of a run: :func:`launch_run` (queued, enqueued once committed) → the worker's :func:`claim_run` (running)
→ :func:`record_progress` every second or so (heartbeat, progress, metrics, log tail) → :func:`register_artifact`
(succeeded, the model renamed into place) or :func:`finish_run` (failed / cancelled). :func:`cancel_run` asks a
running run to stop; :func:`reap_stale_runs` re-queues or fails runs whose worker stopped beating.

The worker's writes are compare-and-set updates on ``(pk, status=running, attempt)``: once a run was re-queued
or failed by the reaper, the worker that lost it cannot overwrite it any more, and it learns so (``False``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotate.exports import ExportError, ExportOptions, create_snapshot
from annotate.models import Kind, Project, Snapshot

from . import cards
from .models import ArtifactKind, MetricPoint, ModelArtifact, RunKind, RunStatus, TrainingRun
from .runners import available_kinds, config_class
from .runners.base import ConfigError, folder_size, read_arbiter_json
from .selectors import TrainingError, resolve_base_model

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 120


# --- launching ------------------------------------------------------------------------------------


def default_objective(project: Project) -> str:
    return "regression" if project.kind == Kind.RATING else "bradley_terry"


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


def snapshot_options(config) -> ExportOptions:
    """The export a run makes when it is given no snapshot: TRL pairs (of its criterion), or ratings for regression,
    with a held-out split of TRAINING_DEFAULT_TEST_SIZE of the prompts."""
    if getattr(config, "objective", "") == "regression":
        return ExportOptions(format="ratings", test_size=settings.TRAINING_DEFAULT_TEST_SIZE, seed=0)
    return ExportOptions(format="trl", criterion=getattr(config, "criterion", ""), test_size=settings.TRAINING_DEFAULT_TEST_SIZE, seed=0)


def _snapshot_for(project: Project, snapshot: Snapshot | None, config, created_by) -> Snapshot:
    wanted = snapshot_options(config)
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


def launch_run(*, project: Project, kind: str, base_model: str, snapshot: Snapshot | None = None, values: dict | None = None,
               launched_by=None, parent: TrainingRun | None = None, enqueue: bool = True) -> TrainingRun:  # fmt: skip
    """Validate, snapshot if needed, and queue a run. Bad input raises TrainingError and writes nothing
    (except a fresh snapshot, which is a valid export in its own right)."""
    base = resolve_base_model(base_model)
    config = resolve_config(kind, project, dict(values or {}), str(base.path))
    snapshot = _snapshot_for(project, snapshot, config, launched_by)
    with transaction.atomic():
        run = TrainingRun.objects.create(
            project=project, kind=kind, config=config.to_dict(), snapshot=snapshot, snapshot_hash=snapshot.content_hash,
            base_model=str(base.path), base_artifact=base.artifact, parent=parent, launched_by=launched_by,
        )  # fmt: skip
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
        (output_dir / "arbiter.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str), encoding="utf-8")
        card = cards.model_card(
            name=artifact.name, artifact_id=artifact.pk, kind=run.kind, project=run.project, run=run, base_model=run.base_model,
            snapshot=run.snapshot, dataset_hash=dataset_hash, config=run.config, metrics=metrics, info=info,
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
