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
    def load(cls, folder: str | Path, device=None) -> "RewardScorer":
        import torch
        from transformers import AutoModelForSequenceClassification

        device = device or default_device()
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        info = read_arbiter_json(folder)
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
