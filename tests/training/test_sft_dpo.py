"""The SFT and DPO runners without Django: a tiny causal Llama learns the toy demonstrations and preferences.

The loss and the implicit reward margin are measured here from the saved models' own log-probabilities, not read
from the trainer's log.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.training.conftest import toy_rows, write_jsonl
from training.runners import load_runner
from training.runners.base import ConfigError, RunCancelled, RunnerError, load_model, load_tokenizer
from training.runners.dpo import DPORunConfig
from training.runners.dpo import run as run_dpo
from training.runners.sft import SFTRunConfig, fine_tune
from training.runners.sft import run as run_sft

FAST = {"learning_rate": 3e-3, "max_steps": 20, "per_device_train_batch_size": 8, "logging_steps": 5}


@pytest.fixture
def tiny_causal(models_root):
    return models_root / "tiny-causal"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: a second intra-op thread only waits at OpenMP barriers, badly so on busy shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _demonstrations(rows):
    return [
        {
            "id": str(i),
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}],
        }
        for i, r in enumerate(rows)
    ]


def _pairs(rows):
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


@torch.no_grad()
def completion_logps(folder, prompts, completions) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the completion tokens' log-probabilities under the model in ``folder``, and their number, per row
    (one right-padded batch)."""
    model, tokenizer = load_model(AutoModelForCausalLM, folder).eval(), load_tokenizer(folder)
    rows, starts = [], []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(
            tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), add_special_tokens=False
        )["input_ids"]
        ids = tokenizer(tokenizer.apply_chat_template(prompt + completion, tokenize=False), add_special_tokens=False)[
            "input_ids"
        ]
        assert ids[: len(prompt_ids)] == prompt_ids
        rows.append(ids)
        starts.append(len(prompt_ids))
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    logps = torch.log_softmax(model(ids, attention_mask=mask).logits[:, :-1].float(), -1).gather(2, ids[:, 1:, None])[
        ..., 0
    ]
    position = torch.arange(1, width)[None, :]
    completion = (position >= torch.tensor(starts)[:, None]) & mask[:, 1:].bool()
    return (logps * completion).sum(1), completion.sum(1)


def implicit_margins(policy, reference, pairs, beta) -> torch.Tensor:
    """DPO's implicit reward margin β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] of each pair."""
    prompts, n = [p["prompt"] for p in pairs] * 2, len(pairs)
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    policy_logps, reference_logps = (
        completion_logps(policy, prompts, completions)[0],
        completion_logps(reference, prompts, completions)[0],
    )
    ratios = policy_logps - reference_logps
    return beta * (ratios[:n] - ratios[n:])


def _changed(base, out) -> float:
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)  # plain weights: no adapter keys, nothing missing
    return max((after[k] - before[k]).abs().max().item() for k in before)


def _published_files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- SFT ----------------------------------------------------------------------------------------------


def test_sft_learns_the_demonstrations_and_saves_a_safetensors_policy(tmp_path, tiny_causal):
    rows = _demonstrations(toy_rows(48))
    paths = {
        "train": write_jsonl(rows[:40], tmp_path / "train.jsonl"),
        "test": write_jsonl(rows[40:], tmp_path / "test.jsonl"),
    }
    prompts, completions = [r["messages"][:1] for r in rows[:40]], [r["messages"][1:] for r in rows[:40]]
    sums, counts = completion_logps(tiny_causal, prompts, completions)
    nll_before = -(sums.sum() / counts.sum()).item()
    events = []
    config = SFTRunConfig.from_dict({**FAST, "base_model": str(tiny_causal)})
    metrics = run_sft(config, paths, tmp_path / "out", events.append)

    sums, counts = completion_logps(tmp_path / "out", prompts, completions)
    nll_after = -(sums.sum() / counts.sum()).item()
    assert nll_before > 5.0 and nll_after < 0.8 * nll_before
    assert _changed(tiny_causal, tmp_path / "out") > 1e-3
    assert metrics["n_train"] == 40 and metrics["n_eval"] == 8 and metrics["train_steps"] == 20
    assert metrics["eval_loss"] < nll_before and 0 < metrics["eval_mean_token_accuracy"] <= 1
    assert 0 < metrics["train_mean_token_accuracy"] <= 1
    logged = [e["metrics"] for e in events if e["event"] == "metrics" and "loss" in e["metrics"]]
    assert len(logged) == 4 and logged[-1]["loss"] < logged[0]["loss"]
    files = _published_files(tmp_path / "out")
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))}
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["kind"] == "sft" and info["source"] == "demonstrations" and info["is_adapter"] is False
    assert info["metrics"]["eval_loss"] == metrics["eval_loss"]


def test_lora_fine_tune_on_text_rows_merges_into_plain_weights(tmp_path, tiny_causal):
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in toy_rows(24)]
    config = SFTRunConfig.from_dict(
        {**FAST, "max_steps": 8, "learning_rate": 1e-2, "method": "lora", "base_model": str(tiny_causal)}
    )
    metrics = fine_tune(
        config, rows, None, tmp_path / "out", lambda e: None, info={"kind": "rejection_sampling", "kept": 24}
    )
    assert metrics["train_steps"] == 8 and "eval_loss" not in metrics
    assert _changed(tiny_causal, tmp_path / "out") > 1e-4
    assert "adapter_config.json" not in _published_files(tmp_path / "out")
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["kind"] == "rejection_sampling" and info["kept"] == 24 and info["is_adapter"] is False
    assert load_model(AutoModelForCausalLM, tmp_path / "out").config.model_type == "llama"


def test_sft_on_chosen_responses_leaves_ties_out_and_wrong_exports_are_named(tmp_path, tiny_causal):
    rows = toy_rows(12)
    rows[0]["tie"] = True
    trl_path = write_jsonl(rows, tmp_path / "trl.jsonl")
    sft_path = write_jsonl(_demonstrations(rows), tmp_path / "sft.jsonl")
    config = SFTRunConfig.from_dict({**FAST, "max_steps": 2, "base_model": str(tiny_causal), "source": "chosen"})
    assert run_sft(config, {"train": trl_path}, tmp_path / "out", lambda e: None)["n_train"] == 11
    with pytest.raises(RunnerError, match=r"row 1: no \"prompt\" and \"chosen\"; source=chosen reads a trl export"):
        run_sft(config, {"train": sft_path}, tmp_path / "out2", lambda e: None)
    demonstrations = SFTRunConfig.from_dict({"base_model": str(tiny_causal)})
    with pytest.raises(RunnerError, match=r"row 1: no \"messages\"; source=demonstrations reads an sft export"):
        run_sft(demonstrations, {"train": trl_path}, tmp_path / "out2", lambda e: None)
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n{oops\n')
    with pytest.raises(RunnerError, match=r"bad.jsonl, line 2: not JSON"):
        run_sft(demonstrations, {"train": str(tmp_path / "bad.jsonl")}, tmp_path / "out2", lambda e: None)
    assert not (tmp_path / "out2").exists()


def test_what_this_machine_or_the_base_cannot_do_is_refused_before_any_work(tmp_path, tiny_causal):
    rows = [{"prompt": "Hi?", "completion": "Hello."}]
    qlora = SFTRunConfig.from_dict({"base_model": str(tiny_causal), "method": "qlora"})
    with pytest.raises(RunnerError, match="QLoRA needs a CUDA GPU"):
        fine_tune(qlora, rows, None, tmp_path / "out", lambda e: None)
    with pytest.raises(RunnerError, match="QLoRA needs a CUDA GPU"):
        run_dpo(
            DPORunConfig.from_dict({"base_model": str(tiny_causal), "method": "qlora"}),
            {"train": "unread.jsonl"},
            tmp_path / "out",
            lambda e: None,
        )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    over_adapter = SFTRunConfig.from_dict({"base_model": str(adapter), "method": "prompt_tuning"})
    with pytest.raises(RunnerError, match=r"is itself an adapter \(or a GGUF file\); train over it with method=full"):
        fine_tune(over_adapter, rows, None, tmp_path / "out", lambda e: None)
    with pytest.raises(RunnerError, match="does not exist"):
        fine_tune(
            SFTRunConfig.from_dict({"base_model": str(tmp_path / "nowhere")}),
            rows,
            None,
            tmp_path / "out",
            lambda e: None,
        )
    assert not (tmp_path / "out").exists()


# --- DPO ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"loss_type": ["sigmoid", "magic"]}, r"Unknown DPO loss_type 'magic'; TRL offers: sigmoid, hinge, ipo"),
        ({"beta": 0.0}, "beta must be above 0"),
        ({"beta": -0.5}, "beta must be above 0"),
        ({"loss_type": []}, "loss_type needs at least one"),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "one weight per loss"),
        ({"loss_type": ["exo_pair"]}, "exo_pair needs label_smoothing above 0"),
        ({"loss_type": ["robust"], "label_smoothing": 0.5}, "must be below 0.5"),
        ({"reference": "model"}, "reference=model needs ref_model"),
        ({"ref_model": "/models/x"}, "set reference=model"),
        ({"reference": "elsewhere"}, "reference must be one of base, model, none"),
        ({"f_divergence_type": "js_divergence", "loss_type": ["apo_zero"]}, "works only with the losses"),
        ({"sync_ref_model": True, "method": "lora"}, "sync_ref_model .* needs method=full"),
    ],
)
def test_bad_dpo_options_are_refused_with_the_reason(values, message):
    with pytest.raises(ConfigError, match=message):
        DPORunConfig.from_dict(values)


def test_dpo_loss_types_are_trls_own_list():
    assert DPORunConfig.parse_overrides(["loss_type=sigmoid,sft", "loss_weights=1,0.5"]) == {
        "loss_type": ["sigmoid", "sft"],
        "loss_weights": [1.0, 0.5],
    }
    assert load_runner("dpo").CONFIG_CLASS is DPORunConfig and load_runner("sft").CONFIG_CLASS is SFTRunConfig


def _dpo_paths(tmp_path, n=48, n_test=8):
    rows = toy_rows(n)
    train, test = rows[: n - n_test], rows[n - n_test :]
    paths = {"train": write_jsonl(train, tmp_path / "train.jsonl")}
    if test:
        paths["test"] = write_jsonl(test, tmp_path / "test.jsonl")
    return train, paths


def test_dpo_raises_the_implicit_reward_margin_on_its_training_pairs(tmp_path, tiny_causal):
    train, paths = _dpo_paths(tmp_path)
    pairs = _pairs(train)
    assert implicit_margins(tiny_causal, tiny_causal, pairs, 0.1).abs().max() == 0  # the policy starts as its reference
    events = []
    config = DPORunConfig.from_dict({**FAST, "base_model": str(tiny_causal), "beta": 0.1})
    metrics = run_dpo(config, paths, tmp_path / "out", events.append)

    margins = implicit_margins(tmp_path / "out", tiny_causal, pairs, 0.1)
    assert margins.mean() > 0.5 and (margins > 0).float().mean() >= 0.9
    assert _changed(tiny_causal, tmp_path / "out") > 1e-3
    assert metrics["train_rewards/margins"] > 0 and metrics["eval_rewards/accuracies"] >= 0.9 and metrics["n_eval"] == 8
    steps = [e["metrics"] for e in events if e["event"] == "metrics" and "rewards/margins" in e["metrics"]]
    assert len(steps) == 4 and {"rewards/chosen", "rewards/rejected", "rewards/accuracies"} <= set(steps[0])
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["kind"] == "dpo" and info["reference"] == "base" and info["config"]["beta"] == 0.1


@pytest.mark.parametrize(
    "values", [{"method": "lora", "precompute_ref_log_probs": True, "learning_rate": 1e-2}, {"reference": "none"}]
)
def test_dpo_with_an_adapter_reference_or_none_learns_the_preferences(tmp_path, tiny_causal, values):
    train, paths = _dpo_paths(tmp_path, n=24, n_test=0)
    config = DPORunConfig.from_dict({**FAST, "max_steps": 10, "base_model": str(tiny_causal), **values})
    metrics = run_dpo(config, paths, tmp_path / "out", lambda e: None)
    margins = implicit_margins(tmp_path / "out", tiny_causal, _pairs(train), 0.1)
    assert margins.mean() > 0.05 and (margins > 0).float().mean() >= 0.9
    assert metrics["train_rewards/accuracies"] >= 0.9 and "eval_loss" not in metrics
    assert "adapter_config.json" not in _published_files(tmp_path / "out")


def test_a_stopped_dpo_run_resumes_from_its_checkpoint(tmp_path, tiny_causal):
    _, paths = _dpo_paths(tmp_path, n=24, n_test=0)
    checkpoints = tmp_path / "checkpoints"
    config = DPORunConfig.from_dict({**FAST, "max_steps": 8, "save_steps": 3, "base_model": str(tiny_causal)})
    with pytest.raises(RunCancelled):
        run_dpo(
            config, paths, tmp_path / "out", lambda e: e["event"] == "progress" and e["step"] >= 4, str(checkpoints)
        )
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-3"]
    assert not list(checkpoints.rglob("training_args.bin"))
    events = []
    metrics = run_dpo(config, paths, tmp_path / "out", events.append, str(checkpoints))
    start = next(e for e in events if e["event"] == "start")
    assert start["step"] == 3 and metrics["train_steps"] == 8
    assert (tmp_path / "out" / "model.safetensors").is_file()
