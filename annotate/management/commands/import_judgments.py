from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ...actions import import_judgments
from ...imports import ImportFailed, detect_format, parse_votes
from ._base import get_project, read_import_file, skipped_report_path, write_skipped_report


class Command(BaseCommand):
    help = (
        'Import votes made elsewhere, all or nothing: {"item": external id, "annotator": name, "winner": index or '
        'null, "strength"?} (other kinds: "ranking", "ratings", "steps", "text"; see docs/import-formats.md). '
        "Unknown annotators become annotators of the project. "
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        self.help += (
            f"Limits: {settings.ARBITER_IMPORT_MAX_BYTES} bytes, {settings.ARBITER_IMPORT_MAX_VOTES} votes, "
            f"{settings.ARBITER_IMPORT_MAX_LINE_BYTES} bytes a line."
        )
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("file")
        parser.add_argument("--format", default=None, choices=["jsonl", "csv", "parquet"])
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="Import the valid votes (in one transaction) and write the invalid ones, with line numbers and "
            "reasons, to --report.",
        )
        parser.add_argument(
            "--report",
            metavar="PATH",
            help="Where --skip-invalid writes the skipped rows (JSONL); default FILE.skipped.jsonl.",
        )

    def handle(self, *args, **options):
        if options["report"] and not options["skip_invalid"]:
            raise CommandError("--report goes with --skip-invalid.")
        project = get_project(options["slug"])
        path, data = read_import_file(options["file"])
        skipped = [] if options["skip_invalid"] else None
        report_path = (
            skipped_report_path(options["report"] or f"{path}.skipped.jsonl") if options["skip_invalid"] else None
        )
        try:
            votes = parse_votes(data, detect_format(path.name, options["format"]), skipped)
            report = import_judgments(project, votes, skipped=skipped)
        except ImportFailed as exc:
            if report_path is not None:
                write_skipped_report(report_path, exc.errors)
            raise CommandError(f"{path}: {exc.message}") from None
        self.stdout.write(report.summary())
        if report_path is not None:
            write_skipped_report(report_path, report.skipped)
            self.stdout.write(f"Skipped rows written to {report_path}.")
