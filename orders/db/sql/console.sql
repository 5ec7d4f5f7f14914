-- Named queries of the operators' console. Each block starts with `-- name --`.

-- insert_operator --
INSERT INTO operators (name, password_hash) VALUES (%(name)s, %(password_hash)s)
ON CONFLICT (name) DO NOTHING
RETURNING name

-- list_operators --
SELECT name, created_at, last_login_at, disabled_at FROM operators ORDER BY name

-- get_operator --
SELECT * FROM operators WHERE name = %(name)s

-- set_password --
UPDATE operators SET password_hash = %(password_hash)s
WHERE name = %(name)s AND disabled_at IS NULL
RETURNING name

-- disable_operator --
UPDATE operators SET disabled_at = now() WHERE name = %(name)s AND disabled_at IS NULL
RETURNING name

-- end_sessions_of --
DELETE FROM operator_sessions WHERE operator = %(name)s

-- purge_sessions --
DELETE FROM operator_sessions WHERE expires_at < now()

-- insert_session --
INSERT INTO operator_sessions (token_hash, operator, csrf_token, expires_at)
VALUES (%(token_hash)s, %(name)s, %(csrf_token)s, now() + %(ttl)s)

-- touch_login --
UPDATE operators SET last_login_at = now() WHERE name = %(name)s

-- find_session --
-- A live session of an operator who is still enabled.
SELECT s.operator, s.csrf_token FROM operator_sessions s
JOIN operators o ON o.name = s.operator
WHERE s.token_hash = %(token_hash)s AND s.expires_at > now() AND o.disabled_at IS NULL

-- end_session --
DELETE FROM operator_sessions WHERE token_hash = %(token_hash)s

-- insert_action --
INSERT INTO operator_actions (operator, action, order_id, target, reason, detail)
VALUES (%(operator)s, %(action)s, %(order_id)s, %(target)s, %(reason)s, %(detail)s)
RETURNING *

-- order_actions --
SELECT * FROM operator_actions WHERE order_id = %(order_id)s ORDER BY id

-- recent_actions --
SELECT * FROM operator_actions ORDER BY id DESC LIMIT %(limit)s

-- parked_webhooks --
-- Newest parked first (billing_outbox_parked_idx).
SELECT id, order_id, event_type, url, attempts, last_status, last_error, created_at, parked_at
FROM billing_outbox WHERE status = 'parked'
ORDER BY parked_at DESC
LIMIT %(limit)s

-- order_webhooks --
SELECT id, order_id, event_type, url, status, attempts, last_status, last_error, created_at,
       delivered_at, parked_at
FROM billing_outbox WHERE order_id = %(order_id)s
ORDER BY created_at
