from django.core.management.base import BaseCommand, CommandError

from ...exports import AGGREGATES, CONTAINERS, FORMATS, ExportError, ExportOptions, export_to
from ...exports.options import WEIGHTS
from ...selectors import SOURCES
from ._base import get_project


class Command(BaseCommand):
    help = "Export a dataset. With --test-size, --out is a folder with train and test splits grouped by prompt."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument(
            "--out", required=True, help="A file (jsonl, parquet) or a folder (hf, or with --test-size)."
        )
        parser.add_argument("--container", default="jsonl", choices=CONTAINERS)
        parser.add_argument(
            "--aggregate",
            default="",
            choices=AGGREGATES,
            help="Default: the format's own (docs/exports.md lists which each format takes; any other is an error).",
        )
        parser.add_argument("--test-size", type=float, default=0.0, help="Share of prompts in the test split.")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-dedupe", action="store_true", help="Keep rows identical to an earlier one.")
        parser.add_argument(
            "--ties",
            default="drop",
            choices=["drop", "keep"],
            help="Preference formats: keep ties as rows with tie=true.",
        )
        parser.add_argument(
            "--min-agreement", type=float, default=0.0, help="Leave out preferences with a smaller winner share."
        )
        parser.add_argument("--include-paused", action="store_true", help="Keep votes of paused or flagged annotators.")
        parser.add_argument("--include-gold", action="store_true", help="Keep gold and qualification items.")
        parser.add_argument("--max-chars", type=int, default=None, help="Leave out longer rows.")
        parser.add_argument("--criterion", default="", help="The criterion preferences come from.")
        parser.add_argument(
            "--source",
            default="human",
            choices=SOURCES,
            help="Whose votes: people's (human, the default), AI judges' (ai) or both (all).",
        )
        parser.add_argument(
            "--weights",
            default="none",
            choices=WEIGHTS,
            help="trl: a weight per row, the reliability of the annotators who voted for it, by this model.",
        )
        parser.add_argument(
            "--threshold",
            type=float,
            default=None,
            help="kto of a rating project: a response whose mean score is at least this is desirable "
            "(default: above the scale's middle).",
        )
        parser.add_argument(
            "--neutral-steps",
            default="positive",
            choices=["positive", "negative", "class"],
            help="steps format: what a neutral step counts as (class: labels are the names positive / neutral / "
            "negative, a third class for process reward models).",
        )

    def handle(self, *args, **options):
        project = get_project(options["slug"])
        try:
            export = ExportOptions(
                format=options["format"],
                aggregate=options["aggregate"],
                container=options["container"],
                test_size=options["test_size"],
                seed=options["seed"],
                dedupe=not options["no_dedupe"],
                neutral_steps=options["neutral_steps"] != "negative",
                step_labels="three" if options["neutral_steps"] == "class" else "binary",
                ties=options["ties"],
                min_agreement=options["min_agreement"],
                include_paused=options["include_paused"],
                include_gold=options["include_gold"],
                max_chars=options["max_chars"],
                criterion=options["criterion"],
                source=options["source"],
                weights=options["weights"],
                threshold=options["threshold"],
            )
            export.validate()
            result = export_to(project, export, options["out"])
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        counts = ", ".join(f"{name} {n}" for name, n in result.counts.items())
        self.stdout.write(
            f"Wrote {sum(result.counts.values())} rows ({counts}) to {options['out']}; content hash {result.content_hash}."
        )
