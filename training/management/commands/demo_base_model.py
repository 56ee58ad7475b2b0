from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from annotate.models import Item, Response

from ...demo import decodes_to_text, save_tiny_llama


class Command(BaseCommand):
    help = (
        "Write two tiny Llamas (and a tokenizer trained on this site's prompts and responses) into the first MODEL_ROOT, "
        "so the whole loop can be tried on a fresh install with no model download: a randomly initialised reward "
        "backbone (NAME) that learns the demo's preferences in seconds, and a policy (NAME-policy) warmed up on the "
        "site's texts that generates candidates and trains with sft, dpo, rejection_sampling, ppo, grpo and rloo. "
        "Neither writes good text: they show the mechanics, not quality."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", default="tiny-demo-llama", help="Folder name under the first MODEL_ROOT.")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Replace the folders if they exist (a policy whose tokenizer does not decode to text is always replaced).",
        )
        parser.add_argument(
            "--warmup-steps", type=int, default=300, help="Language-model steps of the policy on the site's texts."
        )

    def handle(self, *args, **options):
        if not settings.MODEL_ROOTS:
            raise CommandError("MODEL_ROOTS is empty: set it to the folder(s) base models may be loaded from.")
        folder = Path(settings.MODEL_ROOTS[0]) / options["name"]
        policy = folder.with_name(folder.name + "-policy")
        if folder.exists() and policy.exists() and not options["force"] and decodes_to_text(policy):
            self.stdout.write(f"{folder} and {policy} exist (--force replaces them).")
            return
        texts = [
            m.get("content", "") for prompt in Item.objects.values_list("prompt", flat=True)[:5000] for m in prompt
        ]
        texts += list(Response.objects.values_list("text", flat=True)[:10000])
        save_tiny_llama(folder, texts)
        save_tiny_llama(policy, texts, causal=True, warmup_steps=options["warmup_steps"])
        self.stdout.write(
            f"Wrote a tiny Llama reward backbone to {folder} (--base-model {folder.name}) "
            f"and a tiny policy to {policy} (--base-model {policy.name})."
        )
