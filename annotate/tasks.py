"""The human side's jobs on the queue (Django Tasks; `python manage.py db_worker` runs them): the periodic review.

Automatic review runs when an annotator submits (``actions.review_annotator``). Their figures can also fall below
a threshold while they do nothing: the project's median pace moves with everyone else's work, the majority they
are compared with grows, a researcher tightens a threshold. ``review_projects`` reviews every project whose
review is on, through ``actions.review_project`` (the same review as a submit's), and puts itself back on the
queue :data:`REVIEW_SECONDS` later. The dashboard reviews too, on view (``dashboard.dashboard_data``), so what it
draws red and the status table agree even between two passes.

The chain is started by ``manage.py review --schedule`` (``make run`` calls it before starting the worker) and by
every dashboard view (:func:`schedule_review`, at most once a minute per process); there is never more than one
pass waiting. A worker busy with a long training run takes the pass when it is done: a second worker
(``db_worker --queue-name default`` beside a ``--queue-name training`` one, with ``TRAINING_QUEUE=training``)
keeps review on time.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_tasks import task
from django_tasks.base import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from . import actions
from .models import Project
from .vetting import REVIEW_THRESHOLDS

logger = logging.getLogger(__name__)

REVIEW_SECONDS = 600  # a scheduled pass this often
CHECK_SECONDS = 60  # a page view asks whether a pass is waiting at most this often per process
_checked_at = 0.0


# Below the default priority: training runs and their watchdogs go first; review only has to be eventually on time.
@task(priority=-10)
def review_projects() -> dict:
    """One scheduled pass (:func:`review_all`), then the next one queued; returns ``{"flagged": ...}``."""
    flagged = review_all()
    schedule_review()  # this pass is running, not waiting: its successor goes on
    return {"flagged": flagged}


def review_all() -> dict[str, list[int]]:
    """Review every project whose automatic review is on; returns ``{slug: [user ids flagged or paused]}``."""
    switched_on = Q()
    for name in REVIEW_THRESHOLDS:
        switched_on |= Q(**{f"{name}__gt": 0})
    flagged = {}
    for project in Project.objects.filter(switched_on).order_by("pk"):
        found = actions.review_project(project)
        if found:
            flagged[project.slug] = sorted(found)
    return flagged


def schedule_review(delay: float = REVIEW_SECONDS) -> bool:
    """Queue the next :func:`review_projects` ``delay`` seconds from now, unless one is already waiting (queued,
    not started) or the backend cannot run tasks later; returns whether it queued one."""
    review = review_projects
    if not review.get_backend().supports_defer:  # an immediate backend would run the chain forever, at once
        return False
    waiting = DBTaskResult.objects.filter(task_path=review.module_path, status=TaskResultStatus.READY)
    if waiting.exists():
        return False
    review.using(run_after=timezone.now() + timedelta(seconds=delay)).enqueue()
    return True


def keep_review_scheduled() -> None:
    """What a page view calls: :func:`schedule_review`, at most once per :data:`CHECK_SECONDS` in this process,
    and never failing the page (the queue's table is another app's bookkeeping)."""
    global _checked_at
    now = time.monotonic()
    if now - _checked_at < CHECK_SECONDS:
        return
    _checked_at = now
    try:
        with transaction.atomic():  # a savepoint: a failure here leaves the page's transaction usable
            schedule_review()
    except Exception:  # noqa: BLE001 - a page must render even when the queue cannot be written
        logger.warning("Could not schedule the periodic review", exc_info=True)
