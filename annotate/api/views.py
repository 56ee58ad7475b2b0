"""REST API: thin views that parse, check the role, call an action or selector, and answer."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, parser_classes
from rest_framework.exceptions import NotFound, ParseError, PermissionDenied
from rest_framework.parsers import FileUploadParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from training.api.serializers import RunDetailSerializer
from training.launching import launch_judge_run
from training.selectors import TrainingError

from .. import actions, browsing, judge_agreement, selectors, sql
from ..exports import ExportError, ExportOptions, snapshot_files
from ..imports import detect_format, parse_items, read_upload
from ..models import Flag, Item, Judge, Judgment, Membership, Role, Snapshot, Task
from ..permissions import can_create_projects, require_role, visible_projects
from .auth import TokenAuthentication
from .serializers import (
    AdjudicationInSerializer,
    ExportOptionsSerializer,
    FlagInSerializer,
    FlagSerializer,
    ImportResultSerializer,
    ItemPageSerializer,
    ItemRowSerializer,
    JudgeInSerializer,
    JudgeRunInSerializer,
    JudgeSerializer,
    JudgmentInSerializer,
    JudgmentSerializer,
    MemberInSerializer,
    MemberSerializer,
    MoreVotesInSerializer,
    ProjectCreateSerializer,
    ProjectSerializer,
    ProjectSettingsSerializer,
    ResolutionInSerializer,
    SkipInSerializer,
    SnapshotSerializer,
    TaskSerializer,
    judge_payload,
    judgment_payload,
    task_payload,
)

# The schema of the views with their own TokenAuthentication (api/auth.py): the same schemes as every other view.
HOT_PATH_AUTH = [{"tokenAuth": []}, {"cookieAuth": []}]


@extend_schema(methods=["GET"], responses=ProjectSerializer(many=True))
@extend_schema(methods=["POST"], request=ProjectCreateSerializer, responses={201: ProjectSerializer})
@api_view(["GET", "POST"])
def projects(request):
    """The projects you are a member of; POST creates one (you become its admin)."""
    if request.method == "GET":
        return Response(ProjectSerializer(visible_projects(request.user), many=True).data)
    if not can_create_projects(request.user):
        raise PermissionDenied("Only researchers and admins create projects.")
    body = ProjectCreateSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    project = actions.create_project(created_by=request.user, **body.validated_data)
    return Response(ProjectSerializer(project).data, status=status.HTTP_201_CREATED)


@extend_schema(
    methods=["GET"],
    responses=inline_serializer(
        "ProjectDetail",
        {"project": ProjectSerializer(), "role": serializers.CharField(), "progress": serializers.DictField()},
    ),
)
@extend_schema(methods=["PATCH"], request=ProjectSettingsSerializer, responses=ProjectSerializer)
@api_view(["GET", "PATCH"])
def project_detail(request, slug: str):
    """The project, your role and progress; PATCH changes its settings (researchers: gold, qualification, review)."""
    if request.method == "PATCH":
        project, _ = require_role(request.user, slug, Role.RESEARCHER)
        body = ProjectSettingsSerializer(project, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        project = actions.update_project_settings(project, **body.validated_data)
        return Response(ProjectSerializer(project).data)
    project, membership = require_role(request.user, slug)
    if membership.has_role(Role.RESEARCHER):
        progress = selectors.project_progress(project)
    else:
        progress = selectors.annotator_progress(project, request.user)
    return Response({"project": ProjectSerializer(project).data, "role": membership.role, "progress": progress})


@extend_schema(
    parameters=[OpenApiParameter("after", int, description="The task on screen; returns the one after it (preload).")],
    responses={200: TaskSerializer, 204: OpenApiResponse(description="Nothing left for you in this project.")},
    auth=HOT_PATH_AUTH,
)
@api_view(["GET"])
@authentication_classes([TokenAuthentication, SessionAuthentication])  # the token lookup without the ORM
def next_task(request, slug: str):
    """Your next task in the project: one you hold, else a newly leased item; 204 when nothing is left."""
    after = request.query_params.get("after")
    if after is not None and not after.isdigit():
        raise ParseError("after must be a task id.")
    after = int(after) if after else None
    # Any membership has the annotator role (the lowest), so a member needs no further check; non-members
    # (superusers among them) take require_role itself.
    found = actions.assign_next_task_by_slug(request.user, slug, after=after)
    if found is None:
        project, _ = require_role(request.user, slug, Role.ANNOTATOR)
        task = actions.assign_next_task(request.user, project, after=after)
    else:
        task = found[1]
    if task is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(task_payload(task))


def _own_task(request, task_id: int) -> Task:
    # The task, its project and item, and whether the user is (still) a member of the project: one query.
    found = sql.task_with_project_and_item(task_id, request.user.id)
    task, is_member = found if found else (None, False)
    # Another annotator's task is reported as missing: its existence is not theirs to know.
    if task is None or task.annotator_id != request.user.id:
        raise NotFound("No such task.")
    if not is_member:
        require_role(request.user, task.project.slug, Role.ANNOTATOR)  # 404 unless a superuser
    return task


@extend_schema(responses=TaskSerializer)
@api_view(["GET"])
def task_detail(request, task_id: int):
    return Response(task_payload(_own_task(request, task_id)))


@extend_schema(
    request=JudgmentInSerializer,
    responses={
        201: JudgmentSerializer,
        200: OpenApiResponse(
            JudgmentSerializer, description="The same idempotency_key with the same answer again: the first judgment."
        ),
        409: OpenApiResponse(
            description="The task can no longer be answered, or the idempotency_key was used for another task or a different answer."
        ),
    },
    auth=HOT_PATH_AUTH,
)
@api_view(["POST"])
@authentication_classes([TokenAuthentication, SessionAuthentication])  # the token lookup without the ORM
@parser_classes([JSONParser])
def task_judgments(request, task_id: int):
    """Answer a task. The same ``idempotency_key`` again returns the first judgment (200), never a second row."""
    task = _own_task(request, task_id)
    if not isinstance(request.data, dict):
        raise ParseError("The body must be a JSON object.")
    judgment, created = actions.record_judgment(
        task, request.data, request.data.get("idempotency_key"), source=Judgment.Source.API
    )
    body = judgment_payload(judgment)
    feedback = selectors.gold_feedback(task, judgment)
    if feedback:
        body["feedback"] = feedback
    return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(
    request=SkipInSerializer, responses={200: TaskSerializer, 409: OpenApiResponse(description="Already answered.")}
)
@api_view(["POST"])
@parser_classes([JSONParser])
def task_skip(request, task_id: int):
    """Pass on a task with a reason: the item goes back to the pool for others, never to you again."""
    task = _own_task(request, task_id)
    body = SkipInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    return Response(task_payload(actions.skip_task(task, body.validated_data["reason"])))


@extend_schema(request=FlagInSerializer, responses={201: FlagSerializer})
@api_view(["POST"])
@parser_classes([JSONParser])
def task_flags(request, task_id: int):
    """Flag the task's item (unsafe, broken, personal data, other); the task stays yours to answer or skip."""
    task = _own_task(request, task_id)
    body = FlagInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    flag = actions.flag_task(task, body.validated_data["category"], body.validated_data.get("note", ""))
    return Response(FlagSerializer(flag).data, status=status.HTTP_201_CREATED)


@extend_schema(
    methods=["POST"],
    request={"multipart/form-data": inline_serializer("ItemUpload", {"file": serializers.FileField()})},
    parameters=[
        OpenApiParameter("format", str, enum=["jsonl", "csv", "parquet"], description="Default: from the file name."),
        OpenApiParameter(
            "votes_as",
            str,
            description='Record each preference row\'s own label (TRL/HH "chosen") as a vote of this annotator.',
        ),
        OpenApiParameter(
            "skip_invalid", bool, description='Import the valid rows and list the invalid ones under "skipped".'
        ),
    ],
    responses={201: ImportResultSerializer, 400: OpenApiResponse(description="Refused whole, with line numbers.")},
)
@extend_schema(
    methods=["GET"],
    parameters=[
        OpenApiParameter("page", int),
        OpenApiParameter("page_size", int, description=f"At most {selectors.ITEMS_PAGE_MAX}."),
        OpenApiParameter("round", int, description="The round's number."),
        OpenApiParameter("status", str, enum=list(browsing.STATUSES)),
        OpenApiParameter("agreement", str, enum=list(browsing.AGREEMENTS), description="Pairwise and ranking."),
        OpenApiParameter("min_share", float, description="The winner's share of the votes is at least this."),
        OpenApiParameter("max_share", float, description="The winner's share of the votes is at most this."),
        OpenApiParameter("flagged", bool, description="Has an open flag."),
        OpenApiParameter("skipped", bool, description="Someone skipped it."),
        OpenApiParameter("adjudicated", bool),
        OpenApiParameter("purpose", str, enum=list(browsing.PURPOSES)),
        OpenApiParameter("annotator", str, description="A pseudonym (or judge:<name>): the items they voted on."),
        OpenApiParameter("judge", str, description="An AI judge's name: the items it voted on (parsed or not)."),
        OpenApiParameter(
            "judges",
            str,
            enum=list(browsing.JUDGE_FILTERS),
            description="disagree: items where two judges' current answers differ or a judge was position-inconsistent.",
        ),
        OpenApiParameter("q", str, description="Words to find in the prompt or a response (all of them)."),
        OpenApiParameter("sort", str, enum=list(browsing.SORTS)),
    ],
    responses=ItemPageSerializer,
)
@api_view(["GET", "POST"])
@parser_classes([MultiPartParser, FileUploadParser])
def project_items(request, slug: str):
    """GET: the project's items, paged by id, with the external id each is known by (the content hash for rows
    imported without an id), for vote files made elsewhere. POST: import items (JSONL, CSV or Parquet), all or
    nothing; duplicates are skipped and reported. Researchers and admins."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    if request.method == "GET":
        params = request.query_params.copy()
        params.setdefault("page_size", "100")
        query = browsing.ItemQuery.parse(params, project)
        actions.refresh_item_stats(project)
        page = browsing.item_page(project, query)
        return Response(
            {
                "count": page.count,
                "page": query.page,
                "page_size": query.page_size,
                "results": ItemRowSerializer(page.items, many=True).data,
            }
        )
    upload = request.data.get("file")
    if upload is None or isinstance(upload, str):
        raise ParseError('Send the file as multipart field "file".')
    fmt = detect_format(upload.name or "", request.query_params.get("format"))
    skip_invalid = _flag(request, "skip_invalid")
    data = read_upload(upload)
    skipped = [] if skip_invalid else None
    parsed = parse_items(data, fmt, project.kind, skipped)
    report = actions.import_items(
        project,
        parsed,
        source={"file": upload.name, "by": request.user.username},
        votes_as=request.query_params.get("votes_as"),
        skipped=skipped,
    )
    body = {
        "created": report.created,
        "duplicates": [{"line": line, "id": ext} for line, ext in report.duplicates],
        "repeated_texts": report.repeated_texts,
        "empty_responses": report.empty_responses,
        "skipped": [{"line": line, "reason": reason} for line, reason in report.skipped],
        "votes": report.votes.created if report.votes else None,
        "message": report.summary(),
    }
    return Response(body, status=status.HTTP_201_CREATED)


def _positive(request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1 or len(value) > 9:
        raise ParseError(f"{name} must be a positive integer.")
    return int(value)


def _flag(request, name: str) -> bool:
    value = request.query_params.get(name, "0").lower()
    if value not in ("0", "1", "true", "false"):
        raise ParseError(f"{name} must be 1 or 0.")
    return value in ("1", "true")


@extend_schema(
    parameters=[
        OpenApiParameter(
            "source",
            str,
            enum=list(selectors.SOURCES),
            description="Whose votes the agreement figures read: people's (human, the default), AI judges' (ai) or "
            "all. `judges` (each AI judge against people) is the same whatever it says.",
        )
    ],
    responses=OpenApiTypes.OBJECT,
)
@api_view(["GET"])
def project_agreement(request, slug: str):
    """Agreement between annotators (researchers and admins), and each AI judge measured against people
    (``judges``: agreement and Cohen's κ with every person and with the people's majority, gold accuracy, position
    consistency, length bias)."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    source = request.query_params.get("source", selectors.HUMAN)
    if source not in selectors.SOURCES:
        raise ParseError(f"source must be one of {', '.join(selectors.SOURCES)}.")
    return Response(judge_agreement.judge_report(project, source))


@extend_schema(methods=["GET"], responses=MemberSerializer(many=True))
@extend_schema(methods=["POST"], request=MemberInSerializer, responses={201: MemberSerializer})
@api_view(["GET", "POST"])
def project_members(request, slug: str):
    """Members and their roles (admins); POST adds a member or changes a role (the user must exist)."""
    project, _ = require_role(request.user, slug, Role.ADMIN)
    if request.method == "GET":
        members = project.memberships.select_related("user")
        return Response(MemberSerializer(members, many=True).data)
    body = MemberInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    if not get_user_model().objects.filter(username=body.validated_data["username"]).exists():
        raise NotFound("No such user.")
    membership = actions.add_member(project, body.validated_data["username"], body.validated_data["role"])
    return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)


@extend_schema(responses={204: None})
@api_view(["DELETE"])
def project_member(request, slug: str, username: str):
    project, _ = require_role(request.user, slug, Role.ADMIN)
    membership = get_object_or_404(Membership, project=project, user__username=username)
    if membership.user_id == request.user.id:
        raise PermissionDenied("You cannot remove yourself.")
    actions.remove_member(membership)
    return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(methods=["GET"], responses=SnapshotSerializer(many=True))
@extend_schema(
    methods=["POST"],
    request=ExportOptionsSerializer,
    responses={
        201: SnapshotSerializer,
        200: OpenApiResponse(SnapshotSerializer, description="Same options, unchanged votes: the existing snapshot."),
    },
)
@api_view(["GET", "POST"])
@parser_classes([JSONParser])
def project_exports(request, slug: str):
    """Snapshots of the project (researchers and admins); POST exports a new immutable, hashed snapshot."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    if request.method == "GET":
        return Response(SnapshotSerializer(project.snapshots.all(), many=True).data)
    if not isinstance(request.data, dict):
        raise ParseError("The body must be a JSON object of export options.")
    try:
        options = ExportOptions.from_dict(dict(request.data))
    except TypeError as exc:
        raise ExportError(str(exc)) from None
    snapshot, created = actions.create_snapshot(project, options, created_by=request.user)
    return Response(
        SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
    )


def _snapshot_for(request, snapshot_id: int) -> Snapshot:
    snapshot = Snapshot.objects.select_related("project").filter(pk=snapshot_id).first()
    if snapshot is None:
        raise NotFound("No such snapshot.")
    require_role(request.user, snapshot.project.slug, Role.RESEARCHER)
    return snapshot


@extend_schema(responses=SnapshotSerializer)
@api_view(["GET"])
def export_detail(request, snapshot_id: int):
    """A snapshot: options, content hash, counts, agreement summary and its downloadable splits."""
    return Response(SnapshotSerializer(_snapshot_for(request, snapshot_id)).data)


@extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
@api_view(["GET"])
def export_file(request, snapshot_id: int, split: str):
    """Download one split of a jsonl or parquet snapshot (an hf snapshot is a folder on the server)."""
    snapshot = _snapshot_for(request, snapshot_id)
    files = snapshot_files(snapshot)
    if split not in files:
        raise NotFound("No such split.")
    if snapshot.options["container"] == "hf":
        raise ParseError("An hf snapshot is a folder; read it with datasets.load_from_disk on the server.")
    path = files[split]
    # The file's own name: a criterion's split name ("test:<criterion>") may hold characters a file name cannot.
    return FileResponse(
        open(path, "rb"), as_attachment=True, filename=f"{snapshot.project.slug}-{snapshot.pk}-{Path(path).name}"
    )


@extend_schema(responses={(200, "text/markdown"): OpenApiTypes.STR})
@api_view(["GET"])
def export_card(request, snapshot_id: int):
    """Download a snapshot's dataset card (its README.md: YAML front matter for the Hugging Face hub, provenance)."""
    snapshot = _snapshot_for(request, snapshot_id)
    card = snapshot.folder / "README.md"
    if not card.is_file():
        raise NotFound(f"The card of snapshot {snapshot.pk} is missing from the server.")
    response = HttpResponse(card.read_bytes(), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{snapshot.project.slug}-{snapshot.pk}-README.md"'
    return response


@extend_schema(request=None, responses=MemberSerializer)
@api_view(["POST"])
def project_member_reinstate(request, slug: str, username: str):
    """Let a flagged, paused or refused annotator work again (researchers); their past votes stay as they are."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    membership = get_object_or_404(Membership, project=project, user__username=username)
    return Response(MemberSerializer(actions.reinstate_annotator(membership, request.user)).data)


# --- the data browser ---------------------------------------------------------------------------------------


def _item_for(request, item_id: int, role: str = Role.RESEARCHER) -> Item:
    """An item of a project where the user has ``role``; 404 for anyone who is not a member (as for projects)."""
    item = Item.objects.select_related("project", "round").filter(pk=item_id).first()
    if item is None:
        raise NotFound("No such item.")
    require_role(request.user, item.project.slug, role)
    return item


@extend_schema(
    parameters=[OpenApiParameter("models", bool, description="Add the Dawid-Skene and Bradley-Terry labels.")],
    responses=OpenApiTypes.OBJECT,
)
@api_view(["GET"])
def item_detail(request, item_id: int):
    """One item with every vote on it (pseudonym, display order, answer, strength, rationale, time, source,
    superseded edits), its label under each aggregation and its adjudications. Researchers and admins."""
    item = _item_for(request, item_id)
    return Response(browsing.item_detail(item, models=_flag(request, "models")))


@extend_schema(request=AdjudicationInSerializer, responses={201: OpenApiTypes.OBJECT})
@api_view(["POST"])
@parser_classes([JSONParser])
def item_adjudication(request, item_id: int):
    """A researcher's final label on the item, with a reason: exports and snapshots take it instead of the
    annotators' aggregate. A new one supersedes the last. Researchers and admins."""
    item = _item_for(request, item_id)
    actions.adjudicate(item, request.user, request.data)
    body = browsing.item_detail(item)["adjudication"]
    return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(request=MoreVotesInSerializer, responses={200: OpenApiTypes.OBJECT})
@api_view(["POST"])
@parser_classes([JSONParser])
def project_more_votes(request, slug: str):
    """Send items back for more votes: each gets ``extra`` more open slots. Researchers and admins."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    body = MoreVotesInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    n = actions.request_more_votes(project, body.validated_data["items"], body.validated_data["extra"])
    return Response({"items": n, "extra": body.validated_data["extra"]})


@extend_schema(
    parameters=[OpenApiParameter("status", str, enum=["open", "resolved", "dismissed", "all"])],
    responses=OpenApiTypes.OBJECT,
)
@api_view(["GET"])
def project_flags(request, slug: str):
    """The queue: flags and skip reasons, open ones by default. Researchers and admins."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    wanted = request.query_params.get("status", "open")
    if wanted not in ("open", "resolved", "dismissed", "all"):
        raise ParseError("status must be open, resolved, dismissed or all.")
    return Response({"results": selectors.report_queue(project, wanted)})


@extend_schema(request=ResolutionInSerializer, responses={200: OpenApiTypes.OBJECT})
@api_view(["POST"])
@parser_classes([JSONParser])
def flag_resolution(request, flag_id: int):
    """Resolve or dismiss a flag, with a note. Researchers and admins of its project."""
    flag = Flag.objects.select_related("project").filter(pk=flag_id).first()
    if flag is None:
        raise NotFound("No such flag.")
    require_role(request.user, flag.project.slug, Role.RESEARCHER)
    body = ResolutionInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    flag = actions.resolve_flag(
        flag, request.user, body.validated_data["status"], body.validated_data.get("resolution", "")
    )
    return Response({"id": flag.pk, "status": flag.status, "resolution": flag.resolution})


# --- AI judges --------------------------------------------------------------------------------------------------


@extend_schema(methods=["GET"], responses=JudgeSerializer(many=True))
@extend_schema(methods=["POST"], request=JudgeInSerializer, responses={201: JudgeSerializer})
@api_view(["GET", "POST"])
@parser_classes([JSONParser])
def project_judges(request, slug: str):
    """The project's AI judges with their votes counted (researchers); POST adds one (every value is checked: a
    refusal is a 400 that says why, and writes nothing). API keys are never accepted or shown: a judge names the
    environment variable that holds its key."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)
    if request.method == "GET":
        return Response([judge_payload(row) for row in selectors.judge_rows(project)])
    body = JudgeInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        judge = actions.add_judge(project, created_by=request.user, **body.validated_data)
    except actions.InvalidJudge as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    row = next(row for row in selectors.judge_rows(project) if row["judge"].pk == judge.pk)
    return Response(judge_payload(row), status=status.HTTP_201_CREATED)


@extend_schema(request=JudgeRunInSerializer, responses={201: RunDetailSerializer})
@api_view(["POST"])
@parser_classes([JSONParser])
def project_judge_runs(request, slug: str, name: str):
    """Launch a judge run (admins, as every run): the judge votes on the items it has not voted on yet."""
    project, _ = require_role(request.user, slug, Role.ADMIN)
    judge = get_object_or_404(Judge, project=project, name=name)
    body = JudgeRunInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        run = launch_judge_run(
            judge,
            max_items=body.validated_data.get("max_items"),
            values=body.validated_data["config"],
            launched_by=request.user,
        )
    except TrainingError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)
