"""Reads of the model side: where base models may come from, who sees which runs, the series the plots draw."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from annotate.models import ROLE_RANK, Project, Role

from .models import MetricPoint, ModelArtifact, TrainingRun
from .runners.base import has_safetensors, is_adapter_folder


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
        raise TrainingError(f"No model folder {value!r} (looked under MODEL_ROOTS: {', '.join(map(str, roots)) or 'none'}).")
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
        raise TrainingError(f"{path} has no .safetensors weights; Arbiter loads no other format (pickles can run code).")
    return BaseModel(path, None, path.name)


def allowed_base_models() -> list[tuple[str, str]]:
    """(value, label) for the launch form: model folders up to two levels under each root, then the registry."""
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
    for artifact in ModelArtifact.objects.order_by("-id"):
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


# --- scoring with registered models ---------------------------------------------------------------

MAX_CACHED_SCORERS = 2


def reward_scorer(artifact: ModelArtifact):
    """The artifact's RewardScorer, kept loaded for the next request (a couple of models per process)."""
    if artifact.kind != "reward":
        raise TrainingError(f"Artifact {artifact.pk} is a {artifact.kind}, not a reward model.")
    if not artifact.folder.is_dir():
        raise TrainingError(f"The files of artifact {artifact.pk} are missing from {artifact.folder}.")
    return _load_scorer(str(artifact.folder), artifact.folder.stat().st_mtime)


@functools.lru_cache(maxsize=MAX_CACHED_SCORERS)
def _load_scorer(folder: str, mtime: float):
    from .scoring import RewardScorer

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
