"""The sampling kinds' runners without Django: generate, rejection_sampling and evaluate on the tiny causal Llama of
conftest.py (random weights, so its texts are noise, but real sampling, scoring and fine-tuning), and the pure
pieces they are made of."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import write_jsonl
from training.runners import load_runner
from training.runners.base import ConfigError, RunnerError
from training.runners.evaluate import EvaluateRunConfig, outcome, wilson_interval
from training.runners.evaluate import run as run_evaluate
from training.runners.generate import GenerateRunConfig
from training.runners.generate import run as run_generate
from training.runners.policy import Sample, encode_prompt, length_batches, load_policy_tokenizer, response_end
from training.runners.rejection_sampling import RejectionSamplingRunConfig, select_best
from training.runners.rejection_sampling import run as run_rejection_sampling

# Short responses and one batch for everything: the tests check what is written, not how well a random model talks.
SAMPLING = {"max_new_tokens": 6, "generation_batch_size": 64, "temperature": 1.0}
MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me about topic 9."}]


def prompt_file(folder: Path, n: int = 4, messages: bool = True) -> str:
    rows = [
        {"prompt": f"Question {i}: tell me about topic {i}.", "item": 100 + i, "external_id": f"q{i}"} for i in range(n)
    ]
    if messages:
        rows[-1] = {"prompt": MESSAGES, "item": None, "external_id": "chat"}
    return write_jsonl(rows, folder / "prompts.jsonl")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def other_policy(models_root, tmp_path_factory) -> Path:
    """A second random causal Llama with tiny-causal's tokenizer: a baseline that writes different texts."""
    from tests.tiny import tiny_causal_lm

    folder = tmp_path_factory.mktemp("other") / "other-causal"
    tokenizer = load_policy_tokenizer(models_root / "tiny-causal")
    torch.manual_seed(7)
    tiny_causal_lm(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- pure pieces ----------------------------------------------------------------------------------------


def test_response_end_and_length_batches():
    assert response_end([5, 6, 2, 2, 2], {2}) == (3, "eos")
    assert response_end([5, 6, 7], {2, 9}) == (3, "length")
    assert response_end([9], {2, 9}) == (1, "eos")
    # longest first, ties in their original order, the last batch short
    assert length_batches([3, 9, 1, 9, 4], 2) == [[1, 3], [4, 0], [2]]


def test_wilson_interval_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for successes, n in [(0, 10), (3, 10), (10, 10), (37, 50), (1, 1)]:
        lo, hi = wilson_interval(successes, n)
        ref_lo, ref_hi = proportion_confint(successes, n, alpha=0.05, method="wilson")
        assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)
    assert outcome("same", "same", 1.0, 5.0) == "tie"
    assert outcome("a", "b", 1.0, 1.0 + 1e-9) == "tie"
    assert (outcome("a", "b", 2.0, 1.0), outcome("a", "b", 1.0, 2.0)) == ("policy", "baseline")


def test_select_best_keeps_the_top_non_empty_sample_above_the_threshold():
    rows = [{"prompt": f"p{i}", "item": i, "external_id": f"e{i}"} for i in range(3)]
    samples = [
        [Sample("a", "eos", 2), Sample("b", "eos", 2), Sample("c", "length", 6)],
        [Sample("", "eos", 1), Sample("d", "eos", 2), Sample("e", "eos", 2)],
        [Sample("f", "eos", 2), Sample("g", "eos", 2), Sample("h", "eos", 2)],
    ]
    scores = [[0.1, 0.9, 0.3], [5.0, -1.0, -2.0], [-3.0, -4.0, -3.5]]
    kept = select_best(rows, samples, scores, None)
    assert [(k["external_id"], k["response"], k["score"]) for k in kept] == [
        ("e0", "b", 0.9),
        ("e1", "d", -1.0),
        ("e2", "f", -3.0),
    ]
    assert kept[0]["mean_score"] == pytest.approx((0.1 + 0.9 + 0.3) / 3)
    assert [k["response"] for k in select_best(rows, samples, scores, 0.0)] == ["b"]


def test_prompts_use_the_chat_template_and_keep_their_end(models_root):
    tokenizer = load_policy_tokenizer(models_root / "tiny-causal")
    full = encode_prompt(tokenizer, MESSAGES, 10_000)
    assert tokenizer.decode(full).endswith("<|assistant|>")  # the response's turn is open
    assert encode_prompt(tokenizer, MESSAGES, 5) == full[-5:]
    text = encode_prompt(tokenizer, "Question 1", 10_000)
    assert tokenizer.decode(text).startswith("<|user|>")  # a text prompt becomes a user turn when there is a template


# --- generate -------------------------------------------------------------------------------------------


def test_generate_writes_k_labelled_candidates_per_prompt(models_root, trained_reward, tmp_path):
    config = GenerateRunConfig.from_dict(
        {
            **SAMPLING,
            "base_model": str(models_root / "tiny-causal"),
            "num_samples": 3,
            "reward_models": [str(trained_reward)],
            "seed": 3,
        }
    )
    events = []
    metrics = run_generate(config, {"train": prompt_file(tmp_path)}, tmp_path / "out", lambda e: events.append(e))

    rows = read_rows(tmp_path / "out" / "candidates.jsonl")
    assert [(r["item"], r["external_id"]) for r in rows] == [(100, "q0"), (101, "q1"), (102, "q2"), (None, "chat")]
    assert rows[-1]["prompt"] == MESSAGES
    responses = [resp for row in rows for resp in row["responses"]]
    assert all(len(row["responses"]) == 3 for row in rows)
    assert {resp["model"] for resp in responses} == {"tiny-causal"}
    for resp in responses:
        assert resp["finish_reason"] in ("eos", "length")
        assert 1 <= resp["tokens"] <= 6 and (resp["finish_reason"] == "length") == (resp["tokens"] == 6)
    assert any(len({resp["text"] for resp in row["responses"]}) > 1 for row in rows)  # sampled, not copied
    scores = [resp["score"] for resp in responses]
    assert metrics["mean_score"] == pytest.approx(sum(scores) / len(scores))
    assert metrics["mean_best_score"] >= metrics["mean_score"]
    assert (metrics["prompts"], metrics["candidates"]) == (4, 12)
    assert metrics["candidates_per_second"] > 0 and 0 <= metrics["eos_fraction"] <= 1
    assert metrics["mean_response_tokens"] == pytest.approx(sum(r["tokens"] for r in responses) / 12)
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert (info["kind"], info["model"], info["config"]["num_samples"]) == (
        "generate",
        str(models_root / "tiny-causal"),
        3,
    )
    progress = [e for e in events if e["event"] in ("start", "progress")]
    assert progress[0] == {"event": "start", "step": 0, "total": 1, "phase": "sampling"} and progress[-1]["step"] == 1


def test_temperature_zero_samples_the_same_response_k_times(models_root, tmp_path):
    config = GenerateRunConfig.from_dict(
        {
            **SAMPLING,
            "base_model": str(models_root / "tiny-causal"),
            "num_samples": 3,
            "temperature": 0.0,
            "model_label": "policy-v1",
        }
    )
    run_generate(config, {"train": prompt_file(tmp_path, n=3)}, tmp_path / "out", lambda e: None)
    rows = read_rows(tmp_path / "out" / "candidates.jsonl")
    assert len(rows) == 3
    for row in rows:
        assert len(row["responses"]) == 3 and len({json.dumps(resp, sort_keys=True) for resp in row["responses"]}) == 1
        assert row["responses"][0]["model"] == "policy-v1"


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "fine"}', "not json"], "line 2: not JSON"),
        (['{"prompt": "fine"}', "", '{"prompt": ""}'], "line 3: a row needs a non-empty"),
        (['{"prompt": [{"role": "user"}]}'], "line 1: each prompt message needs"),
    ],
)
def test_a_bad_prompt_file_names_the_line_and_writes_nothing(models_root, tmp_path, lines, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config = GenerateRunConfig.from_dict({"base_model": str(models_root / "tiny-causal")})
    with pytest.raises(RunnerError, match=message):
        run_generate(config, {"train": str(path)}, tmp_path / "out", lambda e: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_vllm_backend_without_vllm_is_refused_before_any_work(models_root, tmp_path):
    config = GenerateRunConfig.from_dict({"base_model": str(models_root / "tiny-causal"), "generation_backend": "vllm"})
    with pytest.raises(RunnerError, match="generation_backend=vllm needs the vllm package"):
        run_generate(config, {"train": prompt_file(tmp_path)}, tmp_path / "out", lambda e: None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="generation_backend must be one of"):
        GenerateRunConfig.from_dict({"generation_backend": "llama.cpp"})
    assert load_runner("generate").CONFIG_CLASS is GenerateRunConfig


# --- rejection sampling ---------------------------------------------------------------------------------


def test_rejection_sampling_keeps_the_best_and_fine_tunes_on_it(models_root, trained_reward, tmp_path):
    base = models_root / "tiny-causal"
    config = RejectionSamplingRunConfig.from_dict(
        {
            **SAMPLING,
            "base_model": str(base),
            "reward_models": [str(trained_reward)],
            "num_samples": 3,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
        }
    )
    out = tmp_path / "out"
    metrics = run_rejection_sampling(
        config, {"train": prompt_file(tmp_path, n=6)}, out, lambda e: None, tmp_path / "ckpt"
    )

    kept = read_rows(out / "kept.jsonl")
    assert len(kept) == metrics["kept"] == 6 and {k["external_id"] for k in kept} == {
        "q0",
        "q1",
        "q2",
        "q3",
        "q4",
        "chat",
    }
    assert all(k["score"] >= k["mean_score"] for k in kept)
    assert metrics["kept_mean_score"] >= metrics["sample_mean_score"]
    assert metrics["train_steps"] == 2 and math.isfinite(metrics["train_loss"])
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    info = json.loads((out / "arbiter.json").read_text())
    assert (info["kind"], info["metrics"]["kept"], info["reward_models"]) == (
        "rejection_sampling",
        6,
        [str(trained_reward)],
    )
    assert not list(out.glob("*.bin"))
    # The scored samples were kept for a resume: a resumed run trains on the same kept samples without sampling again.
    events = []
    again = run_rejection_sampling(
        config, {"train": prompt_file(tmp_path, n=6)}, tmp_path / "again", events.append, tmp_path / "ckpt"
    )
    assert not [e for e in events if e.get("phase") == "sampling"]
    assert any(e["event"] == "log" and e["message"].startswith("Resuming: 6 kept samples") for e in events)
    assert (
        read_rows(tmp_path / "again" / "kept.jsonl") == kept and again["kept_mean_score"] == metrics["kept_mean_score"]
    )


def test_rejection_sampling_needs_a_reward_model(models_root, tmp_path):
    config = RejectionSamplingRunConfig.from_dict({"base_model": str(models_root / "tiny-causal")})
    with pytest.raises(RunnerError, match="needs at least one reward model"):
        run_rejection_sampling(config, {"train": prompt_file(tmp_path)}, tmp_path / "out", lambda e: None)
    with pytest.raises(ConfigError, match="num_samples must be at least 2"):
        RejectionSamplingRunConfig.from_dict({"num_samples": 1})


# --- evaluate -------------------------------------------------------------------------------------------


def test_a_policy_against_itself_ties_everywhere(models_root, trained_reward, tmp_path):
    """The same seed, prompts and settings sample the same texts from the same model: every prompt is a tie, and
    the win rate is exactly 0.5 (an evaluation that reseeded differently for the baseline would not tie)."""
    policy = str(models_root / "tiny-causal")
    config = EvaluateRunConfig.from_dict(
        {**SAMPLING, "base_model": policy, "baseline_model": policy, "reward_models": [str(trained_reward)], "seed": 5}
    )
    metrics = run_evaluate(config, {"test": prompt_file(tmp_path, n=6)}, tmp_path / "out", lambda e: None)
    assert (metrics["win_rate"], metrics["ties"], metrics["prompts"]) == (0.5, 6, 6)
    assert metrics["win_rate_lo"] < 0.5 < metrics["win_rate_hi"]
    assert metrics["policy_mean_score"] == pytest.approx(metrics["baseline_mean_score"], abs=1e-5)


def test_evaluate_against_another_policy_reports_a_win_rate_with_its_interval(
    models_root, other_policy, trained_reward, tmp_path
):
    config = EvaluateRunConfig.from_dict(
        {
            **SAMPLING,
            "base_model": str(models_root / "tiny-causal"),
            "baseline_model": str(other_policy),
            "reward_models": [str(trained_reward)],
        }
    )
    metrics = run_evaluate(config, {"test": prompt_file(tmp_path, n=8)}, tmp_path / "out", lambda e: None)
    rows = read_rows(tmp_path / "out" / "comparisons.jsonl")
    assert len(rows) == 8 and set(rows[0]) >= {
        "prompt",
        "item",
        "external_id",
        "policy",
        "baseline",
        "policy_score",
        "baseline_score",
    }
    assert any(r["policy"] != r["baseline"] for r in rows)
    wins = sum(r["policy_score"] > r["baseline_score"] + 1e-6 for r in rows)
    ties = sum(r["winner"] == "tie" for r in rows)
    assert metrics["win_rate"] == pytest.approx((wins + ties / 2) / 8)
    assert 0 <= metrics["win_rate_lo"] <= metrics["win_rate"] <= metrics["win_rate_hi"] <= 1
    assert metrics["policy_mean_score"] == pytest.approx(sum(r["policy_score"] for r in rows) / 8)
    assert metrics["baseline_mean_score"] == pytest.approx(sum(r["baseline_score"] for r in rows) / 8)
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert (info["kind"], info["baseline_model"]) == ("evaluate", str(other_policy))
