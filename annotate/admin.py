"""Django admin: site admins manage projects, members and roles here; judgments are read-only."""

from django.contrib import admin

from .models import Flag, Item, Judgment, Membership, Project, Response, Round, Task


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    fields = ["user", "role", "status", "pseudonym"]
    readonly_fields = ["pseudonym"]
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "kind", "overlap", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role", "status", "pseudonym"]
    list_filter = ["role", "status", "project"]
    search_fields = ["user__username", "project__slug"]
    readonly_fields = ["pseudonym"]
    autocomplete_fields = ["user", "project"]


class ResponseInline(admin.TabularInline):
    model = Response
    extra = 0
    fields = ["index", "model_name", "text"]


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["external_id", "project", "purpose", "open_slots", "n_judgments"]
    list_filter = ["project", "purpose"]
    search_fields = ["external_id"]
    inlines = [ResponseInline]


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "name", "created_at"]


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "item", "annotator", "status", "lease_expires_at"]
    list_filter = ["project", "status"]
    raw_id_fields = ["item", "annotator"]


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "item", "annotator", "outcome", "strength", "is_current", "created_at"]
    list_filter = ["project", "outcome", "is_current", "source"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False


@admin.register(Flag)
class FlagAdmin(admin.ModelAdmin):
    list_display = ["item", "project", "category", "annotator", "created_at"]
    list_filter = ["project", "category"]
