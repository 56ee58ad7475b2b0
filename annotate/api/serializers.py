"""Shapes of the API. Serializers parse and present; the writes happen in ``annotate.actions``."""

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from .. import judging
from ..constitution import MAX_NAME_LENGTH, MAX_PRINCIPLES, MAX_TEXT_LENGTH, validate_constitution
from ..judgments import CHOICES
from ..models import SETTINGS_FIELDS, Flag, Judge, Judgment, Kind, Membership, Project, Role, Snapshot, Task


class MessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()


# What a project is made of (fixed once items exist), then what may change later (models.SETTINGS_FIELDS).
PROJECT_FIELDS = [
    "slug",
    "kind",
    "overlap",
    "criteria",
    "scale",
    "step_separator",
    "allow_ties",
    "randomize_order",
    *SETTINGS_FIELDS,
]


class PrincipleSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=MAX_NAME_LENGTH,
        help_text="A slug (lowercase letters, digits, '-' or '_'), unique in the project: how runs and judges cite it.",
    )
    text = serializers.CharField(max_length=MAX_TEXT_LENGTH, help_text="The principle, in markdown.")


class ConstitutionMixin(serializers.Serializer):
    """``constitution``: a list of principles, checked by annotate.constitution.validate_constitution (the rules of
    the settings page); a bad one is a 400 naming each principle at fault, and nothing is changed."""

    constitution = PrincipleSerializer(
        many=True,
        required=False,
        max_length=MAX_PRINCIPLES,
        help_text="Named principles (Constitutional AI), at most 50; critique_revise runs draw from them.",
    )

    def validate_constitution(self, value):
        try:
            return validate_constitution([dict(principle) for principle in value])
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None


class ProjectSettingsSerializer(ConstitutionMixin, serializers.ModelSerializer):
    """The settings a researcher may change on a running project (``models.SETTINGS_FIELDS``)."""

    class Meta:
        from ..models import SETTINGS_FIELDS

        model = Project
        fields = SETTINGS_FIELDS


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = PROJECT_FIELDS


class ProjectCreateSerializer(ConstitutionMixin, serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = PROJECT_FIELDS
        # Without "kind" a project is pairwise, as on the page (the model's default).
        extra_kwargs = {"name": {"required": False}, "kind": {"required": False, "default": Kind.PAIRWISE}}


class ResponseOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()


class TaskSerializer(serializers.Serializer):
    """A task as its annotator sees it: responses in this annotator's display order, no model names."""

    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=Kind.choices)
    project = serializers.CharField()
    prompt = MessageSerializer(many=True)
    responses = ResponseOutSerializer(many=True)
    status = serializers.ChoiceField(choices=Task.Status.choices)
    lease_expires_at = serializers.DateTimeField()


def task_payload(task: Task) -> dict:
    """What an annotator's client needs to show and answer a task; steps projects get each response's steps."""
    project = task.project
    responses = {r.id: r for r in task.item.responses.all()}
    shown = []
    for rid in task.display_order:
        entry = {"id": rid, "text": responses[rid].text}
        if project.kind == Kind.STEPS:
            entry["steps"] = project.split_steps(responses[rid].text)
        shown.append(entry)
    return {
        "id": task.id,
        "kind": project.kind,
        "project": project.slug,
        "prompt": task.item.prompt,
        "responses": shown,
        "status": task.status,
        "lease_expires_at": task.lease_expires_at,
    }


class JudgmentInSerializer(serializers.Serializer):
    """One body for every kind; send the fields of your project's kind (docs/task-kinds.md).

    Only documents the shape: ``annotate.judgments`` validates it, the same way for the browser and imports.
    """

    idempotency_key = serializers.CharField(max_length=100, help_text="The same key again returns the first judgment.")
    choice = serializers.ChoiceField(
        choices=CHOICES, required=False, help_text='pairwise: "A" is the first response as displayed.'
    )
    strength = serializers.IntegerField(
        min_value=0,
        max_value=3,
        required=False,
        allow_null=True,
        help_text="pairwise: 0 negligible/unsure … 3 significantly better.",
    )
    criteria = serializers.DictField(
        child=serializers.ChoiceField(choices=CHOICES),
        required=False,
        help_text="pairwise with criteria: a choice per criterion.",
    )
    demonstration = serializers.CharField(required=False, help_text='pairwise: a better response, with "both_bad".')
    ranking = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        help_text="ranking: response ids best first; a nested list is a group of ties.",
    )
    ratings = serializers.DictField(
        child=serializers.DictField(), required=False, help_text="rating: {response id: {criterion: score}}."
    )
    steps = serializers.JSONField(
        required=False, help_text="steps: {response id: [positive|negative|neutral per step]}."
    )
    text = serializers.CharField(required=False, help_text="demonstration: the ideal response.")
    based_on = serializers.IntegerField(
        required=False, allow_null=True, help_text="demonstration: the response it was edited from."
    )
    rationale = serializers.CharField(required=False, allow_blank=True)
    duration_ms = serializers.IntegerField(min_value=0, required=False, allow_null=True)


class SkipInSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class FlagInSerializer(serializers.Serializer):
    category = serializers.ChoiceField(choices=Flag.Category.choices)
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class FlagSerializer(serializers.ModelSerializer):
    class Meta:
        model = Flag
        fields = ["id", "task", "category", "note", "created_at"]


class JudgmentSerializer(serializers.ModelSerializer):
    choice = serializers.SerializerMethodField()

    class Meta:
        model = Judgment
        fields = [
            "id",
            "task",
            "outcome",
            "choice",
            "winner",
            "strength",
            "data",
            "text",
            "duration_ms",
            "idempotency_key",
            "supersedes",
            "is_current",
            "created_at",
        ]

    def get_choice(self, judgment: Judgment) -> str | None:
        """The answer in the annotator's own display terms (A is the response they saw first)."""
        if judgment.outcome != Judgment.Outcome.WIN:
            return judgment.outcome or None
        return "A" if judgment.task.display_order[0] == judgment.winner_id else "B"


_DATETIME = serializers.DateTimeField()


def judgment_payload(judgment: Judgment) -> dict:
    """``JudgmentSerializer(judgment).data``, field for field, without building a ModelSerializer per request
    (a fifth of a submit's CPU); tests/annotate/test_actions.py checks that the two agree."""
    return {
        "id": judgment.id,
        "task": judgment.task_id,
        "outcome": judgment.outcome,
        "choice": JudgmentSerializer.get_choice(None, judgment),
        "winner": judgment.winner_id,
        "strength": judgment.strength,
        "data": judgment.data,
        "text": judgment.text,
        "duration_ms": judgment.duration_ms,
        "idempotency_key": judgment.idempotency_key,
        "supersedes": judgment.supersedes_id,
        "is_current": judgment.is_current,
        "created_at": _DATETIME.to_representation(judgment.created_at),
    }


class ImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.ListField(child=serializers.DictField())
    repeated_texts = serializers.IntegerField(help_text="New items whose texts equal another item's, under another id.")
    empty_responses = serializers.IntegerField()
    skipped = serializers.ListField(child=serializers.DictField(), help_text="Invalid rows left out (skip_invalid).")
    votes = serializers.IntegerField(allow_null=True, help_text="Votes recorded from the file's own labels (votes_as).")
    message = serializers.CharField()


class ItemResponseSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    text = serializers.CharField()
    model = serializers.CharField(source="model_name")


class ItemRowSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    external_id = serializers.CharField(help_text="The id given at import, or the content hash for rows without one.")
    round = serializers.IntegerField(source="round.number", allow_null=True)
    purpose = serializers.CharField()
    n_votes = serializers.IntegerField(source="n_judgments")
    winner_share = serializers.FloatField(
        allow_null=True, help_text="The most common answer's share of the current votes (pairwise and ranking)."
    )
    open_slots = serializers.IntegerField(help_text="How many more annotators may take it.")
    flagged = serializers.BooleanField(source="open_flags", help_text="It has an open flag.")
    adjudicated = serializers.BooleanField(help_text="A researcher gave it a final label.")
    prompt = serializers.JSONField()
    responses = ItemResponseSerializer(many=True, source="responses.all")


class ItemPageSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Items that match the filters.")
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    results = ItemRowSerializer(many=True)


class MemberSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["username", "role", "status", "status_reason", "status_changed_at", "pseudonym", "created_at"]


class MemberInSerializer(serializers.Serializer):
    username = serializers.RegexField(r"^[\w.@+-]{1,150}$")
    role = serializers.ChoiceField(choices=Role.choices)


class ExportOptionsSerializer(serializers.Serializer):
    """Documents the options; ``annotate.exports.ExportOptions`` validates them."""

    format = serializers.ChoiceField(
        choices=["trl", "hh", "openai-dpo", "kto", "ranking", "ratings", "labels", "steps", "sft", "raw"], default="trl"
    )
    aggregate = serializers.ChoiceField(
        choices=["majority", "dawid-skene", "bradley-terry", "none"],
        required=False,
        help_text="Default: the format's own. Each format takes only some (docs/exports.md); any other is refused with 400.",
    )
    ties = serializers.ChoiceField(choices=["drop", "keep"], default="drop")
    min_agreement = serializers.FloatField(
        default=0.0, help_text="Leave out preferences whose winner got a smaller share (or confidence)."
    )
    include_paused = serializers.BooleanField(default=False)
    include_gold = serializers.BooleanField(default=False)
    max_chars = serializers.IntegerField(required=False, allow_null=True)
    criterion = serializers.CharField(default="", allow_blank=True)
    container = serializers.ChoiceField(choices=["jsonl", "parquet", "hf"], default="jsonl")
    test_size = serializers.FloatField(default=0.0, help_text="Share of prompts in the test split (grouped by prompt).")
    seed = serializers.IntegerField(default=0)
    dedupe = serializers.BooleanField(default=True)
    neutral_steps = serializers.BooleanField(default=True, help_text="steps: a neutral step counts as positive.")
    step_labels = serializers.ChoiceField(
        choices=["binary", "three"],
        default="binary",
        help_text="steps: binary (TRL's booleans) or three (the names positive / neutral / negative).",
    )
    license = serializers.CharField(default="", allow_blank=True)
    source = serializers.ChoiceField(
        choices=["human", "ai", "all"],
        default="human",
        help_text="Whose votes: people's (human), AI judges' (ai) or both (all).",
    )
    weights = serializers.ChoiceField(
        choices=["none", "dawid-skene", "bradley-terry"],
        default="none",
        help_text="trl: give each row a weight, the reliability of the annotators who voted for it, estimated by "
        "this model (reward-model and DPO runs with pair_weights read it).",
    )
    threshold = serializers.FloatField(
        required=False,
        allow_null=True,
        default=None,
        help_text="kto of a rating project: a response whose mean score is at least this is desirable (default: "
        "above the scale's middle).",
    )


class SnapshotSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug")
    files = serializers.SerializerMethodField()

    class Meta:
        model = Snapshot
        fields = [
            "id",
            "project",
            "options",
            "content_hash",
            "counts",
            "agreement",
            "license",
            "last_judgment_id",
            "created_at",
            "files",
        ]

    def get_files(self, snapshot: Snapshot) -> list[str]:
        """The splits that can be downloaded from ``/api/exports/{id}/files/{split}/``."""
        return list(snapshot.split_counts)


class AdjudicationInSerializer(serializers.Serializer):
    """Documents the body; ``actions.adjudicate`` validates it as a judgment of the project's kind."""

    choice = serializers.ChoiceField(
        choices=["A", "B", "tie", "both_bad"], required=False, help_text="Pairwise: A is the first response as stored."
    )
    strength = serializers.IntegerField(required=False, min_value=0, max_value=3)
    ranking = serializers.JSONField(required=False, help_text="Ranking: response ids, best first (groups tie).")
    ratings = serializers.JSONField(required=False, help_text="Rating: {response_id: {criterion: score}}.")
    steps = serializers.JSONField(required=False, help_text="Steps: {response_id: [labels]}.")
    text = serializers.CharField(required=False, help_text="Demonstration: the text.")
    reason = serializers.CharField(required=False, allow_blank=True)


class MoreVotesInSerializer(serializers.Serializer):
    items = serializers.ListField(child=serializers.IntegerField(), max_length=10_000, help_text="Item ids.")
    extra = serializers.IntegerField(help_text="More votes for each item.")


class ResolutionInSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["resolved", "dismissed"])
    resolution = serializers.CharField(required=False, allow_blank=True, max_length=2000)


# --- AI judges --------------------------------------------------------------------------------------------------


class JudgeInSerializer(serializers.Serializer):
    """A new judge; ``annotate.actions.add_judge`` checks every value (a refusal is a 400 with the reason)."""

    name = serializers.CharField(max_length=64, help_text="Lowercase letters, digits, - and _.")
    backend = serializers.ChoiceField(choices=Judge.Backend.choices)
    model = serializers.CharField(
        max_length=500,
        help_text="reward-model: artifact:N[:WEIGHT],...; local: a folder or artifact:N; openai: a name.",
    )
    base_url = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="openai: the base URL (host in ARBITER_JUDGE_HOSTS)."
    )
    api_key_env = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        help_text="openai: the NAME of the environment variable that holds the key on the worker; never the key.",
    )
    template = serializers.CharField(
        required=False, allow_blank=True, default="", trim_whitespace=False, help_text="Empty: the kind's default."
    )
    principle = serializers.CharField(required=False, allow_blank=True, default="")
    options = serializers.DictField(required=False, default=dict, help_text="judging.OPTIONS of the backend.")


class JudgeVotesSerializer(serializers.Serializer):
    ok = serializers.IntegerField()
    unparseable = serializers.IntegerField()
    error = serializers.IntegerField()


class JudgeSerializer(serializers.Serializer):
    """A judge as the API shows it: never a key, only the name of the variable that holds it."""

    name = serializers.CharField()
    backend = serializers.CharField()
    model = serializers.CharField()
    base_url = serializers.CharField()
    api_key_env = serializers.CharField()
    template = serializers.CharField(help_text="The template its prompts are rendered from (the default if empty).")
    template_is_default = serializers.BooleanField()
    template_hash = serializers.CharField(help_text="sha256 of the template; empty for reward-model judges.")
    principle = serializers.CharField()
    options = serializers.DictField()
    annotator = serializers.CharField(help_text="The judge's user: the annotator of its judgments (cannot log in).")
    created_at = serializers.DateTimeField()
    votes = JudgeVotesSerializer()
    position_checked = serializers.IntegerField(help_text="Pairwise votes whose two orders were compared.")
    position_consistent = serializers.IntegerField(help_text="Of those, the votes whose orders agreed.")


def judge_payload(row: dict) -> dict:
    """A :func:`annotate.selectors.judge_rows` row as :class:`JudgeSerializer` shows it."""
    judge = row["judge"]
    generative = judge.backend != Judge.Backend.REWARD_MODEL
    return {
        "name": judge.name,
        "backend": judge.backend,
        "model": judge.model,
        "base_url": judge.base_url,
        "api_key_env": judge.api_key_env,
        "template": judging.judge_template(judge) if generative else "",
        "template_is_default": not judge.template,
        "template_hash": row["template_hash"],
        "principle": judge.principle,
        "options": judge.options,
        "annotator": judge.user.username,
        "created_at": judge.created_at,
        "votes": row["votes"],
        "position_checked": row["position_checked"],
        "position_consistent": row["position_consistent"],
    }


class JudgeRunInSerializer(serializers.Serializer):
    max_items = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="At most this many of the items it has not voted on."
    )
    config = serializers.DictField(
        required=False, default=dict, help_text="Runtime options of the run (batch_size, temperature...): judge kind."
    )
