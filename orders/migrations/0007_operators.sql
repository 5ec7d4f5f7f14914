-- Issue #16: the operators' web console (/console/).
--
-- Operators are people, with accounts of their own, separate from the sites' API keys: only a
-- scrypt hash of each password is stored (`paydispatch operators add NAME` shows it once). A
-- login opens a session; only a SHA-256 of its random cookie token is stored, with the session's
-- CSRF token. Every action taken in the console is recorded in operator_actions with who and
-- why; the table is append-only, like the wallet ledger.

CREATE TABLE operators (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    disabled_at   timestamptz
);

CREATE TABLE operator_sessions (
    token_hash text PRIMARY KEY,
    operator   text NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    csrf_token text NOT NULL CHECK (length(csrf_token) >= 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX operator_sessions_operator_idx ON operator_sessions (operator);

CREATE TABLE operator_actions (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operator text NOT NULL,
    action   text NOT NULL CHECK (action IN ('resolve', 'replay')),
    order_id uuid REFERENCES orders (id),
    target   text NOT NULL CHECK (length(target) BETWEEN 1 AND 200),
    reason   text NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    detail   jsonb NOT NULL DEFAULT '{}',
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operator_actions_order_idx ON operator_actions (order_id, id)
    WHERE order_id IS NOT NULL;

CREATE FUNCTION operator_actions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator_actions is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER operator_actions_append_only
    BEFORE UPDATE OR DELETE ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION operator_actions_append_only();

INSERT INTO schema_version (version, description) VALUES (7, 'operators and their console');
