from django.core.management.base import BaseCommand, CommandError

from ...actions import import_judgments
from ...imports import ImportFailed, detect_format, parse_votes
from ._base import get_project, read_import_file


class Command(BaseCommand):
    help = 'Import votes made elsewhere: {"item": external id, "annotator": name, "winner": index or null, "strength"?}.'

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("file")
        parser.add_argument("--format", default=None, choices=["jsonl", "csv", "parquet"])

    def handle(self, *args, **options):
        project = get_project(options["slug"])
        path, data = read_import_file(options["file"])
        try:
            votes = parse_votes(data, detect_format(path.name, options["format"]))
            report = import_judgments(project, votes)
        except ImportFailed as exc:
            raise CommandError(f"{path}: {exc.message}") from None
        text = f"Imported {report.created} judgments."
        if report.duplicates:
            text += f" Skipped {len(report.duplicates)} votes of annotators who already judged the item (lines {', '.join(map(str, report.duplicates[:20]))})."
        self.stdout.write(text)
