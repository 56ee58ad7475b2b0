"""The launch form: parsing and per-field messages. ``training.launching.launch_run`` validates everything again."""

from __future__ import annotations

from django import forms

from annotate.models import Snapshot

from . import kinds
from .datasets import PROMPT_SOURCES
from .runners.base import ConfigError
from .selectors import allowed_base_models, training_projects

# The options the form shows; every other one can be given as key=value lines under "More options".
KEY_OPTIONS = [
    "method",
    "objective",
    "criterion",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "eval_steps",
    "precision",
    "gradient_checkpointing",
    "center_rewards_coefficient",
    "lm_loss_coefficient",
    "source",
    "beta",
    "temperature",
    "top_p",
    "max_new_tokens",
    "num_samples",
    "samples_per_prompt",
    "num_generations",
    "kl_coef",
]


def option_rows() -> list[dict]:
    """The key options of every available kind, each once (the first kind that has it gives its default and help)."""
    rows, seen = [], set()
    for kind in kinds.available():
        for row in kinds.get(kind).config.describe():
            if row["name"] in KEY_OPTIONS and row["name"] not in seen:
                seen.add(row["name"])
                rows.append(row)
    return sorted(rows, key=lambda row: KEY_OPTIONS.index(row["name"]))


class LaunchForm(forms.Form):
    project = forms.ChoiceField(help_text="Projects you are an admin of.")
    kind = forms.ChoiceField()
    base_model = forms.ChoiceField(help_text="Folders under MODEL_ROOTS and registered artifacts.")
    snapshot = forms.ChoiceField(
        required=False, help_text="Empty: a fresh snapshot of the current votes, 10% of prompts held out."
    )
    reward_models = forms.MultipleChoiceField(
        required=False,
        help_text=", ".join(kinds.names(reward_models=kinds.REWARD_MODEL_NEEDED))
        + " (and optionally "
        + ", ".join(kinds.names(reward_models=kinds.OPTIONAL_REWARD_MODEL))
        + ") score samples with these.",
    )
    reward_weights = forms.CharField(
        required=False, help_text="Weights of the reward models in the order listed, e.g. 0.7, 0.3; empty: equal."
    )
    target_project = forms.ChoiceField(
        required=False,
        help_text="generate: the pairwise or ranking project whose new round gets the candidates (empty: this project).",
    )
    prompts_from = forms.ChoiceField(
        required=False,
        choices=[("", "default (items; the snapshot's test prompts for evaluate)")] + [(s, s) for s in PROMPT_SOURCES],
        help_text="Prompt-driven kinds: the items, those annotators disagree on, those the reward model(s) are least sure about, a snapshot's prompts, or a file.",
    )
    prompts_file = forms.FileField(required=False, help_text='JSONL, one {"prompt": text or messages} per line.')
    max_prompts = forms.IntegerField(required=False, min_value=1, help_text="At most this many prompts.")
    baseline = forms.ChoiceField(required=False, help_text="evaluate: the policy the new one is compared with.")
    parent = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="The run this one continues (lineage), e.g. the previous round's policy run.",
    )
    extra = forms.CharField(
        required=False,
        label="More options",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "save_steps=50\nlora_r=8"}),
        help_text="One key=value per line; every option is listed in docs/training.md.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        projects = training_projects(user, "admin")
        self.fields["project"].choices = [(p.slug, f"{p.name} ({p.slug})") for p in projects]
        self.fields["kind"].choices = [(k, k) for k in kinds.available()]
        self.fields["base_model"].choices = allowed_base_models(user)
        snapshots = Snapshot.objects.filter(project__in=projects).select_related("project")[:200]
        self.fields["snapshot"].choices = [("", "a fresh snapshot")] + [
            (
                str(s.pk),
                f"#{s.pk} {s.project.slug} · {s.options.get('format')}"
                f"{' · ' + s.options['criterion'] if s.options.get('criterion') else ''} · "
                f"train {s.counts.get('train', 0)} / test {s.counts.get('test', 0)} · {s.content_hash[:10]}",
            )
            for s in snapshots
        ]
        self.option_rows = []
        for row in option_rows():
            if row["choices"]:
                field = forms.ChoiceField(
                    required=False, choices=[("", f"default ({row['default']})")] + [(c, c) for c in row["choices"]]
                )
            else:
                field = forms.CharField(
                    required=False, widget=forms.TextInput(attrs={"placeholder": str(row["default"])})
                )
            field.help_text, field.label = row["help"], row["name"]
            self.fields[f"opt_{row['name']}"] = field
            self.option_rows.append(f"opt_{row['name']}")

    def options(self):
        return [self[name] for name in self.option_rows]

    def clean(self):
        cleaned = super().clean()
        pairs = [f"{name[4:]}={cleaned[name]}" for name in self.option_rows if cleaned.get(name) not in (None, "")]
        pairs += [line.strip() for line in (cleaned.get("extra") or "").splitlines() if line.strip()]
        kind = cleaned.get("kind")
        if kind:
            try:
                cleaned["values"] = kinds.get(kind).config.parse_overrides(pairs)
            except ConfigError as exc:
                raise forms.ValidationError(str(exc)) from None
        cleaned["reward_model_values"] = self._weighted(
            cleaned.get("reward_models") or [], cleaned.get("reward_weights") or ""
        )
        upload = cleaned.get("prompts_file")
        cleaned["prompts_data"] = upload.read() if upload else None
        snapshot = cleaned.get("snapshot")
        cleaned["snapshot"] = Snapshot.objects.filter(pk=int(snapshot)).first() if snapshot else None
        return cleaned

    @staticmethod
    def _weighted(models: list[str], weights: str) -> list[str]:
        """``artifact:ID`` choices with the weights typed beside them → ``artifact:ID:WEIGHT``."""
        parts = [w.strip() for w in weights.replace(";", ",").split(",") if w.strip()]
        if not parts:
            return list(models)
        if len(parts) != len(models):
            raise forms.ValidationError(f"Give one weight per chosen reward model ({len(models)}), not {len(parts)}.")
        try:
            values = [float(w) for w in parts]
        except ValueError:
            raise forms.ValidationError("Reward-model weights are numbers, e.g. 0.7, 0.3.") from None
        return [f"{model}:{value}" for model, value in zip(models, values)]


class NextRoundForm(forms.Form):
    """ "Start the next round" from a policy run: the generate run's target and a few sampling options."""

    target_project = forms.ChoiceField(required=False)
    prompts_from = forms.ChoiceField(
        required=False, choices=[("", "items")] + [(s, s) for s in PROMPT_SOURCES if s != "file"]
    )
    max_prompts = forms.IntegerField(required=False, min_value=1)
    extra = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "placeholder": "temperature=0.9"}))

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        targets = training_projects(user, "admin").filter(kind__in=list(kinds.TARGET_RESPONSES))
        self.fields["target_project"].choices = [("", "the run's project")] + [(p.slug, p.slug) for p in targets]

    def clean(self):
        cleaned = super().clean()
        pairs = [line.strip() for line in (cleaned.get("extra") or "").splitlines() if line.strip()]
        try:
            cleaned["values"] = kinds.get(kinds.NEXT_ROUND).config.parse_overrides(pairs) if pairs else {}
        except (ConfigError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None
        return cleaned
