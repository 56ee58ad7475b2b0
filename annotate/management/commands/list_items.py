import orjson
from django.core.management.base import BaseCommand, CommandError

from ...models import Item
from ._base import get_project


class Command(BaseCommand):
    help = (
        "List a project's items with the external id each is known by (the content hash for rows imported without "
        "an id), so votes made elsewhere can name them. --format jsonl writes rows in the import format "
        '({"id", "prompt", "responses", "metadata"}), which import_items reads back; tsv writes id, round, votes '
        "and the start of the prompt."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--format", choices=["tsv", "jsonl"], default="tsv")
        parser.add_argument("--out", metavar="PATH", help="Write to PATH instead of standard output.")

    def handle(self, *args, **options):
        project = get_project(options["slug"])
        try:
            out = open(options["out"], "w", encoding="utf-8") if options["out"] else None
        except OSError as exc:
            raise CommandError(f"Cannot write {options['out']}: {exc}") from None

        def emit(line: str) -> None:
            if out is None:
                self.stdout.write(line, ending="")
            else:
                out.write(line)

        items = (
            Item.objects.filter(project=project).select_related("round").prefetch_related("responses").order_by("id")
        )
        try:
            if options["format"] == "tsv":
                emit("id\tround\tpurpose\tvotes\tprompt\n")
            for item in items.iterator(chunk_size=2000):
                if options["format"] == "jsonl":
                    row = {
                        "id": item.external_id,
                        "prompt": item.prompt,
                        "responses": [{"text": r.text, "model": r.model_name} for r in item.responses.all()],
                        "metadata": item.metadata,
                        "purpose": item.purpose,
                    }
                    if item.gold is not None:
                        row["gold"] = item.gold
                    emit(orjson.dumps(row).decode() + "\n")
                else:
                    # The last message of the prompt, on one line: tabs and line breaks would break the columns.
                    prompt = " ".join(item.prompt[-1]["content"].split())[:80] if item.prompt else ""
                    round_ = str(item.round.number) if item.round else ""
                    emit("\t".join([item.external_id, round_, item.purpose, str(item.n_judgments), prompt]) + "\n")
        finally:
            if out is not None:
                out.close()
