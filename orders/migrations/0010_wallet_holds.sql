-- Issue #14: money going out of wallets. Holds (a withdrawal's amount and fee, or a refund's
-- amount under the refuse policy) move balance into `held` until they are settled (gone for
-- good) or released (back to the balance); each move is a ledger entry carrying both the change
-- of the balance (`amount`) and of the hold (`held_amount`), and what it left of each, so
-- `paydispatch wallet audit` replays balance AND held from the entries.
--
-- A refund may take a balance below zero only under the `allow` policy, and only through the
-- kinds that give money of a paid order back (`refund`, `bonus_reversal`); such a wallet is
-- flagged `overdrawn` while it is negative. Credits may leave it negative (they raise it).
--
-- The webhook outbox carries one `refund` event per refund transfer.

ALTER TABLE wallets
    DROP CONSTRAINT wallets_balance_check,
    ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    ADD COLUMN overdrawn boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT wallets_balance_check CHECK (balance >= 0 OR overdrawn),
    ADD CONSTRAINT wallets_overdrawn_check CHECK (NOT overdrawn OR balance < 0);

ALTER TABLE wallet_entries
    DROP CONSTRAINT wallet_entries_amount_check,
    DROP CONSTRAINT wallet_entries_balance_after_check,
    DROP CONSTRAINT wallet_entries_kind_check,
    DROP CONSTRAINT wallet_entries_sign_check,
    DROP CONSTRAINT wallet_entries_order_check,
    ADD COLUMN held_amount bigint NOT NULL DEFAULT 0,
    ADD COLUMN held_after bigint NOT NULL DEFAULT 0 CHECK (held_after >= 0),
    ADD CONSTRAINT wallet_entries_amount_check CHECK (amount <> 0 OR held_amount <> 0),
    ADD CONSTRAINT wallet_entries_balance_after_check CHECK (
        balance_after >= 0 OR kind IN ('refund', 'bonus_reversal') OR amount > 0),
    ADD CONSTRAINT wallet_entries_kind_check CHECK (kind IN (
        'topup', 'adjustment', 'debit', 'cashback', 'referral', 'refund',
        'hold', 'release', 'withdrawal', 'fee', 'bonus_reversal')),
    ADD CONSTRAINT wallet_entries_sign_check CHECK (
        (kind IN ('topup', 'cashback', 'referral') AND amount > 0 AND held_amount = 0)
        OR (kind IN ('debit', 'bonus_reversal') AND amount < 0 AND held_amount = 0)
        OR (kind = 'refund' AND ((amount < 0 AND held_amount = 0)
                                 OR (amount = 0 AND held_amount < 0)))
        OR (kind = 'hold' AND amount < 0 AND held_amount = -amount)
        OR (kind = 'release' AND amount > 0 AND held_amount = -amount)
        OR (kind IN ('withdrawal', 'fee') AND amount = 0 AND held_amount < 0)
        OR (kind = 'adjustment' AND held_amount = 0)),
    ADD CONSTRAINT wallet_entries_order_check CHECK (
        (kind IN ('topup', 'cashback', 'referral', 'refund', 'bonus_reversal'))
        = (order_id IS NOT NULL));

ALTER TABLE billing_outbox
    DROP CONSTRAINT billing_outbox_event_key,
    ADD COLUMN transfer_id uuid;
-- One event of a type per order (order.paid), and one per transfer (refund).
CREATE UNIQUE INDEX billing_outbox_event_key ON billing_outbox (order_id, event_type)
    WHERE transfer_id IS NULL;
CREATE UNIQUE INDEX billing_outbox_transfer_event_key ON billing_outbox (transfer_id, event_type)
    WHERE transfer_id IS NOT NULL;

INSERT INTO schema_version (version, description) VALUES (10, 'wallet holds, refund billing');
