"""Tables of the model side: training runs, their metric history, and the model registry.

The vocabulary, used the same way in the pages, the API, the command and the docs:

- A **run** is one training job of one ``kind`` (training.kinds: reward, sft, dpo, rejection_sampling, ppo, grpo,
  rloo, generate, evaluate) on one project's **snapshot** (reward, sft, dpo) or on **prompts** chosen at launch (the
  others; the kind's ``reads``), starting from a **base model** (a folder under ``MODEL_ROOTS`` or a registered artifact). It moves queued → running → succeeded / failed / cancelled. Its ``config`` is the resolved
  runner config (every field, defaults included), so a run can be repeated exactly.
- A worker runs it in a subprocess and keeps its **heartbeat** fresh; a run whose heartbeat goes stale lost its
  worker and is re-queued (resuming from its last **checkpoint**, ``attempt`` + 1) or failed, per
  ``TRAINING_ON_STALE``.
- An **artifact** is a registered model folder under ``ARTIFACT_ROOT`` (safetensors, tokenizer, ``arbiter.json``
  and a model card ``README.md``), traceable to its run, base model and snapshot hash.
- A **run round** links a run to the round of items its output became: generate's candidates, rejection sampling's
  kept samples sent for review, evaluate's human-evaluation pairs. With ``parent`` and ``reward_artifacts`` it makes
  the lineage chain round → snapshot → reward model → policy → next round (``selectors.round_chain``).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from annotate.models import Project, Round, Snapshot

from . import kinds


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
FINISHED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class TrainingRun(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="training_runs")
    # A callable: the registry's kinds, a kind registered later included (and no migration when one is added).
    kind = models.CharField(max_length=24, choices=kinds.choices)
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED)
    config = models.JSONField(help_text="The resolved runner config: every field, defaults included.")
    snapshot = models.ForeignKey(
        Snapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="training_runs"
    )
    snapshot_hash = models.CharField(max_length=64, blank=True, help_text="The snapshot's content hash at launch.")
    dataset_hash = models.CharField(
        max_length=64, blank=True, help_text="Hash of the rows trained on: the snapshot's, or a per-criterion subset's."
    )
    base_model = models.CharField(max_length=500, help_text="Resolved folder of the base model.")
    base_artifact = models.ForeignKey(
        "ModelArtifact",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="derived_runs",
        help_text="When the base model is a registered artifact.",
    )
    # Lineage for the policy kinds (next issue): the reward models a run scores with, and the run it continues.
    reward_artifacts = models.ManyToManyField("ModelArtifact", blank=True, related_name="scoring_runs")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    # generate: the project whose next round receives the candidates (default: the run's own project).
    target_project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="incoming_runs",
        help_text="generate: the project whose new round receives the candidates.",
    )
    inputs = models.JSONField(
        default=dict,
        blank=True,
        help_text="How the run's data was chosen: prompts source and count, the baseline model, the prompts file's hash.",
    )
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="The latest (final, once finished) metrics.")
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempt = models.PositiveSmallIntegerField(default=1, help_text="1, then +1 each time a lost run is re-queued.")
    checkpoint = models.CharField(
        max_length=500,
        blank=True,
        help_text="Last checkpoint folder, relative to ARTIFACT_ROOT; a re-queued run resumes from it.",
    )
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the worker running it.")
    task_id = models.CharField(
        max_length=64, blank=True, help_text="The Django Tasks result id of the current attempt."
    )

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat_idx")]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.kind}, {self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def percent(self) -> int:
        if self.status == RunStatus.SUCCEEDED:
            return 100
        if not self.progress_total:
            return 0
        return min(100, int(100 * self.progress_step / self.progress_total))

    @property
    def work_dir(self) -> Path:
        """The run's own folder: spec, full log, derived datasets, checkpoints. Never served."""
        return Path(settings.ARTIFACT_ROOT) / "runs" / str(self.pk)

    @property
    def criterion(self) -> str:
        return (self.config or {}).get("criterion") or ""

    @property
    def training_kind(self) -> kinds.TrainingKind | None:
        """The registry's entry of this run's kind (None for a kind this site no longer registers)."""
        return kinds.KINDS.get(self.kind)

    @property
    def makes_model(self) -> bool:
        return bool(self.training_kind and self.training_kind.makes_model)

    @property
    def prompts_path(self) -> Path:
        """prompt-driven kinds: the prompts file written at launch (``test`` prompts beside it, when there are some)."""
        return self.work_dir / "data" / "prompts.jsonl"


class RoundPurpose(models.TextChoices):
    CANDIDATES = "candidates", "Candidates written by a policy"
    REVIEW = "review", "Rejection-sampling samples sent for review"
    HUMAN_EVAL = "human_eval", "Human evaluation: new policy against the baseline"


class RunRound(models.Model):
    """A round of items that a run's output became: the lineage link from the model side back to annotation."""

    run = models.ForeignKey(TrainingRun, on_delete=models.PROTECT, related_name="made_rounds")
    round = models.OneToOneField(Round, on_delete=models.CASCADE, related_name="made_by")
    purpose = models.CharField(max_length=16, choices=RoundPurpose.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.round} from run {self.run_id} ({self.purpose})"


class MetricPoint(models.Model):
    """One logged step of a run (loss, accuracy, learning rate, eval accuracy...): the plots are drawn from these."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="points")
    step = models.PositiveIntegerField()
    values = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step", "id"]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.step}"


class ArtifactKind(models.TextChoices):
    REWARD = "reward", "Reward model"
    POLICY = "policy", "Policy"


class ModelArtifact(models.Model):
    """A registered model folder under ``ARTIFACT_ROOT``: only safetensors weights, a tokenizer, ``arbiter.json``
    (everything below, for tools that read the folder without the database) and a model card ``README.md``."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="model_artifacts")
    run = models.OneToOneField(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="artifact")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=ArtifactKind.choices)
    path = models.CharField(max_length=500, unique=True, help_text="Folder, relative to ARTIFACT_ROOT.")
    base_model = models.CharField(max_length=500)
    base_artifact = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="derived")
    snapshot = models.ForeignKey(
        Snapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="model_artifacts"
    )
    snapshot_hash = models.CharField(max_length=64, blank=True)
    criterion = models.CharField(
        max_length=100, blank=True, help_text="Reward models: the criterion it scores; blank for overall."
    )
    is_adapter = models.BooleanField(
        default=False, help_text="A PEFT adapter over base_model rather than full weights."
    )
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    size_bytes = models.BigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def folder(self) -> Path:
        return Path(settings.ARTIFACT_ROOT) / self.path

    @property
    def card(self) -> str:
        readme = self.folder / "README.md"
        return readme.read_text(encoding="utf-8") if readme.is_file() else ""
