#!/usr/bin/env python
"""Soak: many annotators with faults against gunicorn on PostgreSQL, then count what was lost or duplicated.

PRODUCT.md §5: every acknowledged judgment is stored exactly once, also under concurrency, double submits and
dropped connections. bench/serve.py measures speed on the happy path; this run is about the unhappy ones.

What it does, start to end:

1. Drops and recreates its own database (``arbiter_soak``, never ``postgres``), migrates it, creates a pairwise
   project (overlap 3, a short lease so that abandoned tasks expire within the run) and N annotators, each with
   its own API token. The database is dropped at the end (``--keep-db`` keeps it). The project starts with 2
   items per annotator; more are imported whenever its open slots run low (until 85% of the main phase), so the
   work never runs out and little is left for the drain.
2. Starts ``gunicorn config.wsgi`` on 127.0.0.1 (gthread, persistent connections, DEBUG off).
3. Main phase, ``--seconds`` long (or until the project is complete): every annotator loops next-task → submit
   with no think time, on its own keep-alive connection, and now and then
   - submits twice at once with the same idempotency key, on two connections (a double click);
   - replays an acknowledged submit (a retry after a lost answer);
   - sends the submit on a raw socket and closes it without reading the answer, then retries with the same key
     (a network drop: the server may or may not have stored it, the client cannot know);
   - disappears mid-task for longer than the lease; on return it submits the stale task (the slot is taken
     back if nobody filled it, else 409) or just asks for the next one.
   With ``--restart-db`` PostgreSQL is stopped at half time and started again ``--down`` seconds later:
   requests must answer 503 (with a reason) meanwhile and the app must recover on its own; clients retry
   with the same key.
4. Drain: no more faults; the annotators go on until every item is finished (abandoned leases expire and their
   items are reassigned), then stop after their current task.
5. Checks from the database: every acknowledged judgment exists exactly once with its key and annotator
   (lost), no (annotator, key) or (annotator, item) with two rows and no key acknowledged with two ids or
   created twice (duplicated), no row that was never acknowledged, no item with more than ``overlap``
   judgments, every abandoned item finished, and items' open_slots / n_judgments agree with their tasks.
6. Prints throughput, p50/p95/p99 per call, the faults injected and those counts; writes JSON under
   bench/results/. Exit status 1 when any count that must be 0 is not.

    .venv/bin/python bench/soak.py                                  # 200 annotators, 600 s
    .venv/bin/python bench/soak.py --annotators 50 --seconds 60     # a short run
    .venv/bin/python bench/soak.py --seconds 120 --restart-db       # with a PostgreSQL restart at 60 s

tests/faults/test_soak.py and test_db_restart.py run the same load (``run_soak``) and checks (``verify``)
against the test database, shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.serve import (  # noqa: E402 - after the path set-up, so that `python bench/soak.py` works
    PG_ADMIN_URL,
    PG_SERVER,
    Annotator,
    Gunicorn,
    GunicornSpec,
    RawClient,
    gunicorn_specs,
    pct,
    recreate_database,
)

RESULTS = ROOT / "bench" / "results"
OVERLAP = 3
REQUEST_TIMEOUT = 30.0  # seconds for one HTTP call before it counts as a transport error
SUBMIT_GIVE_UP = 90.0  # a submit is retried (same key) this long at most, through a database restart


def log(msg: str) -> None:
    print(msg, flush=True)


# --- configuration ------------------------------------------------------------------------------------


@dataclass
class SoakConfig:
    seconds: float = 600.0  # main phase
    drain_seconds: float = 60.0  # at most, after the main phase
    lease_seconds: int = 15
    p_vanish: float = 0.02  # per loop: the annotator disappears mid-task for longer than the lease
    p_double: float = 0.05  # per submit: two at once with the same key
    p_replay: float = 0.03  # per submit: the same request again after its answer
    p_drop: float = 0.05  # per submit: sent on a socket closed before the answer, then retried
    p_late_submit: float = 0.5  # a returning annotator submits its stale task (else asks for the next one)
    seed: int = 1
    restart_at: float | None = None  # seconds into the main phase; None: no restart
    down_seconds: float = 3.0
    recovery_grace: float = 5.0  # after PostgreSQL is back, 503s are still expected this long
    top_up: bool = True  # add items while the open slots run low (below top_up_below x annotators) in the main phase
    top_up_below: float = 2.0
    top_up_until: float = 0.85  # fraction of the main phase; then the annotators finish what is there
    top_up_min: int = 50  # items per top-up at least (else one per annotator)
    forced_faults: bool = False  # the first five annotators start with one fault each (short runs: every kind happens)


@dataclass
class SoakRecord:
    latencies: dict = field(default_factory=lambda: {"next": [], "submit": []})  # ms of calls that got an answer
    statuses: Counter = field(default_factory=Counter)  # "next 200", "submit 503", ...
    acked: dict = field(default_factory=dict)  # (user id, key) -> judgment id
    acked_twice_differently: int = 0  # one key acknowledged with two judgment ids
    answered_other_key: int = 0  # a submit answered with a judgment that carries another key
    created: Counter = field(default_factory=Counter)  # (user id, key) -> 201 answers
    faults: Counter = field(default_factory=Counter)
    loops: int = 0  # acknowledged submits
    main_loops: int = 0
    unexpected_5xx: int = 0
    expected_503: int = 0  # 503 while the database was down (and shortly after)
    unavailable_reasons: Counter = field(default_factory=Counter)
    acked_after_restart: int = 0  # acknowledged after PostgreSQL was started again: the app recovered
    transport_errors: int = 0  # no HTTP answer (reset, refused, timeout) outside the deliberate drops
    refused: Counter = field(default_factory=Counter)  # 4xx answers to submits: "409 ...": n
    gave_up: int = 0  # submits still failing after SUBMIT_GIVE_UP
    errors: list = field(default_factory=list)  # samples
    timeline: dict = field(default_factory=dict)
    main_seconds: float = 0.0
    drain_seconds: float = 0.0
    project_complete: bool = False
    items_added: int = 0  # by top-ups

    def sample(self, text: str) -> None:
        if len(self.errors) < 12:
            self.errors.append(text)


# --- PostgreSQL control (the local cluster, as root or postgres) ---------------------------------------


def pg_cluster() -> list[str]:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".") if p.isdigit()])
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


def pg_ctl(action: str) -> None:
    subprocess.run([*pg_cluster(), action], check=True, capture_output=True, timeout=120)


def pg_running() -> bool:
    return subprocess.run([*pg_cluster(), "status"], capture_output=True, timeout=30).returncode == 0


def ensure_pg_running() -> None:
    """Start the cluster if it is down: a run that fails half-way must never leave PostgreSQL stopped."""
    if not pg_running():
        pg_ctl("start")


def can_control_pg() -> str | None:
    """None when this process can stop and start the local cluster; else why not."""
    if not Path("/etc/postgresql").is_dir():
        return "no local PostgreSQL cluster (/etc/postgresql is missing)"
    if os.geteuid() != 0 and Path("/etc/postgresql").stat().st_uid != os.geteuid():
        return "stopping PostgreSQL needs root or the postgres user"
    try:
        if not pg_running():
            return "the local PostgreSQL cluster is not running"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"pg_ctlcluster failed: {exc}"
    return None


# --- the project --------------------------------------------------------------------------------------


def create_soak_project(slug: str, n_items: int, n_annotators: int, lease_seconds: int, prefix: str = "soak"):
    """A pairwise project (overlap 3, short lease) with ``n_items`` items and annotators with tokens."""
    from django.db import connection

    from annotate import actions
    from annotate.models import Kind, Role
    from bench.serve import import_with_actions, import_with_copy

    project = actions.create_project(
        slug=slug, kind=Kind.PAIRWISE, overlap=OVERLAP, lease_seconds=lease_seconds, name=f"Soak {slug}"
    )
    if n_items > 5000 and connection.vendor == "postgresql":
        import_with_copy(project, n_items)
    else:
        import_with_actions(project, n_items)
    annotators = []
    for i in range(n_annotators):
        membership = actions.add_member(project, f"{prefix}-{i:03d}", Role.ANNOTATOR)
        annotators.append(Annotator(membership.user.username, membership.user_id, actions.issue_token(membership.user)))
    return project, annotators


# --- the load -----------------------------------------------------------------------------------------

MAIN, DRAIN, HOLD, STOP = "main", "drain", "hold", "stop"
FORCED = ["vanish-late", "vanish", "double", "drop", "replay"]  # the first loop of the first annotators (forced_faults)


class Soak:
    """One soak over one project: the annotators' coroutines and the coordinator that moves the phases."""

    def __init__(self, base: str, project, annotators: list[Annotator], config: SoakConfig):
        self.base = base
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port
        self.project_id, self.slug, self.overlap = project.pk, project.slug, project.overlap
        self.annotators = annotators
        self.config = config
        self.rec = SoakRecord()
        self.phase = MAIN
        self.busy = 0  # annotators inside a loop (not waiting, not away)
        self.db_down_since: float | None = None
        self.db_back_at: float | None = None
        self.counters = {"connections": 0}
        # Database checks run in one thread of their own (the ORM is synchronous); its connection is closed at the end.
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soak-db")

    # --- timing and classification

    def in_restart_window(self) -> bool:
        if self.db_down_since is None:
            return False
        return self.db_back_at is None or time.perf_counter() < self.db_back_at + self.config.recovery_grace

    async def call(self, kind: str, client, coro) -> tuple[int, bytes]:
        """``coro`` (a request on ``client``) with a time limit: (status, body), or (0, b"") without an answer."""
        t0 = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(coro, REQUEST_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a transport failure is counted, then retried by the caller
            await client.close()  # a half-read answer must not be taken for the next one
            self.rec.transport_errors += 1
            self.rec.statuses[f"{kind} no answer"] += 1
            self.rec.sample(f"{kind}: no answer: {exc!r}")
            return 0, b""
        self.rec.latencies[kind].append((time.perf_counter() - t0) * 1000)
        self.rec.statuses[f"{kind} {status}"] += 1
        if status >= 500:
            if status == 503 and self.in_restart_window():
                self.rec.expected_503 += 1
                try:
                    self.rec.unavailable_reasons[json.loads(body).get("detail", "")[:80]] += 1
                except (ValueError, AttributeError):
                    self.rec.unavailable_reasons[body[:80].decode(errors="replace")] += 1
            else:
                self.rec.unexpected_5xx += 1
                self.rec.sample(f"{kind} {status}: {body[:300]!r}")
        return status, body

    async def nap(self, seconds: float) -> bool:
        """Sleep in short steps; False as soon as the soak stops."""
        end = time.perf_counter() + seconds
        while self.phase != STOP:
            left = end - time.perf_counter()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.25))
        return False

    # --- one annotator

    async def annotator(self, ann: Annotator, index: int) -> None:
        rng = random.Random(self.config.seed * 100_003 + index)
        client = RawClient(self.base, ann.token, self.counters)
        twin = RawClient(self.base, ann.token, self.counters)  # the second connection of a double click
        state = {"n": 0, "backoff": 0.1}
        # With forced_faults the first annotators each start with one kind of fault, so a short run has them all.
        forced = FORCED[index] if self.config.forced_faults and index < len(FORCED) else None
        try:
            while True:
                while self.phase == HOLD:
                    await asyncio.sleep(0.05)
                if self.phase == STOP:
                    return
                self.busy += 1
                try:
                    if not await self.step(ann, client, twin, rng, state, forced):
                        return
                finally:
                    self.busy -= 1
                forced = None
        finally:
            await client.close()
            await twin.close()

    async def step(self, ann: Annotator, client, twin, rng: random.Random, state: dict, forced: str | None) -> bool:
        """One next-task → submit loop, with a fault now and then; False when the soak stopped meanwhile."""
        status, body = await self.call("next", client, client.get(f"/api/projects/{self.slug}/next-task/"))
        if status == 204:  # nothing for now: leases held by others may still expire
            return await self.nap(0.5)
        if status != 200:
            if status and status < 500:
                self.rec.sample(f"next-task {status}: {body[:200]!r}")
            state["backoff"] = min(state["backoff"] * 2, 1.0)
            return await self.nap(state["backoff"])
        state["backoff"] = 0.1
        task = json.loads(body)
        c = self.config
        faults = self.phase == MAIN
        if faults and (forced in ("vanish", "vanish-late") or (forced is None and rng.random() < c.p_vanish)):
            self.rec.faults["vanished mid-task"] += 1
            self.busy -= 1  # away: the drain does not wait for this annotator (a stop ends its absence)
            try:
                if not await self.nap(c.lease_seconds + rng.uniform(0.5, c.lease_seconds)):
                    return False
            finally:
                self.busy += 1
            if forced != "vanish-late" and (forced == "vanish" or rng.random() >= c.p_late_submit):
                return True
            self.rec.faults["late submit after the lease expired"] += 1
        state["n"] += 1
        key = f"{ann.username}:{state['n']}"
        payload = json.dumps(
            {
                "choice": rng.choice("AB"),
                "strength": rng.randint(0, 3),
                "idempotency_key": key,
                "duration_ms": rng.randint(500, 5000),
            }
        ).encode()
        path = f"/api/tasks/{task['id']}/judgments/"
        roll = rng.random() if faults else 1.0
        if forced == "double" or roll < c.p_double:
            self.rec.faults["double submit (same key, two connections at once)"] += 1
            got = await asyncio.gather(
                self.submit(ann, client, path, key, payload), self.submit(ann, twin, path, key, payload)
            )
            acked = got[0] is not None or got[1] is not None
        elif forced == "drop" or roll < c.p_double + c.p_drop:
            self.rec.faults["connection dropped before the answer, then retried"] += 1
            await self.drop(ann, path, payload, close_hard=rng.random() < 0.3, wait=rng.uniform(0, 0.03))
            acked = await self.submit(ann, client, path, key, payload) is not None
        elif forced == "replay" or roll < c.p_double + c.p_drop + c.p_replay:
            self.rec.faults["replay after the answer (same key)"] += 1
            first = await self.submit(ann, client, path, key, payload)
            again = await self.submit(ann, client, path, key, payload, replay=True) if first is not None else None
            acked = first is not None
            if first is not None and again is not None and again != first:
                self.rec.sample(f"replay of {key} answered judgment {again}, first was {first}")
        else:
            acked = await self.submit(ann, client, path, key, payload) is not None
        if acked:
            self.rec.loops += 1
            if faults:
                self.rec.main_loops += 1
        return True

    async def submit(
        self, ann: Annotator, client, path: str, key: str, payload: bytes, replay: bool = False
    ) -> int | None:
        """POST until answered (the same key each time): the judgment id, or None when refused."""
        give_up = time.perf_counter() + SUBMIT_GIVE_UP
        backoff = 0.1
        while True:
            status, body = await self.call("submit", client, client.post_json(path, payload))
            if status in (200, 201):
                return self.acknowledge(ann, key, status, body, replay)
            if 400 <= status < 500:
                detail = body[:120].decode(errors="replace")
                self.rec.refused[f"{status} {detail}"] += 1
                if status != 409:
                    self.rec.sample(f"submit {status}: {detail}")
                return None
            if time.perf_counter() > give_up:
                self.rec.gave_up += 1
                self.rec.sample(f"submit {key}: still {status} after {SUBMIT_GIVE_UP:.0f} s, given up")
                return None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    def acknowledge(self, ann: Annotator, key: str, status: int, body: bytes, replay: bool) -> int | None:
        judgment = json.loads(body)
        jid = judgment.get("id")
        if not isinstance(jid, int):
            self.rec.sample(f"submit {key} answered without a judgment id: {judgment}")
            return None
        if judgment.get("idempotency_key") != key:  # acknowledged all the same: the client was told it is stored
            self.rec.answered_other_key += 1
            self.rec.sample(f"submit {key} answered judgment {jid} with key {judgment.get('idempotency_key')!r}")
        if status == 201:
            self.rec.created[(ann.user_id, key)] += 1
            if replay:
                self.rec.sample(f"replay of {key} created a new judgment {jid}")
        if self.db_back_at is not None:
            self.rec.acked_after_restart += 1
            self.rec.timeline.setdefault("first_ack_after_start", time.perf_counter() - self.db_back_at)
        previous = self.rec.acked.setdefault((ann.user_id, key), jid)
        if previous != jid:
            self.rec.acked_twice_differently += 1
            self.rec.sample(f"key {key} acknowledged as judgment {previous} and as {jid}")
        return jid

    async def drop(self, ann: Annotator, path: str, payload: bytes, close_hard: bool, wait: float) -> None:
        """Send the submit on a new connection and close it without reading the answer."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Token {ann.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(head.encode() + payload)
            await writer.drain()
            if wait:
                await asyncio.sleep(wait)
            if close_hard:
                writer.transport.abort()  # RST: the server may not even read the request
            else:
                writer.close()  # FIN: the server reads it, answers into a closed socket
        except OSError as exc:
            self.rec.sample(f"drop: could not even send: {exc!r}")

    # --- the coordinator

    async def in_db(self, fn):
        """``fn()`` in the database thread; None if the database is unreachable (it reconnects next time)."""

        def guarded():
            from django.db import InterfaceError, OperationalError, connection

            try:
                return fn()
            except (OperationalError, InterfaceError):
                connection.close()
                return None

        return await asyncio.get_running_loop().run_in_executor(self.db, guarded)

    def _incomplete(self) -> int:
        """Items still short of ``overlap`` judgments."""
        from annotate.models import Item

        return Item.objects.filter(
            project_id=self.project_id, purpose=Item.Purpose.NORMAL, n_judgments__lt=self.overlap
        ).count()

    def _top_up(self) -> None:
        """Import a batch of new items when the open slots run low: the work never runs out before the end of the
        main phase, and little is left for the drain (which must finish every item, abandoned ones included)."""
        from django.db.models import Sum

        from annotate import actions
        from annotate.imports import ParsedItem
        from annotate.models import Item, Project
        from bench.serve import synthetic_item

        c = self.config
        open_slots = (
            Item.objects.filter(project_id=self.project_id, purpose=Item.Purpose.NORMAL).aggregate(n=Sum("open_slots"))[
                "n"
            ]
            or 0
        )
        if open_slots >= c.top_up_below * len(self.annotators):
            return
        batch = max(c.top_up_min, len(self.annotators))
        start = Item.objects.filter(project_id=self.project_id).count()
        parsed = []
        for i in range(start, start + batch):
            ext, prompt, responses = synthetic_item(i)
            parsed.append(ParsedItem(line=i + 1, prompt=prompt, responses=responses, external_id=ext))
        actions.import_items(Project.objects.get(pk=self.project_id), parsed, source={"file": "bench/soak.py (top-up)"})
        self.rec.items_added += batch

    async def restart_db(self) -> None:
        loop = asyncio.get_running_loop()
        self.db_down_since = time.perf_counter()
        self.rec.timeline["db_stop_at"] = self.db_down_since - self.t0
        await loop.run_in_executor(None, pg_ctl, "stop")
        self.rec.timeline["db_stopped_at"] = time.perf_counter() - self.t0
        probe = RawClient(self.base, "-", self.counters)
        try:
            status, body = await asyncio.wait_for(probe.get("/healthz"), REQUEST_TIMEOUT)
            self.rec.timeline["healthz_while_down"] = f"{status} {body[:80].decode(errors='replace')}"
        except Exception as exc:  # noqa: BLE001 - reported
            self.rec.timeline["healthz_while_down"] = f"no answer: {exc!r}"
        finally:
            await probe.close()
        await asyncio.sleep(self.config.down_seconds)
        await loop.run_in_executor(None, pg_ctl, "start")
        self.db_back_at = time.perf_counter()
        self.rec.timeline["db_started_at"] = self.db_back_at - self.t0

    async def coordinate(self) -> None:
        c = self.config
        main_end = self.t0 + c.seconds
        top_up_until = self.t0 + c.seconds * c.top_up_until
        restart = None
        while time.perf_counter() < main_end:
            await asyncio.sleep(min(0.5, max(0.0, main_end - time.perf_counter())))
            if c.restart_at is not None and restart is None and time.perf_counter() - self.t0 >= c.restart_at:
                restart = asyncio.ensure_future(self.restart_db())
            if restart is None or restart.done():
                if c.top_up and time.perf_counter() < top_up_until:
                    await self.in_db(self._top_up)
                elif await self.in_db(self._incomplete) == 0:
                    self.rec.project_complete = True
                    break
        if restart is not None:
            await restart  # never leave the database down
        self.rec.main_seconds = time.perf_counter() - self.t0
        # Drain: no more faults, until every item is finished (abandoned ones are reassigned once their lease ran
        # out), at most drain_seconds.
        self.phase = DRAIN
        drain_start = time.perf_counter()
        deadline = drain_start + c.drain_seconds
        while time.perf_counter() < deadline:
            if await self.in_db(self._incomplete) == 0:
                # Hold new loops and let those under way finish, then check once more with nobody working.
                self.phase = HOLD
                while self.busy and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                if not self.busy and await self.in_db(self._incomplete) == 0:
                    self.rec.project_complete = True
                    break
                self.phase = DRAIN
            await asyncio.sleep(0.5)
        self.rec.drain_seconds = time.perf_counter() - drain_start
        self.phase = STOP

    async def run(self) -> SoakRecord:
        self.t0 = time.perf_counter()
        try:
            coordinator = asyncio.ensure_future(self.coordinate())
            await asyncio.gather(*(self.annotator(a, i) for i, a in enumerate(self.annotators)), coordinator)
        finally:
            self.phase = STOP
            self.db.submit(_close_connections).result()
            self.db.shutdown()
        self.rec.timeline["total"] = time.perf_counter() - self.t0
        return self.rec


def _close_connections() -> None:
    from django.db import connections

    connections.close_all()


def run_in_own_loop(coroutine):
    """``asyncio.run``, in a thread of its own when this thread already runs a loop (under pytest, Playwright's
    sync API keeps one running in the main thread while its browser is open)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result = {}

    def target():
        try:
            result["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="soak-loop")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def run_soak(base: str, project, annotators: list[Annotator], config: SoakConfig) -> SoakRecord:
    """The load against a running server, to its end (main phase, drain); the record of what was answered."""
    soak = Soak(base, project, annotators, config)
    try:
        return run_in_own_loop(soak.run())
    finally:
        if config.restart_at is not None:
            ensure_pg_running()


# --- verification -------------------------------------------------------------------------------------


def verify(project, rec: SoakRecord) -> dict:
    """Counts from the database against what the clients were told. Every ``must_be_zero`` count must be 0."""
    from django.db.models import Count, Exists, F, OuterRef, Q

    from annotate.models import Item, Judgment, Task

    judgments = Judgment.objects.filter(project=project)
    acked_ids = set(rec.acked.values())
    found = {}
    ids = sorted(acked_ids)
    for start in range(0, len(ids), 500):  # small chunks: SQLite caps the parameters of one query
        for jid, key, uid in Judgment.objects.filter(pk__in=ids[start : start + 500]).values_list(
            "id", "idempotency_key", "annotator_id"
        ):
            found[jid] = (key, uid)
    in_project = set(judgments.values_list("id", flat=True))
    lost = sum(1 for (uid, key), jid in rec.acked.items() if found.get(jid) != (key, uid))
    overlap = project.overlap
    abandoned = Item.objects.filter(project=project).filter(
        Exists(Task.objects.filter(item=OuterRef("pk"), status=Task.Status.EXPIRED))
    )
    current = Count("judgments", filter=Q(judgments__is_current=True))
    taken = Count("tasks", filter=Q(tasks__status__in=[Task.Status.LEASED, Task.Status.DONE]))
    done = Count("tasks", filter=Q(tasks__status=Task.Status.DONE))
    bookkeeping = (
        Item.objects.filter(project=project, purpose=Item.Purpose.NORMAL)
        .annotate(taken=taken, done=done)
        .exclude(open_slots=overlap - F("taken"), n_judgments=F("done"))
    )
    dup_keys = judgments.values("annotator_id", "idempotency_key").annotate(n=Count("id")).filter(n__gt=1).count()
    dup_items = judgments.values("annotator_id", "item_id").annotate(n=Count("id")).filter(n__gt=1).count()
    out = {
        "acknowledged": len(rec.acked),
        "acknowledged_found": sum(1 for (uid, key), jid in rec.acked.items() if found.get(jid) == (key, uid)),
        "judgments_in_project": len(in_project),
        "lost": lost,
        "duplicate_keys_in_db": dup_keys,
        "duplicate_annotator_item_in_db": dup_items,
        "key_acknowledged_as_two_ids": rec.acked_twice_differently,
        "key_created_twice": sum(1 for n in rec.created.values() if n > 1),
        "answered_other_key": rec.answered_other_key,
        "unacknowledged_rows": len(in_project - acked_ids),
        "items_over_overlap": judgments.values("item_id").annotate(n=Count("id")).filter(n__gt=overlap).count(),
        "abandoned_items": abandoned.count(),
        "abandoned_items_unfinished": abandoned.annotate(c=current).filter(c__lt=overlap).count(),
        "items_bookkeeping_off": bookkeeping.count(),
        "unexpected_5xx": rec.unexpected_5xx,
        "transport_errors": rec.transport_errors,
        "submits_given_up": rec.gave_up,
        "expected_503": rec.expected_503,
        "items_complete": Item.objects.filter(project=project, n_judgments__gte=overlap).count(),
        "items": Item.objects.filter(project=project).count(),
        "tasks": dict(Task.objects.filter(project=project).values_list("status").annotate(n=Count("id")).order_by()),
    }
    unfinished = abandoned.annotate(c=current).filter(c__lt=overlap)[:5]
    out["abandoned_unfinished_detail"] = [
        {
            "item": item.pk,
            "open_slots": item.open_slots,
            "n_judgments": item.n_judgments,
            "tasks": list(
                item.tasks.values_list("annotator__username", "status", "leased_at", "lease_expires_at", "done_at")
            ),
        }
        for item in unfinished
    ]
    out["duplicated"] = dup_keys + dup_items + out["key_acknowledged_as_two_ids"] + out["key_created_twice"]
    must_be_zero = [
        "lost",
        "duplicated",
        "answered_other_key",
        "unacknowledged_rows",
        "items_over_overlap",
        "abandoned_items_unfinished",
        "items_bookkeeping_off",
        "unexpected_5xx",
        "transport_errors",
        "submits_given_up",
    ]
    out["failures"] = {k: out[k] for k in must_be_zero if out[k]}
    out["ok"] = not out["failures"]
    return out


# --- report -------------------------------------------------------------------------------------------


def summary(rec: SoakRecord, check: dict, n_annotators: int) -> dict:
    calls = {
        kind: {
            "n": len(v),
            "p50": pct(v, 50),
            "p95": pct(v, 95),
            "p99": pct(v, 99),
            "max": max(v, default=float("nan")),
        }
        for kind, v in rec.latencies.items()
    }
    return {
        "annotators": n_annotators,
        "main_seconds": rec.main_seconds,
        "drain_seconds": rec.drain_seconds,
        "loops_per_s": rec.main_loops / rec.main_seconds if rec.main_seconds else float("nan"),
        "requests_per_s": sum(len(v) for v in rec.latencies.values()) / rec.timeline.get("total", float("nan")),
        "calls": calls,
        "statuses": dict(sorted(rec.statuses.items())),
        "faults": dict(rec.faults),
        "refused": dict(rec.refused),
        "unavailable_reasons": dict(rec.unavailable_reasons),
        "timeline": rec.timeline,
        "project_complete": rec.project_complete,
        "acked_after_restart": rec.acked_after_restart,
        "items_added": rec.items_added,
        "errors": rec.errors,
        "verify": check,
    }


def print_report(s: dict) -> None:
    v = s["verify"]
    log("")
    log(
        f"Soak: {s['annotators']} annotators, main phase {s['main_seconds']:.0f} s, drain {s['drain_seconds']:.1f} s"
        f" ({'project complete' if s['project_complete'] else 'project not complete when the load stopped'})"
    )
    log(
        f"  throughput: {s['loops_per_s']:.1f} acknowledged loops/s in the main phase, {s['requests_per_s']:.1f} requests/s overall"
    )
    log(f"  {'call':<8} {'n':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind, c in s["calls"].items():
        log(f"  {kind:<8} {c['n']:>7} {c['p50']:>8.1f} {c['p95']:>8.1f} {c['p99']:>8.1f} {c['max']:>8.0f}")
    log("  answers: " + ", ".join(f"{k}: {n}" for k, n in s["statuses"].items()))
    log("  faults injected: " + (", ".join(f"{k}: {n}" for k, n in s["faults"].items()) or "none"))
    if s["refused"]:
        log(
            "  refused submits (expected: late submits whose item others completed): "
            + ", ".join(f"{k[:70]}: {n}" for k, n in s["refused"].items())
        )
    if s["timeline"].get("db_stop_at") is not None:
        t = s["timeline"]
        log(
            f"  PostgreSQL stopped at {t['db_stop_at']:.1f} s (down at {t['db_stopped_at']:.1f} s), started again at "
            f"{t['db_started_at']:.1f} s; {v['expected_503']} answers were 503 meanwhile: {s['unavailable_reasons']}"
        )
        log(
            f"  /healthz while down: {t.get('healthz_while_down')}; first acknowledged submit "
            f"{t.get('first_ack_after_start', float('nan')):.2f} s after the start, {s['acked_after_restart']} acknowledged after it"
        )
    log("")
    log(f"  acknowledged judgments      {v['acknowledged']:>7}   found exactly once {v['acknowledged_found']}")
    log(f"  lost                        {v['lost']:>7}")
    log(
        f"  duplicated                  {v['duplicated']:>7}   (db: same key {v['duplicate_keys_in_db']}, same item "
        f"{v['duplicate_annotator_item_in_db']}; answers: one key two ids {v['key_acknowledged_as_two_ids']}, created twice {v['key_created_twice']})"
    )
    log(
        f"  unacknowledged rows         {v['unacknowledged_rows']:>7}   answers with another key {v['answered_other_key']}"
    )
    log(f"  items over overlap          {v['items_over_overlap']:>7}")
    log(f"  abandoned items             {v['abandoned_items']:>7}   unfinished {v['abandoned_items_unfinished']}")
    log(f"  bookkeeping off             {v['items_bookkeeping_off']:>7}")
    log(f"  5xx (unexpected)            {v['unexpected_5xx']:>7}   503 while the database was down {v['expected_503']}")
    log(f"  no answer / given up        {v['transport_errors']:>7} / {v['submits_given_up']}")
    log(
        f"  items complete              {v['items_complete']:>7} of {v['items']} ({s['items_added']} added during the run); tasks {v['tasks']}"
    )
    if s["errors"]:
        log("  samples: " + " | ".join(s["errors"][:6]))
    log(f"  -> {'OK' if v['ok'] else 'FAILED: ' + json.dumps(v['failures'])}")


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--annotators", type=int, default=200)
    p.add_argument("--seconds", type=float, default=600.0, help="main phase (default 600)")
    p.add_argument(
        "--items",
        type=int,
        help="items at the start (default 2 per annotator); more are imported "
        "whenever the open slots run low (below 2 per annotator), until 85%% of the main phase",
    )
    p.add_argument("--lease", type=int, default=15, help="lease seconds of the soak project (default 15)")
    p.add_argument("--drain", type=float, default=90.0, help="longest drain after the main phase (default 90 s)")
    p.add_argument("--restart-db", action="store_true", help="stop PostgreSQL at half time and start it again")
    p.add_argument(
        "--down", type=float, default=3.0, help="seconds PostgreSQL stays down with --restart-db (default 3)"
    )
    p.add_argument(
        "--gunicorn",
        type=gunicorn_specs,
        default=gunicorn_specs("gthread:4x2"),
        metavar="SPEC",
        help="gthread:WORKERSxTHREADS or sync:WORKERS (default gthread:4x2)",
    )
    p.add_argument("--db-name", default="arbiter_soak")
    p.add_argument("--keep-db", action="store_true", help="keep the database afterwards (default: dropped)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="where to write the results (default bench/results/soak-<time>.json)")
    args = p.parse_args(argv)
    if args.items is None:
        args.items = 2 * args.annotators
    if args.db_name in {"postgres", "test", "root", "test_postgres", "template0", "template1"}:
        p.error(f"--db-name {args.db_name} is not the soak's to drop")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # cleans up (gunicorn, PostgreSQL, the database) as Ctrl-C does
    if args.restart_db and (why := can_control_pg()):
        log(f"--restart-db: {why}")
        return 2
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": f"{PG_SERVER}/{args.db_name}",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DEBUG": "0",
            "LOG_LEVEL": "ERROR",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("CONN_MAX_AGE", None)  # the default: persistent connections with health checks
    os.environ.update(env)
    os.environ.pop("CONN_MAX_AGE", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

    import django

    t = time.perf_counter()
    recreate_database(args.db_name)
    django.setup()
    from django.core.management import call_command
    from django.db import connections

    gunicorn = None
    try:
        call_command("migrate", verbosity=0, interactive=False)
        project, annotators = create_soak_project("soak", args.items, args.annotators, args.lease)
        log(
            f"database {args.db_name}: migrated, {args.items} items, {args.annotators} annotators in {time.perf_counter() - t:.1f} s"
        )
        spec: GunicornSpec = args.gunicorn[0]
        gunicorn = Gunicorn(spec, env, RESULTS / f"gunicorn-soak-{stamp}.log")
        log(f"gunicorn {spec.describe()} up on {gunicorn.base} in {gunicorn.start():.1f} s")
        config = SoakConfig(
            seconds=args.seconds,
            drain_seconds=args.drain,
            lease_seconds=args.lease,
            seed=args.seed,
            restart_at=args.seconds / 2 if args.restart_db else None,
            down_seconds=args.down,
        )
        connections.close_all()  # a restart must not find this process's connection idle in the database
        rec = run_soak(gunicorn.base, project, annotators, config)
        if gunicorn.proc.poll() is not None:
            raise RuntimeError(f"gunicorn died during the soak:\n{gunicorn.log_tail()}")
        connections.close_all()
        s = summary(rec, verify(project, rec), len(annotators))
        s["config"] = {**asdict(config), "items": args.items, "gunicorn": str(spec)}
    finally:
        if gunicorn is not None:
            gunicorn.stop()
        if args.restart_db:
            ensure_pg_running()
        connections.close_all()
        if not args.keep_db:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
    print_report(s)
    out = args.json or RESULTS / f"soak-{stamp}.json"
    out.write_text(json.dumps(s, indent=1, default=str))
    log(
        f"\nresults written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
        f"{'' if args.keep_db else f'; database {args.db_name} dropped'}"
    )
    return 0 if s["verify"]["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: gunicorn stopped, database dropped", file=sys.stderr)
        sys.exit(130)
