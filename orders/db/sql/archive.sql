-- Named queries of `paydispatch db archive` (orders/archive.py). Each block starts with
-- `-- name --`; psycopg named placeholders. Two are templates: psycopg.sql fills their {table},
-- {into}, {cols} and {key} with identifiers.

-- archive_cutoff --
SELECT now() - %(age)s AS cutoff

-- archive_window --
-- The next window of order numbers, and whether each is too new to leave.
SELECT number, created_at >= %(cutoff)s AS too_new FROM orders
WHERE number > %(after)s ORDER BY number LIMIT %(batch)s

-- archive_candidates --
-- The orders of one window that may leave, locked: a row that changed meanwhile is read again
-- by FOR UPDATE and left if it no longer qualifies; a row another transaction holds is skipped.
SELECT o.id FROM orders o
WHERE o.number > %(after)s AND o.number <= %(last)s
  AND o.status = ANY(%(finished)s::text[])
  AND o.next_run_at IS NULL
  AND o.updated_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM wallet_entries w WHERE w.order_id = o.id)
  AND NOT EXISTS (SELECT 1 FROM billing_outbox b WHERE b.order_id = o.id)
  AND NOT EXISTS (SELECT 1 FROM operator_actions a WHERE a.order_id = o.id)
  AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.order_id = o.id)
  AND NOT EXISTS (SELECT 1 FROM orders r WHERE r.replaces = o.id)
FOR UPDATE OF o SKIP LOCKED

-- archive_columns --
-- A table's columns in order, so rows are copied by name (the archive's own columns keep their
-- defaults).
SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%(table)s)
  AND attnum > 0 AND NOT attisdropped ORDER BY attnum

-- archive_copy --
INSERT INTO {into} ({cols}) SELECT {cols} FROM {table} WHERE {key} = ANY(%(ids)s)

-- archive_delete --
DELETE FROM {table} WHERE {key} = ANY(%(ids)s)
