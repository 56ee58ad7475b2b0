"""What a succeeded run becomes, per kind, all or nothing (on the worker, once its runner finished): a registered
model (:func:`register_artifact` writes the card and provenance and renames the folder into place), a new round
of candidates (generate: training.rounds.create_candidate_round), or the comparisons and the win rate
(evaluate: :func:`complete_evaluation`), or an AI judge's votes (judge: :func:`record_judge_votes`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotate.actions import record_ai_votes
from annotate.models import Judge

from . import cards, kinds
from .datasets import judge_votes_path
from .lifecycle import PublishFailed, lock_running, succeed
from .models import ArtifactKind, ModelArtifact, TrainingRun
from .rounds import comparison_outcome, create_candidate_round, read_output_rows
from .runners.base import folder_size, read_arbiter_json
from .selectors import win_rate


def publish_run(run: TrainingRun, output_dir: Path, metrics: dict, dataset_hash: str):
    """What a succeeded runner leaves becomes Arbiter's, per kind: a registered model (the model kinds;
    rejection_sampling's kept samples are kept in the run's folder), a new round of the target project
    (generate; critique_revise, which also keeps its SFT file in the run's folder), or the comparisons and the
    win rate (evaluate). All or nothing, like :func:`register_artifact`."""
    output_dir = Path(output_dir)
    kind = kinds.get(run.kind)
    if kind.demonstrations_file:  # critique_revise's revisions, kept for `train sft --from-run`
        _keep_output(run, output_dir, kind.demonstrations_file)
    if kind.prompts_file:  # synthesize_prompts' new prompts, kept for `train generate --from-run`
        _keep_output(run, output_dir, kind.prompts_file)
    if kind.publishes == kinds.NEW_PROMPTS:  # nothing else to publish: the counts are the run's metrics
        # Every instruction written, with its answer and why it was dropped: what a researcher reads to tune the
        # filters (the counts alone do not say which instructions they were).
        _keep_output(run, output_dir, "synthesis.jsonl")
        with transaction.atomic():
            locked = lock_running(run)
            succeed(locked, metrics, dataset_hash)
        return locked
    if kind.publishes == kinds.CANDIDATES:
        return create_candidate_round(run, _keep_output(run, output_dir, "candidates.jsonl"), metrics, dataset_hash)
    if kind.publishes == kinds.COMPARISONS:
        return complete_evaluation(run, _keep_output(run, output_dir, "comparisons.jsonl"), metrics, dataset_hash)
    if kind.publishes == kinds.VOTES:
        return record_judge_votes(run, metrics, dataset_hash)
    if kind.review_file and (output_dir / kind.review_file).is_file():
        kept = _keep_output(run, output_dir, kind.review_file)
        metrics = {**metrics, "kept_samples": float(sum(1 for line in kept.read_bytes().splitlines() if line.strip()))}
        os.remove(output_dir / kind.review_file)
    return register_artifact(run, output_dir, metrics, dataset_hash)


def _keep_output(run: TrainingRun, output_dir: Path, name: str) -> Path:
    """A data file the runner wrote, copied into the run's own folder (it outlives the temporary output folder)."""
    source = output_dir / name
    if not source.is_file():
        raise PublishFailed(f"The {run.kind} runner finished without writing {name}.")
    target = run.work_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def artifact_folder_name(run: TrainingRun) -> str:
    criterion = run.criterion
    return f"run-{run.pk}-{run.kind}" + (f"-{criterion}" if criterion else "")


def register_artifact(run: TrainingRun, output_dir: Path, metrics: dict, dataset_hash: str) -> ModelArtifact:
    """The finished model into the registry: card and provenance written, folder renamed into place, run succeeded —
    all or nothing."""
    output_dir = Path(output_dir)
    relative = Path("models") / run.project.slug / artifact_folder_name(run)
    final = Path(settings.ARTIFACT_ROOT) / relative
    info = read_arbiter_json(output_dir)
    with transaction.atomic():
        locked = lock_running(run)
        if final.exists() and not ModelArtifact.objects.filter(path=str(relative)).exists():
            shutil.rmtree(final)  # left by an attempt that died between the rename and its commit
        artifact = ModelArtifact.objects.create(
            project=run.project,
            run=run,
            name=f"{run.project.slug}-{artifact_folder_name(run)}",
            kind=ArtifactKind.REWARD if kinds.get(run.kind).publishes == kinds.REWARD_MODEL else ArtifactKind.POLICY,
            path=str(relative),
            base_model=run.base_model,
            base_artifact=run.base_artifact,
            snapshot=run.snapshot,
            snapshot_hash=run.snapshot_hash,
            criterion=run.criterion,
            is_adapter=bool(info.get("is_adapter")),
            config=run.config,
            metrics=metrics,
            created_by=run.launched_by,
        )
        info.update(
            artifact=artifact.pk,
            name=artifact.name,
            project=run.project.slug,
            run=run.pk,
            snapshot=run.snapshot_id,
            snapshot_hash=run.snapshot_hash,
            dataset_hash=dataset_hash,
            base_model=run.base_model,
            metrics=metrics,
        )
        lineage = run_lineage(run)
        info["lineage"] = lineage
        (output_dir / "arbiter.json").write_text(
            json.dumps(info, indent=2, sort_keys=True, default=str), encoding="utf-8"
        )
        card = cards.model_card(
            name=artifact.name,
            artifact_id=artifact.pk,
            kind=run.kind,
            project=run.project,
            run=run,
            base_model=run.base_model,
            snapshot=run.snapshot,
            dataset_hash=dataset_hash,
            config=run.config,
            metrics=metrics,
            info=info,
            lineage=lineage,
        )
        (output_dir / "README.md").write_text(card, encoding="utf-8")
        artifact.size_bytes = folder_size(output_dir)
        artifact.save(update_fields=["size_bytes"])
        succeed(locked, metrics, dataset_hash)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(output_dir, final)  # last: if anything above failed, nothing is in place
    return artifact


def run_lineage(run: TrainingRun) -> dict:
    """Where a run's model comes from: base model (and artifact), reward models, snapshot, parent run, prompts."""
    rewards = [
        {"artifact": a.pk, "name": a.name, "snapshot": a.snapshot_id, "snapshot_hash": a.snapshot_hash}
        for a in run.reward_artifacts.all()
    ]
    lineage = {
        "base_model": run.base_model,
        "base_artifact": run.base_artifact_id,
        "reward_models": rewards or [{"path": path} for path in (run.config or {}).get("reward_models", [])],
        "snapshot": run.snapshot_id,
        "snapshot_hash": run.snapshot_hash,
        "parent_run": run.parent_id,
    }
    if run.inputs:
        lineage["inputs"] = run.inputs
    return lineage


def complete_evaluation(run: TrainingRun, path: Path, metrics: dict, dataset_hash: str) -> TrainingRun:
    """evaluate: the reward-model win rate of the new policy over the baseline with its 95% interval (the runner's
    ``win_rate``, ``win_rate_lo``, ``win_rate_hi``; recomputed from the comparisons if it left them out) into the
    run's metrics. No weights are registered."""
    outcomes = [comparison_outcome(row) for row in read_output_rows(path)]
    if not outcomes or None in outcomes:
        raise PublishFailed("comparisons.jsonl has no comparisons, or rows without a winner (policy, baseline or tie).")
    result = win_rate(outcomes.count("policy"), outcomes.count("baseline"), outcomes.count("tie"))
    metrics = {
        "win_rate": result["win_rate"],
        "win_rate_lo": result["ci_low"],
        "win_rate_hi": result["ci_high"],
        **metrics,
        "comparisons": float(result["n"]),
    }
    with transaction.atomic():
        locked = lock_running(run)
        succeed(locked, metrics, dataset_hash)
    return locked


def record_judge_votes(run: TrainingRun, metrics: dict, dataset_hash: str) -> TrainingRun:
    """judge: the votes the runner appended to its votes file become the judge's votes
    (annotate.actions.record_ai_votes: judgments with source "ai", JudgeVotes with the provenance and this run),
    and the run succeeds, in one transaction. Items the judge voted on meanwhile (another run) are skipped, never
    judged twice. The run's lineage (judge, backend, model, template hash, principle, constitution hash) was
    recorded in ``run.inputs`` at launch; what was recorded goes into its metrics."""
    judge = Judge.objects.filter(pk=(run.inputs or {}).get("judge_id")).first()
    if judge is None:
        raise PublishFailed(
            f"The judge {run.inputs.get('judge')!r} of this run was deleted; its votes were not recorded."
        )
    path = judge_votes_path(run)
    if not path.is_file():
        raise PublishFailed(f"The judge runner finished without its votes file ({path}).")
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise PublishFailed(f"{path}, line {number}: not JSON.") from None
    with transaction.atomic():
        locked = lock_running(run)
        report = record_ai_votes(judge, rows, run=locked)
        metrics = {
            **metrics,
            "recorded_votes": float(report.created),
            "recorded_unparseable": float(report.unparseable),
            "recorded_errors": float(report.errors),
            "skipped_already_judged": float(report.skipped),
            "routed_from_people": float(report.routed),
        }
        succeed(locked, metrics, dataset_hash)
    return locked
