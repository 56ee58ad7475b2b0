"""A project's constitution: named principles in markdown (Constitutional AI, Bai et al. 2022).

``Project.constitution`` holds ``[{"name": "harmless", "text": "Choose the response that..."}, ...]``. The
settings page, the API and anything else that writes it go through :func:`validate_constitution`, so every stored
constitution has unique slug names, non-empty texts and bounded sizes. Runs that use it (``critique_revise``)
record :func:`constitution_hash`, the sha256 of its canonical JSON: a change of any principle changes the hash, so
lineage says which version of the constitution a round or a model came from.

    principles = validate_constitution([{"name": "harmless", "text": "Avoid harm."}])
    constitution_hash(principles)   # → "3f1c…" (64 hex digits); "" for an empty constitution
"""

from __future__ import annotations

import hashlib
import json
import re

from django.core.exceptions import ValidationError

MAX_PRINCIPLES = 50
MAX_NAME_LENGTH = 64
MAX_TEXT_LENGTH = 4000
# A name is how runs, rounds and judges cite a principle: lowercase letters, digits, "-" and "_".
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")


def validate_constitution(value) -> list[dict]:
    """The constitution ``value`` (a list of ``{"name", "text"}``) with names and texts stripped; ValidationError
    with every problem, each naming the principle by its position (1-based), for anything else.

    >>> validate_constitution([{"name": " honest ", "text": "Do not deceive. "}])
    [{'name': 'honest', 'text': 'Do not deceive.'}]
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError('The constitution must be a list of principles, each {"name": ..., "text": ...}.')
    if len(value) > MAX_PRINCIPLES:
        raise ValidationError(f"A constitution holds at most {MAX_PRINCIPLES} principles, not {len(value)}.")
    errors, principles, seen = [], [], {}
    for number, entry in enumerate(value, 1):
        if not isinstance(entry, dict) or set(entry) - {"name", "text"}:
            errors.append(f'Principle {number}: write it as {{"name": ..., "text": ...}} and nothing else.')
            continue
        name, text = entry.get("name", ""), entry.get("text", "")  # a missing one is an empty one
        if not isinstance(name, str) or not isinstance(text, str):
            errors.append(f"Principle {number}: its name and its text must be text.")
            continue
        name, text = name.strip(), text.strip()
        if not name:
            errors.append(f"Principle {number}: it needs a name.")
        elif len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
            errors.append(
                f"Principle {number}: the name {name[:MAX_NAME_LENGTH]!r} must be at most {MAX_NAME_LENGTH} "
                "lowercase letters, digits, '-' or '_', starting with a letter or a digit."
            )
        elif name in seen:
            errors.append(f"Principle {number}: the name {name!r} is already principle {seen[name]}'s.")
        else:
            seen[name] = number
        if not text:
            errors.append(f"Principle {number}: its text is empty.")
        elif len(text) > MAX_TEXT_LENGTH:
            errors.append(f"Principle {number}: its text is {len(text)} characters; at most {MAX_TEXT_LENGTH}.")
        elif "\x00" in text:
            errors.append(f"Principle {number}: its text holds a NUL character.")
        principles.append({"name": name, "text": text})
    if errors:
        raise ValidationError(errors)
    return principles


def constitution_hash(principles: list[dict]) -> str:
    """sha256 of the principles' canonical JSON (sorted keys, no spaces, UTF-8); "" for no constitution."""
    if not principles:
        return ""
    canonical = json.dumps(
        [{"name": p["name"], "text": p["text"]} for p in principles],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
