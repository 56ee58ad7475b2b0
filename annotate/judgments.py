"""Checking a submitted answer against its task, for every kind, before anything is written.

The browser form, the API and ``import_judgments`` all end here, so an answer is valid or invalid the same
way wherever it comes from. Each function returns the model fields of a new :class:`Judgment` or raises
:class:`InvalidJudgment` with a message meant for the person who sent it.
"""

from __future__ import annotations

from typing import Any

from .models import Judgment, Kind, Task

CHOICES = ("A", "B", "tie", "both_bad")
STRENGTH_LABELS = {
    0: "Negligibly better / unsure",
    1: "Slightly better",
    2: "Better",
    3: "Significantly better",
}
MAX_TEXT = 20_000


class InvalidJudgment(ValueError):
    pass


def _strength(value: Any, outcome: str) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise InvalidJudgment("strength must be an integer from 0 to 3.")
    try:
        strength = int(value)
    except (TypeError, ValueError):
        raise InvalidJudgment("strength must be an integer from 0 to 3.") from None
    if strength != value and str(strength) != str(value):
        raise InvalidJudgment("strength must be an integer from 0 to 3.")
    if not 0 <= strength <= 3:
        raise InvalidJudgment("strength must be an integer from 0 to 3.")
    # A tie or "both bad" has no direction, so a strength would mean nothing.
    return strength if outcome == Judgment.Outcome.WIN else None


def _common(payload: dict) -> dict:
    fields: dict[str, Any] = {}
    rationale = payload.get("rationale", payload.get("text", ""))
    if rationale is None:
        rationale = ""
    if not isinstance(rationale, str):
        raise InvalidJudgment("rationale must be text.")
    if "\x00" in rationale:
        raise InvalidJudgment("rationale must not contain NUL characters.")
    if len(rationale) > MAX_TEXT:
        raise InvalidJudgment(f"rationale is longer than {MAX_TEXT} characters.")
    fields["text"] = rationale
    duration = payload.get("duration_ms")
    if duration not in (None, ""):
        if isinstance(duration, bool):
            raise InvalidJudgment("duration_ms must be a non-negative integer.")
        try:
            duration = int(duration)
        except (TypeError, ValueError):
            raise InvalidJudgment("duration_ms must be a non-negative integer.") from None
        if not 0 <= duration < 2**31:
            raise InvalidJudgment("duration_ms must be a non-negative integer.")
        fields["duration_ms"] = duration
    return fields


def _outcome_of_choice(task: Task, choice: Any, what: str = "choice") -> tuple[str, int | None]:
    if choice not in CHOICES:
        raise InvalidJudgment(f'{what} must be one of "A", "B", "tie", "both_bad".')
    if choice in ("A", "B"):
        return Judgment.Outcome.WIN, task.display_order[0 if choice == "A" else 1]
    return (Judgment.Outcome.TIE if choice == "tie" else Judgment.Outcome.BOTH_BAD), None


def _outcome_of_index(response_ids: list[int], winner: Any, what: str = "winner") -> tuple[str, int | None]:
    if winner is None:
        return Judgment.Outcome.TIE, None
    if winner == "both_bad":
        return Judgment.Outcome.BOTH_BAD, None
    if isinstance(winner, int) and not isinstance(winner, bool) and 0 <= winner < len(response_ids):
        return Judgment.Outcome.WIN, response_ids[winner]
    raise InvalidJudgment(f"{what} must be a response index from 0 to {len(response_ids) - 1}, or null for a tie.")


def _criteria(project, answers: Any, decode) -> dict:
    """Per-criterion answers: every project criterion, no other."""
    if not project.criteria:
        if answers:
            raise InvalidJudgment("this project has no criteria.")
        return {}
    if not isinstance(answers, dict):
        raise InvalidJudgment(f"criteria must be an object with an answer for each of: {', '.join(project.criteria)}.")
    unknown = set(answers) - set(project.criteria)
    if unknown:
        raise InvalidJudgment(f"unknown criteria: {', '.join(sorted(map(str, unknown)))}.")
    missing = [c for c in project.criteria if c not in answers]
    if missing:
        raise InvalidJudgment(f"criteria is missing an answer for: {', '.join(missing)}.")
    result = {}
    for criterion in project.criteria:
        outcome, winner = decode(answers[criterion], f"criteria[{criterion}]")
        result[criterion] = {"outcome": outcome, "winner": winner}
    return result


def _pairwise(outcome: str, winner: int | None, payload: dict, criteria: dict) -> dict:
    data: dict[str, Any] = {}
    if criteria:
        data["criteria"] = criteria
    demonstration = payload.get("demonstration") or ""
    if not isinstance(demonstration, str) or len(demonstration) > MAX_TEXT:
        raise InvalidJudgment(f"demonstration must be text of at most {MAX_TEXT} characters.")
    if demonstration.strip():
        if outcome != Judgment.Outcome.BOTH_BAD:
            raise InvalidJudgment('a demonstration goes with "both_bad": write one when neither response is good.')
        data["demonstration"] = demonstration
    return {
        "outcome": outcome,
        "winner_id": winner,
        "strength": _strength(payload.get("strength"), outcome),
        "data": data,
        **_common(payload),
    }


def pairwise_from_choice(task: Task, payload: dict) -> dict:
    """A pairwise answer given by display position: ``{"choice": "A"|"B"|"tie"|"both_bad", ...}``.

    "A" is the first response as this annotator saw it, which ``task.display_order`` records.
    """
    outcome, winner = _outcome_of_choice(task, payload.get("choice"))
    criteria = _criteria(
        task.project, payload.get("criteria"), lambda value, what: _outcome_of_choice(task, value, what)
    )
    return _pairwise(outcome, winner, payload, criteria)


def _ranking(project, response_ids: list[int], raw: Any, decode) -> list[list[int]]:
    """Groups of response ids, best first; every response exactly once; ties only where allowed."""
    if not isinstance(raw, list) or not raw:
        raise InvalidJudgment("ranking must be a list of responses, best first.")
    groups = []
    for entry in raw:
        members = entry if isinstance(entry, list) else [entry]
        if not members:
            raise InvalidJudgment("ranking has an empty group of ties.")
        if len(members) > 1 and not project.allow_ties:
            raise InvalidJudgment("this project does not allow ties in a ranking.")
        groups.append([decode(member) for member in members])
    flat = [rid for group in groups for rid in group]
    if len(flat) != len(set(flat)) or set(flat) != set(response_ids):
        raise InvalidJudgment(f"ranking must list each of the {len(response_ids)} responses exactly once.")
    return groups


def _ratings(project, response_ids: list[int], raw: Any, decode) -> dict:
    """``{"<response id>": {criterion: score}}`` for every response and criterion, scores on the scale."""
    if not isinstance(raw, dict):
        raise InvalidJudgment("ratings must be an object: {response: {criterion: score}}.")
    criteria, allowed = project.rating_criteria, project.scale_values
    ratings = {}
    for key, scores in raw.items():
        rid = decode(key)
        if not isinstance(scores, dict):
            raise InvalidJudgment(f"ratings for response {key} must be an object of criterion: score.")
        unknown = set(scores) - set(criteria)
        if unknown:
            raise InvalidJudgment(f"unknown criteria: {', '.join(sorted(map(str, unknown)))}.")
        clean = {}
        for criterion in criteria:
            if criterion not in scores:
                raise InvalidJudgment(f"response {key} has no score for {criterion}.")
            score = scores[criterion]
            if isinstance(score, str) and "labels" not in project.rating_scale and score.lstrip("-").isdigit():
                score = int(score)
            if isinstance(score, bool) or score not in allowed or (isinstance(score, float) and not score.is_integer()):
                raise InvalidJudgment(
                    f"score {score!r} for {criterion} is off the scale {allowed[0]}..{allowed[-1]}"
                    if "labels" not in project.rating_scale
                    else f"score {score!r} for {criterion} is not one of {', '.join(allowed)}."
                )
            clean[criterion] = int(score) if "labels" not in project.rating_scale else score
        ratings[str(rid)] = clean
    missing = set(map(str, response_ids)) - set(ratings)
    if missing:
        raise InvalidJudgment(f"ratings are missing for {len(missing)} of the {len(response_ids)} responses.")
    return ratings


STEP_LABELS = ("positive", "negative", "neutral")
STEP_ALIASES = {1: "positive", -1: "negative", 0: "neutral", "+": "positive", "-": "negative", "0": "neutral"}


def _steps(project, responses: dict[int, str], raw: Any, decode) -> dict:
    """``{"<response id>": [label per step]}``; a plain list is accepted when the item has one response."""
    if isinstance(raw, list) and len(responses) == 1:
        raw = {next(iter(responses)): raw}
        decode = int
    if not isinstance(raw, dict):
        raise InvalidJudgment("steps must be an object: {response: [label for each step]}.")
    result = {}
    for key, labels in raw.items():
        rid = decode(key)
        n_steps = len(project.split_steps(responses[rid]))
        if not isinstance(labels, list):
            raise InvalidJudgment(f"steps of response {key} must be a list of labels.")
        if len(labels) != n_steps:
            raise InvalidJudgment(f"response {key} has {n_steps} steps; got {len(labels)} labels.")
        clean = []
        for position, label in enumerate(labels, start=1):
            if isinstance(label, (str, int, float)) and not isinstance(label, bool):  # a list or object is no label
                label = STEP_ALIASES.get(label, label)
            if label not in STEP_LABELS:
                raise InvalidJudgment(
                    f"step {position} of response {key}: label must be positive, negative or neutral."
                )
            clean.append(label)
        result[str(rid)] = clean
    missing = set(map(str, responses)) - set(result)
    if missing:
        raise InvalidJudgment(f"steps are missing for {len(missing)} of the {len(responses)} responses.")
    return result


def _demonstration(payload: dict, based_on: int | None) -> dict:
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidJudgment("text must be the demonstration: it cannot be empty.")
    if "\x00" in text:
        raise InvalidJudgment("text must not contain NUL characters.")
    if len(text) > MAX_TEXT:
        raise InvalidJudgment(f"text is longer than {MAX_TEXT} characters.")
    fields = _common({k: v for k, v in payload.items() if k != "text"})
    fields["text"] = text
    fields["data"] = {"based_on": based_on} if based_on is not None else {}
    return fields


def _id_decoder(response_ids: list[int]):
    """Browser and API answers name responses by id (an int, or its string as a JSON object key)."""
    known = set(response_ids)

    def decode(value: Any) -> int:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value not in known:
            raise InvalidJudgment(f"{value!r} is not one of this task's responses.")
        return value

    return decode


def _index_decoder(response_ids: list[int]):
    """Imported votes name responses by their index in the item."""

    def decode(value: Any) -> int:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(response_ids):
            raise InvalidJudgment(f"{value!r} is not a response index from 0 to {len(response_ids) - 1}.")
        return response_ids[value]

    return decode


def _kind_fields(project, response_ids: list[int], texts: dict[int, str], payload: dict, decode) -> dict:
    kind = project.kind
    if kind == Kind.RANKING:
        return {
            "data": {"ranking": _ranking(project, response_ids, payload.get("ranking"), decode)},
            **_common(payload),
        }
    if kind == Kind.RATING:
        return {
            "data": {"ratings": _ratings(project, response_ids, payload.get("ratings"), decode)},
            **_common(payload),
        }
    if kind == Kind.STEPS:
        return {"data": {"steps": _steps(project, texts, payload.get("steps"), decode)}, **_common(payload)}
    if kind == Kind.DEMONSTRATION:
        based_on = payload.get("based_on")
        return _demonstration(payload, None if based_on in (None, "") else decode(based_on))
    raise InvalidJudgment(f"unknown project kind {kind}.")


def judgment_fields(task: Task, payload: dict) -> dict:
    """Validate a submission to ``task`` (API or browser form) and return the judgment's fields."""
    if not isinstance(payload, dict):
        raise InvalidJudgment("the body must be a JSON object.")
    project = task.project
    if project.kind == Kind.PAIRWISE:
        return pairwise_from_choice(task, payload)
    texts = dict(task.item.responses.values_list("id", "text")) if project.kind == Kind.STEPS else {}
    return _kind_fields(project, list(task.display_order), texts, payload, _id_decoder(task.display_order))


def vote_fields(project, response_ids: list[int], payload: dict, texts: dict[int, str] | None = None) -> dict:
    """Validate an imported vote (responses named by their index in the item) and return its fields."""
    if project.kind == Kind.PAIRWISE:
        if "winner" not in payload:
            raise InvalidJudgment('a pairwise vote needs "winner": a response index, or null for a tie.')
        outcome, winner = _outcome_of_index(response_ids, payload["winner"])
        criteria = _criteria(
            project, payload.get("criteria"), lambda value, what: _outcome_of_index(response_ids, value, what)
        )
        return _pairwise(outcome, winner, payload, criteria)
    return _kind_fields(project, response_ids, texts or {}, payload, _index_decoder(response_ids))
