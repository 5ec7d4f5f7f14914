-- Issue #14: wallet withdrawals. A user asks to take balance out; the request holds the amount
-- and the fee in the wallet (dispatcher.billing.withdrawals) and, once approved (at once when
-- the site needs no approval), is paid out by a payout transfer. The payout's final state
-- settles the hold (succeeded) or releases it (failed, cancelled), through the transfer hook.
--
-- Statuses: awaiting_approval -> approved (the payout transfer exists, not yet sent) -> sent
-- (the worker began sending it: set by the trigger below) -> succeeded | failed; cancelled from
-- awaiting_approval or approved only (never once the payout may have left).

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

INSERT INTO schema_version (version, description) VALUES (11, 'withdrawals');
