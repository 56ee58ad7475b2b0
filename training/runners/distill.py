"""Distillation of a teacher into the student (the base model). No Django here: the worker runs this in a subprocess.

Two modes (the config's ``mode``, see distill_config.py):

- ``on_policy``: TRL's ``DistillationTrainer``. Each batch the student answers the prompts itself and learns the
  teacher's next-token distributions on its own answers under the generalized JSD (``beta``), so it is taught where
  it actually goes wrong (Agarwal et al. 2024). ``lmbda`` below 1 lets the teacher write a share of the batches
  instead (GKD's mix of on-policy and sequence-level distillation): :class:`MixedDistillationTrainer`.
- ``context``: context distillation (Askell et al. 2021; Snell et al. 2022). The teacher (the base model itself
  unless ``teacher_model`` is given) answers each prompt with ``context`` as a system turn; the pairs (the prompt
  *without* the context → that answer) are kept as ``context_pairs.jsonl`` beside the model and the student is
  fine-tuned on them with sft.py's :func:`fine_tune`.

Both modes hold out up to ``eval_prompts`` prompts and measure, before and after training, the student's divergence
to the teacher there: the teacher answers each held-out prompt once (with the context in context mode); on those
fixed answers ``eval_divergence_*`` is the mean over answer tokens of the generalized JSD (the run's ``beta`` and
``temperature``) between the student's next-token distribution (prompt without context) and the teacher's, and
``eval_answer_logp_*`` the student's mean log-probability of the answer's tokens.

    config = DistillRunConfig.from_dict({"base_model": "/models/small", "teacher_model": "/models/large"})
    metrics = run(config, {"train": "prompts.jsonl"}, "out/", print)
    metrics["eval_divergence_before"], metrics["eval_divergence_after"]   # → 0.41, 0.12
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import torch

from .base import (
    RunnerError,
    emit_log,
    make_progress_callback,
    peft_config,
    read_arbiter_json,
    resolve_precision,
    train_to_end,
    training_arguments,
)
from .data import as_messages, read_prompt_rows, read_split, write_jsonl
from .distill_config import CONFIG_CLASS, DistillRunConfig, tokenizer_difference  # noqa: F401 - the worker reads it
from .policy import (
    check_model_path,
    encode_prompt,
    ensure_policy_chat_template,
    free_memory,
    is_gguf,
    load_policy_model,
    load_policy_tokenizer,
    model_label,
    sample_prompts,
    save_policy,
    start_prompt_run,
    write_info,
)
from .sft import check_trainable_base, fine_tune

PAIRS_FILE = "context_pairs.jsonl"


# --- the divergence ---------------------------------------------------------------------------------


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, temperature: float = 1.0
) -> torch.Tensor:
    """Per position, TRL's generalized JSD between the two next-token distributions (``[..., vocab]`` → ``[...]``):
    with m = (1 − β)·p_student + β·p_teacher, β·KL(teacher ‖ m) + (1 − β)·KL(student ‖ m); β = 0 is the forward
    KL(teacher ‖ student), β = 1 the reverse KL(student ‖ teacher). Both logits are divided by ``temperature``."""
    s = torch.log_softmax(student_logits.float() / temperature, -1)
    t = torch.log_softmax(teacher_logits.float() / temperature, -1)
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logaddexp(s + math.log(1 - beta), t + math.log(beta))
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def answer_ids(tokenizer, messages: list[dict], answer: str, max_prompt_length: int) -> tuple[list[int], list[int]]:
    """``(prompt ids, answer ids)`` of a conversation and its assistant answer, as the chat template writes them (the
    answer's end-of-turn tokens included); the prompt keeps its end."""
    prompt = encode_prompt(tokenizer, messages, 10**9)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=True, return_dict=True
    )["input_ids"]
    full = list(full)
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        completion = full[len(prompt) :]
    else:  # a template that rewrites earlier turns: the answer's own tokens, then eos
        completion = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt[-max_prompt_length:], completion


def _completion_logits(model, rows: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """For each ``(prompt ids, answer ids)``, the logits that predict each answer token (``[len(answer), vocab]``)."""
    device = next(model.parameters()).device
    sequences = [prompt + answer for prompt, answer in rows]
    width = max(map(len, sequences))
    pad = 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    logits = model(input_ids=ids, attention_mask=mask).logits
    return [logits[i, len(p) - 1 : len(p) + len(a) - 1] for i, (p, a) in enumerate(rows)]


@torch.no_grad()
def measure(student, teacher, pairs: list[dict], config, batch_size: int) -> dict:
    """The student's mean divergence to the teacher over the answer tokens of ``pairs`` (``{"teacher": (prompt
    ids, answer ids), "student": (prompt ids, answer ids)}``: the same answer after each one's prompt), and its mean
    log-probability of those tokens."""
    modes = (student.training, teacher.training)
    student.eval(), teacher.eval()
    divergence, logp, tokens = 0.0, 0.0, 0
    try:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            ours = _completion_logits(student, [p["student"] for p in batch])
            theirs = _completion_logits(teacher, [p["teacher"] for p in batch])
            for s, t, pair in zip(ours, theirs, batch):
                target = torch.tensor(pair["student"][1], device=s.device)
                divergence += generalized_jsd(s, t.to(s.device), config.beta, config.temperature).sum().item()
                logp += torch.log_softmax(s.float(), -1).gather(1, target[:, None]).sum().item()
                tokens += len(target)
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    return {"divergence": divergence / max(tokens, 1), "answer_logp": logp / max(tokens, 1)}


def with_context(prompt, context: str, system_turn: bool = True) -> list[dict]:
    """The prompt's turns after the context as a system turn (merged into the prompt's own system turn, if any);
    with ``system_turn`` off (a chat template that refuses system turns), before the first turn's text instead."""
    messages = as_messages(prompt, "user")
    role = "system" if system_turn else messages[0]["role"]
    if messages and messages[0]["role"] == role:
        return [{"role": role, "content": f"{context}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": context}, *messages]


def takes_system_turns(path: str) -> bool:
    """Whether the chat template of the model at ``path`` accepts a system turn (Gemma's, say, raises on one)."""
    tokenizer = load_policy_tokenizer(path)
    ensure_policy_chat_template(tokenizer)
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False
        )
    except Exception:  # noqa: BLE001 - jinja's TemplateError, or whatever the template's raise_exception raises
        return False
    return True


def eval_pairs(config, prompts: list, teacher_path: str, tokenizer, progress_callback) -> list[dict]:
    """The teacher's answer to each held-out prompt (with the context in context mode), encoded after the
    teacher's prompt and after the student's."""
    context = config.context if config.mode == "context" else ""
    system = bool(context) and takes_system_turns(teacher_path)
    teacher_prompts = [with_context(p, context, system) if context else as_messages(p, "user") for p in prompts]
    samples = sample_prompts(
        config, teacher_prompts, 1, progress_callback, model_path=teacher_path, seed=config.seed + 1
    )
    pairs = []
    for prompt, teacher_prompt, (sample,) in zip(prompts, teacher_prompts, samples):
        if not sample.text.strip():
            continue
        pairs.append(
            {
                "teacher": answer_ids(tokenizer, teacher_prompt, sample.text, config.max_prompt_length),
                "student": answer_ids(tokenizer, as_messages(prompt, "user"), sample.text, config.max_prompt_length),
            }
        )
    return pairs


# --- the run ----------------------------------------------------------------------------------------


def split_prompts(rows: list[dict], dataset_paths: dict, config) -> tuple[list[dict], list[dict]]:
    """``(train rows, held-out rows)``: the test split when the launch wrote one, else up to ``eval_prompts`` of the
    prompts (at most a quarter), drawn with the seed."""
    if "test" in dataset_paths:
        return rows, read_prompt_rows(dataset_paths["test"])[: config.eval_prompts]
    n_eval = min(config.eval_prompts, len(rows) // 4)
    if not n_eval:
        return rows, []
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def check_teacher(config) -> None:
    if not config.teacher_model:
        if config.needs_teacher:
            raise RunnerError(config.NO_TEACHER_MESSAGE)
        return
    check_model_path(config.teacher_model, "teacher")
    if is_gguf(config.teacher_model) or is_gguf(config.base_model):
        raise RunnerError("Distillation compares token distributions of two model folders; a GGUF file is neither.")
    why = tokenizer_difference(config.base_model, config.teacher_model)
    if why:
        raise RunnerError(
            f"The teacher {config.teacher_model} and the student {config.base_model} do not share a tokenizer: {why}. "
            "Distillation compares their next-token distributions token by token."
        )


def run(config: DistillRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """Distill the teacher (or the context) into the student; save it to ``output_dir``; return the metrics."""
    rows = start_prompt_run(config, dataset_paths, "distill", needs_reward=False)
    check_trainable_base(config)
    check_teacher(config)
    train_rows, held_out = split_prompts(rows, dataset_paths, config)
    if not train_rows:
        raise RunnerError("No prompts are left to train on after holding out the eval prompts (eval_prompts).")
    emit_log(
        progress_callback,
        f"distill ({config.mode}): {len(train_rows)} prompts to train on, {len(held_out)} held out; teacher "
        f"{model_label(config.teacher_model or config.base_model)}",
    )
    if config.mode == "on_policy":
        return distill_on_policy(config, train_rows, held_out, output_dir, progress_callback, checkpoint_dir)
    return distill_context(config, train_rows, held_out, output_dir, progress_callback, checkpoint_dir)


def _info(config, extra: dict | None = None) -> dict:
    info = {"kind": "distill", "mode": config.mode, "teacher": config.teacher_model or config.base_model}
    if config.mode == "context":
        info["context"] = config.context
    return {**info, **(extra or {})}


def _divergence_metrics(before: dict | None, after: dict | None, n_eval: int) -> dict:
    if before is None or after is None:
        return {}
    return {
        "eval_divergence_before": before["divergence"],
        "eval_divergence_after": after["divergence"],
        "eval_answer_logp_before": before["answer_logp"],
        "eval_answer_logp_after": after["answer_logp"],
        "n_eval": n_eval,
    }


def _mixed_trainer_class():
    from trl import DistillationTrainer

    class MixedDistillationTrainer(DistillationTrainer):
        """TRL's on-policy trainer, except that with probability 1 − ``lmbda`` a batch's answers are sampled from
        the teacher instead of the student (GKD, Agarwal et al. 2024). Only the sampling model changes: the loss
        is TRL's, on whichever answers were drawn."""

        def __init__(self, *args, lmbda: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.lmbda = lmbda
            self._draws = random.Random(self.args.seed)
            self.sampled_batches = {"student": 0, "teacher": 0}  # training batches, by the model that answered

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
            if not self.model.training:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
            by_student = self.lmbda >= 1 or self._draws.random() < self.lmbda
            self.sampled_batches["student" if by_student else "teacher"] += 1
            if by_student:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
            student, self.model_wrapped = self.model_wrapped, self.teacher_model
            try:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
            finally:
                self.model_wrapped = student

    return MixedDistillationTrainer


def _fits(tokenizer, prompt, limit: int) -> bool:
    return len(encode_prompt(tokenizer, prompt, 10**9)) <= limit


def distill_on_policy(config, train_rows, held_out, output_dir, progress_callback, checkpoint_dir) -> dict:
    import datasets
    from trl import DistillationConfig

    precision = resolve_precision(config)
    tokenizer = load_policy_tokenizer(config.base_model)
    ensure_policy_chat_template(tokenizer)
    tokenizer.padding_side = "left"
    # TRL does not cut prompts: one longer than max_prompt_length is left out rather than overflowing the memory.
    prompts = [as_messages(r["prompt"], "user") for r in train_rows]
    kept = [p for p in prompts if _fits(tokenizer, p, config.max_prompt_length)]
    if not kept:
        raise RunnerError(f"Every prompt is longer than max_prompt_length={config.max_prompt_length} tokens; raise it.")
    if len(kept) < len(prompts):
        emit_log(progress_callback, f"{len(prompts) - len(kept)} prompts longer than max_prompt_length left out")
    pairs = eval_pairs(config, [r["prompt"] for r in held_out], config.teacher_model, tokenizer, progress_callback)
    free_memory()
    model = load_policy_model(config.base_model, config, precision)
    # The trainer puts the teacher on the student's device (accelerate's prepare_model) in eval mode.
    teacher = load_policy_model(config.teacher_model, config, precision, for_training=False)
    train = datasets.Dataset.from_list([{"prompt": p} for p in kept])
    with tempfile.TemporaryDirectory(prefix="arbiter-ckpt-") as scratch:
        checkpoints = str(checkpoint_dir or scratch)
        args = training_arguments(
            config,
            DistillationConfig,
            checkpoints,
            precision,
            has_eval=False,
            renames={"max_new_tokens": "max_completion_length"},
        )
        reporter = make_progress_callback(progress_callback, config)
        trainer = _mixed_trainer_class()(
            model=model,
            teacher_model=teacher,
            args=args,
            train_dataset=train,
            processing_class=tokenizer,
            peft_config=peft_config(config, "CAUSAL_LM"),
            callbacks=[reporter],
            lmbda=config.lmbda,
        )
        batch = config.per_device_eval_batch_size
        student = trainer.accelerator.unwrap_model(trainer.model)
        before = measure(student, trainer.teacher_model, pairs, config, batch) if pairs else None
        if before is not None:
            emit_log(progress_callback, f"Divergence to the teacher before training: {before['divergence']:.4f}")

        def collect() -> dict:
            counts = trainer.sampled_batches
            metrics = {"teacher_sampled_fraction": counts["teacher"] / max(sum(counts.values()), 1)}
            if pairs:
                student = trainer.accelerator.unwrap_model(trainer.model)
                after = measure(student, trainer.teacher_model, pairs, config, batch)
                metrics.update(_divergence_metrics(before, after, len(pairs)))
            return metrics

        metrics = train_to_end(trainer, reporter, checkpoints, collect)
        if "eval_divergence_after" in metrics:
            emit_log(
                progress_callback, f"Divergence to the teacher after training: {metrics['eval_divergence_after']:.4f}"
            )
        if trainer.accelerator.is_main_process:
            model = trainer.accelerator.unwrap_model(trainer.model)
            save_policy(model, tokenizer, config, output_dir, metrics, _info(config))
    return metrics


def context_pairs(config, rows: list[dict], progress_callback) -> list[dict]:
    """``num_samples`` answers of the teacher to each prompt with the context; rows ``{"prompt": the prompt without
    the context, "completion", "item", "external_id"}``. Empty answers teach nothing and are left out."""
    system = takes_system_turns(config.teacher_model or config.base_model)
    teacher_prompts = [with_context(row["prompt"], config.context, system) for row in rows]
    samples = sample_prompts(
        config, teacher_prompts, config.num_samples, progress_callback, model_path=config.teacher_model or None
    )
    return [
        {
            "prompt": row["prompt"],
            "completion": sample.text,
            "item": row.get("item"),
            "external_id": row.get("external_id", ""),
            "finish_reason": sample.finish_reason,
        }
        for row, answers in zip(rows, samples)
        for sample in answers
        if sample.text.strip()
    ]


def distill_context(config, train_rows, held_out, output_dir, progress_callback, checkpoint_dir) -> dict:
    precision = resolve_precision(config)
    teacher_path = config.teacher_model or config.base_model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # The pairs are kept with the checkpoints: a retry fine-tunes on the same answers instead of sampling anew.
    saved = Path(checkpoint_dir) / PAIRS_FILE if checkpoint_dir else None
    if saved is not None and saved.is_file():
        pairs = read_split(saved)
        emit_log(progress_callback, f"Resuming: {len(pairs)} context pairs from {saved}")
    else:
        pairs = context_pairs(config, train_rows, progress_callback)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(pairs, saved)
    if not pairs:
        raise RunnerError("The teacher wrote no answer with the context (every one was empty): nothing to learn.")
    tokenizer = load_policy_tokenizer(config.base_model)
    ensure_policy_chat_template(tokenizer)
    evals = eval_pairs(config, [r["prompt"] for r in held_out], teacher_path, tokenizer, progress_callback)
    batch = config.per_device_eval_batch_size

    def divergence(student_path: str) -> dict:
        # One model pair at a time, and none of them while the student trains.
        teacher = load_policy_model(teacher_path, config, precision, for_training=False).to(device)
        student = load_policy_model(student_path, config, precision, for_training=False).to(device)
        try:
            return measure(student, teacher, evals, config, batch)
        finally:
            del teacher, student
            free_memory()

    before = divergence(config.base_model) if evals else None
    if before is not None:
        emit_log(progress_callback, f"Divergence to the teacher with its context, before: {before['divergence']:.4f}")
    examples = [{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs]
    metrics = fine_tune(config, examples, None, output_dir, progress_callback, checkpoint_dir, info=_info(config))
    output_dir = Path(output_dir)
    write_jsonl(pairs, output_dir / PAIRS_FILE)
    metrics["context_pairs"] = len(pairs)
    if before is not None:
        after = divergence(str(output_dir))
        metrics.update(_divergence_metrics(before, after, len(evals)))
        emit_log(progress_callback, f"Divergence to the teacher with its context, after: {after['divergence']:.4f}")
    body = read_arbiter_json(output_dir) or {**_info(config), "config": config.to_dict()}
    write_info(output_dir, {**body, "metrics": metrics, "files": [PAIRS_FILE]})
    return metrics
