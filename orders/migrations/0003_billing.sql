-- Wallets, the ledger, referrals and the webhook outbox.

-- Billing (DESIGN.md section 7). Wallets are per site: a site's user ids are its own. One
-- balance per (site, user, currency); the loyalty balance uses the currency 'points', lower
-- case so it can never collide with an ISO 4217 code.
CREATE TABLE wallets (
    site       text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    user_id    text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    currency   text NOT NULL CHECK (currency ~ '^[A-Z]{3}$' OR currency = 'points'),
    balance    bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, user_id, currency)
);

-- The ledger: append-only (a trigger refuses UPDATE and DELETE). Each row carries the balance
-- it left, so `paydispatch wallet audit` can replay every wallet from its entries.
CREATE TABLE wallet_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site            text NOT NULL,
    user_id         text NOT NULL,
    currency        text NOT NULL,
    amount          bigint NOT NULL CHECK (amount <> 0),
    balance_after   bigint NOT NULL CHECK (balance_after >= 0),
    kind            text NOT NULL CHECK (kind IN (
                        'topup', 'adjustment', 'debit', 'cashback', 'referral', 'refund')),
    order_id        uuid REFERENCES orders (id),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT wallet_entries_wallet_fkey FOREIGN KEY (site, user_id, currency)
        REFERENCES wallets (site, user_id, currency),
    CONSTRAINT wallet_entries_idempotency_key_key UNIQUE (site, idempotency_key),
    CONSTRAINT wallet_entries_sign_check CHECK (
        (kind IN ('topup', 'cashback', 'referral') AND amount > 0)
        OR (kind IN ('debit', 'refund') AND amount < 0)
        OR kind = 'adjustment'),
    CONSTRAINT wallet_entries_order_check CHECK (
        (kind IN ('topup', 'cashback', 'referral', 'refund')) = (order_id IS NOT NULL))
);
-- Invariant 3: a second top-up credit for the same order cannot exist.
CREATE UNIQUE INDEX wallet_entries_topup_once_idx ON wallet_entries (order_id)
    WHERE kind = 'topup';
-- Bonuses: one per order, kind and beneficiary.
CREATE UNIQUE INDEX wallet_entries_bonus_once_idx ON wallet_entries (order_id, kind, user_id)
    WHERE kind IN ('cashback', 'referral');
-- History, newest first (keyset on id).
CREATE INDEX wallet_entries_wallet_idx ON wallet_entries (site, user_id, id DESC);

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
    url             text NOT NULL CHECK (length(url) <= 2048),
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
    CONSTRAINT billing_outbox_event_key UNIQUE (order_id, event_type),
    CONSTRAINT billing_outbox_pending_check CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
-- Due deliveries and the backlog metrics: only undelivered rows are in these indexes.
CREATE INDEX billing_outbox_due_idx ON billing_outbox (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX billing_outbox_parked_idx ON billing_outbox (parked_at) WHERE status = 'parked';

INSERT INTO schema_version (version, description) VALUES (3, 'billing');
