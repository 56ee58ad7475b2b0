"""PPO for language models as in InstructGPT (Ouyang et al. 2022; Ziegler et al. 2019): Arbiter's own compact
implementation on torch + transformers + accelerate, since TRL removed its PPO trainer (huggingface/trl #7020).
No Django here. The arithmetic lives in ``rl.py``, one small tested function per piece; this module is the loop.

Four models: the **policy** (a causal LM, trained; full or LoRA/QLoRA), the frozen **reference** (the starting
policy; with LoRA the same weights with the adapter switched off), the **reward model(s)** (``reward_models``
combined by ``reward_weights``, :class:`training.scoring.CombinedScorer`) and the **value model** (trained), a
sequence classifier whose score head, applied at every position instead of only the last, gives a value per token.
It starts from the first reward model when that is a decoder reading the policy's tokens (InstructGPT's choice: it
already judges partial responses), otherwise from the policy itself with a new value head.

One PPO step:

1. rollouts: ``batch_size`` prompts, one response each, sampled from the policy (temperature, top-p,
   ``max_new_tokens``); the log-probs of the sampled tokens under the policy and the reference, and the values;
2. scores from the reward model(s); responses cut off without an eos token are penalised (``missing_eos_penalty``);
3. per-token rewards: −β·KL on each token, plus the score on the last one; optionally whitened;
4. GAE advantages and returns (``gamma``, ``lam``); advantages whitened;
5. ``ppo_epochs`` passes of minibatch updates of the clipped surrogate + ``vf_coef`` × the clipped value loss;
6. β follows the adaptive controller (or stays fixed); the step's metrics are reported.

Dropout is switched off in both trained models (as TRL's PPO did), so the log-probs the update computes for the
sampled tokens start exactly where the rollout's were.

    config = PPORunConfig.from_dict({"base_model": "/models/policy", "reward_models": ["/models/rm"], "max_steps": 50})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import rl
from .base import (
    WEIGHT_ADAPTER_METHODS,
    RunCancelled,
    RunnerError,
    check_environment,
    cuda_available,
    emit_log,
    examples_seen,
    is_adapter_folder,
    last_checkpoint,
    load_model,
    load_tokenizer,
    peft_config,
    quantization_config,
    read_arbiter_json,
    resolve_precision,
    restore_rank_pattern,
    schedule_adalora,
    trained_parameters,
)
from .policy import (
    encode_prompt,
    ensure_policy_chat_template,
    eos_token_ids,
    load_policy_model,
    load_policy_tokenizer,
    save_policy,
    start_prompt_run,
)
from .ppo_config import CONFIG_CLASS, PPORunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS

# score_fn(prompts, response_texts, response_token_ids) -> one float per response (the tests pass a python one)
ScoreFn = Callable[[list, list[str], list[list[int]]], list[float]]


# --- entry point --------------------------------------------------------------------------------------


def run(config: PPORunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Train the policy with PPO against ``config.reward_models``; write it to ``output_dir``; return metrics."""
    rows = start_prompt_run(config, dataset_paths, "ppo")
    return train(config, rows, output_dir, progress_callback, checkpoint_dir)


def train(
    config: PPORunConfig,
    rows: list[dict],
    output_dir,
    progress_callback,
    checkpoint_dir=None,
    score_fn: ScoreFn | None = None,
) -> dict:
    """The PPO loop over prompt ``rows`` (see :func:`training.runners.data.read_prompt_rows`). ``score_fn``
    replaces the reward models (a known reward for tests); by default they are loaded from ``config``."""
    import torch
    from accelerate import Accelerator
    from transformers import set_seed

    check_environment(config)
    precision = resolve_precision(config)
    set_seed(config.seed)
    accelerator = Accelerator(
        cpu=not cuda_available(), mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")
    )
    models = load_models(config, precision, accelerator, any(isinstance(row["prompt"], list) for row in rows))
    if score_fn is None:
        score_fn = reward_model_scorer(config, accelerator.device)
    emit_log(
        progress_callback,
        f"{len(rows)} prompts, precision {precision}, method {config.method}, value model from {models.value_source}",
    )

    total_steps = count_steps(config, len(rows), accelerator.num_processes)
    updates_per_step = config.ppo_epochs * (config.batch_size // config.mini_batch_size)
    params = [p for model in (models.policy, models.value) for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = make_scheduler(config, optimizer, total_steps * updates_per_step)
    # AdaLoRA prunes ranks over the optimizer updates (several per PPO step), in ppo_update.
    tuners = (schedule_adalora(m, config, total_steps * updates_per_step) for m in (models.policy, models.value))
    adalora = [tuner for tuner in tuners if tuner is not None]
    policy, value, optimizer = accelerator.prepare(models.policy, models.value, optimizer)
    kl_control = (
        rl.AdaptiveKLController(config.kl_coef, config.target_kl, config.horizon)
        if config.adaptive_kl
        else rl.FixedKLController(config.kl_coef)
    )

    with tempfile.TemporaryDirectory(prefix="arbiter-ppo-") as scratch:
        checkpoints = Path(checkpoint_dir or scratch)
        start_step = 0
        resume = last_checkpoint(str(checkpoints))
        if resume:
            start_step = load_checkpoint(Path(resume), accelerator, policy, value, optimizer, scheduler, kl_control)
            for tuner in adalora:
                restore_rank_pattern(tuner)
            emit_log(progress_callback, f"Resuming from {Path(resume).name}")
        if progress_callback({"event": "start", "step": start_step, "total": total_steps}):
            raise RunCancelled()
        started, last_save, history = time.monotonic(), time.monotonic(), []
        for step in range(start_step + 1, total_steps + 1):
            prompts = batch_prompts(rows, step, config, accelerator)
            batch = make_rollouts(config, accelerator, policy, value, models, prompts, score_fn, kl_control.value)
            stats = ppo_update(config, accelerator, policy, value, optimizer, scheduler, params, batch, adalora)
            metrics = {**batch.stats, **stats, "kl_coef": kl_control.value, "learning_rate": scheduler.get_last_lr()[0]}
            if accelerator.num_processes > 1:  # every process sampled its own prompts: report their mean
                metrics = {
                    k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                    for k, v in metrics.items()
                }
            kl_control.update(metrics["kl"], config.batch_size * accelerator.num_processes)
            history.append(metrics)
            if progress_callback({"event": "progress", "step": step, "total": total_steps}):
                raise RunCancelled()
            if step % config.logging_steps == 0 or step == total_steps:
                if progress_callback({"event": "metrics", "step": step, "total": total_steps, "metrics": metrics}):
                    raise RunCancelled()
            due = (config.save_steps and step % config.save_steps == 0) or (
                config.save_minutes and time.monotonic() - last_save > 60 * config.save_minutes
            )
            if due and step < total_steps:
                path = save_checkpoint(checkpoints, step, accelerator, policy, value, optimizer, scheduler, kl_control)
                last_save = time.monotonic()
                progress_callback({"event": "checkpoint", "step": step, "path": str(path)})

    result = summary(history, total_steps, time.monotonic() - started, len(rows))
    # Each PPO step samples one response to each of batch_size prompts per process.
    result.update(
        n_train=len(rows),
        n_train_examples_seen=examples_seen(total_steps, config.batch_size * accelerator.num_processes, len(rows)),
        **trained_parameters(accelerator.unwrap_model(policy), config),
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {"kind": "ppo", "reward_models": list(config.reward_models), "value_model_source": models.value_source}
        save_policy(accelerator.unwrap_model(policy), models.tokenizer, config, output_dir, result, info)
    return result


# --- models -------------------------------------------------------------------------------------------


@dataclass
class Models:
    policy: object
    reference: object | None  # None with adapters: the policy with its adapter switched off is the reference
    value: object
    tokenizer: object
    eos_ids: list[int]
    value_source: str


def _value_head_class():
    import torch

    class PerTokenValueModel(torch.nn.Module):
        """A sequence classifier read at every position: ``score(hidden_state_t)`` is the value of the response
        so far. Transformers' ``*ForSequenceClassification`` apply the same head to every hidden state and then
        keep the last real token's; PPO needs them all."""

        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask, position_ids):
            model = self.classifier.get_base_model() if hasattr(self.classifier, "get_base_model") else self.classifier
            backbone = getattr(model, model.base_model_prefix)
            hidden = backbone(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            return model.score(hidden).squeeze(-1).float()

    return PerTokenValueModel


def load_models(config: PPORunConfig, precision: str, accelerator, conversational: bool) -> Models:
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_policy_tokenizer(config.base_model)
    if conversational:
        ensure_policy_chat_template(tokenizer)
    policy = load_policy_model(config.base_model, config, precision)
    policy.config.pad_token_id = tokenizer.pad_token_id
    reference = None
    if config.method == "full":
        reference = (
            load_policy_model(config.base_model, config, precision, for_training=False).eval().requires_grad_(False)
        )
        reference.to(accelerator.device)

    value_source = value_model_source(config, tokenizer)
    kwargs = {"dtype": torch.float32}
    if config.method == "qlora":
        kwargs = {
            "dtype": torch.bfloat16 if precision == "bf16" else torch.float16,
            "quantization_config": quantization_config(precision),
        }
    value = load_model(AutoModelForSequenceClassification, value_source, num_labels=1, **kwargs)
    value.config.pad_token_id = tokenizer.pad_token_id
    if not hasattr(value, "score"):
        raise RunnerError(
            f"{value_source}: a {value.config.model_type} classifier has no per-token score head for values."
        )
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        value = prepare_model_for_kbit_training(value, use_gradient_checkpointing=config.gradient_checkpointing)
    if config.method != "full":
        from peft import get_peft_model

        policy = get_peft_model(policy, peft_config(config, "CAUSAL_LM", policy.config.model_type))
        value = get_peft_model(value, peft_config(config, "SEQ_CLS", value.config.model_type))
    if config.gradient_checkpointing:
        for model in (policy, value):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for model in (policy, value):
        disable_dropout(model)
    eos_ids = sorted(eos_token_ids(tokenizer, policy.generation_config))
    return Models(policy, reference, _value_head_class()(value), tokenizer, eos_ids, value_source)


def value_model_source(config: PPORunConfig, policy_tokenizer) -> str:
    """The first reward model when it is a decoder (a score head per token) over the policy's vocabulary;
    otherwise the policy's own folder (its backbone, a new value head)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not config.reward_models:
        return config.base_model
    folder = config.reward_models[0]
    if (
        is_adapter_folder(folder)
        and read_arbiter_json(folder).get("config", {}).get("method") not in WEIGHT_ADAPTER_METHODS
    ):
        return config.base_model  # virtual-token adapters do not give plain per-token hidden states
    model_folder = read_arbiter_json(folder).get("base_model_path") if is_adapter_folder(folder) else folder
    model_type = AutoConfig.from_pretrained(model_folder, local_files_only=True).model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return config.base_model
    if load_tokenizer(folder).get_vocab() != policy_tokenizer.get_vocab():
        return config.base_model
    return folder


def disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def reward_model_scorer(config: PPORunConfig, device) -> ScoreFn:
    """The reward models of ``config`` combined by their weights (each standardised by its own reward spread)."""
    from ..scoring import CombinedScorer, RewardScorer

    weights = config.reward_weights or [1.0 / len(config.reward_models)] * len(config.reward_models)
    scorer = CombinedScorer(
        [(RewardScorer.load(folder, device=device), w) for folder, w in zip(config.reward_models, weights)]
    )
    return lambda prompts, texts, ids: scorer.score(prompts, texts, config.per_device_eval_batch_size)


# --- the schedule -------------------------------------------------------------------------------------


def count_steps(config: PPORunConfig, n_prompts: int, processes: int = 1) -> int:
    """PPO steps of the run: max_steps, else total_episodes or num_train_epochs passes over the prompts."""
    if config.max_steps > 0:
        return config.max_steps
    episodes = config.total_episodes or config.num_train_epochs * n_prompts
    return max(1, math.ceil(episodes / (config.batch_size * processes)))


def make_scheduler(config: PPORunConfig, optimizer, total_updates: int):
    from transformers import get_scheduler

    warmup = config.warmup_steps if config.warmup_steps >= 1 else config.warmup_steps * total_updates
    return get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=int(warmup), num_training_steps=total_updates
    )


def batch_prompts(rows: list[dict], step: int, config: PPORunConfig, accelerator) -> list:
    """The prompts of ``step`` (1-based) for this process: consecutive slices of seeded shuffles of the rows,
    one shuffle per pass, so a resumed run continues with the prompts it would have seen."""
    size = config.batch_size
    start = ((step - 1) * accelerator.num_processes + accelerator.process_index) * size
    orders: dict[int, list[int]] = {}
    prompts = []
    for index in range(start, start + size):
        epoch, position = divmod(index, len(rows))
        if epoch not in orders:
            orders[epoch] = list(range(len(rows)))
            random.Random(config.seed * 1_000_003 + epoch).shuffle(orders[epoch])
        prompts.append(rows[orders[epoch][position]]["prompt"])
    return prompts


# --- rollouts -----------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    input_ids: object  # [B, P + R]: left-padded prompts, then right-padded responses
    attention_mask: object
    prompt_width: int
    mask: object  # [B, R]: response tokens up to and including eos
    logprobs: object
    values: object
    advantages: object
    returns: object
    stats: dict


def left_pad(sequences: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(attention_mask):
    """Positions counted over real tokens only, as generate() counts them for left-padded prompts."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_logits(model, input_ids, attention_mask, prompt_width: int, temperature: float):
    """Logits of the distributions each response token was sampled from (divided by the temperature)."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
    ).logits
    return logits[:, prompt_width - 1 : -1].float() / temperature


def make_rollouts(
    config: PPORunConfig, accelerator, policy, value, models: Models, prompts: list, score_fn: ScoreFn, kl_coef: float
) -> Rollouts:
    """Steps 1–4 of the module docstring for one batch of prompts, without gradients."""
    import torch
    from transformers import GenerationConfig

    tokenizer, device = models.tokenizer, accelerator.device
    prompt_ids, prompt_mask = left_pad(
        [encode_prompt(tokenizer, p, config.max_prompt_length) for p in prompts], tokenizer.pad_token_id
    )
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    generation = GenerationConfig(
        do_sample=True,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=0,
        max_new_tokens=config.max_new_tokens,
        eos_token_id=models.eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    unwrapped = accelerator.unwrap_model(policy)
    unwrapped.eval()
    with torch.no_grad():
        output = unwrapped.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation)
    width = prompt_ids.shape[1]
    responses = output[:, width:]
    mask, has_eos = rl.response_mask(responses, models.eos_ids)
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
    input_ids = torch.cat([prompt_ids, responses], dim=1)
    attention_mask = torch.cat([prompt_mask, mask], dim=1)

    logprobs, ref_logprobs, values, entropy = [], [], [], []
    with torch.no_grad():
        for rows in torch.arange(len(prompts)).split(config.per_device_train_batch_size):
            ids, att = input_ids[rows], attention_mask[rows]
            logits = response_logits(policy, ids, att, width, config.temperature)
            logprobs.append(rl.token_logprobs(logits, responses[rows]))
            entropy.append(rl.entropy_from_logits(logits))
            if models.reference is not None:
                ref_logits = response_logits(models.reference, ids, att, width, config.temperature)
            else:
                with unwrapped.disable_adapter():
                    ref_logits = response_logits(policy, ids, att, width, config.temperature)
            ref_logprobs.append(rl.token_logprobs(ref_logits, responses[rows]))
            values.append(value(ids, att, position_ids(att))[:, width - 1 : -1])
    logprobs, ref_logprobs, values = torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)
    entropy = torch.cat(entropy)

    kept = [responses[i, : int(mask[i].sum()) - int(has_eos[i])].tolist() for i in range(len(prompts))]
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    raw_scores = torch.tensor(score_fn(prompts, texts, kept), dtype=torch.float32, device=device)
    scores = rl.penalize_missing_eos(raw_scores, has_eos, config.missing_eos_penalty, config.missing_eos_mode)
    rewards, kl = rl.kl_penalty_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, config.kl_estimator)
    if config.whiten_rewards:
        rewards = rl.whiten(rewards, mask, shift_mean=False)
    advantages, returns = rl.gae(rewards, values, mask, config.gamma, config.lam)
    advantages = rl.whiten(advantages, mask)
    sequence_kl = (rl.kl_estimate(logprobs, ref_logprobs, "k1") * mask).sum(1)
    stats = {
        "reward": scores.mean().item(),
        "score": raw_scores.mean().item(),
        "kl": sequence_kl.mean().item(),
        "non_score_reward": (-kl_coef * kl.sum(1)).mean().item(),
        "entropy": rl.masked_mean(entropy, mask).item(),
        "response_length": mask.sum(1).float().mean().item(),
        "eos_fraction": has_eos.float().mean().item(),
        "value_mean": rl.masked_mean(values, mask).item(),
    }
    return Rollouts(input_ids, attention_mask, width, mask, logprobs, values, advantages, returns, stats)


# --- the update ---------------------------------------------------------------------------------------


def ppo_update(
    config: PPORunConfig, accelerator, policy, value, optimizer, scheduler, params, batch: Rollouts, adalora=()
) -> dict:
    """``ppo_epochs`` passes of shuffled minibatches over one step's rollouts; the mean of each loss statistic.
    ``adalora``: the AdaLoRA tuners (:func:`base.schedule_adalora`) whose ranks are reallocated after each update."""
    import torch

    policy.train()
    value.train()
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "value_clip_fraction": 0.0, "approx_kl": 0.0}
    count, width = 0, batch.prompt_width
    for _ in range(config.ppo_epochs):
        order = torch.randperm(batch.input_ids.shape[0])
        for minibatch in order.split(config.mini_batch_size):
            optimizer.zero_grad()
            for rows in minibatch.split(config.per_device_train_batch_size):
                share = len(rows) / len(minibatch)
                ids, att, mask = batch.input_ids[rows], batch.attention_mask[rows], batch.mask[rows].float()
                logits = response_logits(policy, ids, att, width, config.temperature)
                logprobs = rl.token_logprobs(logits, ids[:, width:])
                values = value(ids, att, position_ids(att))[:, width - 1 : -1]
                policy_loss, clip_fraction = rl.clipped_policy_loss(
                    logprobs, batch.logprobs[rows], batch.advantages[rows], mask, config.cliprange
                )
                value_loss, value_clip_fraction = rl.clipped_value_loss(
                    values, batch.values[rows], batch.returns[rows], mask, config.cliprange_value
                )
                accelerator.backward((policy_loss + config.vf_coef * value_loss) * share)
                with torch.no_grad():
                    step_stats = {
                        "policy_loss": policy_loss,
                        "value_loss": value_loss,
                        "clip_fraction": clip_fraction,
                        "value_clip_fraction": value_clip_fraction,
                        "approx_kl": rl.approx_kl(logprobs, batch.logprobs[rows], mask),
                    }
                for name, tensor in step_stats.items():
                    totals[name] += tensor.item() * share
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            for tuner in adalora:  # after the step, before the next zero_grad; last_epoch: the updates made so far
                tuner.update_and_allocate(scheduler.last_epoch)
            scheduler.step()
            count += 1
    return {name: total / max(count, 1) for name, total in totals.items()}


def summary(history: list[dict], total_steps: int, runtime: float, n_prompts: int) -> dict:
    """The run's metrics: the last step's values, the first step's reward, and the run's size."""
    result = {"train_steps": total_steps, "train_runtime": runtime, "n_prompts": n_prompts}
    if history:
        result.update(history[-1])
        result["reward_first"] = history[0]["reward"]
    return result


# --- checkpoints --------------------------------------------------------------------------------------


def trainable_state(model) -> dict:
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(checkpoints: Path, step: int, accelerator, policy, value, optimizer, scheduler, kl_control) -> Path:
    """``checkpoint-N``: the trained weights (safetensors), the optimizer and scheduler (torch.save, read back with
    weights_only), then ``trainer_state.json`` last, which marks the folder complete; older ones are removed."""
    import torch
    from safetensors.torch import save_file

    folder = checkpoints / f"checkpoint-{step}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state(accelerator.unwrap_model(policy)), str(folder / "model.safetensors"))
        save_file(trainable_state(accelerator.unwrap_model(value)), str(folder / "value.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / "optimizer.pt")
        state = {"global_step": step, "kl_coef": kl_control.value}
        (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
        for old in checkpoints.glob("checkpoint-*"):
            if old != folder and old.is_dir():
                import shutil

                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def load_checkpoint(folder: Path, accelerator, policy, value, optimizer, scheduler, kl_control) -> int:
    import torch
    from safetensors.torch import load_file

    for model, name in ((policy, "model.safetensors"), (value, "value.safetensors")):
        saved = load_file(str(folder / name))
        params = dict(accelerator.unwrap_model(model).named_parameters())
        missing = [key for key in saved if key not in params]
        if missing or len(saved) != len(trainable_state(accelerator.unwrap_model(model))):
            raise RunnerError(f"{folder} does not match this run's models (another method or base model?).")
        with torch.no_grad():
            for key, tensor in saved.items():
                params[key].copy_(tensor.to(params[key].device))
    state = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    info = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    kl_control.value = float(info["kl_coef"])
    return int(info["global_step"])
