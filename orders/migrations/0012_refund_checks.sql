-- Issue #14: refunds the payment system made on its own (in its dashboard), read from the
-- payment. An unverified notification naming a paid order only makes the order due for a
-- "refund check": the worker reads the payment's status itself and records what the order's
-- refunds do not account for. `refund_check_at`: when the check is due (NULL: none; the sweeper's
-- claim moves it by the lease, so a check whose worker died comes back). `refund_checked_at`:
-- the last check, so hints cost at most one status read per order per quiet interval.
ALTER TABLE orders
    ADD COLUMN refund_check_at timestamptz,
    ADD COLUMN refund_checked_at timestamptz;
ALTER TABLE orders_archive
    ADD COLUMN refund_check_at timestamptz,
    ADD COLUMN refund_checked_at timestamptz;

-- Due checks only: the sweeper's claim reads this small index.
CREATE INDEX orders_refund_check_idx ON orders (refund_check_at) WHERE refund_check_at IS NOT NULL;

INSERT INTO schema_version (version, description) VALUES (12, 'refund checks');
