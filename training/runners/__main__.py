"""The worker's subprocess: ``python -m training.runners SPEC.json`` (or under ``accelerate launch``).

The spec names the kind, the resolved config, the dataset splits and the folders. Progress goes to stdout as
lines starting with ``@@arbiter `` followed by one JSON event; anything else printed is log. On success the metrics
are written to ``result.json`` beside the spec and the exit status is 0; on failure the last event is
``{"event": "error", "message": ...}`` and the status is 1. The process exits by itself when the worker that
started it dies, so a killed worker never leaves a training process behind.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from .base import RunCancelled

EVENT_PREFIX = "@@arbiter "


def emit(event: dict) -> None:
    # Only the main process of a multi-GPU launch reports (the others would repeat every event).
    if os.environ.get("RANK", "0") != "0":
        return
    sys.stdout.write(EVENT_PREFIX + json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def exit_when_orphaned(poll_seconds: float = 1.0) -> None:
    """A daemon thread that ends this process once its parent (the worker, or accelerate's launcher) is gone."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m training.runners SPEC.json", file=sys.stderr)
        return 2
    exit_when_orphaned()
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))

    try:
        # The registry named the runner's module in the spec (training.kinds), so a kind defined outside this
        # package runs too.
        runner = importlib.import_module(spec["runner"])
        config = runner.CONFIG_CLASS.from_dict(spec["config"])
        metrics = runner.run(
            config, spec["datasets"], spec["output_dir"], lambda event: emit(event), spec.get("checkpoint_dir")
        )
    except RunCancelled:
        emit({"event": "cancelled"})
        return 4
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the worker, then the status says it
        traceback.print_exc()
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    if os.environ.get("RANK", "0") == "0":
        tmp = spec_path.with_name("result.json.tmp")
        tmp.write_text(json.dumps({"metrics": metrics}, default=str), encoding="utf-8")
        os.replace(tmp, spec_path.with_name("result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
