"""The registry of training kinds (training/kinds.py): a kind added through the registry alone is launched, run,
published and shown by every layer — the launch form, ``train --help``, the API, the run page — with no other file
touched. The throwaway kind's config and runner live in this test module."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command

from annotate.models import Role
from training import datasets, kinds, launching, supervisor
from training.forms import LaunchForm
from training.models import ArtifactKind, ModelArtifact, TrainingRun
from training.runners.config import RunConfig, option


@dataclass
class EchoRunConfig(RunConfig):
    base_model: str = option("", "Folder of the base model.")
    criterion: str = option("", "Train on one criterion's preferences; empty: the overall judgment.")
    echo_scale: float = option(
        2.0, "What the runner multiplies the number of training rows by (the metric it reports)."
    )


CONFIG_CLASS = EchoRunConfig


def run(config: EchoRunConfig, dataset_paths: dict, output_dir, progress_callback, checkpoint_dir=None) -> dict:
    """The throwaway kind's runner: reads the train split it was given and writes a model folder."""
    rows = [json.loads(line) for line in Path(dataset_paths["train"]).read_text(encoding="utf-8").splitlines() if line]
    progress_callback({"event": "start", "step": 0, "total": 1})
    progress_callback({"event": "metrics", "step": 1, "total": 1, "metrics": {"loss": 0.5}})
    out = Path(output_dir)
    (out / "model.safetensors").write_bytes(b"not really weights")
    (out / "arbiter.json").write_text(json.dumps({"kind": "echo", "is_adapter": False}), encoding="utf-8")
    return {
        "echoed": config.echo_scale * len(rows),
        "train_rows": float(len(rows)),
        "first_prompt_chars": float(len(rows[0]["prompt"])),
    }


ECHO = kinds.TrainingKind(
    name="echo",
    label="Echo (a test kind)",
    config=EchoRunConfig,
    runner=__name__,
    reads=kinds.SNAPSHOT,
    publishes=kinds.MODEL,
    base_models=(kinds.CAUSAL_LM,),
)


@pytest.fixture
def echo_kind(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, ECHO.name, ECHO)
    return ECHO


@pytest.mark.django_db
def test_a_kind_added_through_the_registry_alone_launches_runs_and_publishes(echo_kind, preference_snapshot, tiny_base):
    project = preference_snapshot.project
    run = launching.launch_run(
        project=project,
        kind="echo",
        base_model="tiny-llama",
        snapshot=preference_snapshot,
        values={"echo_scale": 3.0},
        enqueue=False,
    )
    assert run.config["echo_scale"] == 3.0 and run.config["base_model"] == str(tiny_base.resolve())
    assert run.get_kind_display() == "Echo (a test kind)" and run.makes_model
    paths, digest = datasets.run_datasets(run)
    assert set(paths) == {"train", "test"} and digest == preference_snapshot.content_hash
    train_rows = sum(1 for line in Path(paths["train"]).read_bytes().splitlines() if line.strip())

    run = supervisor.execute(run.pk, run.attempt, in_process=True)

    assert run.status == "succeeded", run.error + run.log_tail
    assert run.metrics["echoed"] == 3.0 * train_rows and run.metrics["train_rows"] == train_rows > 0
    artifact = ModelArtifact.objects.get(run=run)
    assert artifact.kind == ArtifactKind.POLICY and artifact.name == f"prefs-run-{run.pk}-echo"
    assert (artifact.folder / "model.safetensors").read_bytes() == b"not really weights"
    assert (
        json.loads((artifact.folder / "arbiter.json").read_text())["dataset_hash"] == preference_snapshot.content_hash
    )


@pytest.mark.django_db
def test_a_kind_added_through_the_registry_is_offered_by_the_form_the_command_and_the_api(
    echo_kind, preference_snapshot, tiny_base, make_member, client, capsys
):
    admin = make_member(preference_snapshot.project, "boss", Role.ADMIN)
    assert ("echo", "Echo (a test kind)") in LaunchForm(user=admin).fields["kind"].choices
    assert "opt_echo_scale" not in LaunchForm(user=admin).fields  # the first kind's form: reward's options only
    form = LaunchForm(user=admin, kind="echo")
    assert form.kind is echo_kind and "opt_echo_scale" in form.fields  # the kind's own option, from its config
    assert form.fields["opt_echo_scale"].label == "Echo scale" and form.fields["opt_echo_scale"].help_text.startswith(
        "What the runner multiplies"
    )

    with pytest.raises(SystemExit):
        call_command("train", "--help")  # argparse prints the help to sys.stdout
    assert "echo                Echo (a test kind): reads a snapshot, makes a policy" in capsys.readouterr().out
    config_help = io.StringIO()
    call_command(
        "train", "echo", "--project", "prefs", "--base-model", "tiny-llama", "--help-config", stdout=config_help
    )
    assert "echo_scale = 2.0  [float]" in config_help.getvalue()

    client.force_login(admin)
    response = client.post(
        "/api/training-runs/",
        {
            "project": "prefs",
            "kind": "echo",
            "base_model": "tiny-llama",
            "snapshot": preference_snapshot.pk,
            "config": {"echo_scale": 5},
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert run.kind == "echo" and run.config["echo_scale"] == 5.0 and run.snapshot_id == preference_snapshot.pk
    page = client.get(f"/training/runs/{run.pk}/")
    assert page.status_code == 200 and "Echo (a test kind)" in page.content.decode()


@pytest.mark.django_db
def test_an_unregistered_kind_is_refused_with_the_registered_ones(preference_snapshot, tiny_base):
    with pytest.raises(
        launching.TrainingError, match=r"Unknown kind 'echo': use one of reward, .*, rloo, distill, critique_revise\b"
    ):
        launching.launch_run(project=preference_snapshot.project, kind="echo", base_model="tiny-llama", enqueue=False)
    assert not TrainingRun.objects.exists()


def test_the_registry_holds_each_fact_once_for_the_built_in_kinds():
    assert kinds.names(reads=kinds.SNAPSHOT) == ["reward", "prm", "sft", "dpo", "kto"]
    assert kinds.names(publishes=kinds.NEW_PROMPTS) == ["synthesize_prompts"]
    assert [k.name for k in kinds.KINDS.values() if k.teacher != kinds.NO_TEACHER] == ["distill"]
    assert kinds.names(publishes=kinds.REWARD_MODEL) == ["reward", "prm"]
    assert kinds.names(publishes=kinds.CANDIDATES) == ["generate", "critique_revise"] and kinds.NEXT_ROUND == "generate"
    assert kinds.names(publishes=kinds.COMPARISONS) == ["evaluate"]
    assert sorted(kinds.names(reward_models=kinds.REWARD_MODEL_NEEDED)) == [
        "evaluate",
        "grpo",
        "ppo",
        "rejection_sampling",
        "rloo",
    ]
    assert [k for k in kinds.KINDS.values() if k.review_file] == [kinds.get("rejection_sampling")]
    reward, sft = kinds.get("reward"), kinds.get("sft")
    assert reward.snapshot_format(reward.config.from_dict({"objective": "regression"})) == "ratings"
    assert reward.snapshot_format(reward.config.from_dict({})) == "trl"
    assert sft.snapshot_format(sft.config.from_dict({"source": "demonstrations"})) == "sft"
    assert kinds.get("dpo").snapshot_format(kinds.get("dpo").config.from_dict({})) == "trl"
    assert kinds.get("kto").snapshot_format(kinds.get("kto").config.from_dict({})) == "kto"
    assert kinds.get("prm").snapshot_format(kinds.get("prm").config.from_dict({})) == "steps"
    assert all(kind.available for kind in kinds.KINDS.values())
