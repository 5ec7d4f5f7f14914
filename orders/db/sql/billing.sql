-- Named queries of billing. Each block starts with `-- name --`; psycopg named placeholders.

-- ensure_wallet --
INSERT INTO wallets (site, user_id, currency) VALUES (%(site)s, %(user_id)s, %(currency)s)
ON CONFLICT DO NOTHING

-- apply_to_wallet --
-- Locks the wallet row. A change that would overdraw (unless %(overdraft)s: money of a paid
-- order given back under the allow policy) or take more from the hold than it has matches no
-- row and changes nothing. A wallet is flagged overdrawn exactly while it is negative.
UPDATE wallets SET balance = balance + %(amount)s, held = held + %(held)s,
                   overdrawn = balance + %(amount)s < 0, updated_at = now()
WHERE site = %(site)s AND user_id = %(user_id)s AND currency = %(currency)s
  AND (%(amount)s >= 0 OR balance + %(amount)s >= 0 OR %(overdraft)s)
  AND held + %(held)s >= 0
RETURNING balance, held, overdrawn

-- get_wallet --
SELECT * FROM wallets
WHERE site = %(site)s AND user_id = %(user_id)s AND currency = %(currency)s

-- list_wallets --
SELECT * FROM wallets WHERE site = %(site)s AND user_id = %(user_id)s ORDER BY currency

-- insert_entry --
INSERT INTO wallet_entries (
    site, user_id, currency, amount, balance_after, held_amount, held_after, kind, order_id,
    idempotency_key, description
) VALUES (
    %(site)s, %(user_id)s, %(currency)s, %(amount)s, %(balance_after)s, %(held)s,
    %(held_after)s, %(kind)s, %(order_id)s, %(key)s, %(description)s
)
RETURNING *

-- entry_by_key --
SELECT * FROM wallet_entries WHERE site = %(site)s AND idempotency_key = %(key)s

-- entry_by_order --
SELECT * FROM wallet_entries
WHERE order_id = %(order_id)s AND kind = %(kind)s AND user_id = %(user_id)s

-- history --
-- Newest first; the cursor is the last id of the previous page.
SELECT * FROM wallet_entries
WHERE site = %(site)s AND user_id = %(user_id)s
  AND (%(currency)s::text IS NULL OR currency = %(currency)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s

-- referral_chain --
-- The inviters of a user, nearest first, up to %(levels)s levels; stops at a cycle.
WITH RECURSIVE chain (user_id, level, seen) AS (
    SELECT r.invited_by, 1, ARRAY[r.user_id, r.invited_by]
    FROM referrals r WHERE r.site = %(site)s AND r.user_id = %(user_id)s
    UNION ALL
    SELECT r.invited_by, c.level + 1, c.seen || r.invited_by
    FROM chain c JOIN referrals r ON r.site = %(site)s AND r.user_id = c.user_id
    WHERE c.level < %(levels)s AND NOT r.invited_by = ANY(c.seen)
)
SELECT user_id, level FROM chain ORDER BY level

-- insert_referral --
INSERT INTO referrals (site, user_id, invited_by) VALUES (%(site)s, %(user_id)s, %(invited_by)s)
ON CONFLICT (site, user_id) DO NOTHING
RETURNING *

-- get_referral --
SELECT * FROM referrals WHERE site = %(site)s AND user_id = %(user_id)s

-- insert_outbox --
-- No URL yet: each attempt goes to the site's webhook of the moment (get_outbox).
INSERT INTO billing_outbox (id, order_id, event_type, body, next_attempt_at, give_up_at)
VALUES (%(id)s, %(order_id)s, %(event_type)s, %(body)s, now(), now() + %(max_age)s)
ON CONFLICT (order_id, event_type) WHERE transfer_id IS NULL DO NOTHING
RETURNING id

-- notify_outbox --
SELECT pg_notify('paydispatch_orders', 'billing')

-- claim_outbox --
-- Like claim_due for orders: a claimed event is due again when its lease ends.
WITH due AS (
    SELECT id FROM billing_outbox
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE billing_outbox b
SET next_attempt_at = now() + %(lease)s, lease_token = %(token)s
FROM due
WHERE b.id = due.id
RETURNING b.id, b.lease_token

-- get_outbox --
-- The event with its site's webhook; the previous secret only while its rotation lasts.
SELECT b.*, o.site, w.url AS site_url, w.secret,
       CASE WHEN w.previous_until > now() THEN w.previous_secret END AS previous_secret
FROM billing_outbox b
JOIN orders o ON o.id = b.order_id
LEFT JOIN site_webhooks w ON w.site = o.site
WHERE b.id = %(id)s

-- outbox_delivered --
UPDATE billing_outbox
SET status = 'delivered', next_attempt_at = NULL, lease_token = NULL, delivered_at = now(),
    attempts = attempts + 1, last_status = %(last_status)s, last_error = NULL, url = %(url)s
WHERE id = %(id)s AND lease_token = %(token)s AND status = 'pending'
RETURNING id

-- outbox_retry --
UPDATE billing_outbox
SET next_attempt_at = now() + %(delay)s, lease_token = NULL, attempts = attempts + 1,
    last_status = %(last_status)s, last_error = %(last_error)s, url = coalesce(%(url)s, url)
WHERE id = %(id)s AND lease_token = %(token)s AND status = 'pending'
RETURNING id

-- outbox_park --
UPDATE billing_outbox
SET status = 'parked', next_attempt_at = NULL, lease_token = NULL, parked_at = now(),
    attempts = attempts + 1, last_status = %(last_status)s, last_error = %(last_error)s,
    url = coalesce(%(url)s, url)
WHERE id = %(id)s AND lease_token = %(token)s AND status = 'pending'
RETURNING id

-- outbox_replay --
-- Parked events (all, or the listed ones) get a new delivery window.
UPDATE billing_outbox
SET status = 'pending', next_attempt_at = now(), parked_at = NULL,
    give_up_at = now() + %(max_age)s
WHERE status = 'parked' AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]))
RETURNING id

-- outbox_stats --
SELECT count(*) FILTER (WHERE status = 'pending') AS backlog,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')) AS oldest,
       count(*) FILTER (WHERE status = 'parked') AS parked
FROM billing_outbox WHERE status IN ('pending', 'parked')

-- set_site_webhook --
-- A new site gets the secret given; a known one keeps its secret and takes the new URL.
INSERT INTO site_webhooks (site, url, secret) VALUES (%(site)s, %(url)s, %(secret)s)
ON CONFLICT (site) DO UPDATE SET url = EXCLUDED.url, updated_at = now()
RETURNING site, url, previous_until, created_at, updated_at, (xmax = 0) AS created

-- rotate_site_secret --
-- The new secret signs from now on; the old one signs too until the overlap ends (none: at once).
UPDATE site_webhooks
SET previous_secret = CASE WHEN %(overlap)s::interval > interval '0' THEN secret END,
    previous_until = CASE WHEN %(overlap)s::interval > interval '0'
                          THEN now() + %(overlap)s::interval END,
    secret = %(secret)s,
    updated_at = now()
WHERE site = %(site)s
RETURNING site, url, previous_until, created_at, updated_at

-- list_site_webhooks --
SELECT site, url, previous_until, created_at, updated_at FROM site_webhooks
WHERE %(site)s::text IS NULL OR site = %(site)s
ORDER BY site

-- delete_site_webhook --
DELETE FROM site_webhooks WHERE site = %(site)s RETURNING site

-- lock_wallet --
-- The wallet row under its lock, for a change decided on its balance.
SELECT * FROM wallets
WHERE site = %(site)s AND user_id = %(user_id)s AND currency = %(currency)s
FOR UPDATE

-- order_refund_entries --
-- What a refunded order's ledger says: its top-up, its bonuses, what refunds took back
-- (from the balance or from a hold) and what bonus reversals took back, per user and currency.
SELECT kind, user_id, currency, sum(amount) AS amount, sum(held_amount) AS held_amount
FROM wallet_entries
WHERE order_id = %(order_id)s
  AND kind IN ('topup', 'cashback', 'referral', 'refund', 'bonus_reversal')
GROUP BY kind, user_id, currency
ORDER BY kind, user_id, currency

-- insert_transfer_outbox --
-- One event of a type per transfer (a refund's); no URL yet, like insert_outbox.
INSERT INTO billing_outbox (id, order_id, transfer_id, event_type, body, next_attempt_at,
                            give_up_at)
VALUES (%(id)s, %(order_id)s, %(transfer_id)s, %(event_type)s, %(body)s, now(),
        now() + %(max_age)s)
ON CONFLICT (transfer_id, event_type) WHERE transfer_id IS NOT NULL DO NOTHING
RETURNING id
