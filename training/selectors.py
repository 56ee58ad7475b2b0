"""Reads of the model side: where base models may come from, who sees which runs, the series the plots draw."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from annotate.models import ROLE_RANK, Judgment, Project, Response, Role, Round, Snapshot

from . import cards, kinds, plots
from .models import ArtifactKind, MetricPoint, ModelArtifact, RoundPurpose, RunRound, RunStatus, TrainingRun
from .runners.base import has_safetensors, is_adapter_folder
from .runners.evaluate import wilson_interval  # the reward-model evaluation and the human one report the same interval
from .scoring import RewardScorer


class TrainingError(ValueError):
    """A launch or a request that is refused; the message says why (HTTP 400, a command's non-zero exit)."""


# --- base models ----------------------------------------------------------------------------------


@dataclass
class BaseModel:
    path: Path
    artifact: ModelArtifact | None
    label: str


def model_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.MODEL_ROOTS]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file() and has_safetensors(folder)


def resolve_base_model(value: str) -> BaseModel:
    """A folder under ``MODEL_ROOTS`` (absolute, or relative to a root) or a registered artifact (``artifact:ID``).

    Symbolic links and ``..`` are resolved before the check, so nothing outside the roots gets in through them.
    """
    value = (value or "").strip()
    if not value:
        raise TrainingError("Choose a base model: a folder under MODEL_ROOTS or a registered artifact (artifact:ID).")
    match = re.fullmatch(r"(?:artifact:)?(\d+)", value)
    if match:
        artifact = ModelArtifact.objects.filter(pk=int(match.group(1))).first()
        if artifact is None:
            raise TrainingError(f"No registered model artifact {match.group(1)}.")
        if not artifact.folder.is_dir():
            raise TrainingError(f"The files of artifact {artifact.pk} are missing from {artifact.folder}.")
        return BaseModel(artifact.folder.resolve(), artifact, f"artifact {artifact.pk}: {artifact.name}")
    roots = model_roots()
    given = Path(value).expanduser()
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise TrainingError(
            f"No model folder {value!r} (looked under MODEL_ROOTS: {', '.join(map(str, roots)) or 'none'})."
        )
    path = found.resolve()
    artifacts_root = Path(settings.ARTIFACT_ROOT).resolve()
    if not _inside(path, roots):
        if _inside(path, [artifacts_root]):
            artifact = ModelArtifact.objects.filter(path=str(path.relative_to(artifacts_root))).first()
            if artifact is not None:
                return BaseModel(path, artifact, f"artifact {artifact.pk}: {artifact.name}")
        raise TrainingError(
            f"{value} is outside MODEL_ROOTS ({', '.join(map(str, roots)) or 'none set'}): base models are loaded only "
            "from there or from the model registry."
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise TrainingError(f"{path} is not a model folder (no config.json).")
    if not has_safetensors(path) and not is_adapter_folder(path):
        raise TrainingError(
            f"{path} has no .safetensors weights; Arbiter loads no other format (pickles can run code)."
        )
    return BaseModel(path, None, path.name)


def allowed_base_models(user=None) -> list[tuple[str, str]]:
    """(value, label) for the launch form: model folders up to two levels under each root, then the registry
    (with a ``user``, only the artifacts of projects they research: others' models are not theirs to see)."""
    choices = []
    for root in model_roots():
        if not root.is_dir():
            continue
        found = [root] if is_model_folder(root) else []
        for child in sorted(root.iterdir()):
            if is_model_folder(child):
                found.append(child)
            elif child.is_dir() and not child.name.startswith("."):
                found += [grandchild for grandchild in sorted(child.iterdir()) if is_model_folder(grandchild)]
        choices += [(str(folder), f"{folder.relative_to(root.parent)}") for folder in found]
    artifacts = ModelArtifact.objects.order_by("-id")
    if user is not None:
        artifacts = artifacts.filter(project__in=training_projects(user))
    for artifact in artifacts:
        choices.append((f"artifact:{artifact.pk}", f"artifact {artifact.pk}: {artifact.name}"))
    return choices


# --- who sees what --------------------------------------------------------------------------------


def training_projects(user, role: str = Role.RESEARCHER):
    """Projects in which ``user`` has at least ``role``: researchers read training, admins launch it."""
    if not user or not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    roles = [r for r, rank in ROLE_RANK.items() if rank >= ROLE_RANK[role]]
    return Project.objects.filter(memberships__user=user, memberships__role__in=roles).distinct()


def check_launch_access(user, project: Project, artifacts, target: Project | None = None) -> None:
    """A launcher uses only the models of projects they research and writes only into projects they administer;
    anything else is answered as if it did not exist. Without a user (the operator's commands) all is allowed."""
    if user is None:
        return
    readable = set(training_projects(user).values_list("pk", flat=True))
    for artifact in artifacts:
        if artifact is not None and artifact.project_id not in readable:
            raise TrainingError(f"No registered model artifact {artifact.pk}.")
    if (
        target is not None
        and target != project
        and not training_projects(user, Role.ADMIN).filter(pk=target.pk).exists()
    ):
        raise TrainingError(f"No project {target.slug!r}.")


def administered_projects(user, project_kinds) -> list[tuple[str, str]]:
    """``(slug, label)`` of the projects of ``project_kinds`` that ``user`` administers: where a round can go."""
    return [
        (p.slug, f"{p.name} ({p.slug})") for p in training_projects(user, Role.ADMIN).filter(kind__in=project_kinds)
    ]


def sees_training(user) -> bool:
    return training_projects(user).exists()


def visible_runs(user, project: Project | None = None):
    runs = TrainingRun.objects.filter(project__in=training_projects(user)).select_related("project", "launched_by")
    return runs.filter(project=project) if project is not None else runs


def visible_artifacts(user, project: Project | None = None):
    artifacts = ModelArtifact.objects.filter(project__in=training_projects(user)).select_related("project", "run")
    return artifacts.filter(project=project) if project is not None else artifacts


# --- plots ----------------------------------------------------------------------------------------

PLOTTED = {
    "loss": ["loss", "eval_loss"],
    "accuracy": ["accuracy", "eval_accuracy"],
}


def metric_series(run: TrainingRun) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as (step, value) points, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for step, values in MetricPoint.objects.filter(run=run).values_list("step", "values"):
        for name, value in values.items():
            if isinstance(value, (int, float)):
                series.setdefault(name, []).append((step, float(value)))
    return series


# --- the run page ---------------------------------------------------------------------------------


def run_page(run: TrainingRun, user, can_manage: bool) -> dict:
    """Everything the run page shows: its kind's facts, charts, headline metrics, model, the rounds its output
    became, and — for an admin of a succeeded run — which of the next steps it offers (the next round from a
    policy, kept samples to send for review, comparisons for a human evaluation) and the projects they can go to."""
    kind = run.training_kind
    config = kind.config if kind else None  # what the kind reports: its key and headline metrics
    artifact = ModelArtifact.objects.filter(run=run).first()
    made = {
        link.purpose: link.round for link in RunRound.objects.filter(run=run).select_related("round", "round__project")
    }
    review_file = kind.review_file if kind else ""
    context = {
        "run": run,
        "kind": kind,
        "evaluates": bool(kind and kind.publishes == kinds.COMPARISONS),
        "can_manage": can_manage,
        "charts": plots.run_charts(metric_series(run), config, active=run.is_active),
        "artifact": artifact,
        "headline": plots.headline(run.metrics or {}, config),
        "trained_on": plots.trained_on(run.metrics or {}, config),
        # Only runs that trained weights record their count (a generate run's config has a method all the same).
        "trained_weights": cards.training_method(run.config or {}, run.metrics or {})
        if "n_trainable_params" in (run.metrics or {})
        else "",
        "candidates_round": made.get(RoundPurpose.CANDIDATES),
        "review_round": made.get(RoundPurpose.REVIEW),
        "human_eval_round": made.get(RoundPurpose.HUMAN_EVAL),
        "kept_rows": _count_lines(run.work_dir / review_file) if review_file else 0,
        "next_runs": list(run.children.filter(kind__in=kinds.names(publishes=kinds.CANDIDATES))),
        "reward_artifacts": list(run.reward_artifacts.all()),
    }
    if can_manage and user is not None and run.status == RunStatus.SUCCEEDED:
        context["can_start_next"] = bool(artifact and artifact.kind == ArtifactKind.POLICY)
        if review_file and context["kept_rows"] and not context["review_round"]:
            context["review_targets"] = administered_projects(user, kinds.REVIEW_TARGETS)
        if context["evaluates"] and not context["human_eval_round"]:
            context["eval_targets"] = administered_projects(user, kinds.HUMAN_EVAL_TARGETS)
    return context


def _count_lines(path) -> int:
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    except OSError:
        return 0


# --- scoring with registered models ---------------------------------------------------------------

MAX_CACHED_SCORERS = 2


def reward_scorer(artifact: ModelArtifact):
    """The artifact's RewardScorer, kept loaded for the next request (a couple of models per process)."""
    if artifact.kind != ArtifactKind.REWARD:
        raise TrainingError(f"Artifact {artifact.pk} is a {artifact.kind}, not a reward model.")
    if not artifact.folder.is_dir():
        raise TrainingError(f"The files of artifact {artifact.pk} are missing from {artifact.folder}.")
    return load_scorer(str(artifact.folder), artifact.folder.stat().st_mtime)


@functools.lru_cache(maxsize=MAX_CACHED_SCORERS)
def load_scorer(folder: str, mtime: float):
    """A RewardScorer kept loaded per (folder, mtime): a folder written again is loaded again."""
    return RewardScorer.load(folder)


def check_prompt(prompt) -> None:
    """A prompt is text or a list of {"role", "content"} messages."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        return
    raise TrainingError('Each prompt must be a string or a list of {"role", "content"} messages.')


# --- reward models given to a policy run ------------------------------------------------------------


@dataclass
class RewardModelChoice:
    path: Path
    artifact: ModelArtifact | None
    weight: float | None
    label: str


def _split_weight(value: str) -> tuple[str, float | None]:
    """``"3:0.7"`` → ("3", 0.7); ``"artifact:3"`` → ("artifact:3", None); a name or folder may end with ``:WEIGHT``."""
    head, sep, tail = value.rpartition(":")
    if not sep or not head or head == "artifact":
        return value, None
    try:
        return head, float(tail)
    except ValueError:
        return value, None


def resolve_reward_model(value: str) -> RewardModelChoice:
    """A reward model for a policy run: a registered reward artifact (``artifact:ID``, ``ID`` or its name) or a
    sequence-classification model folder under MODEL_ROOTS, optionally followed by ``:WEIGHT``."""
    text, weight = _split_weight((value or "").strip())
    if weight is not None and weight < 0:
        raise TrainingError(f"Reward model {value!r}: a weight must be 0 or more.")
    if not text:
        raise TrainingError(
            "An empty reward model was given: use artifact:ID, a registered name, or a folder under MODEL_ROOTS."
        )
    named = None if re.fullmatch(r"(?:artifact:)?\d+", text) else ModelArtifact.objects.filter(name=text).first()
    chosen = resolve_base_model(f"artifact:{named.pk}" if named else text)
    if chosen.artifact is not None:
        if chosen.artifact.kind != ArtifactKind.REWARD:
            raise TrainingError(
                f"Artifact {chosen.artifact.pk} ({chosen.artifact.name}) is a {chosen.artifact.kind}, not a reward model."
            )
    else:
        architectures = _architectures(chosen.path)
        if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise TrainingError(
                f"{chosen.path} is not a reward model ({', '.join(architectures)}; a reward model is a sequence classifier)."
            )
    return RewardModelChoice(chosen.path, chosen.artifact, weight, chosen.label)


def _architectures(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or [])
    except (OSError, ValueError):
        return []


def resolve_reward_models(values) -> list[RewardModelChoice]:
    """Every ``--reward-model``; weights for all of them or for none."""
    chosen = [resolve_reward_model(v) for v in values or []]
    paths = [str(c.path) for c in chosen]
    if len(set(paths)) != len(paths):
        raise TrainingError("The same reward model was given twice.")
    weighted = [c.weight is not None for c in chosen]
    if any(weighted) and not all(weighted):
        raise TrainingError(
            "Give a weight to every reward model (artifact:3:0.7 artifact:4:0.3) or to none (equal weights)."
        )
    return chosen


# --- rounds and lineage -------------------------------------------------------------------------------


@dataclass
class RoundStep:
    """One round of a project and what came out of its votes: the chain round → snapshot → reward model → policy
    → the next round's candidates. ``made_by`` is the run whose output became this round (None for an import)."""

    round: object
    made_by: object | None
    purpose: str
    snapshots: list
    reward_runs: list
    policy_runs: list
    next_runs: list  # generate runs from this round's policies (their rounds are the next steps)


def round_chain(project: Project) -> list[RoundStep]:
    """The project's rounds in order, each with the snapshots taken after it (before the next round), the reward
    models trained on those snapshots, the policies trained on them or scored by those reward models, and the
    generate runs that wrote the next round from those policies. Links come from foreign keys; only "which
    round a snapshot belongs to" is by time (a snapshot holds every vote up to it, the latest round's included)."""
    rounds = list(Round.objects.filter(project=project).order_by("number"))
    origins = {
        link.round_id: link
        for link in RunRound.objects.filter(round__project=project).select_related("run", "run__base_artifact")
    }
    snapshots = list(Snapshot.objects.filter(project=project).order_by("id"))
    runs = list(
        TrainingRun.objects.filter(project=project)
        .select_related("snapshot", "base_artifact", "target_project")
        .prefetch_related("reward_artifacts")
        .order_by("id")
    )
    artifacts = {a.run_id: a for a in ModelArtifact.objects.filter(run__in=runs)}
    for run in runs:
        run.made_artifact = artifacts.get(run.pk)

    def round_of(moment) -> int | None:
        current = None
        for index, round_ in enumerate(rounds):
            if round_.created_at <= moment:
                current = index
        return current

    reward_kinds, policy_kinds = kinds.names(publishes=kinds.REWARD_MODEL), kinds.names(publishes=kinds.MODEL)
    candidate_kinds = kinds.names(publishes=kinds.CANDIDATES)
    steps = []
    for round_ in rounds:
        link = origins.get(round_.pk)
        steps.append(RoundStep(round_, link.run if link else None, link.purpose if link else "", [], [], [], []))
    if not steps:
        return steps
    snapshot_step = {s.pk: round_of(s.created_at) for s in snapshots}
    for snapshot in snapshots:
        if snapshot_step[snapshot.pk] is not None:
            steps[snapshot_step[snapshot.pk]].snapshots.append(snapshot)
    reward_artifact_step = {}
    for run in runs:
        if run.kind in reward_kinds:
            index = snapshot_step.get(run.snapshot_id) if run.snapshot_id else round_of(run.created_at)
            if index is not None:
                steps[index].reward_runs.append(run)
                if run.made_artifact:
                    reward_artifact_step[run.made_artifact.pk] = index
    policy_artifact_step = {}
    for run in runs:
        if run.kind in policy_kinds:
            scored = [reward_artifact_step[a.pk] for a in run.reward_artifacts.all() if a.pk in reward_artifact_step]
            index = (
                max(scored)
                if scored
                else snapshot_step.get(run.snapshot_id)
                if run.snapshot_id
                else round_of(run.created_at)
            )
            if index is not None:
                steps[index].policy_runs.append(run)
                if run.made_artifact:
                    policy_artifact_step[run.made_artifact.pk] = index
    for run in runs:
        if run.kind in candidate_kinds:
            index = policy_artifact_step.get(run.base_artifact_id)
            if index is None:
                index = round_of(run.created_at)
            if index is not None:
                steps[index].next_runs.append(run)
    return steps


def generated_round(run: TrainingRun):
    """The round a generate run wrote (None before it finished)."""
    link = (
        RunRound.objects.filter(run=run, purpose=RoundPurpose.CANDIDATES)
        .select_related("round", "round__project")
        .first()
    )
    return link.round if link else None


# --- human evaluation -----------------------------------------------------------------------------------


def win_rate(wins: int, losses: int, ties: int) -> dict:
    """``{"n", "wins", "losses", "ties", "win_rate", "ci_low", "ci_high"}``: a tie counts half a win."""
    n = wins + losses + ties
    score = wins + 0.5 * ties
    low, high = wilson_interval(score, n)
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": (score / n) if n else None,
        "ci_low": low,
        "ci_high": high,
    }


def human_eval_results(round_) -> dict:
    """The new policy's win rate in a human-evaluation round: each current judgment of its items decoded through
    the arm recorded on each response (``metadata["arm"]``: ``new`` or ``baseline``), whatever position it was shown in."""
    arms = dict(Response.objects.filter(item__round=round_).values_list("id", "metadata__arm"))
    wins = losses = ties = 0
    # People's votes: a human evaluation is people's verdict, whatever judges said about the same pairs.
    for outcome, winner in (
        Judgment.objects.filter(item__round=round_, is_current=True, item__purpose="normal")
        .exclude(source=Judgment.Source.AI)
        .values_list("outcome", "winner_id")
    ):
        if outcome == "win" and winner in arms:
            if arms[winner] == "new":
                wins += 1
            else:
                losses += 1
        else:  # tie, or both bad: neither policy won
            ties += 1
    return win_rate(wins, losses, ties)
