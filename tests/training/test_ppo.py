"""The online RL runners without Django: PPO on a toy task whose reward is known, PPO with a real reward model
(LoRA, checkpoint and resume), and one-step GRPO and RLOO runs with the tiny reward model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import write_jsonl
from training.runners import load_runner
from training.runners.base import ConfigError, RunCancelled, RunnerError
from training.runners.grpo import reward_function
from training.runners.ppo import PPORunConfig, train
from training.scoring import RewardScorer

PROMPTS = [{"prompt": f"Question {i}: tell me about topic {i}.", "item": i, "external_id": f"q{i}"} for i in range(16)]
# The toy task: the reward is the fraction of response tokens among the chosen ones (half of the tiny vocabulary,
# ids below 150), so a uniform random policy scores about 0.5 and the best one 1.
CHOSEN_BELOW = 150
TOY = {
    "max_steps": 20,
    "batch_size": 16,
    "mini_batch_size": 8,
    "per_device_train_batch_size": 8,
    "ppo_epochs": 4,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "max_new_tokens": 8,
    "temperature": 1.0,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: a second intra-op thread only waits at OpenMP barriers, badly so on busy shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_causal(models_root):
    return models_root / "tiny-causal"


def chosen_fraction(prompts, texts, ids):
    return [sum(token < CHOSEN_BELOW for token in row) / max(len(row), 1) for row in ids]


def _toy_run(tiny_causal, tmp_path, name, **values):
    events = []
    config = PPORunConfig.from_dict({**TOY, "base_model": str(tiny_causal), **values})
    metrics = train(config, PROMPTS, tmp_path / name, events.append, score_fn=chosen_fraction)
    steps = [e["metrics"] for e in events if e["event"] == "metrics"]
    return metrics, steps


def _changed(before_folder, after_folder) -> list[str]:
    before, after = load_file(before_folder / "model.safetensors"), load_file(after_folder / "model.safetensors")
    return [name for name in before if not torch.equal(before[name], after[name])]


# --- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 10, "mini_batch_size": 4}, r"batch_size \(10\) must be a multiple of mini_batch_size \(4\)"),
        ({"temperature": 0.0}, "temperature must be above 0"),
        ({"method": "prompt_tuning"}, "method full, lora or qlora"),
        ({"kl_estimator": "k2"}, "kl_estimator must be one of k1, k3"),
        ({"lam": 1.5}, "gamma and lam must be between 0 and 1"),
        ({"missing_eos_mode": "drop"}, "missing_eos_mode must be one of subtract, replace"),
        ({"generation_backend": "vllm"}, "generation_backend=transformers"),
    ],
)
def test_ppo_config_refuses_bad_values(values, message):
    with pytest.raises(ConfigError, match=message):
        PPORunConfig.from_dict(values)


def test_online_configs_refuse_groups_that_do_not_fit_a_batch():
    for kind in ("grpo", "rloo"):
        with pytest.raises(ConfigError, match=r"\(6\) must be a multiple of num_generations \(4\)"):
            load_runner(kind).CONFIG_CLASS.from_dict({"per_device_train_batch_size": 6, "num_generations": 4})
        with pytest.raises(ConfigError, match="at least 2"):
            load_runner(kind).CONFIG_CLASS.from_dict({"num_generations": 1})
        with pytest.raises(ConfigError, match="generation_backend=transformers"):
            load_runner(kind).CONFIG_CLASS.from_dict({"generation_backend": "vllm"})


def test_runs_without_a_reward_model_or_with_qlora_on_the_cpu_fail_before_any_work(tmp_path, tiny_causal):
    prompts = write_jsonl(PROMPTS, tmp_path / "prompts.jsonl")
    for kind in ("ppo", "grpo", "rloo"):
        runner = load_runner(kind)
        with pytest.raises(RunnerError, match="at least one reward model"):
            runner.run(
                runner.CONFIG_CLASS.from_dict({"base_model": str(tiny_causal)}),
                {"train": prompts},
                tmp_path / kind,
                lambda e: None,
            )
        config = runner.CONFIG_CLASS.from_dict(
            {"base_model": str(tiny_causal), "reward_models": [str(tiny_causal)], "method": "qlora"}
        )
        with pytest.raises(RunnerError, match="QLoRA needs a CUDA GPU"):
            runner.run(config, {"train": prompts}, tmp_path / kind, lambda e: None)
        assert not (tmp_path / kind).exists()


# --- PPO ----------------------------------------------------------------------------------------------


def test_ppo_raises_a_known_reward_while_the_kl_penalty_bounds_the_drift(tmp_path, tiny_causal):
    metrics, steps = _toy_run(tiny_causal, tmp_path, "weak", kl_coef=0.05)
    assert len(steps) == 20
    first, last = sum(s["reward"] for s in steps[:3]) / 3, sum(s["reward"] for s in steps[-5:]) / 5
    assert first < 0.55 and last > 0.65 and last > first + 0.15  # a random policy scores about 0.5
    kls = [s["kl"] for s in steps]
    assert kls[0] == pytest.approx(0.0, abs=1e-4)  # the first rollouts come from the reference itself
    late_kl = lambda rows: sum(s["kl"] for s in rows[-5:]) / 5  # noqa: E731
    # It moved away from the reference (nats per 8-token response), and the penalty holds it there.
    assert max(kls) > 2.0 and late_kl(steps) < 8.0
    for name in ("entropy", "value_loss", "policy_loss", "clip_fraction", "approx_kl", "kl_coef", "response_length"):
        assert all(name in s and s[name] == s[name] for s in steps), name  # reported every step, never NaN
    assert 0 < steps[0]["clip_fraction"] < 1 and steps[-1]["kl_coef"] == pytest.approx(0.05)
    assert metrics["reward"] == steps[-1]["reward"] and metrics["train_steps"] == 20
    assert metrics["n_train"] == 16 and metrics["n_train_examples_seen"] == 16  # 20 steps cover the 16 prompts
    assert _changed(tiny_causal, tmp_path / "weak")
    info = json.loads((tmp_path / "weak" / "arbiter.json").read_text())
    assert info["kind"] == "ppo" and info["value_model_source"] == str(tiny_causal) and not info["is_adapter"]

    # The same run with a strong penalty stays much closer to the reference, and gains less reward for it.
    _, strong = _toy_run(tiny_causal, tmp_path, "strong", kl_coef=0.5)
    assert late_kl(strong) < late_kl(steps) / 2
    assert sum(s["reward"] for s in strong[-5:]) / 5 < last


def test_ppo_with_a_reward_model_and_lora_resumes_from_its_checkpoint(tmp_path, tiny_causal, trained_reward):
    prompts = write_jsonl(PROMPTS, tmp_path / "prompts.jsonl")
    config = PPORunConfig.from_dict(
        {
            "base_model": str(tiny_causal),
            "reward_models": [str(trained_reward)],
            "method": "lora",
            "lora_r": 4,
            "max_steps": 3,
            "save_steps": 1,
            "batch_size": 4,
            "mini_batch_size": 4,
            "ppo_epochs": 1,
            "max_new_tokens": 6,
            "learning_rate": 1e-2,
            "missing_eos_penalty": 1.0,
        }
    )
    checkpoints = tmp_path / "checkpoints"
    stop_at_two = lambda e: e["event"] == "progress" and e["step"] == 2  # noqa: E731
    with pytest.raises(RunCancelled):
        load_runner("ppo").run(config, {"train": prompts}, tmp_path / "out", stop_at_two, str(checkpoints))
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-1"]
    saved = checkpoints / "checkpoint-1"
    assert {p.name for p in saved.iterdir()} == {
        "model.safetensors",
        "value.safetensors",
        "optimizer.pt",
        "trainer_state.json",
    }
    assert all("lora_" in name for name in load_file(saved / "model.safetensors"))  # only the adapter is trained
    assert not (tmp_path / "out").exists()

    events = []
    metrics = load_runner("ppo").run(config, {"train": prompts}, tmp_path / "out", events.append, str(checkpoints))
    assert next(e for e in events if e["event"] == "start")["step"] == 1
    assert [e["step"] for e in events if e["event"] == "metrics"] == [2, 3]
    log = " ".join(e["message"] for e in events if e["event"] == "log")
    assert f"value model from {trained_reward}" in log and "Resuming from checkpoint-1" in log
    # Every tiny response runs to max_new_tokens without an eos token: the penalty takes 1 off each score.
    assert metrics["eos_fraction"] == 0.0 and metrics["reward"] == pytest.approx(metrics["score"] - 1.0)
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (
        tmp_path / "out" / "adapter_config.json"
    ).exists()
    assert _changed(tiny_causal, tmp_path / "out")  # the merged adapter changed the weights


# --- GRPO and RLOO ------------------------------------------------------------------------------------


def test_the_reward_function_scores_texts_and_assistant_messages_alike(trained_reward):
    scorer = RewardScorer.load(trained_reward)
    score = reward_function(type("One", (), {"score": scorer.score})(), 4)
    prompts = [[{"role": "user", "content": "Question 1: tell me about topic 1."}]] * 2
    texts = ["This answer is kind clear.", "This answer is rude vague."]
    as_messages = score(prompts, [[{"role": "assistant", "content": t}] for t in texts])
    assert as_messages == pytest.approx(scorer.score(prompts, texts)) and as_messages[0] > as_messages[1]


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_grpo_and_rloo_train_against_the_reward_model(kind, tmp_path, tiny_causal, trained_reward):
    runner = load_runner(kind)
    config = runner.CONFIG_CLASS.from_dict(
        {
            "base_model": str(tiny_causal),
            "reward_models": [str(trained_reward)],
            "max_steps": 2,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_new_tokens": 6,
            "beta": 0.1,
        }
    )
    events = []
    metrics = runner.run(
        config, {"train": write_jsonl(PROMPTS, tmp_path / "prompts.jsonl")}, tmp_path / "out", events.append
    )
    logged = [e["metrics"] for e in events if e["event"] == "metrics" and "reward" in e["metrics"]]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2] and len(logged) == 2
    assert all(m["reward_std"] > 0 and "kl" in m and "entropy" in m for m in logged)  # a group's responses differ
    assert metrics["train_steps"] == 2 and metrics["reward"] == logged[-1]["reward"]
    # 2 steps of 8 responses, 4 per prompt: 4 of the 16 prompts were trained on (not 2 × 8 = 16).
    assert metrics["n_train"] == 16 and metrics["n_train_examples_seen"] == 4
    assert logged[-1]["kl"] != 0.0  # after one update the policy differs from its reference
    assert _changed(tiny_causal, tmp_path / "out")
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["kind"] == kind and info["reward_models"] == [str(trained_reward)]
