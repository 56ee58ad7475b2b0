"""A stand-in for ``python -m training.runners`` in supervisor tests: behaves as told, starts in milliseconds.

python fake_runner.py MODE SPEC.json      MODE: slow | crash | sigkill | succeed
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

PREFIX = "@@arbiter "


def emit(event):
    print(PREFIX + json.dumps(event), flush=True)


def main(mode, spec_path):
    spec = json.loads(Path(spec_path).read_text())
    Path(spec_path).with_name(f"fake-{mode}.pid").write_text(str(os.getpid()))
    emit({"event": "start", "step": 0, "total": 1000})
    if mode == "crash":
        print("Traceback (most recent call last):", flush=True)
        emit({"event": "error", "message": "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"})
        return 1
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "succeed":
        out = Path(spec["output_dir"])
        (out / "model.safetensors").write_bytes(b"not really weights")
        (out / "arbiter.json").write_text(json.dumps({"kind": "reward", "is_adapter": False}))
        Path(spec_path).with_name("result.json").write_text(json.dumps({"metrics": {"eval_accuracy": 1.0}}))
        return 0
    for step in range(1, 1000):
        emit({"event": "progress", "step": step, "total": 1000})
        if step % 5 == 0:
            emit({"event": "metrics", "step": step, "total": 1000, "metrics": {"loss": 1.0 / step}})
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
