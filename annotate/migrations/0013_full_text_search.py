"""Full-text search over prompts and responses for the data browser, in each database's own way.

- SQLite: two FTS5 tables kept by triggers, ``annotate_item_fts`` (rowid = item id: the prompt's message texts)
  and ``annotate_response_fts`` (rowid = response id, with its item id).
- PostgreSQL: ``annotate_item_search`` (the prompt's message texts as a tsvector, kept by triggers, with a GIN
  index) and a GIN index on the expression ``annotate.browsing.RESPONSE_SEARCH`` over the responses (copied here
  as written: a query must repeat an index's expression exactly to use it; a test checks that the search's plan
  does). The ``simple`` configuration, no stemming, as SQLite's unicode61 tokenizer: the same search finds the same
  items on both, in any language. Texts are cut at 100,000 characters, under the 1 MB a tsvector may hold, so an
  import never fails for the index.
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
    # The prompt's words live in a table of their own, filled by triggers, not in an index on annotate_item: the
    # annotation loop updates an item on every pick and submit (open slots, vote counts), and an expression index
    # there would recompute the prompt's tsvector each time. Responses are never updated: their index is direct.
    "CREATE TABLE annotate_item_search (item_id bigint PRIMARY KEY, document tsvector NOT NULL)",
    "CREATE INDEX item_search_fts ON annotate_item_search USING gin (document)",
    """CREATE FUNCTION annotate_item_search_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            DELETE FROM annotate_item_search WHERE item_id = OLD.id;
        ELSE
            INSERT INTO annotate_item_search (item_id, document)
            VALUES (NEW.id, to_tsvector('simple'::regconfig, left(coalesce(
                (SELECT string_agg(m ->> 'content', ' ') FROM jsonb_array_elements(NEW.prompt) AS m), ''), 100000)))
            ON CONFLICT (item_id) DO UPDATE SET document = EXCLUDED.document;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION annotate_item_search_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        TRUNCATE annotate_item_search;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER annotate_item_search_insert AFTER INSERT OR DELETE ON annotate_item "
    "FOR EACH ROW EXECUTE FUNCTION annotate_item_search_write()",
    "CREATE TRIGGER annotate_item_search_update AFTER UPDATE OF prompt ON annotate_item "
    "FOR EACH ROW EXECUTE FUNCTION annotate_item_search_write()",
    "CREATE TRIGGER annotate_item_search_truncate AFTER TRUNCATE ON annotate_item "
    "FOR EACH STATEMENT EXECUTE FUNCTION annotate_item_search_truncate()",
    """INSERT INTO annotate_item_search (item_id, document)
        SELECT i.id, to_tsvector('simple'::regconfig, left(coalesce(
            (SELECT string_agg(m ->> 'content', ' ') FROM jsonb_array_elements(i.prompt) AS m), ''), 100000))
        FROM annotate_item i""",
    "CREATE INDEX response_text_fts ON annotate_response USING gin "
    "(to_tsvector('simple'::regconfig, left(text, 100000)))",
]
POSTGRES_REVERSE = [
    "DROP TRIGGER annotate_item_search_insert ON annotate_item",
    "DROP TRIGGER annotate_item_search_update ON annotate_item",
    "DROP TRIGGER annotate_item_search_truncate ON annotate_item",
    "DROP FUNCTION annotate_item_search_write()",
    "DROP FUNCTION annotate_item_search_truncate()",
    "DROP TABLE annotate_item_search",
    "DROP INDEX response_text_fts",
]


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
