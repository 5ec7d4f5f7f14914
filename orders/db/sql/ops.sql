-- Named queries of the operators' commands (`paydispatch status`, `paydispatch orders ...`,
-- dispatcher/ops/orders.py) and of the demo (dispatcher/demo.py). Each block starts with
-- `-- name --`; psycopg named placeholders.

-- ops_stuck --
-- Active orders past their deadline or their next step by more than %(grace)s minutes, and every
-- order waiting for a person.
SELECT * FROM orders
WHERE (status IN ('new', 'submitting', 'awaiting_payment')
       AND (expires_at < now() - make_interval(mins => %(grace)s)
            OR next_run_at < now() - make_interval(mins => %(grace)s)))
   OR status = 'needs_review'
ORDER BY coalesce(next_run_at, expires_at)
LIMIT %(limit)s

-- ops_poll_now --
-- A watched order that no worker holds, due now.
UPDATE orders SET next_run_at = now(), updated_at = now()
WHERE id = %(id)s AND next_run_at IS NOT NULL AND lease_token IS NULL
RETURNING id

-- ops_outbox_counts --
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'parked') AS parked,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)
           AS oldest_pending_seconds
FROM billing_outbox WHERE status <> 'delivered'

-- ops_due_counts --
-- Due work is of two kinds: active orders (new, submitting, awaiting payment) whose next step is
-- due, and finished orders (expired, rejected, cancelled) watched for a late payment. Only the
-- first kind can be late for a buyer; the second is routine, and a crowd of it after a restart
-- is no sign of trouble.
SELECT count(*) FILTER (WHERE next_run_at <= now()) AS due,
       coalesce(extract(epoch FROM now() - min(next_run_at) FILTER (WHERE next_run_at <= now())), 0)
           AS oldest_due_seconds,
       count(*) FILTER (WHERE next_run_at <= now() AND status IN ('new', 'submitting',
           'awaiting_payment')) AS due_active,
       coalesce(extract(epoch FROM now() - min(next_run_at) FILTER (WHERE next_run_at <= now()
           AND status IN ('new', 'submitting', 'awaiting_payment'))), 0) AS oldest_active_seconds,
       count(*) FILTER (WHERE next_run_at <= now() AND status IN ('expired', 'rejected',
           'cancelled')) AS due_late_watch,
       count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_until > now()) AS leased
FROM orders WHERE next_run_at IS NOT NULL

-- demo_topups_per_order --
-- How many top-up credits each of the demo's paid orders got (exactly one is right).
SELECT order_id, count(*) AS n FROM wallet_entries
WHERE kind = 'topup' AND order_id = ANY(%(ids)s)
GROUP BY order_id
