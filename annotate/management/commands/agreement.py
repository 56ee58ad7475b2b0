import json

from django.core.management.base import BaseCommand

from ...agreement import summary
from ._base import get_project


class Command(BaseCommand):
    help = "Agreement between annotators of a project."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        result = summary(get_project(options["slug"]))
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        for key, value in result.items():
            self.stdout.write(f"{key:>22}: {value}")
