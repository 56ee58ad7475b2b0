"""The worker's writes on the run it runs, each a compare-and-set update on ``(pk, status=running, attempt)``.

:func:`claim_run` (queued → running) → :func:`record_progress` every second or so (heartbeat, progress, metrics, log
tail; it also tells the worker whether a cancel was asked) → :func:`finish_run` (failed / cancelled), or
:func:`lock_running` and :func:`succeed` inside the transaction that publishes the run (training.publishing).

Once a run was re-queued or failed by the reaper (training.tasks.reap_stale_runs), the worker that lost it cannot
overwrite it any more, and it learns so (``False``, or :class:`RunLost`).
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from .models import MetricPoint, RunStatus, TrainingRun

LOG_TAIL_LINES = 120


class RunLost(Exception):
    """The run was re-queued or failed by the reaper while this worker still ran it."""


class PublishFailed(Exception):
    """A finished runner's output cannot be published (no candidates, a malformed file): the run fails with this."""


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def claim_run(run_id: int, attempt: int, worker: str) -> TrainingRun | None:
    """queued → running for the worker that picked the task; None when the task is stale (the run was cancelled,
    re-queued as a later attempt, or is already running elsewhere). The caller queues the watchdog
    (training.supervisor.execute's ``on_claimed``)."""
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
    return run


def record_progress(
    run: TrainingRun,
    *,
    step: int | None,
    total: int | None,
    metrics: dict,
    points: list[tuple[int, dict]],
    log_tail: str,
    checkpoint: str = "",
) -> tuple[bool, bool]:
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


def finish_run(
    run: TrainingRun, status: str, *, error: str = "", metrics: dict | None = None, log_tail: str | None = None
) -> bool:
    """running → failed / cancelled (or succeeded without an artifact); False if the run was no longer ours."""
    fields = {"status": status, "finished_at": timezone.now(), "heartbeat_at": timezone.now(), "error": error[-4000:]}
    if metrics is not None:
        fields["metrics"] = metrics
    if log_tail is not None:
        fields["log_tail"] = log_tail
    return bool(TrainingRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt).update(**fields))


def lock_running(run: TrainingRun) -> TrainingRun:
    """The run's row, locked for the publishing transaction; RunLost if it is no longer this attempt's."""
    locked = (
        TrainingRun.objects.select_for_update().filter(pk=run.pk, status=RunStatus.RUNNING, attempt=run.attempt).first()
    )
    if locked is None:
        raise RunLost()
    return locked


def succeed(locked: TrainingRun, metrics: dict, dataset_hash: str) -> None:
    """running → succeeded, in the caller's transaction that holds :func:`lock_running`'s lock."""
    now = timezone.now()
    locked.status, locked.finished_at, locked.heartbeat_at = RunStatus.SUCCEEDED, now, now
    locked.metrics, locked.dataset_hash = metrics, dataset_hash
    locked.progress_step = max(locked.progress_step, locked.progress_total)
    locked.save(update_fields=["status", "finished_at", "heartbeat_at", "metrics", "dataset_hash", "progress_step"])
