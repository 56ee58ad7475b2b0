"""Django's PostgreSQL backend with a health check that costs no round trip, and prepared statements on request.

Prepared statements. Django binds parameters on the client (the values are written into the SQL text), which
PostgreSQL must parse and plan again on every execution. :meth:`DatabaseWrapper.prepared_cursor` gives a cursor
that binds them on the server, so psycopg prepares a statement the second time it runs on a connection and
PostgreSQL then skips parsing and planning (``prepare_threshold`` in ``DATABASES["default"]["OPTIONS"]``; ``None``
turns it off). It is for the few fixed statements of the annotation loop (``annotate/sql.py``) only: a
server-bound statement takes at most 65,535 parameters, which an ORM ``__in`` list or a large ``bulk_create`` can
exceed, so the ORM keeps Django's client-side binding (whose cursors never prepare).

Health check.

``CONN_HEALTH_CHECKS`` makes Django check a persistent connection before the first query of every request. Django
checks with ``SELECT 1``: a round trip to the server, which on a small machine costs as much CPU as a real query
(about 0.5 ms of client, server and kernel time here), on every request.

This check asks the socket instead. A healthy idle connection has nothing to read: the server only writes in
answer to a query. When the server closes the connection (a restart, ``pg_terminate_backend``, an idle timeout) it
sends an error message and closes the socket, which then polls readable. So: readable, or closed or broken in
psycopg's view, means "ask the server" (Django's ``SELECT 1``, which fails on a dead connection and makes Django
reconnect); anything else is a usable connection. A connection whose socket still looks healthy but is dead (a
silent network drop) fails on its first query instead: that request answers 503 (``annotate.middleware``), Django
closes the connection at the end of it, and the next request reconnects, as Django's own check would have done.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def prepared_cursor(self):
        """A cursor binding parameters on the server, whose statements psycopg prepares (see the module's doc);
        otherwise what ``cursor()`` returns (health check, error wrapping, query logging)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            return self._prepare_cursor(base.ServerBindingCursor(self.connection))

    def is_usable(self):
        conn = self.connection
        if conn is None or conn.closed or conn.broken:
            return False
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            return super().is_usable()
        try:
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
            events = poller.poll(0)
        except (OSError, ValueError):
            return False
        return super().is_usable() if events else True
