"""The hand-written statements know the schema only through the models' ``_meta``."""

from __future__ import annotations

import re

import pytest
from django.db import connection, models

from annotate import sql
from annotate.models import Item, Judgment, Response, Task


@pytest.mark.parametrize("model", [Item, Response, Task, Judgment], ids=lambda m: m.__name__)
def test_every_field_of_the_models_is_known_to_the_hand_written_statements(model):
    """A field added to one of these models fails here until annotate/sql.py's statements were checked for it
    (see ``RAW_FIELDS``): a column the pick or the one-statement submit must set, a default the bulk import needs."""
    fields = {f.attname for f in model._meta.concrete_fields}
    assert fields == sql.RAW_FIELDS[model], (
        f"check annotate/sql.py for {model.__name__}: {fields ^ sql.RAW_FIELDS[model]}"
    )


def test_the_tripwire_sees_a_new_field():
    """The check above is not vacuous: a model with one more field than RAW_FIELDS records fails it."""

    class Widened(models.Model):
        extra = models.IntegerField(default=0)

        class Meta:
            app_label = "annotate"
            db_table = Task._meta.db_table
            managed = False

    for field in Task._meta.concrete_fields:
        if not field.primary_key:
            Widened.add_to_class(field.name, field.clone())
    fields = {f.attname for f in Widened._meta.concrete_fields}
    assert fields - sql.RAW_FIELDS[Task] == {"extra"}


def test_statements_name_tables_and_columns_from_meta():
    quote = connection.ops.quote_name
    assert sql.with_schema("SELECT {Task.status} FROM {Task} WHERE {Task.item} = %s") == (
        f"SELECT {quote('status')} FROM {quote(Task._meta.db_table)} WHERE {quote('item_id')} = %s"
    )
    with pytest.raises(Exception, match="has no field named 'nonsense'"):
        sql.with_schema("SELECT {Task.nonsense} FROM {Task}")
    # The loop's statements hold no table literal: every table name in them is a quoted one from _meta.
    statements = [
        sql.pick_statement(1, 2, mark=3, skip_locked=True)[0],
        sql.membership_mark(lock=True),
        sql.move_mark(),
        sql.task_status(lock=True),
        sql._sql("held"),
        sql._sql("task"),
        sql._sql("responses"),
        sql._sql("member_project"),
    ]
    for statement in statements:
        assert not re.search(r'(?<!")\bannotate_\w+', statement), statement
