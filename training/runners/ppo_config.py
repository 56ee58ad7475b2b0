"""The config of PPO (torch-free: the web process imports it); the runner is ppo.py, its arithmetic rl.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import PolicyRunConfig, option

KL_ESTIMATORS = ("k1", "k3")


@dataclass
class PPORunConfig(PolicyRunConfig):
    FULL_LEARNING_RATE: ClassVar[float] = 3e-6  # of the policy and the value model
    KEY_METRICS: ClassVar[tuple[str, ...]] = ("reward", "kl", "policy_loss", "value_loss")
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("reward", "reward_first", "kl")
    EXAMPLES: ClassVar[str] = "prompts"
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = frozenset({"max_length", "eval_steps"})

    batch_size: int = option(16, "Prompts per PPO step, one sampled response each (the rollouts of a step).")
    mini_batch_size: int = option(
        4, "Rollouts per optimizer update inside a PPO epoch; batch_size must be a multiple of it."
    )
    total_episodes: int = option(
        0,
        "Train on this many rollouts in all; 0: num_train_epochs passes over the prompts. max_steps, when above 0, "
        "counts PPO steps instead and wins.",
    )
    ppo_epochs: int = option(4, "Passes of minibatch updates over each step's rollouts.")
    cliprange: float = option(0.2, "ε of the clipped surrogate: the ratio π/π_old only counts within [1 − ε, 1 + ε].")
    cliprange_value: float = option(
        0.2, "Value clipping: per step, a value estimate moves at most this far from its rollout-time value."
    )
    vf_coef: float = option(0.1, "Weight of the value loss in the total loss.")
    gamma: float = option(1.0, "Discount of later per-token rewards (1: none, as InstructGPT).")
    lam: float = option(
        0.95, "GAE λ: 1 uses whole Monte-Carlo returns (unbiased, noisy); 0 one-step estimates (biased, steady)."
    )
    kl_coef: float = option(
        0.05, "β: weight of the per-token KL penalty against the reference (the starting value when adaptive_kl)."
    )
    kl_estimator: str = option(
        "k1",
        "Per-token KL in the penalty: k1 = log π − log π_ref; k3 = (r − 1) − log r, never negative.",
        KL_ESTIMATORS,
    )
    adaptive_kl: bool = option(
        False, "Adapt β so the KL stays near target_kl (Ziegler et al. 2019); off: β stays kl_coef."
    )
    target_kl: float = option(
        6.0, "adaptive_kl: the KL to the reference (nats per response) that the controller aims at."
    )
    horizon: int = option(
        10000, "adaptive_kl: β changes by at most 20 % per this many rollouts (the controller's speed)."
    )
    whiten_rewards: bool = option(
        False, "Scale each step's per-token rewards to unit variance (keeping their mean) before GAE."
    )
    missing_eos_penalty: float | None = option(
        None,
        "Responses cut off at max_new_tokens without an eos token: subtract this from their score (missing_eos_mode "
        "replace: their score becomes this); none: no penalty.",
    )
    missing_eos_mode: str = option(
        "subtract", "subtract: score − penalty; replace: score = penalty.", ("subtract", "replace")
    )
    temperature: float = option(
        0.7, "Sampling temperature of the rollouts; above 0, since PPO needs a stochastic policy."
    )
    max_new_tokens: int = option(64, "Longest response sampled, in tokens.")
    per_device_train_batch_size: int = option(
        4, "Rollouts per forward pass (memory); a minibatch accumulates gradients over such chunks."
    )
    logging_steps: int = option(1, "Report the metrics every this many PPO steps.")
    save_steps: int = option(0, "Write a resumable checkpoint every this many PPO steps; 0 relies on save_minutes.")

    def validate(self) -> None:
        super().validate()
        positive = [
            "batch_size",
            "mini_batch_size",
            "ppo_epochs",
            "cliprange",
            "cliprange_value",
            "target_kl",
            "horizon",
            "temperature",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be above 0.")
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size})."
            )
        for name in ("total_episodes", "vf_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more.")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError("gamma and lam must be between 0 and 1.")
        if self.method in ("prompt_tuning", "prefix_tuning"):
            raise ConfigError("ppo trains the policy fully or with adapters: method full, lora or qlora.")
        if self.generation_backend != "transformers":
            raise ConfigError(
                "ppo samples its rollouts from the training policy itself (generation_backend=transformers)."
            )


CONFIG_CLASS = PPORunConfig
