"""Launching runs, each in one transaction, named as a verb: :func:`launch_run` (validate, snapshot or choose
prompts as the kind needs, queue once committed), :func:`start_next_round` (a finished policy run → a generate
run into the next round), :func:`cancel_run` (a queued run at once; a running one is asked to stop) and
:func:`retry_run` (a failed or cancelled run as its next attempt).

What happens to a run on the worker is training.supervisor (and training.lifecycle, training.publishing); the queue
and its reaper are training.tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotate import judging
from annotate.actions import InvalidJudge, check_judge_endpoint, create_snapshot, judge_principle
from annotate.constitution import constitution_hash, validate_constitution
from annotate.exports import KIND_FORMATS, ExportError, ExportOptions
from annotate.exports.options import check_options
from annotate.models import Judge, Kind, Project, Snapshot

from . import datasets, kinds
from .models import ACTIVE_STATUSES, ArtifactKind, ModelArtifact, RunStatus, TrainingRun
from .rounds import model_label, samples_field
from .runners.base import ConfigError
from .runners.distill_config import CONSTITUTION_CONTEXT, constitution_context, tokenizer_difference
from .runners.judge_config import JUDGE_FIELDS
from .scoring import CombinedScorer
from .selectors import TrainingError, check_launch_access, load_scorer, resolve_base_model, resolve_reward_models
from .tasks import enqueue_run


def default_objective(project: Project) -> str:
    return "regression" if project.kind == Kind.RATING else "bradley_terry"


# Field names an evaluate config may use for the baseline policy (first found wins).
BASELINE_FIELDS = ("baseline_model", "baseline", "reference_model")


def training_kind(name: str) -> kinds.TrainingKind:
    """The registry's entry of ``name``, if this site has its runner; TrainingError otherwise."""
    try:
        kind = kinds.get(name)
    except KeyError as exc:
        raise TrainingError(exc.args[0]) from None
    if not kind.available:
        raise TrainingError(f"{name} runs are not available yet; available: {', '.join(kinds.available())}.")
    return kind


def resolve_config(kind: kinds.TrainingKind, project: Project, values: dict, base_model_path: str):
    """The runner config of a run: the kind's defaults, the project's (objective), then ``values``."""
    if "base_model" in values:
        raise TrainingError("Give the base model as --base-model (or the base_model field), not as a config option.")
    data = {**values, "base_model": base_model_path}
    options = kind.config.__dataclass_fields__
    if kind.publishes == kinds.REWARD_MODEL and "objective" in options:
        data.setdefault("objective", default_objective(project))
    if "step_separator" in options and project.kind == Kind.STEPS:  # a PRM splits steps as the project does
        data.setdefault("step_separator", project.step_separator or "\n")
    try:
        config = kind.config.from_dict(data)
    except ConfigError as exc:
        raise TrainingError(str(exc)) from None
    if kind.reads == kinds.SNAPSHOT and kind.snapshot_format(config) == "steps":
        if project.kind != Kind.STEPS:
            raise TrainingError(
                f"A {kind.name} run learns from step labels: it needs a steps project, and {project.slug} is a "
                f"{project.kind} project."
            )
    elif kind.publishes == kinds.REWARD_MODEL:
        _check_reward_project(project, config)
    if kind.reads == kinds.SNAPSHOT:
        _check_export(kind, project, config)
    return config


# What a project of each kind collects (the refusal of a run that cannot learn from it says so).
COLLECTS = {
    Kind.PAIRWISE: "pairwise votes",
    Kind.RANKING: "rankings",
    Kind.RATING: "ratings",
    Kind.STEPS: "step labels",
    Kind.DEMONSTRATION: "demonstrations",
}


def _check_export(kind: kinds.TrainingKind, project: Project, config) -> None:
    """Refuse, before anything is written, a run whose export the project's kind cannot make (KIND_FORMATS); a
    kind's config may say what it learns from (``LEARNS_FROM``) for the message."""
    fmt = kind.snapshot_format(config)
    if fmt in KIND_FORMATS[project.kind]:
        return
    collects = COLLECTS.get(project.kind, f"{project.kind} votes")
    learns = getattr(kind.config, "LEARNS_FROM", "")
    if learns:
        raise TrainingError(f"{kind.label} learns from {learns}; project {project.slug} collects {collects}.")
    raise TrainingError(
        f"A {kind.name} run learns from a {fmt} export; project {project.slug} collects {collects}, which make no "
        f"{fmt} export."
    )


def _check_reward_project(project: Project, config) -> None:
    if project.kind in (Kind.STEPS, Kind.DEMONSTRATION):
        raise TrainingError(f"A {project.kind} project has no preferences or scores to train a reward model on.")
    if config.objective == "regression" and project.kind != Kind.RATING:
        raise TrainingError("objective=regression trains on rating scores: it needs a rating project.")
    criteria = list(project.rating_criteria if project.kind == Kind.RATING else project.criteria or [])
    if config.criterion and config.criterion not in criteria:
        known = ", ".join(criteria) if criteria else "none"
        raise TrainingError(f"Project {project.slug} has no criterion {config.criterion!r} (its criteria: {known}).")


def snapshot_options(config, kind: kinds.TrainingKind) -> ExportOptions:
    """The export a run makes when it is given no snapshot, in the kind's format for this config (TRL pairs of its
    criterion, ratings for a regression reward model, the ``sft`` export for sft on demonstrations);
    TRAINING_DEFAULT_TEST_SIZE of the prompts held out."""
    test_size = settings.TRAINING_DEFAULT_TEST_SIZE
    fmt = kind.snapshot_format(config)
    votes = getattr(config, "votes", "human")
    if fmt == "trl":
        criterion = getattr(config, "criterion", "")
        weights = getattr(config, "pair_weights", "none")
        return ExportOptions(
            format="trl", criterion=criterion, test_size=test_size, seed=0, source=votes, weights=weights
        )
    threshold = getattr(config, "threshold", None) if fmt == "kto" else None  # kto: where ratings split
    steps = {}
    if fmt == "steps":  # prm: what a neutral step teaches
        neutral = getattr(config, "neutral_steps", "positive")
        steps = {"neutral_steps": neutral != "negative", "step_labels": "three" if neutral == "class" else "binary"}
    return ExportOptions(format=fmt, test_size=test_size, seed=0, source=votes, threshold=threshold, **steps)


def _snapshot_for(
    project: Project, snapshot: Snapshot | None, config, created_by, kind: kinds.TrainingKind
) -> Snapshot:
    wanted = snapshot_options(config, kind)
    if snapshot is None:
        try:
            check_options(project, wanted)  # before create_snapshot makes any folder
            snapshot, _ = create_snapshot(project, wanted, created_by=created_by)
        except ExportError as exc:
            raise TrainingError(f"Could not snapshot {project.slug}: {exc}") from None
    if snapshot.project_id != project.pk:
        raise TrainingError(f"Snapshot {snapshot.pk} belongs to another project.")
    if snapshot.options.get("format") != wanted.format:
        raise TrainingError(
            f"This run trains on a {wanted.format} snapshot; snapshot {snapshot.pk} is {snapshot.options.get('format')}."
        )
    if wanted.format == "trl" and snapshot.options.get("criterion", "") != wanted.criterion:
        theirs = snapshot.options.get("criterion") or "overall"
        raise TrainingError(
            f"Snapshot {snapshot.pk} holds the {theirs} preferences; set criterion={snapshot.options.get('criterion', '')} or pick another."
        )
    if snapshot.options.get("source", "human") != wanted.source:
        raise TrainingError(
            f"Snapshot {snapshot.pk} was made from {snapshot.options.get('source', 'human')} votes; this run asks for "
            f"votes={wanted.source}."
        )
    if wanted.weights != "none" and snapshot.options.get("weights", "none") != wanted.weights:
        raise TrainingError(
            f"Snapshot {snapshot.pk} was exported with weights={snapshot.options.get('weights', 'none')}; this run "
            f"asks for pair_weights={wanted.weights}: export one with weights={wanted.weights} or leave it to the run."
        )
    if snapshot.options.get("threshold") != wanted.threshold:
        theirs, ours = (
            "the scale's middle" if value is None else f"threshold={value}"
            for value in (snapshot.options.get("threshold"), wanted.threshold)
        )
        raise TrainingError(f"Snapshot {snapshot.pk} splits the scores at {theirs}; this run asks for {ours}.")
    if wanted.format == "steps":
        given = (snapshot.options.get("neutral_steps", True), snapshot.options.get("step_labels", "binary"))
        if given != (wanted.neutral_steps, wanted.step_labels):
            labels = {(True, "binary"): "positive", (False, "binary"): "negative", (True, "three"): "class"}
            raise TrainingError(
                f"Snapshot {snapshot.pk} counts a neutral step as {labels.get(given, given)}; this run asks for "
                f"neutral_steps={labels[(wanted.neutral_steps, wanted.step_labels)]}."
            )
    if not snapshot.folder.is_dir():
        raise TrainingError(f"The files of snapshot {snapshot.pk} are missing from {snapshot.folder}.")
    if not snapshot.counts.get("train"):
        raise TrainingError(f"Snapshot {snapshot.pk} has no training rows: the project needs judgments first.")
    return snapshot


def _snapshot_source(kind: kinds.TrainingKind, project: Project, snapshot: Snapshot | None, values: dict) -> str:
    """sft learns from demonstrations (an ``sft`` snapshot) or from chosen responses (a ``trl`` one): the snapshot
    given decides, else the ``source`` option, else the project (demonstration projects have demonstrations)."""
    if snapshot is not None:
        fmt = snapshot.options.get("format")
        source = kind.source_by_format.get(fmt)
        if source is None:
            accepted = " or ".join(f"{f} (source={s})" for f, s in kind.source_by_format.items())
            raise TrainingError(
                f"{kind.name} trains on a snapshot exported as {accepted}; snapshot {snapshot.pk} is {fmt}."
            )
        if values.get("source", source) != source:
            raise TrainingError(
                f"Snapshot {snapshot.pk} is a {fmt} export: it goes with source={source}, not {values['source']}."
            )
        return source
    return values.get("source") or ("demonstrations" if project.kind == Kind.DEMONSTRATION else "chosen")


@dataclass
class Prompts:
    """How a prompt-driven run chooses its prompts (``train --prompts-from``, the form, the API)."""

    source: str = ""
    data: bytes | None = None
    file_name: str = ""
    max_prompts: int | None = None


def _project(value) -> Project | None:
    if value is None or value == "" or isinstance(value, Project):
        return value or None
    project = Project.objects.filter(slug=str(value)).first()
    if project is None:
        raise TrainingError(f"No project {value!r}.")
    return project


def _parent(project: Project, parent) -> TrainingRun | None:
    if parent is None or parent == "":
        return None
    run = parent if isinstance(parent, TrainingRun) else TrainingRun.objects.filter(pk=int(parent)).first()
    if run is None:
        raise TrainingError(f"No run {parent} to continue from (--parent).")
    if run.project_id != project.pk:
        raise TrainingError(f"Run {run.pk} belongs to project {run.project.slug}, not {project.slug}.")
    return run


def _check_target(kind: kinds.TrainingKind, target: Project | None, config) -> None:
    if kind.publishes != kinds.CANDIDATES:
        if target is not None:
            raise TrainingError(
                f"--target-project is for {', '.join(kinds.names(publishes=kinds.CANDIDATES))} runs (they write candidates into it)."
            )
        return
    if target.kind not in (kind.target_kinds or kinds.TARGET_RESPONSES):
        fits = " or ".join(kind.target_kinds or ("pairwise", "ranking"))
        raise TrainingError(f"Candidates go into a {fits} project; {target.slug} is a {target.kind} project.")
    field = samples_field(kind)
    if field is None:
        return
    k = getattr(config, field)
    low, high = kinds.TARGET_RESPONSES[target.kind]
    if not low <= k <= high:
        fits = "exactly 2" if low == high else f"{low} to {high}"
        hint = " (for more samples per prompt, target a ranking project)" if target.kind == Kind.PAIRWISE else ""
        raise TrainingError(
            f"{target.slug} is a {target.kind} project: its items hold {fits} responses, so set {field} to that, not {k}{hint}."
        )


def _reward_values(kind: kinds.TrainingKind, rewards: list, values: dict) -> dict:
    if not rewards:
        if kind.reward_models == kinds.REWARD_MODEL_NEEDED:
            raise TrainingError(
                f"A {kind.name} run scores samples with a reward model: give one or more (--reward-model artifact:ID)."
            )
        return values
    if kind.reward_models == kinds.NO_REWARD_MODEL:
        scoring = kinds.names(reward_models=kinds.REWARD_MODEL_NEEDED) + kinds.names(
            reward_models=kinds.OPTIONAL_REWARD_MODEL
        )
        raise TrainingError(
            f"--reward-model is for the policy kinds that score samples ({', '.join(scoring)}); a {kind.name} run uses none."
        )
    if "reward_models" in values or "reward_weights" in values:
        raise TrainingError(
            "Give reward models as --reward-model ARTIFACT[:WEIGHT] (or reward_models in the API), not as config options."
        )
    values = {**values, "reward_models": [str(r.path) for r in rewards]}
    if rewards[0].weight is not None:
        values["reward_weights"] = [r.weight for r in rewards]
    return values


def _baseline_values(kind: kinds.TrainingKind, baseline, values: dict) -> tuple[dict, object]:
    if kind.publishes != kinds.COMPARISONS:
        if baseline:
            raise TrainingError(
                f"--baseline is for {', '.join(kinds.names(publishes=kinds.COMPARISONS))} runs (the policy the new one is compared with)."
            )
        return values, None
    if not baseline:
        raise TrainingError(
            f"An {kind.name} run compares the policy (--base-model) with a baseline: give --baseline PATH_OR_ARTIFACT."
        )
    chosen = resolve_base_model(baseline)
    names = {row["name"] for row in kind.config.describe()}
    field = next((name for name in BASELINE_FIELDS if name in names), None)
    if field is None:
        raise TrainingError(f"The {kind.name} runner has no baseline option.")
    if field in values:
        raise TrainingError("Give the baseline as --baseline (or the baseline field), not as a config option.")
    return {**values, field: str(chosen.path)}, chosen


def _scorer(rewards: list):
    """The reward model (or weighted combination) that measures confidence for prompts_from=low-confidence."""
    loaded = [load_scorer(str(r.path), r.path.stat().st_mtime) for r in rewards]  # kept loaded, as the scoring API does
    if len(loaded) == 1:
        return loaded[0]
    return CombinedScorer([(scorer, r.weight if r.weight is not None else 1.0) for scorer, r in zip(loaded, rewards)])


def _prompt_rows(
    kind: kinds.TrainingKind, project: Project, snapshot: Snapshot | None, prompts: Prompts, rewards: list, created_by
):
    """``(rows, test rows, snapshot, inputs)`` of a prompt-driven run; TrainingError when none can be chosen."""
    if prompts.source:
        source = prompts.source
    elif kind.default_prompts != "items":  # evaluate: the snapshot's test prompts, whatever else was given
        source = kind.default_prompts
    else:
        source = "file" if prompts.data is not None else "items"
    if source.startswith("snapshot-") and snapshot is None:
        try:
            snapshot, _ = create_snapshot(
                project,
                ExportOptions(format="trl", test_size=settings.TRAINING_DEFAULT_TEST_SIZE, seed=0),
                created_by=created_by,
            )
        except ExportError as exc:
            raise TrainingError(
                f"Could not snapshot {project.slug} for its {source[9:]} prompts: {exc} (or choose --prompts-from items)."
            ) from None
    if snapshot is not None and snapshot.project_id != project.pk:
        raise TrainingError(f"Snapshot {snapshot.pk} belongs to another project.")
    scorer = None
    if source == "low-confidence":
        if not rewards:
            raise TrainingError(
                "prompts_from=low-confidence needs a reward model to measure confidence with (--reward-model)."
            )
        scorer = _scorer(rewards)
    try:
        rows = datasets.select_prompts(
            project,
            source,
            snapshot=snapshot if source.startswith("snapshot-") else None,
            scorer=scorer,
            data=prompts.data,
            file_name=prompts.file_name,
            max_prompts=prompts.max_prompts,
        )
    except datasets.PromptsError as exc:
        raise TrainingError(str(exc)) from None
    inputs = {"prompts_from": source, "prompts": len(rows), "prompts_hash": datasets.prompts_hash(rows)}
    if prompts.file_name:
        inputs["prompts_file"] = prompts.file_name
    if prompts.max_prompts:
        inputs["max_prompts"] = prompts.max_prompts
    return rows, snapshot if source.startswith("snapshot-") else None, inputs


# Config options a constitution kind gets from the project, never from the launcher.
CONSTITUTION_OPTIONS = ("principle_names", "principle_texts")


def _constitution_values(kind: kinds.TrainingKind, project: Project, base, values: dict) -> tuple[dict, dict]:
    """A kind that draws from the constitution (critique_revise): the project's principles into the config, and
    ``run.inputs["constitution"]`` (its sha256 and names). Refused: a project without one, principles given as
    options, and a policy that is a reward model (it would load with a random language-model head)."""
    if not kind.constitution:
        return values, {}
    given = [name for name in CONSTITUTION_OPTIONS if name in values]
    if given:
        raise TrainingError(
            f"{', '.join(given)} come from the project's constitution (its settings page, or PATCH "
            f"/api/projects/{project.slug}/ with constitution), not from options."
        )
    principles = _project_principles(
        project,
        f"Project {project.slug} has no constitution: a {kind.name} run critiques answers against its principles. "
        f"Add some on the project's settings page (or PATCH /api/projects/{project.slug}/ with constitution) first.",
    )
    _check_causal_lm(kind, base)
    values = {
        **values,
        "principle_names": [p["name"] for p in principles],
        "principle_texts": [p["text"] for p in principles],
    }
    return values, {"hash": constitution_hash(principles), "principles": [p["name"] for p in principles]}


def _project_principles(project: Project, missing: str) -> list[dict]:
    """The project's constitution, validated; TrainingError with ``missing`` when it has none."""
    try:
        principles = validate_constitution(project.constitution)
    except ValidationError as exc:
        raise TrainingError(f"The constitution of {project.slug} is invalid: {' '.join(exc.messages)}") from None
    if not principles:
        raise TrainingError(missing)
    return principles


def _teacher_values(kind: kinds.TrainingKind, base, teacher, values: dict) -> tuple[dict, object]:
    """A distilling kind's teacher (``--teacher``) into ``teacher_model``: only from MODEL_ROOTS or the registry, like
    the base model, and with the student's tokenizer (their next-token distributions are compared token by token).
    A kind without a teacher refuses one; whether a run needs one is its config's to say (distill: mode=on_policy)."""
    if kind.teacher == kinds.NO_TEACHER:
        if teacher:
            takers = ", ".join(k.name for k in kinds.KINDS.values() if k.teacher != kinds.NO_TEACHER)
            raise TrainingError(f"--teacher is for {takers}: a {kind.name} run learns from no teacher.")
        return values, None
    if "teacher_model" in values:
        raise TrainingError("Give the teacher as --teacher (or the teacher field), not as a config option.")
    if not teacher:
        if kind.teacher == kinds.TEACHER_NEEDED:
            raise TrainingError(f"A {kind.name} run learns from a teacher: give --teacher PATH_OR_ARTIFACT.")
        return values, None
    chosen = resolve_base_model(teacher)
    why = tokenizer_difference(base.path, chosen.path)
    if why:
        raise TrainingError(
            f"The teacher ({chosen.label}) and the student ({base.label}) do not share a tokenizer: {why}. "
            "Distillation compares their next-token distributions token by token; choose a teacher of the "
            "student's family."
        )
    return {**values, "teacher_model": str(chosen.path)}, chosen


def _context_values(kind: kinds.TrainingKind, project: Project, values: dict) -> tuple[dict, dict]:
    """``context=constitution`` (distill's context mode): the project's constitution, written out as the system
    prompt, and ``run.inputs["constitution"]`` (its sha256 and names); a project without one is refused."""
    if values.get("context") != CONSTITUTION_CONTEXT:
        return values, {}
    principles = _project_principles(
        project,
        f"Project {project.slug} has no constitution to take the context from (context=constitution): add "
        f"principles on its settings page (or PATCH /api/projects/{project.slug}/ with constitution), or give "
        "the context as text.",
    )
    context = constitution_context(principles)
    return {**values, "context": context}, {
        "hash": constitution_hash(principles),
        "principles": [p["name"] for p in principles],
    }


def _check_causal_lm(kind: kinds.TrainingKind, base) -> None:
    """A policy that is a reward model (a registered one, or a folder whose config names a sequence classifier)."""
    if base.artifact is not None:
        is_classifier = base.artifact.kind == ArtifactKind.REWARD
    else:
        try:
            architectures = json.loads((base.path / "config.json").read_text(encoding="utf-8")).get("architectures")
        except (OSError, ValueError, AttributeError):
            architectures = None
        is_classifier = any(str(a).endswith("ForSequenceClassification") for a in architectures or [])
    if is_classifier:
        raise TrainingError(
            f"{base.label} is a reward model (a sequence classifier); a {kind.name} run needs a causal language model "
            "as its policy: it answers, critiques and revises."
        )


def _from_run_source(kind: kinds.TrainingKind, project: Project, from_run, snapshot, prompts, values: dict):
    """``train sft --from-run N``: the demonstrations file a finished run wrote (critique_revise's revisions);
    ``train generate --from-run N`` (any prompt-driven kind): the prompts file a finished run wrote
    (synthesize_prompts' new prompts). Copied at launch. Returns ``(values, source run, its file)``; (values, None,
    None) without ``from_run``."""
    if from_run is None or from_run == "":
        return values, None, None
    reads_prompts = kind.reads == kinds.PROMPTS
    if not reads_prompts and (kind.reads != kinds.SNAPSHOT or "sft" not in kind.source_by_format):
        learners = [k.name for k in kinds.KINDS.values() if "sft" in k.source_by_format]
        raise TrainingError(
            f"--from-run is for {', '.join(learners)} runs (they learn from a run's demonstrations) and the "
            f"prompt-driven kinds ({', '.join(kinds.names(reads=kinds.PROMPTS))}: they read a run's new prompts)."
        )
    if snapshot is not None or prompts.source or prompts.data is not None:
        raise TrainingError("--from-run gives the run's data: leave out --snapshot and the prompts options.")
    source_run = from_run if isinstance(from_run, TrainingRun) else TrainingRun.objects.filter(pk=int(from_run)).first()
    if source_run is None:
        raise TrainingError(f"No run {from_run} to learn from (--from-run).")
    if source_run.project_id != project.pk:
        raise TrainingError(f"Run {source_run.pk} belongs to project {source_run.project.slug}, not {project.slug}.")
    made = source_run.training_kind
    if reads_prompts:
        return values, source_run, _prompts_file_of(source_run, made)
    if made is None or not made.demonstrations_file:
        writers = ", ".join(k.name for k in kinds.KINDS.values() if k.demonstrations_file)
        raise TrainingError(f"Run {source_run.pk} is a {source_run.kind} run; --from-run takes a {writers} run.")
    if source_run.status != RunStatus.SUCCEEDED:
        raise TrainingError(f"Run {source_run.pk} is {source_run.status}: only a succeeded run has demonstrations.")
    path = source_run.work_dir / made.demonstrations_file
    if not path.is_file():
        raise TrainingError(f"The demonstrations of run {source_run.pk} are missing from {path}.")
    expected = kind.source_by_format["sft"]
    if values.get("source", expected) != expected:
        raise TrainingError(f"A run's demonstrations go with source={expected}, not {values['source']}.")
    return {**values, "source": expected}, source_run, path


def _prompts_file_of(source_run: TrainingRun, made: kinds.TrainingKind | None):
    """The prompts file a succeeded run of a kind that writes one kept in its folder; TrainingError otherwise."""
    if made is None or not made.prompts_file:
        writers = ", ".join(k.name for k in kinds.KINDS.values() if k.prompts_file)
        raise TrainingError(f"Run {source_run.pk} is a {source_run.kind} run; --from-run takes a {writers} run.")
    if source_run.status != RunStatus.SUCCEEDED:
        raise TrainingError(f"Run {source_run.pk} is {source_run.status}: only a succeeded run has prompts to give.")
    path = source_run.work_dir / made.prompts_file
    if not path.is_file():
        raise TrainingError(f"The prompts of run {source_run.pk} are missing from {path}.")
    return path


def _run_prompt_rows(source_run: TrainingRun, path, prompts: Prompts) -> tuple[list[dict], dict]:
    """``(rows, inputs)`` of a prompt-driven run on the prompts another run wrote (at most ``max_prompts``)."""
    data = path.read_bytes()
    try:
        rows = datasets.parse_prompt_file(data, f"The prompts of run {source_run.pk}")
    except datasets.PromptsError as exc:
        raise TrainingError(str(exc)) from None
    if prompts.max_prompts:
        rows = rows[: prompts.max_prompts]
    inputs = {
        "prompts_from": f"run {source_run.pk}",
        "prompts": len(rows),
        "prompts_hash": datasets.prompts_hash(rows),
        "from_run": {
            "run": source_run.pk,
            "kind": source_run.kind,
            "file": path.name,
            "rows": len(rows),
            "hash": hashlib.sha256(data).hexdigest(),
        },
    }
    if prompts.max_prompts:
        inputs["max_prompts"] = prompts.max_prompts
    return rows, inputs


def launch_run(
    *,
    project: Project,
    kind: str,
    base_model: str,
    snapshot: Snapshot | None = None,
    values: dict | None = None,
    launched_by=None,
    parent: TrainingRun | int | None = None,
    enqueue: bool = True,
    reward_models=(),
    target_project: Project | str | None = None,
    prompts: Prompts | None = None,
    baseline: str | None = None,
    from_run: TrainingRun | int | None = None,
    teacher: str | None = None,
) -> TrainingRun:
    """Validate, snapshot or choose prompts as the kind needs, and queue a run. Bad input raises TrainingError and
    writes nothing (except a fresh snapshot, which is a valid export in its own right).

    What the kind reads, needs and publishes comes from its entry in training.kinds:

    - reward, dpo: a ``trl`` snapshot (``ratings`` for a regression reward model); sft: ``sft`` or ``trl``.
    - generate, rejection_sampling, ppo, grpo, rloo, evaluate: a prompts file written into the run's work folder
      (``prompts``: from the project's items, its disagreements, a reward model's low-confidence items, a
      snapshot's train or test prompts, or a file).
    - ``reward_models`` (``artifact:ID[:WEIGHT]``, a registered name or a folder under MODEL_ROOTS) are resolved to
      folders in the config and recorded in ``run.reward_artifacts``; generate writes into ``target_project``
      (default: this project); evaluate compares with ``baseline``.
    - critique_revise: the project's constitution goes into the config (a project without one is refused) and its
      sha256 and the templates' into ``run.inputs["constitution"]``.
    - sft with ``from_run``: the demonstrations a critique_revise run wrote (its ``sft.jsonl``), copied into this
      run's folder, instead of a snapshot; ``from_run`` becomes the parent.
    - a prompt-driven kind with ``from_run``: the prompts a synthesize_prompts run wrote (its ``prompts.jsonl``)
      become this run's prompts file; ``from_run`` becomes the parent. synthesize_prompts records its templates'
      hashes in ``run.inputs["templates"]``.
    - distill: ``teacher`` (MODEL_ROOTS or the registry, like the base model, and with the student's tokenizer) is
      resolved into ``teacher_model`` and recorded in ``run.inputs["teacher"]``; ``context=constitution`` becomes
      the project's constitution written out as a system prompt (its sha256 in ``run.inputs["constitution"]``).
    """
    prompts = prompts or Prompts()
    values = dict(values or {})
    kind = training_kind(kind)
    if kind.reads == kinds.ITEMS:
        raise TrainingError(
            f"A {kind.name} run is launched from its judge: train {kind.name} --project {project.slug} --judge NAME, the "
            f"judges page (/p/{project.slug}/judges/) or POST /api/projects/{project.slug}/judges/NAME/runs/."
        )
    base = resolve_base_model(base_model)
    values, constitution = _constitution_values(kind, project, base, values)
    values, source_run, source_file = _from_run_source(kind, project, from_run, snapshot, prompts, values)
    demonstrations = source_file if kind.reads == kinds.SNAPSHOT else None
    if source_run is not None and parent is None:
        parent = source_run
    parent = _parent(project, parent)
    target = _project(target_project)
    if kind.publishes == kinds.CANDIDATES and target is None:
        target = project
    rewards = resolve_reward_models(reward_models)
    values = _reward_values(kind, rewards, values)
    values, baseline_model = _baseline_values(kind, baseline, values)
    if kind.source_by_format:
        values["source"] = _snapshot_source(kind, project, snapshot, values)
    reference = None
    if values.get("ref_model"):  # dpo's reference policy: only from MODEL_ROOTS or the registry, like the base model
        reference = resolve_base_model(str(values["ref_model"]))
        values["ref_model"] = str(reference.path)
    values, teacher_model = _teacher_values(kind, base, teacher, values)
    values, context_constitution = _context_values(kind, project, values)
    if kind.publishes == kinds.CANDIDATES and not values.get("model_label"):
        values["model_label"] = model_label(str(base.path), base.artifact)
    config = resolve_config(kind, project, values, str(base.path))
    if teacher_model is None and getattr(config, "needs_teacher", False):
        raise TrainingError(config.NO_TEACHER_MESSAGE)
    _check_target(kind, target, config)
    models_used = [
        base.artifact,
        *(r.artifact for r in rewards),
        baseline_model.artifact if baseline_model else None,
        reference.artifact if reference else None,
        teacher_model.artifact if teacher_model else None,
    ]
    check_launch_access(launched_by, project, models_used, target)
    rows, inputs = None, {}
    if kind.reads == kinds.PROMPTS and source_file is not None:
        rows, inputs = _run_prompt_rows(source_run, source_file, prompts)
    elif kind.reads == kinds.PROMPTS:
        rows, snapshot, inputs = _prompt_rows(kind, project, snapshot, prompts, rewards, launched_by)
    elif demonstrations is not None:
        data = demonstrations.read_bytes()
        lines = sum(1 for line in data.splitlines() if line.strip())
        if not lines:
            raise TrainingError(f"Run {source_run.pk} wrote no demonstrations (its {demonstrations.name} is empty).")
        inputs = {
            "from_run": {
                "run": source_run.pk,
                "kind": source_run.kind,
                "file": demonstrations.name,
                "rows": lines,
                "hash": hashlib.sha256(data).hexdigest(),
            }
        }
        if source_run.inputs.get("constitution"):
            inputs["constitution"] = source_run.inputs["constitution"]
    else:
        if prompts.source or prompts.data is not None:
            prompt_kinds = ", ".join(kinds.names(reads=kinds.PROMPTS))
            raise TrainingError(
                f"A {kind.name} run learns from a snapshot's votes, not from prompts (--prompts-from is for {prompt_kinds})."
            )
        snapshot = _snapshot_for(project, snapshot, config, launched_by, kind)
    if reference is not None:
        inputs["ref_model"] = {
            "path": str(reference.path),
            "artifact": reference.artifact.pk if reference.artifact else None,
        }
    if teacher_model is not None:
        inputs["teacher"] = {
            "path": str(teacher_model.path),
            "artifact": teacher_model.artifact.pk if teacher_model.artifact else None,
            "label": teacher_model.label,
        }
    if context_constitution:
        inputs["constitution"] = context_constitution
    if constitution:
        inputs["constitution"] = {**constitution, "templates": config.template_hashes()}
    elif kind.publishes == kinds.NEW_PROMPTS:
        inputs["templates"] = config.template_hashes()
    if baseline_model is not None:
        inputs["baseline"] = {
            "path": str(baseline_model.path),
            "artifact": baseline_model.artifact.pk if baseline_model.artifact else None,
            "label": baseline_model.label,
        }
    with transaction.atomic():
        run = TrainingRun.objects.create(
            project=project,
            kind=kind.name,
            config=config.to_dict(),
            snapshot=snapshot,
            snapshot_hash=snapshot.content_hash if snapshot else "",
            base_model=str(base.path),
            base_artifact=base.artifact,
            parent=parent,
            launched_by=launched_by,
            target_project=target,
            inputs=inputs,
        )
        run.reward_artifacts.set([r.artifact for r in rewards if r.artifact is not None])
        if rows is not None:
            try:
                datasets.write_prompts(run, rows)
            except OSError as exc:
                shutil.rmtree(run.work_dir, ignore_errors=True)
                raise TrainingError(f"Cannot write the prompts under ARTIFACT_ROOT: {exc}") from None
        if demonstrations is not None:
            try:  # copied, not referenced: a retry reads the same rows, whatever happens to the other run's folder
                datasets.write_demonstrations(run, data)
            except OSError as exc:
                shutil.rmtree(run.work_dir, ignore_errors=True)
                raise TrainingError(f"Cannot write the demonstrations under ARTIFACT_ROOT: {exc}") from None
        if enqueue:
            transaction.on_commit(partial(enqueue_run, run.pk))
    return run


# A judge's options (annotate.judging.OPTIONS) → the judge run's config fields.
JUDGE_OPTION_FIELDS = {
    "temperature": "temperature",
    "max_tokens": "max_new_tokens",
    "max_prompt_tokens": "max_prompt_length",
    "batch_size": "batch_size",
    "concurrency": "concurrency",
    "timeout": "timeout",
    "retries": "retries",
}


def launch_judge_run(
    judge: Judge,
    *,
    max_items: int | None = None,
    values: dict | None = None,
    launched_by=None,
    parent: TrainingRun | int | None = None,
    enqueue: bool = True,
) -> TrainingRun:
    """Queue a judge run: ``judge`` votes on the items of its project it has no vote on yet (at most
    ``max_items``, in id order; gold items included, so its accuracy can be measured). The items, with the
    conversations the judge is shown, are written at launch; the runner appends its votes as it goes (a retry goes
    on where the last attempt stopped) and publishing records them (annotate.actions.record_ai_votes).

    The config comes from the judge: its backend and model (resolved as for any run: MODEL_ROOTS or the registry,
    safetensors only), its options, its template's hash; ``values`` may override the runtime options (batch_size,
    temperature...), not the judge's identity. Refused, with nothing written: no item left to judge, another run of
    this judge queued or running, an openai judge whose host is no longer allowed or whose key's environment
    variable is not set here, a principle no longer in the constitution."""
    project = judge.project
    kind = training_kind("judge")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise TrainingError("max_items must be a whole number of at least 1.")
    values = dict(values or {})
    if fixed := sorted(set(values) & JUDGE_FIELDS):
        raise TrainingError(
            f"{', '.join(fixed)} come from the judge ({judge.name}); change the judge (or add another), not the run."
        )
    busy = TrainingRun.objects.filter(kind=kind.name, status__in=ACTIVE_STATUSES, inputs__judge_id=judge.pk).first()
    if busy is not None:
        raise TrainingError(f"Run {busy.pk} of judge {judge.name} is {busy.status}: wait for it, or cancel it first.")
    options = judging.option_values(judge.options or {})
    data = {JUDGE_OPTION_FIELDS[name]: value for name, value in options.items()}
    data.update(backend=judge.backend, judge=judge.name, task_kind=project.kind)
    base_path, base_artifact, rewards = "", None, []
    if judge.backend == Judge.Backend.LOCAL:
        base = resolve_base_model(judge.model)
        base_path, base_artifact = str(base.path), base.artifact
        data["model"] = base_path
    elif judge.backend == Judge.Backend.REWARD_MODEL:
        rewards = resolve_reward_models([part.strip() for part in judge.model.split(",")])
        data["reward_models"] = [str(r.path) for r in rewards]
        if rewards[0].weight is not None:
            data["reward_weights"] = [r.weight for r in rewards]
        data["model"] = judge.model
    else:
        try:
            data["base_url"] = check_judge_endpoint(judge.base_url)
        except InvalidJudge as exc:
            raise TrainingError(str(exc)) from None
        if judge.api_key_env and not os.environ.get(judge.api_key_env):
            raise TrainingError(
                f"The environment variable {judge.api_key_env}, which holds judge {judge.name}'s API key, is not set: "
                "set it where the worker runs (and where runs are launched), then launch again."
            )
        base_path = judge.model
        data.update(model=judge.model, api_key_env=judge.api_key_env, allowed_hosts=list(settings.ARBITER_JUDGE_HOSTS))
    try:
        principle = judge_principle(project, judge.principle)
    except InvalidJudge as exc:
        raise TrainingError(str(exc)) from None
    template = judging.judge_template(judge) if judge.backend != Judge.Backend.REWARD_MODEL else ""
    data["template_hash"] = judging.template_hash(template) if template else ""
    try:
        config = kind.config.from_dict({**data, **values})
    except ConfigError as exc:
        raise TrainingError(str(exc)) from None
    check_launch_access(launched_by, project, [base_artifact, *(r.artifact for r in rewards)])
    parent = _parent(project, parent)
    rows = datasets.judge_items(judge, max_items=max_items, principle=principle)
    if not rows:
        raise TrainingError(f"Judge {judge.name} has voted on every item of {project.slug}: nothing left to judge.")
    digest = datasets.prompts_hash(rows)
    inputs = {
        "judge": judge.name,
        "judge_id": judge.pk,
        "backend": judge.backend,
        "model": judge.model,
        "template_hash": data["template_hash"],
        "principle": judge.principle,
        "principle_hash": hashlib.sha256(principle["text"].encode()).hexdigest() if principle else "",
        "constitution_hash": constitution_hash(project.constitution) if principle else "",
        "items": len(rows),
        "items_hash": digest,
    }
    if max_items:
        inputs["max_items"] = max_items
    with transaction.atomic():
        run = TrainingRun.objects.create(
            project=project,
            kind=kind.name,
            config=config.to_dict(),
            base_model=base_path,
            base_artifact=base_artifact,
            parent=parent,
            launched_by=launched_by,
            inputs=inputs,
        )
        run.reward_artifacts.set([r.artifact for r in rewards if r.artifact is not None])
        try:
            datasets.write_judge_items(run, rows)
        except OSError as exc:
            shutil.rmtree(run.work_dir, ignore_errors=True)
            raise TrainingError(f"Cannot write the items under ARTIFACT_ROOT: {exc}") from None
        if enqueue:
            transaction.on_commit(partial(enqueue_run, run.pk))
    return run


def start_next_round(
    policy_run: TrainingRun,
    *,
    launched_by=None,
    target_project=None,
    values: dict | None = None,
    prompts: Prompts | None = None,
    reward_models=(),
    enqueue: bool = True,
) -> TrainingRun:
    """One action from a finished policy run to the next round: a generate run with its model, into the project
    (or ``target_project``), its parent the policy run."""
    artifact = ModelArtifact.objects.filter(run=policy_run).first()
    if policy_run.status != RunStatus.SUCCEEDED or artifact is None or artifact.kind != ArtifactKind.POLICY:
        raise TrainingError(f"Run {policy_run.pk} has no finished policy to write the next round with.")
    return launch_run(
        project=policy_run.project,
        kind=kinds.NEXT_ROUND,
        base_model=f"artifact:{artifact.pk}",
        values=values,
        launched_by=launched_by,
        parent=policy_run,
        enqueue=enqueue,
        reward_models=reward_models,
        target_project=target_project or policy_run.target_project or policy_run.project,
        prompts=prompts,
    )


def cancel_run(run: TrainingRun) -> TrainingRun:
    """A queued run is cancelled at once; a running one is asked to stop (its worker kills it within seconds).
    A finished run is left as it is."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status == RunStatus.QUEUED:
            run.status, run.finished_at, run.cancel_requested = RunStatus.CANCELLED, timezone.now(), True
            run.save(update_fields=["status", "finished_at", "cancel_requested"])
        elif run.status == RunStatus.RUNNING and not run.cancel_requested:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested"])
    return run


def retry_run(run: TrainingRun) -> TrainingRun:
    """A failed or cancelled run again, as its next attempt; it resumes from its last checkpoint if one is left."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise TrainingError(f"Only failed or cancelled runs can be retried; run {run.pk} is {run.status}.")
        run.status, run.attempt, run.cancel_requested = RunStatus.QUEUED, run.attempt + 1, False
        run.error, run.finished_at, run.worker = "", None, ""
        run.save(update_fields=["status", "attempt", "cancel_requested", "error", "finished_at", "worker"])
        transaction.on_commit(partial(enqueue_run, run.pk))
    return run
