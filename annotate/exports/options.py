"""What an export is made of and what is allowed: :class:`ExportOptions`, the formats, containers and
aggregations, which formats each kind of project can produce and which aggregations each format takes, and the
checks that refuse anything else (never ignore it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..models import Kind, Project
from ..selectors import SOURCES

FORMATS = ("trl", "hh", "openai-dpo", "kto", "ranking", "ratings", "labels", "steps", "sft", "raw")


PREFERENCE_FORMATS = {"trl", "hh", "openai-dpo", "kto"}


CONTAINERS = ("jsonl", "parquet", "hf")


AGGREGATES = ("majority", "dawid-skene", "bradley-terry", "none")


# Aggregations that fit a model of the annotators over the whole project before rows are written.
MODEL_AGGREGATES = ("dawid-skene", "bradley-terry")


# The labels of the steps export: TRL's booleans, or the three names (a neutral class for process reward models).
STEP_LABELS = ("binary", "three")

# A weight per preference row from the reliability of the annotators who voted for it (``weights``): none, or
# the annotator model it is estimated with. Only trl rows carry it (the format reward-model and DPO runs read).
WEIGHTS = ("none", "dawid-skene", "bradley-terry")


# The aggregations each format can use, its default first; a (format, kind) key overrides the format's entry
# for projects of that kind. Anything else is refused, never ignored (docs/exports.md has this table).
FORMAT_AGGREGATES = {
    "trl": AGGREGATES,
    "hh": AGGREGATES,
    "openai-dpo": AGGREGATES,
    "kto": AGGREGATES,
    ("kto", Kind.RATING): ("majority",),  # the mean score of each response against the scale's middle
    "ranking": ("majority", "none"),  # majority: responses by mean rank
    "ratings": ("none",),  # every annotator's scores, and their mean
    "labels": ("majority", "dawid-skene"),
    "steps": ("majority", "none"),
    "sft": ("none",),
    "raw": ("none",),
}


def format_aggregates(fmt: str, kind: str | None = None) -> tuple[str, ...]:
    """The aggregations ``fmt`` can use (for a project of ``kind``), its default first."""
    return FORMAT_AGGREGATES.get((fmt, kind), FORMAT_AGGREGATES[fmt])


# Which formats each kind can produce.
KIND_FORMATS = {
    Kind.PAIRWISE: PREFERENCE_FORMATS | {"sft", "raw"},
    Kind.RANKING: PREFERENCE_FORMATS | {"ranking", "raw"},
    Kind.RATING: PREFERENCE_FORMATS | {"ratings", "labels", "raw"},
    Kind.STEPS: {"steps", "raw"},
    Kind.DEMONSTRATION: {"sft", "raw"},
}


def default_format(kind: str) -> str:
    """The format a project of ``kind`` exports as unless told otherwise: TRL preferences where the kind has them
    (what the training runs read), else its own format."""
    formats = KIND_FORMATS[kind]
    return "trl" if "trl" in formats else sorted(formats - {"raw"})[0]


class ExportError(ValueError):
    pass


CATEGORICAL_PREFERENCES = (
    "A categorical rating scale has no order to turn into preferences; the labels format gives one label per "
    "response and criterion."
)


@dataclass(frozen=True)
class ExportOptions:
    """What an export is made of; stored with a snapshot. The same options over the same votes give the same hash.

    - ``aggregate``: ``majority`` (one row per item or pair), ``dawid-skene`` or ``bradley-terry`` (a model of
      the annotators fitted on the whole project) or ``none`` (every vote its own row); each format takes the
      ones :data:`FORMAT_AGGREGATES` lists, and empty means the format's default.
    - ``ties``: ``drop`` ties from preference formats, or ``keep`` them as rows with ``"tie": true`` (trl, hh,
      openai-dpo); ranking and raw always keep them.
    - ``min_agreement``: leave out preferences whose winner got less than this share of the votes.
    - ``include_paused``: keep votes of paused or flagged annotators (left out by default);
      ``include_gold``: keep gold and qualification items (left out by default; ``raw`` always has them, marked).
    - ``max_chars``: leave out rows whose prompt and completions together are longer.
    - ``criterion``: the criterion preferences come from (pairwise with criteria, rating); empty = overall.
    - ``source``: whose votes: ``human`` (people's, the default), ``ai`` (AI judges') or ``all``; an AI vote is
      named ``judge:<name>`` where annotators are named, and raw rows of ``ai``/``all`` exports carry ``judge``.
    - ``weights``: ``none``, or ``dawid-skene`` / ``bradley-terry``: each trl row gets a ``weight``, the mean
      reliability of the annotators who voted for its outcome on that pair (see
      :func:`.aggregation.preference_weights`), with any aggregate; reward-model and DPO runs with
      ``pair_weights`` weigh each pair's loss by it.
    - ``step_labels``: the steps export's labels: ``binary`` (TRL's stepwise booleans; ``neutral_steps`` says what a
      neutral step counts as) or ``three`` (the names ``positive`` / ``neutral`` / ``negative``: a process reward
      model with a neutral class).
    - ``threshold``: the kto export of a rating project: a response whose mean score is at least this is
      desirable, one below it undesirable; unset, the scale's middle splits them (a response on it is left out).
    """

    format: str = "trl"
    aggregate: str = ""
    container: str = "jsonl"
    test_size: float = 0.0
    seed: int = 0
    dedupe: bool = True
    ties: str = "drop"
    min_agreement: float = 0.0
    include_paused: bool = False
    include_gold: bool = False
    max_chars: int | None = None
    criterion: str = ""
    neutral_steps: bool = True
    step_labels: str = "binary"
    license: str = ""
    source: str = "human"
    weights: str = "none"
    threshold: float | None = None

    def __post_init__(self):
        if self.aggregate == "" and self.format in FORMATS:
            object.__setattr__(self, "aggregate", format_aggregates(self.format)[0])

    def to_dict(self) -> dict:
        data = asdict(self)
        # Unset, these are left out: the stored options (and so the reuse of snapshots) of other exports stay as
        # they were before the options existed.
        if self.threshold is None:
            del data["threshold"]
        if self.weights == "none":
            del data["weights"]
        if self.step_labels == "binary":
            del data["step_labels"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ExportOptions":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExportError(f"Unknown export options: {', '.join(sorted(unknown))}.")
        options = cls(**data)
        options.validate()
        return options

    def validate(self) -> None:
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if self.format not in FORMATS:
            raise ExportError(f"Unknown format {self.format!r}: use one of {', '.join(FORMATS)}.")
        if self.aggregate not in AGGREGATES:
            raise ExportError(f"Unknown aggregation {self.aggregate!r}: use one of {', '.join(AGGREGATES)}.")
        check_aggregate(self.format, self.aggregate)
        if self.container not in CONTAINERS:
            raise ExportError(f"Unknown container {self.container!r}: use one of {', '.join(CONTAINERS)}.")
        if self.ties not in ("drop", "keep"):
            raise ExportError('ties must be "drop" or "keep".')
        if not number(self.test_size) or not 0 <= self.test_size < 1:
            raise ExportError("test_size must be a number at least 0 and below 1.")
        if not number(self.min_agreement) or not 0 <= self.min_agreement <= 1:
            raise ExportError("min_agreement must be a number from 0 to 1.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ExportError("seed must be an integer.")
        if self.max_chars is not None and (
            isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int) or self.max_chars < 1
        ):
            raise ExportError("max_chars must be a positive integer.")
        for name in ("dedupe", "include_paused", "include_gold", "neutral_steps"):
            if not isinstance(getattr(self, name), bool):
                raise ExportError(f"{name} must be true or false.")
        if not isinstance(self.criterion, str) or not isinstance(self.license, str):
            raise ExportError("criterion and license must be text.")
        if self.source not in SOURCES:
            raise ExportError(f"Unknown source {self.source!r}: use human (people's votes), ai (AI judges') or all.")
        if self.threshold is not None and not number(self.threshold):
            raise ExportError("threshold must be a number (a score of the rating scale).")
        if self.step_labels not in STEP_LABELS:
            raise ExportError(f"Unknown step_labels {self.step_labels!r}: use one of {', '.join(STEP_LABELS)}.")
        if self.step_labels != "binary" and self.format != "steps":
            raise ExportError(f"step_labels={self.step_labels} applies to the steps format only, not to {self.format}.")
        if self.step_labels == "three" and not self.neutral_steps:
            raise ExportError(
                "neutral_steps=false cannot apply with step_labels=three: a neutral step keeps its own label there."
            )
        if self.weights not in WEIGHTS:
            raise ExportError(f"Unknown weights {self.weights!r}: use one of {', '.join(WEIGHTS)}.")
        if self.weights != "none" and self.format != "trl":
            raise ExportError(
                f"weights={self.weights} applies to the trl format only (reward-model and DPO training read it), "
                f"not to {self.format}."
            )


# Formats that can keep a tie as a row ("tie": true); ranking and raw always have ties, the others none to keep
# (kto rows are single completions, so a tie has no label to give).
KEEPS_TIES = {"trl", "hh", "openai-dpo", "ranking", "raw"}


def check_aggregate(fmt: str, aggregate: str, kind: str | None = None) -> None:
    """Refuse an aggregation that ``fmt`` cannot use (:data:`FORMAT_AGGREGATES`), saying which it can."""
    allowed = format_aggregates(fmt, kind)
    if aggregate in allowed:
        return
    of = f"the {fmt} format of a {kind} project" if (fmt, kind) in FORMAT_AGGREGATES else f"the {fmt} format"
    hint = " For one aggregated label per response and criterion, use the labels format." if fmt == "ratings" else ""
    raise ExportError(f"Aggregation {aggregate!r} does not apply to {of}: it takes {' or '.join(allowed)}.{hint}")


def check_options(project: Project, options: "ExportOptions") -> None:
    """Raise :class:`ExportError` unless ``options`` are valid and fit the project's kind and criteria."""
    options.validate()
    fmt = options.format
    if fmt not in KIND_FORMATS[project.kind]:
        allowed = ", ".join(sorted(KIND_FORMATS[project.kind]))
        raise ExportError(f"A {project.kind} project exports as {allowed}, not {fmt}.")
    check_aggregate(fmt, options.aggregate, project.kind)
    if fmt in PREFERENCE_FORMATS and project.kind == Kind.RATING and "labels" in project.rating_scale:
        raise ExportError(CATEGORICAL_PREFERENCES)
    agreement_applies = fmt == "labels" or (
        fmt in PREFERENCE_FORMATS and options.aggregate != "none" and not (fmt == "kto" and project.kind == Kind.RATING)
    )
    if options.min_agreement and not agreement_applies:
        raise ExportError(
            f"min_agreement does not apply to the {fmt} format with aggregate {options.aggregate!r}: only aggregated "
            "preference rows and labels have an agreement to filter on."
        )
    if options.ties == "keep" and fmt not in KEEPS_TIES:
        raise ExportError(
            f"ties=keep does not apply to the {fmt} format: only {', '.join(sorted(KEEPS_TIES))} can keep ties as rows "
            "(ranking and raw always have them)."
        )
    if options.threshold is not None:
        check_threshold(project, options)
    criterion = options.criterion or None
    if criterion and criterion not in (project.criteria or project.rating_criteria):
        raise ExportError(f"Unknown criterion {criterion!r} in project {project.slug}.")


def check_threshold(project: Project, options: "ExportOptions") -> None:
    """A threshold splits the mean scores of a rating project's kto export, within its numeric scale."""
    applies = "only the kto export of a rating project splits mean scores at a threshold"
    if options.format != "kto":
        raise ExportError(f"threshold cannot apply to the {options.format} format: {applies}.")
    if project.kind != Kind.RATING:
        raise ExportError(
            f"threshold cannot apply to a {project.kind} project: its kto rows label winners and losers; {applies}."
        )
    scale, threshold = project.rating_scale, options.threshold
    if "labels" in scale:
        raise ExportError("threshold cannot apply to a categorical rating scale: its labels have no order.")
    if threshold <= scale["min"] or threshold > scale["max"]:
        reason = "every response would be desirable" if threshold <= scale["min"] else "no response could be desirable"
        raise ExportError(
            f"threshold {threshold} is outside the scale {scale['min']}–{scale['max']}: {reason}; choose a score "
            f"above {scale['min']} and at most {scale['max']}."
        )
