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
    -- Consecutive failed steps; retries back off by this count, a step that ends well resets it.
    errors          integer NOT NULL DEFAULT 0 CHECK (errors >= 0),
    -- The order a buyer switched away from (to another payment system) to make this one, and
    -- how many switches deep it is. An order is replaced at most once, and a chain of switches
    -- is at most 3 long (orders.model.MAX_SWITCH_DEPTH): a buyer cannot multiply invoices.
    replaces        uuid,
    switch_depth    smallint NOT NULL DEFAULT 0,
    -- Issue #14: what the order's refunds gave back (succeeded) and what they take (requested,
    -- being sent, pending, in review, succeeded), kept by the transfers_refund_totals trigger.
    -- The CHECK is the database's promise that refunds never exceed what was paid.
    refunded_amount bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    refund_reserved bigint NOT NULL DEFAULT 0,
    -- Issue #14 (migration 0012): when a "refund check" (the worker reads the payment's status
    -- for refunds made at the payment system) is due, NULL for none; and the last one, so hints
    -- cost at most one status read per order per quiet interval.
    refund_check_at timestamptz,
    refund_checked_at timestamptz,
    -- Issue #14 (migration 0013): the payment system's id of the money taken (Stripe's
    -- PaymentIntent, PayPal's capture, Robokassa's OpKey), stored when the order becomes paid;
    -- refunds and chargebacks reported by that id are matched to the order with it.
    psp_payment_id  text,
    CONSTRAINT orders_refund_reserved_check
        CHECK (refund_reserved <= amount AND refund_reserved >= refunded_amount),
    CONSTRAINT orders_number_key UNIQUE (number),
    CONSTRAINT orders_site_ref_key UNIQUE (site, site_ref),
    CONSTRAINT orders_idempotency_key_key UNIQUE (site, idempotency_key),
    CONSTRAINT orders_psp_id_key UNIQUE (adapter, psp_id),
    CONSTRAINT orders_paid_at_check CHECK (status <> 'paid' OR paid_at IS NOT NULL),
    CONSTRAINT orders_replaces_fkey FOREIGN KEY (replaces) REFERENCES orders (id),
    CONSTRAINT orders_replaces_key UNIQUE (replaces),
    CONSTRAINT orders_switch_depth_check
        CHECK (switch_depth BETWEEN 0 AND 3 AND (replaces IS NULL) = (switch_depth = 0))
);

-- Due work: only rows with something left to do are in this index, so a sweep costs the same
-- whether the table holds a thousand finished orders or a hundred million.
CREATE INDEX orders_due_idx ON orders (next_run_at) WHERE next_run_at IS NOT NULL;
-- Active orders by deadline: the sweeper's count of orders past it reads only these.
-- Due refund checks only (migration 0012): the sweeper's claim reads this small index.
CREATE INDEX orders_refund_check_idx ON orders (refund_check_at) WHERE refund_check_at IS NOT NULL;
-- A payment system's payment id names one order (only orders that have one are in the index, so a
-- create costs nothing more).
CREATE UNIQUE INDEX orders_psp_payment_id_idx ON orders (adapter, psp_payment_id)
    WHERE psp_payment_id IS NOT NULL;
CREATE INDEX orders_active_expires_idx ON orders (expires_at)
    WHERE status IN ('new', 'submitting', 'awaiting_payment');
-- A long table would be vacuumed only once a fifth of it changed (the default scale factor):
-- by then the few active rows, rewritten by every claim and step, leave hundreds of thousands
-- of dead versions in the due index, which the claim and the gauges step over. Vacuum by the
-- number of dead rows instead, whatever the table's length.
ALTER TABLE orders SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
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
    detail      jsonb NOT NULL DEFAULT '{}',
    -- The refund this event records (issue #14; its foreign key follows the transfers table).
    transfer_id uuid
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
    ('new', 'expired'), ('submitting', 'expired'),
    ('rejected', 'paid'), ('expired', 'paid'), ('cancelled', 'paid'),
    ('rejected', 'needs_review'), ('expired', 'needs_review'), ('cancelled', 'needs_review'),
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

-- Orders per adapter and status, counted as they change (issue #15): a gauge that counted the
-- table would grow with it. Statement-level triggers append one signed row per (adapter,
-- status) a statement changed; the sweeper folds the deltas into order_counts every stats
-- interval (dispatcher/sweeper/dbstats.py). Appending never waits for another transaction, where one
-- counter row per (adapter, status) would queue every create of an adapter behind the previous
-- one's commit. A read sums both tables in one snapshot, so it is exact.
CREATE TABLE order_counts (
    adapter text NOT NULL,
    status  text NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (adapter, status)
);

CREATE TABLE order_count_deltas (
    adapter text NOT NULL,
    status  text NOT NULL,
    n       bigint NOT NULL
);

CREATE FUNCTION orders_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (adapter, status, n)
    SELECT adapter, status, count(*) FROM inserted_orders GROUP BY adapter, status;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (adapter, status, n)
    SELECT adapter, status, sum(n) FROM (
        SELECT adapter, status, 1 AS n FROM new_orders
        UNION ALL
        SELECT adapter, status, -1 AS n FROM old_orders
    ) AS moved
    GROUP BY adapter, status
    HAVING sum(n) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (adapter, status, n)
    SELECT adapter, status, -count(*) FROM deleted_orders GROUP BY adapter, status;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM order_count_deltas;
    DELETE FROM order_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_count_inserted
    AFTER INSERT ON orders REFERENCING NEW TABLE AS inserted_orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_inserted();
CREATE TRIGGER orders_count_updated
    AFTER UPDATE ON orders REFERENCING OLD TABLE AS old_orders NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_updated();
CREATE TRIGGER orders_count_deleted
    AFTER DELETE ON orders REFERENCING OLD TABLE AS deleted_orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_deleted();
CREATE TRIGGER orders_count_truncated
    AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_truncated();

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

-- Every API process caches verified keys: a revoked (or deleted, or changed) key is announced,
-- so each drops it at once (issue #12, item 5).
CREATE FUNCTION api_keys_announce_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paydispatch_api_keys', OLD.prefix);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_announce_revoked
    AFTER UPDATE OF revoked_at, key_hash, site, prefix OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_announce_revoked();

-- Billing (DESIGN.md section 7). Wallets are per site: a site's user ids are its own. One
-- balance per (site, user, currency); the loyalty balance uses the currency 'points', lower
-- case so it can never collide with an ISO 4217 code.
CREATE TABLE wallets (
    site       text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    user_id    text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    currency   text NOT NULL CHECK (currency ~ '^[A-Z]{3}$' OR currency = 'points'),
    balance    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Issue #14: what holds keep out of the balance (a withdrawal, a refund being sent), and
    -- the flag of a balance a refund took below zero (policy `allow`; migration 0010).
    held       bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    overdrawn  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (site, user_id, currency),
    CONSTRAINT wallets_balance_check CHECK (balance >= 0 OR overdrawn),
    CONSTRAINT wallets_overdrawn_check CHECK (NOT overdrawn OR balance < 0)
);

-- The ledger: append-only (a trigger refuses UPDATE and DELETE). Each row carries the balance
-- it left, so `paydispatch wallet audit` can replay every wallet from its entries.
CREATE TABLE wallet_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site            text NOT NULL,
    user_id         text NOT NULL,
    currency        text NOT NULL,
    amount          bigint NOT NULL,
    balance_after   bigint NOT NULL,
    kind            text NOT NULL,
    order_id        uuid REFERENCES orders (id),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- The change of the wallet's hold and what it left (issue #14): a hold moves balance into
    -- held, a release moves it back, a settlement (withdrawal, fee, held refund) takes it out.
    held_amount     bigint NOT NULL DEFAULT 0,
    held_after      bigint NOT NULL DEFAULT 0 CHECK (held_after >= 0),
    CONSTRAINT wallet_entries_wallet_fkey FOREIGN KEY (site, user_id, currency)
        REFERENCES wallets (site, user_id, currency),
    CONSTRAINT wallet_entries_idempotency_key_key UNIQUE (site, idempotency_key),
    CONSTRAINT wallet_entries_amount_check CHECK (amount <> 0 OR held_amount <> 0),
    -- Only money of a paid order given back may leave a balance negative (policy `allow`).
    CONSTRAINT wallet_entries_balance_after_check CHECK (
        balance_after >= 0 OR kind IN ('refund', 'bonus_reversal') OR amount > 0),
    CONSTRAINT wallet_entries_kind_check CHECK (kind IN (
        'topup', 'adjustment', 'debit', 'cashback', 'referral', 'refund',
        'hold', 'release', 'withdrawal', 'fee', 'bonus_reversal', 'refund_reversal')),
    CONSTRAINT wallet_entries_sign_check CHECK (
        (kind IN ('topup', 'cashback', 'referral', 'refund_reversal') AND amount > 0
         AND held_amount = 0)
        OR (kind IN ('debit', 'bonus_reversal') AND amount < 0 AND held_amount = 0)
        OR (kind = 'refund' AND ((amount < 0 AND held_amount = 0)
                                 OR (amount = 0 AND held_amount < 0)))
        OR (kind = 'hold' AND amount < 0 AND held_amount = -amount)
        OR (kind = 'release' AND amount > 0 AND held_amount = -amount)
        OR (kind IN ('withdrawal', 'fee') AND amount = 0 AND held_amount < 0)
        OR (kind = 'adjustment' AND held_amount = 0)),
    CONSTRAINT wallet_entries_order_check CHECK (
        (kind IN ('topup', 'cashback', 'referral', 'refund', 'bonus_reversal', 'refund_reversal'))
        = (order_id IS NOT NULL))
);
-- Invariant 3: a second top-up credit for the same order cannot exist.
CREATE UNIQUE INDEX wallet_entries_topup_once_idx ON wallet_entries (order_id)
    WHERE kind = 'topup';
-- Bonuses: one per order, kind and beneficiary.
CREATE UNIQUE INDEX wallet_entries_bonus_once_idx ON wallet_entries (order_id, kind, user_id)
    WHERE kind IN ('cashback', 'referral');
-- History, newest first (keyset on id).
CREATE INDEX wallet_entries_wallet_idx ON wallet_entries (site, user_id, id DESC);
-- Deleting an order (`paydispatch db archive`) checks that no entry refers to it.
CREATE INDEX wallet_entries_order_idx ON wallet_entries (order_id) WHERE order_id IS NOT NULL;

CREATE FUNCTION wallet_entries_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'wallet_entries is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER wallet_entries_append_only
    BEFORE UPDATE OR DELETE ON wallet_entries
    FOR EACH ROW EXECUTE FUNCTION wallet_entries_append_only();

-- Who invited whom, per site, for the referral bonus.
CREATE TABLE referrals (
    site       text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    user_id    text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    invited_by text NOT NULL CHECK (length(invited_by) BETWEEN 1 AND 128),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, user_id),
    CONSTRAINT referrals_not_self_check CHECK (user_id <> invited_by)
);

-- The webhook hook's outbox: written in the paid transaction, delivered by the `deliver` actor.
-- `body` is the exact JSON sent on every attempt (the signature covers it), `id` its event id.
CREATE TABLE billing_outbox (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id        uuid NOT NULL REFERENCES orders (id),
    event_type      text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    -- Where the last attempt went: a delivery goes to the site's URL of the moment.
    url             text CHECK (length(url) <= 2048),
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'delivered', 'parked')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz,
    lease_token     uuid,
    give_up_at      timestamptz NOT NULL,
    last_error      text,
    last_status     integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    parked_at       timestamptz,
    -- A refund's event names its transfer (issue #14): one event of a type per transfer.
    transfer_id     uuid,
    CONSTRAINT billing_outbox_pending_check CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
-- Due deliveries and the backlog metrics: only undelivered rows are in these indexes.
-- One event of a type per order (order.paid), and one per transfer (refund).
CREATE UNIQUE INDEX billing_outbox_event_key ON billing_outbox (order_id, event_type)
    WHERE transfer_id IS NULL;
CREATE UNIQUE INDEX billing_outbox_transfer_event_key ON billing_outbox (transfer_id, event_type)
    WHERE transfer_id IS NOT NULL;
CREATE INDEX billing_outbox_due_idx ON billing_outbox (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX billing_outbox_parked_idx ON billing_outbox (parked_at) WHERE status = 'parked';

-- Each site's billing webhook (issue #12, item 6), set with `paydispatch sites`. During a secret
-- rotation the previous secret signs every delivery too, until previous_until.
CREATE TABLE site_webhooks (
    site            text PRIMARY KEY CHECK (length(site) BETWEEN 1 AND 64),
    url             text NOT NULL CHECK (url ~ '^https?://[^[:space:][:cntrl:]]+$'
                                         AND length(url) <= 2048),
    secret          text NOT NULL CHECK (length(secret) >= 32),
    previous_secret text CHECK (length(previous_secret) >= 32),
    previous_until  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT site_webhooks_previous_check
        CHECK ((previous_secret IS NULL) = (previous_until IS NULL))
);

-- The operators' web console (issue #16): people with accounts of their own, separate from the
-- sites' API keys. Only a scrypt hash of a password and a SHA-256 of a session's cookie token
-- are stored. Every console action is recorded with who and why; that record is append-only.
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
    status          text NOT NULL DEFAULT 'requested',
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
    -- Migration 0014: a refund a dispute took (a chargeback); only such a refund is `reversed`
    -- when the payment system gives the money back (a dispute won).
    chargeback      boolean NOT NULL DEFAULT false,
    CONSTRAINT transfers_idempotency_key_key UNIQUE (site, kind, idempotency_key),
    CONSTRAINT transfers_psp_transfer_id_key UNIQUE (adapter, kind, psp_transfer_id),
    CONSTRAINT transfers_link_check CHECK (
        (kind = 'refund' AND order_id IS NOT NULL AND withdrawal_id IS NULL)
        OR (kind = 'payout' AND order_id IS NULL)),
    CONSTRAINT transfers_status_check CHECK (status IN (
        'requested', 'submitting', 'pending', 'succeeded', 'failed', 'cancelled', 'needs_review',
        'reversed')),
    CONSTRAINT transfers_settled_check
        CHECK ((status IN ('succeeded', 'failed', 'cancelled', 'reversed')) = (settled_at IS NOT NULL)),
    CONSTRAINT transfers_reversed_check
        CHECK (status <> 'reversed' OR (kind = 'refund' AND chargeback))
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
    ('needs_review', 'succeeded'), ('needs_review', 'failed'),
    -- A chargeback given back (a dispute won; migration 0014).
    ('succeeded', 'reversed');

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

-- Wallet withdrawals (issue #14): the amount and the fee are held at request; the payout
-- transfer's final state settles the hold (succeeded) or releases it (failed, cancelled).
-- awaiting_approval -> approved (payout exists, unsent) -> sent -> succeeded | failed;
-- cancelled from awaiting_approval or approved only.
CREATE TABLE withdrawals (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site            text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Minor units: what the user receives, and what paydispatch keeps (both held at request).
    amount          bigint NOT NULL CHECK (amount > 0),
    fee             bigint NOT NULL DEFAULT 0 CHECK (fee >= 0),
    adapter         text NOT NULL CHECK (length(adapter) BETWEEN 1 AND 64),
    destination     jsonb NOT NULL CHECK (jsonb_typeof(destination) = 'object'),
    status          text NOT NULL CHECK (status IN (
                        'awaiting_approval', 'approved', 'sent', 'succeeded', 'failed',
                        'cancelled')),
    transfer_id     uuid UNIQUE REFERENCES transfers (id),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- sha256 of the request, to tell an honest replay from a reused key.
    request_hash    text NOT NULL,
    requested_by    text NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 200),
    approved_by     text CHECK (length(approved_by) BETWEEN 1 AND 200),
    -- Why it failed or was cancelled (and by whom).
    reason          text NOT NULL DEFAULT '' CHECK (length(reason) <= 1000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT withdrawals_idempotency_key_key UNIQUE (site, idempotency_key),
    -- A payout exists from approval on; nothing is ever sent without one.
    CONSTRAINT withdrawals_transfer_check CHECK (
        (status = 'awaiting_approval' AND transfer_id IS NULL)
        OR (status IN ('approved', 'sent', 'succeeded', 'failed') AND transfer_id IS NOT NULL)
        OR status = 'cancelled')
);
-- The daily limit's sum and a user's list: newest first per wallet.
CREATE INDEX withdrawals_user_idx ON withdrawals (site, user_id, currency, created_at DESC);
-- Open withdrawals only (the held gauge, the stuck alert, the operators' list).
CREATE INDEX withdrawals_open_idx ON withdrawals (status, created_at)
    WHERE status IN ('awaiting_approval', 'approved', 'sent');

ALTER TABLE transfers ADD CONSTRAINT transfers_withdrawal_id_fkey
    FOREIGN KEY (withdrawal_id) REFERENCES withdrawals (id);

-- A payout the worker begins to send can no longer be cancelled: its withdrawal is `sent`.
-- One handed back unsent (submitting -> requested: nothing left, e.g. its breaker was open)
-- makes its withdrawal `approved`, cancellable, again.
CREATE FUNCTION transfers_withdrawal_sent() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'submitting' THEN
        UPDATE withdrawals SET status = 'sent', updated_at = now()
        WHERE id = NEW.withdrawal_id AND status = 'approved';
    ELSE
        UPDATE withdrawals SET status = 'approved', updated_at = now()
        WHERE id = NEW.withdrawal_id AND status = 'sent';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER transfers_withdrawal_sent
    AFTER UPDATE OF status ON transfers
    FOR EACH ROW
    WHEN (NEW.kind = 'payout' AND (
        (OLD.status = 'requested' AND NEW.status = 'submitting')
        OR (OLD.status = 'submitting' AND NEW.status = 'requested')))
    EXECUTE FUNCTION transfers_withdrawal_sent();

-- Retention (issue #15): `paydispatch db archive` moves finished orders that nothing refers to,
-- older than the retention, here with their events (orders/archive.py).
CREATE TABLE orders_archive (LIKE orders, archived_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE orders_archive ADD PRIMARY KEY (id);

CREATE TABLE order_events_archive (LIKE order_events);
ALTER TABLE order_events_archive ADD PRIMARY KEY (id);
CREATE INDEX order_events_archive_order_idx ON order_events_archive (order_id, id);

INSERT INTO schema_version (version, description) VALUES (1, 'orders, order_events, transitions');
INSERT INTO schema_version (version, description) VALUES (2, 'api keys');
INSERT INTO schema_version (version, description) VALUES (3, 'billing');
INSERT INTO schema_version (version, description) VALUES (4, 'dispatch hardening');
INSERT INTO schema_version (version, description) VALUES (5, 'order switches');
INSERT INTO schema_version (version, description) VALUES (6, 'site webhooks, key revocation notices');
INSERT INTO schema_version (version, description) VALUES (7, 'operators and their console');
INSERT INTO schema_version (version, description) VALUES (8, 'order counts, archive');
INSERT INTO schema_version (version, description) VALUES (9, 'transfers: refunds and payouts');
INSERT INTO schema_version (version, description) VALUES (10, 'wallet holds, refund billing');
INSERT INTO schema_version (version, description) VALUES (11, 'withdrawals');
INSERT INTO schema_version (version, description) VALUES (12, 'refund checks');
INSERT INTO schema_version (version, description) VALUES (13, 'payment ids');
INSERT INTO schema_version (version, description) VALUES (14, 'chargeback reversals');
