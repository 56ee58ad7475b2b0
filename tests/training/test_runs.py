"""Runs end to end: the train command, the queue and its worker, cancel, crashes, lost workers and resuming."""

import dataclasses
import io
import json
import os
import shutil
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from annotate.actions import create_snapshot
from annotate.exports import ExportOptions
from tests.conftest import served_database_url
from tests.training.conftest import FAST
from training import kinds, launching, lifecycle, supervisor, tasks
from training.models import MetricPoint, ModelArtifact, TrainingRun
from training.scoring import RewardScorer

FAKE_RUNNER = Path(__file__).with_name("fake_runner.py")
FAST_SET = [arg for key, value in FAST.items() for arg in ("--set", f"{key}={value}")]


def _train(*args):
    out = io.StringIO()
    call_command("train", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().splitlines()


def _launch(project, base, snapshot=None, **values):
    return launching.launch_run(
        project=project,
        kind="reward",
        base_model=str(base),
        snapshot=snapshot,
        values={**FAST, **values},
        enqueue=False,
    )


def _fake(monkeypatch, mode):
    monkeypatch.setattr(supervisor, "child_command", lambda spec: [sys.executable, str(FAKE_RUNNER), mode, str(spec)])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the command --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_foreground_run_trains_registers_and_prints_json_last(preference_project, tiny_base, make_member):
    make_member(preference_project, "boss", "admin")
    lines = _train(
        "reward", "--project", "prefs", "--base-model", "tiny-llama", "--foreground", "--launched-by", "boss", *FAST_SET
    )
    result = json.loads(lines[-1])
    assert result["status"] == "succeeded" and result["metrics"]["eval_accuracy"] >= 0.9
    assert any(line.startswith("[step 30/30]") for line in lines)  # progress was streamed
    run = TrainingRun.objects.get(pk=result["run"])
    artifact = ModelArtifact.objects.get(run=run)
    assert Path(result["artifact_path"]) == artifact.folder and artifact.folder.is_dir()
    assert result["artifact"] == artifact.pk  # what --base-model artifact:N and the API take
    # A fresh snapshot with a held-out split was made, and the model is traceable to it.
    assert run.snapshot.options["test_size"] == 0.1 and run.snapshot.counts["test"] == 5
    assert artifact.snapshot_hash == run.snapshot.content_hash == run.dataset_hash
    assert run.config["learning_rate"] == 3e-3 and run.config["lora_r"] == 16  # resolved: defaults included
    card = artifact.card
    assert run.snapshot.content_hash in card and "artifact:%d" % artifact.pk in card and "eval_accuracy" in card
    info = json.loads((artifact.folder / "arbiter.json").read_text())
    assert info["run"] == run.pk and info["snapshot_hash"] == run.snapshot.content_hash
    assert artifact.size_bytes > 1000 and run.launched_by.username == "boss" == artifact.created_by.username
    losses = [p.values["loss"] for p in MetricPoint.objects.filter(run=run) if "loss" in p.values]
    assert len(losses) >= 5 and losses[-1] < losses[0]
    assert run.progress_step == run.progress_total == 30
    # No temporary folder left beside the artifact, no checkpoints left in the run's folder.
    assert [p.name for p in artifact.folder.parent.iterdir()] == [artifact.folder.name]
    assert not (run.work_dir / "checkpoints").exists()
    scorer = RewardScorer.load(artifact.folder)
    assert (
        scorer.score(
            ["Question 99: tell me about topic 99."] * 2, ["This answer is clear kind.", "This answer is rude false."]
        )[0]
        > 0
    )


def _outside_model(tmp_path, tiny_base):
    outside = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_base, outside)
    return outside


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "learning_rte=0.1"], "Unknown option 'learning_rte' (did you mean 'learning_rate'?)"),
        (["--set", "max_steps=ten"], "max_steps must be int, not 'ten'"),
        (["--set", "base_model=/etc"], "not as a config option"),
        (["--set", "criterion=safety"], "has no criterion 'safety'"),
        (["--set", "objective=regression"], "needs a rating project"),
        (["--snapshot", "999"], "No snapshot 999 in project prefs"),
        (["--base-model", "OUTSIDE"], "is outside MODEL_ROOTS"),
        (["--base-model", "RELATIVE"], "is outside MODEL_ROOTS"),
        (["--base-model", "no-such-model"], "No model folder 'no-such-model'"),
        (["--base-model", "artifact:42"], "No registered model artifact 42"),
        (["--base-model", "PICKLE"], "has no .safetensors weights"),
        (["--project", "nope"], "No project 'nope'"),
    ],
)
def test_bad_input_exits_with_a_clear_message_and_creates_no_run(
    args, message, preference_project, tiny_base, tmp_path, settings
):
    outside = _outside_model(tmp_path, tiny_base)
    pickled = Path(settings.MODEL_ROOTS[0]) / "pickled"
    if not pickled.exists():
        pickled.mkdir()
        (pickled / "config.json").write_text("{}")
        (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    settings.MODEL_ROOTS = [Path(settings.MODEL_ROOTS[0]), tmp_path / "roots-2" / "x"]
    relative = os.path.relpath(outside, settings.MODEL_ROOTS[0])  # ../../…/elsewhere/model
    args = [{"OUTSIDE": str(outside), "RELATIVE": relative, "PICKLE": "pickled"}.get(a, a) for a in args]
    base = ["--project", "prefs", "--base-model", "tiny-llama"]
    for flag in ("--project", "--base-model"):
        if flag in args:
            i = base.index(flag)
            base[i : i + 2] = []
    with pytest.raises(CommandError) as error:
        _train("reward", *base, *args)
    assert message in str(error.value)
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_symlink_out_of_the_model_roots_is_refused(preference_project, tiny_base, tmp_path, settings):
    link = Path(settings.MODEL_ROOTS[0]) / f"link-{tmp_path.name}"
    link.symlink_to(_outside_model(tmp_path, tiny_base))
    try:
        with pytest.raises(CommandError, match="is outside MODEL_ROOTS"):
            _train("reward", "--project", "prefs", "--base-model", link.name)
    finally:
        link.unlink()


@pytest.mark.django_db
def test_a_kind_without_a_runner_is_refused(preference_project, monkeypatch):
    # Every kind has a runner now; a site may leave one out (its module is not there).
    monkeypatch.setitem(kinds.KINDS, "dpo", dataclasses.replace(kinds.get("dpo"), runner="training.runners.left_out"))
    with pytest.raises(CommandError, match="dpo runs are not available yet"):
        _train("dpo", "--project", "prefs", "--base-model", "tiny-llama")


@pytest.mark.django_db
def test_qlora_on_the_cpu_fails_the_run_with_a_clear_message(preference_project, tiny_base):
    with pytest.raises(SystemExit):
        _train("reward", "--project", "prefs", "--base-model", "tiny-llama", "--foreground", "--set", "method=qlora")
    run = TrainingRun.objects.get()
    assert run.status == "failed" and "QLoRA needs a CUDA GPU" in run.error
    assert not ModelArtifact.objects.exists() and not list(
        (Path(run.work_dir).parent.parent / "models").rglob("*.safetensors")
    )


# --- the queue ---------------------------------------------------------------------------------------


def _serve_queue():
    """What `manage.py db_worker --batch` does, task by task, without its connection recycling (which would end
    the test's transaction) or its signal handlers."""
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
def test_a_queued_run_is_served_by_the_worker_in_a_subprocess(
    preference_snapshot, tiny_base, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        lines = _train(
            "reward",
            "--project",
            "prefs",
            "--base-model",
            "tiny-llama",
            "--snapshot",
            str(preference_snapshot.pk),
            *FAST_SET,
        )
    run = TrainingRun.objects.get(pk=int(lines[-1]))
    assert run.status == "queued" and DBTaskResult.objects.filter(pk=run.task_id, status="READY").exists()
    with django_capture_on_commit_callbacks(execute=True):
        _serve_queue()
    run.refresh_from_db()
    assert run.status == "succeeded", run.error + run.log_tail
    assert run.metrics["eval_accuracy"] >= 0.9 and run.worker.endswith(f":{os.getpid()}")
    assert DBTaskResult.objects.get(pk=run.task_id).status == "SUCCESSFUL"
    # The watchdog waits on the queue for a worker that outlives this one.
    watch = DBTaskResult.objects.get(task_path="training.tasks.watch_run")
    assert watch.status == "READY" and watch.run_after > timezone.now()
    log = (run.work_dir / "log.txt").read_text()
    assert "training pairs" in log and "[step 30/30]" in log


@pytest.mark.django_db
def test_a_crash_fails_the_run_with_its_error_not_the_worker(preference_snapshot, tiny_base, monkeypatch):
    _fake(monkeypatch, "crash")
    run = _launch(preference_snapshot.project, tiny_base, preference_snapshot)
    run = supervisor.execute(run.pk, run.attempt)
    assert run.status == "failed" and run.error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert "Traceback" in run.log_tail and not ModelArtifact.objects.exists()


@pytest.mark.django_db
def test_a_killed_subprocess_fails_the_run(preference_snapshot, tiny_base, monkeypatch):
    _fake(monkeypatch, "sigkill")
    run = _launch(preference_snapshot.project, tiny_base, preference_snapshot)
    run = supervisor.execute(run.pk, run.attempt)
    assert run.status == "failed" and "killed by SIGKILL (the kernel's out-of-memory killer does this)" in run.error


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_a_running_subprocess_within_seconds(preference_project, tiny_base, monkeypatch):
    _fake(monkeypatch, "slow")
    snapshot, _ = create_snapshot(preference_project, ExportOptions(test_size=0.2, seed=1))
    run = _launch(preference_project, tiny_base, snapshot)

    def work():
        try:
            supervisor.execute(run.pk, run.attempt)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status == "running" and run.progress_step > 10:
            break
        time.sleep(0.2)
    assert run.status == "running" and run.heartbeat_at is not None
    pid = int((run.work_dir / "fake-slow.pid").read_text())
    cancelled_at = time.monotonic()
    launching.cancel_run(run)
    thread.join(timeout=20)
    took = time.monotonic() - cancelled_at
    run.refresh_from_db()
    assert run.status == "cancelled" and took < 5 and not _alive(pid)
    assert MetricPoint.objects.filter(run=run).exists() and "cancel requested" in run.log_tail


@pytest.mark.django_db
def test_a_queued_run_is_cancelled_at_once_and_its_task_does_nothing(preference_snapshot, tiny_base, monkeypatch):
    run = launching.cancel_run(_launch(preference_snapshot.project, tiny_base, preference_snapshot))
    assert run.status == "cancelled" and run.finished_at is not None
    _fake(monkeypatch, "crash")
    assert supervisor.execute(run.pk, run.attempt).status == "cancelled"


# --- lost workers ------------------------------------------------------------------------------------


def _running(run, seconds_ago):
    stamp = timezone.now() - timedelta(seconds=seconds_ago)
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", heartbeat_at=stamp, started_at=stamp, worker="gpu-1:42"
    )
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_a_stale_heartbeat_requeues_the_run_then_fails_it_after_max_attempts(
    preference_snapshot, tiny_base, settings, django_capture_on_commit_callbacks
):
    settings.TRAINING_MAX_ATTEMPTS = 2
    run = _running(_launch(preference_snapshot.project, tiny_base, preference_snapshot), 5)
    assert tasks.reap_stale_runs() == []  # fresh enough
    run = _running(run, 60)
    with django_capture_on_commit_callbacks(execute=True):
        assert [r.pk for r in tasks.reap_stale_runs()] == [run.pk]
    run.refresh_from_db()
    assert run.status == "queued" and run.attempt == 2 and "stopped sending heartbeats" in run.log_tail
    assert DBTaskResult.objects.get(pk=run.task_id).args_kwargs["args"] == [run.pk, 2]
    run = _running(run, 60)
    tasks.reap_stale_runs()
    run.refresh_from_db()
    assert run.status == "failed" and "stopped sending heartbeats" in run.error and "after 2 attempts" in run.error


@pytest.mark.django_db
def test_a_stale_run_is_failed_when_the_setting_says_so(preference_snapshot, tiny_base, settings):
    settings.TRAINING_ON_STALE = "fail"
    run = _running(_launch(preference_snapshot.project, tiny_base, preference_snapshot), 60)
    tasks.reap_stale_runs()
    run.refresh_from_db()
    assert run.status == "failed" and run.attempt == 1 and "gpu-1:42" in run.error


@pytest.mark.django_db
def test_a_worker_that_lost_its_run_kills_the_child_and_publishes_nothing(preference_snapshot, tiny_base, monkeypatch):
    _fake(monkeypatch, "slow")
    run = _launch(preference_snapshot.project, tiny_base, preference_snapshot)
    real = lifecycle.record_progress

    def reaped_meanwhile(run, **kwargs):
        if kwargs.get("step") and kwargs["step"] > 5:
            TrainingRun.objects.filter(pk=run.pk).update(status="queued", attempt=run.attempt + 1)
        return real(run, **kwargs)

    monkeypatch.setattr(lifecycle, "record_progress", reaped_meanwhile)
    result = supervisor.execute(run.pk, run.attempt)
    assert result.status == "queued" and result.attempt == 2 and not ModelArtifact.objects.exists()
    assert not _alive(int((run.work_dir / "fake-slow.pid").read_text()))


@pytest.mark.django_db
def test_a_requeued_run_resumes_from_its_last_checkpoint(preference_snapshot, tiny_base, monkeypatch):
    run = _launch(preference_snapshot.project, tiny_base, preference_snapshot, max_steps=20, save_steps=5)
    real = lifecycle.record_progress

    def worker_dies_after_a_checkpoint(run, **kwargs):
        if kwargs.get("checkpoint"):
            return False, False  # as if the reaper had taken the run: this worker stops at once
        return real(run, **kwargs)

    monkeypatch.setattr(lifecycle, "record_progress", worker_dies_after_a_checkpoint)
    assert supervisor.execute(run.pk, 1, in_process=True).status == "running"  # left for the reaper
    assert [p.name for p in (run.work_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-5"]
    monkeypatch.setattr(lifecycle, "record_progress", real)
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint=f"runs/{run.pk}/checkpoints/checkpoint-5")
    _running(run, 120)
    tasks.reap_stale_runs()
    run = supervisor.execute(run.pk, 2, in_process=True)
    assert run.status == "succeeded" and run.attempt == 2, run.error
    assert f"resuming from runs/{run.pk}/checkpoints/checkpoint-5" in run.log_tail
    assert "[arbiter] resumed at step 5" in run.log_tail and run.metrics["train_steps"] == 20


# --- criteria ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_criterion_reward_model_trains_on_its_criterion_and_reports_the_others(make_project, tiny_base):
    """helpful prefers the good words, safe the bad ones: a helpful model is right on helpful pairs, wrong on safe."""
    import random

    from annotate import actions as annotate_actions
    from annotate.imports import parse_items, parse_votes
    from tests.conftest import jsonl
    from tests.training.conftest import toy_pair

    project = make_project(slug="crit", n_items=0, overlap=1, criteria=["helpful", "safe"])
    rng, items, votes = random.Random(5), [], []
    for i in range(40):
        prompt, good, bad = toy_pair(i, rng)
        items.append({"id": f"c{i}", "prompt": prompt, "responses": [good, bad]})
        votes.append({"item": f"c{i}", "annotator": "a", "winner": 0, "criteria": {"helpful": 0, "safe": 1}})
    annotate_actions.import_items(project, parse_items(jsonl(items), "jsonl", "pairwise"))
    annotate_actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    run = launching.launch_run(
        project=project,
        kind="reward",
        base_model=str(tiny_base),
        values={**FAST, "criterion": "helpful"},
        enqueue=False,
    )
    assert run.snapshot.options["criterion"] == "helpful"
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == "succeeded", run.error
    assert run.metrics["eval_accuracy"] >= 0.9 and run.metrics["eval_accuracy_safe"] <= 0.1
    assert run.metrics["eval_pairs_safe"] == run.metrics["eval_pairs"] == 4
    assert run.artifact.criterion == "helpful" and run.artifact.name == "crit-run-%d-reward-helpful" % run.pk


# --- a real worker, killed -----------------------------------------------------------------------------


def _wait(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


@pytest.mark.django_db(transaction=True)
def test_a_sigkilled_worker_takes_its_training_process_along_and_the_run_resumes_elsewhere(
    preference_project, tiny_base, settings
):
    import signal
    import subprocess

    snapshot, _ = create_snapshot(preference_project, ExportOptions(test_size=0.2, seed=1))
    env = {
        **os.environ,
        "DATABASE_URL": served_database_url(),
        "ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "MODEL_ROOTS": str(settings.MODEL_ROOTS[0]),
        "TRAINING_HEARTBEAT_SECONDS": "1",
        "DEBUG": "0",
    }
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--no-startup-delay", "--interval", "0.2", "--no-reload", "-v0"],
        cwd=settings.BASE_DIR,
        env=env,
        start_new_session=True,
    )
    try:
        run = launching.launch_run(
            project=preference_project,
            kind="reward",
            base_model=str(tiny_base),
            snapshot=snapshot,
            values={**FAST, "max_steps": 5000, "save_steps": 5},
            enqueue=True,
        )
        _wait(
            lambda: TrainingRun.objects.filter(pk=run.pk, checkpoint__contains="checkpoint-").exists(),
            120,
            "a checkpoint",
        )
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        assert children, "the worker runs the training in a child process"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        _wait(
            lambda: (
                not any(
                    _alive(int(pid)) and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" for pid in children
                )
            ),
            10,
            "the orphaned training process to exit",
        )
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    settings.TRAINING_STALE_SECONDS = 2
    _wait(lambda: tasks.reap_stale_runs(), 10, "the reaper to notice")
    run.refresh_from_db()
    assert run.status == "queued" and run.attempt == 2 and "stopped sending heartbeats" in run.log_tail
    # A new worker (here: this process) resumes attempt 2 from the checkpoint the dead one left.
    thread = threading.Thread(target=lambda: (supervisor.execute(run.pk, 2, in_process=True), connections.close_all()))
    thread.start()
    try:
        _wait(
            lambda: "[arbiter] resumed at step" in TrainingRun.objects.get(pk=run.pk).log_tail,
            120,
            lambda: (
                "the resumed attempt; the run: %s"
                % TrainingRun.objects.filter(pk=run.pk).values("status", "error", "log_tail").first()
            ),
        )
    finally:
        launching.cancel_run(run)
        thread.join(timeout=60)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.attempt == 2


@pytest.mark.django_db
def test_the_demo_base_model_lands_under_the_first_root_and_can_be_chosen(preference_project, settings, tmp_path):
    from training.selectors import allowed_base_models, resolve_base_model

    settings.MODEL_ROOTS = [tmp_path / "models"]
    call_command("demo_base_model", stdout=io.StringIO())
    folder = tmp_path / "models" / "tiny-demo-llama"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert (str(folder.resolve()), "models/tiny-demo-llama") in allowed_base_models()
    assert resolve_base_model("tiny-demo-llama").path == folder.resolve()
    policy = tmp_path / "models" / "tiny-demo-llama-policy"
    assert resolve_base_model("tiny-demo-llama-policy").path == policy.resolve()

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(policy)
    warmed = LlamaForCausalLM.from_pretrained(policy, use_safetensors=True)
    torch.manual_seed(0)
    fresh = LlamaForCausalLM(warmed.config)
    text = preference_project.items.first().responses.first().text
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        warmed_loss, fresh_loss = (m(input_ids=ids, labels=ids).loss.item() for m in (warmed, fresh))
    assert warmed_loss < fresh_loss - 1.0, (warmed_loss, fresh_loss)  # the warm-up taught it the site's words
    assert tokenizer.convert_tokens_to_ids("<|end|>") in warmed.generation_config.eos_token_id


@pytest.mark.django_db
def test_help_config_needs_no_project_and_a_run_needs_both():
    out = io.StringIO()
    call_command("train", "dpo", "--help-config", stdout=out)
    assert "learning_rate = " in out.getvalue()
    with pytest.raises(CommandError, match="--project and --base-model are required"):
        call_command("train", "dpo")
    with pytest.raises(CommandError, match="--base-model is required"):
        call_command("train", "dpo", "--project", "prefs")
