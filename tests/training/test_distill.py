"""Distillation: a tiny two-layer teacher, fine-tuned on the toy answers, teaches the one-layer tiny-causal student
on-policy; context distillation teaches a model to answer without its system prompt as it answers with it; the
launch refuses a teacher with another tokenizer, on-policy without a teacher and --teacher on a kind without one.

The divergences are measured by the runner on held-out prompts; the context test also measures the answers' log-
probabilities from the saved models here."""

import io
import json
import math
import shutil

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from safetensors.torch import load_file
from tokenizers import decoders
from transformers import LlamaForCausalLM

from annotate.models import Role
from tests.tiny import tiny_causal_lm, tiny_config, tiny_tokenizer
from tests.training.conftest import toy_rows, write_jsonl
from training import kinds
from training.launching import launch_run
from training.models import ModelArtifact, TrainingRun
from training.runners.base import ConfigError, RunnerError, load_tokenizer
from training.runners.distill import PAIRS_FILE, generalized_jsd, run, with_context
from training.runners.distill_config import DistillRunConfig, tokenizer_difference
from training.selectors import TrainingError

CONTEXT = "Answer kindly: say the answer is correct, helpful and clear."
FAST = {
    "learning_rate": 1e-2,
    "max_steps": 20,
    "per_device_train_batch_size": 8,
    "max_new_tokens": 16,
    "eval_prompts": 8,
    "logging_steps": 5,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, models_root):
    """A second MODEL_ROOTS folder: ``taught``, a two-layer model with tiny-causal's tokenizer fine-tuned to answer
    the toy prompts with good words when the context is its system turn and with bad words without it; ``other``, a
    tiny model with a tokenizer of its own."""
    from training.runners.sft import SFTRunConfig, fine_tune

    root = tmp_path_factory.mktemp("teachers")
    tokenizer = load_tokenizer(models_root / "tiny-causal")
    # Decoded answers are encoded again (the pairs, the held-out answers): the byte-level decoder makes that round
    # trip exact. The vocabulary stays tiny-causal's, so the student is tiny-causal's weights with this tokenizer.
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    shutil.copytree(models_root / "tiny-causal", root / "student")
    tokenizer.save_pretrained(root / "student")
    torch.manual_seed(1)
    config = tiny_config(tokenizer)
    config.num_hidden_layers = 2
    LlamaForCausalLM(config).save_pretrained(root / "untaught")
    tokenizer.save_pretrained(root / "untaught")
    rows = toy_rows(48, seed=7)
    examples = [
        {
            "prompt": [{"role": "system", "content": CONTEXT}, {"role": "user", "content": r["prompt"]}],
            "completion": r["chosen"],
        }
        for r in rows
    ] + [{"prompt": r["prompt"], "completion": r["rejected"]} for r in rows]
    sft = SFTRunConfig.from_dict(
        {
            "base_model": str(root / "untaught"),
            "learning_rate": 1e-2,
            "max_steps": 60,
            "per_device_train_batch_size": 16,
        }
    )
    fine_tune(sft, examples, None, root / "taught", lambda event: None)
    other = tiny_tokenizer([f"entirely other words number {i}" for i in range(50)], vocab_size=120)
    tiny_causal_lm(other).save_pretrained(root / "other")
    other.save_pretrained(root / "other")
    return root


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    rows = [{"prompt": r["prompt"], "item": None, "external_id": str(i)} for i, r in enumerate(toy_rows(40, seed=5))]
    return write_jsonl(rows, tmp_path_factory.mktemp("prompts") / "prompts.jsonl")


def _changed(before_folder, after_folder) -> bool:
    before, after = load_file(before_folder / "model.safetensors"), load_file(after_folder / "model.safetensors")
    return any(not torch.equal(before[name], after[name]) for name in before)


# --- the divergence and the tokenizer check ------------------------------------------------------------


def test_generalized_jsd_is_trls_forward_kl_jsd_and_reverse_kl():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    forward = (lt.exp() * (lt - ls)).sum(-1)  # KL(teacher ‖ student)
    reverse = (ls.exp() * (ls - lt)).sum(-1)
    assert torch.allclose(generalized_jsd(s, t, 0.0), forward, atol=1e-6)
    assert torch.allclose(generalized_jsd(s, t, 1.0), reverse, atol=1e-6)
    jsd = generalized_jsd(s, t, 0.5)
    assert torch.allclose(jsd, generalized_jsd(t, s, 0.5), atol=1e-6)  # symmetric at β = 0.5
    assert (jsd > 0).all() and (jsd <= math.log(2) + 1e-6).all()  # bounded by ln 2
    assert torch.allclose(generalized_jsd(s, s, 0.3), torch.zeros(5), atol=1e-6)
    # the temperature divides both logits before the softmax
    assert torch.allclose(generalized_jsd(s, t, 0.0, temperature=2.0), generalized_jsd(s / 2, t / 2, 0.0), atol=1e-6)


def test_distill_is_registered_as_the_kind_that_takes_a_teacher():
    distill = kinds.get("distill")
    assert (distill.reads, distill.publishes, distill.base_models) == (kinds.PROMPTS, kinds.MODEL, (kinds.CAUSAL_LM,))
    assert kinds.names(teacher=kinds.OPTIONAL_TEACHER) == ["distill"] and not kinds.names(teacher=kinds.TEACHER_NEEDED)
    assert distill.config is DistillRunConfig and distill.available


def test_the_context_is_a_system_turn_or_leads_the_first_turn_where_a_template_takes_none():
    assert with_context("Hi?", "Be kind.") == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi?"},
    ]
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert with_context(own, "Be kind.")[0] == {"role": "system", "content": "Be kind.\n\nBe brief."}
    assert with_context("Hi?", "Be kind.", system_turn=False) == [{"role": "user", "content": "Be kind.\n\nHi?"}]


def test_tokenizers_are_compared_by_vocabulary_and_special_tokens(models_root, teachers):
    assert tokenizer_difference(models_root / "tiny-causal", teachers / "taught") == ""
    why = tokenizer_difference(models_root / "tiny-causal", teachers / "other")
    assert why.startswith("their vocabularies differ (300 and")


# --- the runner ---------------------------------------------------------------------------------------


def test_on_policy_distillation_brings_the_student_closer_to_the_teacher(models_root, teachers, prompts_file, tmp_path):
    student = teachers / "student"
    config = DistillRunConfig.from_dict(
        {**FAST, "base_model": str(student), "teacher_model": str(teachers / "taught"), "beta": 0.5, "lmbda": 0.5}
    )
    events = []
    metrics = run(config, {"train": prompts_file}, tmp_path / "out", events.append)
    before, after = metrics["eval_divergence_before"], metrics["eval_divergence_after"]
    assert metrics["n_eval"] == 8 and metrics["n_train"] == 32  # a quarter of the 40 prompts, at most eval_prompts
    assert after < 0.7 * before, (before, after)
    assert metrics["eval_answer_logp_after"] > metrics["eval_answer_logp_before"]
    assert metrics["train_steps"] == 20
    assert 0.2 <= metrics["teacher_sampled_fraction"] <= 0.8  # lmbda=0.5: the teacher answered some batches
    assert _changed(student, tmp_path / "out")
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["kind"] == "distill" and info["mode"] == "on_policy"
    assert info["teacher"] == str(teachers / "taught") and info["metrics"]["eval_divergence_after"] == after
    assert any(e.get("event") == "metrics" and "loss" in e["metrics"] for e in events)


def test_context_distillation_answers_without_the_context_as_the_teacher_did_with_it(teachers, prompts_file, tmp_path):
    base = teachers / "taught"  # its own teacher: with the context it answers with good words, without with bad
    config = DistillRunConfig.from_dict(
        {**FAST, "base_model": str(base), "mode": "context", "context": CONTEXT, "learning_rate": 3e-3}
    )
    metrics = run(config, {"train": prompts_file}, tmp_path / "out", lambda event: None, tmp_path / "checkpoints")
    pairs = [json.loads(line) for line in (tmp_path / "out" / PAIRS_FILE).read_text().splitlines()]
    # kept with the checkpoints too: a retry fine-tunes on the same answers
    assert (tmp_path / "checkpoints" / PAIRS_FILE).read_text() == (tmp_path / "out" / PAIRS_FILE).read_text()
    prompts = {json.loads(line)["prompt"] for line in open(prompts_file)}
    assert len(pairs) == metrics["context_pairs"] == metrics["n_train"] and 28 <= len(pairs) <= 32
    assert all(p["prompt"] in prompts and CONTEXT not in json.dumps(p["prompt"]) for p in pairs)
    assert sum("correct" in p["completion"] or "helpful" in p["completion"] for p in pairs) >= len(pairs) // 2
    # The student, asked without the context, now gives the context's answers: on held-out prompts its log-
    # probability of the teacher's answers (written with the context) rises. (The divergence is reported too; SFT on
    # samples sharpens the student, so on this tiny model it need not fall.)
    assert metrics["eval_answer_logp_after"] > metrics["eval_answer_logp_before"] + 1.0
    assert {"eval_divergence_before", "eval_divergence_after"} <= set(metrics)
    assert _changed(base, tmp_path / "out")
    info = json.loads((tmp_path / "out" / "arbiter.json").read_text())
    assert info["mode"] == "context" and info["context"] == CONTEXT and info["files"] == [PAIRS_FILE]


def test_bad_configs_are_refused(teachers, prompts_file, tmp_path):
    with pytest.raises(RunnerError, match="mode=on_policy learns from a teacher"):
        run(
            DistillRunConfig.from_dict({"base_model": str(teachers / "student")}),
            {"train": prompts_file},
            tmp_path / "out",
            print,
        )
    other = {"base_model": str(teachers / "student"), "teacher_model": str(teachers / "other")}
    with pytest.raises(RunnerError, match="do not share a tokenizer: their vocabularies differ"):
        run(DistillRunConfig.from_dict(other), {"train": prompts_file}, tmp_path / "out", print)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="mode=on_policy cannot train virtual tokens"):
        DistillRunConfig.from_dict({"base_model": "/m", "teacher_model": "/t", "method": "prompt_tuning"})
    with pytest.raises(ConfigError, match="needs a context"):
        DistillRunConfig.from_dict({"base_model": "/m", "mode": "context"})
    with pytest.raises(ConfigError, match="beta and lmbda"):
        DistillRunConfig.from_dict({"base_model": "/m", "teacher_model": "/t", "lmbda": 1.5})


# --- launching ----------------------------------------------------------------------------------------


@pytest.fixture
def roots(settings, models_root, teachers):
    settings.MODEL_ROOTS = [models_root, teachers]
    return settings


def _nothing_written(settings) -> bool:
    root = settings.ARTIFACT_ROOT
    return not TrainingRun.objects.exists() and not (root.exists() and any(root.rglob("*.jsonl")))


@pytest.mark.django_db
def test_launch_refuses_a_teacher_with_another_tokenizer_a_missing_teacher_and_a_teacher_for_dpo(
    roots, make_project, preference_project
):
    project = make_project(slug="distil", n_items=6)
    with pytest.raises(TrainingError) as refused:
        launch_run(project=project, kind="distill", base_model="tiny-causal", teacher="other", enqueue=False)
    message = str(refused.value)
    assert "do not share a tokenizer" in message and "other" in message and "tiny-causal" in message
    assert "vocabularies differ" in message
    with pytest.raises(TrainingError, match="mode=on_policy learns from a teacher"):
        launch_run(project=project, kind="distill", base_model="tiny-causal", enqueue=False)
    with pytest.raises(TrainingError, match="--teacher is for distill"):
        launch_run(project=preference_project, kind="dpo", base_model="tiny-causal", teacher="taught", enqueue=False)
    with pytest.raises(TrainingError, match="not as a config option"):
        launch_run(
            project=project,
            kind="distill",
            base_model="tiny-causal",
            values={"teacher_model": str(roots.MODEL_ROOTS[1] / "taught")},
            enqueue=False,
        )
    assert _nothing_written(roots)
    with pytest.raises(CommandError, match="--teacher is for distill"):
        call_command("train", "dpo", "--project", "prefs", "--base-model", "tiny-causal", "--teacher", "taught")
    assert _nothing_written(roots)


@pytest.mark.django_db
def test_train_distill_in_the_foreground_publishes_a_student_with_its_teacher_on_record(roots, make_project, teachers):
    make_project(slug="distil", n_items=10)
    out = io.StringIO()
    call_command(
        "train", "distill",
        "--project", "distil",
        "--base-model", "tiny-causal",
        "--teacher", "taught",
        "--foreground",
        *[f"--set={k}={v}" for k, v in {**FAST, "max_steps": 3, "eval_prompts": 2}.items()],
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    result = json.loads(out.getvalue().splitlines()[-1])
    run_ = TrainingRun.objects.get(pk=result["run"])
    assert result["status"] == "succeeded", run_.error
    assert run_.inputs["teacher"] == {"path": str(teachers / "taught"), "artifact": None, "label": "taught"}
    assert run_.config["teacher_model"] == str(teachers / "taught") and run_.inputs["prompts"] == 10
    assert {"eval_divergence_before", "eval_divergence_after"} <= set(run_.metrics)
    assert run_.metrics["teacher_sampled_fraction"] == 0  # lmbda=1 by default: fully on-policy
    artifact = ModelArtifact.objects.get(run=run_)
    assert json.loads((artifact.folder / "arbiter.json").read_text())["teacher"] == str(teachers / "taught")


@pytest.mark.django_db
def test_the_form_and_the_api_take_the_teacher_and_context_constitution_takes_the_projects(
    roots, make_project, make_member, client, api_client_for, teachers
):
    project = make_project(slug="distil", n_items=6)
    boss = make_member(project, "boss", Role.ADMIN)
    client.force_login(boss)
    form = client.get(reverse("training-new"), {"kind": "distill"}).content.decode()
    assert 'name="teacher"' in form and "taught" in form and 'name="opt_teacher_model"' not in form
    assert 'name="teacher"' not in client.get(reverse("training-new"), {"kind": "dpo"}).content.decode()
    fields = {"project": "distil", "kind": "distill", "base_model": str(teachers / "student")}
    refused = client.post(reverse("training-new"), {**fields, "teacher": str(teachers / "other")})
    assert refused.status_code == 400 and "do not share a tokenizer" in refused.content.decode()
    assert not TrainingRun.objects.exists()
    response = client.post(reverse("training-new"), {**fields, "teacher": str(teachers / "taught")})
    run_ = TrainingRun.objects.get()
    assert response.status_code == 302 and run_.inputs["teacher"]["path"] == str(teachers / "taught")

    api = api_client_for(boss)
    body = {"project": "distil", "kind": "distill", "base_model": "student", "teacher": "other"}
    response = api.post(reverse("api-training-runs"), body, format="json")
    assert response.status_code == 400 and "do not share a tokenizer" in response.json()["detail"]
    response = api.post(reverse("api-training-runs"), {**body, "teacher": "taught"}, format="json")
    assert response.status_code == 201 and response.json()["config"]["teacher_model"] == str(teachers / "taught")

    # context=constitution: refused without one; with one, its principles become the system prompt, on record.
    context = {"mode": "context", "context": "constitution"}
    with pytest.raises(TrainingError, match="has no constitution"):
        launch_run(project=project, kind="distill", base_model="student", values=context, enqueue=False)
    project.constitution = [{"name": "kind", "text": "Answer kindly."}, {"name": "honest", "text": "Never deceive."}]
    project.save(update_fields=["constitution"])
    run_ = launch_run(project=project, kind="distill", base_model="student", values=context, enqueue=False)
    assert "- kind: Answer kindly.\n- honest: Never deceive." in run_.config["context"]
    assert run_.inputs["constitution"]["principles"] == ["kind", "honest"] and "teacher" not in run_.inputs
