#!/usr/bin/env python
"""``make bench``: run every benchmark module in bench/ (each ``bench/<name>.py`` but this one and ``_*.py``).

Each module runs in its own process (``python bench/<name>.py [args]``), one after the other, so that one
benchmark's Django setup, database or server never leaks into the next. Arguments after the options below
are passed to every module; ``--quick`` is understood by all of them.

    .venv/bin/python bench/run.py                 # everything, default settings
    .venv/bin/python bench/run.py --quick         # a smoke run of everything
    .venv/bin/python bench/run.py --only serve -- --sizes 100000 --concurrency 50
    .venv/bin/python bench/run.py --only aggregation   # majority vs Dawid-Skene vs crowd-kit on simulated crowds
    make bench BENCH_ARGS=--quick

Exit status: 0 when every module exited 0 (a missed performance target is reported, not an error);
otherwise the first non-zero status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def modules() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "run" and not p.stem.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    parser = argparse.ArgumentParser(prog="bench/run.py", description="Run Arbiter's benchmarks.")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this module (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the benchmark modules and exit")
    parser.add_argument("--quick", action="store_true", help="short runs (passed on to every module)")
    args, rest = parser.parse_known_args(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    names = modules()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}; there are: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    passed = (["--quick"] if args.quick else []) + rest
    status = 0
    for name in names:
        print(f"\n######## bench/{name}.py {' '.join(passed)}".rstrip(), flush=True)
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(BENCH / f"{name}.py"), *passed], cwd=BENCH.parent, env=os.environ)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the module too: give it time to stop its servers, then stop it.
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=10)
            raise
        print(f"######## bench/{name}.py exited {returncode} after {time.perf_counter() - t:.0f} s", flush=True)
        if returncode and not status:
            status = returncode
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
