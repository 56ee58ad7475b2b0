"""The config of prompt synthesis (torch-free: the web process imports it); the runner is synthesize_prompts.py.

Two methods write new instructions from a seed pool of prompts:

- ``self_instruct`` (Wang et al. 2022, "Self-Instruct: Aligning Language Models with Self-Generated Instructions",
  §2.2): the model sees ``num_examples`` instructions, ``num_generated_examples`` of them (2 of 8 in the paper)
  from those it wrote and kept earlier in the run once there are any, the rest from the pool, and writes one more.
- ``evol_instruct`` (Xu et al. 2023, "WizardLM: Empowering Large Language Models to Follow Complex Instructions",
  §3 and appendix A): the model rewrites one pool prompt with an operation drawn at random from ``operations``:
  in depth (add constraints, deepen, concretise, increase the reasoning steps, complicate the input) or in breadth
  (a new prompt of the same domain, rarer).

The filters (each counted in the metrics) follow the papers; see docs/synthetic-prompts.md. In a template
``{examples}``, ``{next}``, ``{prompt}`` and ``{operation}`` are replaced as plain text (other braces stay).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import PolicyRunConfig, RunConfig, option

SYNTHESIS_METHODS = ("self_instruct", "evol_instruct")

# Self-Instruct's prompt ("Come up with a series of tasks:" then numbered tasks, the model writing the next one),
# with a sentence for chat models, which answer a request rather than continue a list.
SELF_INSTRUCT_TEMPLATE = (
    "Come up with a series of tasks. Write one new task, different from the ones below, that an AI assistant can "
    "do with text alone. Reply with the new task only.\n\n{examples}\nTask {next}:"
)
# WizardLM's in-depth prompt (appendix A), the operation's sentence in {operation}.
DEPTH_TEMPLATE = (
    "I want you act as a Prompt Rewriter.\n"
    "Your objective is to rewrite a given prompt into a more complex version to make those famous AI systems "
    "(e.g., ChatGPT and GPT4) a bit harder to handle.\n"
    "But the rewritten prompt must be reasonable and must be understood and responded by humans.\n"
    "Your rewriting cannot omit the non-text parts such as the table and code in #The Given Prompt#:. Also, please "
    "do not omit the input in #The Given Prompt#.\n"
    "You SHOULD complicate the given prompt using the following method:\n{operation}\n"
    "You should try your best not to make the #Rewritten Prompt# become verbose, #Rewritten Prompt# can only add "
    "10 to 20 words into #The Given Prompt#.\n"
    "'#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' are not allowed to appear "
    "in #Rewritten Prompt#\n"
    "#The Given Prompt#:\n{prompt}\n#Rewritten Prompt#:\n"
)
# WizardLM's in-breadth prompt (appendix A).
BREADTH_TEMPLATE = (
    "I want you act as a Prompt Creator.\n"
    "Your goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.\n"
    "This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.\n"
    "The LENGTH and complexity of the #Created Prompt# should be similar to that of the #Given Prompt#.\n"
    "The #Created Prompt# must be reasonable and must be understood and responded by humans.\n"
    "'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not allowed to appear in "
    "#Created Prompt#\n"
    "#Given Prompt#:\n{prompt}\n#Created Prompt#:\n"
)
BREADTH = "in_breadth"
# The in-depth operations (WizardLM's sentences; "complicate_input" is its code/table/formula evolution in words).
DEPTH_OPERATIONS = {
    "add_constraints": "Please add one more constraints/requirements into #The Given Prompt#.",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
    "can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "increase_reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can "
    "rewrite it to explicitly request multiple-step reasoning.",
    "complicate_input": "Please add a concrete input that the prompt must work on (a table, a piece of code, a "
    "formula or a passage of text) and ask for it to be used.",
}
OPERATIONS = (*DEPTH_OPERATIONS, BREADTH)
# Self-Instruct's keywords of tasks a language model cannot do (its code's list), matched as whole words.
UNANSWERABLE_KEYWORDS = [
    "image", "images", "picture", "pictures", "photo", "photos", "graph", "graphs", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip
# Evol-Instruct's elimination: an answer with "sorry" (or another refusal) that is also short.
REFUSAL_PHRASES = ["sorry", "as an ai", "i cannot", "i can't", "i am unable", "i'm unable", "i am not able"]
# Words of the evolving prompt that a failed evolution copies (WizardLM's rule 4).
TEMPLATE_PHRASES = [
    "#the given prompt#", "#given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt",
    "rewritten prompt", "created prompt",
]  # fmt: skip


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class SynthesizePromptsRunConfig(PolicyRunConfig):
    KEY_METRICS: ClassVar[tuple[str, ...]] = ()  # nothing is trained
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("n_kept", "n_generated", "dropped_near_duplicate")
    EXAMPLES: ClassVar[str] = "prompts"
    # Nothing is trained and nothing is scored by a reward model: those options are inherited and unread.
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {f.name for f in dataclasses.fields(RunConfig) if f.name not in ("seed", "precision", "method")}
        | {"reward_models", "reward_weights"}
    )

    method: str = option(
        "self_instruct",
        "self_instruct: new instructions from a few sampled examples (Wang et al. 2022); evol_instruct: each pool "
        "prompt rewritten deeper or broader (Xu et al. 2023, WizardLM).",
        SYNTHESIS_METHODS,
    )
    num_candidates: int = option(0, "Instructions to write (before the filters); 0: one per prompt of the seed pool.")
    num_examples: int = option(8, "self_instruct: examples shown per request (8 in the paper).")
    num_generated_examples: int = option(
        2,
        "self_instruct: how many of the examples come from the instructions kept earlier in the run, once there "
        "are some (2 of 8 in the paper); the rest come from the seed pool.",
    )
    operations: list[str] = option(
        list(OPERATIONS),
        f"evol_instruct: the operations drawn from (uniformly, one per prompt): {', '.join(OPERATIONS)}.",
    )
    rouge_threshold: float = option(
        0.7,
        "Drop a new instruction whose ROUGE-L F against a pool prompt or an instruction already kept is above "
        "this (Self-Instruct: 0.7); 1 keeps near-duplicates.",
    )
    min_words: int = option(3, "Drop instructions of fewer words (Self-Instruct: 3).")
    min_kept_from_prompt: float = option(
        0.3,
        "evol_instruct, in depth: drop a rewrite that keeps less than this share of its prompt's words, in order "
        "(ROUGE-L recall): it answered or replaced the prompt instead of making it harder, a failed evolution "
        "(in breadth writes a new prompt and is not checked); 0 off.",
    )
    max_words: int = option(150, "Drop instructions of more words (Self-Instruct: 150).")
    unanswerable_keywords: list[str] = option(
        UNANSWERABLE_KEYWORDS,
        "Drop instructions with any of these words (Self-Instruct: tasks a language model cannot do); empty: off.",
    )
    check_answers: bool = option(
        True,
        "The model answers each instruction; drop it when the answer is empty, shorter than min_answer_words, or a "
        "short refusal (Evol-Instruct's elimination step).",
    )
    answer_max_new_tokens: int = option(64, "Longest answer sampled for the answer check, in tokens.")
    min_answer_words: int = option(2, "Drop an instruction whose answer has fewer words (punctuation is no word).")
    refusal_phrases: list[str] = option(
        REFUSAL_PHRASES, "An answer with one of these (whole words, any case) is a refusal when it is short."
    )
    refusal_max_words: int = option(80, "A refusal is an answer with a refusal phrase and fewer words (WizardLM: 80).")
    template_phrases: list[str] = option(
        TEMPLATE_PHRASES, "Drop an instruction that copies one of these words of the prompt templates."
    )
    self_instruct_template: str = option(
        SELF_INSTRUCT_TEMPLATE,
        "self_instruct: the request ({examples}: the numbered examples, 'Task 1: ...' a line; {next}: the next "
        "number).",
    )
    depth_template: str = option(
        DEPTH_TEMPLATE, "evol_instruct, in depth: the request ({prompt}: the pool prompt; {operation}: its sentence)."
    )
    breadth_template: str = option(BREADTH_TEMPLATE, "evol_instruct, in breadth: the request ({prompt}).")
    max_prompt_length: int = option(
        1024, "Requests longer than this many tokens keep their end (the examples and the cue to write)."
    )
    max_new_tokens: int = option(96, "Longest instruction sampled, in tokens.")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.rouge_threshold <= 1:
            raise ConfigError(f"rouge_threshold must be from 0 to 1 (a ROUGE-L F-measure), not {self.rouge_threshold}.")
        if self.num_candidates < 0:
            raise ConfigError("num_candidates must be 0 (one per pool prompt) or more.")
        if self.num_examples < 1 or not 0 <= self.num_generated_examples <= self.num_examples:
            raise ConfigError("num_examples must be at least 1, and num_generated_examples from 0 to num_examples.")
        if not 0 <= self.min_kept_from_prompt <= 1:
            raise ConfigError(
                f"min_kept_from_prompt must be from 0 to 1 (a share of words), not {self.min_kept_from_prompt}."
            )
        if not 1 <= self.min_words <= self.max_words:
            raise ConfigError("min_words must be at least 1 and at most max_words.")
        unknown = [name for name in self.operations if name not in OPERATIONS]
        if unknown:
            raise ConfigError(f"Unknown operation {', '.join(unknown)}: use some of {', '.join(OPERATIONS)}.")
        if not self.operations or len(set(self.operations)) != len(self.operations):
            raise ConfigError("operations must name at least one operation, each once.")
        if self.answer_max_new_tokens < 1 or self.min_answer_words < 0 or self.refusal_max_words < 0:
            raise ConfigError("answer_max_new_tokens must be at least 1, min_answer_words and refusal_max_words 0+.")
        needed = {
            "self_instruct_template": ("{examples}",),
            "depth_template": ("{prompt}", "{operation}"),
            "breadth_template": ("{prompt}",),
        }
        for name, placeholders in needed.items():
            missing = [p for p in placeholders if p not in getattr(self, name)]
            if missing:
                raise ConfigError(f"{name} must contain {' and '.join(missing)}.")

    def template_hashes(self) -> dict[str, str]:
        """sha256 of each template as used, and of the operations' sentences (lineage records them)."""
        return {
            "self_instruct": text_hash(self.self_instruct_template),
            "depth": text_hash(self.depth_template),
            "breadth": text_hash(self.breadth_template),
            "operations": text_hash(json.dumps(DEPTH_OPERATIONS, sort_keys=True)),
        }


CONFIG_CLASS = SynthesizePromptsRunConfig
