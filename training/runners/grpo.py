"""GRPO (Shao et al. 2024, DeepSeekMath) with TRL's ``GRPOTrainer`` and Arbiter's reward models as the reward
function. No Django here.

GRPO needs no value model: it samples ``num_generations`` responses per prompt and uses each response's reward
relative to its group's (mean, and by default spread) as the advantage of all its tokens, with PPO's clipped
ratio and an optional KL penalty (``beta``) against the starting policy. ``rloo.py`` reuses this module's
plumbing for TRL's RLOO trainer, whose baseline is the mean reward of the *other* responses of the group.

The reward is :class:`training.scoring.CombinedScorer`: each reward model standardised by its own training spread,
weighted by ``reward_weights``; responses that TRL hands over as messages are scored as the assistant's turn.

    config = GRPORunConfig.from_dict({"base_model": "/models/policy", "reward_models": ["/models/rm"], "max_steps": 50})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .base import (
    RunnerError,
    emit_log,
    make_progress_callback,
    peft_config,
    resolve_precision,
    train_to_end,
    training_arguments,
)
from .config import OnlineRunConfig
from .grpo_config import CONFIG_CLASS, GRPORunConfig  # noqa: F401 - CONFIG_CLASS: the worker reads runner.CONFIG_CLASS
from .policy import (
    ensure_policy_chat_template,
    load_policy_model,
    load_policy_tokenizer,
    load_scorer,
    save_policy,
    start_prompt_run,
)


def run(config: GRPORunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Train the policy with GRPO against ``config.reward_models``; write it to ``output_dir``; return metrics."""
    from trl import GRPOConfig, GRPOTrainer

    return run_online(
        config, "grpo", GRPOTrainer, GRPOConfig, dataset_paths, output_dir, progress_callback, checkpoint_dir
    )


# --- shared with rloo.py --------------------------------------------------------------------------------


def reward_function(scorer, batch_size: int):
    """TRL's reward-function protocol over Arbiter's scorer: one float per (prompt, completion)."""

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        return scorer.score(list(prompts), list(completions), batch_size)

    return reward_model


def prompt_dataset(rows: list[dict]):
    """The ``prompt`` column TRL samples from; all texts or all conversations (Arrow holds one type per column)."""
    import datasets

    kinds = {isinstance(row["prompt"], list) for row in rows}
    if len(kinds) > 1:
        raise RunnerError("The prompts mix plain texts and conversations; online training needs one kind.")
    return datasets.Dataset.from_list([{"prompt": row["prompt"]} for row in rows])


def run_online(
    config: OnlineRunConfig,
    kind: str,
    trainer_class,
    args_class,
    dataset_paths: dict,
    output_dir,
    progress_callback,
    checkpoint_dir=None,
) -> dict:
    """The common run of TRL's online trainers: checks, prompts, policy, reward function, train, save."""
    rows = start_prompt_run(config, dataset_paths, kind)
    train = prompt_dataset(rows)
    precision = resolve_precision(config)
    tokenizer = load_policy_tokenizer(config.base_model)
    if isinstance(rows[0]["prompt"], list):
        ensure_policy_chat_template(tokenizer)
    model = load_policy_model(config.base_model, config, precision)
    scorer = load_scorer(config)
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix=f"arbiter-{kind}-") as scratch:
        checkpoints = str(checkpoint_dir or scratch)
        # Our names are TRL's (num_generations, beta, epsilon, loss_type, scale_rewards...) but for the response length.
        args = training_arguments(
            config,
            args_class,
            checkpoints,
            precision,
            has_eval=False,
            renames={"max_new_tokens": "max_completion_length"},
            disable_dropout=True,
        )
        reporter = make_progress_callback(progress_callback, config)
        trainer = trainer_class(
            model=model,
            reward_funcs=[reward_function(scorer, config.per_device_eval_batch_size)],
            args=args,
            train_dataset=train,
            processing_class=tokenizer,
            callbacks=[reporter],
            peft_config=peft_config(config, "CAUSAL_LM"),
        )
        emit_log(
            progress_callback,
            f"{len(rows)} prompts × {config.num_generations} responses, precision {precision}, method {config.method}",
        )

        def collect() -> dict:
            logged = [entry for entry in trainer.state.log_history if "reward" in entry]
            metrics = {"n_prompts": len(rows)}
            if logged:
                metrics.update(
                    {key: float(logged[-1][key]) for key in ("reward", "kl", "entropy") if key in logged[-1]}
                )
                metrics["reward_first"] = float(logged[0]["reward"])
            return metrics

        # Each prompt becomes num_generations responses, used num_iterations times: n_train counts prompts.
        metrics = train_to_end(
            trainer, reporter, checkpoints, collect, examples_per_sample=config.num_generations * config.num_iterations
        )
        if trainer.accelerator.is_main_process:
            info = {"kind": kind, "reward_models": list(config.reward_models)}
            save_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, config, output_dir, metrics, info)
    return metrics
