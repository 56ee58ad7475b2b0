"""Training REST API: thin views that parse, check the role, call an action or selector, and answer.

Researchers of a project read its runs and models (and score with them); its admins launch and cancel.
Annotators get 403, non-members 404, as everywhere in Arbiter.
"""

from __future__ import annotations

import orjson
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.exceptions import APIException, NotFound
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from annotate.models import Role, Snapshot
from annotate.permissions import require_role

from .. import launching, rounds, selectors, tasks
from ..models import ModelArtifact, RoundPurpose, TrainingRun
from ..scoring import CombinedScorer
from ..selectors import TrainingError
from .serializers import (
    ArtifactDetailSerializer,
    ArtifactSerializer,
    CombinedScoreInSerializer,
    NextRoundSerializer,
    RunCreateSerializer,
    RunDetailSerializer,
    RunSerializer,
    ScoreInSerializer,
    TargetSerializer,
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
    methods=["GET"],
    responses=RunSerializer(many=True),
    parameters=[
        OpenApiParameter("project", str, description="Only this project's runs."),
        OpenApiParameter("status", str, description="queued, running, succeeded, failed or cancelled."),
    ],
)
@extend_schema(methods=["POST"], request=RunCreateSerializer, responses={201: RunDetailSerializer})
@api_view(["GET", "POST"])
@parser_classes([JSONParser])
def runs(request):
    """Runs of the projects you research or administer; POST launches one (project admins)."""
    if request.method == "GET":
        tasks.reap_stale_runs()
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
    data = body.validated_data
    if data.get("target_project"):
        require_role(request.user, data["target_project"], Role.ADMIN)
    prompts = launching.Prompts(source=data.get("prompts_from") or "", max_prompts=data.get("max_prompts"))
    if data.get("prompts") is not None:
        # Given inline: validated like an uploaded file, each prompt's position as its line number.
        prompts.data = b"\n".join(orjson.dumps(row) for row in data["prompts"])
        prompts.source, prompts.file_name = prompts.source or "file", "prompts"
    try:
        run = launching.launch_run(
            project=project,
            kind=data["kind"],
            base_model=data["base_model"],
            snapshot=snapshot,
            values=data["config"],
            launched_by=request.user,
            reward_models=data["reward_models"],
            target_project=data.get("target_project"),
            prompts=prompts,
            baseline=data.get("baseline") or None,
            parent=data.get("parent"),
            from_run=data.get("from_run"),
            teacher=data.get("teacher") or None,
        )
    except TrainingError as exc:
        raise BadRequest(str(exc)) from None
    return Response(RunDetailSerializer(run).data, status=status.HTTP_201_CREATED)


@extend_schema(responses=RunDetailSerializer)
@api_view(["GET"])
def run_detail(request, run_id: int):
    """A run with its metric history and the last lines of its log."""
    run = _run(request, run_id)
    if run.is_active:
        tasks.reap_stale_runs()
        run.refresh_from_db()
    return Response(RunDetailSerializer(run).data)


@extend_schema(request=None, responses=RunDetailSerializer)
@api_view(["POST"])
def run_cancel(request, run_id: int):
    """Cancel: a queued run at once, a running one within seconds (``cancel_requested`` until its worker stops it)."""
    run = launching.cancel_run(_run(request, run_id, Role.ADMIN))
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


@extend_schema(request=CombinedScoreInSerializer, responses=SCORES, operation_id="models_score_combined")
@api_view(["POST"])
@parser_classes([JSONParser])
def combined_score(request):
    """A weighted combination of reward models (e.g. helpfulness 0.7, safety 0.3), each standardised by the
    spread of its rewards on its training data unless ``normalize`` is false."""
    body = CombinedScoreInSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        prompts, responses = _pairs(body)
        parts = [
            (selectors.reward_scorer(_artifact(request, m["id"])), m["weight"]) for m in body.validated_data["models"]
        ]
        scores = CombinedScorer(parts, normalize=body.validated_data["normalize"]).score(prompts, responses)
    except TrainingError as exc:
        raise BadRequest(str(exc)) from None
    return Response({"scores": scores})


# --- the loop -------------------------------------------------------------------------------------------------

ROUND = inline_serializer(
    "Round",
    {"project": serializers.CharField(), "number": serializers.IntegerField(), "id": serializers.IntegerField()},
)


def _round_data(round_) -> dict:
    return {"project": round_.project.slug, "number": round_.number, "id": round_.pk}


@extend_schema(request=NextRoundSerializer, responses={201: RunDetailSerializer})
@api_view(["POST"])
@parser_classes([JSONParser])
def run_next_round(request, run_id: int):
    """Start the next round from a succeeded policy run: a generate run with its model into the project."""
    run = _run(request, run_id, Role.ADMIN)
    body = NextRoundSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    target = body.validated_data.get("target_project")
    if target:
        require_role(request.user, target, Role.ADMIN)
    try:
        child = launching.start_next_round(
            run,
            launched_by=request.user,
            target_project=target,
            values=body.validated_data["config"],
            prompts=launching.Prompts(
                source=body.validated_data.get("prompts_from") or "", max_prompts=body.validated_data.get("max_prompts")
            ),
        )
    except TrainingError as exc:
        raise BadRequest(str(exc)) from None
    return Response(RunDetailSerializer(child).data, status=status.HTTP_201_CREATED)


def _round_action(request, run_id: int, action):
    run = _run(request, run_id, Role.ADMIN)
    body = TargetSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    target, _ = require_role(request.user, body.validated_data["project"], Role.ADMIN)
    try:
        round_ = action(run, target, created_by=request.user)
    except TrainingError as exc:
        raise BadRequest(str(exc)) from None
    return Response(_round_data(round_), status=status.HTTP_201_CREATED)


@extend_schema(request=TargetSerializer, responses={201: ROUND})
@api_view(["POST"])
@parser_classes([JSONParser])
def run_send_kept(request, run_id: int):
    """A rejection_sampling run's kept samples as a new round of a rating, demonstration or steps project."""
    return _round_action(request, run_id, rounds.send_kept_for_review)


HUMAN_EVAL = inline_serializer(
    "HumanEval",
    {
        "round": ROUND,
        "n": serializers.IntegerField(),
        "wins": serializers.IntegerField(),
        "losses": serializers.IntegerField(),
        "ties": serializers.IntegerField(),
        "win_rate": serializers.FloatField(allow_null=True),
        "ci_low": serializers.FloatField(),
        "ci_high": serializers.FloatField(),
    },
)


@extend_schema(methods=["POST"], request=TargetSerializer, responses={201: ROUND})
@extend_schema(methods=["GET"], responses=HUMAN_EVAL)
@api_view(["GET", "POST"])
@parser_classes([JSONParser])
def run_human_eval(request, run_id: int):
    """POST: an evaluate run's comparisons as a pairwise round (positions randomised, each response's arm recorded).
    GET: the human win rate of the new policy with its 95% Wilson interval (a tie counts half)."""
    if request.method == "POST":
        return _round_action(request, run_id, rounds.create_human_eval_round)
    run = _run(request, run_id)
    link = run.made_rounds.filter(purpose=RoundPurpose.HUMAN_EVAL).select_related("round", "round__project").first()
    if link is None:
        raise NotFound("This run has no human evaluation round.")
    return Response({"round": _round_data(link.round), **selectors.human_eval_results(link.round)})


@extend_schema(
    responses=inline_serializer(
        "RoundStep", {"round": ROUND, "made_by": serializers.IntegerField(allow_null=True)}, many=True
    )
)
@api_view(["GET"])
def project_rounds(request, slug: str):
    """The project's rounds as a chain: each round, the run that made it, and the snapshots, reward-model runs,
    policy runs and generate runs that came out of its votes (ids; artifacts where registered)."""
    project, _ = require_role(request.user, slug, Role.RESEARCHER)

    def runs(items):
        return [
            {
                "run": r.pk,
                "kind": r.kind,
                "status": r.status,
                "artifact": r.made_artifact.pk if r.made_artifact else None,
            }
            for r in items
        ]

    return Response(
        [
            {
                "round": _round_data(step.round),
                "name": step.round.name,
                "source": step.round.source,
                "made_by": step.made_by.pk if step.made_by else None,
                "purpose": step.purpose,
                "snapshots": [s.pk for s in step.snapshots],
                "reward_runs": runs(step.reward_runs),
                "policy_runs": runs(step.policy_runs),
                "next_runs": runs(step.next_runs),
            }
            for step in selectors.round_chain(project)
        ]
    )
