import argparse
import json
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter

from annotate.models import Judge, Project, Snapshot

from ... import kinds, launching, selectors, supervisor, tasks
from ...datasets import PROMPT_SOURCES
from ...models import RunStatus
from ...runners.base import ConfigError
from ...selectors import TrainingError


class HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, and the table of kinds keeps its lines."""


MAKES = {
    kinds.MODEL: "a policy",
    kinds.REWARD_MODEL: "a reward model",
    kinds.CANDIDATES: "a round of candidates",
    kinds.COMPARISONS: "comparisons with a baseline",
    kinds.VOTES: "an AI judge's votes",
    kinds.NEW_PROMPTS: "new prompts (for generate --from-run)",
}
READS = {kinds.PROMPTS: "prompts", kinds.SNAPSHOT: "a snapshot", kinds.ITEMS: "the items its --judge has not voted on"}
# Options of the training kinds that a judge run takes from its judge instead.
NOT_FOR_JUDGES = (
    "base_model",
    "snapshot",
    "reward_model",
    "target_project",
    "prompts_from",
    "prompts_file",
    "max_prompts",
    "baseline",
    "from_run",
    "teacher",
)


def kinds_table() -> str:
    """What each kind reads, needs and makes, from the registry (training.kinds), for ``train --help``."""
    lines = ["kinds:"]
    for kind in kinds.KINDS.values():
        reads = READS[kind.reads]
        needs = {
            kinds.REWARD_MODEL_NEEDED: "; needs --reward-model",
            kinds.OPTIONAL_REWARD_MODEL: "; --reward-model optional",
        }
        lines.append(
            f"  {kind.name:<19} {kind.label}: reads {reads}, makes {MAKES[kind.publishes]}"
            f"{needs.get(kind.reward_models, '')}"
            + {kinds.TEACHER_NEEDED: "; needs --teacher", kinds.OPTIONAL_TEACHER: "; takes --teacher"}.get(
                kind.teacher, ""
            )
            + "; "
            + (f"base model: {' or '.join(kind.base_models)}" if kind.base_models else "model: the judge's")
        )
    return "\n".join(lines)


def run_data(run) -> str:
    """What a run reads, in words: its prompts, another run's demonstrations, a judge's items, or its snapshot."""
    if run.inputs.get("judge_id"):
        return f"{run.inputs['items']} items, judge {run.inputs['judge']} ({run.inputs['backend']})"
    if run.inputs.get("prompts"):
        return f"{run.inputs['prompts']} prompts from {run.inputs['prompts_from']}"
    if run.inputs.get("from_run"):
        source = run.inputs["from_run"]
        return f"{source['rows']} demonstrations of run {source['run']}"
    return f"snapshot {run.snapshot_id}"


class Command(BaseCommand):
    help = (
        "Launch a training run: enqueue it for the worker (prints the run id), or with --foreground run it here, "
        'streaming progress, and print as the last line {"run", "status", "artifact", "artifact_path", "metrics"} '
        '(generate adds "round").'
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.epilog = kinds_table()
        return parser

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=list(kinds.KINDS), help=f"Available now: {', '.join(kinds.available())}.")
        # Required for a run, not for --help-config: checked in handle().
        parser.add_argument("--project", help="Project slug (required, but for --help-config).")
        parser.add_argument(
            "--base-model",
            help="A folder under MODEL_ROOTS, or artifact:ID from the registry (required, but for --help-config).",
        )
        parser.add_argument("--snapshot", type=int, help="Snapshot id; default: a fresh snapshot with a test split.")
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="A config option (repeatable); --help-config lists them.",
        )
        parser.add_argument(
            "--reward-model",
            action="append",
            default=[],
            metavar="ARTIFACT[:WEIGHT]",
            help=f"Reward model to score with (repeatable; {', '.join(kinds.names(reward_models=kinds.REWARD_MODEL_NEEDED))} need one): "
            "artifact:ID, a registered name or a folder under MODEL_ROOTS, optionally :WEIGHT.",
        )
        parser.add_argument(
            "--target-project",
            metavar="SLUG",
            help="generate: the pairwise or ranking project whose new round gets the candidates (default --project).",
        )
        parser.add_argument(
            "--prompts-from",
            choices=PROMPT_SOURCES,
            help="Prompt-driven kinds: the project's items (default), items annotators disagree on, items the reward "
            "model(s) are least sure about, a snapshot's train or test prompts (default for evaluate), or --prompts-file.",
        )
        parser.add_argument(
            "--prompts-file",
            metavar="PATH",
            help='A JSONL file of {"prompt": text or messages} rows (implies --prompts-from file).',
        )
        parser.add_argument(
            "--max-prompts",
            type=int,
            metavar="N",
            help="At most this many prompts (low-confidence: the N least confident; default half).",
        )
        parser.add_argument(
            "--baseline",
            metavar="PATH_OR_ARTIFACT",
            help="evaluate: the policy the new one (--base-model) is compared with.",
        )
        parser.add_argument(
            "--parent",
            type=int,
            metavar="RUN",
            help="The run this one continues (lineage), e.g. the policy run of the previous round.",
        )
        parser.add_argument(
            "--from-run",
            type=int,
            metavar="RUN",
            help="sft: learn from the demonstrations a finished critique_revise run wrote (its revisions) instead "
            "of a snapshot; generate (and the other prompt-driven kinds): the new prompts a finished "
            "synthesize_prompts run kept, instead of --prompts-from.",
        )
        parser.add_argument(
            "--teacher",
            metavar="PATH_OR_ARTIFACT",
            help=f"{', '.join(k.name for k in kinds.KINDS.values() if k.teacher != kinds.NO_TEACHER)}: the model the "
            "student (--base-model) learns from, with the same tokenizer: a folder under MODEL_ROOTS or artifact:ID.",
        )
        parser.add_argument("--judge", metavar="NAME", help="judge: the project's AI judge that votes (add_judge).")
        parser.add_argument(
            "--max-items", type=int, metavar="N", help="judge: at most this many of the items it has not voted on."
        )
        parser.add_argument("--launched-by", help="Username recorded as the launcher.")
        parser.add_argument("--foreground", action="store_true", help="Run in this process instead of the queue.")
        parser.add_argument("--help-config", action="store_true", help="List the config options of KIND and exit.")

    def handle(self, *args, **options):
        kind = options["kind"]
        try:
            training_kind = launching.training_kind(kind)
        except TrainingError as exc:
            raise CommandError(str(exc)) from None
        if options["help_config"]:
            ignored = getattr(training_kind.config, "IGNORED_OPTIONS", frozenset())  # inherited, never read
            for row in training_kind.config.describe():
                if row["name"] in ignored:
                    continue
                choices = f" ({' | '.join(row['choices'])})" if row["choices"] else ""
                self.stdout.write(f"{row['name']} = {row['default']!r}  [{row['type']}]{choices}\n    {row['help']}")
            return
        judging = training_kind.reads == kinds.ITEMS
        needed = ("project", "judge") if judging else ("project", "base_model")
        missing = [f"--{name.replace('_', '-')}" for name in needed if not options[name]]
        if judging and (given := [f"--{n.replace('_', '-')}" for n in NOT_FOR_JUDGES if options[n] not in (None, [])]):
            raise CommandError(f"{', '.join(given)}: a judge run takes its model and items from its judge (--judge).")
        if not judging and (options["judge"] or options["max_items"] is not None):
            raise CommandError(f"--judge and --max-items are for {' and '.join(kinds.names(reads=kinds.ITEMS))} runs.")
        if options["max_items"] is not None and options["max_items"] < 1:
            raise CommandError("--max-items must be at least 1.")
        if missing:
            raise CommandError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required.")
        if options["reward_model"] and training_kind.publishes == kinds.REWARD_MODEL:
            raise CommandError("--reward-model is for policy runs; a reward run trains a reward model.")
        if options["max_prompts"] is not None and options["max_prompts"] < 1:
            raise CommandError("--max-prompts must be at least 1.")
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.")
        snapshot = None
        if options["snapshot"] is not None:
            snapshot = Snapshot.objects.filter(pk=options["snapshot"], project=project).first()
            if snapshot is None:
                raise CommandError(f"No snapshot {options['snapshot']} in project {project.slug}.")
        prompts = launching.Prompts(source=options["prompts_from"] or "", max_prompts=options["max_prompts"])
        if options["prompts_file"]:
            if options["prompts_from"] not in (None, "file"):
                raise CommandError(f"--prompts-file goes with --prompts-from file, not {options['prompts_from']}.")
            try:
                prompts.data = Path(options["prompts_file"]).read_bytes()
            except OSError as exc:
                raise CommandError(f"Cannot read {options['prompts_file']}: {exc.strerror}.") from None
            prompts.source, prompts.file_name = "file", Path(options["prompts_file"]).name
        user = None
        if options["launched_by"]:
            user = get_user_model().objects.filter(username=options["launched_by"]).first()
            if user is None:
                raise CommandError(f"No user {options['launched_by']!r}.")
        try:
            values = training_kind.config.parse_overrides(options["overrides"])
            if judging:
                judge = Judge.objects.filter(project=project, name=options["judge"]).first()
                if judge is None:
                    names = ", ".join(project.judges.values_list("name", flat=True)) or "none yet (add_judge)"
                    raise CommandError(
                        f"Project {project.slug} has no judge {options['judge']!r} (its judges: {names})."
                    )
                run = launching.launch_judge_run(
                    judge,
                    max_items=options["max_items"],
                    values=values,
                    launched_by=user,
                    parent=options["parent"],
                    enqueue=not options["foreground"],
                )
            else:
                run = launching.launch_run(
                    project=project,
                    kind=kind,
                    base_model=options["base_model"],
                    snapshot=snapshot,
                    values=values,
                    launched_by=user,
                    enqueue=not options["foreground"],
                    reward_models=options["reward_model"],
                    target_project=options["target_project"],
                    prompts=prompts,
                    baseline=options["baseline"],
                    parent=options["parent"],
                    from_run=options["from_run"],
                    teacher=options["teacher"],
                )
        except (TrainingError, ConfigError) as exc:
            raise CommandError(str(exc)) from None
        if not options["foreground"]:
            data = run_data(run)
            self.stdout.write(f"Queued run {run.pk} ({kind} on {data}); a worker (db_worker) runs it.")
            self.stdout.write(str(run.pk))
            return
        data = run_data(run)
        self.stdout.write(f"Run {run.pk}: {kind} on {data}, base {run.base_model}")
        run = supervisor.execute(
            run.pk,
            run.attempt,
            in_process=True,
            echo=lambda line: self.stdout.write(line),
            on_claimed=tasks.schedule_watch,
        )
        artifact = getattr(run, "artifact", None) if run.status == RunStatus.SUCCEEDED else None
        if run.error:
            self.stderr.write(f"Run {run.pk} {run.status}: {run.error}")
        result = {
            "run": run.pk,
            "status": run.status,
            "artifact": artifact.pk if artifact else None,  # what --base-model artifact:N and the API take
            "artifact_path": str(artifact.folder) if artifact else None,
            "metrics": run.metrics,
        }
        made = selectors.generated_round(run)
        if made is not None:  # generate: where the candidates went
            result["round"] = {"project": made.project.slug, "number": made.number, "id": made.pk}
        self.stdout.write(json.dumps(result, default=str))
        if run.status != RunStatus.SUCCEEDED:
            raise SystemExit(1)
