"""AI judges' prompts and answers, in plain Python (no Django, no torch): the web process renders the prompts at
launch, and the worker's runner (training/runners/judge.py) parses and folds the answers as it goes.

What is here, in the order a vote is made:

- **Templates**: one default prompt per task kind (:data:`DEFAULT_TEMPLATES`), with ``{placeholders}``
  (:data:`PLACEHOLDERS`: the prompt, the responses, the instructions, the criteria, a constitution principle, the
  scale and the answer format). :func:`check_template` refuses an unknown placeholder or a lone brace
  (``{{``/``}}`` are literal braces), :func:`template_hash` is what a vote records.
- **Conversations**: :func:`conversations` renders an item into what the judge is shown — for pairwise items
  twice, A-B then B-A (position swap), for the other kinds once, in the item's order.
- **Strict parsing**: :func:`parse_answer` reads the answer block the format asks for, at the very end of the
  output (reasoning may come before it, nothing after it); anything else raises :class:`Unparseable`. Nothing is
  guessed: no case folding, no fuzzy matching, no "the first A in the text".
- **Votes**: :func:`fold_pairwise` folds the two orders into one vote (consistent → that answer, confidence 1;
  inconsistent → a tie, confidence 0.5, ``position_consistent`` False; an unparseable order → no vote);
  :func:`single_vote` makes the vote of the other kinds; :func:`pairwise_from_scores`,
  :func:`ranking_from_scores` and :func:`ratings_from_predictions` turn reward-model scores into votes with a
  Bradley-Terry confidence, ``sigmoid(score gap)``.

A vote's ``answer`` is an imported vote's payload (responses named by their index in the item, as
``annotate.judgments.vote_fields`` takes it): ``{"winner": 0 | 1 | None, "strength": 0-3, "criteria": {...}}``,
``{"ranking": [[i, ...], ...]}``, ``{"ratings": {"i": {criterion: score}}}`` or ``{"steps": {"i": [labels]}}``.

The answer formats (docs/ai-feedback.md), each the last lines of the output:

- pairwise: one ``<criterion>: A|B|tie`` line per project criterion (if any), then ``Verdict: A|B|tie`` and
  ``Strength: 0|1|2|3`` (3 significantly better … 0 negligibly better or unsure; 0 for a tie);
- ranking: ``Ranking: 2 > 1 > 3`` (response numbers as shown, best first; ``=`` joins ties where allowed);
- rating: ``Response <n> <criterion>: <score>``, one line per response and criterion;
- steps: ``Response <n>: positive, negative, neutral``, one line per response, a label per step.

    spec = AnswerSpec(kind="pairwise", n_responses=2)
    parse_answer("B is clearer.\\nVerdict: B\\nStrength: 2", spec)   # → {"verdict": "B", "strength": 2}
    fold_pairwise([first, second], [(0, 1), (1, 0)], spec).answer   # → {"winner": 1, "strength": 2}
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field

PAIRWISE, RANKING, RATING, STEPS = "pairwise", "ranking", "rating", "steps"
JUDGED_KINDS = (PAIRWISE, RANKING, RATING, STEPS)  # a demonstration is written, not judged
STEP_LABELS = ("positive", "negative", "neutral")
VERDICTS = ("A", "B", "tie")

# Confidence of a two-order (pairwise) vote of a generative judge: both orders agree, or they do not. Routing
# (Project.routing_confidence, 0.7 by default) sends an inconsistent vote to people.
CONSISTENT_CONFIDENCE = 1.0
INCONSISTENT_CONFIDENCE = 0.5
# A reward model's pairwise confidence sigmoid(gap) → strength: below 0.6 is 0 (unsure), then 1, 2, and 3 from 0.9.
STRENGTH_CUTS = (0.6, 0.75, 0.9)

MAX_TEMPLATE_CHARS = 20_000

COMMON_PLACEHOLDERS = ("prompt", "instructions", "criteria", "principle", "format")
PLACEHOLDERS = {
    PAIRWISE: COMMON_PLACEHOLDERS + ("response_a", "response_b"),
    RANKING: COMMON_PLACEHOLDERS + ("responses",),
    RATING: COMMON_PLACEHOLDERS + ("responses", "scale"),
    STEPS: COMMON_PLACEHOLDERS + ("responses",),
}
REQUIRED_PLACEHOLDERS = {
    PAIRWISE: ("prompt", "response_a", "response_b"),
    RANKING: ("prompt", "responses"),
    RATING: ("prompt", "responses"),
    STEPS: ("prompt", "responses"),
}

_INTRO = (
    "You are an impartial judge of AI assistants' responses. Judge only their quality for the conversation below; "
    "the order in which they are shown, their length and their style must not sway you.\n\n"
)
DEFAULT_TEMPLATES = {
    PAIRWISE: _INTRO + "{instructions}{criteria}{principle}[Conversation]\n{prompt}\n\n[Response A]\n{response_a}\n\n"
    "[Response B]\n{response_b}\n\nWhich response is better? Reason briefly, then answer.\n\n{format}",
    RANKING: _INTRO + "{instructions}{principle}[Conversation]\n{prompt}\n\n{responses}\n\n"
    "Rank the responses from best to worst. Reason briefly, then answer.\n\n{format}",
    RATING: _INTRO + "{instructions}{criteria}{principle}[Conversation]\n{prompt}\n\n{responses}\n\n"
    "Rate every response on {scale}. Reason briefly, then answer.\n\n{format}",
    STEPS: _INTRO + "{instructions}{principle}[Conversation]\n{prompt}\n\n{responses}\n\n"
    "Label every step of every response: positive (correct and useful), negative (wrong, or harmful), or neutral "
    "(neither). Reason briefly, then answer.\n\n{format}",
}


class TemplateError(ValueError):
    """A template that cannot be used; the message says where and why."""


class Unparseable(ValueError):
    """A judge's output that does not hold the answer in the required format; the message says what is wrong."""


# --- the spec of an answer --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerSpec:
    """What an answer to one item must hold: its kind, its number of responses and, by kind, the project's
    criteria (pairwise criteria; rating criteria, "overall" when none), the rating scale's values, whether a
    ranking may hold ties, and each response's number of steps."""

    kind: str
    n_responses: int
    criteria: tuple[str, ...] = ()
    scale: tuple = ()
    allow_ties: bool = False
    n_steps: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AnswerSpec":
        return cls(
            kind=data["kind"],
            n_responses=int(data["n_responses"]),
            criteria=tuple(data.get("criteria") or ()),
            scale=tuple(data.get("scale") or ()),
            allow_ties=bool(data.get("allow_ties")),
            n_steps=tuple(data.get("n_steps") or ()),
        )

    @property
    def numeric_scale(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in self.scale)


def answer_spec(project, n_responses: int, texts: list[str] | None = None) -> AnswerSpec:
    """What a judge's answer on an item of ``project`` (an annotate Project) with ``n_responses`` responses must
    hold; ``texts`` (steps projects) the responses, split into steps as the project splits them."""
    if project.kind == PAIRWISE:
        return AnswerSpec(kind=PAIRWISE, n_responses=n_responses, criteria=tuple(project.criteria or ()))
    if project.kind == RANKING:
        return AnswerSpec(kind=RANKING, n_responses=n_responses, allow_ties=bool(project.allow_ties))
    if project.kind == RATING:
        return AnswerSpec(
            kind=RATING,
            n_responses=n_responses,
            criteria=tuple(project.rating_criteria),
            scale=tuple(project.scale_values),
        )
    if project.kind == STEPS:
        steps = tuple(len(project.split_steps(text)) for text in texts or [])
        return AnswerSpec(kind=STEPS, n_responses=n_responses, n_steps=steps)
    raise TemplateError(f"Judges vote on {', '.join(JUDGED_KINDS)} projects; this is a {project.kind} project.")


def judge_template(judge) -> str:
    """The template a judge's prompts are rendered from: its own, or the default of its project's kind."""
    return judge.template or default_template(judge.project.kind)


def principle_in(constitution: list, name: str) -> dict | None:
    """The principle ``name`` of a constitution (``{"name", "text"}``); None for no name; ValueError if absent."""
    if not name:
        return None
    for principle in constitution or []:
        if principle.get("name") == name:
            return {"name": principle["name"], "text": principle["text"]}
    known = ", ".join(p.get("name", "?") for p in constitution or []) or "none: the constitution is empty"
    raise ValueError(f"The project's constitution has no principle {name!r} (its principles: {known}).")


# --- templates --------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def default_template(kind: str) -> str:
    if kind not in DEFAULT_TEMPLATES:
        raise TemplateError(f"A {kind} project has no judge template: judges vote on {', '.join(JUDGED_KINDS)}.")
    return DEFAULT_TEMPLATES[kind]


def check_template(kind: str, template: str) -> list[str]:
    """The placeholders ``template`` uses; TemplateError for an unknown one, a missing required one, a lone brace,
    a NUL character or a template over MAX_TEMPLATE_CHARS.

    >>> check_template("pairwise", "{prompt} {response_a} {response_b} {{literal}}")
    ['prompt', 'response_a', 'response_b']
    """
    if kind not in PLACEHOLDERS:
        raise TemplateError(f"A {kind} project has no judge template: judges vote on {', '.join(JUDGED_KINDS)}.")
    if not isinstance(template, str) or not template.strip():
        raise TemplateError("The template is empty.")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"The template is {len(template)} characters long; at most {MAX_TEMPLATE_CHARS}.")
    if "\x00" in template:
        raise TemplateError("The template holds a NUL character.")
    used = []
    for match in _TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        line = template.count("\n", 0, match.start()) + 1
        if match.group(1) is None:
            raise TemplateError(f"Line {line}: a lone {token!r}; write {token * 2} for a literal brace.")
        name = match.group(1)
        if name not in PLACEHOLDERS[kind]:
            raise TemplateError(
                f"Line {line}: unknown placeholder {{{name}}}; a {kind} template may use "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS[kind])
                + "."
            )
        if name not in used:
            used.append(name)
    missing = [name for name in REQUIRED_PLACEHOLDERS[kind] if name not in used]
    if missing:
        raise TemplateError("The template must show " + ", ".join(f"{{{name}}}" for name in missing) + " to the judge.")
    return used


def render_template(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]`` and ``{{``/``}}`` by single braces. The
    values are inserted as they are: a brace in a response is text, never a placeholder."""

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    return _TOKEN.sub(replace, template)


def template_hash(template: str) -> str:
    """sha256 of the template's text: what a vote records as the template it was made with."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


# --- what the judge is shown ------------------------------------------------------------------------------------


def transcript(messages: list[dict]) -> str:
    """A prompt as the judge reads it: a single user message as its text, a conversation as labelled turns."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def format_instructions(spec: AnswerSpec) -> str:
    """The ``{format}`` placeholder: the exact answer block the parser accepts, for this item."""
    if spec.kind == PAIRWISE:
        lines = [f"{criterion}: X" for criterion in spec.criteria] + ["Verdict: X", "Strength: N"]
        example = [f"{criterion}: A" for criterion in spec.criteria] + ["Verdict: B", "Strength: 2"]
        which = "for each criterion and, after Verdict, overall" if spec.criteria else "overall"
        return (
            f"End your answer with exactly these {len(lines)} lines, and nothing after them:\n"
            + "\n".join(lines)
            + f"\nwhere X is the better response {which}: A, B or tie; and N is how much better it is: 3 significantly "
            "better, 2 better, 1 slightly better, 0 negligibly better or unsure (always 0 for a tie; the Strength line "
            "may be left out when you cannot say). For example:\n" + "\n".join(example)
        )
    if spec.kind == RANKING:
        numbers = list(range(1, spec.n_responses + 1))
        example = " > ".join(map(str, [numbers[1], numbers[0], *numbers[2:]]))
        text = (
            "End your answer with exactly one line, and nothing after it: Ranking: followed by the numbers of all "
            f"{spec.n_responses} responses from best to worst, separated by >, for example:\nRanking: {example}"
        )
        if spec.allow_ties:
            text += (
                "\nResponses of equal quality may share a place, joined by =, for example:\n"
                f"Ranking: {example.replace(' > ', ' = ', 1)}"
            )
        return text
    if spec.kind == RATING:
        n = spec.n_responses * len(spec.criteria)
        return (
            f"End your answer with exactly {n} line{'s' if n != 1 else ''}, and nothing after them, one per response "
            "and criterion:\n"
            "Response <number> <criterion>: <score>\n"
            f"where <criterion> is {_or(spec.criteria)} and <score> is {scale_text(spec)}. For example:\n"
            f"Response 1 {spec.criteria[0]}: {spec.scale[len(spec.scale) // 2]}"
        )
    if spec.kind == STEPS:
        counts = ", ".join(f"response {i} has {n} step{'s' if n != 1 else ''}" for i, n in enumerate(spec.n_steps, 1))
        return (
            f"End your answer with exactly {spec.n_responses} line{'s' if spec.n_responses != 1 else ''}, and nothing "
            "after them, one per response:\n"
            "Response <number>: <label of step 1>, <label of step 2>, ...\n"
            f"with one label (positive, negative or neutral) per step, in order ({counts}). For example:\n"
            "Response 1: " + ", ".join(["positive"] * (spec.n_steps[0] if spec.n_steps else 1))
        )
    raise TemplateError(f"A {spec.kind} project has no judge answer format.")


def scale_text(spec: AnswerSpec) -> str:
    if spec.numeric_scale:
        return f"a whole number from {spec.scale[0]} (worst) to {spec.scale[-1]} (best)"
    return "one of: " + ", ".join(map(str, spec.scale))


def _or(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def orders(spec: AnswerSpec) -> list[tuple[int, ...]]:
    """The response orders a generative judge is shown: pairwise A-B then B-A (the position swap), else the item's."""
    if spec.kind == PAIRWISE:
        return [(0, 1), (1, 0)]
    return [tuple(range(spec.n_responses))]


def conversations(
    template: str,
    spec: AnswerSpec,
    *,
    prompt: list[dict],
    responses: list[str],
    instructions: str = "",
    principle: dict | None = None,
    steps: list[list[str]] | None = None,
) -> list[dict]:
    """``[{"order": [response indices as shown], "messages": [one user message]}, ...]``: what a generative judge
    reads for one item, once per order of :func:`orders`. ``principle`` is ``{"name", "text"}`` or None; ``steps``
    (steps projects) each response split into its steps, as the project splits them."""
    common = {
        "prompt": transcript(prompt),
        "instructions": f"[Instructions the human annotators follow]\n{instructions.strip()}\n\n"
        if instructions and instructions.strip()
        else "",
        "criteria": f"Judge each of these criteria separately: {', '.join(spec.criteria)}.\n\n"
        if spec.criteria and spec.kind in (PAIRWISE, RATING) and spec.criteria != ("overall",)
        else "",
        "principle": f"[Principle: {principle['name']}]\n{principle['text'].strip()}\nJudge by this principle.\n\n"
        if principle
        else "",
        "format": format_instructions(spec),
        "scale": scale_text(spec) if spec.kind == RATING else "",
    }
    result = []
    for order in orders(spec):
        values = dict(common)
        if spec.kind == PAIRWISE:
            values.update(response_a=responses[order[0]], response_b=responses[order[1]])
        else:
            values["responses"] = _responses_block([responses[i] for i in order], steps and [steps[i] for i in order])
        result.append(
            {"order": list(order), "messages": [{"role": "user", "content": render_template(template, values)}]}
        )
    return result


def _responses_block(texts: list[str], steps: list[list[str]] | None) -> str:
    blocks = []
    for number, text in enumerate(texts, 1):
        if steps is not None:
            text = "\n".join(f"Step {i}: {step}" for i, step in enumerate(steps[number - 1], 1))
        blocks.append(f"[Response {number}]\n{text}")
    return "\n\n".join(blocks)


# --- strict parsing ---------------------------------------------------------------------------------------------


def _answer_lines(text: str, n: int) -> tuple[list[str], list[str]]:
    """The last ``n`` non-empty lines of ``text`` (surrounding whitespace aside), and the lines before them;
    Unparseable if there are fewer."""
    if not isinstance(text, str) or not text.strip():
        raise Unparseable("The output is empty.")
    content = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(content) < n:
        raise Unparseable(
            f"The answer needs {n} line{'s' if n != 1 else ''} at the end; the output has {len(content)}."
        )
    return content[-n:], content[:-n]


def _one_answer(before: list[str], keys: tuple[str, ...]) -> None:
    """Unparseable if a line before the answer also starts like one (two answers: which counts would be a guess)."""
    for line in before:
        if any(line.startswith(key) for key in keys):
            raise Unparseable(f"More than one answer: {line[:80]!r} comes before the final answer lines.")


def _value(line: str, key: str) -> str:
    if not line.startswith(key + ":"):
        raise Unparseable(f"Expected a line {key}: …, found {line[:80]!r}.")
    value = line[len(key) + 1 :].strip()
    if not value:
        raise Unparseable(f"{key}: has no value.")
    return value


def parse_pairwise(text: str, spec: AnswerSpec) -> dict:
    # The Strength line may be left out (small models often stop after the verdict): the strength is then unknown,
    # never guessed; everything else stays strict.
    last = text.strip().splitlines()[-1].strip() if isinstance(text, str) and text.strip() else ""
    keys = (*spec.criteria, "Verdict") if last.startswith("Verdict:") else (*spec.criteria, "Verdict", "Strength")
    block, before = _answer_lines(text, len(keys))
    parsed: dict = {}
    criteria = {}
    for line, key in zip(block, keys):
        value = _value(line, key)
        if key == "Strength":
            if value not in ("0", "1", "2", "3"):
                raise Unparseable(f"Strength must be 0, 1, 2 or 3, not {value[:40]!r}.")
            parsed["strength"] = int(value)
        elif value not in VERDICTS:
            raise Unparseable(f"{key} must be A, B or tie, not {value[:40]!r}.")
        elif key == "Verdict":
            parsed["verdict"] = value
        else:
            criteria[key] = value
    if "strength" not in parsed:
        parsed["strength"] = 0 if parsed["verdict"] == "tie" else None
    if parsed["verdict"] == "tie" and parsed["strength"] != 0:
        raise Unparseable(f"A tie has strength 0, not {parsed['strength']}.")
    if spec.criteria:
        parsed["criteria"] = criteria
    _one_answer(before, tuple(f"{key}:" for key in (*spec.criteria, "Verdict", "Strength")))
    return parsed


_RANKING = re.compile(r"Ranking:(.*)")


def parse_ranking(text: str, spec: AnswerSpec) -> dict:
    (line,), before = _answer_lines(text, 1)
    match = _RANKING.fullmatch(line)
    if not match:
        raise Unparseable(f"Expected a line Ranking: …, found {line[:80]!r}.")
    places = []
    for place in match.group(1).split(">"):
        members = [member.strip() for member in place.split("=")]
        if len(members) > 1 and not spec.allow_ties:
            raise Unparseable("This project allows no ties in a ranking (=).")
        numbers = []
        for member in members:
            if not member.isdigit() or not 1 <= int(member) <= spec.n_responses:
                raise Unparseable(f"{member[:20]!r} is not a response number from 1 to {spec.n_responses}.")
            numbers.append(int(member))
        places.append(numbers)
    flat = [n for place in places for n in place]
    if sorted(flat) != list(range(1, spec.n_responses + 1)):
        raise Unparseable(f"The ranking must hold each of the {spec.n_responses} response numbers exactly once.")
    _one_answer(before, ("Ranking:",))
    return {"ranking": places}


def parse_rating(text: str, spec: AnswerSpec) -> dict:
    n = spec.n_responses * len(spec.criteria)
    block, before = _answer_lines(text, n)
    pattern = re.compile(r"Response (\d+) (" + "|".join(map(re.escape, spec.criteria)) + r"): (.+)")
    ratings: dict[str, dict] = {}
    for line in block:
        match = pattern.fullmatch(line)
        if not match:
            raise Unparseable(f"Expected Response <number> <criterion>: <score>, found {line[:80]!r}.")
        number, criterion, value = int(match.group(1)), match.group(2), match.group(3).strip()
        if not 1 <= number <= spec.n_responses:
            raise Unparseable(f"There is no response {number}.")
        if spec.numeric_scale:
            if not re.fullmatch(r"-?\d+", value) or int(value) not in spec.scale:
                raise Unparseable(f"Score {value[:20]!r} is not {scale_text(spec)}.")
            score = int(value)
        else:
            if value not in spec.scale:
                raise Unparseable(f"Score {value[:20]!r} is not {scale_text(spec)}.")
            score = value
        scores = ratings.setdefault(str(number), {})
        if criterion in scores:
            raise Unparseable(f"Response {number} {criterion} is rated twice.")
        scores[criterion] = score
    # Every line matched a known response and criterion, none twice, and there are n of them: all are there.
    if any(pattern.fullmatch(line) for line in before):
        raise Unparseable("More than one answer: rating lines come before the final answer lines.")
    return {"ratings": ratings}


def parse_steps(text: str, spec: AnswerSpec) -> dict:
    block, before = _answer_lines(text, spec.n_responses)
    steps: dict[str, list] = {}
    for line in block:
        match = re.fullmatch(r"Response (\d+):(.*)", line)
        if not match:
            raise Unparseable(f"Expected Response <number>: <labels>, found {line[:80]!r}.")
        number = int(match.group(1))
        if not 1 <= number <= spec.n_responses or str(number) in steps:
            raise Unparseable(f"Response {number} is not a response of this item, or is labelled twice.")
        labels = [label.strip() for label in match.group(2).split(",")]
        for label in labels:
            if label not in STEP_LABELS:
                raise Unparseable(f"{label[:20]!r} is not positive, negative or neutral.")
        wanted = spec.n_steps[number - 1]
        if len(labels) != wanted:
            raise Unparseable(f"Response {number} has {wanted} steps; the answer labels {len(labels)}.")
        steps[str(number)] = labels
    if any(re.fullmatch(r"Response \d+:.*", line) for line in before):
        raise Unparseable("More than one answer: label lines come before the final answer lines.")
    return {"steps": steps}


PARSERS = {PAIRWISE: parse_pairwise, RANKING: parse_ranking, RATING: parse_rating, STEPS: parse_steps}


def parse_answer(text: str, spec: AnswerSpec) -> dict:
    """The answer in ``text`` as shown (labels A/B, response numbers from 1); Unparseable says what is wrong.

    >>> parse_answer("Ranking: 3 > 1 > 2", AnswerSpec(kind="ranking", n_responses=3))
    {'ranking': [[3], [1], [2]]}
    """
    return PARSERS[spec.kind](text, spec)


# --- votes ------------------------------------------------------------------------------------------------------


@dataclass
class Vote:
    """One judge's vote on one item: ``status`` ok (``answer`` is the vote), unparseable or error (no answer)."""

    status: str
    answer: dict | None = None
    confidence: float | None = None
    position_consistent: bool | None = None
    parsed: list = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _in_item(verdict: str, order: tuple[int, ...]):
    """A verdict as shown (A, B, tie) → the response's index in the item (None for a tie)."""
    return None if verdict == "tie" else order[0 if verdict == "A" else 1]


def fold_pairwise(parsed: list, shown: list, spec: AnswerSpec, errors: list[str] | None = None) -> Vote:
    """The two orders' parsed answers (None where unparseable) → one vote.

    Both parsed and the same answer in the item's terms → that answer (strength: the smaller of the two),
    confidence 1, position-consistent. Any difference (the overall verdict or a criterion) → each differing answer
    becomes a tie, confidence 0.5, ``position_consistent`` False. An order that could not be parsed → no vote
    (status unparseable): one order alone would not control for position."""
    if any(p is None for p in parsed):
        why = "; ".join(
            f"order {'-'.join('AB'[i] for i in order) if len(order) == 2 else order}: {error}"
            for order, p, error in zip(shown, parsed, errors or [""] * len(parsed))
            if p is None
        )
        return Vote("unparseable", parsed=list(parsed), error=why)
    winners = [_in_item(p["verdict"], order) for p, order in zip(parsed, shown)]
    consistent = len(set(winners)) == 1
    answer: dict = {"winner": winners[0] if consistent else None}
    if consistent and winners[0] is not None:
        strengths = [p["strength"] for p in parsed if p["strength"] is not None]
        if strengths:  # an order that left its Strength line out says nothing of it
            answer["strength"] = min(strengths)
    if spec.criteria:
        answer["criteria"] = {}
        for criterion in spec.criteria:
            values = {_in_item(p["criteria"][criterion], order) for p, order in zip(parsed, shown)}
            consistent = consistent and len(values) == 1
            answer["criteria"][criterion] = values.pop() if len(values) == 1 else None
    if len(parsed) < 2:
        return Vote("ok", answer, None, None, list(parsed))
    confidence = CONSISTENT_CONFIDENCE if consistent else INCONSISTENT_CONFIDENCE
    return Vote("ok", answer, confidence, consistent, list(parsed))


def single_vote(parsed: dict | None, spec: AnswerSpec, error: str = "") -> Vote:
    """A one-order answer (ranking, rating, steps) → a vote in the item's terms; no swap, so no confidence."""
    if parsed is None:
        return Vote("unparseable", parsed=[None], error=error)
    if spec.kind == RANKING:
        answer = {"ranking": [[n - 1 for n in place] for place in parsed["ranking"]]}
    elif spec.kind == RATING:
        answer = {"ratings": {str(int(n) - 1): scores for n, scores in parsed["ratings"].items()}}
    elif spec.kind == STEPS:
        answer = {"steps": {str(int(n) - 1): labels for n, labels in parsed["steps"].items()}}
    else:
        raise ValueError("pairwise votes are folded from two orders: use fold_pairwise.")
    return Vote("ok", answer, None, None, [parsed])


def vote_from_outputs(texts: list[str | None], shown: list, spec: AnswerSpec, errors: list[str] | None = None) -> Vote:
    """A generative judge's outputs (one per order of :func:`orders`; None where the backend failed, with its
    ``errors``) → the item's vote: a backend error makes an ``error`` vote, an unparseable order an
    ``unparseable`` one."""
    errors = list(errors or [""] * len(texts))
    if any(text is None for text in texts):
        why = "; ".join(e for t, e in zip(texts, errors) if t is None) or "The backend gave no output."
        return Vote("error", error=why)
    parsed, problems = [], []
    for text in texts:
        try:
            parsed.append(parse_answer(text, spec))
            problems.append("")
        except Unparseable as exc:
            parsed.append(None)
            problems.append(str(exc))
    if spec.kind == PAIRWISE:
        return fold_pairwise(parsed, shown, spec, problems)
    return single_vote(parsed[0], spec, problems[0])


# --- reward models ----------------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def strength_of(confidence: float) -> int:
    """0-3 from a Bradley-Terry probability of the preferred response (:data:`STRENGTH_CUTS`)."""
    return sum(confidence >= cut for cut in STRENGTH_CUTS)


def _pair(scores: list[float]) -> tuple[int | None, float]:
    gap = scores[0] - scores[1]
    p = sigmoid(gap)
    if gap == 0:
        return None, 0.5
    return (0 if gap > 0 else 1), max(p, 1 - p)


def pairwise_from_scores(scores: list[float], criteria_scores: dict[str, list[float]] | None = None) -> Vote:
    """Two responses' scores → the better one, confidence ``sigmoid(|gap|)`` (Bradley-Terry), the strength from it;
    each criterion from its own scores. Equal scores are a tie (confidence 0.5)."""
    winner, confidence = _pair(scores)
    answer: dict = {"winner": winner}
    if winner is not None:
        answer["strength"] = strength_of(confidence)
    if criteria_scores:
        answer["criteria"] = {c: _pair(values)[0] for c, values in criteria_scores.items()}
    parsed = {"scores": list(scores)}
    if criteria_scores:
        parsed["criteria"] = {c: list(v) for c, v in criteria_scores.items()}
    return Vote("ok", answer, confidence, None, [parsed])


def ranking_from_scores(scores: list[float]) -> Vote:
    """Responses by score, best first (equal scores keep the item's order); the confidence is the least sure
    adjacent pair's ``sigmoid(gap)``."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    confidence = min(sigmoid(scores[a] - scores[b]) for a, b in zip(order, order[1:]))
    return Vote("ok", {"ranking": [[i] for i in order]}, confidence, None, [{"scores": list(scores)}])


def ratings_from_predictions(predictions: dict[str, list[float]], spec: AnswerSpec) -> Vote:
    """Predicted ratings (regression reward models, in rating units) per criterion and response → the nearest
    score on the scale; the confidence is the mean closeness to a scale point (1 on a point or past an end of the
    scale, 0.5 half-way between two points)."""
    low, high = spec.scale[0], spec.scale[-1]
    ratings: dict[str, dict] = {}
    closeness = []
    for criterion, values in predictions.items():
        for index, value in enumerate(values):
            score = min(high, max(low, int(math.floor(value + 0.5))))
            # Past either end of the scale the score is that end, surely; within it, how near a scale point it is.
            closeness.append(1.0 if not low <= value <= high else 1.0 - min(0.5, abs(value - score)))
            ratings.setdefault(str(index), {})[criterion] = score
    confidence = sum(closeness) / len(closeness) if closeness else None
    parsed = {"predictions": {c: list(v) for c, v in predictions.items()}}
    return Vote("ok", {"ratings": ratings}, confidence, None, [parsed])


def reward_model_criterion(info: dict) -> str:
    """The criterion a reward model scores, from its ``arbiter.json``: a regression model's rated criterion, else
    the criterion of its training config ("" for overall)."""
    stats = info.get("score_stats") or {}
    return str(stats.get("criterion") or (info.get("config") or {}).get("criterion") or "")


def is_regression(info: dict) -> bool:
    """A reward model that predicts ratings (trained with objective=regression: ``score_stats`` in arbiter.json)."""
    return bool(info.get("score_stats"))


def is_process_reward_model(info: dict) -> bool:
    """A process reward model (``train prm``: ``"kind": "prm"`` in arbiter.json), which labels each step."""
    return info.get("kind") == "prm"


def steps_from_probabilities(probabilities: list[list[dict[str, float]]]) -> Vote:
    """Each response's steps' class probabilities (``{"negative": p, "positive": q[, "neutral": r]}``, from process
    reward models) → a steps vote: every step takes its likeliest label; the confidence is the mean probability of
    the labels given.

    >>> steps_from_probabilities([[{"negative": 0.2, "positive": 0.8}, {"negative": 0.7, "positive": 0.3}]]).answer
    {'steps': {'0': ['positive', 'negative']}}
    """
    steps, chosen = {}, []
    for index, response in enumerate(probabilities):
        labels = []
        for step in response:
            label = max(("positive", "negative", "neutral"), key=lambda name: step.get(name, 0.0))
            labels.append(label)
            chosen.append(step.get(label, 0.0))
        steps[str(index)] = labels
    confidence = sum(chosen) / len(chosen) if chosen else None
    return Vote("ok", {"steps": steps}, confidence, None, [{"probabilities": probabilities}])


def reward_plan(kind: str, criteria: tuple[str, ...], infos: list[dict]) -> dict:
    """Which reward models (by position among the judge's) score what, from their ``arbiter.json``:
    ``{"overall": [i, ...], "criteria": {criterion: [i, ...]}}``; ValueError when they do not cover the kind.

    - pairwise and ranking: overall, the models trained on overall preferences (no criterion), else all of them;
      each criterion of a pairwise project, the models trained on that criterion (one is needed per criterion);
    - rating: each rated criterion, the regression models that predict it (one is needed per criterion);
    - steps: process reward models (``train prm``), every one of them: they label each step; a plain reward model
      scores whole responses, and a process reward model judges nothing but steps.
    """
    process = [is_process_reward_model(info) for info in infos]
    if kind == STEPS:
        if not all(process):
            raise ValueError(
                "A reward model scores whole responses: it cannot label steps. A steps project's reward-model judge "
                "needs process reward models (train prm), or use a local or openai judge."
            )
        return {"overall": list(range(len(infos))), "criteria": {}}
    if any(process):
        raise ValueError(
            f"A process reward model labels steps: it judges steps projects only, not a {kind} project (use reward "
            "models trained by reward runs)."
        )
    of = [reward_model_criterion(info) for info in infos]
    if kind == RATING:
        if not all(is_regression(info) for info in infos):
            raise ValueError(
                "A rating project's reward-model judge needs regression reward models (objective=regression), "
                "which predict ratings."
            )
        plan = {"overall": [], "criteria": {c: [i for i, mine in enumerate(of) if mine == c] for c in criteria}}
    else:
        overall = [i for i, mine in enumerate(of) if not mine] or list(range(len(infos)))
        wanted = criteria if kind == PAIRWISE else ()
        plan = {"overall": overall, "criteria": {c: [i for i, mine in enumerate(of) if mine == c] for c in wanted}}
    missing = [c for c, models in plan["criteria"].items() if not models]
    if missing:
        have = ", ".join(sorted({c or "overall" for c in of}))
        raise ValueError(
            f"No reward model scores {', '.join(missing)} (the models given score: {have}); a judge answers every "
            "criterion of the project."
        )
    return plan


# --- secrets and options ----------------------------------------------------------------------------------------

_SECRETS = [
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), "an OpenAI-style key (sk-…)"),
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "a Hugging Face token (hf_…)"),
    (re.compile(r"\b(?:ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}"), "a GitHub token"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-.=]{12,}"), "a bearer token"),
    (re.compile(r"(?i)\b(?:api[_-]?key|secret|token|password)\s*[:=]\s*\S{8,}"), "a key or password"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
]


def secret_in(text: str, long_tokens: bool = True) -> str:
    """What looks like a credential in ``text`` ("" if nothing): templates and options must never hold one (keys
    come from the environment variable a judge names). ``long_tokens`` also flags any long run of letters mixed
    with digits (off for model names and paths, which may hold a commit hash)."""
    if not isinstance(text, str):
        return ""
    for pattern, what in _SECRETS:
        if pattern.search(text):
            return what
    if not long_tokens:
        return ""
    # A long run of letters and digits mixed (a key, a token) is no word of a prompt.
    for run in re.findall(r"[A-Za-z0-9_\-]{40,}", text):
        if re.search(r"[A-Za-z]", run) and re.search(r"\d", run) and not re.fullmatch(r"[a-z_\-]+\d*", run):
            return "a long token"
    return ""


# Judge options: name → (type, low, high, default, help). Bounds are inclusive.
OPTIONS = {
    "temperature": (
        float,
        0.0,
        2.0,
        0.0,
        "Sampling temperature; 0 decodes greedily (the default: a judge repeats itself).",
    ),
    "max_tokens": (int, 1, 4096, 256, "Longest answer, in tokens (reasoning and answer lines)."),
    "max_prompt_tokens": (int, 64, 131072, 2048, "local: longer prompts keep their end (the answer format)."),
    "batch_size": (int, 1, 512, 8, "local: conversations generated at once; reward-model: texts scored at once."),
    "concurrency": (int, 1, 64, 4, "openai: requests in flight at once."),
    "timeout": (float, 1.0, 600.0, 60.0, "openai: seconds before a request is given up (then retried)."),
    "retries": (int, 0, 10, 4, "openai: retries after a 429, a 5xx or a timeout, with backoff."),
}


def clean_options(options) -> dict:
    """Validated judge options (unknown names, wrong types and values out of range raise ValueError)."""
    if options in (None, ""):
        return {}
    if not isinstance(options, dict):
        raise ValueError("options must be an object of option names and values.")
    clean = {}
    for name, value in options.items():
        if name not in OPTIONS:
            raise ValueError(f"Unknown judge option {name!r}; options: {', '.join(OPTIONS)}.")
        kind, low, high, _, _ = OPTIONS[name]
        if isinstance(value, str):
            try:
                value = kind(value.strip())
            except ValueError:
                raise ValueError(f"{name} must be {'a whole number' if kind is int else 'a number'}.") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be {'a whole number' if kind is int else 'a number'}.")
        if kind is int and (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name} must be a whole number.")
        value = kind(value)
        if not low <= value <= high:
            raise ValueError(f"{name} must be from {low} to {high}, not {value}.")
        clean[name] = value
    return clean


def option_values(options: dict) -> dict:
    """Every option with its default where ``options`` leaves it out."""
    return {name: options.get(name, spec[3]) for name, spec in OPTIONS.items()}
