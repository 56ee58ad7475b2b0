import json

from django.core.management.base import BaseCommand

from ...judge_agreement import judge_report
from ...selectors import SOURCES
from ._base import get_project


class Command(BaseCommand):
    help = (
        "Agreement between annotators of a project (people's votes unless --source says otherwise), and each AI "
        "judge measured against people (judges)."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")
        parser.add_argument(
            "--source",
            default="human",
            choices=SOURCES,
            help="Whose votes the agreement figures read: people's (human, the default), AI judges' (ai) or all. "
            "The judges' figures against people are the same whatever it says.",
        )

    def handle(self, *args, **options):
        result = judge_report(get_project(options["slug"]), options["source"])
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        for key, value in result.items():
            self.stdout.write(f"{key:>22}: {value}")
