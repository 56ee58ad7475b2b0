"""A database outage answers 503 with a reason, never a 500.

While PostgreSQL restarts (or the network to it drops) every query raises ``OperationalError`` (or
``InterfaceError`` on a connection that broke mid-request). Without this, Django turns that into a bare 500 page,
which clients read as a bug and do not retry. A 503 with ``Retry-After`` says "try again shortly"; a submit
retried with the same idempotency key is stored at most once, so retrying is always safe.

Recovery needs nothing from here: the broken connection is closed at the end of the request (Django closes a
connection on which an error occurred), and with ``conn_health_checks`` the next request checks its persistent
connection before use and reconnects (see ``DATABASES`` in config/settings.py and docs/reliability.md).
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2
REASON = "The database is unavailable (restarting or unreachable), so this request may not have been carried out. Retry in a few seconds."


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("database unavailable on %s %s: %s", request.method, request.path, exception)
        return unavailable_response(request)


def unavailable_response(request) -> HttpResponse:
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        response = JsonResponse({"detail": REASON}, status=503)
    else:
        page = f"<!doctype html><title>Unavailable</title><h1>Service unavailable</h1><p>{REASON}</p>"
        response = HttpResponse(page, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
