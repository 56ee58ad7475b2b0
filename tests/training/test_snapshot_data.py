"""A run reads its snapshot's files and nothing else: votes cast after the snapshot change neither its training
data nor its per-criterion test sets, and the snapshot's hash covers every file it reads."""

import hashlib
import random
from pathlib import Path

import orjson
import pytest

from annotate import actions as annotate_actions
from annotate.actions import create_snapshot
from annotate.exports import ExportOptions, snapshot_files
from annotate.imports import parse_items, parse_votes
from tests.conftest import jsonl
from tests.training.conftest import toy_pair
from training import datasets, launching

pytestmark = pytest.mark.django_db


def _criteria_project(make_project):
    """20 items; annotator a prefers the good response on helpful and the bad one on safe."""
    project = make_project(slug="crit", n_items=0, overlap=2, criteria=["helpful", "safe"])
    rng, items, votes = random.Random(5), [], []
    for i in range(20):
        prompt, good, bad = toy_pair(i, rng)
        items.append({"id": f"c{i}", "prompt": prompt, "responses": [good, bad]})
        votes.append({"item": f"c{i}", "annotator": "a", "winner": 0, "criteria": {"helpful": 0, "safe": 1}})
    annotate_actions.import_items(project, parse_items(jsonl(items), "jsonl", "pairwise"))
    annotate_actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


def _rows(path) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]


def test_votes_after_the_snapshot_change_neither_training_data_nor_per_criterion_test_sets(make_project, tiny_base):
    project = _criteria_project(make_project)
    options = ExportOptions(format="trl", criterion="helpful", test_size=0.5, seed=1)
    snapshot, _ = create_snapshot(project, options)
    run = launching.launch_run(
        project=project,
        kind="reward",
        base_model=str(tiny_base),
        snapshot=snapshot,
        values={"criterion": "helpful", "max_steps": 1},
        enqueue=False,
    )
    paths, digest = datasets.run_datasets(run)
    assert set(paths) == {"train", "test", "test:safe"} and digest == snapshot.content_hash
    # The per-criterion test set is the snapshot's own file, hashed with the others.
    assert Path(paths["test:safe"]).parent == snapshot.folder and paths == snapshot_files(snapshot)
    split_digests = "".join(
        f"{name}:{hashlib.sha256(Path(paths[name]).read_bytes()).hexdigest()}\n" for name in sorted(paths)
    )
    assert hashlib.sha256(split_digests.encode()).hexdigest() == snapshot.content_hash
    test, safe = _rows(paths["test"]), _rows(paths["test:safe"])
    assert len(test) == len(safe) == snapshot.counts["test:safe"] == 10
    assert [r["prompt"] for r in safe] == [r["prompt"] for r in test]
    assert all(s["chosen"] == t["rejected"] and s["rejected"] == t["chosen"] for s, t in zip(safe, test))
    before = {name: Path(path).read_bytes() for name, path in paths.items()}

    # Annotator b disagrees on safe everywhere (a tie: dropped) and votes on a new item.
    later = [{"item": f"c{i}", "annotator": "b", "winner": 1, "criteria": {"helpful": 1, "safe": 0}} for i in range(20)]
    annotate_actions.import_judgments(project, parse_votes(jsonl(later), "jsonl"))
    again, digest_again = datasets.run_datasets(run)
    assert again == paths and digest_again == digest
    assert {name: Path(path).read_bytes() for name, path in again.items()} == before
    # The votes did change the project: a new snapshot with the same options sees them.
    newer, created = create_snapshot(project, options)
    assert created and newer.content_hash != snapshot.content_hash and newer.counts["test:safe"] == 0


def test_a_snapshot_of_another_format_or_without_a_test_split_has_no_per_criterion_files(make_project):
    project = _criteria_project(make_project)
    no_test, _ = create_snapshot(project, ExportOptions(format="trl", criterion="helpful"))
    assert list(snapshot_files(no_test)) == ["train"]
    overall, _ = create_snapshot(project, ExportOptions(format="trl", test_size=0.5, seed=1))
    assert list(snapshot_files(overall)) == ["train", "test", "test:helpful", "test:safe"]
    parquet, _ = create_snapshot(project, ExportOptions(format="trl", test_size=0.5, seed=1, container="parquet"))
    assert parquet.content_hash == overall.content_hash and snapshot_files(parquet)["test:safe"].endswith(
        "test-safe.parquet"
    )
    hf, _ = create_snapshot(project, ExportOptions(format="trl", test_size=0.5, seed=1, container="hf"))
    import datasets as hf_datasets

    assert hf.content_hash == overall.content_hash and set(hf_datasets.load_from_disk(str(hf.folder / "dataset"))) == {
        "train",
        "test",
    }
    safe = hf_datasets.load_from_disk(snapshot_files(hf)["test:safe"])
    assert safe.num_rows == hf.counts["test:safe"] == 10 and safe["prompt"] == [
        r["prompt"] for r in _rows(snapshot_files(overall)["test:safe"])
    ]
