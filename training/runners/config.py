"""The configs of the training kinds, without torch: the web process imports these (the launch form, the API, ``train
--help-config``) and the runners read them. :class:`RunConfig` holds the fields every kind has and the validation of
any of them (``from_dict``, ``parse_overrides``, ``describe``); :class:`PolicyRunConfig` adds what the kinds that
train or sample a causal language model share, :class:`OnlineRunConfig` what GRPO and RLOO share. Each kind's own
config is in ``<kind>_config.py`` beside its runner ``<kind>.py`` (TRL's layout: ``dpo_config.py`` / ``dpo_trainer.py``).

    config = RewardRunConfig.from_dict({"learning_rate": 1e-4, "method": "lora"})
    RewardRunConfig.parse_overrides(["max_steps=20"])   # → {"max_steps": 20}
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import ConfigError

METHODS = ("full", "lora", "qlora", "adalora", "ia3", "prompt_tuning", "prefix_tuning")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
GENERATION_BACKENDS = ("transformers", "vllm")

# Adapters (LoRA, QLoRA, AdaLoRA, IA3, virtual tokens) train far fewer weights than full training and want a
# learning rate about ten times higher: Schulman et al. 2025, "LoRA Without Regret" (TRL's guide of that name), and
# TRL's own examples (trl/scripts/dpo.py: 5e-7 full, 5e-6 LoRA; trl/scripts/sft.py: 2e-5 full, 2e-4 LoRA). A kind's
# default for full training is its FULL_LEARNING_RATE; an explicit learning_rate always wins.
ADAPTER_LEARNING_RATE_FACTOR = 10


def option(default, help: str, choices: tuple | None = None, **kwargs):
    """A config field with its help text (shown by the launch form, the docs and ``train --help-config``)."""
    metadata = {"help": help}
    if choices:
        metadata["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


# Whose votes a run's snapshot takes (annotate.exports ExportOptions.source): people's, AI judges' or both. The
# constitution's RLAIF stage trains reward models on judges' votes with votes=ai.
VOTE_SOURCES = ("human", "ai", "all")

# Weighting each training pair by the reliability of the annotators who voted for it (annotate.exports
# ExportOptions.weights; the reward and DPO kinds' pair_weights): off, or the annotator model that estimates it.
PAIR_WEIGHTS = ("none", "dawid-skene", "bradley-terry")

PAIR_WEIGHTS_HELP = (
    "Weigh each pair's loss by the reliability of the annotators who voted for it, estimated with dawid-skene "
    "(each annotator's chance of giving the true outcome) or bradley-terry (each annotator's skill); the "
    "weights are normalised to mean 1 over the training pairs. none: every pair counts the same (a weight column "
    "in the snapshot is ignored). A snapshot given with --snapshot must have been exported with these weights."
)


@dataclass
class RunConfig:
    """Fields every training kind has. Subclasses add their own; ``from_dict`` validates any of them.

    Class attributes (not options) say what the kind's runner reports, for the pages and the worker's log:
    ``KEY_METRICS`` the logged training metrics that matter for the kind (the progress lines and the charts name
    them and their held-out ``eval_`` twins), ``HEADLINE_METRICS`` the final metrics the run page leads with (a name
    also covers its per-criterion ``<name>_<criterion>``), ``EXAMPLES`` what one training example is,
    ``IGNORED_OPTIONS`` inherited options the runner never reads.
    """

    FULL_LEARNING_RATE: ClassVar[float] = 1e-5
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("loss",)
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("eval_loss",)
    EXAMPLES: ClassVar[str] = "examples"
    # Options the kind inherits but its runner never reads (the launch form leaves them out).
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = frozenset()

    seed: int = option(0, "Random seed for the head initialisation, data order and dropout.")
    method: str = option(
        "full",
        "full: every weight; lora / qlora (4-bit base, CUDA only): low-rank adapters; adalora: low-rank adapters "
        "whose ranks are pruned to a budget while training (adalora_* options); ia3: learned scaling vectors of "
        "the keys, values and feed-forward layers, the fewest weights; prompt_tuning / prefix_tuning: learned "
        "virtual tokens (peft, where the architecture allows).",
        METHODS,
    )
    learning_rate: float | None = option(None, "Peak learning rate (AdamW); empty: the kind's default for the method.")
    num_train_epochs: float = option(1.0, "Passes over the training split (ignored when max_steps > 0).")
    max_steps: int = option(-1, "Stop after this many optimizer steps; -1 trains for num_train_epochs.")
    per_device_train_batch_size: int = option(8, "Examples (pairs) per device per forward pass.")
    per_device_eval_batch_size: int = option(16, "Examples per device when evaluating.")
    gradient_accumulation_steps: int = option(
        1, "Forward passes per optimizer step (effective batch = batch × this × devices)."
    )
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass: less memory, ~20% slower."
    )
    max_length: int | None = option(512, "Longest sequence in tokens; longer examples are left out (none: no limit).")
    precision: str = option("auto", "auto: bf16 on GPUs that support it, fp32 otherwise.", PRECISIONS)
    warmup_steps: float = option(0.0, "Linear warm-up: steps, or a fraction of all steps when below 1.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    lr_scheduler_type: str = option(
        "linear", "Learning-rate schedule (transformers' names: linear, cosine, constant...)."
    )
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    logging_steps: int = option(5, "Log loss and accuracy every this many steps (the plots' resolution).")
    eval_steps: int = option(0, "Evaluate on the test split every this many steps; 0 only at the end.")
    save_steps: int = option(0, "Write a resumable checkpoint every this many steps; 0 relies on save_minutes.")
    save_minutes: float = option(10.0, "Also write a checkpoint when this many minutes passed since the last; 0 off.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA scaling (alpha).")
    lora_dropout: float = option(0.05, "LoRA dropout.")
    lora_target_modules: str = option(
        "all-linear",
        "Modules that get adapters (lora, qlora, adalora, ia3): all-linear, or comma-separated names; for ia3 "
        "all-linear means (IA)³'s own choice for the architecture (keys, values, feed-forward output).",
    )
    adalora_init_r: int = option(12, "adalora: the rank every adapted matrix starts with (lora_r is not used).")
    adalora_target_r: int = option(
        8, "adalora: the mean rank the budget is pruned to by the end of training (below adalora_init_r)."
    )
    adalora_tinit: float = option(
        0.1, "adalora: steps before any rank is pruned: steps, or a fraction of all steps when below 1."
    )
    adalora_tfinal: float = option(
        0.2, "adalora: last steps trained at the final ranks: steps, or a fraction of all steps when below 1."
    )
    adalora_delta_t: int = option(1, "adalora: reallocate the ranks every this many steps while pruning.")
    ia3_feedforward_modules: str = option(
        "",
        "ia3: the targets whose input (not output) is scaled, comma-separated; empty: (IA)³'s choice for the "
        "architecture with lora_target_modules=all-linear, none otherwise.",
    )
    num_virtual_tokens: int = option(16, "prompt_tuning / prefix_tuning: number of virtual tokens.")
    merge_adapter: bool = option(
        True,
        "lora, adalora, ia3: merge the adapter into the weights of the saved model (qlora and virtual tokens are "
        "saved as adapters).",
    )

    def __post_init__(self):
        if self.learning_rate is None:
            self.learning_rate = self.default_learning_rate(self.method)

    @classmethod
    def default_learning_rate(cls, method: str) -> float:
        """The kind's learning rate for ``method`` when none is given: ``FULL_LEARNING_RATE`` for full training,
        :data:`ADAPTER_LEARNING_RATE_FACTOR` times more for the adapter methods."""
        factor = 1 if method == "full" else ADAPTER_LEARNING_RATE_FACTOR
        return float(f"{cls.FULL_LEARNING_RATE * factor:.12g}")  # 1e-05, not 9.999999999999999e-06

    # --- construction and validation ---------------------------------------------------------------

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """A validated config from a dict of values (JSON types). Unknown keys and wrong types raise ConfigError.

        >>> RewardRunConfig.from_dict({"learning_rate": 1e-4, "method": "lora"})  # doctest: +SKIP
        """
        if not isinstance(data, dict):
            raise ConfigError("The config must be an object of option names and values.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in data if key not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"Unknown option {', '.join(hints)}. Options: {', '.join(names)}.")
        types_ = cls.field_types()
        values = {key: _check_type(key, value, types_[key]) for key, value in data.items()}
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def parse_overrides(cls, pairs: list[str]) -> dict:
        """``["learning_rate=1e-4", "method=lora"]`` (the command's ``--set``) → typed values, by each field's type."""
        names = {f.name for f in dataclasses.fields(cls)}
        types_ = cls.field_types()
        values = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"{pair!r}: write options as key=value.")
            if key not in names:
                close = difflib.get_close_matches(key, list(names), n=1)
                raise ConfigError(f"Unknown option {key!r}" + (f" (did you mean {close[0]!r}?)." if close else "."))
            values[key] = _parse_text(key, text.strip(), types_[key])
        return values

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[dict]:
        """Every field: name, type, default, choices and help (for forms and docs). The learning rate's default
        depends on the method: its help names both values."""
        types_ = cls.field_types()
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f.metadata.get("help", "")
            if f.name == "learning_rate" and default is None:
                help_text += (
                    f" Default: {cls.default_learning_rate('full'):g} for method=full, "
                    f"{cls.default_learning_rate('lora'):g} (ten times more) for the adapter methods."
                )
            rows.append(
                {
                    "name": f.name,
                    "type": _type_name(types_[f.name]),
                    "default": default,
                    "choices": f.metadata.get("choices"),
                    "help": help_text,
                }
            )
        return rows

    def validate(self) -> None:
        """Ranges and choices; subclasses call super().validate() and add their own."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(map(str, choices))}, not {getattr(self, f.name)!r}."
                )
        positive = [
            "learning_rate",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "lora_r",
            "lora_alpha",
            "num_virtual_tokens",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be above 0.")
        for name in ("eval_steps", "save_steps", "save_minutes", "warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("max_steps must be -1 (use num_train_epochs) or above 0.")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ConfigError("num_train_epochs must be above 0.")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError("max_length must be at least 8 tokens (or none).")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout must be at least 0 and below 1.")
        self._validate_method_options()

    def _validate_method_options(self) -> None:
        """AdaLoRA's and IA3's own options: set for another method they are refused (they would silently do
        nothing); for their method, a rank budget that can shrink and a schedule that leaves steps to shrink it."""
        for f in dataclasses.fields(self):
            owner = f.name.split("_", 1)[0]
            if owner in ("adalora", "ia3") and self.method != owner and getattr(self, f.name) != f.default:
                raise ConfigError(f"{f.name} cannot apply to method={self.method}: it is an option of method={owner}.")
        if self.method == "adalora":
            if self.adalora_target_r < 1 or self.adalora_delta_t < 1:
                raise ConfigError("adalora_target_r and adalora_delta_t must be at least 1.")
            if self.adalora_init_r <= self.adalora_target_r:
                raise ConfigError(
                    f"adalora_init_r ({self.adalora_init_r}) must be above adalora_target_r "
                    f"({self.adalora_target_r}): AdaLoRA prunes ranks from the first to the second."
                )
            for name in ("adalora_tinit", "adalora_tfinal"):
                value = getattr(self, name)
                if value < 0 or (value >= 1 and not float(value).is_integer()):
                    raise ConfigError(f"{name} must be a fraction below 1 or a whole number of steps.")
            if self.adalora_tinit < 1 and self.adalora_tfinal < 1 and self.adalora_tinit + self.adalora_tfinal >= 1:
                raise ConfigError(
                    "adalora_tinit + adalora_tfinal must be below 1: the steps between them prune the ranks."
                )
        if self.method == "ia3" and self.ia3_feedforward_modules.strip():
            targets = self.lora_target_modules.strip()
            feedforward = {name.strip() for name in self.ia3_feedforward_modules.split(",") if name.strip()}
            if targets != "all-linear" and not feedforward <= {t.strip() for t in targets.split(",")}:
                raise ConfigError(
                    "ia3_feedforward_modules must be among lora_target_modules (or lora_target_modules=all-linear)."
                )


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if args and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or none"
    if typing.get_origin(tp) is list:
        return "list of " + _type_name(typing.get_args(tp)[0])
    return getattr(tp, "__name__", str(tp))


def _base_type(tp):
    """``int | None`` → (int, True)."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _check_type(key: str, value, tp):
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty (null).")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(base) is list:
        (element,) = typing.get_args(base)
        if isinstance(value, (list, tuple)):
            return [_check_type(f"{key}[{i}]", v, element) for i, v in enumerate(value)]
    else:  # pragma: no cover - every field uses the types above
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, not {type(value).__name__} {value!r}.")


def _parse_text(key: str, text: str, tp):
    base, optional = _base_type(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if typing.get_origin(base) is list:  # "a,b,c" (the command's --set reward_weights=0.7,0.3)
            (element,) = typing.get_args(base)
            parts = [part.strip() for part in text.strip("[]").split(",") if part.strip()]
            return [_parse_text(key, part, element) for part in parts]
    except ValueError:
        raise ConfigError(f"{key} must be {_type_name(tp)}, not {text!r}.") from None
    return text


@dataclass
class PolicyRunConfig(RunConfig):
    """Fields of every kind that trains or samples from a causal language model (the policy)."""

    FULL_LEARNING_RATE: ClassVar[float] = 1e-6

    base_model: str = option(
        "", "Folder of the policy to start from; Arbiter fills it in from --base-model (MODEL_ROOTS or the registry)."
    )
    reward_models: list[str] = option(
        [], "Folders of the reward models that score samples (registered artifacts, resolved by Arbiter)."
    )
    reward_weights: list[float] = option(
        [], "Weight of each reward model in the combined reward (standardised scores); empty: equal."
    )
    max_prompt_length: int = option(256, "Prompts longer than this many tokens keep their end (the latest turns).")
    max_new_tokens: int = option(128, "Longest response sampled, in tokens.")
    temperature: float = option(0.7, "Sampling temperature; 0 samples greedily.")
    top_p: float = option(1.0, "Nucleus sampling: keep the smallest set of tokens whose probability adds up to this.")
    generation_batch_size: int = option(
        32,
        "Sequences sampled at once (prompts × samples per prompt); prompts are batched by length. Lower it when "
        "memory runs out, raise it on a large GPU.",
    )
    generation_backend: str = option(
        "transformers",
        "transformers: batched model.generate (CPU or GPU); vllm: vLLM's engine, much faster on a GPU "
        "host with the vllm package installed (sampling only; training stays on transformers).",
        GENERATION_BACKENDS,
    )

    def validate(self) -> None:
        super().validate()
        if self.generation_batch_size < 1:
            raise ConfigError("generation_batch_size must be at least 1.")
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


@dataclass
class OnlineRunConfig(PolicyRunConfig):
    """What GRPO and RLOO share (TRL's names, so TRL's documentation applies)."""

    # TRL logs the mean reward of the sampled responses and the KL to the reference (when beta > 0) every step.
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("reward", "kl", "loss")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("reward", "kl")
    EXAMPLES: ClassVar[str] = "prompts"
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = frozenset({"max_length"})  # lengths: max_prompt_length, max_new_tokens

    num_generations: int = option(4, "Responses sampled per prompt; each is judged against the others of its group.")
    beta: float = option(0.04, "Weight of the KL penalty against the starting policy; 0 loads no reference model.")
    num_iterations: int = option(1, "Updates per batch of generations (μ); above 1 the clipping starts to matter.")
    epsilon: float = option(0.2, "Clipping ε of the ratio π/π_old.")
    mask_truncated_completions: bool = option(
        False, "Leave responses cut off at max_new_tokens (no eos) out of the loss (DAPO)."
    )
    per_device_train_batch_size: int = option(
        8,
        "Responses (not prompts) per device per forward pass; with gradient_accumulation_steps a multiple of num_generations.",
    )
    temperature: float = option(
        1.0, "Sampling temperature of the responses; above 0 (groups of identical greedy samples teach nothing)."
    )
    max_new_tokens: int = option(64, "Longest response sampled (TRL's max_completion_length), in tokens.")
    logging_steps: int = option(1, "Report the metrics every this many optimizer steps.")

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise ConfigError(
                "num_generations must be at least 2: the advantage compares responses to the same prompt."
            )
        generated = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if generated % self.num_generations:
            raise ConfigError(
                f"per_device_train_batch_size × gradient_accumulation_steps ({generated}) must be a multiple of "
                f"num_generations ({self.num_generations}): each batch holds whole groups of responses."
            )
        if self.temperature <= 0:
            raise ConfigError("temperature must be above 0: online training samples its responses.")
        if self.beta < 0 or self.epsilon <= 0 or self.num_iterations < 1:
            raise ConfigError("beta must be 0 or more, epsilon above 0 and num_iterations at least 1.")
        if self.method in ("prompt_tuning", "prefix_tuning"):
            raise ConfigError("Online training supports method full, lora, qlora, adalora or ia3, not virtual tokens.")
        if self.generation_backend != "transformers":
            raise ConfigError("Online training samples with transformers (generation_backend=transformers).")
