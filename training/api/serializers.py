"""Shapes of the training API. Serializers parse and present; ``training.actions`` does the writes."""

from rest_framework import serializers

from ..models import ModelArtifact, RunKind, TrainingRun


class RunCreateSerializer(serializers.Serializer):
    """Documents the body; ``actions.launch_run`` validates the values (unknown option, wrong type → 400)."""

    project = serializers.SlugField(help_text="Project slug; you must be its admin.")
    kind = serializers.ChoiceField(choices=RunKind.choices)
    base_model = serializers.CharField(help_text="A folder under MODEL_ROOTS (absolute or relative to a root) or artifact:ID.")
    snapshot = serializers.IntegerField(required=False, allow_null=True, help_text="Default: a fresh snapshot with a test split.")
    config = serializers.DictField(required=False, default=dict, help_text="Runner options (docs/training.md), JSON-typed.")


class RunSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug")
    launched_by = serializers.CharField(source="launched_by.username", default=None)
    artifact = serializers.SerializerMethodField()
    percent = serializers.IntegerField()

    class Meta:
        model = TrainingRun
        fields = [
            "id", "project", "kind", "status", "attempt", "percent", "progress_step", "progress_total", "config",
            "snapshot", "snapshot_hash", "dataset_hash", "base_model", "base_artifact", "parent", "metrics", "error",
            "launched_by", "created_at", "started_at", "finished_at", "heartbeat_at", "cancel_requested", "artifact",
        ]  # fmt: skip

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
            "id", "name", "project", "kind", "criterion", "path", "base_model", "base_artifact", "snapshot", "snapshot_hash",
            "is_adapter", "config", "metrics", "size_bytes", "run", "created_at",
        ]  # fmt: skip


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
