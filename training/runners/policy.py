"""What the policy kinds share (generate, sft, dpo, rejection_sampling, ppo, grpo, rloo, evaluate): the prompt files
they read and the machinery of loading, sampling and saving a policy (their common config fields are
:class:`training.runners.config.PolicyRunConfig`). No Django here.

The contract with the Django side (training.datasets / training.launching):

- ``dataset_paths["train"]`` (and, when there is one, ``dataset_paths["test"]``) of a prompt-driven kind
  (generate, rejection_sampling, ppo, grpo, rloo, evaluate) is a JSONL file of rows
  ``{"prompt": <str or list of {"role", "content"} messages>, "item": <item id or null>, "external_id": <str>}``;
  sft reads the ``sft`` export (or chosen responses of a ``trl`` export), dpo reads a ``trl`` export.
- ``config.reward_models`` are folders of reward models (the Django side resolved registered artifacts to folders
  and checked them against the allowed roots); ``config.reward_weights`` weights them (empty: equal weights).
- A policy kind writes the finished model into ``output_dir`` (safetensors, tokenizer, ``arbiter.json``) and returns
  flat ``{name: float}`` metrics. ``generate`` writes ``candidates.jsonl`` instead of weights, one row per prompt:
  ``{"prompt", "item", "external_id", "responses": [{"text", "finish_reason": "eos" | "length", "score"?}]}``;
  ``rejection_sampling`` also writes ``kept.jsonl`` (``{"prompt", "item", "external_id", "response", "score",
  "mean_score"}``) beside the model; ``evaluate`` writes ``comparisons.jsonl`` and no weights.
- Each response of ``candidates.jsonl`` also carries ``"model"`` (the label of the policy that wrote it) and
  ``"tokens"`` (its length in tokens); ``arbiter.json`` of a generate or evaluate folder says
  ``{"kind", "model", "config", "metrics", ...}``.

The shared machinery of those kinds lives here: loading a policy (a folder of safetensors, or for benchmarks a
GGUF file that transformers de-quantises; artifacts are always written as safetensors), encoding prompts with the
chat template, batched sampling of K responses per prompt (:func:`sample_prompts`; the ``vllm`` backend lives in
``generation_vllm.py`` and is imported only when chosen), scoring with the reward models and saving a policy.

    rows = read_prompt_rows("prompts.jsonl")
    samples = sample_prompts(config, [row["prompt"] for row in rows], num_samples=4, progress_callback=print)
    samples[0][0].text, samples[0][0].finish_reason       # → "Paris is the capital...", "eos"
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .base import (
    RunCancelled,
    RunnerError,
    check_artifact_folder,
    check_environment,
    cuda_available,
    emit_log,
    has_safetensors,
    is_adapter_folder,
    load_model,
    load_tokenizer,
    merged_for_saving,
    offline_environment,
    quantization_config,
    resolve_precision,
    saves_adapter,
)
from .data import read_prompt_rows

# A base model without a chat template (GPT-2 and other plain language models) gets this one, saved with its
# tokenizer so that training, generation and scoring read conversations alike. The assistant's turn ends with the
# eos token, so a policy trained on it learns to stop; the generation prompt ends at the colon, so the prompt's
# tokens are a prefix of the prompt-and-response's tokens.
PLAIN_POLICY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def start_prompt_run(config, dataset_paths: dict, kind: str, *, needs_reward: bool = True) -> list[dict]:
    """What every prompt-driven kind refuses before any work, then its prompt rows (the ``train`` split)."""
    if needs_reward and not config.reward_models:
        raise RunnerError(f"{kind} needs at least one reward model to score the samples (reward_models).")
    check_policy_environment(config)
    offline_environment()
    if "train" not in dataset_paths:
        raise RunnerError("No prompt file (the train split) to sample for.")
    return read_prompt_rows(dataset_paths["train"])


# --- the policy's folder ------------------------------------------------------------------------------


def is_gguf(path) -> bool:
    """A GGUF file (llama.cpp's format; transformers de-quantises it on load). Benchmarks use one; artifacts never."""
    return bool(path) and str(path).lower().endswith(".gguf") and Path(path).is_file()


def check_model_path(path: str, name: str = "base_model") -> None:
    """A policy or reward folder Arbiter can load (safetensors or an Arbiter adapter), or a GGUF file; RunnerError."""
    if not path:
        raise RunnerError(f"No {name}: name a model folder (Arbiter fills it in from --base-model or the registry).")
    if is_gguf(path):
        return
    folder = Path(path)
    if not folder.is_dir():
        raise RunnerError(f"The {name} folder {path!r} does not exist.")
    if not is_adapter_folder(folder) and not has_safetensors(folder):
        raise RunnerError(f"{path} has no .safetensors weights; Arbiter loads no other format (pickles can run code).")


def check_policy_base(config) -> None:
    check_model_path(config.base_model, "base_model")


def check_policy_environment(config) -> None:
    """Everything a sampling kind can refuse before any work: the machine, the folders, the backend."""
    check_environment(config)
    check_policy_base(config)
    for folder in config.reward_models:
        check_model_path(folder, "reward model")
    if config.generation_backend == "vllm":
        from . import generation_vllm  # only here: its absence must cost the transformers path nothing

        generation_vllm.check_available(config)


def load_policy_tokenizer(path):
    """The tokenizer of a policy folder or of a GGUF file (whose tokenizer is inside the file)."""
    if not is_gguf(path):
        return load_tokenizer(path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def ensure_policy_chat_template(tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = PLAIN_POLICY_CHAT_TEMPLATE


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def load_policy_model(path, config, precision: str, for_training: bool = True):
    """``AutoModelForCausalLM`` from a folder (safetensors; an adapter over its base) or a GGUF file.

    For training the weights stay fp32 (the Trainer autocasts to bf16/fp16) and QLoRA loads them in 4 bits; for
    sampling they take the precision's dtype (bf16 on a GPU that has it, fp32 on the CPU).
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32 if for_training else torch_dtype(precision)}
    qlora = for_training and config.method == "qlora"
    if qlora:
        kwargs["quantization_config"] = quantization_config(precision)
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float16
    if is_gguf(path):
        model = AutoModelForCausalLM.from_pretrained(
            str(Path(path).parent), gguf_file=Path(path).name, local_files_only=True, **kwargs
        )
    else:
        model = load_model(AutoModelForCausalLM, path, **kwargs)
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model


def model_label(path: str) -> str:
    """The name written beside each response: the folder's name (a registered artifact's folder), or the GGUF file's."""
    path = Path(path)
    return path.stem if is_gguf(path) else path.name


def write_info(output_dir, body: dict) -> None:
    """``arbiter.json``: what a tool needs to use the folder without Arbiter's database (the worker adds provenance)."""
    Path(output_dir, "arbiter.json").write_text(
        json.dumps(body, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )


def save_policy(model, tokenizer, config, output_dir, metrics: dict, info: dict) -> dict:
    """A fine-tuned policy as an artifact folder: safetensors (merged for LoRA, AdaLoRA and IA3 with
    ``merge_adapter``, else the adapter over its base), the tokenizer, and ``arbiter.json`` (``info`` plus config,
    metrics and the base)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    is_adapter = saves_adapter(config)
    model = merged_for_saving(model, config)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    check_artifact_folder(output_dir)
    body = {
        **info,
        "config": config.to_dict(),
        "metrics": metrics,
        "is_adapter": is_adapter,
        "base_model_path": config.base_model,
    }
    write_info(output_dir, body)
    return body


def free_memory() -> None:
    """Give a finished model's memory back before the next one loads (the GPU's cache too)."""
    gc.collect()
    if cuda_available():
        import torch

        torch.cuda.empty_cache()


# --- prompts and samples ------------------------------------------------------------------------------


@dataclass
class Sample:
    """One sampled response: its text (special tokens dropped), why it ended, and its length in tokens (eos included)."""

    text: str
    finish_reason: str  # "eos" | "length"
    tokens: int

    def to_dict(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason, "tokens": self.tokens}


def encode_prompt(tokenizer, prompt, max_prompt_length: int) -> list[int]:
    """Token ids of a prompt ready for the response: messages through the chat template (with the assistant's
    turn opened), text too when the tokenizer has a template, raw otherwise; long prompts keep their end."""
    if isinstance(prompt, list) or getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return list(ids)[-max_prompt_length:]


def response_end(ids: list[int], eos_ids: set[int]) -> tuple[int, str]:
    """Length of a sampled response (up to and including its first eos token) and why it ended.

    >>> response_end([5, 6, 2, 2], {2}), response_end([5, 6, 7], {2})
    ((3, 'eos'), (3, 'length'))
    """
    for index, token in enumerate(ids):
        if token in eos_ids:
            return index + 1, "eos"
    return len(ids), "length"


def length_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Indices in batches of ``size``, longest first: little padding in each batch, and a batch too large for the
    memory fails at the start of a run rather than at its end."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + size] for start in range(0, len(order), size)]


def eos_token_ids(tokenizer, model_config=None) -> set[int]:
    """The tokenizer's eos token and every eos id of the model's generation config (chat models often have two)."""
    ids = {tokenizer.eos_token_id} - {None}
    configured = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    ids |= set(configured if isinstance(configured, (list, tuple)) else [configured]) - {None}
    return ids


def generation_config(config, tokenizer, eos_ids: set[int], num_return_sequences: int):
    """transformers' GenerationConfig for the run's settings: temperature 0 samples greedily; top_k is off (0) so
    that temperature and top_p alone shape the distribution, whatever the model's own defaults say."""
    from transformers import GenerationConfig

    greedy = config.temperature == 0
    settings = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": not greedy,
        "num_return_sequences": num_return_sequences,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": sorted(eos_ids),
    }
    if not greedy:
        settings.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
    return GenerationConfig(**settings)


class TransformersSampler:
    """Batched ``model.generate`` with left padding, on the GPU when there is one."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(tokenizer, getattr(model, "generation_config", None))

    @classmethod
    def load(cls, path, config, tokenizer, precision: str) -> "TransformersSampler":
        import torch

        model = load_policy_model(path, config, precision, for_training=False)
        model.to(torch.device("cuda" if cuda_available() else "cpu")).eval()
        return cls(model, tokenizer)

    def generate(self, batch: list[list[int]], num_samples: int, config) -> list[list[Sample]]:
        """``num_samples`` responses for each prompt of ``batch`` (token ids); greedy decoding samples once and copies."""
        import torch

        per_prompt = 1 if config.temperature == 0 else num_samples
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding: every prompt ends where its response starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        device = next(self.model.parameters()).device
        settings = generation_config(config, self.tokenizer, self.eos_ids, per_prompt)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=settings
            )
        new_tokens = output[:, width:].tolist()
        rows = []
        for prompt in range(len(batch)):
            samples = [self.decode(new_tokens[prompt * per_prompt + j]) for j in range(per_prompt)]
            rows.append(
                samples if per_prompt == num_samples else [Sample(**vars(samples[0])) for _ in range(num_samples)]
            )
        return rows

    def decode(self, ids: list[int]) -> Sample:
        length, reason = response_end(ids, self.eos_ids)
        text_ids = ids[: length - 1] if reason == "eos" else ids[:length]
        return Sample(self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(), reason, length)

    def close(self) -> None:
        self.model = None
        free_memory()


def open_sampler(config, path, tokenizer, precision: str):
    if config.generation_backend == "vllm":
        from . import generation_vllm

        return generation_vllm.VLLMSampler.load(path, config, tokenizer, precision)
    return TransformersSampler.load(path, config, tokenizer, precision)


def sample_prompts(
    config, prompts: list, num_samples: int, progress_callback, model_path: str | None = None, seed: int | None = None
) -> list[list[Sample]]:
    """``num_samples`` responses to each prompt (text or messages) from the policy at ``model_path`` (default
    ``config.base_model``) with the config's sampling settings and backend, in batches of similar length.

    Emits ``start`` and one ``progress`` event per batch (``"phase": "sampling"``); raises RunCancelled when
    the callback asks to stop. The same seed, prompts and settings give the same samples.
    """
    from transformers import set_seed

    path = model_path or config.base_model
    precision = resolve_precision(config)
    tokenizer = load_policy_tokenizer(path)
    if any(isinstance(prompt, list) for prompt in prompts):
        ensure_policy_chat_template(tokenizer)
    ids = [encode_prompt(tokenizer, prompt, config.max_prompt_length) for prompt in prompts]
    per_prompt = 1 if config.temperature == 0 else num_samples
    batches = length_batches([len(i) for i in ids], max(1, config.generation_batch_size // per_prompt))
    sampler = open_sampler(config, path, tokenizer, precision)
    set_seed(
        config.seed if seed is None else seed
    )  # after loading: the draws start from the seed, whatever loading did
    emit_log(
        progress_callback,
        f"Sampling {num_samples} per prompt for {len(ids)} prompts from {model_label(path)} "
        f"({config.generation_backend}, precision {precision}, {len(batches)} batches)",
    )
    results: list = [None] * len(ids)
    try:
        _report(progress_callback, {"event": "start", "step": 0, "total": len(batches), "phase": "sampling"})
        for number, batch in enumerate(batches, 1):
            for index, samples in zip(batch, sampler.generate([ids[i] for i in batch], num_samples, config)):
                results[index] = samples
            _report(
                progress_callback, {"event": "progress", "step": number, "total": len(batches), "phase": "sampling"}
            )
    finally:
        sampler.close()
    return results


def _report(progress_callback, event: dict) -> None:
    if progress_callback(event):
        raise RunCancelled()


def sampling_metrics(samples: list[list[Sample]], seconds: float) -> dict:
    """Counts and rates of a sampling pass (``candidates_per_second`` over the sampling time, loading included)."""
    flat = [sample for row in samples for sample in row]
    return {
        "prompts": len(samples),
        "candidates": len(flat),
        "sampling_seconds": seconds,
        "candidates_per_second": len(flat) / seconds if seconds > 0 else 0.0,
        "mean_response_tokens": sum(s.tokens for s in flat) / max(len(flat), 1),
        "eos_fraction": sum(s.finish_reason == "eos" for s in flat) / max(len(flat), 1),
    }


# --- scoring ------------------------------------------------------------------------------------------


def load_scorer(config):
    """The reward models of ``config`` as one CombinedScorer (equal weights when none are given), or None."""
    if not config.reward_models:
        return None
    from ..scoring import CombinedScorer, RewardScorer

    weights = config.reward_weights or [1.0 / len(config.reward_models)] * len(config.reward_models)
    return CombinedScorer(
        [(RewardScorer.load(folder), weight) for folder, weight in zip(config.reward_models, weights)]
    )


def score_samples(scorer, prompts: list, samples: list[list[Sample]], batch_size: int) -> list[list[float]]:
    """The combined reward of every sample, in the same nesting as ``samples``."""
    flat_prompts = [prompt for prompt, row in zip(prompts, samples) for _ in row]
    flat_texts = [sample.text for row in samples for sample in row]
    scores = iter(scorer.score(flat_prompts, flat_texts, batch_size))
    return [[next(scores) for _ in row] for row in samples]


def timed(function, *args, **kwargs):
    """``(result, seconds)`` of a call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
