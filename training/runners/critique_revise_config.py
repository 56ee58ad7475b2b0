"""The config of critique and revision (torch-free: the web process imports it); the runner is critique_revise.py.

The prompt templates follow the supervised stage of Constitutional AI (Bai et al. 2022, "Constitutional AI:
Harmlessness from AI Feedback", §3 and appendix C): after its answer the policy gets a *critique request* that
cites one principle of the constitution, writes a critique, then gets a *revision request* and rewrites its answer.
In a template ``{principle}`` is the principle's text and ``{name}`` its name (plain replacement: other braces are
left alone).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

from .base import ConfigError
from .config import PolicyRunConfig, option

CRITIQUE_TEMPLATE = (
    "Critique request: identify specific ways in which your last response falls short of the principle below. "
    "Quote the parts of the response at fault and say why; if it already follows the principle, say so.\n\n"
    "Principle ({name}):\n{principle}"
)
REVISION_TEMPLATE = (
    "Revision request: rewrite your last response to the original request so that it follows the principle "
    "({name}), addressing every point of your critique. Reply with the revised response only, with no preamble."
)
MAX_ROUNDS = 8


def fill_template(template: str, name: str, text: str) -> str:
    """A template with ``{name}`` and ``{principle}`` replaced (plain replacement: a principle's own braces stay).

    >>> fill_template("Principle {name}: {principle}", "honest", "Do not deceive {anyone}.")
    'Principle honest: Do not deceive {anyone}.'
    """
    return template.replace("{name}", name).replace("{principle}", text)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CritiqueReviseRunConfig(PolicyRunConfig):
    KEY_METRICS: ClassVar[tuple[str, ...]] = ()  # nothing is trained
    HEADLINE_METRICS: ClassVar[tuple[str, ...]] = ("sft_rows", "changed_fraction", "critiques")
    EXAMPLES: ClassVar[str] = "prompts"

    rounds: int = option(
        1,
        f"Critique-and-revision rounds per answer (1 to {MAX_ROUNDS}); each round draws a principle afresh and "
        "critiques the latest revision.",
    )
    critique_template: str = option(
        CRITIQUE_TEMPLATE,
        "The user turn that follows the policy's answer and asks for a critique against one principle "
        "({principle}: its text, {name}: its name). Bai et al. 2022's critique request, citing the principle.",
    )
    revision_template: str = option(
        REVISION_TEMPLATE,
        "The user turn that follows the critique and asks for the revised answer ({principle}, {name} as above). "
        "Bai et al. 2022's revision request.",
    )
    model_label: str = option(
        "", "Label written beside each response (the registered model's name); empty: the policy folder's name."
    )
    principle_names: list[str] = option(
        [], "Filled in by Arbiter from the project's constitution: the principles' names (never typed)."
    )
    principle_texts: list[str] = option(
        [], "Filled in by Arbiter from the project's constitution: the principles' texts, in the same order."
    )

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ConfigError(f"rounds must be 1 to {MAX_ROUNDS}.")
        for name in ("critique_template", "revision_template"):
            template = getattr(self, name)
            if not template.strip():
                raise ConfigError(f"{name} is empty.")
        if "{principle}" not in self.critique_template and "{name}" not in self.critique_template:
            raise ConfigError("critique_template must cite the principle: write {principle} (its text) or {name}.")
        if len(self.principle_names) != len(self.principle_texts):
            raise ConfigError("principle_names and principle_texts must have one entry per principle.")
        if len(set(self.principle_names)) != len(self.principle_names):
            raise ConfigError("principle_names must be unique.")

    @property
    def principles(self) -> list[tuple[str, str]]:
        """``(name, text)`` of each principle of the constitution, in its order."""
        return list(zip(self.principle_names, self.principle_texts))

    def template_hashes(self) -> dict[str, str]:
        """sha256 of each template as used (lineage records them)."""
        return {"critique": text_hash(self.critique_template), "revision": text_hash(self.revision_template)}


CONFIG_CLASS = CritiqueReviseRunConfig
