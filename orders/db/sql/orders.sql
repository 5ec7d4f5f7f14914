-- Named queries of the order repository (orders.db.query). Each block starts with `-- name --`.
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
-- Orders per adapter and status in the orders table, from the counts the triggers keep
-- (order_counts plus the deltas not folded yet), not from a scan of a table that keeps growing.
SELECT adapter, status, sum(n)::bigint AS n FROM (
    SELECT adapter, status, n FROM order_counts
    UNION ALL
    SELECT adapter, status, n FROM order_count_deltas
) AS c
GROUP BY adapter, status
HAVING sum(n) <> 0

-- fold_order_counts --
-- Fold the deltas the triggers appended into order_counts (the sweeper, every stats interval),
-- in a stable order so that two folding at once take row locks in the same order.
WITH gone AS (
    DELETE FROM order_count_deltas RETURNING adapter, status, n
)
INSERT INTO order_counts AS c (adapter, status, n)
SELECT adapter, status, sum(n) FROM gone GROUP BY adapter, status ORDER BY adapter, status
ON CONFLICT (adapter, status) DO UPDATE SET n = c.n + excluded.n

-- due_stats --
-- Seconds the most overdue order has waited (0 when nothing is due). The first entry of the due
-- index, not min(): on a long table the planner expects one due row and scans them all for min().
SELECT coalesce(extract(epoch FROM now() - (
    SELECT next_run_at FROM orders
    WHERE next_run_at IS NOT NULL AND next_run_at <= now()
    ORDER BY next_run_at
    LIMIT 1
)), 0)::float8 AS oldest_due

-- vacuum_stats --
-- The dead row versions in orders and the seconds since it was last vacuumed (by autovacuum or
-- by hand; NULL when never), from the statistics the server keeps: nothing is scanned.
SELECT n_dead_tup AS dead_rows,
       extract(epoch FROM now() - greatest(last_vacuum, last_autovacuum)) AS vacuum_age
FROM pg_stat_user_tables WHERE relid = 'orders'::regclass

-- overdue_counts --
-- Through orders_active_expires_idx: only active orders are in it, so finished ones cost nothing.
SELECT adapter, count(*) AS n FROM orders
WHERE status IN ('new', 'submitting', 'awaiting_payment')
  AND expires_at < now() - interval '5 minutes'
GROUP BY adapter

-- poll_soon --
-- Make watched orders due now and wake the sweeper, unless a worker holds one or the dispatcher
-- looked at it within its `quiet` seconds (a buyer's status page asks again and again:
-- debounce). One row per element of the arrays: the order, its watched statuses (comma-joined),
-- its quiet. A row another transaction holds is skipped, not waited for (a worker writing the
-- order, a refund or a switch deciding on it), and the rest are locked in id order, so the
-- batches of two API processes cannot deadlock. Returns the pulls (their position in the arrays,
-- from 1) whose own conditions held and whose order was pulled forward; one NOTIFY per adapter.
WITH v AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(statuses)s::text[], %(quiet)s::float8[])
        WITH ORDINALITY AS v(id, statuses, quiet, n)
), due AS (
    SELECT o.id, v.n FROM orders o JOIN v ON v.id = o.id
    WHERE o.status = ANY(string_to_array(v.statuses, ','))
      AND o.next_run_at > now()
      AND (o.lease_until IS NULL OR o.lease_until < now())
      AND o.updated_at < now() - make_interval(secs => v.quiet)
    ORDER BY o.id
    FOR NO KEY UPDATE OF o SKIP LOCKED
), moved AS (
    UPDATE orders o SET next_run_at = now()
    FROM (SELECT DISTINCT id FROM due) AS d
    WHERE o.id = d.id
    RETURNING o.id, o.adapter
), woken AS (
    SELECT count(pg_notify('paydispatch_orders', adapter)) AS n
    FROM (SELECT DISTINCT adapter FROM moved) AS a
)
SELECT due.n, (SELECT n FROM woken) AS notified FROM due JOIN moved ON moved.id = due.id

-- find_by_ref --
-- The order a payment system's notification names: our id first, then its id, then its id of
-- the money taken (a paid order's psp_payment_id), then our number.
SELECT * FROM orders
WHERE adapter = %(adapter)s
  AND (id = %(id)s::uuid OR psp_id = %(psp_id)s::text
       OR psp_payment_id = %(psp_payment_id)s::text OR number = %(number)s::bigint)
ORDER BY (id = %(id)s::uuid) IS TRUE DESC, (psp_id = %(psp_id)s::text) IS TRUE DESC,
         (psp_payment_id = %(psp_payment_id)s::text) IS TRUE DESC
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

-- get_orders --
SELECT * FROM orders WHERE id = ANY(%(ids)s::uuid[])

-- write_many --
-- Many step ends in one statement: each input row is a transition (to_status set: a
-- compare-and-set on the status and, with a token, the lease; plus its event row) or a lease
-- release (to_status NULL: the status stays, no event). `changes` is a JSON object of the
-- columns to set; a column it does not name keeps its value. write_no tells which input row
-- each returned row answers; input rows that matched nothing return nothing.
WITH v AS (
    SELECT * FROM unnest(
        %(ids)s::uuid[], %(tokens)s::uuid[], %(expected)s::text[], %(to)s::text[],
        %(keep)s::bool[], %(actors)s::text[], %(details)s::text[], %(changes)s::text[]
    ) WITH ORDINALITY AS v(id, token, expected, to_status, keep_lease, actor, detail, changes, n)
), w AS (
    SELECT id, token, expected, to_status, keep_lease, actor, detail::jsonb AS detail,
           changes::jsonb AS c, n
    FROM v
), moved AS (
    UPDATE orders o SET
        status = coalesce(w.to_status, o.status),
        updated_at = now(),
        paid_at = CASE WHEN w.to_status = 'paid' THEN coalesce(o.paid_at, now()) ELSE o.paid_at END,
        lease_until = CASE WHEN w.keep_lease THEN o.lease_until END,
        lease_token = CASE WHEN w.keep_lease THEN o.lease_token END,
        psp_id = CASE WHEN w.c ? 'psp_id' THEN w.c->>'psp_id' ELSE o.psp_id END,
        pay_url = CASE WHEN w.c ? 'pay_url' THEN w.c->>'pay_url' ELSE o.pay_url END,
        psp_payment_id = CASE WHEN w.c ? 'psp_payment_id'
            THEN w.c->>'psp_payment_id' ELSE o.psp_payment_id END,
        attempts = CASE WHEN w.c ? 'attempts' THEN (w.c->>'attempts')::int ELSE o.attempts END,
        polls = CASE WHEN w.c ? 'polls' THEN (w.c->>'polls')::int ELSE o.polls END,
        errors = CASE WHEN w.c ? 'errors' THEN (w.c->>'errors')::int ELSE o.errors END,
        expires_at = CASE WHEN w.c ? 'expires_at'
            THEN (w.c->>'expires_at')::timestamptz ELSE o.expires_at END,
        last_error = CASE WHEN w.c ? 'last_error' THEN w.c->>'last_error' ELSE o.last_error END,
        next_run_at = CASE WHEN w.c ? 'next_run_at'
            THEN (w.c->>'next_run_at')::timestamptz ELSE o.next_run_at END
    FROM w
    WHERE o.id = w.id
      AND (w.expected IS NULL OR o.status = w.expected)
      AND (w.token IS NULL OR o.lease_token = w.token)
      AND (w.to_status IS NOT NULL OR w.token IS NOT NULL)
    RETURNING o.*, w.n AS write_no, w.expected AS event_from, w.to_status AS event_to,
              w.actor AS event_actor, w.detail AS event_detail
), events AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT id, event_from, event_to, event_actor, event_detail FROM moved
    WHERE event_to IS NOT NULL
    ORDER BY write_no
)
SELECT * FROM moved

-- create_orders --
-- Many creates in one statement (the HTTP API batches the requests that arrive together):
-- like create_order, one row per element of the JSON array %(rows)s; inputs whose key or
-- site_ref is taken return nothing and are looked up one by one with find_replay. One NOTIFY
-- per adapter for the batch. (One JSON parameter costs the client far less than 14 arrays.)
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS i(
        id uuid, site text, site_ref text, user_id text, amount bigint, currency text,
        adapter text, description text, return_url text, metadata jsonb, expires_in float8,
        idempotency_key text, request_hash text, actor text)
), o AS (
    INSERT INTO orders (
        id, site, site_ref, user_id, amount, currency, adapter, description, return_url,
        metadata, expires_at, idempotency_key, request_hash, next_run_at
    )
    SELECT id, site, site_ref, user_id, amount, currency, adapter, description, return_url,
           metadata, now() + make_interval(secs => expires_in), idempotency_key, request_hash,
           now()
    FROM input
    ON CONFLICT DO NOTHING
    RETURNING *
), e AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT o.id, NULL, 'new', i.actor, '{}'::jsonb FROM o JOIN input i ON i.id = o.id
), woken AS (
    SELECT count(pg_notify('paydispatch_orders', adapter)) AS n
    FROM (SELECT DISTINCT adapter FROM o) AS a
)
SELECT o.*, (SELECT n FROM woken) AS notified FROM o

-- lock_order --
-- The order, locked until the transaction ends (a buyer's switch decides on it alone).
SELECT * FROM orders WHERE id = %(id)s FOR UPDATE

-- find_replacement --
-- The order a buyer's switch made in place of this one, if any (orders_replaces_key: one).
SELECT * FROM orders WHERE replaces = %(id)s

-- create_replacement --
-- The order a buyer's switch makes, in the transaction that cancels the one it replaces: like
-- create_order, plus which order it replaces and how many switches deep it is.
WITH o AS (
    INSERT INTO orders (
        id, site, site_ref, user_id, amount, currency, adapter, description, return_url,
        metadata, expires_at, idempotency_key, request_hash, next_run_at, replaces, switch_depth
    ) VALUES (
        %(id)s, %(site)s, %(site_ref)s, %(user_id)s, %(amount)s, %(currency)s, %(adapter)s,
        %(description)s, %(return_url)s, %(metadata)s,
        now() + %(expires_in)s, %(idempotency_key)s, %(request_hash)s, now(), %(replaces)s,
        %(switch_depth)s
    )
    RETURNING *
), e AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT id, NULL, 'new', %(actor)s, jsonb_build_object('replaces', replaces) FROM o
)
SELECT o.*, pg_notify('paydispatch_orders', o.adapter) IS NULL AS notified FROM o

-- recount_orders --
-- Count the orders table again (dispatcher/sweeper/dbstats.py's recount): in the caller's
-- transaction, with writes to orders locked out until it ends, so counts and table agree.
LOCK TABLE orders IN SHARE MODE;
DELETE FROM order_count_deltas;
DELETE FROM order_counts;
INSERT INTO order_counts (adapter, status, n)
SELECT adapter, status, count(*) FROM orders GROUP BY adapter, status

-- listen_orders --
-- The sweeper's wake-up: every create and poll_soon notifies this channel.
LISTEN paydispatch_orders
