from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ... import judging
from ...actions import InvalidJudge, add_judge
from ...models import Judge
from ._base import get_project


def parse_settings(pairs: list[str]) -> dict:
    """``["batch_size=4", "temperature=0"]`` → ``{"batch_size": "4", ...}`` (add_judge types and checks them)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"{pair!r}: write options as key=value.")
        options[key.strip()] = value.strip()
    return options


class Command(BaseCommand):
    help = (
        "Add an AI judge to a project: a reward model (artifact:N[:WEIGHT],...), a causal LM under MODEL_ROOTS or in "
        "the registry (local), or an OpenAI-compatible endpoint (openai: --base-url, its host in ARBITER_JUDGE_HOSTS, "
        "and --api-key-env naming the environment variable that holds the key). Its votes are cast by `train judge "
        "--project SLUG --judge NAME`."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("name", help="The judge's name (lowercase letters, digits, - and _).")
        parser.add_argument("--backend", required=True, choices=Judge.Backend.values)
        parser.add_argument("--model", required=True, help="artifact:N[:WEIGHT],... | a folder | a model name.")
        parser.add_argument("--base-url", default="", help="openai: the endpoint's base URL, e.g. http://host:8000/v1.")
        parser.add_argument(
            "--api-key-env",
            default="",
            metavar="VAR",
            help="openai: the NAME of the environment variable with the key.",
        )
        parser.add_argument(
            "--template",
            metavar="FILE",
            help="A prompt template file (default: the project kind's; see --show-template).",
        )
        parser.add_argument("--principle", default="", help="A principle of the project's constitution to cite.")
        parser.add_argument(
            "--set",
            dest="options",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="An option (repeatable): " + ", ".join(judging.OPTIONS) + ".",
        )
        parser.add_argument(
            "--show-template", action="store_true", help="Print the default template of the project's kind and exit."
        )

    def handle(self, *args, **options):
        project = get_project(options["slug"])
        if options["show_template"]:
            try:
                self.stdout.write(judging.default_template(project.kind))
            except judging.TemplateError as exc:
                raise CommandError(str(exc)) from None
            return
        template = ""
        if options["template"]:
            try:
                template = Path(options["template"]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"Cannot read the template {options['template']}: {exc}") from None
        try:
            judge = add_judge(
                project,
                options["name"],
                options["backend"],
                options["model"],
                base_url=options["base_url"],
                api_key_env=options["api_key_env"],
                template=template,
                principle=options["principle"],
                options=parse_settings(options["options"]),
            )
        except InvalidJudge as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Judge {judge.name} ({judge.backend}: {judge.model}) added to {project.slug}; its votes are cast by "
            f"`manage.py train judge --project {project.slug} --judge {judge.name}`."
        )
