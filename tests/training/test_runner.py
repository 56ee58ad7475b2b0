"""The reward runner without Django: configs, training on a separable toy set, methods, resume, scoring."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import FAST, toy_rows, write_jsonl
from training.runners import available_kinds, config_class
from training.runners.base import ConfigError, RunCancelled, RunnerError
from training.runners.reward import RewardRunConfig, run
from training.scoring import CombinedScorer, RewardScorer, encode


def _splits(tmp_path, n=80, n_test=16):
    rows = toy_rows(n)
    return {
        "train": write_jsonl(rows[:-n_test], tmp_path / "train.jsonl"),
        "test": write_jsonl(rows[-n_test:], tmp_path / "test.jsonl"),
    }


def _config(base, **values):
    return RewardRunConfig.from_dict({**FAST, "base_model": str(base), **values})


# --- configs ----------------------------------------------------------------------------------------


def test_the_configs_import_without_torch():
    """The web process reads every kind's config (the launch form, the API, ``train --help-config``): importing the
    ``*_config`` modules and ``config_class`` must load neither torch nor the runners, in a fresh interpreter."""
    folder = Path(__file__).resolve().parents[2] / "training" / "runners"
    modules = sorted(f"training.runners.{path.stem}" for path in folder.glob("*config.py"))
    assert {f"training.runners.{kind}_config" for kind in available_kinds()} <= set(modules)
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from training.runners import available_kinds, config_class\n"
        "classes = {kind: config_class(kind).__name__ for kind in available_kinds()}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl', 'datasets', 'peft'))\n"
        "runners = sorted(m for m in sys.modules if m.startswith('training.runners.') and m.removeprefix('training.runners.')"
        " in available_kinds())\n"
        "print(json.dumps({'classes': classes, 'heavy': heavy, 'runners': runners}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=folder.parents[1]
    )
    loaded = json.loads(result.stdout)
    assert len(modules) == len(available_kinds()) + 1  # one per kind, and config.py with the shared bases
    assert loaded == {
        "classes": {kind: config_class(kind).__name__ for kind in available_kinds()},
        "heavy": [],
        "runners": [],
    }


def test_unknown_option_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"Unknown option 'learning_rte' \(did you mean 'learning_rate'\?\)"):
        RewardRunConfig.from_dict({"learning_rte": 1e-4})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_steps": "ten"}, "max_steps must be int, not str 'ten'"),
        ({"use_margin": 1}, "use_margin must be bool, not int 1"),
        ({"learning_rate": True}, "learning_rate must be float"),
        ({"method": "magic"}, "method must be one of full, lora, qlora, adalora, ia3, prompt_tuning, prefix_tuning"),
        ({"learning_rate": -1.0}, "learning_rate must be above 0"),
        ({"max_length": None, "lm_loss_coefficient": 0.1, "method": "prompt_tuning"}, "not with virtual tokens"),
    ],
)
def test_wrong_types_and_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        RewardRunConfig.from_dict(values)


def test_overrides_are_typed_by_the_field_and_defaults_are_resolved():
    values = RewardRunConfig.parse_overrides(
        ["learning_rate=1e-4", "max_steps=12", "use_margin=false", "max_length=none", "method=lora"]
    )
    assert values == {"learning_rate": 1e-4, "max_steps": 12, "use_margin": False, "max_length": None, "method": "lora"}
    config = RewardRunConfig.from_dict(values)
    assert config.to_dict()["lora_r"] == 16 and config.objective == "bradley_terry"
    with pytest.raises(ConfigError, match="max_steps must be int, not 'lots'"):
        RewardRunConfig.parse_overrides(["max_steps=lots"])
    with pytest.raises(ConfigError, match="key=value"):
        RewardRunConfig.parse_overrides(["learning_rate"])
    assert {row["name"] for row in RewardRunConfig.describe()} >= {
        "center_rewards_coefficient",
        "lm_loss_coefficient",
        "margin_scale",
    }


def test_qlora_on_the_cpu_fails_before_any_work(tmp_path):
    config = RewardRunConfig.from_dict({"method": "qlora", "base_model": str(tmp_path / "nowhere")})
    with pytest.raises(RunnerError, match="QLoRA needs a CUDA GPU"):
        run(config, {"train": str(tmp_path / "missing.jsonl")}, tmp_path / "out", lambda e: None)
    assert not (tmp_path / "out").exists()


def test_bf16_on_the_cpu_is_refused(tmp_path, tiny_base):
    with pytest.raises(RunnerError, match="precision=bf16 needs a CUDA GPU"):
        run(_config(tiny_base, precision="bf16"), _splits(tmp_path), tmp_path / "out", lambda e: None)


# --- training ---------------------------------------------------------------------------------------


def test_reward_model_learns_the_toy_preference_and_reloads(tmp_path, trained_reward, tiny_base):
    info = json.loads((trained_reward / "arbiter.json").read_text())
    assert info["metrics"]["eval_accuracy"] >= 0.9 and info["metrics"]["eval_pairs"] == 16
    assert info["metrics"]["train_loss"] < 0.69  # below chance: log 2
    assert info["objective"] == "bradley_terry" and not info["is_adapter"]
    # Only safetensors and text in the folder: no pickles.
    assert {p.suffix for p in trained_reward.iterdir()} <= {".safetensors", ".json", ".jinja"}
    before, after = load_file(tiny_base / "model.safetensors"), load_file(trained_reward / "model.safetensors")
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert "score.weight" in changed and any("layers.0" in name for name in changed)
    scorer = RewardScorer.load(trained_reward)
    prompts = ["Question 900: tell me about topic 900."] * 2
    good, bad = scorer.score(prompts, ["This answer is kind accurate clear.", "This answer is harsh vague rude."])
    assert good > bad


def test_encode_matches_the_tokens_trl_trains_on(tiny_base, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from training.runners.base import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_base)
    model = load_model(AutoModelForSequenceClassification, tiny_base, num_labels=1)
    import datasets

    conversation = {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go."}],
    }
    for row in (toy_rows(1)[0], conversation):
        args = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False)
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_list([row]), processing_class=tokenizer
        )
        prepared = trainer.train_dataset[0]
        assert prepared["chosen_ids"] == encode(tokenizer, row["prompt"], row["chosen"])
        assert prepared["rejected_ids"] == encode(tokenizer, row["prompt"], row["rejected"])


def test_lora_merges_into_plain_weights_and_prompt_tuning_saves_an_adapter(tmp_path, tiny_base):
    lora = run(
        _config(tiny_base, method="lora", lora_r=8, learning_rate=1e-2),
        _splits(tmp_path),
        tmp_path / "lora",
        lambda e: None,
    )
    assert lora["eval_accuracy"] >= 0.9
    assert (tmp_path / "lora" / "model.safetensors").is_file() and not (
        tmp_path / "lora" / "adapter_config.json"
    ).exists()
    prompt = run(
        _config(tiny_base, method="prompt_tuning", num_virtual_tokens=4, max_steps=5),
        _splits(tmp_path),
        tmp_path / "prompt",
        lambda e: None,
    )
    assert prompt["train_steps"] == 5
    info = json.loads((tmp_path / "prompt" / "arbiter.json").read_text())
    assert info["is_adapter"] and info["base_model_path"] == str(tiny_base)
    assert (tmp_path / "prompt" / "adapter_model.safetensors").is_file()
    assert len(RewardScorer.load(tmp_path / "prompt").score(["Q"], ["A"])) == 1


def test_lm_loss_regulariser_is_logged_and_needs_a_decoder(tmp_path, models_root, trained_reward):
    events = []
    metrics = run(
        _config(models_root / "tiny-causal", lm_loss_coefficient=0.1, max_steps=10),
        _splits(tmp_path),
        tmp_path / "out",
        events.append,
    )
    logged = [e["metrics"] for e in events if e["event"] == "metrics" and "lm_loss" in e["metrics"]]
    assert logged and all(m["lm_loss"] > 0 for m in logged)
    assert metrics["train_steps"] == 10


def test_a_stopped_run_resumes_from_its_checkpoint(tmp_path, tiny_base):
    splits, checkpoints = _splits(tmp_path), tmp_path / "checkpoints"
    config = _config(tiny_base, max_steps=20, save_steps=5)
    with pytest.raises(RunCancelled):
        run(config, splits, tmp_path / "out", lambda e: e["event"] == "progress" and e["step"] >= 12, str(checkpoints))
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-10"]
    assert not list(checkpoints.rglob("training_args.bin"))  # pickles are removed from checkpoints too
    events = []
    metrics = run(config, splits, tmp_path / "out", events.append, str(checkpoints))
    start = next(e for e in events if e["event"] == "start")
    assert start["step"] == 10 and metrics["train_steps"] == 20


def test_regression_on_ratings(tmp_path, tiny_base):
    rows = []
    for i, (prompt, chosen, rejected) in enumerate((r["prompt"], r["chosen"], r["rejected"]) for r in toy_rows(40)):
        rows.append(
            {
                "id": str(i),
                "prompt": [{"role": "user", "content": prompt}],
                "responses": [
                    {"text": chosen, "scores": {"overall": [6, 7]}, "mean": {"overall": 6.5}, "annotators": []},
                    {"text": rejected, "scores": {"overall": [2, 1]}, "mean": {"overall": 1.5}, "annotators": []},
                ],
            }
        )
    paths = {
        "train": write_jsonl(rows[:32], tmp_path / "train.jsonl"),
        "test": write_jsonl(rows[32:], tmp_path / "test.jsonl"),
    }
    metrics = run(_config(tiny_base, objective="regression"), paths, tmp_path / "out", lambda e: None)
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_rmse"] < 2.0 and metrics["criterion"] == "overall"
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["score_stats"]["mean"] == pytest.approx(4.0)


def test_combined_scorer_standardises_and_weights(trained_reward):
    scorer = RewardScorer.load(trained_reward)
    prompts, responses = ["Q1", "Q2"], ["This answer is kind.", "This answer is rude."]
    raw = scorer.score(prompts, responses)
    stats = scorer.reward_stats
    combined = CombinedScorer([(scorer, 0.25), (scorer, 0.75)]).score(prompts, responses)
    assert combined == pytest.approx([(r - stats["mean"]) / stats["std"] for r in raw], rel=1e-5)
    assert CombinedScorer([(scorer, 2.0)], normalize=False).score(prompts, responses) == pytest.approx(
        [2 * r for r in raw]
    )


def test_a_checkpoint_cut_off_mid_save_is_skipped_and_removed(tmp_path):
    from training.runners.base import last_checkpoint

    for step, files in [
        (5, ["model.safetensors", "trainer_state.json"]),
        (10, ["model.safetensors", "trainer_state.json"]),
        (15, ["model.safetensors"]),
        (20, []),
    ]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("x")
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5"]
    assert last_checkpoint(str(tmp_path / "missing")) is None


# --- what the Trainer-based runners share (base.py) --------------------------------------------------


def _trl_args(kind, args_class, values, **overrides):
    from training.runners.base import training_arguments

    return training_arguments(
        config_class(kind).from_dict(values), args_class, "/tmp/ckpt", "fp32", has_eval=True, **overrides
    )


def test_our_options_reach_trl_by_name_with_the_renames_and_exclusions_explicit():
    """Every field of a kind's config that TRL's config has by the same name arrives there unchanged; the fields
    whose meaning differs (NOT_TRL_FIELDS) keep TRL's own value; renames and overrides are applied."""
    import dataclasses

    from trl import DPOConfig, GRPOConfig, RewardConfig, RLOOConfig, SFTConfig

    from training.runners.base import NOT_TRL_FIELDS

    cases = [
        (
            "reward",
            RewardConfig,
            {"max_length": 96, "center_rewards_coefficient": 0.01, "learning_rate": 2e-4, "eval_steps": 7},
            {},
        ),
        (
            "sft",
            SFTConfig,
            {"loss_type": "dft", "completion_only_loss": False, "max_length": 64, "warmup_steps": 3.0},
            {},
        ),
        (
            "dpo",
            DPOConfig,
            {
                "beta": 0.3,
                "loss_type": ["sigmoid", "sft"],
                "loss_weights": [1.0, 0.5],
                "ld_alpha": 0.5,
                "label_smoothing": 0.1,
                "f_divergence_type": "js_divergence",
                "max_length": 80,
            },
            {},
        ),
        (
            "grpo",
            GRPOConfig,
            {
                "num_generations": 2,
                "loss_type": "grpo",
                "scale_rewards": "batch",
                "beta": 0.1,
                "epsilon": 0.3,
                "temperature": 0.9,
                "top_p": 0.8,
                "max_new_tokens": 24,
                "generation_batch_size": 6,
                "reward_models": ["a", "b"],
                "reward_weights": [0.7, 0.3],
            },
            {"renames": {"max_new_tokens": "max_completion_length"}},
        ),
        (
            "rloo",
            RLOOConfig,
            {"normalize_advantages": True, "beta": 0.2, "num_generations": 2},
            {"renames": {"max_new_tokens": "max_completion_length"}},
        ),
    ]
    for kind, args_class, values, overrides in cases:
        config = config_class(kind).from_dict(values)
        args = _trl_args(kind, args_class, values, **overrides)
        shared = {f.name for f in dataclasses.fields(args_class)} & set(config.to_dict()) - {"eval_steps", "save_steps"}
        assert shared - NOT_TRL_FIELDS, kind
        for name in shared - NOT_TRL_FIELDS:
            assert getattr(args, name) == getattr(config, name), (kind, name)
        for ours, theirs in overrides.get("renames", {}).items():
            assert getattr(args, theirs) == getattr(config, ours), (kind, theirs)
        assert (args.eval_steps, args.eval_strategy, args.save_steps, args.use_cpu) == (
            config.eval_steps or None,
            "steps" if config.eval_steps else "no",
            10**9,
            True,
        )
    grpo = _trl_args("grpo", GRPOConfig, cases[3][2], renames={"max_new_tokens": "max_completion_length"})
    assert (grpo.generation_batch_size, grpo.reward_weights, grpo.max_completion_length, grpo.loss_type) == (
        8,
        None,
        24,
        "grpo",
    )
    assert _trl_args("dpo", DPOConfig, {"beta": 0.2}, loss_weights=None).loss_weights is None


class _FakeTrainer:
    """What train_to_end touches of a transformers Trainer, recording the order of the calls."""

    def __init__(self, calls):
        self.calls = calls
        self.accelerator = type("Accelerator", (), {"wait_for_everyone": lambda _: calls.append("wait")})()
        self.args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=1)
        self.train_dataset = [{}] * 200
        self.state = SimpleNamespace(epoch=0.48)

    def remove_callback(self, callback):
        self.calls.append("quiet")

    def train(self, resume_from_checkpoint=None):
        self.calls.append(("train", resume_from_checkpoint))
        return type("Result", (), {"training_loss": 0.5, "global_step": 12, "metrics": {"train_runtime": 3.25}})()


def test_train_to_end_resumes_collects_waits_and_honours_a_cancel(tmp_path):
    from training.runners.base import train_to_end

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    for name in ("model.safetensors", "trainer_state.json"):
        (checkpoint / name).write_text("x")
    calls = []
    reporter = type("Reporter", (), {"stopped": False})()
    metrics = train_to_end(
        _FakeTrainer(calls), reporter, str(tmp_path), lambda: calls.append("collect") or {"eval_loss": 0.25}
    )
    assert metrics == {
        "train_loss": 0.5,
        "train_steps": 12,
        "train_runtime": 3.25,
        "train_epochs": 0.48,
        "n_train": 200,
        "n_train_examples_seen": 96,  # 12 steps × 4 per device × 2 accumulated: max_steps stopped before one pass
        "eval_loss": 0.25,
    }
    assert calls == ["quiet", "quiet", ("train", str(checkpoint)), "collect", "wait"]

    calls.clear()
    reporter.stopped = True
    with pytest.raises(RunCancelled):
        train_to_end(_FakeTrainer(calls), reporter, str(tmp_path / "none"), lambda: calls.append("collect") or {})
    assert calls == ["quiet", "quiet", ("train", None)]  # a cancelled run collects nothing and waits for no one
