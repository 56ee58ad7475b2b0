"""Writes crowd4.csv: a 4-class categorical crowd with skewed annotators, for the Dawid-Skene tests.

Run once (``python tests/annotate/data/make_crowd4.py``); the seed fixes the file. 120 items, each labelled by 4
of 10 annotators whose confusion matrices put 45–90 % on the truth and spread the rest unevenly (each
annotator has classes they mistake it for), over skewed class shares. ``truth`` is the class each item was
drawn from; the tests compare aggregates with crowd-kit, not with it.
"""

from pathlib import Path

import numpy as np
import pandas as pd

SEED = 5  # a crowd that a 20-iteration cap gets wrong (two labels) and that converges in under 100 iterations
CLASSES = ["safe", "unsafe", "unsure", "off-topic"]


def crowd(seed: int = SEED, n_items: int = 120, n_annotators: int = 10, per_item: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    truth = rng.choice(k, n_items, p=[0.5, 0.25, 0.15, 0.1])
    confusion = np.zeros((n_annotators, k, k))  # [annotator, true, given]
    for a in range(n_annotators):
        accuracy = rng.uniform(0.45, 0.9)
        for c in range(k):
            confusion[a, c] = np.insert(rng.dirichlet(np.full(k - 1, 0.5)) * (1 - accuracy), c, accuracy)
    item = np.repeat(np.arange(n_items), per_item)
    annotator = np.concatenate([rng.choice(n_annotators, per_item, replace=False) for _ in range(n_items)])
    given = (rng.random(len(item))[:, None] > np.cumsum(confusion[annotator, truth[item]], axis=1)).sum(axis=1)
    return pd.DataFrame(
        {
            "item": [f"q{i:03d}" for i in item],
            "annotator": [f"ann{a}" for a in annotator],
            "label": np.array(CLASSES)[given],
            "truth": np.array(CLASSES)[truth[item]],
        }
    )


if __name__ == "__main__":
    crowd().to_csv(Path(__file__).with_name("crowd4.csv"), index=False)
