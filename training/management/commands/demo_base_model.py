from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from annotate.models import Item, Response


class Command(BaseCommand):
    help = (
        "Write a tiny, randomly initialised Llama reward backbone (and a tokenizer trained on this site's prompts and "
        "responses) into the first MODEL_ROOT, so training can be tried on a fresh install with no model download. "
        "It learns the demo's preferences in seconds on a CPU; it is not a language model worth generating with."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", default="tiny-demo-llama", help="Folder name under the first MODEL_ROOT.")
        parser.add_argument("--force", action="store_true", help="Replace the folder if it exists.")

    def handle(self, *args, **options):
        if not settings.MODEL_ROOTS:
            raise CommandError("MODEL_ROOTS is empty: set it to the folder(s) base models may be loaded from.")
        folder = Path(settings.MODEL_ROOTS[0]) / options["name"]
        if folder.exists() and not options["force"]:
            self.stdout.write(f"{folder} exists (--force replaces it).")
            return
        texts = [m.get("content", "") for prompt in Item.objects.values_list("prompt", flat=True)[:5000] for m in prompt]
        texts += list(Response.objects.values_list("text", flat=True)[:10000])
        from ...demo import save_tiny_llama

        save_tiny_llama(folder, texts)
        self.stdout.write(f"Wrote a tiny Llama reward backbone to {folder}: use --base-model {options['name']}.")
