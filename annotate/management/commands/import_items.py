from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ...actions import import_items
from ...imports import ImportFailed, detect_format, parse_items
from ...models import MAX_OVERLAP, RESPONSES_PER_KIND
from ._base import get_project, read_import_file, skipped_report_path, write_skipped_report


def limits() -> str:
    kinds = ", ".join(
        f"{kind} {low}-{high}" if low != high else f"{kind} {low}" for kind, (low, high) in RESPONSES_PER_KIND.items()
    )
    return (
        f"Limits: {settings.ARBITER_IMPORT_MAX_BYTES} bytes, {settings.ARBITER_IMPORT_MAX_ROWS} rows, "
        f"{settings.ARBITER_IMPORT_MAX_LINE_BYTES} bytes a line, JSON nested {settings.ARBITER_IMPORT_MAX_DEPTH} deep; "
        f"responses per item: {kinds}; ids of 1 to 200 characters; overlap up to {MAX_OVERLAP} annotators per item."
    )


class Command(BaseCommand):
    help = (
        "Import items (JSONL, CSV or Parquet) into a project, all or nothing. An id identifies an item (rows with "
        "different ids are different items even when their texts are equal); rows without one are deduplicated by "
        "content. Empty responses are kept. See docs/import-formats.md. "
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        self.help += limits()
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("file")
        parser.add_argument("--format", default=None, choices=["jsonl", "csv", "parquet"])
        parser.add_argument(
            "--votes-as",
            metavar="NAME",
            help="Record each preference row's own label (TRL/HH 'chosen') as a vote of annotator NAME.",
        )
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="Import the valid rows (in one transaction) and write the invalid ones, with line numbers and "
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
            parsed = parse_items(data, detect_format(path.name, options["format"]), project.kind, skipped)
            report = import_items(
                project, parsed, source={"file": path.name}, votes_as=options["votes_as"], skipped=skipped
            )
        except ImportFailed as exc:
            if report_path is not None:
                write_skipped_report(report_path, exc.errors)
            raise CommandError(f"{path}: {exc.message}") from None
        self.stdout.write(report.summary())
        if report_path is not None:
            write_skipped_report(report_path, report.skipped)
            self.stdout.write(f"Skipped rows written to {report_path}.")
