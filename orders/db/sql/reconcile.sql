-- Named queries of `paydispatch reconcile` (dispatcher/ops/reconcile.py): our books for one
-- payment system and one day, to hold against its own. Each block starts with `-- name --`;
-- psycopg named placeholders.

-- reconcile_paid --
SELECT * FROM orders
WHERE adapter = %(adapter)s AND status = 'paid' AND paid_at >= %(since)s AND paid_at < %(until)s
  AND (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY paid_at, id

-- reconcile_unpaid --
-- Orders of the day that ended unpaid: re-read where the payment system has no list.
SELECT * FROM orders
WHERE adapter = %(adapter)s AND status IN ('rejected', 'expired', 'cancelled')
  AND psp_id IS NOT NULL AND created_at >= %(since)s AND created_at < %(until)s
  AND (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY created_at, id

-- reconcile_review --
SELECT * FROM orders
WHERE adapter = %(adapter)s AND status = 'needs_review' AND created_at < %(until)s
  AND (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY created_at, id

-- reconcile_named --
-- Every site's: a payment must be recognised as another site's order, not reported as nobody's.
SELECT * FROM orders
WHERE adapter = %(adapter)s AND (psp_id = ANY(%(psp_ids)s) OR id = ANY(%(ids)s))

-- reconcile_refunded --
SELECT order_id, -sum(amount) AS refunded FROM wallet_entries
WHERE kind = 'refund' AND order_id = ANY(%(ids)s)
GROUP BY order_id

-- reconcile_day_refunds --
SELECT e.site, e.currency, count(*) AS refunds, -sum(e.amount) AS refunded
FROM wallet_entries e JOIN orders o ON o.id = e.order_id
WHERE e.kind = 'refund' AND o.adapter = %(adapter)s
  AND e.created_at >= %(since)s AND e.created_at < %(until)s
  AND (%(site)s::text IS NULL OR e.site = %(site)s)
GROUP BY e.site, e.currency
ORDER BY e.site, e.currency
