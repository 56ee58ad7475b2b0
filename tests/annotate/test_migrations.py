"""Data migrations, run forward on rows written with the schema before them."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


@pytest.mark.django_db(transaction=True)
def test_0009_starts_each_members_pick_mark_at_their_highest_normal_item():
    executor = MigrationExecutor(connection)
    before, after = [("annotate", "0008_task_annotator_item_idx")], [("annotate", "0009_membership_pick_mark")]
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    User = apps.get_model("auth", "User")
    Project, Item = apps.get_model("annotate", "Project"), apps.get_model("annotate", "Item")
    Membership, Task = apps.get_model("annotate", "Membership"), apps.get_model("annotate", "Task")
    project = Project.objects.create(slug="m", name="m", kind="pairwise")
    items = [
        Item.objects.create(
            project=project, prompt=[], prompt_hash=f"h{i}", content_hash=f"c{i}", external_id=f"e{i}", purpose=p
        )
        for i, p in enumerate(["normal", "normal", "gold", "normal"])
    ]
    worked, gold_only, idle = (User.objects.create(username=name) for name in ("worked", "gold", "idle"))
    for user in (worked, gold_only, idle):
        Membership.objects.create(project=project, user=user, pseudonym=user.username)
    now = "2026-01-01T00:00:00Z"
    for user, item in ((worked, items[0]), (worked, items[1]), (worked, items[2]), (gold_only, items[2])):
        Task.objects.create(
            project=project, item=item, annotator=user, display_order=[], leased_at=now, lease_expires_at=now
        )
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        apps = executor.loader.project_state(after).apps
        marks = dict(apps.get_model("annotate", "Membership").objects.values_list("user__username", "pick_mark"))
        assert marks == {"worked": items[1].pk, "gold": 0, "idle": 0}
    finally:
        MigrationExecutor(connection).migrate(executor.loader.graph.leaf_nodes())
