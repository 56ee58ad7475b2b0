from django.core.management.base import BaseCommand

from ... import actions, tasks
from ...models import Membership
from ._base import get_project


class Command(BaseCommand):
    help = (
        "Automatic review now: flag or pause the active annotators of the projects (every project whose review is "
        "on, without SLUG) who fall below a threshold, as a submit would. --schedule instead puts the periodic "
        "review on the job queue (db_worker runs it every few minutes); make run does that."
    )

    def add_arguments(self, parser):
        parser.add_argument("slugs", nargs="*", metavar="SLUG")
        parser.add_argument(
            "--schedule", action="store_true", help="Queue the periodic review (once: it puts itself back)."
        )

    def handle(self, *args, **options):
        if options["schedule"]:
            queued = tasks.schedule_review(delay=0)
            self.stdout.write("Periodic review queued." if queued else "Periodic review already queued.")
            return
        if options["slugs"]:
            flagged = {}
            for slug in options["slugs"]:
                project = get_project(slug)
                found = actions.review_project(project)
                if found:
                    flagged[project.slug] = sorted(found)
        else:
            flagged = tasks.review_all()
        if not flagged:
            self.stdout.write("Nobody below a threshold.")
        for slug, user_ids in flagged.items():
            for membership in Membership.objects.filter(project__slug=slug, user_id__in=user_ids).select_related(
                "user"
            ):
                self.stdout.write(f"{slug}: {membership.user.username} {membership.status}: {membership.status_reason}")
