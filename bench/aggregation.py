#!/usr/bin/env python
"""Aggregation benchmark: how often majority vote and Dawid-Skene find the truth on simulated crowds.

Each crowd: items with a true class drawn from skewed class shares, each labelled by a few annotators whose
confusion matrices are known: a share on the truth drawn from the crowd's accuracy range, the rest spread
unevenly over the other classes (Dirichlet(0.5): favourite mistakes). Crowds vary the number of classes (2–5),
labels per item and how skewed (how often wrong) the annotators are. For each crowd, several seeds, it prints:

- the accuracy against the truth of majority vote (ties to the class that sorts first), of our Dawid-Skene
  (``annotate.reliability.dawid_skene``, SQUAREM-accelerated EM run to its fixed point), of the old 20-iteration cap, and of crowd-kit's
  ``DawidSkene`` with its default early stop (tol 1e-5 on the likelihood gain) and with it disabled (500
  iterations, the cap of ours);
- our EM steps (median and most; three per SQUAREM cycle, each a plain EM iteration's work) and how many fits
  converged before the cap;
- labels on which ours differs from crowd-kit run to 500 iterations, and the time of ours and of crowd-kit's.

Pure computation, no database. Results also go to bench/results/ as JSON (git-ignored).

    .venv/bin/python bench/aggregation.py            # 5 seeds per crowd
    .venv/bin/python bench/aggregation.py --quick    # 2 seeds, smaller crowds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from annotate.reliability import DS_MAX_ITER, dawid_skene, majority_vote  # noqa: E402

# (classes, items, annotators, labels per item, accuracy range)
CROWDS = [
    (2, 1000, 20, 3, (0.55, 0.95)),
    (2, 1000, 20, 5, (0.4, 0.8)),
    (3, 1000, 20, 3, (0.5, 0.9)),
    (3, 1000, 20, 5, (0.35, 0.8)),
    (4, 1000, 20, 4, (0.5, 0.9)),
    (4, 1000, 20, 5, (0.35, 0.8)),
    (5, 1000, 20, 3, (0.5, 0.9)),
    (5, 1000, 20, 5, (0.3, 0.8)),
]


def simulate(seed: int, k: int, n_items: int, n_annotators: int, per_item: int, accuracy: tuple[float, float]):
    """(labels, truth): ``item``, ``annotator``, ``label`` and each item's true class."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(k, n_items, p=rng.dirichlet(np.full(k, 2.0)))
    confusion = np.zeros((n_annotators, k, k))  # [annotator, true, given]
    for a in range(n_annotators):
        right = rng.uniform(*accuracy)
        for c in range(k):
            confusion[a, c] = np.insert(rng.dirichlet(np.full(k - 1, 0.5)) * (1 - right), c, right)
    item = np.repeat(np.arange(n_items), per_item)
    annotator = np.concatenate([rng.choice(n_annotators, per_item, replace=False) for _ in range(n_items)])
    given = (rng.random(len(item))[:, None] > np.cumsum(confusion[annotator, truth[item]], axis=1)).sum(axis=1)
    return pd.DataFrame({"item": item, "annotator": annotator, "label": given}), truth


def accuracy(labels: pd.Series, truth: np.ndarray) -> float:
    return float(np.mean(labels.to_numpy() == truth[labels.index.to_numpy()]))


def run_crowd(crowd, seeds: list[int]) -> dict:
    from crowdkit.aggregation import DawidSkene

    k, n_items, n_annotators, per_item, span = crowd
    scores: dict[str, list[float]] = {
        "majority": [],
        "ours": [],
        "ours_20": [],
        "crowdkit_default": [],
        "crowdkit_500": [],
    }
    iterations, converged, differ, ours_s, crowdkit_s = [], 0, 0, 0.0, 0.0
    for seed in seeds:
        labels, truth = simulate(seed, k, n_items, n_annotators, per_item, span)
        renamed = labels.rename(columns={"item": "task", "annotator": "worker"})
        scores["majority"].append(accuracy(majority_vote(labels), truth))
        t = time.perf_counter()
        ours = dawid_skene(labels)
        ours_s += time.perf_counter() - t
        scores["ours"].append(accuracy(ours.labels, truth))
        iterations.append(ours.n_iter)
        converged += ours.converged
        scores["ours_20"].append(accuracy(dawid_skene(labels, max_iter=20, tol=None).labels, truth))
        scores["crowdkit_default"].append(accuracy(DawidSkene().fit_predict(renamed), truth))
        t = time.perf_counter()
        full = DawidSkene(n_iter=DS_MAX_ITER, tol=-np.inf).fit_predict(renamed)
        crowdkit_s += time.perf_counter() - t
        scores["crowdkit_500"].append(accuracy(full, truth))
        differ += int((full.reindex(ours.labels.index) != ours.labels).sum())
    return {
        "classes": k,
        "items": n_items,
        "annotators": n_annotators,
        "per_item": per_item,
        "accuracy_range": list(span),
        "seeds": len(seeds),
        **{name: float(np.mean(values)) for name, values in scores.items()},
        "iterations_median": float(np.median(iterations)),
        "iterations_max": int(max(iterations)),
        "converged": int(converged),
        "labels_unlike_crowdkit_500": differ,
        "ours_s": ours_s / len(seeds),
        "crowdkit_500_s": crowdkit_s / len(seeds),
    }


def main(quick: bool = False, seeds: int | None = None) -> int:
    warnings.filterwarnings("ignore", module="crowdkit")
    n_seeds = seeds or (2 if quick else 5)
    crowds = [(k, 300 if quick else n, a, p, span) for k, n, a, p, span in CROWDS]
    header = (
        f"{'k':>2} {'items':>5} {'ann':>3} {'per':>3} {'acc.':>9} | {'majority':>8} {'DS ours':>8} {'DS 20 it':>8} "
        f"{'ck dflt':>8} {'ck 500':>8} | {'iter med':>8} {'max':>4} {'conv':>5} {'≠ck500':>6} | {'ours s':>7} {'ck500 s':>7}"
    )
    print(f"Accuracy against the truth, mean over {n_seeds} seeds per crowd (ck = crowd-kit DawidSkene).")
    print(header)
    print("-" * len(header))
    results = []
    for crowd in crowds:
        row = run_crowd(crowd, list(range(n_seeds)))
        results.append(row)
        low, high = row["accuracy_range"]
        print(
            f"{row['classes']:>2} {row['items']:>5} {row['annotators']:>3} {row['per_item']:>3} {low:.2f}–{high:.2f} | "
            f"{row['majority']:>8.3f} {row['ours']:>8.3f} {row['ours_20']:>8.3f} {row['crowdkit_default']:>8.3f} "
            f"{row['crowdkit_500']:>8.3f} | {row['iterations_median']:>8.0f} {row['iterations_max']:>4} "
            f"{row['converged']:>2}/{row['seeds']:<2} {row['labels_unlike_crowdkit_500']:>6} | {row['ours_s']:>7.3f} {row['crowdkit_500_s']:>7.2f}",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"aggregation-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"quick": quick, "seeds": n_seeds, "crowds": results}, indent=2))
    print(f"Wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 300 items per crowd")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per crowd (default 5, 2 with --quick)")
    args = parser.parse_args()
    sys.exit(main(args.quick, args.seeds))
