import re

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ...actions import add_member, issue_token
from ...models import Role
from ._base import get_project


class Command(BaseCommand):
    help = "Give a user a role in a project, creating the user if needed. --token prints an API token last."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--password", default=None)
        parser.add_argument("--token", action="store_true", help="Print an API token as the last word.")

    def handle(self, *args, **options):
        project = get_project(options["slug"])
        username = options["username"]
        if not re.fullmatch(r"[\w.@+-]{1,150}", username):
            raise CommandError("A username has 1 to 150 letters, digits and @.+-_ characters.")
        if options["password"]:
            try:
                validate_password(options["password"])
            except ValidationError as exc:
                raise CommandError(" ".join(exc.messages)) from None
        membership = add_member(project, username, options["role"], options["password"])
        line = f"{username} is {membership.role} in {project.slug}."
        if options["token"]:
            line += f" Token: {issue_token(membership.user)}"
        self.stdout.write(line)
