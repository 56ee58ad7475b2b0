"""Tables of the human side: projects, members, items and responses, tasks, judgments.

The vocabulary, used the same way in the API, the pages and the exports:

- A **project** asks one kind of question (pairwise, ranking, rating, steps, demonstration) about its items.
- An **item** is a prompt (a list of chat messages) with its candidate **responses**.
- A **task** is one item given to one annotator: it stores the order in which that annotator sees the
  responses (``display_order``) and the lease that reserves the item while they work on it. Each item is
  judged by ``project.overlap`` distinct annotators: ``item.open_slots`` counts how many more may take it.
- A **judgment** is an annotator's answer to a task. Judgments are immutable: an edit is a new row that
  supersedes the old one, whose ``is_current`` turns false. They refer to responses by identity, never by
  the position they were shown in ("A" is whatever ``display_order[0]`` was for that annotator).
"""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Kind(models.TextChoices):
    PAIRWISE = "pairwise", "Pairwise comparison"
    RANKING = "ranking", "Ranking"
    RATING = "rating", "Rating"
    STEPS = "steps", "Step labels"
    DEMONSTRATION = "demonstration", "Demonstration"


# How many responses an item of each kind may have (inclusive bounds).
RESPONSES_PER_KIND = {
    Kind.PAIRWISE: (2, 2),
    Kind.RANKING: (3, 9),
    Kind.RATING: (1, 9),
    Kind.STEPS: (1, 9),
    Kind.DEMONSTRATION: (0, 9),
}


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    RESEARCHER = "researcher", "Researcher"
    ADMIN = "admin", "Admin"


# Each role can do everything the roles before it can.
ROLE_RANK = {Role.ANNOTATOR: 1, Role.RESEARCHER: 2, Role.ADMIN: 3}


# The largest overlap: panels of a hundred and more raters per item are real (safety sets rate each conversation
# with 100+ people). open_slots, a small integer, counts down from it.
MAX_OVERLAP = 1000
MAX_LEASE_SECONDS = 7 * 24 * 3600


class Project(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PAIRWISE)
    instructions = models.TextField(blank=True, help_text="Shown to annotators; markdown.")
    overlap = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_OVERLAP)],
        help_text=f"How many distinct annotators judge each item (1 to {MAX_OVERLAP}).",
    )
    criteria = models.JSONField(
        default=list,
        blank=True,
        help_text='Criteria judged separately, e.g. ["helpfulness", "harmlessness"]; empty for one overall judgment.',
    )
    scale = models.JSONField(
        default=dict,
        blank=True,
        help_text='Rating scale: {"min": 1, "max": 7} or {"labels": ["safe", "unsafe", "unsure"]}.',
    )
    step_separator = models.CharField(
        max_length=32, default="\n", blank=True, help_text="How a response is split into steps (steps projects)."
    )
    allow_ties = models.BooleanField(default=False, help_text="Ranking projects: responses may share a rank.")
    randomize_order = models.BooleanField(
        default=True, help_text="Shuffle the responses per annotator; the order shown is stored with each task."
    )
    lease_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        # A week at most: no annotator holds a task longer, and the lease's end must stay a representable time.
        validators=[MinValueValidator(1), MaxValueValidator(MAX_LEASE_SECONDS)],
        help_text=f"How long a task stays reserved, 1 to {MAX_LEASE_SECONDS} seconds; empty uses ARBITER_LEASE_SECONDS.",
    )
    gold_rate = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of tasks drawn from gold items.",
    )
    gold_feedback = models.BooleanField(
        default=False, help_text="Tell an annotator the expected answer after a gold miss."
    )
    # Vetting (docs/vetting.md): qualification before work, then automatic review against thresholds.
    qualification_required = models.BooleanField(
        default=False,
        help_text="New annotators first label the qualification items and are admitted above the threshold.",
    )
    qualification_metric = models.CharField(
        max_length=16,
        choices=[("accuracy", "Accuracy"), ("cohen_kappa", "Cohen's kappa")],
        default="accuracy",
        help_text="How agreement with the researcher's answers is measured.",
    )
    qualification_threshold = models.FloatField(
        default=0.8, validators=[MinValueValidator(-1.0), MaxValueValidator(1.0)]
    )
    review_action = models.CharField(
        max_length=8,
        choices=[("flag", "Flag (keeps working; votes left out of exports)"), ("pause", "Pause (no more tasks)")],
        default="flag",
    )
    review_min_gold = models.PositiveIntegerField(
        default=10, help_text="Gold answers needed before gold accuracy is judged."
    )
    review_gold_accuracy = models.FloatField(
        default=0.7,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Below it: review. 0 turns it off.",
    )
    review_majority_agreement = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Agreement with the other annotators' majority below which an annotator is reviewed; 0 turns it off.",
    )
    review_speed_ratio = models.FloatField(
        default=0.2,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Median time on task below this share of the project's median: review. 0 turns it off.",
    )
    review_position_bias_p = models.FloatField(
        default=0.001,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Binomial-test p-value of choosing the first-shown response below which an annotator is reviewed.",
    )
    # AI feedback (docs/ai-feedback.md): whether judges' votes take human places, and routing people to the items
    # judges are unsure about.
    judges_take_places = models.BooleanField(
        default=False, help_text="AI judges' votes count toward an item's overlap (by default only people's do)."
    )
    ai_routing = models.BooleanField(
        default=False,
        help_text="Judges label first; people get the items judges disagree on, are position-inconsistent on or "
        "unsure about, and a spot-check share of the rest.",
    )
    routing_confidence = models.FloatField(
        default=0.7,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Routing: a judge's vote below this confidence sends the item to people with full overlap.",
    )
    spot_check_rate = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Routing: the share of the items judges agree on that people still check (with full overlap).",
    )
    constitution = models.JSONField(
        default=list,
        blank=True,
        help_text='Named principles (markdown): [{"name": "harmless", "text": "..."}, ...] (Constitutional AI).',
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The newest judgment whose item's winner_share is known to be up to date (see selectors.refresh_item_stats).
    stats_mark = models.BigIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def effective_lease_seconds(self) -> int:
        return self.lease_seconds or settings.ARBITER_LEASE_SECONDS

    @property
    def rating_criteria(self) -> list[str]:
        """The criteria each response is rated on (rating projects): the project's, or just "overall"."""
        return list(self.criteria) or ["overall"]

    @property
    def rating_scale(self) -> dict:
        """``{"min": 1, "max": 7}`` (numeric, the default) or ``{"labels": [...]}`` (categorical)."""
        return dict(self.scale) if self.scale else {"min": 1, "max": 7}

    @property
    def scale_values(self) -> list:
        """Every allowed score, in order: integers for a numeric scale, the labels for a categorical one."""
        scale = self.rating_scale
        if "labels" in scale:
            return list(scale["labels"])
        return list(range(scale["min"], scale["max"] + 1))

    def split_steps(self, text: str) -> list[str]:
        """A response's steps (steps projects): split on ``step_separator``, blank pieces dropped."""
        separator = self.step_separator or "\n"
        return [step.strip() for step in text.split(separator) if step.strip()]


# Settings a researcher may change after items exist (overlap and kind shape the tasks, so they stay).
SETTINGS_FIELDS = [
    "name",
    "instructions",
    "lease_seconds",
    "gold_rate",
    "gold_feedback",
    "qualification_required",
    "qualification_metric",
    "qualification_threshold",
    "review_action",
    "review_min_gold",
    "review_gold_accuracy",
    "review_majority_agreement",
    "review_speed_ratio",
    "review_position_bias_p",
    "constitution",
]


class Membership(models.Model):
    """A user's role in one project. Annotators appear in exports only by ``pseudonym``."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CANDIDATE = "candidate", "Candidate (qualifying)"
        FLAGGED = "flagged", "Flagged for review"
        PAUSED = "paused", "Paused"
        REFUSED = "refused", "Not admitted"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.TextField(blank=True, help_text="Why the status last changed (qualification, review).")
    status_changed_at = models.DateTimeField(null=True, blank=True)
    pseudonym = models.CharField(max_length=32, editable=False)
    # The highest normal item this member was given in the project: next-task picks above it (see
    # actions._take_open_item), and moves it up in the same statement.
    pick_mark = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user"),
            models.UniqueConstraint(fields=["project", "pseudonym"], name="unique_pseudonym"),
        ]
        ordering = ["project", "role", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"

    def save(self, *args, **kwargs):
        if not self.pseudonym:
            self.pseudonym = make_pseudonym(self.project_id, self.user_id)
        super().save(*args, **kwargs)

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def make_pseudonym(project_id: int, user_id: int) -> str:
    """Stable per project, different across projects, and not reversible without the secret key."""
    digest = hashlib.sha256(f"{settings.SECRET_KEY}:{project_id}:{user_id}".encode()).hexdigest()
    return f"ann-{digest[:10]}"


class Round(models.Model):
    """A batch of items, e.g. the candidates a trained policy wrote after the previous round."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    name = models.CharField(max_length=200, blank=True)
    source = models.JSONField(
        default=dict, blank=True, help_text="Where the items came from: an import file, a model and its snapshot."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="unique_round_number")]
        ordering = ["project", "number"]

    def __str__(self) -> str:
        return f"{self.project} round {self.number}"


class Item(models.Model):
    class Purpose(models.TextChoices):
        NORMAL = "normal", "Normal"
        GOLD = "gold", "Gold (hidden check)"
        QUALIFICATION = "qualification", "Qualification"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.SET_NULL, related_name="items")
    external_id = models.CharField(max_length=200, help_text="The id given at import, or the content hash.")
    prompt = models.JSONField(help_text='Chat messages: [{"role": "user", "content": "..."}, ...]')
    metadata = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64, help_text="sha256 of the prompt and response texts.")
    # Exports split by prompt: rows of items with the same prompt never land in two splits.
    prompt_hash = models.CharField(max_length=64, default="", help_text="sha256 of the prompt alone.")
    purpose = models.CharField(max_length=16, choices=Purpose.choices, default=Purpose.NORMAL)
    # Never serialised to annotators.
    gold = models.JSONField(null=True, blank=True, help_text="The researcher's answer, for gold and qualification.")
    # How many more annotators may take this item: overlap minus tasks that are leased or done.
    open_slots = models.PositiveSmallIntegerField(default=1)
    n_judgments = models.PositiveIntegerField(default=0, help_text="Tasks of this item that have a judgment.")
    # The data browser's agreement: the most common answer's share of the current votes (pairwise: the winner, a
    # tie or both bad; ranking: the first place). Refreshed when the browser reads (selectors.refresh_item_stats),
    # not on the annotation path; None before any vote and for kinds without one answer per vote.
    winner_share = models.FloatField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # The external id identifies an item: two rows with equal texts and different ids are two items (a
            # test-retest pair); rows without an id get their content hash as id, so they are deduplicated by content.
            models.UniqueConstraint(fields=["project", "external_id"], name="unique_external_id"),
        ]
        indexes = [
            models.Index(fields=["project", "content_hash"], name="item_content_idx"),
            # The next-task pick walks this index from the lowest id: only items that still need
            # annotators are in it, so its cost does not grow with the number of finished items.
            models.Index(
                fields=["project", "id"],
                name="item_open_idx",
                condition=Q(open_slots__gt=0, purpose="normal"),
            ),
            # The data browser's "sort by disagreement" and its agreement filters.
            models.Index(fields=["project", "winner_share", "id"], name="item_share_idx"),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.project}:{self.external_id}"

    @property
    def is_conversation(self) -> bool:
        return len(self.prompt) != 1 or self.prompt[0].get("role") != "user"


def _sha256_json(value) -> str:
    canonical = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def content_hash(prompt: list[dict], response_texts: list[str]) -> str:
    return _sha256_json([prompt, response_texts])


def prompt_hash(prompt: list[dict]) -> str:
    return _sha256_json(prompt)


class Response(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="responses")
    index = models.PositiveSmallIntegerField(help_text="Position in the imported row (0-based), not on screen.")
    text = models.TextField()
    model_name = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "index"], name="unique_response_index")]
        ordering = ["item", "index"]

    def __str__(self) -> str:
        return f"{self.item} #{self.index}"


class Task(models.Model):
    """One item given to one annotator, with the order they see its responses in and a lease."""

    class Status(models.TextChoices):
        LEASED = "leased", "In progress"
        DONE = "done", "Done"
        EXPIRED = "expired", "Lease expired"
        SKIPPED = "skipped", "Skipped"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    # No single-column indexes on item and annotator: one_task_per_item_and_annotator starts with the item and
    # task_annotator_idx with the annotator, and every index costs each insert (a million imported votes).
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks", db_index=False
    )
    # Response ids in the order shown to this annotator; stored so position bias can be measured and
    # so "A"/"B" in a submission map back to response identities.
    display_order = models.JSONField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.LEASED)
    leased_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    done_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [
            # An annotator never gets the same item twice.
            models.UniqueConstraint(fields=["item", "annotator"], name="one_task_per_item_and_annotator"),
        ]
        indexes = [
            models.Index(fields=["annotator", "project", "status"], name="task_annotator_idx"),
            models.Index(fields=["project", "lease_expires_at"], name="task_lease_idx", condition=Q(status="leased")),
        ]

    def __str__(self) -> str:
        return f"task {self.pk} ({self.item} for {self.annotator})"


class Flag(models.Model):
    """An annotator's report that an item is unsafe, broken or holds personal data."""

    class Category(models.TextChoices):
        UNSAFE = "unsafe", "Unsafe content"
        BROKEN = "broken", "Broken or unreadable"
        PERSONAL_DATA = "personal_data", "Personal data"
        OTHER = "other", "Other"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="flags")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="flags")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="flags")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flags")

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"
        DISMISSED = "dismissed", "Dismissed"

    category = models.CharField(max_length=16, choices=Category.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # A researcher's decision: resolved (acted on: the item was fixed, adjudicated or set aside) or dismissed.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True, help_text="What the researcher did or why they dismissed it.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "status"], name="flag_status_idx")]

    def __str__(self) -> str:
        return f"{self.category} flag on {self.item}"


class Judgment(models.Model):
    """An immutable answer to a task. Fields that do not apply to the project's kind stay empty.

    - pairwise: ``outcome`` (win / tie / both_bad), ``winner`` (a response, for a win), ``strength`` 0-3
      (0 negligible or unsure, 1 slightly, 2 better, 3 significantly better), and per-criterion answers in
      ``data["criteria"]``.
    - ranking, rating, steps: ``data`` holds ``ranking`` (response ids, best first), ``ratings``
      (``{response_id: {criterion: score}}``) or ``steps`` (``{response_id: [labels]}``).
    - demonstration: ``text``.
    """

    class Outcome(models.TextChoices):
        WIN = "win", "One response is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"

    class Source(models.TextChoices):
        WEB = "web", "Browser"
        API = "api", "API"
        IMPORT = "import", "Imported"
        AI = "ai", "AI judge"  # a Judge's vote: its JudgeVote holds the provenance

    # Covered by judgment_project_idx (project) and unique_idempotency_key (annotator), which start with them.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judgments", db_index=False)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="judgments")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="judgments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgments", db_index=False
    )
    outcome = models.CharField(max_length=8, choices=Outcome.choices, blank=True)
    winner = models.ForeignKey(Response, null=True, blank=True, on_delete=models.CASCADE, related_name="wins")
    strength = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MaxValueValidator(3)])
    data = models.JSONField(default=dict, blank=True)
    text = models.TextField(blank=True, help_text="A demonstration, or the rationale of a comparison.")
    duration_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time on task.")
    idempotency_key = models.CharField(max_length=100)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.API)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    is_current = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # A retried submit carries the same key and gets the first judgment back, never a second row.
            models.UniqueConstraint(fields=["annotator", "idempotency_key"], name="unique_idempotency_key"),
            models.UniqueConstraint(fields=["task"], condition=Q(is_current=True), name="one_current_judgment"),
        ]
        indexes = [models.Index(fields=["project", "id"], name="judgment_project_idx")]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"judgment {self.pk} on {self.task_id}"

    def save(self, *args, **kwargs):
        # Immutable: once written, only the supersession flag may change.
        if not self._state.adding and set(kwargs.get("update_fields") or ()) != {"is_current"}:
            raise ValueError("Judgments are immutable; record a new judgment that supersedes this one.")
        super().save(*args, **kwargs)


class SkipReview(models.Model):
    """A researcher's decision on a skipped task's reason (the queue shows flags and skip reasons alike)."""

    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="skip_review")
    status = models.CharField(max_length=16, choices=Flag.Status.choices[1:])
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField()
    resolution = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.status} skip of task {self.task_id}"


class Adjudication(models.Model):
    """A researcher's final label on an item: exports and snapshots take it instead of the annotators' aggregate.

    Fields as a :class:`Judgment` of the project's kind (validated by the same code); ``reason`` says why. A new
    adjudication supersedes the item's current one, which stays (who decided what, when)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="adjudications", db_index=False)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="adjudications")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    outcome = models.CharField(max_length=8, choices=Judgment.Outcome.choices, blank=True)
    winner = models.ForeignKey(Response, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    strength = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MaxValueValidator(3)])
    data = models.JSONField(default=dict, blank=True)
    text = models.TextField(blank=True, help_text="A demonstration (demonstration projects).")
    reason = models.TextField(blank=True)
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    is_current = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item"], condition=Q(is_current=True), name="one_current_adjudication")
        ]
        indexes = [models.Index(fields=["project", "item"], name="adjudication_project_idx")]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"adjudication {self.pk} of {self.item_id}"


class Judge(models.Model):
    """An AI judge of a project: it votes like an annotator (its ``user``, who cannot log in, is the judgments'
    annotator) through a backend: a registered reward model, a causal LM run by the worker, or an OpenAI-compatible
    chat-completions endpoint. Secrets are never stored: ``api_key_env`` names the environment variable holding the
    key."""

    class Backend(models.TextChoices):
        REWARD_MODEL = "reward-model", "Reward model"
        LOCAL = "local", "Causal LM (transformers, on the worker)"
        OPENAI = "openai", "OpenAI-compatible endpoint"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judges")
    name = models.SlugField(max_length=64)
    backend = models.CharField(max_length=16, choices=Backend.choices)
    model = models.CharField(
        max_length=500, help_text="artifact:N[:weight],… (reward models), a folder under MODEL_ROOTS, or a model name."
    )
    base_url = models.CharField(
        max_length=500, blank=True, help_text="OpenAI-compatible endpoints: the API's base URL."
    )
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="The environment variable holding the API key (never the key itself)."
    )
    template = models.TextField(blank=True, help_text="The prompt template; empty: the default of the project's kind.")
    principle = models.CharField(
        max_length=100, blank=True, help_text="A constitution principle the template cites (RLAIF); empty: none."
    )
    options = models.JSONField(
        default=dict, blank=True, help_text="temperature (0), max_tokens, concurrency, timeout, retries, batch_size."
    )
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judge")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="unique_judge_name")]
        ordering = ["project", "name"]

    def __str__(self) -> str:
        return f"judge {self.name} of {self.project}"


class JudgeVote(models.Model):
    """What a judge answered on an item, kept whatever it was: the raw outputs (both orders for pairwise), the
    parsed answer, position consistency, confidence, tokens, and the judgment it became (None when the output could
    not be parsed: recorded as such, never guessed). One per judge and item, so a resumed run never judges a pair
    twice."""

    class Status(models.TextChoices):
        OK = "ok", "Parsed"
        UNPARSEABLE = "unparseable", "Could not be parsed"
        ERROR = "error", "Backend error"

    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="votes")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="judge_votes")
    judgment = models.OneToOneField(
        Judgment, null=True, blank=True, on_delete=models.SET_NULL, related_name="judge_vote"
    )
    run = models.ForeignKey(
        "training.TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="judge_votes"
    )
    status = models.CharField(max_length=16, choices=Status.choices)
    template_hash = models.CharField(max_length=64)
    model = models.CharField(max_length=500, help_text="The model as the backend named it (path, name, artifacts).")
    raw = models.JSONField(default=list, help_text="The raw outputs, one per order shown (pairwise: A-B, then B-A).")
    parsed = models.JSONField(default=dict, blank=True, help_text="The parsed answer of each order.")
    position_consistent = models.BooleanField(null=True, help_text="Pairwise: both orders gave the same answer.")
    confidence = models.FloatField(null=True, blank=True)
    tokens = models.JSONField(default=dict, blank=True, help_text="prompt and completion tokens, where reported.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["judge", "item"], name="one_vote_per_judge_and_item")]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.judge.name} on {self.item_id}: {self.status}"


class Snapshot(models.Model):
    """An immutable, versioned export: files under ``ARTIFACT_ROOT/snapshots/``, a content hash and a card.

    ``content_hash`` is the sha256 of the canonical bytes of every row (JSON with sorted keys, split by split),
    so the same options over unchanged votes give the same hash whatever the container. Training runs refer
    to a snapshot by id and hash, which makes every model traceable to the exact votes.
    """

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="snapshots")
    options = models.JSONField(help_text="The export options used (format, aggregation, filters, split, seed).")
    content_hash = models.CharField(max_length=64)
    path = models.CharField(max_length=500, help_text="Folder of the files, relative to ARTIFACT_ROOT.")
    counts = models.JSONField(
        default=dict, help_text="Rows per split (train, test) and n_judgments, n_items, n_annotators of the project."
    )
    agreement = models.JSONField(default=dict, blank=True)
    license = models.CharField(max_length=100, blank=True)
    last_judgment_id = models.BigIntegerField(null=True, help_text="The newest judgment the snapshot could see.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"snapshot {self.pk} of {self.project} ({self.content_hash[:12]})"

    @property
    def folder(self):
        from pathlib import Path

        return Path(settings.ARTIFACT_ROOT) / self.path

    @property
    def split_counts(self) -> dict[str, int]:
        """Rows per split: train, test, then the per-criterion test splits (``test:<criterion>``)."""
        names = ["train", "test"] + sorted(name for name in self.counts if name.startswith("test:"))
        return {name: self.counts[name] for name in names if name in self.counts}
