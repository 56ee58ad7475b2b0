"""The config of distillation (torch-free: the web process imports it); the runner is distill.py.

Two modes. ``on_policy``: a teacher (``teacher_model``, filled in from ``--teacher``) teaches the student (the base
model) with TRL's ``DistillationTrainer``: the student samples answers to the prompts and learns to match the
teacher's next-token distributions on them under the generalized Jensen-Shannon divergence (Agarwal et al. 2024,
"On-Policy Distillation of Language Models"); the names follow TRL's ``DistillationConfig`` (``beta``,
``temperature``, ``max_new_tokens`` for its ``max_completion_length``) and GKD's ``lmbda``. ``context``: context
distillation (Askell et al. 2021; Snell et al. 2022, "Learning by Distilling Context"): the teacher (default: the
base model itself) answers with ``context`` as a system turn, and the student is fine-tuned to give those answers
without it.

:func:`tokenizer_difference` compares two model folders' tokenizers without torch, so that a launch can refuse a
teacher whose vocabulary is not the student's before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .base import ConfigError
from .config import PolicyRunConfig, option

MODES = ("on_policy", "context")
# context=constitution: Arbiter replaces it with the project's constitution, written out as a system prompt.
CONSTITUTION_CONTEXT = "constitution"


@dataclass
class DistillRunConfig(PolicyRunConfig):
    # TRL's DistillationConfig default for full training: distillation moves a policy, like DPO, with small steps.
    FULL_LEARNING_RATE: ClassVar[float] = 1e-6
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss",)
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("eval_divergence_before", "eval_divergence_after")
    EXAMPLES: ClassVar[str] = "prompts"
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = frozenset({"reward_models", "reward_weights"})

    mode: str = option(
        "on_policy",
        "on_policy: the student samples answers and learns the teacher's next-token distributions on them (needs "
        "--teacher); context: the teacher (default: the base model) answers with the context as a system turn, "
        "and the student is fine-tuned to answer so without it.",
        MODES,
    )
    teacher_model: str = option(
        "", "Folder of the teacher; Arbiter fills it in from --teacher (MODEL_ROOTS or the registry)."
    )
    beta: float = option(
        0.5,
        "on_policy: the divergence, TRL's generalized JSD: 0 forward KL(teacher ‖ student), 1 reverse KL(student ‖ "
        "teacher), 0.5 the Jensen-Shannon divergence. The eval divergence of both modes uses it too.",
    )
    lmbda: float = option(
        1.0,
        "on_policy: the share of batches whose answers the student samples (GKD's λ); the others the teacher "
        "samples (sequence-level distillation). 1: fully on-policy, as TRL's DistillationTrainer.",
    )
    temperature: float = option(
        1.0, "Sampling temperature of the answers, and of both distributions in the divergence (TRL's meaning)."
    )
    max_new_tokens: int = option(64, "Longest answer sampled, in tokens (TRL's max_completion_length).")
    context: str = option(
        "",
        "context: the system prompt the teacher answers with and the student learns to do without; 'constitution' "
        "takes the project's constitution (filled in by Arbiter at launch).",
    )
    num_samples: int = option(1, "context: answers sampled per prompt with the context (each one a training pair).")
    eval_prompts: int = option(
        16,
        "Prompts held out of training (at most a quarter of them) on which the student's divergence to the teacher "
        "is measured before and after; 0: none.",
    )
    logging_steps: int = option(1, "Report the metrics every this many optimizer steps.")

    # Said by the launch (which fills teacher_model in from --teacher, after this config is made) and the runner.
    NO_TEACHER_MESSAGE: ClassVar[str] = (
        "mode=on_policy learns from a teacher: give --teacher PATH_OR_ARTIFACT (a causal LM with the student's "
        "tokenizer), or use mode=context."
    )

    @property
    def needs_teacher(self) -> bool:
        return self.mode == "on_policy"

    def validate(self) -> None:
        super().validate()
        if self.mode == "context" and not self.context.strip():
            raise ConfigError("mode=context needs a context: a system prompt text, or context=constitution.")
        if not 0 <= self.beta <= 1 or not 0 <= self.lmbda <= 1:
            raise ConfigError("beta and lmbda must be between 0 and 1.")
        if self.temperature <= 0:
            raise ConfigError("temperature must be above 0: the divergence divides the logits by it.")
        if self.num_samples < 1 or self.eval_prompts < 0:
            raise ConfigError("num_samples must be at least 1 and eval_prompts 0 or more.")
        if self.mode == "on_policy":
            if self.method in ("prompt_tuning", "prefix_tuning"):
                raise ConfigError(
                    f"mode=on_policy cannot train virtual tokens (method={self.method}): TRL's distillation loss "
                    "calls the backbone directly, so they would never be seen. Use full training or a weight "
                    "adapter (lora, qlora, adalora, ia3)."
                )
            if self.generation_backend != "transformers":
                raise ConfigError("mode=on_policy samples with transformers inside the trainer (generation_backend).")


CONFIG_CLASS = DistillRunConfig


def constitution_context(principles: list[dict]) -> str:
    """A constitution written out as the system prompt of context distillation (``context=constitution``), in the
    manner of Askell et al.'s HHH prompt: the assistant is told the principles it follows.

    >>> print(constitution_context([{"name": "honest", "text": "Do not deceive."}]))
    You are a helpful assistant. In every answer, follow these principles:
    <BLANKLINE>
    - honest: Do not deceive.
    """
    lines = "\n".join(f"- {p['name']}: {p['text']}" for p in principles)
    return f"You are a helpful assistant. In every answer, follow these principles:\n\n{lines}"


# --- comparing tokenizers without torch ----------------------------------------------------------------

# The padding token is left out: it never enters a distribution, and many teachers set none.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token")


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # tokenizer_config.json may hold {"content": "</s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_fingerprint(folder: str | Path) -> dict:
    """What decides whether two models can be compared token by token: the vocabulary (token → id, added tokens
    included, from ``tokenizer.json`` or ``vocab.json``) and the special tokens. Raises ValueError when the folder
    holds no readable vocabulary."""
    folder = Path(folder)
    vocab: dict[str, int] = {}
    tokenizer_json, vocab_json = folder / "tokenizer.json", folder / "vocab.json"
    try:
        if tokenizer_json.is_file():
            data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
            model_vocab = (data.get("model") or {}).get("vocab") or {}
            if isinstance(model_vocab, list):  # Unigram: [[piece, score], ...] in id order
                vocab = {entry[0]: index for index, entry in enumerate(model_vocab)}
            else:
                vocab = dict(model_vocab)
            for token in data.get("added_tokens") or []:
                vocab[token["content"]] = token["id"]
        elif vocab_json.is_file():
            vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"cannot read the tokenizer of {folder}: {exc}") from None
    if not vocab:
        raise ValueError(f"{folder} has no tokenizer.json or vocab.json to compare")
    special = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {config_path}: {exc}") from None
        special = {name: _token_text(config.get(name)) for name in SPECIAL_TOKENS}
    return {"vocab": vocab, "special": special}


def tokenizer_difference(student: str | Path, teacher: str | Path) -> str:
    """Why the teacher's tokenizer is not the student's, in words; "" when they are the same.

    >>> tokenizer_difference("/models/smol-135m", "/models/smol-360m")  # doctest: +SKIP
    ''
    """
    try:
        ours, theirs = tokenizer_fingerprint(student), tokenizer_fingerprint(teacher)
    except ValueError as exc:
        return str(exc)
    if ours["vocab"] != theirs["vocab"]:
        only_ours = len(set(ours["vocab"]) - set(theirs["vocab"]))
        only_theirs = len(set(theirs["vocab"]) - set(ours["vocab"]))
        moved = sum(1 for t, i in ours["vocab"].items() if t in theirs["vocab"] and theirs["vocab"][t] != i)
        return (
            f"their vocabularies differ ({len(ours['vocab'])} and {len(theirs['vocab'])} tokens; {only_ours} only the "
            f"student's, {only_theirs} only the teacher's, {moved} with another id)"
        )
    differing = [
        f"{name} {ours['special'].get(name)!r} and {theirs['special'].get(name)!r}"
        for name in SPECIAL_TOKENS
        if ours["special"].get(name) != theirs["special"].get(name)
    ]
    if differing:
        return "their special tokens differ: " + "; ".join(differing)
    return ""
