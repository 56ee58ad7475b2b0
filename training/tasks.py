"""The training queue's tasks (Django Tasks API; `python manage.py db_worker` runs them).

``run_training`` runs one attempt of one run: the argument pair (run, attempt) makes a task that outlived its
attempt (the run was cancelled, or re-queued as a later attempt) a no-op. ``watch_run`` is the watchdog a
running attempt leaves on the queue: any free worker — or the restarted one — picks it up, re-queues or fails runs
whose heartbeat went stale, and puts itself back while the run is still running.
"""

from __future__ import annotations

from django_tasks import task

from . import actions, supervisor
from .models import RunStatus, TrainingRun


@task()
def run_training(run_id: int, attempt: int) -> dict:
    actions.reap_stale_runs()
    run = supervisor.execute(run_id, attempt)
    return {"run": run_id, "attempt": attempt, "status": run.status if run else "missing"}


# Above the default priority: a worker that is free checks on lost runs before starting new ones.
@task(priority=10)
def watch_run(run_id: int, attempt: int) -> dict:
    reaped = [run.pk for run in actions.reap_stale_runs()]
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is not None and run.status == RunStatus.RUNNING and run.attempt == attempt:
        actions.schedule_watch(run_id, attempt)
    return {"run": run_id, "reaped": reaped}
