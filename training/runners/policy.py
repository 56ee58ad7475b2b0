"""What the policy kinds share (generate, sft, dpo, rejection_sampling, ppo, grpo, rloo, evaluate): their config
fields and the prompt files they read. No Django here.

The contract with the Django side (training.datasets / training.actions):

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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from .base import ConfigError, RunConfig, RunnerError, option


@dataclass
class PolicyRunConfig(RunConfig):
    """Fields of every kind that trains or samples from a causal language model (the policy)."""

    base_model: str = option("", "Folder of the policy to start from; Arbiter fills it in from --base-model (MODEL_ROOTS or the registry).")
    reward_models: list[str] = option([], "Folders of the reward models that score samples (registered artifacts, resolved by Arbiter).")
    reward_weights: list[float] = option([], "Weight of each reward model in the combined reward (standardised scores); empty: equal.")
    max_prompt_length: int = option(256, "Prompts longer than this many tokens keep their end (the latest turns).")
    max_new_tokens: int = option(128, "Longest response sampled, in tokens.")
    temperature: float = option(0.7, "Sampling temperature; 0 samples greedily.")
    top_p: float = option(1.0, "Nucleus sampling: keep the smallest set of tokens whose probability adds up to this.")
    learning_rate: float = option(1e-6, "Peak learning rate (AdamW).")

    def validate(self) -> None:
        super().validate()
        if self.reward_weights and len(self.reward_weights) != len(self.reward_models):
            raise ConfigError("reward_weights needs one weight per reward model (or none for equal weights).")
        if any(w < 0 for w in self.reward_weights):
            raise ConfigError("reward_weights must be 0 or more.")
        if self.max_prompt_length < 1 or self.max_new_tokens < 1:
            raise ConfigError("max_prompt_length and max_new_tokens must be at least 1.")
        if self.temperature < 0:
            raise ConfigError("temperature must be 0 or more.")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p must be above 0 and at most 1.")


def read_prompt_rows(path: str | Path) -> list[dict]:
    """The rows of a prompt file (JSONL); RunnerError names the line of a malformed one."""
    rows = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise RunnerError(f"{path}, line {number}: not JSON ({exc}).") from None
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
                raise RunnerError(f"{path}, line {number}: a row needs a non-empty \"prompt\" (text or messages).")
            rows.append({"prompt": prompt, "item": row.get("item"), "external_id": row.get("external_id", "")})
    if not rows:
        raise RunnerError(f"{path} holds no prompts.")
    return rows


def write_jsonl(rows, path: str | Path) -> str:
    """Rows to a JSONL file, written whole or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    tmp.replace(path)
    return str(path)


# --- loading and saving a policy: every kind that trains one does it the same way ----------------------------

# A base model without a chat template (GPT-2 and other plain language models) gets this one, saved with its
# tokenizer so that training, generation and scoring read conversations alike. The assistant's turn ends with the
# eos token, so a policy trained on it learns to stop; the generation prompt ends at the colon, so the prompt's
# tokens are a prefix of the prompt-and-response's tokens.
PLAIN_POLICY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def ensure_policy_chat_template(tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = PLAIN_POLICY_CHAT_TEMPLATE


def check_policy_base(config: RunConfig) -> None:
    """The starting policy's folder exists, and an adapter over an adapter (which nothing could load) is refused."""
    from .base import is_adapter_folder

    if not config.base_model or not Path(config.base_model).is_dir():
        raise RunnerError(f"The policy folder {config.base_model!r} does not exist.")
    saves_adapter = config.method != "full" and not (config.method == "lora" and config.merge_adapter)
    if saves_adapter and is_adapter_folder(config.base_model):
        raise RunnerError(
            f"{config.base_model} is itself an adapter; train over it with method=full, or method=lora with "
            "merge_adapter on, so that the result is a plain model."
        )


def load_policy_model(folder: str | Path, config: RunConfig, precision: str):
    """A causal LM from a local folder (safetensors only; adapters merged), 4-bit for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    from .base import load_model, quantization_config

    kwargs = {"dtype": torch.float32}
    if config.method == "qlora":
        kwargs["quantization_config"] = quantization_config(precision)
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float16
    model = load_model(AutoModelForCausalLM, folder, **kwargs)
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model


def save_policy(model, tokenizer, config: RunConfig, output_dir: str | Path, metrics: dict, info: dict) -> dict:
    """Write a trained policy as Arbiter's artifact folder: safetensors, tokenizer and ``arbiter.json``.

    ``model`` is the unwrapped trained model (a peft model for the adapter methods): LoRA is merged into plain
    weights unless ``merge_adapter`` is off; QLoRA and virtual-token adapters are saved as adapters, and
    ``arbiter.json`` names their base model's folder (``base_model_path``), which ``base.load_model`` reads.
    ``info`` holds at least ``kind``; it is written into ``arbiter.json`` with the config and the metrics.

        save_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, config, out, metrics, {"kind": "sft"})
    """
    import json

    from .base import check_artifact_folder

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    is_adapter = config.method != "full" and not (config.method == "lora" and config.merge_adapter)
    if config.method == "lora" and config.merge_adapter:
        model = model.merge_and_unload()
    model.save_pretrained(str(output_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(output_dir))
    check_artifact_folder(output_dir)
    saved = {"is_adapter": is_adapter, "base_model_path": config.base_model}
    body = {"config": config.to_dict(), "metrics": metrics, **saved, **info}
    (output_dir / "arbiter.json").write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")
    return saved
