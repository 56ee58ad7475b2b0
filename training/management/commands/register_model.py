import json

from django.core.management.base import BaseCommand, CommandError

from ...registration import MODEL_KINDS, register_base_model
from ...selectors import TrainingError, model_roots


class Command(BaseCommand):
    help = (
        "Register a base model under the first MODEL_ROOT as NAME (then --base-model NAME, the launch form and the API "
        "find it). SOURCE is a model folder (config.json and .safetensors weights, hard-linked or copied; pickle "
        "weights are refused) or a .gguf file (de-quantised by transformers and saved as safetensors with its "
        "tokenizer). Prints the registered folder as JSON on its last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="Folder name under the first MODEL_ROOT: letters, digits, '.', '_', '-'.")
        parser.add_argument("source", help="A model folder or a .gguf file, anywhere on this machine.")
        parser.add_argument(
            "--kind",
            choices=list(MODEL_KINDS),
            default="causal-lm",
            help="causal-lm: a policy (generate, sft, dpo, ppo, ...) and a reward model's backbone; "
            "sequence-classifier: a reward model's backbone only (from a GGUF file it gets a new score head).",
        )
        parser.add_argument("--replace", action="store_true", help="Overwrite a model folder NAME that exists.")
        parser.add_argument(
            "--only-model-roots",
            action="store_true",
            help="Refuse a SOURCE outside MODEL_ROOTS (what the page allows; its worker runs this command with it).",
        )

    def handle(self, *args, **options):
        try:
            registered = register_base_model(
                options["name"],
                options["source"],
                options["kind"],
                replace=options["replace"],
                within=model_roots() if options["only_model_roots"] else None,
            )
        except TrainingError as exc:
            raise CommandError(str(exc)) from None
        skipped = f" (left out: {', '.join(registered.skipped)})" if registered.skipped else ""
        self.stdout.write(
            f"Registered {registered.name}: a {registered.model_type} {MODEL_KINDS[registered.kind]} from "
            f"{registered.format} {registered.source}, {registered.size_bytes / 1e6:.0f} MB in "
            f"{registered.path}{skipped}. Use --base-model {registered.name}."
        )
        self.stdout.write(json.dumps(registered.as_json()))
