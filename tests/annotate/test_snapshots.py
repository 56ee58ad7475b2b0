import json

import pytest
from django.core.management import call_command

from annotate import actions
from annotate.actions import create_snapshot
from annotate.exports import ExportOptions, build_splits, snapshot_files
from annotate.imports import parse_items, parse_votes
from annotate.models import Role, Snapshot
from tests.conftest import jsonl, pairwise_rows

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def artifact_root(settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    return settings.ARTIFACT_ROOT


@pytest.fixture
def voted(make_project):
    project = make_project(n_items=0, overlap=2)
    actions.import_items(project, parse_items(jsonl(pairwise_rows(20)), "jsonl", "pairwise"))
    votes = [{"item": f"item-{i}", "annotator": a, "winner": 0, "strength": 1} for i in range(20) for a in ("a", "b")]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    return project


def test_split_groups_by_prompt_and_is_deterministic(make_project):
    # 10 prompts, each asked with 4 different response pairs (40 items): rows of a prompt stay together.
    project = make_project(n_items=0, overlap=1)
    rows = [{"id": f"i{i}", "prompt": f"p{i % 10}", "responses": [f"good {i}", f"bad {i}"]} for i in range(40)]
    actions.import_items(project, parse_items(jsonl(rows), "jsonl", "pairwise"))
    actions.import_judgments(
        project, parse_votes(jsonl([{"item": f"i{i}", "annotator": "a", "winner": 0} for i in range(40)]), "jsonl")
    )
    first = build_splits(project, ExportOptions(test_size=0.3, seed=7))
    again = build_splits(project, ExportOptions(test_size=0.3, seed=7))
    other = build_splits(project, ExportOptions(test_size=0.3, seed=8))
    assert first == again and first != other
    train_prompts = {r["prompt"] for r in first["train"]}
    test_prompts = {r["prompt"] for r in first["test"]}
    assert not train_prompts & test_prompts and len(test_prompts) == 3
    assert (len(first["train"]), len(first["test"])) == (28, 12)


def test_snapshot_hash_is_stable_and_changes_with_a_new_vote(voted, make_member):
    options = ExportOptions(test_size=0.25, seed=1)
    first, created = create_snapshot(voted, options)
    assert created and first.counts["train"] + first.counts["test"] == 20 and first.counts["test"] == 5
    again, created_again = create_snapshot(voted, options)
    assert not created_again and again.pk == first.pk and again.content_hash == first.content_hash
    files = snapshot_files(first)
    train = [json.loads(line) for line in open(files["train"])]
    test = [json.loads(line) for line in open(files["test"])]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    card = (first.folder / "README.md").read_text()
    assert card.startswith("---\nlicense: other") and first.content_hash in card and "path: test.jsonl" in card
    # A new vote changes the hash: the 21st item gets a unanimous preference.
    actions.import_items(voted, parse_items(jsonl(pairwise_rows(1, start=50)), "jsonl", "pairwise"))
    actions.import_judgments(voted, parse_votes(jsonl([{"item": "item-50", "annotator": "a", "winner": 1}]), "jsonl"))
    newer, created = create_snapshot(voted, options)
    assert created and newer.content_hash != first.content_hash
    assert Snapshot.objects.count() == 2


def test_hash_does_not_depend_on_the_container(voted):
    jsonl_snapshot, _ = create_snapshot(voted, ExportOptions(container="jsonl"))
    parquet_snapshot, _ = create_snapshot(voted, ExportOptions(container="parquet"))
    hf_snapshot, _ = create_snapshot(voted, ExportOptions(container="hf"))
    assert jsonl_snapshot.content_hash == parquet_snapshot.content_hash == hf_snapshot.content_hash
    import datasets

    assert datasets.load_from_disk(snapshot_files(hf_snapshot)["train"]).num_rows == 20
    assert (
        datasets.load_dataset("parquet", data_files=snapshot_files(parquet_snapshot)["train"], split="train").num_rows
        == 20
    )


def test_hf_split_command_output_has_no_prompt_in_both_splits(voted, tmp_path):
    import datasets

    out = tmp_path / "hf"
    call_command(
        "export_dataset",
        "demo",
        "--format",
        "trl",
        "--out",
        str(out),
        "--container",
        "hf",
        "--test-size",
        "0.2",
        "--seed",
        "3",
    )
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "test"} and loaded["test"].num_rows == 4
    assert not set(loaded["train"]["prompt"]) & set(loaded["test"]["prompt"])


def test_snapshot_api_for_researchers_only(voted, make_member, api_client_for):
    researcher = api_client_for(make_member(voted, "res", Role.RESEARCHER))
    annotator = api_client_for(make_member(voted, "ann"))
    body = {"format": "trl", "test_size": 0.1, "seed": 2, "license": "cc-by-4.0"}
    assert annotator.post("/api/projects/demo/exports/", body, format="json").status_code == 403
    created = researcher.post("/api/projects/demo/exports/", body, format="json")
    assert created.status_code == 201, created.content
    snapshot = created.json()
    assert snapshot["license"] == "cc-by-4.0" and len(snapshot["content_hash"]) == 64
    assert snapshot["counts"]["train"] + snapshot["counts"]["test"] == 20
    again = researcher.post("/api/projects/demo/exports/", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == snapshot["id"]
    read = researcher.get(f"/api/exports/{snapshot['id']}/").json()
    assert read["content_hash"] == snapshot["content_hash"]
    assert annotator.get(f"/api/exports/{snapshot['id']}/").status_code == 403
    bad = researcher.post("/api/projects/demo/exports/", {"format": "nope"}, format="json")
    assert bad.status_code == 400 and "format" in bad.json()["detail"]
    bad = researcher.post("/api/projects/demo/exports/", {"test_size": 2}, format="json")
    assert bad.status_code == 400
    bad = researcher.post("/api/projects/demo/exports/", {"colour": "red"}, format="json")
    assert bad.status_code == 400 and "colour" in bad.json()["detail"]
    download = researcher.get(f"/api/exports/{snapshot['id']}/files/train/")
    assert download.status_code == 200 and b'"chosen"' in b"".join(download.streaming_content)
    assert researcher.get(f"/api/exports/{snapshot['id']}/files/../").status_code == 404


# --- the dataset card ------------------------------------------------------------------------------------------

CARD_NAMES = [
    "Demo: helpful and harmless",
    "C# #1 # not a comment",
    "say \"hi\" and 'bye'",
    "two\nlines: yes\n---\nthird",
    "Ünïcödé – 日本語 🙂",
    "- starts like a list",
    "{not: a map}",
    "null",
]


def _front_matter(card: str) -> tuple[dict, str]:
    import yaml

    assert card.startswith("---\n")
    front, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.mark.parametrize("name", CARD_NAMES)
def test_the_dataset_card_front_matter_is_valid_yaml_whatever_the_names(voted, name):
    voted.name = name
    voted.save(update_fields=["name"])
    snapshot, _ = create_snapshot(voted, ExportOptions(test_size=0.25, seed=1, license="license: #1"))
    meta, body = _front_matter((snapshot.folder / "README.md").read_text(encoding="utf-8"))
    assert meta["pretty_name"] == f"{name} (trl)" and meta["license"] == "license: #1"
    assert meta["tags"] == ["arbiter", "preference", "rlhf", "trl"]
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "train.jsonl"}, {"split": "test", "path": "test.jsonl"}],
        }
    ]
    assert f"\n# {' '.join(name.split())}: trl snapshot {snapshot.pk}\n" in body and snapshot.content_hash in body


def test_the_card_lists_each_criterion_test_split_as_a_config(make_project):
    project = make_project(slug="crit", n_items=0, overlap=1, criteria=["helpful", "safe: for kids"])
    actions.import_items(project, parse_items(jsonl(pairwise_rows(8)), "jsonl", "pairwise"))
    votes = [
        {"item": f"item-{i}", "annotator": "a", "winner": 0, "criteria": {"helpful": 0, "safe: for kids": 1}}
        for i in range(8)
    ]
    actions.import_judgments(project, parse_votes(jsonl(votes), "jsonl"))
    snapshot, _ = create_snapshot(
        project, ExportOptions(format="trl", criterion="helpful", test_size=0.5, seed=1, container="parquet")
    )
    meta, _ = _front_matter((snapshot.folder / "README.md").read_text(encoding="utf-8"))
    path = snapshot_files(snapshot)["test:safe: for kids"]
    assert path.endswith(".parquet") and path.rsplit("/", 1)[1].startswith("test-safe-for-kids-")
    assert meta["configs"][1] == {
        "config_name": "test: safe: for kids",
        "data_files": [{"split": "test", "path": path.rsplit("/", 1)[1]}],
    }


def test_the_card_downloads_from_the_api_and_the_page_for_researchers_and_admins(
    voted, make_member, make_project, api_client_for, client
):
    snapshot, _ = create_snapshot(voted, ExportOptions(test_size=0.25, seed=1))
    card = (snapshot.folder / "README.md").read_bytes()
    url = f"/api/exports/{snapshot.pk}/card/"
    researcher = make_member(voted, "res", Role.RESEARCHER)
    for user in (researcher, make_member(voted, "boss", Role.ADMIN)):
        answer = api_client_for(user).get(url)
        assert answer.status_code == 200 and answer.content == card
        assert answer["Content-Type"] == "text/markdown; charset=utf-8"
        assert answer["Content-Disposition"] == f'attachment; filename="demo-{snapshot.pk}-README.md"'
    assert api_client_for(make_member(voted, "ann")).get(url).status_code == 403
    outsider = make_member(make_project(slug="other", n_items=0), "outsider", Role.ADMIN)
    assert api_client_for(outsider).get(url).status_code == 404
    assert api_client_for(researcher).get(f"/api/exports/{snapshot.pk + 1}/card/").status_code == 404
    client.force_login(researcher)
    page = client.get("/p/demo/").content.decode()
    assert f'href="{url}"' in page
    assert client.get(url).content == card  # the page's link works with the session
