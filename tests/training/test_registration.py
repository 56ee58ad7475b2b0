"""Bring your own base model (training.registration): a GGUF file or a folder becomes a safetensors folder under
MODEL_ROOTS that loads back as the same model; every refusal says why and registers nothing."""

from __future__ import annotations

import hashlib
import json
from io import StringIO
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django_tasks_db.models import DBTaskResult
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from annotate.models import Role
from training import registration, selectors
from training.registration import check_source, register_base_model
from training.selectors import TrainingError

from ..tiny import CHAT_TEMPLATE, SPECIAL, tiny_causal_lm, tiny_tokenizer

TEXTS = ["Arbiter collects human preferences.", "Would you like type hints in Python?", "Héllo wörld, 12 Main St."] * 10
PROMPT = "Would you like type hints? Héllo"


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter interleaves the rows of q and k per head (transformers undoes it on load)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(model, tokenizer, path: Path, qtype=gguf.GGMLQuantizationType.F32, arch: str = "llama") -> Path:
    """A Llama as llama.cpp's convert_hf_to_gguf.py writes one: metadata, a byte-level BPE tokenizer, tensors
    (matrices quantised to ``qtype``)."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in SPECIAL else 1 for token in tokens])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        data = tensor.detach().numpy().astype(np.float32)
        if key.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        name = names.get_name(key, try_suffixes=(".weight",))
        if data.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The original tiny Llama (saved as a folder too) and its GGUF files: float32, and quantised to Q8_0."""
    folder = tmp_path_factory.mktemp("sources")
    tokenizer = tiny_tokenizer(TEXTS)
    torch.manual_seed(0)
    model = tiny_causal_lm(tokenizer).eval()
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    return {
        "model": model,
        "tokenizer": tokenizer,
        "folder": folder / "hf",
        "f32": write_gguf(model, tokenizer, folder / "tiny-f32.gguf"),
        "q8": write_gguf(model, tokenizer, folder / "tiny-q8.gguf", gguf.GGMLQuantizationType.Q8_0),
    }


@pytest.fixture
def roots(tmp_path, settings):
    root = tmp_path / "models"
    root.mkdir()
    settings.MODEL_ROOTS = [root]
    return root


def _logits(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.mark.django_db
@pytest.mark.parametrize(("source", "tolerance"), [("f32", 1e-5), ("q8", 2e-2)])
def test_a_gguf_file_is_dequantised_into_a_safetensors_folder_that_loads_back(tiny, roots, source, tolerance):
    out = StringIO()
    call_command("register_model", "tiny-from-gguf", str(tiny[source]), stdout=out)
    result = json.loads(out.getvalue().splitlines()[-1])
    folder = roots / "tiny-from-gguf"
    assert result["path"] == str(folder) and result["format"] == "gguf" and result["model_type"] == "llama"
    assert result["architectures"] == ["LlamaForCausalLM"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "arbiter.json",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    info = json.loads((folder / "arbiter.json").read_text())["registered"]
    assert info["sha256"] == hashlib.sha256(tiny[source].read_bytes()).hexdigest() and info["format"] == "gguf"
    assert list(roots.iterdir()) == [folder]  # the staging folder is gone

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer(PROMPT)["input_ids"] == tiny["tokenizer"](PROMPT)["input_ids"]
    assert tokenizer.decode(tokenizer(PROMPT)["input_ids"]) == PROMPT
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == "<|user|>Hi<|end|>"
    original = _logits(tiny["model"], tiny["tokenizer"])
    registered = _logits(model, tokenizer)
    assert torch.allclose(registered, original, atol=tolerance), (registered - original).abs().max()
    # Base models resolve by name, and the launch form offers it.
    assert selectors.resolve_base_model("tiny-from-gguf").path == folder
    assert str(folder) in dict(selectors.allowed_base_models())


def test_save_pretrained_on_a_gguf_loaded_model_is_what_fails(tiny, tmp_path):
    """The cause the registration works around: the GGUF quantizer stays attached although the weights were
    de-quantised, and it is not serialisable; asking for dequantize=True removes it."""
    from transformers import GgufConfig

    path = tiny["f32"]
    plain = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    with pytest.raises(ValueError, match="quantized with gguf and is not serializable"):
        plain.save_pretrained(tmp_path / "plain")
    dense = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True)
    )
    assert getattr(dense, "hf_quantizer", None) is None
    dense.save_pretrained(tmp_path / "dense")


@pytest.mark.django_db
def test_a_gguf_file_as_a_reward_backbone_gets_a_score_head(tiny, roots):
    registered = register_base_model("tiny-rm", tiny["f32"], "sequence-classifier")
    assert registered.architectures == ["LlamaForSequenceClassification"]
    model = AutoModelForSequenceClassification.from_pretrained(roots / "tiny-rm", local_files_only=True)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tiny["tokenizer"].pad_token_id
    assert torch.equal(model.model.embed_tokens.weight, tiny["model"].model.embed_tokens.weight)


@pytest.mark.django_db
def test_a_folder_is_linked_without_its_pickles(tiny, roots, tmp_path):
    source = tmp_path / "with-extras"
    source.mkdir()
    for path in tiny["folder"].iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    (source / "pytorch_model.bin").write_bytes(b"pickle")
    (source / "modeling_custom.py").write_text("print('no')")
    (source / "onnx").mkdir()
    registered = register_base_model("tiny-folder", source)
    folder = roots / "tiny-folder"
    assert registered.skipped == ["modeling_custom.py", "onnx/", "pytorch_model.bin"]
    assert not any(p.suffix in (".bin", ".py") for p in folder.iterdir())
    assert (folder / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert json.loads((folder / "arbiter.json").read_text())["registered"]["source"] == str(source)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    assert torch.equal(_logits(model, tiny["tokenizer"]), _logits(tiny["model"], tiny["tokenizer"]))


def _model_folder(path: Path, config: dict, weights: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    if weights:
        save_file({"w": torch.zeros(1)}, str(path / "model.safetensors"))
    return path


@pytest.mark.django_db
def test_refusals_exit_non_zero_with_the_reason_and_register_nothing(tiny, roots, tmp_path):
    pickles = _model_folder(tmp_path / "pickles", {"model_type": "llama"}, weights=False)
    (pickles / "pytorch_model.bin").write_bytes(b"pickle")
    unknown = _model_folder(tmp_path / "unknown", {"model_type": "no-such-architecture"})
    encoder = _model_folder(tmp_path / "encoder", {"model_type": "bert"})
    remote = _model_folder(tmp_path / "remote", {"model_type": "llama", "auto_map": {"AutoModel": "x.Model"}})
    adapter = _model_folder(tmp_path / "adapter", {"model_type": "llama"})
    (adapter / "adapter_config.json").write_text("{}")
    odd_gguf = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(odd_gguf), "no-such-arch")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf file")
    (roots / "taken").mkdir()
    cases = [
        (["good", str(pickles)], "holds only pickle weights (pytorch_model.bin)"),
        (["good", str(pickles / "pytorch_model.bin")], "is a pickle"),
        (["good", str(unknown)], "Unknown architecture 'no-such-architecture'"),
        (["good", str(encoder)], "A bert model is not a causal language model"),
        (["good", str(remote)], "needs its own Python code"),
        (["good", str(adapter)], "is a PEFT adapter"),
        (["good", str(odd_gguf)], "cannot be read as a model"),
        (["good", str(not_gguf)], "neither a model folder nor a GGUF file"),
        (["good", str(tmp_path / "missing")], "No file or folder"),
        (["../escape", str(tiny["f32"])], "cannot be a model name"),
        (["taken", str(tiny["f32"])], "exists already"),
        (["good", str(tiny["f32"]), "--kind", "sequence-classifier", "--replace"], None),  # the control: it works
    ]
    for args, message in cases:
        if message is None:
            call_command("register_model", *args, stdout=StringIO())
            continue
        with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call_command("register_model", *args, stdout=StringIO())
        assert sorted(p.name for p in roots.iterdir()) == ["taken"], args
    assert sorted(p.name for p in roots.iterdir()) == ["good", "taken"]


@pytest.mark.django_db
def test_the_page_only_takes_paths_under_model_roots(tiny, roots, tmp_path):
    inside = roots / "incoming.gguf"
    inside.write_bytes(tiny["f32"].read_bytes())
    (roots / "link.gguf").symlink_to(tiny["f32"])  # a link out of the roots does not get in either
    assert check_source("a", "incoming.gguf", within=[roots]).path == inside
    for source in (str(tiny["f32"]), "link.gguf", "../sources/tiny-f32.gguf"):
        with pytest.raises(TrainingError, match="outside MODEL_ROOTS"):
            check_source("a", source, within=[roots])


def _serve_queue():
    """What `manage.py db_worker --batch` does, task by task (as tests/training/test_runs.py)."""
    from django_tasks_db.management.commands.db_worker import Worker

    worker = Worker(
        queue_names=["default"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="test-worker",
        excluded_queue_names=[],
    )
    while (result := DBTaskResult.objects.ready().first()) is not None:
        result.claim(worker.worker_id)
        worker.run_task(result)


@pytest.mark.django_db
def test_the_page_checks_at_once_and_the_worker_registers(tiny, roots, client, django_user_model):
    from annotate.actions import add_member, create_project
    from annotate.models import Kind

    admin = django_user_model.objects.create_user("boss", password="pw")
    researcher = django_user_model.objects.create_user("reader", password="pw")
    project = create_project(slug="byo", kind=Kind.PAIRWISE, name="BYO", overlap=1, created_by=admin)
    add_member(project, "boss", Role.ADMIN)
    add_member(project, "reader", Role.RESEARCHER)
    (roots / "incoming.gguf").write_bytes(tiny["q8"].read_bytes())

    client.force_login(researcher)
    assert client.get("/training/models/register/").status_code == 403
    client.force_login(admin)
    page = client.get("/training/models/register/")
    assert page.status_code == 200 and "None yet." in page.content.decode()

    refused = client.post("/training/models/register/", {"name": "x", "source": str(tiny["q8"]), "kind": "causal-lm"})
    assert refused.status_code == 400 and "outside MODEL_ROOTS" in refused.content.decode()
    assert not DBTaskResult.objects.exists()

    form = {"name": "byo-llama", "source": "incoming.gguf", "kind": "causal-lm"}
    response = client.post("/training/models/register/", form)
    assert response.status_code == 302 and response["Location"] == "/training/models/register/"
    assert not (roots / "byo-llama").exists()  # the worker writes it
    again = client.post("/training/models/register/", form)
    assert again.status_code == 400 and "being registered already" in again.content.decode()
    assert registration.recent_registrations()[0]["state"] == "queued"

    _serve_queue()
    assert (roots / "byo-llama" / "model.safetensors").is_file()
    [row] = registration.recent_registrations()
    assert row["state"] == "registered" and row["message"] == str(roots / "byo-llama")
    assert row["requested_by"] == "boss" and row["source"] == str(roots / "incoming.gguf")
    page = client.get("/training/models/register/").content.decode()
    assert "byo-llama" in page and "registered" in page

    # A refusal found only on the worker (the architecture) is shown as such.
    bert = _model_folder(roots / "bert-folder", {"model_type": "bert"})
    client.post("/training/models/register/", {"name": "bert", "source": str(bert), "kind": "causal-lm"})
    _serve_queue()
    row = registration.recent_registrations()[0]
    assert row["state"] == "refused" and "not a causal language model" in row["message"]
    assert not (roots / "bert").exists()
