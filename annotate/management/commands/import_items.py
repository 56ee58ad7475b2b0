from django.core.management.base import BaseCommand, CommandError

from ...actions import import_items
from ...imports import ImportFailed, detect_format, parse_items
from ._base import get_project, read_import_file


class Command(BaseCommand):
    help = "Import items (JSONL, CSV or Parquet) into a project, all or nothing."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("file")
        parser.add_argument("--format", default=None, choices=["jsonl", "csv", "parquet"])

    def handle(self, *args, **options):
        project = get_project(options["slug"])
        path, data = read_import_file(options["file"])
        try:
            parsed = parse_items(data, detect_format(path.name, options["format"]), project.kind)
            report = import_items(project, parsed, source={"file": path.name})
        except ImportFailed as exc:
            raise CommandError(f"{path}: {exc.message}") from None
        self.stdout.write(report.summary())
