"""The registry of training kinds: one entry per kind, the facts every layer reads.

Models (the run's ``kind`` choices), launching (what a run reads and needs), publishing (what it becomes), rounds,
datasets, the launch form, the pages and ``train --help`` ask the entry instead of comparing kind names. Adding a
kind is one :func:`register` call (or one entry below), its config, its runner, its tests and its docs::

    register(TrainingKind(name="kto", label="KTO", config=KTORunConfig, runner="training.runners.kto",
                          reads=SNAPSHOT, publishes=MODEL, base_models=(CAUSAL_LM,)))

Only torch-free ``<kind>_config`` modules are imported here (the web process imports this module); the runner is
imported by its dotted path on the worker (:meth:`TrainingKind.load_runner`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

from annotate.models import Kind

from .runners.critique_revise_config import CritiqueReviseRunConfig
from .runners.distill_config import DistillRunConfig
from .runners.dpo_config import DPORunConfig
from .runners.evaluate_config import EvaluateRunConfig
from .runners.generate_config import GenerateRunConfig
from .runners.grpo_config import GRPORunConfig
from .runners.judge_config import JudgeRunConfig
from .runners.kto_config import KTORunConfig
from .runners.ppo_config import PPORunConfig
from .runners.prm_config import PRMRunConfig
from .runners.rejection_sampling_config import RejectionSamplingRunConfig
from .runners.reward_config import RewardRunConfig
from .runners.rloo_config import RLOORunConfig
from .runners.sft_config import SFTRunConfig
from .runners.synthesize_prompts_config import SynthesizePromptsRunConfig

# What a run reads: a snapshot of the votes (its format from the config: :attr:`TrainingKind.snapshot_format`),
# or a prompts file chosen at launch (training.datasets.select_prompts).
SNAPSHOT = "snapshot"
PROMPTS = "prompts"
ITEMS = "items"  # the project's items an AI judge has not voted on yet (a judge run; written at launch)

# What a succeeded run becomes (training.publishing).
MODEL = "model"  # a policy in the model registry
REWARD_MODEL = "reward_model"  # a reward model in the model registry
CANDIDATES = "candidates"  # a new round of the target project (pairwise or ranking items)
COMPARISONS = "comparisons"  # the policy's answers against a baseline's, and the reward-model win rate
VOTES = "votes"  # an AI judge's votes on the project's items (annotate.actions.record_ai_votes)
NEW_PROMPTS = "new_prompts"  # a prompts file kept in the run's folder, for `train generate --from-run N`

# Reward models a run scores samples with.
NO_REWARD_MODEL = "none"
OPTIONAL_REWARD_MODEL = "optional"
REWARD_MODEL_NEEDED = "needed"

# A teacher the run learns from (--teacher: distill). Whether a run of an "optional" kind needs one is its config's
# to say (distill: mode=on_policy does, mode=context does not).
NO_TEACHER = "none"
OPTIONAL_TEACHER = "optional"
TEACHER_NEEDED = "needed"

# Base models that fit (shown where a base model is chosen; the runner checks what it loads).
CAUSAL_LM = "causal language model"
SEQUENCE_CLASSIFIER = "sequence classifier"

# "Start the next round" from a finished policy: this kind writes the candidates.
NEXT_ROUND = "generate"

# The projects a run's output can become a round of: candidates (how many responses an item of each holds),
# kept samples sent for review (one response per item), a human evaluation (old against new, side by side).
TARGET_RESPONSES = {Kind.PAIRWISE: (2, 2), Kind.RANKING: (3, 9)}
REVIEW_TARGETS = (Kind.RATING, Kind.DEMONSTRATION, Kind.STEPS)
HUMAN_EVAL_TARGETS = (Kind.PAIRWISE,)


def _trl(config) -> str:
    return "trl"


def _reward_format(config) -> str:
    """A regression reward model trains on rating scores; the others on preference pairs."""
    return "ratings" if config.objective == "regression" else "trl"


def _sft_format(config) -> str:
    return "sft" if config.source == "demonstrations" else "trl"


@dataclass(frozen=True)
class TrainingKind:
    name: str
    label: str
    config: type  # the runner config dataclass (torch-free); its fields are the kind's options
    runner: str  # dotted path of the runner module: ``run(config, datasets, output_dir, progress, checkpoint_dir)``
    reads: str  # SNAPSHOT or PROMPTS
    publishes: str  # MODEL, REWARD_MODEL, CANDIDATES or COMPARISONS
    base_models: tuple[str, ...]
    # SNAPSHOT kinds: the export format the run reads, from its resolved config.
    snapshot_format: Callable[[object], str] = _trl
    # SNAPSHOT kinds whose ``source`` option follows the snapshot given: export format → value of ``source``.
    source_by_format: dict[str, str] = field(default_factory=dict)
    reward_models: str = NO_REWARD_MODEL
    teacher: str = NO_TEACHER
    # PROMPTS kinds: where the prompts come from when the launcher says nothing (datasets.PROMPT_SOURCES).
    default_prompts: str = "items"
    # A file of the run's output kept in its folder that can be sent to annotators for review.
    review_file: str = ""
    # A file of the run's output kept in its folder, rows of the sft export (``messages``), that an sft run can
    # learn from (``train sft --from-run N``).
    demonstrations_file: str = ""
    # A file of the run's output kept in its folder, rows of a prompts file (``prompt``, ``external_id``), that a
    # prompt-driven run can read instead of choosing prompts (``train generate --from-run N``).
    prompts_file: str = ""
    # CANDIDATES kinds: the project kinds its round can go to (empty: every kind of TARGET_RESPONSES).
    target_kinds: tuple[str, ...] = ()
    # The run draws principles from the project's constitution (filled into the config at launch; a project
    # without one is refused).
    constitution: bool = False

    @property
    def makes_model(self) -> bool:
        return self.publishes in (MODEL, REWARD_MODEL)

    @property
    def available(self) -> bool:
        """Whether this site has the runner (a site may leave a runner module out)."""
        return importlib.util.find_spec(self.runner) is not None

    def load_runner(self):
        """The runner module (imports torch and the training libraries: only on the worker)."""
        return importlib.import_module(self.runner)


KINDS: dict[str, TrainingKind] = {}


def register(kind: TrainingKind) -> TrainingKind:
    KINDS[kind.name] = kind
    return kind


def get(name: str) -> TrainingKind:
    """The registered kind ``name``; KeyError (with the known names) for any other."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"Unknown kind {name!r}: use one of {', '.join(KINDS)}.") from None


def names(**facts) -> list[str]:
    """Registered kinds, in registration order, whose facts equal ``facts``: ``names(reads=PROMPTS)``."""
    return [k.name for k in KINDS.values() if all(getattr(k, fact) == value for fact, value in facts.items())]


def available() -> list[str]:
    return [k.name for k in KINDS.values() if k.available]


def launchable() -> list[str]:
    """The available kinds the launch form offers: those that read a snapshot or prompts (a judge run is launched
    from its judge: the judges page, ``train judge --judge NAME``, the judges API)."""
    return [name for name in available() if KINDS[name].reads in (SNAPSHOT, PROMPTS)]


def choices() -> list[tuple[str, str]]:
    """``(name, label)`` of every registered kind: the run's ``kind`` field, the API's enum, the forms."""
    return [(k.name, k.label) for k in KINDS.values()]


_POLICY = (CAUSAL_LM,)
# In the order the launch form and `train --help` list them (the first kind with an option gives its default there).
register(
    TrainingKind(
        "reward",
        "Reward model",
        RewardRunConfig,
        "training.runners.reward",
        reads=SNAPSHOT,
        publishes=REWARD_MODEL,
        base_models=(SEQUENCE_CLASSIFIER, CAUSAL_LM),
        snapshot_format=_reward_format,
    )
)
register(
    TrainingKind(
        "prm",
        "Process reward model",
        PRMRunConfig,
        "training.runners.prm",
        reads=SNAPSHOT,
        publishes=REWARD_MODEL,
        # A token classifier: a fresh head over a language model's or an encoder's backbone (or a classifier's).
        base_models=(SEQUENCE_CLASSIFIER, CAUSAL_LM),
        snapshot_format=lambda config: "steps",
    )
)
register(
    TrainingKind(
        "generate",
        "Generate candidates",
        GenerateRunConfig,
        "training.runners.generate",
        reads=PROMPTS,
        publishes=CANDIDATES,
        base_models=_POLICY,
        reward_models=OPTIONAL_REWARD_MODEL,
    )
)
register(
    TrainingKind(
        "rejection_sampling",
        "Rejection sampling",
        RejectionSamplingRunConfig,
        "training.runners.rejection_sampling",
        reads=PROMPTS,
        publishes=MODEL,
        base_models=_POLICY,
        reward_models=REWARD_MODEL_NEEDED,
        review_file="kept.jsonl",
    )
)
register(
    TrainingKind(
        "evaluate",
        "Evaluate against a baseline",
        EvaluateRunConfig,
        "training.runners.evaluate",
        reads=PROMPTS,
        publishes=COMPARISONS,
        base_models=_POLICY,
        reward_models=REWARD_MODEL_NEEDED,
        default_prompts="snapshot-test",
    )
)
register(
    TrainingKind(
        "sft",
        "Supervised fine-tuning",
        SFTRunConfig,
        "training.runners.sft",
        reads=SNAPSHOT,
        publishes=MODEL,
        base_models=_POLICY,
        snapshot_format=_sft_format,
        source_by_format={"sft": "demonstrations", "trl": "chosen"},
    )
)
register(
    TrainingKind(
        "dpo", "DPO", DPORunConfig, "training.runners.dpo", reads=SNAPSHOT, publishes=MODEL, base_models=_POLICY
    )
)
register(
    TrainingKind(
        "kto",
        "KTO",
        KTORunConfig,
        "training.runners.kto",
        reads=SNAPSHOT,
        publishes=MODEL,
        base_models=_POLICY,
        snapshot_format=lambda config: "kto",
    )
)
register(
    TrainingKind(
        "ppo",
        "PPO",
        PPORunConfig,
        "training.runners.ppo",
        reads=PROMPTS,
        publishes=MODEL,
        base_models=_POLICY,
        reward_models=REWARD_MODEL_NEEDED,
    )
)
register(
    TrainingKind(
        "grpo",
        "GRPO",
        GRPORunConfig,
        "training.runners.grpo",
        reads=PROMPTS,
        publishes=MODEL,
        base_models=_POLICY,
        reward_models=REWARD_MODEL_NEEDED,
    )
)
register(
    TrainingKind(
        "rloo",
        "RLOO",
        RLOORunConfig,
        "training.runners.rloo",
        reads=PROMPTS,
        publishes=MODEL,
        base_models=_POLICY,
        reward_models=REWARD_MODEL_NEEDED,
    )
)
register(
    TrainingKind(
        "distill",
        "Distillation (on-policy or context)",
        DistillRunConfig,
        "training.runners.distill",
        reads=PROMPTS,
        publishes=MODEL,
        base_models=_POLICY,
        teacher=OPTIONAL_TEACHER,
    )
)
register(
    TrainingKind(
        "critique_revise",
        "Critique and revise (Constitutional AI)",
        CritiqueReviseRunConfig,
        "training.runners.critique_revise",
        reads=PROMPTS,
        publishes=CANDIDATES,
        base_models=_POLICY,
        demonstrations_file="sft.jsonl",
        target_kinds=(Kind.PAIRWISE,),
        constitution=True,
    )
)
register(
    TrainingKind(
        "synthesize_prompts",
        "Synthesize prompts (Self-Instruct, Evol-Instruct)",
        SynthesizePromptsRunConfig,
        "training.runners.synthesize_prompts",
        reads=PROMPTS,
        publishes=NEW_PROMPTS,
        base_models=_POLICY,
        prompts_file="prompts.jsonl",
    )
)
register(
    TrainingKind(
        "judge",
        "AI judge votes",
        JudgeRunConfig,
        "training.runners.judge",
        reads=ITEMS,
        publishes=VOTES,
        base_models=(),  # the judge's own model: reward models, a causal LM or an endpoint (annotate.models.Judge)
    )
)
