"""A full disk under ARTIFACT_ROOT: the run fails with a clear error, nothing half-written is registered, and the
run retried after space is freed resumes from its last checkpoint.

ARTIFACT_ROOT is a tmpfs of a few MB mounted for the test (root, or CAP_SYS_ADMIN, is needed: otherwise the test
is skipped with the reason). The disk is filled from inside the training, right after its first checkpoint, so the
next save is the one that hits ENOSPC — deterministic, whatever the machine's speed. The SIGKILL faults (of the
worker, of the training subprocess) are tested in tests/training/test_runs.py.
"""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.training.conftest import FAST, models_root, preference_project, preference_snapshot, tiny_base  # noqa: F401 - fixtures
from training import launching, supervisor
from training.models import ModelArtifact, RunStatus
from training.runners.base import checkpoint_is_complete

DISK_MB = 48


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of DISK_MB megabytes, unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        reason = getattr(exc, "stderr", "") or exc
        pytest.skip(f"cannot mount a {DISK_MB} MB tmpfs to fill (needs root or CAP_SYS_ADMIN): {reason}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True, timeout=30)


def fill(folder: Path) -> Path:
    """Write one file until the filesystem is full; returns it (delete it to free the space)."""
    ballast = folder / "ballast"
    block = b"\0" * (1 << 16)
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return ballast


@pytest.mark.django_db
def test_a_full_disk_fails_the_run_clearly_registers_nothing_and_the_retry_resumes(
    preference_snapshot,
    tiny_base,
    models_root,
    small_disk,
    settings,
    monkeypatch,
):
    settings.ARTIFACT_ROOT = small_disk
    settings.MODEL_ROOTS = [models_root]
    settings.TRAINING_HEARTBEAT_SECONDS = 1
    project = preference_snapshot.project
    # The snapshot's files are re-exported onto the small disk (the fixture wrote them under the default root).
    from annotate.actions import create_snapshot
    from annotate.exports import ExportOptions

    snapshot, _ = create_snapshot(project, ExportOptions(test_size=0.2, seed=2))
    run = launching.launch_run(
        project=project,
        kind="reward",
        base_model=str(tiny_base),
        snapshot=snapshot,
        values={**FAST, "max_steps": 20, "save_steps": 5},
        enqueue=False,
    )
    ballast = []
    real_emit = supervisor.ThreadSource._emit

    def disk_fills_after_the_first_checkpoint(self, event):
        if event.get("event") == "checkpoint" and not ballast:
            ballast.append(fill(small_disk))
        return real_emit(self, event)

    monkeypatch.setattr(supervisor.ThreadSource, "_emit", disk_fills_after_the_first_checkpoint)
    run = supervisor.execute(run.pk, 1, in_process=True)

    assert ballast, "the run never reached its first checkpoint"
    assert run.status == RunStatus.FAILED, (run.status, run.error, run.log_tail)
    assert (
        "No space left on device" in run.error
        and f"the disk under ARTIFACT_ROOT ({small_disk}) ran out of space" in run.error
    ), run.error
    assert not ModelArtifact.objects.exists()
    models = small_disk / "models" / project.slug
    assert not models.exists() or list(models.iterdir()) == []  # no folder, not even a temporary one
    # checkpoint-5 is kept for the retry; the save that hit the full disk left at most a half-written checkpoint-10.
    complete = {p.name: checkpoint_is_complete(p) for p in (run.work_dir / "checkpoints").glob("checkpoint-*")}
    assert complete.pop("checkpoint-5") is True and complete in ({}, {"checkpoint-10": False}), complete

    ballast[0].unlink()
    run = launching.retry_run(run)
    monkeypatch.setattr(supervisor.ThreadSource, "_emit", real_emit)
    run = supervisor.execute(run.pk, run.attempt, in_process=True)
    assert run.status == RunStatus.SUCCEEDED and run.attempt == 2, run.error
    assert "[arbiter] resumed at step 5" in run.log_tail and run.metrics["train_steps"] == 20
    artifact = ModelArtifact.objects.get(run=run)
    assert (small_disk / artifact.path / "model.safetensors").is_file()
    assert os.path.getsize(small_disk / artifact.path / "model.safetensors") > 0
    assert [p.name for p in models.iterdir()] == [Path(artifact.path).name]
