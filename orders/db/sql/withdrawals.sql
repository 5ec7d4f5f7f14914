-- Named queries of wallet withdrawals (dispatcher/billing/withdrawals.py). Each block starts
-- with `-- name --`; psycopg named placeholders.

-- lock_wallet_for_withdrawal --
-- Serialises a user's withdrawals (and the daily limit's sum) in one currency: held until the
-- request's transaction ends. Debits and holds of the same wallet wait on the same row.
SELECT balance, held FROM wallets
WHERE site = %(site)s AND user_id = %(user_id)s AND currency = %(currency)s
FOR UPDATE

-- withdrawn_today --
-- What counts against the daily limit: the last 24 hours' withdrawals that are not failed or
-- cancelled (their amounts, without fees).
SELECT coalesce(sum(amount), 0)::bigint AS total FROM withdrawals
WHERE site = %(site)s AND user_id = %(user_id)s AND currency = %(currency)s
  AND created_at > now() - interval '24 hours'
  AND status NOT IN ('failed', 'cancelled')

-- insert_withdrawal --
INSERT INTO withdrawals (
    id, site, user_id, currency, amount, fee, adapter, destination, status, idempotency_key,
    request_hash, requested_by
) VALUES (
    %(id)s, %(site)s, %(user_id)s, %(currency)s, %(amount)s, %(fee)s, %(adapter)s,
    %(destination)s, %(status)s, %(key)s, %(request_hash)s, %(requested_by)s
)
RETURNING *

-- withdrawal_by_key --
SELECT * FROM withdrawals WHERE site = %(site)s AND idempotency_key = %(key)s

-- get_withdrawal --
-- %(site)s NULL: any site (the operators' commands).
SELECT * FROM withdrawals
WHERE id = %(id)s AND (%(site)s::text IS NULL OR site = %(site)s)

-- lock_withdrawal --
SELECT * FROM withdrawals
WHERE id = %(id)s AND (%(site)s::text IS NULL OR site = %(site)s)
FOR UPDATE

-- set_withdrawal_transfer --
-- Approval: the payout exists now (compare-and-set on the status the caller read).
UPDATE withdrawals
SET status = 'approved', transfer_id = %(transfer_id)s, approved_by = %(approved_by)s,
    updated_at = now()
WHERE id = %(id)s AND status = %(from_status)s
RETURNING *

-- finish_withdrawal --
-- A final status, once: a withdrawal already final matches no row.
UPDATE withdrawals SET status = %(status)s, reason = %(reason)s, updated_at = now()
WHERE id = %(id)s AND status IN ('awaiting_approval', 'approved', 'sent')
RETURNING *

-- list_withdrawals --
-- Newest first, keyset on (created_at, id) after the cursor's row; every filter optional.
SELECT * FROM withdrawals
WHERE (%(site)s::text IS NULL OR site = %(site)s)
  AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(before_id)s::uuid IS NULL
       OR (created_at, id) < (SELECT w.created_at, w.id FROM withdrawals w
                              WHERE w.id = %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- withdrawal_stats --
-- The sweeper's gauges: what open withdrawals hold (amount + fee) per currency, and how long
-- the oldest of each open status has waited.
SELECT status, currency, sum(amount + fee)::bigint AS held,
       extract(epoch FROM now() - min(updated_at))::float8 AS oldest_age
FROM withdrawals
WHERE status IN ('awaiting_approval', 'approved', 'sent')
GROUP BY status, currency

-- audit_withdrawals --
-- The audit (dispatcher/billing/audit.py): every withdrawal's ledger entries, by their keys.
-- Its hold is amount + fee; once it succeeded that hold went out as the amount and the fee,
-- once it failed or was cancelled it came back whole, and while open neither. Rows only for
-- withdrawals whose entries say otherwise.
SELECT w.id, w.site, w.user_id, w.currency, w.status, w.amount, w.fee,
       e.held, e.paid, e.fee_paid, e.released
FROM withdrawals w
CROSS JOIN LATERAL (
    SELECT coalesce(sum(x.held_amount) FILTER (WHERE x.kind = 'hold'), 0) AS held,
           coalesce(-sum(x.held_amount) FILTER (WHERE x.kind = 'withdrawal'), 0) AS paid,
           coalesce(-sum(x.held_amount) FILTER (WHERE x.kind = 'fee'), 0) AS fee_paid,
           coalesce(-sum(x.held_amount) FILTER (WHERE x.kind = 'release'), 0) AS released
    FROM wallet_entries x
    WHERE x.site = w.site AND x.idempotency_key IN (
        'withdrawal:' || w.id, 'withdrawal:' || w.id || ':payout',
        'withdrawal:' || w.id || ':fee', 'withdrawal:' || w.id || ':release')
) e
WHERE (%(site)s::text IS NULL OR w.site = %(site)s)
  AND NOT (
      e.held = w.amount + w.fee
      AND CASE
          WHEN w.status = 'succeeded'
              THEN e.paid = w.amount AND e.fee_paid = w.fee AND e.released = 0
          WHEN w.status IN ('failed', 'cancelled')
              THEN e.paid = 0 AND e.fee_paid = 0 AND e.released = w.amount + w.fee
          ELSE e.paid = 0 AND e.fee_paid = 0 AND e.released = 0
      END)
