"""Training REST API: thin views that parse, check the role, call an action or selector, and answer.

Researchers of a project read its runs and models (and score with them); its admins launch and cancel.
Annotators get 403, non-members 404, as everywhere in Arbiter.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.exceptions import APIException, NotFound
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from annotate.models import Role, Snapshot
from annotate.permissions import require_role

from .. import actions, selectors
from ..models import ModelArtifact, TrainingRun
from ..scoring import CombinedScorer
from ..selectors import TrainingError
from .serializers import (
    ArtifactDetailSerializer,
    ArtifactSerializer,
    CombinedScoreInSerializer,
    RunCreateSerializer,
    RunDetailSerializer,
    RunSerializer,
    ScoreInSerializer,
)


class BadRequest(APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"


def _run(request, run_id: int, role: str = Role.RESEARCHER) -> TrainingRun:
    run = TrainingRun.objects.select_related("project", "launched_by").filter(pk=run_id).first()
    if run is None:
        raise NotFound("No such run.")
    require_role(request.user, run.project.slug, role)
    return run


def _artifact(request, artifact_id: int) -> ModelArtifact:
    artifact = ModelArtifact.objects.select_related("project").filter(pk=artifact_id).first()
    if artifact is None:
        raise NotFound("No such model.")
    require_role(request.user, artifact.project.slug, Role.RESEARCHER)
    return artifact


@extend_schema(
    methods=["GET"], responses=RunSerializer(many=True),
    parameters=[OpenApiParameter("project", str, description="Only this project's runs."),
                OpenApiParameter("status", str, description="queued, running, succeeded, failed or cancelled.")],
)  # fmt: skip
@extend_schema(methods=["POST"], request=RunCreateSerializer, responses={201: RunDetailSerializer})
@api_view(["GET", "POST"])
@parser_classes([JSONParser])
def runs(request):
    """Runs of the projects you research or administer; POST launches one (project admins)."""
    if request.method == "GET":
        actions.reap_stale_runs()
        project = None
        if request.query_params.get("project"):
            project, _ = require_role(request.user, request.query_params["project"], Role.RESEARCHER)
        found = selectors.visible_runs(request.user, project)
        if request.query_params.get("status"):
            found = found.filter(status=request.query_params["status"])
        return Response(RunSerializer(found[:500], many=True).data)
    body = RunCreateSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    project, _ = require_role(request.user, body.validated_data["project"], Role.ADMIN)
    snapshot = None
    if body.validated_data.get("snapshot") is not None:
        snapshot = Snapshot.objects.filter(pk=body.validated_data["snapshot"], project=project).first()
        if snapshot is None:
            raise BadRequest(f"No snapshot {body.validated_data['snapshot']} in project {project.slug}.")
    try:
        run = actions.launch_run(
            project=project, kind=body.validated_data["kind"], base_model=body.validated_data["base_model"],
            snapshot=snapshot, values=body.validated_data["config"], launched_by=request.user,
        )  # fmt: skip
    except TrainingError as exc:
        raise BadRequest(str(exc)) from None
    return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)


@extend_schema(responses=RunDetailSerializer)
@api_view(["GET"])
def run_detail(request, run_id: int):
    """A run with its metric history and the last lines of its log."""
    run = _run(request, run_id)
    if run.is_active:
        actions.reap_stale_runs()
        run.refresh_from_db()
    return Response(RunDetailSerializer(run).data)


@extend_schema(request=None, responses=RunDetailSerializer)
@api_view(["POST"])
def run_cancel(request, run_id: int):
    """Cancel: a queued run at once, a running one within seconds (``cancel_requested`` until its worker stops it)."""
    run = actions.cancel_run(_run(request, run_id, Role.ADMIN))
    return Response(RunDetailSerializer(run).data)


@extend_schema(responses=ArtifactSerializer(many=True), parameters=[OpenApiParameter("project", str)])
@api_view(["GET"])
def models(request):
    """The model registry: artifacts of the projects you research or administer."""
    project = None
    if request.query_params.get("project"):
        project, _ = require_role(request.user, request.query_params["project"], Role.RESEARCHER)
    return Response(ArtifactSerializer(selectors.visible_artifacts(request.user, project)[:500], many=True).data)


@extend_schema(responses=ArtifactDetailSerializer)
@api_view(["GET"])
def model_detail(request, artifact_id: int):
    return Response(ArtifactDetailSerializer(_artifact(request, artifact_id)).data)


SCORES = inline_serializer("Scores", {"scores": serializers.ListField(child=serializers.FloatField())})


def _pairs(body) -> tuple[list, list]:
    prompts, responses = [], []
    for pair in body.validated_data["pairs"]:
        selectors.check_prompt(pair["prompt"])
        prompts.append(pair["prompt"])
        responses.append(pair["response"])
    return prompts, responses


@extend_schema(request=ScoreInSerializer, responses=SCORES)
@api_view(["POST"])
@parser_classes([JSONParser])
def model_score(request, artifact_id: int):
    """Rewards of new (prompt, response) pairs from a registered reward model, one per pair, in order."""
    artifact = _artifact(request, artifact_id)
    body = ScoreInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        prompts, responses = _pairs(body)
        scores = selectors.reward_scorer(artifact).score(prompts, responses)
    except TrainingError as exc:
        raise BadRequest(str(exc)) from None
    return Response({"scores": scores})


@extend_schema(request=CombinedScoreInSerializer, responses=SCORES)
@api_view(["POST"])
@parser_classes([JSONParser])
def combined_score(request):
    """A weighted combination of reward models (e.g. helpfulness 0.7, safety 0.3), each standardised by the
    spread of its rewards on its training data unless ``normalize`` is false."""
    body = CombinedScoreInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        prompts, responses = _pairs(body)
        parts = [(selectors.reward_scorer(_artifact(request, m["id"])), m["weight"]) for m in body.validated_data["models"]]
        scores = CombinedScorer(parts, normalize=body.validated_data["normalize"]).score(prompts, responses)
    except TrainingError as exc:
        raise BadRequest(str(exc)) from None
    return Response({"scores": scores})
