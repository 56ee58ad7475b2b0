"""Shapes of the training API. Serializers parse and present; training.launching and training.rounds do the writes."""

from rest_framework import serializers

from .. import kinds
from ..datasets import PROMPT_SOURCES
from ..models import ModelArtifact, TrainingRun


class RunCreateSerializer(serializers.Serializer):
    """Documents the body; ``launching.launch_run`` validates the values (unknown option, wrong type → 400)."""

    project = serializers.SlugField(help_text="Project slug; you must be its admin.")
    kind = serializers.ChoiceField(choices=kinds.choices())
    base_model = serializers.CharField(
        help_text="A folder under MODEL_ROOTS (absolute or relative to a root) or artifact:ID."
    )
    snapshot = serializers.IntegerField(
        required=False, allow_null=True, help_text="Default: a fresh snapshot with a test split."
    )
    config = serializers.DictField(
        required=False, default=dict, help_text="Runner options (docs/training.md), JSON-typed."
    )
    reward_models = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        default=list,
        max_length=8,
        help_text=f"artifact:ID[:WEIGHT], a registered name or a folder under MODEL_ROOTS ({', '.join(kinds.names(reward_models=kinds.REWARD_MODEL_NEEDED))}).",
    )
    target_project = serializers.SlugField(
        required=False, allow_null=True, help_text="generate: the pairwise or ranking project that gets the candidates."
    )
    prompts_from = serializers.ChoiceField(choices=PROMPT_SOURCES, required=False, allow_blank=True)
    prompts = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        allow_null=True,
        max_length=100_000,
        help_text='Prompt-driven kinds: the prompts themselves, [{"prompt": text or messages}, ...] (prompts_from=file).',
    )
    max_prompts = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    baseline = serializers.CharField(required=False, allow_blank=True, help_text="evaluate: the policy compared with.")
    teacher = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="distill: the model the student (base_model) learns from, with its tokenizer (a folder under "
        "MODEL_ROOTS or artifact:ID).",
    )
    parent = serializers.IntegerField(required=False, allow_null=True, help_text="The run this one continues.")
    from_run = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="sft: learn from the demonstrations a finished critique_revise run wrote, instead of a snapshot; "
        "generate and the other prompt-driven kinds: the prompts a finished synthesize_prompts run kept.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = kinds.choices()  # the registry as it is now, a kind registered later included


class TargetSerializer(serializers.Serializer):
    project = serializers.SlugField(help_text="The project that gets the new round; you must be its admin.")


class NextRoundSerializer(serializers.Serializer):
    target_project = serializers.SlugField(required=False, allow_null=True)
    prompts_from = serializers.ChoiceField(
        choices=[s for s in PROMPT_SOURCES if s != "file"], required=False, allow_blank=True
    )
    max_prompts = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    config = serializers.DictField(required=False, default=dict)


class RunSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug")
    launched_by = serializers.CharField(source="launched_by.username", default=None)
    artifact = serializers.SerializerMethodField()
    percent = serializers.IntegerField()

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "project",
            "kind",
            "status",
            "attempt",
            "percent",
            "progress_step",
            "progress_total",
            "config",
            "snapshot",
            "snapshot_hash",
            "dataset_hash",
            "base_model",
            "base_artifact",
            "parent",
            "metrics",
            "error",
            "launched_by",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "cancel_requested",
            "artifact",
            "reward_artifacts",
            "target_project",
            "inputs",
            "rounds",
        ]

    target_project = serializers.CharField(source="target_project.slug", default=None)
    rounds = serializers.SerializerMethodField()

    def get_rounds(self, run) -> list[dict]:
        """Rounds this run's output became: ``{"project", "number", "id", "purpose"}``."""
        return [
            {
                "project": link.round.project.slug,
                "number": link.round.number,
                "id": link.round_id,
                "purpose": link.purpose,
            }
            for link in run.made_rounds.select_related("round", "round__project")
        ]

    def get_artifact(self, run) -> int | None:
        artifact = getattr(run, "artifact", None) if run.status == "succeeded" else None
        return artifact.pk if artifact else None


class RunDetailSerializer(RunSerializer):
    history = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + ["log_tail", "history", "checkpoint", "worker"]

    def get_history(self, run) -> list[dict]:
        """Every logged step: ``{"step", ...metrics}``, in step order."""
        return [{"step": step, **values} for step, values in run.points.values_list("step", "values")]


class ArtifactSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug")

    class Meta:
        model = ModelArtifact
        fields = [
            "id",
            "name",
            "project",
            "kind",
            "criterion",
            "path",
            "base_model",
            "base_artifact",
            "snapshot",
            "snapshot_hash",
            "is_adapter",
            "config",
            "metrics",
            "size_bytes",
            "run",
            "created_at",
        ]


class ArtifactDetailSerializer(ArtifactSerializer):
    card = serializers.CharField()

    class Meta(ArtifactSerializer.Meta):
        fields = ArtifactSerializer.Meta.fields + ["card"]


class PairSerializer(serializers.Serializer):
    prompt = serializers.JSONField(help_text='A string, or chat messages [{"role", "content"}].')
    response = serializers.CharField()


class ScoreInSerializer(serializers.Serializer):
    pairs = PairSerializer(many=True, allow_empty=False, max_length=256)


class WeightedModelSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    weight = serializers.FloatField()


class CombinedScoreInSerializer(ScoreInSerializer):
    models = WeightedModelSerializer(many=True, allow_empty=False, max_length=8)
    normalize = serializers.BooleanField(default=True, help_text="Standardise each model's rewards before weighting.")
