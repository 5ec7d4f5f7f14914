-- One payment order's whole life in SQL, as paydispatch issues it for a sandbox order with the
-- scenario pay_after:0 (create -> claim -> submit -> claim -> poll sees paid): the statements of
-- orders/db/sql/orders.sql and of OrderRepository.create/claim/get/transition/release, each in the
-- same transaction shape (psycopg runs autocommit connections: a lone statement is its own
-- transaction; transitions and creates are one statement each, with their event in a CTE).
-- One run of this script is one lifecycle, so pgbench's "tps" is lifecycles per second.
--
-- Differences from the daemon, on purpose:
--   * the claim is restricted to this script's own order (AND id = ...): the sweeper claims up
--     to --batch due rows with one statement, so the daemon pays for fewer claim statements
--     than this script does (this makes the pgbench figure a little lower, not higher);
--   * the awaiting_payment transition sets next_run_at = now() instead of now() + POLL_FIRST,
--     because the wait before the first poll is a schedule, not work.
--
-- Variables: -D extra_poll=0 (the first poll sees "paid", what the sandbox does for
-- pay_after:0) or -D extra_poll=1 (one more poll that finds it pending: release + claim + get).
--
--   pgbench -n -M prepared -c 8 -j 2 -T 20 -D extra_poll=0 -f bench/lifecycle.pgbench.sql DB

\set amount random(100, 50000)
\set ref random(1, 1000000000000000)

-- OrderRepository.create: create_order (order, event and NOTIFY in one statement).
WITH o AS (
    INSERT INTO orders (
        id, site, site_ref, user_id, amount, currency, adapter, description, return_url,
        metadata, expires_at, idempotency_key, request_hash, next_run_at
    ) VALUES (
        gen_random_uuid(), 'pgbench', 'pgb-' || :client_id || '-' || :ref, 'user-1', :amount,
        'USD', 'sandbox', 'Top-up', 'https://shop.example/balance',
        jsonb_build_object('sandbox_scenario', 'pay_after' || chr(58) || '0'),
        now() + interval '15 minutes', NULL, md5(:ref::text) || md5(:client_id::text), now()
    )
    ON CONFLICT DO NOTHING
    RETURNING *
), e AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT id, NULL, 'new', 'site', '{}'::jsonb FROM o
)
SELECT o.id AS order_id, o.number AS number,
       pg_notify('paydispatch_orders', o.adapter) IS NULL AS notified
FROM o \gset

-- Sweeper: claim_due (batched in the daemon).
WITH due AS (
    SELECT id FROM orders
    WHERE next_run_at IS NOT NULL AND next_run_at <= now()
      AND adapter = ANY('{sandbox}'::text[])
      AND id = :order_id
    ORDER BY next_run_at
    LIMIT 500
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o
SET lease_until = now() + interval '120 seconds',
    next_run_at = now() + interval '120 seconds',
    lease_token = gen_random_uuid(),
    updated_at = now()
FROM due
WHERE o.id = due.id
RETURNING o.lease_token AS token \gset

-- Worker, submit step: get_order, then new -> submitting (keeps the lease, attempts + 1).
SELECT * FROM orders WHERE id = :order_id AND (NULL::text IS NULL OR site = NULL::text);
WITH moved AS (
    UPDATE orders SET status = 'submitting', updated_at = now(), attempts = 1
    WHERE id = :order_id AND status = 'new' AND lease_token = :token
    RETURNING *
), event AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT id, 'new', 'submitting', 'worker', '{}'::jsonb FROM moved
)
SELECT * FROM moved;
-- (HTTP create at the payment system; no transaction open.)
-- submitting -> awaiting_payment with the invoice, lease given back, first poll scheduled.
WITH moved AS (
    UPDATE orders SET status = 'awaiting_payment', updated_at = now(),
        lease_until = NULL, lease_token = NULL,
        expires_at = now() + interval '15 minutes', last_error = NULL, next_run_at = now(),
        pay_url = 'http://127.0.0.1:8765/pay/inv_' || :number, polls = 0,
        psp_id = 'inv_' || :number
    WHERE id = :order_id AND status = 'submitting' AND lease_token = :token
    RETURNING *
), event AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT id, 'submitting', 'awaiting_payment', 'worker',
           jsonb_build_object('psp_id', 'inv_' || :number) FROM moved
)
SELECT * FROM moved;

-- Sweeper: claim_due again when the first poll is due.
WITH due AS (
    SELECT id FROM orders
    WHERE next_run_at IS NOT NULL AND next_run_at <= now()
      AND adapter = ANY('{sandbox}'::text[])
      AND id = :order_id
    ORDER BY next_run_at
    LIMIT 500
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o
SET lease_until = now() + interval '120 seconds',
    next_run_at = now() + interval '120 seconds',
    lease_token = gen_random_uuid(),
    updated_at = now()
FROM due
WHERE o.id = due.id
RETURNING o.lease_token AS token \gset

\if :extra_poll
-- Worker, poll step that finds the invoice pending: get_order, (HTTP status), release.
SELECT * FROM orders WHERE id = :order_id AND (NULL::text IS NULL OR site = NULL::text);
UPDATE orders SET lease_until = NULL, lease_token = NULL, updated_at = now(),
    next_run_at = now(), last_error = NULL, polls = 1
WHERE id = :order_id AND lease_token = :token
RETURNING *;
-- Sweeper: claim_due for the next poll.
WITH due AS (
    SELECT id FROM orders
    WHERE next_run_at IS NOT NULL AND next_run_at <= now()
      AND adapter = ANY('{sandbox}'::text[])
      AND id = :order_id
    ORDER BY next_run_at
    LIMIT 500
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o
SET lease_until = now() + interval '120 seconds',
    next_run_at = now() + interval '120 seconds',
    lease_token = gen_random_uuid(),
    updated_at = now()
FROM due
WHERE o.id = due.id
RETURNING o.lease_token AS token \gset
\endif

-- Worker, poll step that sees "paid": get_order, (HTTP status), awaiting_payment -> paid.
SELECT * FROM orders WHERE id = :order_id AND (NULL::text IS NULL OR site = NULL::text);
WITH moved AS (
    UPDATE orders SET status = 'paid', updated_at = now(), paid_at = coalesce(paid_at, now()),
        lease_until = NULL, lease_token = NULL, next_run_at = NULL
    WHERE id = :order_id AND status = 'awaiting_payment' AND lease_token = :token
    RETURNING *
), event AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail)
    SELECT id, 'awaiting_payment', 'paid', 'worker',
           jsonb_build_object('psp_status', 'paid', 'late', false) FROM moved
)
SELECT * FROM moved;
