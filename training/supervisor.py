"""Running one attempt of one run, on the worker: prepare the data, start the runner, follow it, publish.

The runner goes into a subprocess (``python -m training.runners spec.json``, or ``accelerate launch`` when several
GPUs are visible), so a crash, a CUDA out-of-memory error or the kernel's OOM killer fails that run, never the
worker. ``train --foreground`` runs it in a thread of the calling process instead (:class:`ThreadSource`); the
loop that follows it is the same:

- every event and log line is collected; about once a second (and at least every TRAINING_HEARTBEAT_SECONDS)
  progress, new metric points, the log tail and the heartbeat are written in one compare-and-set update;
- that update also reads ``cancel_requested``: a cancelled run's process group gets SIGTERM, then SIGKILL after
  TRAINING_CANCEL_GRACE_SECONDS — so a cancel takes effect within seconds whatever the runner is doing;
- if the update finds the run no longer ours (the reaper re-queued or failed it), the child is killed and
  nothing is published.

The model is written to a temporary folder under ``ARTIFACT_ROOT/models/<project>/`` and renamed into place by
:func:`training.publishing.register_artifact` only when complete (generate and evaluate publish data instead:
:func:`training.publishing.publish_run`); checkpoints live in the run's work folder and
survive a lost worker, so the next attempt resumes from them.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import transaction

from . import kinds, lifecycle, publishing
from .datasets import run_datasets
from .models import RunStatus, TrainingRun
from .runners.__main__ import EVENT_PREFIX
from .runners.base import RunCancelled

BASE_DIR = Path(settings.BASE_DIR)


class RunFailed(Exception):
    pass


class Cancelled(Exception):
    pass


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- where the runner runs ------------------------------------------------------------------------


def visible_gpus() -> int:
    """GPUs a child would see, without importing torch into the worker: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def child_command(spec_path: Path) -> list[str]:
    """``accelerate launch`` over every visible GPU when there are several, plain python otherwise."""
    gpus = visible_gpus()
    if gpus > 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus)]
        config_file = os.environ.get("ACCELERATE_CONFIG_FILE")
        command += ["--config_file", config_file] if config_file else ["--multi_gpu"]
        return command + ["-m", "training.runners", str(spec_path)]
    return [sys.executable, "-m", "training.runners", str(spec_path)]


def child_environment() -> dict:
    env = dict(os.environ)
    # Models come from local folders only (MODEL_ROOTS, the registry): no library may reach for a hub.
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BASE_DIR), env.get("PYTHONPATH")]))
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGKILL this child when the worker dies (PR_SET_PDEATHSIG); elsewhere the runner's own watch does it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class ProcessSource:
    """The runner in a subprocess of its own process group; its stdout and stderr are read line by line."""

    def __init__(self, spec_path: Path):
        self.spec_path = spec_path
        self.lines: queue.Queue = queue.Queue()
        self.proc: subprocess.Popen | None = None
        self.killed_by_us = False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            child_command(self.spec_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=BASE_DIR,
            env=child_environment(),
            start_new_session=True,
            preexec_fn=_die_with_parent,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, name="runner-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def drain(self, timeout: float) -> tuple[list, bool]:
        """(lines or events read so far, finished?)."""
        items, finished = [], False
        try:
            item = self.lines.get(timeout=timeout)
            while True:
                if item is None:
                    finished = True
                    break
                items.append(_parse_line(item))
                item = self.lines.get_nowait()
        except queue.Empty:
            pass
        if finished:
            self.proc.wait()
        return items, finished

    def stop(self, grace: float) -> None:
        """SIGTERM to the whole group (accelerate's ranks included), SIGKILL if it is still there after ``grace``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.killed_by_us = True
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def outcome(self) -> dict:
        """Metrics on success; RunFailed with the reason otherwise."""
        code = self.proc.returncode
        if code == 0:
            result = self.spec_path.with_name("result.json")
            if not result.is_file():
                raise RunFailed("The training process exited without writing its result.")
            return json.loads(result.read_text(encoding="utf-8"))["metrics"]
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (the kernel's out-of-memory killer does this)" if code == -signal.SIGKILL else ""
            raise RunFailed(f"The training process was killed by {name}{hint}.")
        raise RunFailed(f"The training process exited with status {code}.")


class ThreadSource:
    """The runner in a thread of this process (``train --foreground``); stopping is cooperative, at a step end."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.items: queue.Queue = queue.Queue()
        self.stop_flag = threading.Event()
        self.metrics = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="runner", daemon=True)
        self.thread.start()

    def _emit(self, event: dict) -> bool:
        self.items.put(("event", event))
        return self.stop_flag.is_set()

    def _run(self) -> None:
        try:
            runner = kinds.get(self.spec["kind"]).load_runner()
            config = runner.CONFIG_CLASS.from_dict(self.spec["config"])
            self.metrics = runner.run(
                config, self.spec["datasets"], self.spec["output_dir"], self._emit, self.spec["checkpoint_dir"]
            )
        except BaseException as exc:  # noqa: BLE001 - reported by outcome()
            self.error = exc
            self.items.put(("event", {"event": "error", "message": f"{type(exc).__name__}: {exc}"}))
        finally:
            self.items.put(None)

    def drain(self, timeout: float) -> tuple[list, bool]:
        items, finished = [], False
        try:
            item = self.items.get(timeout=timeout)
            while True:
                if item is None:
                    finished = True
                    break
                items.append(item)
                item = self.items.get_nowait()
        except queue.Empty:
            pass
        return items, finished

    def stop(self, grace: float) -> None:
        self.stop_flag.set()
        self.thread.join()

    def outcome(self) -> dict:
        if isinstance(self.error, RunCancelled):
            raise Cancelled()
        if self.error is not None:
            raise RunFailed(f"{type(self.error).__name__}: {self.error}")
        return self.metrics


def _parse_line(line: str):
    if line.startswith(EVENT_PREFIX):
        try:
            return ("event", json.loads(line[len(EVENT_PREFIX) :]))
        except json.JSONDecodeError:
            pass
    return ("log", line)


# --- following a run ------------------------------------------------------------------------------


class Monitor:
    """Collects a run's events and log lines and writes them to the database about once a second."""

    def __init__(self, run: TrainingRun, log_path: Path, echo=None):
        self.run = run
        self.echo = echo
        self.log = open(log_path, "a", encoding="utf-8")
        self.tail = collections.deque(
            (run.log_tail or "").splitlines()[-lifecycle.LOG_TAIL_LINES :], maxlen=lifecycle.LOG_TAIL_LINES
        )
        self.step, self.total = None, run.progress_total or None
        self.metrics = dict(run.metrics or {})
        self.points: list[tuple[int, dict]] = []
        self.checkpoint = ""
        self.error_message = ""
        self.dirty = True
        self.urgent = False

    def line(self, text: str) -> None:
        self.log.write(text + "\n")
        self.tail.append(text[:500])
        self.dirty = True
        if self.echo:
            self.echo(text)

    def handle(self, item) -> None:
        kind, payload = item
        if kind == "log":
            self.line(payload)
            return
        event = payload.get("event")
        if event in ("start", "progress"):
            self.step, self.total = payload.get("step"), payload.get("total") or self.total
            self.dirty = True
            if event == "start" and self.step:
                self.line(f"[arbiter] resumed at step {self.step} of {self.total}")
        elif event == "metrics":
            values = payload.get("metrics", {})
            self.points.append((int(payload.get("step", 0)), values))
            self.metrics.update(values)
            self.step, self.total = payload.get("step", self.step), payload.get("total") or self.total
            shown = ", ".join(f"{k} {values[k]:.4g}" for k in self.shown_metrics(values))
            self.line(f"[step {self.step}/{self.total}] {shown}" if shown else f"[step {self.step}/{self.total}]")
        elif event == "checkpoint":
            path = Path(payload.get("path", ""))
            try:
                self.checkpoint = str(path.resolve().relative_to(Path(settings.ARTIFACT_ROOT).resolve()))
            except ValueError:
                self.checkpoint = str(path)
            self.line(f"[arbiter] checkpoint at step {payload.get('step')}")
            self.urgent = True  # the next attempt resumes from the checkpoint the database names: record it now
        elif event == "log":
            self.line(str(payload.get("message", "")))
        elif event == "error":
            self.error_message = str(payload.get("message", ""))
            self.line(f"[arbiter] error: {self.error_message}")

    def shown_metrics(self, values: dict) -> list[str]:
        """The metrics a progress line shows: the kind's key metrics (its config's ``KEY_METRICS``: reward's
        accuracy, DPO's reward margins and accuracies, the online kinds' reward and KL), each beside its held-out
        ``eval_`` twin, and the run's mean loss when the trainer reports it at the end."""
        kind = self.run.training_kind
        keys = getattr(kind.config, "KEY_METRICS", ("loss",)) if kind else ("loss",)
        wanted = [name for key in keys for name in (key, f"eval_{key}")] + ["train_loss"]
        return [name for name in wanted if isinstance(values.get(name), (int, float))]

    def tail_text(self) -> str:
        return "\n".join(self.tail)

    def flush(self) -> tuple[bool, bool]:
        mine, cancel = lifecycle.record_progress(
            self.run,
            step=self.step,
            total=self.total,
            metrics=self.metrics,
            points=self.points,
            log_tail=self.tail_text(),
            checkpoint=self.checkpoint,
        )
        self.points, self.dirty, self.urgent = [], False, False
        self.log.flush()
        return mine, cancel

    def follow(self, source) -> dict:
        """Until the source finishes: returns its metrics, or raises Cancelled, RunFailed or RunLost."""
        source.start()
        last_flush = 0.0
        try:
            while True:
                items, finished = source.drain(timeout=0.25)
                for item in items:
                    self.handle(item)
                if finished:
                    break
                now = time.monotonic()
                if (
                    self.urgent
                    or (self.dirty and now - last_flush >= 1.0)
                    or now - last_flush >= settings.TRAINING_HEARTBEAT_SECONDS
                ):
                    last_flush = now
                    mine, cancel = self.flush()
                    if not mine:
                        source.stop(settings.TRAINING_CANCEL_GRACE_SECONDS)
                        raise lifecycle.RunLost()
                    if cancel:
                        self.line("[arbiter] cancel requested: stopping the training process")
                        source.stop(settings.TRAINING_CANCEL_GRACE_SECONDS)
                        raise Cancelled()
        except BaseException:
            source.stop(settings.TRAINING_CANCEL_GRACE_SECONDS)
            raise
        try:
            return source.outcome()
        except RunFailed as exc:
            if self.error_message:
                raise RunFailed(self.error_message) from None
            last = [line for line in self.tail if line.strip() and not line.startswith("[")][-3:]
            raise RunFailed(str(exc) + (" Last output: " + " | ".join(last) if last else "")) from None

    def close(self) -> None:
        try:
            self.log.close()
        except OSError:  # a full disk: the log's last lines are lost, but the run's outcome must still be recorded
            pass


def disk_full_hint(error: str) -> str:
    """ENOSPC says nothing of where: name ARTIFACT_ROOT, its free space and what to do (tests/faults/test_disk_full.py)."""
    if "No space left on device" not in error and "Errno 28" not in error:
        return ""
    root = Path(settings.ARTIFACT_ROOT)
    try:
        free = f"{shutil.disk_usage(root).free / 2**20:.0f} MiB free now"
    except OSError:
        free = "its free space unknown"
    return f" — the disk under ARTIFACT_ROOT ({root}) ran out of space ({free}); free some, then retry the run: it resumes from its last checkpoint."


# --- one attempt ----------------------------------------------------------------------------------


def execute(run_id: int, attempt: int, *, in_process: bool = False, echo=None, on_claimed=None) -> TrainingRun | None:
    """Run attempt ``attempt`` of run ``run_id`` to its end. Returns the run as it ended (None if it is gone).

    ``on_claimed(run_id, attempt)`` runs once the claim is committed: the queue passes its watchdog
    (training.tasks.schedule_watch), which this module cannot import without importing the queue back."""
    run = lifecycle.claim_run(run_id, attempt, worker_name())
    if run is None:
        return TrainingRun.objects.filter(pk=run_id).first()
    if on_claimed is not None:
        transaction.on_commit(partial(on_claimed, run.pk, run.attempt))
    work = run.work_dir
    try:
        work.mkdir(parents=True, exist_ok=True)
        models_dir = Path(settings.ARTIFACT_ROOT) / "models" / run.project.slug
        models_dir.mkdir(parents=True, exist_ok=True)
        output_dir = Path(tempfile.mkdtemp(prefix=f".tmp-run{run.pk}-", dir=models_dir))
        monitor = Monitor(run, work / "log.txt", echo)
    except OSError as exc:
        lifecycle.finish_run(run, RunStatus.FAILED, error=f"Cannot write under ARTIFACT_ROOT: {exc}")
        return TrainingRun.objects.filter(pk=run_id).first()
    status, error = RunStatus.FAILED, ""
    try:
        monitor.line(
            f"[arbiter] attempt {attempt} on {run.worker}"
            + (f", resuming from {run.checkpoint}" if run.checkpoint else "")
        )
        datasets, dataset_hash = run_datasets(run)
        # "runner": the registry's module for the kind (training.kinds), for the child to import.
        spec = {
            "kind": run.kind,
            "runner": kinds.get(run.kind).runner,
            "config": run.config,
            "datasets": datasets,
            "output_dir": str(output_dir),
            "checkpoint_dir": str(work / "checkpoints"),
            "run": run.pk,
            "attempt": attempt,
        }
        spec_path = work / f"spec-{attempt}.json"
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        source = ThreadSource(spec) if in_process else ProcessSource(spec_path)
        metrics = monitor.follow(source)
        monitor.flush()
        publishing.publish_run(run, output_dir, metrics, dataset_hash)
        status = RunStatus.SUCCEEDED
    except lifecycle.RunLost:
        monitor.line("[arbiter] this worker lost the run (it was re-queued or failed); nothing published")
        status = None
    except Cancelled:
        status = RunStatus.CANCELLED
        monitor.line("[arbiter] cancelled")
    except (RunFailed, lifecycle.PublishFailed) as exc:
        error = str(exc)
        monitor.line(f"[arbiter] {error}")
    except Exception as exc:  # noqa: BLE001 - anything else fails the run with its reason, never the worker
        error = f"{type(exc).__name__}: {exc}"
        monitor.line(f"[arbiter] {error}")
    finally:
        monitor.close()
        shutil.rmtree(output_dir, ignore_errors=True)
    if status == RunStatus.FAILED:
        error += disk_full_hint(error)
    if status in (RunStatus.FAILED, RunStatus.CANCELLED):
        lifecycle.finish_run(run, status, error=error, metrics=monitor.metrics, log_tail=monitor.tail_text())
    if status in (RunStatus.SUCCEEDED, RunStatus.CANCELLED):
        # Kept after a failure, so that a retry resumes; useless once the run is over for good.
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return TrainingRun.objects.filter(pk=run_id).first()
