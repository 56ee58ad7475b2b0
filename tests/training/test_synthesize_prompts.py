"""Synthetic prompts (issue 16 item 3): ROUGE-L, the filters of Self-Instruct and Evol-Instruct, the
synthesize_prompts kind through Django, and ``train generate --from-run N`` on its prompts.

The policy is the tiny random causal Llama of conftest.py: what it writes is noise, so the real runs assert the
invariants (every kept prompt passes every filter, none is a near-duplicate of the pool or of another, the counts
add up, the lineage is recorded), never the quality. Only the loop's handling of what the tiny model cannot write
(near-duplicates, refusals, unchanged rewrites) is checked with a scripted stand-in for the sampling step.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotate.models import Role
from tests.training.conftest import write_jsonl
from training import kinds, launching, selectors
from training.forms import option_applies
from training.management.commands.train import kinds_table
from training.models import RunStatus, TrainingRun
from training.runners.base import ConfigError
from training.runners.rouge import RougeIndex, lcs_length, length_bound, rouge_l, tokens
from training.runners.synthesize_prompts import (
    DROP_REASONS,
    Filters,
    parse_instruction,
    prompt_text,
    run,
    synthesize,
)
from training.runners.synthesize_prompts_config import OPERATIONS, SynthesizePromptsRunConfig
from training.selectors import TrainingError

# Short outputs and small batches: the tests check what is kept and counted, not how well a random model writes.
SAMPLING = {"max_new_tokens": 16, "answer_max_new_tokens": 6, "temperature": 1.0, "max_prompt_length": 200}
POOL = [
    "Write a short poem about the sea at night.",
    "Explain how a bicycle gear works to a child.",
    "List three uses of vinegar in cleaning.",
    "Translate the sentence 'good morning' into French.",
    "Summarise the causes of the French revolution.",
    "Give two tips for writing clear emails.",
]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _config(**values) -> SynthesizePromptsRunConfig:
    return SynthesizePromptsRunConfig.from_dict(values)


# --- ROUGE-L ---------------------------------------------------------------------------------------------------


def _lcs_table(a: list[str], b: list[str]) -> int:
    """The textbook dynamic programme, to check the bit-parallel one against."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_matches_hand_computed_values():
    # Lin 2004's example: "police killed the gunman" / "police kill the gunman": LCS "police the gunman" (3 of 4).
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 * 3 / 8)
    assert rouge_l("police killed the gunman", "the gunman kill police") == pytest.approx(2 * 2 / 8)
    # "the cat on the mat" is common to both (5 of 6 words each): F = 10/12.
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(10 / 12)
    assert rouge_l("Hello, WORLD!", "hello world") == 1.0 and rouge_l("", "hello") == 0.0
    assert rouge_l("a b c", "a x b y c") == pytest.approx(6 / 8) == length_bound(3, 5)  # a subsequence: the bound
    assert tokens("Don't stop_now, café 2") == ["don", "t", "stop", "now", "café", "2"]


def test_the_bit_parallel_lcs_equals_the_textbook_one_and_never_beats_the_bound():
    rng = random.Random(0)
    for _ in range(400):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]  # over 64 tokens: several machine words
        assert lcs_length(a, b) == _lcs_table(a, b) == lcs_length(b, a)
        if a or b:
            assert 2 * _lcs_table(a, b) / (len(a) + len(b)) <= length_bound(len(a), len(b)) + 1e-12


def test_the_index_finds_exactly_the_near_duplicates_and_skips_most_of_the_pool():
    rng = random.Random(1)
    vocabulary = [f"w{i}" for i in range(60)]
    pool = [" ".join(rng.choices(vocabulary, k=rng.randint(3, 40))) for _ in range(300)]
    index = RougeIndex(pool)
    queries = [" ".join(rng.choices(vocabulary, k=rng.randint(3, 40))) for _ in range(30)]
    queries += [p + " w1" for p in pool[:20]] + [" ".join(p.split()[:-1]) for p in pool[20:40]]  # near copies
    found = 0
    for query in queries:
        best = max(rouge_l(query, text) for text in pool)
        hit = index.near_duplicate(query, 0.7)
        assert (hit is not None) == (best > 0.7), query
        if hit is not None:
            found += 1
            assert hit[1] == pytest.approx(rouge_l(query, pool[hit[0]])) and hit[1] > 0.7
    assert found >= 38  # the near copies (a 3-word text less its last word may fall below)
    assert index.comparisons < len(queries) * len(pool) / 2  # the length bound and the early exit skip the rest


# --- the filters, on hand-written instructions ----------------------------------------------------------------


def test_each_filter_drops_what_the_papers_drop_and_passes_the_rest():
    filters = Filters(_config(min_words=3, max_words=12))
    cases = {
        "Name two rivers.": "",
        "Hi there": "too_short",
        " ".join(["word"] * 13): "too_long",
        "- List five fruits that are red.": "malformed",
        "#Rewritten Prompt#: list five red fruits please": "malformed",
        "Rewrite the given prompt with more detail.": "malformed",
        "Describe the picture of a sunset in detail.": "keyword",
        "Draw a cat and then describe it.": "keyword",
        "Go to the market and buy some apples.": "keyword",
        "Write a haiku about maple trees in autumn.": "",  # "maple" is no "map", "profile" no "file"
        "Update my profile summary to sound friendlier.": "",
        "List five fruits that are red.": "",
    }
    for text, reason in cases.items():
        assert filters.text_reason(text) == reason, text
    # Evol-Instruct: a rewrite with the same words as its prompt is a failed evolution (case and punctuation aside).
    assert filters.text_reason("list five fruits, that are RED", "List five fruits that are red.") == "unchanged"
    assert filters.text_reason("List five fruits that are red and sweet.", "List five fruits that are red.") == ""
    # An in-depth rewrite must keep its prompt (30% of its words, in order, by default); in breadth need not. Seen
    # with SmolLM2: "I'm ready to assist you with your request." as a "deepen" of a question about mattresses.
    origin = "What is the difference between King and California King mattresses?"
    assert filters.text_reason("I'm ready to assist you with your request.", origin, depth=True) == "off_prompt"
    assert filters.text_reason("I'm ready to assist you with your request.", origin) == ""
    deeper = "Compare King and California King mattresses by width and price."
    assert filters.text_reason(deeper, origin, depth=True) == ""
    answers = {
        "": "no_answer",
        "... !!": "no_answer",
        "Yes": "no_answer",  # min_answer_words=2
        "Sorry, I cannot help with that.": "refusal",
        "As an AI, I have no eyes to see it.": "refusal",
        "I'm sorry " + "but here is a long answer " * 20: "",  # a refusal phrase in a long answer is an answer
        "Apples, cherries and strawberries are red.": "",
        "I cannotate nothing here at all": "",  # whole words only
    }
    for answer, reason in answers.items():
        assert filters.answer_reason(answer) == reason, answer
    off = Filters(_config(unanswerable_keywords=[], refusal_phrases=[], min_answer_words=0))
    assert off.text_reason("Draw a cat and then describe it.") == "" and off.answer_reason("Sorry, no.") == ""


def test_parsing_takes_one_instruction_and_a_conversation_gives_its_last_user_turn():
    assert parse_instruction(" Task 9: Name three rivers in Asia.\nTask 10: Sing a song.", "self_instruct") == (
        "Name three rivers in Asia."
    )
    assert (
        parse_instruction("Name three rivers.\n\nThen rank them.", "self_instruct")
        == "Name three rivers.\n\nThen rank them."
    )
    assert parse_instruction("Task 9: x", "evol_instruct") == "Task 9: x"  # an evolution is taken whole
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": " What is 2 plus 2? "},
    ]
    assert prompt_text(messages) == "What is 2 plus 2?" and prompt_text(" Hi ") == "Hi"


def test_bad_settings_are_refused_with_the_reason():
    bad = [
        ({"rouge_threshold": 1.5}, "rouge_threshold must be from 0 to 1"),
        ({"rouge_threshold": -0.1}, "rouge_threshold must be from 0 to 1"),
        ({"operations": ["deepen", "shorten"]}, "Unknown operation shorten"),
        ({"operations": []}, "at least one operation"),
        ({"num_generated_examples": 9}, "num_generated_examples from 0 to num_examples"),
        ({"min_words": 5, "max_words": 4}, "at most max_words"),
        ({"depth_template": "Rewrite: {prompt}"}, "depth_template must contain {operation}"),
        ({"method": "lora"}, "method must be one of self_instruct, evol_instruct"),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            _config(**values)
    assert _config(method="evol_instruct", rouge_threshold=1).rouge_threshold == 1.0


# --- the loop, with a scripted stand-in where the tiny model cannot write prompts --------------------------------


class Script:
    """A stand-in for the sampling step: writes the next scripted instruction for each request and answers each
    instruction from a table (what the tiny random model cannot do: write a near-copy, refuse). The answer pass is
    the one asked for ``answer_max_new_tokens``."""

    def __init__(self, instructions: list[str], answers: dict[str, str], answer_tokens: int = 64):
        self.instructions, self.answers, self.answer_tokens = list(instructions), answers, answer_tokens
        self.requests: list[str] = []

    def __call__(self, conversations, max_new_tokens):
        texts = [c[-1]["content"] for c in conversations]
        if max_new_tokens == self.answer_tokens:
            return [self.answers.get(t, "A fine answer of several words.") for t in texts]
        self.requests += texts
        return [self.instructions.pop(0) for _ in texts]


def test_the_loop_keeps_what_passes_checks_the_batch_against_itself_and_bootstraps_self_instruct():
    rows = [{"prompt": p, "item": 10 + i, "external_id": f"p{i}"} for i, p in enumerate(POOL)]
    written = [
        "Write a short poem about the sea at night please.",  # near_duplicate of the pool (0.94)
        "Name the planets of the solar system in order.",  # kept
        "Name the planets of the solar system in order!",  # near_duplicate of the one before, same batch
        "Describe the smell of rain on hot stones.",  # refusal
        "Compose a limerick about a forgetful wizard.",  # kept (second batch: shows generated examples)
        "Plot the growth of a bean over ten days.",  # keyword
    ]
    answers = {"Describe the smell of rain on hot stones.": "Sorry, I cannot smell."}
    script = Script(written, answers)
    config = _config(num_candidates=6, generation_batch_size=4, num_examples=4, num_generated_examples=2, seed=3)
    events = []
    candidates = synthesize(config, rows, script, events.append)
    assert [c.reason for c in candidates] == ["near_duplicate", "", "near_duplicate", "refusal", "", "keyword"]
    # The first batch sees only the pool; the second, once one instruction is kept, shows it among the examples.
    assert all(len(c.seed) == 4 for c in candidates)
    assert all("generated" not in ref for c in candidates[:4] for ref in c.seed)
    assert {"generated": "synth-1"} in candidates[4].seed and "Name the planets" in script.requests[4]
    assert all(
        rows[ref["index"]]["external_id"] == ref["external_id"] for c in candidates for ref in c.seed if "index" in ref
    )
    progress = [(e["step"], e["total"], e["phase"]) for e in events]
    assert progress == [(0, 4, "write"), (1, 4, "write"), (2, 4, "answer"), (3, 4, "write"), (4, 4, "answer")]


def test_evol_instruct_rewrites_each_pool_prompt_with_a_drawn_operation_and_drops_failed_evolutions():
    rows = [{"prompt": p, "item": None, "external_id": f"p{i}"} for i, p in enumerate(POOL[:3])]
    written = [
        "write a short poem about THE SEA at night",  # unchanged
        "#Rewritten Prompt#: explain gears to a child using two examples",  # malformed
        "List three uses of vinegar in cleaning kitchens, with safety warnings for each and a cost estimate.",
    ]
    config = _config(method="evol_instruct", operations=["deepen", "in_breadth"], check_answers=False, seed=0)
    script = Script(written, {})
    candidates = synthesize(config, rows, script, lambda e: None)
    assert [c.reason for c in candidates] == ["unchanged", "malformed", ""]
    assert [c.seed[0]["index"] for c in candidates] == [0, 1, 2] and [c.origin for c in candidates] == POOL[:3]
    assert {c.operation for c in candidates} <= {"deepen", "in_breadth"}
    for candidate, request in zip(candidates, script.requests):
        assert candidate.origin in request
        assert ("#Created Prompt#" in request) == (candidate.operation == "in_breadth")
    assert candidates[2].answer == ""  # check_answers=False: nothing was answered


# --- real runs with the tiny causal model ----------------------------------------------------------------------


def _check_invariants(out: Path, pool: list[str], config, metrics: dict) -> list[dict]:
    """What every run guarantees, whatever the model wrote."""
    kept, written = _rows(out / "prompts.jsonl"), _rows(out / "synthesis.jsonl")
    filters = Filters(config)
    assert metrics["n_generated"] == len(written) == (config.num_candidates or len(pool))
    assert metrics["n_kept"] == len(kept) == sum(w["kept"] for w in written)
    assert metrics["n_generated"] == metrics["n_kept"] + sum(metrics[f"dropped_{r}"] for r in DROP_REASONS)
    for reason in DROP_REASONS:
        assert metrics[f"dropped_{reason}"] == sum(w["reason"] == reason for w in written)
    assert [r["prompt"] for r in kept] == [w["text"] for w in written if w["kept"]]
    threshold = config.rouge_threshold
    for number, row in enumerate(kept):
        text = row["prompt"]
        assert row["method"] == config.method and row["external_id"] == f"synth-{number + 1}" and row["seed"]
        assert filters.text_reason(text) == "" and filters.answer_reason(written_answer(written, text)) == ""
        assert max(rouge_l(text, p) for p in pool) <= threshold
        assert all(rouge_l(text, other["prompt"]) <= threshold for other in kept[:number])
    return kept


def written_answer(written: list[dict], text: str) -> str:
    return next(w["answer"] for w in written if w["kept"] and w["text"] == text)


@pytest.mark.parametrize("method", ["self_instruct", "evol_instruct"])
def test_a_real_run_keeps_only_prompts_that_pass_every_filter(models_root, tmp_path, method):
    rows = [{"prompt": p, "item": 100 + i, "external_id": f"q{i}"} for i, p in enumerate(POOL)]
    rows[-1]["prompt"] = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": POOL[-1]}]
    # max_words below what 16 tokens sometimes make, so the length filter has work to do on real output too.
    config = _config(
        **SAMPLING,
        base_model=str(models_root / "tiny-causal"),
        method=method,
        num_candidates=10,
        generation_batch_size=5,
        max_words=15,
        seed=5,
    )
    events = []
    metrics = run(config, {"train": write_jsonl(rows, tmp_path / "pool.jsonl")}, tmp_path / "out", events.append)
    kept = _check_invariants(tmp_path / "out", POOL, config, metrics)
    assert metrics["n_kept"] >= 1 and metrics["dropped_too_long"] >= 1, metrics
    for row in kept:
        for ref in row["seed"]:
            if "index" in ref:
                assert rows[ref["index"]]["external_id"] == ref["external_id"]
        if method == "evol_instruct":
            assert row["operation"] in OPERATIONS and len(row["seed"]) == 1
        else:  # the whole pool (6 < 8 examples), and up to 2 instructions kept in earlier batches
            assert row["operation"] == "" and sum("index" in ref for ref in row["seed"]) == len(POOL)
            assert len(row["seed"]) <= 8
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["templates"] == config.template_hashes() and info["metrics"] == metrics
    assert [e["step"] for e in events if e["event"] in ("start", "progress")] == [0, 1, 2, 3, 4]


# --- through Django: launch, worker, the page, generate --from-run, refusals -------------------------------------


def _train(*args) -> list[str]:
    out = io.StringIO()
    call_command("train", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().splitlines()


@pytest.mark.django_db
def test_a_synthesis_run_feeds_a_generate_run_whose_round_has_the_new_prompts(
    make_project, make_member, models_root, client
):
    from training import supervisor

    project = make_project(slug="syn", n_items=6)
    # The tiny model writes word salad, which never keeps its prompt: the off-prompt filter is off here.
    values = {
        **SAMPLING,
        "method": "evol_instruct",
        "num_candidates": 6,
        "generation_batch_size": 6,
        "seed": 1,
        "min_kept_from_prompt": 0,
    }
    synth = launching.launch_run(
        project=project, kind="synthesize_prompts", base_model="tiny-causal", values=values, enqueue=False
    )
    assert synth.inputs["prompts_from"] == "items" and synth.inputs["prompts"] == 6
    assert synth.inputs["templates"] == SynthesizePromptsRunConfig.from_dict(values).template_hashes()
    synth = supervisor.execute(synth.pk, synth.attempt, in_process=True)
    assert synth.status == RunStatus.SUCCEEDED, synth.error
    kept_file = synth.work_dir / "prompts.jsonl"
    kept = _rows(kept_file)
    written = _rows(synth.work_dir / "synthesis.jsonl")  # every instruction, kept or dropped, with the reason
    assert len(written) == synth.metrics["n_generated"] == 6 and sum(not w["reason"] for w in written) == len(kept)
    assert len(kept) == synth.metrics["n_kept"] >= 1 and not selectors.generated_round(synth)
    pool = [prompt_text(p) for p in project.items.values_list("prompt", flat=True)]
    config = SynthesizePromptsRunConfig.from_dict(synth.config)
    assert all(max(rouge_l(r["prompt"], p) for p in pool) <= config.rouge_threshold for r in kept)
    assert all(r["seed"][0]["item"] in set(project.items.values_list("pk", flat=True)) for r in kept)

    # The run page of a kind that publishes no model: its counts and where the prompts are.
    client.force_login(make_member(project, "res", Role.RESEARCHER))
    page = client.get(reverse("training-run", args=[synth.pk])).content.decode()
    assert f"New prompts: {len(kept)} kept of 6 written" in page and f"--from-run {synth.pk}" in page
    assert "n_kept" in page

    # generate --from-run: the new prompts become a round, the synthesis run its parent.
    lines = _train(
        "generate", "--project", "syn", "--base-model", "tiny-causal", "--from-run", str(synth.pk), "--foreground",
        "--set", "max_new_tokens=6", "--set", "temperature=1.0",
    )  # fmt: skip
    result = json.loads(lines[-1])
    generate = TrainingRun.objects.get(pk=result["run"])
    assert result["status"] == "succeeded", generate.error
    assert generate.parent == synth and generate.inputs["prompts_from"] == f"run {synth.pk}"
    assert generate.inputs["from_run"]["run"] == synth.pk and generate.inputs["from_run"]["rows"] == len(kept)
    round_ = selectors.generated_round(generate)
    items = list(round_.items.all())
    assert {item.prompt[0]["content"] for item in items} <= {r["prompt"] for r in kept} and items
    assert round_.source["prompts"] == f"run {synth.pk}" and round_.source["run"] == generate.pk
    # Lineage end to end: round → generate run → synthesis run → its base model and seed pool (the items).
    assert generate.parent.base_model == synth.base_model and synth.inputs["prompts_hash"]

    # Another evolution epoch: a synthesis run whose pool is this one's prompts.
    again = launching.launch_run(
        project=project, kind="synthesize_prompts", base_model="tiny-causal", from_run=synth.pk, enqueue=False
    )
    assert again.parent == synth and again.inputs["prompts"] == len(kept)
    assert [r["prompt"][0]["content"] for r in _rows(again.prompts_path)] == [r["prompt"] for r in kept]


@pytest.mark.django_db
def test_bad_input_is_refused_at_launch_and_writes_nothing(make_project, settings):
    project = make_project(slug="syn", n_items=3)
    other = make_project(slug="other", n_items=0)
    runs_dir = Path(settings.ARTIFACT_ROOT) / "runs"

    def nothing_written(count):
        return TrainingRun.objects.count() == count and not (
            runs_dir.exists() and len(list(runs_dir.iterdir())) > count
        )

    for values, message in [
        ({"rouge_threshold": 1.2}, "rouge_threshold must be from 0 to 1"),
        ({"operations": ["shorten"]}, "Unknown operation shorten"),
    ]:
        with pytest.raises(TrainingError, match=re.escape(message)):
            launching.launch_run(
                project=project, kind="synthesize_prompts", base_model="tiny-causal", values=values, enqueue=False
            )
        assert nothing_written(0)
    with pytest.raises(CommandError, match="rouge_threshold must be from 0 to 1"):
        _train("synthesize_prompts", "--project", "syn", "--base-model", "tiny-causal", "--set", "rouge_threshold=7")
    assert nothing_written(0)

    queued = launching.launch_run(project=project, kind="synthesize_prompts", base_model="tiny-causal", enqueue=False)
    generate = launching.launch_run(project=project, kind="generate", base_model="tiny-causal", enqueue=False)
    refused = [
        (dict(from_run=generate.pk), f"Run {generate.pk} is a generate run; --from-run takes a synthesize_prompts run"),
        (dict(from_run=queued.pk), f"Run {queued.pk} is queued: only a succeeded run has prompts to give"),
        (dict(from_run=999), "No run 999"),
        (dict(from_run=queued.pk, prompts=launching.Prompts(source="items")), "leave out --snapshot and the prompts"),
    ]
    for kwargs, message in refused:
        with pytest.raises(TrainingError, match=re.escape(message)):
            launching.launch_run(project=project, kind="generate", base_model="tiny-causal", enqueue=False, **kwargs)
        assert nothing_written(2)
    with pytest.raises(TrainingError, match="belongs to project syn"):
        launching.launch_run(project=other, kind="generate", base_model="tiny-causal", from_run=queued.pk)
    with pytest.raises(CommandError, match="--from-run is for sft runs"):
        _train("dpo", "--project", "syn", "--base-model", "tiny-causal", "--from-run", str(queued.pk))
    queued.refresh_from_db()
    assert nothing_written(2) and queued.status == RunStatus.QUEUED


def test_the_registry_the_form_and_the_command_know_the_kind():
    kind = kinds.get("synthesize_prompts")
    assert (kind.reads, kind.publishes, kind.base_models) == (kinds.PROMPTS, kinds.NEW_PROMPTS, (kinds.CAUSAL_LM,))
    assert kind.prompts_file == "prompts.jsonl" and kind.default_prompts == "items" and not kind.makes_model
    assert kinds.names(publishes=kinds.NEW_PROMPTS) == ["synthesize_prompts"] and kind.available
    # Its own method option is offered; the training options it inherits and never reads are not.
    assert option_applies(kind, "method") and option_applies(kind, "rouge_threshold")
    assert not option_applies(kind, "learning_rate") and not option_applies(kind, "lora_r")
    assert not option_applies(kinds.get("generate"), "method")
    assert "synthesize_prompts" in kinds_table() and "new prompts (for generate --from-run)" in kinds_table()


@pytest.mark.django_db
def test_the_launch_form_offers_the_synthesis_method_and_not_the_training_options(client, make_project, make_member):
    project = make_project(slug="syn", n_items=2)
    client.force_login(make_member(project, "boss", Role.ADMIN))
    page = client.get(reverse("training-new"), {"kind": "synthesize_prompts"}).content.decode()
    options = set(re.findall(r'name="opt_([a-z_]+)"', page))
    assert {"method", "operations", "rouge_threshold", "num_candidates", "depth_template", "temperature"} <= options
    assert not options & {"learning_rate", "lora_r", "max_steps", "reward_models"}
    method = re.search(r'<select name="opt_method"[^>]*>(.*?)</select>', page, re.S).group(1)
    assert 'value="evol_instruct"' in method and 'value="lora"' not in method
