"""AdaLoRA and IA3 beside LoRA: only the adapter's own parameters train (every base weight stays bit-identical),
AdaLoRA's rank budget is pruned to its target while training, the merged and the adapter folders load, the card
names the method and how many weights it trained, and options set for another method are refused."""

import io
import json

import pytest
import torch
from django.core.management import CommandError, call_command
from safetensors.torch import load_file

from tests.training.conftest import toy_rows, write_jsonl
from training import cards
from training.models import TrainingRun
from training.runners.base import ConfigError, RunCancelled, RunnerError, load_model
from training.runners.dpo_config import DPORunConfig
from training.runners.ppo_config import PPORunConfig
from training.runners.reward import RewardRunConfig
from training.runners.reward import run as run_reward
from training.runners.sft import SFTRunConfig
from training.runners.sft import run as run_sft

# A learning rate well above the adapters' default: IA3's vectors and AdaLoRA's singular values (zero at the
# start) move a tiny random model slowly; 20 steps leave AdaLoRA 2 warm-up steps, 14 of pruning and 4 final ones.
FAST = {"learning_rate": 0.1, "max_steps": 20, "per_device_train_batch_size": 8, "logging_steps": 5}
OWN = {"adalora": ("lora_A", "lora_B", "lora_E"), "ia3": ("ia3_l",)}
# The tiny Llama (tests/tiny.py): hidden 32, feed-forward 64, one layer. AdaLoRA (all-linear, init_r 12) puts
# A (r × in), B (out × r) and E (r) on q, k, v, o (32 → 32) and gate, up (32 → 64), down (64 → 32); IA3 scales
# the outputs of k and v (32 each) and the input of down (64, a feed-forward module).
EXPECTED_TRAINABLE = {"adalora": 4 * 12 * (32 + 32 + 1) + 3 * 12 * (32 + 64 + 1), "ia3": 32 + 32 + 64}
TARGETS = {
    "adalora": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "ia3": ("k_proj", "v_proj", "down_proj"),
}


@pytest.fixture
def tiny_causal(models_root):
    return models_root / "tiny-causal"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _demonstrations(n: int = 40) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["chosen"]}],
        }
        for r in toy_rows(n)
    ]


def _sft_export(n: int = 40) -> list[dict]:
    """The rows of an sft export (what sft.run reads): each demonstration as messages."""
    return [{"id": str(i), "messages": row["prompt"] + row["completion"]} for i, row in enumerate(_demonstrations(n))]


def _losses(events) -> list[float]:
    return [e["metrics"]["loss"] for e in events if e["event"] == "metrics" and "loss" in e["metrics"]]


def _card(config: dict, metrics: dict, info: dict, kind: str) -> str:
    from types import SimpleNamespace

    return cards.model_card(
        name="m",
        artifact_id=1,
        kind=kind,
        project=SimpleNamespace(slug="prefs", kind="pairwise"),
        run=SimpleNamespace(pk=1, launched_by=None, snapshot_hash="abc"),
        base_model="/models/base",
        snapshot=None,
        dataset_hash="abc",
        config=config,
        metrics=metrics,
        info=info,
    )


# --- the peft model while it trains (the runners' own pieces: peft_config, the progress callback, train_to_end) ---


@pytest.mark.parametrize("method", ["adalora", "ia3"])
def test_only_the_adapter_trains_and_adalora_prunes_its_ranks(method, tiny_causal, tmp_path):
    """SFT's trainer built as sft.fine_tune builds it; the peft model is read before any merge."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from training.runners.base import (
        load_tokenizer,
        make_progress_callback,
        peft_config,
        train_to_end,
        training_arguments,
    )
    from training.runners.policy import ensure_policy_chat_template, load_policy_model

    config = SFTRunConfig.from_dict({**FAST, "base_model": str(tiny_causal), "method": method})
    tokenizer = load_tokenizer(tiny_causal)
    ensure_policy_chat_template(tokenizer)
    events = []
    reporter = make_progress_callback(events.append, config)
    trainer = SFTTrainer(
        model=load_policy_model(tiny_causal, config, "fp32"),
        args=training_arguments(config, SFTConfig, str(tmp_path), "fp32", has_eval=False, packing=False),
        train_dataset=datasets.Dataset.from_list(_demonstrations()),
        processing_class=tokenizer,
        peft_config=peft_config(config, "CAUSAL_LM"),
        callbacks=[reporter],
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    metrics = train_to_end(trainer, reporter, str(tmp_path))
    after = dict(trainer.model.named_parameters())

    own = {name for name in after if any(f".{part}." in name for part in OWN[method])}
    base = set(after) - own
    assert own and {name for name, p in after.items() if p.requires_grad} == own
    assert {name.split(".")[-3] for name in own} == set(TARGETS[method])
    assert all(torch.equal(before[name], after[name]) for name in base), "a base weight moved"
    assert base >= {f"base_model.model.model.layers.0.self_attn.{t}.base_layer.weight" for t in ("k_proj", "v_proj")}
    moved = [name for name in own if not torch.equal(before[name], after[name].detach())]
    if method == "ia3":
        assert sorted(moved) == sorted(own)
    else:  # every A and B; the singular values start at 0, and the pruned ones are 0 again
        assert {name for name in own if ".lora_E." not in name} <= set(moved)
        assert any(".lora_E." in name for name in moved)
    assert metrics["n_trainable_params"] == sum(after[name].numel() for name in own) == EXPECTED_TRAINABLE[method]
    assert metrics["n_params"] == sum(p.numel() for p in after.values())
    losses = _losses(events)
    assert len(losses) == 4 and losses[-1] < losses[0]

    if method == "adalora":
        # update_and_allocate ran after every optimizer step; the budget went from 12 ranks a matrix to 8 on average
        tuner = trainer.model.base_model
        adapter = tuner.peft_config["default"]
        assert reporter.adalora_updates == 20
        assert (adapter.total_step, adapter.tinit, adapter.tfinal) == (20, 2, 4)
        ranks = [int((m.lora_E["default"] != 0).sum()) for m in tuner.model.modules() if hasattr(m, "lora_E")]
        assert len(ranks) == 7 and sum(ranks) == 8 * 7 < 12 * 7 and len(set(ranks)) > 1
        assert adapter.rank_pattern and sum(map(sum, adapter.rank_pattern.values())) == 8 * 7
        assert metrics["adalora_mean_rank"] == 8.0
    else:
        assert "adalora_mean_rank" not in metrics


def test_ppo_prunes_the_adalora_ranks_of_its_policy_and_value_model_in_its_own_loop(tiny_causal, tmp_path):
    from tests.training.test_ppo import PROMPTS, TOY, chosen_fraction
    from training.runners.ppo import train as train_ppo

    # 2 PPO steps × 2 minibatches: 4 optimizer updates, the last one the final allocation (adalora_tfinal: 1 of 4)
    values = {**TOY, "max_steps": 2, "ppo_epochs": 1, "base_model": str(tiny_causal), "method": "adalora"}
    config = PPORunConfig.from_dict(values)
    metrics = train_ppo(config, PROMPTS, tmp_path / "out", lambda event: None, score_fn=chosen_fraction)
    assert metrics["adalora_mean_rank"] == 8.0  # the policy's; 12 before the allocation
    assert metrics["n_trainable_params"] == EXPECTED_TRAINABLE["adalora"]
    saved = load_file(tmp_path / "out" / "model.safetensors")  # merged into plain weights
    assert not any("lora_" in key for key in saved)


# --- the runners: merged and adapter folders, the card ----------------------------------------------------------


@pytest.mark.parametrize("method", ["adalora", "ia3"])
def test_a_reward_model_merges_its_adapter_and_leaves_every_other_weight_as_it_was(method, tiny_base, tmp_path):
    data = toy_rows(48)
    paths = {
        "train": write_jsonl(data[:40], tmp_path / "train.jsonl"),
        "test": write_jsonl(data[40:], tmp_path / "t.jsonl"),
    }
    events = []
    config = RewardRunConfig.from_dict({**FAST, "base_model": str(tiny_base), "method": method})
    metrics = run_reward(config, paths, tmp_path / "out", events.append)

    before, after = load_file(tiny_base / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(before) == set(after)  # plain weights, no adapter keys
    adapted = {key for key in before if any(f".{t}." in key for t in TARGETS[method])}
    assert len(adapted) == len(TARGETS[method])
    assert all(not torch.equal(before[key], after[key]) for key in adapted | {"score.weight"})
    assert all(torch.equal(before[key], after[key]) for key in set(before) - adapted - {"score.weight"})
    losses = _losses(events)
    assert losses[-1] < 0.8 * losses[0]
    assert metrics["n_trainable_params"] == EXPECTED_TRAINABLE[method] + 32  # + the score head (1 × 32)

    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["is_adapter"] is False and info["metrics"]["n_trainable_params"] == metrics["n_trainable_params"]
    card = _card(info["config"], info["metrics"], info, "reward")
    name = {"adalora": "AdaLoRA (adalora)", "ia3": "(IA)³ (ia3)"}[method]
    trained = f"{metrics['n_trainable_params']:,} of {metrics['n_params']:,} weights trained"
    assert f"- method: {name}" in card and trained in card


# peft reads AdaLoRA's rank_pattern as LoRA's per-module ranks too, warns that none match, and then resizes the
# matrices by it as AdaLoRA's loader (the shapes below load only if it did).
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match")
def test_an_adalora_adapter_keeps_its_pruned_ranks_and_loads_over_its_base(tiny_causal, tmp_path):
    paths = {"train": write_jsonl(_sft_export(), tmp_path / "train.jsonl")}
    config = {**FAST, "base_model": str(tiny_causal), "method": "adalora", "merge_adapter": False}
    metrics = run_sft(SFTRunConfig.from_dict(config), paths, tmp_path / "out", lambda event: None)

    out = tmp_path / "out"
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all(any(f".{part}" in key for part in OWN["adalora"]) for key in saved)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "ADALORA" and (adapter["init_r"], adapter["target_r"]) == (12, 8)
    kept = {key: sum(mask) for key, mask in adapter["rank_pattern"].items()}
    assert len(kept) == 7 and sum(kept.values()) == 56  # the saved matrices are cut to the ranks kept
    assert all(saved[f"base_model.model.{key}"].shape[0] == rank for key, rank in kept.items())

    from transformers import AutoModelForCausalLM

    model = load_model(AutoModelForCausalLM, out)  # the base with the adapter merged in
    base = load_model(AutoModelForCausalLM, tiny_causal)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(model(ids).logits, base(ids).logits)
    info = json.loads((out / "arbiter.json").read_text())
    assert info["is_adapter"] is True and info["metrics"]["adalora_mean_rank"] == metrics["adalora_mean_rank"]
    card = _card(info["config"], info["metrics"], info, "sft")
    assert "a PEFT adapter over the base model" in card
    assert "- method: AdaLoRA (adalora), ranks pruned from 12 to a mean of 8: " in card


def test_a_stopped_adalora_run_resumes_in_its_final_phase_with_its_pruned_ranks(tiny_causal, tmp_path):
    """Checkpoints keep the matrices at full rank (peft would cut them to the ranks kept, and the resumed model
    could not load them); the resumed run reads the kept ranks back before its first step."""
    paths = {"train": write_jsonl(_sft_export(), tmp_path / "train.jsonl")}
    values = {**FAST, "base_model": str(tiny_causal), "method": "adalora", "save_steps": 17, "merge_adapter": False}
    config, checkpoints = SFTRunConfig.from_dict(values), str(tmp_path / "checkpoints")
    with pytest.raises(RunCancelled):  # stopped at step 18: the last checkpoint is 17, after the final allocation (16)
        run_sft(config, paths, tmp_path / "out", lambda e: e["event"] == "progress" and e["step"] == 18, checkpoints)
    events = []
    metrics = run_sft(config, paths, tmp_path / "out", events.append, checkpoints)
    assert [e["step"] for e in events if e["event"] == "progress"] == [18, 19, 20]
    assert metrics["adalora_mean_rank"] == 8.0
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sum(map(sum, adapter["rank_pattern"].values())) == 56


# --- options ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "lora", "adalora_init_r": 16}, "adalora_init_r cannot apply to method=lora"),
        ({"method": "ia3", "adalora_tinit": 0.3}, "adalora_tinit cannot apply to method=ia3"),
        ({"method": "adalora", "ia3_feedforward_modules": "down_proj"}, "cannot apply to method=adalora"),
        ({"method": "adalora", "adalora_init_r": 8}, "adalora_init_r (8) must be above adalora_target_r (8)"),
        ({"method": "adalora", "adalora_tinit": 0.5, "adalora_tfinal": 0.5}, "must be below 1"),
        ({"method": "adalora", "adalora_tfinal": 2.5}, "whole number of steps"),
        ({"method": "adalora", "adalora_delta_t": 0}, "at least 1"),
        (
            {"method": "ia3", "lora_target_modules": "k_proj,v_proj", "ia3_feedforward_modules": "down_proj"},
            "ia3_feedforward_modules must be among lora_target_modules",
        ),
    ],
)
def test_a_bad_combination_is_refused_with_its_reason(values, message):
    with pytest.raises(ConfigError) as caught:
        SFTRunConfig.from_dict(values)
    assert message in str(caught.value)


def test_the_adapters_take_ten_times_the_full_learning_rate_and_online_kinds_accept_them():
    from training.runners.grpo_config import GRPORunConfig

    for method in ("adalora", "ia3"):
        assert DPORunConfig.from_dict({"method": method}).learning_rate == 1e-5  # full: 1e-6
        assert RewardRunConfig.from_dict({"method": method}).learning_rate == 1e-4  # full: 1e-5
        GRPORunConfig.from_dict({"method": method})
        PPORunConfig.from_dict({"method": method})


def test_a_schedule_without_pruning_steps_stops_the_run_before_training(tiny_causal, tmp_path):
    paths = {"train": write_jsonl(_sft_export(16), tmp_path / "train.jsonl")}
    config = SFTRunConfig.from_dict(
        {**FAST, "base_model": str(tiny_causal), "method": "adalora", "adalora_tinit": 12, "adalora_tfinal": 8}
    )
    events = []
    with pytest.raises(RunnerError, match=r"adalora_tinit \(12 steps\) .* 20 steps, which leaves none"):
        run_sft(config, paths, tmp_path / "out", events.append)
    assert not (tmp_path / "out").exists() and not [e for e in events if e["event"] == "progress"]


@pytest.mark.django_db
def test_train_takes_the_methods_and_their_options_for_dpo_and_reward(preference_project):
    def train(kind, base, *sets):
        args = [arg for value in sets for arg in ("--set", value)]
        call_command(
            "train", kind, "--project", "prefs", "--base-model", base, *args, stdout=io.StringIO(), stderr=io.StringIO()
        )
        return TrainingRun.objects.latest("pk")

    run = train("dpo", "tiny-causal", "method=adalora", "adalora_target_r=4", "adalora_tfinal=0.25")
    assert (run.kind, run.config["method"], run.config["adalora_target_r"], run.config["adalora_tfinal"]) == (
        "dpo",
        "adalora",
        4,
        0.25,
    )
    run = train("reward", "tiny-llama", "method=ia3", "ia3_feedforward_modules=down_proj")
    assert (run.kind, run.config["method"], run.config["ia3_feedforward_modules"]) == ("reward", "ia3", "down_proj")
    assert run.config["learning_rate"] == 1e-4

    count = TrainingRun.objects.count()
    with pytest.raises(CommandError, match="adalora_init_r cannot apply to method=lora"):
        train("reward", "tiny-llama", "method=lora", "adalora_init_r=16")
    assert TrainingRun.objects.count() == count


@pytest.mark.django_db
def test_the_run_page_says_the_method_and_the_weights_it_trained(client, preference_project, make_member):
    from django.urls import reverse

    from annotate.models import Role

    call_command(
        "train", "reward", "--project", "prefs", "--base-model", "tiny-llama", "--set", "method=ia3",
        stdout=io.StringIO(), stderr=io.StringIO(),
    )  # fmt: skip
    run = TrainingRun.objects.latest("pk")
    client.force_login(make_member(preference_project, "boss", Role.ADMIN))
    page = reverse("training-run", args=[run.pk])
    assert "Method:" not in client.get(page).content.decode()  # nothing trained yet
    metrics = {"n_train": 40, "train_steps": 20, "n_trainable_params": 160, "n_params": 20128}
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded", metrics=metrics, progress_total=20)
    html = client.get(page).content.decode()
    assert "Method: (IA)³ (ia3): 160 of 20,128 weights trained (0.795%)" in html
