import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate.models import Project, Snapshot

from ... import actions, supervisor
from ...models import RunKind, RunStatus
from ...runners import available_kinds, config_class
from ...runners.base import ConfigError
from ...selectors import TrainingError


class Command(BaseCommand):
    help = (
        "Launch a training run: enqueue it for the worker (prints the run id), or with --foreground run it here, "
        "streaming progress, and print as the last line {\"run\", \"status\", \"artifact_path\", \"metrics\"}."
    )

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=RunKind.values, help=f"Available now: {', '.join(available_kinds())}.")
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument("--base-model", required=True, help="A folder under MODEL_ROOTS, or artifact:ID from the registry.")
        parser.add_argument("--snapshot", type=int, help="Snapshot id; default: a fresh snapshot with a test split.")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="A config option (repeatable); --help-config lists them.")  # fmt: skip
        parser.add_argument("--reward-model", action="append", default=[], metavar="ARTIFACT[:WEIGHT]",
                            help="Reward model(s) to score with (policy kinds; not used by reward runs).")  # fmt: skip
        parser.add_argument("--launched-by", help="Username recorded as the launcher.")
        parser.add_argument("--foreground", action="store_true", help="Run in this process instead of the queue.")
        parser.add_argument("--help-config", action="store_true", help="List the config options of KIND and exit.")

    def handle(self, *args, **options):
        kind = options["kind"]
        if kind not in available_kinds():
            raise CommandError(f"{kind} runs are not available yet; available: {', '.join(available_kinds())}.")
        if options["help_config"]:
            for row in config_class(kind).describe():
                choices = f" ({' | '.join(row['choices'])})" if row["choices"] else ""
                self.stdout.write(f"{row['name']} = {row['default']!r}  [{row['type']}]{choices}\n    {row['help']}")
            return
        if options["reward_model"] and kind == RunKind.REWARD:
            raise CommandError("--reward-model is for policy runs; a reward run trains a reward model.")
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project {options['project']!r}.")
        snapshot = None
        if options["snapshot"] is not None:
            snapshot = Snapshot.objects.filter(pk=options["snapshot"], project=project).first()
            if snapshot is None:
                raise CommandError(f"No snapshot {options['snapshot']} in project {project.slug}.")
        user = None
        if options["launched_by"]:
            user = get_user_model().objects.filter(username=options["launched_by"]).first()
            if user is None:
                raise CommandError(f"No user {options['launched_by']!r}.")
        try:
            values = config_class(kind).parse_overrides(options["overrides"])
            run = actions.launch_run(
                project=project, kind=kind, base_model=options["base_model"], snapshot=snapshot, values=values,
                launched_by=user, enqueue=not options["foreground"],
            )  # fmt: skip
        except (TrainingError, ConfigError) as exc:
            raise CommandError(str(exc)) from None
        if not options["foreground"]:
            self.stdout.write(f"Queued run {run.pk} ({kind} on snapshot {run.snapshot_id}); a worker (db_worker) runs it.")
            self.stdout.write(str(run.pk))
            return
        self.stdout.write(f"Run {run.pk}: {kind} on snapshot {run.snapshot_id}, base {run.base_model}")
        run = supervisor.execute(run.pk, run.attempt, in_process=True, echo=lambda line: self.stdout.write(line))
        artifact = getattr(run, "artifact", None) if run.status == RunStatus.SUCCEEDED else None
        if run.error:
            self.stderr.write(f"Run {run.pk} {run.status}: {run.error}")
        result = {"run": run.pk, "status": run.status, "artifact_path": str(artifact.folder) if artifact else None,
                  "metrics": run.metrics}  # fmt: skip
        self.stdout.write(json.dumps(result, default=str))
        if run.status != RunStatus.SUCCEEDED:
            raise SystemExit(1)
