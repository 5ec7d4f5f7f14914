-- Named queries of `paydispatch db init` and `db check` (orders/db/schema.py): the init lock,
-- the recorded schema version, and the catalog the check compares. Not the schema itself, which
-- is the repository's schema.sql and orders/migrations/. Each block starts with `-- name --`;
-- psycopg named placeholders. Three are templates: psycopg.sql fills their {} with the scratch
-- schema's name (DDL and a qualified table name take no parameters).

-- schema_init_lock --
-- Serialises concurrent `db init` runs until their transaction ends.
SELECT pg_advisory_xact_lock(%(key)s)

-- schema_version_exists --
-- Whether paydispatch ever touched this database: schema_version is its first table.
SELECT to_regclass('schema_version') IS NOT NULL

-- schema_version --
SELECT max(version) FROM schema_version

-- schema_scratch_create --
CREATE SCHEMA {}

-- schema_scratch_search_path --
-- schema.sql names no schema, so it builds its tables wherever search_path points.
SET LOCAL search_path = {}

-- schema_catalog_columns --
-- The catalog of %(schema)s, one kind of object per query, each row one line of the check.
SELECT c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attidentity <> ''
               THEN ' identity ' || a.attidentity::text ELSE '' END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND c.relkind = 'r' AND a.attnum > 0
  AND NOT a.attisdropped

-- schema_catalog_constraints --
SELECT c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s

-- schema_catalog_indexes --
-- Without the schema's name, so the scratch schema's indexes read like public's.
SELECT replace(pg_get_indexdef(i.indexrelid), %(schema)s::text || '.', '')
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s

-- schema_catalog_triggers --
SELECT replace(pg_get_triggerdef(t.oid), %(schema)s::text || '.', '')
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND NOT t.tgisinternal

-- schema_catalog_options --
-- Tables' storage options (autovacuum settings).
SELECT c.relname || ' ' || array_to_string(c.reloptions, ',')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.reloptions IS NOT NULL

-- schema_catalog_functions --
SELECT p.proname || ' ' || md5(p.prosrc)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %(schema)s

-- schema_has_transitions --
-- %%I: format()'s identifier, its % doubled because the statement has parameters.
SELECT to_regclass(format('%%I.order_transitions', %(schema)s::text)) IS NOT NULL

-- schema_transitions --
-- {} is the schema's name: the allowed transitions are rows, so the check compares them too.
SELECT from_status, to_status FROM {}.order_transitions

-- server_upkeep --
-- The server's settings that vacuum and analyze the tables (orders/db/schema.py: server_warnings).
SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'track_counts')
