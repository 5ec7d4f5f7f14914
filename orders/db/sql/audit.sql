-- The wallet audit's checks (dispatcher/billing/audit.py): each one statement over the whole
-- database, or one site (%(site)s NULL: all).

-- audit_totals --
-- What the report's first line counts.
SELECT (SELECT count(*) FROM wallets WHERE (%(site)s::text IS NULL OR site = %(site)s))
           AS wallets,
       (SELECT count(*) FROM wallet_entries WHERE (%(site)s::text IS NULL OR site = %(site)s))
           AS entries,
       (SELECT count(*) FROM orders
        WHERE status = 'paid' AND (%(site)s::text IS NULL OR site = %(site)s)) AS paid_orders

-- audit_balances --
-- Wallets whose balance (or held) differs from the sum of their entries' amounts (held_amounts)
-- or the last entry's balance_after (held_after).
SELECT * FROM (
    SELECT w.site, w.user_id, w.currency, w.balance, w.held, s.entries_sum, s.held_sum,
           l.balance_after AS last_after, l.held_after AS last_held_after
    FROM wallets w
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(e.amount), 0) AS entries_sum,
               coalesce(sum(e.held_amount), 0) AS held_sum
        FROM wallet_entries e
        WHERE (e.site, e.user_id, e.currency) = (w.site, w.user_id, w.currency)) s
    LEFT JOIN LATERAL (
        SELECT e.balance_after, e.held_after FROM wallet_entries e
        WHERE (e.site, e.user_id, e.currency) = (w.site, w.user_id, w.currency)
        ORDER BY e.id DESC LIMIT 1) l ON true
    WHERE (%(site)s::text IS NULL OR w.site = %(site)s)
) x
WHERE balance <> entries_sum OR balance <> coalesce(last_after, 0)
   OR held <> held_sum OR held <> coalesce(last_held_after, 0)
ORDER BY site, user_id, currency

-- audit_running --
-- Entries whose balance_after (held_after) differs from the running sum of their wallet's
-- entries' amounts (held_amounts).
SELECT id, site, user_id, currency, balance_after, running, held_after, held_running FROM (
    SELECT e.*,
           sum(amount) OVER (PARTITION BY site, user_id, currency ORDER BY id) AS running,
           sum(held_amount) OVER (PARTITION BY site, user_id, currency ORDER BY id)
               AS held_running
    FROM wallet_entries e WHERE (%(site)s::text IS NULL OR site = %(site)s)
) x WHERE balance_after <> running OR held_after <> held_running ORDER BY id

-- audit_paid_without_one_credit --
-- Paid orders without exactly one top-up credit of their user, amount and currency.
SELECT o.id, o.site, o.user_id, o.amount, o.currency, count(e.id) AS credits,
       array_agg(DISTINCT e.user_id) FILTER (WHERE e.id IS NOT NULL) AS users,
       sum(e.amount) AS credited, array_agg(DISTINCT e.currency) FILTER (WHERE e.id IS NOT NULL)
           AS currencies
FROM orders o
LEFT JOIN wallet_entries e ON e.order_id = o.id AND e.kind = 'topup'
WHERE o.status = 'paid' AND (%(site)s::text IS NULL OR o.site = %(site)s)
GROUP BY o.id
HAVING count(e.id) <> 1 OR sum(e.amount) <> o.amount
    OR array_agg(DISTINCT e.currency) <> ARRAY[o.currency]
    OR array_agg(DISTINCT e.user_id) <> ARRAY[o.user_id]
    OR bool_or(e.site <> o.site)
ORDER BY o.site, o.id

-- audit_paid_without_one_event --
-- Paid orders without exactly one order.paid outbox event.
SELECT o.id, o.site, count(b.id) AS events
FROM orders o LEFT JOIN billing_outbox b ON b.order_id = o.id AND b.event_type = 'order.paid'
WHERE o.status = 'paid' AND (%(site)s::text IS NULL OR o.site = %(site)s)
GROUP BY o.id HAVING count(b.id) <> 1
ORDER BY o.site, o.id

-- audit_credits_without_paid_order --
-- Credits naming an order that is not paid.
SELECT e.id, e.site, e.user_id, e.kind, e.amount, e.currency, e.order_id, o.status
FROM wallet_entries e JOIN orders o ON o.id = e.order_id
WHERE e.amount > 0 AND o.status <> 'paid' AND (%(site)s::text IS NULL OR e.site = %(site)s)
ORDER BY e.id

-- audit_refunds --
-- Refunds per order (from the balance or from a hold, less chargebacks given back), with what
-- the order's top-up credited.
SELECT r.order_id, r.site, r.currency, -sum(r.amount + r.held_amount) AS refunded,
       coalesce((SELECT sum(t.amount) FROM wallet_entries t
                 WHERE t.order_id = r.order_id AND t.kind = 'topup'), 0) AS credited
FROM wallet_entries r
WHERE r.kind IN ('refund', 'refund_reversal') AND (%(site)s::text IS NULL OR r.site = %(site)s)
GROUP BY r.order_id, r.site, r.currency
ORDER BY r.site, r.order_id

-- audit_late_payments --
-- Orders paid from expired, rejected or cancelled.
SELECT o.id, o.site, o.user_id, o.amount, o.currency, ev.from_status,
       EXISTS (SELECT 1 FROM wallet_entries e WHERE e.order_id = o.id AND e.kind = 'topup')
           AS credited
FROM orders o
JOIN order_events ev ON ev.order_id = o.id AND ev.to_status = 'paid'
    AND ev.from_status IN ('expired', 'rejected', 'cancelled')
WHERE o.status = 'paid' AND (%(site)s::text IS NULL OR o.site = %(site)s)
ORDER BY o.site, o.paid_at

-- audit_refund_transfers --
-- Refund transfers the ledger disagrees with: a succeeded (or reversed) one without exactly one
-- refund entry of its amount (keyed by its id), one neither with such an entry, a reversed one
-- (a chargeback given back) without one refund_reversal entry of its amount, one not reversed
-- with such an entry, and one final whose request-time hold is still open (neither settled by
-- its refund entry nor released).
SELECT t.id, t.site, t.user_id, t.order_id, t.status, t.amount, t.currency,
       (SELECT coalesce(-sum(e.amount + e.held_amount), 0) FROM wallet_entries e
        WHERE e.site = t.site AND e.idempotency_key = 'refund:' || t.id) AS billed,
       (SELECT coalesce(sum(e.amount), 0) FROM wallet_entries e
        WHERE e.site = t.site AND e.idempotency_key = 'refund-reversal:' || t.id) AS given_back,
       EXISTS (SELECT 1 FROM wallet_entries h
               WHERE h.site = t.site AND h.idempotency_key = 'refund-hold:' || t.id) AS held,
       EXISTS (SELECT 1 FROM wallet_entries e
               WHERE e.site = t.site AND e.idempotency_key IN (
                   'refund:' || t.id, 'refund-release:' || t.id)) AS closed
FROM transfers t
WHERE t.kind = 'refund' AND (%(site)s::text IS NULL OR t.site = %(site)s)
  AND (t.status IN ('succeeded', 'reversed')
       OR EXISTS (SELECT 1 FROM wallet_entries e
                  WHERE e.site = t.site AND e.idempotency_key LIKE 'refund%%:' || t.id))
ORDER BY t.site, t.id

-- audit_unlinked_refunds --
-- Refund entries no refund transfer accounts for (their key is not `refund:<its id>`): written
-- by the retired `wallet refund`, which neither the refund CHECK nor a later report of the same
-- refund knew of. Listed, not discrepancies: each is checked by a person against the order's
-- refunds (`paydispatch orders refunds`).
SELECT e.id, e.site, e.user_id, e.order_id, -(e.amount + e.held_amount) AS amount, e.currency,
       e.idempotency_key
FROM wallet_entries e
WHERE e.kind = 'refund' AND (%(site)s::text IS NULL OR e.site = %(site)s)
  AND NOT EXISTS (
      SELECT 1 FROM transfers t
      WHERE t.kind = 'refund' AND t.site = e.site
        AND t.id = CASE WHEN e.idempotency_key ~ '^refund:[0-9a-f-]{36}$'
                        THEN substr(e.idempotency_key, 8)::uuid END)
ORDER BY e.site, e.id

-- audit_bonus_reversals --
-- Orders whose bonus reversals took back more than the bonus granted, per user and currency.
SELECT e.order_id, e.site, e.user_id, e.currency,
       -sum(e.amount) FILTER (WHERE e.kind = 'bonus_reversal') AS reversed,
       sum(e.amount) FILTER (WHERE e.kind IN ('cashback', 'referral')) AS granted
FROM wallet_entries e
WHERE e.kind IN ('cashback', 'referral', 'bonus_reversal')
  AND (%(site)s::text IS NULL OR e.site = %(site)s)
GROUP BY e.order_id, e.site, e.user_id, e.currency
HAVING coalesce(-sum(e.amount) FILTER (WHERE e.kind = 'bonus_reversal'), 0)
     > coalesce(sum(e.amount) FILTER (WHERE e.kind IN ('cashback', 'referral')), 0)
ORDER BY e.site, e.order_id

-- audit_overdrawn --
-- Wallets a refund left below zero (policy allow, or money the payment system gave back), and
-- what holds keep out of balances: listed, not discrepancies.
SELECT site, user_id, currency, balance, held, overdrawn FROM wallets
WHERE (overdrawn OR held > 0) AND (%(site)s::text IS NULL OR site = %(site)s)
ORDER BY site, user_id, currency
