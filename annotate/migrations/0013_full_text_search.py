"""Full-text search over prompts and responses for the data browser, in each database's own way.

- SQLite: two FTS5 tables kept by triggers, ``annotate_item_fts`` (rowid = item id: the prompt's message texts)
  and ``annotate_response_fts`` (rowid = response id, with its item id).
- PostgreSQL: GIN indexes on the expressions ``annotate.sql.ITEM_SEARCH`` and ``annotate.sql.RESPONSE_SEARCH``
  (copied here as they were written: a query must repeat an index's expression exactly to use it; a test checks
  that the search's plan does). The ``simple`` configuration, no stemming, as SQLite's unicode61 tokenizer: the
  same search finds the same items on both, in any language. Texts are cut at 100,000 characters, under the 1 MB
  a tsvector may hold, so an import never fails for the index.
"""

from django.db import migrations

SQLITE = [
    "CREATE VIRTUAL TABLE annotate_item_fts USING fts5(body, tokenize='unicode61 remove_diacritics 2')",
    "CREATE VIRTUAL TABLE annotate_response_fts USING fts5(body, item_id UNINDEXED, "
    "tokenize='unicode61 remove_diacritics 2')",
    # The prompt's message texts (json_extract decodes the JSON escapes), not its keys.
    """CREATE TRIGGER annotate_item_fts_insert AFTER INSERT ON annotate_item BEGIN
        INSERT INTO annotate_item_fts(rowid, body)
        VALUES (new.id, (SELECT group_concat(json_extract(value, '$.content'), ' ') FROM json_each(new.prompt)));
    END""",
    """CREATE TRIGGER annotate_item_fts_update AFTER UPDATE OF prompt ON annotate_item BEGIN
        DELETE FROM annotate_item_fts WHERE rowid = old.id;
        INSERT INTO annotate_item_fts(rowid, body)
        VALUES (new.id, (SELECT group_concat(json_extract(value, '$.content'), ' ') FROM json_each(new.prompt)));
    END""",
    """CREATE TRIGGER annotate_item_fts_delete AFTER DELETE ON annotate_item BEGIN
        DELETE FROM annotate_item_fts WHERE rowid = old.id;
    END""",
    """CREATE TRIGGER annotate_response_fts_insert AFTER INSERT ON annotate_response BEGIN
        INSERT INTO annotate_response_fts(rowid, body, item_id) VALUES (new.id, new.text, new.item_id);
    END""",
    """CREATE TRIGGER annotate_response_fts_update AFTER UPDATE OF text ON annotate_response BEGIN
        DELETE FROM annotate_response_fts WHERE rowid = old.id;
        INSERT INTO annotate_response_fts(rowid, body, item_id) VALUES (new.id, new.text, new.item_id);
    END""",
    """CREATE TRIGGER annotate_response_fts_delete AFTER DELETE ON annotate_response BEGIN
        DELETE FROM annotate_response_fts WHERE rowid = old.id;
    END""",
    # Rows imported before this migration.
    """INSERT INTO annotate_item_fts(rowid, body)
        SELECT i.id, (SELECT group_concat(json_extract(value, '$.content'), ' ') FROM json_each(i.prompt))
        FROM annotate_item i""",
    "INSERT INTO annotate_response_fts(rowid, body, item_id) SELECT id, text, item_id FROM annotate_response",
]
SQLITE_REVERSE = [
    "DROP TRIGGER annotate_item_fts_insert",
    "DROP TRIGGER annotate_item_fts_update",
    "DROP TRIGGER annotate_item_fts_delete",
    "DROP TRIGGER annotate_response_fts_insert",
    "DROP TRIGGER annotate_response_fts_update",
    "DROP TRIGGER annotate_response_fts_delete",
    "DROP TABLE annotate_item_fts",
    "DROP TABLE annotate_response_fts",
]
POSTGRES = [
    "CREATE INDEX item_prompt_fts ON annotate_item USING gin "
    "(to_tsvector('simple'::regconfig, left(regexp_replace(prompt::text, '\\\\[nrt]', ' ', 'g'), 100000)))",
    "CREATE INDEX response_text_fts ON annotate_response USING gin "
    "(to_tsvector('simple'::regconfig, left(text, 100000)))",
]
POSTGRES_REVERSE = ["DROP INDEX item_prompt_fts", "DROP INDEX response_text_fts"]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("annotate", "0012_data_browser")]

    operations = [
        migrations.RunPython(
            _run({"sqlite": SQLITE, "postgresql": POSTGRES}),
            _run({"sqlite": SQLITE_REVERSE, "postgresql": POSTGRES_REVERSE}),
        )
    ]
