import json

import pytest
from django.core.management import CommandError, call_command

from annotate.models import Item, Judgment, Project
from tests.conftest import jsonl, pairwise_rows

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_project_and_add_member_with_token():
    assert "Created project demo" in run(
        "create_project", "demo", "--kind", "pairwise", "--overlap", "3", "--criteria", "helpful,harmless"
    )
    project = Project.objects.get(slug="demo")
    assert (project.overlap, project.criteria) == (3, ["helpful", "harmless"])
    run("create_project", "rated", "--kind", "rating", "--scale", "1-7")
    assert Project.objects.get(slug="rated").scale == {"min": 1, "max": 7}
    run("create_project", "safety", "--kind", "rating", "--scale", "safe,unsafe,unsure")
    assert Project.objects.get(slug="safety").scale == {"labels": ["safe", "unsafe", "unsure"]}
    output = run("add_member", "demo", "alice", "--role", "annotator", "--token")
    token = output.split()[-1]
    from rest_framework.authtoken.models import Token

    assert Token.objects.get(key=token).user.username == "alice"


@pytest.mark.parametrize(
    "args, message",
    [
        (("create_project", "bad slug", "--kind", "pairwise"), "slug"),
        (("create_project", "x", "--kind", "pairwise", "--overlap", "0"), "overlap"),
        (("create_project", "x", "--kind", "rating", "--scale", "7-1"), "low end"),
        (("create_project", "x", "--kind", "pairwise", "--criteria", "a,a"), "repeated"),
        (("add_member", "nope", "bob", "--role", "annotator"), "No project"),
    ],
)
def test_commands_fail_with_a_message(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Project.objects.filter(slug="x").exists()


def test_import_export_and_agreement_commands(tmp_path, make_project):
    make_project(n_items=0, overlap=2)
    items = tmp_path / "items.jsonl"
    items.write_bytes(jsonl(pairwise_rows(5)))
    assert "Imported 5 items." in run("import_items", "demo", str(items))
    votes = tmp_path / "votes.jsonl"
    votes.write_bytes(
        jsonl(
            [
                {"item": f"item-{i}", "annotator": name, "winner": 0 if (name == "a" or i < 3) else 1, "strength": 1}
                for i in range(5)
                for name in ("a", "b")
            ]
        )
    )
    assert "Imported 10 judgments." in run("import_judgments", "demo", str(votes))
    result = json.loads(run("agreement", "demo", "--json"))
    assert (result["n_items"], result["n_judgments"], result["percent_agreement"]) == (5, 10, 0.6)
    out = tmp_path / "trl.parquet"
    assert "Wrote 3 rows" in run(
        "export_dataset", "demo", "--format", "trl", "--out", str(out), "--container", "parquet"
    )


def test_a_malformed_import_names_the_line_and_changes_nothing(tmp_path, make_project):
    make_project(n_items=2)
    bad = tmp_path / "bad.jsonl"
    rows = [json.dumps(r) for r in pairwise_rows(3, start=10)]
    rows.insert(2, '{"prompt": "x", "responses": ["a"]}')
    bad.write_text("\n".join(rows))
    with pytest.raises(CommandError) as caught:
        run("import_items", "demo", str(bad))
    assert "line 3: pairwise projects need exactly 2 responses" in str(caught.value)
    assert Item.objects.count() == 2
    with pytest.raises(CommandError, match="No file"):
        run("import_items", "demo", str(tmp_path / "missing.jsonl"))
    votes = tmp_path / "votes.jsonl"
    votes.write_bytes(
        jsonl([{"item": "item-0", "annotator": "a", "winner": 0}, {"item": "item-1", "annotator": "a", "winner": 7}])
    )
    with pytest.raises(CommandError, match="line 2: winner must be a response index"):
        run("import_judgments", "demo", str(votes))
    assert not Judgment.objects.exists()


def test_seed_demo_is_repeatable():
    first = run("seed_demo")
    assert "Imported 36 items" in first and "annotator3" in first
    second = run("seed_demo")
    assert "exists" in second
    project = Project.objects.get(slug="demo")
    assert project.items.count() == 36
    assert sum(1 for item in project.items.all() if item.is_conversation) >= 10
    assert set(project.memberships.values_list("role", flat=True)) == {"admin", "researcher", "annotator"}


def test_seed_demo_can_print_the_accounts_last():
    """`make run` seeds without the accounts, trains the demo models, then prints them where they stay on screen."""
    seeded = run("seed_demo", "--no-accounts")
    assert "Imported 36 items" in seeded and "annotator3" not in seeded
    accounts = run("seed_demo", "--accounts-only")
    assert "annotator1  / arbiter-annotator1" in accounts and "Imported" not in accounts
    assert Project.objects.count() == 1  # --accounts-only changed nothing
