"""The demo models of `make run`: the policy's generated text must read as words, not byte-level pieces."""

from __future__ import annotations

import json
from io import StringIO

import pytest
import torch
from django.core.management import call_command
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.demo import decodes_to_text, save_tiny_llama

TEXTS = [
    "Would you like type hints in Python?",
    "An address keeps its lines.\nRoom 4, 12 Main Street",
    "Héllo wörld",
] * 5


def test_the_demo_policy_decodes_to_words(tmp_path):
    folder = save_tiny_llama(tmp_path / "policy", TEXTS, causal=True, warmup_steps=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in TEXTS[:3]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    prompt = tokenizer("Would you like", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=20, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(generated[0], skip_special_tokens=True)
    assert text.startswith("Would you like") and "Ġ" not in text and "Ċ" not in text
    assert decodes_to_text(folder)


@pytest.mark.django_db
def test_demo_base_model_rewrites_a_policy_that_does_not_decode(tmp_path, settings):
    settings.MODEL_ROOTS = [tmp_path]
    out = StringIO()
    call_command("demo_base_model", "--warmup-steps", "0", stdout=out)
    policy = tmp_path / "tiny-demo-llama-policy"
    assert decodes_to_text(policy)
    # A policy written before the decoder was set: the command replaces it instead of keeping it.
    tokenizer_file = policy / "tokenizer.json"
    tokenizer_file.write_text(json.dumps({**json.loads(tokenizer_file.read_text()), "decoder": None}))
    assert not decodes_to_text(policy)
    call_command("demo_base_model", "--warmup-steps", "0", stdout=out)
    assert decodes_to_text(policy)
    # A policy that decodes is kept as it is.
    call_command("demo_base_model", "--warmup-steps", "0", stdout=(kept := StringIO()))
    assert "exist" in kept.getvalue()
