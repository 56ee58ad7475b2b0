"""The launch form, built for one kind: only the inputs and options that kind reads, grouped (data, model and method,
optimisation, generation), with human labels and the config's help text, and base models that the kind can load.
``training.launching.launch_run`` validates everything again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from django import forms
from django.utils.functional import cached_property

from annotate.models import Snapshot

from . import kinds
from .datasets import PROMPT_SOURCES
from .models import ArtifactKind, ModelArtifact
from .runners.base import ConfigError
from .selectors import allowed_base_models, training_projects

# --- which options a kind's form shows, and where ----------------------------------------------------

# Filled in by Arbiter from the form's own inputs (base model, reward models, baseline): never typed as options.
FILLED_BY_ARBITER = frozenset(
    {
        "base_model",
        "reward_models",
        "reward_weights",
        "baseline_model",
        "principle_names",
        "principle_texts",
        "teacher_model",
    }
)
# Read only by kinds that sample responses (their configs inherit them from PolicyRunConfig all the same).
SAMPLING_OPTIONS = frozenset(
    {"max_prompt_length", "max_new_tokens", "temperature", "top_p", "generation_batch_size", "generation_backend"}
)
# Read only by kinds that train (generate and evaluate sample and score, and inherit them all the same).
TRAINING_OPTIONS = frozenset(
    {
        "method",
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "max_length",
        "warmup_steps",
        "weight_decay",
        "lr_scheduler_type",
        "max_grad_norm",
        "logging_steps",
        "eval_steps",
        "save_steps",
        "save_minutes",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "adalora_init_r",
        "adalora_target_r",
        "adalora_tinit",
        "adalora_tfinal",
        "adalora_delta_t",
        "ia3_feedforward_modules",
        "num_virtual_tokens",
        "merge_adapter",
    }
)


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    members: tuple[str, ...]  # form inputs and options, in display order; a kind's own options go to "method"


GROUPS = (
    Group(
        "data",
        "Data",
        (
            "snapshot",
            "prompts_from",
            "prompts_file",
            "max_prompts",
            "target_project",
            "criterion",
            "source",
            "max_length",
            "min_score",
            "use_margin",
            "margin_scale",
        ),
    ),
    Group(
        "method",
        "Model and method",
        ("base_model", "teacher", "reward_models", "reward_weights", "baseline", "method"),
    ),
    Group(
        "optimisation",
        "Optimisation",
        (
            "learning_rate",
            "num_train_epochs",
            "max_steps",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "batch_size",
            "mini_batch_size",
            "total_episodes",
            "ppo_epochs",
            "warmup_steps",
            "lr_scheduler_type",
            "weight_decay",
            "max_grad_norm",
            "gradient_checkpointing",
            "precision",
            "seed",
            "logging_steps",
            "eval_steps",
            "per_device_eval_batch_size",
            "save_steps",
            "save_minutes",
        ),
    ),
    Group(
        "generation",
        "Generation",
        (
            "num_samples",
            "num_generations",
            "max_new_tokens",
            "temperature",
            "top_p",
            "max_prompt_length",
            "generation_batch_size",
            "generation_backend",
            "model_label",
            "mask_truncated_completions",
        ),
    ),
)
DEFAULT_GROUP = "method"
GROUP_OF = {member: group.name for group in GROUPS for member in group.members}

# Shown at once; every other option of the kind is one click away under its group's "More".
KEY_FIELDS = frozenset(
    {
        "snapshot",
        "prompts_from",
        "prompts_file",
        "max_prompts",
        "target_project",
        "criterion",
        "source",
        "min_score",
        "base_model",
        "reward_models",
        "reward_weights",
        "baseline",
        "teacher",
        "mode",
        "context",
        "method",
        "objective",
        "lm_loss_coefficient",
        "beta",
        "loss_type",
        "reference",
        "kl_coef",
        "adaptive_kl",
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "batch_size",
        "num_samples",
        "num_generations",
        "max_new_tokens",
        "temperature",
    }
)

# Labels where the words of the name are not enough; others are the name in words ("use_margin" → "Use margin").
LABELS = {
    "per_device_train_batch_size": "Batch size per device",
    "per_device_eval_batch_size": "Evaluation batch size per device",
    "num_train_epochs": "Epochs",
    "lr_scheduler_type": "Learning-rate schedule",
    "max_grad_norm": "Gradient clipping norm",
    "max_length": "Max length (tokens)",
    "max_prompt_length": "Max prompt length (tokens)",
    "max_new_tokens": "Max new tokens",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_target_modules": "LoRA target modules",
    "num_virtual_tokens": "Virtual tokens",
    "top_p": "Top-p",
    "beta": "β",
    "kl_coef": "KL coefficient (β)",
    "lm_loss_coefficient": "LM-loss coefficient",
    "center_rewards_coefficient": "Reward-centering coefficient",
    "num_generations": "Responses per prompt",
    "num_samples": "Samples per prompt (K)",
    "num_iterations": "Updates per generation batch (μ)",
    "epsilon": "Clip range (ε)",
    "cliprange": "Clip range (ε)",
    "cliprange_value": "Value clip range",
    "vf_coef": "Value-loss coefficient",
    "gamma": "Discount (γ)",
    "lam": "GAE λ",
    "ppo_epochs": "PPO epochs",
    "f_divergence_type": "f-divergence",
    "f_alpha_divergence_coef": "α of the α-divergence",
    "ld_alpha": "LD-DPO α",
    "discopop_tau": "DiscoPOP τ",
    "ref_model": "Reference model",
    "sync_ref_model": "Sync the reference (TR-DPO)",
    "ref_model_mixup_alpha": "TR-DPO mix-up α",
    "ref_model_sync_steps": "TR-DPO sync steps",
    "precompute_ref_log_probs": "Precompute the reference's log-probabilities",
    "use_weighting": "Weight pairs (WPO)",
}
WORDS = {"lora": "LoRA", "kl": "KL", "lm": "LM", "eos": "EOS", "rmse": "RMSE", "dpo": "DPO", "ppo": "PPO"}


def label_for(name: str) -> str:
    """A human label for a config option: ``LABELS``, else its words ("missing_eos_penalty" → "Missing EOS penalty")."""
    if name in LABELS:
        return LABELS[name]
    words = [WORDS.get(word, word) for word in name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def option_applies(kind: kinds.TrainingKind, name: str) -> bool:
    """Whether the kind's runner reads option ``name`` (its config may inherit options it never reads)."""
    if name in FILLED_BY_ARBITER or name in getattr(kind.config, "IGNORED_OPTIONS", ()):
        return False
    if name in SAMPLING_OPTIONS and kind.reads != kinds.PROMPTS:
        return False
    if name in TRAINING_OPTIONS and not kind.makes_model and name not in _declared_options(kind.config):
        return False  # an option the kind's own config declares is its own (synthesize_prompts' method)
    if name == "eval_steps" and kind.reads != kinds.SNAPSHOT:
        return False  # only the kinds that read a snapshot have a held-out split to evaluate on
    return True


def _declared_options(config: type) -> set[str]:
    """The options a config class declares itself (not those it inherits)."""
    return set(vars(config).get("__annotations__", {}))


# --- base models that fit a kind ----------------------------------------------------------------------

BACKBONE = "backbone"  # neither a classifier nor a language model (an encoder): a reward model's starting point


def model_family(value: str, artifact_kinds: dict[int, str] | None = None) -> str | None:
    """What a base-model choice is: kinds.CAUSAL_LM, kinds.SEQUENCE_CLASSIFIER, :data:`BACKBONE`, or None when its
    folder does not say (no ``architectures`` in its config.json). A registered artifact is what it was trained as."""
    if value.startswith("artifact:"):
        artifact_id = int(value.split(":", 1)[1])
        if artifact_kinds is None:
            artifact_kinds = dict(ModelArtifact.objects.filter(pk=artifact_id).values_list("pk", "kind"))
        kind = artifact_kinds.get(artifact_id)
        return None if kind is None else kinds.SEQUENCE_CLASSIFIER if kind == ArtifactKind.REWARD else kinds.CAUSAL_LM
    try:
        config = json.loads((Path(value) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    architectures = config.get("architectures") or []
    if not architectures:
        return None
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return kinds.SEQUENCE_CLASSIFIER
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return kinds.CAUSAL_LM
    return BACKBONE


def fits(family: str | None, accepted: tuple[str, ...]) -> bool:
    """Whether a model of ``family`` can be loaded as one of ``accepted``: a reward model starts from a classifier,
    a language model or a bare backbone (it gets a new head); a policy only from a language model."""
    if family is None:
        return True  # nothing says what it is: the runner checks when it loads it
    if family == BACKBONE:
        return kinds.SEQUENCE_CLASSIFIER in accepted
    return family in accepted


def model_choices(user) -> list[tuple[str, str, str | None]]:
    """``(value, label, family)`` of every model a launcher may use: folders under MODEL_ROOTS and the registry."""
    choices = allowed_base_models(user)
    ids = [int(value.split(":", 1)[1]) for value, _ in choices if value.startswith("artifact:")]
    artifact_kinds = dict(ModelArtifact.objects.filter(pk__in=ids).values_list("pk", "kind"))
    return [(value, label, model_family(value, artifact_kinds)) for value, label in choices]


def _labelled(value: str, label: str, family: str | None) -> tuple[str, str]:
    return value, f"{label} · {family}" if family else label


# --- the form -----------------------------------------------------------------------------------------

# The inputs besides options that a kind may read (each is removed from the form of a kind that does not).
INPUTS = (
    "snapshot",
    "prompts_from",
    "prompts_file",
    "max_prompts",
    "target_project",
    "base_model",
    "reward_models",
    "reward_weights",
    "baseline",
    "teacher",
)


class LaunchForm(forms.Form):
    project = forms.ChoiceField(help_text="Projects you are an admin of.")
    kind = forms.ChoiceField(widget=forms.HiddenInput)
    base_model = forms.ChoiceField(
        label="Base model", help_text="Folders under MODEL_ROOTS and registered artifacts that this kind can load."
    )
    snapshot = forms.ChoiceField(
        required=False, help_text="Empty: a fresh snapshot of the current votes, 10% of prompts held out."
    )
    reward_models = forms.MultipleChoiceField(
        required=False,
        label="Reward models",
        help_text="Score the samples with these (registered reward models and sequence classifiers under MODEL_ROOTS).",
    )
    reward_weights = forms.CharField(
        required=False,
        label="Reward-model weights",
        help_text="Weights of the reward models in the order listed, e.g. 0.7, 0.3; empty: equal.",
    )
    target_project = forms.ChoiceField(
        required=False,
        label="Target project",
        help_text="The pairwise or ranking project whose new round gets the candidates.",
    )
    prompts_from = forms.ChoiceField(
        required=False,
        label="Prompts from",
        help_text="The project's items, those annotators disagree on, those the reward model(s) are least sure "
        "about, a snapshot's prompts, or a file.",
    )
    prompts_file = forms.FileField(
        required=False, label="Prompts file", help_text='With "file": JSONL, one {"prompt": text or messages} per line.'
    )
    max_prompts = forms.IntegerField(
        required=False, min_value=1, label="Max prompts", help_text="At most this many prompts; empty: all."
    )
    baseline = forms.ChoiceField(required=False, help_text="The policy the new one is compared with.")
    teacher = forms.ChoiceField(
        required=False,
        help_text="The model the base model (the student) learns from, with the same tokenizer; context mode: empty "
        "for the base model itself.",
    )
    parent = forms.IntegerField(
        required=False,
        min_value=1,
        label="Continues run",
        help_text="The run this one continues (lineage), e.g. the previous round's policy run.",
    )
    extra = forms.CharField(
        required=False,
        label="Other options",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "save_steps=50\nlora_r=8"}),
        help_text="One key=value per line, for any option of this kind (docs/training.md lists them all).",
    )

    def __init__(self, *args, user, kind: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        available = kinds.launchable()  # a judge run is launched from its judge
        # The kind whose inputs and options the form shows: the one posted, asked for (?kind=) or the first.
        wanted = (self.data.get("kind") if self.is_bound else None) or kind or self.initial.get("kind")
        self.kind = kinds.get(wanted if wanted in available else available[0])
        self.fields["kind"].choices = [(k.name, k.label) for k in kinds.KINDS.values() if k.name in available]
        self.initial["kind"] = self.kind.name
        projects = training_projects(user, "admin")
        self.fields["project"].choices = [(p.slug, f"{p.name} ({p.slug})") for p in projects]
        models = model_choices(user)
        self.all_models = {value: (label, family) for value, label, family in models}
        self.fields["base_model"].choices = [
            _labelled(v, label, family) for v, label, family in models if fits(family, self.kind.base_models)
        ]
        self._inputs(user, projects, models)
        self.option_names = []
        for row in self.kind.config.describe():
            if option_applies(self.kind, row["name"]):
                self.fields[f"opt_{row['name']}"] = self._option_field(row)
                self.option_names.append(row["name"])

    def _inputs(self, user, projects, models) -> None:
        """The inputs besides options: only those the kind reads (a snapshot, prompts, reward models, a target
        project, a baseline)."""
        kind = self.kind
        if kind.reads == kinds.SNAPSHOT:
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
        else:
            del self.fields["snapshot"]
        if kind.reads == kinds.PROMPTS:
            labels = {"items": "the project's items"}
            self.fields["prompts_from"].choices = [(s, labels.get(s, s)) for s in PROMPT_SOURCES]
            self.fields["prompts_from"].initial = kind.default_prompts
        else:
            for name in ("prompts_from", "prompts_file", "max_prompts"):
                del self.fields[name]
        if kind.reward_models == kinds.NO_REWARD_MODEL:
            del self.fields["reward_models"], self.fields["reward_weights"]
        else:
            self.fields["reward_models"].required = kind.reward_models == kinds.REWARD_MODEL_NEEDED
            self.fields["reward_models"].choices = [
                _labelled(v, label, family) for v, label, family in models if family == kinds.SEQUENCE_CLASSIFIER
            ]
        if kind.publishes == kinds.CANDIDATES:
            targets = projects.filter(kind__in=list(kind.target_kinds or kinds.TARGET_RESPONSES))
            self.fields["target_project"].choices = [("", "the run's project")] + [
                (p.slug, f"{p.name} ({p.slug})") for p in targets
            ]
        else:
            del self.fields["target_project"]
        if kind.publishes == kinds.COMPARISONS:
            self.fields["baseline"].required = True
            self.fields["baseline"].choices = [
                _labelled(v, label, family) for v, label, family in models if fits(family, (kinds.CAUSAL_LM,))
            ]
        else:
            del self.fields["baseline"]
        if kind.teacher == kinds.NO_TEACHER:
            del self.fields["teacher"]
        else:
            self.fields["teacher"].required = kind.teacher == kinds.TEACHER_NEEDED
            self.fields["teacher"].choices = [("", "none")] + [
                _labelled(v, label, family) for v, label, family in models if fits(family, (kinds.CAUSAL_LM,))
            ]

    @staticmethod
    def _option_field(row: dict) -> forms.Field:
        """A field for one config option: a choice for choices and booleans, text (typed by the config) otherwise;
        empty means the default, which the placeholder (or the first choice) shows."""
        default = row["default"]
        if row["choices"]:
            field = forms.ChoiceField(
                required=False, choices=[("", f"default ({default})")] + [(c, c) for c in row["choices"]]
            )
        elif row["type"] == "bool":
            field = forms.ChoiceField(
                required=False,
                choices=[("", f"default ({'yes' if default else 'no'})"), ("true", "yes"), ("false", "no")],
            )
        else:
            shown = "by method" if default is None and row["name"] == "learning_rate" else default
            shown = "none" if shown is None else ", ".join(map(str, shown)) if isinstance(shown, list) else shown
            attrs = {"placeholder": str(shown) if shown != "" else "empty"}
            if row["type"] in ("int", "float", "int or none", "float or none"):
                attrs["inputmode"] = "decimal"
            field = forms.CharField(required=False, widget=forms.TextInput(attrs=attrs))
        field.label, field.help_text = label_for(row["name"]), row["help"]
        return field

    # --- grouping, for the template -------------------------------------------------------------------

    @cached_property
    def groups(self) -> list[dict]:
        """``[{"name", "title", "key": [bound fields], "more": [bound fields]}]``: the groups with something in them."""
        placed: dict[str, dict[str, list]] = {g.name: {"key": [], "more": []} for g in GROUPS}
        order = {member: i for g in GROUPS for i, member in enumerate(g.members)}
        members = [(name, name) for name in INPUTS if name in self.fields]
        members += [(name, f"opt_{name}") for name in self.option_names]
        for name, field_name in sorted(members, key=lambda member: order.get(member[0], len(order))):
            group = GROUP_OF.get(name, DEFAULT_GROUP)
            placed[group]["key" if name in KEY_FIELDS else "more"].append(self[field_name])
        return [{"name": g.name, "title": g.title, **placed[g.name]} for g in GROUPS if any(placed[g.name].values())]

    def error_summary(self) -> list[tuple[str, str]]:
        """``(label, message)`` of every error, for the list above the form (each is also shown at its field)."""
        found = [("", str(e)) for e in self.non_field_errors()]
        for name, errors in self.errors.items():
            if name != "__all__":
                found += [(self.fields[name].label or label_for(name), str(e)) for e in errors]
        return found

    # --- validation -----------------------------------------------------------------------------------

    def full_clean(self):
        super().full_clean()
        if self.is_bound and "base_model" in self.errors:
            # Say why a known model is not offered, instead of Django's "not one of the available choices".
            value = self.data.get("base_model", "")
            if value in self.all_models:
                label, family = self.all_models[value]
                self.errors["base_model"] = self.error_class(
                    [
                        f"{label} is a {family}; a {self.kind.name} run starts from a "
                        f"{' or '.join(self.kind.base_models)}."
                    ]
                )

    def clean(self):
        cleaned = super().clean()
        values = {}
        config = self.kind.config
        for name in self.option_names:
            text = cleaned.get(f"opt_{name}")
            if text in (None, ""):
                continue
            try:
                values.update(config.parse_overrides([f"{name}={text}"]))
            except ConfigError as exc:
                self.add_error(f"opt_{name}", str(exc))
        lines = [line.strip() for line in (cleaned.get("extra") or "").splitlines() if line.strip()]
        try:
            values.update(config.parse_overrides(lines))
        except ConfigError as exc:
            self.add_error("extra", str(exc))
        cleaned["values"] = values
        if "reward_models" in self.fields:
            try:
                cleaned["reward_model_values"] = self._weighted(
                    cleaned.get("reward_models") or [], cleaned.get("reward_weights") or ""
                )
            except forms.ValidationError as exc:
                self.add_error("reward_weights", exc)
        upload = cleaned.get("prompts_file")
        cleaned["prompts_data"] = upload.read() if upload else None
        snapshot = cleaned.get("snapshot")
        cleaned["snapshot"] = Snapshot.objects.filter(pk=int(snapshot)).first() if snapshot else None
        return cleaned

    def field_for_message(self, message: str) -> str | None:
        """The form field an error from launching is about, when the message starts with an option's name
        ("max_steps must be …") or names an input: the error is then shown at that field."""
        first = message.split(" ", 1)[0].strip(".,:'\"")
        if first in self.option_names:
            return f"opt_{first}"
        return None

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
        required=False, choices=[("", "items")] + [(s, s) for s in PROMPT_SOURCES if s not in ("file", "items")]
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
