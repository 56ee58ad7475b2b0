from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from ...actions import add_member, create_project, import_items
from ...imports import parse_items
from ...models import Kind, Project, Role

DEMO_DATA = Path(__file__).resolve().parents[2] / "demo_data" / "pairwise.jsonl"
INSTRUCTIONS = """Compare the two responses to the conversation and pick the one a careful, expert user would prefer:
more **helpful** (answers the actual question, correct, complete), more **honest** (no invented facts) and
**harmless** (no dangerous help). Then say by how much. Use *tie* when they are equally good and *both bad*
when neither is acceptable. Keys: `1` A, `2` B, `3` tie, `4` both bad; `q` `w` `e` `r` for the strength;
`Enter` submits."""

# Demo accounts: (username, password, role in the demo project). Change them on a real deployment.
ACCOUNTS = [
    ("admin", "arbiter-admin", Role.ADMIN),
    ("researcher", "arbiter-researcher", Role.RESEARCHER),
    ("annotator1", "arbiter-annotator1", Role.ANNOTATOR),
    ("annotator2", "arbiter-annotator2", Role.ANNOTATOR),
    ("annotator3", "arbiter-annotator3", Role.ANNOTATOR),
]


class Command(BaseCommand):
    help = "Create the demo project (pairwise, 36 items, overlap 2) and demo accounts; safe to run again."

    def add_arguments(self, parser):
        parser.add_argument("--slug", default="demo")
        # `make run` seeds first and prints the accounts last, after the slow model step, where they stay on screen.
        parser.add_argument("--no-accounts", action="store_true", help="Do not print the demo accounts.")
        parser.add_argument(
            "--accounts-only", action="store_true", help="Only print the demo accounts; change nothing."
        )

    def handle(self, *args, **options):
        if options["accounts_only"]:
            self._print_accounts()
            return
        self._seed(options["slug"])
        if not options["no_accounts"]:
            self._print_accounts()

    def _print_accounts(self) -> None:
        self.stdout.write("Demo accounts (username / password, role in the demo project):")
        for username, password, role in ACCOUNTS:
            self.stdout.write(f"  {username:<11} / {password:<19} {role}")

    @transaction.atomic
    def _seed(self, slug: str) -> None:
        User = get_user_model()
        admin, created = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created:
            admin.set_password("arbiter-admin")
            admin.save()
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            project = create_project(
                slug=slug,
                kind=Kind.PAIRWISE,
                name="Demo: helpful and harmless",
                overlap=2,
                instructions=INSTRUCTIONS,
                created_by=admin,
            )
            report = import_items(
                project, parse_items(DEMO_DATA.read_bytes(), "jsonl", project.kind), {"file": DEMO_DATA.name}
            )
            self.stdout.write(f"Demo project {project.slug}: {report.summary()}")
        else:
            self.stdout.write(f"Demo project {project.slug} exists.")
        for username, password, role in ACCOUNTS:
            user = User.objects.filter(username=username).first()
            if user is None:
                add_member(project, username, role, password)
            else:
                add_member(project, username, role)
