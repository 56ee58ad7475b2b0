import re

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ...actions import create_project
from ...models import MAX_OVERLAP, Kind


def parse_scale(value: str | None) -> dict:
    """``1-7`` → numeric scale; ``safe,unsafe,unsure`` → categorical labels."""
    if not value:
        return {}
    match = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*", value)
    if match:
        low, high = int(match[1]), int(match[2])
        if low >= high:
            raise CommandError(f"--scale {value}: the low end must be below the high end.")
        return {"min": low, "max": high}
    labels = [label.strip() for label in value.split(",") if label.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise CommandError(f"--scale {value}: give a range like 1-7 or two or more distinct labels like safe,unsafe.")
    return {"labels": labels}


class Command(BaseCommand):
    help = "Create a project."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--kind", required=True, choices=Kind.values)
        parser.add_argument("--name", default="")
        parser.add_argument("--overlap", type=int, default=1, help=f"Distinct annotators per item, 1 to {MAX_OVERLAP}.")
        parser.add_argument("--criteria", default="", help="Comma-separated criteria, e.g. helpfulness,harmlessness.")
        parser.add_argument("--scale", default=None, help="1-7 or safe,unsafe,unsure (rating projects).")
        parser.add_argument("--instructions", default="")
        parser.add_argument("--lease-seconds", type=int, default=None)

    def handle(self, *args, **options):
        criteria = [c.strip() for c in options["criteria"].split(",") if c.strip()]
        if len(set(criteria)) != len(criteria):
            raise CommandError("--criteria has a repeated name.")
        try:
            project = create_project(
                slug=options["slug"],
                kind=options["kind"],
                name=options["name"],
                overlap=options["overlap"],
                criteria=criteria,
                scale=parse_scale(options["scale"]),
                instructions=options["instructions"],
                lease_seconds=options["lease_seconds"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        self.stdout.write(f"Created project {project.slug} ({project.kind}, overlap {project.overlap}).")
