"""The config of a judge run (torch-free: the web process imports it); the runner is judge.py.

A judge run is not training: an AI judge (annotate.models.Judge) votes on the items written at launch. Arbiter
fills every field in from the judge (``train judge --project SLUG --judge NAME``); the runtime options
(temperature, lengths, batch size, concurrency, timeout, retries) come from the judge's options and may be
overridden with ``--set``. The API key is never here: ``api_key_env`` names the environment variable the runner
reads it from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import RunConfig, option

BACKENDS = ("reward-model", "local", "openai")
TASK_KINDS = ("pairwise", "ranking", "rating", "steps")

# What the judge fixes; a launch may not override these (they are the judge's identity and provenance).
JUDGE_FIELDS = frozenset(
    {
        "backend",
        "judge",
        "task_kind",
        "model",
        "reward_models",
        "reward_weights",
        "base_url",
        "api_key_env",
        "allowed_hosts",
        "template_hash",
    }
)


@dataclass
class JudgeRunConfig(RunConfig):
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("judged", "unparseable", "errors")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = (
        "judged",
        "unparseable",
        "errors",
        "position_consistency",
        "items_per_second",
    )
    EXAMPLES: ClassVar[str] = "items"
    # Nothing is trained: every training option of RunConfig is inherited and unread.
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        f.name for f in dataclasses.fields(RunConfig) if f.name not in ("seed", "precision")
    )

    backend: str = option("local", "reward-model, local (a causal LM run here) or openai (an endpoint).", BACKENDS)
    judge: str = option("", "The judge's name (Arbiter fills it in from --judge).")
    task_kind: str = option("pairwise", "The project's kind: what each vote answers.", TASK_KINDS)
    model: str = option("", "local: the causal LM's folder (resolved by Arbiter); openai: the endpoint's model name.")
    reward_models: list[str] = option([], "reward-model: the reward models' folders (resolved by Arbiter).")
    reward_weights: list[float] = option([], "reward-model: the weight of each (standardised scores); empty: equal.")
    base_url: str = option("", "openai: the endpoint's base URL (its host allowed by ARBITER_JUDGE_HOSTS).")
    api_key_env: str = option("", "openai: the environment variable holding the API key (never the key).")
    allowed_hosts: list[str] = option([], "openai: ARBITER_JUDGE_HOSTS when the run was launched.")
    template_hash: str = option("", "sha256 of the prompt template (recorded with every vote).")
    temperature: float = option(0.0, "Sampling temperature; 0 decodes greedily.")
    max_new_tokens: int = option(256, "Longest answer, in tokens (the judge's max_tokens).")
    max_prompt_length: int = option(2048, "local: longer prompts keep their end (the answer format is there).")
    batch_size: int = option(8, "local: conversations generated at once; reward-model: texts scored at once.")
    concurrency: int = option(4, "openai: requests in flight at once.")
    timeout: float = option(60.0, "openai: seconds before a request is given up (and retried).")
    retries: int = option(4, "openai: retries after a 429, a 5xx or a timeout.")

    def validate(self) -> None:
        super().validate()
        if self.temperature < 0:
            raise ConfigError("temperature must be 0 or more.")
        for name in ("max_new_tokens", "max_prompt_length", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1.")
        if self.timeout <= 0 or self.retries < 0:
            raise ConfigError("timeout must be above 0 and retries 0 or more.")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_models):
            raise ConfigError("reward_weights needs one weight per reward model (or none for equal weights).")


CONFIG_CLASS = JudgeRunConfig
