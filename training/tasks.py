"""The training queue (Django Tasks API; `python manage.py db_worker` runs it): its tasks, putting runs on it,
and the reaper that puts lost runs back.

``run_training`` runs one attempt of one run: the argument pair (run, attempt) makes a task that outlived its
attempt (the run was cancelled, or re-queued as a later attempt) a no-op. ``watch_run`` is the watchdog a
running attempt leaves on the queue: any free worker — or the restarted one — picks it up, re-queues or fails runs
whose heartbeat went stale (:func:`reap_stale_runs`), and puts itself back while the run is still running.

The dependency goes one way: launching → tasks → supervisor → publishing → rounds → lifecycle. The supervisor
learns of the watchdog through ``execute(on_claimed=schedule_watch)``, so it never imports the queue back.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_tasks import task
from django_tasks.base import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from . import supervisor
from .lifecycle import RunLost, tail
from .models import RunStatus, TrainingRun

logger = logging.getLogger(__name__)


@task()
def run_training(run_id: int, attempt: int) -> dict:
    reap_stale_runs()
    run = supervisor.execute(run_id, attempt, on_claimed=schedule_watch)
    return {"run": run_id, "attempt": attempt, "status": run.status if run else "missing"}


# Above the default priority: a worker that is free checks on lost runs before starting new ones.
@task(priority=10)
def watch_run(run_id: int, attempt: int) -> dict:
    reaped = [run.pk for run in reap_stale_runs()]
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is not None and run.status == RunStatus.RUNNING and run.attempt == attempt:
        schedule_watch(run_id, attempt)
    return {"run": run_id, "reaped": reaped}


def enqueue_run(run_id: int) -> None:
    """Put the run's current attempt on the queue (after the commit that made it queued)."""
    run = TrainingRun.objects.get(pk=run_id)
    result = run_training.using(queue_name=settings.TRAINING_QUEUE).enqueue(run.pk, run.attempt)
    TrainingRun.objects.filter(pk=run.pk, attempt=run.attempt).update(task_id=str(result.id))


def schedule_watch(run_id: int, attempt: int) -> None:
    """Queue the watchdog that notices this attempt's worker dying, where the backend can run tasks later."""
    task = watch_run.using(queue_name=settings.TRAINING_QUEUE)
    if not task.get_backend().supports_defer:
        return
    when = timezone.now() + timedelta(seconds=settings.TRAINING_STALE_SECONDS)
    try:
        task.using(run_after=when).enqueue(run_id, attempt)
    except Exception:  # noqa: BLE001 - pages and other workers reap too; a missing watchdog must not fail the run
        logger.warning("Could not queue the watchdog of run %s", run_id, exc_info=True)


def _stale_filter(now):
    limit = now - timedelta(seconds=settings.TRAINING_STALE_SECONDS)
    return Q(status=RunStatus.RUNNING) & (
        Q(heartbeat_at__lt=limit) | Q(heartbeat_at__isnull=True, started_at__lt=limit)
    )


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
                run.log_tail = tail(
                    run.log_tail + f"\n[arbiter] {lost}; re-queued as attempt {run.attempt + 1}{resume}."
                )
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
        result = DBTaskResult.objects.filter(pk=task_id, status=TaskResultStatus.RUNNING).first()
        if result is not None:
            result.set_failed(RunLost(f"worker lost while running task {task_id}"))
    except Exception:  # noqa: BLE001 - bookkeeping of another app's table must never break the reaper
        logger.warning("Could not mark task %s failed", task_id, exc_info=True)
