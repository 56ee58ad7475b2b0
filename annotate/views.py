"""Annotation pages. With htmx a view renders only the fragment that changes; without it, the whole page,
and every form also works as a plain POST that redirects, so the pages work with JavaScript off."""

from __future__ import annotations

import itertools
import json
import uuid
from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.http import trigger_client_event

from training.launching import launch_judge_run
from training.models import TrainingRun
from training.selectors import TrainingError

from . import actions, browsing, dashboard, selectors
from .actions import Conflict, create_snapshot
from .exports import ExportError, canonical, iter_rows
from .exports.options import default_format
from .forms import (
    ExportForm,
    FlagForm,
    ImportForm,
    JudgeForm,
    JudgmentForm,
    MemberForm,
    ProjectForm,
    ProjectSettingsForm,
    SkipForm,
    judgment_form,
)
from .imports import MAX_ERRORS_REPORTED, ImportFailed, detect_format, parse_items, read_upload
from .judgments import STRENGTH_LABELS, InvalidJudgment
from .models import Flag, Item, Judge, Judgment, Kind, Membership, Role, Task
from .permissions import can_create_projects, require_role, visible_projects
from .rendering import word_diff


@never_cache
def healthz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return JsonResponse({"status": "unavailable"}, status=503)
    return JsonResponse({"status": "ok"})


@login_required
@require_safe  # GET and HEAD only: its forms post to other routes, so any other method gets 405
def home(request):
    memberships = {m.project_id: m.role for m in Membership.objects.filter(user=request.user)}
    projects = [(p, memberships.get(p.id, Role.ADMIN)) for p in visible_projects(request.user)]
    return render(
        request, "annotate/home.html", {"projects": projects, "can_create": can_create_projects(request.user)}
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_new(request):
    """The new-project form, with only the chosen kind's settings. ``?kind=`` picks the kind (the page's links
    without JavaScript; with it, htmx asks for the kind's fields, ``#kind-fields``, when the kind changes), and the
    other query parameters refill what was typed."""
    if not can_create_projects(request.user):
        raise PermissionDenied("Only researchers and admins create projects.")
    if request.method == "POST":
        form = ProjectForm(request.POST)
        if form.is_valid():
            project = actions.create_project(created_by=request.user, **form.cleaned_data)
            messages.success(request, f"Project {project.slug} created.")
            return redirect("project", slug=project.slug)
    else:
        form = ProjectForm(initial=request.GET.dict(), kind=request.GET.get("kind"))
    template = "annotate/project_new.html#kind-fields" if request.htmx else "annotate/project_new.html"
    return render(request, template, {"form": form, "kinds": Kind.choices})


@login_required
@require_safe  # GET and HEAD only: its forms post to other routes, so any other method gets 405
def project_detail(request, slug):
    project, membership = require_role(request.user, slug)
    context = {
        "project": project,
        "membership": membership,
        "mine": selectors.annotator_progress(project, request.user),
    }
    if membership.has_role(Role.RESEARCHER):
        context.update(
            progress=selectors.project_progress(project),
            agreement=dashboard.cached_summary(project),
            import_form=ImportForm(),
            export_form=ExportForm(project),
            snapshots=project.snapshots.all()[:20],
            open_reports=project.flags.filter(status=Flag.Status.OPEN).count(),
        )
    return render(request, "annotate/project.html", context)


# --- annotating -----------------------------------------------------------------------------------


# The keys shown on screen and handled by static/arbiter/arbiter.js.
CHOICE_KEYS = [("A", "A is better", "1"), ("B", "B is better", "2"), ("tie", "Tie", "3"), ("both_bad", "Both bad", "4")]
STRENGTH_KEYS = [(value, label, key) for (value, label), key in zip(STRENGTH_LABELS.items(), "qwer")]
SKIP_REASONS = [
    "I cannot judge this topic",
    "The prompt or responses are unreadable",
    "I need more context",
    "It would take too long",
]


def _task_context(task: Task | None, form: JudgmentForm | None = None, initial: dict | None = None) -> dict:
    if task is None:
        return {"task": None}
    # A task already answered is on screen to change that answer (a revision, reached by "Previous"): its form
    # starts from the current answer, and a submit records a judgment that supersedes it.
    revising = task.status == Task.Status.DONE
    answered = task.judgments.filter(is_current=True).first() if revising else None
    if form is None:
        # A new key per rendering of a task: resubmitting this very form (double click, retry) reuses it.
        form = judgment_form(task, initial={"idempotency_key": uuid.uuid4().hex, **(initial or {})})
        if answered is not None:
            form.initial.update(form.answer_initial(answered))
    shown = form.shown
    context = {
        "task": task,
        "revising": revising,
        "answered": answered,
        "kind_template": f"annotate/kinds/{task.project.kind}.html",
        "prompt": task.item.prompt,
        "shown": shown,
        "form": form,
        "choice_keys": CHOICE_KEYS,
        "strength_keys": STRENGTH_KEYS,
        "skip_form": SkipForm(),
        "skip_reasons": SKIP_REASONS,
        "flag_form": FlagForm(),
    }
    if len(shown) >= 2:
        # Raw texts, not the rendered markdown: the marks then point at the words the models wrote.
        context["diff"] = word_diff(shown[0][1].text, shown[1][1].text)
        context["diff_labels"] = (shown[0][0], shown[1][0])
    return context


def _render_task(request, project, task, form=None, status=200, error=None, notice=None, initial=None):
    # "Previous" goes to the last answer, and from a revision to the answer before that one.
    previous_url = reverse("annotate-previous", args=[project.slug])
    if task is not None and task.status == Task.Status.DONE:
        previous_url += f"?before={task.pk}"
    context = {
        "project": project,
        "mine": selectors.annotator_workload(project, request.user),
        "previous_url": previous_url,
        "error": error,
        "notice": notice,
        **_task_context(task, form, initial),
    }
    template = "annotate/annotate.html#task" if request.htmx else "annotate/annotate.html"
    return render(request, template, context, status=status)


def _own_task(request, slug, task_id):
    project, _ = require_role(request.user, slug, Role.ANNOTATOR)
    task = get_object_or_404(
        Task.objects.select_related("project", "item"), pk=task_id, project=project, annotator=request.user
    )
    return project, task


def _next_task(request, project, after=None):
    """The next task and, when the annotator may not work now (paused, not admitted), the reason instead."""
    try:
        return actions.assign_next_task(request.user, project, after=after), None
    except actions.NotAdmitted as exc:
        return None, str(exc)


def _int_param(request, name) -> int | None:
    value = request.GET.get(name, "")
    return int(value) if value.isdigit() else None


@never_cache
@login_required
@require_safe  # GET and HEAD only: its forms post to other routes, so any other method gets 405
def annotate(request, slug):
    """The annotator's current task. ``?after=<task id>`` gives the task after that one instead, which the
    page fetches ahead of time (the preload); ``?start_from=<response id>`` starts a demonstration from a
    response's text (the no-JavaScript path of the "start from" links)."""
    project, _ = require_role(request.user, slug, Role.ANNOTATOR)
    task, refusal = _next_task(request, project, after=_int_param(request, "after"))
    if refusal:
        return _render_task(request, project, None, error=refusal, status=403)
    initial = {}
    start_from = _int_param(request, "start_from")
    if task is not None and start_from in task.display_order and project.kind == Kind.DEMONSTRATION:
        initial = {"text": task.item.responses.get(pk=start_from).text, "based_on": start_from}
    return _render_task(request, project, task, initial=initial)


# Who may not change their answers: their work is under review or was not admitted (actions.NotAdmitted's cases).
NO_REVISIONS = {Membership.Status.PAUSED, Membership.Status.REFUSED}
NO_REVISIONS_MESSAGE = "Your answers cannot be changed while your work in this project is paused or not admitted."


@never_cache
@login_required
@require_safe  # GET and HEAD only: the revision posts to judge, like any answer
def previous(request, slug):
    """An answer given earlier, on screen to be changed: the annotator's last answered task, or with
    ``?before=<task id>`` (one of theirs) the one answered before it, so "Previous" walks back step by step. The
    form is filled with the current answer, the responses in the order the annotator saw them; it posts to
    ``judge``, which records a judgment that supersedes the old one and then shows the current task again."""
    project, membership = require_role(request.user, slug, Role.ANNOTATOR)
    if membership.status in NO_REVISIONS:
        # htmx swaps only 2xx answers: the "p" key's request gets the message with 200, a plain GET an honest 403.
        status = 200 if request.htmx else 403
        return _render_task(request, project, None, error=NO_REVISIONS_MESSAGE, status=status)
    anchor = None
    before = _int_param(request, "before")
    if before is not None or "before" in request.GET:
        anchor = get_object_or_404(
            Task.objects.select_related("project", "item"),
            pk=before,
            project=project,
            annotator=request.user,
            status=Task.Status.DONE,
        )
    task = selectors.previous_task(project, request.user, before=anchor)
    if task is not None:
        return _render_task(request, project, task)
    if anchor is not None:
        return _render_task(request, project, anchor, notice="This is the first item you answered in this project.")
    current, refusal = _next_task(request, project)
    return _render_task(
        request, project, current, error=refusal, notice="You have not answered anything in this project yet."
    )


def _revision_duration(task: Task, posted: int | None) -> int | None:
    """Time on task of a changed answer: the earlier answer's plus the time spent changing it (unknown without
    JavaScript: then the earlier answer's). Review compares annotators' time on task, and a quick change must not
    make careful work look rushed."""
    earlier = task.judgments.filter(is_current=True).values_list("duration_ms", flat=True).first()
    if earlier is None and posted is None:
        return None
    return min((earlier or 0) + (posted or 0), 2**31 - 1)


@login_required
@require_POST
def judge(request, slug, task_id):
    project, task = _own_task(request, slug, task_id)
    # An answer to a task answered before changes that answer (a revision: see ``previous``).
    revising = task.status == Task.Status.DONE
    if revising and Membership.objects.filter(project=project, user=request.user, status__in=NO_REVISIONS).exists():
        # A form sent again (its key already stored) changes nothing and goes through as a replay.
        if not task.judgments.filter(idempotency_key=request.POST.get("idempotency_key", "")).exists():
            raise PermissionDenied(NO_REVISIONS_MESSAGE)
    form = judgment_form(task, request.POST)
    error = None
    if form.is_valid():
        payload = form.payload()
        if revising:
            payload["duration_ms"] = _revision_duration(task, payload.get("duration_ms"))
        elif payload.get("duration_ms") is None:
            # Without JavaScript the page cannot time itself; the lease start is the next best clock.
            payload["duration_ms"] = int((timezone.now() - task.leased_at).total_seconds() * 1000)
        try:
            judgment, _ = actions.record_judgment(
                task, payload, form.cleaned_data["idempotency_key"], source=Judgment.Source.WEB
            )
        except InvalidJudgment as exc:
            error = str(exc)
        except Conflict as exc:
            # This task can no longer be answered (skipped, or its lease ran out and others finished the
            # item): showing it again would be a dead end, so the annotator moves on, told why.
            if not request.htmx:
                messages.error(request, str(exc))
                return redirect("annotate", slug=slug)
            following, refusal = _next_task(request, project)
            response = _render_task(request, project, following, error=refusal or str(exc))
            return trigger_client_event(response, "arbiter:conflict", {"task": task.pk, "message": str(exc)})
        else:
            if judgment.supersedes_id is not None:
                # No gold feedback on a changed answer: the first answer was the one checked (and told about).
                feedback = "Your earlier answer is changed; here is your current item again."
            else:
                feedback = selectors.gold_feedback(task, judgment)
            if not request.htmx:
                if feedback:
                    messages.info(request, feedback)
                return redirect("annotate", slug=slug)
            following, refusal = _next_task(request, project)
            response = _render_task(request, project, following, error=refusal, notice=feedback)
            # The page's outbox and drafts listen for this acknowledgement (static/arbiter/sync.js).
            done = selectors.annotator_progress(project, request.user)["done"]
            return trigger_client_event(
                response, "arbiter:saved", {"task": task.pk, "judgment": judgment.pk, "done": done}
            )
    else:
        error = "; ".join(form.non_field_errors()) or "Some answers are missing; see the marked fields."
    # The same task again, with the reason and the same idempotency key. htmx swaps only 2xx answers
    # by default, so the fragment is sent with 200; a plain POST gets an honest 400.
    response = _render_task(request, project, task, form, status=200 if request.htmx else 400, error=error)
    if request.htmx:
        trigger_client_event(response, "arbiter:invalid", {"task": task.pk, "message": error})
    return response


@login_required
@require_POST
def skip(request, slug, task_id):
    """Pass on a task, with a reason: the item goes back to the pool for others, never to this annotator."""
    project, task = _own_task(request, slug, task_id)
    form = SkipForm(request.POST)
    error = None
    if form.is_valid():
        try:
            actions.skip_task(task, form.cleaned_data["reason"])
        except (InvalidJudgment, Conflict) as exc:
            error = str(exc)
        else:
            if not request.htmx:
                messages.info(request, "Skipped.")
                return redirect("annotate", slug=slug)
            following, refusal = _next_task(request, project)
            response = _render_task(request, project, following, notice="Skipped.", error=refusal)
            return trigger_client_event(response, "arbiter:skipped", {"task": task.pk})
    else:
        error = "Say why you skip this item."
    return _render_task(request, project, task, status=200 if request.htmx else 400, error=error)


@login_required
@require_POST
def flag(request, slug, task_id):
    """Report the item (unsafe, broken, personal data, other); the task stays on screen to be answered."""
    project, task = _own_task(request, slug, task_id)
    form = FlagForm(request.POST)
    flagged = None
    if form.is_valid():
        try:
            flagged = actions.flag_task(task, form.cleaned_data["category"], form.cleaned_data["note"])
        except InvalidJudgment as exc:
            form.add_error(None, str(exc))
    if flagged is not None and not request.htmx:
        messages.success(request, f"Thank you: the item is flagged ({flagged.get_category_display().lower()}).")
        return redirect("annotate", slug=slug)
    context = {"project": project, "task": task, "flag_form": FlagForm() if flagged else form, "flagged": flagged}
    if request.htmx:
        # Only the flag panel changes, so a half-done answer on the page is left alone.
        return render(request, "annotate/_flag.html", context)
    return _render_task(request, project, task, status=400, error="; ".join(sum(form.errors.values(), [])))


# --- researcher pages ------------------------------------------------------------------------------


@login_required
@require_POST
def import_items(request, slug):
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    form = ImportForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Choose a file to import." if "file" in form.errors else _form_errors(form))
        return redirect("project", slug=slug)
    upload = form.cleaned_data["file"]
    skipped = [] if form.cleaned_data["skip_invalid"] else None
    try:
        parsed = parse_items(read_upload(upload), detect_format(upload.name), project.kind, skipped)
        report = actions.import_items(
            project,
            parsed,
            source={"file": upload.name, "by": request.user.username},
            votes_as=form.cleaned_data["votes_as"] or None,
            skipped=skipped,
        )
    except ImportFailed as exc:
        messages.error(request, exc.message)
    else:
        reasons = "".join(f"\nline {line}: {reason}" for line, reason in report.skipped[:MAX_ERRORS_REPORTED])
        messages.success(request, report.summary() + reasons)
    return redirect("project", slug=slug)


@login_required
@require_http_methods(["GET", "POST"])
def export(request, slug):
    """Download an export as JSONL, streamed (no split): the quick look; snapshots are the versioned kind.

    The project page posts its form here; a script can GET with the same fields as query parameters.
    """
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    data = request.POST if request.method == "POST" else request.GET
    form = ExportForm(project, data if "format" in data else {**data.dict(), "format": default_format(project.kind)})
    if not form.is_valid():
        return HttpResponse(_form_errors(form), status=400, content_type="text/plain")
    try:
        options = form.options(container="jsonl", test_size=0.0)
        chunks = iter_rows(project, options)
        first = next(chunks, None)  # bad options fail here, before the response starts
    except ExportError as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")

    def lines():
        for rows, _ in itertools.chain([first] if first else [], chunks):
            for row in rows:
                yield canonical(row) + b"\n"

    response = StreamingHttpResponse(lines(), content_type="application/jsonl; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-{options.format}.jsonl"'
    return response


@login_required
@require_POST
def snapshot(request, slug):
    """Create an immutable, hashed snapshot with the options of the export form."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    form = ExportForm(project, request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("project", slug=slug)
    try:
        created_snapshot, created = create_snapshot(project, form.options(), created_by=request.user)
    except ExportError as exc:
        messages.error(request, str(exc))
    else:
        what = "Created" if created else "Nothing changed since"
        messages.success(request, f"{what} snapshot {created_snapshot.pk} ({created_snapshot.content_hash[:12]}).")
    return redirect("project", slug=slug)


def _form_errors(form) -> str:
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())


@login_required
@require_http_methods(["GET", "POST"])
def members(request, slug):
    """Members and their roles (project admins). The add form takes a username, an email or a part of either
    (``MemberForm``), with suggestions from ``member_search`` as one types."""
    project, _ = require_role(request.user, slug, Role.ADMIN)
    form = MemberForm(request.POST or None, search_url=reverse("member-search", args=[slug]))
    if request.method == "POST":
        if "remove" in request.POST:
            membership = get_object_or_404(Membership, project=project, pk=request.POST["remove"])
            if membership.user_id == request.user.id:
                messages.error(request, "You cannot remove yourself.")
            else:
                actions.remove_member(membership)
                messages.success(request, f"Removed {membership.user.username}.")
            return redirect("members", slug=slug)
        if form.is_valid():
            membership = actions.add_member(project, form.cleaned_data["username"], form.cleaned_data["role"])
            found = f" (the only active user matching \u201c{form.partial}\u201d)" if form.partial else ""
            messages.success(request, f"{membership.user.username}{found} is now {membership.role}.")
            return redirect("members", slug=slug)
    return render(
        request,
        "annotate/members.html",
        {"project": project, "form": form, "rows": selectors.annotator_table(project), "roles": Role.choices},
        status=400 if form.errors else 200,
    )


# Suggestions start at this many characters: fewer would list users by a letter or two.
MEMBER_SEARCH_MIN = 2


@login_required
@require_safe  # GET and HEAD only
def member_search(request, slug):
    """Suggestions for the add-member form, as ``<option>`` elements of its datalist (htmx): at most
    ``SUGGESTIONS_SHOWN`` active users whose username or email contains ``?username=`` (or ``?q=``), by username
    only (emails stay unseen). Project admins only: anyone else gets the 403/404 of every admin page, so the user
    list does not leak."""
    require_role(request.user, slug, Role.ADMIN)
    query = (request.GET.get("username") or request.GET.get("q") or "").strip()
    users = selectors.matching_users(query) if len(query) >= MEMBER_SEARCH_MIN else []
    return render(request, "annotate/members.html#suggestions", {"suggestions": users})


# --- the researcher dashboard --------------------------------------------------------------------------------


@login_required
@require_safe  # GET and HEAD only: its forms post to other routes, so any other method gets 405
def project_dashboard(request, slug):
    """Agreement over time, gold accuracy, speed, biases, confusion matrices and the annotators under review.

    The numbers are cached by the newest judgment and status change (``dashboard.dashboard_data``); the status
    table is read fresh, since researchers act on it. ``?over=day`` plots agreement per day instead of per block.
    """
    project, membership = require_role(request.user, slug, Role.RESEARCHER)
    over = "day" if request.GET.get("over") == "day" else "block"
    data = dashboard.dashboard_data(project, over)
    context = {
        "project": project,
        "membership": membership,
        "over": over,
        "data": data,
        "summary": data["summary"],
        "charts": dashboard.dashboard_charts(data, project),
        "statuses": dashboard.status_rows(project),
        "reinstatable": dashboard.REINSTATABLE,
        "min_timed": dashboard.MIN_TIMED,
        "kappa_min_shared": dashboard.KAPPA_MIN_SHARED,
    }
    return render(request, "annotate/dashboard.html", context)


@login_required
@require_POST
def reinstate_member(request, slug):
    """Let a flagged, paused or refused annotator work again (researchers); a plain form that redirects."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    membership = get_object_or_404(
        Membership.objects.select_related("user"),
        project=project,
        pk=request.POST.get("membership") if str(request.POST.get("membership", "")).isdigit() else None,
        status__in=dashboard.REINSTATABLE,
    )
    actions.reinstate_annotator(membership, request.user)
    messages.success(request, f"{membership.user.username} is active again.")
    return redirect("dashboard", slug=slug)


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request, slug):
    """Instructions, gold items, qualification and automatic review of a running project (researchers)."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    form = ProjectSettingsForm(request.POST or None, instance=project)
    if request.method == "POST" and form.is_valid():
        actions.update_project_settings(project, **{name: form.cleaned_data[name] for name in form.Meta.fields})
        messages.success(request, "Settings saved.")
        return redirect("project", slug=slug)
    return render(request, "annotate/project_settings.html", {"project": project, "form": form})


# --- the data browser (researchers): items, one item, adjudication, more votes, the flags-and-skips queue -------


@login_required
@require_safe
def items(request, slug):
    """The items, filtered, searched and sorted; with htmx only the table is swapped in."""
    project, membership = require_role(request.user, slug, Role.RESEARCHER)
    context = {"project": project, "membership": membership, "rounds": browsing.rounds_of(project)}
    try:
        query = browsing.ItemQuery.parse(request.GET, project)
    except browsing.InvalidQuery as error:
        query, context["error"] = browsing.ItemQuery(), str(error)
    context["query"] = query
    context["share_kinds"] = project.kind in browsing.SHARE_KINDS
    if "error" not in context:
        actions.refresh_item_stats(project)
        context["page"] = browsing.item_page(project, query, with_responses=False)  # the table shows the prompt
    template = (
        "annotate/_items_table.html" if request.htmx and request.htmx.target == "items" else "annotate/items.html"
    )
    # htmx swaps only 2xx answers: a refused filter's message comes with 200 there, with an honest 400 otherwise.
    return render(request, template, context, status=400 if "error" in context and not request.htmx else 200)


def _project_item(project, item_id: int):
    return get_object_or_404(Item.objects.select_related("project", "round"), project=project, pk=item_id)


@login_required
@require_safe
def item_detail(request, slug, item_id):
    """One item as annotators saw it, every vote on it, its labels, flags and adjudications."""
    project, membership = require_role(request.user, slug, Role.RESEARCHER)
    item = _project_item(project, item_id)
    return render(request, "annotate/item.html", _item_context(project, membership, item, request))


def _item_context(project, membership, item, request, **extra) -> dict:
    return {
        "project": project,
        "membership": membership,
        "item": item,
        "detail": browsing.item_detail(item, models=request.GET.get("models") == "1"),
        "models": request.GET.get("models") == "1",
        "choices": [("A", "A is better"), ("B", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad")],
        "strengths": sorted(STRENGTH_LABELS.items()),
        "back": _safe_next(request, ""),
        **extra,
    }


def _safe_next(request, default: str) -> str:
    """The page to return to (the browser list with its filters), if it is one of ours."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    return target if url_has_allowed_host_and_scheme(target, allowed_hosts=None) and target.startswith("/") else default


@login_required
@require_POST
def adjudicate(request, slug, item_id):
    """Record a researcher's final label (a plain form that redirects; 400 with the reason when it is invalid)."""
    project, membership = require_role(request.user, slug, Role.RESEARCHER)
    item = _project_item(project, item_id)
    if project.kind == Kind.PAIRWISE:
        payload = {
            key: request.POST.get(key) for key in ("choice", "strength") if request.POST.get(key) not in (None, "")
        }
    else:
        try:
            payload = json.loads(request.POST.get("answer") or "{}")
        except json.JSONDecodeError as error:
            payload = None
            problem = f"The answer is not JSON: {error}."
    payload_reason = request.POST.get("reason", "")
    try:
        if payload is None:
            raise InvalidJudgment(problem)
        if not isinstance(payload, dict):
            raise InvalidJudgment("The answer must be a JSON object.")
        actions.adjudicate(item, request.user, {**payload, "reason": payload_reason})
    except InvalidJudgment as error:
        context = _item_context(project, membership, item, request, adjudication_error=str(error))
        return render(request, "annotate/item.html", context, status=400)
    messages.success(request, "Adjudicated: exports and snapshots now take this label for the item.")
    return redirect(
        reverse("item", args=[slug, item.pk])
        + (f"?next={quote(request.POST['next'])}" if _safe_next(request, "") else "")
    )


@login_required
@require_POST
def more_votes(request, slug):
    """Send the chosen items back for more votes (from the list's checkboxes or an item's page)."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    back = _safe_next(request, reverse("items", args=[slug]))
    ids = request.POST.getlist("items")
    extra = request.POST.get("extra", "1")
    try:
        if not all(value.isdigit() for value in ids) or not extra.isdigit():
            raise InvalidJudgment("Item ids and the number of votes are whole numbers.")
        n = actions.request_more_votes(project, [int(value) for value in ids], int(extra))
    except InvalidJudgment as error:
        messages.error(request, str(error))
        return redirect(back)
    messages.success(
        request, f"{n} item{'s' if n != 1 else ''} will get {extra} more vote{'s' if extra != '1' else ''}."
    )
    return redirect(back)


QUEUE_STATUSES = ("open", "resolved", "dismissed", "all")


@login_required
@require_safe
def queue(request, slug):
    """Flags and skip reasons, open ones first: resolve or dismiss each."""
    project, membership = require_role(request.user, slug, Role.RESEARCHER)
    wanted = request.GET.get("status", "open")
    if wanted not in QUEUE_STATUSES:
        wanted = "open"
    entries = selectors.report_queue(project, wanted)
    context = {"project": project, "membership": membership, "entries": entries, "status": wanted}
    context["statuses"] = QUEUE_STATUSES
    return render(request, "annotate/queue.html", context)


@login_required
@require_POST
def resolve_report(request, slug, kind, report_id):
    """Resolve or dismiss one entry of the queue (a flag, or a skipped task's reason)."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    if kind not in ("flag", "skip"):
        raise Http404("The queue holds flags and skips.")
    status, resolution = request.POST.get("status", ""), request.POST.get("resolution", "")
    try:
        if kind == "flag":
            actions.resolve_flag(
                get_object_or_404(Flag, project=project, pk=report_id), request.user, status, resolution
            )
        else:
            task = get_object_or_404(Task, project=project, pk=report_id, status=Task.Status.SKIPPED)
            actions.review_skip(task, request.user, status, resolution)
    except (InvalidJudgment, Conflict) as error:
        messages.error(request, str(error))
        return redirect(_safe_next(request, reverse("queue", args=[slug])))
    messages.success(request, f"The {'flag' if kind == 'flag' else 'skip'} is {status}.")
    return redirect(_safe_next(request, reverse("queue", args=[slug])))


# --- AI judges (docs/ai-feedback.md) ----------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def judges(request, slug):
    """The project's AI judges with their votes counted, the runs that cast them, and a form to add one with the
    chosen backend's fields (``?backend=``; with htmx, choosing a backend swaps its fields in, ``#judge-fields``).
    Researchers add judges; launching a judge run (``judge_run``) is for admins, as every run is."""
    project, membership = require_role(request.user, slug, Role.RESEARCHER)
    form = JudgeForm(request.POST or None, project=project, backend=request.GET.get("backend"))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            judge = actions.add_judge(
                project,
                data["name"],
                data["backend"],
                data.get("model", ""),
                base_url=data.get("base_url", ""),
                api_key_env=data.get("api_key_env", ""),
                template=data.get("template", ""),
                principle=data.get("principle", ""),
                options=data.get("options") or {},
                created_by=request.user,
            )
        except actions.InvalidJudge as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Judge {judge.name} added: “Judge items” casts its votes.")
            return redirect("judges", slug=slug)
    context = {
        "project": project,
        "membership": membership,
        "form": form,
        "rows": selectors.judge_rows(project),
        "runs": TrainingRun.objects.filter(project=project, kind="judge").select_related("launched_by")[:10],
        "can_launch": membership.has_role(Role.ADMIN),
        "backends": Judge.Backend.choices,
    }
    if request.htmx and request.method == "GET":
        return render(request, "annotate/judges.html#judge-fields", context)
    return render(request, "annotate/judges.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def judge_run(request, slug, name):
    """“Judge items”: a judge run over the items the judge has not voted on (``max_items`` of them at most), then
    its page; a refusal is a message on the judges page. Admins only, like launching any run."""
    project, _ = require_role(request.user, slug, Role.ADMIN)
    judge = get_object_or_404(Judge, project=project, name=name)
    text = (request.POST.get("max_items") or "").strip()
    if text and (not text.isdigit() or len(text) > 9 or int(text) < 1):
        messages.error(request, "At most how many items: a whole number of at least 1, or empty for all.")
        return redirect("judges", slug=slug)
    try:
        run = launch_judge_run(judge, max_items=int(text) if text else None, launched_by=request.user)
    except TrainingError as exc:
        messages.error(request, f"Judge {judge.name}: {exc}")
        return redirect("judges", slug=slug)
    return redirect("training-run", run_id=run.pk)
