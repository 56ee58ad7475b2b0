"""The dataset card of a snapshot: a README.md with the YAML front matter the Hugging Face hub reads."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..models import Snapshot
from .writing import snapshot_files


def _aggregation_text(fit: dict) -> str:
    """``dawid-skene, 57 iterations, converged`` (a model's fit) or just the method."""
    if "iterations" not in fit:
        return fit["method"]
    return f"{fit['method']}, {fit['iterations']} iterations, {'converged' if fit['converged'] else 'stopped at the cap before converging'}"


SOURCE_TEXT = {
    "human": "source human: people's votes only",
    "ai": "source ai: AI judges' votes only",
    "all": "source all: people's and AI judges' votes",
}


def _source_text(source: str) -> str:
    return SOURCE_TEXT.get(source, f"source {source}")


def dataset_card(snapshot: Snapshot) -> str:
    """A README.md whose YAML front matter the Hugging Face hub reads, with the snapshot's provenance.

    The front matter is written by a YAML emitter, never by pasting names into text: a project called
    "Demo: helpful and harmless" (or with a ``#``, quotes, a newline) stays one quoted string."""
    project, options = snapshot.project, snapshot.options
    files = snapshot_files(snapshot)
    front: dict = {
        "license": snapshot.license or "other",
        "pretty_name": f"{project.name} ({options['format']})",
        "tags": ["arbiter", "preference", "rlhf", options["format"]],
    }

    def data_files(names):
        return [{"split": name.split(":", 1)[0], "path": Path(files[name]).name} for name in names]

    if options["container"] != "hf":
        # A hub split name cannot hold a ":": each criterion's test split is a config of its own.
        plain = [name for name in files if ":" not in name]
        front["configs"] = [{"config_name": "default", "data_files": data_files(plain)}]
        front["configs"] += [
            {"config_name": name.replace(":", ": ", 1), "data_files": data_files([name])}
            for name in files
            if ":" in name
        ]
    title = " ".join(project.name.split())  # one line, whatever the name holds
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000).rstrip("\n")]
    lines += ["---", "", f"# {title}: {options['format']} snapshot {snapshot.pk}", ""]
    lines += [
        f"Exported by Arbiter from project `{project.slug}` ({project.kind}, overlap {project.overlap}) on "
        f"{snapshot.created_at:%Y-%m-%d %H:%M} UTC.",
        "",
        f"- content hash (sha256 over the canonical rows, split by split): `{snapshot.content_hash}`",
        "- rows: " + ", ".join(f"{name} {n}" for name, n in snapshot.split_counts.items()),
        f"- judgments: {snapshot.counts.get('n_judgments')}, items: {snapshot.counts.get('n_items')}, "
        f"annotators: {snapshot.counts.get('n_annotators')} "
        + ("(people pseudonymous, AI judges by name)" if snapshot.counts.get("judges") else "(pseudonymous)"),
        f"- votes read ({_source_text(options.get('source', 'human'))}): "
        f"{snapshot.counts.get('n_human_votes', snapshot.counts.get('n_judgments'))} by people, "
        f"{snapshot.counts.get('n_ai_votes', 0)} by AI judges"
        + (f" ({', '.join(snapshot.counts['judges'])})" if snapshot.counts.get("judges") else ""),
        f"- adjudicated items (a researcher's final label, used instead of the annotators' aggregate): "
        f"{snapshot.counts.get('n_adjudicated', 0)}",
        f"- percent agreement: {snapshot.agreement.get('percent_agreement')}",
        f"- aggregation: {_aggregation_text(snapshot.agreement.get('aggregation') or {'method': options['aggregate']})}",
        f"- newest judgment included: {snapshot.last_judgment_id}",
        "",
        "## Options",
        "",
        "```json",
        json.dumps(options, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)
