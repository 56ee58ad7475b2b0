"""The launch form, one kind at a time (/training/new/): only the kind's inputs and options, grouped and labelled for
people, base models the kind can load, prompt sources once each, errors at the field they are about, and no "queued"
message left on the run page."""

import re

import pytest
from django.urls import reverse

from annotate.models import Role
from training.forms import LaunchForm, label_for, model_family
from training.models import ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(preference_project, make_member, client):
    user = make_member(preference_project, "boss", Role.ADMIN)
    client.force_login(user)
    return user


@pytest.fixture
def reward_artifact(preference_project, models_root):
    """A registered reward model (its record is all the form reads)."""
    return ModelArtifact.objects.create(
        project=preference_project,
        name="prefs-rm",
        kind="reward",
        path="models/prefs/rm",
        base_model=str(models_root / "tiny-llama"),
        config={},
        metrics={},
    )


def _options(html: str) -> set[str]:
    return set(re.findall(r'name="opt_([a-z_]+)"', html))


def _select(html: str, name: str) -> str:
    match = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', html, re.S)
    assert match, f"no select {name}"
    return match.group(1)


def test_the_form_shows_only_the_chosen_kinds_options_grouped_with_human_labels(client, admin):
    page = client.get(reverse("training-new")).content.decode()  # the first kind: reward
    options = _options(page)
    assert {"objective", "lm_loss_coefficient", "use_margin", "learning_rate", "max_steps", "eval_steps"} <= options
    # Other kinds' options, and the sampling options a reward run never reads, are not there.
    assert not options & {"beta", "loss_type", "kl_coef", "num_generations", "temperature", "max_new_tokens"}
    assert 'name="snapshot"' in page and 'name="prompts_from"' not in page and 'name="reward_models"' not in page
    legends = re.findall(r"<legend>([^<]+)</legend>", page)
    assert legends == ["Data", "Model and method", "Optimisation"]  # no generation: a reward run samples nothing
    labels = re.findall(r'<label for="id_opt_[a-z_]+">([^<]+)</label>', page)
    assert "Batch size per device" in labels and "LM-loss coefficient" in labels and "Learning rate" in labels
    assert not [label for label in labels if "_" in label]  # no snake_case label
    # The config's help text is shown under its field, the method-dependent learning rate's defaults included.
    assert "Subtract each pair&#x27;s margin" in page and "Default: 1e-05 for method=full, 0.0001" in page


def test_the_kind_swap_returns_only_that_kinds_fields(client, admin):
    fragment = client.get(reverse("training-new"), {"kind": "dpo"}, HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<div id="kind-fields" data-kind="dpo">')
    assert "<html" not in fragment and 'name="project"' not in fragment  # the project stays chosen outside
    assert '<input type="hidden" name="kind" value="dpo"' in fragment
    options = _options(fragment)
    assert {"beta", "loss_type", "reference", "learning_rate"} <= options
    assert not options & {"objective", "lm_loss_coefficient", "num_generations", "temperature", "max_new_tokens"}
    grpo = client.get(reverse("training-new"), {"kind": "grpo"}, HTTP_HX_REQUEST="true").content.decode()
    options = _options(grpo)
    assert {"num_generations", "temperature", "max_new_tokens", "beta"} <= options
    assert not options & {
        "max_length",
        "eval_steps",
        "loss_weights",
        "objective",
    }  # GRPO reads neither length nor split
    assert re.findall(r"<legend>([^<]+)</legend>", grpo) == ["Data", "Model and method", "Optimisation", "Generation"]
    generate = _options(
        client.get(reverse("training-new"), {"kind": "generate"}, HTTP_HX_REQUEST="true").content.decode()
    )
    assert "num_samples" in generate and not generate & {"learning_rate", "method", "max_steps", "lora_r"}


def test_without_javascript_the_kind_chooser_reloads_the_page_with_that_kind(client, admin):
    page = client.get(reverse("training-new"), {"kind": "sft"}).content.decode()
    chooser = re.search(
        r'<form method="get" action="/training/new/" class="card kind-chooser">(.*?)</form>', page, re.S
    )
    assert chooser and '<option value="sft" selected>Supervised fine-tuning</option>' in chooser.group(1)
    assert 'type="submit"' in chooser.group(1)
    assert '<div id="kind-fields" data-kind="sft">' in page and "completion_only_loss" in page
    # An unknown kind falls back to the first one instead of failing.
    assert 'data-kind="reward"' in client.get(reverse("training-new"), {"kind": "nope"}).content.decode()


def test_base_models_are_those_the_kind_can_load(client, admin, reward_artifact, models_root):
    reward = client.get(reverse("training-new"), {"kind": "reward"}).content.decode()
    dpo = client.get(reverse("training-new"), {"kind": "dpo"}).content.decode()
    tiny_llama, tiny_causal = str(models_root / "tiny-llama"), str(models_root / "tiny-causal")
    # A reward model starts from a classifier or a language model (a new head); a DPO policy from a language model.
    assert {tiny_llama, tiny_causal, f"artifact:{reward_artifact.pk}"} <= set(
        re.findall(r'value="([^"]+)"', _select(reward, "base_model"))
    )
    offered = set(re.findall(r'value="([^"]+)"', _select(dpo, "base_model")))
    assert tiny_causal in offered and tiny_llama not in offered and f"artifact:{reward_artifact.pk}" not in offered
    assert "tiny-causal · causal language model" in dpo
    assert model_family(tiny_llama) == "sequence classifier" and model_family(tiny_causal) == "causal language model"
    # Posting it anyway is refused at the field, with the reason.
    response = client.post(
        reverse("training-new"), {"project": "prefs", "kind": "dpo", "base_model": f"artifact:{reward_artifact.pk}"}
    )
    assert response.status_code == 400 and not TrainingRun.objects.exists()
    assert (
        "prefs-rm is a sequence classifier; a dpo run starts from a causal language model." in response.content.decode()
    )


def test_reward_models_and_prompt_sources_are_offered_once_each(client, admin, reward_artifact, models_root):
    page = client.get(reverse("training-new"), {"kind": "grpo"}).content.decode()
    sources = re.findall(r'<option value="([^"]*)"', _select(page, "prompts_from"))
    assert sources == ["items", "disagreement", "low-confidence", "snapshot-train", "snapshot-test", "file"]
    assert re.search(r'<option value="items" selected>', _select(page, "prompts_from"))
    rewards = set(re.findall(r'value="([^"]+)"', re.search(r'<select name="reward_models".*?</select>', page, re.S)[0]))
    assert rewards == {f"artifact:{reward_artifact.pk}", str(models_root / "tiny-llama")}  # classifiers only
    evaluate = client.get(reverse("training-new"), {"kind": "evaluate"}).content.decode()
    assert re.search(r'<option value="snapshot-test" selected>', _select(evaluate, "prompts_from"))


def test_validation_errors_name_the_field_and_launch_nothing(client, admin, preference_snapshot, tiny_base):
    base = {"project": "prefs", "kind": "reward", "base_model": str(tiny_base), "snapshot": str(preference_snapshot.pk)}
    response = client.post(reverse("training-new"), {**base, "opt_max_steps": "many", "opt_learning_rate": "fast"})
    html = response.content.decode()
    assert response.status_code == 400 and not TrainingRun.objects.exists()
    field = re.search(r'<div class="field has-error" data-field="opt_max_steps">.*?</div>', html, re.S)[0]
    assert "max_steps must be int, not &#x27;many&#x27;" in field
    assert "<li>Max steps: max_steps must be int" in html and "<li>Learning rate: learning_rate must be float" in html
    # A value refused by the config's own checks at launch is shown at its field too.
    response = client.post(reverse("training-new"), {**base, "opt_learning_rate": "-1"})
    assert response.status_code == 400 and not TrainingRun.objects.exists()
    field = re.search(
        r'<div class="field has-error" data-field="opt_learning_rate">.*?</div>', response.content.decode(), re.S
    )
    assert field and "learning_rate must be above 0." in field[0]
    response = client.post(reverse("training-new"), {**base, "extra": "lerning_rate=1"})
    assert (
        response.status_code == 400
        and "Other options: Unknown option &#x27;lerning_rate&#x27; (did you mean" in response.content.decode()
    )


def test_a_launch_lands_on_the_run_page_without_a_stale_queued_message(
    client, admin, preference_snapshot, tiny_base, django_capture_on_commit_callbacks
):
    base = {"project": "prefs", "kind": "reward", "base_model": str(tiny_base), "snapshot": str(preference_snapshot.pk)}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("training-new"), {**base, "opt_method": "lora", "opt_max_steps": "3"})
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("training-run", args=[run.pk])
    assert run.config["method"] == "lora" and run.config["max_steps"] == 3
    assert run.config["learning_rate"] == 1e-4  # the LoRA default: ten times the full-training one
    page = client.get(response["Location"]).content.decode()
    assert "is queued" not in page and '<span class="status queued">Queued</span>' in page


def test_labels_are_words():
    assert label_for("per_device_train_batch_size") == "Batch size per device"
    assert label_for("missing_eos_penalty") == "Missing EOS penalty"
    assert label_for("use_margin") == "Use margin"
    assert LaunchForm.__module__ == "training.forms"
