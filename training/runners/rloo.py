"""RLOO, REINFORCE leave-one-out (Ahmadian et al. 2024), with TRL's ``RLOOTrainer`` and Arbiter's reward models
as the reward function. No Django here; the plumbing is shared with ``grpo.py``.

Like GRPO it samples ``num_generations`` responses per prompt and needs no value model; each response's
baseline is the mean reward of the *other* responses to its prompt, which keeps the estimate unbiased. TRL's
RLOO puts the KL to the reference (``beta``) into the reward, as InstructGPT does, rather than into the loss.

    config = RLOORunConfig.from_dict({"base_model": "/models/policy", "reward_models": ["/models/rm"], "max_steps": 50})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)
"""

from __future__ import annotations

from .grpo import run_online
from .rloo_config import CONFIG_CLASS, RLOORunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS


def run(config: RLOORunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Train the policy with RLOO against ``config.reward_models``; write it to ``output_dir``; return metrics."""
    from trl import RLOOConfig, RLOOTrainer

    return run_online(
        config, "rloo", RLOOTrainer, RLOOConfig, dataset_paths, output_dir, progress_callback, checkpoint_dir
    )
