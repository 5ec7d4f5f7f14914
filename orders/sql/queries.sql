-- Named queries of the order repository. Each block starts with `-- name --`.
-- Parameters are psycopg named placeholders.

-- find_replay --
-- The order an idempotency key or site_ref already names, key first.
SELECT * FROM orders
WHERE site = %(site)s
  AND ((%(idempotency_key)s::text IS NOT NULL AND idempotency_key = %(idempotency_key)s)
    OR (%(site_ref)s::text IS NOT NULL AND site_ref = %(site_ref)s))
ORDER BY (idempotency_key IS NOT DISTINCT FROM %(idempotency_key)s::text) DESC
LIMIT 1

-- insert_event --
INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
VALUES (%(order_id)s, %(from_status)s, %(to_status)s, %(actor)s, %(detail)s)

-- get_order --
SELECT * FROM orders WHERE id = %(id)s AND (%(site)s::text IS NULL OR site = %(site)s)

-- list_events --
SELECT * FROM order_events WHERE order_id = %(order_id)s ORDER BY id

-- list_orders --
-- Keyset pagination, newest first; the cursor is the last row's (created_at, id).
SELECT * FROM orders
WHERE (%(site)s::text IS NULL OR site = %(site)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
  AND (%(adapter)s::text IS NULL OR adapter = %(adapter)s)
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- claim_due --
-- One statement claims a batch: rows locked by another claimer are skipped, and the claimed
-- rows become due again when their lease ends, so a crashed worker only delays them.
WITH due AS (
    SELECT id FROM orders
    WHERE next_run_at IS NOT NULL AND next_run_at <= now()
      AND (%(adapters)s::text[] IS NULL OR adapter = ANY(%(adapters)s::text[]))
    ORDER BY next_run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o
SET lease_until = now() + %(lease)s,
    next_run_at = now() + %(lease)s,
    lease_token = %(token)s,
    updated_at = now()
FROM due
WHERE o.id = due.id
RETURNING o.*

-- status_counts --
SELECT adapter, status, count(*) AS n FROM orders GROUP BY adapter, status

-- due_stats --
-- Seconds the most overdue order has waited (0 when nothing is due).
SELECT coalesce(extract(epoch FROM now() - min(next_run_at)), 0)::float8 AS oldest_due
FROM orders WHERE next_run_at IS NOT NULL AND next_run_at <= now()

-- overdue_counts --
SELECT adapter, count(*) AS n FROM orders
WHERE status IN ('new', 'submitting', 'awaiting_payment')
  AND expires_at < now() - interval '5 minutes'
GROUP BY adapter

-- poll_soon --
-- Make a watched order due now and wake the sweeper, unless a worker holds it or the dispatcher
-- looked at it within %(quiet)s (a buyer's status page asks again and again: debounce).
WITH moved AS (
    UPDATE orders SET next_run_at = now()
    WHERE id = %(id)s
      AND status = ANY(%(statuses)s::text[])
      AND next_run_at > now()
      AND (lease_until IS NULL OR lease_until < now())
      AND updated_at < now() - %(quiet)s
    RETURNING adapter
)
SELECT pg_notify('paydispatch_orders', adapter) FROM moved

-- find_by_ref --
-- The order a payment system's notification names: our id first, then its id, then our number.
SELECT * FROM orders
WHERE adapter = %(adapter)s
  AND (id = %(id)s::uuid OR psp_id = %(psp_id)s::text OR number = %(number)s::bigint)
ORDER BY (id = %(id)s::uuid) IS TRUE DESC, (psp_id = %(psp_id)s::text) IS TRUE DESC
LIMIT 1

-- insert_api_key --
INSERT INTO api_keys (site, prefix, key_hash, description)
VALUES (%(site)s, %(prefix)s, %(key_hash)s, %(description)s)
RETURNING *

-- find_api_key --
SELECT * FROM api_keys WHERE prefix = %(prefix)s

-- touch_api_key --
UPDATE api_keys SET last_used_at = now() WHERE id = %(id)s

-- list_api_keys --
SELECT * FROM api_keys
WHERE (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY site, created_at

-- revoke_api_key --
UPDATE api_keys SET revoked_at = now()
WHERE prefix = %(prefix)s AND revoked_at IS NULL
RETURNING *

-- create_order --
-- A new order with the id the caller chose, its creation event and the sweeper's wake-up in one
-- statement (one round trip, one transaction): the HTTP API's create. No row: the key or
-- site_ref is taken already.
WITH o AS (
    INSERT INTO orders (
        id, site, site_ref, user_id, amount, currency, adapter, description, return_url,
        metadata, expires_at, idempotency_key, request_hash, next_run_at
    ) VALUES (
        %(id)s, %(site)s, %(site_ref)s, %(user_id)s, %(amount)s, %(currency)s, %(adapter)s,
        %(description)s, %(return_url)s, %(metadata)s,
        now() + %(expires_in)s, %(idempotency_key)s, %(request_hash)s, now()
    )
    ON CONFLICT DO NOTHING
    RETURNING *
), e AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT id, NULL, 'new', %(actor)s, '{}'::jsonb FROM o
)
SELECT o.*, pg_notify('paydispatch_orders', o.adapter) IS NULL AS notified FROM o
