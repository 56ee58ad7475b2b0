"""Scoring (prompt, response) pairs with registered reward models, alone or combined by weights. No Django here:
runners (rejection sampling, PPO, GRPO) load the same classes in their subprocess.

    scorer = RewardScorer.load("artifacts/models/demo/run-3-reward")
    scorer.score(["What is 2+2?"], ["4."])                     # → [1.73]
    helpful, safe = RewardScorer.load(a), RewardScorer.load(b)
    CombinedScorer([(helpful, 0.7), (safe, 0.3)]).score(prompts, responses)

A reward model reads a text the way TRL's ``RewardTrainer`` tokenised it in training (:func:`encode`): a string
prompt is concatenated with the response and ends with the eos token; a conversation (a list of
``{"role", "content"}`` messages) goes through the tokenizer's chat template with the response as the
assistant's turn. ``CombinedScorer`` standardises each model's rewards with the mean and spread it had on its own
training data (``reward_stats`` in ``arbiter.json``) before weighting, so that models on different scales add up.

A process reward model (``"kind": "prm"`` in its ``arbiter.json``, training.runners.prm) scores a response too:
``RewardScorer.load`` gives a :class:`PRMScorer`, which splits the response into steps on the PRM's separator,
reads each step's probability of being right, and returns their minimum or product (:func:`aggregate_steps`), so
best-of-N, rejection sampling, generate's ranking and the online kinds rank by it with no other change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .runners.base import load_model, load_tokenizer, read_arbiter_json


def encode(tokenizer, prompt, response) -> list[int]:
    """Token ids of one (prompt, response) exactly as TRL's RewardTrainer prepares a chosen or rejected text."""
    if isinstance(prompt, list) or isinstance(response, list):
        messages = (
            list(prompt or [])
            if isinstance(prompt, list)
            else ([{"role": "user", "content": prompt}] if prompt else [])
        )
        messages += response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    text = response if response.endswith(tokenizer.eos_token) else response + tokenizer.eos_token
    return list(tokenizer(text=(prompt or "") + text)["input_ids"])


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def truncate(ids: list[int], max_length: int, tokenizer) -> list[int]:
    """Keep the end of a long text (the response is there), and its first token when that is [CLS] or <s>."""
    if len(ids) <= max_length:
        return ids
    if ids and ids[0] in {tokenizer.bos_token_id, tokenizer.cls_token_id} - {None}:
        return ids[:1] + ids[len(ids) - max_length + 1 :]
    return ids[len(ids) - max_length :]


@dataclass
class RewardScorer:
    """One reward model with its tokenizer; ``score`` returns one float per (prompt, response)."""

    model: object
    tokenizer: object
    info: dict
    max_length: int | None = None

    @classmethod
    def load(cls, folder: str | Path, device=None) -> "RewardScorer | PRMScorer":
        """The reward model of ``folder`` on ``device``; a process reward model's folder gives a PRMScorer."""
        import torch
        from transformers import AutoModelForSequenceClassification

        info = read_arbiter_json(folder)
        if info.get("kind") == "prm":
            return PRMScorer.load(folder, device)
        device = device or default_device()
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        tokenizer = load_tokenizer(folder)
        model = load_model(AutoModelForSequenceClassification, folder, num_labels=1, dtype=dtype)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device).eval()
        return cls(model, tokenizer, info, (info.get("config") or {}).get("max_length"))

    @property
    def reward_stats(self) -> dict:
        return self.info.get("reward_stats") or {"mean": 0.0, "std": 1.0}

    def score(self, prompts: list, responses: list, batch_size: int = 16) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length.")
        return self.score_ids([encode(self.tokenizer, p, r) for p, r in zip(prompts, responses)], batch_size)

    def score_ids(self, ids: list[list[int]], batch_size: int = 16) -> list[float]:
        """Rewards of tokenised texts, batched by length; texts over ``max_length`` keep their last tokens."""
        import torch

        if self.max_length:
            ids = [truncate(seq, self.max_length, self.tokenizer) for seq in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(ids[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                for row, i in enumerate(chunk):
                    scores[i] = float(logits[row, 0].float())
        return scores


@dataclass
class CombinedScorer:
    """A weighted sum of reward models (e.g. helpfulness 0.7 + safety 0.3), each standardised by its
    ``reward_stats`` when ``normalize`` is on (the default)."""

    parts: list[tuple[RewardScorer, float]]
    normalize: bool = True

    def score(self, prompts: list, responses: list, batch_size: int = 16) -> list[float]:
        if not self.parts:
            raise ValueError("A combined scorer needs at least one reward model.")
        total = [0.0] * len(prompts)
        for scorer, weight in self.parts:
            stats = scorer.reward_stats if self.normalize else {"mean": 0.0, "std": 1.0}
            spread = stats.get("std") or 1.0
            for i, value in enumerate(scorer.score(prompts, responses, batch_size)):
                total[i] += weight * (value - stats.get("mean", 0.0)) / spread
        return total


# --- process reward models ------------------------------------------------------------------------------------


def encode_prompt(tokenizer, prompt) -> list[int]:
    """A PRM's prompt tokens: a conversation through the chat template (ready for the assistant's turn), a string
    after the bos token (as TRL's PRMTrainer tokenised it; [CLS] for an encoder without one)."""
    if isinstance(prompt, list):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(prompt or "", add_special_tokens=False)["input_ids"])
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id  # BERT: [CLS]
    return ([start] if start is not None else []) + ids


def encode_steps(
    tokenizer,
    prompt,
    steps: list[str],
    separator: str,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """``(token ids, positions)`` of a prompt and its steps, each step followed by ``separator``: ``positions[i]``
    is the index of step i's last token, where its label is read (TRL's PRMTrainer); a separator the tokenizer
    drops (a newline, for BERT-style tokenizers) becomes its [SEP] token. A long prompt keeps its end;
    steps that do not fit the limits are left out, so ``positions`` may be shorter than ``steps``."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    if max_prompt_length and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    separator_ids = list(tokenizer(separator, add_special_tokens=False)["input_ids"])
    if not separator_ids:  # BERT-style tokenizers drop whitespace: mark a step's end with their [SEP] (or eos)
        marker = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        separator_ids = [marker] if marker is not None else []
    room = min(
        max_completion_length or 10**9,
        (max_length - len(prompt_ids)) if max_length else 10**9,
    )
    ids, positions = list(prompt_ids), []
    used = 0
    for step in steps:
        step_ids = list(tokenizer(step, add_special_tokens=False)["input_ids"]) + separator_ids
        if used + len(step_ids) > room:
            break
        ids += step_ids
        used += len(step_ids)
        positions.append(len(ids) - 1)
    return ids, positions


def aggregate_steps(probabilities: list[float], how: str) -> float:
    """A response's score from its steps' probabilities of being right: ``min`` (the weakest step) or ``prod``
    (every step right). A response with no step scores 0.

    >>> aggregate_steps([0.9, 0.5, 0.8], "min"), round(aggregate_steps([0.9, 0.5, 0.8], "prod"), 2)
    (0.5, 0.36)
    """
    if not probabilities:
        return 0.0
    if how == "min":
        return min(probabilities)
    if how == "prod":
        product = 1.0
        for p in probabilities:
            product *= p
        return product
    raise ValueError(f"Unknown aggregate {how!r}: use min or prod.")


@dataclass
class PRMScorer:
    """A process reward model (a token classifier) with its tokenizer and ``arbiter.json``.

    ``step_probabilities`` gives each step's class probabilities (``label_names`` order); ``score`` splits each
    response into steps on the separator and aggregates the steps' probability of being right: 1 − p(negative),
    which with two classes is p(positive) and with three counts a neutral step as no mistake (as the first-error
    metric does). ``aggregate`` defaults to the artifact's setting.
    """

    model: object
    tokenizer: object
    info: dict
    max_length: int | None = None
    aggregate: str = "min"

    @classmethod
    def load(cls, folder: str | Path, device=None, aggregate: str | None = None) -> "PRMScorer":
        import torch
        from transformers import AutoModelForTokenClassification

        device = device or default_device()
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        info = read_arbiter_json(folder)
        tokenizer = load_tokenizer(folder)
        model = load_model(
            AutoModelForTokenClassification, folder, num_labels=len(info.get("label_names") or (0, 1)), dtype=dtype
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device).eval()
        config = info.get("config") or {}
        return cls(model, tokenizer, info, config.get("max_length"), aggregate or info.get("aggregate") or "min")

    @property
    def separator(self) -> str:
        return self.info.get("step_separator") or "\n"

    @property
    def label_names(self) -> list[str]:
        return list(self.info.get("label_names") or ["negative", "positive"])

    @property
    def reward_stats(self) -> dict:
        return self.info.get("reward_stats") or {"mean": 0.0, "std": 1.0}

    def split(self, response) -> list[str]:
        """A response's steps: split on the separator, blank pieces dropped (as a steps project splits them); a
        response given as messages is its last message."""
        if isinstance(response, list):
            response = response[-1]["content"] if response else ""
        return [step.strip() for step in response.split(self.separator) if step.strip()]

    def step_probabilities(self, prompts: list, step_lists: list[list[str]], batch_size: int = 16) -> list:
        """Per response, per step that fits ``max_length``, the class probabilities (``label_names`` order)."""
        config = self.info.get("config") or {}
        encoded = [
            encode_steps(
                self.tokenizer,
                prompt,
                steps,
                self.separator,
                self.max_length,
                config.get("max_prompt_length"),
                config.get("max_completion_length"),
            )
            for prompt, steps in zip(prompts, step_lists)
        ]
        return self.probabilities_of(encoded, batch_size)

    def probabilities_of(self, encoded: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list:
        """Class probabilities at the given positions of tokenised texts, batched by length."""
        import torch

        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        result: list = [[] for _ in encoded]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = [i for i in order[start : start + batch_size] if encoded[i][1]]
                if not chunk:
                    continue
                width = max(len(encoded[i][0]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
                    mask[row, : len(encoded[i][0])] = 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                probabilities = logits.float().softmax(-1).cpu()
                for row, i in enumerate(chunk):
                    result[i] = probabilities[row, encoded[i][1]].tolist()
        return result

    def right_probabilities(self, prompts: list, step_lists: list[list[str]], batch_size: int = 16) -> list:
        """Per response, each step's probability of being right: 1 − p(negative)."""
        negative = self.label_names.index("negative")
        return [
            [1.0 - step[negative] for step in steps]
            for steps in self.step_probabilities(prompts, step_lists, batch_size)
        ]

    def score(self, prompts: list, responses: list, batch_size: int = 16, aggregate: str | None = None) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length.")
        steps = [self.split(response) for response in responses]
        how = aggregate or self.aggregate
        return [aggregate_steps(p, how) for p in self.right_probabilities(prompts, steps, batch_size)]
