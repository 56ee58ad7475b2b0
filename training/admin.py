"""Django admin: runs and the registry, read-mostly (runs change through actions, not by hand)."""

from django.contrib import admin

from .models import MetricPoint, ModelArtifact, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "status",
        "attempt",
        "progress_step",
        "progress_total",
        "launched_by",
        "created_at",
    ]
    list_filter = ["status", "kind", "project"]
    readonly_fields = [f.name for f in TrainingRun._meta.fields]


@admin.register(ModelArtifact)
class ModelArtifactAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "project", "kind", "criterion", "size_bytes", "created_at"]
    list_filter = ["kind", "project"]
    search_fields = ["name"]
    readonly_fields = [f.name for f in ModelArtifact._meta.fields]


@admin.register(MetricPoint)
class MetricPointAdmin(admin.ModelAdmin):
    list_display = ["run", "step", "created_at"]
    list_filter = ["run"]
