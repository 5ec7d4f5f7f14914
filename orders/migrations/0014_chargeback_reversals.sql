-- Issue #14: a chargeback the payment system gives back (a dispute won) is reversed once. The
-- refund that recorded it moves from `succeeded` to `reversed`: the transfers_refund_totals
-- trigger then releases its amount from the order's refund_reserved and refunded_amount (it
-- counts only refunds that may give money back, or did), and billing credits the wallet back
-- with one `refund_reversal` entry keyed by the refund. `chargeback` marks the refunds a dispute
-- took, so a status read that only says "disputed" never takes a second one.
ALTER TABLE transfers ADD COLUMN chargeback boolean NOT NULL DEFAULT false;
UPDATE transfers SET chargeback = true
WHERE kind = 'refund' AND origin = 'psp' AND psp_transfer_id LIKE '%:chargeback:%';

ALTER TABLE transfers DROP CONSTRAINT transfers_status_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_status_check CHECK (status IN (
    'requested', 'submitting', 'pending', 'succeeded', 'failed', 'cancelled', 'needs_review',
    'reversed'));
ALTER TABLE transfers DROP CONSTRAINT transfers_settled_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_settled_check
    CHECK ((status IN ('succeeded', 'failed', 'cancelled', 'reversed')) = (settled_at IS NOT NULL));
ALTER TABLE transfers ADD CONSTRAINT transfers_reversed_check
    CHECK (status <> 'reversed' OR (kind = 'refund' AND chargeback));

INSERT INTO transfer_transitions (from_status, to_status) VALUES ('succeeded', 'reversed');

ALTER TABLE wallet_entries DROP CONSTRAINT wallet_entries_kind_check;
ALTER TABLE wallet_entries ADD CONSTRAINT wallet_entries_kind_check CHECK (kind IN (
    'topup', 'adjustment', 'debit', 'cashback', 'referral', 'refund',
    'hold', 'release', 'withdrawal', 'fee', 'bonus_reversal', 'refund_reversal'));
ALTER TABLE wallet_entries DROP CONSTRAINT wallet_entries_sign_check;
ALTER TABLE wallet_entries ADD CONSTRAINT wallet_entries_sign_check CHECK (
    (kind IN ('topup', 'cashback', 'referral', 'refund_reversal') AND amount > 0
     AND held_amount = 0)
    OR (kind IN ('debit', 'bonus_reversal') AND amount < 0 AND held_amount = 0)
    OR (kind = 'refund' AND ((amount < 0 AND held_amount = 0)
                             OR (amount = 0 AND held_amount < 0)))
    OR (kind = 'hold' AND amount < 0 AND held_amount = -amount)
    OR (kind = 'release' AND amount > 0 AND held_amount = -amount)
    OR (kind IN ('withdrawal', 'fee') AND amount = 0 AND held_amount < 0)
    OR (kind = 'adjustment' AND held_amount = 0));
ALTER TABLE wallet_entries DROP CONSTRAINT wallet_entries_order_check;
ALTER TABLE wallet_entries ADD CONSTRAINT wallet_entries_order_check CHECK (
    (kind IN ('topup', 'cashback', 'referral', 'refund', 'bonus_reversal', 'refund_reversal'))
    = (order_id IS NOT NULL));

INSERT INTO schema_version (version, description) VALUES (14, 'chargeback reversals');
