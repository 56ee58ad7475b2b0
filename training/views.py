"""Training pages. Researchers read runs and models; admins launch and cancel; annotators see none of it
(a member whose role is too low gets 403, a non-member 404). With htmx the run page polls only its status fragment."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from annotate.models import Project, Role
from annotate.permissions import require_role

from . import kinds, launching, registration, rounds, selectors, tasks
from .forms import LaunchForm, NextRoundForm
from .models import ModelArtifact, RoundPurpose, RunRound, TrainingRun
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
@require_safe
def runs(request):
    _require_training(request.user)
    tasks.reap_stale_runs()
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
    """The launch form of one kind (``?kind=``; the first kind by default): only that kind's inputs and options.
    Changing the kind with htmx swaps the kind's fields (the ``kind-fields`` partial); without JavaScript the kind
    chooser reloads the page with ``?kind=``."""
    _require_training(request.user)
    if not selectors.training_projects(request.user, Role.ADMIN).exists():
        raise PermissionDenied("Only project admins launch training.")
    initial = {
        name: request.GET.get(name)
        for name in ("project", "kind", "base_model", "parent", "target_project", "baseline", "teacher")
        if request.GET.get(name)
    }
    form = LaunchForm(
        request.POST or None, request.FILES or None, user=request.user, kind=request.GET.get("kind"), initial=initial
    )
    if request.method == "POST" and form.is_valid():
        run = _launch(request, form)
        if run is not None:
            # No "queued" message: the run page shows the run's status as it changes.
            return redirect("training-run", run_id=run.pk)
    context = {
        "form": form,
        "kind": form.kind,
        "kinds": [kinds.get(name) for name in kinds.launchable()],
        "snapshot_kinds": kinds.names(reads=kinds.SNAPSHOT),
        "prompt_kinds": kinds.names(reads=kinds.PROMPTS),
    }
    if request.htmx and request.method == "GET":
        return render(request, "training/run_new.html#kind-fields", context)
    return render(request, "training/run_new.html", context, status=400 if form.errors else 200)


def _launch(request, form: LaunchForm) -> TrainingRun | None:
    """Launch what the valid form describes; a refusal is put on the form (at the option it names) and None returned."""
    data = form.cleaned_data
    try:
        project, _ = require_role(request.user, data["project"], Role.ADMIN)
        if data.get("target_project"):
            require_role(request.user, data["target_project"], Role.ADMIN)
        prompts = launching.Prompts(
            source=data.get("prompts_from") or "",
            data=data.get("prompts_data"),
            max_prompts=data.get("max_prompts"),
            file_name=data["prompts_file"].name if data.get("prompts_file") else "",
        )
        return launching.launch_run(
            project=project,
            kind=form.kind.name,
            base_model=data["base_model"],
            snapshot=data.get("snapshot"),
            values=data["values"],
            launched_by=request.user,
            reward_models=data.get("reward_model_values") or [],
            target_project=data.get("target_project") or None,
            prompts=prompts,
            baseline=data.get("baseline") or None,
            parent=data.get("parent"),
            teacher=data.get("teacher") or None,
        )
    except TrainingError as exc:
        form.add_error(form.field_for_message(str(exc)), str(exc))
        return None


def _run_page(run: TrainingRun, membership, user) -> dict:
    """The run page's reads (selectors.run_page), and the next-round form where it offers one."""
    context = selectors.run_page(run, user, membership.has_role(Role.ADMIN))
    if context.get("can_start_next"):
        context["next_form"] = NextRoundForm(user=user)
    return context


@never_cache
@login_required
@require_safe
def run_detail(request, run_id: int):
    run, membership = _run(request, run_id)
    if run.is_active:
        tasks.reap_stale_runs()
        run.refresh_from_db()
    template = "training/run.html#status" if request.htmx else "training/run.html"
    return render(request, template, _run_page(run, membership, request.user))


@login_required
@require_POST
def run_cancel(request, run_id: int):
    run, membership = _run(request, run_id, Role.ADMIN)
    run = launching.cancel_run(run)
    if request.htmx:
        return render(request, "training/run.html#status", _run_page(run, membership, request.user))
    messages.info(request, f"Cancel requested for run {run.pk}.")
    return redirect("training-run", run_id=run.pk)


@login_required
@require_POST
def run_retry(request, run_id: int):
    run, _ = _run(request, run_id, Role.ADMIN)
    try:
        run = launching.retry_run(run)
    except TrainingError as exc:
        messages.error(request, str(exc))
    else:  # what happened, not the status: that changes under the message, and the page shows it live
        messages.success(request, f"Retried as attempt {run.attempt}.")
    return redirect("training-run", run_id=run.pk)


@login_required
@require_safe
def models(request):
    _require_training(request.user)
    return render(request, "training/models.html", {"artifacts": selectors.visible_artifacts(request.user)[:500]})


@login_required
@require_safe
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


# --- the loop: next round, review, human evaluation, the rounds chain ------------------------------------


@login_required
@require_POST
def run_next_round(request, run_id: int):
    """ "Start the next round": a generate run with this run's policy, into the project as its next round."""
    run, _ = _run(request, run_id, Role.ADMIN)
    form = NextRoundForm(request.POST, user=request.user)
    if not form.is_valid():
        messages.error(request, " ".join(str(e) for errors in form.errors.values() for e in errors))
        return redirect("training-run", run_id=run.pk)
    target = form.cleaned_data["target_project"] or None
    if target:
        require_role(request.user, target, Role.ADMIN)
    try:
        child = launching.start_next_round(
            run,
            launched_by=request.user,
            target_project=target,
            values=form.cleaned_data["values"],
            prompts=launching.Prompts(
                source=form.cleaned_data["prompts_from"], max_prompts=form.cleaned_data["max_prompts"]
            ),
        )
    except TrainingError as exc:
        messages.error(request, str(exc))
        return redirect("training-run", run_id=run.pk)
    messages.success(
        request, f"Run {child.pk} writes the next round of {(child.target_project or child.project).slug}."
    )
    return redirect("training-run", run_id=child.pk)


def _target(request, role=Role.ADMIN):
    slug = request.POST.get("project", "")
    if not slug:
        raise TrainingError("Choose a project.")
    project, _ = require_role(request.user, slug, role)
    return project


@login_required
@require_POST
def run_send_kept(request, run_id: int):
    run, _ = _run(request, run_id, Role.ADMIN)
    try:
        round_ = rounds.send_kept_for_review(run, _target(request), created_by=request.user)
    except TrainingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"The kept samples are round {round_.number} of {round_.project.slug}.")
    return redirect("training-run", run_id=run.pk)


@login_required
@require_POST
def run_human_eval(request, run_id: int):
    run, _ = _run(request, run_id, Role.ADMIN)
    try:
        round_ = rounds.create_human_eval_round(run, _target(request), created_by=request.user)
    except TrainingError as exc:
        messages.error(request, str(exc))
        return redirect("training-run", run_id=run.pk)
    messages.success(request, f"Round {round_.number} of {round_.project.slug} asks annotators to compare old and new.")
    return redirect("training-human-eval", run_id=run.pk)


@never_cache
@login_required
@require_safe
def human_eval(request, run_id: int):
    """The human win rate of the new policy over the baseline, with its 95% confidence interval."""
    run, _ = _run(request, run_id)
    link = (
        RunRound.objects.filter(run=run, purpose=RoundPurpose.HUMAN_EVAL)
        .select_related("round", "round__project")
        .first()
    )
    if link is None:
        raise Http404("This run has no human evaluation round.")
    require_role(request.user, link.round.project.slug, Role.RESEARCHER)
    context = {
        "run": run,
        "round": link.round,
        "result": selectors.human_eval_results(link.round),
        "items": link.round.items.count(),
    }
    return render(request, "training/human_eval.html", context)


@never_cache
@login_required
@require_safe
def project_rounds(request, slug: str):
    """The project's rounds as a chain: round N → its snapshots → reward models → policies → round N + 1."""
    project, membership = require_role(request.user, slug, Role.RESEARCHER)
    context = {
        "project": project,
        "steps": selectors.round_chain(project),
        "can_manage": membership.has_role(Role.ADMIN),
    }
    return render(request, "training/rounds.html", context)


# --- bring your own base model ---------------------------------------------------------------------------


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def model_register(request):
    """Register a base model from a folder or GGUF file under MODEL_ROOTS (training.registration): checked at
    once, written by the worker (de-quantising a GGUF file outlasts a web request)."""
    _require_training(request.user)
    if not selectors.training_projects(request.user, Role.ADMIN).exists():
        raise PermissionDenied("Only project admins register base models.")
    values = {"name": "", "source": "", "kind": "causal-lm"}
    error = ""
    if request.method == "POST":
        values = {key: request.POST.get(key, default).strip() for key, default in values.items()}
        try:
            src = registration.queue_registration(
                values["name"], values["source"], values["kind"], requested_by=request.user.get_username()
            )
        except TrainingError as exc:
            error = str(exc)
        else:
            messages.success(
                request, f"{src.name} is queued: the worker writes it to {src.destination} (see its line below)."
            )
            return redirect("training-model-register")
    context = {
        "values": values,
        "error": error,
        "kinds": registration.MODEL_KINDS,
        "roots": selectors.model_roots(),
        "registrations": registration.recent_registrations(),
    }
    return render(request, "training/model_register.html", context, status=400 if error else 200)
