-- paydispatch: the whole database. This file is the source of truth for the schema;
-- `paydispatch db init` applies it to an empty database, and orders/migrations/ must reach
-- the same result step by step (tests/integration/test_schema.py compares them).
-- Names are unqualified on purpose: the schema lands in the first schema on search_path.

CREATE TABLE schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- The order table is both the record and the queue.
CREATE TABLE orders (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- A short integer reference for payment systems that want one (Robokassa's InvId).
    number          bigint GENERATED ALWAYS AS IDENTITY,
    site            text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    site_ref        text CHECK (length(site_ref) BETWEEN 1 AND 128),
    user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    adapter         text NOT NULL CHECK (length(adapter) BETWEEN 1 AND 64),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    return_url      text CHECK (length(return_url) <= 2048),
    metadata        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    status          text NOT NULL DEFAULT 'new' CHECK (status IN (
                        'new', 'submitting', 'awaiting_payment', 'paid', 'rejected',
                        'expired', 'cancelled', 'failed', 'needs_review')),
    psp_id          text,
    pay_url         text,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    polls           integer NOT NULL DEFAULT 0 CHECK (polls >= 0),
    -- When the dispatcher should look next; NULL once nothing is left to do. A claim moves it
    -- to the end of the lease, so an abandoned lease makes the row due again by itself.
    next_run_at     timestamptz,
    lease_until     timestamptz,
    lease_token     uuid,
    expires_at      timestamptz NOT NULL,
    last_error      text,
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- sha256 of the create request, to tell an honest replay from a reused key.
    request_hash    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz,
    CONSTRAINT orders_number_key UNIQUE (number),
    CONSTRAINT orders_site_ref_key UNIQUE (site, site_ref),
    CONSTRAINT orders_idempotency_key_key UNIQUE (site, idempotency_key),
    CONSTRAINT orders_psp_id_key UNIQUE (adapter, psp_id),
    CONSTRAINT orders_paid_at_check CHECK (status <> 'paid' OR paid_at IS NOT NULL)
);

-- Due work: only rows with something left to do are in this index, so a sweep costs the same
-- whether the table holds a thousand finished orders or a hundred million.
CREATE INDEX orders_due_idx ON orders (next_run_at) WHERE next_run_at IS NOT NULL;
-- Listing a site's orders newest first (keyset pagination on created_at, id).
CREATE INDEX orders_site_created_idx ON orders (site, created_at DESC, id DESC);
CREATE INDEX orders_site_user_idx ON orders (site, user_id, created_at DESC);

-- One row per status change, written in the transaction that makes the change.
CREATE TABLE order_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    uuid NOT NULL REFERENCES orders (id),
    from_status text,
    to_status   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX order_events_order_idx ON order_events (order_id, id);

-- The allowed moves of DESIGN.md section 3; a trigger refuses any other, whoever writes.
CREATE TABLE order_transitions (
    from_status text NOT NULL,
    to_status   text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO order_transitions (from_status, to_status) VALUES
    ('new', 'submitting'), ('new', 'cancelled'),
    ('submitting', 'awaiting_payment'), ('submitting', 'new'), ('submitting', 'failed'),
    ('submitting', 'needs_review'),
    ('awaiting_payment', 'paid'), ('awaiting_payment', 'rejected'),
    ('awaiting_payment', 'expired'), ('awaiting_payment', 'cancelled'),
    ('awaiting_payment', 'needs_review'),
    ('rejected', 'paid'), ('expired', 'paid'), ('cancelled', 'paid'),
    ('needs_review', 'paid'), ('needs_review', 'rejected');

CREATE FUNCTION orders_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM order_transitions t
        WHERE t.from_status = OLD.status AND t.to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'order % cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_check_transition
    BEFORE UPDATE OF status ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_check_transition();

-- Site API keys: only a hash is stored; the key is shown once, by `paydispatch keys create`.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site         text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    -- The key's public first part, to find the row without scanning hashes.
    prefix       text NOT NULL,
    key_hash     text NOT NULL,
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_prefix_key UNIQUE (prefix)
);
CREATE INDEX api_keys_site_idx ON api_keys (site);

INSERT INTO schema_version (version, description) VALUES (1, 'orders, order_events, transitions');
INSERT INTO schema_version (version, description) VALUES (2, 'api keys');
