-- Named queries of refunds and payouts (orders/transfers.py, issue #14). Each block starts with
-- `-- name --`; psycopg named placeholders.

-- transfer_lock_order --
-- The order a refund is asked for, locked: the refund of "all that is left" reads what is left
-- and takes it in one transaction.
SELECT * FROM orders WHERE id = %(id)s AND (%(site)s::text IS NULL OR site = %(site)s)
FOR UPDATE

-- transfer_get_order --
SELECT * FROM orders WHERE id = %(id)s AND (%(site)s::text IS NULL OR site = %(site)s)

-- transfer_insert --
-- A new transfer, its first event (transfer_events, and order_events for a refund) and the
-- sweeper's wake-up, in one statement. No row: the idempotency key or the payment system's id
-- is taken already (the caller reads the one that holds it).
WITH t AS (
    INSERT INTO transfers (
        id, kind, site, adapter, user_id, amount, currency, status, order_id, withdrawal_id,
        origin, reason, requested_by, idempotency_key, request_hash, psp_transfer_id,
        destination, chargeback, next_run_at, settled_at
    ) VALUES (
        %(id)s, %(kind)s, %(site)s, %(adapter)s, %(user_id)s, %(amount)s, %(currency)s,
        %(status)s, %(order_id)s, %(withdrawal_id)s, %(origin)s, %(reason)s, %(requested_by)s,
        %(idempotency_key)s, %(request_hash)s, %(psp_transfer_id)s, %(destination)s,
        %(chargeback)s,
        CASE WHEN %(status)s = 'requested' THEN now() END,
        CASE WHEN %(status)s IN ('succeeded', 'failed', 'cancelled') THEN now() END
    )
    ON CONFLICT DO NOTHING
    RETURNING *
), e AS (
    INSERT INTO transfer_events (transfer_id, from_status, to_status, actor, detail)
    SELECT id, NULL, status, %(actor)s, %(detail)s::jsonb FROM t
), oe AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail, transfer_id)
    SELECT order_id, 'paid', 'paid', %(actor)s,
           jsonb_build_object('refund', id, 'to', status, 'amount', amount) || %(detail)s::jsonb,
           id
    FROM t WHERE kind = 'refund'
)
SELECT t.*,
       (CASE WHEN t.next_run_at IS NOT NULL
             THEN pg_notify('paydispatch_orders', t.adapter) END) IS NULL AS notified
FROM t

-- transfer_find_key --
SELECT * FROM transfers
WHERE site = %(site)s AND kind = %(kind)s AND idempotency_key = %(idempotency_key)s

-- transfer_find_psp --
SELECT * FROM transfers
WHERE adapter = %(adapter)s AND kind = %(kind)s AND psp_transfer_id = %(psp_transfer_id)s

-- transfer_open_refunds --
-- An order's refunds that may have been sent and whose payment system id is not known: a
-- refund the payment system reports could be one of them.
SELECT * FROM transfers
WHERE order_id = %(order_id)s AND kind = 'refund'
  AND status IN ('submitting', 'pending', 'needs_review')
  AND psp_transfer_id IS NULL
ORDER BY created_at

-- transfer_by_total --
-- An order's refunds recorded from its payment's refunded total (a status read or a notification
-- of the total, keyed `<payment id>:refunded:<total>` or `:chargeback:`): a refund reported by
-- its own id, or recorded by hand, may be one of them.
SELECT id FROM transfers
WHERE order_id = %(order_id)s AND kind = 'refund' AND origin = 'psp'
  AND (starts_with(psp_transfer_id, %(payment)s || ':refunded:')
       OR starts_with(psp_transfer_id, %(payment)s || ':chargeback:'))
LIMIT 1

-- transfer_chargebacks --
-- An order's chargebacks (refunds a dispute took, migration 0014), whatever their status: the
-- one a dispute's outcome reverses, and the one a status read's "disputed" must not take again.
SELECT * FROM transfers
WHERE order_id = %(order_id)s AND kind = 'refund' AND chargeback
ORDER BY created_at

-- transfer_wake --
-- Make transfers due now (a report that may be about them came); leases are left alone.
UPDATE transfers SET next_run_at = now()
WHERE id = ANY(%(ids)s::uuid[]) AND next_run_at IS NOT NULL
  AND (lease_until IS NULL OR lease_until < now())

-- transfer_wake_order --
-- An order's refunds still being sent or read, due now (a notification hinted at them).
UPDATE transfers SET next_run_at = now()
WHERE order_id = %(order_id)s AND kind = 'refund' AND next_run_at IS NOT NULL
  AND next_run_at > now() AND (lease_until IS NULL OR lease_until < now())

-- transfer_get --
SELECT * FROM transfers WHERE id = %(id)s AND (%(site)s::text IS NULL OR site = %(site)s)

-- transfer_list --
-- Keyset pagination, newest first; the cursor is the last row's (created_at, id).
SELECT * FROM transfers
WHERE (%(site)s::text IS NULL OR site = %(site)s)
  AND (%(order_id)s::uuid IS NULL OR order_id = %(order_id)s)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- transfer_events --
SELECT * FROM transfer_events WHERE transfer_id = %(id)s ORDER BY id

-- transfer_claim --
-- The orders' claim (claim_due) for transfers: a batch of due rows, each leased to one claimer.
WITH due AS (
    SELECT id FROM transfers
    WHERE next_run_at IS NOT NULL AND next_run_at <= now()
      AND (%(adapters)s::text[] IS NULL OR adapter = ANY(%(adapters)s::text[]))
    ORDER BY next_run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE transfers t
SET lease_until = now() + %(lease)s,
    next_run_at = now() + %(lease)s,
    lease_token = %(token)s,
    updated_at = now()
FROM due
WHERE t.id = due.id
RETURNING t.*

-- transfer_write --
-- A compare-and-set on the status (and, with a token, the lease): a transition (to_status set,
-- plus its events) or a release (to_status NULL: the status stays, no event). `changes` is a
-- JSON object of the columns to set; a column it does not name keeps its value. No row: the
-- transfer moved or the lease is gone.
WITH moved AS (
    UPDATE transfers t SET
        status = coalesce(%(to)s::text, t.status),
        updated_at = now(),
        settled_at = CASE WHEN %(to)s::text IN ('succeeded', 'failed', 'cancelled')
                          THEN now() ELSE t.settled_at END,
        lease_until = CASE WHEN %(keep)s THEN t.lease_until END,
        lease_token = CASE WHEN %(keep)s THEN t.lease_token END,
        next_run_at = %(next_run_at)s::timestamptz,
        psp_transfer_id = CASE WHEN c ? 'psp_transfer_id' THEN c->>'psp_transfer_id'
                               ELSE t.psp_transfer_id END,
        attempts = CASE WHEN c ? 'attempts' THEN (c->>'attempts')::integer ELSE t.attempts END,
        errors = CASE WHEN c ? 'errors' THEN (c->>'errors')::integer ELSE t.errors END,
        last_error = CASE WHEN c ? 'last_error' THEN c->>'last_error' ELSE t.last_error END
    FROM (SELECT %(changes)s::jsonb AS c) AS w
    WHERE t.id = %(id)s AND t.status = %(expected)s
      AND (%(token)s::uuid IS NULL OR t.lease_token = %(token)s::uuid)
    RETURNING t.*
), e AS (
    INSERT INTO transfer_events (transfer_id, from_status, to_status, actor, detail)
    SELECT id, %(expected)s, status, %(actor)s, %(detail)s::jsonb
    FROM moved WHERE %(to)s::text IS NOT NULL
), oe AS (
    INSERT INTO order_events (order_id, from_status, to_status, actor, detail, transfer_id)
    SELECT order_id, 'paid', 'paid', %(actor)s,
           jsonb_build_object('refund', id, 'from', %(expected)s::text, 'to', status,
                              'amount', amount) || %(detail)s::jsonb,
           id
    FROM moved WHERE %(to)s::text IS NOT NULL AND kind = 'refund'
)
SELECT * FROM moved

-- refund_check_mark --
-- An unverified hint that a paid order's payment was refunded: its refund check is due, at once
-- or when the quiet interval after the last check ends. A check already due or running is left
-- alone, so a flood of hints costs at most one status read per order per interval.
UPDATE orders
SET refund_check_at = greatest(now(), coalesce(refund_checked_at + %(quiet)s, now()))
WHERE id = %(id)s AND status = 'paid' AND refund_check_at IS NULL
RETURNING refund_check_at

-- refund_check_claim --
-- The transfers' claim for refund checks: a batch of due orders, each moved on by the lease (a
-- check whose worker died comes back when it ends).
WITH due AS (
    SELECT id FROM orders
    WHERE refund_check_at IS NOT NULL AND refund_check_at <= now()
      AND (%(adapters)s::text[] IS NULL OR adapter = ANY(%(adapters)s::text[]))
    ORDER BY refund_check_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE orders o
SET refund_check_at = now() + %(lease)s
FROM due
WHERE o.id = due.id
RETURNING o.id, o.adapter

-- refund_check_done --
-- A refund check ended (recorded, nothing to record, or nothing can be read): not due again
-- until another hint, and that one not before the quiet interval.
UPDATE orders SET refund_check_at = NULL, refund_checked_at = now()
WHERE id = %(id)s

-- order_remember_payment --
-- A paid order's payment id, read from the payment system (a refund's or a refund check's read
-- of the payment), stored where it is missing (an order paid before migration 0013, or by a
-- person's resolution), so the payment system's reports by that id name the order from now on.
-- Never changed once stored, nor given to a second order of the payment system.
UPDATE orders SET psp_payment_id = %(psp_payment_id)s
WHERE id = %(id)s AND status = 'paid' AND psp_payment_id IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM orders o
      WHERE o.adapter = orders.adapter AND o.psp_payment_id = %(psp_payment_id)s)
