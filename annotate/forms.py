"""Browser forms: parsing and per-field messages. Writes happen in ``annotate.actions``.

Each kind's answer form turns the posted fields into exactly the payload of docs/task-kinds.md
(:meth:`JudgmentForm.payload`), which ``actions.record_judgment`` checks again like any API body. The forms
also describe their own layout (``rows()``), so the templates need no logic beyond loops.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from django import forms
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from . import judging
from .actions import JUDGE_BACKEND_OPTIONS
from .constitution import MAX_NAME_LENGTH, MAX_PRINCIPLES, MAX_TEXT_LENGTH, constitution_hash, validate_constitution
from .exports.options import KIND_FORMATS, ExportOptions, default_format
from .judgments import CHOICES, STRENGTH_LABELS
from .models import Flag, Judge, Judgment, Kind, Project, Response, Role, Task
from .selectors import SUGGESTIONS_SHOWN, matching_users

MAX_TEXT = 20_000
CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
STEP_LABELS = [("positive", "Positive", "+"), ("neutral", "Neutral", "0"), ("negative", "Negative", "−")]
# Keys for the n-th value of a rating scale (the 10th is 0); larger scales are mouse-only past that.
SCALE_KEYS = "1234567890"


@dataclass
class Option:
    """One radio button as the template draws it: value, label and the keys arbiter.js maps to it."""

    value: str
    label: str
    keys: str = ""  # space-separated, e.g. "1 +"
    key_shown: str = ""


@dataclass
class Group:
    """A radio group (a "cell" the keyboard moves through): a bound field and its options."""

    field: forms.BoundField
    options: list[Option]
    title: str = ""
    text: str = ""  # the step text, for steps

    @property
    def value(self) -> str:
        value = self.field.value()
        return "" if value is None else str(value)


@dataclass
class Shown:
    """A response as shown to this annotator: its screen label ("A", "1"...) and what goes with it."""

    label: str
    response: Response
    groups: list[Group] = field(default_factory=list)
    rank: forms.BoundField | None = None


def shown_responses(task: Task) -> list[tuple[str, Response]]:
    """The task's responses in display order, labelled A/B for pairwise and 1..K otherwise."""
    responses = {r.id: r for r in task.item.responses.all()}
    labels = "AB" if task.project.kind == Kind.PAIRWISE else [str(n) for n in range(1, 10)]
    return [(label, responses[rid]) for label, rid in zip(labels, task.display_order) if rid in responses]


class JudgmentForm(forms.Form):
    """Fields every kind has; subclasses add theirs in ``add_fields`` and build the payload."""

    idempotency_key = forms.CharField(max_length=100, widget=forms.HiddenInput)
    duration_ms = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    has_rationale = True

    def __init__(self, task: Task, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task
        self.project: Project = task.project
        self.shown = shown_responses(task)
        if self.has_rationale:
            self.fields["rationale"] = forms.CharField(
                required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2})
            )
        self.add_fields()

    def add_fields(self) -> None:
        pass

    def answer(self) -> dict:
        raise NotImplementedError

    def answer_initial(self, judgment: Judgment) -> dict:
        """The form's fields as ``judgment`` answered them: the inverse of :meth:`payload`, so a revision starts from
        the answer given (``annotate/kinds/*.html`` show ``initial`` like a posted value)."""
        initial = self.kind_initial(judgment)
        if self.has_rationale:
            initial["rationale"] = judgment.text
        return initial

    def kind_initial(self, judgment: Judgment) -> dict:
        raise NotImplementedError

    def payload(self) -> dict:
        """The body ``record_judgment`` takes (docs/task-kinds.md), without the idempotency key."""
        data = self.cleaned_data
        payload = self.answer()
        if self.has_rationale:
            payload["rationale"] = data.get("rationale") or ""
        payload["duration_ms"] = data.get("duration_ms")
        return payload


class PairwiseForm(JudgmentForm):
    """``{"choice", "strength"?, "criteria"?: {criterion: choice}, "demonstration"?}``."""

    def add_fields(self):
        self.fields["choice"] = forms.ChoiceField(
            choices=[(c, CHOICE_LABELS[c]) for c in CHOICES], widget=forms.RadioSelect
        )
        self.fields["strength"] = forms.TypedChoiceField(
            choices=[(str(k), v) for k, v in STRENGTH_LABELS.items()],
            coerce=int,
            required=False,
            empty_value=None,
            widget=forms.RadioSelect,
        )
        for i, criterion in enumerate(self.project.criteria):
            self.fields[f"criterion_{i}"] = forms.ChoiceField(
                label=criterion,
                choices=[(c, CHOICE_LABELS[c]) for c in CHOICES],
                widget=forms.RadioSelect,
                error_messages={"required": f"Choose for {criterion} too."},
            )
        self.fields["demonstration"] = forms.CharField(
            required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 5})
        )

    def clean(self):
        data = super().clean()
        if data.get("choice") in ("A", "B") and data.get("strength") is None:
            self.add_error("strength", "Say how much better the response is.")
        return data

    def answer(self) -> dict:
        data = self.cleaned_data
        answer: dict = {"choice": data["choice"]}
        if data.get("strength") is not None:
            answer["strength"] = data["strength"]
        if self.project.criteria:
            answer["criteria"] = {c: data[f"criterion_{i}"] for i, c in enumerate(self.project.criteria)}
        # "Write a better one" only means something when both responses are bad.
        if data["choice"] == "both_bad" and data.get("demonstration", "").strip():
            answer["demonstration"] = data["demonstration"]
        return answer

    def _choice(self, outcome: str, winner_id: int | None) -> str:
        # "A" is whatever this annotator saw first (display_order[0]), as when they answered.
        if outcome == Judgment.Outcome.WIN:
            return "A" if winner_id == self.task.display_order[0] else "B"
        return outcome  # "tie" and "both_bad" are choices by the same name

    def kind_initial(self, judgment: Judgment) -> dict:
        initial: dict = {"choice": self._choice(judgment.outcome, judgment.winner_id)}
        if judgment.strength is not None:
            initial["strength"] = judgment.strength
        criteria = judgment.data.get("criteria") or {}
        for i, criterion in enumerate(self.project.criteria):
            if isinstance(criteria.get(criterion), dict):
                initial[f"criterion_{i}"] = self._choice(criteria[criterion]["outcome"], criteria[criterion]["winner"])
        if judgment.data.get("demonstration"):
            initial["demonstration"] = judgment.data["demonstration"]
        return initial

    def criteria_rows(self) -> list[Group]:
        options = [Option(c, CHOICE_LABELS[c], str(n), str(n)) for n, c in enumerate(CHOICES, start=1)]
        return [
            Group(self[f"criterion_{i}"], options, title=criterion) for i, criterion in enumerate(self.project.criteria)
        ]


class RankingForm(JudgmentForm):
    """A rank select per response → ``{"ranking": [id, [id, id], id, ...]}`` best first (lists are ties)."""

    def add_fields(self):
        k = len(self.shown)
        for label, response in self.shown:
            self.fields[f"rank_{response.id}"] = forms.TypedChoiceField(
                choices=[("", "—")] + [(str(n), str(n)) for n in range(1, k + 1)],
                coerce=int,
                widget=forms.Select(attrs={"class": "rank", "aria-label": f"Rank of response {label}"}),
                error_messages={"required": "Give every response a rank."},
            )

    def clean(self):
        data = super().clean()
        ranks = [data.get(f"rank_{r.id}") for _, r in self.shown]
        repeated = sorted(rank for rank, n in Counter(r for r in ranks if r is not None).items() if n > 1)
        if repeated and not self.project.allow_ties:
            self.add_error(
                None,
                f"Each response needs its own rank (rank {', '.join(map(str, repeated))} is given more than once); "
                "this project does not allow ties.",
            )
        return data

    def answer(self) -> dict:
        groups: dict[int, list[int]] = {}
        for _, response in self.shown:  # display order inside a tie
            groups.setdefault(self.cleaned_data[f"rank_{response.id}"], []).append(response.id)
        ranking = [ids[0] if len(ids) == 1 else ids for _, ids in sorted(groups.items())]
        return {"ranking": ranking}

    def kind_initial(self, judgment: Judgment) -> dict:
        # Tied responses share the better rank and the next group skips past them (1, 1, 3), as ranking.js numbers.
        initial, rank = {}, 1
        for group in judgment.data.get("ranking") or []:
            ids = group if isinstance(group, list) else [group]
            for response_id in ids:
                initial[f"rank_{response_id}"] = rank
            rank += len(ids)
        return initial

    def rows(self) -> list[Shown]:
        return [Shown(label, response, rank=self[f"rank_{response.id}"]) for label, response in self.shown]


class RatingForm(JudgmentForm):
    """A score per response × criterion → ``{"ratings": {"<id>": {criterion: score}}}``."""

    def add_fields(self):
        self.values = {str(v): v for v in self.project.scale_values}
        for _, response in self.shown:
            for i, criterion in enumerate(self.project.rating_criteria):
                self.fields[f"rating_{response.id}_{i}"] = forms.ChoiceField(
                    label=criterion,
                    choices=[(key, key) for key in self.values],
                    widget=forms.RadioSelect,
                    error_messages={"required": f"Rate {criterion}."},
                )

    def answer(self) -> dict:
        ratings = {
            str(response.id): {
                criterion: self.values[self.cleaned_data[f"rating_{response.id}_{i}"]]
                for i, criterion in enumerate(self.project.rating_criteria)
            }
            for _, response in self.shown
        }
        return {"ratings": ratings}

    def kind_initial(self, judgment: Judgment) -> dict:
        ratings = judgment.data.get("ratings") or {}
        return {
            f"rating_{response.id}_{i}": str(ratings[str(response.id)][criterion])
            for _, response in self.shown
            for i, criterion in enumerate(self.project.rating_criteria)
            if criterion in ratings.get(str(response.id), {})
        }

    def scale_options(self) -> list[Option]:
        keys = SCALE_KEYS if len(self.values) <= len(SCALE_KEYS) else SCALE_KEYS[:9]
        return [
            Option(value, value, keys[n] if n < len(keys) else "", keys[n] if n < len(keys) else "")
            for n, value in enumerate(self.values)
        ]

    @property
    def keys_are_scores(self) -> bool:
        """A scale like 1-7, where key n gives score n: the keys need no legend."""
        return all(option.key_shown == option.value for option in self.scale_options())

    def rows(self) -> list[Shown]:
        options = self.scale_options()
        return [
            Shown(
                label,
                response,
                groups=[
                    Group(self[f"rating_{response.id}_{i}"], options, title=criterion)
                    for i, criterion in enumerate(self.project.rating_criteria)
                ],
            )
            for label, response in self.shown
        ]


class StepsForm(JudgmentForm):
    """A label per step of every response → ``{"steps": {"<id>": [labels]}}`` (a plain list for one response)."""

    def add_fields(self):
        self.steps = {response.id: self.project.split_steps(response.text) for _, response in self.shown}
        for response_id, steps in self.steps.items():
            for j in range(len(steps)):
                self.fields[f"step_{response_id}_{j}"] = forms.ChoiceField(
                    choices=[(value, label) for value, label, _ in STEP_LABELS],
                    widget=forms.RadioSelect,
                    error_messages={"required": "Label every step."},
                )

    def answer(self) -> dict:
        labels = {
            str(response_id): [self.cleaned_data[f"step_{response_id}_{j}"] for j in range(len(steps))]
            for response_id, steps in self.steps.items()
        }
        if len(labels) == 1:
            return {"steps": next(iter(labels.values()))}
        return {"steps": labels}

    def kind_initial(self, judgment: Judgment) -> dict:
        steps = judgment.data.get("steps") or {}
        return {
            f"step_{response_id}_{j}": label
            for response_id in self.steps
            for j, label in enumerate(steps.get(str(response_id), [])[: len(self.steps[response_id])])
        }

    def rows(self) -> list[Shown]:
        options = [
            Option(value, label, f"{n} {sign if sign != '−' else '-'}", f"{n}")
            for n, (value, label, sign) in enumerate(STEP_LABELS, start=1)
        ]
        return [
            Shown(
                label,
                response,
                groups=[
                    Group(self[f"step_{response.id}_{j}"], options, title=f"Step {j + 1}", text=step)
                    for j, step in enumerate(self.steps[response.id])
                ],
            )
            for label, response in self.shown
        ]


class DemonstrationForm(JudgmentForm):
    """The ideal response → ``{"text", "based_on"?: id of the response it was edited from}``."""

    has_rationale = False

    def add_fields(self):
        self.fields["text"] = forms.CharField(
            max_length=MAX_TEXT,
            widget=forms.Textarea(attrs={"rows": 12, "class": "demonstration-text"}),
            error_messages={"required": "Write the response (or start from one of those shown)."},
        )
        self.fields["based_on"] = forms.TypedChoiceField(
            choices=[("", "Nothing: written from scratch")]
            + [(str(r.id), f"Response {label}") for label, r in self.shown],
            coerce=int,
            required=False,
            empty_value=None,
        )

    def answer(self) -> dict:
        answer: dict = {"text": self.cleaned_data["text"]}
        if self.cleaned_data.get("based_on") is not None:
            answer["based_on"] = self.cleaned_data["based_on"]
        return answer

    def kind_initial(self, judgment: Judgment) -> dict:
        return {"text": judgment.text, "based_on": judgment.data.get("based_on")}

    def rows(self) -> list[Shown]:
        return [Shown(label, response) for label, response in self.shown]


FORMS: dict[str, type[JudgmentForm]] = {
    Kind.PAIRWISE: PairwiseForm,
    Kind.RANKING: RankingForm,
    Kind.RATING: RatingForm,
    Kind.STEPS: StepsForm,
    Kind.DEMONSTRATION: DemonstrationForm,
}


def judgment_form(task: Task, data=None, initial=None) -> JudgmentForm:
    """The answer form of the task's project kind, bound to ``data`` when given."""
    return FORMS[task.project.kind](task, data=data, initial=initial)


class SkipForm(forms.Form):
    reason = forms.CharField(max_length=500, error_messages={"required": "Say why you skip this item."})


class FlagForm(forms.Form):
    category = forms.ChoiceField(
        choices=Flag.Category.choices, widget=forms.RadioSelect, error_messages={"required": "Choose what is wrong."}
    )
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


# The new-project settings that mean something for one kind only: the form has the chosen kind's and no others
# (a scale on a ranking project would be stored and never used). Every other field is every kind's.
KIND_SETTINGS: dict[str, tuple[str, ...]] = {
    Kind.PAIRWISE: ("criteria_text",),
    Kind.RANKING: ("allow_ties",),
    Kind.RATING: ("criteria_text", "scale_text"),
    Kind.STEPS: ("step_separator",),
    Kind.DEMONSTRATION: (),
}


class ProjectForm(forms.ModelForm):
    """A new project: the fields of every kind, and only the chosen kind's own settings (:data:`KIND_SETTINGS`).

    The kind is the posted one, else ``kind=`` (the page's ``?kind=``), else pairwise; an unknown kind counts as
    pairwise here and the kind field itself reports it."""

    criteria_text = forms.CharField(
        label="Criteria",
        required=False,
        help_text="Comma-separated, e.g. helpfulness,harmlessness; empty for one overall judgment.",
    )
    scale_text = forms.CharField(
        label="Scale",
        required=False,
        help_text="A range like 1-7 (the default) or labels like safe,unsafe,unsure.",
    )

    class Meta:
        model = Project
        fields = ["slug", "name", "kind", "overlap", "instructions", "randomize_order", "allow_ties", "step_separator"]
        widgets = {"instructions": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, kind: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_bound:
            kind = self.data.get("kind")
        # Not "kind": a template reads form.kind as the form's field of that name.
        self.chosen_kind = kind if kind in KIND_SETTINGS else Kind.PAIRWISE
        self.initial["kind"] = self.chosen_kind
        own = KIND_SETTINGS[self.chosen_kind]
        for name in {name for names in KIND_SETTINGS.values() for name in names} - set(own):
            del self.fields[name]
        self.fields["name"].required = False
        if "step_separator" in self.fields:
            self.fields["step_separator"].strip = False
        # With JavaScript, choosing a kind swaps in its settings (the page's #kind-fields); without it, the page's
        # links reload it with ?kind=.
        self.fields["kind"].widget.attrs.update(
            {
                "hx-get": reverse("project-new"),
                "hx-target": "#kind-fields",
                "hx-select": "#kind-fields",
                "hx-swap": "outerHTML",
                "hx-include": "#kind-fields",
            }
        )

    def common_fields(self) -> list[forms.BoundField]:
        own = KIND_SETTINGS[self.chosen_kind]
        return [self[name] for name in self.fields if name not in own]

    def kind_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in KIND_SETTINGS[self.chosen_kind]]

    def clean_criteria_text(self) -> list[str]:
        names = [c.strip() for c in self.cleaned_data["criteria_text"].split(",") if c.strip()]
        if len(set(names)) != len(names):
            raise forms.ValidationError("Criteria must be distinct.")
        return names

    def clean_scale_text(self) -> dict:
        text = self.cleaned_data["scale_text"].strip()
        if not text:
            return {}
        low, sep, high = text.partition("-")
        if sep and low.strip().lstrip("-").isdigit() and high.strip().isdigit():
            low, high = int(low), int(high)
            if low >= high:
                raise forms.ValidationError("A numeric scale goes from a lower to a higher integer, e.g. 1-7.")
            return {"min": low, "max": high}
        labels = [label.strip() for label in text.split(",") if label.strip()]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise forms.ValidationError("Give a range like 1-7 or at least two distinct labels, comma-separated.")
        return {"labels": labels}

    def clean(self):
        data = super().clean()
        data["criteria"] = data.pop("criteria_text", [])
        data["scale"] = data.pop("scale_text", {})
        if "step_separator" in self.fields and not data.get("step_separator"):
            data["step_separator"] = "\n"
        return data


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL, CSV or Parquet.")
    skip_invalid = forms.BooleanField(
        required=False, label="Skip invalid rows (import the rest, list the skipped lines)"
    )
    votes_as = forms.RegexField(
        regex=r"^[\w.@+-]{1,150}$",
        required=False,
        label="Record the file's own labels (TRL/HH chosen, OpenAssistant ranks) as votes of",
        widget=forms.TextInput(attrs={"placeholder": "annotator name (optional)", "autocomplete": "off"}),
    )


class MemberForm(forms.Form):
    """Add a member (or change a member's role) by username, by email, or by a part of either.

    ``clean_username`` gives the one user meant: the user of that exact username, else the one active user of that
    email, else the one active user whose username or email contains the text. None or several are errors that say
    so; several also leave ``matches`` (at most :data:`SUGGESTIONS_SHOWN`) for the page to offer."""

    username = forms.CharField(
        label="Username or email",
        max_length=254,
        help_text="A part of it is enough when it names one person.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "list": "member-suggestions"}),
    )
    role = forms.ChoiceField(choices=Role.choices)

    def __init__(self, *args, search_url: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.matches: list = []
        self.partial = ""  # the text typed, when it named one user only in part
        if search_url:
            self.fields["username"].widget.attrs.update(
                {
                    "hx-get": search_url,
                    "hx-trigger": "input changed delay:250ms",
                    "hx-target": "#member-suggestions",
                    "hx-swap": "innerHTML",
                    "hx-sync": "this:replace",
                }
            )

    def clean_username(self) -> str:
        query = self.cleaned_data["username"].strip()
        users = get_user_model().objects
        exact = users.filter(username=query).first()
        if exact is None:
            by_email = list(users.filter(is_active=True, email__iexact=query)[:2])
            exact = by_email[0] if len(by_email) == 1 else None
        if exact is not None:
            return exact.username
        found = matching_users(query, limit=SUGGESTIONS_SHOWN + 1)
        if not found:
            raise forms.ValidationError(
                f"No such user: no active user's username or email contains \u201c{query}\u201d. Ask a site admin to "
                "create the account."
            )
        if len(found) > 1:
            self.matches = found[:SUGGESTIONS_SHOWN]
            many = f"more than {SUGGESTIONS_SHOWN}" if len(found) > SUGGESTIONS_SHOWN else str(len(found))
            raise forms.ValidationError(
                f"\u201c{query}\u201d matches {many} users; choose one below or type more of the name."
            )
        self.partial = query
        return found[0].username


class ExportForm(forms.Form):
    """The export options a researcher picks on the project page (``annotate.exports.ExportOptions``)."""

    format = forms.ChoiceField()
    aggregate = forms.ChoiceField(
        choices=[
            ("", "The format's default"),
            ("majority", "Majority vote"),
            ("dawid-skene", "Dawid-Skene"),
            ("bradley-terry", "Bradley-Terry (ties, skill, position)"),
            ("none", "Every vote"),
        ],
        initial="",
        required=False,
    )
    ties = forms.ChoiceField(
        choices=[("drop", "Drop ties"), ("keep", "Keep ties as rows")], initial="drop", required=False
    )
    min_agreement = forms.FloatField(min_value=0, max_value=1, initial=0, required=False)
    test_size = forms.FloatField(
        min_value=0,
        max_value=0.9,
        initial=0.1,
        required=False,
        help_text="Snapshots: share of prompts in the test split.",
    )
    seed = forms.IntegerField(initial=0, required=False)
    container = forms.ChoiceField(
        choices=[("jsonl", "JSONL"), ("parquet", "Parquet"), ("hf", "datasets (save_to_disk)")],
        initial="jsonl",
        required=False,
    )
    license = forms.CharField(max_length=100, required=False)
    source = forms.ChoiceField(
        choices=[("human", "People's votes"), ("ai", "AI judges' votes"), ("all", "Both")],
        initial="human",
        required=False,
        help_text="Whose votes the export reads.",
    )

    def __init__(self, project: Project, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["format"].choices = [(f, f) for f in sorted(KIND_FORMATS[project.kind])]
        self.fields["format"].initial = default_format(project.kind)

    def options(self, **overrides):
        data = {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
        return ExportOptions.from_dict({**data, **overrides})


class ConstitutionWidget(forms.Widget):
    """The constitution as rows of a name and a markdown text, plus one empty row to add a principle; a row whose
    name and text are both cleared is removed. Plain form fields (``constitution-<n>-name``,
    ``constitution-<n>-text``), so it works without JavaScript; a hidden ``constitution-rows`` says the rows were
    on the page (without it the stored constitution is kept)."""

    def value_from_datadict(self, data, files, name):
        if f"{name}-rows" not in data:
            return None
        pattern = re.compile(rf"{re.escape(name)}-(\d{{1,4}})-(name|text)")
        rows: dict[int, dict] = {}
        for key in data:
            match = pattern.fullmatch(key)
            if match:
                rows.setdefault(int(match.group(1)), {"name": "", "text": ""})[match.group(2)] = data.get(key, "")
        return [row for _, row in sorted(rows.items()) if row["name"].strip() or row["text"].strip()]

    def value_omitted_from_data(self, data, files, name):
        return f"{name}-rows" not in data

    def id_for_label(self, id_):
        return f"{id_}-0-name" if id_ else None

    def render(self, name, value, attrs=None, renderer=None):
        rows = [row for row in (value or []) if isinstance(row, dict)]
        base_id = (attrs or {}).get("id") or f"id_{name}"
        fieldsets = format_html_join(
            "\n",
            '<fieldset class="principle"><legend>{}</legend>'
            '<label for="{}-{}-name">Name</label> '
            '<input type="text" name="{}-{}-name" id="{}-{}-name" value="{}" maxlength="{}" '
            'autocomplete="off" spellcheck="false"> '
            '<label for="{}-{}-text">Text (markdown)</label>'
            '<textarea name="{}-{}-text" id="{}-{}-text" rows="3" maxlength="{}">{}</textarea></fieldset>',
            (
                (
                    f"Principle {index + 1}" if index < len(rows) else "New principle",
                    base_id,
                    index,
                    name,
                    index,
                    base_id,
                    index,
                    str(row.get("name", "")),
                    MAX_NAME_LENGTH,
                    base_id,
                    index,
                    name,
                    index,
                    base_id,
                    index,
                    MAX_TEXT_LENGTH,
                    # A newline after <textarea> is dropped by HTML parsers: keep the text's own first line.
                    "\n" + str(row.get("text", "")),
                )
                for index, row in enumerate([*rows, {"name": "", "text": ""}])
            ),
        )
        return format_html(
            '<div class="constitution" id="{}"><input type="hidden" name="{}-rows" value="{}">{}</div>',
            base_id,
            name,
            len(rows) + 1,
            fieldsets,
        )


class ConstitutionField(forms.Field):
    """A list of ``{"name", "text"}`` principles, validated by :func:`annotate.constitution.validate_constitution`;
    None when the rows were not on the page (the form then keeps the stored constitution)."""

    widget = ConstitutionWidget

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def clean(self, value):
        if value is None:
            return None
        return validate_constitution(value)


class ProjectSettingsForm(forms.ModelForm):
    """What a researcher may change on a running project: instructions, gold items, qualification, review, and the
    constitution (the principles a critique_revise run and constitution-citing judges read)."""

    constitution = ConstitutionField(
        help_text=f"Named principles (Constitutional AI), at most {MAX_PRINCIPLES}: a name of lowercase letters, "
        "digits, '-' or '_', and a markdown text. Fill in the empty row to add one; clear a row's name and text to "
        "remove it."
    )

    class Meta:
        from .models import SETTINGS_FIELDS

        model = Project
        fields = SETTINGS_FIELDS
        widgets = {"instructions": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # As stored, before a posted form changes the instance in memory: what the page shows as saved.
        self.saved_constitution = list(self.instance.constitution or [])
        self.saved_constitution_hash = constitution_hash(self.saved_constitution)

    def clean_constitution(self):
        value = self.cleaned_data.get("constitution")
        return self.saved_constitution if value is None else value


# --- AI judges (docs/ai-feedback.md) ----------------------------------------------------------------------------

# The fields of the judge form each backend uses (besides name and backend).
JUDGE_BACKEND_FIELDS = {
    "reward-model": ("model", "options"),
    "local": ("model", "template", "principle", "options"),
    "openai": ("model", "base_url", "api_key_env", "template", "principle", "options"),
}
JUDGE_MODEL_HELP = {
    "reward-model": "Registered reward models: artifact:ID, or several weighted: artifact:3:0.7,artifact:4:0.3.",
    "local": "A causal LM: a folder under MODEL_ROOTS or artifact:ID (safetensors only).",
    "openai": "The endpoint's model name, e.g. Qwen/Qwen2.5-7B-Instruct.",
}


class JudgeForm(forms.Form):
    """A new AI judge: the fields of the chosen backend only (the posted one, else ``backend=``, else local).
    ``actions.add_judge`` checks the values; this form parses them (options as ``key=value`` lines)."""

    name = forms.CharField(max_length=64, help_text="Lowercase letters, digits, - and _; reports say judge:<name>.")
    backend = forms.ChoiceField(choices=[])
    model = forms.CharField(max_length=500)
    base_url = forms.CharField(
        max_length=500,
        required=False,
        label="Base URL",
        help_text="The API's base URL, e.g. http://vllm.internal:8000/v1; its host must be in ARBITER_JUDGE_HOSTS.",
    )
    api_key_env = forms.CharField(
        max_length=100,
        required=False,
        label="API key variable",
        help_text="The NAME of the environment variable holding the key on the worker (e.g. OPENAI_API_KEY); "
        "never the key itself. Empty: no key.",
    )
    template = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 14, "class": "mono"}),
        help_text="Placeholders in braces ({{ and }} for literal braces); {format} asks for the answer lines the "
        "parser reads.",
    )
    principle = forms.ChoiceField(required=False, help_text="A principle of the constitution the judge cites.")
    options = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "batch_size=8\ntemperature=0"}),
        help_text="One key=value per line.",
    )

    def __init__(self, *args, project: Project, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        backends = list(JUDGE_BACKEND_FIELDS)
        if self.is_bound:
            backend = self.data.get("backend")
        self.chosen_backend = backend if backend in backends else "local"
        self.fields["backend"].choices = [(b, label) for b, label in Judge.Backend.choices]
        self.initial["backend"] = self.chosen_backend
        self.fields["backend"].widget.attrs.update(
            {
                "hx-get": reverse("judges", args=[project.slug]),
                "hx-target": "#judge-fields",
                "hx-select": "#judge-fields",
                "hx-swap": "outerHTML",
            }
        )
        self.fields["model"].help_text = JUDGE_MODEL_HELP[self.chosen_backend]
        self.fields["principle"].choices = [("", "none")] + [(p["name"], p["name"]) for p in project.constitution or []]
        try:
            self.default_template = judging.default_template(project.kind)
        except judging.TemplateError:
            self.default_template = ""
        self.initial.setdefault("template", self.default_template)
        for name in ("model", "base_url", "api_key_env", "template", "principle", "options"):
            if name not in JUDGE_BACKEND_FIELDS[self.chosen_backend]:
                del self.fields[name]
        if "options" in self.fields:
            self.fields["options"].help_text = "One key=value per line: " + ", ".join(
                JUDGE_BACKEND_OPTIONS[self.chosen_backend]
            )

    def backend_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name not in ("name", "backend")]

    def clean_template(self) -> str:
        # A textarea posts CRLF line ends; the default template unchanged is stored as "the default".
        text = self.cleaned_data["template"].replace("\r\n", "\n")
        return "" if text.strip() == self.default_template.strip() else text

    def clean_options(self) -> dict:
        values = {}
        for number, line in enumerate(self.cleaned_data["options"].splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise forms.ValidationError(f"Line {number}: write an option as key=value.")
            values[key.strip()] = value.strip()
        return values
