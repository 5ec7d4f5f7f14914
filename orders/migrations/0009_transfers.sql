-- Issue #14: money going out. Refunds and payouts are rows of one table, `transfers`, claimed
-- and run like orders; each refund counts against its order in the two new order columns, kept
-- by a trigger, and orders_refund_reserved_check refuses a refund beyond what was paid. Every
-- transfer's status change is in transfer_events; a refund's also in order_events (transfer_id).

ALTER TABLE orders
    ADD COLUMN refunded_amount bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    ADD COLUMN refund_reserved bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT orders_refund_reserved_check
        CHECK (refund_reserved <= amount AND refund_reserved >= refunded_amount);
ALTER TABLE order_events ADD COLUMN transfer_id uuid;

-- The archive's tables are LIKE the live ones (NOT NULL, no defaults). PostgreSQL 18 names a
-- NOT NULL constraint and LIKE copies the live table's name: so do these.
ALTER TABLE orders_archive
    ADD COLUMN refunded_amount bigint CONSTRAINT orders_refunded_amount_not_null NOT NULL DEFAULT 0,
    ADD COLUMN refund_reserved bigint CONSTRAINT orders_refund_reserved_not_null NOT NULL DEFAULT 0;
ALTER TABLE orders_archive
    ALTER COLUMN refunded_amount DROP DEFAULT,
    ALTER COLUMN refund_reserved DROP DEFAULT;
ALTER TABLE order_events_archive ADD COLUMN transfer_id uuid;

-- Money going out (issue #14): refunds and payouts are the same dispatched work, rows of one
-- table claimed by the sweeper and run by the worker like orders (lease, next_run_at, errors).
CREATE TABLE transfers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind            text NOT NULL CHECK (kind IN ('refund', 'payout')),
    site            text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    adapter         text NOT NULL CHECK (length(adapter) BETWEEN 1 AND 64),
    user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status          text NOT NULL DEFAULT 'requested' CHECK (status IN (
                        'requested', 'submitting', 'pending', 'succeeded', 'failed',
                        'cancelled', 'needs_review')),
    order_id        uuid REFERENCES orders (id),
    -- The withdrawal a payout serves (its foreign key comes with the withdrawals table).
    withdrawal_id   uuid,
    origin          text NOT NULL CHECK (origin IN ('site', 'psp', 'operator', 'user')),
    reason          text NOT NULL DEFAULT '' CHECK (length(reason) <= 1000),
    requested_by    text NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 200),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- sha256 of the request, to tell an honest replay from a reused key.
    request_hash    text,
    -- The payment system's id of the refund or payout, once known.
    psp_transfer_id text,
    destination     jsonb CHECK (destination IS NULL OR jsonb_typeof(destination) = 'object'),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    errors          integer NOT NULL DEFAULT 0 CHECK (errors >= 0),
    last_error      text,
    next_run_at     timestamptz,
    lease_until     timestamptz,
    lease_token     uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    settled_at      timestamptz,
    CONSTRAINT transfers_idempotency_key_key UNIQUE (site, kind, idempotency_key),
    CONSTRAINT transfers_psp_transfer_id_key UNIQUE (adapter, kind, psp_transfer_id),
    CONSTRAINT transfers_link_check CHECK (
        (kind = 'refund' AND order_id IS NOT NULL AND withdrawal_id IS NULL)
        OR (kind = 'payout' AND order_id IS NULL)),
    CONSTRAINT transfers_settled_check
        CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (settled_at IS NOT NULL))
);
-- Due work, as orders_due_idx: only rows with something left to do.
CREATE INDEX transfers_due_idx ON transfers (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX transfers_order_idx ON transfers (order_id, created_at) WHERE order_id IS NOT NULL;
CREATE INDEX transfers_site_created_idx ON transfers (site, created_at DESC, id DESC);
ALTER TABLE transfers SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- Every status change of every transfer, written in the transaction that makes it (a refund's
-- also goes to order_events, see below).
CREATE TABLE transfer_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id uuid NOT NULL REFERENCES transfers (id),
    from_status text,
    to_status   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX transfer_events_transfer_idx ON transfer_events (transfer_id, id);

-- The allowed moves of a transfer (orders.model.TRANSFER_TRANSITIONS); a trigger refuses any
-- other, whoever writes.
CREATE TABLE transfer_transitions (
    from_status text NOT NULL,
    to_status   text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO transfer_transitions (from_status, to_status) VALUES
    ('requested', 'submitting'), ('requested', 'cancelled'),
    ('submitting', 'requested'),
    ('submitting', 'pending'), ('submitting', 'succeeded'), ('submitting', 'failed'),
    ('submitting', 'needs_review'),
    ('pending', 'succeeded'), ('pending', 'failed'), ('pending', 'needs_review'),
    ('needs_review', 'succeeded'), ('needs_review', 'failed');

CREATE FUNCTION transfers_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM transfer_transitions t
        WHERE t.from_status = OLD.status AND t.to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'transfer % cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.amount <> OLD.amount OR NEW.kind <> OLD.kind
       OR NEW.order_id IS DISTINCT FROM OLD.order_id THEN
        RAISE EXCEPTION 'transfer %: amount, kind and order never change', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER transfers_check_transition
    BEFORE UPDATE ON transfers
    FOR EACH ROW EXECUTE FUNCTION transfers_check_transition();

-- Refunds never exceed what was paid, in the database: each refund's amount counts in its
-- order's refund_reserved while it may still give money back (requested, submitting, pending,
-- needs_review, succeeded) and in refunded_amount once it did; orders_refund_reserved_check
-- refuses the insert that would take more than the order's amount. The update of the order's
-- row serialises concurrent refunds of one order. Only a paid order is refunded.
CREATE FUNCTION transfers_refund_totals() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    reserving CONSTANT text[] :=
        ARRAY['requested', 'submitting', 'pending', 'needs_review', 'succeeded'];
    reserved bigint := 0;
    refunded bigint := 0;
    order_status text;
    order_currency text;
BEGIN
    IF NEW.kind <> 'refund' THEN
        RETURN NULL;
    END IF;
    IF NEW.status = ANY(reserving) THEN
        reserved := NEW.amount;
    END IF;
    IF NEW.status = 'succeeded' THEN
        refunded := NEW.amount;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF OLD.status = ANY(reserving) THEN
            reserved := reserved - OLD.amount;
        END IF;
        IF OLD.status = 'succeeded' THEN
            refunded := refunded - OLD.amount;
        END IF;
    END IF;
    IF reserved = 0 AND refunded = 0 AND TG_OP = 'UPDATE' THEN
        RETURN NULL;
    END IF;
    UPDATE orders
    SET refund_reserved = refund_reserved + reserved,
        refunded_amount = refunded_amount + refunded
    WHERE id = NEW.order_id
    RETURNING status, currency INTO order_status, order_currency;
    IF TG_OP = 'INSERT' AND order_status IS DISTINCT FROM 'paid' THEN
        RAISE EXCEPTION 'order % is not paid (%): nothing to refund', NEW.order_id, order_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'transfers_refund_paid_check';
    END IF;
    IF TG_OP = 'INSERT' AND order_currency <> NEW.currency THEN
        RAISE EXCEPTION 'order % was paid in %, not %', NEW.order_id, order_currency, NEW.currency
            USING ERRCODE = 'check_violation', CONSTRAINT = 'transfers_refund_currency_check';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER transfers_refund_totals
    AFTER INSERT OR UPDATE OF status ON transfers
    FOR EACH ROW EXECUTE FUNCTION transfers_refund_totals();

-- A refund's status changes are recorded in its order's history too (issue #14): the row names
-- the transfer, and the order's status, which a refund never changes, is both from and to.
ALTER TABLE order_events ADD CONSTRAINT order_events_transfer_id_fkey
    FOREIGN KEY (transfer_id) REFERENCES transfers (id);

INSERT INTO schema_version (version, description) VALUES (9, 'transfers: refunds and payouts');
