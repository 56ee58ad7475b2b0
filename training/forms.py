"""The launch form: parsing and per-field messages. ``training.actions.launch_run`` validates everything again."""

from __future__ import annotations

from django import forms

from annotate.models import Snapshot

from .runners import available_kinds, config_class
from .runners.base import ConfigError
from .selectors import allowed_base_models, training_projects

# The options the form shows; every other one can be given as key=value lines under "More options".
KEY_OPTIONS = [
    "method", "objective", "criterion", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "eval_steps", "precision", "gradient_checkpointing",
    "center_rewards_coefficient", "lm_loss_coefficient",
]  # fmt: skip


class LaunchForm(forms.Form):
    project = forms.ChoiceField(help_text="Projects you are an admin of.")
    kind = forms.ChoiceField()
    base_model = forms.ChoiceField(help_text="Folders under MODEL_ROOTS and registered artifacts.")
    snapshot = forms.ChoiceField(required=False, help_text="Empty: a fresh snapshot of the current votes, 10% of prompts held out.")
    extra = forms.CharField(
        required=False, label="More options", widget=forms.Textarea(attrs={"rows": 3, "placeholder": "save_steps=50\nlora_r=8"}),
        help_text="One key=value per line; every option is listed in docs/training.md.",
    )  # fmt: skip

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        projects = training_projects(user, "admin")
        self.fields["project"].choices = [(p.slug, f"{p.name} ({p.slug})") for p in projects]
        self.fields["kind"].choices = [(k, k) for k in available_kinds()]
        self.fields["base_model"].choices = allowed_base_models()
        snapshots = Snapshot.objects.filter(project__in=projects).select_related("project")[:200]
        self.fields["snapshot"].choices = [("", "a fresh snapshot")] + [
            (str(s.pk), f"#{s.pk} {s.project.slug} · {s.options.get('format')}"
                        f"{' · ' + s.options['criterion'] if s.options.get('criterion') else ''} · "
                        f"train {s.counts.get('train', 0)} / test {s.counts.get('test', 0)} · {s.content_hash[:10]}")
            for s in snapshots
        ]  # fmt: skip
        self.option_rows = []
        for row in config_class("reward").describe():
            if row["name"] not in KEY_OPTIONS:
                continue
            if row["choices"]:
                field = forms.ChoiceField(required=False, choices=[("", f"default ({row['default']})")] + [(c, c) for c in row["choices"]])
            else:
                field = forms.CharField(required=False, widget=forms.TextInput(attrs={"placeholder": str(row["default"])}))
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
                cleaned["values"] = config_class(kind).parse_overrides(pairs)
            except ConfigError as exc:
                raise forms.ValidationError(str(exc)) from None
        snapshot = cleaned.get("snapshot")
        cleaned["snapshot"] = Snapshot.objects.filter(pk=int(snapshot)).first() if snapshot else None
        return cleaned
