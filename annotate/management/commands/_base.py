"""Shared pieces of the management commands: every one exits non-zero with a message on bad input."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from ...models import Project


def get_project(slug: str) -> Project:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise CommandError(f"No project {slug!r}.")
    return project


def read_import_file(name: str) -> tuple[Path, bytes]:
    """The bytes of an import file, refused before parsing when missing or over ARBITER_IMPORT_MAX_BYTES."""
    path = Path(name)
    if not path.is_file():
        raise CommandError(f"No file {path}.")
    if path.stat().st_size > settings.ARBITER_IMPORT_MAX_BYTES:
        raise CommandError(f"{path} is larger than the limit of {settings.ARBITER_IMPORT_MAX_BYTES} bytes.")
    return path, path.read_bytes()


def skipped_report_path(name: str) -> Path:
    """Where ``--skip-invalid`` will write its skipped rows, checked before anything is imported."""
    path = Path(name)
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise CommandError(f"Cannot write the report of skipped rows to {path}: {exc}") from None
    return path


def write_skipped_report(path: Path, skipped: list[tuple[int, str]]) -> None:
    """``--skip-invalid``'s skipped rows as JSONL ``{"line", "reason"}``."""
    path.write_text("".join(json.dumps({"line": line, "reason": reason}) + "\n" for line, reason in skipped))
