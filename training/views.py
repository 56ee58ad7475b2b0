"""Training pages. Researchers read runs and models; admins launch and cancel; annotators see none of it
(a member whose role is too low gets 403, a non-member 404). With htmx the run page polls only its status fragment."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from annotate.models import Project, Role
from annotate.permissions import require_role

from . import actions, plots, selectors
from .forms import LaunchForm
from .models import ModelArtifact, TrainingRun
from .selectors import TrainingError


def _require_training(user) -> None:
    if not selectors.sees_training(user):
        raise Http404("No such page.")


def _run(request, run_id: int, role: str = Role.RESEARCHER) -> tuple[TrainingRun, object]:
    run = get_object_or_404(TrainingRun.objects.select_related("project", "snapshot", "launched_by"), pk=run_id)
    _, membership = require_role(request.user, run.project.slug, role)
    return run, membership


@never_cache
@login_required
def runs(request):
    _require_training(request.user)
    actions.reap_stale_runs()
    project = None
    if request.GET.get("project"):
        project = get_object_or_404(Project, slug=request.GET["project"])
        require_role(request.user, project.slug, Role.RESEARCHER)
    shown = list(selectors.visible_runs(request.user, project)[:200])
    context = {
        "runs": shown,
        "any_active": any(run.is_active for run in shown),  # the list refreshes itself only while something runs
        "project": project,
        "can_launch": selectors.training_projects(request.user, Role.ADMIN).exists(),
    }
    template = "training/runs.html#table" if request.htmx else "training/runs.html"
    return render(request, template, context)


@login_required
@require_http_methods(["GET", "POST"])
def run_new(request):
    _require_training(request.user)
    if not selectors.training_projects(request.user, Role.ADMIN).exists():
        raise PermissionDenied("Only project admins launch training.")
    form = LaunchForm(request.POST or None, user=request.user, initial={"project": request.GET.get("project")})
    if request.method == "POST" and form.is_valid():
        project, _ = require_role(request.user, form.cleaned_data["project"], Role.ADMIN)
        try:
            run = actions.launch_run(
                project=project, kind=form.cleaned_data["kind"], base_model=form.cleaned_data["base_model"],
                snapshot=form.cleaned_data["snapshot"], values=form.cleaned_data["values"], launched_by=request.user,
            )  # fmt: skip
        except TrainingError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Run {run.pk} is queued.")
            return redirect("training-run", run_id=run.pk)
    return render(request, "training/run_new.html", {"form": form}, status=400 if form.errors else 200)


def _run_context(run: TrainingRun, membership) -> dict:
    return {
        "run": run,
        "can_manage": membership.has_role(Role.ADMIN),
        "charts": plots.run_charts(selectors.metric_series(run)),
        "artifact": ModelArtifact.objects.filter(run=run).first(),
        "headline": {k: v for k, v in (run.metrics or {}).items() if k.startswith(("eval_", "loss", "accuracy", "train_loss"))},
    }


@never_cache
@login_required
def run_detail(request, run_id: int):
    run, membership = _run(request, run_id)
    if run.is_active:
        actions.reap_stale_runs()
        run.refresh_from_db()
    template = "training/run.html#status" if request.htmx else "training/run.html"
    return render(request, template, _run_context(run, membership))


@login_required
@require_POST
def run_cancel(request, run_id: int):
    run, membership = _run(request, run_id, Role.ADMIN)
    run = actions.cancel_run(run)
    if request.htmx:
        return render(request, "training/run.html#status", _run_context(run, membership))
    messages.info(request, f"Run {run.pk}: " + ("cancelled." if run.status == "cancelled" else "stopping…"))
    return redirect("training-run", run_id=run.pk)


@login_required
@require_POST
def run_retry(request, run_id: int):
    run, _ = _run(request, run_id, Role.ADMIN)
    try:
        run = actions.retry_run(run)
    except TrainingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Run {run.pk} is queued again (attempt {run.attempt}).")
    return redirect("training-run", run_id=run.pk)


@login_required
def models(request):
    _require_training(request.user)
    return render(request, "training/models.html", {"artifacts": selectors.visible_artifacts(request.user)[:500]})


@login_required
def model_detail(request, artifact_id: int):
    artifact = get_object_or_404(ModelArtifact.objects.select_related("project", "run", "snapshot"), pk=artifact_id)
    require_role(request.user, artifact.project.slug, Role.RESEARCHER)
    return render(request, "training/model.html", {"artifact": artifact, "card": _card_body(artifact.card)})


def _card_body(card: str) -> str:
    """The card without its YAML front matter (which the hub reads and people need not)."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end != -1:
            return card[end + 5 :]
    return card
